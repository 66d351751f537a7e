"""Formatting for the report's tables: numbers, mean ± CI cells, row order and labels, Markdown tables."""

from __future__ import annotations

import math
from pathlib import Path

from lightdvae.metrics import COLUMNS, HIGHER_IS_BETTER
from lightdvae.models import order_key

#: Decimals per metric in the tables.
DECIMALS = {"rmse": 3, "si_sdr": 2, "pesq_wb": 2, "pesq_nb": 2, "pesq_nb_raw": 2, "estoi": 3}
#: The bottom of a bounded metric's scale, and how far above it a mean must be to be worth bolding: PESQ's
#: MOS-LQO mappings start at 1.04 (wide band, P.862.2) and 1.02 (narrow band, P.862.1), raw PESQ at -0.5; ESTOI
#: is ~0 for unrelated signals.  A "best" score in that band only says that every model is at the floor.
SCALE_FLOORS = {"pesq_wb": (1.04, 0.1), "pesq_nb": (1.02, 0.1), "pesq_nb_raw": (-0.5, 0.1), "estoi": (0.0, 0.05)}

__all__ = [
    "DECIMALS",
    "num",
    "mean_ci",
    "model_sort_key",
    "row_labels",
    "params",
    "table",
    "metric_columns",
    "best_mean",
    "at_floor",
    "SCALE_FLOORS",
    "arrow",
]


def num(value, decimals: int) -> str:
    """``value`` with ``decimals`` decimals; ``n/a`` for None, NaN and inf; never ``-0.00``."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    text = f"{value:.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.00"


def mean_ci(stats: dict | None, metric: str, bold: bool = False) -> str:
    """A metric's cell: ``mean ± half-width of the interval`` (the mean in bold when ``bold``)."""
    if not stats or not stats.get("n"):
        return "n/a"
    d = DECIMALS.get(metric, 3)
    mean = num(stats.get("mean"), d)
    if bold:
        mean = f"**{mean}**"
    half = stats.get("ci_half")
    return f"{mean} ± {num(half, d)}" if half is not None and math.isfinite(half) else mean


def model_sort_key(s: dict):
    """Rows in the paper's order: model family, then the ablations, the SRNN's training mode, the label."""
    m = s.get("model") or {}
    name = str(m.get("name", "")).lower()
    cfg = m.get("config") or {}
    order = order_key(name)
    return (order, bool(cfg.get("inv_s")), bool(cfg.get("no_residual")), m.get("training") == "tf", m.get("label", ""))


def row_labels(rows: list[dict]) -> dict[int, str]:
    """Row labels; two different runs with one label get their run folder's name appended, and two different weights
    of one run (a shipped prior before and after it was replaced: ``pretrained:vae`` twice) their digest's first
    eight hex digits."""
    labels = {id(s): str((s.get("model") or {}).get("label", "?")) for s in rows}
    runs: dict[str, set] = {}
    weights: dict[tuple[str, str], set] = {}
    for s in rows:
        run = s.get("run_dir") or s["_path"]
        runs.setdefault(labels[id(s)], set()).add(run)
        weights.setdefault((labels[id(s)], run), set()).add(_digest(s))
    for s in rows:
        label, run, digest = labels[id(s)], s.get("run_dir") or s["_path"], _digest(s)
        tags = [Path(run).name] if len(runs[label]) > 1 else []
        if len(weights[(label, run)]) > 1 and digest:
            tags.append(digest[:8])
        if tags:
            labels[id(s)] = f"{label} [{', '.join(tags)}]"
    return labels


def _digest(s: dict) -> str:
    """The SHA-256 of the weights a result was computed with, when its summary records it (else '')."""
    checkpoint = s.get("checkpoint")
    return str(checkpoint.get("sha256") or "") if isinstance(checkpoint, dict) else ""


def params(s: dict) -> str:
    """A model's parameter count: ``1.23 M``, ``45.6 k``, ``999``, or ``?``."""
    n = (s.get("model") or {}).get("parameters")
    if not isinstance(n, int):
        return "?"
    if n >= 1e6:
        return f"{n / 1e6:.2f} M"
    if n >= 1e3:
        return f"{n / 1e3:.1f} k"
    return str(n)


def table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    """A Markdown table; ``align`` per column, ``"l"`` or ``"r"`` (default: the first left, the rest right)."""
    align = align or ["l"] + ["r"] * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def metric_columns(summaries: list[dict]) -> list[str]:
    """The metrics any of ``summaries`` has, in the tables' column order."""
    present = set()
    for s in summaries:
        present |= {c for c, v in (s.get("metrics") or {}).items() if v}
    return [c for c in COLUMNS if c in present]


def _best(rows: list[dict], metric: str) -> float | None:
    """The best finite mean of ``metric`` over ``rows``; None with fewer than two."""
    means = [
        (r.get("metrics") or {}).get(metric, {}).get("mean")
        for r in rows
        if (r.get("metrics") or {}).get(metric, {}).get("n")
    ]
    means = [m for m in means if isinstance(m, (int, float)) and math.isfinite(m)]
    if len(means) < 2:
        return None
    return max(means) if HIGHER_IS_BETTER.get(metric, True) else min(means)


def at_floor(rows: list[dict], metric: str) -> bool:
    """Whether the best mean of ``metric`` over ``rows`` (two or more) is at the floor of its scale
    (:data:`SCALE_FLOORS`): every model is there, none is best."""
    best = _best(rows, metric)
    floor, margin = SCALE_FLOORS.get(metric, (-math.inf, 0.0))
    return best is not None and best < floor + margin


def best_mean(rows: list[dict], metric: str) -> float | None:
    """The best mean of ``metric`` over ``rows``: None (nothing to bold) with fewer than two finite means, or when
    the best is at the floor of the metric's scale (:func:`at_floor`)."""
    return None if at_floor(rows, metric) else _best(rows, metric)


def arrow(metric: str) -> str:
    """``↑`` when higher is better, else ``↓``."""
    return "↑" if HIGHER_IS_BETTER.get(metric, True) else "↓"
