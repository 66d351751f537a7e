"""The analysis-resynthesis sections: the main table (GEN when there is one, else GT) with its medians and
failures, and the structure study (GEN beside GT for every model evaluated both ways)."""

from __future__ import annotations

import math

from lightdvae.metrics import LABELS, PESQ_VARIANTS
from lightdvae.report.results import run_key
from lightdvae.report.tables import (
    DECIMALS,
    arrow,
    at_floor,
    best_mean,
    mean_ci,
    metric_columns,
    model_sort_key,
    num,
    params,
    row_labels,
    table,
)

#: Metrics of the structure study table.
STRUCTURE_METRICS = ("si_sdr", "pesq_wb", "estoi")

__all__ = ["STRUCTURE_METRICS", "main_rows", "gen_gt_pairs", "analysis_section", "structure_section"]


def main_rows(summaries: list[dict]) -> list[dict]:
    """One summary per run for the main table: GEN when there is one, else GT."""
    by_run: dict[tuple, dict] = {}
    for s in summaries:
        key = run_key(s)
        if key not in by_run or (by_run[key].get("past") != "gen" and s.get("past") == "gen"):
            by_run[key] = s
    return sorted(by_run.values(), key=model_sort_key)


def gen_gt_pairs(summaries: list[dict], past_speech_only: bool = False) -> list[dict[str, dict]]:
    """``{"gen": summary, "gt": summary}`` for every run evaluated both ways, in the paper's order;
    ``past_speech_only``: only the models whose decoder sees past speech."""
    pairs: dict[tuple, dict[str, dict]] = {}
    for s in summaries:
        if not past_speech_only or (s.get("model") or {}).get("sees_past_speech", True):
            pairs.setdefault(run_key(s), {})[s.get("past")] = s
    both = [p for p in pairs.values() if "gen" in p and "gt" in p]
    return sorted(both, key=lambda p: model_sort_key(p["gen"]))


def _describe_group(key: tuple[str, str, str], summaries: list[dict]) -> str:
    name, root, split = key
    d = summaries[0].get("dataset") or {}
    files = sorted({(s.get("files") or {}).get("evaluated") for s in summaries} - {None})
    n = "/".join(str(f) for f in files) if files else "?"
    minutes = max(((s.get("files") or {}).get("seconds_of_audio") or 0.0) for s in summaries) / 60.0
    layout = f", {d['layout']} layout" if d.get("layout") else ""
    return f"corpus **{name}**{layout} (`{root}`), **{split}** split: {n} files, {minutes:.1f} min of speech"


def analysis_section(key, summaries: list[dict]) -> list[str]:
    """The main table of one corpus and split (mean ± CI, best in bold), its PESQ variants, failures, medians."""
    rows = main_rows(summaries)
    labels = row_labels(rows)
    metrics = metric_columns(rows)
    best = {m: best_mean(rows, m) for m in metrics}
    header = ["model", "params", "past", "files"] + [f"{LABELS[m]} {arrow(m)}" for m in metrics]
    align = ["l", "r", "l"] + ["r"] * (len(header) - 3)
    body, medians = [], []
    for s in rows:
        stats = s.get("metrics") or {}
        cells = [
            labels[id(s)],
            params(s),
            str(s.get("past", "?")).upper(),
            str((s.get("files") or {}).get("evaluated", "?")),
        ]
        mcells = list(cells)
        for m in metrics:
            st = stats.get(m)
            is_best = best[m] is not None and st and st.get("n") and st.get("mean") == best[m]
            cells.append(mean_ci(st, m, bold=bool(is_best)))
            mcells.append(num((st or {}).get("median"), DECIMALS.get(m, 3)) if st and st.get("n") else "n/a")
        body.append(cells)
        medians.append(mcells)
    ci = sorted({str(s.get("ci", "")) for s in rows} - {""})
    lines = [
        f"### Analysis-resynthesis: {_describe_group(key, summaries)}",
        "",
        "Whole utterances, resynthesis with the original phase; per-file metrics, mean ± half-width of the "
        f"{'; '.join(ci) or '95 % interval of the mean'}. Best mean of each column in bold. "
        "Past: GEN = the decoder is fed its own past predictions, GT = the true past.",
        "",
        table(header, body, align),
        "",
    ]
    floored = [LABELS[m] for m in metrics if at_floor(rows, m)]
    if floored:
        lines += [
            f"Nothing bold in {', '.join(floored)}: the best mean is at the floor of the scale (PESQ's lowest "
            "MOS-LQO, ESTOI ~0), where every model is.",
            "",
        ]
    pesq = [m for m in metrics if m in PESQ_VARIANTS]
    if pesq:
        lines += ["PESQ variants: " + "; ".join(f"{LABELS[m]} = {PESQ_VARIANTS[m]}" for m in pesq) + ".", ""]
    failed = _failure_lines(rows, labels)
    if failed:
        lines += ["Files left out of a metric's statistics (the metric failed on them):", "", *failed, ""]
    lines += ["Medians over files:", "", table(header, medians, align), ""]
    return lines


def _failure_lines(rows: list[dict], labels: dict[int, str]) -> list[str]:
    out = []
    for s in rows:
        failures = s.get("failures") or {}
        parts = []
        for metric, items in failures.items():
            if metric == "pesq_nb_raw" or not items:
                continue
            reasons = sorted({i.get("reason", "?") for i in items})
            names = ", ".join(i.get("name", "?") for i in items[:3]) + (", ..." if len(items) > 3 else "")
            parts.append(f"{LABELS.get(metric, metric)}: {len(items)} ({'; '.join(reasons)}: {names})")
        if parts:
            out.append(f"- {labels[id(s)]}: " + "; ".join(parts))
    return out


def structure_section(key, summaries: list[dict]) -> list[str]:
    """The structure study of one corpus and split: GEN, GT and their difference (none when no run has both)."""
    both = gen_gt_pairs(summaries)
    if not both:
        return []
    labels = row_labels([p["gen"] for p in both])
    metrics = [m for m in STRUCTURE_METRICS if m in metric_columns([p["gen"] for p in both])]
    header = ["model"]
    for m in metrics:
        header += [f"{LABELS[m]} GEN", f"{LABELS[m]} GT", "GT − GEN"]
    body = []
    for p in both:
        row = [labels[id(p["gen"])] + ("" if (p["gen"].get("model") or {}).get("sees_past_speech", True) else " ¹")]
        for m in metrics:
            g = (p["gen"].get("metrics") or {}).get(m) or {}
            t = (p["gt"].get("metrics") or {}).get(m) or {}
            d = DECIMALS.get(m, 3)
            diff = t.get("mean", math.nan) - g.get("mean", math.nan) if g.get("n") and t.get("n") else math.nan
            row += [mean_ci(g, m), mean_ci(t, m), num(diff, d)]
        body.append(row)
    lines = [
        f"### Structure study (GEN vs GT past): {_describe_group(key, summaries)}",
        "",
        "The same model and test files with the decoder fed its own past predictions (GEN) or the true past (GT). "
        "A model whose quality rests on seeing the true past collapses in GEN (SRNN trained with teacher forcing, "
        "the Inv-s ablations); Inv-s-NR and the models that see no past speech are the same in both.",
        "",
        table(header, body),
        "",
    ]
    if any(not (p["gen"].get("model") or {}).get("sees_past_speech", True) for p in both):
        lines += ["¹ the decoder of this model sees no past speech: GEN and GT are the same computation.", ""]
    return lines
