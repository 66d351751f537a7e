"""Fused Itakura-Saito divergence and Gaussian KL divergence (SPEC section 7.1).

Each op is a pair: ``is_divergence`` / ``gaussian_kl`` run the native kernel of
``torch.ops.lightdvae`` when the extension is built and fall back to ``*_ref`` (plain PyTorch,
same signature) otherwise.  ``LIGHTDVAE_BACKEND=ref|native`` forces one.

The native kernels read each input once, compute the divergence and its reduction in the same
pass, and write nothing of the input's size when the result is reduced; backward is one more
pass that writes only the gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightdvae import _ext

__all__ = ["is_divergence", "is_divergence_ref", "gaussian_kl", "gaussian_kl_ref", "REDUCTIONS"]

# Same codes as at::Reduction (none=0, mean=1, sum=2), used by the native schemas.
REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}
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

    Differentiable in both inputs (``d/dlogvar = 1 - power * exp(-logvar)``), computed in one pass.
    Devices and dtypes of the native kernel: CPU float32/float64; CUDA float16/bfloat16/float32/
    float64.  Anything else runs the reference.  Non-contiguous inputs are accepted (one copy).
    """
    code = _reduction_code(reduction)
    _check_pair("power", power, "logvar", logvar, "is_divergence")
    if _ext.use_native("is_divergence", power.device.type, _native_dtype_ok(power)):
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

    Differentiable in all four inputs (one backward pass).  Native kernel: CPU float32/float64,
    CUDA float16/bfloat16/float32/float64; otherwise the reference runs.
    """
    code = _reduction_code(reduction)
    _check_kl_inputs(mu_q, logvar_q, mu_p, logvar_p)
    if _ext.use_native("gaussian_kl", mu_q.device.type, _native_dtype_ok(mu_q)):
        return torch.ops.lightdvae.gaussian_kl(mu_q, logvar_q, mu_p, logvar_p, code)
    return gaussian_kl_ref(mu_q, logvar_q, mu_p, logvar_p, reduction)


# --------------------------------------------------------------------------------------------
# torch.library registration: fake (meta) kernels and autograd of the native ops
# --------------------------------------------------------------------------------------------


def _reduced_like(t: Tensor, code: int) -> Tensor:
    return t.new_empty(()) if code != 0 else torch.empty_like(t, memory_format=torch.contiguous_format)


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
        grad_logvar = grad_power = None
        if ctx.needs_input_grad[1]:
            grad_logvar = torch.ops.lightdvae.is_divergence_backward(grad, power, logvar, ctx.eps, ctx.reduction)
        if ctx.needs_input_grad[0]:
            # The power spectrogram is data in every model here; its gradient is kept exact but
            # unfused: exp(-logvar) - 1 / (power + eps), scaled like the reduction.
            scale = grad / power.numel() if ctx.reduction == 1 else grad
            grad_power = scale * (torch.exp(-logvar) - 1.0 / (power + ctx.eps))
        return grad_power, grad_logvar, None, None

    torch.library.register_autograd("lightdvae::is_divergence", _is_backward, setup_context=_is_setup_context)

    @torch.library.register_fake("lightdvae::gaussian_kl")
    def _gaussian_kl_fake(mu_q, logvar_q, mu_p, logvar_p, reduction):
        return _reduced_like(mu_q, reduction)

    @torch.library.register_fake("lightdvae::gaussian_kl_backward")
    def _gaussian_kl_backward_fake(grad, mu_q, logvar_q, mu_p, logvar_p, reduction):
        def like(t):
            return torch.empty_like(mu_q, memory_format=torch.contiguous_format) if t is not None else mu_q.new_empty(0)

        return like(mu_q), like(logvar_q), like(mu_p), like(logvar_p)

    def _kl_setup_context(ctx, inputs, output):
        mu_q, logvar_q, mu_p, logvar_p, reduction = inputs
        ctx.save_for_backward(mu_q, logvar_q, mu_p, logvar_p)
        ctx.reduction = reduction

    def _kl_backward(ctx, grad):
        mu_q, logvar_q, mu_p, logvar_p = ctx.saved_tensors
        if not any(ctx.needs_input_grad[:4]):
            return None, None, None, None, None
        g_mq, g_lq, g_mp, g_lp = torch.ops.lightdvae.gaussian_kl_backward(
            grad, mu_q, logvar_q, mu_p, logvar_p, ctx.reduction
        )
        needs = ctx.needs_input_grad
        return (
            g_mq if needs[0] else None,
            g_lq if needs[1] else None,
            g_mp if needs[2] and mu_p is not None else None,
            g_lp if needs[3] and logvar_p is not None else None,
            None,
        )

    torch.library.register_autograd("lightdvae::gaussian_kl", _kl_backward, setup_context=_kl_setup_context)
