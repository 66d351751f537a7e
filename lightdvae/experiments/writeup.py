"""The experiment's write-up, ``OUT/report/README.md``: the one report of :mod:`lightdvae.report` (what
``lightdvae report OUT`` shows too) on the experiment's runs, shipped priors and ``cost.json``, with the
experiment's own notes (threads, wall time per stage) under its training table."""

from __future__ import annotations

from pathlib import Path

from lightdvae.experiments.config import ExperimentConfig
from lightdvae.experiments.state import COST_FILE, REPORT_DIR, RUNS_DIR, SHIPPED_DIR, ExperimentState

__all__ = ["REPORT_FILE", "write_report", "console_summary"]

REPORT_FILE = "README.md"


def write_report(cfg: ExperimentConfig, state: ExperimentState, out: Path) -> Path:
    """Write ``OUT/report/README.md`` (and its figures, in ``OUT/report/figures/``); returns its path.  The w
    exchange of a trained HiT/LigHT-DVAE is computed here when it has none (into its run's ``swap_w/``)."""
    from lightdvae import report

    paths = [p for p in (out / RUNS_DIR, out / SHIPPED_DIR, out / COST_FILE) if p.exists()]
    stages = state.data["stages"]
    note = [
        "Torch threads per model: one per core that other processes left idle when its training started.",
        "",
        "Wall time of this experiment (all sessions): "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in stages.items())
        + f"; total {state.wall_seconds / 60:.1f} min.",
    ]
    path = out / REPORT_DIR / REPORT_FILE
    report.write_report(paths, path, title=cfg.title, compute=True, training_note=note)
    return path


def console_summary(report: str) -> str:
    """The report's first table with its heading (the analysis-resynthesis results), for the end of a run on the
    console: the user sees the numbers, not only where they are."""
    lines = report.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), None)
    if start is None:
        return ""
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    heading = next((lines[i] for i in range(start - 1, -1, -1) if lines[i].startswith("#")), "")
    return "\n".join([heading.lstrip("# ").strip(), *lines[start:end]]).strip()
