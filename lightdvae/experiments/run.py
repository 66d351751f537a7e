""":func:`run_experiment`: an experiment from its settings to its report folder, each stage resumable."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch

from lightdvae.errors import ConfigError, ExperimentError
from lightdvae.experiments import stages
from lightdvae.experiments.config import ExperimentConfig
from lightdvae.experiments.corpus import check_packages, prepare_corpus
from lightdvae.experiments.shipped import evaluate_shipped, shipped_priors
from lightdvae.experiments.state import ExperimentState
from lightdvae.experiments.writeup import console_summary, write_report
from lightdvae.resultdir import folder_lock
from lightdvae.runtime import parse_device, resolve_device

__all__ = ["run_experiment"]


def run_experiment(
    cfg: ExperimentConfig,
    *,
    overwrite: bool = False,
    install_espeak: bool = True,
    say: Callable[[str], None] | None = None,
    progress: bool | None = None,
) -> dict:
    """Run (or resume) the experiment ``cfg``; returns ``{"report": path, "state": experiment.json contents}``.

    Raises:
        ExperimentError / DataError / ConfigError (all :class:`lightdvae.errors.UserError`): bad settings, a folder
        holding another experiment, no corpus, espeak-ng missing and not installable.
    """
    cfg = dataclasses.replace(cfg).validate()
    say = say or (lambda text: print(text, flush=True))
    check_packages()
    out = Path(cfg.out).expanduser()
    with folder_lock(out, command="lightdvae demo/reproduce", error=ExperimentError):
        return _run_locked(cfg, out, overwrite, install_espeak, say, progress)


def _run_locked(cfg: ExperimentConfig, out: Path, overwrite: bool, install_espeak: bool, say, progress) -> dict:
    """The stages of the experiment in its locked folder ``out``."""
    state = ExperimentState(out, cfg, overwrite)
    device = _device(cfg.device)
    state.data["device"] = str(device)

    with state.stage("corpus"):
        prepare_corpus(cfg, install_espeak, say, progress)
    ctx = stages.Context(cfg, state, out, device, say, progress)
    todo = [("training", stages.train_all), ("evaluation", stages.evaluate_all), ("generation", stages.generate_all)]
    if shipped_priors(cfg):
        todo.append(("shipped priors", evaluate_shipped))
    if cfg.cost:
        todo.append(("cost", stages.cost_all))
    for name, func in todo:
        if name in state.data["done"]:
            continue
        with state.stage(name):
            func(ctx)
        state.data["done"].append(name)
        state.save()
    with state.stage("report"):
        path = write_report(cfg, state, out)
    summary = console_summary(path.read_text())
    if summary:
        say(summary)
    say(f"report: {path}")
    return {"report": path, "state": state.data}


def _device(spec: str) -> torch.device:
    """The experiment's device: ``auto`` is the GPU when there is one."""
    device = parse_device(spec, ConfigError)
    if device is not None and device.type == "cuda" and not torch.cuda.is_available():
        raise ExperimentError("--device cuda: no CUDA GPU is visible (use --device cpu or auto)")
    return resolve_device(device, ExperimentError)
