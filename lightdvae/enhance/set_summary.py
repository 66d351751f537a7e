"""``summary.json`` of a noisy set's enhancement (``"kind": "lightdvae-enhance"``) and the table the command
closes with.

The summary holds, for every metric, the statistics (:func:`lightdvae.metrics.summarize`: mean, median, 95 %
Student-t interval of the mean, ...) of the input (the noisy file against the clean one), of the output (the
enhanced file against the clean one) and of the improvement (output minus input, per file), over all the scored
files and broken down by SNR and by noise type.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from lightdvae._io import utc_now
from lightdvae.enhance.set_outputs import (
    ENHANCE_METRICS,
    INPUT_ERROR,
    NO_REFERENCE,
    PER_FILE,
    SetSettings,
    figure_path,
)
from lightdvae.evaluate.journal import MODEL_ERROR
from lightdvae.evaluate.outputs import AUDIO_DIR
from lightdvae.evaluate.summary import VERSION_KEYS
from lightdvae.metrics import LABELS, summarize
from lightdvae.runtime import versions

__all__ = ["ENHANCE_KIND", "FORMAT_VERSION", "build_set_summary", "read_enhance_summary", "console_table"]

ENHANCE_KIND = "lightdvae-enhance"
FORMAT_VERSION = 1
SIDES = ("input", "output", "improvement")
_PREFIX = {"input": "in", "output": "out", "improvement": "delta"}


def _stats(rows: list[dict], metrics) -> dict:
    """``{"n", "input": {metric: stats}, "output": ..., "improvement": ...}`` over ``rows``."""
    out: dict = {"n": len(rows)}
    for side in SIDES:
        out[side] = {m: summarize([r[f"{_PREFIX[side]}_{m}"] for r in rows]) for m in metrics}
    return out


def _snr_key(snr) -> str:
    return "unknown" if snr is None else f"{snr:g}"


def _breakdown(rows: list[dict], metrics, key) -> dict:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    return {k: _stats(v, metrics) for k, v in groups.items()}


def _sorted_snrs(keys) -> list[str]:
    return sorted(keys, key=lambda k: (k == "unknown", float(k) if k != "unknown" else 0.0))


def build_set_summary(
    rows: list[dict],
    *,
    run_info: dict,
    noisy_set,
    spec: str,
    settings: SetSettings,
    names: list[str],
    device: str,
    seconds: dict,
) -> dict:
    """The summary of the enhanced ``rows`` (in set order); ``seconds``: ``wall``, ``wall_last_session``,
    ``sessions``."""
    metrics = settings.metrics
    enhanced = [r for r in rows if INPUT_ERROR not in r["errors"] and MODEL_ERROR not in r["errors"]]
    scored = [r for r in enhanced if NO_REFERENCE not in r["errors"]]
    by_snr = _breakdown(scored, metrics, lambda r: _snr_key(r["snr_db"]))
    em_s = float(sum(r["seconds"] for r in enhanced if math.isfinite(r["seconds"])))
    iterations = sum(r["iterations"] for r in enhanced)
    failures = [
        {"name": r["name"], "reason": f"{k}: {v}"} for r in rows for k, v in r["errors"].items() if k != NO_REFERENCE
    ]
    figures = [] if not settings.figures else names[: settings.figures]
    return {
        "kind": ENHANCE_KIND,
        "format": FORMAT_VERSION,
        "created": utc_now(),
        "run_dir": run_info.get("run_dir"),
        "checkpoint": run_info.get("checkpoint"),
        "model": run_info["model"],
        "settings": {**settings.recorded, "batch_size": settings.batch_size, "workers": settings.workers},
        "set": {**noisy_set.to_dict(), "spec": spec},
        "metric_names": list(metrics),
        "ci": "95 % Student-t interval of the mean over files (metrics.summarize, method 't')",
        "files": {
            "listed": len(noisy_set),
            "selected": len(names),
            "enhanced": len(enhanced),
            "scored": len(scored),
            "no_reference": sum(NO_REFERENCE in r["errors"] for r in rows),
            "failed": len({f["name"] for f in failures}),
            "seconds_of_audio": float(sum(r["audio_s"] for r in enhanced if math.isfinite(r["audio_s"]))),
        },
        "overall": _stats(scored, metrics),
        "by_snr": {k: by_snr[k] for k in _sorted_snrs(by_snr)},
        "by_noise": dict(sorted(_breakdown(scored, metrics, lambda r: r["noise"] or "unknown").items())),
        "failures": failures,
        "seconds": {
            **seconds,
            "enhance": em_s,
            "per_iteration_per_utterance": em_s / iterations if iterations else math.nan,
        },
        "device": device,
        "outputs": {
            "per_file": PER_FILE,
            "audio": AUDIO_DIR if settings.save_audio else None,
            "figures": [figure_path(Path("."), n).as_posix() for n in figures],
        },
        "versions": {k: v for k, v in versions(packages=("pesq", "pystoi")).items() if k in VERSION_KEYS},
    }


def read_enhance_summary(path) -> dict:
    """A ``summary.json`` written by :func:`lightdvae.enhance.enhance_set` (a folder holding one is accepted)."""
    path = Path(path)
    if path.is_dir():
        path = path / "summary.json"
    value = json.loads(path.read_text())
    if value.get("kind") != ENHANCE_KIND:
        raise ValueError(f"{path} is not an enhancement summary (kind {value.get('kind')!r})")
    return value


def _cell(stats: dict, metric: str) -> str:
    d = 2 if metric.startswith(("si_sdr", "pesq")) else 3

    def mean(side: str) -> str:
        s = stats[side].get(metric) or {}
        return f"{s['mean']:.{d}f}" if s.get("n") else "n/a"

    delta = mean("improvement")
    sign = "+" if delta not in ("n/a",) and not delta.startswith("-") else ""
    return f"{mean('input')} -> {mean('output')} ({sign}{delta})"


def console_table(summary: dict, out) -> str:
    """Per SNR (and over all files): input -> output (improvement) of SI-SDR, PESQ-WB and ESTOI (those computed),
    then the time and where the summary is."""
    shown = [m for m in ("si_sdr", "pesq_wb", "estoi") if m in summary["metric_names"]] or [
        m for m in ENHANCE_METRICS if m in summary["metric_names"]
    ]
    header = ["SNR (dB)", "files"] + [LABELS[m] for m in shown]
    rows = [[k, str(v["n"])] + [_cell(v, m) for m in shown] for k, v in summary["by_snr"].items()]
    rows.append(["all", str(summary["overall"]["n"])] + [_cell(summary["overall"], m) for m in shown])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    files, sec = summary["files"], summary["seconds"]
    notes = []
    if files["no_reference"]:
        notes.append(f"{files['no_reference']} without a clean reference (enhanced, not scored)")
    if files["failed"]:
        notes.append(f"{files['failed']} failed (listed in summary.json)")
    per = sec["per_iteration_per_utterance"]
    lines.append(
        f"{summary['model']['label']} on {summary['set']['name']}: {files['enhanced']} files enhanced, "
        f"{summary['settings']['iterations']} iterations, {per * 1000:.1f} ms per iteration per utterance, "
        f"{sec['wall']:.1f} s" + (f"; {'; '.join(notes)}" if notes else "")
    )
    lines.append(f"summary: {Path(out) / 'summary.json'}")
    return "\n".join(lines)
