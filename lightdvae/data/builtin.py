"""The built-in corpus: speech synthesised with espeak-ng, so the package trains and evaluates with no download.

``build_corpus(out, minutes=30)`` (``lightdvae corpus build OUT``) writes::

    OUT/train/<speaker>/<speaker>_0000.wav ...   16 kHz mono 16-bit PCM, peak -0.9 dBFS
    OUT/val/<speaker>/...
    OUT/test/<speaker>/...
    OUT/manifest.jsonl                           one JSON object per file (see below)
    OUT/corpus.json                              settings, speakers, per-split totals; written last

Speakers.  Each speaker is one espeak-ng voice + variant (``en-us+m1``, ``en-gb-scotland+f3``, ``en-029+klatt2``,
...) with its own base pitch and speed; every utterance adds a small random jitter to both.  Some combinations
silently ignore the variant (``en-gb+f2`` sounds exactly like ``en-gb``), and a few variants are copies of each
other, so every candidate voice is first synthesised on a probe sentence at the default pitch and speed and
kept only if its audio differs from every voice kept so far: not byte-identical, and its long-term average
spectrum at least :data:`MIN_VOICE_DISTANCE_DB` away.

Splits are speaker-disjoint (about 80 / 10 / 10 % of the speakers) and sentence-disjoint (the sentences of
``sentences.txt``, written for this project, are partitioned in the same proportions), so validation and test
measure generalisation to new voices saying new sentences.  Voices that share a variant (``en+f2`` and
``en-us+f2``: one timbre in two accents) are kept in the same split whenever there are enough variants.

Manifest rows: ``file`` (relative to OUT), ``split``, ``speaker``, ``voice``, ``pitch``, ``speed`` (espeak-ng
``-p`` / ``-s``), ``seconds``, ``text``, ``phonemes`` (espeak-ng ``-q -x`` mnemonics in the speaker's accent,
clauses joined by a space) and ``phoneme_tokens`` (the same, one list of phoneme symbols per word, from
``--sep``; stress marks stay attached to the following vowel, ``_:`` etc. are pauses).

A build is deterministic for given options, written file by file (atomically), and resumable: run the same
command again after an interruption and it keeps the files already written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from lightdvae._io import atomic_write_text
from lightdvae.audio import HOP, N_FFT, SAMPLE_RATE, resample, save_audio
from lightdvae.data.corpora import BUILTIN_MANIFEST, BUILTIN_MARKER, SPLITS, Corpus, DataError, discover

logger = logging.getLogger("lightdvae.data")

ESPEAK_INSTALL = "sudo apt-get install espeak-ng"
ESPEAK_INSTALL_HINT = (
    f"install it with `{ESPEAK_INSTALL}` (Debian/Ubuntu), `dnf install espeak-ng` (Fedora) or "
    "`brew install espeak-ng` (macOS), or set LIGHTDVAE_ESPEAK to the espeak-ng executable"
)
BUILD_STATE = ".lightdvae-build.json"
FORMAT = "lightdvae-builtin-corpus"
FORMAT_VERSION = 1
DEFAULT_MINUTES = 30.0
SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
UTTERANCES_PER_SPEAKER = 10  #: aim when the number of speakers is automatic
MIN_SPEAKERS = 6
MAX_SPEAKERS = 120
PROBE_TEXT = "Seven bright lamps were glowing above the quiet harbour, while a thousand voices hummed along."
MIN_VOICE_DISTANCE_DB = 0.5  #: minimum RMS difference of long-term spectra (dB) between two kept voices
PITCH_RANGE = (30, 70)  #: per-speaker base pitch, espeak-ng -p (0-99, default 50)
SPEED_RANGE = (145, 195)  #: per-speaker base speed, words per minute (espeak-ng default 175)
PITCH_JITTER = 4
SPEED_JITTER = 0.06
PEAK = 0.9  #: peak level of the written files

#: Accents (espeak-ng voices) and variants the default speaker pool combines.  ``en`` takes variants but its
#: alias ``en-gb`` does not, which the probe catches.
DEFAULT_BASES = (
    "en",
    "en-us",
    "en-gb-scotland",
    "en-029",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-us-nyc",
)
DEFAULT_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "adam", "anika", "belinda", "benjamin", "david", "edward", "grandma",
    "grandpa", "john", "linda", "max", "michel", "paul", "quincy", "rob", "robert", "steph", "travis", "victor",
)  # fmt: skip

__all__ = [
    "ESPEAK_INSTALL",
    "EspeakNotFound",
    "espeak_path",
    "espeak_version",
    "load_sentences",
    "candidate_voices",
    "VoiceProbe",
    "probe_voice",
    "distinct_voices",
    "build_corpus",
    "read_manifest",
]


class EspeakNotFound(DataError):
    """espeak-ng is not installed (or LIGHTDVAE_ESPEAK points nowhere)."""


# --------------------------------------------------------------------------------------------------------------
# espeak-ng
# --------------------------------------------------------------------------------------------------------------
def espeak_path() -> str:
    """The espeak-ng executable (``$LIGHTDVAE_ESPEAK`` or ``espeak-ng`` on PATH); raises :class:`EspeakNotFound`
    with the install command when there is none."""
    env = os.environ.get("LIGHTDVAE_ESPEAK", "").strip()
    if env:
        found = shutil.which(env)
        if not found:
            raise EspeakNotFound(f"LIGHTDVAE_ESPEAK={env!r} is not an executable; {ESPEAK_INSTALL_HINT}")
        return found
    found = shutil.which("espeak-ng")
    if not found:
        raise EspeakNotFound(
            f"the built-in corpus is synthesised with espeak-ng, which is not installed; {ESPEAK_INSTALL_HINT}"
        )
    return found


def espeak_version() -> str:
    """``espeak-ng --version``'s version number, e.g. ``"1.51"``."""
    out = subprocess.run([espeak_path(), "--version"], capture_output=True, text=True, timeout=30).stdout
    parts = out.split()
    for i, word in enumerate(parts):
        if word == "NG" and i + 1 < len(parts) and "speech:" in parts[i + 1]:
            return parts[i + 2] if i + 2 < len(parts) else out.strip()
    for word in parts:
        if word[:1].isdigit():
            return word
    return out.strip()


