"""Fingerprinted result folders: the one rule by which ``eval``, ``generate``, ``swap-w``, the experiments and the
corpus build decide whether a folder's contents are theirs to resume, to refuse, or to replace.

A command writes a state file (``state.json``, ``experiment.json``, ...) holding the *fingerprint* of what it
computes: every setting that changes the numbers (the checkpoint's digest, the data, the options).  Running it
again with the same fingerprint resumes; with another one it is refused with one line naming what differs,
unless ``overwrite`` (then only this command's own files are deleted); a folder holding this command's files but
no readable state counts as foreign.

Typical use::

    previous = claim(out, fingerprint, state_file="state.json", files=("per_file.csv", "summary.json"),
                     dirs=("figures",), overwrite=False, what="results of another evaluation", error=EvalError)
    if previous is None: ...   # a fresh start
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

from lightdvae._io import read_json
from lightdvae.errors import FolderError

__all__ = ["claim", "clear", "differences", "describe_differences"]

#: How a fingerprint key is named in messages when its own name says little.
KEY_NAMES = {"checkpoint_sha256": "checkpoint weights"}


def differences(old: Mapping, new: Mapping) -> list[str]:
    """The keys whose values differ between two fingerprints (sorted)."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def describe_differences(old: Mapping, new: Mapping) -> str:
    """``"checkpoint weights, n"``: the differing keys in words."""
    return ", ".join(KEY_NAMES.get(k, k) for k in differences(old, new))


def clear(out: str | Path, files: Iterable[str] = (), dirs: Iterable[str] = ()) -> None:
    """Delete a command's own ``files`` and ``dirs`` from ``out`` (nothing else)."""
    out = Path(out)
    for name in files:
        (out / name).unlink(missing_ok=True)
    for name in dirs:
        if (out / name).is_dir():
            shutil.rmtree(out / name)


def claim(
    out: str | Path,
    fingerprint: Mapping,
    *,
    state_file: str,
    files: Iterable[str] = (),
    dirs: Iterable[str] = (),
    overwrite: bool = False,
    what: str = "other results",
    them: str = "them",
    error: type[Exception] = FolderError,
) -> dict | None:
    """Take ``out`` for the result ``fingerprint``: the state this command left there before (a dict whose
    ``"fingerprint"`` equals ``fingerprint``: resume from it), or None (start afresh).

    ``files`` / ``dirs``: the command's own outputs besides ``state_file`` (their presence without a readable
    state marks a foreign result; ``overwrite`` deletes them and the state).  Raises ``error`` when ``out`` holds
    ``what`` with another fingerprint and ``overwrite`` is false.
    """
    out = Path(out)
    files, dirs = tuple(files), tuple(dirs)
    state_path = out / state_file
    state = read_json(state_path)
    old = None
    if state is not None:
        old = state.get("fingerprint")
    elif state_path.exists():
        old = {"unreadable": True}
    elif any((out / f).is_file() for f in files) or any((out / d).is_dir() for d in dirs):
        old = {"unknown": True}
    if overwrite:
        clear(out, (state_file, *files), dirs)
        return None
    if old is not None and old != dict(fingerprint):
        old = old if isinstance(old, Mapping) else {"unreadable": True}
        raise error(
            f"{out} holds {what} (differs in: {describe_differences(old, fingerprint)}); pass --overwrite to "
            f"replace {them}, or --out DIR to keep both"
        )
    return state if old is not None else None
