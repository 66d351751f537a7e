"""The fused losses' forward+backward in one pass (``*_with_grad`` ops) and the per-instruction-set CPU kernels.

Every CPU instruction set the machine runs (``loss_cpu_isas()``: AVX-512, AVX2, baseline on x86-64) is tested
explicitly; the others skip.  Tolerances come from a measurement: the native result's error against a float64 run
of the reference must stay within a small multiple of the error of the eager reference run in the same dtype
(plus a few units in the last place of the result's magnitude, for results the eager reference gets exactly).
"""

import os
import subprocess
import sys

import pytest
import torch
from helpers import requires_cuda, requires_native
from test_ops_losses import make_is_inputs, make_kl_inputs

from lightdvae.errors import BackendError
from lightdvae.ops import gaussian_kl, gaussian_kl_ref, is_divergence, is_divergence_ref
from lightdvae.ops.losses import loss_cpu_isa, loss_cpu_isas

ISAS = ["avx512", "avx2", "default"]
# lengths 1, 2, 151, 1134; batch 1 and 17; (17, 2, 1134) spans more than one parallel chunk (32768 elements)
SHAPES = [(1, 1), (1, 2), (17, 151), (1, 1134), (17, 2, 1134)]
REDUCTIONS = ["sum", "mean", "none"]
FACTOR, ULPS = 4.0, 8.0  # native error <= FACTOR x (eager reference's error) + ULPS x eps x magnitude


@pytest.fixture(params=ISAS)
def isa(request):
    if request.param not in loss_cpu_isas():
        pytest.skip(f"this CPU does not run {request.param} (it runs {loss_cpu_isas()})")
    loss_cpu_isa(request.param)
    yield request.param
    loss_cpu_isa("auto")


def non_contiguous(t):
    """The same values as ``t`` in a strided view (every other element of a wider tensor; a single element is
    contiguous whatever its strides)."""
    if t is None:
        return None
    wide = torch.stack([t, t], dim=-1)[..., 0]
    assert wide.equal(t) and (t.numel() == 1 or not wide.is_contiguous())
    return wide


def leaf(t):
    return None if t is None else t.detach().clone().requires_grad_(True)


def upstream(reduction, shape, one):
    if reduction == "none":
        return torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return torch.tensor(1.0 if one else 0.7, dtype=torch.float64)


def assert_within_reference_error(name, native, ref_same_dtype, ref64, magnitude):
    """|native - ref64| <= FACTOR * |ref_same_dtype - ref64| + ULPS * eps(dtype) * magnitude (max over elements)."""
    err = (native.detach().double() - ref64).abs().max().item()
    ref_err = (ref_same_dtype.detach().double() - ref64).abs().max().item()
    bound = FACTOR * ref_err + ULPS * torch.finfo(native.dtype).eps * magnitude
    print(f"{name}: native err {err:.3e}, eager reference err {ref_err:.3e}, bound {bound:.3e}")
    assert err <= bound


def magnitude_of(terms64, reduction):
    """What a result's rounding error scales with: the largest term, or for a reduction the sum of |terms|."""
    total = terms64.abs().sum().item()
    return {"none": terms64.abs().max().item(), "sum": total, "mean": total / max(terms64.numel(), 1)}[reduction]


def run_is(fn, power, logvar, reduction, grad_out):
    lv = leaf(logvar)
    out = fn(power, lv, reduction)
    out.backward(grad_out.to(out.dtype))
    return out, lv.grad


