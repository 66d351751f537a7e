"""An ``nn.LSTM`` over a sequence with its explicit backward, for small batches on the CPU (issue #16).

The enhancement E-step fine-tunes the inference network of DKF and RVAE one utterance at a time, and their LSTMs
over the mixture run forward and backward once per EM iteration.  At batch 1 ATen's CPU LSTM (oneDNN's primitive)
takes about three times its forward for the backward.  ``torch.ops.lightdvae.lstm_layer``
(csrc/recurrent/lstm_cpu.cpp) runs one layer's recurrence on raw pointers and everything else as single products
over all frames; its backward is ``lstm_layer_backward`` (the gradients of x, the weights and the biases; x's only
when it requires one).  A backward layer (``reverse=True``) runs from the last frame to the first in place.

:func:`lstm` takes it for a whole ``nn.LSTM`` (layers and directions) where it applies (:func:`applies`: the CPU,
float32 or float64, at most :data:`MAX_BATCH` rows, a gradient to record, no autocast, no dropout between layers in
training,
the native extension loaded and ``LIGHTDVAE_REFERENCE_OPS`` not naming ``lstm_layer``); elsewhere the module itself
runs.  The results are nn.LSTM's within float rounding (``tests/test_ops_lstm.py`` holds both to a float64 run).

Under a CPU autocast (a bf16 training step) every LSTM of the package runs in float32 with autocast off
(:data:`float32_on_cpu_autocast`, for :func:`lstm` and :func:`lightdvae.models.layers.lstm_step`): oneDNN has no
bfloat16 LSTM primitive on CPUs without AVX-512 (a bidirectional layer fails to build there), and a step must give
the same numbers on every CPU; the posterior loops do the same (:mod:`lightdvae.ops.sampling`).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from lightdvae import _ext
from lightdvae.ops.precision import float32_under_autocast

__all__ = ["lstm", "lstm_layer", "applies", "float32_on_cpu_autocast", "MAX_BATCH"]

#: The largest batch the native layer takes: the step-by-step products read every weight once per step for all
#: rows, which beats oneDNN at a few rows (the raw-pointer loops' kMaxBatch, csrc/sampling/small_batch.h).
MAX_BATCH = 4


def applies(module: nn.LSTM, x: Tensor) -> bool:
    """Whether :func:`lstm` runs ``module`` over ``x`` with the native layer (see the module docstring)."""
    batch = x.shape[0] if module.batch_first else x.shape[1]
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and x.dim() == 3
        and 1 <= batch <= MAX_BATCH
        and torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")  # lstm() turns a CPU autocast off before it asks
        and (x.requires_grad or any(p.requires_grad for p in _weights(module)))
        and module.bias
        and module.proj_size == 0
        and not (module.training and module.dropout > 0 and module.num_layers > 1)
        and _ext.use_native("lstm_layer", "cpu", True)
    )


def lstm_layer(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor, reverse: bool = False) -> Tensor:
    """One LSTM layer over ``x (frames, batch, input)`` from zero state: the outputs ``(frames, batch, hidden)``;
    ``reverse`` runs it from the last frame to the first (differentiable in every input)."""
    return torch.ops.lightdvae.lstm_layer(x, w_ih, w_hh, b_ih, b_hh, reverse)[0]


#: The LSTMs' guard under a CPU autocast (see the module docstring).
float32_on_cpu_autocast = functools.partial(float32_under_autocast, devices=("cpu",))


@float32_on_cpu_autocast
def lstm(module: nn.LSTM, x: Tensor, reverse: bool = False) -> Tensor:
    """``module``'s outputs over ``x`` from zero state (``(frames, batch, in)``, or batch first as the module says),
    ``directions * hidden`` wide; ``reverse`` runs a unidirectional module from the last frame to the first (as on the
    flipped sequence, with the outputs flipped back).  The native layer where :func:`applies`, else the module."""
    if not applies(module, x) or (reverse and module.bidirectional):
        time = 1 if module.batch_first else 0
        if reverse:
            out, _ = module(torch.flip(x, [time]))
            return torch.flip(out, [time])
        return module(x)[0]
    h = x.transpose(0, 1) if module.batch_first else x
    directions = 2 if module.bidirectional else 1
    for layer in range(module.num_layers):
        outs = []
        for d in range(directions):
            suffix = f"_l{layer}" + ("_reverse" if d == 1 else "")
            w = [getattr(module, f"{name}{suffix}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            outs.append(lstm_layer(h, *w, reverse=reverse or d == 1))
        h = outs[0] if directions == 1 else torch.cat(outs, -1)
    return h.transpose(0, 1) if module.batch_first else h


def _weights(module: nn.LSTM) -> list[Tensor]:
    return [getattr(module, name) for name in module._flat_weights_names]


if _ext.HAS_NATIVE and _ext.has_kernel("lstm_layer", "cpu"):

    @torch.library.register_fake("lightdvae::lstm_layer")
    def _lstm_layer_fake(x, w_ih, w_hh, b_ih, b_hh, reverse):
        frames, batch, hidden = x.shape[0], x.shape[1], w_hh.shape[1]
        return (
            x.new_empty(frames, batch, hidden),
            x.new_empty(frames, batch, 4 * hidden),
            x.new_empty(2, frames, batch, hidden),
        )

    @torch.library.register_fake("lightdvae::lstm_layer_backward")
    def _lstm_layer_backward_fake(grad_out, x, w_ih, w_hh, out, gates, cell, reverse, input_grad):
        dx = x.new_empty(x.shape) if input_grad else x.new_empty(0)
        return dx, w_ih.new_empty(w_ih.shape), w_hh.new_empty(w_hh.shape), w_ih.new_empty(w_ih.shape[0])

    def _lstm_layer_setup(ctx, inputs, output):
        x, w_ih, w_hh, _, _, reverse = inputs
        out, gates, cell = output
        ctx.reverse = reverse
        ctx.input_grad = ctx.needs_input_grad[0]
        ctx.mark_non_differentiable(gates, cell)
        ctx.save_for_backward(x, w_ih, w_hh, out, gates, cell)

    def _lstm_layer_backward(ctx, grad_out, _grad_gates, _grad_cell):
        x, w_ih, w_hh, out, gates, cell = ctx.saved_tensors
        dx, dw_ih, dw_hh, db = torch.ops.lightdvae.lstm_layer_backward(
            grad_out, x, w_ih, w_hh, out, gates, cell, ctx.reverse, ctx.input_grad
        )
        return (dx if ctx.input_grad else None), dw_ih, dw_hh, db, db, None

    torch.library.register_autograd("lightdvae::lstm_layer", _lstm_layer_backward, setup_context=_lstm_layer_setup)
