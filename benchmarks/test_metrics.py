"""Evaluation metrics: what one file costs, and what the worker pool of ``lightdvae eval`` buys.

    pytest benchmarks/test_metrics.py --benchmark-only

Groups:
  metrics_per_file   one 3 s utterance: each metric alone (RMSE, SI-SDR, PESQ-WB, PESQ-NB, ESTOI) and all together
  metrics_pool       all metrics on 8 files: in this process vs in a pool of 2 worker processes (the evaluation's
                     path: lightdvae.evaluate.workers.make_pool / metrics_job), files per second in extra_info
"""

import os

import numpy as np
import pytest

from lightdvae import metrics as M
from lightdvae.evaluate import workers as W

SR = 16000
SECONDS = 3.0
N_FILES = 8
POOL_WORKERS = 2


def _speech(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    phase = 2 * np.pi * np.cumsum(115 * (1 + 0.1 * np.sin(2 * np.pi * 0.5 * t))) / SR
    x = sum(np.sin(k * phase) * np.exp(-k / 8) for k in range(1, 30))
    x = x * np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None) ** 0.5 + 3e-3 * rng.standard_normal(t.size)
    return (0.9 * x / np.abs(x).max()).astype(np.float32)


def _pair(seed: int) -> tuple[np.ndarray, np.ndarray]:
    x = _speech(SECONDS, seed)
    noise = np.random.default_rng(seed + 100).standard_normal(x.size).astype(np.float32)
    return x, x + 0.05 * noise * np.sqrt(np.mean(x**2))


def _files_per_second(benchmark, n: int) -> None:
    stats = getattr(benchmark, "stats", None)
    if stats is not None and stats.stats.mean:
        benchmark.extra_info["files_per_second"] = round(n / stats.stats.mean, 2)
        benchmark.extra_info["audio_seconds_per_second"] = round(n * SECONDS / stats.stats.mean, 1)


@pytest.mark.benchmark(group="metrics_per_file")
@pytest.mark.parametrize("metric", [*M.METRICS, "all"])
def test_metric_per_file(benchmark, describe, metric):
    describe("cpu", metric=metric, seconds_per_file=SECONDS)
    ref, est = _pair(0)
    metrics = M.METRICS if metric == "all" else (metric,)
    result = benchmark(M.compute_metrics, ref, est, metrics)
    assert result["errors"] == {}
    _files_per_second(benchmark, 1)


@pytest.fixture(scope="module")
def pool():
    p = W.make_pool(POOL_WORKERS, None)
    yield p
    p.shutdown(wait=True)


@pytest.mark.benchmark(group="metrics_pool")
@pytest.mark.parametrize("mode", ["serial", f"pool{POOL_WORKERS}"])
def test_metrics_serial_vs_pool(benchmark, describe, request, mode):
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    describe("cpu", mode=mode, files=N_FILES, seconds_per_file=SECONDS, cpus=cpus)
    pairs = [_pair(i) for i in range(N_FILES)]

    if mode == "serial":

        def run():
            return [M.compute_metrics(r, e) for r, e in pairs]

    else:
        executor = request.getfixturevalue("pool")

        def run():
            futures = [executor.submit(W.metrics_job, i, r, e, M.METRICS) for i, (r, e) in enumerate(pairs)]
            return [f.result()[1] for f in futures]

    results = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=0)
    assert len(results) == N_FILES and all(r["errors"] == {} for r in results)
    _files_per_second(benchmark, N_FILES)
