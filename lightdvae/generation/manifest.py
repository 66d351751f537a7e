"""``generation.json``, the manifest of a generation folder (kind ``"lightdvae-generation"``): the model and its
checkpoint digest, the settings, the seconds of audio, the timings, the versions and the FDSD summary; and the
description of a model that comes without a run."""

from __future__ import annotations

from pathlib import Path

from lightdvae import runtime
from lightdvae._io import read_json, utc_now
from lightdvae.audio import SAMPLE_RATE
from lightdvae.errors import GenerationError
from lightdvae.generation import journal
from lightdvae.generation.common import FORMAT_VERSION, GENERATION_KIND, MANIFEST, PEAK, SPEC_DIR, WAV_DIR
from lightdvae.generation.settings import GenerationSettings


def read_manifest(path) -> dict:
    """A ``generation.json`` (a folder holding one is accepted too)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    value = read_json(path)
    if value is None or value.get("kind") != GENERATION_KIND:
        raise GenerationError(f"{path} is not a generation manifest")
    return value


def build_manifest(
    s: GenerationSettings, *, info, state, fingerprint, names, n_figures, figures, notes, old, device
) -> dict:
    """``generation.json`` before its FDSD; ``old``: the manifest of the reused generation (its creation time,
    versions and FDSD are kept), else None (versions of now, on ``device``; no FDSD yet)."""
    samples = s.samples
    return {
        "kind": GENERATION_KIND,
        "format": FORMAT_VERSION,
        "created": old.get("created") if old is not None else utc_now(),
        "run_dir": info.get("run_dir"),
        "checkpoint": info["checkpoint"],
        "model": info["model"],
        "n": s.n,
        "frames": s.frames,
        "samples_per_file": samples,
        "seconds_per_sample": samples / SAMPLE_RATE,
        "seconds_of_audio": s.n * samples / SAMPLE_RATE,
        "sample_rate": SAMPLE_RATE,
        "temperature": s.temperature,
        "seed": s.seed,
        "batch_size": s.batch_size,
        "griffin_lim_iters": s.griffin_lim_iters,
        "peak": PEAK,
        "fingerprint": fingerprint,
        "timings": journal.timings(state, s.n, samples),
        "sessions": state["sessions"],
        "outputs": {
            "wav_dir": WAV_DIR,
            "wav": [f"{WAV_DIR}/{nm}.wav" for nm in names],
            "spectrograms": [f"{SPEC_DIR}/{names[i]}.npy" for i in range(n_figures)],
            "figures": figures,
        },
        "notes": notes,
        "versions": old.get("versions") if old is not None else runtime.versions(device, threads=True),
        "fdsd": old.get("fdsd") if old is not None else None,
    }


def describe_model(model) -> dict:
    """The ``info`` of a model that comes without a run: it describes itself, its weights are hashed."""
    from lightdvae.models import model_label
    from lightdvae.runs import weights_sha256

    name = getattr(model, "name", type(model).__name__)
    config = model.config.to_dict() if hasattr(model, "config") else {}
    return {
        "run_dir": None,
        "checkpoint": {"which": None, "path": None, "sha256": weights_sha256(model)},
        "model": {
            "name": name,
            "label": model_label(name, config),
            "parameters": int(model.num_parameters()),
            "config": config,
            "training": None,
        },
    }
