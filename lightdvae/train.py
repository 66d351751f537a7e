"""Training: ``lightdvae.train.train(TrainConfig(...)) -> RunResult``, what ``lightdvae train`` runs.

The published protocol of the DVAE baselines (SPEC section 6) is the default: Adam (lr 1e-3), batches of 128
segments of 50 frames, up to 300 epochs, beta = 1e-2, a linear KL warm-up over 50 epochs, early stopping with
patience 30 on the validation loss once the warm-up is over, and the best validation weights kept as a real copy.

Schedules (epochs are numbered from 1):

* ``kl_warm(n) = min(1, n / kl_warmup_epochs)`` (1 throughout when ``kl_warmup_epochs == 0``).
* Scheduled sampling of the SRNN (``training="ss"``): ``ss_prob(n) = clip((n - ss_start) / (ss_end - ss_start), 0, 1)``,
  0 up to epoch ``ss_start`` (50) and 1 from epoch ``ss_end`` (150) on; one draw per time step shared across
  the batch (the model's ``ss_prob`` argument).  ``training="tf"`` is teacher forcing.
* Early stopping and best weights: while a schedule is still ramping (``kl_warm < 1``, or ``ss_prob < 1`` in
  scheduled sampling) the losses of different epochs measure different objectives, so the latest epoch is
  taken as the best and patience is not counted (the rule of the DVAE review's code).  Afterwards the best
  epoch is the one with the lowest validation loss, and training stops after ``patience`` epochs in a row
  without improvement.

Each epoch: a pass over the shuffled training segments (a tqdm bar on a terminal), then validation under
``torch.no_grad()`` in ``eval()`` mode with a fixed noise seed (the same latent noise every epoch, drawn
outside the training random stream; the validation loss is the epoch's training objective, with its ``kl_warm``
and ``ss_prob``), then ``checkpoints/last.pt`` (and ``best.pt`` when the epoch is the
best), ``log.csv`` and ``status.json`` are rewritten atomically; see :mod:`lightdvae.runs` for the layout.
The loss of a batch is the model's negative ELBO (:func:`lightdvae.models.elbo_terms`), computed in float32
even under autocast.

Resuming (``resume=True``, see :func:`resume_config`) restores the model, the optimizer, the gradient scaler,
the early-stopping state, the log and the random states of torch, CUDA, NumPy and Python of every process;
shuffling is a function of (seed, epoch).  A resumed run therefore continues exactly as an uninterrupted one.

A non-finite loss (NaN or inf) stops training with :class:`TrainingDiverged`, naming the epoch and step; the
checkpoints on disk stay those of the last good epoch.

Multi-process training: run under ``torchrun`` (``WORLD_SIZE > 1`` in the environment) and each process
trains a ``DistributedDataParallel`` replica on its shard of every batch (``batch_size`` is the global batch):
gloo on CPU, NCCL on GPU (one GPU per process, ``cuda:LOCAL_RANK``).  Losses are all-reduced; only rank 0
writes files and prints.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import inspect
import io
import math
import os
import platform
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lightdvae._io import utc_now
from lightdvae.cli import UserError
from lightdvae.models import DVAE, DVAEOutput, LossTerms, build, elbo_terms, names
from lightdvae.runs import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    LOG_FILE,
    STATUS_FILE,
    atomic_write_json,
    atomic_write_text,
    checkpoint_path,
    load_checkpoint,
    read_config,
    read_status,
    save_checkpoint,
)

PRECISIONS = ("fp32", "bf16", "fp16")
TRAININGS = ("tf", "ss")
STOP_REASONS = ("finished", "early_stopped", "time_limit")  #: RunResult.stop_reason (divergence raises)
LOG_COLUMNS = (
    "epoch",
    "train_loss",
    "train_recon",
    "train_kl",
    "train_kl_z",
    "train_kl_w",
    "val_loss",
    "val_recon",
    "val_kl",
    "val_kl_z",
    "val_kl_w",
    "kl_warm",
    "ss_prob",
    "lr",
    "best",
    "seconds",
)
_TERMS = ("loss", "recon", "kl", "kl_z", "kl_w")
#: TrainConfig fields that ``resume_config`` may change; the others must stay as the run was started.
RESUME_OVERRIDABLE = ("data", "epochs", "max_minutes", "patience", "device", "num_workers", "cache_dir", "quiet")
#: a training set up to this size is kept on the GPU (one copy per process) instead of being copied per batch.
DEVICE_DATA_LIMIT = 2 * 2**30
_VAL_SEED_OFFSET = 1_000_003

__all__ = [
    "TrainConfig",
    "RunResult",
    "EarlyStopping",
    "TrainingDiverged",
    "ConfigError",
    "train",
    "train_step",
    "resume_config",
    "kl_warm_at",
    "ss_prob_at",
    "LOG_COLUMNS",
]


class ConfigError(UserError, ValueError):
    """A training option or run directory the user got wrong: ``lightdvae train`` prints it as one line."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf.  ``epoch`` (1-based) and ``step`` (1-based; None when it happened in
    validation) say where; the checkpoints on disk are those of the last good epoch."""

    def __init__(self, message: str, epoch: int, step: int | None, run_dir: Path | None = None):
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.run_dir = run_dir


# ----------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Everything a training run depends on; stored in ``RUN_DIR/config.json`` under ``"training"``.

    model: registry name (``lightdvae.models.names()``).  model_config: overrides of the model's config
        dataclass (e.g. ``{"d_model": 64}``, ``{"inv_s": True}``).
    out: the run directory.  data: corpus spec for :func:`lightdvae.data.resolve_corpus` (``builtin``,
        ``DIR``, ``wsj0:DIR``, ``vb:DIR``); ignored when datasets are passed to :func:`train`.
    training: ``"tf"`` teacher forcing, ``"ss"`` scheduled sampling (models whose forward takes ``ss_prob``:
        the SRNN) with ``ss_start`` / ``ss_end`` (epochs).
    epochs: the last epoch to train (a resumed run continues up to it).  max_minutes: stop at the last epoch
        boundary before this wall-clock budget (judged from the last epoch's duration); at least one epoch.
    batch_size: segments per optimizer step over all processes.  lr: Adam's learning rate.
    beta: weight of the KL terms.  kl_warmup_epochs: length of the linear KL warm-up (0: none).
    patience: epochs without validation improvement before stopping (after the warm-up); 0 disables.
    seq_len: frames per training segment.  grad_clip: max global L2 norm of the gradient (None: no clipping).
    precision: ``fp32``, or autocast in ``bf16`` (GPU or CPU) / ``fp16`` (GPU, with a GradScaler).
    device: ``auto`` (the GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N``.
    seed: seeds the model's initialisation, the shuffling and the noise.  num_workers: DataLoader workers (0:
        batches are sliced from the in-memory segment array).  cache_dir: spectrogram cache folder.
    quiet: no progress bar or per-epoch lines.  resume: continue the run in ``out`` from ``last.pt``.
    force: overwrite the run files already in ``out``.
    """

    model: str
    out: str
    data: str = "builtin"
    model_config: dict = field(default_factory=dict)
    training: str = "tf"
    ss_start: int = 50
    ss_end: int = 150
    epochs: int = 300
    max_minutes: float | None = None
    batch_size: int = 128
    lr: float = 1e-3
    beta: float = 1e-2
    kl_warmup_epochs: int = 50
    patience: int = 30
    seq_len: int = 50
    grad_clip: float | None = None
    precision: str = "fp32"
    device: str = "auto"
    seed: int = 0
    num_workers: int = 0
    cache_dir: str | None = None
    quiet: bool = False
    resume: bool = False
    force: bool = False

    def validate(self) -> TrainConfig:
        """Check every field; raises :class:`ConfigError` naming the option.  Returns self."""
        if self.model.strip().lower() not in names():
            raise ConfigError(f"unknown model {self.model!r}; valid names: {', '.join(names())}")
        self.model = self.model.strip().lower()
        if not isinstance(self.model_config, dict):
            raise ConfigError(f"model_config must be a dict, got {type(self.model_config).__name__}")
        if self.training not in TRAININGS:
            raise ConfigError(
                f"training must be 'tf' (teacher forcing) or 'ss' (scheduled sampling), got {self.training!r}"
            )
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        _check_int("epochs", self.epochs, 1)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("seq_len", self.seq_len, 1)
        _check_int("kl_warmup_epochs", self.kl_warmup_epochs, 0)
        _check_int("patience", self.patience, 0)
        _check_int("ss_start", self.ss_start, 0)
        _check_int("ss_end", self.ss_end, 0)
        _check_int("seed", self.seed, 0)
        _check_int("num_workers", self.num_workers, 0)
        if self.ss_end < self.ss_start:
            raise ConfigError(f"ss_end ({self.ss_end}) must not be before ss_start ({self.ss_start})")
        if not _is_number(self.lr) or not self.lr >= 0 or not math.isfinite(self.lr):
            raise ConfigError(f"lr must be a finite number >= 0, got {self.lr!r}")
        if not _is_number(self.beta) or not self.beta >= 0 or not math.isfinite(self.beta):
            raise ConfigError(f"beta must be a finite number >= 0, got {self.beta!r}")
        if self.grad_clip is not None and (not _is_number(self.grad_clip) or not self.grad_clip > 0):
            raise ConfigError(f"grad_clip must be a number > 0 (or None for no clipping), got {self.grad_clip!r}")
        if self.max_minutes is not None and (not _is_number(self.max_minutes) or not self.max_minutes > 0):
            raise ConfigError(f"max_minutes must be a number > 0 (or None), got {self.max_minutes!r}")
        if not str(self.out).strip():
            raise ConfigError("out (the run directory) must be given")
        if self.resume and self.force:
            raise ConfigError("resume and force exclude each other: resume continues a run, force overwrites it")
        _parse_device(self.device)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"TrainConfig has no field(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        return cls(**values)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _parse_device(spec: str) -> torch.device | None:
    """``None`` for ``auto``; raises ConfigError for a malformed spec."""
    if spec == "auto":
        return None
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {spec!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    return device


def kl_warm_at(epoch: int, warmup_epochs: int) -> float:
    """KL warm-up factor of epoch ``epoch`` (1-based): ``min(1, epoch / warmup_epochs)``; 1 when no warm-up."""
    return 1.0 if warmup_epochs <= 0 else min(1.0, epoch / warmup_epochs)


def ss_prob_at(epoch: int, ss_start: int, ss_end: int) -> float:
    """Scheduled-sampling probability of epoch ``epoch`` (1-based): 0 up to ``ss_start``, linear to 1 at
    ``ss_end``, 1 afterwards (a step at ``ss_start`` when both are equal)."""
    if ss_end <= ss_start:
        return 0.0 if epoch < ss_start else 1.0
    return min(1.0, max(0.0, (epoch - ss_start) / (ss_end - ss_start)))


def resume_config(run_dir: str | os.PathLike, **overrides) -> TrainConfig:
    """The :class:`TrainConfig` that continues the run in ``run_dir`` (``resume=True``), from its config.json.

    ``overrides`` may change only :data:`RESUME_OVERRIDABLE` (e.g. ``epochs=400``, ``max_minutes=60``,
    ``device="cuda"``); anything else raises :class:`ConfigError`.
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise ConfigError(f"cannot resume {run_dir}: it is not a training run directory (no {CONFIG_FILE})")
    meta = read_config(run_dir)
    if "training" not in meta:
        raise ConfigError(f"cannot resume {run_dir}: it was not written by `lightdvae train` (no training settings)")
    bad = sorted(set(overrides) - set(RESUME_OVERRIDABLE))
    if bad:
        raise ConfigError(
            f"cannot change {', '.join(bad)} when resuming {run_dir}; "
            f"only {', '.join(RESUME_OVERRIDABLE)} may change (start a new run for the rest)"
        )
    values = {**meta["training"], **overrides, "out": str(run_dir), "resume": True, "force": False}
    return TrainConfig.from_dict(values).validate()


# ----------------------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class RunResult:
    """What :func:`train` returns.

    model: the best-validation weights (a copy, eval mode, on the training device).
    stop_reason: ``finished`` (reached ``epochs``), ``early_stopped`` or ``time_limit``.
    history: the rows of log.csv (dicts keyed by :data:`LOG_COLUMNS`).
    """

    run_dir: Path
    model: DVAE
    best_val_loss: float
    best_epoch: int
    epochs: int
    stop_reason: str
    history: list[dict]
    seconds: float

    @property
    def final_val_loss(self) -> float:
        return self.history[-1]["val_loss"] if self.history else float("nan")


# ----------------------------------------------------------------------------------------------------------------
# Distributed set-up
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def all_reduce(self, tensor: Tensor, op: str = "sum") -> Tensor:
        if self.enabled:
            reduce_op = {"sum": torch.distributed.ReduceOp.SUM, "max": torch.distributed.ReduceOp.MAX}[op]
            torch.distributed.all_reduce(tensor, op=reduce_op)
        return tensor

    def gather_objects(self, obj) -> list:
        if not self.enabled:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out


def _env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def _resolve_device(spec: str, local_rank: int, distributed: bool) -> torch.device:
    requested = _parse_device(spec)
    if requested is None:
        requested = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if requested.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {spec!r} asks for a GPU but torch sees no CUDA device; use --device cpu")
        if requested.index is None:
            requested = torch.device("cuda", local_rank if distributed else torch.cuda.current_device())
        if requested.index >= torch.cuda.device_count():
            raise ConfigError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return requested


def _setup_distributed(device_spec: str) -> tuple[_Dist, torch.device]:
    """Join the process group of ``torchrun`` (or one that the caller initialised) and pick this process's device."""
    dist_mod = torch.distributed
    if dist_mod.is_available() and dist_mod.is_initialized():
        rank, world = dist_mod.get_rank(), dist_mod.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        device = _resolve_device(device_spec, local, world > 1)
        return _Dist(rank, world, local, dist_mod.get_backend(), owns_group=False), device
    world = _env_world_size()
    if world <= 1:
        return _Dist(), _resolve_device(device_spec, 0, False)
    if not dist_mod.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = _resolve_device(device_spec, local, True)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist_mod.init_process_group(backend=backend, **kwargs)
    return _Dist(rank, world, local, backend, owns_group=True), device


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------
def _as_power(batch) -> Tensor:
    """A batch of power segments from what a dataset yields: a tensor, a (tensor, ...) tuple or a dict."""
    if isinstance(batch, dict):
        batch = batch["power"]
    elif isinstance(batch, (list, tuple)):
        batch = batch[0]
    return batch


def _load_datasets(cfg: TrainConfig, ctx: _Dist) -> tuple[object, object, dict]:
    """Training and validation segment datasets of the corpus ``cfg.data``; rank 0 fills the cache first."""
    from lightdvae.data import SegmentDataset, SpectrogramCache, resolve_corpus

    progress = None if (ctx.main and not cfg.quiet) else False
    if not ctx.main:
        ctx.barrier()  # rank 0 resolves (maybe builds) the corpus and fills the cache; the others then read it
    try:
        corpus = resolve_corpus(cfg.data, progress=progress)
        cache = SpectrogramCache(cfg.cache_dir)
        kw = {"segment_frames": cfg.seq_len, "cache": cache, "progress": progress}
        train_ds = SegmentDataset(corpus.split("train"), name="train", **kw)
        val_ds = SegmentDataset(corpus.split("val"), name="val", **kw)
    finally:
        if ctx.main:
            ctx.barrier()
    info = {
        "spec": cfg.data,
        "corpus": corpus.name,
        "layout": corpus.layout,
        "root": str(corpus.root),
        "train_files": len(train_ds.files),
        "val_files": len(val_ds.files),
    }
    return train_ds, val_ds, info


class _ShardedBatches:
    """Batches of segment indices for one process: a ``DistributedSampler`` (seeded shuffle, reshuffled per epoch
    with ``set_epoch``) for training, a strided shard without padding for validation."""

    def __init__(self, n: int, batch_size: int, ctx: _Dist, shuffle: bool, seed: int):
        from torch.utils.data.distributed import DistributedSampler

        self.n, self.batch_size, self.shuffle = n, batch_size, shuffle
        if shuffle:
            self.sampler = DistributedSampler(
                range(n), num_replicas=ctx.world, rank=ctx.rank, shuffle=True, seed=seed, drop_last=False
            )
        else:
            self.sampler = list(range(ctx.rank, n, ctx.world))

    def set_epoch(self, epoch: int) -> None:
        if self.shuffle:
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        indices = list(self.sampler)
        for i in range(0, len(indices), self.batch_size):
            yield indices[i : i + self.batch_size]

    def __len__(self) -> int:
        count = len(self.sampler)
        return (count + self.batch_size - 1) // self.batch_size


class _Batches:
    """Iterates power batches ``(b, L, F)`` on ``device``: slices of an in-memory array when the dataset is one
    (no per-item collation; kept on the GPU when small), a DataLoader over the dataset otherwise."""

    def __init__(self, dataset, batches: _ShardedBatches, device: torch.device, num_workers: int, seed: int = 0):
        from torch.utils.data import DataLoader

        self.batches, self.device = batches, device
        self.tensor = self.loader = None
        if num_workers == 0 and isinstance(dataset, torch.Tensor):
            self.tensor = dataset
        elif num_workers == 0 and getattr(dataset, "in_memory", False) and callable(getattr(dataset, "tensor", None)):
            self.tensor = dataset.tensor()  # an in-memory SegmentDataset: all segments as one (n, L, F) array
        if self.tensor is not None:
            if device.type == "cuda" and self.tensor.numel() * self.tensor.element_size() <= DEVICE_DATA_LIMIT:
                self.tensor = self.tensor.to(device)
        else:
            self.loader = DataLoader(
                dataset,
                batch_sampler=batches,
                num_workers=num_workers,
                pin_memory=device.type == "cuda",
                persistent_workers=num_workers > 0,
                # worker seeds from a private generator: the global stream stays the same on resume
                generator=torch.Generator().manual_seed(seed),
            )

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Tensor]:
        non_blocking = self.device.type == "cuda"
        if self.tensor is not None:
            for idx in self.batches:
                index = torch.as_tensor(idx, dtype=torch.long, device=self.tensor.device)
                yield self.tensor.index_select(0, index).to(self.device, non_blocking=non_blocking)
        else:
            for batch in self.loader:
                yield _as_power(batch).to(self.device, non_blocking=non_blocking)


