"""The baselines VAE, DKF, RVAE (non-causal and causal) and SRNN: structure, vocabulary, sampling."""

import pytest
import torch

from lightdvae.models import build, model_class, names
from lightdvae.models.base import DVAEOutput, LossTerms
from lightdvae.models.dkf import DKF, DKFConfig
from lightdvae.models.layers import lstm_cell, lstm_step, lstm_zero_state
from lightdvae.models.rvae import RVAE, RVAEConfig
from lightdvae.models.srnn import SRNN
from lightdvae.models.vae import VAE

# SPEC section 4: the sizes of the published trained models.
PARAMS = {"vae": 138_273, "dkf": 516_641, "rvae": 1_026_849, "rvae-causal": 553_121, "srnn": 884_993}
BASELINES = list(PARAMS)
RECURRENT = ["dkf", "rvae", "rvae-causal", "srnn"]
F = 513


def _power(batch=2, frames=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.exp(2.0 * torch.randn(batch, frames, F, generator=g)) + 1e-6


def _model(name, seed=0, **config):
    torch.manual_seed(seed)
    return build(name, **config)


# ----------------------------------------------------------------------------- structure


@pytest.mark.parametrize("name", BASELINES)
def test_parameter_counts_equal_the_published_models(name):
    model = build(name)
    print(f"{name}: {model.num_parameters():,} parameters")
    assert model.num_parameters() == PARAMS[name]


@pytest.mark.parametrize(
    "name, cls", [("vae", VAE), ("dkf", DKF), ("rvae", RVAE), ("rvae-causal", RVAE), ("srnn", SRNN)]
)
def test_registry_builds_each_baseline(name, cls):
    assert name in names()
    assert model_class(name) is cls
    model = build(name.upper())  # names are case-insensitive
    assert isinstance(model, cls)
    assert isinstance(model.config, cls.config_class)
    assert model.config.z_dim == 16 and model.config.x_dim == F and model.config.activation == "tanh"
    assert model.config.__class__.from_dict(model.config.to_dict()) == model.config


def test_rvae_causal_flags():
    assert build("rvae").config.rnn_x_bidirectional and build("rvae").config.rnn_h_bidirectional
    causal = build("rvae-causal").config
    assert causal.causal and not causal.rnn_x_bidirectional and not causal.rnn_h_bidirectional


def test_published_layer_lists_are_config_fields():
    assert DKFConfig().decoder_dims == [32, 64, 128, 256]
    assert build("srnn").config.posterior_dims == [64, 32] and build("srnn").config.prior_dims == [64, 32]
    assert build("vae").config.encoder_dims == [128]


def test_unknown_model_name_lists_valid_names():
    with pytest.raises(ValueError, match="valid names: vae, dkf, rvae, rvae-causal, srnn"):
        build("vrnn")


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("dkf", {"rnn_dimm": 64}, "no option.*rnn_dimm.*valid options"),
        ("vae", {"z_dim": 0}, "z_dim must be a positive integer"),
        ("srnn", {"activation": "gelu"}, "unknown activation 'gelu'"),
        ("rvae", {"dropout": 1.5}, r"dropout must be in \[0, 1\)"),
        ("dkf", {"decoder_dims": [32, -1]}, "decoder_dims must hold positive integers"),
        ("srnn", {"rnn_h_layers": 0}, "rnn_h_layers must be a positive integer"),
        ("rvae-causal", {"rnn_x_bidirectional": True}, "causal=True needs rnn_x_bidirectional=False"),
        ("rvae", {"rnn_x_bidirectional": False, "rnn_h_bidirectional": False}, "use causal=True"),
        ("dkf", {"rnn_bidirectional": "yes"}, "must be True or False"),
    ],
)
def test_bad_options_raise_clear_errors(name, options, message):
    with pytest.raises(ValueError, match=message):
        build(name, **options)


@pytest.mark.parametrize("name", BASELINES)
def test_bad_inputs_raise_clear_errors(name):
    model = build(name)
    with pytest.raises(ValueError, match=r"\(batch, frames, 513\)"):
        model(torch.rand(2, F, 6))
    with pytest.raises(ValueError, match="past must be 'gen'"):
        model(_power(), past="teacher")
    with pytest.raises(ValueError, match="eps must be"):
        model(_power(), eps=torch.zeros(2, 5, 16))


# ----------------------------------------------------------------------------- forward and loss


