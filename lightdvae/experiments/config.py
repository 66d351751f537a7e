"""An experiment's settings: :class:`ExperimentConfig`, checked once, and its fingerprint (what
``experiment.json`` stores to recognise the same experiment when it is run again)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from lightdvae.errors import ExperimentError
from lightdvae.experiments.entries import DEMO_MODELS, ENTRIES, parse_models

__all__ = ["ExperimentConfig"]


@dataclass
class ExperimentConfig:
    """What an experiment depends on (stored in ``experiment.json``; a folder holding a different experiment is
    refused unless ``overwrite``).

    out: the experiment folder.  models: entry keys (:data:`ENTRIES`).  data: corpus spec (``builtin``,
    ``wsj0:DIR``, ``vb:DIR``, ``DIR``).  minutes_per_model: training budget of one model (wall clock, this
    machine); ``weights`` multiplies it per key (the demo gives LigHT-DVAE 2).  batch_size, seq_len, beta: the
    training settings (batch 32 rather than the published 128: four times the optimizer steps in a short budget).
    lr: Adam's learning rate for every model; None (default): each model's own (:attr:`Entry.lr`: 1e-3 for the
    classic DVAEs, 3e-4 for the transformer DVAEs).
    eval_max_files: evaluate only the first N test files (None: all).  gen_n, gen_frames: generated samples and
    their length (frames; 188 = 3 s).  fdsd_draws: FDSD repeated draws.  cost: measure native vs reference cost.
    device: ``auto``, ``cpu``, ``cuda``.  seed: training seeds.  corpus_minutes: size of the built-in corpus.
    shipped: names of shipped priors (``lightdvae info``) evaluated and sampled beside the trained models, on the
    default built-in corpus only (:mod:`lightdvae.experiments.shipped`).
    """

    out: str
    models: tuple[str, ...] = DEMO_MODELS
    data: str = "builtin"
    minutes_per_model: float = 5.0
    weights: dict = field(default_factory=dict)
    batch_size: int = 32
    lr: float | None = None
    seq_len: int = 50
    beta: float = 1e-2
    eval_max_files: int | None = None
    gen_n: int = 32
    gen_frames: int = 188
    fdsd_draws: int = 10
    cost: bool = True
    device: str = "auto"
    seed: int = 0
    corpus_minutes: float | None = None
    shipped: tuple[str, ...] = ()
    title: str = "lightdvae results"

    def validate(self) -> ExperimentConfig:
        self.models = parse_models(self.models)
        if not (isinstance(self.minutes_per_model, (int, float)) and math.isfinite(self.minutes_per_model)):
            raise ExperimentError(f"minutes per model must be a number, got {self.minutes_per_model!r}")
        if self.minutes_per_model <= 0:
            raise ExperimentError(f"minutes per model must be > 0, got {self.minutes_per_model}")
        for name, value, low in (
            ("batch size", self.batch_size, 1),
            ("seq_len", self.seq_len, 2),
            ("gen_n", self.gen_n, 2),
            ("gen_frames", self.gen_frames, 2),
            ("fdsd draws", self.fdsd_draws, 1),
        ):
            if not isinstance(value, int) or value < low:
                raise ExperimentError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.lr is not None and (
            isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not 0 < self.lr < math.inf
        ):
            raise ExperimentError(f"lr must be a finite number > 0 (or None: each model's own), got {self.lr!r}")
        if self.eval_max_files is not None and (not isinstance(self.eval_max_files, int) or self.eval_max_files < 1):
            raise ExperimentError(f"eval max files must be an integer >= 1, got {self.eval_max_files!r}")
        if isinstance(self.shipped, str) or not all(isinstance(n, str) and n for n in self.shipped):
            raise ExperimentError(f"shipped must be a list of shipped prior names, got {self.shipped!r}")
        self.shipped = tuple(self.shipped)
        bad = sorted(set(self.weights) - set(self.models))
        if bad:
            raise ExperimentError(f"budget weights given for models not in the experiment: {', '.join(bad)}")
        return self

    def budget_minutes(self, key: str) -> float:
        return float(self.minutes_per_model) * float(self.weights.get(key, 1.0))

    def lr_of(self, key: str) -> float:
        """Adam's learning rate of the model ``key``: ``lr`` when set, else the entry's own."""
        return float(self.lr) if self.lr is not None else ENTRIES[key].lr

    def fingerprint(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("out")
        d.pop("title")
        d["models"] = list(self.models)
        d["shipped"] = list(self.shipped)
        return d