def _dataset_len_shape(dataset) -> tuple[int, tuple[int, ...]]:
    n = len(dataset)
    if n == 0:
        raise ConfigError("a dataset is empty")
    first = _as_power(dataset[0])
    return n, tuple(first.shape)


# ----------------------------------------------------------------------------------------------------------------
# Random states
# ----------------------------------------------------------------------------------------------------------------
def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _rng_state(device: torch.device) -> dict:
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


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["name"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# ----------------------------------------------------------------------------------------------------------------
# The steps
# ----------------------------------------------------------------------------------------------------------------
def _float32_output(out: DVAEOutput) -> DVAEOutput:
    """The model output with every floating tensor in float32 (the loss is never reduced in half precision)."""
    changes = {}
    for f in dataclasses.fields(out):
        value = getattr(out, f.name)
        if isinstance(value, Tensor) and value.is_floating_point() and value.dtype != torch.float32:
            changes[f.name] = value.float()
    return dataclasses.replace(out, **changes) if changes else out


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _terms_vector(terms, size: int, device: torch.device) -> Tensor:
    """(loss, recon, kl, kl_z, kl_w) * batch size, float64, detached (no host sync)."""
    values = [terms.loss, terms.recon, terms.kl, terms.kl_z, terms.kl_w if terms.kl_w is not None else terms.kl_z]
    return torch.stack([v.detach().to(torch.float64) for v in values]).to(device) * size


def _mean_terms(sums: Tensor, has_w: bool) -> dict:
    """All-reduced sums (5 terms + count) -> dict of means."""
    values = sums.tolist()
    count = values[5]
    out = {k: (v / count if count else float("nan")) for k, v in zip(_TERMS, values[:5], strict=True)}
    if not has_w:
        out["kl_w"] = None
    return out


def train_step(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    power: Tensor,
    *,
    beta: float = 1e-2,
    kl_warm: float = 1.0,
    forward_kwargs: dict | None = None,
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
    grad_clip: float | None = None,
    is_finite: Callable[[Tensor], bool] | None = None,
) -> tuple[LossTerms, bool]:
    """One optimisation step on a batch: forward (under autocast unless fp32), the negative ELBO in float32,
    backward, optional gradient clipping, optimizer (and gradient scaler) step.

    Args:
        net: the model, or its ``DistributedDataParallel`` wrapper (called as ``net(power, **forward_kwargs)``).
        optimizer: over ``net``'s parameters.
        power: ``(batch, frames, F)`` power spectrograms on the model's device.
        beta, kl_warm: the KL weight and the warm-up factor of :func:`lightdvae.models.elbo_terms`.
        forward_kwargs: e.g. ``{"ss_prob": 0.3}`` for scheduled sampling.
        precision: ``fp32``, ``bf16`` or ``fp16`` (``fp16`` wants an enabled ``scaler``).
        is_finite: decides whether the loss is usable (default ``torch.isfinite``; the trainer all-reduces it).

    Returns:
        ``(terms, stepped)``: the loss terms, and False when the loss was not finite (then nothing was updated).
    """
    with _autocast(power.device, precision):
        out = net(power, **(forward_kwargs or {}))
    terms = elbo_terms(power, _float32_output(out), beta=beta, kl_warm=kl_warm)
    finite = is_finite(terms.loss) if is_finite is not None else bool(torch.isfinite(terms.loss.detach()))
    if not finite:
        return terms, False
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None and scaler.is_enabled():
        scaler.scale(terms.loss).backward()
        if grad_clip is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
    else:
        terms.loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        optimizer.step()
    return terms, True


@torch.no_grad()
def _validate(
    model: DVAE,
    batches: _Batches,
    device: torch.device,
    precision: str,
    forward_kwargs: dict,
    beta: float,
    kl_warm: float,
    seed: int,
    ctx: _Dist,
) -> tuple[dict, bool]:
    """Validation loss terms (means over all processes) under no_grad and eval mode, with fixed noise."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(6, dtype=torch.float64, device=device)
    has_w = False
    cuda_devices = [device.index] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(seed)
            for power in batches:
                with _autocast(device, precision):
                    out = model(power, **forward_kwargs)
                terms = elbo_terms(power, _float32_output(out), beta=beta, kl_warm=kl_warm)
                has_w = has_w or terms.kl_w is not None
                sums[:5] += _terms_vector(terms, power.shape[0], device)
                sums[5] += power.shape[0]
    finally:
        model.train(was_training)
    flag = torch.tensor([1.0 if has_w else 0.0], device=device)
    ctx.all_reduce(sums)
    ctx.all_reduce(flag, "max")
    return _mean_terms(sums, bool(flag.item())), bool(flag.item())


def _supports_scheduled_sampling(model: DVAE) -> bool:
    return "ss_prob" in inspect.signature(type(model).forward).parameters


def _clone_state(model: torch.nn.Module) -> dict[str, Tensor]:
    """A real copy of the weights (not references to the live tensors), on the CPU."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------------------------------------------
# Run directory
# ----------------------------------------------------------------------------------------------------------------
_RUN_FILES = (CONFIG_FILE, LOG_FILE, STATUS_FILE)


def _check_out_dir(cfg: TrainConfig) -> Path:
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"run directory {out} exists and is not a directory")
    if cfg.resume:
        if not checkpoint_path(out, "last").is_file():
            raise ConfigError(f"cannot resume {out}: no {CHECKPOINT_DIR}/last.pt there (was it started with train?)")
        return out
    if out.is_dir() and any(out.iterdir()) and not cfg.force:
        raise ConfigError(
            f"run directory {out} exists and is not empty; pass --resume {out} to continue it, "
            "--force to overwrite it, or choose another --out"
        )
    return out