@pytest.mark.parametrize("name", BASELINES)
def test_forward_shapes(name):
    model = _model(name)
    out = model(_power(2, 5))
    assert isinstance(out, DVAEOutput)
    assert out.logvar.shape == (2, 5, F)
    for t in (out.z, out.z_mean, out.z_logvar):
        assert t.shape == (2, 5, 16)
    if name in ("dkf", "srnn"):
        assert out.z_mean_p.shape == (2, 5, 16) and out.z_logvar_p.shape == (2, 5, 16)
    else:  # N(0, I)
        assert out.z_mean_p is None and out.z_logvar_p is None
    terms = model.loss(_power(2, 5), beta=1e-2, kl_warm=0.5)
    assert isinstance(terms, LossTerms)
    assert all(torch.isfinite(torch.tensor(v)) for v in terms.as_floats().values())


@pytest.mark.parametrize("name", BASELINES)
def test_loss_decreases_over_a_few_adam_steps(name):
    model = _model(name)
    power = _power(2, 6)
    eps = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(1))
    kwargs = {"ss_prob": 0.5, "generator": torch.Generator().manual_seed(2)} if name == "srnn" else {}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        if name == "srnn":
            kwargs["generator"].manual_seed(2)  # the same scheduled-sampling decisions at every step
        terms = model.loss(power, beta=1e-2, kl_warm=1.0, eps=eps, **kwargs)
        terms.loss.backward()
        opt.step()
        losses.append(terms.loss.item())
    print(name, [f"{v:.2f}" for v in losses])
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("name", ["vae", "dkf", "rvae", "rvae-causal"])
def test_gen_and_gt_resynthesis_agree_without_past_speech(name):
    model = _model(name).eval()
    assert not model.sees_past_speech
    power = _power(2, 7)
    gen, gt = model.resynthesize(power, past="gen"), model.resynthesize(power, past="gt")
    assert gen.shape == (2, 7, F) and (gen > 0).all()
    torch.testing.assert_close(gen, gt, rtol=0, atol=0)


def test_srnn_gen_and_gt_differ():
    model = _model("srnn").eval()
    assert model.sees_past_speech
    power = _power(2, 7)
    gen, gt = model.resynthesize(power, past="gen"), model.resynthesize(power, past="gt")
    assert gen.shape == gt.shape == (2, 7, F)
    # frame 0 sees s_0 = 0 in both modes; later frames differ
    torch.testing.assert_close(gen[:, 0], gt[:, 0])
    assert not torch.allclose(gen[:, 1:], gt[:, 1:])


# ----------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("name", BASELINES)
def test_eps_noise_determinism(name):
    model = _model(name)
    power = _power(2, 5)
    eps = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(3))
    a, b = model(power, eps=eps), model(power, eps=eps)
    torch.testing.assert_close(a.z, b.z, rtol=0, atol=0)
    torch.testing.assert_close(a.logvar, b.logvar, rtol=0, atol=0)
    # z = mean + exp(logvar / 2) * eps, step by step
    torch.testing.assert_close(a.z, a.z_mean + torch.exp(0.5 * a.z_logvar) * eps)
    # zero noise is the deterministic mode
    det, zero = model(power, sample=False), model(power, eps=torch.zeros_like(eps))
    torch.testing.assert_close(zero.z, det.z, rtol=0, atol=0)
    torch.testing.assert_close(zero.logvar, det.logvar, rtol=0, atol=0)
    other = model(power, eps=-eps)
    assert not torch.allclose(other.z, a.z)


@pytest.mark.parametrize("name", BASELINES)
def test_generator_reproducibility(name):
    model = _model(name)
    power = _power(2, 4)
    a = model(power, generator=torch.Generator().manual_seed(5))
    b = model(power, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a.z, b.z, rtol=0, atol=0)


@pytest.mark.parametrize("name", RECURRENT)
def test_posterior_loop_methods_take_eps(name):
    model = _model(name)
    power = _power(3, 5)
    eps = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(4))
    if name == "srnn":
        features = model.encode_speech(power, model.deterministic_h(power))
    else:
        features = model.encode_speech(power)
    z, mean, logvar = model.sample_posterior(features, eps=eps)
    torch.testing.assert_close(z, model(power, eps=eps).z)
    # the z feeding step t+1 is the sample of step t: other noise at step 0 changes later means
    eps2 = eps.clone()
    eps2[:, 0] += 1.0
    _, mean2, _ = model.sample_posterior(features, eps=eps2)
    torch.testing.assert_close(mean2[:, 0], mean[:, 0])
    assert not torch.allclose(mean2[:, 1:], mean[:, 1:])


