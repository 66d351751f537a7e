"""Budget -> schedule: a model's training step timed on random spectrograms (:func:`step_seconds`), and the epochs,
KL warm-up and scheduled-sampling ramp that fit a wall-clock budget (:func:`schedule_for_budget`)."""

from __future__ import annotations

import time

import numpy as np
import torch

from lightdvae.experiments.entries import Entry
from lightdvae.runtime import sync

__all__ = ["WARMUP_FRACTION", "SS_FRACTIONS", "step_seconds", "schedule_for_budget"]

WARMUP_FRACTION = 0.3  #: KL warm-up, as a fraction of the epochs that fit the budget
SS_FRACTIONS = (1 / 6, 1 / 2)  #: scheduled-sampling ramp of SRNN (SS): the published epochs 50 -> 150 of 300


def step_seconds(entry: Entry, batch_size: int, seq_len: int, device: torch.device, steps: int = 3) -> float:
    """Median wall time of one training step (forward, loss, backward, Adam) on random spectrograms."""
    from lightdvae import models
    from lightdvae.train import train_step

    torch.manual_seed(0)
    model = models.build(entry.model, **entry.model_config).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    power = torch.rand(batch_size, seq_len, 513, device=device) ** 2 + 1e-4
    kwargs = {"ss_prob": 0.5} if entry.training == "ss" else {}
    times = []
    for i in range(steps + 1):
        sync(device)
        t0 = time.perf_counter()
        train_step(model, opt, power, forward_kwargs=kwargs)
        sync(device)
        if i:  # the first step allocates and warms up
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def schedule_for_budget(
    entry: Entry, minutes: float, steps_per_epoch: int, val_steps: int, step_seconds: float
) -> dict:
    """Epochs, KL warm-up and scheduled-sampling ramp that fit ``minutes`` of training.

    An epoch costs ``steps_per_epoch`` training steps plus the validation pass (about a third of a step per
    validation batch: forward only) and a little bookkeeping."""
    epoch_s = step_seconds * (steps_per_epoch + val_steps / 3.0) + 0.5
    epochs = max(2, int(60.0 * minutes / epoch_s))
    sched = {
        "minutes": round(float(minutes), 3),
        "step_seconds": round(step_seconds, 4),
        "epoch_seconds_estimate": round(epoch_s, 2),
        "epochs": epochs,
        "kl_warmup_epochs": max(1, round(WARMUP_FRACTION * epochs)),
    }
    if entry.training == "ss":
        start, end = (max(1, round(f * epochs)) for f in SS_FRACTIONS)
        sched.update(ss_start=start, ss_end=max(start, end))
    return sched