def _clear_run_files(out: Path) -> None:
    for name in _RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for which in ("best", "last"):
        checkpoint_path(out, which).unlink(missing_ok=True)


def _versions() -> dict:
    import lightdvae
    from lightdvae import _ext

    return {
        "lightdvae": lightdvae.__version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "native_extension": _ext.HAS_NATIVE,
        "backend": _ext.backend(),
    }


def _log_csv(history: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(LOG_COLUMNS)
    for row in history:
        cells = []
        for key in LOG_COLUMNS:
            value = row.get(key)
            if value is None:
                cells.append("")
            elif isinstance(value, bool):
                cells.append(int(value))
            elif isinstance(value, float):
                cells.append(repr(value))
            else:
                cells.append(value)
        writer.writerow(cells)
    return buf.getvalue()


def _write_status(out: Path, state: str, **extra) -> None:
    atomic_write_json(out / STATUS_FILE, {"state": state, "updated": utc_now(), **extra})


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------
def _say(cfg: TrainConfig, ctx: _Dist, message: str) -> None:
    if ctx.main and not cfg.quiet:
        print(message, flush=True)


def _progress(iterable, total: int, desc: str, cfg: TrainConfig, ctx: _Dist):
    from tqdm.auto import tqdm

    disable = cfg.quiet or not ctx.main or not sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, leave=False, disable=disable, dynamic_ncols=True, unit="batch")


