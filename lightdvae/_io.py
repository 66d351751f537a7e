"""Atomic file writes, used by every part of the package that writes results (runs, caches, corpora,
evaluations, figures): a reader, or a process killed mid-write, sees the old file or the new one, never a
partial one."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


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
