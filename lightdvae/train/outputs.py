"""What a training run writes: the lines it prints and the files of its run directory.

:class:`RunOutputs` holds the :class:`~lightdvae.train.loop.Trainer` methods that write them, so that the loop in
:mod:`lightdvae.train.loop` reads as the loop: on rank 0 only, the lines of the terminal (none with ``quiet``),
each epoch's ``checkpoints/last.pt`` (the epoch's one commit point), ``checkpoints/best.pt``, ``log.csv`` and
``status.json`` (see :mod:`lightdvae.runs` for the layout), and the status of a run that diverged or was
interrupted.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lightdvae.runs import checkpoint_path, save_checkpoint, write_log, write_status
from lightdvae.train import distrib
from lightdvae.train.build import Learner
from lightdvae.train.config import LOG_COLUMNS, TrainConfig
from lightdvae.train.data import TrainData
from lightdvae.train.state import RunState, best_checkpoint, best_is_current, checkpoint, rng_state


class RunOutputs:
    """The writing half of :class:`~lightdvae.train.loop.Trainer` (its base class).

    It reads the trainer's attributes annotated here: the run's settings ``cfg``, its directory ``out``, this
    process's ``device``, the run's ``state`` (history, early stopping, best weights), and, once
    :meth:`~lightdvae.train.loop.Trainer.prepare` has built them, ``learner`` (model, optimizer, scaler), ``data``
    and ``meta`` (the run's config.json contents; empty until then).
    """

    cfg: TrainConfig
    out: Path
    device: torch.device
    state: RunState
    learner: Learner
    data: TrainData
    meta: dict

    def say(self, message: str) -> None:
        """Print one line (rank 0, unless ``quiet``)."""
        if distrib.is_main() and not self.cfg.quiet:
            print(message, flush=True)

    def intro(self) -> str:
        """The first line a run prints."""
        cfg, s, info = self.cfg, self.state.stopper, self.data.info
        if cfg.resume:
            best = f"best {s.best_val_loss:.5g} at {s.best_epoch}"
            return f"resuming {self.out} after epoch {self.state.start_epoch} ({best})"
        procs = f" x {distrib.world_size()} processes" if distrib.is_distributed() else ""
        return (
            f"training {self.learner.name} ({self.learner.model.num_parameters():,} parameters) on {self.device}"
            f"{procs}: {info['train_segments']} training / {info['val_segments']} validation segments of "
            f"{info['segment_frames']} frames, batch {cfg.batch_size}, up to {cfg.epochs} epochs -> {self.out}"
        )

    def save(self, epoch: int, is_best: bool, state: str) -> None:
        """Checkpoints, log and status of a completed epoch (rank 0 writes; every process gives its RNG state)."""
        out, s = self.out, self.state.stopper
        rng = distrib.gather_objects(rng_state(self.device))
        if distrib.is_main():
            # last.pt is the epoch's one commit point (it carries the best weights too); best.pt, log.csv and
            # status.json follow from it, and a resume rewrites whichever a kill left behind (sync_run_files).
            payload = checkpoint(self.learner, epoch, rng, self.state, self.meta["training"], state)
            save_checkpoint(checkpoint_path(out, "last"), payload)
            self.sync_run_files(payload, best_changed=is_best)
            self.say(epoch_line(self.state.history[-1], self.cfg, s.bad_epochs))
        distrib.barrier()

    def sync_run_files(self, last: dict, best_changed: bool | None = None) -> None:
        """Bring best.pt, log.csv and status.json in line with the checkpoint ``last`` (rank 0).  ``best_changed``:
        whether this epoch is the best (an epoch's save knows); None on resume, where best.pt is read to see
        whether a kill left it stale."""
        out = self.out
        stale = best_changed if best_changed is not None else not best_is_current(out, last["best_epoch"])
        if stale:
            save_checkpoint(checkpoint_path(out, "best"), best_checkpoint(last))
        write_log(out, last["history"], LOG_COLUMNS)
        extra = {"epochs": self.cfg.epochs, "best_epoch": last["best_epoch"], "best_val_loss": last["best_val_loss"]}
        write_status(out, last.get("state") or "running", epoch=last["epoch"], **extra)

    def diverged_status(self, epoch: int, step: int | None, terms, val: float | None = None) -> str:
        """Write the ``diverged`` status (rank 0) and return its message: where the loss stopped being finite
        (``step`` None: in validation, with loss ``val``; else the step's loss ``terms``), which checkpoint is
        kept, and what to change when starting again."""
        last = checkpoint_path(self.out, "last")
        kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was saved yet"
        if step is None:
            where = f"in validation after epoch {epoch} (validation loss {val})"
        else:
            detail = ", ".join(f"{k}={v:.4g}" for k, v in terms.as_floats().items())
            where = f"at epoch {epoch}, step {step} ({detail})"
        remedies = "a smaller --lr or a --grad-clip" + (", or --precision fp32" if self.cfg.precision != "fp32" else "")
        message = (
            f"training diverged: the loss is not finite {where}; {kept}. Start it again (--force --out "
            f"{self.out}, or another --out) with {remedies}: these cannot change on --resume"
        )
        if distrib.is_main():
            write_status(self.out, "diverged", epoch=epoch, step=step, message=message)
        return message

    def interrupted(self) -> None:
        """On rank 0, once the run directory is set up: the ``interrupted`` status, saying how to continue."""
        if distrib.is_main() and self.meta:
            history = self.state.history
            done = history[-1]["epoch"] if history else 0
            message = f"resume with: lightdvae train --resume {self.out}"
            write_status(self.out, "interrupted", epoch=done, message=message)


def epoch_line(row: dict, cfg: TrainConfig, bad_epochs: int) -> str:
    """The line an epoch prints, from its log row ``row``."""
    parts = [
        f"epoch {row['epoch']}/{cfg.epochs}" if not cfg.budget_schedule else f"epoch {row['epoch']}",
        f"train {row['train_loss']:.5g} (recon {row['train_recon']:.5g}, kl {row['train_kl']:.4g})",
        f"val {row['val_loss']:.5g} (recon {row['val_recon']:.5g}, kl {row['val_kl']:.4g})",
        f"kl_warm {row['kl_warm']:.2f}",
    ]
    if row["ss_prob"] is not None:
        parts.append(f"ss_prob {row['ss_prob']:.2f}")
    if row.get("val_si_sdr_gen") is not None:
        parts.append(f"SI-SDR GEN {row['val_si_sdr_gen']:.2f} / GT {row['val_si_sdr_gt']:.2f} dB")
    parts.append(f"{row['seconds']:.1f} s")
    parts.append("best" if row["best"] else f"no improvement for {bad_epochs}")
    return "  ".join(parts)
