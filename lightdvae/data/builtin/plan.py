"""The plan of a built-in corpus, before any audio: the sentences, the speakers and their splits (speaker- and
sentence-disjoint), and the deterministic sequence of utterances of each split."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources

from lightdvae.data.builtin.voices import VoiceProbe
from lightdvae.data.corpora import SPLITS

SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
UTTERANCES_PER_SPEAKER = 10  #: aim when the number of speakers is automatic
MIN_SPEAKERS = 6
MAX_SPEAKERS = 120
PITCH_RANGE = (30, 70)  #: per-speaker base pitch, espeak-ng -p (0-99, default 50)
SPEED_RANGE = (145, 195)  #: per-speaker base speed, words per minute (espeak-ng default 175)
PITCH_JITTER = 4
SPEED_JITTER = 0.06

__all__ = [
    "SPLIT_FRACTIONS",
    "load_sentences",
    "Speaker",
    "Utterance",
    "estimate_seconds",
    "auto_speakers",
    "plan_speakers",
    "extra_train_speakers",
    "partition_sentences",
    "split_targets",
    "utterances",
    "sentences_digest",
]


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


@dataclass
class Speaker:
    """One speaker: an espeak-ng voice in one split, with its base pitch and speed."""

    name: str
    voice: str
    split: str
    pitch: int
    speed: int


@dataclass
class Utterance:
    """One file of the corpus, as planned (its fields start the file's manifest row)."""

    file: str  # relative to the corpus root
    split: str
    speaker: str
    voice: str
    pitch: int
    speed: int
    text: str


def _speaker_name(voice: str) -> str:
    return voice.replace("+", "_").replace("/", "-").replace(" ", "-")


def estimate_seconds(text: str, speed_wpm: float = 175.0) -> float:
    words = len(text.split())
    return words * 60.0 / speed_wpm + 0.1 * text.count(",") + 0.5


def _split_counts(n: int) -> dict[str, int]:
    n_val = max(1, round(n * SPLIT_FRACTIONS["val"]))
    n_test = max(1, round(n * SPLIT_FRACTIONS["test"]))
    return {"train": n - n_val - n_test, "val": n_val, "test": n_test}


def _variant(voice: str) -> str:
    return voice.split("+", 1)[1] if "+" in voice else ""


def plan_speakers(probes: list[VoiceProbe], rng: random.Random) -> list[Speaker]:
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
            speakers.append(Speaker(_speaker_name(p.voice), p.voice, split, pitch, speed))
    return speakers


def extra_train_speakers(speakers: list[Speaker], voices: list[str], want: int, seed: int) -> list[Speaker]:
    """Up to ``want`` training speakers to add to the plan ``speakers`` (for a longer training split), from
    ``voices`` in order, leaving out every voice whose variant (its timbre) a validation or test speaker has;
    pitch and speed from a random stream of their own, so that the plan's own speakers and splits are those it
    had without them."""
    held_out = {_variant(sp.voice) for sp in speakers if sp.split != "train"}
    rng = random.Random(f"{seed}-extra-train-speakers")
    extra: list[Speaker] = []
    for voice in voices:
        if len(extra) >= want:
            break
        if _variant(voice) not in held_out:
            pitch, speed = rng.randint(*PITCH_RANGE), rng.randint(*SPEED_RANGE)
            extra.append(Speaker(_speaker_name(voice), voice, "train", pitch, speed))
    return extra


def partition_sentences(sentences: list[str], rng: random.Random) -> dict[str, list[str]]:
    shuffled = sentences[:]
    rng.shuffle(shuffled)
    n = len(shuffled)
    n_val = max(1, round(n * SPLIT_FRACTIONS["val"]))
    n_test = max(1, round(n * SPLIT_FRACTIONS["test"]))
    return {"val": shuffled[:n_val], "test": shuffled[n_val : n_val + n_test], "train": shuffled[n_val + n_test :]}


def utterances(split: str, speakers: list[Speaker], sentences: list[str], seed: int) -> Iterator[Utterance]:
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
        yield Utterance(f"{split}/{spk.name}/{spk.name}_{k:04d}.wav", split, spk.name, spk.voice, pitch, speed, text)
        j += 1


def sentences_digest(sentences: list[str]) -> str:
    return hashlib.sha1("\n".join(sentences).encode()).hexdigest()[:16]


def auto_speakers(minutes: float, avg_seconds: float) -> int:
    """The number of speakers when it is not given: about :data:`UTTERANCES_PER_SPEAKER` utterances each, in
    [:data:`MIN_SPEAKERS`, :data:`MAX_SPEAKERS`]."""
    auto = round(minutes * 60.0 / avg_seconds / UTTERANCES_PER_SPEAKER)
    return max(MIN_SPEAKERS, min(MAX_SPEAKERS, auto))


def split_targets(speakers: list[Speaker], minutes: float) -> dict[str, float]:
    """Seconds of speech to synthesise per split: ``minutes`` shared in proportion to the split's speakers."""
    return {s: minutes * 60.0 * sum(sp.split == s for sp in speakers) / len(speakers) for s in SPLITS}
