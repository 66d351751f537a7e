"""The signal front end of the DVAE literature (SPEC section 2), in one module.

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
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger("lightdvae.audio")

# ----------------------------------------------------------------------------------------------------------------
# The protocol's constants: the only place they are written down.
# ----------------------------------------------------------------------------------------------------------------
SAMPLE_RATE = 16000  #: Hz; every waveform in the package is at this rate.
N_FFT = 1024  #: FFT size = window length (64 ms at 16 kHz).
WIN_LENGTH = N_FFT  #: window length in samples.
HOP = 256  #: hop in samples (16 ms, 25 % of the window).
N_FREQ = N_FFT // 2 + 1  #: 513 frequency bins.
TRIM_DB = 30.0  #: silence threshold below the loudest frame, in dB.
TRIM_FRAME = 2048  #: frame length of the trimming RMS (librosa's default).
TRIM_HOP = 512  #: hop of the trimming RMS (librosa's default).
GRIFFIN_LIM_ITERS = 100  #: default number of Griffin-Lim iterations.
SILENCE_PEAK = 1e-4  #: a file whose peak |x| is below this (-80 dBFS) counts as all-silent.
AUDIO_EXTENSIONS = (".wav", ".flac")  #: what corpus discovery picks up.

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


class AudioError(Exception):
    """A file that cannot be used as speech: unreadable, empty, non-finite or all-silent.

    ``reason`` is a short category (``"unreadable"``, ``"empty"``, ``"non-finite"``, ``"silent"``) that the
    data pipeline counts in its warning summary; ``str(exc)`` names the file and says what is wrong.
    """

    def __init__(self, path: str | os.PathLike | None, reason: str, detail: str):
        self.path = None if path is None else str(path)
        self.reason = reason
        self.detail = detail
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{where}{detail}")


@dataclass(frozen=True)
class FrontEnd:
    """The settings of the front end; the spectrogram cache is keyed by them.

    The defaults are the protocol of SPEC section 2; change them only for experiments (a cache built with
    other settings lives in another folder, so changing them never reads stale spectrograms).
    """

    sample_rate: int = SAMPLE_RATE
    n_fft: int = N_FFT
    hop: int = HOP
    window: str = "sine"
    center: bool = True
    trim_db: float | None = TRIM_DB  #: None: no trimming.
    trim_frame: int = TRIM_FRAME
    trim_hop: int = TRIM_HOP
    normalize: bool = True
    version: int = 1  #: bumped when the processing changes in a way the other fields do not show.

    def __post_init__(self):
        if (self.sample_rate, self.n_fft, self.hop, self.window, self.center) != (
            SAMPLE_RATE,
            N_FFT,
            HOP,
            "sine",
            True,
        ):
            raise ValueError(
                "lightdvae's STFT is fixed to the protocol (16 kHz, sine window, n_fft 1024, hop 256, centred); "
                f"got sample_rate={self.sample_rate}, n_fft={self.n_fft}, hop={self.hop}, window={self.window!r}, "
                f"center={self.center}. Only trim_db, trim_frame, trim_hop and normalize may change."
            )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AudioInfo:
    """What :func:`load_audio` did to a file."""

    path: str | None
    orig_sample_rate: int
    channels: int
    orig_samples: int  #: samples per channel in the file.
    trim: tuple[int, int]  #: kept region [start, end) in samples at 16 kHz, before normalisation.
    peak: float  #: max |x| of the trimmed signal before normalisation.
    samples: int  #: length of the returned waveform.

    @property
    def resampled(self) -> bool:
        return self.orig_sample_rate != SAMPLE_RATE

    @property
    def mixed_down(self) -> bool:
        return self.channels > 1


# ----------------------------------------------------------------------------------------------------------------
# Waveform loading and preprocessing (NumPy, one utterance at a time)
# ----------------------------------------------------------------------------------------------------------------
def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read a wav/flac (anything libsndfile reads) as float32.

    Returns ``(data, sample_rate)`` with ``data`` shaped ``(samples, channels)``, float32 in [-1, 1] for integer
    formats.  Raises :class:`AudioError` (reason ``"unreadable"``) for a missing, truncated or corrupt file
    instead of libsndfile's own exception.
    """
    import soundfile as sf

    path = Path(path)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except FileNotFoundError:
        raise AudioError(path, "unreadable", "file not found") from None
    except Exception as exc:  # libsndfile's errors (LibsndfileError, RuntimeError, TypeError on odd headers)
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise AudioError(path, "unreadable", f"cannot read audio ({msg})") from None
    return data, int(sr)


