"""SRNN: the stochastic recurrent neural network, trained with teacher forcing or scheduled sampling.

Fraccaro, Sønderby, Paquet & Winther, "Sequential Neural Models with Stochastic Layers",
NeurIPS 2016; configured as in Girin et al., "Dynamical Variational Autoencoders: A Comprehensive
Review", Foundations and Trends in Machine Learning 15(1-2), 2021; scheduled sampling (Bengio et al.,
NeurIPS 2015) as in Lin et al., "Speech Modeling with a Hierarchical Transformer Dynamical VAE",
ICASSP 2023 (SPEC section 4).

    deterministic  h_t = LSTM(256 -> 128)(tanh(L 513 -> 256 (s_{t-1}))), s_0 = 0
    prior          p(z_t | z_{t-1}, h_t): MLP [h_t ; z_{t-1}] 144 -> 64 -> 32 (tanh), heads 32 -> 16
    decoder        p(s_t | z_t, h_t): MLP [h_t ; z_t] 144 -> 256 (tanh), Linear 256 -> 513
    posterior      q(z_t | z_{t-1}, g_t): g = backward LSTM(256 -> 128) over tanh(L 641 -> 256 ([h_t ; s_t])),
                   MLP [g_t ; z_{t-1}] 144 -> 64 -> 32 (tanh), heads 32 -> 16; z drawn step by step

Two deterministic paths.  h_t from the true past s_{1:t-1} feeds the posterior always.  The "own
past" path runs the same LSTM on the model's own past predictions exp(logvar_{t-1}) (detached).
The decoder takes the true-past h (``past="gt"``, teacher forcing) or the own-past h
(``past="gen"``); scheduled sampling (``ss_prob``) picks the own-past h at each step with
probability ``ss_prob``, one draw per step shared across the batch.  The prior takes the own-past
h (``prior_on_own_past=True``, the published scheduled-sampling SRNN: its code and its golden
vectors do so in GEN and GT alike; ``lightdvae train --training ss`` and the checkpoint importer
set it) or the same h as the decoder (``False``, the default: the classic SRNN, trained with
teacher forcing, whose teacher-forced pass is then fully parallel).

884,993 parameters with the published sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lightdvae.models.base import DVAE, DVAEOutput, ModelConfig, check_past
from lightdvae.models.layers import (
    MLP,
    LSTMState,
    check_dims,
    check_eps,
    check_positive,
    check_power,
    draw,
    linear_params,
    loop_noise,
    lstm_params,
    lstm_step,
    lstm_zero_state,
    run_lstm,
    sequential_posterior,
    shift_right,
    use_native_loop,
    validate_common,
)
from lightdvae.ops import sampling


@dataclass
class SRNNConfig(ModelConfig):
    """Sizes of :class:`SRNN` (DVAE ``config.ini`` names in brackets).

    h_dims: MLP on s_{t-1} before the deterministic LSTM [dense_x_h].
    rnn_h_dim, rnn_h_layers: the forward deterministic LSTM giving h_t [dim_RNN_h, num_RNN_h].
    g_dims: MLP on [h_t ; s_t] before the encoder's backward LSTM [dense_hx_g].
    rnn_g_dim, rnn_g_layers: the encoder's backward LSTM giving g_t [dim_RNN_g, num_RNN_g].
    posterior_dims: MLP on [g_t ; z_{t-1}] before the posterior heads [dense_gz_z].
    prior_dims: MLP on [h_t ; z_{t-1}] before the prior heads [dense_hz_z].
    decoder_dims: MLP on [h_t ; z_t] before the output layer [dense_hz_x].
    prior_on_own_past: the prior's h_t comes from the model's own past predictions in every mode
        (True, the published SRNN trained with scheduled sampling), or is the decoder's h (False,
        the default, the classic teacher-forced SRNN).
    """

    h_dims: list[int] = field(default_factory=lambda: [256])
    rnn_h_dim: int = 128
    rnn_h_layers: int = 1
    g_dims: list[int] = field(default_factory=lambda: [256])
    rnn_g_dim: int = 128
    rnn_g_layers: int = 1
    posterior_dims: list[int] = field(default_factory=lambda: [64, 32])
    prior_dims: list[int] = field(default_factory=lambda: [64, 32])
    decoder_dims: list[int] = field(default_factory=lambda: [256])
    prior_on_own_past: bool = False

    def __post_init__(self) -> None:
        validate_common(self)
        owner = type(self).__name__
        for name in ("h_dims", "g_dims", "posterior_dims", "prior_dims", "decoder_dims"):
            setattr(self, name, list(getattr(self, name)))
        check_dims(
            owner,
            h_dims=self.h_dims,
            g_dims=self.g_dims,
            posterior_dims=self.posterior_dims,
            prior_dims=self.prior_dims,
            decoder_dims=self.decoder_dims,
        )
        check_positive(
            owner,
            rnn_h_dim=self.rnn_h_dim,
            rnn_h_layers=self.rnn_h_layers,
            rnn_g_dim=self.rnn_g_dim,
            rnn_g_layers=self.rnn_g_layers,
        )
        if not isinstance(self.prior_on_own_past, bool):
            raise ValueError(f"{owner}.prior_on_own_past must be True or False, got {self.prior_on_own_past!r}")


class SRNN(DVAE):
    """Stochastic RNN.  Inputs ``(batch, frames, x_dim)``.

    Recurrent cells (what a native loop mirrors), each one step for a batch:
    :meth:`h_cell` (s_{t-1}, LSTM state -> h_t), :meth:`posterior_cell` (g_t, z_{t-1} -> q stats),
    :meth:`prior` (h_t, z_{t-1} -> p stats) and :meth:`decode` (h_t, z_t -> log-variance); the
    last two also work on whole sequences.  The loops: :meth:`sample_posterior`,
    :meth:`decode_own_past` (GEN, GT with the own-past prior, scheduled sampling) and
    :meth:`sample_prior` (generation).

    Sequence-level layers run time-major inside (as the reference code does), so that imported
    checkpoints reproduce the reference's float32 arithmetic exactly: the own-past loop feeds
    ``exp(logvar)`` back and amplifies rounding differences (about 1e-5 relative from one ulp).

    The three loops run natively (``lightdvae.ops.sampling.srnn_posterior``, ``srnn_own_past``,
    ``srnn_prior``) when the extension is built; the Python loops here run with
    ``LIGHTDVAE_BACKEND=ref`` or active dropout.
    """

    name = "srnn"
    config_class = SRNNConfig
    sees_past_speech = True
    #: How the native own-past and generation loops step the deterministic LSTM: with nn.LSTM's own
    #: kernel (True, the default: bit-identical to the Python loops, so imported checkpoints still
    #: reproduce the published golden vectors; the exp(logvar) feedback amplifies any float32 rounding
    #: difference to ~1e-5 relative) or with ATen's LSTM cell (False: about 1.3x faster at batch 1,
    #: the same at batch 16, a few percent faster in scheduled-sampling training).  Set it on an
    #: instance to change one model.
    exact_lstm: bool = True

    def __init__(self, config: SRNNConfig):
        super().__init__(config)
        c = config
        zd = c.z_dim
        # deterministic path (time-major LSTMs)
        self.h_embed = MLP(c.x_dim, c.h_dims, c.activation, c.dropout)
        self.rnn_h = nn.LSTM(self.h_embed.out_dim, c.rnn_h_dim, c.rnn_h_layers)
        # inference
        self.g_embed = MLP(c.rnn_h_dim + c.x_dim, c.g_dims, c.activation, c.dropout)
        self.rnn_g = nn.LSTM(self.g_embed.out_dim, c.rnn_g_dim, c.rnn_g_layers)
        self.posterior_mlp = MLP(c.rnn_g_dim + zd, c.posterior_dims, c.activation, c.dropout)
        self.posterior_mean = nn.Linear(self.posterior_mlp.out_dim, zd)
        self.posterior_logvar = nn.Linear(self.posterior_mlp.out_dim, zd)
        # prior
        self.prior_mlp = MLP(c.rnn_h_dim + zd, c.prior_dims, c.activation, c.dropout)
        self.prior_mean = nn.Linear(self.prior_mlp.out_dim, zd)
        self.prior_logvar = nn.Linear(self.prior_mlp.out_dim, zd)
        # decoder
        self.decoder = MLP(c.rnn_h_dim + zd, c.decoder_dims, c.activation, c.dropout)
        self.decoder_logvar = nn.Linear(self.decoder.out_dim, c.x_dim)

    # ---------------------------------------------------------------- cells

    def deterministic_h(self, power: Tensor) -> Tensor:
        """h from the true past: the LSTM over ``s_{t-1}`` (s_0 = 0).  ``(batch, frames, x_dim) ->
        (batch, frames, rnn_h_dim)`` (a batch-first view of time-major storage)."""
        x = power.transpose(0, 1).contiguous()
        return self._deterministic_h_tm(x).transpose(0, 1)

    def _deterministic_h_tm(self, x: Tensor) -> Tensor:
        return run_lstm(self.rnn_h, self.h_embed(shift_right(x, dim=0)))

    def _encode_speech_tm(self, x: Tensor, h: Tensor) -> Tensor:
        return run_lstm(self.rnn_g, self.g_embed(torch.cat([h, x], dim=-1)), backward=True)

    def h_cell(self, s_prev: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        """One step of the deterministic path: ``s_prev (batch, x_dim)``, LSTM ``state`` (each
        ``(rnn_h_layers, batch, rnn_h_dim)``) -> ``h_t (batch, rnn_h_dim)`` and the new state."""
        return lstm_step(self.rnn_h, self.h_embed(s_prev), state)

    def encode_speech(self, power: Tensor, h: Tensor) -> Tensor:
        """``g (batch, frames, rnn_g_dim)``: the backward LSTM over ``g_embed([h_t ; s_t])``, from
        ``power (batch, frames, x_dim)`` and the true-past ``h (batch, frames, rnn_h_dim)``."""
        x = power.transpose(0, 1).contiguous()
        return self._encode_speech_tm(x, h.transpose(0, 1).contiguous()).transpose(0, 1)

    def posterior_cell(self, g_t: Tensor, z_prev: Tensor) -> tuple[Tensor, Tensor]:
        """One step of q: ``g_t (batch, rnn_g_dim)``, ``z_prev (batch, z_dim)`` -> ``(mean, logvar)``."""
        hidden = self.posterior_mlp(torch.cat([g_t, z_prev], dim=-1))
        return self.posterior_mean(hidden), self.posterior_logvar(hidden)

    def inference_parameters(self) -> list[nn.Parameter]:
        """The parameters of the inference network q: the [h_t ; s_t] embedding, the backward LSTM, the posterior MLP
        and heads (the deterministic path h, shared with the generative model, is not part of it)."""
        return [
            p
            for module in (self.g_embed, self.rnn_g, self.posterior_mlp, self.posterior_mean, self.posterior_logvar)
            for p in module.parameters()
        ]

    def prior(self, h: Tensor, z_prev: Tensor) -> tuple[Tensor, Tensor]:
        """p(z_t | z_{t-1}, h_t): ``h (..., rnn_h_dim)``, ``z_prev (..., z_dim)`` -> ``(mean, logvar)``."""
        hidden = self.prior_mlp(torch.cat([h, z_prev], dim=-1))
        return self.prior_mean(hidden), self.prior_logvar(hidden)

    def decode(self, h: Tensor, z: Tensor) -> Tensor:
        """p(s_t | z_t, h_t): ``h (..., rnn_h_dim)``, ``z (..., z_dim)`` -> log-variance ``(..., x_dim)``."""
        return self.decoder_logvar(self.decoder(torch.cat([h, z], dim=-1)))

    # ---------------------------------------------------------------- loops

    def sample_posterior(
        self, g: Tensor, sample: bool = True, eps: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Draw z_1..z_T from q step by step (:func:`~lightdvae.models.layers.sequential_posterior`), ``g`` being
        :meth:`encode_speech`'s ``(batch, frames, rnn_g_dim)``.  Returns ``z, mean, logvar``,
        ``(batch, frames, z_dim)``."""

        def native(eps: Tensor | None):
            return sampling.srnn_posterior(
                g,
                eps,
                linear_params(self.posterior_mlp),
                linear_params(self.posterior_mean, self.posterior_logvar),
                activation=self.config.activation,
            )

        return sequential_posterior(self, "srnn_posterior", g, sample, eps, generator, native, self.posterior_cell)

    def decode_own_past(self, z: Tensor, h_true: Tensor, use_own: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Decode ``z`` while running the deterministic path on the model's own predictions.

        ``h_own_t`` is the LSTM state after the model's past predictions ``exp(logvar_{t-1})``
        (detached; s_0 = 0).  At step t the decoder uses ``h_own_t`` where ``use_own[t]`` and the
        true-past ``h_true[:, t]`` otherwise; the next input is the prediction just made.

        Args:
            z: latents ``(batch, frames, z_dim)``.
            h_true: h from the true past, ``(batch, frames, rnn_h_dim)`` (:meth:`deterministic_h`).
            use_own: bool ``(frames,)``, one decision per step shared across the batch.

        Returns ``(logvar (batch, frames, x_dim), h_used, h_own)`` (h's ``(batch, frames, rnn_h_dim)``),
        ``h_used`` being the h that the decoder used at each step; views of time-major storage.
        """
        batch, frames, _ = z.shape
        flags = [bool(f) for f in use_own.tolist()]
        if len(flags) != frames:
            raise ValueError(f"use_own must have one entry per frame ({frames}), got {len(flags)}")
        if use_native_loop(self, "srnn_own_past", z):
            return sampling.srnn_own_past(
                z,
                h_true,
                flags,
                linear_params(self.h_embed),
                lstm_params(self.rnn_h),
                linear_params(self.decoder),
                linear_params(self.decoder_logvar),
                activation=self.config.activation,
                exact_lstm=self.exact_lstm,
            )
        state = lstm_zero_state(self.rnn_h, batch, z)
        s_prev = z.new_zeros(batch, self.config.x_dim)
        logvars, used, own = [], [], []
        for t in range(frames):
            h_own, state = self.h_cell(s_prev, state)
            h_t = h_own if flags[t] else h_true[:, t]
            logvar_t = self.decode(h_t, z[:, t])
            s_prev = torch.exp(logvar_t.detach())
            logvars.append(logvar_t)
            used.append(h_t)
            own.append(h_own)
        return tuple(torch.stack(v, 0).transpose(0, 1) for v in (logvars, used, own))

    def sample_prior(
        self,
        n: int,
        frames: int,
        temperature: float = 1.0,
        eps: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Autoregressive generation from the prior, ``n`` sequences of ``frames`` frames.

        Each step: ``h_t = h_cell(s_hat_{t-1})``, ``z_t ~ p(z_t | z_{t-1}, h_t)`` (noise scaled by
        ``temperature``; ``eps (n, frames, z_dim)`` is the noise when given), ``logvar_t =
        decode(h_t, z_t)``, ``s_hat_t = exp(logvar_t)``; s_hat_0 = 0, z_0 = 0.

        Returns ``(z (n, frames, z_dim), logvar (n, frames, x_dim))``.
        """
        like = self.decoder_logvar.weight
        eps = check_eps(eps, n, frames, self.config.z_dim, like)
        if use_native_loop(self, "srnn_prior", like):
            if eps is None:
                eps = loop_noise(n, frames, self.config.z_dim, like, generator)
            return sampling.srnn_prior(
                eps,
                linear_params(self.h_embed),
                lstm_params(self.rnn_h),
                linear_params(self.prior_mlp),
                linear_params(self.prior_mean, self.prior_logvar),
                linear_params(self.decoder),
                linear_params(self.decoder_logvar),
                activation=self.config.activation,
                temperature=temperature,
                exact_lstm=self.exact_lstm,
            )
        state = lstm_zero_state(self.rnn_h, n, like)
        s_prev = like.new_zeros(n, self.config.x_dim)
        z_t = like.new_zeros(n, self.config.z_dim)
        zs, logvars = [], []
        for t in range(frames):
            h_t, state = self.h_cell(s_prev, state)
            mean, logvar = self.prior(h_t, z_t)
            z_t = draw(mean, logvar, True, None if eps is None else eps[:, t], generator, temperature)
            logvar_t = self.decode(h_t, z_t)
            s_prev = torch.exp(logvar_t)
            zs.append(z_t)
            logvars.append(logvar_t)
        return torch.stack(zs, 1), torch.stack(logvars, 1)

    # ---------------------------------------------------------------- vocabulary

    @staticmethod
    def own_past_schedule(
        frames: int, past: str = "gt", ss_prob: float | None = None, generator: torch.Generator | None = None
    ) -> Tensor | None:
        """The decoder's per-step choice ``use_own (frames,)`` bool, or None for pure teacher forcing.

        ``past="gen"``: every step (``ss_prob`` must be None or 1).  ``past="gt"``: none when
        ``ss_prob`` is None or 0, else one Bernoulli(``ss_prob``) draw per step from ``generator`` (on
        its device, CPU or CUDA); the decisions are returned on the CPU.
        """
        check_past(past)
        if ss_prob is not None:
            if isinstance(ss_prob, bool) or not isinstance(ss_prob, (int, float)) or not 0.0 <= ss_prob <= 1.0:
                raise ValueError(f"ss_prob must be a probability in [0, 1] or None, got {ss_prob!r}")
            if past == "gen" and ss_prob != 1.0:
                raise ValueError(
                    f"past='gen' always feeds back the model's own past; ss_prob={ss_prob} needs past='gt'"
                )
        if past == "gen" or ss_prob == 1.0:
            return torch.ones(frames, dtype=torch.bool)
        if not ss_prob:
            return None
        device = generator.device if generator is not None else None
        return (torch.rand(frames, generator=generator, device=device) < ss_prob).cpu()

    def forward(
        self,
        power: Tensor,
        past: str = "gt",
        sample: bool = True,
        ss_prob: float | None = None,
        eps: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> DVAEOutput:
        """Infer z from ``power (batch, frames, x_dim)`` and decode it.

        Args:
            past: ``"gt"`` gives the decoder h from the true past (teacher forcing); ``"gen"`` h
                from the model's own past predictions, one frame at a time.
            sample: False takes every latent's mean (deterministic mode).
            ss_prob: scheduled sampling with ``past="gt"``: at each step, with this probability
                (one draw per step, shared across the batch, from ``generator``), the
                own-past h replaces the true-past h for the decoder.  None or 0 is teacher forcing,
                1 the same as ``past="gen"``.
            eps: posterior noise ``(batch, frames, z_dim)``; drawn with ``generator`` when omitted.

        The posterior always uses the true past; the prior uses the own-past h or the decoder's h
        (config ``prior_on_own_past``).  ``extra["use_own"]`` holds the decoder's per-step choices
        (bool ``(frames,)``) when the own past was used.
        """
        check_power(power, self.config.x_dim)
        frames = power.shape[1]
        use_own = self.own_past_schedule(frames, past, ss_prob, generator)
        x = power.transpose(0, 1).contiguous()
        h_true = self._deterministic_h_tm(x)
        g = self._encode_speech_tm(x, h_true)
        z, z_mean, z_logvar = self.sample_posterior(g.transpose(0, 1), sample, eps, generator)
        extra = {}
        if use_own is None and not self.config.prior_on_own_past:
            h_prior = h_true
            logvar = self.decode(h_true, z.transpose(0, 1))
        else:
            flags = torch.zeros(frames, dtype=torch.bool) if use_own is None else use_own
            logvar, h_used, h_own = self.decode_own_past(z, h_true.transpose(0, 1), flags)
            h_prior = (h_own if self.config.prior_on_own_past else h_used).transpose(0, 1)
            logvar = logvar.transpose(0, 1)
            if use_own is not None:
                extra["use_own"] = use_own
        z_mean_p, z_logvar_p = self.prior(h_prior, shift_right(z.transpose(0, 1), dim=0))

        def batch_first(t: Tensor) -> Tensor:
            return t.transpose(0, 1).contiguous()

        return DVAEOutput(
            logvar=batch_first(logvar),
            z=z.contiguous(),
            z_mean=z_mean.contiguous(),
            z_logvar=z_logvar.contiguous(),
            z_mean_p=batch_first(z_mean_p),
            z_logvar_p=batch_first(z_logvar_p),
            extra=extra,
        )

    def _generate(
        self, n: int, frames: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """Variance ``exp(logvar)`` ``(n, frames, x_dim)`` generated autoregressively from the prior."""
        return torch.exp(self.sample_prior(n, frames, temperature, generator=generator)[1])
