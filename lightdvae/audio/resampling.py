"""Sample-rate conversion: every waveform in the package is at 16 kHz."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from lightdvae.audio.protocol import SAMPLE_RATE

__all__ = ["resample"]


def resample(wave: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Resample ``(samples,)`` (or ``(..., samples)``) from ``orig_sr`` to ``target_sr`` with
    :func:`scipy.signal.resample_poly` (exact rational ratio, Kaiser-windowed FIR); returns float32."""
    orig_sr, target_sr = int(orig_sr), int(target_sr)
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    wave = np.asarray(wave, dtype=np.float32)
    if orig_sr == target_sr:
        return wave
    from scipy.signal import resample_poly

    ratio = Fraction(target_sr, orig_sr)
    out = resample_poly(wave, ratio.numerator, ratio.denominator, axis=-1)
    return out.astype(np.float32, copy=False)
