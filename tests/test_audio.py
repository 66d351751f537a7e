"""The signal front end (lightdvae.audio): STFT protocol, exact reconstruction, loading, trimming, Griffin-Lim."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from lightdvae import audio as A


def si_sdr(ref: np.ndarray | torch.Tensor, est: np.ndarray | torch.Tensor) -> float:
    ref = np.asarray(ref, dtype=np.float64).reshape(-1)
    est = np.asarray(est, dtype=np.float64).reshape(-1)
    a = np.dot(est, ref) / np.dot(ref, ref)
    target = a * ref
    return 10 * math.log10(np.sum(target**2) / max(np.sum((est - target) ** 2), 1e-300))


def speechlike(seconds: float, sr: int = 16000, f0: float = 140.0, seed: int = 0) -> np.ndarray:
    """A voiced-like signal: harmonics with a wandering pitch, syllable-rate envelope and a little noise."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    pitch = f0 * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 20))
    env = 0.5 * (1 - np.cos(2 * np.pi * 3.0 * t)) + 0.05
    x = x * env + 0.01 * rng.standard_normal(n)
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Constants, window, STFT layout
# ----------------------------------------------------------------------------------------------------------------
def test_protocol_constants():
    assert (A.SAMPLE_RATE, A.N_FFT, A.WIN_LENGTH, A.HOP, A.N_FREQ) == (16000, 1024, 1024, 256, 513)
    assert A.TRIM_DB == 30.0 and A.GRIFFIN_LIM_ITERS == 100


def test_sine_window_formula_and_overlap():
    w = A.sine_window(dtype=torch.float64)
    n = torch.arange(1024, dtype=torch.float64)
    torch.testing.assert_close(w, torch.sin(math.pi * (n + 0.5) / 1024), rtol=0, atol=1e-15)
    # squared window overlap-adds to exactly 2 at hop 256 (what makes the inverse exact)
    ola = sum(w[k * 256 : (k + 1) * 256] ** 2 for k in range(4))
    torch.testing.assert_close(ola, torch.full_like(ola, 2.0), rtol=0, atol=1e-12)
    assert A.sine_window().dtype == torch.float32


@pytest.mark.parametrize("shape", [(16000,), (3, 4000), (2, 3, 2500)])
def test_stft_shape_dtype_layout(shape):
    x = torch.randn(shape)
    X = A.stft(x)
    frames = 1 + shape[-1] // 256
    assert X.shape == (*shape[:-1], frames, 513)
    assert X.dtype == torch.complex64 and X.is_contiguous()
    assert A.num_frames(shape[-1]) == frames
    assert A.stft(x.double()).dtype == torch.complex128
    # batch items are transformed independently
    flat = x.reshape(-1, shape[-1])
    torch.testing.assert_close(X.reshape(-1, frames, 513)[-1], A.stft(flat[-1]))


def test_stft_matches_direct_dft_of_centred_frames():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(3000)
    X = A.stft(torch.from_numpy(x)).numpy()
    w = np.sin(np.pi * (np.arange(1024) + 0.5) / 1024)
    padded = np.pad(x, (512, 512))  # zero padding, frame t centred on sample 256 t
    for t in (0, 1, 5, X.shape[0] - 1):
        frame = padded[t * 256 : t * 256 + 1024] * w
        np.testing.assert_allclose(X[t], np.fft.rfft(frame), rtol=1e-9, atol=1e-9)


def test_stft_accepts_numpy_and_rejects_complex():
    x = np.random.default_rng(0).standard_normal(2048).astype(np.float32)
    torch.testing.assert_close(A.stft(x), A.stft(torch.from_numpy(x)))
    with pytest.raises(TypeError):
        A.stft(torch.randn(100, dtype=torch.complex64))
    with pytest.raises(ValueError):
        A.istft(torch.zeros(4, 100, dtype=torch.complex64))


# ----------------------------------------------------------------------------------------------------------------
# Exact reconstruction
# ----------------------------------------------------------------------------------------------------------------
def test_istft_reconstructs_speech_exactly():
    x = torch.from_numpy(speechlike(3.3))
    y = A.istft(A.stft(x), length=x.shape[-1])
    assert y.shape == x.shape and y.dtype == torch.float32
    assert si_sdr(x, y) > 60.0
    xd = x.double()
    assert si_sdr(xd, A.istft(A.stft(xd), xd.shape[-1])) > 200.0


@pytest.mark.parametrize("n", [1, 2, 255, 256, 257, 1023, 1024, 1025, 5000])
def test_istft_exact_for_awkward_lengths(n):
    x = torch.randn(2, n, dtype=torch.float64)
    y = A.istft(A.stft(x), n)
    torch.testing.assert_close(y, x, rtol=0, atol=1e-10)


def test_istft_default_length_and_empty():
    X = A.stft(torch.randn(1000))
    assert A.istft(X).shape == ((X.shape[-2] - 1) * 256,)
    assert A.stft(torch.zeros(0)).shape == (1, 513)
    assert A.istft(A.stft(torch.zeros(3, 0)), 0).shape == (3, 0)


