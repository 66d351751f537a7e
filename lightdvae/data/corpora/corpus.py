"""What a corpus is (:class:`Corpus`, :class:`AudioFile`, the three splits) and where lightdvae keeps its data
(:func:`data_root`, :func:`builtin_corpus_dir`, :func:`default_cache_dir`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from lightdvae.errors import DataError

SPLITS = ("train", "val", "test")

__all__ = ["SPLITS", "AudioFile", "Corpus", "data_root", "builtin_corpus_dir", "default_cache_dir"]


# --------------------------------------------------------------------------------------------------------------
# Where things live
# --------------------------------------------------------------------------------------------------------------
def data_root() -> Path:
    """Root of lightdvae's data: ``$LIGHTDVAE_DATA``, else ``$XDG_CACHE_HOME/lightdvae``, else
    ``~/.cache/lightdvae``."""
    env = os.environ.get("LIGHTDVAE_DATA", "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "lightdvae"


def builtin_corpus_dir() -> Path:
    """Where ``resolve_corpus("builtin")`` keeps the built-in corpus: ``data_root() / "corpus"``."""
    return data_root() / "corpus"


def default_cache_dir() -> Path:
    """Spectrogram cache: ``$LIGHTDVAE_CACHE``, else ``data_root() / "spectrograms"``."""
    env = os.environ.get("LIGHTDVAE_CACHE", "").strip()
    return Path(env).expanduser() if env else data_root() / "spectrograms"


# --------------------------------------------------------------------------------------------------------------
# Corpus description
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AudioFile:
    """One utterance of a corpus.  ``text`` and ``phonemes`` are known for the built-in corpus only."""

    path: Path
    speaker: str
    split: str
    text: str | None = None
    phonemes: str | None = None

    def __fspath__(self) -> str:
        return str(self.path)


@dataclass
class Corpus:
    """A corpus: its files per split.  ``splits[name]`` is a list of :class:`AudioFile` sorted by path."""

    name: str
    root: Path
    layout: str
    splits: dict[str, list[AudioFile]]
    notes: list[str] = field(default_factory=list)
    #: why a split has no files (``{"train": "its train/ folder is empty"}``), said when the split is asked for
    absent: dict[str, str] = field(default_factory=dict)

    def split(self, name: str) -> list[AudioFile]:
        """The files of split ``name`` ("train", "val" or "test"); a :class:`DataError` when it has none (a corpus
        may lack the splits a command does not use: a folder of test files can be evaluated, not trained on)."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {name!r}")
        files = self.splits.get(name) or []
        if not files:
            why = f": {self.absent[name]}" if name in self.absent else ""
            raise DataError(f"corpus {self.name!r} ({self.root}) has no {name} files{why}")
        return files

    def paths(self, name: str) -> list[Path]:
        return [f.path for f in self.split(name)]

    def has(self, name: str) -> bool:
        return bool(self.splits.get(name))

    def speakers(self, name: str | None = None) -> list[str]:
        names = [name] if name else list(self.splits)
        return sorted({f.speaker for n in names for f in self.splits.get(n, [])})

    def describe(self) -> str:
        lines = [f"corpus {self.name} ({self.layout}) at {self.root}"]
        for s in SPLITS:
            files = self.splits.get(s) or []
            lines.append(f"  {s:<5} {len(files):6d} files, {len({f.speaker for f in files}):4d} speakers")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={len(self.splits.get(s) or [])}" for s in SPLITS)
        return f"Corpus(name={self.name!r}, layout={self.layout!r}, root={str(self.root)!r}, {counts})"
