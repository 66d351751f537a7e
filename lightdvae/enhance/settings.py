"""What an enhancement is asked (:class:`EnhanceSettings`, checked once) and gives back (:class:`EnhanceResult`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from lightdvae.errors import EnhanceError

__all__ = ["EnhanceSettings", "EnhanceResult"]


def _integer(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise EnhanceError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _number(name: str, value, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not math.isfinite(value):
        raise EnhanceError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise EnhanceError(f"{name} must be {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class EnhanceSettings:
    """The options of the variational EM (defaults: the reference's runs).

    iterations: EM iterations (100).  rank: K of the noise NMF (8).  lr: Adam's learning rate of the E-step (1e-3).
    beta: weight of the KL terms in the E-step (1; the priors were trained with 0.01).  samples: z samples
    averaged in the final Wiener filter (1).  seed: with an utterance's index, its random stream (0).
    max_seconds: time budget of one EM run (a batch of utterances enhanced together); the loop stops before an
    iteration that would start after it (at least one iteration runs).  None: no budget.
    """

    iterations: int = 100
    rank: int = 8
    lr: float = 1e-3
    beta: float = 1.0
    samples: int = 1
    seed: int = 0
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "iterations", _integer("iterations", self.iterations, 1))
        object.__setattr__(self, "rank", _integer("rank", self.rank, 1))
        object.__setattr__(self, "samples", _integer("samples", self.samples, 1))
        object.__setattr__(self, "seed", _integer("seed", self.seed, 0))
        object.__setattr__(self, "lr", _number("lr", self.lr, positive=True))
        object.__setattr__(self, "beta", _number("beta", self.beta, positive=False))
        if self.max_seconds is not None:
            object.__setattr__(self, "max_seconds", _number("max_seconds", self.max_seconds, positive=True))


@dataclass
class EnhanceResult:
    """One enhanced utterance.

    waveform: the speech estimate ``(samples,)`` float32 at 16 kHz, at the input's scale (the Wiener filter of the
    peak-normalised mixture, times the mixture's peak).
    speech_variance: ``g v`` (averaged over the filter's z samples), ``(frames, F)`` on the CPU.
    noise_variance: ``WH``, ``(frames, F)`` on the CPU.
    loss: per iteration, ``d_IS(|X|^2, g v + WH)`` averaged over the time-frequency bins after the M-step (the
    reference's loss, up to a constant).
    iterations: EM iterations run.  seconds: wall time of the EM run the utterance was part of.
    stopped_early: True when ``max_seconds`` ended the run before ``iterations``.
    batch: how many utterances that EM run enhanced together.
    """

    waveform: np.ndarray
    speech_variance: Tensor
    noise_variance: Tensor
    loss: list[float]
    iterations: int
    seconds: float
    stopped_early: bool
    batch: int = 1
    sample_rate: int = 16000

    @property
    def seconds_per_iteration(self) -> float:
        return self.seconds / self.iterations if self.iterations else math.nan

    def summary(self) -> str:
        """One line: iterations, time, and the early stop if any."""
        stop = " (stopped early: time budget)" if self.stopped_early else ""
        per = f"{self.seconds_per_iteration * 1000:.1f} ms/iteration"
        return f"{self.iterations} iterations in {self.seconds:.2f} s ({per}){stop}"
