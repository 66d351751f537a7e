"""Fused Itakura-Saito loss: native kernel vs the eager PyTorch reference (SPEC section 8).

    pytest benchmarks/test_is_loss.py --benchmark-only --benchmark-group-by=param:shape,param:device

Target: forward+backward at (128, 50, 513) float32 on CPU at least 3x faster than the reference.
"""

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
    numel = power.numel()
    if device == "cuda":
        # bytes moved by the fused kernels: forward reads 2 arrays, backward reads 2 and writes 1.
        benchmark.extra_info["bytes_fused"] = 5 * 4 * numel

    def run():
        logvar.grad = None
        fn(power, logvar).backward()
        synchronize(device)

    benchmark(run)
    assert logvar.grad is not None and logvar.grad.shape == power.shape


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
