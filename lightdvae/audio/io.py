"""Reading and writing audio files: :func:`read_audio` (libsndfile, errors as :class:`AudioError`),
:func:`load_audio` (a file through the whole front end) and :func:`save_audio` (16-bit PCM, atomically)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from lightdvae._io import atomic_write
from lightdvae.audio.preprocessing import preprocess
from lightdvae.audio.protocol import LOGGER_NAME, SAMPLE_RATE, AudioError, AudioInfo, FrontEnd

logger = logging.getLogger(LOGGER_NAME)

__all__ = ["read_audio", "load_audio", "save_audio"]


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read a wav/flac (anything libsndfile reads) as float32.

    Returns ``(data, sample_rate)`` with ``data`` shaped ``(samples, channels)``, float32 in [-1, 1] for integer
    formats.  Raises :class:`AudioError` (reason ``"unreadable"``) for a missing, truncated or corrupt file
    instead of libsndfile's own exception.
    """
    import soundfile as sf

    path = Path(path)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except FileNotFoundError:
        raise AudioError(path, "unreadable", "file not found") from None
    except Exception as exc:  # libsndfile's errors (LibsndfileError, RuntimeError, TypeError on odd headers)
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise AudioError(path, "unreadable", f"cannot read audio ({msg})") from None
    return data, int(sr)


def load_audio(
    path: str | os.PathLike,
    frontend: FrontEnd | None = None,
    *,
    return_info: bool = False,
    log: bool = True,
) -> np.ndarray | tuple[np.ndarray, AudioInfo]:
    """Load one file through the whole front end: read, mix down, resample, trim, normalise.

    Returns the ``(samples,)`` float32 waveform at 16 kHz (and the :class:`AudioInfo` when ``return_info``).
    Resampling and mix-down are logged (INFO) on ``lightdvae.audio`` unless ``log`` is false (the spectrogram
    cache logs one count per build instead).  Raises :class:`AudioError` for files that cannot be used; the
    message names the file.
    """
    data, sr = read_audio(path)
    wave, info = preprocess(data, sr, frontend, path=path)
    if log and (info.mixed_down or info.resampled):
        notes = []
        if info.mixed_down:
            notes.append(f"mixed {info.channels} channels down to mono")
        if info.resampled:
            notes.append(f"resampled {info.orig_sample_rate} Hz -> {SAMPLE_RATE} Hz")
        logger.info("%s: %s", path, ", ".join(notes))
    return (wave, info) if return_info else wave


def save_audio(path: str | os.PathLike, wave: np.ndarray | torch.Tensor, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write ``(samples,)`` float audio as 16-bit PCM wav (or flac by extension), clipping to [-1, 1].

    The file is written under a temporary name and renamed, so a reader never sees half a file.
    """
    import soundfile as sf

    if isinstance(wave, torch.Tensor):
        wave = wave.detach().to("cpu", torch.float32).numpy()
    wave = np.clip(np.asarray(wave, dtype=np.float32).reshape(-1), -1.0, 1.0)
    fmt = "FLAC" if Path(path).suffix.lower() == ".flac" else "WAV"
    return atomic_write(
        path, lambda fh: sf.write(fh, wave, int(sample_rate), subtype="PCM_16", format=fmt), fsync=False
    )
