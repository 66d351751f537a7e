"""Finding the results a report is built from, under the given folders: evaluation summaries, FDSD results,
enhancement summaries, generation manifests, w exchanges, measured costs, and the training runs (folders with a
``config.json``; also those the results name by their ``run_dir``)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lightdvae.errors import ReportError

EVAL_KIND = "lightdvae-eval"
FDSD_KIND = "lightdvae-fdsd"
ENHANCE_KIND = "lightdvae-enhance"
GENERATION_KIND = "lightdvae-generation"  #: ``generation.json`` of ``lightdvae generate``
SWAP_KIND = "lightdvae-swap-w"  #: ``swap_w.json`` of ``lightdvae swap-w``
COST_KIND = "lightdvae-cost"  #: ``cost.json`` of ``lightdvae demo`` / ``reproduce`` (native vs reference ops)
_KINDS = (EVAL_KIND, FDSD_KIND, ENHANCE_KIND, GENERATION_KIND, SWAP_KIND, COST_KIND)
_SKIP_DIRS = {"checkpoints", "audio", "examples", "figures", "wav", "spectrograms", "__pycache__"}
_CONFIG = "config.json"

__all__ = [
    "EVAL_KIND",
    "FDSD_KIND",
    "ENHANCE_KIND",
    "GENERATION_KIND",
    "SWAP_KIND",
    "COST_KIND",
    "Found",
    "find_all",
    "find_results",
    "find_enhancements",
    "group_key",
    "run_key",
]


@dataclass
class Found:
    """Everything a report is built from (each result dict has ``"_path"``, the file it came from).

    ``runs``: training run folders (``config.json``), in the order found."""

    evals: list[dict] = field(default_factory=list)
    fdsds: list[dict] = field(default_factory=list)
    enhancements: list[dict] = field(default_factory=list)
    generations: list[dict] = field(default_factory=list)
    exchanges: list[dict] = field(default_factory=list)
    costs: list[dict] = field(default_factory=list)
    runs: list[Path] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.evals or self.fdsds or self.enhancements or self.generations or self.exchanges or self.runs)


def _load(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(value, dict):
        return None
    if path.name == "cost.json" and "kind" not in value and isinstance(value.get("_about"), dict):
        value["kind"] = COST_KIND  # written before cost.json carried its kind
    if value.get("kind") not in _KINDS:
        return None
    value["_path"] = str(path)
    return value


def _json_files(root: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith(".json") and not name.startswith("."):
                yield Path(dirpath) / name


def find_results(paths: Sequence[str | os.PathLike]) -> tuple[list[dict], list[dict]]:
    """``(eval summaries, FDSD results)`` found in ``paths`` (folders are searched recursively; JSON files are
    read directly).  Each result gets ``"_path"``: the file it came from.

    Raises:
        ReportError: a path does not exist.
    """
    found = _find(paths)
    return _latest(found[EVAL_KIND]), found[FDSD_KIND]


def find_all(paths: Sequence[str | os.PathLike]) -> Found:
    """Every result and training run under ``paths``: the latest evaluation of each model, corpus, split and
    past (:func:`find_results`), of each enhancement (:func:`find_enhancements`), the latest generation and w
    exchange of each model; the run folders found, then those the results name that exist.

    Raises:
        ReportError: a path does not exist.
    """
    found, runs = _find(paths, with_runs=True)
    named = [r.get("run_dir") for kind in _KINDS for r in found[kind] if kind != COST_KIND]
    for name in named:
        if isinstance(name, str) and (Path(name) / _CONFIG).is_file() and Path(name).resolve() not in runs:
            runs[Path(name).resolve()] = Path(name)
    return Found(
        evals=_latest(found[EVAL_KIND]),
        fdsds=found[FDSD_KIND],
        enhancements=_latest_enhancements(found[ENHANCE_KIND]),
        generations=_newest(found[GENERATION_KIND], run_key),
        exchanges=_newest(found[SWAP_KIND], run_key),
        costs=found[COST_KIND],
        runs=list(runs.values()),
    )


def find_enhancements(paths: Sequence[str | os.PathLike]) -> list[dict]:
    """The enhancement summaries (``"kind": "lightdvae-enhance"``) found in ``paths``: the latest of each model,
    set and settings."""
    return _latest_enhancements(_find(paths)[ENHANCE_KIND])


def _latest_enhancements(summaries: list[dict]) -> list[dict]:
    best: dict[tuple, dict] = {}
    for s in summaries:
        numbers = {k: v for k, v in (s.get("settings") or {}).items() if k not in ("batch_size", "workers")}
        key = (*run_key(s), str((s.get("set") or {}).get("root")), json.dumps(numbers, sort_keys=True))
        if key not in best or str(s.get("created", "")) > str(best[key].get("created", "")):
            best[key] = s
    return list(best.values())


def _find(paths: Sequence[str | os.PathLike], with_runs: bool = False):
    """Every result in ``paths``, by kind; with ``with_runs`` also ``{resolved: path}`` of the run folders (the
    folders holding a ``config.json``)."""
    found: dict[str, list[dict]] = {k: [] for k in _KINDS}
    runs: dict[Path, Path] = {}
    seen = set()
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise ReportError(f"{p} does not exist")
        files = [p] if p.is_file() else _json_files(p)
        for f in files:
            key = f.resolve()
            if key in seen:
                continue
            seen.add(key)
            if f.name == _CONFIG and key.parent not in runs:
                runs[key.parent] = f.parent
            value = _load(f)
            if value is not None:
                found[value["kind"]].append(value)
    return (found, runs) if with_runs else found


def _newest(results: list[dict], key) -> list[dict]:
    """The most recent result (``created``) of each ``key(result)``, in the order first found."""
    best: dict = {}
    for r in results:
        k = key(r)
        if k not in best or str(r.get("created", "")) > str(best[k].get("created", "")):
            best[k] = r
    return list(best.values())


def _latest(evals: list[dict]) -> list[dict]:
    """One summary per (run, checkpoint weights, corpus, split, past): the most recent."""
    best: dict[tuple, dict] = {}
    for s in evals:
        key = (*run_key(s), group_key(s), s.get("past"))
        if key not in best or str(s.get("created", "")) > str(best[key].get("created", "")):
            best[key] = s
    return list(best.values())


def group_key(s: dict) -> tuple[str, str, str]:
    """The table a summary belongs to: ``(corpus name, corpus root, split)``."""
    d = s.get("dataset") or {}
    return (str(d.get("name", "?")), str(d.get("root", "")), str(s.get("split", "?")))


def run_key(s: dict) -> tuple:
    """The model a summary evaluated: ``(run folder or file, checkpoint digest)``."""
    return (s.get("run_dir") or s["_path"], (s.get("checkpoint") or {}).get("sha256"))
