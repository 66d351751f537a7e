"""Pluggable feature networks for FDSD: a protocol, a name -> factory registry, and the shipped ``ds2-builtin``.

A feature extractor is any object with

* ``name`` (str): short, for tables (``"ds2-builtin"``);
* ``description`` (str): one line that says what network and which layer (printed under FDSD tables);
* ``__call__(waves, lengths=None)``: ``waves`` ``(B, N)`` float32 tensor of 16 kHz audio, zero-padded past
  ``lengths`` ``(B,)`` int64 (None: all ``N`` samples are valid) -> ``(B, D)`` float tensor, one feature vector per
  utterance (for FDSD: activations averaged over time).

Register one with :func:`register_extractor` (a factory, called lazily with the keyword arguments given to
:func:`get_extractor`), e.g. real DeepSpeech2 weights you have on disk::

    from lightdvae.fdsd import register_extractor, as_extractor

    def make_ds2(device="cpu", **_):
        net = load_my_deepspeech2("/models/ds2.pth").to(device).eval()      # your code
        def features(waves, lengths=None):
            return net.penultimate(waves.to(device)).mean(1)               # (B, D)
        return as_extractor(features, name="deepspeech2", description="DeepSpeech2 (Amodei 2016), penultimate, mean")

    register_extractor("deepspeech2", make_ds2, description="DeepSpeech2 from /models/ds2.pth")

The command line reaches the same registry: ``--features NAME``, ``--features ds2:FILE`` (weights from
``lightdvae fdsd train``) or ``--features package.module:factory`` (imported, then called).
"""

from __future__ import annotations

import importlib
import inspect
import os
import warnings
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from lightdvae.fdsd.network import DeepSpeech2, load_weights

__all__ = [
    "FeatureExtractor",
    "CallableExtractor",
    "DS2Extractor",
    "as_extractor",
    "register_extractor",
    "unregister_extractor",
    "get_extractor",
    "list_extractors",
    "builtin_weights_path",
    "extract_features",
    "load_waves",
]

BUILTIN_WEIGHTS = "ds2_builtin.pt"  #: the shipped weights, inside the lightdvae.fdsd package


