"""FDSD (lightdvae.fdsd, ``lightdvae fdsd``): the Fréchet distance, the DS2-style feature network, the extractor
registry, the shipped weights and the command line.

Tests that synthesise speech skip when espeak-ng is not installed; the ones that use the shipped network skip
when its weights file is missing from the checkout.
"""

import json
import shutil
import sys
import types

import numpy as np
import pytest
import soundfile as sf
import torch

from lightdvae.cli import main as cli_main
from lightdvae.fdsd import (
    DeepSpeech2,
    DS2Config,
    DS2Extractor,
    as_extractor,
    builtin_weights_path,
    extract_features,
    fdsd,
    fdsd_floor,
    fdsd_from_features,
    frechet_distance,
    frechet_distance_features,
    gaussian_stats,
    get_extractor,
    list_extractors,
    load_weights,
    register_extractor,
    save_weights,
    unregister_extractor,
)
from lightdvae.fdsd.network import (
    edit_distance,
    greedy_decode,
    normalize_phoneme,
    phoneme_error_rate,
    phoneme_inventory,
    phoneme_sequence,
)

HAVE_ESPEAK = shutil.which("espeak-ng") is not None
HAVE_WEIGHTS = builtin_weights_path().is_file()
needs_espeak = pytest.mark.skipif(not HAVE_ESPEAK, reason="espeak-ng is not installed (apt-get install espeak-ng)")
needs_weights = pytest.mark.skipif(not HAVE_WEIGHTS, reason=f"shipped FDSD weights {builtin_weights_path()} missing")