@pytest.mark.parametrize("name", BASELINES)
def test_generate_shapes_finite_and_reproducible(name):
    model = _model(name).eval()
    out = model.generate(3, 7, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 7, F)
    assert torch.isfinite(out).all() and (out > 0).all()
    again = model.generate(3, 7, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, again, rtol=0, atol=0)
    cold = model.generate(2, 4, temperature=0.0)
    torch.testing.assert_close(cold, model.generate(2, 4, temperature=0.0), rtol=0, atol=0)


@pytest.mark.parametrize("name", BASELINES)
def test_sample_prior_eps_determinism(name):
    model = _model(name).eval()
    eps = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        a, b = model.sample_prior(2, 6, eps=eps), model.sample_prior(2, 6, eps=eps)
    a, b = (a[0], b[0]) if name == "srnn" else (a, b)
    assert a.shape == (2, 6, 16)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="eps must be"):
        model.sample_prior(2, 6, eps=eps[:, :5])


def test_vae_and_rvae_prior_is_standard_normal():
    for name in ("vae", "rvae"):
        model = _model(name)
        eps = torch.randn(2, 3, 16)
        torch.testing.assert_close(model.sample_prior(2, 3, eps=eps), eps)
        torch.testing.assert_close(model.sample_prior(2, 3, temperature=0.5, eps=eps), 0.5 * eps)


def test_dkf_generation_follows_the_gated_transition():
    model = _model("dkf")
    eps = torch.randn(2, 4, 16)
    z = model.sample_prior(2, 4, eps=eps)
    z_prev = torch.zeros(2, 16)
    for t in range(4):
        mean, logvar = model.transition(z_prev)
        torch.testing.assert_close(z[:, t], mean + torch.exp(0.5 * logvar) * eps[:, t])
        z_prev = z[:, t]


def test_srnn_generation_feeds_back_its_own_predictions():
    model = _model("srnn").eval()
    eps = torch.randn(2, 4, 16)
    with torch.no_grad():
        z, logvar = model.sample_prior(2, 4, eps=eps)
        state = lstm_zero_state(model.rnn_h, 2, z)
        s_prev, z_prev = torch.zeros(2, F), torch.zeros(2, 16)
        for t in range(4):
            h, state = model.h_cell(s_prev, state)
            mean, lv = model.prior(h, z_prev)
            torch.testing.assert_close(z[:, t], mean + torch.exp(0.5 * lv) * eps[:, t])
            torch.testing.assert_close(logvar[:, t], model.decode(h, z[:, t]))
            s_prev, z_prev = torch.exp(logvar[:, t]), z[:, t]


# ----------------------------------------------------------------------------- SRNN scheduled sampling


def test_srnn_ss_prob_extremes_match_gt_and_gen():
    model = _model("srnn").eval()
    power = _power(2, 6)
    with torch.no_grad():
        gt, gen = model(power, past="gt", sample=False), model(power, past="gen", sample=False)
        ss0, ss1 = model(power, sample=False, ss_prob=0.0), model(power, sample=False, ss_prob=1.0)
    for a, b in ((ss0, gt), (ss1, gen)):
        for field in ("logvar", "z_mean", "z_mean_p", "z_logvar_p"):
            torch.testing.assert_close(getattr(a, field), getattr(b, field), rtol=0, atol=0)
    assert gen.extra["use_own"].all() and "use_own" not in gt.extra


def test_srnn_scheduled_sampling_draws_one_decision_per_step():
    model = _model("srnn").eval()
    power = _power(3, 40)
    with torch.no_grad():
        out = model(power, sample=False, ss_prob=0.5, generator=torch.Generator().manual_seed(0))
        again = model(power, sample=False, ss_prob=0.5, generator=torch.Generator().manual_seed(0))
        gt = model(power, past="gt", sample=False)
        gen = model(power, past="gen", sample=False)
    use_own = out.extra["use_own"]
    assert use_own.shape == (40,) and use_own.dtype == torch.bool
    assert 0 < int(use_own.sum()) < 40  # both kinds of step (probability of failure 2^-39)
    torch.testing.assert_close(out.logvar, again.logvar, rtol=0, atol=0)
    assert torch.equal(use_own, again.extra["use_own"])
    # the first step that uses the true past decodes exactly as teacher forcing does
    first_gt = int((~use_own).nonzero()[0])
    if not use_own[:first_gt].any():
        torch.testing.assert_close(out.logvar[:, first_gt], gt.logvar[:, first_gt])
    # steps differ from GEN once a true-past step came before
    assert not torch.allclose(out.logvar, gen.logvar)


