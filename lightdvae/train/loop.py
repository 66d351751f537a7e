"""The training loop: :func:`train` sets up a run, and :class:`Trainer` runs its epochs (train, validate, keep
the best weights, write the epoch's files, stop early or out of time); :class:`RunResult` is what it returns and
:class:`TrainingDiverged` what a NaN / inf loss raises.  What a run prints and writes into its directory is in
:mod:`lightdvae.train.outputs` (:class:`~lightdvae.train.outputs.RunOutputs`, the base class of :class:`Trainer`)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import torch

from lightdvae.errors import ConfigError
from lightdvae.models import DVAE
from lightdvae.resultdir import folder_lock
from lightdvae.runtime import flush_denormals, keep_freed_memory, progress_bar, thread_scope
from lightdvae.train import distrib
from lightdvae.train.build import build_learner, run_meta, write_meta
from lightdvae.train.config import VAL_SEED_OFFSET, TrainConfig, kl_warm_at, lr_at, ss_prob_at
from lightdvae.train.curve import curve_point, wants_point
from lightdvae.train.data import build_data
from lightdvae.train.outputs import RunOutputs
from lightdvae.train.state import EarlyStopping, RunState, check_out_dir, clone_state, restore, seed_all, training_seed
from lightdvae.train.step import all_finite, mean_terms, terms_vector, train_step, validate


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf.  ``epoch`` (1-based) and ``step`` (1-based; None when it happened in
    validation) say where; the checkpoints on disk are those of the last good epoch."""

    def __init__(self, message: str, epoch: int, step: int | None, run_dir: Path | None = None):
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.run_dir = run_dir


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


