"""The native decoding loop of HiT-DVAE / LigHT-DVAE (``lightdvae::transformer_decode``, csrc/transformer/).

It makes the same ATen calls as the Python loop over ``DecoderBody.step_rows``, in the same order, on the same
packed weights and caches: its outputs must equal the Python loop's exactly (not within a tolerance), in every mode
of ``decode_stepwise`` (posterior z with and without the prior pass, teacher forcing, z drawn from the prior with a
seeded generator), for both models, post- and pre-norm, sinusoidal and rotary positions, float32 and float64,
batch 1 and several.
"""

from __future__ import annotations

import pytest
import torch

import lightdvae.models.transformer as transformer_mod
from lightdvae import _ext
from lightdvae.models import build
from lightdvae.models.transformer_layers import native_decoding
from lightdvae.ops.sampling import exact_loops

pytestmark = pytest.mark.skipif(
    not _ext.has_kernel("transformer_decode", "cpu"),
    reason="the native extension (with transformer_decode) is not built",
)

TINY = dict(d_model=16, n_heads=2, enc_layers=1, dec_layers=2, ff_dim=32, w_dim=4, z_dim=3, dropout=0.1, x_dim=20)
MODES = ("posterior+prior", "posterior", "teacher-forced", "generate")


def tiny(name: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build(name, **{**TINY, **overrides}).eval()


def decode(model, mode: str, batch: int, frames: int, dtype: torch.dtype, native: bool, monkeypatch, device="cpu"):
    """``decode_stepwise`` in one mode, through the native loop or (native=False) the Python loop."""
    with monkeypatch.context() as m:
        if not native:
            m.setattr(transformer_mod, "native_decoding", lambda *a, **k: False)
        g = torch.Generator().manual_seed(3)
        c = model.config
        # drawn in float64 whatever the dtype: float32 and float64 runs decode the same inputs
        w = torch.randn(batch, c.w_dim, generator=g, dtype=torch.float64).to(device, dtype)
        z = torch.randn(batch, frames, c.z_dim, generator=g, dtype=torch.float64).to(device, dtype)
        past = (torch.rand(batch, frames, c.x_dim, generator=g, dtype=torch.float64) + 0.01).to(device, dtype)
        if mode == "generate":
            gen = torch.Generator(device).manual_seed(5)
            return model.decode_stepwise(w, frames, temperature=0.7, generator=gen)
        if mode == "teacher-forced":
            return model.decode_stepwise(w, frames, z=z, past=past)
        return model.decode_stepwise(w, frames, z=z, prior=mode == "posterior+prior")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("positions", ["sinusoidal", "rope"])
@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
@pytest.mark.parametrize("name", ["hit-dvae", "light-dvae"])
def test_native_loop_equals_the_python_loop_exactly(name, norm_first, positions, mode, monkeypatch):
    for dtype, batch, activation in (
        (torch.float32, 1, "relu"),
        (torch.float64, 3, "tanh"),
        (torch.float32, 5, "relu"),
    ):
        model = tiny(name, norm_first=norm_first, activation=activation, positions=positions).to(dtype)
        assert native_decoding([model.s_body], dtype, "cpu")
        ours = decode(model, mode, batch, 9, dtype, True, monkeypatch)
        theirs = decode(model, mode, batch, 9, dtype, False, monkeypatch)
        assert ours.keys() == theirs.keys()
        for key, value in theirs.items():
            if value is None:
                assert ours[key] is None, key
            else:
                assert ours[key].dtype == dtype and not ours[key].is_inference(), key
                assert torch.equal(ours[key], value), (key, dtype, batch, float((ours[key] - value).abs().max()))


@pytest.mark.skipif(
    not torch.cuda.is_available() or not _ext.has_kernel("kv_attention", "cuda"), reason="needs a GPU and CUDA kernels"
)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("positions", ["sinusoidal", "rope"])
@pytest.mark.parametrize("name", ["hit-dvae", "light-dvae"])
def test_native_loop_on_cuda_equals_the_python_loop(name, positions, mode, monkeypatch):
    """On the GPU the loop's ATen calls launch the same CUDA kernels as the Python loop's, in the same order."""
    model = tiny(name, positions=positions).cuda()
    assert native_decoding([model.s_body], torch.float32, "cuda")
    ours = decode(model, mode, 4, 9, torch.float32, True, monkeypatch, "cuda")
    theirs = decode(model, mode, 4, 9, torch.float32, False, monkeypatch, "cuda")
    for key, value in theirs.items():
        assert (ours[key] is None) if value is None else torch.equal(ours[key], value), key


def test_the_native_loop_runs_where_it_applies_and_not_elsewhere(monkeypatch):
    calls = []
    real = torch.ops.lightdvae.transformer_decode

    class Spy:
        def __call__(self, *args):
            calls.append(args[9])  # frames
            return real(*args)

    monkeypatch.setattr(torch.ops.lightdvae, "transformer_decode", Spy())
    model = tiny("light-dvae")
    model.generate(2, 6, generator=torch.Generator().manual_seed(1))
    model.resynthesize(torch.rand(1, 7, TINY["x_dim"]) + 0.1, past="gen", sample=False)
    assert calls == [6, 7]
    not_covered = [
        tiny("light-dvae", inv_s=True),
        tiny("hit-dvae", past_encoder="rnn"),
        tiny("hit-dvae").train(),
    ]
    for model in not_covered:
        bodies = [model.s_body, model.z_body]
        assert not native_decoding(bodies, torch.float32, "cpu")
        out = model.decode_stepwise(torch.zeros(1, TINY["w_dim"]), 4, generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(out["logvar"]).all()
    assert calls == [6, 7]
    monkeypatch.setenv("LIGHTDVAE_BACKEND", "ref")
    assert not native_decoding([tiny("light-dvae").s_body], torch.float32, "cpu")


def test_a_forward_hook_on_the_speech_head_sees_every_frame():
    """Hooks must run: with one on ``s_out`` the Python loop decodes (one call per frame), with the same values."""
    model = tiny("hit-dvae")
    w, frames = torch.randn(2, TINY["w_dim"]), 8
    plain = model.decode_stepwise(w, frames, generator=torch.Generator().manual_seed(2))
    seen = []
    handle = model.s_out.register_forward_hook(lambda *_: seen.append(1))
    hooked = model.decode_stepwise(w, frames, generator=torch.Generator().manual_seed(2))
    handle.remove()
    assert len(seen) == frames
    assert torch.equal(plain["logvar"], hooked["logvar"])


def test_bad_arguments_raise_one_clear_error():
    model = tiny("light-dvae")
    with pytest.raises(ValueError, match=r"z must be \(2, 5, 3\)"):
        model.decode_stepwise(torch.zeros(2, TINY["w_dim"]), 5, z=torch.zeros(2, 4, 3))
    op = torch.ops.lightdvae.transformer_decode
    args = [torch.zeros(1, 4), None, None, [torch.zeros(7, 16)], [], torch.zeros(20, 16), torch.zeros(20)]
    args += [torch.zeros(6, 16), torch.zeros(6), 3, 2, 1e-5, False, 1, True, -18.0, 1.0, None]
    with pytest.raises(ValueError, match="s_body holds 1 tensors"):
        op(*args)
    with torch.inference_mode():
        flat = transformer_mod.native_weights(model.s_body, 3)[0]
    args[3] = flat
    args[9] = 4  # more frames than the packed position tables hold
    with pytest.raises(ValueError, match="position tables hold 3 positions, fewer than 4"):
        op(*args)
    args[9] = 3
    cos = torch.zeros(3, 4)  # head size 8 in TINY: (positions, 4)
    with pytest.raises(ValueError, match="give both rope_cos and rope_sin"):
        op(*args, True, cos, None)
    with pytest.raises(ValueError, match=r"rotary tables must be \(>= 3, 4\), got \[2, 4\]"):
        op(*args, True, cos[:2], cos[:2])
    with pytest.raises(ValueError, match="rotary tables must be Float"):
        op(*args, True, cos.double(), cos.double())


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a.double() - b.double()).abs() / (b.double().abs() + 1.0)).max())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("positions", ["sinusoidal", "rope"])
@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
@pytest.mark.parametrize("name", ["hit-dvae", "light-dvae"])
def test_small_batches_on_raw_pointers_stay_within_rounding(name, norm_first, positions, mode, monkeypatch):
    """Inside exact_loops(False) batches of 1-4 decode on raw pointers (decode_small.h).  float64: equal to the exact
    loop to rounding (~1e-15 measured); float32: as close to the float64 result as the exact float32 loop is (within
    4x its error, plus 2^-20 for the last bits) -- except generation, whose noise is drawn in the model's dtype (the
    float32 arithmetic is the same code as in the other modes); batch 5 stays on the exact loop, bit for bit."""
    for batch, activation in ((1, "relu"), (4, "tanh")):
        model64 = tiny(name, norm_first=norm_first, activation=activation, positions=positions).double()
        model32 = tiny(name, norm_first=norm_first, activation=activation, positions=positions)
        exact64 = decode(model64, mode, batch, 11, torch.float64, True, monkeypatch)
        exact32 = decode(model32, mode, batch, 11, torch.float32, True, monkeypatch)
        with exact_loops(False):
            raw64 = decode(model64, mode, batch, 11, torch.float64, True, monkeypatch)
            raw32 = decode(model32, mode, batch, 11, torch.float32, True, monkeypatch)
        for key, ref in exact64.items():
            if ref is None:
                assert raw64[key] is None and raw32[key] is None
                continue
            err64, err_raw32, err_exact32 = (
                _max_rel(raw64[key], ref),
                _max_rel(raw32[key], ref),
                _max_rel(exact32[key], ref),
            )
            print(f"{name} b{batch} {mode} {key}: f64 {err64:.1e}; f32 raw {err_raw32:.1e} exact {err_exact32:.1e}")
            assert err64 < 1e-10, key
            if mode != "generate":
                assert err_raw32 <= 4 * err_exact32 + 2.0**-20, key
    model = tiny(name, norm_first=norm_first, positions=positions)
    exact = decode(model, mode, 5, 7, torch.float32, True, monkeypatch)
    with exact_loops(False):
        same = decode(model, mode, 5, 7, torch.float32, True, monkeypatch)
    assert all(v is None or torch.equal(same[k], v) for k, v in exact.items())
