"""Unsupervised speech enhancement with a DVAE prior (issue #16): the M-step, the E-step, the Wiener filter, batching,
an enhancement that helps, and the command's one-line errors.

Numbers are compared in float64, where the computations agree to ~1e-15; the tolerances below are a few orders
above that, far below any real difference (one Adam step moves a weight by ~1e-3)."""

import dataclasses

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import TINY_LIGHT, make_run, no_vmap_fallback, requires_native, speech_like

from lightdvae.audio import istft, stft
from lightdvae.cli import main
from lightdvae.enhance import (
    EnhanceSettings,
    batches,
    engine_for,
    enhance,
    enhance_batch,
    inference_names,
    init_noise_model,
    m_step,
    m_step_and_divergence,
    mixture_divergence,
    mixture_reconstruction,
    resolve_settings,
    wiener_filter,
)
from lightdvae.enhance.engines import REFERENCE_LR, TRANSFORMER_E_STEP_LR, default_lr, settings_for
from lightdvae.enhance.inference import KeptOutputs, RecurrentEngine
from lightdvae.enhance.sequential import SequentialEngine
from lightdvae.errors import EnhanceError
from lightdvae.metrics import si_sdr
from lightdvae.models import DVAE, build
from lightdvae.models.vae import VAE

pytestmark = pytest.mark.usefixtures("private_dirs", "one_thread")

#: every family, at a size that runs in a fraction of a second
FAMILIES = {
    "vae": {"encoder_dims": [32], "decoder_dims": [32]},
    "dkf": {"x_dims": [32], "rnn_dim": 16, "z_to_g_dims": [8], "posterior_dims": [8], "decoder_dims": [32]},
    "rvae": {"rnn_x_dim": 16, "rnn_z_dim": 16, "rnn_h_dim": 16},
    "srnn": {"h_dims": [32], "rnn_h_dim": 16, "g_dims": [32], "rnn_g_dim": 16, "decoder_dims": [32]},
    "hit-dvae": TINY_LIGHT,
    "light-dvae": TINY_LIGHT,
}
TIGHT = dict(rtol=1e-9, atol=1e-12)  # float64 results that must agree


def _model(name: str) -> DVAE:
    torch.manual_seed(0)
    return build(name, **FAMILIES[name]).double().eval()