def train(
    config: TrainConfig,
    *,
    train_dataset=None,
    val_dataset=None,
    callback: Callable[[dict], None] | None = None,
) -> RunResult:
    """Train (or continue, with ``config.resume``) a model; see :mod:`lightdvae.train` for the protocol.

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
    keep_freed_memory()  # each step reuses the last one's pages (runtime.keep_freed_memory)
    setup = distrib.setup(cfg.device)
    # one writer per run folder: a second `lightdvae train` into it is refused, naming the first
    lock = folder_lock(cfg.out, command=f"lightdvae train --model {cfg.model}") if distrib.is_main() else None
    try:
        with lock or contextlib.nullcontext(), thread_scope(cfg.threads), flush_denormals():
            out = check_out_dir(cfg)
            distrib.barrier()  # every process has looked at the run directory before rank 0 writes into it
            trainer = Trainer(cfg, setup.device, out, t_start)
            try:
                done = trainer.prepare(train_dataset, val_dataset)
                return trainer.run(callback) if done is None else trainer.result(trainer.state.start_epoch, done)
            except KeyboardInterrupt:
                trainer.interrupted()  # once the run directory is set up: say how to continue
                raise
    finally:
        distrib.teardown(setup)


class Trainer(RunOutputs):
    """One call of :func:`train` on one process: set-up, optional restore, the epoch loop; what it prints and
    writes into the run directory comes from :class:`~lightdvae.train.outputs.RunOutputs`."""

    def __init__(self, cfg: TrainConfig, device: torch.device, out: Path, t_start: float):
        self.cfg, self.device, self.out, self.t_start = cfg, device, out, t_start
        self.ss = cfg.training == "ss"
        self.state = RunState(EarlyStopping(cfg.patience))
        self.meta: dict = {}

    def schedule_point(self, epoch: int) -> float:
        """Where epoch ``epoch`` stands on the KL and scheduled-sampling schedules: the epoch itself, or with
        ``budget_schedule`` the planned epochs times the share of the budget spent at its end (estimated from the
        logged training time of the epochs before it: a pure function of the log, so a resume continues it)."""
        cfg = self.cfg
        if not cfg.budget_schedule:
            return epoch
        secs = [float(r["seconds"]) for r in self.state.history if r["epoch"] < epoch]
        spent = sum(secs) + (secs[-1] if secs else 0.0)
        return cfg.epochs * min(1.0, spent / (60.0 * cfg.max_minutes))

    def budget_spent(self, epoch_seconds: float = 0.0) -> bool:
        """With ``budget_schedule``: whether the logged training time (all sessions) and one more epoch of
        ``epoch_seconds`` would pass ``max_minutes``."""
        spent = sum(float(r["seconds"]) for r in self.state.history)
        return spent + epoch_seconds > 60.0 * self.cfg.max_minutes

    def ramping(self, point: float) -> bool:
        """Whether a schedule still ramps at schedule point ``point`` (then the epoch is the best and patience
        waits)."""
        cfg = self.cfg
        if kl_warm_at(point, cfg.kl_warmup_epochs) < 1.0:
            return True
        return self.ss and ss_prob_at(point, cfg.ss_start, cfg.ss_end) < 1.0

    @property
    def last_epoch(self) -> int:
        """The loop's last epoch: ``epochs``, or with ``budget_schedule`` none (the budget ends the run)."""
        return 1 << 30 if self.cfg.budget_schedule else self.cfg.epochs

    # ---- set-up ------------------------------------------------------------------------------------------------
    def prepare(self, train_dataset, val_dataset) -> str | None:
        """Build the model and the batches, restore a resumed run, write config.json; returns a stop reason
        when a resumed run has nothing left to do."""
        cfg = self.cfg
        self.learner = build_learner(cfg, self.device)
        self.data = build_data(cfg, train_dataset, val_dataset, self.learner.model.config.x_dim, self.device)
        if cfg.resume:
            self.state, last = restore(cfg, self.out, self.learner, self.device)
            if distrib.is_main():  # files a kill may have left behind the checkpoint
                self.sync_run_files(last)
            done = self.nothing_left()
            if done is not None:
                return done
        else:
            seed_all(training_seed(cfg.seed))  # this process's training stream
        self.meta = run_meta(cfg, self.learner, self.data, self.device)
        write_meta(cfg, self.out, self.meta, self.state.start_epoch)
        self.say(self.intro())
        return None

    def nothing_left(self) -> str | None:
        """The stop reason of a resumed run that already stopped early or reached ``epochs`` (else None)."""
        cfg, out, start = self.cfg, self.out, self.state.start_epoch
        if self.state.last_state == "early_stopped" and self.state.stopper.should_stop(
            self.ramping(self.schedule_point(start))
        ):
            self.say(f"{out}: training already stopped early at epoch {start}; nothing to do")
            return "early_stopped"
        if cfg.budget_schedule and self.budget_spent(self.state.history[-1]["seconds"] if start else 0.0):
            self.say(f"{out}: its --max-minutes {cfg.max_minutes:g} are spent; pass a larger one to continue")
            return "time_limit"
        if start >= self.last_epoch:
            self.say(f"{out}: already trained for {start} epochs; pass a larger --epochs to continue")
            return "finished"
        return None

    # ---- the loop ----------------------------------------------------------------------------------------------
    def run(self, callback: Callable[[dict], None] | None) -> RunResult:
        """Epochs from the one after ``state.start_epoch`` up to ``cfg.epochs``, or until early stopping or the
        time limit; each completed epoch is saved before ``callback`` sees its row."""
        cfg, stopper = self.cfg, self.state.stopper
        stop_reason, epoch = "finished", self.state.start_epoch
        for epoch in range(self.state.start_epoch + 1, self.last_epoch + 1):
            t_epoch = time.perf_counter()
            row, ramping = self.run_epoch(epoch, t_epoch)
            early = stopper.should_stop(ramping)
            out_of_time = self.out_of_time(epoch, time.perf_counter() - t_epoch)
            state = "early_stopped" if early else "time_limit" if out_of_time else "running"
            if state == "running" and epoch == self.last_epoch:
                state = "finished"
            self.save(epoch, row["best"], state)
            if distrib.is_main() and callback is not None:
                callback(dict(row))
            if early:
                stop_reason = "early_stopped"
                self.say(
                    f"early stopping: no validation improvement for {stopper.bad_epochs} epochs "
                    f"(best at epoch {stopper.best_epoch})"
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

    def run_epoch(self, epoch: int, t_epoch: float) -> tuple[dict, bool]:
        """Train and validate epoch ``epoch``, keep its weights when it is the best; returns its log row (also
        appended to the history) and whether a schedule still ramps."""
        cfg, state = self.cfg, self.state
        point = self.schedule_point(epoch)
        kl_warm = kl_warm_at(point, cfg.kl_warmup_epochs)
        ss_prob = ss_prob_at(point, cfg.ss_start, cfg.ss_end) if self.ss else None
        forward_kwargs = {"ss_prob": ss_prob} if self.ss else {}
        for group in self.learner.optimizer.param_groups:
            group["lr"] = lr_at(epoch, cfg)
        train_terms = self.train_epoch(epoch, kl_warm, forward_kwargs)
        val_seed = cfg.seed + VAL_SEED_OFFSET + distrib.rank()
        model = self.learner.model
        val_terms, _ = validate(
            model, self.data.val, self.device, cfg.precision, forward_kwargs, cfg.beta, kl_warm, val_seed
        )
        if not math.isfinite(val_terms["loss"]):
            self.diverged(epoch, None, None, val=val_terms["loss"])
        ramping = self.ramping(point)
        is_best = state.stopper.update(epoch, val_terms["loss"], ramping)
        if is_best:
            state.best_state = clone_state(model)
        row = {"epoch": epoch}
        row.update({f"train_{k}": v for k, v in train_terms.items()})
        row.update({f"val_{k}": v for k, v in val_terms.items()})
        lr = float(self.learner.optimizer.param_groups[0]["lr"])
        seconds = round(time.perf_counter() - t_epoch, 3)
        row.update(kl_warm=kl_warm, ss_prob=ss_prob, lr=lr, best=is_best, seconds=seconds)
        if distrib.is_main() and wants_point(epoch, cfg.curve_every, cfg.epochs) and self.data.curve_files:
            row.update(curve_point(model, self.data.curve_files))  # after `seconds`: not training time
        state.history.append(row)
        return row, ramping

    def train_epoch(self, epoch: int, kl_warm: float, forward_kwargs: dict) -> dict:
        """A pass over this process's shuffled training batches; the loss terms' means over all processes."""
        cfg, device, learner = self.cfg, self.device, self.learner
        learner.model.train()
        self.data.train.set_epoch(epoch)
        sums = torch.zeros(6, dtype=torch.float64, device=device)
        has_w = False
        shown = None if (distrib.is_main() and not cfg.quiet) else False  # a bar on the main process's terminal
        bar = progress_bar(
            self.data.train,
            desc=f"epoch {epoch}" + ("" if cfg.budget_schedule else f"/{cfg.epochs}"),
            unit="batch",
            progress=shown,
        )
        try:
            for step, power in enumerate(bar, 1):
                terms, stepped = train_step(
                    learner.net,
                    learner.optimizer,
                    power,
                    beta=cfg.beta,
                    kl_warm=kl_warm,
                    forward_kwargs=forward_kwargs,
                    precision=cfg.precision,
                    scaler=learner.scaler,
                    grad_clip=cfg.grad_clip,
                    is_finite=all_finite,
                )
                if not stepped:
                    self.diverged(epoch, step, terms)
                has_w = has_w or terms.kl_w is not None
                sums[:5] += terms_vector(terms, power.shape[0], device)
                sums[5] += power.shape[0]
                if not bar.disable and step % 10 == 0:
                    bar.set_postfix(loss=f"{terms.loss.item():.4g}")
        finally:
            bar.close()
        distrib.all_reduce(sums)
        return mean_terms(sums, has_w)

    def out_of_time(self, epoch: int, epoch_seconds: float) -> bool:
        """Rank 0 decides whether another epoch fits in ``max_minutes``; every process gets the answer."""
        cfg = self.cfg
        flag = torch.zeros(1, device=self.device)
        if distrib.is_main() and cfg.budget_schedule:  # judged from the log, as a resume judges it
            flag[0] = float(self.budget_spent(float(self.state.history[-1]["seconds"])))
        elif distrib.is_main() and cfg.max_minutes is not None and epoch < cfg.epochs:
            elapsed = time.perf_counter() - self.t_start
            flag[0] = float(elapsed + epoch_seconds > 60.0 * cfg.max_minutes)
        return bool(distrib.all_reduce(flag, "max").item())

    def diverged(self, epoch: int, step: int | None, terms, val: float | None = None) -> NoReturn:
        """Write the ``diverged`` status and raise :class:`TrainingDiverged`."""
        raise TrainingDiverged(self.diverged_status(epoch, step, terms, val), epoch, step, self.out)

    def result(self, epochs: int, stop_reason: str) -> RunResult:
        best_model = copy.deepcopy(self.learner.model)
        if self.state.best_state is not None:
            best_model.load_state_dict(self.state.best_state)
        return RunResult(
            run_dir=self.out,
            model=best_model.eval(),
            best_val_loss=self.state.stopper.best_val_loss,
            best_epoch=self.state.stopper.best_epoch,
            epochs=epochs,
            stop_reason=stop_reason,
            history=list(self.state.history),
            seconds=time.perf_counter() - self.t_start,
        )
