"""Hierarchical transformer DVAEs: HiT-DVAE, LigHT-DVAE and the Inv-s / Inv-s-NR ablations.

Papers:

- X. Lin, X. Bie, S. Leglaive, L. Girin, X. Alameda-Pineda, "Speech Modeling with a Hierarchical
  Transformer Dynamical VAE", ICASSP 2023 (LigHT-DVAE, the Inv-s / Inv-s-NR structure study).
- X. Bie, W. Guo, S. Leglaive, L. Girin, F. Moreno-Noguer, X. Alameda-Pineda, "HiT-DVAE: Human Motion
  Generation via Hierarchical Transformer Dynamical VAE", 2022.

Model (SPEC section 4).  Speech ``s_t`` is a power spectrum of ``x_dim = 513`` bins; ``w`` a sequence-level
latent (``w_dim``), ``z_t`` frame-level latents (``z_dim``)::

    p(s, z, w) = p(w) prod_t p(s_t | s_{1:t-1}, z_{1:t}, w) p(z_t | s_{1:t-1}, z_{1:t-1}, w),   p(w) = N(0, I)
    q(z, w | s) = q(w | s_{1:T}) prod_t q(z_t | s_{1:T}, w)          (z inference is not autoregressive)

Input features: every network sees speech as ``log(power + feature_eps)`` (``feature_eps = 1e-8``), a
513-vector per frame, through a Linear embedding.  The start frame ``s_0`` of the shifted past is the
zero feature vector.

Networks (transformer layers post-norm by default: sublayer -> dropout -> add -> LayerNorm; sinusoidal positions):

- w encoder: Linear(513 -> d) + PE, ``enc_layers`` encoder layers, mean over time, Linear(d -> 2 w_dim).
- z encoder: Linear(513 + w_dim -> d) of ``[s_t ; w]`` + PE, ``enc_layers`` layers, Linear(d -> 2 z_dim) per t.
- decoder body (:class:`~lightdvae.models.transformer_layers.DecoderBody`): query/residual stream =
  Linear(z_dim + w_dim -> d) of ``[z ; w]`` + PE with causal self-attention; cross-attention to the memory
  Linear(513 -> d) of the shifted past speech ``s_{0:T-1}`` + PE under a causal mask (index ``i`` sees
  ``s_0 .. s_i``, i.e. frame ``t = i + 1`` sees ``s_{0:t-1}``); feed-forward; ``dec_layers`` such layers.
  Fed ``z_{1:T}`` it parameterises ``p(s_t | ...)`` through the head Linear(d -> 513) (log-variance); fed
  ``z_{0:T-1}`` (shifted, ``z_0 = 0``) it parameterises ``p(z_t | ...)`` through Linear(d -> 2 z_dim).
- HiT-DVAE: two decoder bodies (speech, z prior).  LigHT-DVAE: one body shared by both, separate heads.
- ``inv_s=True`` (Inv-s): query/residual stream = embedded past speech, ``[z ; w]`` is the memory of the
  cross-attention (same causal alignment).  ``no_residual=True`` (Inv-s-NR, only with ``inv_s``): the decoder
  layers drop the residual of both attention sublayers, so past speech can only steer the attention weights.

Default sizes (the project's choice; the paper does not publish them all): ``d_model = 128``, ``n_heads = 4``,
``enc_layers = 4`` per encoder, ``dec_layers = 2`` per decoder body, ``ff_dim = 512``, ``w_dim = z_dim = 16``,
``dropout = 0.1``, ReLU in the feed-forward blocks.  Parameter counts (x_dim 513; the Inv-s variants have the
same counts, the layers are the same):

==============  ==========  ============
model           parameters  ratio to HiT
==============  ==========  ============
HiT-DVAE        2,996,705   1
LigHT-DVAE      2,397,537   0.800
==============  ==========  ============

Three options, all off by default (a config saved without them loads as before, with the same modules and outputs):

- ``norm_first=True``: pre-norm layers (LayerNorm -> sublayer -> dropout -> add) in both encoders and every
  decoder body, each stack ending with a LayerNorm (+256 parameters per stack at d_model 128: HiT-DVAE
  2,997,729, LigHT-DVAE 2,398,305).  Pre-norm transformers train without the learning-rate warm-up post-norm
  ones need (issue #15's recipe study).
- ``past_encoder="rnn"``: each decoder body carries the shifted past speech s_{0:T-1} through a one-layer
  unidirectional LSTM(d_model -> d_model) over its Linear embedding (no positional encoding) before it becomes the
  keys/values of the cross-attention (the query stream under Inv-s): the published LigHT-DVAE's "output-to-hidden"
  RNN.  An LSTM rather than a GRU: every recurrent network of the DVAE family in this package (SRNN's h_t, RVAE,
  DKF's inference) is an LSTM, as in the DVAE review's code the paper builds on, so the option changes one thing
  (where the past goes), not also the cell type; a GRU would save a quarter of its weights.  It costs
  4 (2 d^2 + 2 d) parameters per body (HiT-DVAE 3,260,897, LigHT-DVAE 2,529,633).  The step path carries its
  state in the decoder cache, so GEN and generation cost one LSTM cell per frame for it.  Both options combine
  with each other and with Inv-s / Inv-s-NR (under Inv-s the LSTM's output is the query/residual stream).
- ``positions="rope"``: rotary positions (Su et al. 2021) instead of sinusoidal encodings added to the embeddings:
  every attention of the encoders and decoder bodies rotates its queries and keys by their time indices, so its
  scores depend on relative offsets only (no parameters; the cached step path rotates each key once, as it enters
  the cache).  The default ``"sinusoidal"`` is the published models'.

Past speech at test time (``forward(power, past=...)``; w and z are inferred from the true ``s_{1:T}`` in both):

- ``"gt"``: the decoders see the true past (teacher forcing): one parallel pass with causal masks.  Training.
- ``"gen"``: the speech decoder is fed its own past outputs ``s_hat_t = exp(logvar_t)`` one frame at a time,
  with per-layer key/value caches (O(t) per step).  The z prior is evaluated on the same past the speech
  decoder saw, ``p(z_t | s_hat_{1:t-1}, z_{1:t-1}, w)`` with the posterior ``z``, so the KL term of a GEN pass
  matches its reconstruction.  The feedback loop runs without gradients (``s_hat`` is detached, as in SRNN
  scheduled sampling); when gradients are enabled one parallel pass on the fed-back past recomputes the
  outputs differentiably (same values to float precision).

Generation (``generate``): ``w = temperature * N(0, I)``; for t = 1..T the prior decoder gives
``p(z_t | s_hat_{1:t-1}, z_{1:t-1}, w)``, ``z_t = mean + temperature * std * eps``, the speech decoder gives
``logvar_t``, and ``s_hat_t = exp(logvar_t)`` is fed back; both decoders step with their own caches.

Cost of the cached loops (issue #5): a frame runs the decoder body once per use on packed weights (see
:mod:`~lightdvae.models.transformer_layers`), under ``torch.inference_mode()``.  LigHT-DVAE's two uses of its one
body read the same past speech, so (in ``eval()`` mode) they share the cross-attention keys/values of that memory:
the prior pass computes them, the speech pass reuses them.  Where it applies (eval mode, no Inv-s, the Linear
past with sinusoidal or rotary positions) the whole loop is one native call,
``lightdvae::transformer_decode`` (csrc/transformer/decode_loop.cpp): the same ATen calls in C++, the same values
bit for bit, no Python per frame (1.7-2.5x at batch 1); a forward hook on ``s_out`` keeps the Python loop, so
that it sees every frame.  ``benchmarks/test_kv_attention.py`` and ``benchmarks/test_resynthesis.py`` time
generation and GEN resynthesis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from lightdvae.models.base import DVAE, DVAEOutput, ModelConfig, activation, check_past, reparameterize
from lightdvae.models.transformer_layers import (
    PAST_ENCODERS,
    DecoderBody,
    Encoder,
    check_positions,
    native_decoding,
    native_weights,
)
from lightdvae.ops.sampling_bptt import exact_loops_enabled

__all__ = ["HiTDVAE", "HiTDVAEConfig", "LigHTDVAE", "LigHTDVAEConfig", "TransformerDVAEConfig"]


@dataclass
class TransformerDVAEConfig(ModelConfig):
    """Sizes and switches shared by HiT-DVAE and LigHT-DVAE.

    x_dim: frequency bins (513).  z_dim: frame latent.  w_dim: sequence latent.
    d_model, n_heads, ff_dim: transformer width, attention heads, feed-forward width.
    enc_layers: layers of each encoder (w and z).  dec_layers: layers of each decoder body.
    activation: of the feed-forward blocks.  dropout: embeddings, sublayer outputs, feed-forward (train mode).
    inv_s: Inv-s ablation.  no_residual: Inv-s-NR (needs inv_s).  feature_eps: features are log(power + eps).
    norm_first: pre-norm layers (LayerNorm before each sublayer, residual after, a final LayerNorm per stack) in
    both encoders and the decoder bodies; ``False`` (default) is post-norm.
    past_encoder: how the shifted past speech s_{0:T-1} enters each decoder body: ``"linear"`` (default, a Linear
    embedding plus positions) or ``"rnn"`` (an LSTM over the Linear embedding, as the published LigHT-DVAE's
    output-to-hidden connections).  positions: ``"sinusoidal"`` (default: encodings added to the embeddings) or
    ``"rope"`` (rotary queries and keys).  The options are off by default; configs saved without them load as
    default.
    """

    activation: str = "relu"
    dropout: float = 0.1
    w_dim: int = 16
    d_model: int = 128
    n_heads: int = 4
    enc_layers: int = 4
    dec_layers: int = 2
    ff_dim: int = 512
    inv_s: bool = False
    no_residual: bool = False
    feature_eps: float = 1e-8
    norm_first: bool = False
    past_encoder: str = "linear"
    positions: str = "sinusoidal"

    def __post_init__(self) -> None:
        for name in ("x_dim", "z_dim", "w_dim", "d_model", "n_heads", "enc_layers", "dec_layers", "ff_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{type(self).__name__}.{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.feature_eps > 0:
            raise ValueError(f"feature_eps must be > 0, got {self.feature_eps}")
        activation(self.activation)  # raises on unknown names
        if not isinstance(self.norm_first, bool):
            raise ValueError(f"norm_first must be true or false, got {self.norm_first!r}")
        if self.past_encoder not in PAST_ENCODERS:
            raise ValueError(f"past_encoder must be one of {', '.join(PAST_ENCODERS)}, got {self.past_encoder!r}")
        check_positions(self.positions)
        if self.no_residual and not self.inv_s:
            raise ValueError(
                "no_residual=True is the Inv-s-NR ablation and only exists with inv_s=True "
                "(it removes the residual of the inverted speech stream); pass inv_s=True as well, or drop no_residual"
            )


@dataclass
class HiTDVAEConfig(TransformerDVAEConfig):
    """HiT-DVAE: two decoder bodies (speech and z prior)."""


@dataclass
class LigHTDVAEConfig(TransformerDVAEConfig):
    """LigHT-DVAE: one decoder body shared by speech and z prior."""


class _HierarchicalTransformerDVAE(DVAE):
    """Common code of HiT-DVAE and LigHT-DVAE; subclasses say whether the decoder body is shared."""

    config_class: ClassVar[type[ModelConfig]] = TransformerDVAEConfig
    sees_past_speech: ClassVar[bool] = True
    shared_decoder: ClassVar[bool] = False
    family: ClassVar[str] = ""

    def __init__(self, config: TransformerDVAEConfig):
        super().__init__(config)
        c = config
        sizes = (c.d_model, c.n_heads, c.enc_layers, c.ff_dim, c.activation, c.dropout, c.norm_first, c.positions)
        self.w_encoder = Encoder(c.x_dim, *sizes)
        self.w_head = nn.Linear(c.d_model, 2 * c.w_dim)
        self.z_encoder = Encoder(c.x_dim + c.w_dim, *sizes)
        self.z_head = nn.Linear(c.d_model, 2 * c.z_dim)
        if self.shared_decoder:
            self.decoder = self._decoder_body()
        else:
            self.s_decoder = self._decoder_body()
            self.z_decoder = self._decoder_body()
        self.s_out = nn.Linear(c.d_model, c.x_dim)
        self.z_prior_out = nn.Linear(c.d_model, 2 * c.z_dim)

    def _decoder_body(self) -> DecoderBody:
        c = self.config
        return DecoderBody(
            c.z_dim + c.w_dim,
            c.x_dim,
            c.d_model,
            c.n_heads,
            c.dec_layers,
            c.ff_dim,
            c.activation,
            c.dropout,
            inv_s=c.inv_s,
            no_residual=c.no_residual,
            norm_first=c.norm_first,
            past_encoder=c.past_encoder,
            positions=c.positions,
        )

    @property
    def s_body(self) -> DecoderBody:
        """Decoder body of p(s_t | s_{1:t-1}, z_{1:t}, w)."""
        return self.decoder if self.shared_decoder else self.s_decoder

    @property
    def z_body(self) -> DecoderBody:
        """Decoder body of p(z_t | s_{1:t-1}, z_{1:t-1}, w)."""
        return self.decoder if self.shared_decoder else self.z_decoder

    @property
    def variant(self) -> str:
        """Display name: e.g. ``LigHT-DVAE``, ``HiT-DVAE-Inv-s``, ``HiT-DVAE-Inv-s-NR``."""
        suffix = "-Inv-s" if self.config.inv_s else ""
        return f"{self.family}{suffix}{'-NR' if self.config.no_residual else ''}"

    # ---- features ---------------------------------------------------------------------------

    def features(self, power: Tensor) -> Tensor:
        """Network input of a power spectrogram: ``log(power + feature_eps)``, same shape."""
        return torch.log(power + self.config.feature_eps)

    def _feedback_features(self, logvar: Tensor) -> Tensor:
        """``features(exp(logvar))`` computed without overflow: ``logaddexp(logvar, log eps)``."""
        return torch.logaddexp(logvar, logvar.new_tensor(math.log(self.config.feature_eps)))

    @staticmethod
    def _shift(x: Tensor) -> Tensor:
        """(B, T, D) -> (B, T, D) shifted right by one frame with a zero first frame."""
        return torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)

    @staticmethod
    def _with_w(z: Tensor, w: Tensor) -> Tensor:
        """``[z_t ; w]`` for every t: (B, T, z_dim), (B, w_dim) -> (B, T, z_dim + w_dim)."""
        return torch.cat([z, w[:, None, :].expand(-1, z.shape[1], -1)], dim=-1)

    # ---- inference ---------------------------------------------------------------------------

    def encode_w(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        """q(w | s_{1:T}): features (B, T, x_dim) -> mean, logvar (B, w_dim)."""
        return self.w_head(self.w_encoder(feats).mean(dim=1)).chunk(2, dim=-1)

    def encode_z(self, feats: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
        """q(z_t | s_{1:T}, w) for all t at once: features (B, T, x_dim), w (B, w_dim) -> mean, logvar (B, T, z_dim)."""
        return self.z_head(self.z_encoder(self._with_w(feats, w))).chunk(2, dim=-1)

    def inference_parameters(self) -> list[nn.Parameter]:
        """The parameters of the inference network q: the w and z encoders and their heads."""
        return [p for module in (self.w_encoder, self.w_head, self.z_encoder, self.z_head) for p in module.parameters()]

    # ---- decoding ----------------------------------------------------------------------------

    def _decode_speech(self, z: Tensor, w: Tensor, past_feats: Tensor) -> Tensor:
        """Speech decoder in one pass: logvar (B, T, x_dim); ``past_feats`` (B, T, x_dim) = features of s_{1:T}."""
        return self.s_out(self.s_body(self._with_w(z, w), self._shift(past_feats)))

    def _decode_prior(self, z: Tensor, w: Tensor, past_feats: Tensor) -> tuple[Tensor, Tensor]:
        """z-prior decoder in one pass: mean, logvar (B, T, z_dim) of p(z_t | s_{1:t-1}, z_{1:t-1}, w)."""
        h = self.z_body(self._with_w(self._shift(z), w), self._shift(past_feats))
        return self.z_prior_out(h).chunk(2, dim=-1)

    def decode(self, z: Tensor, w: Tensor, past: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Both decoders, teacher-forced and parallel over time.

        Args:
            z: (B, T, z_dim) frame latents z_{1:T}.  w: (B, w_dim).
            past: (B, T, x_dim) power spectrogram s_{1:T} used as the past (frame t sees s_{1:t-1}).

        Returns:
            logvar (B, T, x_dim) of p(s_t | s_{1:t-1}, z_{1:t}, w) and the prior mean, logvar (B, T, z_dim) of
            p(z_t | s_{1:t-1}, z_{1:t-1}, w).
        """
        feats = self.features(past)
        return (self._decode_speech(z, w, feats), *self._decode_prior(z, w, feats))

    @torch.no_grad()
    def decode_stepwise(
        self,
        w: Tensor,
        frames: int,
        *,
        z: Tensor | None = None,
        past: Tensor | None = None,
        prior: bool = True,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor | None]:
        """Frame-by-frame decoding with key/value caches (O(t) per step); no gradients (runs in inference mode,
        returns ordinary tensors).

        Args:
            w: (B, w_dim).  frames: T.
            z: (B, T, z_dim) latents to decode (posterior), or ``None`` to draw each z_t from the prior decoder
                (``mean + temperature * exp(logvar / 2) * eps``).
            past: (B, T, x_dim) power fed as the past (teacher forcing), or ``None`` to feed back the decoder's
                own output ``s_hat_t = exp(logvar_t)`` (GEN, generation).
            prior: also step the z-prior decoder when ``z`` is given (always done when ``z`` is ``None``).

        Returns:
            dict with ``logvar`` (B, T, x_dim), ``z`` (B, T, z_dim), ``prior_mean`` / ``prior_logvar``
            (B, T, z_dim) or ``None``, and ``past_feats`` (B, T, x_dim): the features of the past actually fed
            (frame t's row is the input that frame t + 1 saw).
        """
        c = self.config
        batch = w.shape[0]
        if z is not None and tuple(z.shape) != (batch, frames, c.z_dim):
            raise ValueError(f"z must be ({batch}, {frames}, {c.z_dim}), got {tuple(z.shape)}")
        if past is not None and tuple(past.shape) != (batch, frames, c.x_dim):
            raise ValueError(f"past must be ({batch}, {frames}, {c.x_dim}), got {tuple(past.shape)}")
        if frames < 1:
            raise ValueError(f"decode_stepwise needs frames >= 1, got {frames}")
        with torch.inference_mode():
            out = self._decode_loop(w, frames, z, past, prior or z is None, temperature, generator)
        # normal tensors (not inference tensors): callers may modify them in place or feed them to autograd
        return {k: None if v is None else v.clone() for k, v in out.items()}

    def _decode_loop(
        self,
        w: Tensor,
        frames: int,
        z: Tensor | None,
        past: Tensor | None,
        run_prior: bool,
        temperature: float,
        generator: torch.Generator | None,
    ) -> dict[str, Tensor | None]:
        """The loop of :meth:`decode_stepwise` (under inference mode), on (batch, features) rows.

        Per frame: the z-prior pass (when ``run_prior``), z_t (given or drawn), the speech pass, the fed-back past.
        For LigHT-DVAE the two passes run one decoder body on the same past speech, so they share its memory
        keys/values (the prior pass computes them, the speech pass reuses them; eval mode only, where both passes
        see the same, dropout-free memory).
        """
        native = self._native_decode_loop(w, frames, z, past, run_prior, temperature, generator)
        if native is not None:
            return native
        c = self.config
        batch, dtype, device = w.shape[0], w.dtype, w.device
        s_body, z_body = self.s_body, self.z_body
        s_cache = s_body.new_cache(batch, frames, dtype=dtype, device=device)
        share = run_prior and self.shared_decoder and not c.inv_s and not self.training
        z_cache = (
            z_body.new_cache(batch, frames, dtype=dtype, device=device, share_memory_with=s_cache if share else None)
            if run_prior
            else None
        )
        prior_w, prior_b = self.z_prior_out.weight.t(), self.z_prior_out.bias
        log_eps = torch.tensor(math.log(c.feature_eps), dtype=dtype, device=device)
        feats = self.features(past) if past is not None else None
        mem = torch.zeros(batch, c.x_dim, dtype=dtype, device=device)  # features of s_0
        z_prev = torch.zeros(batch, c.z_dim, dtype=dtype, device=device)  # z_0
        logvars, zs, priors, fed = [], [], [], []
        for i in range(frames):
            if z_cache is not None:
                h = z_body.step_rows(torch.cat([z_prev, w], -1), mem, z_cache)
                prior_t = torch.addmm(prior_b, h, prior_w)  # [mean ; logvar] of p(z_t | ...)
                priors.append(prior_t)
            if z is not None:
                z_t = z[:, i]
            else:
                eps = torch.randn(batch, c.z_dim, dtype=dtype, device=device, generator=generator)
                z_t = torch.addcmul(
                    prior_t[:, : c.z_dim], torch.exp(0.5 * prior_t[:, c.z_dim :]), eps, value=temperature
                )
            h = s_body.step_rows(torch.cat([z_t, w], -1), None if share else mem, s_cache)
            logvar_t = self.s_out(h)  # the module call: benchmarks time the steps with a hook on it
            mem = feats[:, i] if feats is not None else torch.logaddexp(logvar_t, log_eps)
            logvars.append(logvar_t)
            zs.append(z_t)
            fed.append(mem)
            z_prev = z_t

        prior_all = torch.stack(priors, 1) if priors else None
        return self._loop_outputs(torch.stack(logvars, 1), torch.stack(zs, 1), prior_all, torch.stack(fed, 1))

    def _loop_outputs(self, logvar: Tensor, z: Tensor, prior: Tensor | None, fed: Tensor) -> dict[str, Tensor | None]:
        """The dict of :meth:`decode_stepwise` from a loop's stacked outputs; ``prior``: ``[mean ; logvar]`` of the
        z prior, ``(B, T, 2 z_dim)``, or ``None`` when the prior pass did not run."""
        z_dim = self.config.z_dim
        return {
            "logvar": logvar,
            "z": z,
            "prior_mean": None if prior is None else prior[..., :z_dim],
            "prior_logvar": None if prior is None else prior[..., z_dim:],
            "past_feats": fed,
        }

    def _native_decode_loop(
        self,
        w: Tensor,
        frames: int,
        z: Tensor | None,
        past: Tensor | None,
        run_prior: bool,
        temperature: float,
        generator: torch.Generator | None,
    ) -> dict[str, Tensor | None] | None:
        """:meth:`_decode_loop` in one native call (``lightdvae::transformer_decode``: the same ATen calls in C++,
        the same values bit for bit, no Python per frame), or ``None`` where it does not cover the model (see
        :func:`~lightdvae.models.transformer_layers.native_decoding`) or a forward hook on ``s_out`` must run.
        Inside :func:`lightdvae.ops.sampling.exact_loops` ``(False)`` a CPU batch of at most 4 decodes on raw pointers
        (csrc/transformer/decode_small.h): within float rounding of the exact loop instead of bit for bit."""
        bodies = [self.s_body] if self.shared_decoder or not run_prior else [self.s_body, self.z_body]
        if _hooked(self.s_out) or not native_decoding(bodies, w.dtype, w.device):
            return None
        c = self.config
        (s_flat, eps, act, rope), *rest = [native_weights(body, frames) for body in bodies]
        logvar, zs, prior, fed = torch.ops.lightdvae.transformer_decode(
            w,
            z,
            self.features(past) if past is not None else None,
            s_flat,
            rest[0][0] if rest else [],
            self.s_out.weight,
            self.s_out.bias,
            self.z_prior_out.weight,
            self.z_prior_out.bias,
            frames,
            c.n_heads,
            eps,
            c.norm_first,
            act,
            run_prior,
            math.log(c.feature_eps),
            float(temperature),
            generator,
            exact_loops_enabled(),
            *(rope or (None, None)),  # both bodies rotate by the same tables (same head size)
        )
        return self._loop_outputs(logvar, zs, prior if run_prior else None, fed)

    # ---- method vocabulary ---------------------------------------------------------------------

    def forward(self, power: Tensor, past: str = "gt", sample: bool = True) -> DVAEOutput:
        """Infer w and z from ``power`` (B, T, x_dim) and decode; see the module docstring for ``past``.

        Returns a :class:`DVAEOutput` with logvar (B, T, x_dim), z / z_mean / z_logvar and the prior
        z_mean_p / z_logvar_p (B, T, z_dim), w / w_mean / w_logvar (B, w_dim).
        ``past="gen"`` is an evaluation path: call it in ``eval()`` mode (in ``train()`` mode the cached loop and
        the differentiable recomputation draw different dropout masks).
        """
        check_past(past)
        if power.dim() != 3 or power.shape[-1] != self.config.x_dim:
            raise ValueError(f"power must be (batch, frames, {self.config.x_dim}), got {tuple(power.shape)}")
        feats = self.features(power)
        w_mean, w_logvar = self.encode_w(feats)
        w = reparameterize(w_mean, w_logvar, sample)
        z_mean, z_logvar = self.encode_z(feats, w)
        z = reparameterize(z_mean, z_logvar, sample)
        if past == "gt":
            past_feats = feats
            logvar = self._decode_speech(z, w, past_feats)
        else:
            steps = self.decode_stepwise(w.detach(), power.shape[1], z=z.detach(), prior=False)
            past_feats = steps["past_feats"]  # features of s_hat_{1:T}, detached
            # Without gradients the cached loop's output is the result; with gradients one parallel pass on the
            # fed-back past gives the same values (to float precision) and a graph.
            logvar = self._decode_speech(z, w, past_feats) if torch.is_grad_enabled() else steps["logvar"]
        p_mean, p_logvar = self._decode_prior(z, w, past_feats)
        return DVAEOutput(
            logvar=logvar,
            z=z,
            z_mean=z_mean,
            z_logvar=z_logvar,
            z_mean_p=p_mean,
            z_logvar_p=p_logvar,
            w=w,
            w_mean=w_mean,
            w_logvar=w_logvar,
            extra={"past": past},
        )

    def _generate(
        self, n: int, frames: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """Sample ``n`` power spectrograms (n, frames, x_dim) from the prior, decoded autoregressively.

        ``w = temperature * N(0, I)``; each ``z_t`` from the prior decoder with its std scaled by ``temperature``;
        the speech decoder's ``exp(logvar_t)`` is fed back.  Returns the variances ``exp(logvar)``.
        """
        p = next(self.parameters())
        w = temperature * torch.randn(n, self.config.w_dim, dtype=p.dtype, device=p.device, generator=generator)
        steps = self.decode_stepwise(w, frames, temperature=temperature, generator=generator)
        return torch.exp(steps["logvar"])


class HiTDVAE(_HierarchicalTransformerDVAE):
    """HiT-DVAE for speech: separate decoder bodies for speech and for the z prior."""

    name = "hit-dvae"
    family = "HiT-DVAE"
    config_class = HiTDVAEConfig
    shared_decoder = False


class LigHTDVAE(_HierarchicalTransformerDVAE):
    """LigHT-DVAE: one decoder body shared by the speech decoder and the z prior (separate heads)."""

    name = "light-dvae"
    family = "LigHT-DVAE"
    config_class = LigHTDVAEConfig
    shared_decoder = True


def _hooked(module: nn.Module) -> bool:
    """Whether a forward hook (the module's own or a global one) must see each call of ``module``."""
    from torch.nn.modules import module as module_mod

    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or module_mod._global_forward_hooks
        or module_mod._global_forward_pre_hooks
    )
