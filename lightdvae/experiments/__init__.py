"""Experiments: several models trained on one corpus under one time budget, evaluated the paper's way, sampled,
and written up as a results folder.  ``lightdvae demo`` and ``lightdvae reproduce`` are two presets of
:func:`run_experiment`.

An experiment folder ``OUT`` holds::

    experiment.json        settings, each model's schedule, what is done, wall time per stage (written atomically)
    runs/<key>/            one training run per model (``lightdvae train`` layout, with its eval/ and generate/ folders)
    cost.json              training step and generation time per model, native vs reference ops, same process
    report/README.md       `lightdvae report` of the folder: tables, training, findings, samples, w exchange, cost

Stages, each resumable (an interrupted experiment continues where it stopped when the same command is run again):

1. the corpus (the built-in one is synthesised on first use; needs espeak-ng);
2. training: every model gets the same wall-clock budget (``minutes_per_model``; the demo weights LigHT-DVAE
   double).  The schedules follow the budget, not an epoch count: the KL warm-up runs over the first 30 % of the
   training time and, for SRNN (SS), the scheduled-sampling ramp from 1/6 to 1/2 of it (the published 50 -> 150
   of 300), and training goes on until the budget is spent (``TrainConfig.budget_schedule``), so a load that
   comes and goes costs epochs in proportion, never a schedule.  The epochs that would fit (from the step time
   measured on a few batches) are the plan, shown and recorded.  Adam runs at each
   model's rate (:attr:`Entry.lr`: 1e-3 for the classic DVAEs, 3e-4 for the transformer DVAEs).  Early stopping is
   off (a budget run is short); the best validation weights are kept.  A run that diverges is reported, the others
   go on;
3. evaluation of whole test utterances: GEN past for every model, GT past too for the models that see past speech;
4. generation from the prior with Griffin-Lim, and FDSD against the test split with its real-vs-real floor;
5. cost: one process measures each model's training step and generation time with the native ops and with the
   pure-PyTorch references (``LIGHTDVAE_BACKEND``), so the ratios come from one run on one machine;
6. the report (:func:`lightdvae.report.write_report`, the one ``lightdvae report OUT`` writes too), with the
   findings of the paper checked (:mod:`lightdvae.report.findings`) when their models are present.

Submodules:

* :mod:`~lightdvae.experiments.entries`: the models of the paper (:class:`Entry`, :data:`ENTRIES`, the demo's and
  the paper's selections, learning rates, :func:`parse_models`);
* :mod:`~lightdvae.experiments.config`: :class:`ExperimentConfig`, the settings and their fingerprint;
* :mod:`~lightdvae.experiments.budget`: step-time measurement and :func:`schedule_for_budget`;
* :mod:`~lightdvae.experiments.state`: the folder's layout and ``experiment.json`` (refuse, resume, overwrite);
* :mod:`~lightdvae.experiments.corpus`: what is needed before training (packages, espeak-ng, the corpus);
* :mod:`~lightdvae.experiments.stages`: training, evaluation, generation and cost of every model;
* :mod:`~lightdvae.experiments.shipped`: the shipped priors evaluated, sampled and their w exchanged beside the
  experiment's models;
* :mod:`~lightdvae.experiments.writeup`: the report folder's README (:mod:`lightdvae.report` with the
  experiment's notes);
* :mod:`~lightdvae.experiments.run`: :func:`run_experiment`, the stages in order.
"""

from __future__ import annotations

from lightdvae.errors import ExperimentError
from lightdvae.experiments.budget import SS_FRACTIONS, WARMUP_FRACTION, schedule_for_budget
from lightdvae.experiments.config import ExperimentConfig
from lightdvae.experiments.corpus import ensure_espeak
from lightdvae.experiments.entries import (
    BASELINE_LR,
    DEMO_MODELS,
    ENTRIES,
    PAPER_MODELS,
    TRANSFORMER_LR,
    Entry,
    parse_models,
)
from lightdvae.experiments.run import run_experiment
from lightdvae.experiments.state import COST_FILE, FORMAT_VERSION, KIND, REPORT_DIR, STATE_FILE

__all__ = [
    "Entry",
    "ENTRIES",
    "DEMO_MODELS",
    "PAPER_MODELS",
    "ExperimentConfig",
    "ExperimentError",
    "run_experiment",
    "schedule_for_budget",
    "ensure_espeak",
    "parse_models",
    "BASELINE_LR",
    "TRANSFORMER_LR",
    "WARMUP_FRACTION",
    "SS_FRACTIONS",
    "KIND",
    "FORMAT_VERSION",
    "STATE_FILE",
    "COST_FILE",
    "REPORT_DIR",
]
