"""Turning what a user typed (``"builtin"``, ``"wsj0:DIR"``, a folder, ...) into a :class:`Corpus`, building the
built-in corpus on first use (one build at a time, through a lock file).

This sits one level above the corpus layouts (:mod:`lightdvae.data.corpora`) and the built-in corpus builder
(:mod:`lightdvae.data.builtin`, imported only when a build is needed): both are imported from here, never the
reverse.
"""

from __future__ import annotations

import os
from pathlib import Path

from lightdvae.data.corpora import BUILD_STATE, BUILTIN_MARKER, Corpus, builtin_corpus_dir, discover
from lightdvae.errors import DataError

__all__ = ["resolve_corpus"]

# --------------------------------------------------------------------------------------------------------------
# Spec strings
# --------------------------------------------------------------------------------------------------------------
_PREFIXES = {"wsj0": "wsj0", "vb": "vb", "voicebank": "vb", "folder": "folder", "lists": "lists", "builtin": "builtin"}


def resolve_corpus(
    spec: str | os.PathLike | Corpus,
    *,
    build: bool = True,
    minutes: float | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> Corpus:
    """Turn what a user typed into a :class:`Corpus`; what the training and evaluation commands call.

    Accepted specs:

    * ``"builtin"``: the built-in espeak-ng corpus in :func:`builtin_corpus_dir` (``$LIGHTDVAE_DATA/corpus``,
      default ``~/.cache/lightdvae/corpus``).  Built there on first use when ``build`` is true (``minutes`` of
      speech, 30 by default; needs espeak-ng), resumed when an earlier build was interrupted, reused otherwise.
      Concurrent callers (several DDP ranks) wait for one build through a lock file.
    * ``"builtin:DIR"``: a built-in corpus built elsewhere with ``lightdvae corpus build DIR``.
    * ``"wsj0:DIR"``, ``"vb:DIR"`` (or ``voicebank:``), ``"folder:DIR"``, ``"lists:DIR"``: that layout at DIR.
    * ``"DIR"``: layout detected (see :func:`discover`).
    * A :class:`Corpus` is returned unchanged.

    Raises:
        DataError: unknown or incomplete corpus, or espeak-ng missing when the built-in corpus must be built.
    """
    if isinstance(spec, Corpus):
        return spec
    text = os.fspath(spec).strip()
    if not text:
        raise DataError("empty corpus spec; give 'builtin', a folder, or wsj0:DIR / vb:DIR")
    prefix, sep, rest = text.partition(":")
    layout = _PREFIXES.get(prefix.lower()) if sep else None
    if text.lower() == "builtin":
        return _resolve_builtin(builtin_corpus_dir(), build=build, minutes=minutes, seed=seed, progress=progress)
    if layout is None:  # a plain path (possibly with a colon in it)
        return discover(text, "auto")
    if not rest.strip():
        raise DataError(f"corpus spec {text!r} names no folder; write {prefix}:DIR")
    if layout == "builtin":
        return discover(rest.strip(), "builtin")
    return discover(rest.strip(), layout)


def _resolve_builtin(root: Path, *, build: bool, minutes: float | None, seed: int, progress: bool | None) -> Corpus:
    if (root / BUILTIN_MARKER).is_file():
        return discover(root, "builtin")
    if not build:
        raise DataError(
            f"the built-in corpus is not built yet at {root}; build it with `lightdvae corpus build {root}`"
        )
    from lightdvae.data.builtin import build_corpus

    root.parent.mkdir(parents=True, exist_ok=True)
    with _FileLock(root.parent / f".{root.name}.lock"):
        if (root / BUILTIN_MARKER).is_file():  # another process built it while we waited
            return discover(root, "builtin")
        kwargs = {"seed": seed, "progress": progress}
        if minutes is not None:
            kwargs["minutes"] = minutes
        if (root / BUILD_STATE).is_file():  # resume an interrupted build with its own settings
            kwargs = {"resume": True, "progress": progress}
        return build_corpus(root, **kwargs)


class _FileLock:
    """An exclusive ``flock`` on a lock file (no-op where fcntl is unavailable)."""

    def __init__(self, path: Path):
        self.path = path
        self._fh = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self
        self._fh = open(self.path, "a+")
        fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self._fh is not None:
            import fcntl

            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
        return False
