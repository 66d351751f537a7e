"""The build of the built-in corpus (:func:`build_corpus`): claim the folder, choose the voices, plan the
speakers and sentences, synthesise file by file (atomically, resumable), then write the manifest and
``corpus.json`` last."""

from __future__ import annotations

import json
import logging
import os
import random
import time
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np

from lightdvae._io import atomic_write_text
from lightdvae.audio import SAMPLE_RATE, save_audio
from lightdvae.data.builtin.espeak import PEAK, espeak_path, espeak_version, synthesize, transcribe
from lightdvae.data.builtin.plan import (
    Speaker,
    Utterance,
    auto_speakers,
    estimate_seconds,
    extra_train_speakers,
    load_sentences,
    partition_sentences,
    plan_speakers,
    split_targets,
    utterances,
)
from lightdvae.data.builtin.settings import (
    DEFAULT_MINUTES,
    FORMAT,
    FORMAT_VERSION,
    BuildSettings,
    describe_settings,
    recorded_settings,
)
from lightdvae.data.builtin.voices import VoiceProbe, candidate_voices, distinct_voices
from lightdvae.data.corpora import BUILD_STATE, BUILTIN_MANIFEST, BUILTIN_MARKER, SPLITS, Corpus, discover
from lightdvae.errors import DataError
from lightdvae.resultdir import clear
from lightdvae.runtime import progress_bar

logger = logging.getLogger("lightdvae.data")

__all__ = ["BuildSettings", "build_corpus", "add_noise_floor"]


