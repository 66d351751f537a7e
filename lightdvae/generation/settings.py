"""The settings of one generation (:class:`GenerationSettings`), checked once with one-line errors, and the
fingerprint they give the output folder."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lightdvae.audio import GRIFFIN_LIM_ITERS, HOP
from lightdvae.errors import GenerationError
from lightdvae.generation.common import (
    DEFAULT_BATCH,
    DEFAULT_DRAWS,
    DEFAULT_FIGURES,
    MAX_FRAMES,
    MAX_N,
    MIN_FRAMES,
    check_int,
)


@dataclass(frozen=True)
class GenerationSettings:
    """What a generation is asked for (see :func:`generate_run` for each), validated once."""

    n: int
    frames: int
    temperature: float = 1.0
    seed: int = 0
    batch_size: int = DEFAULT_BATCH
    griffin_lim_iters: int = GRIFFIN_LIM_ITERS
    figures: int = DEFAULT_FIGURES
    split: str = "test"
    fdsd: bool = False
    fdsd_draws: int = DEFAULT_DRAWS
    features: str = "ds2-builtin"

    @property
    def samples(self) -> int:
        """Samples of one generated waveform at 16 kHz."""
        return (self.frames - 1) * HOP

    def fingerprint(self, checkpoint_sha256: str, device: torch.device) -> dict:
        """What the output folder holds: the settings that change its files."""
        return {
            "checkpoint_sha256": checkpoint_sha256,
            "n": self.n,
            "frames": self.frames,
            "temperature": self.temperature,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "griffin_lim_iters": self.griffin_lim_iters,
            "device": device.type,
        }


def validated(
    n, frames, temperature, seed, batch_size, griffin_lim_iters, figures, split, threads, fdsd, fdsd_draws, features
) -> tuple[GenerationSettings, int | None]:
    """``(GenerationSettings, threads)`` from :func:`~lightdvae.generation.generate_run`'s arguments (in its
    order), or a one-line :class:`GenerationError` about the first one out of range."""
    n = check_int(n, "n", 1, MAX_N)
    frames = check_int(frames, "frames", MIN_FRAMES, MAX_FRAMES)
    seed = check_int(seed, "seed", 0)
    batch_size = check_int(batch_size, "batch_size", 1)
    figures = check_int(figures, "figures", 0)
    iters = check_int(GRIFFIN_LIM_ITERS if griffin_lim_iters is None else griffin_lim_iters, "griffin_lim_iters", 0)
    try:
        temperature = float(temperature)
    except (TypeError, ValueError):
        raise GenerationError(f"temperature must be a number, got {temperature!r}") from None
    if not (math.isfinite(temperature) and temperature >= 0):
        raise GenerationError(f"temperature must be a finite number >= 0, got {temperature}")
    if split not in ("train", "val", "test"):
        raise GenerationError(f"split must be train, val or test, got {split!r}")
    if threads is not None:
        threads = check_int(threads, "threads", 1)
    if fdsd:
        fdsd_draws = check_int(fdsd_draws, "fdsd_draws", 1)
        if n < 2:
            raise GenerationError("FDSD needs at least 2 generated samples: pass --n 2 or more, or --no-fdsd")
    settings = GenerationSettings(
        n, frames, temperature, seed, batch_size, iters, figures, split, fdsd, fdsd_draws, features
    )
    return settings, threads
