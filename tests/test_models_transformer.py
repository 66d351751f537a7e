"""HiT-DVAE, LigHT-DVAE and the Inv-s / Inv-s-NR ablations: cached step path, causality, sizes, training."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("LIGHTDVAE_QUIET_FALLBACK", "1")

import pytest
import torch

from lightdvae.models import build, model_class, names
from lightdvae.models import transformer_layers as layers
from lightdvae.models.transformer import HiTDVAE, HiTDVAEConfig, LigHTDVAE, LigHTDVAEConfig
from lightdvae.models.transformer_layers import DecoderBody, KVCache, kv_attention_ref

TINY = dict(d_model=16, n_heads=2, enc_layers=1, dec_layers=2, ff_dim=32, w_dim=4, z_dim=3, dropout=0.0)
MODELS = ["hit-dvae", "light-dvae"]
ABLATIONS = {"plain": {}, "inv-s": {"inv_s": True}, "inv-s-nr": {"inv_s": True, "no_residual": True}}
VARIANTS = [(m, a) for m in MODELS for a in ABLATIONS]
VARIANT_IDS = [f"{m}-{a}" for m, a in VARIANTS]
TOL = 1e-5


def tiny(name: str, ablation: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build(name, **{**TINY, **ABLATIONS[ablation], **overrides})


def spectrogram(batch: int, frames: int, seed: int = 1, bins: int = 513) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, frames, bins, generator=g) ** 4 * 10.0 + 1e-6


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().max())


# ---- the cached attention -------------------------------------------------------------------


def full_causal_attention(q, k, v):
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    t = q.shape[2]
    mask = torch.ones(t, t, dtype=torch.bool).triu(1)
    return torch.softmax(scores.masked_fill(mask, float("-inf")), -1) @ v


@pytest.mark.parametrize("chunks", [[1] * 7, [3, 1, 2, 1], [7]])
def test_kv_attention_ref_appends_in_place_and_matches_causal_attention(chunks):
    g = torch.Generator().manual_seed(0)
    b, h, t, d, max_len = 3, 2, sum(chunks), 5, 9
    q, k, v = (torch.randn(b, h, t, d, generator=g, dtype=torch.float64) for _ in range(3))
    expected = full_causal_attention(q, k, v)
    cache = KVCache.empty(b, h, max_len, d, dtype=torch.float64, device="cpu")
    assert cache.max_len == max_len and cache.length == 0
    k_cache, v_cache = cache.k.fill_(7.0), cache.v.fill_(7.0)
    k_ptr = k_cache.data_ptr()
    filled, outs = 0, []
    for n in chunks:
        sl = slice(filled, filled + n)
        outs.append(kv_attention_ref(q[:, :, sl], k_cache, v_cache, k[:, :, sl], v[:, :, sl], filled))
        filled += n
    out = torch.cat(outs, dim=2)
    print(f"chunks {chunks}: max err vs full causal attention {max_err(out, expected):.2e}")
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert k_cache.data_ptr() == k_ptr  # written in place
    torch.testing.assert_close(k_cache[:, :, :t], k)
    torch.testing.assert_close(v_cache[:, :, :t], v)
    assert (k_cache[:, :, t:] == 7.0).all()  # nothing written beyond the prefix


def test_kv_attention_ref_half_precision_and_errors():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 1, 4, generator=g).bfloat16()
    cache = torch.zeros(1, 2, 3, 4, dtype=torch.bfloat16)
    new = torch.randn(1, 2, 1, 4, generator=g).bfloat16()
    out = kv_attention_ref(q, cache, cache.clone(), new, new, 0)
    assert out.dtype == torch.bfloat16 and out.shape == (1, 2, 1, 4)
    with pytest.raises(ValueError, match="max_len"):
        kv_attention_ref(q, cache, cache.clone(), new, new, 3)
    with pytest.raises(ValueError, match="caches must be"):
        kv_attention_ref(q, cache[:, :1], cache[:, :1].clone(), new, new, 0)
    with pytest.raises(ValueError, match="dtype|float"):
        kv_attention_ref(q.float(), cache, cache.clone(), new, new, 0)


def test_step_path_goes_through_the_single_kv_attention_hook(monkeypatch):
    calls, caches = [], set()

    def counting(*args, **kwargs):
        calls.append(args[5])
        caches.add(args[1].data_ptr())
        return kv_attention_ref(*args, **kwargs)

    monkeypatch.setattr(layers, "kv_attention", counting)
    model = tiny("light-dvae", "plain").eval()
    frames = 4
    model.decode_stepwise(torch.zeros(2, TINY["w_dim"]), frames)
    # 2 uses of the body (prior, speech) x 2 layers x 2 attentions per frame
    assert len(calls) == frames * 2 * TINY["dec_layers"] * 2
    assert sorted(set(calls)) == list(range(frames))
    # key caches: a self-attention cache per layer and use, one cross-attention cache per layer shared by both uses
    assert len(caches) == 3 * TINY["dec_layers"]


# ---- step path == parallel pass --------------------------------------------------------------


@pytest.mark.parametrize(("name", "ablation"), VARIANTS, ids=VARIANT_IDS)
def test_stepwise_teacher_forced_equals_parallel(name, ablation):
    model = tiny(name, ablation).eval()
    b, t = 3, 11
    power = spectrogram(b, t)
    g = torch.Generator().manual_seed(2)
    z = torch.randn(b, t, TINY["z_dim"], generator=g)
    w = torch.randn(b, TINY["w_dim"], generator=g)
    with torch.no_grad():
        logvar, p_mean, p_logvar = model.decode(z, w, power)
    steps = model.decode_stepwise(w, t, z=z, past=power)
    errs = {
        "speech logvar": max_err(steps["logvar"], logvar),
        "prior mean": max_err(steps["prior_mean"], p_mean),
        "prior logvar": max_err(steps["prior_logvar"], p_logvar),
    }
    print(model.variant, {k: f"{v:.2e}" for k, v in errs.items()})
    assert all(v < TOL for v in errs.values()), errs
    torch.testing.assert_close(steps["z"], z)


@pytest.mark.parametrize("ablation", list(ABLATIONS))
@pytest.mark.parametrize(("act", "dtype"), [("relu", torch.float32), ("tanh", torch.float64)])
def test_decoder_body_chunked_steps_equal_parallel(ablation, act, dtype):
    torch.manual_seed(0)
    body = DecoderBody(7, 10, 16, 4, 3, 24, act, 0.0, **ABLATIONS[ablation]).to(dtype).eval()
    latent, speech = torch.randn(2, 12, 7, dtype=dtype), torch.randn(2, 12, 10, dtype=dtype)
    with torch.no_grad():
        full = body(latent, speech)
        cache = body.new_cache(2, 12, dtype=dtype, device="cpu")
        out, pos = [], 0
        for n in (1, 4, 2, 5):
            out.append(body.step(latent[:, pos : pos + n], speech[:, pos : pos + n], cache))
            pos += n
        with pytest.raises(ValueError, match="cache holds 12"):
            body.step(latent[:, :1], speech[:, :1], cache)
    err = max_err(torch.cat(out, 1), full)
    print(f"{ablation} {act} {dtype}: chunked step vs parallel {err:.2e}")
    assert err < (TOL if dtype == torch.float32 else 1e-12)
    assert all(lc.self_kv.length == 12 and lc.cross_kv.length == 12 for lc in cache.layers)


# ---- the packed step path: shared memory, weights, grad mode, overhead -------------------------


def test_shared_memory_caches_equal_two_parallel_passes():
    """Two uses of one body on the same memory (LigHT's z prior and speech passes) share its keys/values."""
    torch.manual_seed(0)
    body = DecoderBody(7, 10, 16, 4, 2, 24, "relu", 0.0).eval()
    b, t = 3, 10
    lat_z, lat_s, speech = torch.randn(b, t, 7), torch.randn(b, t, 7), torch.randn(b, t, 10)
    with torch.no_grad():
        full_z, full_s = body(lat_z, speech), body(lat_s, speech)
        s_cache = body.new_cache(b, t, dtype=torch.float32, device="cpu")
        z_cache = body.new_cache(b, t, dtype=torch.float32, device="cpu", share_memory_with=s_cache)
        out_z, out_s, pos = [], [], 0
        for n in (1, 3, 1, 5):
            out_z.append(body.step(lat_z[:, pos : pos + n], speech[:, pos : pos + n], z_cache))
            out_s.append(body.step(lat_s[:, pos : pos + n], None, s_cache))  # memory computed by the z pass
            pos += n
    errs = (max_err(torch.cat(out_z, 1), full_z), max_err(torch.cat(out_s, 1), full_s))
    print(f"shared memory: z pass {errs[0]:.2e}, s pass {errs[1]:.2e}")
    assert max(errs) < TOL
    for zc, sc in zip(z_cache.layers, s_cache.layers, strict=True):
        assert zc.cross_kv is sc.cross_kv and zc.self_kv is not sc.self_kv
        assert zc.cross_kv.length == zc.self_kv.length == sc.self_kv.length == t
    assert z_cache.weights is s_cache.weights


def test_step_path_errors():
    torch.manual_seed(0)
    body = DecoderBody(7, 10, 16, 4, 2, 24, "relu", 0.0).eval()
    lat, sp = torch.randn(2, 1, 7), torch.randn(2, 1, 10)

    def cache(**kw):
        return body.new_cache(2, 5, dtype=torch.float32, device="cpu", **kw)

    with torch.no_grad():
        with pytest.raises(ValueError, match="speech=None needs the memory"):
            body.step(lat, None, cache())  # nothing computed the memory of position 0
        first = cache()
        second = cache(share_memory_with=first)
        body.step(lat, sp, first)
        body.step(lat, None, second)
        with pytest.raises(ValueError, match="speech=None needs the memory"):
            body.step(lat, None, second)  # position 1: the other cache has not stepped yet
        with pytest.raises(ValueError, match="unused cache"):
            cache(share_memory_with=first)  # already stepped
        with pytest.raises(ValueError, match="unused cache"):
            body.new_cache(2, 6, dtype=torch.float32, device="cpu", share_memory_with=cache())
        with pytest.raises(ValueError, match="unused cache"):
            body.new_cache(3, 5, dtype=torch.float32, device="cpu", share_memory_with=cache())
        other = DecoderBody(7, 10, 16, 4, 2, 24, "relu", 0.0)
        with pytest.raises(ValueError, match="same decoder body"):
            other.new_cache(2, 5, dtype=torch.float32, device="cpu", share_memory_with=cache())
        inv = DecoderBody(7, 10, 16, 4, 2, 24, "relu", 0.0, inv_s=True)
        with pytest.raises(ValueError, match="Inv-s"):
            inv.new_cache(
                2,
                5,
                dtype=torch.float32,
                device="cpu",
                share_memory_with=inv.new_cache(2, 5, dtype=torch.float32, device="cpu"),
            )
        with pytest.raises(ValueError, match="differ in batch/time"):
            body.step(lat, torch.randn(2, 2, 10), cache())
    with pytest.raises(RuntimeError, match="inference-only"):
        body.step(lat, sp, cache())


@pytest.mark.parametrize("name", MODELS)
def test_step_path_follows_weight_changes(name):
    """A decode after an optimizer step packs the new weights: the step path still equals the parallel pass."""
    model = tiny(name, "plain").eval()
    b, t = 2, 7
    power = spectrogram(b, t)
    g = torch.Generator().manual_seed(2)
    z, w = torch.randn(b, t, TINY["z_dim"], generator=g), torch.randn(b, TINY["w_dim"], generator=g)
    before = model.decode_stepwise(w, t, z=z, past=power)["logvar"]
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.decode(z, w, power)[0].square().mean().backward()
    opt.step()
    steps = model.decode_stepwise(w, t, z=z, past=power)
    with torch.no_grad():
        logvar, p_mean, _ = model.decode(z, w, power)
    assert max_err(steps["logvar"], before) > 1e-3  # the new weights are used
    assert max_err(steps["logvar"], logvar) < TOL and max_err(steps["prior_mean"], p_mean) < TOL


def test_packed_step_weights_are_kept_until_a_weight_changes():
    """The step path's packed weights are reused while the weights are the same tensors, unchanged; an in-place
    change, a load, a dtype change, other tensors swapped in (functional_call) or another ``max_len`` repack."""
    body = tiny("light-dvae", "plain").decoder
    packed = body._pack(9)
    assert body._pack(9) is packed and body._pack(10) is not packed
    packed = body._pack(9)
    with torch.no_grad():
        body.latent_embed.bias.add_(1.0)
    again = body._pack(9)
    assert again is not packed
    shift = again.latent_b - packed.latent_b  # 1 within the rounding of entries of order 1 (bias + positions)
    assert torch.allclose(shift, torch.ones_like(shift), rtol=0, atol=8 * torch.finfo(shift.dtype).eps)
    body.load_state_dict(body.state_dict())
    assert body._pack(9) is not again
    body.double()
    assert body._pack(9).latent_w.dtype == torch.float64
    kept = body._pack(9)

    class Pack(torch.nn.Module):  # body._pack as a module call, for functional_call
        def __init__(self):
            super().__init__()
            self.body = body

        def forward(self):
            return self.body._pack(9)

    swapped = {f"body.{n}": p.detach() * 2 for n, p in body.named_parameters()}
    doubled = torch.func.functional_call(Pack(), swapped, ())
    assert doubled is not kept and torch.equal(doubled.speech_w, 2 * kept.speech_w)
    assert body._pack(9) is not doubled  # the body's own weights again


def test_train_mode_step_path_without_memory_sharing():
    """In train() mode (dropout 0 here) the LigHT passes do not share the memory; the result is the same."""
    model = tiny("light-dvae", "plain").train()
    b, t = 2, 8
    power = spectrogram(b, t)
    g = torch.Generator().manual_seed(4)
    z, w = torch.randn(b, t, TINY["z_dim"], generator=g), torch.randn(b, TINY["w_dim"], generator=g)
    steps = model.decode_stepwise(w, t, z=z, past=power)
    with torch.no_grad():
        logvar, p_mean, p_logvar = model.decode(z, w, power)
    errs = [
        max_err(steps["logvar"], logvar),
        max_err(steps["prior_mean"], p_mean),
        max_err(steps["prior_logvar"], p_logvar),
    ]
    assert max(errs) < TOL, errs


def test_stepwise_outputs_are_ordinary_tensors():
    """The loop runs under inference mode; what it returns can be modified in place and used with autograd."""
    model = tiny("light-dvae", "plain").eval()
    steps = model.decode_stepwise(torch.zeros(2, TINY["w_dim"]), 5)
    for key, value in steps.items():
        assert value is not None and not value.is_inference(), key
    steps["logvar"][:, 0] = 0.0
    out = model.generate(1, 4)
    assert not out.is_inference()
    out.mul_(2.0)
    assert model.decoder._pe_table is None or not model.decoder._pe_table.is_inference()


def test_generation_step_issues_few_aten_calls():
    """Overhead guard: ATen calls per generated frame of LigHT-DVAE (2 decoder layers, prior and speech passes).

    The step path issued about 300 per frame before the weights were packed; it issues 111 now (torch 2.x)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.calls += 1
            return func(*args, **(kwargs or {}))

    model = tiny("light-dvae", "plain").eval()
    counts = []
    for frames in (10, 20):
        Count.calls = 0
        with Count():
            model.generate(1, frames)
        counts.append(Count.calls)
    per_frame = (counts[1] - counts[0]) / 10
    print(f"ATen calls per generated frame: {per_frame}")
    assert per_frame <= 125


# ---- causality --------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "ablation"), VARIANTS, ids=VARIANT_IDS)
def test_decoders_are_causal(name, ablation):
    model = tiny(name, ablation).eval()
    b, t, frame = 2, 10, 6  # change frame `frame` (1-based), i.e. index frame - 1
    power = spectrogram(b, t)
    g = torch.Generator().manual_seed(3)
    z, w = torch.randn(b, t, TINY["z_dim"], generator=g), torch.randn(b, TINY["w_dim"], generator=g)
    changed = power.clone()
    changed[:, frame - 1] = spectrogram(b, 1, seed=9)[:, 0]
    with torch.no_grad():
        ref = model.decode(z, w, power)
        out = model.decode(z, w, changed)
        # speech at frame t: outputs at frames <= t unchanged (both decoders), frame t + 1 changed
        for a, c in zip(ref, out, strict=True):
            assert max_err(a[:, :frame], c[:, :frame]) < 1e-6
            assert max_err(a[:, frame], c[:, frame]) > 1e-7  # Inv-s-NR: speech only steers attention (small)
        # z at frame t: speech output from frame t on, prior output from frame t + 1 on
        z2 = z.clone()
        z2[:, frame - 1] += 1.0
        lv, pm, pl = model.decode(z2, w, power)
    assert max_err(lv[:, : frame - 1], ref[0][:, : frame - 1]) < 1e-6
    assert max_err(lv[:, frame - 1], ref[0][:, frame - 1]) > 1e-4
    assert max_err(pm[:, :frame], ref[1][:, :frame]) < 1e-6
    assert max_err(pm[:, frame], ref[1][:, frame]) > 1e-4


# ---- sizes, registry -----------------------------------------------------------------------------


def test_light_has_about_20_percent_fewer_parameters_than_hit():
    torch.manual_seed(0)
    hit, light = build("hit-dvae"), build("light-dvae")
    ratio = light.num_parameters() / hit.num_parameters()
    print(f"HiT-DVAE {hit.num_parameters():,}  LigHT-DVAE {light.num_parameters():,}  ratio {ratio:.4f}")
    assert 0.75 <= ratio <= 0.85
    assert light.s_body is light.z_body and hit.s_body is not hit.z_body
    # the ablations change the wiring, not the sizes
    assert build("hit-dvae", inv_s=True, no_residual=True).num_parameters() == hit.num_parameters()


def test_registry_builds_ablations_and_rejects_bad_options():
    assert {"hit-dvae", "light-dvae"} <= set(names())
    assert model_class("hit-dvae") is HiTDVAE and model_class("LigHT-DVAE") is LigHTDVAE
    for name, ablation in VARIANTS:
        model = build(name, **{**TINY, **ABLATIONS[ablation]})
        assert isinstance(model.config, HiTDVAEConfig if name == "hit-dvae" else LigHTDVAEConfig)
        assert model.sees_past_speech
    assert build("hit-dvae", **TINY, inv_s=True).variant == "HiT-DVAE-Inv-s"
    assert build("light-dvae", **TINY, inv_s=True, no_residual=True).variant == "LigHT-DVAE-Inv-s-NR"
    with pytest.raises(ValueError, match="only exists with inv_s=True"):
        build("light-dvae", no_residual=True)
    with pytest.raises(ValueError, match="only exists with inv_s=True"):
        HiTDVAEConfig(no_residual=True)
    with pytest.raises(ValueError, match="no option"):
        build("hit-dvae", inverted=True)
    with pytest.raises(ValueError, match="divisible"):
        build("hit-dvae", d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="positive integer"):
        build("light-dvae", dec_layers=0)
    with pytest.raises(ValueError, match="activation"):
        build("light-dvae", activation="swish")


# ---- training, GEN / GT, generation ------------------------------------------------------------------


@pytest.mark.parametrize(("name", "ablation"), VARIANTS, ids=VARIANT_IDS)
def test_loss_decreases(name, ablation):
    model = tiny(name, ablation)
    power = spectrogram(4, 12)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with torch.no_grad():
        before = model.loss(power, beta=1e-2, sample=False).loss.item()
    for _ in range(25):
        opt.zero_grad()
        terms = model.loss(power, beta=1e-2)
        assert terms.kl_w is not None and torch.isfinite(terms.loss)
        terms.loss.backward()
        opt.step()
    with torch.no_grad():
        after = model.loss(power, beta=1e-2, sample=False).loss.item()
    print(f"{model.variant}: loss {before:.3f} -> {after:.3f}")
    assert after < before


@pytest.mark.parametrize(("name", "ablation"), VARIANTS, ids=VARIANT_IDS)
def test_gen_and_gt_both_run_and_differ(name, ablation):
    model = tiny(name, ablation).eval()
    power = spectrogram(2, 9)
    gt = model.resynthesize(power, past="gt")
    gen = model.resynthesize(power, past="gen")
    assert gt.shape == gen.shape == power.shape
    assert torch.isfinite(gt).all() and torch.isfinite(gen).all() and (gen > 0).all()
    diff = max_err(gt.log(), gen.log())
    print(f"{model.variant}: max |log GEN - log GT| = {diff:.3e}")
    assert diff > 1e-4
    # the GEN pass with gradients (parallel recomputation on the fed-back past) equals the cached loop
    with torch.no_grad():
        loop = model(power, past="gen", sample=False)
    torch.manual_seed(0)
    graded = model(power, past="gen", sample=False)
    assert max_err(graded.logvar, loop.logvar) < TOL
    torch.testing.assert_close(graded.z_mean_p, loop.z_mean_p)
    graded.logvar.sum().backward()
    assert model.s_out.weight.grad is not None


def test_gen_prior_sees_the_fed_back_past():
    model = tiny("light-dvae", "plain").eval()
    power = spectrogram(2, 8)
    with torch.no_grad():
        out = model(power, past="gen", sample=False)
        lv, pm, pl = model.decode(out.z, out.w, torch.exp(out.logvar))
    assert max_err(pm, out.z_mean_p) < TOL and max_err(pl, out.z_logvar_p) < TOL
    assert max_err(lv, out.logvar) < TOL


@pytest.mark.parametrize("name", MODELS)
def test_generate_shapes_finite_and_seeded(name):
    model = tiny(name, "inv-s").eval()
    out = model.generate(3, 7, generator=torch.Generator().manual_seed(5))
    assert out.shape == (3, 7, 513) and torch.isfinite(out).all() and (out > 0).all()
    again = model.generate(3, 7, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(out, again, rtol=0, atol=0)
    other = model.generate(3, 7, generator=torch.Generator().manual_seed(6))
    assert max_err(out, other) > 0
    cold = model.generate(2, 5, temperature=0.0)  # w = 0 and z_t = prior mean: deterministic
    torch.testing.assert_close(cold, model.generate(2, 5, temperature=0.0))
    assert model.generate(1, 0).shape == (1, 0, 513)  # nothing to generate: empty, as every model does
    with pytest.raises(ValueError, match="frames"):
        model.generate(1, -1)


def test_dropout_is_off_in_eval():
    model = tiny("hit-dvae", "inv-s", dropout=0.5)
    power = spectrogram(2, 6)
    model.train()
    with torch.no_grad():
        a, b = model(power, sample=False).logvar, model(power, sample=False).logvar
    assert max_err(a, b) > 1e-4
    model.eval()
    for past in ("gt", "gen"):
        with torch.no_grad():
            a, b = model(power, past=past, sample=False).logvar, model(power, past=past, sample=False).logvar
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_forward_output_shapes_and_bad_inputs():
    model = tiny("light-dvae", "plain")
    power = spectrogram(2, 5)
    out = model(power)
    assert out.logvar.shape == (2, 5, 513)
    assert out.z.shape == out.z_mean_p.shape == out.z_logvar.shape == (2, 5, TINY["z_dim"])
    assert out.w.shape == out.w_mean.shape == (2, TINY["w_dim"])
    with pytest.raises(ValueError, match="past must be"):
        model(power, past="teacher")
    with pytest.raises(ValueError, match="power must be"):
        model(power[0])


# ---- the default configuration is unchanged ----------------------------------------------------------

#: Outputs of the default configuration (tiny sizes, float64) written by the code before the ``norm_first`` and
#: ``past_encoder`` options existed (commit b79cad0), with ``default_outputs()`` below.
GOLDEN = Path(__file__).parent / "data" / "transformer_defaults_float64.pt"
GOLDEN_BINS = 24
#: float64 reruns of one computation differ by rounding only (~1e-15 relative; BLAS kernels may change the order
#: of sums between CPUs); an option leaking into the default path changes outputs by orders of magnitude more.
GOLDEN_TOL = 1e-10


def default_outputs() -> dict[str, torch.Tensor]:
    """GT / GEN forward, the GEN prior, a sampled loss and seeded generation of every variant, default options."""
    out = {}
    for name, ablation in VARIANTS:
        model = tiny(name, ablation, x_dim=GOLDEN_BINS).double().eval()
        power = spectrogram(2, 7, bins=GOLDEN_BINS).double()
        key = f"{name}-{ablation}"
        with torch.no_grad():
            out[f"{key}/gt"] = model(power, past="gt", sample=False).logvar
            gen = model(power, past="gen", sample=False)
            out[f"{key}/gen"], out[f"{key}/gen_prior"] = gen.logvar, gen.z_mean_p
            torch.manual_seed(1)
            out[f"{key}/loss"] = model.train().loss(power, beta=0.5).loss.reshape(1)
        model.eval()
        out[f"{key}/generate"] = model.generate(2, 6, generator=torch.Generator().manual_seed(5))
    return out


def test_default_options_give_the_previous_outputs():
    golden = torch.load(GOLDEN, weights_only=True)
    ours = default_outputs()
    assert set(ours) == set(golden)
    errs = {k: float(((ours[k] - golden[k]).abs() / (golden[k].abs() + 1.0)).max()) for k in golden}
    worst = max(errs, key=errs.get)
    print(f"largest relative difference to the previous code: {errs[worst]:.2e} ({worst})")
    assert errs[worst] < GOLDEN_TOL, worst


# ---- the norm_first, past_encoder and positions options ------------------------------------------------

OPTIONS = {
    "pre-norm": {"norm_first": True},
    "rnn-past": {"past_encoder": "rnn"},
    "both": {"norm_first": True, "past_encoder": "rnn"},
    "rope": {"positions": "rope"},
    "rope-rnn-past": {"positions": "rope", "past_encoder": "rnn"},
}
OPTION_VARIANTS = [(m, a, o) for m, a in VARIANTS for o in OPTIONS]
OPTION_IDS = [f"{m}-{a}-{o}" for m, a, o in OPTION_VARIANTS]
#: float64 against float64 (step path vs parallel pass): rounding only, ~1e-15 relative; a wrong wiring shows
#: differences of order 1e-2 and more.
F64_TOL = 1e-10


def optioned(name: str, ablation: str, option: str, seed: int = 0, **overrides):
    return tiny(name, ablation, seed, **{**OPTIONS[option], **overrides})


@pytest.mark.parametrize(("name", "ablation", "option"), OPTION_VARIANTS, ids=OPTION_IDS)
def test_options_step_path_fed_the_true_past_equals_parallel(name, ablation, option):
    """Teacher-forced cached decoding == the causal parallel pass, held against a float64 run of the same model.

    float64: step path and parallel pass agree to rounding.  float32: the step path is as close to the float64 result
    as the float32 parallel pass is (within 10x its measured rounding error)."""
    model64 = optioned(name, ablation, option).double().eval()
    model32 = optioned(name, ablation, option).eval()
    b, t = 3, 11
    power = spectrogram(b, t).double()
    g = torch.Generator().manual_seed(2)
    z = torch.randn(b, t, TINY["z_dim"], generator=g, dtype=torch.float64)
    w = torch.randn(b, TINY["w_dim"], generator=g, dtype=torch.float64)
    with torch.no_grad():
        full64 = model64.decode(z, w, power)
        full32 = model32.decode(z.float(), w.float(), power.float())
    keys = ("logvar", "prior_mean", "prior_logvar")
    step64 = model64.decode_stepwise(w, t, z=z, past=power)
    step32 = model32.decode_stepwise(w.float(), t, z=z.float(), past=power.float())
    for key, ref, par32 in zip(keys, full64, full32, strict=True):
        err64, err_par32, err_step32 = (
            max_err(step64[key], ref),
            max_err(par32.double(), ref),
            max_err(step32[key].double(), ref),
        )
        print(f"{model64.variant} {option} {key}: f64 step {err64:.1e}; f32 par {err_par32:.1e} step {err_step32:.1e}")
        assert err64 < F64_TOL, key
        assert err_step32 <= 10 * err_par32, key


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("ablation", list(ABLATIONS))
def test_decoder_body_options_chunked_steps_equal_parallel(ablation, option):
    """Chunks of several positions per step (the LSTM runs them one by one), float64."""
    torch.manual_seed(0)
    body = DecoderBody(7, 10, 16, 4, 3, 24, "tanh", 0.0, **ABLATIONS[ablation], **OPTIONS[option]).double().eval()
    latent, speech = torch.randn(2, 12, 7, dtype=torch.float64), torch.randn(2, 12, 10, dtype=torch.float64)
    with torch.no_grad():
        full = body(latent, speech)
        cache = body.new_cache(2, 12, dtype=torch.float64, device="cpu")
        out, pos = [], 0
        for n in (1, 4, 2, 5):
            out.append(body.step(latent[:, pos : pos + n], speech[:, pos : pos + n], cache))
            pos += n
    err = max_err(torch.cat(out, 1), full)
    print(f"{ablation} {option}: chunked step vs parallel {err:.2e}")
    assert err < F64_TOL
    assert (body.past_rnn is not None) == (cache.memory.rnn_state is not None)


@pytest.mark.parametrize("option", list(OPTIONS))
def test_options_train_mode_and_shared_memory_step_paths(option):
    """LigHT-DVAE in eval() shares the memory (and the LSTM state) between its two passes, in train() mode (dropout
    0) it does not: both equal the parallel pass."""
    b, t = 2, 8
    power = spectrogram(b, t)
    g = torch.Generator().manual_seed(4)
    z, w = torch.randn(b, t, TINY["z_dim"], generator=g), torch.randn(b, TINY["w_dim"], generator=g)
    for mode in ("eval", "train"):
        model = optioned("light-dvae", "plain", option).double()
        getattr(model, mode)()
        steps = model.decode_stepwise(w.double(), t, z=z.double(), past=power.double())
        with torch.no_grad():
            logvar, p_mean, p_logvar = model.decode(z.double(), w.double(), power.double())
        errs = [max_err(steps["logvar"], logvar), max_err(steps["prior_mean"], p_mean)]
        assert max(errs + [max_err(steps["prior_logvar"], p_logvar)]) < F64_TOL, (mode, errs)


@pytest.mark.parametrize(("name", "ablation", "option"), OPTION_VARIANTS, ids=OPTION_IDS)
def test_options_train_gen_and_generate(name, ablation, option):
    """Training lowers the loss; GEN (cached loop and its differentiable recomputation) and generation run."""
    model = optioned(name, ablation, option)
    power = spectrogram(4, 12)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with torch.no_grad():
        before = model.loss(power, beta=1e-2, sample=False).loss.item()
    for _ in range(15):
        opt.zero_grad()
        terms = model.loss(power, beta=1e-2)
        terms.loss.backward()
        opt.step()
    with torch.no_grad():
        after = model.loss(power, beta=1e-2, sample=False).loss.item()
    assert after < before, (before, after)
    model.eval()
    with torch.no_grad():
        loop = model(power[:2, :9], past="gen", sample=False)
        # GEN = the parallel pass fed the decoder's own past exp(logvar)
        own_past = model.decode(loop.z, loop.w, torch.exp(loop.logvar))
    assert torch.isfinite(loop.logvar).all()
    assert max_err(own_past[0], loop.logvar) < TOL and max_err(own_past[1], loop.z_mean_p) < TOL
    graded = model(power[:2, :9], past="gen", sample=False)
    assert max_err(graded.logvar, loop.logvar) < TOL
    graded.logvar.sum().backward()
    out = model.generate(2, 7, generator=torch.Generator().manual_seed(5))
    assert out.shape == (2, 7, 513) and torch.isfinite(out).all() and (out > 0).all()
    torch.testing.assert_close(out, model.generate(2, 7, generator=torch.Generator().manual_seed(5)), rtol=0, atol=0)


@pytest.mark.parametrize("name", MODELS)
def test_options_swap_w(name):
    from lightdvae.generation import exchange_w

    model = optioned(name, "plain", "both").eval()
    a, b = spectrogram(1, 9, seed=3)[0], spectrogram(1, 6, seed=4)[0]
    for past in ("gen", "gt"):
        out = exchange_w(model, a, b, past=past)
        assert all(torch.isfinite(out[k]).all() for k in out)
        resynth = model.resynthesize(a[None], past=past, sample=False)[0]
        assert max_err(out["a_with_w_of_a"].log(), resynth.log()) < TOL
        assert out["a_with_w_of_b"].shape == a.shape


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("name", MODELS)
def test_a_saved_run_with_an_option_reloads_with_it(name, option, tmp_path):
    from lightdvae.runs import load_run, read_config, save_model

    model = optioned(name, "inv-s", option).eval()
    save_model(tmp_path / "run", model)
    assert {k: read_config(tmp_path / "run")["config"][k] for k in OPTIONS[option]} == OPTIONS[option]
    loaded = load_run(tmp_path / "run")
    assert all(getattr(loaded.config, k) == v for k, v in OPTIONS[option].items())
    power = spectrogram(2, 6)
    torch.testing.assert_close(
        loaded.resynthesize(power, past="gen", sample=False), model.resynthesize(power, past="gen", sample=False)
    )


def test_rotary_scores_depend_on_the_offset_only():
    """Rotary positions: q at i and k at j score as q at i + s and k at j + s, for any shift s; the rotation keeps
    norms; position 0 is the identity."""
    from lightdvae.models.transformer_layers import rotary_tables, rotate

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 1, 8, generator=g, dtype=torch.float64), torch.randn(2, 3, 1, 8, generator=g).double()
    cos, sin = rotary_tables(40, 8, dtype=torch.float64, device="cpu")

    def score(i: int, j: int) -> torch.Tensor:
        return (rotate(q, cos[i : i + 1], sin[i : i + 1]) * rotate(k, cos[j : j + 1], sin[j : j + 1])).sum(-1)

    # the angles are float32 (as in both paths of the model): each is off by up to 40 * 2^-24 rad, which moves a
    # score by at most |q| |k| times twice that
    tol = float((q.norm(dim=-1) * k.norm(dim=-1)).max()) * 2 * 40 * 2.0**-24
    for i, j in ((3, 1), (7, 7), (2, 9)):
        for shift in (1, 13, 30):
            assert max_err(score(i + shift, j + shift), score(i, j)) < tol
    assert max_err(score(5, 1), score(4, 1)) > 1e-3  # the offset does matter
    assert max_err(rotate(q, cos[:1], sin[:1]), q) == 0
    # cos^2 + sin^2 of float32 values is 1 to float32 rounding
    assert max_err(rotate(q, cos[5:6], sin[5:6]).norm(dim=-1), q.norm(dim=-1)) < float(q.norm(dim=-1).max()) * 2.0**-22
    with pytest.raises(ValueError, match="even head dimension"):
        rotary_tables(4, 7, dtype=torch.float32, device="cpu")


@pytest.mark.parametrize("name", MODELS)
def test_rope_replaces_the_sinusoidal_positions(name):
    """Same weights, the option switched: outputs differ (the option is wired); with rope the embeddings carry no
    positions, so a decoder body fed constant inputs gives the same row at every position."""
    base = tiny(name, "plain").double().eval()
    rope = tiny(name, "plain", positions="rope").double().eval()
    rope.load_state_dict(base.state_dict())  # no parameters of its own
    power = spectrogram(2, 9).double()
    with torch.no_grad():
        assert max_err(rope(power, past="gt", sample=False).logvar, base(power, past="gt", sample=False).logvar) > 1e-3
        body = rope.s_body
        latent = torch.ones(1, 6, body.latent_embed.in_features, dtype=torch.float64)
        speech = torch.ones(1, 6, body.speech_embed.in_features, dtype=torch.float64)
        rows = body(latent, speech)
        assert max_err(rows, rows[:, :1].expand_as(rows)) < 1e-12
        sinus = base.s_body(latent, speech)
        assert max_err(sinus, sinus[:, :1].expand_as(sinus)) > 1e-3


def test_options_parameters_and_the_default_checkpoint():
    """Pre-norm adds one LayerNorm per stack; the RNN past one LSTM(d, d) per decoder body; rotary positions
    nothing, so the default config builds the modules (and state_dict keys) of the shipped LigHT-DVAE checkpoint,
    which uses them (the recipe: docs/convergence/README.md, "Rotary positions win at convergence")."""
    from lightdvae.models import pretrained

    d = 128
    lstm = 4 * (2 * d * d + 2 * d)
    for name, bodies in (("hit-dvae", 2), ("light-dvae", 1)):
        base = build(name).num_parameters()
        counts = {o: build(name, **OPTIONS[o]).num_parameters() - base for o in OPTIONS}
        print(f"{name}: default {base:,}, added " + ", ".join(f"{o} {n:+,}" for o, n in counts.items()))
        assert counts == {
            "pre-norm": (2 + bodies) * 2 * d,
            "rnn-past": bodies * lstm,
            "both": (2 + bodies) * 2 * d + bodies * lstm,
            "rope": 0,
            "rope-rnn-past": bodies * lstm,
        }
    shipped = pretrained("light-dvae")  # loads its state_dict strictly into the default modules
    assert (shipped.config.norm_first, shipped.config.past_encoder) == (False, "linear")
    assert shipped.config.positions == "rope"
    assert set(shipped.state_dict()) == set(build("light-dvae").state_dict())


def test_option_values_are_checked_and_settable_from_the_cli(tmp_path, capsys):
    from lightdvae.cli import build_parser, main
    from lightdvae.cli.train import config_from_args

    with pytest.raises(ValueError, match="past_encoder must be one of linear, rnn"):
        build("light-dvae", past_encoder="gru")
    with pytest.raises(ValueError, match="norm_first must be true or false"):
        build("hit-dvae", norm_first="yes")
    with pytest.raises(ValueError, match="positions must be one of sinusoidal, rope"):
        build("hit-dvae", positions="alibi")
    base = ["train", "--model", "light-dvae", "--out", str(tmp_path / "run")]
    args = build_parser().parse_args([*base, "--set", "norm_first=true", "--set", "past_encoder=rnn"])
    assert config_from_args(args).model_config == {"norm_first": True, "past_encoder": "rnn"}
    bad_values = (
        ("past_encoder=gru", "past_encoder must be one of"),
        ("norm_first=1", "norm_first must be"),
        ("positions=learned", "positions must be one of"),
    )
    for bad, message in bad_values:
        assert main([*base, "--set", bad]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("rope", [False, True])
def test_attention_under_vmap_batches_and_equals_the_fused_kernel(causal, rope):
    """Under torch.func.vmap (per-utterance encoder copies in enhancement) attention takes its products' form, which
    has batching rules (no per-element fallback, no warning); float64: equal to scaled_dot_product_attention to
    rounding."""
    import warnings

    from torch.func import functional_call, vmap

    from lightdvae.models.transformer_layers import MultiHeadAttention

    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 4, rope=rope).double()
    params = {n: p.detach().unsqueeze(0).repeat(3, *[1] * p.dim()) for n, p in attn.named_parameters()}
    x = torch.randn(3, 7, 16, dtype=torch.float64)

    def one(p, xi):
        return functional_call(attn, p, (xi[None], xi[None], causal))[0]

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batched = vmap(one)(params, x)
    with torch.no_grad():
        loop = torch.stack([attn(x[i : i + 1], x[i : i + 1], causal)[0] for i in range(3)])
    assert max_err(batched, loop) < F64_TOL
