"""The native LSTM layer with its explicit backward (``lightdvae::lstm_layer``, issue #16): nn.LSTM's outputs and
gradients in float64, float32 no further from float64 than nn.LSTM's own float32 run allows, every layout the models
use (backward in time, stacked layers, both directions, batch first), when it applies, opcheck."""

import pytest
import torch
from helpers import requires_native
from torch import nn

from lightdvae.models import build
from lightdvae.ops import lstm as lstm_ops

pytestmark = requires_native

#: (layers, bidirectional, reverse, batch first)
LAYOUTS = [
    (1, False, True, False),
    (1, False, False, False),
    (2, False, False, True),
    (1, True, False, False),
    (2, True, False, True),
]


def _module(layers, bidirectional, batch_first, dtype, seed=0):
    torch.manual_seed(seed)
    return nn.LSTM(12, 7, layers, bidirectional=bidirectional, batch_first=batch_first).to(dtype)


def _reference(module, x, reverse):
    """nn.LSTM itself (ATen's LSTM; oneDNN's in float32), flipped in time for a backward layer."""
    time = 1 if module.batch_first else 0
    if reverse:
        return torch.flip(module(torch.flip(x, [time]))[0], [time])
    return module(x)[0]


def _run(module, x, reverse, native, grad_out):
    """Outputs and the gradients of x and of every weight for ``grad_out``."""
    x = x.detach().requires_grad_()
    out = lstm_ops.lstm(module, x, reverse) if native else _reference(module, x, reverse)
    grads = torch.autograd.grad(out, [x, *module.parameters()], grad_out)
    return [out.detach(), *grads]


def _inputs(batch, frames, batch_first, dtype, seed=1):
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, frames, 12) if batch_first else (frames, batch, 12)
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    return x


@pytest.mark.parametrize("layers, bidirectional, reverse, batch_first", LAYOUTS)
@pytest.mark.parametrize("batch, frames", [(1, 23), (3, 9), (4, 1)])
def test_float64_is_nn_lstm(layers, bidirectional, reverse, batch_first, batch, frames):
    module = _module(layers, bidirectional, batch_first, torch.float64)
    x = _inputs(batch, frames, batch_first, torch.float64)
    assert lstm_ops.applies(module, x.requires_grad_())
    grad_out = torch.randn_like(_reference(module, x, reverse))
    for got, want in zip(
        _run(module, x, reverse, True, grad_out), _run(module, x, reverse, False, grad_out), strict=True
    ):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layers, bidirectional, reverse, batch_first", LAYOUTS)
def test_float32_is_as_close_to_float64_as_nn_lstm(layers, bidirectional, reverse, batch_first):
    """The float32 layer (vectorised tanh and sigmoid, at most 2 ulp) against a float64 run of nn.LSTM: its error no
    more than 4x nn.LSTM's own float32 error (oneDNN's) plus a few ulps of the scale."""
    module64 = _module(layers, bidirectional, batch_first, torch.float64)
    module32 = _module(layers, bidirectional, batch_first, torch.float32)
    x64 = _inputs(2, 40, batch_first, torch.float64) * 3  # gates well into their saturation
    grad_out = torch.randn_like(_reference(module64, x64, reverse))
    truth = _run(module64, x64, reverse, False, grad_out)
    native = _run(module32, x64.float(), reverse, True, grad_out.float())
    aten = _run(module32, x64.float(), reverse, False, grad_out.float())
    for name, got, ref, want in zip(
        ["out", "x", *(n for n, _ in module32.named_parameters())], native, aten, truth, strict=True
    ):
        scale = want.abs().max().item()
        err, err_ref = ((t.double() - want).abs().max().item() for t in (got, ref))
        print(f"{name}: float32 error {err / scale:.2e} of the scale (nn.LSTM's {err_ref / scale:.2e})")
        assert err <= 4 * err_ref + 8 * torch.finfo(torch.float32).eps * scale, name


