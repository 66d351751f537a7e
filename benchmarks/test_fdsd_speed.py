"""FDSD: how fast the feature network embeds audio, and what one Fréchet distance costs.

    pytest benchmarks/test_fdsd_speed.py --benchmark-only

(Not named test_fdsd.py: that basename is taken by tests/test_fdsd.py, and pytest refuses two test modules of
one name when both folders are collected together.)

Groups:
  fdsd_features   seconds of audio embedded per second by the DS2-style network (the shipped weights when present,
                  else the same architecture randomly initialised: same cost), batch 1 vs 16, CPU with 1 thread and
                  with torch's default (one thread is often faster for these small GRUs on a busy machine), CUDA
  frechet         one Fréchet distance between 256-d Gaussians: the eigen-decomposition route vs scipy's sqrtm
"""

import numpy as np
import pytest
import torch
from conftest import DEVICES, synchronize

from lightdvae.fdsd import DeepSpeech2, DS2Config, DS2Extractor, builtin_weights_path, frechet_distance

SECONDS = 3.0
UTTERANCES = 16


def _speech(seconds, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    phase = 2 * np.pi * np.cumsum(110 * (1 + 0.1 * np.sin(2 * np.pi * 0.5 * t))) / 16000
    x = sum(np.sin(k * phase) / k for k in range(1, 15)) * (0.55 - 0.45 * np.cos(2 * np.pi * 3 * t))
    return (0.3 * x / np.abs(x).max() + 1e-3 * rng.standard_normal(t.size)).astype(np.float32)


def _extractor(device):
    path = builtin_weights_path()
    if path.is_file():
        return DS2Extractor.from_file(path, "ds2-builtin", device=device), "shipped"
    torch.manual_seed(0)
    model = DeepSpeech2(DS2Config(phonemes=[f"p{i}" for i in range(63)]))
    return DS2Extractor(model, "ds2-random", device=device), "random-init"


@pytest.mark.benchmark(group="fdsd_features")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("threads", [1, None], ids=["1thread", "default_threads"])
def test_feature_throughput(benchmark, describe, device, batch, threads):
    if threads is not None and device != "cpu":
        pytest.skip("thread count only matters on the CPU")
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    ext, weights = _extractor(device)
    waves = torch.from_numpy(np.stack([_speech(SECONDS, i) for i in range(UTTERANCES)]))
    lengths = torch.full((UTTERANCES,), waves.shape[1], dtype=torch.long)
    describe(device, batch=batch, utterances=UTTERANCES, seconds_per_utterance=SECONDS, weights=weights)

    def run():
        out = [ext(waves[i : i + batch], lengths[i : i + batch]) for i in range(0, UTTERANCES, batch)]
        synchronize(device)
        return out

    try:
        feats = benchmark(run)
    finally:
        torch.set_num_threads(before)
    assert sum(f.shape[0] for f in feats) == UTTERANCES
    stats = getattr(benchmark, "stats", None)
    if stats is not None and stats.stats.mean:
        benchmark.extra_info["audio_seconds_per_second"] = round(UTTERANCES * SECONDS / stats.stats.mean, 1)


@pytest.mark.benchmark(group="frechet")
@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_frechet_distance_cost(benchmark, describe, method):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((300, 256)), rng.standard_normal((300, 256)) * 1.1 + 0.1
    mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    describe("cpu", method=method, dim=256)
    value = benchmark(lambda: frechet_distance(mu1, s1, mu2, s2, method=method))
    assert value > 0
