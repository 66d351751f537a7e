"""The protocol's STFT (torch, batched, any device): sine window, :func:`stft`, its exact inverse :func:`istft`,
the power spectrogram and analysis-resynthesis with the original phase.

Frames are centred (the signal is zero-padded by 512 samples on both sides), so a signal of ``N`` samples has
``1 + N // 256`` frames and :func:`istft` gives it back exactly.  Spectrograms are ``(..., frames, 513)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lightdvae.audio.protocol import HOP, N_FFT, N_FREQ, WIN_LENGTH

__all__ = ["sine_window", "num_frames", "stft", "istft", "power_spectrogram", "resynthesize"]

_WINDOWS: dict[tuple, torch.Tensor] = {}


def sine_window(
    length: int = WIN_LENGTH, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The sine window ``w[n] = sin(pi (n + 0.5) / length)``, ``(length,)`` of ``dtype`` on ``device``.

    Computed in float64 and cast; cached per (length, device, dtype).  Its squares overlap-add to the constant
    2 at hop ``length / 4``, which is what makes the inverse STFT exact.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    key = (length, str(device), dtype)
    w = _WINDOWS.get(key)
    if w is None:
        n = torch.arange(length, dtype=torch.float64)
        w = torch.sin(math.pi * (n + 0.5) / length).to(device=device, dtype=dtype)
        if len(_WINDOWS) > 32:
            _WINDOWS.clear()
        _WINDOWS[key] = w
    return w


def num_frames(samples: int) -> int:
    """Number of STFT frames of a signal of ``samples`` samples: ``1 + samples // 256``."""
    return 1 + int(samples) // HOP


def _real_dtype(t: torch.Tensor) -> torch.dtype:
    if t.dtype in (torch.float64, torch.complex128):
        return torch.float64
    return torch.float32


def stft(wave: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Short-time Fourier transform of the protocol.

    Args:
        wave: ``(..., samples)`` real, float32 or float64 (other dtypes are cast to float32), CPU or CUDA.
            A NumPy array is accepted and converted.
    Returns:
        ``(..., frames, 513)`` complex64 (complex128 for float64 input), contiguous, on ``wave``'s device, with
        ``frames = 1 + samples // 256``.  Frame ``t`` is centred on sample ``256 t`` (zero padding at the edges).
        Differentiable.
    """
    if not isinstance(wave, torch.Tensor):
        wave = torch.as_tensor(np.asarray(wave))
    if wave.is_complex():
        raise TypeError("stft expects a real waveform, got a complex tensor")
    if wave.dtype not in (torch.float32, torch.float64):
        wave = wave.to(torch.float32)
    if wave.ndim == 0:
        raise ValueError("stft expects a waveform shaped (..., samples), got a scalar")
    lead = wave.shape[:-1]
    n = wave.shape[-1]
    if n == 0:
        cdtype = torch.complex128 if wave.dtype == torch.float64 else torch.complex64
        return torch.zeros(*lead, 1, N_FREQ, dtype=cdtype, device=wave.device)
    x = wave.reshape(-1, n)
    spec = torch.stft(
        x,
        n_fft=N_FFT,
        hop_length=HOP,
        win_length=WIN_LENGTH,
        window=sine_window(device=wave.device, dtype=wave.dtype),
        center=True,
        pad_mode="constant",
        normalized=False,
        onesided=True,
        return_complex=True,
    )  # (B, 513, frames)
    spec = spec.transpose(-1, -2).contiguous()
    return spec.reshape(*lead, spec.shape[-2], N_FREQ)


def istft(spec: torch.Tensor, length: int | None = None) -> torch.Tensor:
    """Inverse of :func:`stft` (weighted overlap-add with the same sine window).

    Args:
        spec: ``(..., frames, 513)`` complex64/complex128 on any device.
        length: samples of the output; default ``(frames - 1) * 256``.  Pass the original length to get the
            signal back exactly.
    Returns:
        ``(..., length)`` float32 (float64 for complex128 input) on ``spec``'s device.  Differentiable.
    """
    if not isinstance(spec, torch.Tensor) or not spec.is_complex():
        raise TypeError("istft expects a complex tensor shaped (..., frames, 513)")
    if spec.ndim < 2 or spec.shape[-1] != N_FREQ:
        raise ValueError(f"istft expects (..., frames, {N_FREQ}), got shape {tuple(spec.shape)}")
    lead = spec.shape[:-2]
    frames = spec.shape[-2]
    if length is None:
        length = (frames - 1) * HOP
    real = _real_dtype(spec)
    if int(length) == 0:
        return torch.zeros(*lead, 0, dtype=real, device=spec.device)
    x = spec.reshape(-1, frames, N_FREQ).transpose(-1, -2)  # (B, 513, frames)
    wave = torch.istft(
        x,
        n_fft=N_FFT,
        hop_length=HOP,
        win_length=WIN_LENGTH,
        window=sine_window(device=spec.device, dtype=real),
        center=True,
        normalized=False,
        onesided=True,
        length=int(length),
        return_complex=False,
    )
    return wave.reshape(*lead, wave.shape[-1])


def power_spectrogram(wave: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``|stft(wave)|^2``: ``(..., samples)`` real -> ``(..., frames, 513)`` float32 (float64 for float64 input)."""
    spec = stft(wave)
    return torch.view_as_real(spec).square().sum(-1)


def resynthesize(power: torch.Tensor, phase_from: torch.Tensor, length: int | None = None) -> torch.Tensor:
    """Analysis-resynthesis: ``istft(sqrt(power) * exp(j angle(X)))`` with the phase of the original ``X``.

    Args:
        power: ``(..., frames, 513)`` non-negative float (the decoder's variance ``v_hat``).
        phase_from: ``(..., frames, 513)`` complex, the STFT of the original waveform (same shape).
        length: output samples; pass the original waveform's length.
    Returns:
        ``(..., length)`` float waveform on ``power``'s device.
    """
    if not phase_from.is_complex():
        raise TypeError("phase_from must be the complex STFT of the original signal")
    if power.shape != phase_from.shape:
        raise ValueError(f"power {tuple(power.shape)} and phase_from {tuple(phase_from.shape)} must have one shape")
    real = _real_dtype(phase_from)
    mag = power.to(real).clamp_min(0).sqrt()
    spec = torch.polar(mag, torch.angle(phase_from).to(real))
    return istft(spec, length)