def build_corpus(
    out: str | os.PathLike,
    *,
    minutes: float = DEFAULT_MINUTES,
    voices: Sequence[str] | None = None,
    speakers: int | None = None,
    seed: int = 0,
    train_minutes: float | None = None,
    noise_floor_db: float | None = None,
    workers: int | None = None,
    force: bool = False,
    resume: bool = False,
    progress: bool | None = None,
) -> Corpus:
    """Synthesise the built-in corpus into ``out`` (see :mod:`lightdvae.data.builtin`) and return it as a
    :class:`Corpus`.

    Args:
        out: output folder; must be empty, new, or hold a corpus from this function.
        minutes: total speech to synthesise (all splits), in minutes of audio.
        voices: espeak-ng voices to use (e.g. ``["en+f2", "en-us+m1", ...]``), each checked to be distinct; the
            default is the whole pool of :func:`candidate_voices`, in a seeded random order.
        speakers: number of speakers; default ``minutes * 60 / 3.2 s / 10`` clamped to [6, 120] (about ten
            utterances each), or all of ``voices`` when they are given.  At least 3 (one per split).
        seed: seeds the voice order, speaker pitch/speed, splits and sentence order.
        train_minutes: training speech, in minutes, when more than the training share of ``minutes`` is wanted.
            The validation and test splits stay exactly those of ``minutes`` (same speakers, sentences and audio),
            so models trained on more speech are scored on the same test split; the training split keeps its
            speakers and sentences, and gains speakers from the rest of the voice pool (about ten files each,
            none with a variant of a validation or test voice, up to 120 in all).
        noise_floor_db: add to every file a white Gaussian noise floor this many dB below the files' peak
            (e.g. -70), seeded by the file, as every real recording has one.  espeak-ng's pauses are digital
            silence, power exactly 0, where the Itakura-Saito loss has no minimum (its log-variance term rewards
            an ever smaller variance): a floor gives those frames a finite target.  Every split gets it, so the
            held-out splits differ from the default corpus's by the floor alone.
        workers: parallel espeak-ng processes (default ``min(4, cpu_count)``).
        force: delete a previous corpus (built by this function) in ``out`` first.
        resume: finish an interrupted build in ``out`` with the options it was started with.
        progress: tqdm bars (None: on a terminal).
    Raises:
        EspeakNotFound: espeak-ng missing (the message has the install command).
        DataError: bad options, ``out`` not usable, too few distinct voices.
    """
    out = Path(out).expanduser()
    espeak_path()  # fail early with the install hint
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a folder")
    sentences = load_sentences()
    if resume:
        minutes, voices, speakers, seed, train_minutes, noise_floor_db = _resumed_options(out)
    settings = BuildSettings.checked(minutes, voices, speakers, seed, sentences, train_minutes, noise_floor_db)
    if _claim(out, settings.to_dict(), force):
        logger.info("%s already holds this corpus", out)
        return discover(out, "builtin")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / BUILD_STATE, json.dumps({"settings": settings.to_dict()}, indent=2))

    t0 = time.perf_counter()
    rng = random.Random(seed)
    workers = workers or min(4, os.cpu_count() or 1)
    avg = float(np.mean([estimate_seconds(s) for s in sentences]))
    probes, spare, rejected = _choose_voices(settings, rng, avg, workers)
    speaker_plan = plan_speakers(probes, rng)
    sentence_plan = partition_sentences(sentences, rng)
    targets = split_targets(speaker_plan, settings.minutes)
    if settings.train_minutes is not None:
        targets["train"] = settings.train_minutes * 60.0
        want = auto_speakers(settings.train_minutes, avg) - sum(sp.split == "train" for sp in speaker_plan)
        speaker_plan += extra_train_speakers(speaker_plan, [p.voice for p in spare], want, settings.seed)
    rows = _synthesise(out, speaker_plan, sentence_plan, targets, settings, avg, workers, progress)
    _remove_leftovers(out, rows)
    summary = _summary(settings, sentences, rows, speaker_plan, sentence_plan, rejected, t0)
    atomic_write_text(out / BUILTIN_MANIFEST, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    atomic_write_text(out / BUILTIN_MARKER, json.dumps(summary, indent=2, ensure_ascii=False))
    (out / BUILD_STATE).unlink(missing_ok=True)
    logger.info(
        "built-in corpus: %d files, %.1f min, %d speakers in %.1f s",
        len(rows),
        summary["total_seconds"] / 60,
        len(speaker_plan),
        summary["build_seconds"],
    )
    return discover(out, "builtin")


# --------------------------------------------------------------------------------------------------------------
# Whose folder: reuse, resume, refuse or replace
# --------------------------------------------------------------------------------------------------------------
def _resumed_options(out: Path) -> tuple:
    """``(minutes, voices, speakers, seed, train_minutes, noise_floor_db)`` of the unfinished build in ``out``."""
    state_file = out / BUILD_STATE
    if not state_file.is_file():
        raise DataError(f"nothing to resume in {out} ({BUILD_STATE} missing)")
    settings = json.loads(state_file.read_text())["settings"]
    return (
        settings["minutes"],
        settings["voices"],
        settings["speakers"],
        settings["seed"],
        settings.get("train_minutes"),
        settings.get("noise_floor_db"),
    )


def _claim(out: Path, settings: dict, force: bool) -> bool:
    """Whether ``out`` already holds the corpus of ``settings`` (nothing to build).  A folder holding files but
    no corpus is refused (also with ``force``); a finished corpus or an unfinished build with other settings is
    refused unless ``force``, which deletes it.  An unfinished build with these settings is resumed."""
    if not (out.is_dir() and any(out.iterdir())):
        return False
    if not ((out / BUILTIN_MARKER).is_file() or (out / BUILD_STATE).is_file()):
        raise DataError(f"{out} is not empty and holds no lightdvae corpus; choose a new or empty folder")
    if force:
        clear(out, dirs=SPLITS)  # the audio first: a kill meanwhile leaves a folder that is still recognised
        clear(out, files=(BUILTIN_MANIFEST, BUILTIN_MARKER, BUILD_STATE))
        return False
    if (out / BUILTIN_MARKER).is_file():
        previous = recorded_settings(out / BUILTIN_MARKER)
        if previous == settings:
            return True
        raise DataError(
            f"{out} already holds a corpus built with other options ({describe_settings(previous)}); "
            "pass --force to replace it, or choose another folder"
        )
    previous = recorded_settings(out / BUILD_STATE)
    if previous != settings:
        raise DataError(
            f"{out} holds an unfinished build with other options ({describe_settings(previous)}); rerun it with "
            "those options to resume, or pass --force to start over"
        )
    return False


# --------------------------------------------------------------------------------------------------------------
# Voices, audio, summary
# --------------------------------------------------------------------------------------------------------------
def _choose_voices(
    settings: BuildSettings, rng: random.Random, avg: float, workers: int
) -> tuple[list[VoiceProbe], list[VoiceProbe], dict[str, str]]:
    """The distinct voices of the corpus (the given ones, or a seeded choice from the pool), the distinct voices
    after them (only looked for with ``train_minutes``: the extra training speakers come from them) and the
    rejected ones.  The voices kept are those of a search that stops at the number needed: a kept voice is only
    compared with the voices kept before it."""
    if settings.voices is not None:
        candidates = list(settings.voices)
        need = settings.speakers
    else:
        candidates = candidate_voices()
        rng.shuffle(candidates)
        need = settings.speakers if settings.speakers is not None else auto_speakers(settings.minutes, avg)
    search = None if settings.train_minutes is not None else need
    probes, rejected = distinct_voices(candidates, need=search, workers=workers)
    spare = probes[need:] if need is not None else []
    probes = probes[:need] if need is not None else probes
    for v, why in rejected.items():
        logger.info("voice %s left out: %s", v, why)
    if settings.voices is not None:
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
    return probes, spare, rejected


def _synthesize_one(root: Path, utt: Utterance, settings: BuildSettings) -> dict:
    """The manifest row of ``utt``, its audio synthesised (or kept from an interrupted earlier build)."""
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
    wave, phonemes, tokens = synthesize(utt.text, utt.voice, pitch=utt.pitch, speed=utt.speed)
    if settings.noise_floor_db is not None:
        wave = add_noise_floor(wave, settings.noise_floor_db, f"{settings.seed}/{utt.file}")
    save_audio(path, wave, SAMPLE_RATE)
    return {**asdict(utt), "seconds": round(wave.size / SAMPLE_RATE, 4), "phonemes": phonemes, "phoneme_tokens": tokens}


def _synthesise(
    out: Path,
    speakers: list[Speaker],
    sentence_plan: dict[str, list[str]],
    targets: dict[str, float],
    settings: BuildSettings,
    avg: float,
    workers: int,
    progress: bool | None,
) -> list[dict]:
    """Synthesise every split up to its ``targets`` seconds, ``workers`` espeak-ng processes at a time; the
    manifest rows, in order."""
    rows: list[dict] = []
    bar = progress_bar(total=round(sum(targets.values())), desc="synthesising", unit="s", progress=progress, leave=True)
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lightdvae-espeak") as pool:
            for split in SPLITS:
                split_speakers = [sp for sp in speakers if sp.split == split]
                todo = utterances(split, split_speakers, sentence_plan[split], settings.seed)
                rows += _synthesise_split(
                    pool, out, todo, targets[split], len(split_speakers), avg, workers, bar, settings
                )
    finally:
        bar.close()
    return rows


def _synthesise_split(
    pool, out: Path, todo: Iterator[Utterance], target: float, n_speakers: int, avg, workers, bar, settings
):
    """Utterances of one split until it has ``target`` seconds and every speaker has spoken."""
    rows, done_s, n_done = [], 0.0, 0
    while done_s < target or n_done < n_speakers:
        # enough for the rest of the split, estimated, plus one batch of slack
        est_left = max(1, int((target - done_s) / avg) + 1)
        batch = [next(todo) for _ in range(min(max(est_left, workers), 4 * workers))]
        for row in pool.map(lambda u: _synthesize_one(out, u, settings), batch):
            if done_s >= target and n_done >= n_speakers:
                (out / row["file"]).unlink(missing_ok=True)  # overshoot of the last batch
                continue
            rows.append(row)
            done_s += row["seconds"]
            n_done += 1
            bar.update(min(row["seconds"], max(0.0, bar.total - bar.n)))
    return rows


def add_noise_floor(wave: np.ndarray, level_db: float, key: str) -> np.ndarray:
    """``wave`` plus white Gaussian noise of RMS ``PEAK * 10**(level_db / 20)`` (``level_db`` re the files' peak),
    drawn from a generator seeded by ``key`` (the build's seed and the file), so a build is reproducible."""
    rng = np.random.default_rng(zlib.crc32(key.encode("utf-8")))
    sigma = PEAK * 10.0 ** (level_db / 20.0)
    return (wave.astype(np.float64) + sigma * rng.standard_normal(wave.size)).astype(np.float32)


def _remove_leftovers(out: Path, rows: list[dict]) -> None:
    """Delete the files of an earlier, longer plan (files not in the manifest)."""
    listed = {r["file"] for r in rows}
    for split in SPLITS:
        for p in sorted((out / split).rglob("*.wav")) if (out / split).is_dir() else []:
            if p.relative_to(out).as_posix() not in listed:
                p.unlink()


def _summary(settings, sentences, rows, speakers, sentence_plan, rejected, t0: float) -> dict:
    """The content of ``corpus.json``."""
    summary = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "settings": settings.to_dict(),
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
                "sentences": len(sentence_plan[s]),
            }
            for s in SPLITS
        },
        "speakers": {
            sp.name: {"voice": sp.voice, "split": sp.split, "pitch": sp.pitch, "speed": sp.speed} for sp in speakers
        },
        "rejected_voices": rejected,
    }
    from lightdvae import __version__

    summary["lightdvae"] = __version__
    return summary
