"""Finding the results a report is built from: evaluation summaries, FDSD results and enhancement summaries under
the given folders."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from lightdvae.errors import ReportError

EVAL_KIND = "lightdvae-eval"
FDSD_KIND = "lightdvae-fdsd"
ENHANCE_KIND = "lightdvae-enhance"
_KINDS = (EVAL_KIND, FDSD_KIND, ENHANCE_KIND)
_SKIP_DIRS = {"checkpoints", "audio", "examples", "figures", "__pycache__"}

__all__ = ["EVAL_KIND", "FDSD_KIND", "ENHANCE_KIND", "find_results", "find_enhancements", "group_key", "run_key"]


def _load(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(value, dict) or value.get("kind") not in _KINDS:
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


def find_enhancements(paths: Sequence[str | os.PathLike]) -> list[dict]:
    """The enhancement summaries (``"kind": "lightdvae-enhance"``) found in ``paths``: the latest of each model,
    set and settings."""
    best: dict[tuple, dict] = {}
    for s in _find(paths)[ENHANCE_KIND]:
        numbers = {k: v for k, v in (s.get("settings") or {}).items() if k not in ("batch_size", "workers")}
        key = (*run_key(s), str((s.get("set") or {}).get("root")), json.dumps(numbers, sort_keys=True))
        if key not in best or str(s.get("created", "")) > str(best[key].get("created", "")):
            best[key] = s
    return list(best.values())


def _find(paths: Sequence[str | os.PathLike]) -> dict[str, list[dict]]:
    """Every result in ``paths``, by kind."""
    found: dict[str, list[dict]] = {k: [] for k in _KINDS}
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
            value = _load(f)
            if value is not None:
                found[value["kind"]].append(value)
    return found


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
