"""The real set's FDSD work, done once per real set: its features and its real-vs-real floors, cached on disk.

Every generation of one corpus split is scored against the same real utterances, and the floors (two real halves;
real against the Griffin-Lim resynthesis of real) cost far more than the generated side: without a cache a
4-sample ``lightdvae generate`` spent most of its time recomputing them.  Entries live under
``<spectrogram cache>/fdsd/`` (``$LIGHTDVAE_CACHE``, see :func:`lightdvae.data.default_cache_dir`), keyed by the
real set (the resolved corpus root, the split, each file's path, size and modification time), the feature network
and the package version; the floors also by their sample size, draws, seed and Griffin-Lim iterations.  A changed
file, network or setting is a new key; an unreadable entry is recomputed; a cache that cannot be written (read-only
or full disk) costs only the time, never the result."""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lightdvae import __version__
from lightdvae._io import atomic_write_bytes, atomic_write_json, read_json

__all__ = ["CACHE_SUBDIR", "RealSetCache"]

CACHE_SUBDIR = "fdsd"
logger = logging.getLogger("lightdvae.generation")


class RealSetCache:
    """The cache entries of one real set (``paths``: its files, in the order their waveforms are scored) under
    one feature network; ``root=None``: the default cache folder."""

    def __init__(self, corpus_root, split: str, paths: list, features: str, root: Path | None = None):
        from lightdvae.data import default_cache_dir

        stamp = []
        for p in paths:
            try:
                st = Path(p).stat()
                stamp.append([str(p), st.st_size, st.st_mtime_ns])
            except OSError:
                stamp.append([str(p), None, None])
        key = {
            "corpus": str(Path(corpus_root).resolve()),
            "split": split,
            "files": stamp,
            "features": str(features),
            "version": __version__,
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        self.folder = Path(root) if root is not None else default_cache_dir() / CACHE_SUBDIR
        self.stem = f"{split}-{digest}"

    def features(self, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The real set's features: from the cache, else ``compute()`` (then cached)."""
        path = self.folder / f"{self.stem}-features.npy"
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            pass
        feats = compute()
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(feats), allow_pickle=False)
        self._store(lambda: atomic_write_bytes(path, buffer.getvalue(), fsync=False))
        return feats

    def floors(self, settings: dict, compute: Callable[[], dict]) -> dict:
        """The floors (a JSON-able dict) at ``settings`` (sample size, draws, seed, Griffin-Lim iterations): from
        the cache, else ``compute()`` (then cached)."""
        tag = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        path = self.folder / f"{self.stem}-floor-{tag}.json"
        cached = read_json(path)
        if isinstance(cached, dict) and cached.get("settings") == settings and isinstance(cached.get("floor"), dict):
            return cached["floor"]
        floor = compute()
        self._store(lambda: atomic_write_json(path, {"settings": settings, "floor": floor}))
        return floor

    def _store(self, write: Callable[[], object]) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            write()
        except OSError as exc:  # a cache that cannot be written costs time, never the result
            logger.warning("FDSD real-set cache not written (%s): %s", self.folder, exc)
