"""The M-step of the variational EM: the noise variance of a rank-K NMF and the per-frame gain of the speech.

Observation model (Bie et al. 2022, section III): ``X_ft ~ N_c(0, g_t v_ft + (WH)_ft)`` with the clean-speech
variance ``v`` from the DVAE decoder (held fixed here), ``W (F, K)`` and ``H (K, T)`` non-negative.  The updates
are the multiplicative updates of IS-NMF with exponent 1/2 (Févotte & Idier, Neural Computation 2011: with that
exponent each update never increases the Itakura-Saito divergence ``d_IS(|X|^2, g v + WH)``), in the reference's
order: W, then H, then the columns of W normalised to unit l1 norm (H rescaled so WH is unchanged), then g.

On the CPU the EM takes both from one native kernel (:func:`m_step_and_divergence`: ``lightdvae::nmf_m_step``,
csrc/enhance/enhance_cpu.cpp, five passes over an utterance's bins where the ATen calls below make some forty); the
functions here are its reference, and what runs on other devices.  They run over the batch in chunks of a few
utterances (:data:`CACHE_BYTES`): the M-step makes some thirty element-wise passes over ``(frames, F)`` arrays,
which stay in the core's cache for a chunk but not for a batch of 16 (3.3x faster at batch 16 on the 2-core AMD
machine: 39.8 -> 12.2 ms an iteration).  Utterances are independent here, so the chunks change no number.

Layout: utterances are batched and padded, power and variances ``(batch, frames, F)`` like the models; ``W`` is
``(batch, F, K)``, ``H`` ``(batch, K, frames)``, ``g`` ``(batch, frames)``; ``mask`` ``(batch, frames)`` bool is
True on an utterance's own frames.  Padded frames take no part in the sums over time (so the W of an utterance is
what it would be alone) and their H and g are left as they are.  Everything here runs without gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lightdvae import _ext
from lightdvae.ops import is_divergence
from lightdvae.ops.losses import DEFAULT_EPS

__all__ = [
    "NoiseModel",
    "init_noise_model",
    "m_step",
    "m_step_and_divergence",
    "mixture_divergence",
    "mixture_reconstruction",
]

#: Floor of the random initial W and H (the reference's machine epsilon): a zero entry would stay zero forever.
INIT_FLOOR = 2.220446049250313e-16
#: Added to |X|^2 inside the log of the reported divergence, so that digitally silent bins stay finite.
LOG_EPS = 1e-8
#: Bytes of one ``(chunk, frames, F)`` array the CPU M-step works on at a time (a core's L2 cache, about).
CACHE_BYTES = 1 << 20


@dataclass
class NoiseModel:
    """The M-step's variables of a batch of utterances: ``W (batch, F, K)``, ``H (batch, K, frames)``, the gain
    ``g (batch, frames)``."""

    W: Tensor
    H: Tensor
    g: Tensor

    def noise_variance(self) -> Tensor:
        """``(WH)^T``: the noise variance, ``(batch, frames, F)``."""
        return torch.bmm(self.H.transpose(1, 2), self.W.transpose(1, 2))

    def mixture_variance(self, speech: Tensor) -> Tensor:
        """``g v + WH``, ``(batch, frames, F)``, for the speech variance ``v (batch, frames, F)``."""
        return torch.addcmul(self.noise_variance(), self.g[..., None], speech)


def init_noise_model(
    lengths: list[int], bins: int, rank: int, generators: list[torch.Generator], *, dtype, device
) -> NoiseModel:
    """Random non-negative ``W`` and ``H`` (uniform on [0, 1), floored at :data:`INIT_FLOOR`) and ``g = 1``.

    Utterance ``i`` draws its ``W (F, K)`` then its ``H (K, lengths[i])`` from ``generators[i]`` alone, so it gets
    the same start in any batch; padded frames of ``H`` are 1.
    """
    frames = max(lengths)
    W = torch.empty(len(lengths), bins, rank, dtype=dtype, device=device)
    H = torch.ones(len(lengths), rank, frames, dtype=dtype, device=device)
    for i, (n, gen) in enumerate(zip(lengths, generators, strict=True)):
        W[i] = torch.rand(bins, rank, dtype=dtype, device=device, generator=gen)
        H[i, :, :n] = torch.rand(rank, n, dtype=dtype, device=device, generator=gen)
    g = torch.ones(len(lengths), frames, dtype=dtype, device=device)
    return NoiseModel(W.clamp_(min=INIT_FLOOR), H.clamp_(min=INIT_FLOOR), g)


def _ratio(num: Tensor, den: Tensor, keep: Tensor | None = None) -> Tensor:
    """``sqrt(num / den)``, the multiplicative update's factor; 1 where ``keep`` is False (padded frames)."""
    factor = torch.sqrt(num / den)
    return factor if keep is None else torch.where(keep, factor, torch.ones_like(factor))


