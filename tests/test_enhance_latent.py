"""The latent E-step (``latent_e_step=True``, :mod:`lightdvae.enhance.latent`): Adam on each frame's posterior
instead of the encoder's weights.

Float64 throughout, where a pass agrees with the model's own forward to ~1e-15; the tolerances are those of the
engine tests (``tests/test_enhance.py``)."""

import numpy as np
import pytest
import torch
from test_enhance import FAMILIES, TIGHT, _mixture, _model

from lightdvae.audio import stft
from lightdvae.cli import main
from lightdvae.enhance import EnhanceSettings, engine_for, enhance, enhance_batch, settings_for
from lightdvae.enhance import latent as latent_module
from lightdvae.enhance.latent import LATENT_LR, LatentEngine
from lightdvae.enhance.set_outputs import settings_tag
from lightdvae.errors import EnhanceError
from lightdvae.metrics import si_sdr
from lightdvae.ops import gaussian_kl

pytestmark = pytest.mark.usefixtures("private_dirs", "one_thread")

HIERARCHICAL = ("hit-dvae", "light-dvae")


def _power(seconds: float, seed: int) -> torch.Tensor:
    return stft(torch.as_tensor(_mixture(seconds, seed)[1])).abs().square()[None]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_leaves_start_at_the_models_posterior_means(name):
    """Each utterance's leaves are the model's posterior on its own frames (``forward(sample=False)``, the mean path
    of a sequential posterior), whatever the padding of the batch."""
    model = _model(name)
    short, long = _power(0.3, 1), _power(0.45, 2)
    power = torch.zeros(2, long.shape[1], long.shape[2], dtype=long.dtype)
    power[0, : short.shape[1]], power[1] = short[0], long[0]
    lengths = [short.shape[1], long.shape[1]]
    engine = engine_for(model, 2, lr=0.1, latent_e_step=True)
    assert isinstance(engine, LatentEngine) and engine.stacked == {}
    engine.sample(power, lengths, [torch.Generator().manual_seed(i) for i in range(2)])
    names = {"z_mean", "z_logvar"} | ({"w_mean", "w_logvar"} if name in HIERARCHICAL else set())
    assert set(engine.stacked) == names
    for i, one in enumerate((short, long)):
        with torch.no_grad():
            out = model(one, past="gt", sample=False)
        for key in names:
            expected = getattr(out, key)[0]
            torch.testing.assert_close(engine.stacked[key][i, : expected.shape[0]], expected, **TIGHT)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_pass_at_the_start_without_noise_is_the_models_own_forward(name, monkeypatch):
    """With the noise at zero the sample is the posterior mean, so the decoder's output (fed its own past) and the
    KL of the latent pass are those of the model's ``forward(power, past="gen", sample=False)``."""
    model = _model(name)
    power = _power(0.35, 3)
    lengths = [power.shape[1]]
    monkeypatch.setattr(latent_module, "draw", lambda gens, lengths, shape, like: like.new_zeros(1, *lengths, *shape))
    engine = engine_for(model, 1, lr=0.1, latent_e_step=True)
    with torch.enable_grad():
        logvar, kl = engine.posterior_pass(power, lengths, [torch.Generator()], grad=True)
    with torch.no_grad():
        out = model(power, past="gen", sample=False)
    expected = gaussian_kl(out.z_mean, out.z_logvar, out.z_mean_p, out.z_logvar_p, reduction="none").sum()
    if out.w_mean is not None:
        expected = expected + gaussian_kl(out.w_mean, out.w_logvar, reduction="none").sum()
    torch.testing.assert_close(logvar.detach(), out.logvar, **TIGHT)
    torch.testing.assert_close(kl.detach(), expected.reshape(1), **TIGHT)
    sample, _ = engine.posterior_pass(power, lengths, [torch.Generator()], grad=False)
    torch.testing.assert_close(sample, out.logvar, **TIGHT)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_latent_e_step_moves_only_the_posteriors(name):
    model = _model(name)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    power = _power(0.3, 1)
    lengths = [power.shape[1]]
    engine = engine_for(model, 1, lr=0.1, latent_e_step=True)
    gens = [torch.Generator().manual_seed(0)]
    mask = torch.ones(1, lengths[0], dtype=torch.bool)
    gain, noise = torch.ones(1, lengths[0], dtype=power.dtype), torch.full_like(power, 0.1)
    engine.step(power, lengths, mask, gain, noise, 1.0, gens)
    start = {k: v.detach().clone() for k, v in engine.stacked.items()}
    engine.step(power, lengths, mask, gain, noise, 1.0, gens)
    for key, value in start.items():
        assert not torch.equal(value, engine.stacked[key]), f"{key} did not move"
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), f"{key} of the model changed"
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, state[k]) for k, p in engine.parameters_of(0).items())


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_batch_gives_each_utterance_what_it_gets_alone(name):
    model = _model(name)
    waves = [_mixture(s, i)[1] for i, s in enumerate((0.30, 0.42, 0.30))]
    together = enhance_batch(model, waves, iterations=3, e_steps=2, seed=7, latent_e_step=True)
    for i, wave in enumerate(waves):
        alone = enhance(model, wave, iterations=3, e_steps=2, seed=7, index=i, latent_e_step=True)
        assert alone.batch == 1
        torch.testing.assert_close(torch.as_tensor(together[i].waveform), torch.as_tensor(alone.waveform), **TIGHT)
        np.testing.assert_allclose(together[i].loss, alone.loss, rtol=1e-9)
    encoder = enhance(model, waves[0], iterations=3, e_steps=2, seed=7)
    assert not np.allclose(encoder.waveform, together[0].waveform)


