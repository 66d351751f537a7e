"""The metric worker pool: while the model goes on with the next files, PESQ and ESTOI (the cost of an
evaluation) run in worker processes.  :class:`MetricPool` hides whether the metrics run there or in this process
(``workers=0``); each finished file is handed to a callback as soon as its metrics are known.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

import numpy as np

from lightdvae.metrics import compute_metrics

#: ``finish(index, result, model_s, metrics_s)``: what happens to a file whose metrics are known.
Finish = Callable[[int, dict, float, float], None]


def _worker_init() -> None:
    # Ctrl-C goes to the whole process group: the parent handles it and shuts the pool down cleanly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def metrics_job(index: int, reference: np.ndarray, estimate: np.ndarray, metrics: tuple[str, ...]):
    """One file's metrics: ``(index, result, seconds)`` (what a worker runs)."""
    t0 = time.perf_counter()
    result = compute_metrics(reference, estimate, metrics)
    return index, result, time.perf_counter() - t0


def default_workers() -> int:
    """The CPUs this process may use (the default number of metric workers)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def model_threads(model, workers: int) -> int | None:
    """torch threads for ``model`` while ``workers`` metric processes run: on the CPU, the CPUs the workers leave
    (at least 1; the model's many small ops, such as an autoregressive decoding, run far faster on few threads
    than on threads that fight the workers for the cores).  None (torch's setting unchanged) for a model on a GPU
    or without workers."""
    if workers <= 0 or next(model.parameters()).device.type != "cpu":
        return None
    import torch

    return max(1, min(torch.get_num_threads(), default_workers() - workers))


def make_pool(workers: int, mp_context: str | None) -> ProcessPoolExecutor:
    """A process pool for the metrics.  On Linux the workers are forked (instant start; they only run NumPy,
    pesq and pystoi, never torch), and all are started right away, before the model runs."""
    if mp_context is None:
        mp_context = "fork" if sys.platform.startswith("linux") else None
    ctx = multiprocessing.get_context(mp_context) if mp_context else None
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init)
    for fut in [pool.submit(int, 0) for _ in range(workers)]:
        fut.result()
    return pool


class MetricPool:
    """The metrics of the files an evaluation resynthesises: in ``workers`` processes (at most ``2 * workers``
    files in flight), or in this process when ``workers`` is 0.  Create it before anything starts threads (the
    workers are forked)."""

    def __init__(self, workers: int, metrics: tuple[str, ...], mp_context: str | None = None):
        self.workers = workers
        self.metrics = metrics
        self.pool = make_pool(workers, mp_context) if workers > 0 else None
        self.pending: dict[Future, tuple[int, float]] = {}

    def submit(self, index: int, reference: np.ndarray, estimate: np.ndarray, model_s: float, finish: Finish) -> None:
        """Measure one file; ``finish`` is called for it, and for every other file done meanwhile."""
        if self.pool is None:
            _, result, metrics_s = metrics_job(index, reference, estimate, self.metrics)
            finish(index, result, model_s, metrics_s)
            return
        self.pending[self.pool.submit(metrics_job, index, reference, estimate, self.metrics)] = (index, model_s)
        while len(self.pending) >= 2 * self.workers:
            self.collect(finish, block=True)
        self.collect(finish, block=False)

    def collect(self, finish: Finish, block: bool) -> None:
        """Hand the files whose metrics are known to ``finish`` (``block``: wait for at least one)."""
        if not self.pending:
            return
        finished, _ = wait(list(self.pending), timeout=None if block else 0, return_when=FIRST_COMPLETED)
        for fut in finished:
            i, model_s = self.pending.pop(fut)
            _, result, metrics_s = fut.result()
            finish(i, result, model_s, metrics_s)

    def drain(self, finish: Finish) -> None:
        """Wait for every file in flight."""
        while self.pending:
            self.collect(finish, block=True)

    def salvage(self, finish: Finish) -> None:
        """After an interruption: cancel the files not started, keep those the workers had already finished."""
        for fut in self.pending:
            fut.cancel()
        for fut, (i, model_s) in list(self.pending.items()):
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                finish(i, fut.result()[1], model_s, fut.result()[2])

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
