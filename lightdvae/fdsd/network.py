"""A small DeepSpeech2-style phoneme recogniser: the feature network that FDSD uses offline.

DeepSpeech 2 (Amodei et al., ICML 2016) is a stack of 2-D convolutions over a spectrogram, bidirectional
recurrent layers, one fully connected layer and a softmax trained with CTC.  Bińkowski et al. (ICLR 2020,
"High Fidelity Speech Synthesis with Adversarial Networks") define the Fréchet DeepSpeech Distance on the
time-averaged activations of its penultimate layer.  The real DeepSpeech2 weights cannot be downloaded here, so
lightdvae ships a scaled-down network of the same shape, trained with CTC on the phoneme transcripts of the
built-in espeak-ng corpus (``lightdvae fdsd train``).

Architecture (:class:`DS2Config` defaults; ``(B, ...)`` = batch):

====================  ============================================================================================
input                 16 kHz waveform ``(B, N)``, peak-normalised per utterance (:attr:`DS2Config.peak_normalize`)
front end             log-mel spectrogram: Hann window 400 samples (25 ms), hop 160 (10 ms), n_fft 512,
                      64 mel bands 50 Hz - 8 kHz (HTK mel scale), ``log(mel + 1e-6)``, normalised per band with
                      the training set's mean and standard deviation -> ``(B, 1, 64, T)``, ``T = 1 + N // 160``
conv 1                Conv2d 1 -> 32, kernel 11 (freq) x 9 (time), stride 2 x 3, BatchNorm, clipped ReLU
                      ``min(max(x, 0), 20)`` -> ``(B, 32, 32, ceil(T / 3))``: 30 ms per frame (the time
                      stride of DS2's bigram models; the built-in corpus speaks at most ~15 phonemes/s, so CTC
                      still has two frames per phoneme)
conv 2                Conv2d 32 -> 16, kernel 7 x 5, stride 2 x 1, BatchNorm, clipped ReLU -> ``(B, 16, 16, T')``
RNN                   3 bidirectional GRU layers, 128 units per direction, on the flattened ``16 * 16 = 256``
                      conv channels x bands; dropout between layers -> ``(B, T', 256)``
fc (penultimate)      Linear 256 -> 256, clipped ReLU -> ``(B, T', 256)``: **the FDSD features**, averaged over
                      the utterance's valid frames
head                  Linear 256 -> ``1 + n_phonemes`` (index 0 is the CTC blank), log-softmax
====================  ============================================================================================

The DS2 paper feeds linear spectrograms at 20 ms / 10 ms; a log-mel front end with a 25 ms window is the common
modern substitute and needs fewer first-layer weights.  The SPEC's 64 ms / 16 ms STFT of the DVAE models is not
used here: it smears the shorter phonemes, and the feature network must not depend on the representation of the
models it judges.

Padding is handled so that a padded batch gives the same outputs as each utterance alone (eval mode): the log-mel
frames and every convolution's output are zeroed past each utterance's length, and the GRUs run on packed
sequences.

Phonemes (the output classes) and CTC decoding: :mod:`lightdvae.fdsd.phonemes`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lightdvae.audio import SAMPLE_RATE
from lightdvae.fdsd.phonemes import (
    BLANK,
    edit_distance,
    greedy_decode,
    normalize_phoneme,
    phoneme_error_rate,
    phoneme_inventory,
    phoneme_sequence,
)

__all__ = [
    "BLANK",
    "DS2Config",
    "LogMel",
    "DeepSpeech2",
    "normalize_phoneme",
    "phoneme_sequence",
    "phoneme_inventory",
    "greedy_decode",
    "edit_distance",
    "phoneme_error_rate",
    "frames_for",
    "save_weights",
    "load_weights",
]

FEATURE_LAYERS = ("fc", "rnn")  #: layers whose time-averaged activations can serve as FDSD features


# ----------------------------------------------------------------------------------------------------------------
# Configuration and front end
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class DS2Config:
    """Sizes of :class:`DeepSpeech2` (defaults: the shipped ``ds2-builtin`` network, about 1 M parameters)."""

    phonemes: list[str] = field(default_factory=list)  #: output classes after the blank, in index order 1..
    n_mels: int = 64
    win_length: int = 400  #: samples (25 ms)
    hop: int = 160  #: samples (10 ms)
    n_fft: int = 512
    f_min: float = 50.0
    f_max: float = 8000.0
    conv_channels: tuple[int, int] = (32, 16)
    time_stride: int = 3  #: conv 1's stride in time: one output frame per 30 ms
    rnn_hidden: int = 128  #: GRU units per direction
    rnn_layers: int = 3
    fc_dim: int = 256
    dropout: float = 0.15
    peak_normalize: bool = True  #: divide each waveform by its max |x| (the protocol's normalisation) first

    @property
    def n_classes(self) -> int:
        return 1 + len(self.phonemes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["conv_channels"] = list(self.conv_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DS2Config:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown DS2Config fields {sorted(unknown)}; valid: {sorted(known)}")
        d = dict(d)
        if "conv_channels" in d:
            d["conv_channels"] = tuple(int(c) for c in d["conv_channels"])
        if "phonemes" in d:
            d["phonemes"] = list(d["phonemes"])
        return cls(**d)


def frames_for(samples: torch.Tensor | int, hop: int) -> torch.Tensor | int:
    """Log-mel frames of a signal of ``samples`` samples (centred frames): ``1 + samples // hop``."""
    return 1 + samples // hop


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int, f_min: float, f_max: float) -> np.ndarray:
    """Triangular filters on the HTK mel scale ``2595 log10(1 + f / 700)``: ``(n_fft // 2 + 1, n_mels)`` float64,
    peak 1 per filter.  Raises ValueError when a filter covers no FFT bin (too many bands for ``n_fft``)."""
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    mel = lambda f: 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)
    hz = lambda m: 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)
    edges = hz(np.linspace(mel(f_min), mel(f_max), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None, :] - lo) / (mid - lo)
    down = (hi - freqs[None, :]) / (hi - mid)
    fb = np.maximum(0.0, np.minimum(up, down)).T
    empty = np.flatnonzero(fb.sum(0) == 0)
    if empty.size:
        raise ValueError(f"mel bands {empty.tolist()} cover no FFT bin; use fewer bands or a larger n_fft")
    return fb


