"""The vectorised tanh (``lightdvae::tanh``, issue #17): its error against float64 on every instruction set, the
special values, symmetry, strides and threads, its backward, opcheck, the fallbacks, and the models' MLPs."""

import pytest
import torch
from helpers import no_vmap_fallback, requires_native

from lightdvae import _ext
from lightdvae.models import build
from lightdvae.models.layers import MLP
from lightdvae.ops import tanh
from lightdvae.ops.activations import Tanh

pytestmark = requires_native
#: the kernel's bound in float32 ulps of the exact value (float64): ~1.3 measured on AVX2 and AVX-512 (Cephes'
#: polynomial below 0.625, 1 - 2 / (exp(2|x|) + 1) above); ATen's libm tanhf is within 0.52
MAX_ULPS = 2.0


def _op(x):
    return torch.ops.lightdvae.tanh(x)


def _isas():
    return torch.ops.lightdvae.loss_cpu_isas()


@pytest.fixture
def each_isa():
    """Runs the test body once per instruction set this CPU has (the choice restored after)."""
    before = torch.ops.lightdvae.loss_cpu_isa()

    def run(body):
        try:
            for isa in _isas():
                torch.ops.lightdvae.loss_cpu_isa(isa)
                body(isa)
        finally:
            torch.ops.lightdvae.loss_cpu_isa("auto")
        assert torch.ops.lightdvae.loss_cpu_isa() == before

    return run


def _ulps(y: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """|y - exact| in units of the float32 spacing at the exact value."""
    mag = exact.float().abs()
    spacing = (torch.nextafter(mag, torch.tensor(float("inf"))) - mag).double()
    return (y.double() - exact).abs() / spacing


def test_error_against_float64_on_every_instruction_set(each_isa):
    g = torch.Generator().manual_seed(0)
    x = torch.cat(
        [
            torch.linspace(-12.0, 12.0, 400_001),
            torch.randn(200_000, generator=g) * 0.4,  # the polynomial's side of 0.625, densely
            torch.linspace(0.6, 0.65, 50_001),  # both sides of the switch
            torch.logspace(-30, 1, 10_000),
        ]
    )
    exact = torch.tanh(x.double())

    def body(isa):
        y = _op(x)
        nonzero = exact != 0
        ulps = _ulps(y, exact)[nonzero]
        assert ulps.max().item() <= MAX_ULPS, (isa, x[nonzero][ulps.argmax()].item())
        if isa == "default":  # below AVX2 the op is ATen's tanh
            assert torch.equal(y, torch.tanh(x))

    each_isa(body)


def test_special_values(each_isa):
    x = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-30, -1e-38, 9.99, 10.0, 20.0, 1e30])

    def body(isa):
        y = _op(x)
        assert torch.equal(torch.signbit(y[:2]), torch.tensor([False, True])), isa  # -0 stays -0
        assert y[2].item() == 1.0 and y[3].item() == -1.0 and torch.isnan(y[4])
        assert y[5].item() == pytest.approx(1e-30, rel=1e-6) and y[6].item() == pytest.approx(-1e-38, rel=1e-6)
        assert torch.equal(y[7:], torch.ones(4))

    each_isa(body)


def test_odd_symmetry_strides_and_threads_give_the_same_bits():
    x = torch.randn(64, 50, 33, generator=torch.Generator().manual_seed(1)) * 3
    y = _op(x)
    assert torch.equal(_op(-x), -y)
    assert torch.equal(_op(x.transpose(0, 2)), y.transpose(0, 2))  # a view: computed on its contiguous copy
    assert _op(x.transpose(0, 2)).is_contiguous()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _op(x)
        torch.set_num_threads(2)
        assert torch.equal(_op(x), one) and torch.equal(one, y)
    finally:
        torch.set_num_threads(threads)


def test_backward_is_atens_formula_on_the_output():
    x = torch.randn(300, 7, generator=torch.Generator().manual_seed(2)).requires_grad_()
    grad = torch.randn(300, 7, generator=torch.Generator().manual_seed(3))
    (dx,) = torch.autograd.grad(_op(x), x, grad)
    y = _op(x.detach())
    assert torch.equal(dx, torch.ops.aten.tanh_backward(grad, y))
    # float64 (ATen's kernel inside the op) checks the autograd formula and its own derivative
    x64 = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_op, (x64,))
    assert torch.autograd.gradgradcheck(_op, (x64,))


def test_vmap_batches_the_op_whole():
    # the VAE's E-step vmaps its encoder copies over a batch of utterances; without a batching rule vmap would run
    # the op once per sample and print a warning each time
    x = torch.randn(4, 6, 9, generator=torch.Generator().manual_seed(4)).requires_grad_()
    with no_vmap_fallback():
        for dim in (0, 1, 2):
            y = torch.func.vmap(_op, in_dims=dim, out_dims=dim)(x)
            assert torch.equal(y, _op(x))
        (dx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert torch.equal(dx, torch.ops.aten.tanh_backward(torch.ones_like(y), _op(x.detach())))


def test_opcheck():
    torch.library.opcheck(torch.ops.lightdvae.tanh.default, (torch.randn(8, 5, requires_grad=True),))


def test_fallbacks(monkeypatch):
    x64 = torch.randn(100, dtype=torch.float64)
    assert torch.equal(tanh(x64), torch.tanh(x64))  # float64: ATen's
    half = torch.randn(100).half()
    assert torch.equal(tanh(half), torch.tanh(half))
    meta = tanh(torch.ones(10, device="meta"))  # a device without the kernel
    assert meta.device.type == "meta" and meta.shape == (10,)
    x = torch.randn(1000) * 2
    monkeypatch.setenv("LIGHTDVAE_BACKEND", "ref")
    assert torch.equal(tanh(x), torch.tanh(x))
    monkeypatch.setenv("LIGHTDVAE_BACKEND", "native")
    assert torch.equal(tanh(x), _op(x))
    monkeypatch.setenv("LIGHTDVAE_REFERENCE_OPS", "dropout, tanh")  # this op's reference, the others native
    assert torch.equal(tanh(x), torch.tanh(x)) and _ext.use_native("relu_dropout", "cpu")
    monkeypatch.delenv("LIGHTDVAE_REFERENCE_OPS")
    with pytest.raises(RuntimeError, match="floating point"):
        _op(torch.arange(4))
    assert _ext.has_kernel("tanh", "cpu") and not _ext.has_kernel("tanh", "cuda")


def test_the_models_mlps_use_it_and_keep_their_checkpoint_layout():
    mlp = MLP(12, [8, 4], "tanh")
    assert isinstance(mlp.act, Tanh) and isinstance(mlp.act, torch.nn.Tanh)  # still an nn.Tanh to whoever asks
    assert type(MLP(12, [8], "relu").act) is torch.nn.ReLU
    x = torch.randn(5, 12)
    manual = x
    for layer in mlp.layers:
        manual = _op(layer(manual))
    assert torch.equal(mlp(x), manual)
    model = build("dkf")
    assert not any("act" in k for k in model.state_dict())  # no state: checkpoints are unchanged