@requires_native
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("one", [True, False], ids=["grad1", "grad0.7"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_is_forward_backward_per_isa(isa, shape, dtype, reduction, one, contiguous):
    power64, logvar64 = make_is_inputs(shape, torch.float64, seed=len(shape) + shape[-1])
    power, logvar = power64.to(dtype), logvar64.to(dtype)
    if not contiguous:
        power, logvar = non_contiguous(power), non_contiguous(logvar)
    grad_out = upstream(reduction, shape, one)
    out, grad = run_is(is_divergence, power, logvar, reduction, grad_out)  # the fused op: logvar requires grad
    assert out.grad_fn is not None and "with_grad" in type(out.grad_fn).__name__
    ref, ref_grad = run_is(is_divergence_ref, power, logvar, reduction, grad_out)
    ref64, ref64_grad = run_is(is_divergence_ref, power.double(), logvar.double(), reduction, grad_out)
    terms = is_divergence_ref(power.double(), logvar.double(), "none")
    assert out.dtype == dtype and out.shape == ref64.shape and grad.shape == power.shape
    assert_within_reference_error("value", out, ref, ref64, magnitude_of(terms, reduction))
    assert_within_reference_error("grad logvar", grad, ref_grad, ref64_grad, ref64_grad.abs().max().item())
    with torch.no_grad():  # the forward-only op, same instruction set
        plain = is_divergence(power, logvar, reduction)
    assert_within_reference_error("value (no grad)", plain, ref, ref64, magnitude_of(terms, reduction))
    code = {"none": 0, "mean": 1, "sum": 2}[reduction]
    split = torch.ops.lightdvae.is_divergence_backward(grad_out.to(dtype), power, logvar, 1e-8, code)
    assert_within_reference_error("grad (backward op)", split, ref_grad, ref64_grad, ref64_grad.abs().max().item())


def run_kl(fn, inputs, reduction, grad_out):
    leaves = [leaf(t) for t in inputs]
    out = fn(*leaves, reduction=reduction)
    out.backward(grad_out.to(out.dtype))
    return out, [None if t is None else t.grad for t in leaves]


@requires_native
@pytest.mark.parametrize("prior", [True, False], ids=["prior", "standard"])
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1), (17, 151), (17, 2, 1134)], ids=str)
def test_kl_forward_backward_per_isa(isa, shape, dtype, reduction, contiguous, prior):
    inputs64 = make_kl_inputs(shape, torch.float64, seed=shape[-1], prior=prior)
    inputs = [None if t is None else t.to(dtype) for t in inputs64]
    if not contiguous:
        inputs = [non_contiguous(t) for t in inputs]
    grad_out = upstream(reduction, shape, one=False)
    out, grads = run_kl(gaussian_kl, inputs, reduction, grad_out)
    assert "with_grad" in type(out.grad_fn).__name__
    ref, ref_grads = run_kl(gaussian_kl_ref, inputs, reduction, grad_out)
    ref64, ref64_grads = run_kl(
        gaussian_kl_ref, [None if t is None else t.double() for t in inputs], reduction, grad_out
    )
    terms = gaussian_kl_ref(*[None if t is None else t.double() for t in inputs], reduction="none")
    assert_within_reference_error("value", out, ref, ref64, magnitude_of(terms, reduction))
    for name, g, r, r64 in zip(("mu_q", "logvar_q", "mu_p", "logvar_p"), grads, ref_grads, ref64_grads, strict=True):
        if r64 is not None:
            assert_within_reference_error(f"grad {name}", g, r, r64, r64.abs().max().item())
    with torch.no_grad():
        plain = gaussian_kl(*inputs, reduction=reduction)
    assert_within_reference_error("value (no grad)", plain, ref, ref64, magnitude_of(terms, reduction))


@requires_native
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_and_double_backward_of_the_fused_ops(reduction):
    power, logvar = make_is_inputs((3, 4, 5), torch.float64)
    power = (power + 0.05).requires_grad_(True)
    logvar.requires_grad_(True)
    assert "with_grad" in type(is_divergence(power, logvar, reduction).grad_fn).__name__
    assert torch.autograd.gradcheck(lambda p, lv: is_divergence(p, lv, reduction), (power, logvar))
    assert torch.autograd.gradgradcheck(lambda p, lv: is_divergence(p, lv, reduction), (power, logvar))
    for prior in (True, False):
        kl_in = [
            None if t is None else t.requires_grad_(True) for t in make_kl_inputs((2, 3, 4), torch.float64, prior=prior)
        ]
        assert torch.autograd.gradcheck(lambda *a: gaussian_kl(*a, reduction=reduction), tuple(kl_in))
        assert torch.autograd.gradgradcheck(lambda *a: gaussian_kl(*a, reduction=reduction), tuple(kl_in))


@requires_native
def test_only_some_inputs_require_grad():
    """The fused KL writes every gradient; the backward hands out only those asked for, and power alone still works."""
    mq, lq, mp, lp = make_kl_inputs((4, 7, 16), torch.float64)
    lq.requires_grad_(True)
    gaussian_kl(mq, lq, mp, lp).backward()
    expected = torch.autograd.grad(gaussian_kl_ref(mq, lq, mp, lp), lq)[0]
    torch.testing.assert_close(lq.grad, expected, rtol=1e-12, atol=1e-12)
    assert mq.grad is None and mp.grad is None and lp.grad is None
    power, logvar = make_is_inputs((3, 9), torch.float64)
    power = (power + 0.1).requires_grad_(True)
    is_divergence(power, logvar).backward()
    torch.testing.assert_close(power.grad, torch.autograd.grad(is_divergence_ref(power, logvar), power)[0])


