"""Transformer building blocks of the hierarchical DVAEs, with one step path and KV caches.

Used by :mod:`lightdvae.models.transformer` (HiT-DVAE, LigHT-DVAE and their Inv-s ablations).

Layout: sequences are ``(batch, time, d_model)``; inside attention ``(batch, heads, time, head_dim)``.

A decoder stack (:class:`DecoderBody`) has two entry points that compute the same function:

- ``forward(latent, speech)``: the parallel pass over whole sequences (training, teacher forcing), one
  ``scaled_dot_product_attention`` with a causal mask per attention;
- ``step(latent, speech, cache)``: the incremental pass over the next position(s), for autoregressive
  decoding (inference only).  The keys/values of the new positions are appended in place into a
  preallocated :class:`KVCache` and the new queries attend over the filled prefix, through the single
  function :func:`kv_attention` (see the block "Cached attention" below; it is the one place a native
  kernel plugs in).

The step path is written for the per-call overhead of batch-1 decoding, where a step is a chain of
tiny matrix-vector products: :meth:`DecoderBody.new_cache` packs the weights once per sequence
(:class:`StepWeights`: transposed for ``addmm``, the query/key/value projections of each
self-attention in one matrix, the key/value projections of every layer's cross-attention in one
matrix -- they all read the same memory --, the positional encodings folded into the embedding
biases) and picks the attention implementation once; a step is then about 25 ATen calls per layer.
Two caches of one body can share the memory keys/values (``share_memory_with``): LigHT-DVAE's z-prior
and speech passes read the same past speech, so the second pass of a frame skips the speech
embedding and the memory projections.  ``tests/test_models_transformer.py`` holds the step path to
the parallel pass (1e-5 in float32) for every variant.

Layers are post-norm (sublayer -> dropout -> add -> LayerNorm) by default; ``norm_first=True`` makes every
encoder and decoder layer pre-norm (LayerNorm -> sublayer -> dropout -> add) and ends each stack with a
LayerNorm.  Either way the memory of the cross-attention (the embedded past speech, or the latent stream under
Inv-s) enters un-normalised, as the embedding (or the past-speech RNN) gives it.  There is no dropout on
attention probabilities (the cached kernel is inference-only); dropout acts on embeddings, on sublayer
outputs and inside the feed-forward block, and only in ``train()`` mode.

Past speech stream (``past_encoder``): ``"linear"`` (default) embeds each frame by a Linear plus the
sinusoidal encoding of its position; ``"rnn"`` runs a one-layer unidirectional LSTM (hidden size ``d_model``)
over the Linear embedding (no positional encoding: the recurrence carries the order), causal by construction.
The step path carries the LSTM state ``(h, c)`` in :class:`MemoryKV` (shared with the memory keys/values), and
runs it on the packed weights with ``torch.lstm_cell``, one position at a time.

Positions (``positions``): ``"sinusoidal"`` (default) adds the sinusoidal encoding of each position to the
embeddings of every stream (encoders and decoder bodies); ``"rope"`` adds nothing to the embeddings and instead
rotates the queries and keys of every attention by their positions (rotary embeddings, Su et al. 2021: the
half-split form, base 10000, over each head's dimensions), so that attention scores depend on the offset between
query and key only.  In the cached step path the keys are rotated once, when they enter the cache, and the cached
attention kernel is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightdvae.models.base import Dropout
from lightdvae.models.base import activation as make_activation
from lightdvae.ops.attention import kv_attention as kv_attention_op
from lightdvae.ops.attention import (
    kv_attention_ref,  # noqa: F401  (re-exported: the reference semantics)
    select_kv_attention,
)
from lightdvae.ops.dropout import dropout as dropout_op
from lightdvae.ops.dropout import relu_dropout

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
class StepWeights:
    """The weights of a :class:`DecoderBody` packed for its step path (built by :meth:`DecoderBody.new_cache`).

    Matrices are transposed to ``(in, out)`` for ``torch.addmm(bias, x, w)``.  ``latent_b`` / ``speech_b``:
    ``(max_len, d)``, the embedding bias plus the positional encoding of every position.  ``memory_w``
    ``(d, n_layers * 2 * d)`` / ``memory_b``: the key and value projections of every layer's cross-attention
    side by side (layer-major, keys then values).  ``layers``: per decoder layer, the tuple
    ``(qkv_w, qkv_b, self_out_w, self_out_b, cross_q_w, cross_q_b, cross_out_w, cross_out_b, ff1_w, ff1_b,
    ff2_w, ff2_b, norm1_w, norm1_b, norm2_w, norm2_b, norm3_w, norm3_b, eps)`` with the query/key/value
    projections of the self-attention in one ``(d, 3 d)`` matrix.  A copy taken when the cache is made: a cache
    is only valid for the weights it was made with (as are the keys/values it holds).  With ``positions="rope"``
    the biases hold no positions and ``rope`` the rotary tables.  With ``past_encoder="rnn"``
    ``speech_b`` holds the bias alone (no positions) and ``rnn`` the LSTM's weights as ``torch.lstm_cell`` takes
    them; ``final_norm``: see :class:`DecoderBody` (``norm_first``).
    """

    owner: int  # id() of the body the weights come from
    latent_w: Tensor
    latent_b: Tensor
    speech_w: Tensor
    speech_b: Tensor
    memory_w: Tensor
    memory_b: Tensor
    layers: list[tuple]
    activation: Callable[[Tensor], Tensor]  # in place: torch.relu_ or torch.tanh_
    dropout: float
    norm_first: bool = False
    final_norm: tuple | None = None  # (weight, bias, eps) of the stack's last LayerNorm (pre-norm only)
    rnn: tuple | None = None  # (w_ih, w_hh, b_ih, b_hh) of the past-speech LSTM (past_encoder="rnn" only)
    rope: tuple[Tensor, Tensor] | None = None  # (cos, sin) (max_len, head_dim / 2) rotary tables (positions="rope")


@dataclass
class MemoryKV:
    """Cross-attention keys/values of the memory stream, for every layer of a decoder stack.

    ``caches``: one :class:`KVCache` per layer (also the ``cross_kv`` of the layers' :class:`LayerCache`);
    ``rows``: per layer, the ``(keys, values)`` ``(batch, heads, n, head_dim)`` of the positions computed last;
    ``end``: one past the last of those positions.  Shared by two :class:`DecoderCache` of one body when both
    are fed the same memory at every position (``DecoderBody.new_cache(share_memory_with=...)``).
    ``rnn_state``: with ``past_encoder="rnn"``, the LSTM's ``(h, c)``, each ``(batch, d_model)``, after the last
    speech position fed (``None`` before the first: zeros).
    """

    caches: list[KVCache]
    rows: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    end: int = 0
    rnn_state: tuple[Tensor, Tensor] | None = None


@dataclass
class DecoderCache:
    """Caches of a whole decoder stack plus the next time index (``position``) to be decoded.

    Made by :meth:`DecoderBody.new_cache`, which also stores the packed weights (``weights``), the memory
    keys/values (``memory``, maybe shared with another cache) and the attention implementation (``attend``,
    chosen once: :func:`~lightdvae.ops.attention.select_kv_attention`, or the ``kv_attention`` hook of this
    module when it has been replaced).
    """

    layers: list[LayerCache] = field(default_factory=list)
    position: int = 0
    weights: StepWeights | None = None
    memory: MemoryKV | None = None
    attend: Callable[..., Tensor] | None = None

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


#: The values of ``positions``: how positions enter the transformers (see the module docstring).
POSITIONS = ("sinusoidal", "rope")


def rotary_tables(length: int, head_dim: int, *, dtype: torch.dtype, device) -> tuple[Tensor, Tensor]:
    """Rotary embedding tables of positions ``0 .. length - 1``: ``(cos, sin)``, each ``(length, head_dim / 2)``.

    Frequency ``k`` of the ``head_dim / 2`` pairs: ``10000^(-2k / head_dim)``; angles computed in float32 element
    by element (a position gets the same rotation in the parallel and in the step path).
    """
    if head_dim % 2:
        raise ValueError(f"rotary positions need an even head dimension, got {head_dim}")
    pos = torch.arange(length, dtype=torch.float32, device=device)[:, None]
    inv_freq = torch.exp(
        torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / head_dim)
    )
    angle = pos * inv_freq
    return torch.cos(angle).to(dtype), torch.sin(angle).to(dtype)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding of x ``(..., n, head_dim)`` at the positions of ``cos``, ``sin`` ``(n, head_dim / 2)``
    (half-split pairs ``(x[k], x[k + head_dim / 2])``, each rotated by its position's angle)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate query and key/value inputs (self- or cross-attention).

    The parallel pass is :meth:`forward`; the incremental one is written out in :meth:`DecoderBody.step_rows`
    on the packed weights (:class:`StepWeights`).
    """

    def __init__(self, d_model: int, n_heads: int, rope: bool = False):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.rope = rope  # rotate queries and keys by their positions (0-based in x and in memory alike)
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
        if self.rope:
            cos, sin = rotary_tables(max(q.shape[2], k.shape[2]), self.head_dim, dtype=q.dtype, device=q.device)
            q, k = rotate(q, cos[: q.shape[2]], sin[: q.shape[2]]), rotate(k, cos[: k.shape[2]], sin[: k.shape[2]])
        if torch._C._functorch.is_batchedtensor(q):
            # under torch.func.vmap (the enhancement's per-utterance encoder copies) scaled_dot_product_attention has
            # no batching rule and runs once per vmapped element; the same attention in products batches
            return self._merge(_attention_products(q, k, v, causal))
        return self._merge(F.scaled_dot_product_attention(q, k, v, is_causal=causal))


def _attention_products(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
    """``F.scaled_dot_product_attention(q, k, v, is_causal=causal)`` as two products and a softmax (the math
    backend's formula), for callers that need ops with vmap batching rules.  (B, H, T, hd) -> (B, H, T, hd)."""
    scores = torch.matmul(q, k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
    if causal:
        hidden = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(hidden, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


class FeedForward(nn.Module):
    """Position-wise Linear(d, ff) -> activation -> dropout -> Linear(ff, d).  A ReLU and the dropout run as one
    pass in training (:func:`lightdvae.ops.dropout.relu_dropout`: the same values bit for bit, one pass each way
    instead of two)."""

    def __init__(self, d_model: int, ff_dim: int, act: str, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_model, ff_dim), make_activation(act), Dropout(dropout), nn.Linear(ff_dim, d_model)
        )

    def forward(self, x: Tensor) -> Tensor:
        first, act, drop, last = self.net
        if type(act) is nn.ReLU and drop.training and drop.p > 0:
            return last(relu_dropout(first(x), drop.p))
        return self.net(x)


def _residual(
    x: Tensor,
    sublayer: Callable[[Tensor], Tensor],
    norm: Callable[[Tensor], Tensor],
    drop: Callable[[Tensor], Tensor],
    pre: bool,
    residual: bool = True,
    inplace: bool = False,
) -> Tensor:
    """One residual sublayer of a stream x, (B, T, d) in the parallel pass or rows (B * n, d) in the step path.

    Pre-norm (``pre``): ``x + drop(sublayer(norm(x)))``; post-norm: ``norm(x + drop(sublayer(x)))``.
    ``residual=False`` (Inv-s-NR attention sublayers) leaves out the ``x +``.  ``inplace``: the sum is taken in
    place in the sublayer's (dropped-out) output, a fresh tensor -- the step path, which autograd never records;
    the parallel pass adds out of place.  Returns the new stream, same shape and dtype as x.
    """
    out = drop(sublayer(norm(x) if pre else x))
    if residual:
        out = out.add_(x) if inplace else x + out
    return out if pre else norm(out)


# ---------------------------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------------------------


class EncoderLayer(nn.Module):
    """Transformer encoder layer, not causal; (B, T, d) -> (B, T, d).

    Post-norm (default): x = LN(x + SA(x)); x = LN(x + FF(x)).  ``norm_first``: x = x + SA(LN(x)); x = x + FF(LN(x)).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        ff_dim: int,
        act: str,
        dropout: float,
        norm_first: bool = False,
        rope: bool = False,
    ):
        super().__init__()
        self.norm_first = norm_first
        self.attn = MultiHeadAttention(d_model, n_heads, rope)
        self.norm1 = nn.LayerNorm(d_model)
        self.ff = FeedForward(d_model, ff_dim, act, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.norm_first
        x = _residual(x, lambda h: self.attn(h, h, causal=False), self.norm1, self.drop, pre)
        return _residual(x, self.ff, self.norm2, self.drop, pre)


class Encoder(nn.Module):
    """Linear embedding of the input + sinusoidal positions -> dropout -> encoder layers (-> LayerNorm when
    ``norm_first``: pre-norm layers leave their output un-normalised).  ``positions="rope"``: no positions on the
    embedding, rotary queries and keys in every layer.

    forward: (B, T, in_dim) -> (B, T, d_model).
    """

    def __init__(
        self,
        in_dim: int,
        d_model: int,
        n_heads: int,
        n_layers: int,
        ff_dim: int,
        act: str,
        dropout: float,
        norm_first: bool = False,
        positions: str = "sinusoidal",
    ):
        super().__init__()
        check_positions(positions)
        self.sinusoidal = positions == "sinusoidal"
        self.embed = nn.Linear(in_dim, d_model)
        self.drop = Dropout(dropout)
        rope = positions == "rope"
        self.layers = nn.ModuleList(
            EncoderLayer(d_model, n_heads, ff_dim, act, dropout, norm_first, rope) for _ in range(n_layers)
        )
        # only pre-norm stacks have it: post-norm checkpoints keep their state_dict keys
        self.final_norm = nn.LayerNorm(d_model) if norm_first else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        if self.sinusoidal:
            h = h + sinusoidal_encoding(0, h.shape[1], h.shape[2], dtype=h.dtype, device=h.device)
        h = self.drop(h)
        for layer in self.layers:
            h = layer(h)
        return h if self.final_norm is None else self.final_norm(h)


# ---------------------------------------------------------------------------------------------
# Decoder
# ---------------------------------------------------------------------------------------------


class DecoderLayer(nn.Module):
    """Decoder layer: causal self-attention, causal cross-attention to a memory, feed-forward.

    Post-norm (default): each sublayer's output -> dropout -> add -> LayerNorm.  ``norm_first``: LayerNorm of the
    stream -> sublayer -> dropout -> add (the memory is not normalised).

    ``residual=False`` (Inv-s-NR) drops the ``x +`` of both attention sublayers, so what the query stream
    carried in does not pass them: it can only steer the attention weights.  The feed-forward sublayer keeps
    its residual (at that point the stream holds only what cross-attention returned from the memory).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        ff_dim: int,
        act: str,
        dropout: float,
        residual: bool = True,
        norm_first: bool = False,
        rope: bool = False,
    ):
        super().__init__()
        self.residual, self.norm_first = residual, norm_first
        self.self_attn = MultiHeadAttention(d_model, n_heads, rope)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn = MultiHeadAttention(d_model, n_heads, rope)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = FeedForward(d_model, ff_dim, act, dropout)
        self.norm3 = nn.LayerNorm(d_model)
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        """Parallel pass.  x: (B, T, d) query stream; memory: (B, T, d); position t sees memory <= t.

        The step path (:meth:`DecoderBody.step_rows`) computes the same function on packed weights.
        """
        pre, res, drop = self.norm_first, self.residual, self.drop
        x = _residual(x, lambda h: self.self_attn(h, h, causal=True), self.norm1, drop, pre, res)
        x = _residual(x, lambda h: self.cross_attn(h, memory, causal=True), self.norm2, drop, pre, res)
        return _residual(x, self.ff, self.norm3, drop, pre)


class DecoderBody(nn.Module):
    """Decoder stack of the hierarchical DVAEs (everything but the output heads).

    Inputs per time index ``i`` (0-based): a latent vector ``latent[:, i]`` (``[z ; w]``, ``latent_dim``) and
    a speech feature ``speech[:, i]`` (``x_dim``), both already shifted by the caller as needed.  Each is
    embedded by its own Linear, plus the sinusoidal encoding of ``i``.

    - normal (``inv_s=False``): the query/residual stream is the embedded latent, the memory of the
      cross-attention is the embedded speech;
    - ``inv_s=True``: the roles swap (query stream = speech, memory = latent);
    - ``no_residual=True``: decoder layers without the residual of the attention sublayers;
    - ``norm_first=True``: pre-norm decoder layers and a final LayerNorm (``final_norm``) on the output;
    - ``past_encoder="rnn"``: the speech stream is ``LSTM(Linear(speech))`` (``past_rnn``, no positions) instead
      of ``Linear(speech) + PE``; dropout then acts on the LSTM's output;
    - ``positions="rope"``: no positions on either embedding; both attentions of every layer rotate their queries
      (at the query's index) and keys (at the key's index) instead.

    Both attentions are causal (and so is the LSTM), so the output at ``i`` depends on ``latent[:, :i+1]`` and
    ``speech[:, :i+1]`` only.  Output: (B, T, d_model).
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
        norm_first: bool = False,
        past_encoder: str = "linear",
        positions: str = "sinusoidal",
    ):
        super().__init__()
        if past_encoder not in PAST_ENCODERS:
            raise ValueError(f"past_encoder must be one of {', '.join(PAST_ENCODERS)}, got {past_encoder!r}")
        check_positions(positions)
        self.rope = positions == "rope"
        self.inv_s, self.residual, self.norm_first = inv_s, not no_residual, norm_first
        self.d_model, self.n_heads = d_model, n_heads
        self.latent_embed = nn.Linear(latent_dim, d_model)
        self.speech_embed = nn.Linear(x_dim, d_model)
        # only created when used, so that checkpoints of the default configuration keep their state_dict keys
        self.past_rnn = nn.LSTM(d_model, d_model, batch_first=True) if past_encoder == "rnn" else None
        self.drop = Dropout(dropout)
        self.layers = nn.ModuleList(
            DecoderLayer(
                d_model, n_heads, ff_dim, act, dropout, residual=not no_residual, norm_first=norm_first, rope=self.rope
            )
            for _ in range(n_layers)
        )
        self.final_norm = nn.LayerNorm(d_model) if norm_first else None
        self._pe_table: Tensor | None = None  # positional table cache (not a parameter, not saved)
        self._packed: tuple | None = None  # (weights, their versions and max_len, StepWeights): :meth:`_pack`

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
        if not self.rope:
            pe = self._positions(start, lat.shape[1], lat)
            lat = lat + pe
            sp = sp + pe if self.past_rnn is None else sp
        if self.past_rnn is not None:
            sp = self.past_rnn(sp)[0]
        lat, sp = self.drop(lat), self.drop(sp)
        return (sp, lat) if self.inv_s else (lat, sp)  # (query stream, memory)

    def forward(self, latent: Tensor, speech: Tensor) -> Tensor:
        """Parallel pass: latent (B, T, latent_dim), speech (B, T, x_dim) -> (B, T, d_model)."""
        if latent.shape[:2] != speech.shape[:2]:
            raise ValueError(f"latent {tuple(latent.shape)} and speech {tuple(speech.shape)} differ in batch/time")
        x, memory = self._streams(latent, speech, 0)
        for layer in self.layers:
            x = layer(x, memory)
        return x if self.final_norm is None else self.final_norm(x)

    def new_cache(
        self, batch: int, max_len: int, *, dtype: torch.dtype, device, share_memory_with: DecoderCache | None = None
    ) -> DecoderCache:
        """Empty caches for decoding up to ``max_len`` positions of a batch, with this body's weights packed.

        ``share_memory_with``: a cache of this same body (same batch and ``max_len``) whose memory keys/values
        this one shares, for two uses of the body that are fed the same memory at every position (LigHT-DVAE's
        z-prior and speech passes both read the past speech).  At each position the first of them to step
        computes the memory's keys/values; the other may then pass ``speech=None`` to :meth:`step`.  Not with
        ``inv_s`` (the memory is then the latent stream, which differs between the uses).

        The cache holds a copy of the weights made here: make a new cache after changing the weights (its
        keys/values were computed with the old ones anyway).
        """
        hd = self.d_model // self.n_heads

        def kv() -> KVCache:
            return KVCache.empty(batch, self.n_heads, max_len, hd, dtype=dtype, device=device)

        layers = [LayerCache(kv(), kv()) for _ in self.layers]
        if share_memory_with is None:
            weights = self._pack(max_len)
            memory = MemoryKV([lc.cross_kv for lc in layers])
        else:
            other = share_memory_with
            if self.inv_s:
                raise ValueError("an Inv-s decoder cannot share memory keys/values: its memory is the latent stream")
            if other.weights is None or other.weights.owner != id(self):
                raise ValueError("share_memory_with must be a cache made by this same decoder body")
            k, want = other.layers[0].self_kv.k, torch.device(device)
            same_device = k.device.type == want.type and want.index in (None, k.device.index)
            if (other.max_len, k.shape[0], k.dtype, other.position) != (max_len, batch, dtype, 0) or not same_device:
                raise ValueError(
                    "share_memory_with must be an unused cache of the same batch size, max_len, dtype and device"
                )
            weights, memory = other.weights, other.memory
            for lc, shared in zip(layers, memory.caches, strict=True):
                lc.cross_kv = shared
        attend = kv_attention if kv_attention is not kv_attention_op else select_kv_attention(*_any_kv(layers))
        return DecoderCache(layers, weights=weights, memory=memory, attend=attend)

    def _pack(self, max_len: int) -> StepWeights:
        """The weights in the layout of the step path (see :class:`StepWeights`), packed again only when a weight
        is another tensor, was changed in place or moved since the last call with this ``max_len`` (an E-step decodes
        with the same frozen weights a few hundred times; packing them walks every layer and copies ~2.6 MB)."""
        params = list(self.parameters())  # under functional_call: the tensors swapped in
        key = (max_len, [(p._version, p.data_ptr(), p.dtype, p.device) for p in params])
        kept = self._packed
        if kept is not None and kept[1] == key and all(a is b for a, b in zip(kept[0], params, strict=True)):
            return kept[2]
        packed = self._pack_now(max_len)
        # the tensors themselves are kept (not their ids) so that a freed weight's id cannot be taken for it
        self._packed = (params, key, packed)
        return packed

    @torch.no_grad()
    def _pack_now(self, max_len: int) -> StepWeights:
        def t(w: Tensor) -> Tensor:
            return w.detach().t().contiguous()

        like = self.latent_embed.weight
        rope = None
        if self.rope:  # positions rotate queries and keys instead of adding to the embeddings
            rope = rotary_tables(max_len, self.d_model // self.n_heads, dtype=like.dtype, device=like.device)
            pe = torch.zeros(max_len, self.d_model, dtype=like.dtype, device=like.device)
        else:  # not self._positions: under inference mode that would leave an inference tensor in the shared table
            pe = sinusoidal_encoding(0, max_len, self.d_model, dtype=like.dtype, device=like.device)
        layers = []
        for layer in self.layers:
            sa, ca, (ff1, _, _, ff2) = layer.self_attn, layer.cross_attn, layer.ff.net
            norms = (layer.norm1, layer.norm2, layer.norm3)
            if len({n.eps for n in norms}) != 1:
                raise ValueError("the step path needs one LayerNorm eps per decoder layer")
            layers.append(
                (
                    t(torch.cat([sa.q_proj.weight, sa.k_proj.weight, sa.v_proj.weight])),
                    torch.cat([sa.q_proj.bias, sa.k_proj.bias, sa.v_proj.bias]).detach(),
                    t(sa.out_proj.weight),
                    sa.out_proj.bias.detach(),
                    t(ca.q_proj.weight),
                    ca.q_proj.bias.detach(),
                    t(ca.out_proj.weight),
                    ca.out_proj.bias.detach(),
                    t(ff1.weight),
                    ff1.bias.detach(),
                    t(ff2.weight),
                    ff2.bias.detach(),
                    *(p.detach() for n in norms for p in (n.weight, n.bias)),
                    norms[0].eps,
                )
            )
        act = _INPLACE_ACTIVATIONS.get(type(self.layers[0].ff.net[1]))
        if act is None:
            raise NotImplementedError(f"no step path for the activation {self.layers[0].ff.net[1]}")
        memory_proj = [proj for layer in self.layers for proj in (layer.cross_attn.k_proj, layer.cross_attn.v_proj)]
        rnn, speech_b = None, self.speech_embed.bias.detach() + pe
        if self.past_rnn is not None:  # no positions on the speech embedding; the LSTM weights as lstm_cell takes them
            r = self.past_rnn
            rnn = tuple(p.detach() for p in (r.weight_ih_l0, r.weight_hh_l0, r.bias_ih_l0, r.bias_hh_l0))
            speech_b = self.speech_embed.bias.detach().expand(max_len, -1).contiguous()
        fn = self.final_norm
        return StepWeights(
            owner=id(self),
            latent_w=t(self.latent_embed.weight),
            latent_b=self.latent_embed.bias.detach() + pe,
            speech_w=t(self.speech_embed.weight),
            speech_b=speech_b,
            memory_w=t(torch.cat([proj.weight for proj in memory_proj])),
            memory_b=torch.cat([proj.bias for proj in memory_proj]).detach(),
            layers=layers,
            activation=act,
            dropout=self.drop.p,
            norm_first=self.norm_first,
            final_norm=None if fn is None else (fn.weight.detach(), fn.bias.detach(), fn.eps),
            rnn=rnn,
            rope=rope,
        )

    def step(self, latent: Tensor, speech: Tensor | None, cache: DecoderCache) -> Tensor:
        """Decode the next n positions ``cache.position .. + n - 1`` given the caches of all earlier ones.

        latent (B, n, latent_dim), speech (B, n, x_dim) -> (B, n, d_model); the caches grow by n.
        Equal to the rows of :meth:`forward` at those positions when the same inputs are fed.
        ``speech=None``: the memory of these positions was already computed through a cache this one shares
        its memory with (see :meth:`new_cache`).  Inference only: call it under ``torch.no_grad()`` or
        ``torch.inference_mode()``.
        """
        if torch.is_grad_enabled():
            raise RuntimeError(
                "DecoderBody.step is inference-only (it writes into the caches in place and has no backward); "
                "call it under torch.no_grad() or torch.inference_mode(), or train with the parallel forward()"
            )
        b, n = latent.shape[:2]
        if speech is not None and speech.shape[:2] != latent.shape[:2]:
            raise ValueError(f"latent {tuple(latent.shape)} and speech {tuple(speech.shape)} differ in batch/time")
        rows = self.step_rows(
            latent.reshape(b * n, -1), None if speech is None else speech.reshape(b * n, -1), cache, n
        )
        return rows.view(b, n, self.d_model)

    def step_rows(self, latent: Tensor, speech: Tensor | None, cache: DecoderCache, n: int = 1) -> Tensor:
        """:meth:`step` on rows: latent (B * n, latent_dim), speech (B * n, x_dim) or ``None`` -> (B * n, d_model).

        Rows are ordered (batch, time).  The decoding loops of the models call this one (no reshapes, no checks
        of the grad mode: run it under ``torch.inference_mode()`` or ``torch.no_grad()``).
        """
        p = cache.position
        end = p + n
        if end > cache.max_len:
            raise ValueError(f"decoder cache holds {cache.max_len} positions; cannot decode up to {end}")
        wts, mem = cache.weights, cache.memory
        b = latent.shape[0] // n
        heads = self.n_heads
        hd = self.d_model // heads
        drop = wts.dropout if self.training else 0.0

        x = torch.addmm(_rows(wts.latent_b, p, n, b), latent, wts.latent_w)
        if drop:
            x = dropout_op(x, drop)
        if speech is None:
            if mem.end != end or not mem.rows:
                raise ValueError(
                    f"speech=None needs the memory of positions {p}..{end - 1} computed through a cache that shares "
                    "this one's memory (new_cache(share_memory_with=...)); pass the speech features instead"
                )
            kv_rows = mem.rows
        else:
            sp = torch.addmm(_rows(wts.speech_b, p, n, b), speech, wts.speech_w)
            if wts.rnn is not None:
                sp = _lstm_rows(sp, wts.rnn, mem, b, n)
            if drop:
                sp = dropout_op(sp, drop)
            if self.inv_s:
                x, sp = sp, x  # query stream = speech, memory = latent
            kv = torch.addmm(wts.memory_b, sp, wts.memory_w).view(b, n, len(self.layers), 2, heads, hd)
            if wts.rope is not None:  # the memory's keys of every layer, rotated once at their positions
                cos, sin = (table[p:end, None, None] for table in wts.rope)  # (n, 1, 1, hd / 2)
                kv[:, :, :, 0] = rotate(kv[:, :, :, 0], cos, sin)
            kv_rows = [layer_kv.unbind(0) for layer_kv in kv.permute(2, 3, 0, 4, 1, 5).unbind(0)]
            mem.rows, mem.end = kv_rows, end

        dropout = partial(dropout_op, p=drop) if drop else _keep
        for lw, lc, kv_mem in zip(wts.layers, cache.layers, kv_rows, strict=True):
            x = _layer_step(x, lw, lc, kv_mem, cache.attend, p, b, n, dropout, self.residual, wts)
        if wts.final_norm is not None:
            x = torch.layer_norm(x, (self.d_model,), *wts.final_norm)
        cache.position = end
        return x


def native_decoding(bodies: list[DecoderBody], dtype: torch.dtype, device) -> bool:
    """Whether the native decoding loop (``lightdvae::transformer_decode``, csrc/transformer/decode_loop.cpp) runs
    these bodies: eval mode, no Inv-s, the Linear past (sinusoidal or rotary positions), a ReLU or tanh
    feed-forward, one LayerNorm eps, the native cached attention for these caches (and this module's
    ``kv_attention`` hook not replaced), and the backend allows the op.  It returns what the Python loop over
    :meth:`DecoderBody.step_rows` returns, bit for bit; the Python loop runs everything else."""
    from lightdvae import _ext

    for body in bodies:
        if body.training or body.inv_s or not body.residual or body.past_rnn is not None:
            return False
        if type(body.layers[0].ff.net[1]) not in _INPLACE_ACTIVATIONS:
            return False
    if len(_layer_norm_eps(bodies)) != 1:
        return False
    if kv_attention is not kv_attention_op or not _ext.use_native("transformer_decode", torch.device(device).type):
        return False
    body = bodies[0]
    probe = torch.empty(1, body.n_heads, 1, body.d_model // body.n_heads, dtype=dtype, device=device)
    return select_kv_attention(probe, probe) is torch.ops.lightdvae.kv_attention.default


def native_weights(body: DecoderBody, max_len: int) -> tuple[list[Tensor], float, int, tuple[Tensor, Tensor] | None]:
    """A body's packed weights (:meth:`DecoderBody._pack`) as ``lightdvae::transformer_decode`` takes them: the flat
    list (see csrc/transformer/body.h), the LayerNorm eps, the activation code (1 ReLU, 0 tanh) and the rotary
    tables ``(cos, sin)`` (None with sinusoidal positions)."""
    wts = body._pack(max_len)
    flat = [wts.latent_w, wts.latent_b, wts.speech_w, wts.speech_b, wts.memory_w, wts.memory_b]
    for layer in wts.layers:
        flat.extend(layer[:18])
    if wts.final_norm is not None:
        flat.extend(wts.final_norm[:2])
    return flat, _layer_norm_eps([body]).pop(), int(wts.activation is torch.relu_), wts.rope


def _layer_norm_eps(bodies: list[DecoderBody]) -> set[float]:
    return {m.eps for body in bodies for m in body.modules() if isinstance(m, nn.LayerNorm)}


#: The values of ``past_encoder``: how the past speech enters the decoder (see :class:`DecoderBody`).
PAST_ENCODERS = ("linear", "rnn")


def check_positions(positions: str) -> None:
    """Raises ValueError unless ``positions`` is one of :data:`POSITIONS`."""
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}")


def _layer_step(
    x: Tensor,
    lw: tuple,
    lc: LayerCache,
    kv_mem: tuple[Tensor, Tensor],
    attend: Callable[..., Tensor],
    p: int,
    b: int,
    n: int,
    dropout: Callable[[Tensor], Tensor],
    residual: bool,
    wts: StepWeights,
) -> Tensor:
    """One decoder layer of :meth:`DecoderBody.step_rows` on packed weights: rows x (B * n, d) -> (B * n, d).

    ``lw``: the layer's tuple of :class:`StepWeights`; ``kv_mem``: the memory keys/values of the new positions
    (B, H, n, hd); ``p``: first new position; ``dropout``: the step's dropout (the identity outside training).
    Post-norm or pre-norm after ``wts.norm_first``: the same function as :meth:`DecoderLayer.forward`, through the
    same :func:`_residual`.  The self- and cross-attention caches grow by n.
    """
    (qkv_w, qkv_b, so_w, so_b, cq_w, cq_b, co_w, co_b, f1_w, f1_b, f2_w, f2_b) = lw[:12]
    (n1_w, n1_b, n2_w, n2_b, n3_w, n3_b, eps) = lw[12:]
    d = x.shape[1]
    shape, heads = (d,), lc.self_kv.k.shape[1]
    hd = d // heads

    def norm(weight: Tensor, bias: Tensor) -> Callable[[Tensor], Tensor]:
        return lambda h: torch.layer_norm(h, shape, weight, bias, eps)

    rope = None if wts.rope is None else tuple(table[p : p + n] for table in wts.rope)

    def self_attention(h: Tensor) -> Tensor:  # causal, over the query stream
        q, k, v = torch.addmm(qkv_b, h, qkv_w).view(b, n, 3, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
        if rope is not None:
            q, k = rotate(q, *rope), rotate(k, *rope)
        kvc = lc.self_kv
        out = _merge(attend(q, kvc.k, kvc.v, k, v, p, None, True), b, n, d)
        kvc.length = p + n
        return torch.addmm(so_b, out, so_w)

    def cross_attention(h: Tensor) -> Tensor:  # causal, to the memory
        q = torch.addmm(cq_b, h, cq_w).view(b, n, heads, hd).transpose(1, 2)
        if rope is not None:
            q = rotate(q, *rope)
        kvc = lc.cross_kv
        out = _merge(attend(q, kvc.k, kvc.v, *kv_mem, p, None, True), b, n, d)
        kvc.length = p + n
        return torch.addmm(co_b, out, co_w)

    def feed_forward(h: Tensor) -> Tensor:
        return torch.addmm(f2_b, dropout(wts.activation(torch.addmm(f1_b, h, f1_w))), f2_w)

    pre = wts.norm_first
    x = _residual(x, self_attention, norm(n1_w, n1_b), dropout, pre, residual, inplace=True)
    x = _residual(x, cross_attention, norm(n2_w, n2_b), dropout, pre, residual, inplace=True)
    return _residual(x, feed_forward, norm(n3_w, n3_b), dropout, pre, inplace=True)


def _lstm_rows(sp: Tensor, rnn: tuple, mem: MemoryKV, b: int, n: int) -> Tensor:
    """The past-speech LSTM over the next n positions: embedded rows (B * n, d) ordered (batch, time) -> its
    outputs h, same layout, starting from (and updating) ``mem.rnn_state``."""
    state = mem.rnn_state
    if state is None:
        zeros = sp.new_zeros(b, rnn[1].shape[1])
        state = (zeros, zeros)
    if n == 1:
        state = torch.lstm_cell(sp, state, *rnn)
        out = state[0]
    else:
        rows, outs = sp.view(b, n, -1), []
        for j in range(n):
            state = torch.lstm_cell(rows[:, j], state, *rnn)
            outs.append(state[0])
        out = torch.stack(outs, 1).reshape(b * n, -1)
    mem.rnn_state = state
    return out


_INPLACE_ACTIVATIONS: dict[type, Callable[[Tensor], Tensor]] = {nn.ReLU: torch.relu_, nn.Tanh: torch.tanh_}


def _keep(x: Tensor) -> Tensor:
    """The step path's dropout outside training: x itself."""
    return x


def _any_kv(layers: list[LayerCache]) -> tuple[Tensor, Tensor]:
    return layers[0].self_kv.k, layers[0].self_kv.v


def _rows(table: Tensor, start: int, n: int, batch: int) -> Tensor:
    """Rows ``start .. start + n - 1`` of a per-position table, as the bias of (batch, time)-ordered rows."""
    rows = table[start : start + n]
    return rows.repeat(batch, 1) if n > 1 and batch > 1 else rows


def _merge(out: Tensor, b: int, n: int, d: int) -> Tensor:
    """(B, H, n, hd) attention output -> (B * n, d) rows ordered (batch, time)."""
    return out.view(b, d) if n == 1 else out.transpose(1, 2).reshape(b * n, d)
