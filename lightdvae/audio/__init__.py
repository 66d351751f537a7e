"""The signal front end of the DVAE literature (SPEC section 2).

Everything that touches waveforms goes through here, so the whole package shares one protocol:

* 16 kHz mono.  Other rates are resampled with :func:`scipy.signal.resample_poly`; multi-channel
  files are mixed down to their mean.  Both are noted on the ``lightdvae.audio`` logger.
* Silence trimming at 30 dB below the utterance's loudest frame (the ``librosa.effects.trim(top_db=30)``
  rule: frame-wise RMS of 2048-sample frames every 512 samples, in dB relative to the largest), then
  peak normalisation ``x / max|x|``.
* STFT with a 1024-sample sine window ``w[n] = sin(pi (n + 0.5) / 1024)``, hop 256, n_fft 1024, giving
  513 frequency bins.  Frames are centred (the signal is zero-padded by 512 samples on both sides), so a
  signal of ``N`` samples has ``1 + N // 256`` frames and :func:`istft` gives it back exactly.
* Features are the power spectrogram ``|X|^2``.  Spectrograms use the layout of the models,
  ``(..., frames, 513)``: time before frequency.
* Resynthesis of a modelled power spectrogram reuses the phase of the original (:func:`resynthesize`);
  generation has no phase and uses Griffin-Lim (:func:`griffin_lim`, 100 iterations by default).

The torch functions accept any leading batch dimensions, run on the tensor's device (CPU or CUDA) and
keep its precision (float32 -> complex64, float64 -> complex128).  The NumPy functions work on one
utterance at a time: they are what the data pipeline runs once per file before caching.

Submodules (everything is importable from ``lightdvae.audio``):

* :mod:`~lightdvae.audio.protocol`: the protocol's constants, :class:`FrontEnd` (its settings),
  :class:`AudioInfo` and :class:`AudioError`.
* :mod:`~lightdvae.audio.io`: reading (:func:`read_audio`, :func:`load_audio`) and writing (:func:`save_audio`).
* :mod:`~lightdvae.audio.preprocessing`: mix-down, trimming, normalisation (:func:`preprocess`).
* :mod:`~lightdvae.audio.resampling`: :func:`resample`.
* :mod:`~lightdvae.audio.spectral`: :func:`stft`, :func:`istft`, :func:`power_spectrogram`, :func:`resynthesize`.
* :mod:`~lightdvae.audio.griffinlim`: :func:`griffin_lim`.
"""

from lightdvae.audio.griffinlim import griffin_lim
from lightdvae.audio.io import load_audio, read_audio, save_audio
from lightdvae.audio.preprocessing import peak_normalize, preprocess, to_mono, trim_silence
from lightdvae.audio.protocol import (
    AUDIO_EXTENSIONS,
    GRIFFIN_LIM_ITERS,
    HOP,
    N_FFT,
    N_FREQ,
    SAMPLE_RATE,
    SILENCE_PEAK,
    TRIM_DB,
    TRIM_FRAME,
    TRIM_HOP,
    WIN_LENGTH,
    AudioError,
    AudioInfo,
    FrontEnd,
)
from lightdvae.audio.resampling import resample
from lightdvae.audio.spectral import istft, num_frames, power_spectrogram, resynthesize, sine_window, stft

__all__ = [
    "SAMPLE_RATE",
    "N_FFT",
    "WIN_LENGTH",
    "HOP",
    "N_FREQ",
    "TRIM_DB",
    "TRIM_FRAME",
    "TRIM_HOP",
    "GRIFFIN_LIM_ITERS",
    "SILENCE_PEAK",
    "AUDIO_EXTENSIONS",
    "AudioError",
    "AudioInfo",
    "FrontEnd",
    "read_audio",
    "to_mono",
    "resample",
    "trim_silence",
    "peak_normalize",
    "preprocess",
    "load_audio",
    "save_audio",
    "sine_window",
    "num_frames",
    "stft",
    "istft",
    "power_spectrogram",
    "resynthesize",
    "griffin_lim",
]