class LogMel(nn.Module):
    """Waveforms ``(B, N)`` -> normalised log-mel ``(B, n_mels, T)`` and frame counts ``(B,)``.

    Frames past each utterance's length are zero (the normalised mean), so padding never leaks into the network.
    ``mean`` and ``std`` (per band) are buffers saved with the weights; they are 0 and 1 until
    :meth:`set_normalization` is called with training-set statistics.
    """

    def __init__(self, config: DS2Config):
        super().__init__()
        self.config = config
        window = torch.hann_window(config.win_length, periodic=True, dtype=torch.float64).float()
        fb = mel_filterbank(config.n_fft, config.n_mels, SAMPLE_RATE, config.f_min, config.f_max)
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("mel_fb", torch.from_numpy(fb).float(), persistent=False)
        self.register_buffer("mean", torch.zeros(config.n_mels))
        self.register_buffer("std", torch.ones(config.n_mels))

    def log_mel(self, waves: torch.Tensor) -> torch.Tensor:
        """Un-normalised ``log(mel + 1e-6)``, ``(B, n_mels, 1 + N // hop)``; no peak normalisation."""
        c = self.config
        spec = torch.stft(
            waves,
            n_fft=c.n_fft,
            hop_length=c.hop,
            win_length=c.win_length,
            window=self.window,
            center=True,
            pad_mode="constant",
            return_complex=True,
        )
        power = torch.view_as_real(spec).square().sum(-1)  # (B, F, T)
        return torch.log(torch.einsum("bft,fm->bmt", power, self.mel_fb) + 1e-6)

    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-3))

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if waves.ndim != 2:
            raise ValueError(f"expected waveforms shaped (batch, samples), got {tuple(waves.shape)}")
        waves = waves.to(self.window.dtype)
        b, n = waves.shape
        if lengths is None:
            lengths = torch.full((b,), n, dtype=torch.long)
        lengths = lengths.to(device=waves.device, dtype=torch.long)
        valid = torch.arange(n, device=waves.device)[None, :] < lengths[:, None]
        waves = waves * valid
        if self.config.peak_normalize:
            peak = waves.abs().amax(dim=1, keepdim=True)
            waves = waves / torch.where(peak > 0, peak, torch.ones_like(peak))
        feats = (self.log_mel(waves) - self.mean[:, None]) / self.std[:, None]
        frames = frames_for(lengths, self.config.hop)
        mask = torch.arange(feats.shape[-1], device=feats.device)[None, :] < frames[:, None]
        return feats * mask[:, None, :], frames


def _time_mask(lengths: torch.Tensor, t: int) -> torch.Tensor:
    return torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]


