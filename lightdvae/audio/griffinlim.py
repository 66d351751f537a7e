"""Griffin-Lim: a waveform from a power spectrogram with no phase (generation), with the protocol's STFT."""

from __future__ import annotations

import math

import torch

from lightdvae.audio.protocol import GRIFFIN_LIM_ITERS, HOP, N_FREQ
from lightdvae.audio.spectral import istft, num_frames, stft

__all__ = ["griffin_lim"]


def griffin_lim(
    power: torch.Tensor,
    n_iter: int = GRIFFIN_LIM_ITERS,
    *,
    length: int | None = None,
    momentum: float = 0.99,
    init: str = "random",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Waveform from a power spectrogram with no phase: Griffin-Lim with the protocol's STFT.

    Uses the fast (accelerated) variant of Perraudin et al. 2013 with ``momentum`` (0.99 as in librosa and
    torchaudio; 0 gives the original Griffin-Lim of 1984).  All utterances of the batch run together on the
    tensor's device.

    Args:
        power: ``(..., frames, 513)`` non-negative float32/float64 (a power spectrogram, NOT a magnitude).
        n_iter: number of iterations (100 by default).
        length: output samples; default ``(frames - 1) * 256``.
        momentum: in [0, 1).
        init: ``"random"`` (uniform phases drawn from ``generator``) or ``"zeros"``.
        generator: a ``torch.Generator`` on ``power``'s device, for reproducible random phases.
    Returns:
        ``(..., length)`` float waveform (same precision as ``power``).  Not differentiable (runs under no_grad).
    """
    if power.is_complex():
        raise TypeError("griffin_lim expects a real power spectrogram (..., frames, 513)")
    if power.ndim < 2 or power.shape[-1] != N_FREQ:
        raise ValueError(f"griffin_lim expects (..., frames, {N_FREQ}), got shape {tuple(power.shape)}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    real = torch.float64 if power.dtype == torch.float64 else torch.float32
    with torch.no_grad():
        mag = power.to(real).clamp_min(0).sqrt()
        frames = mag.shape[-2]
        if length is None:
            length = (frames - 1) * HOP
        # The iterations need a length whose STFT has ``frames`` frames; the output gets ``length``.
        work = int(length) if num_frames(length) == frames else (frames - 1) * HOP
        if init == "random":
            phase = torch.rand(mag.shape, generator=generator, device=mag.device, dtype=real) * (2 * math.pi)
            angles = torch.polar(torch.ones_like(mag), phase)
        elif init == "zeros":
            angles = torch.ones_like(mag, dtype=torch.complex128 if real == torch.float64 else torch.complex64)
        else:
            raise ValueError(f"init must be 'random' or 'zeros', got {init!r}")
        prev = torch.zeros_like(angles)
        alpha = momentum / (1.0 + momentum)
        for _ in range(int(n_iter)):
            rebuilt = stft(istft(mag * angles, work))
            angles = rebuilt - alpha * prev if alpha > 0 else rebuilt
            angles = angles / (angles.abs() + 1e-16)
            prev = rebuilt
        return istft(mag * angles, length)
