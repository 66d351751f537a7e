"""The noise tracks of a noisy set: generated from a seed (:func:`generated_tracks`, with the speech-shaped and
babble noises taken from the corpus's training split) or read from a user's folder (:func:`folder_tracks`), and
the segment of a track that one mixture uses (:func:`noise_segment`)."""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lightdvae._io import slug
from lightdvae.audio import SAMPLE_RATE, AudioError, FrontEnd, load_audio, preprocess, read_audio
from lightdvae.data.corpora import Corpus, list_audio_files
from lightdvae.data.noisy import generators as gen
from lightdvae.errors import ConfigError, DataError

__all__ = [
    "TRACK_SECONDS",
    "BABBLE_TALKERS",
    "NoiseTrack",
    "check_noise_names",
    "seeded_rng",
    "check_corpus",
    "generated_tracks",
    "folder_tracks",
    "noise_segment",
]

TRACK_SECONDS = 30.0  #: the least length of a generated track (longer when an utterance is longer)
BABBLE_TALKERS = 6  #: talkers in the babble noise (fewer when the training split has fewer speakers)
BABBLE_FILES = 12  #: utterances read per babble talker
LTAS_FILES = 100  #: training files the long-term speech spectrum is averaged over
RAW = FrontEnd(trim_db=None, normalize=False)  #: read, mix down and resample only: the signal as it is


@dataclass
class NoiseTrack:
    """One noise: its name in file names and the manifest, where it comes from, and its samples at 16 kHz."""

    name: str
    source: str  #: ``"generated"`` or the path of the user's file
    wave: np.ndarray
    details: dict = field(default_factory=dict)  #: generator parameters, babble talkers, original rate, ...

    def describe(self) -> dict:
        return {"source": self.source, "seconds": round(self.wave.size / SAMPLE_RATE, 3), **self.details}


