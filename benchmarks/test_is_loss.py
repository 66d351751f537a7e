"""Fused Itakura-Saito loss: native kernel vs the eager PyTorch reference (SPEC section 8).

    pytest benchmarks/test_is_loss.py --benchmark-only --benchmark-group-by=param:shape,param:device

Targets (issue 17): forward+backward at (128, 50, 513) float32 on CPU at least 4x faster than the reference and
within 1.5x of ``test_read_write_floor`` -- reading the two inputs once and writing one array of their size, the
fewest bytes a forward+backward can move (the fused op does exactly that when the upstream gradient is 1) -- timed in
the same group, so the table's relative column gives both ratios.  ``native-avx2`` / ``native-default`` force the CPU
kernels' instruction set (skipped where the CPU lacks it); extra_info ``isa`` is the set that ran.  On a GPU, at
least 70 % of the device's memory bandwidth: ``bytes_fused`` (extra_info) over the median time, against the
datasheet peak and against ``test_copy_ceiling``, a device-to-device copy of 5 arrays (the bandwidth achievable
there; the CUDA backward still scales the saved gradient in a second pass).
"""

import math

import pytest
import torch
from conftest import DEVICES, synchronize

from lightdvae import _ext
from lightdvae.ops import gaussian_kl, gaussian_kl_ref, is_divergence, is_divergence_ref
from lightdvae.ops.losses import loss_cpu_isa, loss_cpu_isas

SHAPES = [(128, 50, 513), (16, 1000, 513)]
IMPLS = {"reference": is_divergence_ref, "native": is_divergence}
FORCED_ISAS = {"native-avx2": "avx2", "native-default": "default"}  # the CPU kernels in one instruction set


def _inputs(shape, device):
    g = torch.Generator().manual_seed(0)
    power = (torch.rand(shape, generator=g) ** 4 * 10).to(device)
    logvar = torch.randn(shape, generator=g).to(device)
    return power, logvar


def fused_bytes(shape) -> int:
    """Bytes the fused IS forward+backward reads and writes: 5 float32 arrays of ``shape``."""
    return 5 * 4 * math.prod(shape)


def _skip_missing(impl, device):
    if impl.startswith("native") and not _ext.has_kernel("is_divergence", device):
        pytest.skip(f"no native {device} kernel in this build")
    if impl in FORCED_ISAS and (device != "cpu" or FORCED_ISAS[impl] not in loss_cpu_isas()):
        pytest.skip(f"{FORCED_ISAS[impl]} is not an instruction set of this {device}")


@pytest.fixture
def isa_of(request):
    """isa_of(impl, device): forces the instruction set ``impl`` names (restored after the test) and returns the one
    that runs ('reference' for the reference, 'cuda' on a GPU)."""

    def _isa(impl, device):
        if impl == "reference":
            return "reference"
        if device != "cpu":
            return device
        if impl in FORCED_ISAS:
            request.addfinalizer(lambda: loss_cpu_isa("auto"))
            return loss_cpu_isa(FORCED_ISAS[impl])
        return loss_cpu_isa()

    return _isa


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
@pytest.mark.parametrize("impl", [*IMPLS, *FORCED_ISAS])
def test_is_forward_backward(benchmark, describe, isa_of, impl, shape, device):
    _skip_missing(impl, device)
    power, logvar = _inputs(shape, device)
    logvar.requires_grad_(True)
    fn = IMPLS.get(impl, is_divergence)
    describe(device, impl=impl, shape=shape, isa=isa_of(impl, device))
    # bytes_fused / time is the achieved bandwidth of 5 arrays moved (scripts/gpu_results.py, test_copy_ceiling);
    # bytes_min the fewest: the inputs read once and the gradient written once (test_read_write_floor)
    benchmark.extra_info["bytes_fused"] = fused_bytes(shape)
    benchmark.extra_info["bytes_min"] = 3 * 4 * math.prod(shape)

    def run():
        logvar.grad = None
        fn(power, logvar).backward()
        synchronize(device)

    benchmark(run)
    assert logvar.grad is not None and logvar.grad.shape == power.shape


@pytest.mark.benchmark(group="is_loss_forward_backward")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_read_write_floor(benchmark, describe, shape, device):
    """The memory floor of a forward+backward at ``shape``, in the group of ``test_is_forward_backward``: the two
    inputs read once and one array of their size written (an element-wise add into a preallocated output)."""
    power, logvar = _inputs(shape, device)
    out = torch.empty_like(power)
    describe(device, impl="read-write floor", shape=shape, bytes_moved=3 * 4 * math.prod(shape))

    def run():
        torch.add(power, logvar, out=out)
        synchronize(device)

    benchmark(run)
    assert torch.equal(out, power + logvar)


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