def train(
    config: TrainConfig,
    *,
    train_dataset=None,
    val_dataset=None,
    callback: Callable[[dict], None] | None = None,
) -> RunResult:
    """Train (or continue, with ``config.resume``) a model; see the module docstring for the protocol.

    Args:
        config: the run's settings.
        train_dataset, val_dataset: datasets of ``(seq_len, 513)`` float32 power segments (or a ``(n, L, F)``
            tensor) used instead of the corpus ``config.data`` (both or neither; pass them again to resume).
        callback: called on rank 0 with each epoch's log row once its checkpoint is written.

    Returns:
        a :class:`RunResult` with the best weights.

    Raises:
        ConfigError: bad options, a run directory that exists, a model that does not train that way.
        TrainingDiverged: NaN / inf loss (the checkpoints of the last good epoch are kept).
        lightdvae.data.DataError: the corpus cannot be used.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"train() takes a TrainConfig, got {type(config).__name__}")
    cfg = dataclasses.replace(config, model_config=copy.deepcopy(config.model_config)).validate()
    if (train_dataset is None) != (val_dataset is None):
        raise ConfigError("pass both train_dataset and val_dataset, or neither (to use the corpus config.data)")
    t_start = time.perf_counter()
    torch.autograd.set_detect_anomaly(False)
    ctx, device = _setup_distributed(cfg.device)
    try:
        out = _check_out_dir(cfg)
        ctx.barrier()  # every process has looked at the run directory before rank 0 writes into it
        trainer = _Trainer(cfg, ctx, device, out, t_start)
        try:
            return trainer.run(train_dataset, val_dataset, callback)
        except KeyboardInterrupt:
            if ctx.main and trainer.meta:  # the run directory was set up: say how to continue
                done = trainer.history[-1]["epoch"] if trainer.history else 0
                _write_status(out, "interrupted", epoch=done, message=f"resume with: lightdvae train --resume {out}")
            raise
    finally:
        if ctx.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _check_precision(cfg: TrainConfig, device: torch.device) -> None:
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            "precision fp16 needs a CUDA GPU (autocast to float16 with a GradScaler); on the CPU use bf16 or fp32"
        )
    if cfg.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"precision bf16: {torch.cuda.get_device_name(device)} does not support bfloat16")


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


class _Trainer:
    """One call of :func:`train` on one process: set-up, optional restore, the epoch loop, the run directory."""

    def __init__(self, cfg: TrainConfig, ctx: _Dist, device: torch.device, out: Path, t_start: float):
        self.cfg, self.ctx, self.device, self.out, self.t_start = cfg, ctx, device, out, t_start
        self.ss = cfg.training == "ss"
        self.history: list[dict] = []
        self.start_epoch = 0
        self.stopper = EarlyStopping(cfg.patience)
        self.best_state: dict[str, Tensor] | None = None
        self.meta: dict = {}

    def say(self, message: str) -> None:
        _say(self.cfg, self.ctx, message)

    # ---- set-up ------------------------------------------------------------------------------------------------
    def build_model(self) -> None:
        cfg = self.cfg
        _check_precision(cfg, self.device)
        if cfg.batch_size % self.ctx.world:
            raise ConfigError(
                f"batch_size {cfg.batch_size} is the global batch and must divide evenly over {self.ctx.world} "
                "processes"
            )
        _seed_all(cfg.seed)  # the same initialisation on every process (DDP also broadcasts rank 0's weights)
        model_config = dict(cfg.model_config)
        if self.ss and "prior_on_own_past" not in model_config and cfg.model.strip().lower() == "srnn":
            # The published scheduled-sampling SRNN also feeds its prior the h of its own past predictions
            # (the authors' code and golden vectors); teacher forcing keeps the classic, parallel SRNN.
            model_config["prior_on_own_past"] = True
        try:
            model = build(cfg.model, **model_config)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"model {cfg.model}: {exc}") from None
        if self.ss and not _supports_scheduled_sampling(model):
            raise ConfigError(
                "training 'ss' (scheduled sampling) applies to models that feed back their own past speech step "
                f"by step (srnn); {cfg.model} trains with 'tf'"
            )
        self.model = model.to(self.device)
        causal_rvae = model.name == "rvae" and model.config.to_dict().get("causal")
        self.model_name = "rvae-causal" if causal_rvae else model.name
        self.optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        self.net: torch.nn.Module = model
        if self.ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(model, device_ids=device_ids)

    def build_data(self, train_dataset, val_dataset) -> None:
        cfg, ctx = self.cfg, self.ctx
        if train_dataset is None:
            train_dataset, val_dataset, info = _load_datasets(cfg, ctx)
        else:
            info = {"spec": "<datasets passed to lightdvae.train.train>"}
        n_train, shape = _dataset_len_shape(train_dataset)
        n_val, val_shape = _dataset_len_shape(val_dataset)
        x_dim = self.model.config.x_dim
        for what, s in (("training", shape), ("validation", val_shape)):
            if len(s) != 2 or s[1] != x_dim:
                raise ConfigError(f"{what} items must be (frames, {x_dim}) power segments, got shape {s}")
        info.update(train_segments=n_train, val_segments=n_val, segment_frames=shape[0])
        self.data_info = info
        self.local_batch = cfg.batch_size // ctx.world
        shards = _ShardedBatches(n_train, self.local_batch, ctx, True, cfg.seed)
        self.train_batches = _Batches(train_dataset, shards, self.device, cfg.num_workers, cfg.seed)
        shards = _ShardedBatches(n_val, self.local_batch, ctx, False, cfg.seed)
        self.val_batches = _Batches(val_dataset, shards, self.device, cfg.num_workers, cfg.seed)

    def restore(self) -> str | None:
        """Load ``last.pt`` (and the best weights); returns a stop reason when there is nothing left to do."""
        cfg, ctx, out = self.cfg, self.ctx, self.out
        ckpt = load_checkpoint(checkpoint_path(out, "last"))
        _check_resume_compatible(cfg, ckpt, self.model_name, self.model, out)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.start_epoch = int(ckpt["epoch"])
        self.stopper = EarlyStopping.from_state(ckpt["early_stopping"], cfg.patience)
        self.history = list(ckpt["history"])
        best_path = checkpoint_path(out, "best")
        self.best_state = load_checkpoint(best_path)["model"] if best_path.is_file() else _clone_state(self.model)
        states = ckpt["rng"]
        if len(states) == ctx.world:
            _set_rng_state(states[ctx.rank], self.device)
        else:
            warnings.warn(
                f"resuming {out} with {ctx.world} process(es) where it was saved with {len(states)}: the random "
                "streams are reseeded, so the run continues validly but not bit-for-bit",
                RuntimeWarning,
                stacklevel=3,
            )
            _seed_all(cfg.seed + 7919 * (ctx.rank + 1) + self.start_epoch)
        ramping = self._ramping(self.start_epoch)
        if (read_status(out) or {}).get("state") == "early_stopped" and self.stopper.should_stop(ramping):
            self.say(f"{out}: training already stopped early at epoch {self.start_epoch}; nothing to do")
            return "early_stopped"
        if self.start_epoch >= cfg.epochs:
            self.say(f"{out}: already trained for {self.start_epoch} epochs; pass a larger --epochs to continue")
            return "finished"
        return None

    def write_meta(self) -> None:
        cfg, ctx, model = self.cfg, self.ctx, self.model
        self.meta = {
            "model": self.model_name,
            "config": model.config.to_dict(),
            "parameters": model.num_parameters(),
            "training": {k: v for k, v in cfg.to_dict().items() if k not in ("resume", "force")},
            "data": self.data_info,
            "distributed": {"world_size": ctx.world, "backend": ctx.backend, "local_batch": self.local_batch},
            "device": str(self.device),
            "versions": _versions(),
            "schedules": {
                "kl_warm": "min(1, epoch / kl_warmup_epochs)",
                "ss_prob": "clip((epoch - ss_start) / (ss_end - ss_start), 0, 1)" if self.ss else None,
            },
        }
        if ctx.main:
            if cfg.resume:
                old = read_config(self.out)
                self.meta["created"] = old.get("created")
                self.meta["resumed"] = [*old.get("resumed", []), {"at_epoch": self.start_epoch, "time": utc_now()}]
            else:
                if cfg.force:
                    _clear_run_files(self.out)
                self.meta["created"] = utc_now()
            atomic_write_json(self.out / CONFIG_FILE, self.meta)
            _write_status(self.out, "running", epoch=self.start_epoch, epochs=cfg.epochs)
        ctx.barrier()

    # ---- the loop ----------------------------------------------------------------------------------------------
    def _ramping(self, epoch: int) -> bool:
        cfg = self.cfg
        if kl_warm_at(epoch, cfg.kl_warmup_epochs) < 1.0:
            return True
        return self.ss and ss_prob_at(epoch, cfg.ss_start, cfg.ss_end) < 1.0

    def train_epoch(self, epoch: int, kl_warm: float, forward_kwargs: dict) -> dict:
        cfg, ctx, device = self.cfg, self.ctx, self.device
        self.model.train()
        self.train_batches.set_epoch(epoch)
        sums = torch.zeros(6, dtype=torch.float64, device=device)
        has_w = False
        bar = _progress(self.train_batches, len(self.train_batches), f"epoch {epoch}/{cfg.epochs}", cfg, ctx)
        try:
            for step, power in enumerate(bar, 1):
                terms, stepped = train_step(
                    self.net,
                    self.optimizer,
                    power,
                    beta=cfg.beta,
                    kl_warm=kl_warm,
                    forward_kwargs=forward_kwargs,
                    precision=cfg.precision,
                    scaler=self.scaler,
                    grad_clip=cfg.grad_clip,
                    is_finite=self._all_finite,
                )
                if not stepped:
                    self.diverged(epoch, step, terms)
                has_w = has_w or terms.kl_w is not None
                sums[:5] += _terms_vector(terms, power.shape[0], device)
                sums[5] += power.shape[0]
                if not bar.disable and step % 10 == 0:
                    bar.set_postfix(loss=f"{terms.loss.item():.4g}")
        finally:
            bar.close()
        ctx.all_reduce(sums)
        return _mean_terms(sums, has_w)

    def _all_finite(self, loss: Tensor) -> bool:
        """Whether the loss is finite on every process (one all-reduce under DDP)."""
        bad = torch.logical_not(torch.isfinite(loss.detach())).to(torch.float32).reshape(1)
        return not self.ctx.all_reduce(bad, "max").item()

    def run(self, train_dataset, val_dataset, callback) -> RunResult:
        cfg, ctx = self.cfg, self.ctx
        self.build_model()
        self.build_data(train_dataset, val_dataset)
        if cfg.resume:
            done = self.restore()
            if done is not None:
                return self.result(self.start_epoch, done)
        else:
            _seed_all(cfg.seed + 7919 * (ctx.rank + 1))  # this process's training stream
        self.write_meta()
        if cfg.resume:
            s = self.stopper
            self.say(
                f"resuming {self.out} after epoch {self.start_epoch} (best {s.best_val_loss:.5g} at {s.best_epoch})"
            )
        else:
            procs = f" x {ctx.world} processes" if ctx.enabled else ""
            self.say(
                f"training {self.model_name} ({self.model.num_parameters():,} parameters) on {self.device}{procs}: "
                f"{self.data_info['train_segments']} training / {self.data_info['val_segments']} validation "
                f"segments of {self.data_info['segment_frames']} frames, batch {cfg.batch_size}, up to "
                f"{cfg.epochs} epochs -> {self.out}"
            )
        val_seed = cfg.seed + _VAL_SEED_OFFSET + ctx.rank
        stop_reason, epoch = "finished", self.start_epoch
        for epoch in range(self.start_epoch + 1, cfg.epochs + 1):
            t_epoch = time.perf_counter()
            kl_warm = kl_warm_at(epoch, cfg.kl_warmup_epochs)
            ss_prob = ss_prob_at(epoch, cfg.ss_start, cfg.ss_end) if self.ss else None
            forward_kwargs = {"ss_prob": ss_prob} if self.ss else {}
            train_terms = self.train_epoch(epoch, kl_warm, forward_kwargs)
            val_terms, _ = _validate(
                self.model,
                self.val_batches,
                self.device,
                cfg.precision,
                forward_kwargs,
                cfg.beta,
                kl_warm,
                val_seed,
                ctx,
            )
            if not math.isfinite(val_terms["loss"]):
                self.diverged(epoch, None, None, val=val_terms["loss"])
            ramping = self._ramping(epoch)
            is_best = self.stopper.update(epoch, val_terms["loss"], ramping)
            if is_best:
                self.best_state = _clone_state(self.model)
            row = {"epoch": epoch}
            row.update({f"train_{k}": v for k, v in train_terms.items()})
            row.update({f"val_{k}": v for k, v in val_terms.items()})
            lr = float(self.optimizer.param_groups[0]["lr"])
            seconds = round(time.perf_counter() - t_epoch, 3)
            row.update(kl_warm=kl_warm, ss_prob=ss_prob, lr=lr, best=is_best, seconds=seconds)
            self.history.append(row)

            early = self.stopper.should_stop(ramping)
            out_of_time = self.out_of_time(epoch, time.perf_counter() - t_epoch)
            state = "early_stopped" if early else "time_limit" if out_of_time else "running"
            if state == "running" and epoch == cfg.epochs:
                state = "finished"
            self.save(epoch, is_best, state)
            if ctx.main and callback is not None:
                callback(dict(row))
            if early:
                stop_reason = "early_stopped"
                self.say(
                    f"early stopping: no validation improvement for {self.stopper.bad_epochs} epochs "
                    f"(best at epoch {self.stopper.best_epoch})"
                )
                break
            if out_of_time:
                stop_reason = "time_limit"
                self.say(f"stopping after epoch {epoch}: another epoch would pass --max-minutes {cfg.max_minutes}")
                break
        result = self.result(epoch, stop_reason)
        self.say(
            f"done ({stop_reason}) after epoch {epoch}: best validation loss {result.best_val_loss:.5g} at epoch "
            f"{result.best_epoch}; {result.seconds:.1f} s -> {self.out}"
        )
        return result

    def out_of_time(self, epoch: int, epoch_seconds: float) -> bool:
        """Rank 0 decides whether another epoch fits in ``max_minutes``; every process gets the answer."""
        cfg = self.cfg
        flag = torch.zeros(1, device=self.device)
        if self.ctx.main and cfg.max_minutes is not None and epoch < cfg.epochs:
            elapsed = time.perf_counter() - self.t_start
            flag[0] = float(elapsed + epoch_seconds > 60.0 * cfg.max_minutes)
        return bool(self.ctx.all_reduce(flag, "max").item())

    # ---- outputs -----------------------------------------------------------------------------------------------
    def save(self, epoch: int, is_best: bool, state: str) -> None:
        """Checkpoints, log and status of a completed epoch (rank 0 writes; every process gives its RNG state)."""
        ctx, out, s = self.ctx, self.out, self.stopper
        rng = ctx.gather_objects(_rng_state(self.device))
        if ctx.main:
            payload = {
                "model": _clone_state(self.model),
                "model_name": self.model_name,
                "config": self.model.config.to_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "epoch": epoch,
                "rng": rng,
                "early_stopping": s.state_dict(),
                "best_val_loss": s.best_val_loss,
                "best_epoch": s.best_epoch,
                "history": self.history,
                "training": self.meta["training"],
            }
            save_checkpoint(checkpoint_path(out, "last"), payload)
            if is_best:
                save_checkpoint(checkpoint_path(out, "best"), payload)
            atomic_write_text(out / LOG_FILE, _log_csv(self.history))
            _write_status(
                out, state, epoch=epoch, epochs=self.cfg.epochs, best_epoch=s.best_epoch, best_val_loss=s.best_val_loss
            )
            self.say(_epoch_line(self.history[-1], self.cfg, s.bad_epochs))
        ctx.barrier()

    def diverged(self, epoch: int, step: int | None, terms, val: float | None = None) -> None:
        last = checkpoint_path(self.out, "last")
        kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was saved yet"
        if step is None:
            where = f"in validation after epoch {epoch} (validation loss {val})"
        else:
            detail = ", ".join(f"{k}={v:.4g}" for k, v in terms.as_floats().items())
            where = f"at epoch {epoch}, step {step} ({detail})"
        message = (
            f"training diverged: the loss is not finite {where}; {kept}. Try a smaller --lr, --grad-clip, or "
            "--precision fp32"
        )
        if self.ctx.main:
            _write_status(self.out, "diverged", epoch=epoch, step=step, message=message)
        raise TrainingDiverged(message, epoch, step, self.out)

    def result(self, epochs: int, stop_reason: str) -> RunResult:
        best_model = copy.deepcopy(self.model)
        if self.best_state is not None:
            best_model.load_state_dict(self.best_state)
        return RunResult(
            run_dir=self.out,
            model=best_model.eval(),
            best_val_loss=self.stopper.best_val_loss,
            best_epoch=self.stopper.best_epoch,
            epochs=epochs,
            stop_reason=stop_reason,
            history=list(self.history),
            seconds=time.perf_counter() - self.t_start,
        )


def _epoch_line(row: dict, cfg: TrainConfig, bad_epochs: int) -> str:
    parts = [
        f"epoch {row['epoch']}/{cfg.epochs}",
        f"train {row['train_loss']:.5g} (recon {row['train_recon']:.5g}, kl {row['train_kl']:.4g})",
        f"val {row['val_loss']:.5g} (recon {row['val_recon']:.5g}, kl {row['val_kl']:.4g})",
        f"kl_warm {row['kl_warm']:.2f}",
    ]
    if row["ss_prob"] is not None:
        parts.append(f"ss_prob {row['ss_prob']:.2f}")
    parts.append(f"{row['seconds']:.1f} s")
    parts.append("best" if row["best"] else f"no improvement for {bad_epochs}")
    return "  ".join(parts)


def _check_resume_compatible(cfg: TrainConfig, ckpt: dict, model_name: str, model: DVAE, out: Path) -> None:
    if ckpt["model_name"] != model_name or ckpt["config"] != model.config.to_dict():
        raise ConfigError(
            f"cannot resume {out}: its checkpoint holds {ckpt['model_name']} with another configuration than "
            f"the one asked for ({model_name}); resume with resume_config({str(out)!r})"
        )
    saved, current = ckpt.get("training") or {}, cfg.to_dict()
    fixed = [k for k in saved if k not in (*RESUME_OVERRIDABLE, "out") and k in current and saved[k] != current[k]]
    if fixed:
        changes = ", ".join(f"{k}: {saved[k]!r} -> {current[k]!r}" for k in fixed)
        raise ConfigError(f"cannot resume {out} with different settings ({changes}); start a new run instead")