def test_the_options_of_the_latent_e_step():
    model = _model("vae")
    settings = settings_for(model, EnhanceSettings(latent_e_step=True))
    assert settings.lr == LATENT_LR and settings_for(model, EnhanceSettings()).lr == 1e-3
    assert settings_for(model, EnhanceSettings(latent_e_step=True, lr=0.03)).lr == 0.03
    assert settings_tag(settings).endswith("-lr0.1-latent") and "latent" not in settings_tag(EnhanceSettings())
    with pytest.raises(EnhanceError, match="latent_e_step must be True or False, got 'yes'"):
        EnhanceSettings(latent_e_step="yes")


def test_the_command_takes_the_latent_e_step(tmp_path, monkeypatch, capsys):
    import soundfile as sf
    from helpers import make_run

    import lightdvae.enhance as E

    run = make_run(tmp_path / "run", "vae")
    sf.write(tmp_path / "noisy.wav", _mixture(0.4, 1)[1], 16000)
    seen, real = [], E.enhance

    def spy(model, noisy, settings=None, **options):
        seen.append(settings)
        return real(model, noisy, settings, **options)

    monkeypatch.setattr(E, "enhance", spy)
    argv = ["enhance", str(run), str(tmp_path / "noisy.wav"), "--out", str(tmp_path / "o.wav"), "--iterations", "2"]
    assert main([*argv, "--latent-e-step"]) == 0
    assert seen[-1] == EnhanceSettings(iterations=2, latent_e_step=True)
    assert main(argv) == 0
    assert seen[-1] == EnhanceSettings(iterations=2)
    assert (tmp_path / "o.wav").is_file()


def test_the_latent_e_step_with_the_shipped_vae_raises_si_sdr():
    from lightdvae.models.shipped import PretrainedError, pretrained

    try:
        model = pretrained("vae")
    except PretrainedError as exc:
        pytest.skip(f"the shipped VAE prior is not there: {exc}")
    clean, noisy = _mixture(1.5, 3, snr_db=0.0)
    result = enhance(model, noisy, iterations=10, e_steps=3, latent_e_step=True, seed=0)
    before, after = si_sdr(clean, noisy), si_sdr(clean, result.waveform)
    print(f"SI-SDR {before:.2f} dB -> {after:.2f} dB")
    assert after > before + 1.0 and np.isfinite(result.loss).all()


# ---------------------------------------------------------------------------------------------------------------
# speech_past="estimate": the decoders that see past speech are fed the EM's estimate of the clean speech

PAST_SPEECH = ("srnn", "hit-dvae", "light-dvae")


def _estimate_engine(name, monkeypatch):
    monkeypatch.setattr(latent_module, "draw", lambda gens, lengths, shape, like: like.new_zeros(1, *lengths, *shape))
    model = _model(name)
    return model, engine_for(model, 1, lr=0.1, latent_e_step=True, speech_past="estimate")


def _kl(out, mean_p, logvar_p):
    kl = gaussian_kl(out.z_mean, out.z_logvar, mean_p, logvar_p, reduction="none").sum()
    if out.w_mean is not None:
        kl = kl + gaussian_kl(out.w_mean, out.w_logvar, reduction="none").sum()
    return kl.reshape(1)


@pytest.mark.parametrize("name", PAST_SPEECH)
def test_before_the_first_m_step_the_estimated_past_is_the_mixture(name, monkeypatch):
    """Without noise, the first pass fed the estimated past is the model's teacher-forced ``forward(power,
    past="gt", sample=False)`` on the mixture: its decoder output and its KL."""
    power = _power(0.35, 3)
    model, engine = _estimate_engine(name, monkeypatch)
    with torch.enable_grad():
        logvar, kl = engine.posterior_pass(power, [power.shape[1]], [torch.Generator()], grad=True)
    with torch.no_grad():
        out = model(power, past="gt", sample=False)
    torch.testing.assert_close(logvar.detach(), out.logvar, **TIGHT)
    torch.testing.assert_close(kl.detach(), _kl(out, out.z_mean_p, out.z_logvar_p), **TIGHT)
    own = engine_for(model, 1, lr=0.1, latent_e_step=True)
    assert not torch.allclose(own.posterior_pass(power, [power.shape[1]], [torch.Generator()], False)[0], logvar)


