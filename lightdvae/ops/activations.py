"""tanh vectorised on the CPU (issue #17): the recurrent models' MLP activation.

ATen's CPU ``tanh`` runs libm's scalar ``tanhf`` on float32 (2.2-2.7 ns per element on one thread at every
``ATEN_CPU_CAPABILITY``, about ten times its ``sigmoid``): 3-6 % of a VAE, DKF or SRNN training step at batch 128.
``torch.ops.lightdvae.tanh`` (csrc/activations/tanh_cpu.cpp) is one branch-free pass the compiler vectorises,
compiled for AVX2 and AVX-512 like the loss kernels (below AVX2 it is ATen's tanh): Cephes' odd polynomial below
``|x| = 0.625``, ``1 - 2 / (exp(2|x|) + 1)`` above, at most 1.32 ulp from the exact value measured
(``tests/test_ops_activations.py`` bounds it by 2 against float64 on every instruction set).  The backward is
ATen's ``tanh_backward`` on the output, as for ``torch.tanh``.  float64, CUDA, the reference backend and
``LIGHTDVAE_REFERENCE_OPS=tanh`` take ``torch.tanh``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightdvae import _ext

__all__ = ["tanh", "Tanh"]


def tanh(x: Tensor) -> Tensor:
    """``torch.tanh(x)``, through the vectorised kernel for float32 on the CPU (differentiable)."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and _ext.use_native("tanh", "cpu", True):
        return torch.ops.lightdvae.tanh(x)
    return torch.tanh(x)


class Tanh(nn.Tanh):
    """``nn.Tanh`` on :func:`tanh` (no parameters, so checkpoints are unchanged; still an ``nn.Tanh``)."""

    def forward(self, x: Tensor) -> Tensor:
        return tanh(x)


if _ext.HAS_NATIVE and _ext.has_kernel("tanh", "cpu"):

    @torch.library.register_fake("lightdvae::tanh")
    def _tanh_fake(x):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    def _tanh_setup(ctx, inputs, output):
        ctx.save_for_backward(output)

    def _tanh_backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)

    torch.library.register_autograd("lightdvae::tanh", _tanh_backward, setup_context=_tanh_setup)

    @torch.library.register_vmap("lightdvae::tanh")
    def _tanh_vmap(info, in_dims, x):
        # element-wise: the batched tensor goes through whole, its batch dimension where it was (without this rule
        # vmap runs the op once per sample and warns each time: the VAE's E-step vmaps its encoder copies)
        return torch.ops.lightdvae.tanh(x), in_dims[0]
