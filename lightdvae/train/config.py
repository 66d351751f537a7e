"""The settings of a training run: :class:`TrainConfig` and its validation, the constants of the protocol, the KL
warm-up and scheduled-sampling schedules, and :func:`resume_config` (the settings that continue a run)."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from lightdvae.errors import ConfigError
from lightdvae.models import names
from lightdvae.runs import CHECKPOINT_DIR, CONFIG_FILE, checkpoint_path, read_config
from lightdvae.runtime import DEVICE_HELP, parse_device

PRECISIONS = ("fp32", "bf16", "fp16")
LR_SCHEDULES = ("constant", "cosine")
LR_FLOOR = 0.05  #: a cosine schedule ends at this fraction of the peak learning rate
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
    "val_si_sdr_gen",
    "val_si_sdr_gt",
    "kl_warm",
    "ss_prob",
    "lr",
    "best",
    "seconds",
)
TERMS = ("loss", "recon", "kl", "kl_z", "kl_w")  #: the loss terms of a log row (``train_*`` / ``val_*``)
#: TrainConfig fields that ``resume_config`` may change; the others must stay as the run was started.
RESUME_OVERRIDABLE = (
    "data",
    "epochs",
    "max_minutes",
    "patience",
    "device",
    "threads",
    "num_workers",
    "cache_dir",
    "quiet",
    "curve_every",
    "curve_files",
)
#: a training set up to this size is kept on the GPU (one copy per process) instead of being copied per batch.
VAL_SEED_OFFSET = 1_000_003  #: validation noise seed = seed + this + rank (outside the training stream)


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
    batch_size: segments per optimizer step over all processes.  lr: Adam's (peak) learning rate.
    lr_warmup: epochs of linear learning-rate warm-up (epoch k of W trains at ``lr * k / W``; 0: none).
    lr_schedule: after the warm-up, ``constant`` (the published protocol) or ``cosine`` (half a cosine from
        ``lr`` down to ``LR_FLOOR * lr`` at ``epochs``; a cosine run cannot change ``epochs`` on resume).
    beta: weight of the KL terms.  kl_warmup_epochs: length of the linear KL warm-up (0: none).
    patience: epochs without validation improvement before stopping (after the warm-up); 0 disables.
    seq_len: frames per training segment.  grad_clip: max global L2 norm of the gradient (None: no clipping).
    budget_schedule: the KL warm-up and the scheduled-sampling ramp follow the share of ``max_minutes`` spent
        rather than the epoch count: epoch ``k`` stands at ``epochs * share`` on them (``share``: the training time
        of the epochs before it plus the last one's duration, over the budget, all sessions counted), and the run
        goes on until the budget is spent, ``epochs`` being the plan the schedules are written for.  A machine
        that slows down or speeds up then costs or gains epochs in proportion, never a schedule.  Needs
        ``max_minutes``.
    precision: ``fp32``, or autocast in ``bf16`` (GPU or CPU) / ``fp16`` (GPU, with a GradScaler).
    device: ``auto`` (the GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N``.
    seed: seeds the model's initialisation, the shuffling and the noise.  num_workers: DataLoader workers (0:
        batches are sliced from the in-memory segment array).  cache_dir: spectrogram cache folder.
    threads: torch's intra-op threads while training (None: torch's default, one per core; restored after).
    curve_every: every N epochs (and at the last), the mean GEN and GT SI-SDR of ``curve_files`` validation
        utterances (the first by name, whole, resynthesised with their own phase) go into the epoch's log row
        (``val_si_sdr_gen`` / ``val_si_sdr_gt``): a learning curve in the metric the paper reports.  0: off.
        Needs the corpus (not datasets passed in); the training's random streams are not touched.
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
    lr_warmup: int = 0
    lr_schedule: str = "constant"
    beta: float = 1e-2
    kl_warmup_epochs: int = 50
    patience: int = 30
    seq_len: int = 50
    grad_clip: float | None = None
    budget_schedule: bool = False
    precision: str = "fp32"
    device: str = "auto"
    seed: int = 0
    num_workers: int = 0
    cache_dir: str | None = None
    threads: int | None = None
    curve_every: int = 0
    curve_files: int = 8
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
        _check_int("lr_warmup", self.lr_warmup, 0)
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.lr_schedule == "cosine" and self.lr_warmup >= self.epochs:
            raise ConfigError(f"lr_warmup ({self.lr_warmup}) must be shorter than epochs ({self.epochs}) with cosine")
        _check_int("patience", self.patience, 0)
        _check_int("ss_start", self.ss_start, 0)
        _check_int("ss_end", self.ss_end, 0)
        _check_int("seed", self.seed, 0)
        _check_int("num_workers", self.num_workers, 0)
        _check_int("curve_every", self.curve_every, 0)
        _check_int("curve_files", self.curve_files, 1)
        if self.threads is not None:
            _check_int("threads", self.threads, 1)
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
        if self.budget_schedule and self.max_minutes is None:
            raise ConfigError("budget_schedule follows the share of max_minutes spent: give max_minutes")
        if self.budget_schedule and self.lr_schedule != "constant":
            raise ConfigError("budget_schedule goes with the constant lr_schedule (a cosine decays over epochs)")
        if not str(self.out).strip():
            raise ConfigError("out (the run directory) must be given")
        if self.resume and self.force:
            raise ConfigError("resume and force exclude each other: resume continues a run, force overwrites it")
        _check_device(self.device)
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


def _check_device(spec) -> None:
    """Raises ConfigError for a malformed device spec (None included)."""
    if spec is None:
        raise ConfigError(f"device must be {DEVICE_HELP}, got None")
    parse_device(spec, ConfigError)


def kl_warm_at(epoch: int, warmup_epochs: int) -> float:
    """KL warm-up factor of epoch ``epoch`` (1-based): ``min(1, epoch / warmup_epochs)``; 1 when no warm-up."""
    return 1.0 if warmup_epochs <= 0 else min(1.0, epoch / warmup_epochs)


def lr_at(epoch: int, cfg: TrainConfig) -> float:
    """Learning rate of epoch ``epoch`` (1-based): a pure function of the epoch and the settings, so a resumed
    run continues the schedule exactly.  Linear warm-up over ``lr_warmup`` epochs, then constant or cosine."""
    if epoch <= cfg.lr_warmup:
        return cfg.lr * epoch / cfg.lr_warmup
    if cfg.lr_schedule == "constant":
        return cfg.lr
    progress = min(1.0, (epoch - cfg.lr_warmup) / (cfg.epochs - cfg.lr_warmup))
    return cfg.lr * (LR_FLOOR + (1.0 - LR_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def ss_prob_at(epoch: int, ss_start: int, ss_end: int) -> float:
    """Scheduled-sampling probability of epoch ``epoch`` (1-based): 0 up to ``ss_start``, linear to 1 at
    ``ss_end``, 1 afterwards (a step at ``ss_start`` when both are equal)."""
    if ss_end <= ss_start:
        return 0.0 if epoch < ss_start else 1.0
    return min(1.0, max(0.0, (epoch - ss_start) / (ss_end - ss_start)))


def no_checkpoint_message(out: Path) -> str:
    """Why a run without ``last.pt`` cannot be resumed, and what to do."""
    return (
        f"cannot resume {out}: it holds no {CHECKPOINT_DIR}/last.pt (the run stopped before its first epoch "
        f"ended); start it again with --force --out {out}"
    )


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
    if not checkpoint_path(run_dir, "last").is_file():
        raise ConfigError(no_checkpoint_message(run_dir))
    bad = sorted(set(overrides) - set(RESUME_OVERRIDABLE))
    if bad:
        raise ConfigError(
            f"cannot change {', '.join(bad)} when resuming {run_dir}; "
            f"only {', '.join(RESUME_OVERRIDABLE)} may change (start a new run for the rest)"
        )
    training = meta["training"]
    if training.get("lr_schedule") == "cosine" and overrides.get("epochs", training["epochs"]) != training["epochs"]:
        raise ConfigError(
            f"cannot change epochs when resuming {run_dir}: its cosine learning rate decays to epoch "
            f"{training['epochs']} (start a new run for another length)"
        )
    values = {**training, **overrides, "out": str(run_dir), "resume": True, "force": False}
    return TrainConfig.from_dict(values).validate()
