"""Ops that run in float32 whatever autocast asks (bf16 / fp16 training steps).

:func:`float32_under_autocast` wraps the package's sequential ops: the posterior and own-past loops
(:mod:`lightdvae.ops.sampling`) on every device, and the LSTMs (:mod:`lightdvae.ops.lstm`) on the CPU, where oneDNN
builds no bfloat16 LSTM primitive without AVX-512.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["float32_under_autocast"]


def float32_under_autocast(fn: Callable, devices: tuple[str, ...] | None = None) -> Callable:
    """``fn`` in float32 with autocast off when autocast is on for the device of its first tensor argument (of
    ``devices`` only, when given): its floating inputs but float64 ones, and lists of tensors, are cast to float32
    (``torch.amp.custom_fwd(cast_inputs=torch.float32)``'s rule).  Gradients flow back through the casts.

    A loop's inputs would otherwise mix the autocast dtype (features from autocast products) and float32 (the
    weights), which the native loops refuse, and its tiny per-step products gain nothing from half precision while
    their errors would compound over the frames; ``functools.partial(float32_under_autocast, devices=("cpu",))``
    decorates the LSTMs."""

    def cast(a):
        if isinstance(a, Tensor) and a.is_floating_point() and a.dtype != torch.float64:
            return a.float()
        if isinstance(a, list | tuple) and a and all(isinstance(t, Tensor) for t in a):
            return [cast(t) for t in a]
        return a

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)), None)
        device = first.device.type if first is not None else "cpu"
        if not torch.is_autocast_enabled(device) or (devices is not None and device not in devices):
            return fn(*args, **kwargs)
        with torch.autocast(device, enabled=False):
            return fn(*[cast(a) for a in args], **{k: cast(v) for k, v in kwargs.items()})

    return wrapper
