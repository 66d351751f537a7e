"""Dropout whose mask is a hash of (seed, element index): one pass, nothing saved for the backward (issue #17).

``torch.ops.lightdvae.dropout(x, p, seed)`` returns ``x * keep / (1 - p)`` with ``keep`` true where 32 bits hashed
from the seed and the element's index are at least ``p * 2^32`` (csrc/dropout/dropout_cpu.cpp).  ATen's CPU
dropout draws a Bernoulli tensor, divides it and multiplies: about 13 ns per element on one thread, a third of a
LigHT-DVAE training step; the hashed mask costs one pass over the data.  The op is linear in ``x`` with a mask fixed
by the seed, so its backward is the op itself applied to the gradient with the same seed (and so on for higher
derivatives): no mask tensor lives between forward and backward.

:func:`dropout` draws the seed from torch's default CPU generator (or ``generator``), so a seeded training run
draws the same masks again, and a resumed one (which restores the generator's state) continues the same sequence.
The masks are not ATen's: the same seed gives other masks than ``torch.nn.functional.dropout``, with the same law
(each element kept independently with probability ``1 - p``, to within the 2^-32 resolution of ``p``).  On CUDA,
and for other dtypes, :func:`dropout` is ``torch.nn.functional.dropout`` (its CUDA kernel is already fused).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightdvae import _ext

__all__ = ["dropout", "dropout_ref", "relu_dropout"]

_SEED_BOUND = 2**63 - 1


def dropout_ref(x: Tensor, p: float, training: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """ATen's dropout (``torch.nn.functional.dropout``; ``generator`` is not used): the reference."""
    return F.dropout(x, p, training)


def dropout(x: Tensor, p: float, training: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """``x`` with each element zeroed with probability ``p`` and the rest scaled by ``1 / (1 - p)`` in training;
    ``x`` itself when not training or ``p == 0``.

    Args:
        x: any shape, float32 or float64 on the CPU for the native kernel (anything else runs ATen's dropout).
        p: the drop probability, in ``[0, 1)``.
        training: False returns ``x``.
        generator: where the mask's seed is drawn from (default: torch's default CPU generator).

    Differentiable in ``x`` (the backward applies the same mask and scale).
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":  # ATen's CUDA dropout is one fused kernel already: it is the native path there
        return dropout_ref(x, p, training)
    supported = x.dtype in (torch.float32, torch.float64)
    if _ext.use_native("dropout", "cpu", supported):
        seed = int(torch.randint(0, _SEED_BOUND, (), generator=generator))
        return torch.ops.lightdvae.dropout(x, float(p), seed)
    return dropout_ref(x, p, training)


def relu_dropout(x: Tensor, p: float, training: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """``dropout(relu(x), p, training, generator)`` in one pass where the native kernel runs (float32 / float64 on
    the CPU): the same seed draw, so the same mask and the same values bit for bit, and a backward that reads only
    the output (``grad / (1 - p)`` where it is positive), which the next layer keeps anyway; the two ops
    (``torch.relu``, :func:`dropout`) elsewhere.  The transformer DVAEs' feed-forward layers call it."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return torch.relu(x)
    supported = x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
    if supported and _ext.use_native("relu_dropout", "cpu", True):
        seed = int(torch.randint(0, _SEED_BOUND, (), generator=generator))
        return torch.ops.lightdvae.relu_dropout(x, float(p), seed)
    return dropout(torch.relu(x), p, training, generator)


if _ext.HAS_NATIVE and _ext.has_kernel("dropout", "cpu"):

    @torch.library.register_fake("lightdvae::dropout")
    def _dropout_fake(x, p, seed):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    def _dropout_setup(ctx, inputs, output):
        ctx.p, ctx.seed = inputs[1], inputs[2]

    def _dropout_backward(ctx, grad):
        return torch.ops.lightdvae.dropout(grad, ctx.p, ctx.seed), None, None

    torch.library.register_autograd("lightdvae::dropout", _dropout_backward, setup_context=_dropout_setup)

if _ext.HAS_NATIVE and _ext.has_kernel("relu_dropout", "cpu"):

    @torch.library.register_fake("lightdvae::relu_dropout")
    def _relu_dropout_fake(x, p, seed):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake("lightdvae::relu_dropout_backward")
    def _relu_dropout_backward_fake(grad, y, p):
        return torch.empty_like(grad, memory_format=torch.contiguous_format)

    def _relu_dropout_setup(ctx, inputs, output):
        ctx.p = inputs[1]
        ctx.save_for_backward(output)

    def _relu_dropout_backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return torch.ops.lightdvae.relu_dropout_backward(grad, y, ctx.p), None, None

    torch.library.register_autograd(
        "lightdvae::relu_dropout", _relu_dropout_backward, setup_context=_relu_dropout_setup
    )

    # The backward is linear in grad with a mask fixed by y: its own backward is itself (y gets none).
    def _relu_dropout_backward_setup(ctx, inputs, output):
        ctx.p = inputs[2]
        ctx.save_for_backward(inputs[1])

    def _relu_dropout_backward_backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return torch.ops.lightdvae.relu_dropout_backward(grad, y, ctx.p), None, None

    torch.library.register_autograd(
        "lightdvae::relu_dropout_backward",
        _relu_dropout_backward_backward,
        setup_context=_relu_dropout_backward_setup,
    )