def seeded_rng(seed: int, *names: str) -> np.random.Generator:
    """A generator that depends on the seed and on ``names`` only (not on the order things are made in)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *(zlib.crc32(n.encode()) for n in names)])


def check_noise_names(names: list[str]) -> list[str]:
    """The generated noise names asked for, checked; raises :class:`ConfigError` listing the valid ones."""
    unknown = [n for n in names if n not in gen.GENERATED_NOISES]
    if unknown:
        raise ConfigError(
            f"--noises: unknown noise {', '.join(repr(n) for n in unknown)}; choose from "
            f"{', '.join(gen.GENERATED_NOISES)} (or give your own noise files with --noise DIR)"
        )
    return list(dict.fromkeys(names))


def _train_files(corpus: Corpus, noise: str) -> list:
    if not corpus.has("train"):
        raise DataError(
            f"the {noise} noise is made from the training split of the speech corpus, and {corpus.root} has none; "
            "use a corpus with a train split, or leave the noise out with --noises"
        )
    return corpus.split("train")


def _load_many(paths) -> list[np.ndarray]:
    """The speech of ``paths`` through the front end (trimmed, peak-normalised); unusable files are left out."""
    out = []
    for p in paths:
        try:
            out.append(load_audio(p, log=False).astype(np.float64))
        except AudioError:
            continue
    return out


def _babble_talkers(corpus: Corpus, rng: np.random.Generator, split: str = "test") -> dict[str, list]:
    """Up to :data:`BABBLE_TALKERS` training speakers who are not in the mixed ``split``, and their files."""
    mixed_speakers = set(corpus.speakers(split))
    files: dict[str, list] = {}
    for f in _train_files(corpus, "babble"):
        if f.speaker not in mixed_speakers:
            files.setdefault(f.speaker, []).append(f.path)
    if len(files) < 2:
        raise DataError(
            f"babble needs at least 2 training speakers who are not in the {split} split; {corpus.root} has "
            f"{len(files)}; leave babble out with --noises"
        )
    names = sorted(files)
    chosen = sorted(names[i] for i in rng.choice(len(names), min(BABBLE_TALKERS, len(names)), replace=False))
    return {name: files[name][:BABBLE_FILES] for name in chosen}


def _generate(name: str, n: int, seed: int, corpus: Corpus, split: str) -> NoiseTrack:
    rng = seeded_rng(seed, "track", name)
    details: dict = {}
    if name == "white":
        wave = gen.white(rng, n)
    elif name == "pink":
        wave = gen.pink(rng, n)
    elif name == "brown":
        wave = gen.brown(rng, n)
    elif name == "ssn":
        files = _train_files(corpus, "speech-shaped (ssn)")
        picked = files[:: max(1, len(files) // LTAS_FILES)][:LTAS_FILES]
        wave = gen.speech_shaped(rng, n, gen.long_term_spectrum(_load_many(f.path for f in picked)))
        details = {"spectrum_of": f"{len(picked)} training files"}
    elif name == "babble":
        talkers = _babble_talkers(corpus, rng, split)
        voices = [_load_many(paths) for paths in talkers.values()]
        wave = gen.babble(rng, n, [v for v in voices if v])
        details = {"talkers": list(talkers)}
    elif name == "modulated":
        wave, details = gen.modulated(rng, n)
    elif name == "engine":
        wave, details = gen.engine(rng, n)
    else:  # pragma: no cover - check_noise_names guards this
        raise ConfigError(f"unknown noise {name!r}")
    return NoiseTrack(name, "generated", wave, details)


def check_corpus(names: list[str], corpus: Corpus, split: str = "test") -> None:
    """Raise the :class:`DataError` that making the generated noises ``names`` from ``corpus`` would raise (a
    missing training split, too few babble talkers), without making them."""
    if "ssn" in names:
        _train_files(corpus, "speech-shaped (ssn)")
    if "babble" in names:
        _babble_talkers(corpus, seeded_rng(0, "check"), split)


def generated_tracks(
    names: list[str], longest: int, seed: int, corpus: Corpus, split: str = "test"
) -> list[NoiseTrack]:
    """The generated noises ``names``, each a track of ``max(TRACK_SECONDS, longest utterance) + 1 s`` (babble's
    talkers are training speakers who are not in the mixed ``split``)."""
    n = max(int(TRACK_SECONDS * SAMPLE_RATE), int(longest)) + SAMPLE_RATE
    return [_generate(name, n, seed, corpus, split) for name in check_noise_names(names)]


def folder_tracks(folder: str | os.PathLike, taken: set[str]) -> list[NoiseTrack]:
    """The noises of the user's ``folder`` (wav/flac, recursive), mixed down and resampled to 16 kHz; each named
    after its file (letters, digits and ``-``; made unique against ``taken`` and each other).

    Raises :class:`DataError` for a missing or empty folder, and for a file that cannot be read or is silent."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"--noise {folder}: no such folder; give a folder of wav/flac noise files")
    paths = list_audio_files(folder)
    if not paths:
        raise DataError(f"--noise {folder}: the folder has no wav/flac files; put noise recordings in it")
    tracks, names = [], set(taken)
    for path in paths:
        try:
            data, sr = read_audio(path)
            wave, _ = preprocess(data, sr, RAW, path=path)
        except AudioError as exc:
            if exc.reason == "silent":
                raise DataError(f"noise file {exc}: no SNR can be reached with it; remove it from {folder}") from None
            raise DataError(f"noise file {exc}; convert it to wav, or remove it from {folder}") from None
        base = slug(path.stem, fill="-", keep="-").lower()
        name, i = base, 2
        while name in names:
            name, i = f"{base}-{i}", i + 1
        names.add(name)
        details = {"sample_rate": sr} if sr != SAMPLE_RATE else {}
        tracks.append(NoiseTrack(name, str(path), wave.astype(np.float64), details))
    return tracks


def noise_segment(track: NoiseTrack, n: int, rng: np.random.Generator) -> tuple[np.ndarray, int, bool]:
    """``n`` samples of ``track`` from a random offset: ``(segment, offset, looped)``.  A track shorter than ``n``
    is repeated from the offset on (``looped``)."""
    length = track.wave.size
    if length >= n:
        offset = int(rng.integers(0, length - n + 1))
        return track.wave[offset : offset + n], offset, False
    offset = int(rng.integers(0, length))
    return np.resize(np.roll(track.wave, -offset), n), offset, True
