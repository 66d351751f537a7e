"""Empty inputs (batch 0, zero frames) through every native op and every model: empty outputs of the right shape,
the same from the native kernels as from the references, never a crash of the interpreter (issue #14, item 6)."""

import pytest
import torch
from helpers import requires_native
from test_ops_sampling import LOOPS, LSTM_LOOPS, make_case, run

from lightdvae.models import build, names
from lightdvae.ops import attention, losses

# (batch, frames) of the empty cases; batch 0 crashed the interpreter in the SRNN loops' oneDNN LSTM (SIGFPE).
# A sequence of zero frames is refused by the ops with a clear error (test below); the models return nothing.
EMPTY = [(0, 5), (0, 1)]


@pytest.fixture
def native(monkeypatch):
    monkeypatch.setenv("LIGHTDVAE_BACKEND", "native")


def _empty_case(loop, batch, frames, dtype, exact_lstm):
    args, opts = make_case(loop, max(batch, 1), max(frames, 1), dtype)
    args = [a[:batch, :frames] if isinstance(a, torch.Tensor) and a.dim() == 3 else a for a in args]
    if loop == "srnn_own_past":
        args[2] = args[2][:frames]
    if loop in LSTM_LOOPS:
        opts["exact_lstm"] = exact_lstm
    return args, opts


@requires_native
@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("batch,frames", EMPTY)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("exact_lstm", [False, True])
def test_sampling_loops_take_empty_inputs(native, loop, batch, frames, dtype, exact_lstm):
    if exact_lstm and loop not in LSTM_LOOPS:
        pytest.skip("no LSTM in this loop")
    args, opts = _empty_case(loop, batch, frames, dtype, exact_lstm)
    with torch.no_grad():
        outs, refs = run(loop, args, opts), run(loop, args, opts, ref=True)
    assert len(outs) == len(refs)
    for a, b in zip(outs, refs, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype and a.numel() == 0, (a.shape, b.shape)
        assert a.shape[:2] == (batch, frames)


@pytest.mark.parametrize("backend", ["native", "ref"])
@pytest.mark.parametrize("loop", LOOPS)
def test_sampling_loops_refuse_zero_frames_clearly(monkeypatch, backend, loop):
    from lightdvae import _ext

    if backend == "native" and not _ext.HAS_NATIVE:
        pytest.skip("native extension not built")
    monkeypatch.setenv("LIGHTDVAE_BACKEND", backend)
    args, opts = _empty_case(loop, 2, 0, torch.float32, exact_lstm=False)
    with pytest.raises(ValueError, match="no frames"):
        run(loop, args, opts)


@requires_native
@pytest.mark.parametrize("loop", ["dkf_posterior", "rvae_posterior", "srnn_posterior", "srnn_own_past"])
def test_sampling_loops_take_an_empty_batch_with_gradients(native, loop):
    args, opts = _empty_case(loop, 0, 4, torch.float64, exact_lstm=False)
    leaves = [a.requires_grad_(True) for a in args if isinstance(a, torch.Tensor) and a.dim() == 3]
    outs = run(loop, args, opts)
    assert all(o.shape[0] == 0 for o in outs)
    total = sum(o.sum() for o in outs)
    if total.requires_grad:  # an empty sum has no graph when nothing recorded it; both are fine
        total.backward()
        assert all(p.grad is None or p.grad.abs().sum() == 0 for p in leaves)


@pytest.mark.parametrize("backend", ["native", "ref"])
def test_losses_take_empty_inputs(monkeypatch, backend):
    from lightdvae import _ext

    if backend == "native" and not _ext.HAS_NATIVE:
        pytest.skip("native extension not built")
    monkeypatch.setenv("LIGHTDVAE_BACKEND", backend)
    power, logvar = torch.rand(0, 7, 9), torch.randn(0, 7, 9, requires_grad=True)
    assert losses.is_divergence(power, logvar, reduction="none").shape == (0, 7, 9)
    total = losses.is_divergence(power, logvar)
    assert total.item() == 0.0
    total.backward()
    assert logvar.grad.shape == (0, 7, 9)
    mu, lv = torch.randn(0, 3, requires_grad=True), torch.randn(0, 3)
    assert losses.gaussian_kl(mu, lv).item() == 0.0


@pytest.mark.parametrize("backend", ["native", "ref"])
def test_kv_attention_takes_an_empty_batch(monkeypatch, backend):
    from lightdvae import _ext

    if backend == "native" and not _ext.HAS_NATIVE:
        pytest.skip("native extension not built")
    monkeypatch.setenv("LIGHTDVAE_BACKEND", backend)
    q = torch.randn(0, 2, 1, 4)
    k_cache, v_cache = torch.zeros(0, 2, 8, 4), torch.zeros(0, 2, 8, 4)
    out = attention.kv_attention(q, k_cache, v_cache, torch.randn(0, 2, 1, 4), torch.randn(0, 2, 1, 4), cache_len=0)
    assert out.shape == (0, 2, 1, 4)


def _tiny(name):
    small = {"hit-dvae": dict(d_model=16, n_heads=2, enc_layers=1, dec_layers=1, ff_dim=32, w_dim=4, z_dim=3)}
    small["light-dvae"] = small["hit-dvae"]
    torch.manual_seed(0)
    return build(name, **small.get(name, {})).eval()


@pytest.mark.parametrize("backend", ["native", "ref"])
@pytest.mark.parametrize("name", names())
def test_models_generate_and_resynthesize_nothing(monkeypatch, backend, name):
    from lightdvae import _ext

    if backend == "native" and not _ext.HAS_NATIVE:
        pytest.skip("native extension not built")
    monkeypatch.setenv("LIGHTDVAE_BACKEND", backend)
    model = _tiny(name)
    bins = 513
    for n, frames in [(0, 10), (2, 0), (0, 0)]:
        assert model.generate(n, frames).shape == (n, frames, bins), (n, frames)
    for past in ("gen", "gt"):
        assert model.resynthesize(torch.rand(0, 12, bins), past=past).shape == (0, 12, bins)
    with pytest.raises(ValueError, match="n >= 0"):
        model.generate(-1, 10)
