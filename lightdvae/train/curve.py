"""The learning curve in the paper's metric: every ``curve_every`` epochs, the mean SI-SDR of a fixed set of
validation utterances resynthesised whole with the model's own past (GEN) and with the true past (GT), written
into the epoch's log row beside the validation loss.  It runs on rank 0, under ``torch.no_grad`` in eval mode,
with the random streams saved and restored, so a run with the curve trains bit for bit like one without."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from lightdvae.metrics import si_sdr


def curve_files(files: list, count: int) -> list[Path]:
    """The utterances of the curve: the first ``count`` validation files by path (the same on every resume)."""
    return sorted((Path(f) for f in files), key=str)[:count]


def wants_point(epoch: int, every: int, last_epoch: int) -> bool:
    """Whether epoch ``epoch`` gets a curve point (every ``every`` epochs, and the last one)."""
    return every > 0 and (epoch % every == 0 or epoch == last_epoch)


def curve_point(model: torch.nn.Module, files: list[Path]) -> dict:
    """``{"val_si_sdr_gen": dB, "val_si_sdr_gt": dB}``: mean SI-SDR over ``files`` (NaN when none scores)."""
    from lightdvae.evaluate import resynthesize_file  # the evaluation's own per-file step

    was_training = model.training
    model.eval()
    scores: dict[str, list[float]] = {"gen": [], "gt": []}
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            for path in files:
                for past in scores:
                    reference, estimate, _ = resynthesize_file(model, path, past)
                    value = si_sdr(reference, estimate)
                    if math.isfinite(value):
                        scores[past].append(value)
    finally:
        model.train(was_training)
    return {f"val_si_sdr_{past}": float(np.mean(v)) if v else float("nan") for past, v in scores.items()}
