"""Mixing speech and noise at an exact SNR, and the SNR options.

The SNR is taken over the whole utterance: ``10 log10(sum clean^2 / sum noise^2)`` with the clean file as it is
(its pauses included; no voice activity detection), the definition of the QUT-NOISE-WSJ0 style sets.  The
noise is scaled to it, and the SNR is then measured again on what is written (16-bit PCM): the noise gain is
corrected for the rounding until the written files hold the target to within :data:`SNR_TOLERANCE_DB`.  A mixture
that would clip is scaled down, clean and noisy by the same gain, which leaves the SNR as it is.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np

from lightdvae.audio import SAMPLE_RATE
from lightdvae.errors import ConfigError, DataError

__all__ = [
    "SNR_RANGE",
    "SNR_TOLERANCE_DB",
    "PEAK_LIMIT",
    "SNR_DEFINITION",
    "Mixture",
    "parse_snrs",
    "snr_tag",
    "snr_db",
    "mix_at_snr",
    "encode_pcm16",
    "decode",
]

SNR_RANGE = (-20.0, 40.0)  #: the SNRs accepted, in dB
SNR_TOLERANCE_DB = 0.001  #: how close the written files are brought to the target SNR
PEAK_LIMIT = 0.99  #: the largest |sample| of a written mixture (below 16-bit full scale)
SNR_DEFINITION = "whole utterance: 10 log10(sum clean^2 / sum noise^2) over the clean file, pauses included"


@dataclass(frozen=True)
class Mixture:
    """One mixture as written: the 16-bit WAV bytes of the noisy and clean files and what was measured on them."""

    noisy: bytes
    clean: bytes
    snr_db: float  #: measured on the written files
    noise_gain: float  #: the factor on the (unit-RMS) noise segment, before ``gain``
    gain: float  #: the anti-clipping gain on clean and noisy (1.0 when the mixture did not clip)


def parse_snrs(text: str | float | list) -> list[float]:
    """``"-5,0,5,10"`` (or a number, or a list) as a list of SNRs in dB, in the order given, without repeats.
    Raises :class:`ConfigError` for a value that is not a number or lies outside :data:`SNR_RANGE`."""
    items = text if isinstance(text, (list, tuple)) else str(text).split(",")
    out: list[float] = []
    for item in items:
        word = str(item).strip()
        if not word:
            continue
        try:
            value = float(word)
        except ValueError:
            raise ConfigError(
                f"--snr: {word!r} is not a number; give SNRs in dB separated by commas, e.g. --snr -5,0,5,10"
            ) from None
        if not (SNR_RANGE[0] <= value <= SNR_RANGE[1]):
            raise ConfigError(
                f"--snr: {word} dB is outside {SNR_RANGE[0]:g}..{SNR_RANGE[1]:g} dB; give SNRs in that range"
            )
        if value not in out:
            out.append(value)
    if not out:
        raise ConfigError("--snr names no SNR; give SNRs in dB separated by commas, e.g. --snr -5,0,5,10")
    return out


def snr_tag(snr: float) -> str:
    """The SNR in a file name: ``+5dB``, ``-10dB``, ``+2p5dB`` (no dots, no odd characters)."""
    sign = "-" if snr < 0 else "+"
    text = f"{abs(snr):g}".replace(".", "p")
    return f"{sign}{text}dB"


def snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    """The SNR of ``noisy`` against its clean reference, in dB (noise = noisy - clean); inf when equal."""
    clean = np.asarray(clean, dtype=np.float64)
    noise = np.asarray(noisy, dtype=np.float64) - clean
    p_noise = float(np.sum(noise * noise))
    return math.inf if p_noise == 0 else 10.0 * math.log10(float(np.sum(clean * clean)) / p_noise)


def encode_pcm16(wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """The bytes of a 16-bit PCM WAV of ``wave`` (the format :func:`lightdvae.audio.save_audio` writes)."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    """The float64 samples of WAV bytes (mono)."""
    import soundfile as sf

    wave, _ = sf.read(io.BytesIO(data), dtype="float64")
    return wave


def mix_at_snr(clean: np.ndarray, noise: np.ndarray, snr: float, *, what: str = "noise") -> Mixture:
    """Mix ``clean`` with ``noise`` (same length) at ``snr`` dB as defined in the module doc, and encode both.

    Raises :class:`DataError` when the clean or noise segment is silent (no SNR can be reached); ``what`` names
    the noise in that message."""
    clean = np.asarray(clean, dtype=np.float64)
    noise = np.asarray(noise, dtype=np.float64)
    p_clean, p_noise = float(np.sum(clean * clean)), float(np.sum(noise * noise))
    if p_noise == 0.0:
        raise DataError(f"{what} is silent where it is mixed (all zeros): no SNR can be reached; use another noise")
    if p_clean == 0.0:
        raise DataError("a speech file is silent (all zeros): no SNR can be defined")
    k = math.sqrt(p_clean / (p_noise * 10.0 ** (snr / 10.0)))
    for _ in range(4):  # the first pass is exact before rounding; the next ones correct for the 16-bit rounding
        noisy = clean + k * noise
        peak = max(float(np.max(np.abs(noisy))), float(np.max(np.abs(clean))))
        gain = PEAK_LIMIT / peak if peak > PEAK_LIMIT else 1.0
        clean_bytes, noisy_bytes = encode_pcm16(gain * clean), encode_pcm16(gain * noisy)
        measured = snr_db(decode(clean_bytes), decode(noisy_bytes))
        if abs(measured - snr) <= SNR_TOLERANCE_DB or not math.isfinite(measured):
            break
        k *= 10.0 ** ((measured - snr) / 20.0)
    return Mixture(noisy_bytes, clean_bytes, measured, k, gain)
