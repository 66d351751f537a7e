"""The hashed-mask dropout (``lightdvae::dropout``, issue #17): its law, its independence across elements and seeds,
its determinism (seed, generator, instruction set, threads, strides), its backward (the same mask), gradcheck,
opcheck, the fallbacks, and the models' Dropout module in training."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import requires_native

from lightdvae import _ext
from lightdvae.models import build
from lightdvae.models.base import Dropout
from lightdvae.ops import dropout
from lightdvae.ops.dropout import relu_dropout

pytestmark = requires_native
N = 1 << 20


def _op(x, p, seed):
    return torch.ops.lightdvae.dropout(x, p, seed)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_each_element_is_kept_with_probability_one_minus_p_and_scaled(p, dtype):
    x = torch.rand(N, dtype=dtype, generator=torch.Generator().manual_seed(0)) + 0.5
    y = _op(x, p, 12345)
    kept = y != 0
    sigma = math.sqrt(N * p * (1 - p))
    assert abs(kept.sum().item() - N * (1 - p)) < 6 * sigma
    scale = torch.tensor(1.0 / (1.0 - p), dtype=dtype)
    assert torch.equal(y[kept], x[kept] * scale)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_masks_are_independent_across_neighbours_and_seeds(p):
    """Adjacent elements, elements a row apart and the same element under two seeds are kept together with
    probability (1 - p)^2 (within 6 sigma of the binomial count)."""
    ones = torch.ones(N)
    a, b = _op(ones, p, 1) != 0, _op(ones, p, 2) != 0
    q = (1 - p) ** 2
    for name, both in (
        ("adjacent", a[:-1] & a[1:]),
        ("513 apart", a[:-513] & a[513:]),
        ("two seeds", a & b),
    ):
        n = both.numel()
        assert abs(both.sum().item() - n * q) < 6 * math.sqrt(n * q * (1 - q)), name


def test_the_mask_is_a_function_of_the_seed_and_the_index_only():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 50, 33, generator=g)
    y = _op(x, 0.3, 99)
    assert torch.equal(y, _op(x.clone(), 0.3, 99))
    assert not torch.equal(y, _op(x, 0.3, 100))
    # strides do not matter: a transposed view gives what its contiguous copy gives
    xt = x.transpose(0, 2)
    assert torch.equal(_op(xt, 0.3, 7), _op(xt.contiguous(), 0.3, 7))
    # threads do not matter
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _op(x, 0.3, 5)
        torch.set_num_threads(2)
        two = _op(x, 0.3, 5)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


def test_every_instruction_set_draws_the_same_mask():
    x = torch.randn(3 * 4096 + 17)
    isas = torch.ops.lightdvae.loss_cpu_isas()
    before = torch.ops.lightdvae.loss_cpu_isa()
    try:
        results = []
        for isa in isas:
            torch.ops.lightdvae.loss_cpu_isa(isa)
            results.append(_op(x, 0.25, 2024))
    finally:
        torch.ops.lightdvae.loss_cpu_isa("auto")
    assert torch.ops.lightdvae.loss_cpu_isa() == before
    for isa, r in zip(isas, results, strict=True):
        assert torch.equal(r, results[0]), isa


def test_the_seed_comes_from_torchs_generator():
    x = torch.ones(10000)
    torch.manual_seed(0)
    a = dropout(x, 0.2)
    torch.manual_seed(0)
    b = dropout(x, 0.2)
    assert torch.equal(a, b) and not torch.equal(a, dropout(x, 0.2))
    g = torch.Generator().manual_seed(4)
    c = dropout(x, 0.2, generator=g)
    assert torch.equal(c, dropout(x, 0.2, generator=torch.Generator().manual_seed(4)))


def test_the_backward_applies_the_same_mask():
    x = torch.randn(40, 77, dtype=torch.float64, requires_grad=True)
    w = torch.randn(40, 77, dtype=torch.float64)
    y = _op(x, 0.4, 31)
    (y * w).sum().backward()
    scale = 1.0 / 0.6
    assert torch.equal(x.grad, torch.where(y != 0, w * scale, torch.zeros_like(w)))
    assert torch.autograd.gradcheck(lambda t: _op(t, 0.4, 31), (x.detach().clone().requires_grad_(),))
    assert torch.autograd.gradgradcheck(lambda t: _op(t, 0.4, 31) ** 2, (x.detach().clone().requires_grad_(),))


def test_opcheck():
    torch.library.opcheck(torch.ops.lightdvae.dropout.default, (torch.randn(8, 5, requires_grad=True), 0.3, 11))


def test_identity_cases_fallbacks_and_errors():
    x = torch.randn(100)
    assert dropout(x, 0.0) is x and dropout(x, 0.5, training=False) is x
    half = torch.randn(1000).half()
    y = dropout(half, 0.5)  # a dtype the kernel does not take: ATen's dropout
    assert y.dtype == torch.float16 and 300 < (y != 0).sum().item() < 700
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        dropout(x, 1.0)
    with pytest.raises(RuntimeError, match="p must be in"):
        _op(x, -0.1, 0)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        Dropout(1.5)
    assert _ext.has_kernel("dropout", "cpu") and not _ext.has_kernel("dropout", "cuda")


def test_forced_native_backend_uses_the_kernel_on_the_cpu_and_atens_elsewhere(monkeypatch):
    """LIGHTDVAE_BACKEND=native: the hashed kernel on the CPU; a device without it (CUDA) runs ATen's fused dropout
    instead of failing, and a dtype the kernel does not take says so."""
    monkeypatch.setenv("LIGHTDVAE_BACKEND", "native")
    torch.manual_seed(0)
    y = dropout(torch.ones(1000), 0.5)
    torch.manual_seed(0)
    seed = int(torch.randint(0, 2**63 - 1, ()))
    assert torch.equal(y, _op(torch.ones(1000), 0.5, seed))
    meta = dropout(torch.ones(10, device="meta"), 0.5)  # a device without the kernel: ATen's dropout
    assert meta.device.type == "meta" and meta.shape == (10,)
    with pytest.raises(RuntimeError, match="does not support these inputs"):
        dropout(torch.ones(10).half(), 0.5)


def test_the_module_acts_in_training_only_and_keeps_the_checkpoint_layout():
    m = Dropout(0.5)
    x = torch.ones(1000)
    assert not torch.equal(m(x), x)
    assert m.eval()(x) is x and repr(m) == "Dropout(p=0.5)"
    model = build("light-dvae", d_model=16, n_heads=2, enc_layers=1, dec_layers=1, ff_dim=32)
    assert not any("drop" in k for k in model.state_dict())  # no state: old checkpoints load


def test_a_seeded_training_step_repeats():
    """The masks of a training step come from torch's generator: the same seed gives the same loss and gradients,
    another seed another loss (dropout 0.1 is on)."""

    def step(seed):
        torch.manual_seed(0)
        model = build("light-dvae", d_model=16, n_heads=2, enc_layers=1, dec_layers=1, ff_dim=32).train()
        x = torch.exp(torch.randn(4, 12, 513, generator=torch.Generator().manual_seed(1)))
        torch.manual_seed(seed)
        loss = model.loss(x).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    (a, ga), (b, gb), (c, _) = step(5), step(5), step(6)
    assert torch.equal(a, b) and all(torch.equal(u, v) for u, v in zip(ga, gb, strict=True))
    assert not torch.equal(a, c)


def test_hashed_and_aten_dropout_have_the_same_first_two_moments():
    x = torch.randn(N, generator=torch.Generator().manual_seed(8))
    ours, aten = dropout(x, 0.3), F.dropout(x, 0.3)
    for stat in (lambda t: t.mean(), lambda t: t.square().mean()):
        assert abs(stat(ours) - stat(aten)) < 0.02 * stat(x.abs()).item() + 0.01


# ---- relu_dropout: the transformer feed-forward's ReLU and dropout in one pass


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_relu_dropout_equals_dropout_after_relu_bit_for_bit(dtype):
    """The same seed draw, the same mask: relu_dropout(x) is dropout(relu(x)) exactly, forward and backward (NaN
    and negative inputs included), on every instruction set."""
    x = torch.randn(5000, 7, dtype=dtype, generator=torch.Generator().manual_seed(3))
    x[0, :3] = torch.tensor([float("nan"), -0.0, 0.0], dtype=dtype)
    w = torch.randn(x.shape, dtype=dtype, generator=torch.Generator().manual_seed(4))
    results = []
    isas = torch.ops.lightdvae.loss_cpu_isas()
    try:
        for isa in isas:
            torch.ops.lightdvae.loss_cpu_isa(isa)
            for fused in (True, False):
                a = x.clone().requires_grad_()
                torch.manual_seed(9)
                y = relu_dropout(a, 0.3) if fused else dropout(torch.relu(a), 0.3)
                torch.nan_to_num(y * w).sum().backward()
                results.append((y.detach(), a.grad))
    finally:
        torch.ops.lightdvae.loss_cpu_isa("auto")
    for y, g in results[1:]:
        assert torch.equal(torch.nan_to_num(y), torch.nan_to_num(results[0][0]))
        assert torch.equal(y.isnan(), results[0][0].isnan()) and torch.equal(g, results[0][1])


def test_relu_dropout_gradients_opcheck_and_fallbacks(monkeypatch):
    x = torch.randn(30, 11, dtype=torch.float64)
    x = torch.where(x.abs() < 1e-3, torch.full_like(x, 0.5), x)  # away from the kink
    seed = 77
    fused = torch.ops.lightdvae.relu_dropout
    assert torch.autograd.gradcheck(lambda t: fused(t, 0.4, seed), (x.clone().requires_grad_(),))
    assert torch.autograd.gradgradcheck(lambda t: fused(t, 0.4, seed) ** 2, (x.clone().requires_grad_(),))
    torch.library.opcheck(torch.ops.lightdvae.relu_dropout.default, (torch.randn(8, 5, requires_grad=True), 0.3, 11))
    y = fused(torch.randn(8, 5), 0.3, 11)
    torch.library.opcheck(torch.ops.lightdvae.relu_dropout_backward.default, (torch.randn(8, 5), y, 0.3))
    with pytest.raises(RuntimeError, match="y must be the forward's output"):
        torch.ops.lightdvae.relu_dropout_backward(torch.randn(8, 5), torch.randn(8, 4), 0.3)
    v = torch.randn(100)
    assert torch.equal(relu_dropout(v, 0.0), torch.relu(v)) and torch.equal(relu_dropout(v, 0.5, False), torch.relu(v))
    half = relu_dropout(torch.randn(1000).half(), 0.5)  # a dtype the kernel does not take: the two ATen ops
    assert half.dtype == torch.float16 and (half >= 0).all()
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        relu_dropout(v, 1.0)
    assert _ext.has_kernel("relu_dropout", "cpu") and not _ext.has_kernel("relu_dropout", "cuda")


def test_the_feed_forward_layer_fuses_relu_and_dropout_in_training_only():
    """A LigHT-DVAE training step with the fused feed-forward equals the two-op one bit for bit (loss and every
    gradient); in eval mode, and with tanh, the layer runs its modules as before."""
    from lightdvae.models import transformer_layers

    def step(fuse):
        torch.manual_seed(0)
        model = build("light-dvae", d_model=16, n_heads=2, enc_layers=1, dec_layers=1, ff_dim=32).train()
        if not fuse:
            for m in model.modules():
                if isinstance(m, transformer_layers.FeedForward):
                    m.forward = m.net.forward
        x = torch.exp(torch.randn(4, 12, 513, generator=torch.Generator().manual_seed(1)))
        torch.manual_seed(5)
        loss = model.loss(x).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    (a, ga), (b, gb) = step(True), step(False)
    assert torch.equal(a, b) and all(torch.equal(u, v) for u, v in zip(ga, gb, strict=True))
    ff = transformer_layers.FeedForward(8, 16, "relu", 0.1).eval()
    x = torch.randn(3, 8)
    assert torch.equal(ff(x), ff.net(x))
