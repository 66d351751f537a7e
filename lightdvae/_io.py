"""Atomic file writes, used by every part of the package that writes results (runs, caches, corpora,
evaluations, figures): a reader, or a process killed mid-write, sees the old file or the new one, never a
partial one."""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable, *, fsync: bool = True) -> Path:
    """Write ``path`` through ``write(binary file handle)`` into a temporary file of the same folder, then rename
    it over ``path``.  ``fsync=False`` skips the flush to disk (for caches that can be rebuilt)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> Path:
    return atomic_write(path, lambda fh: fh.write(data), fsync=fsync)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, value) -> Path:
    return atomic_write_text(path, json.dumps(value, indent=2, default=str) + "\n")


def jsonable(value):
    """``value`` with NaN and inf turned into null (they are not JSON), NumPy scalars into Python numbers, paths
    into strings; dict keys become strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return jsonable(value.item())
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | os.PathLike, value) -> Path:
    """Atomically write ``value`` as indented JSON, NaN and inf as null (:func:`jsonable`)."""
    return atomic_write_text(path, json.dumps(jsonable(value), indent=2) + "\n")


def read_json(path: str | os.PathLike) -> dict | None:
    """The JSON object in ``path``, or None when the file is missing, unreadable or not an object."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def slug(text: str, fill: str = "_", keep: str = "-_.", default: str = "x") -> str:
    """A file-name-safe form of ``text``: characters other than letters, digits and ``keep`` become ``fill``;
    leading and trailing ``fill`` / dots are stripped; ``default`` when nothing is left."""
    out = "".join(c if c.isalnum() or c in keep else fill for c in str(text))
    return out.strip("." + fill) or default


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (checkpoint digests in result fingerprints)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second: the time stamps of every file the package writes."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
