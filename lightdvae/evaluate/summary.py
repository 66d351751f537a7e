"""``summary.json``, what an evaluation concludes: per metric mean / median / std / 95 % t-interval / failed
count, the failed files and why, the files counted, the seconds spent, the outputs and the version stamp; its
reader, and the line ``lightdvae eval`` closes with."""

from __future__ import annotations

import json
import math
from pathlib import Path

from lightdvae._io import utc_now
from lightdvae.evaluate.outputs import AUDIO_DIR, EXAMPLE_DIR, FIGURE_DIR, PER_FILE, SUMMARY, stem
from lightdvae.evaluate.settings import EvalSettings
from lightdvae.metrics import COLUMNS, LABELS, PESQ_VARIANTS, summarize
from lightdvae.runtime import versions

SUMMARY_KIND = "lightdvae-eval"
FORMAT_VERSION = 1
#: The version stamp of a summary (runtime.versions also names the native extension and backend: not here).
VERSION_KEYS = ("lightdvae", "python", "torch", "numpy", "pesq", "pystoi")


def _versions() -> dict:
    stamp = versions(packages=("pesq", "pystoi"))
    return {k: stamp[k] for k in VERSION_KEYS}


def _failures(rows: list[dict]) -> dict[str, list[dict]]:
    failures: dict[str, list[dict]] = {}
    for r in rows:
        for metric, reason in r["errors"].items():
            failures.setdefault(metric, []).append({"name": r["name"], "reason": reason})
    return failures


def _files(rows: list[dict], settings: EvalSettings, n_listed: int, skipped: dict) -> dict:
    max_files = settings.max_files
    return {
        "listed": n_listed,
        "selected": n_listed if max_files is None else min(n_listed, int(max_files)),
        "evaluated": len(rows),
        "max_files": max_files,
        "skipped_input": sum(len(v) for v in skipped.values()),
        "skipped_input_files": skipped,
        "seconds_of_audio": float(sum(r["seconds"] for r in rows)),
    }


def build_summary(
    rows: list[dict],
    *,
    run_info: dict,
    corpus,
    settings: EvalSettings,
    n_listed: int,
    skipped: dict,
    names: list[str],
    device: str,
    seconds: dict,
) -> dict:
    """The summary of the evaluated ``rows`` (in file order).  ``seconds``: ``wall``, ``wall_last_session`` and
    ``sessions``; the model and metric seconds are summed from the rows."""
    metrics = settings.metrics
    columns = [c for c in COLUMNS if c in metrics or (c == "pesq_nb_raw" and "pesq_nb" in metrics)]
    failures = _failures(rows)
    figures = names[: settings.figures]
    return {
        "kind": SUMMARY_KIND,
        "format": FORMAT_VERSION,
        "created": utc_now(),
        "run_dir": run_info.get("run_dir"),
        "checkpoint": run_info.get("checkpoint"),
        "model": run_info["model"],
        "dataset": {
            "spec": run_info.get("data_spec"),
            "name": corpus.name,
            "layout": corpus.layout,
            "root": str(corpus.root),
        },
        "split": settings.split,
        "past": settings.past,
        "sample": bool(settings.sample),
        "metrics": {c: summarize([r[c] for r in rows]) for c in columns},
        "metric_names": list(columns),
        "ci": "95 % Student-t interval of the mean over files (metrics.summarize, method 't')",
        "pesq_variants": {k: v for k, v in PESQ_VARIANTS.items() if k in columns},
        "files": _files(rows, settings, n_listed, skipped),
        "n_failed": {m: len(v) for m, v in failures.items()},
        "failures": failures,
        "seconds": {
            **seconds,
            "model": float(sum(r["model_s"] for r in rows if math.isfinite(r["model_s"]))),
            "metrics": float(sum(r["metrics_s"] for r in rows if math.isfinite(r["metrics_s"]))),
        },
        "workers": settings.workers,
        "device": device,
        "outputs": {
            "per_file": PER_FILE,
            "figures": [f"{FIGURE_DIR}/{stem(n)}.png" for n in figures],
            "examples": [f"{EXAMPLE_DIR}/{stem(n)}.npz" for n in figures],
            "audio": AUDIO_DIR if settings.save_audio else None,
        },
        "versions": _versions(),
    }


def read_summary(path) -> dict:
    """A ``summary.json`` written by an evaluation (a folder holding one is accepted too)."""
    path = Path(path)
    if path.is_dir():
        path = path / SUMMARY
    value = json.loads(path.read_text())
    if value.get("kind") != SUMMARY_KIND:
        raise ValueError(f"{path} is not an evaluation summary (kind {value.get('kind')!r})")
    return value


def closing_line(summary: dict, out: Path) -> str:
    """``LigHT-DVAE on tiny test (GEN past): 3 files, RMSE 0.208, ...; 4.1 s -> OUT``."""
    parts = []
    for c in summary["metric_names"]:
        s = summary["metrics"][c]
        if s["n"]:
            parts.append(f"{LABELS[c]} {s['mean']:.3f}")
    failed = len({f["name"] for items in summary["failures"].values() for f in items})
    files = summary["files"]
    text = (
        f"{summary['model']['label']} on {summary['dataset']['name']} {summary['split']} "
        f"({summary['past'].upper()} past): {files['evaluated']} files, " + ", ".join(parts)
    )
    if failed:
        text += f"; {failed} files with failed metrics (listed in summary.json)"
    return text + f"; {summary['seconds']['wall']:.1f} s -> {out}"
