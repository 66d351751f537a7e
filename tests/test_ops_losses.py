"""Fused Itakura-Saito and Gaussian KL ops: native kernels against the PyTorch references."""

import pytest
import torch
from helpers import CPU_DTYPES, CUDA_DTYPES, report_close, requires_cuda, requires_native

from lightdvae import _ext
from lightdvae.ops import gaussian_kl, gaussian_kl_ref, is_divergence, is_divergence_ref

SHAPES = [(1,), (2,), (129,), (1134,), (3, 7, 513), (5, 151, 16), (2, 33, 1, 31)]
REDUCTIONS = ["sum", "mean", "none"]


def make_is_inputs(shape, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    power = torch.rand(shape, generator=g, dtype=torch.float64) ** 4 * 10  # spread like speech power
    power[..., ::7] = 0.0  # silent bins: only eps keeps log finite
    logvar = torch.randn(shape, generator=g, dtype=torch.float64) * 2
    return power.to(device, dtype), logvar.to(device, dtype)


def make_kl_inputs(shape, dtype, device="cpu", seed=0, prior=True):
    g = torch.Generator().manual_seed(seed)
    t = [torch.randn(shape, generator=g, dtype=torch.float64).to(device, dtype) for _ in range(4)]
    return (t[0], t[1], t[2], t[3]) if prior else (t[0], t[1], None, None)


def tolerances(dtype, reduced: bool):
    if dtype == torch.float64:
        return 1e-10, 1e-10
    if dtype == torch.float32:
        return 1e-5, 1e-5 if reduced else 1e-5
    return 2e-2, 2e-2  # half / bfloat16: checked more tightly against the reference's own error below


def leaf(t):
    return None if t is None else t.detach().clone().requires_grad_(True)


def reduced_value(out, reduction):
    return out if reduction != "none" else out.sum()


# ---------------------------------------------------------------------------------------------
# values and gradients, CPU
# ---------------------------------------------------------------------------------------------


@requires_native
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_is_divergence_matches_reference(shape, dtype, reduction):
    power, logvar = make_is_inputs(shape, dtype)
    lv_native, lv_ref = leaf(logvar), leaf(logvar.double())
    out = is_divergence(power, lv_native, reduction)
    ref = is_divergence_ref(power.double(), lv_ref, reduction)
    assert out.dtype == dtype and out.shape == ref.shape
    rtol, atol = tolerances(dtype, reduction != "none")
    scale = ref.abs().max().item()
    report_close("value", out, ref, rtol=rtol, atol=atol * max(scale, 1.0))
    grad_out = (
        torch.randn(ref.shape, dtype=torch.float64) if reduction == "none" else torch.tensor(0.7, dtype=torch.float64)
    )
    out.backward(grad_out.to(dtype))
    ref.backward(grad_out)
    gscale = lv_ref.grad.abs().max().item()
    report_close("grad logvar", lv_native.grad, lv_ref.grad, rtol=rtol, atol=atol * max(gscale, 1.0))


@requires_native
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("prior", [True, False])
def test_gaussian_kl_matches_reference(shape, dtype, reduction, prior):
    inputs = make_kl_inputs(shape, dtype, prior=prior)
    native_in = [leaf(t) for t in inputs]
    ref_in = [leaf(None if t is None else t.double()) for t in inputs]
    out = gaussian_kl(*native_in, reduction=reduction)
    ref = gaussian_kl_ref(*ref_in, reduction=reduction)
    rtol, atol = tolerances(dtype, reduction != "none")
    report_close("value", out, ref, rtol=rtol, atol=atol * max(ref.abs().max().item(), 1.0))
    grad_out = (
        torch.randn(ref.shape, dtype=torch.float64) if reduction == "none" else torch.tensor(1.3, dtype=torch.float64)
    )
    out.backward(grad_out.to(dtype))
    ref.backward(grad_out)
    for name, a, b in zip(("mu_q", "logvar_q", "mu_p", "logvar_p"), native_in, ref_in, strict=False):
        if a is None:
            continue
        report_close(f"grad {name}", a.grad, b.grad, rtol=rtol, atol=atol * max(b.grad.abs().max().item(), 1.0))


@requires_native
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_non_contiguous_inputs(reduction):
    power, logvar = make_is_inputs((6, 40, 515), torch.float32)
    p, lv = power[::2, :, 1:-1].transpose(0, 1), logvar[::2, :, 1:-1].transpose(0, 1)
    assert not p.is_contiguous()
    report_close("is", is_divergence(p, lv, reduction), is_divergence_ref(p, lv, reduction), rtol=1e-5, atol=1e-4)
    mq, lq, mp, lp = (t[:, ::3] for t in make_kl_inputs((7, 30, 16), torch.float32))
    report_close(
        "kl", gaussian_kl(mq, lq, mp, lp, reduction), gaussian_kl_ref(mq, lq, mp, lp, reduction), rtol=1e-5, atol=1e-4
    )


@requires_native
def test_mixed_prior_arguments():
    """Only mu_p or only logvar_p given: the other reads as 0."""
    mq, lq, mp, lp = make_kl_inputs((4, 9, 16), torch.float64)
    for args in ((mq, lq, mp, None), (mq, lq, None, lp)):
        report_close("kl", gaussian_kl(*args), gaussian_kl_ref(*args), rtol=1e-10, atol=1e-10)


@requires_native
def test_power_gradient():
    power, logvar = make_is_inputs((3, 5, 7), torch.float64)
    power = power + 0.1
    p1, p2 = leaf(power), leaf(power)
    is_divergence(p1, logvar, "mean").backward()
    is_divergence_ref(p2, logvar, "mean").backward()
    report_close("grad power", p1.grad, p2.grad, rtol=1e-10, atol=1e-12)


@requires_native
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_is_divergence(reduction):
    power, logvar = make_is_inputs((3, 4, 5), torch.float64)
    power = (power + 0.05).requires_grad_(True)
    logvar.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p, lv: is_divergence(p, lv, reduction), (power, logvar))
    # the op without the fused gradient (logvar constant to the caller, power not): double backward too
    assert torch.autograd.gradgradcheck(
        lambda p: torch.ops.lightdvae.is_divergence(p, logvar.detach(), 1e-8, 2), (power,)
    )