def test_a_frozen_input_gets_no_gradient_and_the_weights_theirs():
    module = _module(1, False, False, torch.float64)
    x = _inputs(1, 11, False, torch.float64)  # data: no gradient asked
    assert lstm_ops.applies(module, x)
    out = lstm_ops.lstm(module, x, reverse=True)
    grads = torch.autograd.grad(out.square().sum(), list(module.parameters()))
    want = torch.autograd.grad(_reference(module, x, True).square().sum(), list(module.parameters()))
    for got, ref in zip(grads, want, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_where_it_applies(monkeypatch):
    """A recorded gradient, CPU float32/float64, batch 1-4, no inter-layer dropout in training, the native op not
    turned off; otherwise the module runs (same results)."""
    module = _module(2, False, False, torch.float32)
    x = _inputs(4, 5, False, torch.float32).requires_grad_()
    assert lstm_ops.applies(module, x)
    assert not lstm_ops.applies(module, _inputs(5, 5, False, torch.float32).requires_grad_())
    assert lstm_ops.applies(module, x.detach())  # the weights' gradients
    frozen = _module(1, False, False, torch.float32).requires_grad_(False)
    assert lstm_ops.applies(frozen, x) and not lstm_ops.applies(frozen, x.detach())  # nothing to differentiate
    with torch.no_grad():
        assert not lstm_ops.applies(module, x)
    assert not lstm_ops.applies(module.double(), x.detach().half().requires_grad_())
    dropping = nn.LSTM(12, 7, 2, dropout=0.5)
    assert not lstm_ops.applies(dropping, x) and lstm_ops.applies(dropping.eval(), x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not lstm_ops.applies(module.float(), x)
    monkeypatch.setenv("LIGHTDVAE_REFERENCE_OPS", "lstm_layer")
    assert not lstm_ops.applies(module.float(), x)


def test_the_models_encoders_take_it_under_autograd(monkeypatch):
    """DKF's backward LSTM over the mixture at batch 1 with gradients: the native layer, nn.LSTM's features and
    gradients (float64)."""
    calls = []
    real = lstm_ops.lstm_layer
    monkeypatch.setattr(lstm_ops, "lstm_layer", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    model = build("dkf", x_dims=[16], rnn_dim=8, z_to_g_dims=[4], posterior_dims=[4], decoder_dims=[8]).double()
    power = torch.rand(1, 15, 513, dtype=torch.float64)
    native = model.encode_speech(power)
    (g_native,) = torch.autograd.grad(native.square().sum(), [model.rnn_x.weight_hh_l0])
    assert calls == [1]
    monkeypatch.setenv("LIGHTDVAE_REFERENCE_OPS", "lstm_layer")
    reference = model.encode_speech(power)
    (g_reference,) = torch.autograd.grad(reference.square().sum(), [model.rnn_x.weight_hh_l0])
    assert calls == [1]
    torch.testing.assert_close(native, reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_native, g_reference, rtol=1e-12, atol=1e-12)


def test_opcheck():
    module = _module(1, False, False, torch.float64)
    x = _inputs(2, 6, False, torch.float64).requires_grad_()
    weights = [p.detach().requires_grad_() for p in module.parameters()]
    torch.library.opcheck(torch.ops.lightdvae.lstm_layer.default, (x, *weights, True))


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("grad", [False, True])
def test_under_a_cpu_autocast_lstms_run_in_float32_on_every_cpu(bidirectional, grad):
    # oneDNN builds no bfloat16 LSTM primitive on CPUs without AVX-512 (a bidirectional layer fails there): under a
    # bf16 autocast the package's LSTMs run in float32 with autocast off, the same numbers on every CPU
    from lightdvae.models.layers import lstm_step

    torch.manual_seed(0)
    module = nn.LSTM(12, 8, num_layers=2, bidirectional=bidirectional)
    embed = nn.Linear(6, 12)
    x = torch.randn(7, 2, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.set_grad_enabled(grad):
        features = embed(x)  # bfloat16, as a training step's products are
        out = lstm_ops.lstm(module, features)
    assert features.dtype == torch.bfloat16 and out.dtype == torch.float32
    with torch.set_grad_enabled(grad):  # the same path (the native layer with a gradient at batch 2) in float32
        assert torch.equal(out.detach(), lstm_ops.lstm(module, features.detach().float()).detach())
    if grad:
        out.sum().backward()
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in module.parameters())
    if not bidirectional:
        state = (torch.zeros(2, 2, 8), torch.zeros(2, 2, 8))
        with torch.no_grad():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                first = embed(x[0])
                step, (h, c) = lstm_step(module, first, state)
            assert step.dtype == h.dtype == c.dtype == torch.float32
            assert torch.equal(step, lstm_step(module, first.float(), state)[0])
