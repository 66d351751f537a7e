"""The enhancement section: per noisy set, the improvements and output scores of each prior, and each metric's
improvement per SNR, from the ``summary.json`` files of ``lightdvae enhance RUN --data SPEC``
(``"kind": "lightdvae-enhance"``)."""

from __future__ import annotations

import math

from lightdvae.enhance.settings import REFERENCE_LR, EnhanceSettings
from lightdvae.metrics import LABELS, PESQ_VARIANTS
from lightdvae.report.tables import mean_ci, model_sort_key, row_labels, table

__all__ = ["enhance_section", "ENHANCE_COLUMNS"]

#: The metrics of the tables, in column order.
ENHANCE_COLUMNS = ("si_sdr", "pesq_wb", "pesq_nb", "estoi")


def _set_key(s: dict) -> tuple[str, str]:
    d = s.get("set") or {}
    return (str(d.get("name", "?")), str(d.get("root", "")))


def enhance_section(summaries: list[dict]) -> list[str]:
    """``## Enhancement`` and, per noisy set, the main table and the per-SNR table (nothing without summaries)."""
    if not summaries:
        return []
    groups: dict[tuple, list[dict]] = {}
    for s in summaries:
        groups.setdefault(_set_key(s), []).append(s)
    lines = ["## Enhancement", ""]
    for key in sorted(groups):
        rows = sorted(groups[key], key=model_sort_key)
        lines += _main_table(rows) + _snr_table(rows)
    return lines


def _stats(s: dict, side: str, metric: str) -> dict | None:
    return ((s.get("overall") or {}).get(side) or {}).get(metric)


def _best(rows: list[dict], metric: str) -> float | None:
    """The best mean improvement of ``metric``, or None when it is not above zero (nothing to bold)."""
    means = [(_stats(s, "improvement", metric) or {}).get("mean") for s in rows]
    means = [m for m in means if isinstance(m, (int, float)) and math.isfinite(m)]
    return max(means) if means and max(means) > 0 else None


def _labels(rows: list[dict]) -> dict[int, str]:
    """Row labels: the model's label (:func:`row_labels`: with its run folder when two runs share one), the E-step's
    KL weight when it is not the reference's 1, its Adam rate when it is not the reference's 1e-3 (HiT/LigHT-DVAE's
    default is 1e-4), the EM iterations when they are not the reference's 100, the E-step's Adam steps per
    iteration when they are not the reference's 1, and the latent E-step (the same prior enhanced several ways gets
    a row each)."""
    labels = row_labels(rows)
    reference = EnhanceSettings()
    for s in rows:
        settings = s.get("settings") or {}
        beta = settings.get("beta", reference.beta)
        if beta != reference.beta:
            labels[id(s)] += f", β {beta:g}"
        lr = settings.get("lr")
        if isinstance(lr, (int, float)) and lr != REFERENCE_LR:
            labels[id(s)] += f", lr {lr:g}"
        iterations = settings.get("iterations", reference.iterations)
        e_steps = settings.get("e_steps", reference.e_steps)
        if iterations != reference.iterations or e_steps != reference.e_steps:
            steps = f" x {e_steps} E-steps" if e_steps != reference.e_steps else ""
            labels[id(s)] += f", {iterations} iterations{steps}"
        if settings.get("latent_e_step", reference.latent_e_step):
            labels[id(s)] += ", latent E-step"
        if settings.get("speech_past", reference.speech_past) == "estimate":
            labels[id(s)] += ", estimated past"
    return labels


def _heading(rows: list[dict]) -> list[str]:
    d = rows[0].get("set") or {}
    snrs = ", ".join(f"{v:g}" for v in d.get("snrs") or []) or "unknown"
    pesq = "; ".join(f"{LABELS[m]}: {PESQ_VARIANTS[m]}" for m in ("pesq_wb", "pesq_nb") if m in PESQ_VARIANTS)
    return [
        f"### Noisy set **{d.get('name', '?')}** ({d.get('layout', '?')}; SNRs {snrs} dB; noises "
        f"{', '.join(d.get('noises') or []) or 'unknown'})",
        "",
        "Unsupervised enhancement with each prior (variational EM, NMF noise model). Δ: output minus noisy input "
        "per file, mean ± half-width of the 95 % interval of the mean; the best Δ of each column in bold when it "
        f"is above zero; then the enhanced output's scores against the clean reference. {pesq}.",
        "",
    ]


def _main_table(rows: list[dict]) -> list[str]:
    metrics = [m for m in ENHANCE_COLUMNS if any(_stats(s, "output", m) for s in rows)]
    labels = _labels(rows)
    best = {m: _best(rows, m) for m in metrics}
    header = ["prior", "iterations", "files"]
    header += [f"Δ {LABELS[m]} ↑" for m in metrics] + [f"{LABELS[m]} ↑" for m in metrics]
    reference = max(rows, key=lambda s: (s.get("files") or {}).get("scored", 0))
    body = [
        ["_noisy input_", "", str((reference.get("files") or {}).get("scored", "?"))]
        + [""] * len(metrics)
        + [mean_ci(_stats(reference, "input", m), m) for m in metrics]
    ]
    for s in rows:
        cells = [labels[id(s)], str((s.get("settings") or {}).get("iterations", "?"))]
        cells.append(str((s.get("files") or {}).get("scored", "?")))
        for m in metrics:
            st = _stats(s, "improvement", m)
            mean = (st or {}).get("mean")
            cells.append(mean_ci(st, m, bold=best[m] is not None and mean == best[m]))
        cells += [mean_ci(_stats(s, "output", m), m) for m in metrics]
        body.append(cells)
    return _heading(rows) + [table(header, body), ""]


def _snr_table(rows: list[dict]) -> list[str]:
    """The improvement of each metric per SNR, one table per metric: rows the priors, columns the SNRs (the best of
    each column in bold when above zero) -- what a target of "every metric at every SNR" is read from."""
    snrs: list[str] = []
    for s in rows:
        snrs += [k for k in (s.get("by_snr") or {}) if k not in snrs]
    if not snrs:
        return []
    snrs.sort(key=lambda k: (k == "unknown", float(k) if k != "unknown" else 0.0))
    labels = _labels(rows)

    def cell_stats(s: dict, k: str, metric: str) -> dict | None:
        return (((s.get("by_snr") or {}).get(k) or {}).get("improvement") or {}).get(metric)

    lines = []
    for metric in ENHANCE_COLUMNS:
        if not any(cell_stats(s, k, metric) for s in rows for k in snrs):
            continue
        body = []
        for s in rows:
            cells = [labels[id(s)]]
            for k in snrs:
                st = cell_stats(s, k, metric)
                means = [(cell_stats(r, k, metric) or {}).get("mean") for r in rows]
                means = [m for m in means if isinstance(m, (int, float)) and math.isfinite(m)]
                top = max(means) if means else None
                bold = top is not None and top > 0 and (st or {}).get("mean") == top
                cells.append(mean_ci(st, metric, bold=bold))
            body.append(cells)
        header = ["prior"] + [f"{k} dB" if k != "unknown" else "unknown SNR" for k in snrs]
        note = f"Δ {LABELS[metric]} by input SNR, mean ± half-width of the 95 % interval of the mean."
        lines += [note, "", table(header, body), ""]
    return lines
