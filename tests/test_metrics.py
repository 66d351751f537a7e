"""Metrics of analysis-resynthesis (lightdvae.metrics) against hand-computed values, and their summary."""

import math
import shutil

import numpy as np
import pytest
import torch

from lightdvae import metrics as M

SR = 16000


def speech_like(seconds: float = 2.5, seed: int = 0) -> np.ndarray:
    """Voiced, syllable-modulated harmonics with pauses: enough speech structure for PESQ and ESTOI."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 110 + 20 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    x = sum(np.sin(k * phase) * np.exp(-k / 8) for k in range(1, 30))
    envelope = np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None) ** 0.5
    x = x * envelope + 0.003 * rng.standard_normal(t.size)
    return (0.9 * x / np.abs(x).max()).astype(np.float64)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """espeak-ng speech when espeak-ng is installed (the realistic case), else a speech-like signal."""
    if shutil.which("espeak-ng"):
        from lightdvae.audio import preprocess
        from lightdvae.data.builtin import synthesize

        wave, _, _ = synthesize("The birch canoe slid on the smooth planks of the old wooden pier.", "en-us+m1")
        return preprocess(wave, SR)[0].astype(np.float64)
    return speech_like()


def add_noise(x: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    n = np.random.default_rng(seed).standard_normal(x.size)
    n *= math.sqrt(np.mean(x**2) / 10 ** (snr_db / 10) / np.mean(n**2))
    return x + n


# ---- RMSE ----------------------------------------------------------------------------------------------------
def test_rmse_hand_values():
    # a = <y, x> / <y, y> = 1/2, a y = [.5, .5], error [-.5, .5] -> 0.5
    assert M.rmse([1.0, 0.0], [1.0, 1.0]) == pytest.approx(0.5, abs=1e-12)
    # estimate = 3 x: the least-squares gain undoes the scale exactly
    x = np.array([0.3, -1.0, 2.0, 0.5])
    assert M.rmse(x, 3 * x) == pytest.approx(0.0, abs=1e-12)
    # x = [1, 2], y = [2, 1]: a = 4/5, a y = [1.6, 0.8], error [0.6, -1.2] -> sqrt((0.36 + 1.44) / 2)
    assert M.rmse([1.0, 2.0], [2.0, 1.0]) == pytest.approx(math.sqrt(0.9), abs=1e-12)
    # an all-zero estimate: RMS of the reference
    assert M.rmse(x, np.zeros(4)) == pytest.approx(math.sqrt(np.mean(x**2)), abs=1e-12)


def test_rmse_is_invariant_to_the_estimate_scale():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal(1000), rng.standard_normal(1000)
    ref = M.rmse(x, y)
    for c in (1e-3, 0.5, 7.0, -2.0):
        assert M.rmse(x, c * y) == pytest.approx(ref, rel=1e-12)


# ---- SI-SDR --------------------------------------------------------------------------------------------------
def test_si_sdr_hand_values():
    # a = <x, y>/||x||^2 = 1: target [1, 0], noise [0, 1] -> 0 dB
    assert M.si_sdr([1.0, 0.0], [1.0, 1.0]) == pytest.approx(0.0, abs=1e-12)
    # y = [2, 1]: a = 2, target [2, 0], noise [0, 1] -> 10 log10(4)
    assert M.si_sdr([1.0, 0.0], [2.0, 1.0]) == pytest.approx(10 * math.log10(4.0), abs=1e-12)
    # x = [1, 1], y = [1, 0]: a = 1/2, target [.5, .5], noise [.5, -.5] -> 0 dB
    assert M.si_sdr([1.0, 1.0], [1.0, 0.0]) == pytest.approx(0.0, abs=1e-12)
    assert M.si_sdr([1.0, 2.0], [2.0, 4.0]) == math.inf
    assert math.isnan(M.si_sdr([1.0, 2.0], [0.0, 0.0]))
    assert math.isnan(M.si_sdr([0.0, 0.0], [1.0, 2.0]))


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 10.0, 30.0])
def test_si_sdr_of_x_plus_noise_is_the_snr(snr_db):
    rng = np.random.default_rng(2)
    x = speech_like(1.0)
    n = rng.standard_normal(x.size)
    n -= (n @ x) / (x @ x) * x  # orthogonal to x: then a = 1 and SI-SDR is exactly the SNR
    n *= math.sqrt((x @ x) / 10 ** (snr_db / 10) / (n @ n))
    value = M.si_sdr(x, x + n)
    print(f"SNR {snr_db} dB -> SI-SDR {value:.12f} dB")
    assert value == pytest.approx(snr_db, abs=1e-9)
    # with plain white noise (not orthogonalised) it is the SNR up to the noise's chance correlation with x
    assert M.si_sdr(x, add_noise(x, snr_db, seed=3)) == pytest.approx(snr_db, abs=0.2)


def test_si_sdr_is_scale_invariant():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal(2000), rng.standard_normal(2000) + np.linspace(0, 1, 2000)
    ref = M.si_sdr(x, y)
    for c in (1e-4, 0.3, 25.0, -1.0):
        assert M.si_sdr(x, c * y) == pytest.approx(ref, abs=1e-9)
        assert M.si_sdr(c * x, y) == pytest.approx(ref, abs=1e-9)


def test_metrics_accept_torch_and_reject_bad_shapes():
    x = speech_like(0.5)
    y = add_noise(x, 10)
    assert M.si_sdr(torch.from_numpy(x).float(), torch.from_numpy(y).float()) == pytest.approx(M.si_sdr(x, y), abs=1e-4)
    assert M.rmse(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(M.rmse(x, y), rel=1e-12)
    with pytest.raises(ValueError, match="same length"):
        M.si_sdr(x, y[:-1])
    with pytest.raises(ValueError, match="1-D"):
        M.rmse(np.zeros((2, 3)), np.zeros((2, 3)))


# ---- PESQ and ESTOI --------------------------------------------------------------------------------------------
def test_pesq_and_estoi_order_clean_light_and_heavy_noise(speech):
    scores = {}
    for name, y in (("clean", speech), ("30 dB", add_noise(speech, 30)), ("0 dB", add_noise(speech, 0))):
        r = M.compute_metrics(speech, y)
        scores[name] = r
        print(name, {k: round(r[k], 3) for k in M.COLUMNS}, r["errors"])
        assert r["errors"] == {}
    for m in ("pesq_wb", "pesq_nb", "pesq_nb_raw", "estoi", "si_sdr"):
        assert scores["clean"][m] > scores["30 dB"][m] > scores["0 dB"][m], m
    assert scores["clean"]["pesq_wb"] == pytest.approx(4.64, abs=0.01)  # P.862.2's ceiling for identical signals
    assert scores["clean"]["pesq_nb_raw"] == pytest.approx(4.5, abs=1e-3)  # P.862's ceiling
    assert scores["clean"]["estoi"] == pytest.approx(1.0, abs=1e-6)
    assert scores["0 dB"]["pesq_wb"] < 1.5 and scores["0 dB"]["estoi"] < 0.8


def test_pesq_failures_are_reported_not_raised(speech, monkeypatch):
    assert M.pesq(speech, np.zeros_like(speech)) == (pytest.approx(math.nan, nan_ok=True), "silent")
    assert M.pesq(np.zeros_like(speech), speech, "nb").error == "silent"
    short = speech[: int(0.2 * SR)]
    assert M.pesq(short, short).error == "too-short"
    bad = speech.copy()
    bad[10] = np.nan
    assert M.pesq(speech, bad).error == "non-finite"

    import pesq as lib

    def no_speech(*args, **kwargs):
        raise lib.NoUtterancesError(b"No utterances detected")

    def crash(*args, **kwargs):
        raise lib.PesqError(b"Unknown")

    monkeypatch.setattr(lib, "pesq", no_speech)
    assert M.pesq(speech, speech) == (pytest.approx(math.nan, nan_ok=True), "no-utterances")
    monkeypatch.setattr(lib, "pesq", crash)
    score = M.pesq(speech, speech, "nb")
    assert math.isnan(score.value) and score.error.startswith("pesq error") and not score.ok
    # and in compute_metrics the failure is one entry of "errors" while the other metrics are computed
    r = M.compute_metrics(speech, speech, ("si_sdr", "pesq_nb"))
    assert math.isnan(r["pesq_nb"]) and math.isnan(r["pesq_nb_raw"]) and r["si_sdr"] > 100
    assert set(r["errors"]) == {"pesq_nb", "pesq_nb_raw"}


def test_estoi_failures_are_reported_not_raised(speech):
    assert M.estoi(speech, np.zeros_like(speech)).error == "silent"
    short = speech[: int(0.2 * SR)]
    assert M.estoi(short, short).error == "too-short"  # pystoi warns and returns 1e-5: not a score


def test_compute_metrics_never_raises():
    r = M.compute_metrics(np.ones(100), np.ones(99))
    assert all(math.isnan(r[c]) for c in M.COLUMNS)
    assert set(r["errors"]) == set(M.COLUMNS) and "same length" in r["errors"]["rmse"]
    with pytest.raises(ValueError, match="unknown metric"):
        M.check_available(["rmse", "mos"])
    with pytest.raises(ValueError, match="mode"):
        M.pesq(np.ones(10), np.ones(10), "xb")


def test_pesq_nb_raw_inverts_the_p862_1_mapping():
    for raw in np.linspace(-0.5, 4.5, 21):
        lqo = 0.999 + 4.0 / (1.0 + math.exp(-1.4945 * raw + 4.6607))
        assert M.pesq_nb_raw(lqo) == pytest.approx(raw, abs=1e-9)
    assert math.isnan(M.pesq_nb_raw(math.nan)) and math.isnan(M.pesq_nb_raw(0.5))


# ---- summary ---------------------------------------------------------------------------------------------------
def test_summarize_t_interval_hand_values():
    s = M.summarize([1.0, 2.0, 3.0, 4.0, math.nan, math.inf])
    assert (s["n"], s["n_failed"]) == (4, 2)
    assert s["mean"] == pytest.approx(2.5) and s["median"] == pytest.approx(2.5)
    std = math.sqrt(5.0 / 3.0)  # sample std of 1..4
    half = 3.182446305284263 * std / 2.0  # t_{0.975, 3} * s / sqrt(4)
    assert s["std"] == pytest.approx(std, rel=1e-12)
    assert s["ci_half"] == pytest.approx(half, rel=1e-9)
    assert (s["ci_low"], s["ci_high"]) == (pytest.approx(2.5 - half), pytest.approx(2.5 + half))
    assert s["method"] == "t-interval" and s["level"] == 0.95
    one = M.summarize([3.0, math.nan])
    assert one["mean"] == 3.0 and math.isnan(one["ci_half"]) and one["n_failed"] == 1
    none = M.summarize([math.nan])
    assert none["n"] == 0 and math.isnan(none["mean"]) and math.isnan(none["median"])


def test_summarize_bootstrap_agrees_with_t_on_many_values():
    values = np.random.default_rng(5).normal(10.0, 2.0, 400)
    t = M.summarize(values)
    b = M.summarize(values, method="bootstrap", n_boot=4000, seed=1)
    assert b["method"].startswith("percentile bootstrap")
    assert b["ci_low"] < b["mean"] < b["ci_high"]
    assert b["ci_half"] == pytest.approx(t["ci_half"], rel=0.15)
    assert M.summarize(values, method="bootstrap", n_boot=4000, seed=1) == b  # seeded: reproducible
    with pytest.raises(ValueError):
        M.summarize(values, method="jackknife")


def test_a_crash_of_the_pesq_library_is_a_failed_score_not_a_dead_process(monkeypatch):
    """The pesq C library segfaults on some signals of tens of seconds; the call runs in a forked child, so the
    crash is reported as the file's failure reason and this process goes on."""
    import os
    import signal

    pesq_lib = pytest.importorskip("pesq")
    if not hasattr(os, "fork"):
        pytest.skip("no fork here: PESQ runs in-process")

    def segfault(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGSEGV)

    monkeypatch.setattr(pesq_lib, "pesq", segfault)
    x = np.sin(np.arange(16000) / 7.0)
    score = M.pesq(x, x + 0.01)
    assert math.isnan(score.value) and score.error == "pesq crashed (SIGSEGV) on this signal"
