"""Run directories: what ``lightdvae train`` (and ``lightdvae import-dvae``) write, and how to read them back.

Layout of a run directory::

    RUN_DIR/
      config.json          {"model": NAME, "config": {model config}, "training": {TrainConfig}, "data": {...},
                            "versions": {...}, ...}  (an imported run has "model", "config" and "source")
      log.csv              one row per epoch (see :data:`lightdvae.train.LOG_COLUMNS`)
      status.json          {"state": "running" | "finished" | "early_stopped" | "time_limit" | "diverged"
                            | "interrupted", "epoch": N, ...}
      checkpoints/best.pt  the weights with the best validation loss
      checkpoints/last.pt  the state at the end of the last completed epoch (what ``--resume`` continues from)

A checkpoint is a dict holding at least ``{"model": state_dict, "model_name": NAME, "config": {model config}}``;
those of a training run add ``optimizer``, ``scaler``, ``epoch`` (completed epochs), ``rng`` (torch, CUDA, NumPy
and Python states, one entry per process), ``early_stopping``, ``best_val_loss``, ``best_epoch`` and ``history``
(the rows of log.csv).  Every file is written atomically (a temporary file in the same folder, then
``os.replace``), so a killed process never leaves a broken file.  Checkpoints hold only tensors and plain Python
values and load with ``torch.load(..., weights_only=True)``.

Typical use::

    from lightdvae.runs import load_run
    model = load_run("runs/light", which="best", device="cuda")   # eval mode
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from lightdvae._io import atomic_write, atomic_write_json, atomic_write_text
from lightdvae.models import DVAE, build

CONFIG_FILE = "config.json"
LOG_FILE = "log.csv"
STATUS_FILE = "status.json"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINTS = ("best", "last")

__all__ = [
    "CONFIG_FILE",
    "LOG_FILE",
    "STATUS_FILE",
    "CHECKPOINT_DIR",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "save_checkpoint",
    "checkpoint_path",
    "load_checkpoint",
    "read_config",
    "read_status",
    "load_run",
    "is_run_dir",
]


def save_checkpoint(path: str | os.PathLike, payload: dict) -> Path:
    """``torch.save(payload)`` to ``path`` atomically."""
    return atomic_write(path, lambda fh: torch.save(payload, fh))


def checkpoint_path(run_dir: str | os.PathLike, which: str = "best") -> Path:
    """``run_dir/checkpoints/<which>.pt``; ``which`` may also be the path of a ``.pt`` file."""
    if which in CHECKPOINTS:
        return Path(run_dir) / CHECKPOINT_DIR / f"{which}.pt"
    if str(which).endswith(".pt"):
        return Path(which)
    raise ValueError(f"which must be one of {', '.join(CHECKPOINTS)} or a .pt file, got {which!r}")


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """A checkpoint written by :func:`save_checkpoint` (``weights_only`` loading: no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(payload, dict) or not {"model", "model_name", "config"} <= set(payload):
        raise ValueError(f"{path} is not a lightdvae checkpoint (needs the keys model, model_name, config)")
    return payload


def is_run_dir(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds a run (a config.json or a checkpoint)."""
    run_dir = Path(run_dir)
    return (run_dir / CONFIG_FILE).is_file() or any(checkpoint_path(run_dir, w).is_file() for w in CHECKPOINTS)


def read_config(run_dir: str | os.PathLike) -> dict:
    """The parsed ``config.json`` of a run."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: no {CONFIG_FILE}")
    return json.loads(path.read_text())


def read_status(run_dir: str | os.PathLike) -> dict | None:
    """The parsed ``status.json`` of a training run, or None (imported runs have none)."""
    path = Path(run_dir) / STATUS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def model_from_checkpoint(payload: dict, device: str | torch.device = "cpu") -> DVAE:
    """Build the model a checkpoint describes and load its weights (eval mode, on ``device``)."""
    model = build(payload["model_name"], **payload["config"])
    model.load_state_dict(payload["model"])
    return model.to(device).eval()


def load_run(run_dir: str | os.PathLike, which: str = "best", device: str | torch.device = "cpu") -> DVAE:
    """The model of a run directory, in eval mode on ``device``.

    Args:
        run_dir: a folder written by ``lightdvae train`` or ``lightdvae import-dvae``.
        which: ``"best"`` (best validation loss; the default), ``"last"`` (end of the last completed epoch),
            or the path of a ``.pt`` checkpoint.
        device: where to put the model (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...).

    Raises:
        FileNotFoundError: no such run or checkpoint.  ValueError: the file is not a lightdvae checkpoint.
    """
    run_dir = Path(run_dir)
    if which in CHECKPOINTS and not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    path = checkpoint_path(run_dir, which)
    if not path.is_file():
        have = [w for w in CHECKPOINTS if checkpoint_path(run_dir, w).is_file()]
        hint = f" (it has: {', '.join(have)})" if have else " (it holds no checkpoint)"
        raise FileNotFoundError(f"no checkpoint {path}{hint if which in CHECKPOINTS else ''}")
    return model_from_checkpoint(load_checkpoint(path), device)


def weights_sha256(model: torch.nn.Module) -> str:
    """Hex SHA-256 of a model's state dict (names and raw bytes, in name order): identifies weights that were
    never saved as a checkpoint file."""
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
