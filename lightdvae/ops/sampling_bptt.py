"""Explicit backward through time of the native posterior loops (issue 17).

The composite loops of :mod:`lightdvae.ops.sampling` (``torch.ops.lightdvae.<loop>``) are differentiated by
autograd's graph of their ATen calls: some twenty small nodes per step.  ``torch.ops.lightdvae.<loop>_bptt``
runs the same loop and also returns a flat workspace of every per-step activation;
``<loop>_bptt_backward`` runs the recurrence backward step by step from it and computes every weight and
bias gradient as one GEMM (one sum) over all frames x batch rows.  This module registers the backward as
the forward's autograd formula (``torch.library.register_autograd``) and both ops' fake kernels.

:func:`explicit_backward` says when the public loops use the ``_bptt`` op: gradients are being recorded,
some input requires one, the build has the op for the device (the CPU, and CUDA, where each loop is one kernel
launch each way: ``csrc/sampling/row_loops.h``) and
``LIGHTDVAE_LOOP_BACKWARD`` is not ``composite``.  The composite loop stays the reference: the tests
hold the two to the same outputs and gradients.

Inside :func:`exact_loops` ``(False)`` the ``_bptt`` op also runs without gradients: at batch <= 4 its steps
run on raw pointers (csrc/sampling/small_batch.h), several times faster than the composite loop's ATen calls,
and its results are the reference's within float rounding instead of bit for bit.  Enhancement runs its EM
so (it needs no bit-parity with a reference; one utterance at a time it is dispatch-bound).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from lightdvae import _ext

__all__ = ["exact_loops", "exact_loops_enabled", "explicit_backward"]

_EXACT = threading.local()


@contextlib.contextmanager
def exact_loops(enabled: bool) -> Iterator[None]:
    """Within the block (this thread), ``enabled=False`` lets the native loops trade bit-parity with their
    references for speed: the posterior loops run as their ``_bptt`` op with or without gradients, SRNN's own-past
    loop and the transformer DVAEs' decoding loop run small batches on raw pointers, and the loops with an LSTM
    step take ATen's LSTM cell instead of ``exact_lstm``'s kernel.  Results stay within float
    rounding of the exact ones.  Nests; restores the previous setting on exit."""
    previous = exact_loops_enabled()
    _EXACT.value = bool(enabled)
    try:
        yield
    finally:
        _EXACT.value = previous


def exact_loops_enabled() -> bool:
    """False inside ``exact_loops(False)``, True otherwise (the default: bit-parity where documented)."""
    return getattr(_EXACT, "value", True)


def explicit_backward(op: str, like: Tensor, *inputs: Tensor | Sequence[Tensor] | None) -> bool:
    """Whether the native loop ``op`` runs as ``<op>_bptt`` (explicit backward) for these inputs (tensors or
    lists of tensors; None is skipped)."""
    if not _ext.has_kernel(f"{op}_bptt", like.device.type) or _ext.loop_backward() != "bptt":
        return False
    if not exact_loops_enabled():
        return True
    if not torch.is_grad_enabled():
        return False
    for item in inputs:
        for t in [item] if isinstance(item, Tensor) or item is None else item:
            if t is not None and t.requires_grad:
                return True
    return False


def _widths(params: Sequence[Tensor]) -> int:
    """The summed output widths of a Linear stack ``[w0, b0, ...]``."""
    return sum(params[i].shape[0] for i in range(0, len(params), 2))


def _dense(z: Tensor, grads: tuple[Tensor | None, ...]) -> list[Tensor]:
    """The gradients of z, mean, logvar (each like ``z``), zeros for those that got none (the workspace's is
    always None: the ops' autograd does not materialise gradients)."""
    return [torch.zeros_like(z) if g is None else g for g in grads[:3]]


def _groups(weights: Sequence[Tensor], sizes: Sequence[int]) -> list[Sequence[Tensor]]:
    """The saved weight lists back from one flat sequence: consecutive groups of ``sizes``, then the rest."""
    out, start = [], 0
    for n in sizes:
        out.append(weights[start : start + n])
        start += n
    return [*out, weights[start:]]


def _like_each(params: Sequence[Tensor]) -> list[Tensor]:
    return [torch.empty_like(p, memory_format=torch.contiguous_format) for p in params]


if _ext.HAS_NATIVE and _ext.has_kernel("dkf_posterior_bptt", "cpu"):

    @torch.library.register_fake("lightdvae::dkf_posterior_bptt")
    def _dkf_bptt_fake(gx, eps, z_to_g, posterior_mlp, heads, g_terms, activation):
        frames, batch, g_dim = gx.shape
        z_dim = heads[0].shape[0]
        width = _widths(z_to_g) + g_dim + _widths(posterior_mlp)
        outs = [gx.new_empty(frames, batch, z_dim) for _ in range(3)]
        return (*outs, gx.new_empty(frames * batch * width))

    @torch.library.register_fake("lightdvae::dkf_posterior_bptt_backward")
    def _dkf_bptt_backward_fake(
        grad_z, grad_mean, grad_logvar, eps, z, logvar, workspace, z_to_g, posterior_mlp, heads, g_terms, activation
    ):
        frames, batch, z_dim = z.shape
        g_dim = posterior_mlp[0].shape[1] if posterior_mlp else heads[0].shape[1]
        grad_eps = z.new_empty(frames, batch, z_dim) if eps is not None else z.new_empty(0)
        return (
            z.new_empty(frames, batch, g_dim),
            grad_eps,
            _like_each(z_to_g),
            _like_each(posterior_mlp),
            _like_each(heads),
        )

    def _dkf_bptt_setup(ctx, inputs, output):
        gx, eps, z_to_g, posterior_mlp, heads, g_terms, activation = inputs
        z, _, logvar, workspace = output
        ctx.mark_non_differentiable(workspace)
        ctx.set_materialize_grads(False)  # no zeros the size of the workspace for its (absent) gradient
        ctx.save_for_backward(eps, z, logvar, workspace, *z_to_g, *posterior_mlp, *heads)
        ctx.sizes = (len(z_to_g), len(posterior_mlp))
        ctx.g_terms, ctx.activation = g_terms, activation

    def _dkf_bptt_backward(ctx, *grads):
        eps, z, logvar, workspace, *weights = ctx.saved_tensors
        grad_z, grad_mean, grad_logvar = _dense(z, grads)
        z_to_g, posterior_mlp, heads = _groups(weights, ctx.sizes)
        grad_gx, grad_eps, g_zg, g_post, g_heads = torch.ops.lightdvae.dkf_posterior_bptt_backward(
            grad_z, grad_mean, grad_logvar, eps, z, logvar, workspace, z_to_g, posterior_mlp, heads,
            ctx.g_terms, ctx.activation,
        )  # fmt: skip
        grad_eps = grad_eps if eps is not None and ctx.needs_input_grad[1] else None
        return grad_gx, grad_eps, list(g_zg), list(g_post), list(g_heads), None, None

    torch.library.register_autograd("lightdvae::dkf_posterior_bptt", _dkf_bptt_backward, setup_context=_dkf_bptt_setup)


if _ext.HAS_NATIVE and _ext.has_kernel("rvae_posterior_bptt", "cpu"):

    @torch.library.register_fake("lightdvae::rvae_posterior_bptt")
    def _rvae_bptt_fake(gx, eps, z_embed, rnn_z, posterior_mlp, heads, activation):
        frames, batch, _ = gx.shape
        z_dim, hidden = heads[0].shape[0], rnn_z[1].shape[1]
        width = _widths(z_embed) + len(rnn_z) // 4 * 7 * hidden + _widths(posterior_mlp)
        outs = [gx.new_empty(frames, batch, z_dim) for _ in range(3)]
        return (*outs, gx.new_empty(frames * batch * width))

    @torch.library.register_fake("lightdvae::rvae_posterior_bptt_backward")
    def _rvae_bptt_backward_fake(
        grad_z, grad_mean, grad_logvar, eps, gx, z, logvar, workspace, z_embed, rnn_z, posterior_mlp, heads, activation
    ):
        grad_eps = torch.empty_like(z) if eps is not None else z.new_empty(0)
        return (
            torch.empty_like(gx, memory_format=torch.contiguous_format),
            grad_eps,
            _like_each(z_embed),
            _like_each(rnn_z),
            _like_each(posterior_mlp),
            _like_each(heads),
        )

    def _rvae_bptt_setup(ctx, inputs, output):
        gx, eps, z_embed, rnn_z, posterior_mlp, heads, activation = inputs
        z, _, logvar, workspace = output
        ctx.mark_non_differentiable(workspace)
        ctx.set_materialize_grads(False)  # no zeros the size of the workspace for its (absent) gradient
        ctx.save_for_backward(eps, gx, z, logvar, workspace, *z_embed, *rnn_z, *posterior_mlp, *heads)
        ctx.sizes = (len(z_embed), len(rnn_z), len(posterior_mlp))
        ctx.activation = activation

    def _rvae_bptt_backward(ctx, *grads):
        eps, gx, z, logvar, workspace, *weights = ctx.saved_tensors
        grad_z, grad_mean, grad_logvar = _dense(z, grads)
        z_embed, rnn_z, posterior_mlp, heads = _groups(weights, ctx.sizes)
        grad_gx, grad_eps, *grads = torch.ops.lightdvae.rvae_posterior_bptt_backward(
            grad_z, grad_mean, grad_logvar, eps, gx, z, logvar, workspace, z_embed, rnn_z, posterior_mlp, heads,
            ctx.activation,
        )  # fmt: skip
        grad_eps = grad_eps if eps is not None and ctx.needs_input_grad[1] else None
        return (grad_gx, grad_eps, *(list(g) for g in grads), None)

    torch.library.register_autograd(
        "lightdvae::rvae_posterior_bptt", _rvae_bptt_backward, setup_context=_rvae_bptt_setup
    )


if _ext.HAS_NATIVE and _ext.has_kernel("srnn_posterior_bptt", "cpu"):

    @torch.library.register_fake("lightdvae::srnn_posterior_bptt")
    def _srnn_bptt_fake(g, eps, posterior_mlp, heads, activation):
        frames, batch, _ = g.shape
        outs = [g.new_empty(frames, batch, heads[0].shape[0]) for _ in range(3)]
        return (*outs, g.new_empty(frames * batch * _widths(posterior_mlp)))

    @torch.library.register_fake("lightdvae::srnn_posterior_bptt_backward")
    def _srnn_bptt_backward_fake(
        grad_z, grad_mean, grad_logvar, eps, g, z, logvar, workspace, posterior_mlp, heads, act
    ):
        grad_eps = torch.empty_like(z) if eps is not None else z.new_empty(0)
        grad_g = torch.empty_like(g, memory_format=torch.contiguous_format)
        return grad_g, grad_eps, _like_each(posterior_mlp), _like_each(heads)

    def _srnn_bptt_setup(ctx, inputs, output):
        g, eps, posterior_mlp, heads, activation = inputs
        z, _, logvar, workspace = output
        ctx.mark_non_differentiable(workspace)
        ctx.set_materialize_grads(False)  # no zeros the size of the workspace for its (absent) gradient
        ctx.save_for_backward(eps, g, z, logvar, workspace, *posterior_mlp, *heads)
        ctx.n_posterior, ctx.activation = len(posterior_mlp), activation

    def _srnn_bptt_backward(ctx, *grads):
        eps, g, z, logvar, workspace, *weights = ctx.saved_tensors
        grad_z, grad_mean, grad_logvar = _dense(z, grads)
        posterior_mlp, heads = _groups(weights, (ctx.n_posterior,))
        grad_g, grad_eps, g_post, g_heads = torch.ops.lightdvae.srnn_posterior_bptt_backward(
            grad_z, grad_mean, grad_logvar, eps, g, z, logvar, workspace, posterior_mlp, heads, ctx.activation
        )
        grad_eps = grad_eps if eps is not None and ctx.needs_input_grad[1] else None
        return grad_g, grad_eps, list(g_post), list(g_heads), None

    torch.library.register_autograd(
        "lightdvae::srnn_posterior_bptt", _srnn_bptt_backward, setup_context=_srnn_bptt_setup
    )
