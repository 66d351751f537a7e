"""What a checkpoint holds and restores: the checkpoint dict, the random states of every process, early stopping
with its warm-up rule, the copy of the best weights, and the checks that a run directory can be started or
resumed as asked."""

from __future__ import annotations

import dataclasses
import math
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lightdvae.errors import ConfigError
from lightdvae.resultdir import LOCK_FILE
from lightdvae.runs import checkpoint_path, load_checkpoint, read_status
from lightdvae.train import distrib
from lightdvae.train.config import RESUME_OVERRIDABLE, TrainConfig, no_checkpoint_message


@dataclass
class EarlyStopping:
    """Best validation loss and patience, with the warm-up rule of the module docstring.

    An epoch is the new best when its validation loss is lower than the best so far, or when a schedule is still
    ramping (its loss measures another objective), or when the best so far was measured during the ramp (so the
    first epoch after the warm-up starts the comparisons).  Patience counts the epochs since the best.
    """

    patience: int
    best_val_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    best_in_ramp: bool = False

    def update(self, epoch: int, val_loss: float, ramping: bool) -> bool:
        """Record epoch ``epoch``'s validation loss; True when it is the new best."""
        if ramping or self.best_in_ramp or val_loss < self.best_val_loss:
            self.best_val_loss, self.best_epoch, self.bad_epochs, self.best_in_ramp = val_loss, epoch, 0, ramping
            return True
        self.bad_epochs += 1
        return False

    def should_stop(self, ramping: bool) -> bool:
        return self.patience > 0 and not ramping and self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_state(cls, state: dict, patience: int) -> EarlyStopping:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**{k: v for k, v in state.items() if k in known}, "patience": patience})


@dataclass
class RunState:
    """What the epoch loop carries from epoch to epoch (and a checkpoint restores): the last completed epoch,
    early stopping, the log rows and the best weights (a CPU copy; None before the first epoch)."""

    stopper: EarlyStopping
    start_epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best_state: dict[str, Tensor] | None = None
    #: the run state the last checkpoint recorded (``running``, ``finished``, ``early_stopped``, ``time_limit``)
    last_state: str | None = None


def training_seed(seed: int, epoch: int = 0) -> int:
    """The seed of this process's training stream (``epoch``: the epoch a reseeded resume starts after)."""
    return seed + 7919 * (distrib.rank() + 1) + epoch


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state(device: torch.device) -> dict:
    """The random states of torch, CUDA (on a GPU), NumPy and Python, as tensors and plain values."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["name"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def clone_state(model: torch.nn.Module) -> dict[str, Tensor]:
    """A real copy of the weights (not references to the live tensors), on the CPU."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def checkpoint(learner, epoch: int, rng: list[dict], state: RunState, training: dict, run_state: str) -> dict:
    """The checkpoint dict of a completed epoch (see :mod:`lightdvae.runs`): the weights (a copy), optimizer and
    scaler, the random states of every process (``rng``), early stopping, the log rows, the run state after this
    epoch and the best weights so far (``best_model``: ``last.pt`` is the one commit point of an epoch, so a kill
    before ``best.pt`` is rewritten loses nothing)."""
    s = state.stopper
    return {
        "model": clone_state(learner.model),
        "model_name": learner.name,
        "config": learner.model.config.to_dict(),
        "optimizer": learner.optimizer.state_dict(),
        "scaler": learner.scaler.state_dict() if learner.scaler.is_enabled() else None,
        "epoch": epoch,
        "rng": rng,
        "early_stopping": s.state_dict(),
        "best_val_loss": s.best_val_loss,
        "best_epoch": s.best_epoch,
        "best_model": state.best_state,
        "history": state.history,
        "training": training,
        "state": run_state,
    }


def best_checkpoint(last: dict) -> dict:
    """``best.pt``'s contents, derived from a ``last.pt`` dict: the best weights and what identifies them."""
    return {
        "model": last["best_model"],
        "model_name": last["model_name"],
        "config": last["config"],
        "epoch": last["best_epoch"],
        "best_epoch": last["best_epoch"],
        "best_val_loss": last["best_val_loss"],
        "training": last["training"],
    }


def best_is_current(out: Path, best_epoch: int) -> bool:
    """Whether ``best.pt`` holds the weights of ``best_epoch`` (False when missing, unreadable or stale)."""
    path = checkpoint_path(out, "best")
    if not path.is_file():
        return False
    try:
        return int(load_checkpoint(path).get("epoch", -1)) == int(best_epoch)
    except (ValueError, TypeError):
        return False