@requires_native
def test_retained_graph_backward_accumulates():
    """An upstream gradient of 1 hands the forward's buffer over as the gradient (taken over by autograd without a
    retained graph, copied with one): repeated backwards through a retained graph add up and never alter it."""
    power, logvar = make_is_inputs((5, 33), torch.float32)
    lv = leaf(logvar)
    loss = is_divergence(power, lv)
    loss.backward(retain_graph=True)
    first = lv.grad.clone()
    loss.backward(retain_graph=True)
    torch.testing.assert_close(lv.grad, 2 * first)
    lv.grad = None  # after set_to_none the next backward starts afresh
    loss.backward()
    torch.testing.assert_close(lv.grad, first)
    lv64 = leaf(logvar.double())
    expected = torch.autograd.grad(is_divergence_ref(power.double(), lv64), lv64)[0]
    torch.testing.assert_close(first.double(), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


@requires_native
@pytest.mark.parametrize("reduction", [0, 1, 2])
def test_opcheck_fused_ops(reduction):
    power, logvar = make_is_inputs((3, 5, 17), torch.float32)
    logvar.requires_grad_(True)
    torch.library.opcheck(torch.ops.lightdvae.is_divergence_with_grad.default, (power, logvar, 1e-8, reduction))
    mq, lq, mp, lp = (t.requires_grad_(True) for t in make_kl_inputs((3, 5, 16), torch.float32))
    torch.library.opcheck(torch.ops.lightdvae.gaussian_kl_with_grad.default, (mq, lq, mp, lp, reduction))
    torch.library.opcheck(torch.ops.lightdvae.gaussian_kl_with_grad.default, (mq, lq, None, lp, reduction))


@requires_native
def test_torch_compile_forward_backward_matches_eager():
    power, logvar = make_is_inputs((2, 6, 513), torch.float32)
    mq, lq = make_kl_inputs((2, 6, 16), torch.float32, prior=False)[:2]

    def loss(p, lv, m, v):
        return is_divergence(p, lv) / 7 + gaussian_kl(m, v)

    eager = [leaf(t) for t in (logvar, mq, lq)]
    loss(power, *eager).backward()
    compiled_in = [leaf(t) for t in (logvar, mq, lq)]
    torch.compile(loss, backend="aot_eager", fullgraph=True)(power, *compiled_in).backward()
    for a, b in zip(compiled_in, eager, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# choosing the instruction set
# ---------------------------------------------------------------------------------------------


@requires_native
def test_isa_choice_and_errors():
    supported = loss_cpu_isas()
    assert supported[-1] == "default" and set(supported) <= set(ISAS)
    automatic = loss_cpu_isa()
    assert automatic in supported
    try:
        for name in supported:
            assert loss_cpu_isa(name) == name == loss_cpu_isa()
        with pytest.raises(BackendError, match="not one of auto"):
            loss_cpu_isa("sse9")
        assert loss_cpu_isa("auto") == automatic
    finally:
        loss_cpu_isa("auto")
    with pytest.raises(RuntimeError, match="is not an instruction set this CPU"):
        torch.ops.lightdvae.loss_cpu_isa("sse9")


@requires_native
@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_aten_cpu_capability_lowers_the_choice(capability):
    if capability not in loss_cpu_isas():
        pytest.skip(f"this CPU does not run {capability}")
    code = "from lightdvae.ops.losses import loss_cpu_isa; print(loss_cpu_isa())"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability, "LIGHTDVAE_QUIET_FALLBACK": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == capability


# ---------------------------------------------------------------------------------------------
# CUDA: the same contract (skipped without a GPU)
# ---------------------------------------------------------------------------------------------


@requires_cuda
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cuda_fused_ops_agree_with_the_cpu(reduction):
    code = {"none": 0, "mean": 1, "sum": 2}[reduction]
    power, logvar = make_is_inputs((17, 2, 1134), torch.float64)
    cpu = torch.ops.lightdvae.is_divergence_with_grad(power, logvar, 1e-8, code)
    gpu = torch.ops.lightdvae.is_divergence_with_grad(power.cuda(), logvar.cuda(), 1e-8, code)
    for a, b in zip(gpu, cpu, strict=True):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-12, atol=1e-12 * max(b.abs().max().item(), 1.0))
    kl_in = make_kl_inputs((17, 151), torch.float64)
    cpu = torch.ops.lightdvae.gaussian_kl_with_grad(*kl_in, code)
    gpu = torch.ops.lightdvae.gaussian_kl_with_grad(*(t.cuda() for t in kl_in), code)
    for a, b in zip(gpu, cpu, strict=True):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-12, atol=1e-12 * max(b.abs().max().item(), 1.0))
    torch.library.opcheck(
        torch.ops.lightdvae.is_divergence_with_grad.default, (power.cuda(), logvar.cuda(), 1e-8, code)
    )
    torch.library.opcheck(torch.ops.lightdvae.gaussian_kl_with_grad.default, (*(t.cuda() for t in kl_in), code))
    p = (power[:2, :1, :9] + 0.05).cuda().requires_grad_(True)
    lv = logvar[:2, :1, :9].cuda().requires_grad_(True)
    assert torch.autograd.gradgradcheck(lambda a, b: is_divergence(a, b, reduction), (p, lv))


@requires_native
def test_backward_runs_no_pass_over_the_inputs():
    """With an upstream gradient of 1 the backward hands the forward's gradient over: no kernel of the inputs' size runs
    (no zeros for the gradient output's gradient, no scaling); with another upstream gradient, one multiply."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.big = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            views = ("aten.detach.default", "aten.alias.default", "aten.view.default")
            leaves = torch.utils._pytree.tree_leaves(out)
            if str(func) not in views and any(isinstance(t, torch.Tensor) and t.numel() > 1 for t in leaves):
                self.big.append(str(func))
            return out

    power, logvar = make_is_inputs((4, 50, 513), torch.float32)
    for grad_out, expected in ((torch.tensor(1.0), []), (torch.tensor(0.5), ["aten.mul.Tensor"])):
        lv = leaf(logvar)
        loss = is_divergence(power, lv)
        with Record() as record:
            loss.backward(grad_out)
        assert record.big == expected
