"""Waveform preprocessing (NumPy, one utterance at a time): mix-down, resampling, silence trimming at 30 dB below
the loudest frame (the ``librosa.effects.trim(top_db=30)`` rule) and peak normalisation.  What the data pipeline
runs once per file before caching."""

from __future__ import annotations

import logging
import os

import numpy as np

from lightdvae.audio.protocol import (
    LOGGER_NAME,
    SILENCE_PEAK,
    TRIM_DB,
    TRIM_FRAME,
    TRIM_HOP,
    AudioError,
    AudioInfo,
    FrontEnd,
)
from lightdvae.audio.resampling import resample

logger = logging.getLogger(LOGGER_NAME)

__all__ = ["to_mono", "trim_silence", "peak_normalize", "preprocess"]


def to_mono(data: np.ndarray) -> np.ndarray:
    """Mix ``(samples, channels)`` (or ``(samples,)``) down to ``(samples,)`` by averaging the channels."""
    data = np.asarray(data)
    if data.ndim == 1:
        return data
    if data.ndim != 2:
        raise ValueError(f"expected (samples,) or (samples, channels), got shape {data.shape}")
    if data.shape[1] == 1:
        return data[:, 0]
    return data.mean(axis=1, dtype=np.float64).astype(data.dtype, copy=False)


def trim_silence(
    wave: np.ndarray,
    top_db: float = TRIM_DB,
    frame_length: int = TRIM_FRAME,
    hop_length: int = TRIM_HOP,
) -> tuple[np.ndarray, tuple[int, int]]:
    """Cut leading and trailing silence: the rule of ``librosa.effects.trim``.

    The mean square of centred (zero-padded) frames of ``frame_length`` samples every ``hop_length`` samples is
    compared, in dB, with the loudest frame; frames within ``top_db`` dB of it are kept, from the first to the
    last, i.e. samples ``[first * hop, min(N, (last + 1) * hop))``.

    Args:
        wave: ``(samples,)`` float.
    Returns:
        ``(trimmed view of wave, (start, end))``.  An all-zero signal is returned whole (as librosa does); the
        data pipeline rejects those as silent before trimming.
    """
    wave = np.asarray(wave)
    if wave.ndim != 1:
        raise ValueError(f"trim_silence expects a mono (samples,) signal, got shape {wave.shape}")
    n = wave.shape[0]
    if n == 0:
        return wave, (0, 0)
    pad = frame_length // 2
    x = np.pad(wave.astype(np.float64, copy=False), (pad, pad))
    n_frames = 1 + (x.shape[0] - frame_length) // hop_length
    if n_frames <= 0:
        return wave, (0, n)
    # Mean square per frame from a cumulative sum: O(N) instead of O(N * frame_length).
    csum = np.concatenate(([0.0], np.cumsum(x * x)))
    starts = np.arange(n_frames) * hop_length
    ms = (csum[starts + frame_length] - csum[starts]) / frame_length
    ms = np.maximum(ms, 0.0)  # cumsum round-off can leave -1e-20
    amin = 1e-10
    db = 10.0 * np.log10(np.maximum(ms, amin)) - 10.0 * np.log10(max(amin, float(ms.max())))
    keep = np.flatnonzero(db > -float(top_db))
    if keep.size == 0:  # cannot happen (the max frame is at 0 dB), kept for safety
        return wave[:0], (0, 0)
    start = int(keep[0]) * hop_length
    end = min(n, (int(keep[-1]) + 1) * hop_length)
    return wave[start:end], (start, end)


def peak_normalize(wave: np.ndarray, peak: float = 1.0) -> np.ndarray:
    """``wave * peak / max|wave|`` (float32).  Raises :class:`AudioError` (``"silent"``) for an all-zero signal."""
    wave = np.asarray(wave, dtype=np.float32)
    m = float(np.max(np.abs(wave))) if wave.size else 0.0
    if m <= 0.0:
        raise AudioError(None, "silent", "all-zero signal cannot be normalised")
    return (wave * np.float32(peak / m)).astype(np.float32, copy=False)


def preprocess(
    data: np.ndarray,
    sample_rate: int,
    frontend: FrontEnd | None = None,
    *,
    path: str | os.PathLike | None = None,
) -> tuple[np.ndarray, AudioInfo]:
    """Mix down, resample to 16 kHz, trim silence and peak-normalise one utterance.

    Args:
        data: ``(samples,)`` or ``(samples, channels)``, float.
        sample_rate: rate of ``data`` in Hz.
        frontend: settings (trimming threshold, normalisation); the protocol's defaults when None.
        path: only used in messages.
    Returns:
        ``(wave, info)``: ``wave`` is ``(samples,)`` float32 at 16 kHz with ``max|wave| == 1`` when normalising.
    Raises:
        AudioError: ``"empty"`` (no samples), ``"non-finite"`` (NaN/inf) or ``"silent"`` (peak below
        :data:`SILENCE_PEAK`).
    """
    fe = frontend or FrontEnd()
    data = np.asarray(data, dtype=np.float32)
    channels = 1 if data.ndim == 1 else int(data.shape[1])
    orig_samples = int(data.shape[0])
    if orig_samples == 0:
        raise AudioError(path, "empty", "file has no samples")
    if not np.isfinite(data).all():
        raise AudioError(path, "non-finite", "file contains NaN or infinite samples")
    wave = to_mono(data)
    if channels > 1:
        logger.debug("%s: mixed %d channels down to mono", path, channels)
    if sample_rate != fe.sample_rate:
        logger.debug("%s: resampled %d Hz -> %d Hz", path, sample_rate, fe.sample_rate)
        wave = resample(wave, sample_rate, fe.sample_rate)
    if wave.size == 0:
        raise AudioError(path, "empty", "file is too short to resample to 16 kHz")
    peak = float(np.max(np.abs(wave)))
    if peak < SILENCE_PEAK:
        raise AudioError(path, "silent", f"all-silent file (peak {peak:.2e} < {SILENCE_PEAK:g})")
    trim = (0, wave.shape[0])
    if fe.trim_db is not None:
        wave, trim = trim_silence(wave, fe.trim_db, fe.trim_frame, fe.trim_hop)
    peak = float(np.max(np.abs(wave)))
    if fe.normalize:
        wave = peak_normalize(wave)
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    info = AudioInfo(
        path=None if path is None else str(path),
        orig_sample_rate=int(sample_rate),
        channels=channels,
        orig_samples=orig_samples,
        trim=(int(trim[0]), int(trim[1])),
        peak=peak,
        samples=int(wave.shape[0]),
    )
    return wave, info
