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

Submodules, each of one purpose:

* :mod:`~lightdvae.train.config`: :class:`TrainConfig` and its validation, the protocol's constants
  (:data:`LOG_COLUMNS`, :data:`PRECISIONS`, :data:`TRAININGS`, :data:`RESUME_OVERRIDABLE`), the schedules
  :func:`kl_warm_at` / :func:`ss_prob_at` / :func:`lr_at`, and :func:`resume_config`.
* :mod:`~lightdvae.train.distrib`: tiny process-group helpers (rank, world size, barrier, all-reduce, gather),
  no-ops in a single process; the set-up ``torchrun`` asks for and this process's device.
* :mod:`~lightdvae.train.data`: the segment datasets of the corpus, this process's batches
  (:mod:`lightdvae.data.batches`), and :func:`steps_per_epoch`.
* :mod:`~lightdvae.train.build`: the model with its optimizer and gradient scaler, and the run's config.json.
* :mod:`~lightdvae.train.state`: the checkpoint dict, random states, :class:`EarlyStopping`, the best-weights
  copy, and the checks that a run directory can be started or resumed.
* :mod:`~lightdvae.train.step`: :func:`train_step` (one optimisation step) and the validation pass.
* :mod:`~lightdvae.train.loop`: :func:`train`, the epoch loop, :class:`RunResult` and :class:`TrainingDiverged`.
* :mod:`~lightdvae.train.outputs`: what a run prints and writes into its directory (checkpoints, log, status).
"""

from lightdvae.data.batches import DEVICE_DATA_LIMIT
from lightdvae.errors import ConfigError
from lightdvae.train.config import (
    LOG_COLUMNS,
    LR_FLOOR,
    LR_SCHEDULES,
    PRECISIONS,
    RESUME_OVERRIDABLE,
    STOP_REASONS,
    TRAININGS,
    TrainConfig,
    kl_warm_at,
    lr_at,
    resume_config,
    ss_prob_at,
)
from lightdvae.train.data import steps_per_epoch
from lightdvae.train.loop import RunResult, TrainingDiverged, train
from lightdvae.train.state import EarlyStopping
from lightdvae.train.step import train_step

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
    "lr_at",
    "ss_prob_at",
    "steps_per_epoch",
    "LOG_COLUMNS",
    "PRECISIONS",
    "LR_SCHEDULES",
    "LR_FLOOR",
    "TRAININGS",
    "RESUME_OVERRIDABLE",
    "STOP_REASONS",
    "DEVICE_DATA_LIMIT",
]
