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

Results computed from a run live beside it: ``RUN_DIR/eval/<split>-<past>/`` (``lightdvae eval``) and
``RUN_DIR/generate/<which>-n<N>-f<F>-t<T>-s<seed>/`` (``lightdvae generate``).

This module is the only reader and writer of these files (mamba's ``save_pretrained`` / ``from_pretrained``
pair): training writes through :func:`write_config`, :func:`write_log`, :func:`write_status` and
:func:`save_checkpoint`; an import through :func:`save_model`; everything that uses a trained model opens it
with :func:`open_run` (the model, its checkpoint, the run's description and checkpoint digest, computed once).

Typical use::

    from lightdvae.runs import load_run
    model = load_run("runs/light", which="best", device="cuda")   # eval mode
"""

from __future__ import annotations

from lightdvae._io import atomic_write, atomic_write_json, atomic_write_text
from lightdvae.runs.layout import (
    CHECKPOINT_DIR,
    CHECKPOINTS,
    CONFIG_FILE,
    EVAL_DIR,
    GENERATE_DIR,
    LOG_FILE,
    RUN_FILES,
    STATUS_FILE,
    checkpoint_path,
    clear_run_files,
    corpus_spec,
    is_run_dir,
    load_checkpoint,
    load_run,
    log_csv,
    model_from_checkpoint,
    read_config,
    read_log,
    read_meta,
    read_status,
    save_checkpoint,
    training_mode,
    weights_sha256,
    write_config,
    write_log,
    write_status,
)
from lightdvae.runs.opening import PRETRAINED_PREFIX, OpenRun, open_run
from lightdvae.runs.saving import export_pretrained, save_model

__all__ = [
    "CONFIG_FILE",
    "LOG_FILE",
    "STATUS_FILE",
    "CHECKPOINT_DIR",
    "EVAL_DIR",
    "GENERATE_DIR",
    "OpenRun",
    "open_run",
    "read_meta",
    "training_mode",
    "corpus_spec",
    "save_model",
    "write_config",
    "write_log",
    "read_log",
    "log_csv",
    "write_status",
    "clear_run_files",
    "weights_sha256",
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
    "CHECKPOINTS",
    "RUN_FILES",
    "PRETRAINED_PREFIX",
    "export_pretrained",
    "model_from_checkpoint",
]
