"""The options a built-in corpus is a function of (:class:`BuildSettings`), as recorded in its ``corpus.json``, and
what they say about a corpus: whether its held-out splits are the default corpus's, and a one-line description."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from lightdvae.data.builtin.plan import SPLIT_FRACTIONS, load_sentences, sentences_digest
from lightdvae.data.corpora import BUILTIN_MARKER
from lightdvae.errors import DataError

FORMAT = "lightdvae-builtin-corpus"
FORMAT_VERSION = 1
DEFAULT_MINUTES = 30.0
NOISE_FLOOR_RANGE_DB = (-120.0, -30.0)  #: the --noise-floor levels accepted, dB re the files' peak

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "DEFAULT_MINUTES",
    "NOISE_FLOOR_RANGE_DB",
    "BuildSettings",
    "describe_settings",
    "has_default_held_out_splits",
    "recorded_settings",
]


@dataclass(frozen=True)
class BuildSettings:
    """The options a built-in corpus is a function of.  Recorded as ``settings`` in ``corpus.json`` and in the
    state of an unfinished build: the same settings reuse or resume a build, other ones are refused."""

    minutes: float
    voices: tuple[str, ...] | None
    speakers: int | None
    seed: int
    sentences: str  #: digest of the sentence list
    train_minutes: float | None = None  #: training speech when not the split's share of ``minutes``
    noise_floor_db: float | None = None  #: level of the white noise floor under every file, dB re the peak

    @classmethod
    def checked(
        cls, minutes, voices, speakers, seed, sentences: list[str], train_minutes=None, noise_floor_db=None
    ) -> BuildSettings:
        """The settings of these options; raises :class:`DataError` for impossible ones."""
        minutes = float(minutes)
        if not minutes > 0:
            raise DataError(f"--minutes must be positive, got {minutes}")
        if train_minutes is not None:
            train_minutes = float(train_minutes)
            share = minutes * SPLIT_FRACTIONS["train"]
            if not train_minutes >= share:
                raise DataError(
                    f"--train-minutes {train_minutes:g} is less than the training share of --minutes {minutes:g} "
                    f"({share:g}); give at least that, or a smaller --minutes"
                )
        if noise_floor_db is not None:
            noise_floor_db = float(noise_floor_db)
            lo, hi = NOISE_FLOOR_RANGE_DB
            if not lo <= noise_floor_db <= hi:
                raise DataError(
                    f"--noise-floor {noise_floor_db:g} dB is outside [{lo:g}, {hi:g}] dB re the peak; -70 is a quiet "
                    "studio, -90 the dither of 16-bit audio"
                )
        if speakers is not None and int(speakers) < 3:
            raise DataError(f"need at least 3 speakers (one per split), got {speakers}")
        if voices is not None:
            voices = [v.strip() for v in voices if v and v.strip()]
            if len(voices) < 3:
                raise DataError(
                    f"need at least 3 voices (one speaker per split), got {len(voices)}: {', '.join(voices)}"
                )
        return cls(
            minutes=minutes,
            voices=tuple(voices) if voices is not None else None,
            speakers=int(speakers) if speakers is not None else None,
            seed=seed,
            sentences=sentences_digest(sentences),
            train_minutes=train_minutes,
            noise_floor_db=noise_floor_db,
        )

    def to_dict(self) -> dict:
        """The ``settings`` object of the files (this key order; ``train_minutes`` and ``noise_floor_db`` only
        when given, so that the corpora built before they existed keep their settings)."""
        out = {
            "minutes": self.minutes,
            "voices": list(self.voices) if self.voices is not None else None,
            "speakers": self.speakers,
            "seed": int(self.seed),
            "sentences": self.sentences,
        }
        if self.train_minutes is not None:
            out["train_minutes"] = self.train_minutes
        if self.noise_floor_db is not None:
            out["noise_floor_db"] = self.noise_floor_db
        out["format_version"] = FORMAT_VERSION
        return out


def has_default_held_out_splits(root: str | os.PathLike, floor_ok: bool = False) -> bool:
    """Whether the built-in corpus in ``root`` has the validation and test splits of the default corpus (``lightdvae
    corpus build`` with no option but, possibly, ``--train-minutes``): a model trained on it is scored on the same
    test split as one trained on the default corpus.  With ``floor_ok``, also when it was built with a
    ``--noise-floor``: the same utterances, under a floor (a model trained on it is scored on the default test split
    itself, as the shipped priors are)."""
    recorded = dict(recorded_settings(Path(root) / BUILTIN_MARKER))
    if not recorded:
        return False
    recorded.pop("train_minutes", None)
    if floor_ok:
        recorded.pop("noise_floor_db", None)
    default = BuildSettings.checked(DEFAULT_MINUTES, None, None, 0, load_sentences()).to_dict()
    return recorded == default


def recorded_settings(path: Path) -> dict:
    """The ``settings`` recorded in a corpus's ``corpus.json`` or an unfinished build's state file ({} if none)."""
    try:
        return json.loads(path.read_text()).get("settings", {})
    except (OSError, ValueError):
        return {}


def describe_settings(settings: dict) -> str:
    """The options a built-in corpus was built with, from its recorded ``settings`` (``minutes=30.0, seed=0,
    train_minutes=150.0, noise_floor_db=-70.0``)."""
    if not settings:
        return "unknown options"
    parts = [f"minutes={settings.get('minutes')}", f"seed={settings.get('seed')}"]
    if settings.get("train_minutes") is not None:
        parts.append(f"train_minutes={settings['train_minutes']}")
    if settings.get("noise_floor_db") is not None:
        parts.append(f"noise_floor_db={settings['noise_floor_db']}")
    if settings.get("speakers") is not None:
        parts.append(f"speakers={settings['speakers']}")
    if settings.get("voices"):
        parts.append(f"voices={','.join(settings['voices'])}")
    return ", ".join(parts)