def test_power_spectrogram_and_resynthesis():
    x = torch.from_numpy(speechlike(1.5, seed=3))
    X = A.stft(x)
    P = A.power_spectrogram(x)
    assert P.dtype == torch.float32 and P.shape == X.shape
    torch.testing.assert_close(P, X.abs() ** 2, rtol=1e-5, atol=1e-6)
    # the true power with the original phase gives the signal back; 4x the power gives 2x the signal
    assert si_sdr(x, A.resynthesize(P, X, x.shape[-1])) > 60.0
    torch.testing.assert_close(A.resynthesize(4 * P, X, x.shape[-1]), 2 * x, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError):
        A.resynthesize(P[:-1], X)
    with pytest.raises(TypeError):
        A.resynthesize(P, P)


def test_stft_is_differentiable():
    x = torch.randn(2, 2000, dtype=torch.float64, requires_grad=True)
    A.power_spectrogram(x).sum().backward()
    # Parseval-like identity: d/dx sum |X|^2 is 2 * x * sum_t w^2 ... finite and non-zero
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------------------------
# Griffin-Lim
# ----------------------------------------------------------------------------------------------------------------
def spectral_convergence(power: torch.Tensor, wave: torch.Tensor) -> float:
    mag = power.sqrt()
    est = A.stft(wave).abs()
    return float(torch.linalg.vector_norm(est - mag) / torch.linalg.vector_norm(mag))


def test_griffin_lim_batched_converges_and_is_reproducible():
    x = torch.from_numpy(np.stack([speechlike(1.0, f0=f, seed=i) for i, f in enumerate((110.0, 210.0))]))
    P = A.power_spectrogram(x)
    g = torch.Generator().manual_seed(0)
    y0 = A.griffin_lim(P, n_iter=0, generator=g)
    y = A.griffin_lim(P, generator=torch.Generator().manual_seed(0), length=x.shape[-1])
    assert y.shape == x.shape and y.dtype == torch.float32
    sc0 = spectral_convergence(P[0], y0[0])
    for b in range(2):
        sc = spectral_convergence(P[b], y[b])
        assert sc < 0.25 and sc < 0.5 * sc0, (sc, sc0)
    y_again = A.griffin_lim(P, generator=torch.Generator().manual_seed(0), length=x.shape[-1])
    torch.testing.assert_close(y, y_again)
    # batch items are independent of each other
    y1 = A.griffin_lim(P[1:], n_iter=20, init="zeros", length=x.shape[-1])
    y_both = A.griffin_lim(P, n_iter=20, init="zeros", length=x.shape[-1])
    torch.testing.assert_close(y1[0], y_both[1], rtol=1e-4, atol=1e-5)


def test_griffin_lim_momentum_helps_and_validates():
    x = torch.from_numpy(speechlike(1.0, seed=5))
    P = A.power_spectrogram(x)
    plain = A.griffin_lim(P, 30, momentum=0.0, init="zeros", length=x.shape[-1])
    fast = A.griffin_lim(P, 30, momentum=0.99, init="zeros", length=x.shape[-1])
    assert spectral_convergence(P, fast) < spectral_convergence(P, plain)
    with pytest.raises(ValueError):
        A.griffin_lim(P, momentum=1.0)
    with pytest.raises(ValueError):
        A.griffin_lim(P, init="nope")
    with pytest.raises(TypeError):
        A.griffin_lim(A.stft(x))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_stft_istft_griffin_lim_on_cuda():
    x = torch.from_numpy(speechlike(2.0)).cuda()
    X = A.stft(x)
    assert X.device.type == "cuda"
    assert si_sdr(x.cpu(), A.istft(X, x.shape[-1]).cpu()) > 60.0
    torch.testing.assert_close(X.cpu(), A.stft(x.cpu()), rtol=1e-4, atol=1e-3)
    y = A.griffin_lim(A.power_spectrogram(x), 10)
    assert y.device.type == "cuda"


