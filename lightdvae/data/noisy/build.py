"""The builder of a noisy test set (:func:`build_noisy_set`, ``lightdvae corpus noisy OUT``): the test split of a
speech corpus mixed with generated or user noises at exact SNRs; with ``split="val"`` its validation split, a
development set on which to choose the EM's options without looking at the test set.

It writes::

    OUT/noisy/{utt}_{noise}_{snr}dB.wav     16 kHz mono 16-bit PCM mixtures (``snr`` as in ``+5``, ``-10``, ``+2p5``)
    OUT/clean/{same name}.wav               the clean reference of each, scaled by the same anti-clipping gain
    OUT/manifest.jsonl                      one JSON object per mixture (see :data:`MANIFEST_FIELDS`)
    OUT/noisy.json                          the set: settings, speech, SNRs, noises, versions; ``complete`` last

The build is deterministic for given options (the noise of a mixture depends on the seed and the mixture's name
only), written file by file atomically, and resumable: the same command on an unfinished folder finishes it, on a
finished one does nothing.  A folder holding a set made with other options is refused unless ``force``.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lightdvae import resultdir
from lightdvae._io import atomic_write_bytes, atomic_write_text, jsonable, slug, utc_now, write_json
from lightdvae.audio import SAMPLE_RATE, AudioError, preprocess, read_audio
from lightdvae.data.corpora import AudioFile, Corpus
from lightdvae.data.noisy import mixing, sources
from lightdvae.data.noisy.generators import GENERATED_NOISES
from lightdvae.data.resolve import resolve_corpus
from lightdvae.errors import ConfigError, DataError, DataWarning
from lightdvae.runtime import progress_bar, versions

__all__ = ["FORMAT", "FORMAT_VERSION", "SET_FILE", "MANIFEST", "NoisySettings", "NoisyBuild", "build_noisy_set"]

FORMAT = "lightdvae-noisy-set"
FORMAT_VERSION = 1
SET_FILE = "noisy.json"
MANIFEST = "manifest.jsonl"
AUDIO_DIRS = ("noisy", "clean")
DESIGNS = ("full", "balanced")
#: The splits a noisy set can be made of: the test split (a test set), or the validation split (a development set).
SPLITS = ("test", "val")
#: The keys of a manifest row, in order.
MANIFEST_FIELDS = (
    "name",  # the file name without .wav, in noisy/ and clean/
    "noisy",  # noisy/NAME.wav (relative to OUT)
    "clean",  # clean/NAME.wav
    "speech",  # the speech file it was made from
    "speaker",
    "noise",  # noise name (a generated type, or a user file's name)
    "noise_source",  # "generated" or the user's noise file
    "noise_offset",  # first sample of the noise track used (16 kHz)
    "noise_looped",  # the track was shorter than the utterance and was repeated
    "snr_db",  # the target SNR
    "measured_snr_db",  # the SNR of the written files (mixing.SNR_DEFINITION)
    "noise_gain",  # factor on the unit-RMS noise track before `gain`
    "gain",  # anti-clipping gain on clean and noisy (1.0: none)
    "samples",
)


@dataclass(frozen=True)
class NoisySettings:
    """The options a noisy set is a function of (its fingerprint, with the speech corpus's folder)."""

    speech: str
    snrs: tuple[float, ...]
    noises: tuple[str, ...]  #: generated noise types
    noise_dir: str | None
    files: int | None
    seed: int
    design: str
    split: str = "test"

    @classmethod
    def checked(cls, speech, snrs, noises, noise_dir, files, seed, design, split="test") -> NoisySettings:
        """The settings of these options; :class:`ConfigError` for impossible ones."""
        if noises is None:
            noises = [] if noise_dir else list(GENERATED_NOISES)
        elif isinstance(noises, str):
            noises = [n.strip() for n in noises.split(",") if n.strip()]
        noises = sources.check_noise_names(list(noises))
        if not noises and not noise_dir:
            raise ConfigError("no noise to mix: name generated noises with --noises, or a noise folder with --noise")
        if files is not None and int(files) < 1:
            raise ConfigError(f"--files must be at least 1, got {files}")
        if design not in DESIGNS:
            raise ConfigError(f"--design must be one of {', '.join(DESIGNS)}, got {design!r}")
        if split not in SPLITS:
            raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
        noise_dir = str(Path(noise_dir).expanduser().resolve()) if noise_dir else None
        return cls(
            str(speech), tuple(mixing.parse_snrs(snrs)), tuple(noises), noise_dir, files, int(seed), design, split
        )

    def fingerprint(self, speech_root) -> dict:
        """What a folder's set is a function of (a test set's, as before ``split`` existed, has no ``split`` key)."""
        fields = asdict(self)
        if fields["split"] == "test":
            del fields["split"]
        return jsonable({**fields, "speech_root": str(speech_root), "format_version": FORMAT_VERSION})


@dataclass
class NoisyBuild:
    """What :func:`build_noisy_set` did."""

    root: Path
    files: int  #: mixtures in the set
    written: int  #: mixtures written by this call (0 when the set was already complete)
    snrs: list[float]
    noises: list[str]
    seconds: float  #: wall time of this call
    already_complete: bool
    skipped_speech: int = 0  #: speech files that could not be read (left out, with a warning)


def build_noisy_set(
    out: str | os.PathLike,
    *,
    speech: str = "builtin",
    snrs=(-5, 0, 5, 10),
    noises=None,
    noise_dir: str | os.PathLike | None = None,
    files: int | None = None,
    seed: int = 0,
    design: str = "full",
    split: str = "test",
    force: bool = False,
    progress: bool | None = None,
) -> NoisyBuild:
    """Mix the test split (or ``split``) of ``speech`` with noises into ``out`` (see the module doc).

    Args:
        speech: a corpus spec (``builtin``, a folder, ``wsj0:DIR``, ...): its test split is mixed; the built-in
            corpus is built on first use (needs espeak-ng).
        snrs: SNRs in dB (``"-5,0,5,10"`` or numbers), each in -20..40.
        noises: generated noise types (:data:`GENERATED_NOISES`; ``"white,pink"`` or a list).  Default: all of
            them, or none when ``noise_dir`` is given.
        noise_dir: a folder of the user's noise recordings (wav/flac, any rate), each one noise.
        files: mix only this many test utterances (a seeded choice); default all.
        seed: seeds the noises, the offsets into them and the choice of files.
        design: ``full`` (every utterance at every SNR with every noise) or ``balanced`` (each utterance once,
            the SNR x noise conditions dealt in a seeded order, as in VoiceBank-DEMAND).
        split: ``"test"`` (a test set) or ``"val"`` (a development set: the validation split, for choosing the EM's
            options; babble's talkers stay training speakers outside the mixed split).
        force: replace a set made with other options in ``out``.
    Raises:
        ConfigError: bad options.  DataError: no such split, unusable noises, ``out`` unusable or taken.
    """
    t0 = time.perf_counter()
    settings = NoisySettings.checked(speech, snrs, noises, noise_dir, files, seed, design, split)
    corpus = resolve_corpus(settings.speech, progress=progress)
    if not corpus.has(settings.split):
        raise DataError(
            f"--speech {settings.speech}: {corpus.root} has no {settings.split} split to mix; give a corpus with one"
        )
    utts = _choose_utterances(corpus.split(settings.split), settings)
    # the user's inputs are checked before the folder is claimed: a mistake leaves no unfinished set behind
    sources.check_corpus(list(settings.noises), corpus, settings.split)
    user_tracks = sources.folder_tracks(settings.noise_dir, set(settings.noises)) if settings.noise_dir else []
    fingerprint = settings.fingerprint(corpus.root)
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a folder; choose a folder for the noisy set")
    with resultdir.folder_lock(out, command="lightdvae corpus noisy", error=DataError):
        state = _claim(out, fingerprint, force)
        if state is not None and state.get("complete"):
            info = state
            return NoisyBuild(
                out,
                info.get("files", 0),
                0,
                list(settings.snrs),
                info.get("noise_names", []),
                time.perf_counter() - t0,
                True,
            )
        write_json(
            out / SET_FILE,
            {"format": FORMAT, "format_version": FORMAT_VERSION, "complete": False, "fingerprint": fingerprint},
        )
        tracks = _generated_tracks(settings, corpus, utts) + user_tracks
        rows, written, skipped = _mix_all(out, settings, utts, tracks, progress)
        _remove_leftovers(out, rows)
        atomic_write_text(out / MANIFEST, "".join(_json_line(r) for r in rows))
        summary = _summary(settings, corpus, utts, tracks, rows, fingerprint, t0)
        write_json(out / SET_FILE, summary)
    names = [t.name for t in tracks]
    return NoisyBuild(out, len(rows), written, list(settings.snrs), names, time.perf_counter() - t0, False, skipped)


# --------------------------------------------------------------------------------------------------------------
# The folder, the utterances, the noises
# --------------------------------------------------------------------------------------------------------------
def _claim(out: Path, fingerprint: dict, force: bool) -> dict | None:
    """The state of a set with this fingerprint already in ``out`` (resume or nothing to do), or None (start)."""
    ours = {SET_FILE, MANIFEST, *AUDIO_DIRS, resultdir.LOCK_FILE}
    others = sorted(p.name for p in out.iterdir() if p.name not in ours and not p.name.startswith("."))
    if others and not (out / SET_FILE).is_file():
        raise DataError(
            f"{out} is not empty ({', '.join(others[:3])}) and holds no noisy set; choose a new or empty folder"
        )
    try:
        return resultdir.claim(
            out,
            fingerprint,
            state_file=SET_FILE,
            files=(MANIFEST,),
            dirs=AUDIO_DIRS,
            overwrite=force,
            what="a noisy set made with other options",
            them="it",
            error=DataError,
        )
    except DataError as exc:  # claim's advice names the options of `eval`; this command's are --force and OUT
        head = str(exc).split("; pass --overwrite")[0]
        raise DataError(f"{head}; pass --force to replace it, or choose another folder") from None


def _utterance_ids(files: list[AudioFile]) -> list[str]:
    """A file-name-safe id per utterance: its file name, with the speaker in front when names repeat."""
    stems = [slug(f.path.stem, keep="-_") for f in files]
    if len(set(stems)) == len(stems):
        return stems
    ids = [slug(f"{f.speaker}_{f.path.stem}", keep="-_") for f in files]
    if len(set(ids)) == len(ids):
        return ids
    return [f"{i:05d}_{s}" for i, s in enumerate(stems)]


def _choose_utterances(files: list[AudioFile], settings: NoisySettings) -> list[tuple[str, AudioFile]]:
    """``(id, file)`` of the test utterances to mix: all, or a seeded choice of ``settings.files``, in path order."""
    pairs = list(zip(_utterance_ids(files), files, strict=True))
    if settings.files is not None and settings.files < len(pairs):
        keep = sorted(random.Random(f"{settings.seed}-files").sample(range(len(pairs)), settings.files))
        pairs = [pairs[i] for i in keep]
    return pairs


def _samples_at_16k(path: Path) -> int:
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception:  # unreadable: said when the file is loaded
        return 0
    return math.ceil(info.frames * SAMPLE_RATE / info.samplerate)


def _generated_tracks(settings: NoisySettings, corpus: Corpus, utts) -> list[sources.NoiseTrack]:
    longest = max((_samples_at_16k(f.path) for _, f in utts), default=0)
    return sources.generated_tracks(list(settings.noises), longest, settings.seed, corpus, settings.split)


# --------------------------------------------------------------------------------------------------------------
# Mixing
# --------------------------------------------------------------------------------------------------------------
def _conditions(settings: NoisySettings, tracks, n_utts: int) -> list[list[tuple[float, int]]]:
    """Per utterance, its ``(snr, track index)`` conditions."""
    every = [(snr, i) for snr in settings.snrs for i in range(len(tracks))]
    if settings.design == "full":
        return [every] * n_utts
    rng, deck, out = random.Random(f"{settings.seed}-conditions"), [], []
    for _ in range(n_utts):
        if not deck:
            deck = every[:]
            rng.shuffle(deck)
        out.append([deck.pop()])
    return out


def _load_speech(path: Path) -> np.ndarray | None:
    try:
        data, sr = read_audio(path)
        return preprocess(data, sr, sources.RAW, path=path)[0].astype(np.float64)
    except AudioError:
        return None


def _mix_all(out: Path, settings: NoisySettings, utts, tracks, progress) -> tuple[list[dict], int, int]:
    """Every mixture of the set, written unless an earlier run wrote it: ``(rows, written, skipped speech)``."""
    conditions = _conditions(settings, tracks, len(utts))
    bar = progress_bar(total=sum(map(len, conditions)), desc="mixing", unit="file", progress=progress, leave=True)
    rows, written, skipped = [], 0, 0
    try:
        for (utt, afile), todo in zip(utts, conditions, strict=True):
            clean = _load_speech(afile.path)
            if clean is None:
                skipped += 1
                bar.update(len(todo))
                continue
            for snr, i in todo:
                row, new = _mix_one(out, utt, afile, clean, tracks[i], snr, settings.seed)
                rows.append(row)
                written += new
                bar.update(1)
    finally:
        bar.close()
    if skipped:
        warnings.warn(f"{skipped} speech file(s) could not be read or are silent; left out", DataWarning, stacklevel=3)
    if not rows:
        raise DataError(f"no test file of --speech {settings.speech} could be read; nothing was mixed")
    return rows, written, skipped


def _mix_one(out: Path, utt: str, afile: AudioFile, clean, track, snr: float, seed: int) -> tuple[dict, bool]:
    """The manifest row of one mixture, and whether its files were written now (not by an earlier run)."""
    name = f"{utt}_{track.name}_{mixing.snr_tag(snr)}"
    segment, offset, looped = sources.noise_segment(track, clean.size, sources.seeded_rng(seed, "offset", name))
    what = f"noise {track.name} ({track.source}, offset {offset})"
    mix = mixing.mix_at_snr(clean, segment, snr, what=what)
    noisy_path, clean_path = out / "noisy" / f"{name}.wav", out / "clean" / f"{name}.wav"
    new = not (noisy_path.is_file() and clean_path.is_file())
    if new:
        atomic_write_bytes(clean_path, mix.clean, fsync=False)
        atomic_write_bytes(noisy_path, mix.noisy, fsync=False)
    row = {
        "name": name,
        "noisy": f"noisy/{name}.wav",
        "clean": f"clean/{name}.wav",
        "speech": str(afile.path),
        "speaker": afile.speaker,
        "noise": track.name,
        "noise_source": track.source,
        "noise_offset": offset,
        "noise_looped": looped,
        "snr_db": float(snr),
        "measured_snr_db": round(mix.snr_db, 5),
        "noise_gain": mix.noise_gain,
        "gain": mix.gain,
        "samples": int(clean.size),
    }
    return row, new


def _remove_leftovers(out: Path, rows: list[dict]) -> None:
    """Delete audio of ``out`` that is not in the set (left by an earlier run that was stopped and changed)."""
    listed = {r["name"] for r in rows}
    for folder in AUDIO_DIRS:
        for path in sorted((out / folder).glob("*.wav")):
            if path.stem not in listed:
                path.unlink()


def _json_line(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


def _summary(settings: NoisySettings, corpus: Corpus, utts, tracks, rows, fingerprint, t0: float) -> dict:
    """The content of ``noisy.json`` once the set is complete."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "complete": True,
        "fingerprint": fingerprint,
        "speech": {
            "spec": settings.speech,
            "corpus": corpus.name,
            "layout": corpus.layout,
            "root": str(corpus.root),
            "split": settings.split,
            "utterances": len(utts),
            "speakers": sorted({f.speaker for _, f in utts}),
        },
        "snrs": list(settings.snrs),
        "snr_definition": mixing.SNR_DEFINITION,
        "noise_names": [t.name for t in tracks],
        "noises": {t.name: t.describe() for t in tracks},
        "design": settings.design,
        "seed": settings.seed,
        "sample_rate": SAMPLE_RATE,
        "peak_limit": mixing.PEAK_LIMIT,
        "files": len(rows),
        "seconds_of_audio": round(sum(r["samples"] for r in rows) / SAMPLE_RATE, 2),
        "created": utc_now(),
        "build_seconds": round(time.perf_counter() - t0, 2),
        "versions": versions(packages=("scipy", "soundfile")),
    }