@requires_native
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("prior", [True, False])
def test_gradcheck_gaussian_kl(reduction, prior):
    inputs = [
        None if t is None else t.requires_grad_(True) for t in make_kl_inputs((2, 3, 4), torch.float64, prior=prior)
    ]
    assert torch.autograd.gradcheck(lambda *a: gaussian_kl(*a, reduction=reduction), tuple(inputs))


@requires_native
def test_sum_is_deterministic_across_thread_counts():
    power, logvar = make_is_inputs((64, 50, 513), torch.float32)
    old = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(is_divergence(power, logvar).item())
    finally:
        torch.set_num_threads(old)
    assert results[0] == results[1] == results[2]


@requires_native
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_inputs(reduction):
    power, logvar = torch.zeros(0, 513), torch.zeros(0, 513)
    out, ref = is_divergence(power, logvar, reduction), is_divergence_ref(power, logvar, reduction)
    torch.testing.assert_close(out, ref, equal_nan=True)


@requires_native
def test_special_values_follow_the_reference():
    power = torch.tensor([0.0, 0.0, 1.0, 1.0, 1e-30, 3.0, float("nan")])
    logvar = torch.tensor([0.0, -50.0, 80.0, -80.0, 0.0, float("inf"), 0.0])
    torch.testing.assert_close(
        is_divergence(power, logvar, "none"),
        is_divergence_ref(power, logvar, "none"),
        equal_nan=True,
        rtol=1e-5,
        atol=1e-5,
    )


# ---------------------------------------------------------------------------------------------
# torch.library integration
# ---------------------------------------------------------------------------------------------


@requires_native
@pytest.mark.parametrize("reduction", [0, 1, 2])
def test_opcheck(reduction):
    power, logvar = make_is_inputs((3, 5, 17), torch.float32)
    logvar.requires_grad_(True)
    torch.library.opcheck(torch.ops.lightdvae.is_divergence.default, (power, logvar, 1e-8, reduction))
    grad = torch.randn(3, 5, 17) if reduction == 0 else torch.tensor(1.0)
    torch.library.opcheck(
        torch.ops.lightdvae.is_divergence_backward.default, (grad, power, logvar.detach(), 1e-8, reduction)
    )
    mq, lq, mp, lp = (t.requires_grad_(True) for t in make_kl_inputs((3, 5, 16), torch.float32))
    torch.library.opcheck(torch.ops.lightdvae.gaussian_kl.default, (mq, lq, mp, lp, reduction))
    torch.library.opcheck(torch.ops.lightdvae.gaussian_kl.default, (mq, lq, None, None, reduction))
    grad = torch.randn(3, 5, 16) if reduction == 0 else torch.tensor(1.0)
    torch.library.opcheck(
        torch.ops.lightdvae.gaussian_kl_backward.default, (grad, mq.detach(), lq.detach(), mp.detach(), None, reduction)
    )