# ----------------------------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------------------------
class DeepSpeech2(nn.Module):
    """The DS2-style network of the module doc.  ``forward(waves, lengths)`` gives CTC log-probabilities.

    Shapes: ``waves`` ``(B, N)`` float (16 kHz; zero-padded past ``lengths``), ``lengths`` ``(B,)`` int64 or None
    (all ``N``).  Any device; float32 computation.
    """

    CLIP = 20.0  #: DeepSpeech2's clipped ReLU ceiling

    def __init__(self, config: DS2Config):
        super().__init__()
        if not config.phonemes:
            raise ValueError("DS2Config.phonemes is empty: derive the inventory with phoneme_inventory(rows)")
        self.config = config
        c1, c2 = config.conv_channels
        self.frontend = LogMel(config)
        kt = self._time_kernel(config.time_stride)
        self.conv1 = nn.Conv2d(
            1, c1, kernel_size=(11, kt), stride=(2, config.time_stride), padding=(5, kt // 2), bias=False
        )
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=(7, 5), stride=(2, 1), padding=(3, 2), bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        bands = self._bands_after_conv(config.n_mels)
        self.rnn = nn.GRU(
            c2 * bands,
            config.rnn_hidden,
            num_layers=config.rnn_layers,
            batch_first=True,
            bidirectional=True,
            dropout=config.dropout if config.rnn_layers > 1 else 0.0,
        )
        self.fc = nn.Linear(2 * config.rnn_hidden, config.fc_dim)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.fc_dim, config.n_classes)

    @staticmethod
    def _bands_after_conv(n_mels: int) -> int:
        b1 = (n_mels + 2 * 5 - 11) // 2 + 1
        return (b1 + 2 * 3 - 7) // 2 + 1

    @staticmethod
    def _time_kernel(stride: int) -> int:
        return 2 * stride + 3  # odd, covers two strides plus context: 7 at stride 2, 9 at stride 3

    def output_lengths(self, frames: torch.Tensor) -> torch.Tensor:
        """Output frames for ``frames`` log-mel frames: conv 1 divides time by its stride (``ceil(T / s)``),
        conv 2 keeps it."""
        s = self.config.time_stride
        k = self._time_kernel(s)
        return (frames + 2 * (k // 2) - k) // s + 1

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, 0.0, self.CLIP)

    def encode(
        self, feats: torch.Tensor, frames: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Normalised log-mel ``(B, n_mels, T)`` and frame counts -> ``(log_probs (B, T', C), out_lengths (B,),
        hidden)`` where ``hidden`` holds the ``"rnn"`` ``(B, T', 2H)`` and ``"fc"`` ``(B, T', fc_dim)``
        activations, zero past each length."""
        out_len = self.output_lengths(frames)
        x = feats.unsqueeze(1)  # (B, 1, F, T)
        x = self._act(self.bn1(self.conv1(x)))
        x = x * _time_mask(out_len, x.shape[-1])[:, None, None, :]
        x = self._act(self.bn2(self.conv2(x)))
        t = x.shape[-1]
        mask = _time_mask(out_len, t)
        x = x * mask[:, None, None, :]
        x = x.flatten(1, 2).transpose(1, 2)  # (B, T', C * bands)
        packed = pack_padded_sequence(x, out_len.cpu(), batch_first=True, enforce_sorted=False)
        rnn_out, _ = self.rnn(packed)
        rnn_out, _ = pad_packed_sequence(rnn_out, batch_first=True, total_length=t)
        fc = self._act(self.fc(rnn_out)) * mask[..., None]
        logits = self.head(self.drop(fc))
        return logits.log_softmax(-1), out_len, {"rnn": rnn_out, "fc": fc}

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        feats, frames = self.frontend(waves, lengths)
        log_probs, out_len, _ = self.encode(feats, frames)
        return log_probs, out_len

    def embed(self, waves: torch.Tensor, lengths: torch.Tensor | None = None, layer: str = "fc") -> torch.Tensor:
        """Time-averaged activations of ``layer`` (``"fc"``: the penultimate layer, as in FDSD; ``"rnn"``: the last
        GRU layer) over each utterance's valid frames: ``(B, D)`` float32."""
        if layer not in FEATURE_LAYERS:
            raise ValueError(f"unknown feature layer {layer!r}; valid: {', '.join(FEATURE_LAYERS)}")
        feats, frames = self.frontend(waves, lengths)
        _, out_len, hidden = self.encode(feats, frames)
        h = hidden[layer]
        mask = _time_mask(out_len, h.shape[1]).to(h.dtype)
        return (h * mask[..., None]).sum(1) / out_len.clamp_min(1).to(h.dtype)[:, None]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


# ----------------------------------------------------------------------------------------------------------------
# Weights files
# ----------------------------------------------------------------------------------------------------------------
WEIGHTS_FORMAT = "lightdvae-ds2"
WEIGHTS_VERSION = 1


def save_weights(model: DeepSpeech2, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write ``model`` (config, float16 state dict, metadata) to ``path`` atomically.

    Weights are stored in float16 to keep the shipped file small (the loaded network computes in float32; the
    phoneme error rates recorded by :func:`lightdvae.fdsd.train.train_ds2` are measured on the rounded weights).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu())
        for k, v in model.state_dict().items()
    }
    blob = {
        "format": WEIGHTS_FORMAT,
        "version": WEIGHTS_VERSION,
        "config": model.config.to_dict(),
        "state_dict": state,
        # JSON-clean metadata (plain str/int/float/list/dict) so that torch.load(weights_only=True) reads it.
        "metadata": json.loads(json.dumps(dict(metadata or {}), default=str)),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(blob, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_weights(path: str | os.PathLike, device: torch.device | str | None = None) -> tuple[DeepSpeech2, dict]:
    """Read a file written by :func:`save_weights` -> ``(model in eval mode on device, metadata)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DeepSpeech2 weights {path} not found")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{path} is not a lightdvae DeepSpeech2 weights file (written by `lightdvae fdsd train`)")
    model = DeepSpeech2(DS2Config.from_dict(blob["config"]))
    model.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in blob["state_dict"].items()})
    model.eval()
    if device is not None:
        model.to(device)
    return model, dict(blob.get("metadata") or {})