def _espeak(args: list[str], text: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            [espeak_path(), *args, "--stdin"], input=text, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise DataError(f"espeak-ng did not finish within {timeout:.0f} s (args {' '.join(args)})") from None


def _parse_phonemes(stdout: str) -> tuple[str, list[list[str]]]:
    """``--sep=" "`` output -> (plain ``-x`` transcript, tokens per word).  Words are separated by two spaces."""
    words: list[list[str]] = []
    for line in stdout.splitlines():
        line = line.strip()
        if not line:
            continue
        for word in line.split("  "):
            tokens = [t for t in word.split(" ") if t]
            if tokens:
                words.append(tokens)
    plain = " ".join("".join(w) for w in words)
    return plain, words


def synthesize(
    text: str,
    voice: str,
    out_wav: str | os.PathLike | None = None,
    *,
    pitch: int | None = None,
    speed: int | None = None,
) -> tuple[np.ndarray, str, list[list[str]]]:
    """Speak ``text`` with espeak-ng.

    Returns ``(wave, phonemes, phoneme_tokens)``: ``wave`` is ``(samples,)`` float32 at 16 kHz (peak
    :data:`PEAK`), also written to ``out_wav`` (16-bit PCM, atomically) when given.  Raises :class:`DataError`
    when espeak-ng fails (unknown voice, ...).
    """
    import soundfile as sf

    args = ["-v", voice, "-x", "--sep= "]
    if pitch is not None:
        args += ["-p", str(int(pitch))]
    if speed is not None:
        args += ["-s", str(int(speed))]
    with tempfile.TemporaryDirectory(prefix="lightdvae-espeak-") as tmp:
        raw = Path(tmp) / "raw.wav"
        proc = _espeak([*args, "-w", str(raw)], text)
        if proc.returncode != 0 or not raw.is_file():
            msg = (proc.stderr or proc.stdout).strip().splitlines()
            raise DataError(f"espeak-ng failed for voice {voice!r}: {msg[-1] if msg else f'exit {proc.returncode}'}")
        data, sr = sf.read(str(raw), dtype="float32", always_2d=True)
    wave = resample(data.mean(axis=1), sr, SAMPLE_RATE)
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    if peak <= 0:
        raise DataError(f"espeak-ng produced silence for voice {voice!r} and text {text[:40]!r}")
    wave = (wave * (PEAK / peak)).astype(np.float32)
    if out_wav is not None:
        save_audio(out_wav, wave, SAMPLE_RATE)
    plain, tokens = _parse_phonemes(proc.stdout)
    return wave, plain, tokens


def transcribe(text: str, voice: str) -> tuple[str, list[list[str]]]:
    """Phoneme transcript of ``text`` in ``voice``'s accent (``espeak-ng -q -x``), plain and per-word tokens."""
    proc = _espeak(["-v", voice, "-q", "-x", "--sep= "], text)
    if proc.returncode != 0:
        raise DataError(f"espeak-ng failed for voice {voice!r}: {proc.stderr.strip()}")
    return _parse_phonemes(proc.stdout)


# --------------------------------------------------------------------------------------------------------------
# Sentences and voices
# --------------------------------------------------------------------------------------------------------------
def load_sentences() -> list[str]:
    """The sentences written for the built-in corpus (``lightdvae/data/sentences.txt``), in file order,
    without duplicates; ``#`` lines are comments."""
    text = resources.files("lightdvae.data").joinpath("sentences.txt").read_text(encoding="utf-8")
    seen, out = set(), []
    for line in text.splitlines():
        s = line.strip()
        if s and not s.startswith("#") and s.lower() not in seen:
            seen.add(s.lower())
            out.append(s)
    return out


def candidate_voices(bases: Sequence[str] = DEFAULT_BASES, variants: Sequence[str] = DEFAULT_VARIANTS) -> list[str]:
    """Every ``base+variant`` of the default pool (the bare bases too), in a fixed order."""
    return [b for b in bases] + [f"{b}+{v}" for v in variants for b in bases]


@dataclass
class VoiceProbe:
    """A voice synthesised on :data:`PROBE_TEXT` at the default pitch and speed."""

    voice: str
    digest: str  #: sha1 of the 16 kHz samples
    spectrum: np.ndarray  #: (513,) long-term average spectrum, dB, mean removed
    seconds: float

    def distance(self, other: VoiceProbe) -> float:
        """RMS difference of the two long-term spectra, dB."""
        return float(np.sqrt(np.mean((self.spectrum - other.spectrum) ** 2)))


def _long_term_spectrum(wave: np.ndarray) -> np.ndarray:
    """Mean power spectrum (dB, mean removed) of the non-silent frames of the protocol's STFT, ``(513,)``.

    NumPy, single-threaded: probes run in parallel threads, where torch's intra-op pool only gets in the way."""
    padded = np.pad(wave.astype(np.float64), (N_FFT // 2, N_FFT // 2))
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    window = np.sin(np.pi * (np.arange(N_FFT) + 0.5) / N_FFT)
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2
    energy = power.sum(axis=1)
    ltas = 10.0 * np.log10(power[energy > energy.max() * 1e-3].mean(axis=0) + 1e-10)
    return ltas - ltas.mean()


def probe_voice(voice: str) -> VoiceProbe | None:
    """Synthesise the probe sentence with ``voice``; None when espeak-ng cannot speak with it."""
    try:
        wave, _, _ = synthesize(PROBE_TEXT, voice)
    except DataError as exc:
        if isinstance(exc, EspeakNotFound):
            raise
        logger.debug("voice %s unusable: %s", voice, exc)
        return None
    digest = hashlib.sha1(wave.tobytes()).hexdigest()
    return VoiceProbe(voice, digest, _long_term_spectrum(wave), wave.size / SAMPLE_RATE)


def distinct_voices(
    candidates: Sequence[str],
    *,
    need: int | None = None,
    workers: int | None = None,
    min_distance_db: float = MIN_VOICE_DISTANCE_DB,
) -> tuple[list[VoiceProbe], dict[str, str]]:
    """Keep the candidates whose audio really differs from every voice kept before them (in order).

    A candidate is rejected when espeak-ng cannot use it; when it is ``base+variant`` and sounds exactly like
    ``base`` (espeak-ng ignored the variant, as for ``en-gb+f2``); when its probe audio is byte-identical to a
    kept voice's; or when its long-term spectrum is within ``min_distance_db`` of one (variants that are near
    copies of each other).  Stops once ``need`` voices are kept (all candidates when None).

    Returns ``(kept probes, {rejected voice: reason})``.
    """
    workers = workers or min(4, os.cpu_count() or 1)
    kept: list[VoiceProbe] = []
    rejected: dict[str, str] = {}
    by_digest: dict[str, str] = {}
    probes: dict[str, VoiceProbe | None] = {}
    todo: list[str] = []
    for v in candidates:  # drop repeated names up front
        if v in todo:
            rejected[v] = "listed twice"
        else:
            todo.append(v)
    chunk = max(workers * 2, 4)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lightdvae-probe") as pool:
        for start in range(0, len(todo), chunk):
            if need is not None and len(kept) >= need:
                break
            batch = todo[start : start + chunk]
            names = list(dict.fromkeys(batch + [v.split("+", 1)[0] for v in batch if "+" in v]))
            names = [n for n in names if n not in probes]
            probes.update(zip(names, pool.map(probe_voice, names), strict=True))
            for voice in batch:
                if need is not None and len(kept) >= need:
                    break
                probe = probes[voice]
                if probe is None:
                    rejected[voice] = "espeak-ng cannot use this voice"
                    continue
                base = probes.get(voice.split("+", 1)[0]) if "+" in voice else None
                if base is not None and base.digest == probe.digest:
                    rejected[voice] = f"espeak-ng ignores the variant: sounds exactly like {base.voice}"
                    continue
                if probe.digest in by_digest:
                    rejected[voice] = f"sounds exactly like {by_digest[probe.digest]}"
                    continue
                near = min(kept, key=probe.distance, default=None)
                if near is not None and probe.distance(near) < min_distance_db:
                    rejected[voice] = f"too close to {near.voice} ({probe.distance(near):.2f} dB)"
                    continue
                by_digest[probe.digest] = voice
                kept.append(probe)
    return kept, rejected


# --------------------------------------------------------------------------------------------------------------
# The build
# --------------------------------------------------------------------------------------------------------------
@dataclass
class _Speaker:
    name: str
    voice: str
    split: str
    pitch: int
    speed: int


@dataclass
class _Utterance:
    file: str  # relative to the corpus root
    split: str
    speaker: str
    voice: str
    pitch: int
    speed: int
    text: str


def _speaker_name(voice: str) -> str:
    return voice.replace("+", "_").replace("/", "-").replace(" ", "-")


def _estimate_seconds(text: str, speed_wpm: float = 175.0) -> float:
    words = len(text.split())
    return words * 60.0 / speed_wpm + 0.1 * text.count(",") + 0.5


def _split_counts(n: int) -> dict[str, int]:
    n_val = max(1, round(n * SPLIT_FRACTIONS["val"]))
    n_test = max(1, round(n * SPLIT_FRACTIONS["test"]))
    return {"train": n - n_val - n_test, "val": n_val, "test": n_test}


def _variant(voice: str) -> str:
    return voice.split("+", 1)[1] if "+" in voice else ""


def _plan_speakers(probes: list[VoiceProbe], rng: random.Random) -> list[_Speaker]:
    """Assign voices to splits.  Voices sharing a variant (``en+f2``, ``en-us+f2``: one timbre, two accents) go to
    the same split, so validation and test timbres are never heard in training; when the voices do not have
    enough different variants for that, voices are split individually."""
    counts = _split_counts(len(probes))
    groups: dict[str, list[VoiceProbe]] = {}
    for p in probes:
        groups.setdefault(_variant(p.voice), []).append(p)
    keys = list(groups)
    rng.shuffle(keys)
    assignment: dict[str, list[VoiceProbe]] = {"val": [], "test": [], "train": []}
    if len(keys) >= 3:
        left = keys[:]
        for split in ("val", "test"):
            for k in list(left):
                if len(left) <= 1:
                    break
                if len(assignment[split]) + len(groups[k]) <= counts[split]:
                    assignment[split].extend(groups[k])
                    left.remove(k)
                if len(assignment[split]) >= counts[split]:
                    break
            if not assignment[split] and len(left) > 1:
                k = min(left, key=lambda key: len(groups[key]))
                assignment[split].extend(groups[k])
                left.remove(k)
        assignment["train"] = [p for k in left for p in groups[k]]
    if not all(assignment.values()):  # too few variants: split voice by voice
        order = probes[:]
        rng.shuffle(order)
        assignment = {
            "val": order[: counts["val"]],
            "test": order[counts["val"] : counts["val"] + counts["test"]],
            "train": order[counts["val"] + counts["test"] :],
        }
    speakers = []
    for split in ("val", "test", "train"):
        for p in assignment[split]:
            pitch, speed = rng.randint(*PITCH_RANGE), rng.randint(*SPEED_RANGE)
            speakers.append(_Speaker(_speaker_name(p.voice), p.voice, split, pitch, speed))
    return speakers


def _partition_sentences(sentences: list[str], rng: random.Random) -> dict[str, list[str]]:
    shuffled = sentences[:]
    rng.shuffle(shuffled)
    n = len(shuffled)
    n_val = max(1, round(n * SPLIT_FRACTIONS["val"]))
    n_test = max(1, round(n * SPLIT_FRACTIONS["test"]))
    return {"val": shuffled[:n_val], "test": shuffled[n_val : n_val + n_test], "train": shuffled[n_val + n_test :]}


def _utterances(split: str, speakers: list[_Speaker], sentences: list[str], seed: int) -> Iterator[_Utterance]:
    """The endless, deterministic sequence of utterances of one split: speakers in turn, sentences in turn."""
    rng = random.Random(f"{seed}-{split}-utterances")
    per_speaker = {s.name: 0 for s in speakers}
    j = 0
    while True:
        spk = speakers[j % len(speakers)]
        text = sentences[j % len(sentences)]
        k = per_speaker[spk.name]
        per_speaker[spk.name] += 1
        pitch = min(99, max(0, spk.pitch + rng.randint(-PITCH_JITTER, PITCH_JITTER)))
        speed = max(80, round(spk.speed * (1.0 + rng.uniform(-SPEED_JITTER, SPEED_JITTER))))
        yield _Utterance(f"{split}/{spk.name}/{spk.name}_{k:04d}.wav", split, spk.name, spk.voice, pitch, speed, text)
        j += 1


def _sentences_digest(sentences: list[str]) -> str:
    return hashlib.sha1("\n".join(sentences).encode()).hexdigest()[:16]


def _owned(out: Path) -> bool:
    return (out / BUILTIN_MARKER).is_file() or (out / BUILD_STATE).is_file()


def _wipe(out: Path) -> None:
    """Remove a previous corpus from ``out`` (only what a build writes)."""
    for split in SPLITS:
        if (out / split).is_dir():
            shutil.rmtree(out / split)
    for name in (BUILTIN_MANIFEST, BUILTIN_MARKER, BUILD_STATE):
        if (out / name).exists():
            (out / name).unlink()


def _synthesize_one(root: Path, utt: _Utterance) -> dict:
    import soundfile as sf

    path = root / utt.file
    if path.is_file():  # written by an interrupted earlier run (atomically, so complete)
        try:
            seconds = sf.info(str(path)).frames / SAMPLE_RATE
            phonemes, tokens = transcribe(utt.text, utt.voice)
        except Exception:  # unreadable leftover: synthesise again
            path.unlink()
        else:
            return {**asdict(utt), "seconds": round(seconds, 4), "phonemes": phonemes, "phoneme_tokens": tokens}
    wave, phonemes, tokens = synthesize(utt.text, utt.voice, path, pitch=utt.pitch, speed=utt.speed)
    return {**asdict(utt), "seconds": round(wave.size / SAMPLE_RATE, 4), "phonemes": phonemes, "phoneme_tokens": tokens}


def build_corpus(
    out: str | os.PathLike,
    *,
    minutes: float = DEFAULT_MINUTES,
    voices: Sequence[str] | None = None,
    speakers: int | None = None,
    seed: int = 0,
    workers: int | None = None,
    force: bool = False,
    resume: bool = False,
    progress: bool | None = None,
) -> Corpus:
    """Synthesise the built-in corpus into ``out`` (see the module doc) and return it as a :class:`Corpus`.

    Args:
        out: output folder; must be empty, new, or hold a corpus from this function.
        minutes: total speech to synthesise (all splits), in minutes of audio.
        voices: espeak-ng voices to use (e.g. ``["en+f2", "en-us+m1", ...]``), each checked to be distinct; the
            default is the whole pool of :func:`candidate_voices`, in a seeded random order.
        speakers: number of speakers; default ``minutes * 60 / 3.2 s / 10`` clamped to [6, 120] (about ten
            utterances each), or all of ``voices`` when they are given.  At least 3 (one per split).
        seed: seeds the voice order, speaker pitch/speed, splits and sentence order.
        workers: parallel espeak-ng processes (default ``min(4, cpu_count)``).
        force: delete a previous corpus (built by this function) in ``out`` first.
        resume: finish an interrupted build in ``out`` with the options it was started with.
        progress: tqdm bars (None: on a terminal).
    Raises:
        EspeakNotFound: espeak-ng missing (the message has the install command).
        DataError: bad options, ``out`` not usable, too few distinct voices.
    """
    from tqdm.auto import tqdm

    out = Path(out).expanduser()
    espeak_path()  # fail early with the install hint
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a folder")
    sentences = load_sentences()
    if resume:
        state_file = out / BUILD_STATE
        if not state_file.is_file():
            raise DataError(f"nothing to resume in {out} ({BUILD_STATE} missing)")
        settings = json.loads(state_file.read_text())["settings"]
        minutes, voices = settings["minutes"], settings["voices"]
        speakers, seed = settings["speakers"], settings["seed"]
    minutes = float(minutes)
    if not minutes > 0:
        raise DataError(f"--minutes must be positive, got {minutes}")
    if speakers is not None and int(speakers) < 3:
        raise DataError(f"need at least 3 speakers (one per split), got {speakers}")
    if voices is not None:
        voices = [v.strip() for v in voices if v and v.strip()]
        if len(voices) < 3:
            raise DataError(f"need at least 3 voices (one speaker per split), got {len(voices)}: {', '.join(voices)}")
    settings = {
        "minutes": minutes,
        "voices": list(voices) if voices is not None else None,
        "speakers": int(speakers) if speakers is not None else None,
        "seed": int(seed),
        "sentences": _sentences_digest(sentences),
        "format_version": FORMAT_VERSION,
    }

    # -- is the folder ours, finished, or to be resumed? -------------------------------------------------------
    if out.is_dir() and any(out.iterdir()):
        if not _owned(out):
            raise DataError(f"{out} is not empty and holds no lightdvae corpus; choose a new or empty folder")
        if force:
            _wipe(out)
        elif (out / BUILTIN_MARKER).is_file():
            try:
                previous = json.loads((out / BUILTIN_MARKER).read_text()).get("settings", {})
            except (OSError, ValueError):
                previous = {}
            if previous == settings:
                logger.info("%s already holds this corpus", out)
                return discover(out, "builtin")
            raise DataError(
                f"{out} already holds a corpus built with other options ({_describe(previous)}); "
                "pass --force to replace it, or choose another folder"
            )
        else:
            try:
                previous = json.loads((out / BUILD_STATE).read_text()).get("settings", {})
            except (OSError, ValueError):
                previous = {}
            if previous != settings:
                raise DataError(
                    f"{out} holds an unfinished build with other options ({_describe(previous)}); rerun it with "
                    "those options to resume, or pass --force to start over"
                )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / BUILD_STATE, json.dumps({"settings": settings}, indent=2))

    t0 = time.perf_counter()
    rng = random.Random(seed)
    workers = workers or min(4, os.cpu_count() or 1)
    avg = float(np.mean([_estimate_seconds(s) for s in sentences]))
    if voices is not None:
        candidates = list(voices)
        need = int(speakers) if speakers is not None else None
    else:
        candidates = candidate_voices()
        rng.shuffle(candidates)
        auto = round(minutes * 60.0 / avg / UTTERANCES_PER_SPEAKER)
        need = int(speakers) if speakers is not None else max(MIN_SPEAKERS, min(MAX_SPEAKERS, auto))
    probes, rejected = distinct_voices(candidates, need=need, workers=workers)
    for v, why in rejected.items():
        logger.info("voice %s left out: %s", v, why)
    if voices is not None:
        bad = [f"{v} ({why})" for v, why in rejected.items()]
        if bad:
            logger.warning("left out %d of the given voices: %s", len(bad), "; ".join(bad))
    if len(probes) < 3:
        raise DataError(
            f"only {len(probes)} distinct voice(s) among {len(candidates)} candidates; need at least 3. "
            + ("Rejected: " + "; ".join(f"{v}: {w}" for v, w in list(rejected.items())[:6]) if rejected else "")
        )
    if need is not None and len(probes) < need:
        logger.warning("only %d distinct voices found, fewer than the %d speakers asked for", len(probes), need)

    spk_plan = _plan_speakers(probes, rng)
    sent_plan = _partition_sentences(sentences, rng)
    n_total = len(spk_plan)
    targets = {s: minutes * 60.0 * sum(sp.split == s for sp in spk_plan) / n_total for s in SPLITS}

    rows: list[dict] = []
    bar = tqdm(
        total=round(minutes * 60.0),
        desc="synthesising",
        unit="s",
        disable=None if progress is None else not progress,
        dynamic_ncols=True,
    )
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lightdvae-espeak") as pool:
            for split in SPLITS:
                split_speakers = [sp for sp in spk_plan if sp.split == split]
                gen = _utterances(split, split_speakers, sent_plan[split], seed)
                done_s, n_done = 0.0, 0
                while done_s < targets[split] or n_done < len(split_speakers):
                    # enough for the rest of the split, estimated, plus one batch of slack
                    est_left = max(1, int((targets[split] - done_s) / avg) + 1)
                    batch = [next(gen) for _ in range(min(max(est_left, workers), 4 * workers))]
                    for row in pool.map(lambda u: _synthesize_one(out, u), batch):
                        if done_s >= targets[split] and n_done >= len(split_speakers):
                            (out / row["file"]).unlink(missing_ok=True)  # overshoot of the last batch
                            continue
                        rows.append(row)
                        done_s += row["seconds"]
                        n_done += 1
                        bar.update(min(row["seconds"], max(0.0, bar.total - bar.n)))
    finally:
        bar.close()

    # leftovers of an earlier, longer plan (files not in the manifest) are removed
    listed = {r["file"] for r in rows}
    for split in SPLITS:
        for p in sorted((out / split).rglob("*.wav")) if (out / split).is_dir() else []:
            if p.relative_to(out).as_posix() not in listed:
                p.unlink()

    summary = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "settings": settings,
        "sample_rate": SAMPLE_RATE,
        "espeak_ng": espeak_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "build_seconds": round(time.perf_counter() - t0, 2),
        "sentences": len(sentences),
        "total_seconds": round(sum(r["seconds"] for r in rows), 2),
        "splits": {
            s: {
                "files": sum(r["split"] == s for r in rows),
                "seconds": round(sum(r["seconds"] for r in rows if r["split"] == s), 2),
                "speakers": sorted({r["speaker"] for r in rows if r["split"] == s}),
                "sentences": len(sent_plan[s]),
            }
            for s in SPLITS
        },
        "speakers": {
            sp.name: {"voice": sp.voice, "split": sp.split, "pitch": sp.pitch, "speed": sp.speed} for sp in spk_plan
        },
        "rejected_voices": rejected,
    }
    from lightdvae import __version__

    summary["lightdvae"] = __version__
    atomic_write_text(out / BUILTIN_MANIFEST, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    atomic_write_text(out / BUILTIN_MARKER, json.dumps(summary, indent=2, ensure_ascii=False))
    (out / BUILD_STATE).unlink(missing_ok=True)
    logger.info(
        "built-in corpus: %d files, %.1f min, %d speakers in %.1f s",
        len(rows),
        summary["total_seconds"] / 60,
        n_total,
        summary["build_seconds"],
    )
    return discover(out, "builtin")


def _describe(settings: dict) -> str:
    if not settings:
        return "unknown options"
    parts = [f"minutes={settings.get('minutes')}", f"seed={settings.get('seed')}"]
    if settings.get("speakers") is not None:
        parts.append(f"speakers={settings['speakers']}")
    if settings.get("voices"):
        parts.append(f"voices={','.join(settings['voices'])}")
    return ", ".join(parts)


def read_manifest(root: str | os.PathLike) -> list[dict]:
    """The rows of ``root/manifest.jsonl`` (see the module doc for the fields), with ``path`` added (absolute)."""
    root = Path(root)
    manifest = root / BUILTIN_MANIFEST
    if not manifest.is_file():
        raise DataError(f"{manifest} not found; is {root} a corpus built by `lightdvae corpus build`?")
    rows = []
    with open(manifest, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                row["path"] = str(root / row["file"])
                rows.append(row)
    return rows