@requires_native
def test_torch_compile_traces_the_ops():
    power, logvar = make_is_inputs((2, 6, 513), torch.float32)

    def loss(p, lv):
        return is_divergence(p, lv) + gaussian_kl(lv[..., :16], lv[..., 16:32])

    explained = torch._dynamo.explain(loss)(power, logvar)
    assert explained.graph_break_count == 0


# ---------------------------------------------------------------------------------------------
# backend choice and errors
# ---------------------------------------------------------------------------------------------


def test_backend_ref_runs_the_reference(monkeypatch):
    monkeypatch.setenv("LIGHTDVAE_BACKEND", "ref")
    calls = []
    monkeypatch.setattr("lightdvae.ops.losses.is_divergence_ref", lambda *a, **k: calls.append(1) or torch.tensor(0.0))
    power, logvar = make_is_inputs((2, 3), torch.float32)
    is_divergence(power, logvar)
    assert calls == [1]


def test_forcing_missing_native_names_the_reinstall_command(monkeypatch):
    monkeypatch.setenv("LIGHTDVAE_BACKEND", "native")
    monkeypatch.setattr(_ext, "HAS_NATIVE", False)
    power, logvar = make_is_inputs((2, 3), torch.float32)
    with pytest.raises(RuntimeError, match="pip install --no-build-isolation"):
        is_divergence(power, logvar)


def test_bad_backend_value(monkeypatch):
    monkeypatch.setenv("LIGHTDVAE_BACKEND", "fast")
    with pytest.raises(ValueError, match="LIGHTDVAE_BACKEND"):
        is_divergence(*make_is_inputs((2, 3), torch.float32))


@requires_native
def test_half_on_cpu_falls_back_or_raises(monkeypatch):
    monkeypatch.setenv("LIGHTDVAE_BACKEND", "auto")  # the automatic choice, whatever the caller set
    power, logvar = make_is_inputs((4, 9), torch.bfloat16)
    out = is_divergence(power, logvar)  # auto: the reference (float32 math) takes it
    assert out.dtype == torch.bfloat16
    monkeypatch.setenv("LIGHTDVAE_BACKEND", "native")
    with pytest.raises(RuntimeError, match="does not support these inputs"):
        is_divergence(power, logvar)


@pytest.mark.parametrize("fn", [is_divergence, is_divergence_ref])
def test_input_errors(fn):
    a, b = make_is_inputs((2, 3), torch.float32)
    with pytest.raises(ValueError, match="same shape"):
        fn(a, b[:, :2])
    with pytest.raises(TypeError, match="floating-point"):
        fn(a.long(), b)
    with pytest.raises(TypeError, match="dtype"):
        fn(a, b.double())
    with pytest.raises(ValueError, match="on meta"):
        fn(a, b.to("meta"))
    with pytest.raises(ValueError, match="reduction"):
        fn(a, b, "avg")


def test_kl_input_errors():
    mq, lq, mp, _ = make_kl_inputs((2, 3), torch.float32)
    with pytest.raises(ValueError, match="mu_p"):
        gaussian_kl(mq, lq, mp[:1])
    with pytest.raises(TypeError, match="floating-point"):
        gaussian_kl(mq, lq.int())


@requires_native
def test_native_op_checks_its_inputs():
    a, b = make_is_inputs((2, 3), torch.float32)
    with pytest.raises(RuntimeError, match="must have the shape of power"):
        torch.ops.lightdvae.is_divergence(a, b[:, :2], 1e-8, 2)
    with pytest.raises(RuntimeError, match="reduction must be"):
        torch.ops.lightdvae.is_divergence(a, b, 1e-8, 7)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        torch.ops.lightdvae.is_divergence(a.half(), b.half(), 1e-8, 2)