@pytest.mark.parametrize("name", PAST_SPEECH)
def test_after_an_m_step_the_decoders_are_fed_the_posterior_power_of_the_speech(name, monkeypatch):
    """After each M-step the past is ``E[|S|^2 | X] / g = (G^2 |X|^2 + G WH) / g`` with the Wiener gain
    ``G = g v / (g v + WH)``, computed here directly; the pass then decodes ``z`` teacher-forced on it."""
    from lightdvae.enhance.noise import init_noise_model

    power = _power(0.35, 4)
    n = power.shape[1]
    model, engine = _estimate_engine(name, monkeypatch)
    speech = engine.sample(power, [n], [torch.Generator()])
    state = init_noise_model(
        [n], power.shape[-1], 3, [torch.Generator().manual_seed(1)], dtype=power.dtype, device="cpu"
    )
    state.g = torch.linspace(0.2, 3.0, n, dtype=power.dtype)[None]
    engine.observe(power, state, speech, torch.ones(1, n, dtype=torch.bool))
    gv, wh = state.g[..., None] * speech, state.noise_variance()
    wiener = gv / (gv + wh)
    past = (wiener**2 * power + wiener * wh) / state.g[..., None]
    with torch.enable_grad():
        logvar, kl = engine.posterior_pass(power, [n], [torch.Generator()], grad=True)
    with torch.no_grad():
        start = model(power, past="gt", sample=False)  # the leaves are still its posterior means
        teacher = model(past, past="gt", sample=False)  # its decoders on the past, at other latents
        if name == "srnn":
            h = model.deterministic_h(past)
            z_prev = torch.cat([torch.zeros_like(start.z_mean[:, :1]), start.z_mean[:, :-1]], 1)
            expected, (mean_p, logvar_p) = model.decode(h, start.z_mean), model.prior(h, z_prev)
        else:
            expected, mean_p, logvar_p = model.decode(start.z_mean, start.w_mean, past)
    assert not torch.allclose(teacher.logvar, start.logvar)  # the past is not the mixture
    torch.testing.assert_close(logvar.detach(), expected, **TIGHT)
    torch.testing.assert_close(kl.detach(), _kl(start, mean_p, logvar_p), **TIGHT)
    state.W.zero_()  # no noise: the past is the mixture over the gain
    engine.observe(power, state, speech, torch.ones(1, n, dtype=torch.bool))
    torch.testing.assert_close(engine._past, power / state.g[..., None], rtol=1e-9, atol=0)


@pytest.mark.parametrize("name", ["vae", "dkf", "rvae"])
def test_the_estimated_past_changes_nothing_for_decoders_without_past_speech(name):
    model = _model(name)
    wave = _mixture(0.3, 5)[1]
    own = enhance(model, wave, iterations=2, e_steps=2, latent_e_step=True)
    estimate = enhance(model, wave, iterations=2, e_steps=2, latent_e_step=True, speech_past="estimate")
    np.testing.assert_array_equal(own.waveform, estimate.waveform)


@pytest.mark.parametrize("name", ["srnn", "light-dvae"])
def test_with_the_estimated_past_a_batch_gives_each_utterance_what_it_gets_alone(name):
    model = _model(name)
    lengths = (0.30, 0.42, 0.30) if name == "srnn" else (0.30, 0.30)
    waves = [_mixture(s, i)[1] for i, s in enumerate(lengths)]
    options = dict(iterations=3, e_steps=2, seed=7, latent_e_step=True, speech_past="estimate")
    together = enhance_batch(model, waves, **options)
    for i, wave in enumerate(waves):
        alone = enhance(model, wave, index=i, **options)
        torch.testing.assert_close(torch.as_tensor(together[i].waveform), torch.as_tensor(alone.waveform), **TIGHT)
    own = enhance(model, waves[0], **{**options, "speech_past": "own"})
    assert not np.allclose(own.waveform, together[0].waveform)


def test_the_speech_past_option(tmp_path, capsys):
    from lightdvae.enhance.set_outputs import LATER_OPTIONS

    settings = EnhanceSettings(latent_e_step=True, speech_past="estimate")
    assert settings_tag(settings_for(_model("srnn"), settings)).endswith("-latent-pastestimate")
    assert LATER_OPTIONS["speech_past"] == EnhanceSettings().speech_past == "own"
    assert EnhanceSettings(latent_e_step=np.bool_(True), speech_past="estimate").latent_e_step is True
    with pytest.raises(EnhanceError, match=r"speech_past='estimate' needs latent_e_step=True"):
        EnhanceSettings(speech_past="estimate")
    with pytest.raises(EnhanceError, match="speech_past must be one of 'own', 'estimate', got 'mixture'"):
        EnhanceSettings(latent_e_step=True, speech_past="mixture")
    with pytest.raises(ValueError, match="needs the latent E-step"):
        engine_for(_model("srnn"), 1, lr=0.1, speech_past="estimate")
    noisy = tmp_path / "noisy.wav"
    import soundfile as sf

    sf.write(noisy, _mixture(0.3, 1)[1], 16000)
    code = main(
        ["enhance", "pretrained:vae", str(noisy), "--out", str(tmp_path / "o.wav"), "--speech-past", "estimate"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "needs latent_e_step=True" in err[0] and not (tmp_path / "o.wav").exists()