def _chunks(power: Tensor) -> list[slice]:
    """Slices of the batch that the CPU works on one after the other (see the module docstring); the whole batch
    on other devices."""
    if power.device.type != "cpu" or power.shape[0] <= 1:
        return [slice(None)]
    per_utterance = power[0].numel() * power.element_size()
    n = max(1, CACHE_BYTES // max(1, per_utterance))
    return [slice(i, i + n) for i in range(0, power.shape[0], n)]


def _rows(state: NoiseModel, rows: slice) -> NoiseModel:
    """The utterances ``rows`` of ``state``, as views: updating them in place updates ``state``."""
    return NoiseModel(state.W[rows], state.H[rows], state.g[rows])


@torch.no_grad()
def m_step(state: NoiseModel, power: Tensor, speech: Tensor, mask: Tensor) -> NoiseModel:
    """One M-step in place: W, H (with the columns of W normalised) and g, each from the variance of the step
    before.  ``power`` is the mixture's ``|X|^2`` and ``speech`` the decoder's variance ``v``, both
    ``(batch, frames, F)``; ``mask (batch, frames)``.  Returns ``state``."""
    for rows in _chunks(power):
        _m_step(_rows(state, rows), power[rows], speech[rows], mask[rows])
    return state


def _m_step(state: NoiseModel, power: Tensor, speech: Tensor, mask: Tensor) -> None:
    valid = mask[..., None].to(power.dtype)
    power = power * valid

    def weights() -> tuple[Tensor, Tensor]:
        inv = torch.reciprocal(state.mixture_variance(speech)) * valid  # 1 / Vx on the utterance's frames
        return power * inv * inv, inv  # |X|^2 / Vx^2, 1 / Vx

    # W (F, K): sums over frames
    a, b = weights()
    state.W.mul_(
        _ratio(
            torch.bmm(a.transpose(1, 2), state.H.transpose(1, 2)), torch.bmm(b.transpose(1, 2), state.H.transpose(1, 2))
        )
    )
    # H (K, T): sums over frequency
    a, b = weights()
    keep = mask[:, None, :]
    state.H.mul_(
        _ratio(
            torch.bmm(state.W.transpose(1, 2), a.transpose(1, 2)),
            torch.bmm(state.W.transpose(1, 2), b.transpose(1, 2)),
            keep,
        )
    )
    # unit l1 columns of W; H takes the scale, so WH is unchanged
    norm = state.W.abs().sum(dim=1, keepdim=True)  # (batch, 1, K)
    state.W.div_(norm)
    state.H.mul_(norm.transpose(1, 2))
    # g (T): sums over frequency, v fixed
    a, b = weights()
    state.g.mul_(_ratio((a * speech).sum(-1), (b * speech).sum(-1), mask))


@torch.no_grad()
def mixture_divergence(state: NoiseModel, power: Tensor, speech: Tensor, mask: Tensor) -> Tensor:
    """``d_IS(|X|^2, g v + WH)`` averaged over each utterance's own time-frequency bins: ``(batch,)``."""
    return torch.cat([_divergence(_rows(state, r), power[r], speech[r], mask[r]) for r in _chunks(power)])


def _divergence(state: NoiseModel, power: Tensor, speech: Tensor, mask: Tensor) -> Tensor:
    vx = state.mixture_variance(speech)
    ratio = (power + LOG_EPS) / vx
    d = power / vx - torch.log(ratio) - 1.0
    valid = mask[..., None].to(power.dtype)
    return (d * valid).sum((1, 2)) / (valid.sum((1, 2)) * power.shape[-1])


@torch.no_grad()
def m_step_and_divergence(state: NoiseModel, power: Tensor, speech: Tensor, mask: Tensor) -> Tensor:
    """:func:`m_step` in place, then :func:`mixture_divergence` of the updated model, ``(batch,)``: on the CPU one
    native kernel does both (the same updates within float rounding; its sums over frames add blocks in float64)."""
    tensors = (state.W, state.H, state.g, power, speech)
    supported = (
        power.dtype in (torch.float32, torch.float64)
        and all(t.dtype == power.dtype and t.is_contiguous() for t in tensors)
        and mask.dtype == torch.bool
        and mask.is_contiguous()
    )
    if power.device.type == "cpu" and _ext.use_native("nmf_m_step", "cpu", supported):
        return torch.ops.lightdvae.nmf_m_step(state.W, state.H, state.g, power, speech, mask)
    m_step(state, power, speech, mask)
    return mixture_divergence(state, power, speech, mask)


def mixture_reconstruction(power: Tensor, logvar: Tensor, gain: Tensor, noise: Tensor, mask: Tensor) -> Tensor:
    """The E-step's reconstruction term: ``d_IS(|X|^2, g exp(logvar) + WH)`` summed over each utterance's own
    time-frequency bins, ``(batch,)``; differentiable in ``logvar`` (the decoder's log-variance ``(batch, frames,
    F)``; ``gain (batch, frames)`` and ``noise (batch, frames, F)`` are the M-step's, constants here).

    On the CPU one native kernel (``lightdvae::mixture_is``) computes it and its gradient in one pass; elsewhere,
    and with ``LIGHTDVAE_REFERENCE_OPS=mixture_is``, the ATen composite below (the same numbers within float
    rounding)."""
    supported = (
        power.dtype in (torch.float32, torch.float64)
        and all(t.dtype == power.dtype for t in (logvar, gain, noise))
        and mask.dtype == torch.bool
    )
    if power.device.type == "cpu" and _ext.use_native("mixture_is", "cpu", supported):
        return _MixtureIS.apply(power, logvar, gain, noise, mask)
    log_vx = torch.log(torch.addcmul(noise, gain[..., None], torch.exp(logvar)))
    return (is_divergence(power, log_vx, reduction="none") * mask[..., None]).sum((1, 2))


class _MixtureIS(torch.autograd.Function):
    """The kernel's loss, its gradient in ``logvar`` computed in the same pass (when one is needed) and scaled in
    the backward."""

    @staticmethod
    def forward(ctx, power, logvar, gain, noise, mask):
        with_grad = ctx.needs_input_grad[1]
        loss, grad = torch.ops.lightdvae.mixture_is(power, logvar, gain, noise, mask, DEFAULT_EPS, with_grad)
        ctx.save_for_backward(grad if with_grad else None)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        (grad,) = ctx.saved_tensors
        return None, grad * grad_loss[:, None, None].to(grad.dtype), None, None, None