@runtime_checkable
class FeatureExtractor(Protocol):
    """What FDSD needs from a feature network (see the module doc)."""

    name: str
    description: str

    def __call__(self, waves: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor: ...


class CallableExtractor:
    """A plain function ``fn(waves) -> (B, D)`` or ``fn(waves, lengths) -> (B, D)`` with a name and description.

    A function that takes no ``lengths`` is called one utterance at a time, unpadded.
    """

    def __init__(self, fn: Callable, name: str, description: str | None = None):
        self.fn = fn
        self.name = name
        self.description = description or name
        try:
            params = inspect.signature(fn).parameters
            self.takes_lengths = "lengths" in params or len(params) >= 2
        except (TypeError, ValueError):
            self.takes_lengths = True

    def __call__(self, waves: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if self.takes_lengths:
            return torch.as_tensor(self.fn(waves, lengths))
        if lengths is None:
            return torch.as_tensor(self.fn(waves))
        rows = [torch.as_tensor(self.fn(waves[i : i + 1, : int(n)])).reshape(1, -1) for i, n in enumerate(lengths)]
        return torch.cat(rows, 0)

    def __repr__(self) -> str:
        return f"CallableExtractor(name={self.name!r})"


def as_extractor(fn: Callable, name: str, description: str | None = None) -> CallableExtractor:
    """Wrap a function as a :class:`FeatureExtractor` (see :class:`CallableExtractor`)."""
    return CallableExtractor(fn, name, description)


class DS2Extractor:
    """Time-averaged activations of a :class:`~lightdvae.fdsd.network.DeepSpeech2` layer (``"fc"``, the
    penultimate layer, by default): ``(B, N)`` waveforms -> ``(B, 256)`` float32 on the CPU.

    Runs the network in eval mode under ``torch.no_grad()`` on ``device``.  Each waveform is peak-normalised
    first (the package's front-end convention), so the features do not depend on the level of a file.
    """

    def __init__(
        self,
        model: DeepSpeech2,
        name: str,
        description: str | None = None,
        *,
        layer: str = "fc",
        device: torch.device | str | None = None,
        metadata: dict | None = None,
    ):
        self.model = model.eval()
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model.to(self.device)
        self.layer = layer
        self.name = name if layer == "fc" else f"{name}/{layer}"
        self.metadata = dict(metadata or {})
        base = description or self.metadata.get("description") or f"{name}: DeepSpeech2-style network"
        self.description = base if layer == "fc" else f"{base} [layer {layer}]"
        self.dim = model.config.fc_dim if layer == "fc" else 2 * model.config.rnn_hidden

    @classmethod
    def from_file(
        cls, path: str | os.PathLike, name: str | None = None, *, layer: str = "fc", device=None
    ) -> DS2Extractor:
        model, meta = load_weights(path, device=device)
        label = name or meta.get("name") or Path(path).stem
        if name and meta.get("description", "").startswith(f"{meta.get('name')}:"):
            meta["description"] = name + meta["description"][len(meta["name"]) :]
        return cls(model, label, layer=layer, device=device, metadata=meta)

    @torch.no_grad()
    def __call__(self, waves: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        waves = torch.as_tensor(waves, dtype=torch.float32).to(self.device)
        if waves.ndim == 1:
            waves = waves[None]
        if lengths is not None:
            lengths = torch.as_tensor(lengths, dtype=torch.long, device=self.device)
        return self.model.embed(waves, lengths, layer=self.layer).float().cpu()

    def __repr__(self) -> str:
        return f"DS2Extractor(name={self.name!r}, layer={self.layer!r}, device={str(self.device)!r})"


# ----------------------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------------------
_REGISTRY: dict[str, tuple[Callable[..., FeatureExtractor], str]] = {}


def register_extractor(
    name: str,
    factory: Callable[..., FeatureExtractor] | None = None,
    *,
    description: str = "",
    overwrite: bool = False,
):
    """Register ``factory`` (called as ``factory(**kwargs)`` by :func:`get_extractor`) under ``name``.

    Usable as a decorator: ``@register_extractor("my-net", description=...)``.  Raises ValueError when ``name``
    is taken (unless ``overwrite``) or contains ``:`` (reserved for ``ds2:FILE`` and ``module:factory``).
    """
    key = name.strip().lower()
    if not key or ":" in key:
        raise ValueError(f"invalid feature network name {name!r} (non-empty, no ':')")

    def _add(fn):
        if key in _REGISTRY and not overwrite:
            raise ValueError(f"feature network {key!r} is already registered (pass overwrite=True to replace it)")
        _REGISTRY[key] = (fn, description or key)
        return fn

    return _add if factory is None else _add(factory)


def unregister_extractor(name: str) -> None:
    _REGISTRY.pop(name.strip().lower(), None)


def list_extractors() -> dict[str, str]:
    """Registered names -> one-line descriptions."""
    return {k: d for k, (_, d) in _REGISTRY.items()}


def get_extractor(spec: str | FeatureExtractor | Callable = "ds2-builtin", **kwargs) -> FeatureExtractor:
    """A feature extractor from a registered name, ``ds2:FILE``, ``module:factory``, or an extractor/callable.

    ``kwargs`` (e.g. ``device="cuda"``, ``layer="rnn"``) go to the factory; a factory that does not take them
    simply does not receive them.  Raises KeyError listing the valid names for an unknown name.
    """
    if not isinstance(spec, str):
        if isinstance(spec, FeatureExtractor):
            return spec
        if callable(spec):
            return as_extractor(spec, getattr(spec, "__name__", "custom"))
        raise TypeError(f"expected a feature network name or extractor, got {type(spec).__name__}")
    text = spec.strip()
    key = text.lower()
    if key in _REGISTRY:
        return _call(_REGISTRY[key][0], kwargs)
    prefix, sep, rest = text.partition(":")
    if sep and prefix.lower() == "ds2":
        # Named after the file, so a table never confuses retrained weights with the shipped ones.
        return _call(DS2Extractor.from_file, {"path": rest, "name": f"ds2:{Path(rest).name}", **kwargs})
    if sep and rest:
        try:
            module = importlib.import_module(prefix)
        except ImportError as exc:
            raise ImportError(f"cannot import {prefix!r} for feature network {text!r}: {exc}") from None
        factory = getattr(module, rest, None)
        if factory is None:
            raise ValueError(f"module {prefix!r} has no attribute {rest!r}")
        out = _call(factory, kwargs)
        return out if isinstance(out, FeatureExtractor) else get_extractor(out)
    valid = ", ".join(sorted(_REGISTRY))
    raise KeyError(f"unknown feature network {spec!r}; registered: {valid}; or use ds2:FILE or module:factory")


def _call(factory: Callable, kwargs: dict):
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return factory(**kwargs)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return factory(**kwargs)
    return factory(**{k: v for k, v in kwargs.items() if k in params})


def builtin_weights_path() -> Path:
    """Path of the shipped ``ds2_builtin.pt`` (inside the installed package)."""
    return Path(str(resources.files("lightdvae.fdsd").joinpath(BUILTIN_WEIGHTS)))


_BUILTIN_CACHE: dict[tuple[str, str], DS2Extractor] = {}


def _ds2_builtin(device: torch.device | str | None = None, layer: str = "fc") -> DS2Extractor:
    path = builtin_weights_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"the shipped FDSD network {path} is missing from this installation; reinstall lightdvae or "
            "retrain it with `lightdvae fdsd train --data builtin --out FILE` and use --features ds2:FILE"
        )
    key = (str(torch.device(device or "cpu")), layer)
    if key not in _BUILTIN_CACHE:
        _BUILTIN_CACHE[key] = DS2Extractor.from_file(path, "ds2-builtin", layer=layer, device=device or "cpu")
    return _BUILTIN_CACHE[key]


register_extractor(
    "ds2-builtin",
    _ds2_builtin,
    description="DeepSpeech2-style network shipped with lightdvae, CTC-trained on the built-in espeak-ng corpus; "
    "time-averaged penultimate activations (256-d)",
)


# ----------------------------------------------------------------------------------------------------------------
# Batched extraction and folders
# ----------------------------------------------------------------------------------------------------------------
def _as_list(waves) -> list[torch.Tensor]:
    if isinstance(waves, (torch.Tensor, np.ndarray)):
        t = torch.as_tensor(waves)
        if t.ndim == 1:
            return [t]
        if t.ndim != 2:
            raise ValueError(f"waveforms must be (samples,) or (count, samples), got shape {tuple(t.shape)}")
        return list(t)
    return [torch.as_tensor(np.asarray(w) if not isinstance(w, torch.Tensor) else w).reshape(-1) for w in waves]


def extract_features(
    extractor: str | FeatureExtractor | Callable,
    waves: Sequence[np.ndarray | torch.Tensor] | torch.Tensor | np.ndarray,
    *,
    batch_size: int = 16,
    **kwargs,
) -> np.ndarray:
    """Features of many utterances of any lengths: ``(count, D)`` float64, in the order of ``waves``.

    Utterances are sorted by length and zero-padded in batches of ``batch_size`` (little padding, and the
    extractors of this package give the same features padded or not).  ``kwargs`` go to :func:`get_extractor`.
    """
    ext = get_extractor(extractor, **kwargs)
    items = _as_list(waves)
    if not items:
        raise ValueError("no waveforms to extract features from")
    order = sorted(range(len(items)), key=lambda i: items[i].shape[-1])
    out: list[np.ndarray | None] = [None] * len(items)
    for start in range(0, len(order), max(1, int(batch_size))):
        idx = order[start : start + batch_size]
        lengths = torch.tensor([items[i].shape[-1] for i in idx], dtype=torch.long)
        if int(lengths.min()) == 0:
            raise ValueError("an empty waveform cannot be embedded")
        batch = torch.zeros(len(idx), int(lengths.max()), dtype=torch.float32)
        for row, i in enumerate(idx):
            batch[row, : items[i].shape[-1]] = items[i].to(torch.float32)
        feats = torch.as_tensor(ext(batch, lengths)).detach().to("cpu", torch.float64)
        if feats.ndim != 2 or feats.shape[0] != len(idx):
            raise ValueError(f"feature network {ext.name!r} returned shape {tuple(feats.shape)} for {len(idx)} inputs")
        for row, i in enumerate(idx):
            out[i] = feats[row].numpy()
    return np.stack(out)


def load_waves(
    folder: str | os.PathLike, *, return_skipped: bool = False
) -> list[np.ndarray] | tuple[list[np.ndarray], list[str]]:
    """Every wav/flac under ``folder`` (recursive, sorted), through the package's front end
    (:func:`lightdvae.audio.load_audio`: 16 kHz mono, 30 dB trim, peak normalisation).

    Unusable files (unreadable, empty, silent) are skipped with a warning; ``return_skipped`` also returns them.
    """
    from lightdvae.audio import AudioError, load_audio
    from lightdvae.data import list_audio_files

    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"{folder} does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder")
    waves, skipped = [], []
    for path in list_audio_files(folder):
        try:
            waves.append(load_audio(path, log=False))
        except AudioError as exc:
            skipped.append(f"{exc}")
    if skipped and not return_skipped:
        warnings.warn(f"{folder}: skipped {len(skipped)} unusable file(s), e.g. {skipped[0]}", stacklevel=2)
    return (waves, skipped) if return_skipped else waves
