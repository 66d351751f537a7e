"""The protocol's constants (the only place they are written down), the front-end settings and the error of a
file that cannot be used as speech."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

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

#: The logger every audio module notes resampling and mix-down on.
LOGGER_NAME = "lightdvae.audio"

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
    """What :func:`lightdvae.audio.load_audio` did to a file."""

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
