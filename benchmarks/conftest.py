"""Shared benchmark fixtures: every result records the torch version, device and thread count."""

import os

import pytest
import torch

from lightdvae.runtime import keep_freed_memory

os.environ.setdefault("LIGHTDVAE_QUIET_FALLBACK", "1")
#: every benchmark allocates as lightdvae's training and enhancement do (freed memory kept for the next call)
MALLOC_KEPT = keep_freed_memory()

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
#: torch threads of the decoding benchmarks (``pytestmark = pytest.mark.usefixtures("bench_threads")``): batch-1
#: decoding is a chain of small ops, which a second thread only slows down on a shared machine.
BENCH_THREADS = int(os.environ.get("LIGHTDVAE_BENCH_THREADS", "1"))


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def seeded_input(shape, backward):
    """x (requiring a gradient when the backward is timed) and the output gradient, seeded."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0), requires_grad=backward)
    return x, torch.randn(shape, generator=torch.Generator().manual_seed(1))


def timed_forward_backward(benchmark, fn, x, grad, backward):
    """Times ``fn(x)``, then its backward from ``grad`` when asked; returns the output."""

    def run():
        y = fn(x)
        if backward:
            y.backward(grad)
        return y

    return benchmark(run)


@pytest.fixture
def describe(benchmark):
    """Call describe(device, **extra) to put the environment into benchmark.extra_info."""

    def _describe(device: str, **extra):
        from lightdvae import _ext

        benchmark.extra_info.update(
            torch=torch.__version__,
            device=torch.cuda.get_device_name(0) if device == "cuda" else f"cpu ({os.cpu_count()} cores)",
            threads=torch.get_num_threads(),
            native_extension=_ext.HAS_NATIVE,
            malloc_kept=MALLOC_KEPT,
            **extra,
        )

    return _describe


@pytest.fixture
def bench_threads():
    """Run the test on :data:`BENCH_THREADS` torch threads (``LIGHTDVAE_BENCH_THREADS``, default 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(BENCH_THREADS)
    yield BENCH_THREADS
    torch.set_num_threads(before)
