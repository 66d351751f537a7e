"""Fused Itakura-Saito loss: native kernel vs the eager PyTorch reference (SPEC section 8).

    pytest benchmarks/test_is_loss.py --benchmark-only --benchmark-group-by=param:shape,param:device

Target: forward+backward at (128, 50, 513) float32 on CPU at least 3x faster than the reference; on a GPU, at least
70 % of the device's memory bandwidth: ``bytes_fused`` (extra_info) over the median time, against the datasheet peak
and against ``test_copy_ceiling``, a device-to-device copy of the same bytes (the bandwidth achievable here).
"""

import math

import pytest
import torch
from conftest import DEVICES, synchronize

from lightdvae import _ext
from lightdvae.ops import gaussian_kl, gaussian_kl_ref, is_divergence, is_divergence_ref

SHAPES = [(128, 50, 513), (16, 1000, 513)]
IMPLS = {"reference": is_divergence_ref, "native": is_divergence}


def _inputs(shape, device):
    g = torch.Generator().manual_seed(0)
    power = (torch.rand(shape, generator=g) ** 4 * 10).to(device)
    logvar = torch.randn(shape, generator=g).to(device)
    return power, logvar


def fused_bytes(shape) -> int:
    """Bytes the fused IS forward+backward reads and writes: 5 float32 arrays of ``shape``."""
    return 5 * 4 * math.prod(shape)


def _skip_missing(impl, device):
    if impl == "native" and not _ext.has_kernel("is_divergence", device):
        pytest.skip(f"no native {device} kernel in this build")


@pytest.mark.benchmark(group="is_loss_forward")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl", list(IMPLS))
def test_is_forward(benchmark, describe, impl, shape, device):
    _skip_missing(impl, device)
    power, logvar = _inputs(shape, device)
    fn = IMPLS[impl]
    describe(device, impl=impl, shape=shape)

    def run():
        out = fn(power, logvar)
        synchronize(device)
        return out

    out = benchmark(run)
    assert torch.isfinite(out)


@pytest.mark.benchmark(group="is_loss_forward_backward")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl", list(IMPLS))
def test_is_forward_backward(benchmark, describe, impl, shape, device):
    _skip_missing(impl, device)
    power, logvar = _inputs(shape, device)
    logvar.requires_grad_(True)
    fn = IMPLS[impl]
    describe(device, impl=impl, shape=shape)
    # the fewest bytes the computation moves (what the fused kernels move): forward reads 2 arrays, backward reads 2
    # and writes 1; bytes_fused / time is the achieved bandwidth (scripts/gpu_results.py, test_copy_ceiling)
    benchmark.extra_info["bytes_fused"] = fused_bytes(shape)

    def run():
        logvar.grad = None
        fn(power, logvar).backward()
        synchronize(device)

    benchmark(run)
    assert logvar.grad is not None and logvar.grad.shape == power.shape


@pytest.mark.benchmark(group="is_loss_copy_ceiling")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_copy_ceiling(benchmark, describe, shape, device):
    """A copy that reads and writes as many bytes as the fused IS forward+backward at ``shape``: the memory
    bandwidth achievable on this device, the ceiling of ``test_is_forward_backward`` (``bytes_moved`` in extra_info,
    reads plus writes)."""
    numel = fused_bytes(shape) // (2 * 4)  # float32 elements read once and written once
    src = torch.rand(numel, generator=torch.Generator().manual_seed(0)).to(device)
    dst = torch.empty_like(src)
    describe(device, shape=shape, bytes_moved=2 * 4 * numel)

    def run():
        dst.copy_(src)
        synchronize(device)

    benchmark(run)
    assert torch.equal(dst, src)


@pytest.mark.benchmark(group="kl_forward_backward")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["reference", "native"])
def test_kl_forward_backward(benchmark, describe, impl, device):
    if impl == "native" and not _ext.has_kernel("gaussian_kl", device):
        pytest.skip(f"no native {device} kernel in this build")
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(128, 50, 16, generator=g).to(device).requires_grad_(True) for _ in range(4)]
    fn = gaussian_kl if impl == "native" else gaussian_kl_ref
    describe(device, impl=impl, shape=(128, 50, 16))

    def run():
        for t in tensors:
            t.grad = None
        fn(*tensors).backward()
        synchronize(device)

    benchmark(run)