def test_srnn_scheduled_sampling_trains():
    model = _model("srnn")
    out = model(_power(2, 5), ss_prob=0.7, generator=torch.Generator().manual_seed(0))
    loss = model.loss(_power(2, 5), ss_prob=0.7, generator=torch.Generator().manual_seed(0)).loss
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert out.logvar.requires_grad


@pytest.mark.parametrize(
    "options, message",
    [({"past": "gen", "ss_prob": 0.5}, "needs past='gt'"), ({"ss_prob": 1.5}, r"probability in \[0, 1\]")],
)
def test_srnn_bad_ss_prob(options, message):
    with pytest.raises(ValueError, match=message):
        _model("srnn")(_power(), **options)


def test_srnn_prior_on_decoder_h_is_the_classic_parallel_srnn():
    model = _model("srnn", prior_on_own_past=False).eval()
    power = _power(2, 6)
    with torch.no_grad():
        out = model(power, past="gt", sample=False)
        h = model.deterministic_h(power)
        z_prev = torch.cat([torch.zeros(2, 1, 16), out.z[:, :-1]], dim=1)
        mean_p, _ = model.prior(h, z_prev)
        gen = model(power, past="gen", sample=False)
        own = _model("srnn", prior_on_own_past=True).eval()(power, past="gen", sample=False)
    torch.testing.assert_close(out.z_mean_p, mean_p)
    torch.testing.assert_close(out.logvar, model.decode(h, out.z))
    # in GEN both variants condition the prior on the same own-past h
    torch.testing.assert_close(gen.z_mean_p, own.z_mean_p)


# ----------------------------------------------------------------------------- building blocks and options


def test_lstm_step_is_the_documented_cell():
    lstm = torch.nn.LSTM(5, 7, num_layers=2)
    x = torch.randn(3, 5)
    state = (torch.randn(2, 3, 7), torch.randn(2, 3, 7))
    out, (h, c) = lstm_step(lstm, x, state)
    h0, c0 = lstm_cell(
        x, state[0][0], state[1][0], lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0
    )
    h1, c1 = lstm_cell(
        h0, state[0][1], state[1][1], lstm.weight_ih_l1, lstm.weight_hh_l1, lstm.bias_ih_l1, lstm.bias_hh_l1
    )
    torch.testing.assert_close(out, h1)
    torch.testing.assert_close(h, torch.stack([h0, h1]))
    torch.testing.assert_close(c, torch.stack([c0, c1]))


@pytest.mark.parametrize(
    "name, options",
    [
        ("dkf", {"rnn_bidirectional": True, "rnn_layers": 2, "z_to_g_dims": [], "activation": "relu"}),
        (
            "rvae",
            {
                "x_dims": [64],
                "rnn_x_layers": 2,
                "rnn_z_layers": 2,
                "posterior_dims": [32],
                "h_dims": [16],
                "decoder_dims": [64],
                "rnn_h_bidirectional": False,
            },
        ),
        (
            "srnn",
            {
                "h_dims": [],
                "g_dims": [],
                "rnn_h_layers": 2,
                "rnn_g_layers": 2,
                "posterior_dims": [],
                "prior_dims": [],
                "decoder_dims": [],
                "dropout": 0.1,
            },
        ),
        ("vae", {"encoder_dims": [64, 32], "decoder_dims": [], "z_dim": 4}),
    ],
)
def test_configurable_structures_run(name, options):
    model = _model(name, **options)
    out = model(_power(2, 4), past="gen")
    assert out.logvar.shape == (2, 4, F)
    model.loss(_power(2, 4)).loss.backward()
    assert model.generate(1, 3).shape == (1, 3, F)


def test_dkf_bidirectional_averages_three_terms():
    model = _model("dkf", rnn_bidirectional=True)
    power = _power(1, 3)
    emb = model.x_embed(power.transpose(0, 1))
    out, _ = model.rnn_x(emb)
    gx = (out[..., :128] + out[..., 128:]).transpose(0, 1)
    torch.testing.assert_close(model.encode_speech(power), gx)
    mean, _ = model.posterior_cell(gx[:, 0], torch.zeros(1, 16))
    hidden = model.posterior_mlp((model.z_to_g(torch.zeros(1, 16)) + gx[:, 0]) / 3)
    torch.testing.assert_close(mean, model.posterior_mean(hidden))


def test_rvae_config_round_trip_keeps_resolved_flags():
    cfg = RVAEConfig(causal=True)
    assert RVAEConfig.from_dict(cfg.to_dict()) == cfg
    assert RVAEConfig.from_dict(RVAEConfig().to_dict()).rnn_x_bidirectional is True
