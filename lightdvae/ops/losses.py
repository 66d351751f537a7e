"""Fused Itakura-Saito divergence and Gaussian KL divergence (SPEC section 7.1).

Each op is a pair: ``is_divergence`` / ``gaussian_kl`` run the native kernel of
``torch.ops.lightdvae`` when the extension is built and fall back to ``*_ref`` (plain PyTorch,
same signature) otherwise.  ``LIGHTDVAE_BACKEND=ref|native`` forces one.

The native kernels read each input once, compute the divergence and its reduction in the same
pass, and write nothing of the input's size when the result is reduced.  When an input requires
grad, that same pass also writes the gradients (``*_with_grad`` ops, the fused cross-entropy
trick): the backward only scales them by the upstream gradient, and returns them as they are when
that gradient is exactly 1 (a CPU scalar).  On the CPU the kernels run in the best instruction set
that both the CPU and ATen's capability allow (``loss_cpu_isa``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightdvae import _ext

__all__ = [
    "is_divergence",
    "is_divergence_ref",
    "gaussian_kl",
    "gaussian_kl_ref",
    "REDUCTIONS",
    "loss_cpu_isa",
    "loss_cpu_isas",
]

# Same codes as at::Reduction (none=0, mean=1, sum=2), used by the native schemas.
REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}
_REDUCTION_NAMES = {code: name for name, code in REDUCTIONS.items()}
DEFAULT_EPS = 1e-8


def _reduction_code(reduction: str) -> int:
    try:
        return REDUCTIONS[reduction]
    except (KeyError, TypeError):
        raise ValueError(f"reduction must be one of {sorted(REDUCTIONS)}, got {reduction!r}") from None


def _check_pair(name_a: str, a: Tensor, name_b: str, b: Tensor, op: str) -> None:
    for name, t in ((name_a, a), (name_b, b)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")
    if a.shape != b.shape:
        raise ValueError(
            f"{op}: {name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.device != b.device:
        raise ValueError(f"{op}: {name_a} is on {a.device} but {name_b} is on {b.device}; move both to one device")
    if a.dtype != b.dtype:
        raise TypeError(f"{op}: {name_a} is {a.dtype} but {name_b} is {b.dtype}; cast both to one dtype")


def _native_dtype_ok(t: Tensor) -> bool:
    if t.device.type == "cuda":
        return t.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    return t.dtype in (torch.float32, torch.float64)


def _reduce(d: Tensor, reduction: str) -> Tensor:
    if reduction == "sum":
        return d.sum()
    if reduction == "mean":
        return d.mean()
    return d


# --------------------------------------------------------------------------------------------
# Itakura-Saito divergence
# --------------------------------------------------------------------------------------------


def is_divergence_ref(power: Tensor, logvar: Tensor, reduction: str = "sum", eps: float = DEFAULT_EPS) -> Tensor:
    """Plain-PyTorch reference of :func:`is_divergence` (float32 math for half inputs, cast back)."""
    _reduction_code(reduction)
    _check_pair("power", power, "logvar", logvar, "is_divergence")
    out_dtype = power.dtype
    if out_dtype in (torch.float16, torch.bfloat16):
        power, logvar = power.float(), logvar.float()
    d = power * torch.exp(-logvar) - torch.log(power + eps) + logvar - 1.0
    return _reduce(d, reduction).to(out_dtype)


def is_divergence(power: Tensor, logvar: Tensor, reduction: str = "sum", eps: float = DEFAULT_EPS) -> Tensor:
    """Itakura-Saito divergence ``d_IS(power, exp(logvar))``, fused with its reduction.

    ``d = power * exp(-logvar) - log(power + eps) + logvar - 1`` element-wise: the negative
    log-likelihood of a complex Gaussian ``N_c(0, exp(logvar))`` up to a constant, i.e. the
    reconstruction term of every DVAE on power spectrograms.

    Args:
        power: the power spectrogram ``|X|^2``, any shape (models use ``(batch, frames, 513)``),
            non-negative.
        logvar: the decoder's log-variance, same shape, dtype and device as ``power``.
        reduction: ``"sum"`` (default), ``"mean"`` (over all elements) or ``"none"``.
        eps: added to ``power`` inside the log so that silent bins stay finite.

    Returns:
        A 0-dim tensor for ``"sum"``/``"mean"``, else a tensor shaped like ``power``; dtype of the
        inputs (half and bfloat16 accumulate in float32).

    Differentiable in both inputs, twice as well (``d/dlogvar = 1 - power * exp(-logvar)``).  When
    ``logvar`` requires grad, the native kernel computes that gradient in the forward pass (one read
    of each input for forward and backward together; the backward scales it).  Devices and dtypes of
    the native kernel: CPU float32/float64; CUDA float16/bfloat16/float32/float64.  Anything else
    runs the reference.  Non-contiguous inputs are accepted (one copy).
    """
    code = _reduction_code(reduction)
    _check_pair("power", power, "logvar", logvar, "is_divergence")
    if _ext.use_native("is_divergence", power.device.type, _native_dtype_ok(power)):
        if (
            logvar.requires_grad
            and torch.is_grad_enabled()
            and _ext.has_kernel("is_divergence_with_grad", power.device.type)
        ):
            return torch.ops.lightdvae.is_divergence_with_grad(power, logvar, float(eps), code)[0]
        return torch.ops.lightdvae.is_divergence(power, logvar, float(eps), code)
    return is_divergence_ref(power, logvar, reduction, eps)


# --------------------------------------------------------------------------------------------
# Gaussian KL divergence
# --------------------------------------------------------------------------------------------


def gaussian_kl_ref(
    mu_q: Tensor,
    logvar_q: Tensor,
    mu_p: Tensor | None = None,
    logvar_p: Tensor | None = None,
    reduction: str = "sum",
) -> Tensor:
    """Plain-PyTorch reference of :func:`gaussian_kl` (float32 math for half inputs, cast back)."""
    _reduction_code(reduction)
    _check_kl_inputs(mu_q, logvar_q, mu_p, logvar_p)
    out_dtype = mu_q.dtype
    up = (lambda t: t.float()) if out_dtype in (torch.float16, torch.bfloat16) else (lambda t: t)
    mu_q, logvar_q = up(mu_q), up(logvar_q)
    mu_p = torch.zeros_like(mu_q) if mu_p is None else up(mu_p)
    logvar_p = torch.zeros_like(mu_q) if logvar_p is None else up(logvar_p)
    kl = 0.5 * (logvar_p - logvar_q + (torch.exp(logvar_q) + (mu_q - mu_p) ** 2) * torch.exp(-logvar_p) - 1.0)
    return _reduce(kl, reduction).to(out_dtype)


def _check_kl_inputs(mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor | None, logvar_p: Tensor | None) -> None:
    _check_pair("mu_q", mu_q, "logvar_q", logvar_q, "gaussian_kl")
    if mu_p is not None:
        _check_pair("mu_q", mu_q, "mu_p", mu_p, "gaussian_kl")
    if logvar_p is not None:
        _check_pair("mu_q", mu_q, "logvar_p", logvar_p, "gaussian_kl")


def gaussian_kl(
    mu_q: Tensor,
    logvar_q: Tensor,
    mu_p: Tensor | None = None,
    logvar_p: Tensor | None = None,
    reduction: str = "sum",
) -> Tensor:
    """KL divergence ``KL(N(mu_q, exp(logvar_q)) || N(mu_p, exp(logvar_p)))`` of diagonal Gaussians.

    ``0.5 * (logvar_p - logvar_q + (exp(logvar_q) + (mu_q - mu_p)^2) / exp(logvar_p) - 1)`` per
    element, fused with its reduction.  ``mu_p`` / ``logvar_p`` omitted (``None``) mean 0, so with
    both omitted the prior is the standard normal.

    Args:
        mu_q, logvar_q: posterior mean and log-variance, any shape (models: ``(batch, frames, z_dim)``).
        mu_p, logvar_p: prior mean and log-variance, same shape, or ``None``.
        reduction: ``"sum"`` (default), ``"mean"`` or ``"none"``.

    Returns:
        0-dim tensor (``"sum"``/``"mean"``) or a tensor shaped like ``mu_q``, in the inputs' dtype.

    Differentiable in all four inputs, twice as well.  When one of them requires grad, the native
    kernel computes the gradients in the forward pass (the backward scales them).  Native kernel:
    CPU float32/float64, CUDA float16/bfloat16/float32/float64; otherwise the reference runs.
    """
    code = _reduction_code(reduction)
    _check_kl_inputs(mu_q, logvar_q, mu_p, logvar_p)
    if _ext.use_native("gaussian_kl", mu_q.device.type, _native_dtype_ok(mu_q)):
        needs_grad = any(t is not None and t.requires_grad for t in (mu_q, logvar_q, mu_p, logvar_p))
        if needs_grad and torch.is_grad_enabled() and _ext.has_kernel("gaussian_kl_with_grad", mu_q.device.type):
            return torch.ops.lightdvae.gaussian_kl_with_grad(mu_q, logvar_q, mu_p, logvar_p, code)[0]
        return torch.ops.lightdvae.gaussian_kl(mu_q, logvar_q, mu_p, logvar_p, code)
    return gaussian_kl_ref(mu_q, logvar_q, mu_p, logvar_p, reduction)


# --------------------------------------------------------------------------------------------
# The instruction set of the CPU kernels
# --------------------------------------------------------------------------------------------


def loss_cpu_isas() -> list[str]:
    """The instruction sets the CPU loss kernels can run on this CPU, best first (``["avx512", "avx2", "default"]``
    on an AVX-512 x86-64 CPU); ``[]`` without the native extension."""
    return list(torch.ops.lightdvae.loss_cpu_isas()) if _ext.has_kernel("is_divergence", "cpu") else []


def loss_cpu_isa(isa: str | None = None) -> str | None:
    """The instruction set the CPU loss kernels use (``"avx512"``, ``"avx2"`` or ``"default"``); None without the
    native extension.

    By default the best one both the CPU and ATen allow (``ATEN_CPU_CAPABILITY=avx2`` lowers it as it lowers
    ATen's own kernels).  ``isa`` switches to one of :func:`loss_cpu_isas` first (for tests and benchmarks), or
    back to that automatic choice with ``"auto"``; a set this CPU cannot run raises ``BackendError``.
    """
    supported = loss_cpu_isas()
    if isa is not None and isa != "auto" and isa not in supported:
        from lightdvae.errors import BackendError

        raise BackendError(f"loss_cpu_isa: {isa!r} is not one of auto, {', '.join(supported) or '(no native build)'}")
    return torch.ops.lightdvae.loss_cpu_isa(isa) if supported else None


# --------------------------------------------------------------------------------------------
# torch.library registration: fake (meta) kernels and autograd of the native ops
# --------------------------------------------------------------------------------------------


def _reduced_like(t: Tensor, code: int) -> Tensor:
    return t.new_empty(()) if code != 0 else torch.empty_like(t, memory_format=torch.contiguous_format)


def _like_or_empty(t: Tensor | None, like: Tensor) -> Tensor:
    return torch.empty_like(like, memory_format=torch.contiguous_format) if t is not None else like.new_empty(0)


def _is_one(grad: Tensor) -> bool:
    """Whether an upstream gradient is exactly 1, checked only where that is free: a plain eager CPU tensor."""
    return (
        type(grad) is Tensor
        and grad.device.type == "cpu"
        and grad.numel() == 1
        and not torch.compiler.is_compiling()
        and grad.item() == 1.0
    )


def _scaled(saved: Tensor, grad: Tensor, reduction: int) -> Tensor:
    """The gradient an op's forward saved (for an upstream gradient of 1) times the actual upstream gradient."""
    if reduction != 0 and _is_one(grad):
        # Returned as it is: autograd's AccumulateGrad takes the forward's buffer over as the input's gradient (no
        # extra pass), or copies it where the graph is retained (the buffer is still referenced).
        return saved
    return saved * grad


def _grads_through_reference(ref, inputs, needs, grad):
    """The gradients of ``ref(*inputs)`` for the inputs in ``needs``, as a differentiable graph (double backward)."""
    wanted = [t for t, n in zip(inputs, needs, strict=True) if n]
    with torch.enable_grad():
        out = ref(*inputs)
    grads = iter(torch.autograd.grad(out, wanted, grad, create_graph=True))
    return [next(grads) if n else None for n in needs]


def _is_ref_for(ctx):
    return lambda p, lv: is_divergence_ref(p, lv, _REDUCTION_NAMES[ctx.reduction], ctx.eps)


def _kl_ref_for(ctx):
    return lambda mq, lq, mp, lp: gaussian_kl_ref(mq, lq, mp, lp, _REDUCTION_NAMES[ctx.reduction])


def _is_power_grad(ctx, grad, power, logvar):
    # The power spectrogram is data in every model here; its gradient is kept exact but unfused:
    # exp(-logvar) - 1 / (power + eps), scaled like the reduction.
    scale = grad / power.numel() if ctx.reduction == 1 else grad
    return scale * (torch.exp(-logvar) - 1.0 / (power + ctx.eps))


if _ext.HAS_NATIVE:

    @torch.library.register_fake("lightdvae::is_divergence")
    def _is_divergence_fake(power, logvar, eps, reduction):
        return _reduced_like(power, reduction)

    @torch.library.register_fake("lightdvae::is_divergence_backward")
    def _is_divergence_backward_fake(grad, power, logvar, eps, reduction):
        return torch.empty_like(logvar, memory_format=torch.contiguous_format)

    def _is_setup_context(ctx, inputs, output):
        power, logvar, eps, reduction = inputs
        ctx.save_for_backward(power, logvar)
        ctx.eps, ctx.reduction = eps, reduction

    def _is_backward(ctx, grad):
        power, logvar = ctx.saved_tensors
        needs = ctx.needs_input_grad[:2]
        if torch.is_grad_enabled():  # create_graph: a differentiable backward, through the reference's formula
            return (*_grads_through_reference(_is_ref_for(ctx), (power, logvar), needs, grad), None, None)
        grad_logvar = grad_power = None
        if needs[1]:
            grad_logvar = torch.ops.lightdvae.is_divergence_backward(grad, power, logvar, ctx.eps, ctx.reduction)
        if needs[0]:
            grad_power = _is_power_grad(ctx, grad, power, logvar)
        return grad_power, grad_logvar, None, None

    torch.library.register_autograd("lightdvae::is_divergence", _is_backward, setup_context=_is_setup_context)

    @torch.library.register_fake("lightdvae::gaussian_kl")
    def _gaussian_kl_fake(mu_q, logvar_q, mu_p, logvar_p, reduction):
        return _reduced_like(mu_q, reduction)

    @torch.library.register_fake("lightdvae::gaussian_kl_backward")
    def _gaussian_kl_backward_fake(grad, mu_q, logvar_q, mu_p, logvar_p, reduction):
        return tuple(_like_or_empty(t, mu_q) for t in (mu_q, logvar_q, mu_p, logvar_p))

    def _kl_setup_context(ctx, inputs, output):
        mu_q, logvar_q, mu_p, logvar_p, reduction = inputs
        ctx.save_for_backward(mu_q, logvar_q, mu_p, logvar_p)
        ctx.reduction = reduction

    def _kl_backward(ctx, grad):
        inputs = ctx.saved_tensors
        needs = [n and t is not None for n, t in zip(ctx.needs_input_grad[:4], inputs, strict=True)]
        if not any(needs):
            return None, None, None, None, None
        if torch.is_grad_enabled():  # create_graph: a differentiable backward, through the reference's formula
            return (*_grads_through_reference(_kl_ref_for(ctx), inputs, needs, grad), None)
        grads = torch.ops.lightdvae.gaussian_kl_backward(grad, *inputs, ctx.reduction)
        return (*(g if n else None for g, n in zip(grads, needs, strict=True)), None)

    torch.library.register_autograd("lightdvae::gaussian_kl", _kl_backward, setup_context=_kl_setup_context)

if _ext.HAS_NATIVE and hasattr(torch.ops.lightdvae, "is_divergence_with_grad"):  # absent from builds of older sources

    @torch.library.register_fake("lightdvae::is_divergence_with_grad")
    def _is_divergence_with_grad_fake(power, logvar, eps, reduction):
        return _reduced_like(power, reduction), torch.empty_like(logvar, memory_format=torch.contiguous_format)

    def _is_wg_setup_context(ctx, inputs, output):
        power, logvar, eps, reduction = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)  # no zeros of the input's size for the gradient output's (unused) gradient
        ctx.save_for_backward(power, logvar, output[1])
        ctx.eps, ctx.reduction = eps, reduction

    def _is_wg_backward(ctx, grad, _grad_of_saved_gradient):
        if grad is None:  # an undefined upstream gradient (grads are not materialised): no gradient
            return None, None, None, None
        power, logvar, grad_logvar_saved = ctx.saved_tensors
        needs = ctx.needs_input_grad[:2]
        if torch.is_grad_enabled():  # create_graph: a differentiable backward, through the reference's formula
            return (*_grads_through_reference(_is_ref_for(ctx), (power, logvar), needs, grad), None, None)
        grad_logvar = _scaled(grad_logvar_saved, grad, ctx.reduction) if needs[1] else None
        grad_power = _is_power_grad(ctx, grad, power, logvar) if needs[0] else None
        return grad_power, grad_logvar, None, None

    torch.library.register_autograd(
        "lightdvae::is_divergence_with_grad", _is_wg_backward, setup_context=_is_wg_setup_context
    )

    @torch.library.register_fake("lightdvae::gaussian_kl_with_grad")
    def _gaussian_kl_with_grad_fake(mu_q, logvar_q, mu_p, logvar_p, reduction):
        grads = (_like_or_empty(t, mu_q) for t in (mu_q, logvar_q, mu_p, logvar_p))
        return _reduced_like(mu_q, reduction), *grads

    def _kl_wg_setup_context(ctx, inputs, output):
        mu_q, logvar_q, mu_p, logvar_p, reduction = inputs
        ctx.mark_non_differentiable(*output[1:])
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(mu_q, logvar_q, mu_p, logvar_p, *output[1:])
        ctx.reduction = reduction

    def _kl_wg_backward(ctx, grad, *_grads_of_saved_gradients):
        if grad is None:  # an undefined upstream gradient (grads are not materialised): no gradient
            return None, None, None, None, None
        saved = ctx.saved_tensors
        inputs, grads = saved[:4], saved[4:]
        needs = [n and t is not None for n, t in zip(ctx.needs_input_grad[:4], inputs, strict=True)]
        if torch.is_grad_enabled() and any(needs):  # create_graph: differentiable, through the reference's formula
            return (*_grads_through_reference(_kl_ref_for(ctx), inputs, needs, grad), None)
        return (*(_scaled(g, grad, ctx.reduction) if n else None for g, n in zip(grads, needs, strict=True)), None)

    torch.library.register_autograd(
        "lightdvae::gaussian_kl_with_grad", _kl_wg_backward, setup_context=_kl_wg_setup_context
    )
