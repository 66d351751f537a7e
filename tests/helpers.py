"""Shared test helpers: markers for the native build and the GPU, tolerances by dtype, a speech-like signal, a tiny
corpus of such signals and a run folder holding a tiny untrained model."""

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch

from lightdvae import _ext

requires_native = pytest.mark.skipif(
    not _ext.HAS_NATIVE, reason=f"native extension not built ({_ext.IMPORT_ERROR}); rebuild: {_ext.REINSTALL_COMMAND}"
)
requires_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and _ext.cuda_kernels_compiled()),
    reason="needs a CUDA GPU and the extension's CUDA kernels",
)

#: a LigHT-DVAE small enough for end-to-end tests of the commands
TINY_LIGHT = dict(d_model=16, n_heads=2, enc_layers=1, dec_layers=2, ff_dim=32, w_dim=4, z_dim=3, dropout=0.0)

CPU_DTYPES = [torch.float32, torch.float64]
CUDA_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@contextlib.contextmanager
def no_vmap_fallback():
    """Inside: ``torch.func.vmap`` raises where an op has no batching rule, instead of running it once per sample
    (slow) with a warning printed each time; the previous setting restored after."""
    before = torch._C._functorch._is_vmap_fallback_enabled()
    torch._C._functorch._set_vmap_fallback_enabled(False)
    try:
        yield
    finally:
        torch._C._functorch._set_vmap_fallback_enabled(before)


def report_close(name: str, actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> None:
    """assert_close that prints the max errors first, so a failure log says by how much."""
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    if a.numel():
        err = (a - e).abs()
        scale = e.abs().max().clamp_min(1e-30)
        print(f"{name}: max abs err {err.max().item():.3e}, max rel-to-scale err {(err.max() / scale).item():.3e}")
    torch.testing.assert_close(a, e, rtol=rtol, atol=atol, equal_nan=True)


def speech_like(seconds: float, seed: int, sr: int = 16000) -> np.ndarray:
    """Voiced harmonics (random f0 around 100-140 Hz, vibrato) with a syllable envelope and a little noise, peak 0.5."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 100 + 40 * rng.random() + 15 * np.sin(2 * np.pi * 0.6 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) * np.exp(-k / 6) for k in range(1, 25))
    x = x * np.clip(np.sin(2 * np.pi * (2.0 + rng.random()) * t), 0, None) ** 0.5
    x = x + 0.002 * rng.standard_normal(t.size)
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def write_corpus(root: Path, files, sr: int = 16000) -> Path:
    """``root/SPLIT/SPEAKER/uttN.wav`` (16-bit PCM) for each ``(split, speaker, N, seconds)`` of ``files``: speech-like
    signals seeded 1, 2, ... in the order given.  Returns ``root``."""
    import soundfile as sf  # here, not at the top: the CUDA tests import this module where soundfile may be absent

    for seed, (split, speaker, utt, seconds) in enumerate(files, start=1):
        path = Path(root) / split / speaker / f"utt{utt}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, speech_like(seconds, seed, sr), sr, subtype="PCM_16")
    return Path(root)


def write_noisy_set(root: Path, test_seconds: float, snrs: str) -> Path:
    """A noisy set of ``lightdvae corpus noisy`` under ``root/set``: one test utterance of ``test_seconds`` mixed
    with white noise at ``snrs`` (``"0,5"``), from a corpus under ``root/corpus`` that has one utterance per
    split.  Returns the set's folder."""
    from lightdvae.data.noisy import build_noisy_set  # here: the CUDA tests import this module

    corpus = write_corpus(
        root / "corpus", [("train", "a", 0, 0.5), ("val", "v", 0, 0.4), ("test", "t", 0, test_seconds)]
    )
    build_noisy_set(root / "set", speech=str(corpus), snrs=snrs, noises="white", progress=False)
    return root / "set"


def make_run(path: Path, name: str = "light-dvae", data: str | None = None, **config) -> Path:
    """A run folder (``lightdvae train``'s layout) holding an untrained model ``name``, seeded; the transformer DVAEs
    are TINY_LIGHT-sized unless ``config`` says otherwise.  ``data``: the corpus spec the run records."""
    from lightdvae.models import build
    from lightdvae.runs import read_config, save_model, write_config

    torch.manual_seed(0)
    config = {**(TINY_LIGHT if name in ("hit-dvae", "light-dvae") else {}), **config}
    save_model(path, build(name, **config), {"kind": "test"})
    if data is not None:  # as `lightdvae train` records the corpus
        write_config(path, {**read_config(path), "data": {"spec": data}})
    return path
