"""The voices of the built-in corpus: the pool of espeak-ng accents x variants, and the probe that keeps only the
voices whose audio really differs (:func:`distinct_voices`)."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from lightdvae.audio import HOP, N_FFT, SAMPLE_RATE
from lightdvae.data.builtin.espeak import EspeakNotFound, synthesize
from lightdvae.errors import DataError

logger = logging.getLogger("lightdvae.data")

PROBE_TEXT = "Seven bright lamps were glowing above the quiet harbour, while a thousand voices hummed along."
MIN_VOICE_DISTANCE_DB = 0.5  #: minimum RMS difference of long-term spectra (dB) between two kept voices

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
    "PROBE_TEXT",
    "MIN_VOICE_DISTANCE_DB",
    "DEFAULT_BASES",
    "DEFAULT_VARIANTS",
    "candidate_voices",
    "VoiceProbe",
    "probe_voice",
    "distinct_voices",
]


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