def to_mono(data: np.ndarray) -> np.ndarray:
    """Mix ``(samples, channels)`` (or ``(samples,)``) down to ``(samples,)`` by averaging the channels."""
    data = np.asarray(data)
    if data.ndim == 1:
        return data
    if data.ndim != 2:
        raise ValueError(f"expected (samples,) or (samples, channels), got shape {data.shape}")
    if data.shape[1] == 1:
        return data[:, 0]
    return data.mean(axis=1, dtype=np.float64).astype(data.dtype, copy=False)


def resample(wave: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Resample ``(samples,)`` (or ``(..., samples)``) from ``orig_sr`` to ``target_sr`` with
    :func:`scipy.signal.resample_poly` (exact rational ratio, Kaiser-windowed FIR); returns float32."""
    orig_sr, target_sr = int(orig_sr), int(target_sr)
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    wave = np.asarray(wave, dtype=np.float32)
    if orig_sr == target_sr:
        return wave
    from scipy.signal import resample_poly

    ratio = Fraction(target_sr, orig_sr)
    out = resample_poly(wave, ratio.numerator, ratio.denominator, axis=-1)
    return out.astype(np.float32, copy=False)


def trim_silence(
    wave: np.ndarray,
    top_db: float = TRIM_DB,
    frame_length: int = TRIM_FRAME,
    hop_length: int = TRIM_HOP,
) -> tuple[np.ndarray, tuple[int, int]]:
    """Cut leading and trailing silence: the rule of ``librosa.effects.trim``.

    The mean square of centred (zero-padded) frames of ``frame_length`` samples every ``hop_length`` samples is
    compared, in dB, with the loudest frame; frames within ``top_db`` dB of it are kept, from the first to the
    last, i.e. samples ``[first * hop, min(N, (last + 1) * hop))``.

    Args:
        wave: ``(samples,)`` float.
    Returns:
        ``(trimmed view of wave, (start, end))``.  An all-zero signal is returned whole (as librosa does); the
        data pipeline rejects those as silent before trimming.
    """
    wave = np.asarray(wave)
    if wave.ndim != 1:
        raise ValueError(f"trim_silence expects a mono (samples,) signal, got shape {wave.shape}")
    n = wave.shape[0]
    if n == 0:
        return wave, (0, 0)
    pad = frame_length // 2
    x = np.pad(wave.astype(np.float64, copy=False), (pad, pad))
    n_frames = 1 + (x.shape[0] - frame_length) // hop_length
    if n_frames <= 0:
        return wave, (0, n)
    # Mean square per frame from a cumulative sum: O(N) instead of O(N * frame_length).
    csum = np.concatenate(([0.0], np.cumsum(x * x)))
    starts = np.arange(n_frames) * hop_length
    ms = (csum[starts + frame_length] - csum[starts]) / frame_length
    ms = np.maximum(ms, 0.0)  # cumsum round-off can leave -1e-20
    amin = 1e-10
    db = 10.0 * np.log10(np.maximum(ms, amin)) - 10.0 * np.log10(max(amin, float(ms.max())))
    keep = np.flatnonzero(db > -float(top_db))
    if keep.size == 0:  # cannot happen (the max frame is at 0 dB), kept for safety
        return wave[:0], (0, 0)
    start = int(keep[0]) * hop_length
    end = min(n, (int(keep[-1]) + 1) * hop_length)
    return wave[start:end], (start, end)


def peak_normalize(wave: np.ndarray, peak: float = 1.0) -> np.ndarray:
    """``wave * peak / max|wave|`` (float32).  Raises :class:`AudioError` (``"silent"``) for an all-zero signal."""
    wave = np.asarray(wave, dtype=np.float32)
    m = float(np.max(np.abs(wave))) if wave.size else 0.0
    if m <= 0.0:
        raise AudioError(None, "silent", "all-zero signal cannot be normalised")
    return (wave * np.float32(peak / m)).astype(np.float32, copy=False)


def preprocess(
    data: np.ndarray,
    sample_rate: int,
    frontend: FrontEnd | None = None,
    *,
    path: str | os.PathLike | None = None,
) -> tuple[np.ndarray, AudioInfo]:
    """Mix down, resample to 16 kHz, trim silence and peak-normalise one utterance.

    Args:
        data: ``(samples,)`` or ``(samples, channels)``, float.
        sample_rate: rate of ``data`` in Hz.
        frontend: settings (trimming threshold, normalisation); the protocol's defaults when None.
        path: only used in messages.
    Returns:
        ``(wave, info)``: ``wave`` is ``(samples,)`` float32 at 16 kHz with ``max|wave| == 1`` when normalising.
    Raises:
        AudioError: ``"empty"`` (no samples), ``"non-finite"`` (NaN/inf) or ``"silent"`` (peak below
        :data:`SILENCE_PEAK`).
    """
    fe = frontend or FrontEnd()
    data = np.asarray(data, dtype=np.float32)
    channels = 1 if data.ndim == 1 else int(data.shape[1])
    orig_samples = int(data.shape[0])
    if orig_samples == 0:
        raise AudioError(path, "empty", "file has no samples")
    if not np.isfinite(data).all():
        raise AudioError(path, "non-finite", "file contains NaN or infinite samples")
    wave = to_mono(data)
    if channels > 1:
        logger.debug("%s: mixed %d channels down to mono", path, channels)
    if sample_rate != fe.sample_rate:
        logger.debug("%s: resampled %d Hz -> %d Hz", path, sample_rate, fe.sample_rate)
        wave = resample(wave, sample_rate, fe.sample_rate)
    if wave.size == 0:
        raise AudioError(path, "empty", "file is too short to resample to 16 kHz")
    peak = float(np.max(np.abs(wave)))
    if peak < SILENCE_PEAK:
        raise AudioError(path, "silent", f"all-silent file (peak {peak:.2e} < {SILENCE_PEAK:g})")
    trim = (0, wave.shape[0])
    if fe.trim_db is not None:
        wave, trim = trim_silence(wave, fe.trim_db, fe.trim_frame, fe.trim_hop)
    peak = float(np.max(np.abs(wave)))
    if fe.normalize:
        wave = peak_normalize(wave)
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    info = AudioInfo(
        path=None if path is None else str(path),
        orig_sample_rate=int(sample_rate),
        channels=channels,
        orig_samples=orig_samples,
        trim=(int(trim[0]), int(trim[1])),
        peak=peak,
        samples=int(wave.shape[0]),
    )
    return wave, info


def load_audio(
    path: str | os.PathLike,
    frontend: FrontEnd | None = None,
    *,
    return_info: bool = False,
    log: bool = True,
) -> np.ndarray | tuple[np.ndarray, AudioInfo]:
    """Load one file through the whole front end: read, mix down, resample, trim, normalise.

    Returns the ``(samples,)`` float32 waveform at 16 kHz (and the :class:`AudioInfo` when ``return_info``).
    Resampling and mix-down are logged (INFO) on ``lightdvae.audio`` unless ``log`` is false (the spectrogram
    cache logs one count per build instead).  Raises :class:`AudioError` for files that cannot be used; the
    message names the file.
    """
    data, sr = read_audio(path)
    wave, info = preprocess(data, sr, frontend, path=path)
    if log and (info.mixed_down or info.resampled):
        notes = []
        if info.mixed_down:
            notes.append(f"mixed {info.channels} channels down to mono")
        if info.resampled:
            notes.append(f"resampled {info.orig_sample_rate} Hz -> {SAMPLE_RATE} Hz")
        logger.info("%s: %s", path, ", ".join(notes))
    return (wave, info) if return_info else wave


def save_audio(path: str | os.PathLike, wave: np.ndarray | torch.Tensor, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write ``(samples,)`` float audio as 16-bit PCM wav (or flac by extension), clipping to [-1, 1].

    The file is written under a temporary name and renamed, so a reader never sees half a file.
    """
    import soundfile as sf

    if isinstance(wave, torch.Tensor):
        wave = wave.detach().to("cpu", torch.float32).numpy()
    wave = np.clip(np.asarray(wave, dtype=np.float32).reshape(-1), -1.0, 1.0)
    from lightdvae._io import atomic_write

    fmt = "FLAC" if Path(path).suffix.lower() == ".flac" else "WAV"
    return atomic_write(
        path, lambda fh: sf.write(fh, wave, int(sample_rate), subtype="PCM_16", format=fmt), fsync=False
    )


# ----------------------------------------------------------------------------------------------------------------
# STFT, inverse, power, resynthesis (torch, batched, any device)
# ----------------------------------------------------------------------------------------------------------------
_WINDOWS: dict[tuple, torch.Tensor] = {}


def sine_window(
    length: int = WIN_LENGTH, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The sine window ``w[n] = sin(pi (n + 0.5) / length)``, ``(length,)`` of ``dtype`` on ``device``.

    Computed in float64 and cast; cached per (length, device, dtype).  Its squares overlap-add to the constant
    2 at hop ``length / 4``, which is what makes the inverse STFT exact.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    key = (length, str(device), dtype)
    w = _WINDOWS.get(key)
    if w is None:
        n = torch.arange(length, dtype=torch.float64)
        w = torch.sin(math.pi * (n + 0.5) / length).to(device=device, dtype=dtype)
        if len(_WINDOWS) > 32:
            _WINDOWS.clear()
        _WINDOWS[key] = w
    return w


def num_frames(samples: int) -> int:
    """Number of STFT frames of a signal of ``samples`` samples: ``1 + samples // 256``."""
    return 1 + int(samples) // HOP


def _real_dtype(t: torch.Tensor) -> torch.dtype:
    if t.dtype in (torch.float64, torch.complex128):
        return torch.float64
    return torch.float32


def stft(wave: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Short-time Fourier transform of the protocol.

    Args:
        wave: ``(..., samples)`` real, float32 or float64 (other dtypes are cast to float32), CPU or CUDA.
            A NumPy array is accepted and converted.
    Returns:
        ``(..., frames, 513)`` complex64 (complex128 for float64 input), contiguous, on ``wave``'s device, with
        ``frames = 1 + samples // 256``.  Frame ``t`` is centred on sample ``256 t`` (zero padding at the edges).
        Differentiable.
    """
    if not isinstance(wave, torch.Tensor):
        wave = torch.as_tensor(np.asarray(wave))
    if wave.is_complex():
        raise TypeError("stft expects a real waveform, got a complex tensor")
    if wave.dtype not in (torch.float32, torch.float64):
        wave = wave.to(torch.float32)
    if wave.ndim == 0:
        raise ValueError("stft expects a waveform shaped (..., samples), got a scalar")
    lead = wave.shape[:-1]
    n = wave.shape[-1]
    if n == 0:
        cdtype = torch.complex128 if wave.dtype == torch.float64 else torch.complex64
        return torch.zeros(*lead, 1, N_FREQ, dtype=cdtype, device=wave.device)
    x = wave.reshape(-1, n)
    spec = torch.stft(
        x,
        n_fft=N_FFT,
        hop_length=HOP,
        win_length=WIN_LENGTH,
        window=sine_window(device=wave.device, dtype=wave.dtype),
        center=True,
        pad_mode="constant",
        normalized=False,
        onesided=True,
        return_complex=True,
    )  # (B, 513, frames)
    spec = spec.transpose(-1, -2).contiguous()
    return spec.reshape(*lead, spec.shape[-2], N_FREQ)


def istft(spec: torch.Tensor, length: int | None = None) -> torch.Tensor:
    """Inverse of :func:`stft` (weighted overlap-add with the same sine window).

    Args:
        spec: ``(..., frames, 513)`` complex64/complex128 on any device.
        length: samples of the output; default ``(frames - 1) * 256``.  Pass the original length to get the
            signal back exactly.
    Returns:
        ``(..., length)`` float32 (float64 for complex128 input) on ``spec``'s device.  Differentiable.
    """
    if not isinstance(spec, torch.Tensor) or not spec.is_complex():
        raise TypeError("istft expects a complex tensor shaped (..., frames, 513)")
    if spec.ndim < 2 or spec.shape[-1] != N_FREQ:
        raise ValueError(f"istft expects (..., frames, {N_FREQ}), got shape {tuple(spec.shape)}")
    lead = spec.shape[:-2]
    frames = spec.shape[-2]
    if length is None:
        length = (frames - 1) * HOP
    real = _real_dtype(spec)
    if int(length) == 0:
        return torch.zeros(*lead, 0, dtype=real, device=spec.device)
    x = spec.reshape(-1, frames, N_FREQ).transpose(-1, -2)  # (B, 513, frames)
    wave = torch.istft(
        x,
        n_fft=N_FFT,
        hop_length=HOP,
        win_length=WIN_LENGTH,
        window=sine_window(device=spec.device, dtype=real),
        center=True,
        normalized=False,
        onesided=True,
        length=int(length),
        return_complex=False,
    )
    return wave.reshape(*lead, wave.shape[-1])


def power_spectrogram(wave: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``|stft(wave)|^2``: ``(..., samples)`` real -> ``(..., frames, 513)`` float32 (float64 for float64 input)."""
    spec = stft(wave)
    return torch.view_as_real(spec).square().sum(-1)


def resynthesize(power: torch.Tensor, phase_from: torch.Tensor, length: int | None = None) -> torch.Tensor:
    """Analysis-resynthesis: ``istft(sqrt(power) * exp(j angle(X)))`` with the phase of the original ``X``.

    Args:
        power: ``(..., frames, 513)`` non-negative float (the decoder's variance ``v_hat``).
        phase_from: ``(..., frames, 513)`` complex, the STFT of the original waveform (same shape).
        length: output samples; pass the original waveform's length.
    Returns:
        ``(..., length)`` float waveform on ``power``'s device.
    """
    if not phase_from.is_complex():
        raise TypeError("phase_from must be the complex STFT of the original signal")
    if power.shape != phase_from.shape:
        raise ValueError(f"power {tuple(power.shape)} and phase_from {tuple(phase_from.shape)} must have one shape")
    real = _real_dtype(phase_from)
    mag = power.to(real).clamp_min(0).sqrt()
    spec = torch.polar(mag, torch.angle(phase_from).to(real))
    return istft(spec, length)


def griffin_lim(
    power: torch.Tensor,
    n_iter: int = GRIFFIN_LIM_ITERS,
    *,
    length: int | None = None,
    momentum: float = 0.99,
    init: str = "random",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Waveform from a power spectrogram with no phase: Griffin-Lim with the protocol's STFT.

    Uses the fast (accelerated) variant of Perraudin et al. 2013 with ``momentum`` (0.99 as in librosa and
    torchaudio; 0 gives the original Griffin-Lim of 1984).  All utterances of the batch run together on the
    tensor's device.

    Args:
        power: ``(..., frames, 513)`` non-negative float32/float64 (a power spectrogram, NOT a magnitude).
        n_iter: number of iterations (100 by default).
        length: output samples; default ``(frames - 1) * 256``.
        momentum: in [0, 1).
        init: ``"random"`` (uniform phases drawn from ``generator``) or ``"zeros"``.
        generator: a ``torch.Generator`` on ``power``'s device, for reproducible random phases.
    Returns:
        ``(..., length)`` float waveform (same precision as ``power``).  Not differentiable (runs under no_grad).
    """
    if power.is_complex():
        raise TypeError("griffin_lim expects a real power spectrogram (..., frames, 513)")
    if power.ndim < 2 or power.shape[-1] != N_FREQ:
        raise ValueError(f"griffin_lim expects (..., frames, {N_FREQ}), got shape {tuple(power.shape)}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    real = torch.float64 if power.dtype == torch.float64 else torch.float32
    with torch.no_grad():
        mag = power.to(real).clamp_min(0).sqrt()
        frames = mag.shape[-2]
        if length is None:
            length = (frames - 1) * HOP
        # The iterations need a length whose STFT has ``frames`` frames; the output gets ``length``.
        work = int(length) if num_frames(length) == frames else (frames - 1) * HOP
        if init == "random":
            phase = torch.rand(mag.shape, generator=generator, device=mag.device, dtype=real) * (2 * math.pi)
            angles = torch.polar(torch.ones_like(mag), phase)
        elif init == "zeros":
            angles = torch.ones_like(mag, dtype=torch.complex128 if real == torch.float64 else torch.complex64)
        else:
            raise ValueError(f"init must be 'random' or 'zeros', got {init!r}")
        prev = torch.zeros_like(angles)
        alpha = momentum / (1.0 + momentum)
        for _ in range(int(n_iter)):
            rebuilt = stft(istft(mag * angles, work))
            angles = rebuilt - alpha * prev if alpha > 0 else rebuilt
            angles = angles / (angles.abs() + 1e-16)
            prev = rebuilt
        return istft(mag * angles, length)
