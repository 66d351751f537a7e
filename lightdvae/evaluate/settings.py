"""What an evaluation computes and how it runs: :class:`EvalSettings`, built and checked once from the arguments
of :func:`lightdvae.evaluate.evaluate_model`, then handed to the loop and the summary."""

from __future__ import annotations

import os
from dataclasses import dataclass

from lightdvae.errors import EvalError
from lightdvae.evaluate.outputs import DEFAULT_FIGURES
from lightdvae.evaluate.workers import default_workers
from lightdvae.metrics import METRICS, MetricUnavailable, check_available

PASTS = ("gen", "gt")
SPLITS = ("train", "val", "test")


def check_past(past: str) -> None:
    if past not in PASTS:
        raise EvalError(f"past must be 'gen' (own past predictions) or 'gt' (true past), got {past!r}")


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise EvalError(f"split must be train, val or test, got {split!r}")


@dataclass(frozen=True)
class EvalSettings:
    """The options of one evaluation (see :func:`lightdvae.evaluate.evaluate_run` for each)."""

    split: str = "test"
    past: str = "gen"
    sample: bool = False
    metrics: tuple[str, ...] = METRICS
    workers: int = 0
    max_files: int | None = None
    save_audio: bool = False
    figures: int = DEFAULT_FIGURES
    overwrite: bool = False
    cache_dir: str | os.PathLike | None = None
    progress: bool | None = None
    quiet: bool = True
    mp_context: str | None = None
    model_threads: int | None = None

    @classmethod
    def checked(
        cls,
        *,
        past: str = "gen",
        metrics=METRICS,
        workers: int | None = None,
        max_files=None,
        figures=DEFAULT_FIGURES,
        **other,
    ) -> EvalSettings:
        """Settings from user input: :class:`EvalError` for a bad value or a metric whose package is missing;
        ``workers=None`` is :func:`~lightdvae.evaluate.workers.default_workers`."""
        check_past(past)
        metrics = tuple(metrics)
        try:
            check_available(metrics)
        except (MetricUnavailable, ValueError) as exc:
            raise EvalError(str(exc)) from None
        if workers is None:
            workers = default_workers()
        if int(workers) < 0:
            raise EvalError(f"workers must be >= 0, got {workers}")
        if max_files is not None and int(max_files) < 1:
            raise EvalError(f"max_files must be >= 1, got {max_files}")
        figures = max(0, int(figures))
        return cls(past=past, metrics=metrics, workers=int(workers), max_files=max_files, figures=figures, **other)

    @property
    def fingerprint(self) -> dict:
        """The settings that change the numbers (with the checkpoint and the corpus: the folder's fingerprint)."""
        return {"split": self.split, "past": self.past, "sample": bool(self.sample), "metrics": list(self.metrics)}
