"""The noises the package generates, at 16 kHz and deterministic from a NumPy generator: no download.

Every generator returns a ``(samples,)`` float64 track with unit RMS (the mixing scales it to the SNR):

``white``       Gaussian white noise.
``pink``        white noise shaped to a 1/f power spectrum (flat below :data:`LOW_CUT` Hz, no DC).
``brown``       white noise shaped to 1/f^2 (Brownian / red noise), same low cut.
``ssn``         speech-shaped noise: white noise shaped to the long-term average spectrum of speech
                (:func:`long_term_spectrum` of the training split).
``babble``      the sum of several talkers' speech (:func:`babble`), each talker level-equalised.
``modulated``   pink noise under a slow sinusoidal envelope, 2-8 Hz (a syllable-rate flutter).
``engine``      a tonal, engine-like noise: a harmonic series on a low f0 (25-45 Hz) that drifts slowly,
                plus brown noise 20 dB below.

Shaping is done in one FFT over the whole track (exact spectrum, no filter design).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lightdvae.audio import N_FFT, SAMPLE_RATE

__all__ = [
    "GENERATED_NOISES",
    "LOW_CUT",
    "white",
    "pink",
    "brown",
    "speech_shaped",
    "babble",
    "modulated",
    "engine",
    "long_term_spectrum",
]

#: The generated noise types, in the order the default set uses them.
GENERATED_NOISES = ("white", "pink", "brown", "ssn", "babble", "modulated", "engine")
#: Hz below which the coloured noises are flat (keeps 1/f and 1/f^2 finite and free of a slow drift).
LOW_CUT = 20.0


def _unit_rms(x: np.ndarray) -> np.ndarray:
    rms = float(np.sqrt(np.mean(x * x))) if x.size else 0.0
    return x / rms if rms > 0 else x


def _shaped(rng: np.random.Generator, n: int, amplitude) -> np.ndarray:
    """White noise of ``n`` samples whose spectrum is multiplied by ``amplitude(freqs_hz)``; unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    gain = np.asarray(amplitude(freqs), dtype=np.float64)
    gain[0] = 0.0  # no DC
    return _unit_rms(np.fft.irfft(spectrum * gain, n))


def white(rng: np.random.Generator, n: int) -> np.ndarray:
    return _unit_rms(rng.standard_normal(n))


def pink(rng: np.random.Generator, n: int) -> np.ndarray:
    return _shaped(rng, n, lambda f: 1.0 / np.sqrt(np.maximum(f, LOW_CUT)))


def brown(rng: np.random.Generator, n: int) -> np.ndarray:
    return _shaped(rng, n, lambda f: 1.0 / np.maximum(f, LOW_CUT))


def long_term_spectrum(waves: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The long-term average power spectrum of ``waves`` (16 kHz): ``(freqs_hz, power)`` on the front end's
    1024-point grid, each file weighted by its length (Welch's method, Hann window, 50 % overlap)."""
    from scipy.signal import welch

    total, weight = np.zeros(N_FFT // 2 + 1), 0
    for wave in waves:
        if wave.size < N_FFT:
            continue
        freqs, psd = welch(np.asarray(wave, dtype=np.float64), fs=SAMPLE_RATE, nperseg=N_FFT)
        total += psd * wave.size
        weight += wave.size
    if weight == 0:
        raise ValueError("no speech file is long enough for a long-term spectrum")
    return np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE), total / weight


def speech_shaped(rng: np.random.Generator, n: int, ltas: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """White noise with the long-term spectrum ``ltas`` (from :func:`long_term_spectrum`)."""
    freqs, power = ltas
    return _shaped(rng, n, lambda f: np.sqrt(np.interp(f, freqs, power)))


def babble(rng: np.random.Generator, n: int, talkers: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """Several talkers speaking at once: for each talker, their utterances (each scaled to unit RMS, so no talker
    dominates) in a random order, repeated to ``n`` samples and started at a random point; the talkers summed."""
    out = np.zeros(n)
    for utterances in talkers:
        order = rng.permutation(len(utterances))
        stream = np.concatenate([_unit_rms(np.asarray(utterances[i], dtype=np.float64)) for i in order])
        start = int(rng.integers(stream.size))
        out += np.resize(np.roll(stream, -start), n)  # np.resize repeats a stream shorter than n
    return _unit_rms(out)


def modulated(rng: np.random.Generator, n: int) -> tuple[np.ndarray, dict]:
    """Pink noise times ``1 + 0.9 sin(2 pi f t + phi)`` with ``f`` drawn in 2-8 Hz; ``(track, parameters)``."""
    rate = float(rng.uniform(2.0, 8.0))
    phase = float(rng.uniform(0.0, 2.0 * np.pi))
    t = np.arange(n) / SAMPLE_RATE
    envelope = 1.0 + 0.9 * np.sin(2.0 * np.pi * rate * t + phase)
    return _unit_rms(pink(rng, n) * envelope), {"modulation_hz": round(rate, 3), "depth": 0.9}


def engine(rng: np.random.Generator, n: int, max_harmonics: int = 120) -> tuple[np.ndarray, dict]:
    """A harmonic series (amplitudes 1/k^0.7, random phases, up to 6 kHz) on an f0 of 25-45 Hz that drifts by a few
    per cent (a smoothed random walk plus a 0.1 Hz swell), with brown noise 20 dB below; ``(track, parameters)``."""
    f0 = float(rng.uniform(25.0, 45.0))
    control = rng.standard_normal(n // (SAMPLE_RATE // 4) + 2)  # 4 Hz control rate
    walk = np.cumsum(control) / np.sqrt(np.arange(1, control.size + 1))
    drift = np.interp(np.arange(n) / (SAMPLE_RATE // 4), np.arange(control.size), walk)
    t = np.arange(n) / SAMPLE_RATE
    f0_t = f0 * (1.0 + 0.03 * np.tanh(drift) + 0.02 * np.sin(2.0 * np.pi * 0.1 * t))
    phase = 2.0 * np.pi * np.cumsum(f0_t) / SAMPLE_RATE
    count = min(max_harmonics, int(6000.0 / (f0 * 1.06)))
    tone = np.zeros(n)
    for k, phi in zip(range(1, count + 1), rng.uniform(0.0, 2.0 * np.pi, count), strict=True):
        tone += np.sin(k * phase + phi) / k**0.7
    track = _unit_rms(tone) + 0.1 * brown(rng, n)
    return _unit_rms(track), {"f0_hz": round(f0, 2), "harmonics": count, "noise_db": -20.0}
