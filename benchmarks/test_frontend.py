"""The signal front end and the data pipeline: how fast files become training batches.

    pytest benchmarks/test_frontend.py --benchmark-only

Groups:
  frontend_files   files per second through the spectrogram cache: uncached (read, resample, trim, STFT, write)
                   vs cached (lookup only), for 16 kHz and 48 kHz (VoiceBank-like) sources
  segment_epoch    one epoch of (128, 50, 513) training batches from a cached corpus, in memory vs memory-mapped
  stft             STFT / inverse STFT / power spectrogram throughput, seconds of audio per second
  griffin_lim      100 Griffin-Lim iterations on a batch of utterances
"""

import itertools

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import DEVICES, synchronize

from lightdvae import audio as A
from lightdvae.data import SegmentDataset, SpectrogramCache

N_FILES = 24
SECONDS = 3.0


def _speech(seconds, sr, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    phase = 2 * np.pi * np.cumsum(120 * (1 + 0.1 * np.sin(2 * np.pi * 0.5 * t))) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 15)) * (0.55 - 0.45 * np.cos(2 * np.pi * 3 * t))
    return (0.3 * x / np.abs(x).max() + 1e-3 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module", params=[16000, 48000], ids=["16k", "48k"])
def audio_files(request, tmp_path_factory):
    sr = request.param
    d = tmp_path_factory.mktemp(f"bench_audio_{sr}")
    paths = []
    for i in range(N_FILES):
        p = d / f"utt{i:03d}.wav"
        sf.write(p, _speech(SECONDS, sr, i), sr, subtype="PCM_16")
        paths.append(p)
    return sr, paths


def _mean_seconds(benchmark):
    """Mean time of one round, or None when timing is off (``--benchmark-disable`` smoke runs)."""
    stats = getattr(benchmark, "stats", None)
    return stats.stats.mean if stats is not None else None


def _rate(benchmark, key, amount):
    mean = _mean_seconds(benchmark)
    if mean:
        benchmark.extra_info[key] = round(amount / mean, 1)


def _files_per_second(benchmark, n):
    mean = _mean_seconds(benchmark)
    if not mean:
        return
    benchmark.extra_info["files_per_second"] = round(n / mean, 1)
    benchmark.extra_info["audio_seconds_per_second"] = round(n * SECONDS / mean, 1)


@pytest.mark.benchmark(group="frontend_files")
@pytest.mark.parametrize("state", ["uncached", "cached"])
def test_cache_files_per_second(benchmark, describe, tmp_path, audio_files, state):
    sr, paths = audio_files
    describe("cpu", state=state, source_rate=sr, files=len(paths), seconds_per_file=SECONDS)
    counter = itertools.count()

    if state == "cached":
        cache = SpectrogramCache(tmp_path / "cache")
        cache.ensure(paths, workers=1, progress=False)

        def run():
            _, report = cache.ensure(paths, progress=False)
            assert report.cached == len(paths)

        benchmark(run)
    else:

        def setup():  # a fresh cache folder each round
            return (SpectrogramCache(tmp_path / f"cache{next(counter)}"),), {}

        def run(cache):
            _, report = cache.ensure(paths, workers=1, progress=False)
            assert report.built == len(paths)

        benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
    _files_per_second(benchmark, len(paths))


@pytest.fixture(scope="module")
def cached_corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench_epoch")
    paths = []
    for i in range(40):
        p = d / f"u{i:03d}.wav"
        sf.write(p, _speech(8.0, 16000, i), 16000, subtype="PCM_16")
        paths.append(p)
    cache = SpectrogramCache(d / "cache")
    cache.ensure(paths, progress=False)
    return paths, cache


@pytest.mark.benchmark(group="segment_epoch")
@pytest.mark.parametrize("in_memory", [True, False], ids=["in_memory", "mmap"])
def test_segment_epoch(benchmark, describe, cached_corpus, in_memory):
    paths, cache = cached_corpus
    ds = SegmentDataset(paths, cache=cache, in_memory=in_memory, progress=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=128, shuffle=True)
    describe("cpu", in_memory=in_memory, segments=len(ds), batch=128)

    def run():
        return sum(x.shape[0] for x in loader)

    assert benchmark(run) == len(ds)
    _rate(benchmark, "segments_per_second", len(ds))


@pytest.mark.benchmark(group="stft")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ["stft", "istft", "power"])
def test_stft_throughput(benchmark, describe, op, device):
    batch, seconds = 32, 4.0
    x = torch.from_numpy(np.stack([_speech(seconds, 16000, i) for i in range(batch)])).to(device)
    X = A.stft(x)
    describe(device, op=op, batch=batch, seconds=seconds)
    fns = {
        "stft": lambda: A.stft(x),
        "istft": lambda: A.istft(X, x.shape[-1]),
        "power": lambda: A.power_spectrogram(x),
    }
    fn = fns[op]

    def run():
        out = fn()
        synchronize(device)
        return out

    benchmark(run)
    _rate(benchmark, "audio_seconds_per_second", batch * seconds)


@pytest.mark.benchmark(group="griffin_lim")
@pytest.mark.parametrize("device", DEVICES)
def test_griffin_lim(benchmark, describe, device):
    batch, seconds = 8, 3.0
    x = torch.from_numpy(np.stack([_speech(seconds, 16000, i) for i in range(batch)])).to(device)
    P = A.power_spectrogram(x)
    describe(device, batch=batch, seconds=seconds, iterations=A.GRIFFIN_LIM_ITERS)

    def run():
        y = A.griffin_lim(P, length=x.shape[-1])
        synchronize(device)
        return y

    y = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    assert y.shape == x.shape
    _rate(benchmark, "audio_seconds_per_second", batch * seconds)