def _mixture(seconds: float, seed: int, snr_db: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    clean = speech_like(seconds, seed).astype(np.float64)
    noise = np.random.default_rng(seed + 100).standard_normal(clean.size)
    noise *= np.sqrt(np.sum(clean**2) / np.sum(noise**2) / 10 ** (snr_db / 10))
    return clean, clean + noise


# ---------------------------------------------------------------------------------------------------------------
# M-step
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", range(5))
def test_the_m_step_never_increases_the_divergence(case):
    gen = torch.Generator().manual_seed(case)
    lengths = [int(n) for n in torch.randint(3, 40, (3,), generator=gen)]
    rank = int(torch.randint(1, 10, (1,), generator=gen))
    shape = (3, max(lengths), 513)
    power = torch.rand(shape, generator=gen, dtype=torch.float64) ** 3 * 10.0 ** (3 * case - 6)
    speech = torch.rand(shape, generator=gen, dtype=torch.float64) * 10.0 ** (3 * case - 6) + 1e-12
    mask = torch.arange(shape[1])[None] < torch.tensor(lengths)[:, None]
    gens = [torch.Generator().manual_seed(case * 10 + i) for i in range(3)]
    state = init_noise_model(lengths, 513, rank, gens, dtype=torch.float64, device="cpu")
    before = mixture_divergence(state, power, speech, mask)
    for _ in range(30):
        wh = state.noise_variance()
        m_step(state, power, speech, mask)
        after = mixture_divergence(state, power, speech, mask)
        assert (after <= before * (1 + 1e-12)).all(), (before, after)
        assert torch.isfinite(state.W).all() and (state.W >= 0).all() and (state.H >= 0).all()
        torch.testing.assert_close(state.W.sum(1), torch.ones(3, rank, dtype=torch.float64))  # unit l1 columns
        assert not torch.equal(wh, state.noise_variance())
        before = after


def _m_step_runs(dtype, native: bool, iterations: int = 6):
    """W, H, g and the divergences of ``iterations`` M-steps of a padded batch (lengths 31, 17, 40; rank 8), on the
    native kernel or the ATen reference (``LIGHTDVAE_REFERENCE_OPS=nmf_m_step``'s path), in ``dtype`` from the same
    start (float32 numbers, so that float64 runs are the float32 runs' truth)."""
    gen = torch.Generator().manual_seed(5)
    lengths = [31, 17, 40]
    shape = (3, 40, 513)
    power = (torch.rand(shape, generator=gen) ** 3).to(dtype)
    speech = (torch.rand(shape, generator=gen) + 1e-6).to(dtype)
    power[0, 31:] = 0.0  # padded frames of the mixture are zeros (power_batch)
    power[1, 17:] = 0.0
    mask = torch.arange(40)[None] < torch.tensor(lengths)[:, None]
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    start = init_noise_model(lengths, 513, 8, gens, dtype=torch.float32, device="cpu")
    state = dataclasses.replace(start, W=start.W.to(dtype), H=start.H.to(dtype), g=start.g.to(dtype))
    divergences = []
    for _ in range(iterations):
        if native:
            divergences.append(torch.ops.lightdvae.nmf_m_step(state.W, state.H, state.g, power, speech, mask))
        else:
            m_step(state, power, speech, mask)
            divergences.append(mixture_divergence(state, power, speech, mask))
    return [state.W, state.H, state.g, torch.stack(divergences)]


@requires_native
def test_the_native_m_step_is_the_reference_within_float_rounding():
    """The CPU kernel (csrc/enhance/enhance_cpu.cpp) against the ATen calls of noise.py, six M-steps of a padded batch,
    on every instruction set: float64 within 1e-12 of the scale; float32 no further from the float64 reference than
    4x the float32 reference's own error (its sums are accumulated in float64, ATen's in float32), plus a few ulps."""
    truth = _m_step_runs(torch.float64, native=False)
    reference32 = _m_step_runs(torch.float32, native=False)
    names = ("W", "H", "g", "divergence")
    before = torch.ops.lightdvae.loss_cpu_isa()
    try:
        for isa in torch.ops.lightdvae.loss_cpu_isas():
            torch.ops.lightdvae.loss_cpu_isa(isa)
            for name, got, want in zip(names, _m_step_runs(torch.float64, native=True), truth, strict=True):
                scale = want.abs().max().item()
                assert (got - want).abs().max().item() <= 1e-12 * scale, (isa, name)
            for name, got, ref, want in zip(names, _m_step_runs(torch.float32, True), reference32, truth, strict=True):
                scale = want.abs().max().item()
                err, err_ref = ((t.double() - want).abs().max().item() for t in (got, ref))
                print(f"{isa} {name}: float32 error {err / scale:.2e} of the scale (ATen's {err_ref / scale:.2e})")
                assert err <= 4 * err_ref + 8 * torch.finfo(torch.float32).eps * scale, (isa, name)
    finally:
        torch.ops.lightdvae.loss_cpu_isa("auto")
    assert torch.ops.lightdvae.loss_cpu_isa() == before


def _reconstruction(dtype, native: bool, monkeypatch):
    """The E-step's reconstruction term of a padded batch (lengths 31, 17, 40) and its gradient in logvar, on the
    kernel or the ATen composite (``LIGHTDVAE_REFERENCE_OPS=mixture_is``), from float32 inputs cast to ``dtype``."""
    gen = torch.Generator().manual_seed(7)
    shape = (3, 40, 513)
    power = (torch.rand(shape, generator=gen) ** 3).to(dtype)
    power[0, 31:] = 0.0
    power[1, 17:] = 0.0
    power[2, 5, :100] = 0.0  # digitally silent bins: log(power + eps)
    logvar = (torch.randn(shape, generator=gen) * 4).to(dtype).requires_grad_()
    gain = (torch.rand(3, 40, generator=gen) + 0.1).to(dtype)
    noise = (torch.rand(shape, generator=gen) * 0.1).to(dtype)
    mask = torch.arange(40)[None] < torch.tensor([31, 17, 40])[:, None]
    weight = torch.tensor([1.0, -2.0, 0.5], dtype=dtype)
    monkeypatch.setenv("LIGHTDVAE_REFERENCE_OPS", "" if native else "mixture_is")
    loss = mixture_reconstruction(power, logvar, gain, noise, mask)
    (grad,) = torch.autograd.grad((loss * weight).sum(), logvar)
    return [loss.detach(), grad]


@requires_native
def test_the_native_reconstruction_term_is_the_reference_within_float_rounding(monkeypatch):
    """The CPU kernel (csrc/enhance/enhance_cpu.cpp) against the ATen composite, loss and gradient, on every
    instruction set: float64 within 1e-12 of the scale; float32 no further from float64 than 4x the composite's own
    float32 error plus a few ulps; padded frames get a zero gradient."""
    truth = _reconstruction(torch.float64, False, monkeypatch)
    reference32 = _reconstruction(torch.float32, False, monkeypatch)
    assert (truth[1][0, 31:] == 0).all() and (truth[1][1, 17:] == 0).all()
    before = torch.ops.lightdvae.loss_cpu_isa()
    try:
        for isa in torch.ops.lightdvae.loss_cpu_isas():
            torch.ops.lightdvae.loss_cpu_isa(isa)
            native64 = _reconstruction(torch.float64, True, monkeypatch)
            native32 = _reconstruction(torch.float32, True, monkeypatch)
            assert (native32[1][0, 31:] == 0).all() and (native32[1][1, 17:] == 0).all()
            for name, got, got32, ref32, want in zip(
                ("loss", "grad"), native64, native32, reference32, truth, strict=True
            ):
                scale = want.abs().max().item()
                assert (got - want).abs().max().item() <= 1e-12 * scale, (isa, name)
                err, err_ref = ((t.double() - want).abs().max().item() for t in (got32, ref32))
                print(f"{isa} {name}: float32 error {err / scale:.2e} of the scale (ATen's {err_ref / scale:.2e})")
                assert err <= 4 * err_ref + 8 * torch.finfo(torch.float32).eps * scale, (isa, name)
    finally:
        torch.ops.lightdvae.loss_cpu_isa("auto")
    assert torch.ops.lightdvae.loss_cpu_isa() == before


def test_a_float_mask_takes_the_composite_with_the_same_loss(monkeypatch):
    """The kernels take a bool mask; the EM always passes one, but a float 0/1 mask (a caller's own) takes the ATen
    composite (no error from the op) and gives the same loss and gradient."""
    with_bool = _reconstruction(torch.float64, True, monkeypatch)
    real = mixture_reconstruction
    monkeypatch.setitem(globals(), "mixture_reconstruction", lambda p, lv, g, n, m: real(p, lv, g, n, m.to(p.dtype)))
    with_float = _reconstruction(torch.float64, True, monkeypatch)
    for a, b in zip(with_bool, with_float, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@requires_native
def test_the_em_takes_the_native_m_step_on_the_cpu(monkeypatch):
    """m_step_and_divergence runs the kernel on the CPU (one call, no ATen M-step) and the ATen reference with
    LIGHTDVAE_REFERENCE_OPS=nmf_m_step; the EM gives the same enhancement either way, and with the reconstruction
    term's reference too (float64)."""
    calls = []
    real = m_step
    monkeypatch.setattr("lightdvae.enhance.noise.m_step", lambda *a: calls.append(1) or real(*a))
    model, wave = _model("vae"), _mixture(0.3, 1)[1]
    native = enhance(model, wave, iterations=5, seed=2)
    assert calls == []
    for ops in ("nmf_m_step", "mixture_is", "nmf_m_step,mixture_is"):
        monkeypatch.setenv("LIGHTDVAE_REFERENCE_OPS", ops)
        reference = enhance(model, wave, iterations=5, seed=2)
        np.testing.assert_allclose(native.waveform, reference.waveform, rtol=1e-9, atol=1e-12)
    assert len(calls) == 2 * 5
    gens = [torch.Generator().manual_seed(0)]
    state = init_noise_model([4], 513, 2, gens, dtype=torch.float32, device="cpu")
    power = torch.rand(1, 4, 513)
    assert m_step_and_divergence(state, power, power, torch.ones(1, 4, dtype=torch.bool)).shape == (1,)


@pytest.mark.parametrize("name", ["vae", "dkf"])
def test_digital_silence_in_the_mixture_gives_a_finite_estimate(name):
    """A mixture with exact zeros (a clean built-in file: espeak-ng's pauses; a zero-padded recording) once gave NaN:
    the gain and H of its silent frames went to zero and the updates divided by the zero variance.  The EM sees the
    power floored at POWER_FLOOR; the estimate is finite, and 60 dB below the peak where the mixture is silent (only
    the overlap-add of frames that reach into speech is left there: 3e-5 of the peak measured)."""
    clean = speech_like(0.4, 3).astype(np.float64)
    clean[2000:4000] = 0.0
    result = enhance(_model(name), clean, iterations=5, seed=0)
    assert np.isfinite(result.waveform).all()
    assert np.isfinite(np.asarray(result.loss)).all()
    assert np.abs(result.waveform[2600:3400]).max() < 1e-3 * np.abs(clean).max()


# ---------------------------------------------------------------------------------------------------------------
# E-step
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_e_step_changes_only_the_inference_network(name):
    model = _model(name)
    model_before = {k: v.clone() for k, v in model.state_dict().items()}
    power = stft(torch.as_tensor(_mixture(0.3, 1)[1])).abs().square()[None]
    lengths = [power.shape[1]]
    engine = engine_for(model, 1, lr=1e-3)
    before = {k: v.clone() for k, v in engine.parameters_of(0).items()}
    gens = [torch.Generator().manual_seed(0)]
    noise = torch.full_like(power, 0.1)
    mask = torch.ones(1, lengths[0], dtype=torch.bool)
    engine.step(power, lengths, mask, torch.ones(1, lengths[0], dtype=power.dtype), noise, 1.0, gens)
    after = engine.parameters_of(0)
    inference = set(inference_names(model))
    assert inference and inference < set(before)
    for key, value in before.items():
        if key in inference:
            assert not torch.equal(value, after[key]), f"{key} of the inference network did not move"
        else:
            assert torch.equal(value, after[key]), f"{key} is not part of the inference network but changed"
    for key, value in model.state_dict().items():  # the caller's model is never touched
        assert torch.equal(value, model_before[key]), key
    assert all(p.grad is None for p in model.parameters())


def test_a_model_without_an_inference_network_is_refused(monkeypatch):
    model = _model("vae")
    monkeypatch.setattr(VAE, "inference_parameters", DVAE.inference_parameters)
    with pytest.raises(EnhanceError, match="no inference network"):
        enhance(model, _mixture(0.2, 1)[1], iterations=1)


# ---------------------------------------------------------------------------------------------------------------
# Wiener filter
# ---------------------------------------------------------------------------------------------------------------
def test_with_no_noise_the_wiener_filter_returns_the_mixture():
    wave = torch.as_tensor(_mixture(0.5, 2)[1])
    outs = {}
    for dtype in (torch.float64, torch.float32):
        x = wave.to(dtype)
        spec = stft(x)
        speech = torch.rand(spec.shape, dtype=dtype) + 1e-3
        filt = wiener_filter(speech, torch.zeros_like(speech))
        assert torch.equal(filt, torch.ones_like(filt))
        outs[dtype] = istft(filt * spec, length=x.numel())
    torch.testing.assert_close(outs[torch.float64], wave, rtol=0, atol=1e-12)  # float64: the STFT pair's rounding
    torch.testing.assert_close(outs[torch.float32].double(), outs[torch.float64], rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_batch_gives_each_utterance_what_it_gets_alone(name):
    model = _model(name)
    waves = [_mixture(s, i)[1] for i, s in enumerate((0.30, 0.42, 0.30, 0.55))]
    together = enhance_batch(model, waves, iterations=3, seed=7)
    expected_batch = {"hit-dvae": [2, 1, 2, 1], "light-dvae": [2, 1, 2, 1]}.get(name, [4] * 4)
    assert [r.batch for r in together] == expected_batch
    for i, wave in enumerate(waves):
        alone = enhance(model, wave, iterations=3, seed=7, index=i)
        # the reference path: DKF, RVAE and SRNN through the model's own forward, one utterance at a time
        reference = enhance(model, wave, iterations=3, seed=7, index=i, one_at_a_time=True)
        assert alone.batch == 1 and together[i].iterations == alone.iterations == 3
        assert together[i].waveform.shape == wave.shape
        for other in (alone, reference):
            torch.testing.assert_close(torch.as_tensor(together[i].waveform), torch.as_tensor(other.waveform), **TIGHT)
            torch.testing.assert_close(together[i].speech_variance, other.speech_variance, **TIGHT)
            torch.testing.assert_close(together[i].noise_variance, other.noise_variance, **TIGHT)
            np.testing.assert_allclose(together[i].loss, other.loss, rtol=1e-9)
    # another seed, another result
    other = enhance(model, waves[0], iterations=3, seed=8)
    assert not np.allclose(other.waveform, together[0].waveform)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_float32_batch_runs_every_op_batched(name):
    # float32 takes the native kernels (the float64 tests above take ATen's): each must have a batching rule where
    # the engine vmaps the inference copies, or vmap runs it per sample, slowly and printing a warning per call
    torch.manual_seed(0)
    model = build(name, **FAMILIES[name]).eval()
    waves = [_mixture(0.3, i)[1].astype(np.float32) for i in range(3)]
    with no_vmap_fallback():
        results = enhance_batch(model, waves, iterations=2, seed=7)
    assert [r.batch for r in results] == [3] * 3 and all(np.isfinite(r.waveform).all() for r in results)


def test_the_m_step_in_chunks_changes_no_number(monkeypatch):
    # on the CPU the M-step works on a few utterances at a time (they stay in the cache); utterances are independent
    gen = torch.Generator().manual_seed(5)
    lengths = [31, 17, 40, 40, 9]
    shape = (5, 40, 513)
    power = torch.rand(shape, generator=gen) ** 3
    speech = torch.rand(shape, generator=gen) + 1e-6
    mask = torch.arange(40)[None] < torch.tensor(lengths)[:, None]
    results = []
    for cache_bytes in (1 << 40, 2 * 40 * 513 * 4, 1):  # the whole batch, two utterances, one
        monkeypatch.setattr("lightdvae.enhance.noise.CACHE_BYTES", cache_bytes)
        gens = [torch.Generator().manual_seed(i) for i in range(5)]
        state = init_noise_model(lengths, 513, 8, gens, dtype=torch.float32, device="cpu")
        divergences = []
        for _ in range(4):
            m_step(state, power, speech, mask)
            divergences.append(mixture_divergence(state, power, speech, mask))
        results.append((state.W, state.H, state.g, torch.stack(divergences)))
    from lightdvae.enhance.noise import _chunks

    assert len(_chunks(power)) == 5  # the last setting: one utterance a chunk
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)


def test_batches_follow_the_family():
    lengths = [10, 12, 10, 10, 7]
    assert batches(_model("vae"), lengths, batch_size=3) == [[0, 1, 2], [3, 4]]
    assert batches(_model("light-dvae"), lengths) == [[0, 2, 3], [1], [4]]
    for name in ("dkf", "rvae", "srnn"):
        assert batches(_model(name), lengths) == [[0, 1, 2, 3, 4]]
        assert batches(_model(name), lengths, batch_size=2) == [[0, 1], [2, 3], [4]]
    for name in ("vae", "light-dvae", "srnn"):
        assert batches(_model(name), lengths, one_at_a_time=True) == [[0], [1], [2], [3], [4]]


#: DKF, RVAE and SRNN configurations that take every branch of the batched engine's step math
RECURRENT = [
    pytest.param("dkf", FAMILIES["dkf"], id="dkf"),
    pytest.param(
        "dkf",
        {**FAMILIES["dkf"], "rnn_bidirectional": True, "rnn_layers": 2, "z_to_g_dims": [8, 8], "posterior_dims": []},
        id="dkf-bidirectional-2-layers",
    ),
    pytest.param("rvae", FAMILIES["rvae"], id="rvae"),
    pytest.param(
        "rvae",
        {**FAMILIES["rvae"], "causal": True, "x_dims": [32], "z_dims": [8], "posterior_dims": [8], "rnn_z_layers": 2},
        id="rvae-causal-2-layers-mlps",
    ),
    pytest.param("rvae", {**FAMILIES["rvae"], "activation": "relu", "posterior_dims": [8, 8]}, id="rvae-relu"),
    pytest.param("srnn", FAMILIES["srnn"], id="srnn"),
    pytest.param(
        "srnn",
        {**FAMILIES["srnn"], "prior_on_own_past": True, "posterior_dims": [], "rnn_g_layers": 2},
        id="srnn-own-past-prior-2-layers",
    ),
]


def _pass_and_gradients(engine, power, lengths, weight, seed):
    """One posterior pass with gradients and the gradients of a loss that reads every real output:
    ``(logvar, kl, grads)``, the grads ``(batch, *shape)`` in the order of ``engine.stacked``."""
    gens = [torch.Generator().manual_seed(seed + i) for i in range(len(lengths))]
    logvar, kl = engine.posterior_pass(power, lengths, gens, grad=True)
    mask = (torch.arange(power.shape[1])[None] < torch.tensor(lengths)[:, None])[..., None]
    loss = (logvar * weight * mask).sum() + kl.sum()
    return logvar.detach(), kl.detach(), engine.gradients(loss, list(engine.stacked.values()))


def _recurrent_case(name, config, dtype, lengths=(9, 14, 6)):
    """A model, an engine of ``len(lengths)`` copies that all differ, a padded power spectrogram and loss weights."""
    torch.manual_seed(0)
    model = build(name, **config).to(dtype).eval()
    engine = engine_for(model, len(lengths), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in engine.stacked.values():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype))
    power = torch.rand(len(lengths), max(lengths), 513, generator=gen, dtype=torch.float64) * 2
    for i, n in enumerate(lengths):
        power[i, n:] = 0.0
    return model, engine, power.to(dtype), torch.rand(power.shape, generator=gen, dtype=torch.float64).to(dtype)


def _alone(model, engine, i, n, power, weight, seed):
    """Utterance ``i`` through the model's own forward (the one-at-a-time engine) with copy ``i``'s weights."""
    alone = engine_for(model, 1, lr=1e-3, one_at_a_time=True)
    assert isinstance(alone, SequentialEngine)
    with torch.no_grad():
        for key, p in alone.stacked.items():
            p[0].copy_(engine.stacked[key][i])
    return _pass_and_gradients(alone, power[i : i + 1, :n], [n], weight[i : i + 1, :n], seed + i)


def test_enhancement_flushes_denormals_and_restores_the_default(monkeypatch):
    """The EM runs with denormals flushed to zero (oneDNN's LSTM backward on denormal gradients made the RVAE
    E-step ~3x slower) and leaves the process's default behind it."""
    calls = []
    real = torch.set_flush_denormal
    monkeypatch.setattr(torch, "set_flush_denormal", lambda mode: calls.append(mode) or real(mode))
    enhance(_model("vae"), _mixture(0.2, 0)[1], iterations=1)
    assert calls == [True, False]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_e_step_rate_left_open_is_the_priors(name):
    """``lr=None`` (the default) runs the E-step at the prior family's rate: the reference's 1e-3, and 1e-4 for
    HiT/LigHT-DVAE (the rate they train at); the result is the one with that rate given, and a rate given is kept."""
    model = _model(name)
    want = TRANSFORMER_E_STEP_LR if name in ("hit-dvae", "light-dvae") else REFERENCE_LR
    assert default_lr(model) == want and EnhanceSettings().lr is None
    assert settings_for(model, EnhanceSettings()).lr == want
    assert settings_for(model, EnhanceSettings(lr=0.5)).lr == 0.5
    wave = _mixture(0.2, 1)[1]
    left_open = enhance(model, wave, iterations=2, seed=3)
    np.testing.assert_array_equal(left_open.waveform, enhance(model, wave, iterations=2, seed=3, lr=want).waveform)
    assert not np.array_equal(left_open.waveform, enhance(model, wave, iterations=2, seed=3, lr=want * 3).waveform)


@pytest.mark.parametrize("name", ["hit-dvae", "light-dvae"])
@pytest.mark.parametrize("lengths", [(0.3,), (0.3, 0.3)])
def test_the_transformers_w_encoder_runs_once_per_iteration(name, lengths, monkeypatch):
    """HiT/LigHT-DVAE: the w encoder draws no noise, so the sample pass keeps its output (with its graph) for the
    next E-step at the same weights: n iterations encode w n + 2 times (the first E-step, the n sample passes,
    the final filter's sample) instead of 2 n + 1, alone and batched, with the same result as encoding every
    time (KeptOutputs.get computing whatever it is asked)."""
    model = _model(name)
    waves = [_mixture(s, i)[1] for i, s in enumerate(lengths)]
    calls = []
    real = type(model).encode_w
    monkeypatch.setattr(type(model), "encode_w", lambda self, *a: calls.append(1) or real(self, *a))
    kept = enhance_batch(model, waves, iterations=4, seed=3)
    assert len(calls) == 4 + 2 and [r.batch for r in kept] == [len(waves)] * len(waves)
    calls.clear()

    def compute_every_time(self, key, compute, grad):
        if grad:
            return compute()
        out = compute()
        return out.detach() if isinstance(out, torch.Tensor) else type(out)(t.detach() for t in out)

    monkeypatch.setattr(KeptOutputs, "get", compute_every_time)
    every_time = enhance_batch(model, waves, iterations=4, seed=3)
    assert len(calls) == 2 * 4 + 1
    for a, b in zip(kept, every_time, strict=True):
        np.testing.assert_allclose(a.waveform, b.waveform, **TIGHT)
        np.testing.assert_allclose(a.loss, b.loss, rtol=1e-12)


@pytest.mark.parametrize("name, config", RECURRENT)
def test_a_batch_of_one_runs_the_models_own_native_loops(name, config):
    """A recurrent prior's batch of one takes the sequential engine (its native loops; faster than the batched
    engine's Python frame loop at batch 1); two or more take the batched engine."""
    model = build(name, **config).eval()
    assert isinstance(engine_for(model, 1, lr=1e-3), SequentialEngine)
    assert isinstance(engine_for(model, 2, lr=1e-3), RecurrentEngine)


@pytest.mark.parametrize("name", ["dkf", "rvae", "srnn"])
def test_a_batch_of_one_encodes_the_speech_once_per_iteration(name, monkeypatch):
    """DKF / RVAE / SRNN alone: the sample pass keeps its speech features for the next E-step (same weights, same
    mixture), so an EM of n iterations encodes n + 1 times (the first E-step, then each sample pass; one more
    sample for the final filter) instead of 2 n + 1 on the reference path; SRNN's true-past h (frozen weights,
    the mixture) is computed once instead of 2 n + 1 times; the prior (DKF's transition, SRNN's prior network)
    runs in the n E-steps alone.  The same result (the batching test above holds both paths to each other)."""
    model = _model(name)
    prior = {"dkf": ["transition"], "srnn": ["prior", "_deterministic_h_tm"]}.get(name, [])
    counted = ["_encode_speech_tm", *prior]
    calls = {method: [] for method in counted}
    for method in counted:
        real = getattr(type(model), method)
        monkeypatch.setattr(
            type(model), method, lambda self, *a, real=real, log=calls[method]: log.append(1) or real(self, *a)
        )
    wave = _mixture(0.3, 1)[1]
    fast = enhance(model, wave, iterations=4, seed=3)
    fast_calls = {method: len(log) for method, log in calls.items()}
    for log in calls.values():
        log.clear()
    reference = enhance(model, wave, iterations=4, seed=3, one_at_a_time=True)
    expected = {"_encode_speech_tm": 4 + 1 + 1, "transition": 4, "prior": 4, "_deterministic_h_tm": 1}
    assert fast_calls == {method: expected[method] for method in counted}
    assert all(len(log) == 2 * 4 + 1 for log in calls.values())
    np.testing.assert_allclose(fast.waveform, reference.waveform, rtol=1e-9, atol=1e-12)
    assert not set(counted) & set(vars(model))  # the shadowing attributes are gone after each pass


@pytest.mark.parametrize("name, config", RECURRENT)
def test_the_batched_recurrent_engine_is_the_models_own_forward(name, config):
    """Each utterance of a padded batch, with its own copy of the weights, gets the decoder output, the KL and the
    gradients that the model's own forward gives it alone (float64: agreement to ~1e-15 measured, TIGHT asserted)."""
    lengths = [9, 14, 6]
    model, engine, power, weight = _recurrent_case(name, config, torch.float64, tuple(lengths))
    assert isinstance(engine, RecurrentEngine)
    logvar, kl, grads = _pass_and_gradients(engine, power, lengths, weight, seed=5)
    gens = [torch.Generator().manual_seed(5 + i) for i in range(len(lengths))]
    sampled = engine.sample(power, lengths, gens)  # the pass without gradients: the same numbers
    torch.testing.assert_close(sampled, torch.exp(logvar), rtol=1e-12, atol=0)
    for i, n in enumerate(lengths):
        logvar_1, kl_1, grads_1 = _alone(model, engine, i, n, power, weight, seed=5)
        torch.testing.assert_close(logvar[i, :n], logvar_1[0], **TIGHT)
        torch.testing.assert_close(kl[i], kl_1[0], **TIGHT)
        for key, g, g_1 in zip(engine.stacked, grads, grads_1, strict=True):
            assert g[i].abs().max() > 0 or g_1[0].abs().max() == 0, key
            torch.testing.assert_close(g[i], g_1[0], **TIGHT, msg=lambda m, key=key: f"{key}: {m}")


def test_a_step_reuses_the_speech_features_of_the_sample_before_it():
    """``encode_speech`` has no noise: a step right after a sample at the same weights reuses its features (and
    their graph); after an Adam step they are computed again."""
    model, engine, power, _ = _recurrent_case("rvae", FAMILIES["rvae"], torch.float64)
    lengths, calls = [9, 14, 6], []
    real = model.encode_speech
    model.encode_speech = lambda *args: calls.append(1) or real(*args)
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    mask = torch.arange(power.shape[1])[None] < torch.tensor(lengths)[:, None]
    gain, noise = torch.ones(mask.shape, dtype=power.dtype), torch.full_like(power, 0.1)
    counts = []
    for action in ("step", "sample", "step", "step", "sample", "sample", "step"):
        calls.clear()
        if action == "step":
            engine.step(power, lengths, mask, gain, noise, 1.0, gens)
        else:
            engine.sample(power, lengths, gens)
        counts.append(len(calls))
    assert counts == [3, 3, 0, 3, 3, 3, 0], counts


@pytest.mark.parametrize("name", ["dkf", "rvae", "srnn"])
def test_the_batched_engine_in_float32_is_as_accurate_as_the_models_own_forward(name, monkeypatch):
    """Against the float64 model's own forward, the batched engine's float32 error is within a small multiple of
    the float32 model's own (both printed)."""
    from lightdvae.enhance import inference

    real_draw = inference.draw
    monkeypatch.setattr(
        inference,
        "draw",
        lambda gens, lengths, shape, like: real_draw(gens, lengths, shape, like.double()).to(like.dtype),
    )  # the same noise in both dtypes
    lengths = [9, 14, 6]

    def outputs(dtype) -> list[dict]:
        model, engine, power, weight = _recurrent_case(name, FAMILIES[name], dtype, tuple(lengths))
        logvar, _, grads = _pass_and_gradients(engine, power, lengths, weight, seed=5)
        rows = []
        for i, n in enumerate(lengths):
            logvar_1, _, grads_1 = _alone(model, engine, i, n, power, weight, seed=5)
            rows.append({"batched": [logvar[i, :n], *(g[i] for g in grads)], "own": [logvar_1[0], *grads_1]})
        return rows

    low, exact = outputs(torch.float32), outputs(torch.float64)

    def error(kind: str) -> float:  # the worst relative error of a float32 output against the float64 own forward
        return max(
            float((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30))
            for lo, ex in zip(low, exact, strict=True)
            for a, b in zip(lo[kind], ex["own"], strict=True)
        )

    batched, own = error("batched"), error("own")
    print(f"{name}: float32 error against float64, batched {batched:.2e}, own forward {own:.2e}")
    assert batched <= 10 * own + 1e-6


@pytest.mark.parametrize("name", ["vae", "dkf", "light-dvae"])
def test_e_steps_take_that_many_adam_steps_before_each_sample(name, monkeypatch):
    """``e_steps=3``: three Adam steps (each on its own draw of the noise) before each iteration's sample and
    M-step, against the noise model of the M-step before them; ``e_steps=1`` is the reference's loop."""
    from lightdvae.enhance.inference import InferenceEngine

    model, wave = _model(name), _mixture(0.3, 1)[1]
    calls, step, sample = [], InferenceEngine.step, InferenceEngine.sample

    def counted_step(self, power, lengths, mask, gain, noise, *rest):
        calls.append(("step", noise.data_ptr()))
        return step(self, power, lengths, mask, gain, noise, *rest)

    def counted_sample(self, *args):
        calls.append(("sample", None))
        return sample(self, *args)

    monkeypatch.setattr(InferenceEngine, "step", counted_step)
    monkeypatch.setattr(InferenceEngine, "sample", counted_sample)
    three = enhance(model, wave, iterations=2, e_steps=3)
    kinds = [k for k, _ in calls]
    assert kinds == ["step"] * 3 + ["sample"] + ["step"] * 3 + ["sample"] * 2, kinds  # the last: the final filter
    assert len({calls[i][1] for i in range(3)}) == 1  # one noise model for an iteration's steps
    calls.clear()
    one = enhance(model, wave, iterations=2)
    assert [k for k, _ in calls] == ["step", "sample", "step", "sample", "sample"]
    assert not np.allclose(one.waveform, three.waveform)
    assert three.loss[-1] <= one.loss[-1] + 1e-6 * abs(one.loss[-1])  # further along the same objective


def test_a_time_budget_stops_early():
    result = enhance(_model("vae"), _mixture(0.3, 1)[1], iterations=10_000, max_seconds=0.2)
    assert result.stopped_early and 1 <= result.iterations < 10_000 and len(result.loss) == result.iterations
    assert "stopped early" in result.summary()


# ---------------------------------------------------------------------------------------------------------------
# It enhances
# ---------------------------------------------------------------------------------------------------------------
def _shipped_vae():
    from lightdvae.models.shipped import PretrainedError, pretrained

    try:
        return pretrained("vae")
    except PretrainedError as exc:
        pytest.skip(f"the shipped VAE prior is not there: {exc}")


def test_enhancement_with_the_shipped_vae_raises_si_sdr():
    model = _shipped_vae()
    clean, noisy = _mixture(1.5, 3, snr_db=5.0)
    result = enhance(model, noisy, iterations=30, seed=0)
    before, after = si_sdr(clean, noisy), si_sdr(clean, result.waveform)
    print(f"SI-SDR {before:.2f} dB -> {after:.2f} dB, {result.seconds_per_iteration * 1000:.1f} ms/iteration")
    assert after > before + 1.0
    assert np.isfinite(result.loss).all() and result.loss[-1] < result.loss[0]


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options, expect",
    [
        ({"iterations": 0}, "iterations"),
        ({"rank": 1.5}, "rank"),
        ({"lr": -1.0}, "lr"),
        ({"beta": float("nan")}, "beta"),
        ({"samples": 0}, "samples"),
        ({"e_steps": 0}, "e_steps must be an integer >= 1"),
        ({"seed": -1}, "seed"),
        ({"max_seconds": 0}, "max_seconds"),
        ({"lr": "0.1"}, "lr must be a number"),
        ({"device": "tpu"}, "device"),
        ({"iteration": 3}, "unknown enhancement option 'iteration'; the options are iterations, rank, lr"),
        ({"settings": {"iterations": 3}}, "settings must be an EnhanceSettings"),
    ],
)
def test_bad_options_are_one_clear_error(options, expect):
    with pytest.raises(EnhanceError, match=expect):
        enhance(_model("vae"), _mixture(0.2, 1)[1], **options)