def restore(cfg: TrainConfig, out: Path, learner, device: torch.device) -> tuple[RunState, dict]:
    """Load ``last.pt`` into ``learner`` (model, optimizer, scaler) and this process's random states; returns the
    run state it continues from (with the best weights) and the checkpoint dict."""
    try:
        ckpt = load_checkpoint(checkpoint_path(out, "last"))
    except ValueError as exc:  # a truncated or foreign file (the saves are atomic: not one of ours)
        raise ConfigError(f"{exc}; it cannot be resumed: start the run again with --force --out {out}") from None
    check_resume_compatible(cfg, ckpt, learner.name, learner.model, out)
    learner.model.load_state_dict(ckpt["model"])
    learner.optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scaler"):
        learner.scaler.load_state_dict(ckpt["scaler"])
    start_epoch = int(ckpt["epoch"])
    stopper = EarlyStopping.from_state(ckpt["early_stopping"], cfg.patience)
    history = list(ckpt["history"])
    best_state = ckpt.get("best_model")
    if best_state is None:  # a checkpoint of an older version: the best weights are in best.pt only
        best_path = checkpoint_path(out, "best")
        best_state = load_checkpoint(best_path)["model"] if best_path.is_file() else clone_state(learner.model)
    states, world = ckpt["rng"], distrib.world_size()
    if len(states) == world:
        set_rng_state(states[distrib.rank()], device)
    else:
        warnings.warn(
            f"resuming {out} with {world} process(es) where it was saved with {len(states)}: the random "
            "streams are reseeded, so the run continues validly but not bit-for-bit",
            RuntimeWarning,
            stacklevel=3,
        )
        seed_all(training_seed(cfg.seed, start_epoch))
    # an older checkpoint does not record the run state: status.json does
    last_state = ckpt.get("state") or (read_status(out) or {}).get("state")
    return RunState(stopper, start_epoch, history, best_state, last_state), ckpt


def check_out_dir(cfg: TrainConfig) -> Path:
    """The run directory ``cfg.out``: it must hold ``last.pt`` to resume, and be empty (or forced) to start."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"run directory {out} exists and is not a directory")
    if cfg.resume:
        if not checkpoint_path(out, "last").is_file():
            raise ConfigError(no_checkpoint_message(out))
        return out
    if out.is_dir() and any(p.name != LOCK_FILE for p in out.iterdir()) and not cfg.force:
        if checkpoint_path(out, "last").is_file():
            advice = f"pass --resume {out} to continue it, --force to overwrite it, or choose another --out"
        else:
            advice = "it holds no checkpoint to resume from: pass --force to start it again, or choose another --out"
        raise ConfigError(f"run directory {out} exists and is not empty; {advice}")
    return out


def check_resume_compatible(cfg: TrainConfig, ckpt: dict, model_name: str, model, out: Path) -> None:
    """The checkpoint holds the model asked for, trained with the same fixed settings (ConfigError otherwise).

    The saved configuration is read through the model's config class, so that a checkpoint written before an
    option existed (its key absent, the option at its default) resumes."""
    wanted = model.config.to_dict()
    try:
        held = type(model.config).from_dict(ckpt["config"]).to_dict() if ckpt["model_name"] == model_name else None
    except (TypeError, ValueError):
        held = None
    if held != wanted:
        if held is None:
            what = f"{ckpt['model_name']}, not {model_name}"
        else:
            what = ", ".join(f"{k}: {held[k]!r} -> {wanted[k]!r}" for k in wanted if held.get(k) != wanted[k])
        raise ConfigError(
            f"cannot resume {out}: its checkpoint holds another model configuration ({what}); continue it with "
            f"its own settings (lightdvae train --resume {out}, no --model or --set), or start a new run"
        )
    saved, current = ckpt.get("training") or {}, cfg.to_dict()
    fixed = [k for k in saved if k not in (*RESUME_OVERRIDABLE, "out") and k in current and saved[k] != current[k]]
    if fixed:
        changes = ", ".join(f"{k}: {saved[k]!r} -> {current[k]!r}" for k in fixed)
        raise ConfigError(f"cannot resume {out} with different settings ({changes}); start a new run instead")
