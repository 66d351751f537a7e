"""KV-cached causal attention for autoregressive decoding (SPEC section 7.2).

A pair, like every op of :mod:`lightdvae.ops`: :func:`kv_attention` runs the native kernel of
``torch.ops.lightdvae.kv_attention`` (C++ on the CPU, CUDA on the GPU) when the extension is built and
supports the inputs, and falls back to :func:`kv_attention_ref` (plain PyTorch, same signature and
semantics) otherwise; ``LIGHTDVAE_BACKEND=ref|native`` forces one.

Every step path of the transformer DVAEs goes through this op (the hook
``lightdvae.models.transformer_layers.kv_attention``), so decoding step t costs O(t) work instead of a
re-run of the decoder over the whole prefix.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

import torch
from torch import Tensor

from lightdvae import _ext

__all__ = ["kv_attention", "kv_attention_ref", "select_kv_attention", "MAX_CUDA_HEAD_DIM"]

#: Largest head dimension of the CUDA kernel; larger ones run the reference on the GPU.
MAX_CUDA_HEAD_DIM = 256
_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def kv_attention_ref(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    k_new: Tensor,
    v_new: Tensor,
    cache_len: int,
    softmax_scale: float | None = None,
    causal: bool = True,
) -> Tensor:
    """Plain-PyTorch reference of :func:`kv_attention`: same arguments, same in-place append, same result.

    Computes the whole score matrix ``q @ k^T`` (float32 for half/bfloat16 inputs, cast back), masks it and
    takes ``softmax @ v``.  Any device and floating dtype.  Written for inference like the native op; being
    plain PyTorch it does record an autograd graph when its inputs require gradients, but the caches are
    overwritten in place, so such a graph is only valid until the next append.
    """
    _check_kv_inputs(q, k_cache, v_cache, k_new, v_new, cache_len)
    n_q, n_new = q.shape[2], k_new.shape[2]
    total = cache_len + n_new
    k_cache[:, :, cache_len:total].copy_(k_new)
    v_cache[:, :, cache_len:total].copy_(v_new)
    compute = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    qc = q.to(compute)
    k = k_cache[:, :, :total].to(compute)
    v = v_cache[:, :, :total].to(compute)
    scale = 1.0 / math.sqrt(q.shape[-1]) if softmax_scale is None else softmax_scale
    scores = torch.matmul(qc, k.transpose(-1, -2)) * scale  # (batch, heads, n_q, total)
    if causal and n_q > 1:  # a single query sees the whole prefix: no mask needed
        q_pos = torch.arange(total - n_q, total, device=q.device)[:, None]
        k_pos = torch.arange(total, device=q.device)[None, :]
        scores = scores.masked_fill(k_pos > q_pos, float("-inf"))
    out = torch.matmul(torch.softmax(scores, dim=-1), v)
    return out.to(q.dtype)


def _check_kv_inputs(q: Tensor, k_cache: Tensor, v_cache: Tensor, k_new: Tensor, v_new: Tensor, cache_len: int) -> None:
    named = {"q": q, "k_cache": k_cache, "v_cache": v_cache, "k_new": k_new, "v_new": v_new}
    for name, t in named.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"kv_attention: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"kv_attention: {name} must be (batch, heads, time, head_dim), got {tuple(t.shape)}")
        if t.dtype != q.dtype or t.device != q.device:
            raise ValueError(
                f"kv_attention: {name} is {t.dtype} on {t.device}, q is {q.dtype} on {q.device}; "
                "every tensor must have q's dtype and device"
            )
    if not q.is_floating_point():
        raise TypeError(f"kv_attention: q must be a floating-point tensor, got {q.dtype}")
    b, h, _, d = q.shape
    if d < 1:
        raise ValueError(f"kv_attention: head_dim must be at least 1, got q of shape {tuple(q.shape)}")
    if k_cache.shape != v_cache.shape or k_cache.shape[:2] != (b, h) or k_cache.shape[3] != d:
        raise ValueError(
            f"kv_attention: caches must be ({b}, {h}, max_len, {d}) like q, "
            f"got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    if k_new.shape != v_new.shape or k_new.shape[:2] != (b, h) or k_new.shape[3] != d or k_new.shape[2] < 1:
        raise ValueError(
            f"kv_attention: k_new/v_new must be ({b}, {h}, n_new >= 1, {d}), got {tuple(k_new.shape)} "
            f"and {tuple(v_new.shape)}"
        )
    if cache_len < 0 or cache_len + k_new.shape[2] > k_cache.shape[2]:
        raise ValueError(
            f"kv_attention: cache_len={cache_len} + n_new={k_new.shape[2]} "
            f"exceeds the cache's max_len={k_cache.shape[2]} (or cache_len < 0)"
        )
    if q.shape[2] > cache_len + k_new.shape[2]:
        raise ValueError(f"kv_attention: {q.shape[2]} queries but only {cache_len + k_new.shape[2]} keys")


def _native_supported(q: Tensor, k_cache: Tensor, v_cache: Tensor) -> bool:
    """Whether the native kernel takes these inputs (shape errors are left to the kernel's own checks)."""
    if q.dim() != 4 or k_cache.dim() != 4 or v_cache.dim() != 4:
        return True
    if q.is_cuda:
        if q.dtype not in _CUDA_DTYPES or q.shape[3] > MAX_CUDA_HEAD_DIM:
            return False
    elif q.dtype not in _CPU_DTYPES:
        return False
    # The caches are written in place: their rows must be contiguous along head_dim.
    return (k_cache.stride(3) == 1 or k_cache.shape[3] == 1) and (v_cache.stride(3) == 1 or v_cache.shape[3] == 1)


def kv_attention(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    k_new: Tensor,
    v_new: Tensor,
    cache_len: int,
    softmax_scale: float | None = None,
    causal: bool = True,
) -> Tensor:
    """Append new keys/values to preallocated caches in place, then attend the new queries over the filled prefix.

    The incremental step of multi-head attention in autoregressive decoding: the keys/values of the ``n_new``
    new positions are written into rows ``cache_len .. cache_len + n_new - 1`` of the caches, and each of the
    ``n_q`` queries attends over rows ``0 .. L - 1`` with ``L = cache_len + n_new``.  Modelled on
    flash-attention's ``flash_attn_with_kvcache``, with a (batch, heads, time, head_dim) layout.

    Arguments:
        q: ``(batch, heads, n_q, head_dim)``, the queries of the new positions; ``n_q <= L``, usually
            ``n_q = n_new`` (self-attention) -- 1 for a decoding step, more for a chunk or a teacher-forced
            prefix.  Any strides.
        k_cache, v_cache: ``(batch, heads, max_len, head_dim)``, q's dtype and device, rows contiguous along
            ``head_dim`` (stride 1; other strides are free).  **Mutated in place**:
            ``k_cache[:, :, cache_len:L] = k_new`` and ``v_cache[:, :, cache_len:L] = v_new``.  Rows
            ``0 .. cache_len - 1`` are only read; rows ``L .. max_len - 1`` are neither read nor written.
            ``k_cache`` and ``v_cache`` must not overlap in memory.
        k_new, v_new: ``(batch, heads, n_new, head_dim)``, ``n_new >= 1``, q's dtype and device, any strides.
        cache_len: a Python int, the number of rows already filled, the same for every batch row (this package
            decodes the rows of a batch in lockstep; there is no per-row ``cache_seqlens`` tensor).
            ``0 <= cache_len`` and ``L <= max_len``, else ``ValueError``.  Not advanced here: the caller adds
            ``n_new`` for the next call.
        softmax_scale: scale of ``q @ k^T`` before the softmax; ``None`` means ``1 / sqrt(head_dim)``.
        causal: query ``j`` (0-based) sits at position ``L - n_q + j`` and sees keys ``0 .. L - n_q + j``
            (the bottom-right aligned causal mask of ``flash_attn_with_kvcache``); with ``n_q = 1`` it sees the
            whole filled prefix.  ``causal=False``: every query sees all ``L`` keys.

    Returns:
        ``out``: ``(batch, heads, n_q, head_dim)``, contiguous, q's dtype:
        ``softmax(q @ k_cache[:, :, :L]^T * softmax_scale + mask) @ v_cache[:, :, :L]``.

    Precision: float32 and float64 are computed in their own precision; float16 and bfloat16 (CUDA kernel and
    reference) accumulate in float32 and round once at the end.  The native kernels use an online softmax in one
    pass over the keys, so they match the reference to rounding (float32: about 1e-6 relative).

    Devices and dtypes of the native kernel: CPU float32/float64; CUDA float16/bfloat16/float32/float64 with
    ``head_dim <= 256``.  Other inputs (half precision on the CPU, caches whose last dimension is strided,
    other devices) run the reference (``LIGHTDVAE_BACKEND=native`` raises instead).

    Inference only: there is no backward.  Calling it under grad mode with any input that requires gradients
    raises ``RuntimeError``; decode under ``torch.no_grad()`` or ``torch.inference_mode()``.  For training use the
    parallel causal pass (``torch.nn.functional.scaled_dot_product_attention(..., is_causal=True)``).
    """
    if torch.is_grad_enabled() and (
        q.requires_grad or k_new.requires_grad or v_new.requires_grad or k_cache.requires_grad or v_cache.requires_grad
    ):
        raise RuntimeError(
            "kv_attention is inference-only (no backward; it writes into the caches in place), but it was called "
            "under grad mode with inputs that require gradients. Decode under torch.no_grad() or "
            "torch.inference_mode(); to train, use the parallel causal pass (scaled_dot_product_attention)."
        )
    cache_len = operator.index(cache_len)
    device_type = "cpu" if q.is_cpu else q.device.type
    if _ext.use_native("kv_attention", device_type, _native_supported(q, k_cache, v_cache)):
        return torch.ops.lightdvae.kv_attention.default(
            q, k_cache, v_cache, k_new, v_new, cache_len, softmax_scale, bool(causal)
        )
    return kv_attention_ref(q, k_cache, v_cache, k_new, v_new, cache_len, softmax_scale, causal)


def select_kv_attention(k_cache: Tensor, v_cache: Tensor) -> Callable[..., Tensor]:
    """The implementation :func:`kv_attention` runs on these caches, chosen once for a whole decoding loop.

    A decoding loop calls the op a few times per step with the same caches; :func:`kv_attention` decides the
    backend at every call (``LIGHTDVAE_BACKEND``, the build, the dtype and device), which costs a few
    microseconds each time.  This function makes that choice once, by the same rules, for queries of the caches'
    dtype, device and head dimension, and returns the callable to use: the native op
    ``torch.ops.lightdvae.kv_attention.default`` or :func:`kv_attention_ref`.

    Args:
        k_cache, v_cache: ``(batch, heads, max_len, head_dim)`` caches the loop will attend over.

    Returns:
        A callable taking :func:`kv_attention`'s eight arguments **positionally**: ``(q, k_cache, v_cache, k_new,
        v_new, cache_len, softmax_scale, causal)``, with the same semantics (in-place append, result).  It does not
        repeat :func:`kv_attention`'s inference-only guard: call it under ``torch.no_grad()`` or
        ``torch.inference_mode()``.  The native op still checks shapes, dtypes and devices in C++.

    ``LIGHTDVAE_BACKEND=native`` raises here, as :func:`kv_attention` would, when the native kernel is missing or
    cannot take such caches.
    """
    device_type = "cpu" if k_cache.is_cpu else k_cache.device.type
    if _ext.use_native("kv_attention", device_type, _native_supported(k_cache, k_cache, v_cache)):
        return torch.ops.lightdvae.kv_attention.default
    return kv_attention_ref


# --------------------------------------------------------------------------------------------
# torch.library registration: fake (meta) kernel of the native op; no autograd formula (inference only)
# --------------------------------------------------------------------------------------------

if _ext.HAS_NATIVE:

    @torch.library.register_fake("lightdvae::kv_attention")
    def _kv_attention_fake(q, k_cache, v_cache, k_new, v_new, cache_len, softmax_scale, causal):
        # Also the Meta kernel: a call mixing meta and real tensors lands here, so check devices too.
        for name, t in (("k_cache", k_cache), ("v_cache", v_cache), ("k_new", k_new), ("v_new", v_new)):
            torch._check_value(
                t.dim() == 4 and t.device == q.device and t.dtype == q.dtype,
                lambda name=name, t=t: (
                    f"kv_attention: {name} is {t.dim()}-D {t.dtype} on {t.device}, q is "
                    f"{q.dim()}-D {q.dtype} on {q.device}; every tensor must be 4-D with q's dtype and device"
                ),
            )
        torch._check_value(q.dim() == 4, lambda: "kv_attention: q must be (batch, heads, time, head_dim)")
        torch._check_value(cache_len >= 0, lambda: f"kv_attention: cache_len={cache_len} < 0")
        torch._check_value(
            cache_len + k_new.shape[2] <= k_cache.shape[2],
            lambda: (
                f"kv_attention: cache_len={cache_len} + n_new={k_new.shape[2]} exceeds the cache's "
                f"max_len={k_cache.shape[2]}"
            ),
        )
        return q.new_empty(q.shape)
