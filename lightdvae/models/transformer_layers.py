"""Transformer building blocks of the hierarchical DVAEs, with one step path and KV caches.

Used by :mod:`lightdvae.models.transformer` (HiT-DVAE, LigHT-DVAE and their Inv-s ablations).

Layout: sequences are ``(batch, time, d_model)``; inside attention ``(batch, heads, time, head_dim)``.

Every attention module has two entry points that compute the same function:

- ``forward(x, memory, causal)``: the parallel pass over whole sequences (training, teacher forcing),
  one ``scaled_dot_product_attention`` with a causal mask;
- ``step(x_new, memory_new, cache)``: the incremental pass.  The keys/values of the new positions are
  appended in place into a preallocated :class:`KVCache` and the new queries attend over the filled
  prefix, through the single function :func:`kv_attention` (see the block "Cached attention" below;
  it is the one place a native kernel plugs in).

Decoder layers are post-norm (sublayer -> dropout -> add -> LayerNorm) and have the same two entry
points, written once in :meth:`DecoderLayer._sublayers` so the parallel and the step path cannot drift.
There is no dropout on attention probabilities (the cached kernel is inference-only); dropout acts on
embeddings, on sublayer outputs and inside the feed-forward block, and only in ``train()`` mode.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightdvae.models.base import activation as make_activation
from lightdvae.ops.attention import kv_attention as kv_attention_op
from lightdvae.ops.attention import kv_attention_ref  # noqa: F401  (re-exported: the reference semantics)

# ---------------------------------------------------------------------------------------------
# Cached attention: lightdvae.ops.kv_attention (native kernel, falls back to kv_attention_ref)
# ---------------------------------------------------------------------------------------------

#: The cached attention every step path calls: :func:`lightdvae.ops.kv_attention` (append in place, attend
#: over the filled prefix; the native kernel when built, :func:`kv_attention_ref` otherwise).
kv_attention: Callable[..., Tensor] = kv_attention_op


@dataclass
class KVCache:
    """Preallocated keys and values of one attention module, filled from the front.

    k, v: ``(batch, heads, max_len, head_dim)``; ``length``: how many positions are filled.
    """

    k: Tensor
    v: Tensor
    length: int = 0

    @classmethod
    def empty(cls, batch: int, heads: int, max_len: int, head_dim: int, *, dtype: torch.dtype, device) -> KVCache:
        shape = (batch, heads, max_len, head_dim)
        return cls(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))

    @property
    def max_len(self) -> int:
        return self.k.shape[2]


@dataclass
class LayerCache:
    """The two caches of one decoder layer: causal self-attention and cross-attention."""

    self_kv: KVCache
    cross_kv: KVCache


@dataclass
class DecoderCache:
    """Caches of a whole decoder stack plus the next time index (``position``) to be decoded."""

    layers: list[LayerCache] = field(default_factory=list)
    position: int = 0

    @property
    def max_len(self) -> int:
        return self.layers[0].self_kv.max_len if self.layers else 0


# ---------------------------------------------------------------------------------------------
# Positional encoding, attention, feed-forward
# ---------------------------------------------------------------------------------------------


def sinusoidal_encoding(start: int, length: int, dim: int, *, dtype: torch.dtype, device) -> Tensor:
    """Sinusoidal positional encoding of positions ``start .. start + length - 1``: ``(length, dim)``.

    ``pe[p, 2k] = sin(p / 10000^(2k/dim))``, ``pe[p, 2k+1] = cos(p / 10000^(2k/dim))``, computed in float32
    element by element, so a position gets the same vector in the parallel and in the step path.
    """
    pos = torch.arange(start, start + length, dtype=torch.float32, device=device)[:, None]
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    angle = pos * inv_freq  # (length, ceil(dim / 2))
    pe = torch.stack((torch.sin(angle), torch.cos(angle)), dim=-1).flatten(1)[:, :dim]
    return pe.to(dtype)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate query and key/value inputs (self- or cross-attention)."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _split(self, x: Tensor) -> Tensor:  # (B, T, d) -> (B, H, T, hd)
        return x.unflatten(-1, (self.n_heads, self.head_dim)).transpose(1, 2)

    def _merge(self, x: Tensor) -> Tensor:  # (B, H, T, hd) -> (B, T, d)
        return self.out_proj(x.transpose(1, 2).flatten(2))

    def forward(self, x: Tensor, memory: Tensor, causal: bool) -> Tensor:
        """Parallel pass.  x: (B, T, d) queries; memory: (B, S, d) keys/values; returns (B, T, d).

        ``causal=True`` (needs ``S == T``): position ``t`` attends memory positions ``<= t``.
        """
        if causal and memory.shape[1] != x.shape[1]:
            raise ValueError(f"causal attention needs equal lengths, got {x.shape[1]} queries, {memory.shape[1]} keys")
        q, k, v = self._split(self.q_proj(x)), self._split(self.k_proj(memory)), self._split(self.v_proj(memory))
        return self._merge(F.scaled_dot_product_attention(q, k, v, is_causal=causal))

    def step(self, x: Tensor, memory: Tensor, cache: KVCache) -> Tensor:
        """Incremental pass.  x: (B, n, d) queries of the next ``n`` positions; memory: (B, n, d) the memory
        entries at the same positions (``memory is x`` for self-attention).  Appends their keys/values to
        ``cache`` in place, attends causally over the filled prefix, advances ``cache.length``; (B, n, d)."""
        q, k, v = self._split(self.q_proj(x)), self._split(self.k_proj(memory)), self._split(self.v_proj(memory))
        out = kv_attention(q, cache.k, cache.v, k, v, cache.length)
        cache.length += memory.shape[1]
        return self._merge(out)


class FeedForward(nn.Module):
    """Position-wise Linear(d, ff) -> activation -> dropout -> Linear(ff, d)."""

    def __init__(self, d_model: int, ff_dim: int, act: str, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_model, ff_dim), make_activation(act), nn.Dropout(dropout), nn.Linear(ff_dim, d_model)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


# ---------------------------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------------------------


class EncoderLayer(nn.Module):
    """Post-norm transformer encoder layer: x = LN(x + SA(x)); x = LN(x + FF(x)); not causal."""

    def __init__(self, d_model: int, n_heads: int, ff_dim: int, act: str, dropout: float):
        super().__init__()
        self.attn = MultiHeadAttention(d_model, n_heads)
        self.norm1 = nn.LayerNorm(d_model)
        self.ff = FeedForward(d_model, ff_dim, act, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm1(x + self.drop(self.attn(x, x, causal=False)))
        return self.norm2(x + self.drop(self.ff(x)))


class Encoder(nn.Module):
    """Linear embedding of the input + sinusoidal positions -> dropout -> encoder layers.

    forward: (B, T, in_dim) -> (B, T, d_model).
    """

    def __init__(self, in_dim: int, d_model: int, n_heads: int, n_layers: int, ff_dim: int, act: str, dropout: float):
        super().__init__()
        self.embed = nn.Linear(in_dim, d_model)
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(EncoderLayer(d_model, n_heads, ff_dim, act, dropout) for _ in range(n_layers))

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        h = self.drop(h + sinusoidal_encoding(0, h.shape[1], h.shape[2], dtype=h.dtype, device=h.device))
        for layer in self.layers:
            h = layer(h)
        return h


# ---------------------------------------------------------------------------------------------
# Decoder
# ---------------------------------------------------------------------------------------------


class DecoderLayer(nn.Module):
    """Post-norm decoder layer: causal self-attention, causal cross-attention to a memory, feed-forward.

    ``residual=False`` (Inv-s-NR) drops the ``x +`` of both attention sublayers, so what the query stream
    carried in does not pass them: it can only steer the attention weights.  The feed-forward sublayer keeps
    its residual (at that point the stream holds only what cross-attention returned from the memory).
    """

    def __init__(self, d_model: int, n_heads: int, ff_dim: int, act: str, dropout: float, residual: bool = True):
        super().__init__()
        self.residual = residual
        self.self_attn = MultiHeadAttention(d_model, n_heads)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn = MultiHeadAttention(d_model, n_heads)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = FeedForward(d_model, ff_dim, act, dropout)
        self.norm3 = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    def _sublayers(self, x: Tensor, attend_self: Callable[[Tensor], Tensor], attend_memory: Callable[[Tensor], Tensor]):
        a = self.drop(attend_self(x))
        x = self.norm1(x + a if self.residual else a)
        c = self.drop(attend_memory(x))
        x = self.norm2(x + c if self.residual else c)
        return self.norm3(x + self.drop(self.ff(x)))

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        """Parallel pass.  x: (B, T, d) query stream; memory: (B, T, d); position t sees memory <= t."""
        return self._sublayers(
            x, lambda h: self.self_attn(h, h, causal=True), lambda h: self.cross_attn(h, memory, causal=True)
        )

    def step(self, x: Tensor, memory: Tensor, cache: LayerCache) -> Tensor:
        """Step pass over the next n positions: x, memory (B, n, d) -> (B, n, d); appends to ``cache``."""
        return self._sublayers(
            x,
            lambda h: self.self_attn.step(h, h, cache.self_kv),
            lambda h: self.cross_attn.step(h, memory, cache.cross_kv),
        )


class DecoderBody(nn.Module):
    """Decoder stack of the hierarchical DVAEs (everything but the output heads).

    Inputs per time index ``i`` (0-based): a latent vector ``latent[:, i]`` (``[z ; w]``, ``latent_dim``) and
    a speech feature ``speech[:, i]`` (``x_dim``), both already shifted by the caller as needed.  Each is
    embedded by its own Linear, plus the sinusoidal encoding of ``i``.

    - normal (``inv_s=False``): the query/residual stream is the embedded latent, the memory of the
      cross-attention is the embedded speech;
    - ``inv_s=True``: the roles swap (query stream = speech, memory = latent);
    - ``no_residual=True``: decoder layers without the residual of the attention sublayers.

    Both attentions are causal, so the output at ``i`` depends on ``latent[:, :i+1]`` and ``speech[:, :i+1]``
    only.  Output: (B, T, d_model).
    """

    def __init__(
        self,
        latent_dim: int,
        x_dim: int,
        d_model: int,
        n_heads: int,
        n_layers: int,
        ff_dim: int,
        act: str,
        dropout: float,
        inv_s: bool = False,
        no_residual: bool = False,
    ):
        super().__init__()
        self.inv_s = inv_s
        self.d_model, self.n_heads = d_model, n_heads
        self.latent_embed = nn.Linear(latent_dim, d_model)
        self.speech_embed = nn.Linear(x_dim, d_model)
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            DecoderLayer(d_model, n_heads, ff_dim, act, dropout, residual=not no_residual) for _ in range(n_layers)
        )
        self._pe_table: Tensor | None = None  # positional table cache (not a parameter, not saved)

    def _positions(self, start: int, length: int, like: Tensor) -> Tensor:
        """Rows ``start .. start + length - 1`` of the sinusoidal table, kept between calls so that a decoding
        step does not rebuild it (grown by doubling; the same values as :func:`sinusoidal_encoding`)."""
        table = self._pe_table
        end = start + length
        if table is None or table.shape[0] < end or table.dtype != like.dtype or table.device != like.device:
            size = max(end, 2 * table.shape[0] if table is not None else 256)
            table = sinusoidal_encoding(0, size, self.d_model, dtype=like.dtype, device=like.device)
            self._pe_table = table
        return table[start:end]

    def _streams(self, latent: Tensor, speech: Tensor, start: int) -> tuple[Tensor, Tensor]:
        lat, sp = self.latent_embed(latent), self.speech_embed(speech)
        pe = self._positions(start, lat.shape[1], lat)
        lat, sp = self.drop(lat + pe), self.drop(sp + pe)
        return (sp, lat) if self.inv_s else (lat, sp)  # (query stream, memory)

    def forward(self, latent: Tensor, speech: Tensor) -> Tensor:
        """Parallel pass: latent (B, T, latent_dim), speech (B, T, x_dim) -> (B, T, d_model)."""
        if latent.shape[:2] != speech.shape[:2]:
            raise ValueError(f"latent {tuple(latent.shape)} and speech {tuple(speech.shape)} differ in batch/time")
        x, memory = self._streams(latent, speech, 0)
        for layer in self.layers:
            x = layer(x, memory)
        return x

    def new_cache(self, batch: int, max_len: int, *, dtype: torch.dtype, device) -> DecoderCache:
        """Empty caches for decoding up to ``max_len`` positions of a batch."""
        hd = self.d_model // self.n_heads

        def kv() -> KVCache:
            return KVCache.empty(batch, self.n_heads, max_len, hd, dtype=dtype, device=device)

        return DecoderCache([LayerCache(kv(), kv()) for _ in self.layers])

    def step(self, latent: Tensor, speech: Tensor, cache: DecoderCache) -> Tensor:
        """Decode the next n positions ``cache.position .. + n - 1`` given the caches of all earlier ones.

        latent (B, n, latent_dim), speech (B, n, x_dim) -> (B, n, d_model); the caches grow by n.
        Equal to the rows of :meth:`forward` at those positions when the same inputs are fed.
        """
        n = latent.shape[1]
        if cache.position + n > cache.max_len:
            raise ValueError(f"decoder cache holds {cache.max_len} positions; cannot decode up to {cache.position + n}")
        x, memory = self._streams(latent, speech, cache.position)
        for layer, layer_cache in zip(self.layers, cache.layers, strict=True):
            x = layer.step(x, memory, layer_cache)
        cache.position += n
        return x
