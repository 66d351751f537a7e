"""One optimisation step and one validation pass: the forward under autocast, the negative ELBO in float32
(:func:`lightdvae.models.elbo_terms`), and the sums of the loss terms that the epoch loop all-reduces."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from lightdvae.models import DVAE, DVAEOutput, LossTerms, elbo_terms
from lightdvae.train import distrib
from lightdvae.train.config import TERMS


def float32_output(out: DVAEOutput) -> DVAEOutput:
    """The model output with every floating tensor in float32 (the loss is never reduced in half precision)."""
    changes = {}
    for f in dataclasses.fields(out):
        value = getattr(out, f.name)
        if isinstance(value, Tensor) and value.is_floating_point() and value.dtype != torch.float32:
            changes[f.name] = value.float()
    return dataclasses.replace(out, **changes) if changes else out


def autocast(device: torch.device, precision: str):
    """Autocast to bf16 / fp16 on ``device`` (nothing for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def terms_vector(terms, size: int, device: torch.device) -> Tensor:
    """(loss, recon, kl, kl_z, kl_w) * batch size, float64, detached (no host sync)."""
    values = [terms.loss, terms.recon, terms.kl, terms.kl_z, terms.kl_w if terms.kl_w is not None else terms.kl_z]
    return torch.stack([v.detach().to(torch.float64) for v in values]).to(device) * size


def mean_terms(sums: Tensor, has_w: bool) -> dict:
    """All-reduced sums (5 terms + count) -> dict of means."""
    values = sums.tolist()
    count = values[5]
    out = {k: (v / count if count else float("nan")) for k, v in zip(TERMS, values[:5], strict=True)}
    if not has_w:
        out["kl_w"] = None
    return out


def train_step(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    power: Tensor,
    *,
    beta: float = 1e-2,
    kl_warm: float = 1.0,
    forward_kwargs: dict | None = None,
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
    grad_clip: float | None = None,
    is_finite: Callable[[Tensor], bool] | None = None,
) -> tuple[LossTerms, bool]:
    """One optimisation step on a batch: forward (under autocast unless fp32), the negative ELBO in float32,
    backward, optional gradient clipping, optimizer (and gradient scaler) step.

    Args:
        net: the model, or its ``DistributedDataParallel`` wrapper (called as ``net(power, **forward_kwargs)``).
        optimizer: over ``net``'s parameters.
        power: ``(batch, frames, F)`` power spectrograms on the model's device.
        beta, kl_warm: the KL weight and the warm-up factor of :func:`lightdvae.models.elbo_terms`.
        forward_kwargs: e.g. ``{"ss_prob": 0.3}`` for scheduled sampling.
        precision: ``fp32``, ``bf16`` or ``fp16`` (``fp16`` wants an enabled ``scaler``).
        is_finite: decides whether the loss is usable (default ``torch.isfinite``; the trainer all-reduces it).

    Returns:
        ``(terms, stepped)``: the loss terms, and False when the loss was not finite (then nothing was updated).
    """
    with autocast(power.device, precision):
        out = net(power, **(forward_kwargs or {}))
    terms = elbo_terms(power, float32_output(out), beta=beta, kl_warm=kl_warm)
    finite = is_finite(terms.loss) if is_finite is not None else bool(torch.isfinite(terms.loss.detach()))
    if not finite:
        return terms, False
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None and scaler.is_enabled():
        scaler.scale(terms.loss).backward()
        if grad_clip is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
    else:
        terms.loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        optimizer.step()
    return terms, True


def all_finite(loss: Tensor) -> bool:
    """Whether the loss is finite on every process (one all-reduce under DDP)."""
    bad = torch.logical_not(torch.isfinite(loss.detach())).to(torch.float32).reshape(1)
    return not distrib.all_reduce(bad, "max").item()


@torch.no_grad()
def validate(
    model: DVAE,
    batches: Iterable[Tensor],
    device: torch.device,
    precision: str,
    forward_kwargs: dict,
    beta: float,
    kl_warm: float,
    seed: int,
) -> tuple[dict, bool]:
    """Validation loss terms (means over all processes) under no_grad and eval mode, with fixed noise."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(6, dtype=torch.float64, device=device)
    has_w = False
    cuda_devices = [device.index] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(seed)
            for power in batches:
                with autocast(device, precision):
                    out = model(power, **forward_kwargs)
                terms = elbo_terms(power, float32_output(out), beta=beta, kl_warm=kl_warm)
                has_w = has_w or terms.kl_w is not None
                sums[:5] += terms_vector(terms, power.shape[0], device)
                sums[5] += power.shape[0]
    finally:
        model.train(was_training)
    flag = torch.tensor([1.0 if has_w else 0.0], device=device)
    distrib.all_reduce(sums)
    distrib.all_reduce(flag, "max")
    return mean_terms(sums, bool(flag.item())), bool(flag.item())
