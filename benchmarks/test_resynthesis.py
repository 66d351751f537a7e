"""GEN analysis-resynthesis of one 10-second utterance on the CPU, every model (SPEC sections 4, 5 and 8).

    pytest benchmarks/test_resynthesis.py --benchmark-only --benchmark-columns=median,iqr,rounds

``model.resynthesize(power, past="gen")`` of a 10 s utterance (160,000 samples at 16 kHz: 626 STFT frames),
batch 1, random weights at the published sizes, float32, the package's default backend (native kernels when
built).  What it costs per model:

- LigHT-DVAE / HiT-DVAE: the w and z encoders (parallel), the speech decoder fed its own past one frame at a
  time through the KV caches, then the z-prior decoder in one parallel pass on that past;
- SRNN: its own-past decoding loop (the native ``srnn_own_past`` loop when built);
- VAE, DKF, RVAE: their decoders do not see past speech, so GEN is their one parallel pass (DKF and RVAE still
  run their posterior sampling loops; ``sample=False`` takes the means).

Target (issue #5): LigHT-DVAE well under one second of CPU per second of audio.  ``extra_info`` holds
``seconds_per_audio_second`` (wall, from the benchmark's median) and ``seconds_per_audio_second_cpu`` (process
CPU time, median of the rounds: the steadier figure on a machine shared with other jobs; every run is
single-threaded, so it is the wall time minus the time spent waiting for a core).  Where a GPU is visible,
``test_gen_resynthesis_cuda`` runs the same on it (wall time only: the device runs behind the host's clock).

Threads: one (``LIGHTDVAE_BENCH_THREADS`` changes it), as in the other decoding benchmarks: batch-1 decoding is a
chain of small ops that extra threads do not speed up.  With ``--benchmark-disable`` every model runs once on a
1-second utterance (a smoke test of a few seconds).
"""

from __future__ import annotations

import os
import statistics
import time

import pytest
import torch
from conftest import DEVICES

from lightdvae.audio import HOP, SAMPLE_RATE
from lightdvae.models import build

SECONDS_FULL, SECONDS_SMOKE = 10.0, 1.0
MODELS = ["light-dvae", "hit-dvae", "srnn", "dkf", "rvae", "vae"]


pytestmark = pytest.mark.usefixtures("bench_threads")


def utterance(seconds: float) -> torch.Tensor:
    """A power spectrogram (1, frames, 513) of the STFT frame count of ``seconds`` of 16 kHz audio (centred
    frames: 1 + samples // hop).  Random values: every model here runs the same dense ops whatever the data."""
    frames = 1 + int(seconds * SAMPLE_RATE) // HOP
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, frames, 513, generator=g) ** 4 * 10.0 + 1e-6


@pytest.mark.benchmark(group="gen_resynthesis")
@pytest.mark.parametrize("name", MODELS)
def test_gen_resynthesis(benchmark, describe, name):
    seconds = SECONDS_SMOKE if benchmark.disabled else SECONDS_FULL
    power = utterance(seconds)
    torch.manual_seed(0)
    model = build(name).eval()
    describe(
        "cpu",
        model=name,
        parameters=model.num_parameters(),
        audio_seconds=seconds,
        frames=power.shape[1],
        batch=1,
        past="gen",
        backend=os.environ.get("LIGHTDVAE_BACKEND", "auto"),
    )
    cpu_s: list[float] = []

    def resynthesize():
        t = time.process_time()
        out = model.resynthesize(power, past="gen")
        cpu_s.append(time.process_time() - t)
        return out

    if not benchmark.disabled:
        model.resynthesize(power[:, :50], past="gen")  # warm-up (allocator, first-call dispatch)
    out = benchmark.pedantic(resynthesize, rounds=1 if benchmark.disabled else 5, iterations=1)
    assert out.shape == power.shape and torch.isfinite(out).all() and (out > 0).all()
    cpu = statistics.median(cpu_s)
    info = {"cpu_s_median": cpu, "seconds_per_audio_second_cpu": cpu / seconds}
    if benchmark.stats is not None:  # absent with --benchmark-disable
        wall = benchmark.stats.stats.median
        info.update(wall_s_median=wall, seconds_per_audio_second=wall / seconds)
    benchmark.extra_info.update(info)
    if name == "light-dvae":
        assert cpu / seconds < 1.0, f"LigHT-DVAE GEN resynthesis took {cpu / seconds:.2f} s of CPU per second of audio"


if "cuda" in DEVICES:  # defined only where a GPU is visible: the CPU runs keep their cases

    @pytest.mark.benchmark(group="gen_resynthesis")
    @pytest.mark.parametrize("name", MODELS)
    def test_gen_resynthesis_cuda(benchmark, describe, name):
        seconds = SECONDS_SMOKE if benchmark.disabled else SECONDS_FULL
        power = utterance(seconds).cuda()
        torch.manual_seed(0)
        model = build(name).cuda().eval()
        describe(
            "cuda",
            model=name,
            parameters=model.num_parameters(),
            audio_seconds=seconds,
            frames=power.shape[1],
            batch=1,
            past="gen",
            backend=os.environ.get("LIGHTDVAE_BACKEND", "auto"),
        )

        def resynthesize():
            out = model.resynthesize(power, past="gen")
            torch.cuda.synchronize()
            return out

        if not benchmark.disabled:
            model.resynthesize(power[:, :50], past="gen")  # warm-up (allocator, first-call dispatch, kernel loads)
        out = benchmark.pedantic(resynthesize, rounds=1 if benchmark.disabled else 5, iterations=1)
        assert out.shape == power.shape and torch.isfinite(out).all() and (out > 0).all()
        if benchmark.stats is not None:
            wall = benchmark.stats.stats.median
            benchmark.extra_info.update(wall_s_median=wall, seconds_per_audio_second=wall / seconds)