SR = 16000
PHONES = ["@", "a", "b", "d", "i:", "k", "n", "s", "t"]
SENTENCES = [
    "The quiet river carried small boats past the old mill.",
    "Please bring the blue folder to the meeting tomorrow.",
    "A warm wind moved slowly across the empty field.",
    "Seven children painted the fence before lunch.",
    "She opened the window and listened to the rain.",
    "Our train left the station a little after nine.",
]
VOICES = ["en-us+m3", "en+f2", "en-gb-scotland+m1", "en-029+f4", "en-us+f3", "en+m5"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These networks are tiny: one thread is faster than two, and much faster on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _voiced(seconds: float, f0: float, seed: int) -> np.ndarray:
    """A crude vowel-like signal: harmonics of a gliding f0 under a syllable-rate envelope, plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t))) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 20)) * (0.6 - 0.4 * np.cos(2 * np.pi * 4 * t))
    return (0.5 * x / np.abs(x).max() + 1e-3 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def speech():
    """Six short utterances: espeak-ng speech when available (distinct voices and sentences), else synthetic."""
    if not HAVE_ESPEAK:
        return [_voiced(1.2 + 0.2 * i, 100 + 25 * i, i) for i in range(6)]
    from lightdvae.audio import preprocess
    from lightdvae.data.builtin import synthesize

    out = []
    for text, voice in zip(SENTENCES, VOICES, strict=True):
        wave, _, _ = synthesize(text, voice)
        out.append(preprocess(wave, SR)[0])
    return out


def _tiny_config(**kw) -> DS2Config:
    base = dict(phonemes=list(PHONES), rnn_hidden=24, rnn_layers=2, fc_dim=32, conv_channels=(4, 4), dropout=0.0)
    return DS2Config(**{**base, **kw})


# ----------------------------------------------------------------------------------------------------------------
# Fréchet distance
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_frechet_zero_for_identical_sets(method):
    x = np.random.default_rng(0).standard_normal((40, 12))
    assert frechet_distance_features(x, x, method=method) == pytest.approx(0.0, abs=1e-9)
    few = x[:5]  # singular covariance (5 points in 12 dimensions)
    assert frechet_distance_features(few, few, method="eigh") == pytest.approx(0.0, abs=1e-9)


def test_frechet_symmetric_and_nonnegative():
    rng = np.random.default_rng(1)
    for n, d in ((30, 6), (6, 20), (50, 50)):
        a = rng.standard_normal((n, d))
        b = 0.7 * rng.standard_normal((n, d)) + 0.3
        ab, ba = frechet_distance_features(a, b), frechet_distance_features(b, a)
        assert ab == ba and ab > 0
        assert frechet_distance_features(a, a + 1e-12) >= 0.0


def test_frechet_matches_closed_forms():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9.0 + 1.0)
    # Commuting covariances (shared eigenvectors): ||dmu||^2 + sum (sqrt(a) - sqrt(b))^2
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.standard_normal((7, 7)))
    a, b = rng.uniform(0.1, 3.0, 7), rng.uniform(0.1, 3.0, 7)
    mu1, mu2 = rng.standard_normal(7), rng.standard_normal(7)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    for method in ("eigh", "sqrtm"):
        assert frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(expected, rel=1e-9)
    # Scaled covariance: FD(N(0, S), N(0, c^2 S)) = (1 - c)^2 Tr(S); and a rank-deficient S
    m = rng.standard_normal((7, 3))
    s = m @ m.T
    # (sqrt of round-off-sized eigenvalues ~1e-16 adds ~1e-8 per zero eigenvalue: tolerance 1e-6)
    assert frechet_distance(np.zeros(7), s, np.zeros(7), 4.0 * s) == pytest.approx(np.trace(s), rel=1e-6)
    # Non-commuting covariances: the two numerical routes agree
    m2 = rng.standard_normal((7, 7))
    s3 = m2 @ m2.T + 0.1 * np.eye(7)
    assert frechet_distance(mu1, s1, mu2, s3, method="eigh") == pytest.approx(
        frechet_distance(mu1, s1, mu2, s3, method="sqrtm"), rel=1e-8
    )


def test_frechet_of_samples_approaches_the_gaussians_distance():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((20000, 3))
    b = 2.0 * rng.standard_normal((20000, 3)) + np.array([1.0, 0.0, 0.0])
    mu, cov = gaussian_stats(b)
    assert cov.shape == (3, 3) and mu.shape == (3,)
    assert frechet_distance_features(a, b) == pytest.approx(1.0 + 3 * (2.0 - 1.0) ** 2, rel=0.03)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_stats(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="NaN"):
        gaussian_stats(np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="method"):
        frechet_distance([0.0], [[1.0]], [0.0], [[1.0]], method="nope")
    with pytest.raises(ValueError, match="larger than"):
        fdsd_from_features(np.zeros((5, 2)), np.zeros((9, 2)), sample_size=6)


def test_fdsd_draws_equal_counts_and_seed():
    rng = np.random.default_rng(4)
    real, fake = rng.standard_normal((30, 4)), rng.standard_normal((50, 4)) + 0.5
    r1 = fdsd_from_features(real, fake, draws=6, seed=7, features="test")
    r2 = fdsd_from_features(real, fake, draws=6, seed=7, features="test")
    assert r1.values == r2.values and r1.draws == 6 and r1.sample_size == 30
    assert r1.mean == pytest.approx(np.mean(r1.values)) and r1.std > 0
    assert "±" in str(r1) and "test" in str(r1) and r1.to_dict()["draws"] == 6
    same = fdsd_from_features(real, real[::-1], draws=3)
    assert same.std == 0.0 and same.notes  # every draw uses both whole sets


# ----------------------------------------------------------------------------------------------------------------
# Phonemes, decoding, PER
# ----------------------------------------------------------------------------------------------------------------
def test_phoneme_normalisation_and_inventory():
    assert normalize_phoneme("'aI") == "aI" and normalize_phoneme(",O2") == "O"
    assert normalize_phoneme("@2") == "@" and normalize_phoneme("3") == "3" and normalize_phoneme("3:") == "3:"
    assert normalize_phoneme("_:") is None and normalize_phoneme(";") is None
    rows = [{"phoneme_tokens": [["D", "@2"], ["k", "'0", "n"]]}, {"phoneme_tokens": [["b", "l", "'u:", "_:"]]}]
    assert phoneme_sequence(rows[1]["phoneme_tokens"]) == ["b", "l", "u:"]
    assert phoneme_inventory(rows) == sorted({"D", "@", "k", "0", "n", "b", "l", "u:"})


def test_greedy_decode_and_per():
    # frames: a a blank a b b blank -> [a, a, b]
    seq = torch.tensor([1, 1, 0, 1, 2, 2, 0, 3])
    logits = torch.nn.functional.one_hot(seq, 4).float()[None]
    assert greedy_decode(logits, torch.tensor([7])) == [[1, 1, 2]]
    assert edit_distance("kitten", "sitting") == 3 and edit_distance([], [1, 2]) == 2
    assert phoneme_error_rate([[1, 2, 3], [4]], [[1, 2], [4, 5]]) == pytest.approx(2 / 4)


# ----------------------------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------------------------
def test_network_shapes_and_padding_invariance():
    torch.manual_seed(0)
    model = DeepSpeech2(_tiny_config()).eval()
    waves = torch.randn(3, 16000) * 0.1
    lengths = torch.tensor([16000, 11000, 4001])
    log_probs, out_len = model(waves, lengths)
    frames = 1 + lengths // 160
    assert log_probs.shape == (3, int(model.output_lengths(frames).max()), 1 + len(PHONES))
    assert out_len.tolist() == [(int(f) + 2) // 3 for f in frames]  # ceil(frames / 3)
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(()), atol=1e-5)
    emb = model.embed(waves, lengths)
    assert emb.shape == (3, 32) and model.embed(waves, lengths, layer="rnn").shape == (3, 48)
    with torch.no_grad():
        alone = torch.cat([model.embed(waves[i : i + 1, : int(n)]) for i, n in enumerate(lengths)])
    torch.testing.assert_close(emb.detach(), alone, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="layer"):
        model.embed(waves, layer="nope")


def test_ctc_training_step_decreases_loss():
    torch.manual_seed(1)
    model = DeepSpeech2(_tiny_config())
    model.train()
    waves = torch.randn(4, 8000) * 0.2
    targets = torch.randint(1, 1 + len(PHONES), (4, 6))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ctc = torch.nn.CTCLoss(zero_infinity=True)
    losses = []
    for _ in range(25):
        log_probs, out_len = model(waves)
        loss = ctc(log_probs.transpose(0, 1), targets, out_len, torch.full((4,), 6))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    print("CTC losses", [round(x, 3) for x in losses[::6]])
    assert losses[-1] < 0.6 * losses[0]


def test_weights_round_trip(tmp_path):
    torch.manual_seed(2)
    model = DeepSpeech2(_tiny_config()).eval()
    model.frontend.set_normalization(torch.full((64,), -3.0), torch.full((64,), 2.0))
    path = save_weights(model, tmp_path / "w.pt", {"name": "tiny", "description": "tiny: test net"})
    loaded, meta = load_weights(path)
    assert meta["name"] == "tiny" and loaded.config == model.config and not loaded.training
    waves = torch.randn(2, 6000) * 0.1
    # float16 storage: close, not equal
    torch.testing.assert_close(loaded.embed(waves).detach(), model.embed(waves).detach(), rtol=2e-2, atol=2e-2)
    (tmp_path / "bad.pt").write_bytes(b"not a weights file")
    with pytest.raises(Exception):  # noqa: B017 - torch's unpickling error type varies by version
        load_weights(tmp_path / "bad.pt")


# ----------------------------------------------------------------------------------------------------------------
# Registry and extraction
# ----------------------------------------------------------------------------------------------------------------
def test_registry_custom_extractors(tmp_path, monkeypatch):
    def mean_energy(waves, lengths=None):
        return torch.stack([waves.pow(2).mean(1), waves.abs().amax(1)], 1)

    register_extractor("toy-energy", lambda: as_extractor(mean_energy, "toy-energy", "toy: energy and peak"))
    try:
        assert "toy-energy" in list_extractors() and "ds2-builtin" in list_extractors()
        ext = get_extractor("toy-energy")
        assert ext.name == "toy-energy" and ext.description == "toy: energy and peak"
        with pytest.raises(ValueError, match="already registered"):
            register_extractor("toy-energy", lambda: ext)
    finally:
        unregister_extractor("toy-energy")
    with pytest.raises(KeyError, match="ds2-builtin"):
        get_extractor("toy-energy")

    # A function without `lengths` is called one utterance at a time, unpadded.
    seen = []
    ext = as_extractor(lambda w: (seen.append(w.shape[-1]), w.mean(1, keepdim=True))[1], "len-free")
    feats = extract_features(ext, [np.ones(100), np.ones(300), np.ones(200)], batch_size=8)
    assert feats.shape == (3, 1) and sorted(seen) == [100, 200, 300]

    # ds2:FILE and module:factory specs
    torch.manual_seed(3)
    path = save_weights(DeepSpeech2(_tiny_config()), tmp_path / "net.pt", {"name": "tinynet"})
    ds2 = get_extractor(f"ds2:{path}")
    assert isinstance(ds2, DS2Extractor) and ds2.name == "ds2:net.pt"
    mod = types.ModuleType("fdsd_test_plugin")
    mod.make = lambda device="cpu": DS2Extractor.from_file(path, "plugin-net", device=device)
    monkeypatch.setitem(sys.modules, "fdsd_test_plugin", mod)
    assert get_extractor("fdsd_test_plugin:make", device="cpu").name == "plugin-net"


def test_extract_features_batched_equals_single():
    torch.manual_seed(4)
    ext = DS2Extractor(DeepSpeech2(_tiny_config()), "tiny")
    rng = np.random.default_rng(5)
    waves = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (5000, 12000, 3000, 9000)]
    batched = extract_features(ext, waves, batch_size=4)
    single = extract_features(ext, waves, batch_size=1)
    assert batched.shape == (4, 32)
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# The shipped network
# ----------------------------------------------------------------------------------------------------------------
@needs_weights
def test_shipped_weights_metadata_and_size():
    path = builtin_weights_path()
    assert path.stat().st_size < 3_000_000
    meta = json.loads(path.with_suffix(".json").read_text())
    for key in ("command", "corpus", "epochs", "val_ctc_loss", "val_per", "test_per", "phonemes"):
        assert key in meta, key
    assert meta["command"].startswith("lightdvae fdsd train")
    ext = get_extractor("ds2-builtin")
    assert ext.name == "ds2-builtin" and "DeepSpeech2" in ext.description and ext.dim == 256


@needs_weights
@needs_espeak
def test_shipped_weights_recognise_builtin_like_speech():
    from lightdvae.audio import preprocess
    from lightdvae.data.builtin import synthesize

    model, meta = load_weights(builtin_weights_path())
    index = {p: i + 1 for i, p in enumerate(model.config.phonemes)}
    hyps, refs = [], []
    for text, voice in zip(SENTENCES[:3], ["en-us+m3", "en+f2", "en-gb-x-rp+m2"], strict=True):
        wave, _, tokens = synthesize(text, voice, speed=165)
        wave = preprocess(wave, SR)[0]
        log_probs, out_len = model(torch.from_numpy(wave)[None])
        hyps += greedy_decode(log_probs, out_len)
        refs.append([index.get(p, -1) for p in phoneme_sequence(tokens)])
    per = phoneme_error_rate(hyps, refs)
    print(f"PER on 3 new sentences: {per:.3f} (training record: val {meta['val_per']}, test {meta['test_per']})")
    assert per < 0.5


@needs_weights
def test_fdsd_grows_with_noise(speech):
    ext = get_extractor("ds2-builtin")
    clean = extract_features(ext, speech)
    rng = np.random.default_rng(6)
    values = []
    for snr_db in (40, 20, 10, 0):
        noisy = []
        for w in speech:
            sigma = np.sqrt(np.mean(w**2) / 10 ** (snr_db / 10))
            noisy.append((w + sigma * rng.standard_normal(w.size)).astype(np.float32))
        values.append(frechet_distance_features(clean, extract_features(ext, noisy)))
    print("FDSD vs SNR 40/20/10/0 dB:", [round(v, 2) for v in values])
    assert all(a < b for a, b in zip(values, values[1:], strict=False)), values
    assert frechet_distance_features(clean, clean) == pytest.approx(0.0, abs=1e-9)


@needs_weights
def test_fdsd_and_floors_on_waveforms(speech):
    res = fdsd(speech, speech[::-1], draws=2, seed=0)
    assert res.mean == pytest.approx(0.0, abs=1e-9) and res.features == "ds2-builtin"
    floors = fdsd_floor(speech, draws=3, seed=0, griffin_lim_iters=8)
    assert set(floors) == {"halves", "griffin_lim"}
    assert floors["halves"].sample_size == 3 and floors["griffin_lim"].kind == "real-vs-griffin-lim"
    assert all(v >= 0 for r in floors.values() for v in r.values)


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------
@needs_weights
def test_cli_score_two_folders(tmp_path, speech, capsys):
    real, fake = tmp_path / "real", tmp_path / "fake"
    real.mkdir()
    fake.mkdir()
    rng = np.random.default_rng(7)
    for i, w in enumerate(speech):
        sf.write(real / f"r{i}.wav", w * 0.9, SR, subtype="PCM_16")
        noisy = w + 0.05 * rng.standard_normal(w.size)
        sf.write(fake / f"f{i}.wav", 0.9 * noisy / np.abs(noisy).max(), SR, subtype="PCM_16")
    assert cli_main(["fdsd", "score", str(real), str(fake), "--draws", "3", "--sample-size", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fdsd"]["features"] == "ds2-builtin" and out["fdsd"]["sample_size"] == 5
    assert len(out["fdsd"]["values"]) == 3 and out["fdsd"]["mean"] > 0
    assert cli_main(["fdsd", "score", str(real), str(fake), "--draws", "2", "--floor", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)  # score and floors at one sample size: half the real folder
    assert out["fdsd"]["sample_size"] == out["floor_halves"]["sample_size"] == 3
    assert out["floor_griffin_lim"]["kind"] == "real-vs-griffin-lim"
    assert cli_main(["fdsd", "score", str(real), str(real), "--draws", "1"]) == 0
    text = capsys.readouterr().out
    assert "FDSD  0.000 ± 0.000" in text and "features:" in text
    assert cli_main(["fdsd", "score", str(real), str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli_main(["fdsd", "score", str(real), str(fake), "--features", "nope"]) == 2
    assert "unknown feature network" in capsys.readouterr().err
    assert cli_main(["fdsd", "list"]) == 0
    assert "ds2-builtin" in capsys.readouterr().out