def test_the_settings_are_one_checked_carrier():
    settings = EnhanceSettings(iterations=3, seed=7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.iterations = 4
    assert settings.replace(seed=8) == EnhanceSettings(iterations=3, seed=8) and settings.seed == 7
    assert settings.replace() is settings
    assert EnhanceSettings.from_dict({**settings.to_dict(), "metrics": ["si_sdr"]}) == settings
    assert resolve_settings(None, {}) == EnhanceSettings()
    assert resolve_settings(settings, {"beta": 0}) == EnhanceSettings(iterations=3, seed=7, beta=0.0)
    numpy = EnhanceSettings(iterations=np.int64(3), lr=np.float32(0.5), max_seconds=np.int32(2))
    assert type(numpy.iterations) is int and type(numpy.lr) is float and type(numpy.max_seconds) is float
    assert numpy.to_dict() == {**EnhanceSettings().to_dict(), "iterations": 3, "lr": 0.5, "max_seconds": 2.0}


def test_every_bad_setting_is_named_on_one_line():
    with pytest.raises(EnhanceError) as caught:
        EnhanceSettings(iterations=0, lr=float("inf"), seed=True, max_seconds=-1)
    message = str(caught.value)
    assert "\n" not in message and message.count(";") == 3, message
    for part in ("iterations must be an integer >= 1, got 0", "lr must be a finite number", "seed must be", "max_s"):
        assert part in message, message
    with pytest.raises(EnhanceError, match="unknown enhancement options 'k', 'steps'"):
        EnhanceSettings().replace(k=4, steps=3)


def test_a_settings_object_and_keywords_give_the_same_enhancement():
    model, wave = _model("vae"), _mixture(0.3, 1)[1]
    settings = EnhanceSettings(iterations=2, seed=3, beta=0.5, rank=4)
    given = enhance(model, wave, settings)
    keywords = enhance(model, wave, **settings.to_dict())
    replaced = enhance(model, wave, EnhanceSettings(iterations=9, seed=1), iterations=2, seed=3, beta=0.5, rank=4)
    batched = enhance_batch(model, [wave], settings=settings)[0]
    for other in (keywords, replaced, batched):
        np.testing.assert_array_equal(other.waveform, given.waveform)
        assert other.iterations == 2 and other.noise_variance.shape == given.noise_variance.shape


@pytest.mark.parametrize(
    "wave, expect",
    [(np.zeros(4000), "silent"), (np.zeros((2, 4000)), "mono"), (np.array([]), "no samples"), ([np.nan], "NaN")],
)
def test_bad_waveforms_are_one_clear_error(wave, expect):
    with pytest.raises(EnhanceError, match=expect):
        enhance(_model("vae"), wave)


def _one_line_error(capsys, argv, expect: str):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith("lightdvae enhance: error: ") and expect in err[0], err[0]


@pytest.fixture
def files(tmp_path):
    clean, noisy = _mixture(0.5, 4)
    sf.write(tmp_path / "clean.wav", clean, 16000, subtype="FLOAT")
    sf.write(tmp_path / "noisy.wav", 0.5 * noisy / np.abs(noisy).max(), 16000, subtype="FLOAT")
    sf.write(tmp_path / "silent.wav", np.zeros(8000), 16000)
    stereo = np.stack([noisy, noisy], 1)[::2] / np.abs(noisy).max() / 2  # 8 kHz stereo
    sf.write(tmp_path / "stereo8k.wav", stereo, 8000, subtype="FLOAT")
    return tmp_path


def test_the_command_enhances_a_file(files, capsys):
    run = make_run(files / "run", "vae")
    argv = ["enhance", str(run), str(files / "noisy.wav"), "--out", str(files / "out.wav"), "--iterations", "2"]
    assert main([*argv, "--clean", str(files / "clean.wav"), "--device", "cpu", "--threads", "1"]) == 0
    line = capsys.readouterr().out.strip().splitlines()
    assert len(line) == 1 and "2 iterations" in line[0] and "SI-SDR" in line[0], line
    out, rate = sf.read(files / "out.wav")
    assert rate == 16000 and out.shape == (8000,)
    stereo = ["enhance", str(run), str(files / "stereo8k.wav"), "--out", str(files / "out2.wav"), "--iterations", "1"]
    assert main(stereo) == 0
    said = capsys.readouterr().out
    assert "mixed 2 channels down" in said and "resampled 8000 Hz -> 16000 Hz" in said, said


def test_the_command_says_what_is_wrong_in_one_line(files, capsys, monkeypatch):
    run = make_run(files / "run", "vae")
    noisy, out = str(files / "noisy.wav"), str(files / "out.wav")
    _one_line_error(capsys, ["enhance", str(run), str(files / "missing.wav"), "--out", out], "does not exist")
    _one_line_error(capsys, ["enhance", str(run), str(files / "silent.wav"), "--out", out], "silent")
    _one_line_error(capsys, ["enhance", str(files / "no-run"), noisy, "--out", out], "does not exist")
    _one_line_error(capsys, ["enhance", str(run), noisy, "--out", out, "--seed", "-1"], "seed")
    _one_line_error(capsys, ["enhance", str(run), noisy, "--out", out, "--clean", str(files / "nope.wav")], "nope")
    monkeypatch.setattr(VAE, "inference_parameters", DVAE.inference_parameters)
    _one_line_error(capsys, ["enhance", str(run), noisy, "--out", out], "no inference network")
    # the EM options are checked in one place, EnhanceSettings, and said as one line
    _one_line_error(capsys, ["enhance", str(run), noisy, "--out", out, "--iterations", "0"], "iterations must be")
    _one_line_error(capsys, ["enhance", str(run), noisy, "--out", out, "--lr", "nan"], "lr must be a finite number")
    with pytest.raises(SystemExit) as stop:  # argparse's own check that a number is a number
        main(["enhance", str(run), noisy, "--out", out, "--iterations", "ten"])
    assert stop.value.code == 2


def test_the_command_builds_the_settings_once_and_passes_them_down(files, capsys, monkeypatch):
    import lightdvae.enhance as E

    run = make_run(files / "run", "vae")
    seen, real = [], E.enhance

    def spy(model, noisy, settings=None, **options):
        seen.append((settings, options))
        return real(model, noisy, settings, **options)

    monkeypatch.setattr(E, "enhance", spy)
    argv = ["enhance", str(run), str(files / "noisy.wav"), "--out", str(files / "o.wav"), "--iterations", "2"]
    assert main([*argv, "--beta", "0.01", "--max-seconds", "30", "--seed", "4"]) == 0
    expected = EnhanceSettings(iterations=2, beta=0.01, max_seconds=30.0, seed=4)
    assert seen == [(expected, {})], seen
    assert "2 iterations" in capsys.readouterr().out
