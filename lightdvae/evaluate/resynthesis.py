"""The per-file step of an evaluation: a model's analysis-resynthesis of one whole utterance.

The power spectrogram goes through the model (``model.resynthesize(power, past="gen" | "gt")``, latents at their
means unless ``sample``), and the variance estimate is turned back into a waveform with the original phase
(:func:`lightdvae.audio.resynthesize`).  :func:`resynthesize_utterance` is the step itself (what ``lightdvae
eval`` runs on each file of its cached dataset); :func:`resynthesize_file` reads a file through the front end
first (what ``scripts/band_sisdr.py`` and ``scripts/segment_sisdr.py`` use)::

    model = load_run("runs/light")
    reference, estimate, info = resynthesize_file(model, "test/spk/utt.wav", past="gt")
    si_sdr(reference, estimate)
"""

from __future__ import annotations

import os

import numpy as np
import torch

from lightdvae.audio import load_audio, resynthesize, stft

__all__ = ["resynthesize_utterance", "resynthesize_file"]


def resynthesize_utterance(
    model, power: torch.Tensor, spec: torch.Tensor, length: int, past: str = "gen", sample: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The model's resynthesis of one utterance, run on the model's device.

    Args:
        model: a :class:`~lightdvae.models.DVAE` (eval mode).
        power: ``(frames, 513)`` power spectrogram of the utterance (the model's input).
        spec: ``(frames, 513)`` complex STFT of the utterance (its phase is reused).
        length: samples of the utterance.
        past: ``"gen"`` (the decoder is fed its own past predictions) or ``"gt"`` (the true past).
        sample: draw the latents instead of taking their means.
    Returns:
        ``(estimate, variance)``: the ``(length,)`` waveform and the ``(frames, 513)`` variance estimate, float32
        NumPy arrays on the CPU.
    """
    device = next(model.parameters()).device
    variance = model.resynthesize(power.to(device)[None], past=past, sample=sample)[0]
    estimate = resynthesize(variance, spec.to(device), length)
    return estimate.detach().float().cpu().numpy(), variance.detach().float().cpu().numpy()


def resynthesize_file(
    model, path: str | os.PathLike, past: str = "gen", *, sample: bool = False
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read ``path`` through the front end (trimmed, peak-normalised, 16 kHz) and resynthesise it whole.

    Returns ``(reference, estimate, info)``: the front end's ``(samples,)`` waveform (the signal the model saw),
    the resynthesis of the same length (float32 NumPy arrays), and ``info`` holding the reference's ``"spec"``
    (complex STFT) and ``"power"`` (tensors) and the model's ``"variance"`` (NumPy).
    """
    wave = torch.as_tensor(load_audio(path, log=False))
    spec = stft(wave)
    power = torch.view_as_real(spec).square().sum(-1)
    estimate, variance = resynthesize_utterance(model, power, spec, wave.numel(), past, sample)
    return wave.numpy(), estimate, {"spec": spec, "power": power, "variance": variance}