# ---------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)
# ---------------------------------------------------------------------------------------------


@requires_cuda
@pytest.mark.parametrize("shape", SHAPES + [(128, 50, 513)])
@pytest.mark.parametrize("dtype", CUDA_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cuda_is_divergence(shape, dtype, reduction):
    power, logvar = make_is_inputs(shape, torch.float64)
    lv_gpu = leaf(logvar.to("cuda", dtype))
    out = is_divergence(power.to("cuda", dtype), lv_gpu, reduction)
    lv64 = leaf(logvar)
    ref64 = is_divergence_ref(power, lv64, reduction)
    grad_out = (
        torch.randn(ref64.shape, dtype=torch.float64) if reduction == "none" else torch.tensor(0.5, dtype=torch.float64)
    )
    out.backward(grad_out.to("cuda", dtype))
    ref64.backward(grad_out)
    if dtype in (torch.float32, torch.float64):
        rtol, atol = tolerances(dtype, reduction != "none")
        report_close("value", out, ref64, rtol=rtol, atol=atol * max(ref64.abs().max().item(), 1.0))
        report_close("grad", lv_gpu.grad, lv64.grad, rtol=rtol, atol=atol * max(lv64.grad.abs().max().item(), 1.0))
    else:
        # Low precision: the kernel's error against float64 is at most a small multiple of the error of
        # the reference run in the same dtype (inputs rounded to `dtype`, float32 math).
        lv_low = leaf(logvar.to(dtype))
        ref_low = is_divergence_ref(power.to(dtype), lv_low, reduction)
        ref_low.backward(grad_out.to(dtype))
        for name, a, r, b in (("value", out, ref_low, ref64), ("grad", lv_gpu.grad, lv_low.grad, lv64.grad)):
            err = (a.double().cpu() - b).abs().max().item()
            ref_err = (r.double() - b).abs().max().item()
            print(f"{name}: kernel err {err:.3e}, reference err {ref_err:.3e}")
            assert err <= 2 * ref_err + 1e-6 * b.abs().max().item()


@requires_cuda
@pytest.mark.parametrize("dtype", CUDA_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("prior", [True, False])
def test_cuda_gaussian_kl(dtype, reduction, prior):
    inputs = make_kl_inputs((7, 129, 16), torch.float64, prior=prior)
    gpu_in = [leaf(None if t is None else t.to("cuda", dtype)) for t in inputs]
    ref_in = [leaf(t) for t in inputs]
    out = gaussian_kl(*gpu_in, reduction=reduction)
    ref = gaussian_kl_ref(*ref_in, reduction=reduction)
    grad_out = (
        torch.randn(ref.shape, dtype=torch.float64) if reduction == "none" else torch.tensor(0.5, dtype=torch.float64)
    )
    out.backward(grad_out.to("cuda", dtype))
    ref.backward(grad_out)
    rtol, atol = tolerances(dtype, reduction != "none")
    report_close("value", out, ref, rtol=rtol, atol=atol * max(ref.abs().max().item(), 1.0))
    for a, b in zip(gpu_in, ref_in, strict=False):
        if a is not None:
            report_close("grad", a.grad, b.grad, rtol=rtol, atol=atol * max(b.grad.abs().max().item(), 1.0))


@requires_cuda
def test_cuda_opcheck_and_gradcheck():
    power, logvar = make_is_inputs((3, 5, 17), torch.float64, device="cuda")
    torch.library.opcheck(torch.ops.lightdvae.is_divergence.default, (power, logvar, 1e-8, 2))
    mq, lq, mp, lp = make_kl_inputs((3, 5, 16), torch.float64, device="cuda")
    torch.library.opcheck(torch.ops.lightdvae.gaussian_kl.default, (mq, lq, mp, lp, 0))
    p = (power + 0.05).requires_grad_(True)
    lv = logvar.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: is_divergence(a, b, "mean"), (p, lv))


@requires_cuda
def test_cuda_misaligned_and_non_contiguous():
    power, logvar = make_is_inputs((4, 50, 514), torch.float32, device="cuda")
    p, lv = power[..., 1:], logvar[..., 1:]  # storage offset of one element: no 16-byte vector loads
    report_close("is", is_divergence(p, lv), is_divergence_ref(p.double(), lv.double()), rtol=1e-5, atol=1e-3)