# ----------------------------------------------------------------------------------------------------------------
# Trimming
# ----------------------------------------------------------------------------------------------------------------
def trim_reference(y, top_db=30.0, frame_length=2048, hop_length=512):
    """The librosa.effects.trim rule written the slow, obvious way."""
    padded = np.pad(y.astype(np.float64), (frame_length // 2, frame_length // 2))
    n_frames = 1 + (len(padded) - frame_length) // hop_length
    ms = np.array([np.mean(padded[i * hop_length : i * hop_length + frame_length] ** 2) for i in range(n_frames)])
    db = 10 * np.log10(np.maximum(ms, 1e-10)) - 10 * np.log10(max(ms.max(), 1e-10))
    nz = np.flatnonzero(db > -top_db)
    return nz[0] * hop_length, min(len(y), (nz[-1] + 1) * hop_length)


@pytest.mark.parametrize("seed", range(4))
def test_trim_matches_rule(seed):
    rng = np.random.default_rng(seed)
    core = speechlike(rng.uniform(0.3, 1.5), seed=seed)
    lead, tail = rng.integers(0, 20000, size=2)
    y = np.concatenate([1e-4 * rng.standard_normal(lead), core, 1e-4 * rng.standard_normal(tail)]).astype(np.float32)
    trimmed, (start, end) = A.trim_silence(y)
    assert (start, end) == trim_reference(y)
    assert np.array_equal(trimmed, y[start:end])
    # the speech is kept, the silence (up to one trimming hop on each side) goes
    assert start <= lead < start + 2048 and end - 2048 <= lead + len(core) <= end


def test_trim_edge_cases():
    assert A.trim_silence(np.zeros(0, np.float32))[1] == (0, 0)
    z = np.zeros(5000, np.float32)
    assert A.trim_silence(z)[1] == (0, 5000)  # librosa keeps an all-zero signal whole
    short = np.ones(100, np.float32)
    assert A.trim_silence(short)[1] == (0, 100)
    with pytest.raises(ValueError):
        A.trim_silence(np.zeros((2, 100)))


# ----------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------
def test_load_audio_wav_and_flac_normalised(tmp_path):
    y = speechlike(1.0) * 0.3
    y = np.concatenate([np.zeros(8000, np.float32), y, np.zeros(8000, np.float32)])
    for ext in ("wav", "flac"):
        p = tmp_path / f"a.{ext}"
        sf.write(p, y, 16000, subtype="PCM_16")
        wave, info = A.load_audio(p, return_info=True)
        assert wave.dtype == np.float32 and wave.ndim == 1
        assert np.abs(wave).max() == pytest.approx(1.0)
        assert 16000 <= len(wave) <= 16000 + 2 * 2048  # silence trimmed (to within a trimming frame)
        assert not info.resampled and not info.mixed_down and info.trim[0] >= 8000 - 2048


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
def test_load_audio_resamples_and_keeps_pitch(tmp_path, sr, caplog):
    t = np.arange(int(1.0 * sr)) / sr
    y = (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    p = tmp_path / "tone.wav"
    sf.write(p, y, sr)
    with caplog.at_level(logging.INFO, logger="lightdvae.audio"):
        wave, info = A.load_audio(p, return_info=True)
    assert info.resampled and info.orig_sample_rate == sr
    assert abs(len(wave) - 16000) <= 2
    spectrum = np.abs(np.fft.rfft(wave))
    assert np.argmax(spectrum) * 16000 / len(wave) == pytest.approx(440.0, abs=2.0)
    assert any("resampled" in r.getMessage() and str(sr) in r.getMessage() for r in caplog.records)


def test_load_audio_mixes_stereo_down(tmp_path, caplog):
    left = speechlike(0.5, seed=1)
    right = speechlike(0.5, seed=2)
    p = tmp_path / "stereo.wav"
    sf.write(p, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    with caplog.at_level(logging.INFO, logger="lightdvae.audio"):
        wave, info = A.load_audio(p, return_info=True)
    assert info.mixed_down and info.channels == 2
    mono = (left + right) / 2
    expected = A.peak_normalize(A.trim_silence(mono)[0])
    np.testing.assert_allclose(wave, expected, atol=1e-6)
    assert any("mixed 2 channels" in r.getMessage() for r in caplog.records)


def test_frontend_settings_change_trim_and_normalisation(tmp_path):
    y = np.concatenate([np.zeros(16000, np.float32), 0.25 * speechlike(0.5)])
    p = tmp_path / "x.wav"
    sf.write(p, y, 16000, subtype="FLOAT")
    raw = A.load_audio(p, A.FrontEnd(trim_db=None, normalize=False))
    np.testing.assert_allclose(raw, y, atol=1e-7)
    with pytest.raises(ValueError, match="fixed to the protocol"):
        A.FrontEnd(hop=128)


def test_bad_files_raise_audio_error(tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEgarbage" + bytes(range(256)))
    with pytest.raises(A.AudioError) as e:
        A.load_audio(corrupt)
    assert e.value.reason == "unreadable" and "corrupt.wav" in str(e.value)

    with pytest.raises(A.AudioError) as e:
        A.load_audio(tmp_path / "nope.wav")
    assert e.value.reason == "unreadable"

    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    with pytest.raises(A.AudioError) as e:
        A.load_audio(empty)
    assert e.value.reason == "empty"

    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(16000, np.float32), 16000)
    with pytest.raises(A.AudioError) as e:
        A.load_audio(silent)
    assert e.value.reason == "silent"

    nan = tmp_path / "nan.wav"
    y = speechlike(0.2)
    y[100] = np.nan
    sf.write(nan, y, 16000, subtype="FLOAT")
    with pytest.raises(A.AudioError) as e:
        A.load_audio(nan)
    assert e.value.reason == "non-finite"


def test_save_audio_roundtrip_atomic(tmp_path):
    y = speechlike(0.3)
    p = A.save_audio(tmp_path / "sub" / "out.wav", torch.from_numpy(y))
    back, sr = sf.read(p, dtype="float32")
    assert sr == 16000 and np.abs(back - y).max() < 1e-4
    assert [q.name for q in p.parent.iterdir()] == ["out.wav"]
