"""The variational EM loop on one batch of utterances (Bie et al. 2022, Algorithm 1).

Per iteration: the E-step (``e_steps`` Adam steps of each utterance's inference network on its negative ELBO,
each on a new sample; the reference takes one), a new sample of z and of the speech variance ``v``, the M-step
(W, H, g; :mod:`lightdvae.enhance.noise`), and the loss; the engine then sees the updated model
(:meth:`~lightdvae.enhance.inference.InferenceEngine.observe`: the latent E-step's estimated past).  After the last
iteration the Wiener filter ``g v / (g v + WH)`` is averaged over ``samples`` new samples.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from lightdvae.enhance.inference import InferenceEngine
from lightdvae.enhance.noise import NoiseModel, init_noise_model, m_step_and_divergence
from lightdvae.enhance.settings import EnhanceSettings
from lightdvae.runtime import sync

__all__ = ["VEMOutput", "run_vem", "wiener_filter"]


@dataclass
class VEMOutput:
    """What the loop gives a batch: ``filter``, ``speech`` (``g v``) and ``noise`` (``WH``), each
    ``(batch, frames, F)``; ``loss`` ``(iterations, batch)``; the iterations run, the seconds, the early stop."""

    filter: Tensor
    speech: Tensor
    noise: Tensor
    loss: Tensor
    iterations: int
    seconds: float
    stopped_early: bool


@torch.no_grad()
def wiener_filter(speech: Tensor, noise: Tensor) -> Tensor:
    """``speech / (speech + noise)`` for the variances of the scaled speech ``g v`` and of the noise ``WH``."""
    return speech / (speech + noise)


def frame_mask(lengths: list[int], device) -> Tensor:
    """``(batch, max(lengths))`` bool, True on each utterance's own frames."""
    frames = torch.arange(max(lengths), device=device)
    return frames[None, :] < torch.tensor(lengths, device=device)[:, None]


@torch.no_grad()
def _final_filter(
    engine: InferenceEngine, state: NoiseModel, power: Tensor, lengths: list[int], gens, samples: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The Wiener filter averaged over ``samples`` new samples of ``v``, with the mean ``g v`` and ``WH``."""
    noise = state.noise_variance()
    filters, speeches = [], []
    for _ in range(samples):
        speech = state.g[..., None] * engine.sample(power, lengths, gens)
        filters.append(wiener_filter(speech, noise))
        speeches.append(speech)
    return torch.stack(filters).mean(0), torch.stack(speeches).mean(0), noise


def run_vem(
    engine: InferenceEngine,
    power: Tensor,
    lengths: list[int],
    generators: list[torch.Generator],
    settings: EnhanceSettings,
) -> VEMOutput:
    """Enhance a batch: ``power (batch, frames, F)`` is the mixtures' ``|X|^2`` (zeros after each utterance's
    ``lengths[i]`` frames), ``generators[i]`` utterance ``i``'s random stream, ``engine`` the inference copies
    (:func:`lightdvae.enhance.engines.engine_for`) for this batch."""
    s = settings
    mask = frame_mask(lengths, power.device)
    state = init_noise_model(lengths, power.shape[-1], s.rank, generators, dtype=power.dtype, device=power.device)
    sync(power.device)
    start = time.perf_counter()
    losses, stopped = [], False
    for it in range(s.iterations):
        if it and s.max_seconds is not None and time.perf_counter() - start >= s.max_seconds:
            stopped = True
            break
        noise = state.noise_variance()
        for _ in range(s.e_steps):
            engine.step(power, lengths, mask, state.g, noise, s.beta, generators)
        speech = engine.sample(power, lengths, generators)
        losses.append(m_step_and_divergence(state, power, speech, mask))
        engine.observe(power, state, speech, mask)
    filt, speech, noise = _final_filter(engine, state, power, lengths, generators, s.samples)
    sync(power.device)
    seconds = time.perf_counter() - start
    return VEMOutput(filt, speech, noise, torch.stack(losses).cpu(), len(losses), seconds, stopped)
