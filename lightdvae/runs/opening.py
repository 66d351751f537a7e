"""A trained model opened for inference with what result files record about it (:func:`open_run`), from a run
folder or a shipped prior (``pretrained:NAME``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from lightdvae._io import sha256_file
from lightdvae.errors import RunError
from lightdvae.models import DVAE, model_label
from lightdvae.runs.layout import (
    CHECKPOINT_DIR,
    CHECKPOINTS,
    checkpoint_path,
    load_run,
    read_meta,
    training_mode,
)


@dataclass
class OpenRun:
    """A trained model opened for inference, with what result files record about it.

    model: eval mode, on ``device``.  checkpoint: the ``.pt`` file.  meta: the run's config.json (``{}`` if none).
    info: ``{"run_dir", "checkpoint": {"which", "path", "sha256"}, "model": {"name", "label", "parameters",
    "config", "training"}}``.
    """

    run_dir: Path
    model: DVAE
    checkpoint: Path
    meta: dict
    device: torch.device
    info: dict

    @property
    def label(self) -> str:
        return self.info["model"]["label"]

    @property
    def sha256(self) -> str:
        return self.info["checkpoint"]["sha256"]


def open_run(
    run_dir: str | os.PathLike, which: str = "best", device: torch.device | str = "cpu", error: type = RunError
) -> OpenRun:
    """Open a run for inference: the model (eval mode, on ``device``), its checkpoint and the run's description.

    ``run_dir`` may also name a shipped pretrained prior, ``pretrained:NAME`` (:mod:`lightdvae.models.shipped`):
    its results then go to ``./pretrained-NAME/`` (the package folder is not written into).

    Every failure a user can cause (no such folder, no such checkpoint, an unreadable file) raises ``error``
    (a :class:`lightdvae.errors.UserError` subclass) with one line that says what to do.
    """
    if str(run_dir).startswith(PRETRAINED_PREFIX):
        return _open_pretrained(str(run_dir)[len(PRETRAINED_PREFIX) :], which, device, error)
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise error(f"run directory {run_dir} does not exist")
    if not run_dir.is_dir():
        raise error(f"{run_dir} is not a run directory (not a folder)")
    if which not in CHECKPOINTS:
        raise error(f"which must be one of {', '.join(CHECKPOINTS)}, got {which!r}")
    ckpt = checkpoint_path(run_dir, which)
    if not ckpt.is_file():
        folder = run_dir / CHECKPOINT_DIR
        have = sorted(p.stem for p in folder.glob("*.pt")) if folder.is_dir() else []
        hint = f" (it has: {', '.join(have)})" if have else " (it holds no checkpoint: was training started?)"
        raise error(f"{run_dir} has no checkpoint {CHECKPOINT_DIR}/{which}.pt{hint}")
    try:
        model = load_run(run_dir, which=which, device=device)
    except (FileNotFoundError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise error(f"cannot load {ckpt}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    try:
        meta = read_meta(run_dir)
    except RunError as exc:
        raise error(str(exc)) from None
    name = meta.get("model") or getattr(model, "name", type(model).__name__)
    checkpoint = {"which": which, "path": str(ckpt.resolve()), "sha256": sha256_file(ckpt)}
    info = _describe(str(run_dir.resolve()), checkpoint, model, name, training_mode(meta))
    return OpenRun(run_dir, model.eval(), ckpt, meta, torch.device(device), info)


def _describe(where: str, checkpoint: dict, model: DVAE, name: str, mode: str | None, label: str | None = None) -> dict:
    """The ``info`` of an :class:`OpenRun`: what result files record about the model they come from."""
    config = model.config.to_dict() if hasattr(model, "config") else {}
    return {
        "run_dir": where,
        "checkpoint": checkpoint,
        "model": {
            "name": name,
            "label": label or model_label(name, config, mode),
            "parameters": int(model.num_parameters()),
            "config": config,
            "training": mode,
        },
    }


PRETRAINED_PREFIX = "pretrained:"


def _open_pretrained(name: str, which: str, device, error: type) -> OpenRun:
    """A shipped prior opened like a run (``which`` must be ``best``: a prior has only its final weights)."""
    from lightdvae.models.shipped import PretrainedError, pretrained, pretrained_card, weights_dir

    if which != "best":
        raise error(f"a pretrained prior has only its best weights; drop --checkpoint {which}")
    try:
        card = pretrained_card(name)
        model = pretrained(name, device=device)
    except PretrainedError as exc:
        raise error(str(exc)) from None
    key = card["name"]
    mode = card.get("training_mode")
    meta = {
        "model": card["model"],
        "config": card["config"],
        "training": {"training": mode} if mode else {},
        "data": {"spec": card.get("data", "builtin")},
        "pretrained": key,
    }
    path = weights_dir() / f"{key}.pt"
    checkpoint = {"which": "best", "path": str(path), "sha256": card["sha256"]}
    label = f"{card.get('label') or model_label(card['model'], card['config'], mode)} (shipped)"
    info = _describe(f"{PRETRAINED_PREFIX}{key}", checkpoint, model, card["model"], mode, label)
    return OpenRun(Path(f"pretrained-{key}"), model, path, meta, torch.device(device), info)
