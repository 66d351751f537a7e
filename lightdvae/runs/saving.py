"""Writing a model as a run folder (:func:`save_model`, what ``import-dvae`` writes) and as a shipped prior
(:func:`export_pretrained`)."""

from __future__ import annotations

import os
from pathlib import Path

from lightdvae._io import atomic_write_json, sha256_file
from lightdvae.models import DVAE, build, model_label
from lightdvae.runs.layout import (
    CONFIG_FILE,
    checkpoint_path,
    corpus_spec,
    load_checkpoint,
    read_meta,
    save_checkpoint,
    training_mode,
)


def save_model(run_dir: str | os.PathLike, model: DVAE, source: dict | None = None, checkpoint: str = "best") -> Path:
    """Write ``model`` as a run folder (``config.json`` and ``checkpoints/<checkpoint>.pt``), atomically: what
    ``lightdvae import-dvae`` writes, and what :func:`load_run` reads back."""
    run_dir = Path(run_dir)
    config = model.config.to_dict()
    # the registry name of an RVAE depends on its causal flag
    name = "rvae-causal" if model.name == "rvae" and config.get("causal") else model.name
    meta = {"model": name, "config": config, "source": dict(source) if source else None}
    payload = {
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "model_name": name,
        "config": config,
    }
    save_checkpoint(checkpoint_path(run_dir, checkpoint), payload)
    atomic_write_json(run_dir / CONFIG_FILE, meta)
    return run_dir


def export_pretrained(
    run_dir: str | os.PathLike, out_dir: str | os.PathLike, name: str, card: dict, which: str = "best"
) -> Path:
    """Write the ``which`` weights of ``run_dir`` (``best`` or ``last``) as the shipped prior ``name`` in
    ``out_dir``: ``<name>.pt`` (float16 state dict, model name and config) and ``<name>.json`` (``card`` plus the
    label, parameter count, config and the SHA-256 of the ``.pt``), both atomically.
    :func:`lightdvae.models.pretrained` reads them back."""
    payload = load_checkpoint(checkpoint_path(run_dir, which))
    state = {k: v.half() if v.is_floating_point() else v for k, v in payload["model"].items()}
    half = {"model": state, "model_name": payload["model_name"], "config": payload["config"]}
    out_dir = Path(out_dir)
    pt = save_checkpoint(out_dir / f"{name}.pt", half)
    meta = read_meta(run_dir)
    params = build(payload["model_name"], **payload["config"]).num_parameters()
    full = {
        "name": name,
        "model": payload["model_name"],
        "label": model_label(payload["model_name"], payload["config"], training_mode(meta)),
        "training_mode": training_mode(meta),
        "data": corpus_spec(meta) or "builtin",
        "parameters": int(params),
        "config": payload["config"],
        **card,
        "sha256": sha256_file(pt),
    }
    atomic_write_json(out_dir / f"{name}.json", full)
    return pt
