"""RVAE: the recurrent VAE, non-causal (bidirectional) and causal.

Leglaive, Alameda-Pineda, Girin & Horaud, "A Recurrent Variational Autoencoder for Speech
Enhancement", ICASSP 2020; configured as in Girin et al., "Dynamical Variational Autoencoders:
A Comprehensive Review", Foundations and Trends in Machine Learning 15(1-2), 2021 (SPEC section 4).

    prior      p(z_t) = N(0, I)
    decoder    p(s_t | z_{1:T}): BiLSTM(16 -> 128 each way) over z, Linear 256 -> 513
    posterior  q(z_t | z_{1:t-1}, s_{1:T}): BiLSTM(513 -> 128 each way) over s = g^x,
               forward LSTM(16 -> 128) over z_{t-1} stepped with the sampling = g^z,
               heads on [g^x_t ; g^z_t] (384) -> 16; z drawn step by step.
    causal     both sequence LSTMs unidirectional: backward over s in inference, forward over z
               in generation (so s_t depends on z_{1:t} only).

1,026,849 parameters non-causal, 553,121 causal, with the published sizes.
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
    lstm_params,
    lstm_step,
    lstm_zero_state,
    run_lstm,
    sequential_posterior,
    validate_common,
)
from lightdvae.ops import sampling


@dataclass
class RVAEConfig(ModelConfig):
    """Sizes of :class:`RVAE` (DVAE ``config.ini`` names in brackets).

    causal: the causal variant; the two ``*_bidirectional`` flags default to ``not causal``.
    x_dims: MLP on s_t before the speech LSTM [dense_x_gx].
    rnn_x_dim, rnn_x_layers, rnn_x_bidirectional: the speech LSTM of the encoder; unidirectional
        means backward in time [dim_RNN_g_x, num_RNN_g_x, bidir_g_x].
    z_dims: MLP on z_{t-1} before the encoder's z LSTM [dense_z_gz].
    rnn_z_dim, rnn_z_layers: the encoder's forward z LSTM [dim_RNN_g_z, num_RNN_g_z].
    posterior_dims: MLP on [g^x_t ; g^z_t] before the heads [dense_g_z].
    h_dims: MLP on z_t before the decoder LSTM [dense_z_h].
    rnn_h_dim, rnn_h_layers, rnn_h_bidirectional: the decoder LSTM over z; unidirectional means
        forward in time [dim_RNN_h, num_RNN_h, bidir_h].
    decoder_dims: MLP on h_t before the output layer [dense_h_x].
    """

    causal: bool = False
    x_dims: list[int] = field(default_factory=list)
    rnn_x_dim: int = 128
    rnn_x_layers: int = 1
    rnn_x_bidirectional: bool | None = None
    z_dims: list[int] = field(default_factory=list)
    rnn_z_dim: int = 128
    rnn_z_layers: int = 1
    posterior_dims: list[int] = field(default_factory=list)
    h_dims: list[int] = field(default_factory=list)
    rnn_h_dim: int = 128
    rnn_h_layers: int = 1
    rnn_h_bidirectional: bool | None = None
    decoder_dims: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        validate_common(self)
        owner = type(self).__name__
        if not isinstance(self.causal, bool):
            raise ValueError(f"{owner}.causal must be True or False, got {self.causal!r}")
        for name in ("rnn_x_bidirectional", "rnn_h_bidirectional"):
            value = getattr(self, name)
            if value is None:
                setattr(self, name, not self.causal)
            elif not isinstance(value, bool):
                raise ValueError(f"{owner}.{name} must be True, False or None, got {value!r}")
            elif value and self.causal:
                raise ValueError(f"{owner}: causal=True needs {name}=False (a causal RVAE has no bidirectional LSTM)")
        if not self.causal and not (self.rnn_x_bidirectional or self.rnn_h_bidirectional):
            raise ValueError(f"{owner}: both LSTMs unidirectional is the causal RVAE; use causal=True ('rvae-causal')")
        for name in ("x_dims", "z_dims", "posterior_dims", "h_dims", "decoder_dims"):
            setattr(self, name, list(getattr(self, name)))
        check_dims(
            owner,
            x_dims=self.x_dims,
            z_dims=self.z_dims,
            posterior_dims=self.posterior_dims,
            h_dims=self.h_dims,
            decoder_dims=self.decoder_dims,
        )
        check_positive(
            owner,
            rnn_x_dim=self.rnn_x_dim,
            rnn_x_layers=self.rnn_x_layers,
            rnn_z_dim=self.rnn_z_dim,
            rnn_z_layers=self.rnn_z_layers,
            rnn_h_dim=self.rnn_h_dim,
            rnn_h_layers=self.rnn_h_layers,
        )


class RVAE(DVAE):
    """Recurrent VAE.  Inputs ``(batch, frames, x_dim)``; sequences run time-major inside.

    Recurrent cell (what a native sampling loop mirrors): :meth:`posterior_cell`, one step of the
    encoder's z LSTM and the posterior heads, given the precomputed speech features ``g^x_t``.
    :meth:`sample_posterior` is the loop over time: the native loop
    ``lightdvae.ops.sampling.rvae_posterior`` when the extension is built, the Python loop here
    with ``LIGHTDVAE_BACKEND=ref`` or active dropout.  Generation needs no loop (i.i.d. prior).
    """

    name = "rvae"
    config_class = RVAEConfig
    sees_past_speech = False
    #: How the native posterior loop steps the z LSTM: with ATen's LSTM cell (False, the default;
    #: samples within float rounding of the Python loop, ~1e-7, which this loop does not amplify) or
    #: with nn.LSTM's own kernel (True: bit-identical to the Python loop, but slower for this small
    #: LSTM: about 1.7x at batch 1 without gradients, 2x in training, where oneDNN reorders the
    #: weights at every step).  Set it on an instance to change one model.
    exact_lstm: bool = False

    def __init__(self, config: RVAEConfig):
        super().__init__(config)
        c = config
        # inference
        self.x_embed = MLP(c.x_dim, c.x_dims, c.activation, c.dropout)
        self.rnn_x = nn.LSTM(self.x_embed.out_dim, c.rnn_x_dim, c.rnn_x_layers, bidirectional=c.rnn_x_bidirectional)
        self.z_embed = MLP(c.z_dim, c.z_dims, c.activation, c.dropout)
        self.rnn_z = nn.LSTM(self.z_embed.out_dim, c.rnn_z_dim, c.rnn_z_layers)
        gx_dim = c.rnn_x_dim * (2 if c.rnn_x_bidirectional else 1)
        self.posterior_mlp = MLP(gx_dim + c.rnn_z_dim, c.posterior_dims, c.activation, c.dropout)
        self.posterior_mean = nn.Linear(self.posterior_mlp.out_dim, c.z_dim)
        self.posterior_logvar = nn.Linear(self.posterior_mlp.out_dim, c.z_dim)
        # generation
        self.h_embed = MLP(c.z_dim, c.h_dims, c.activation, c.dropout)
        self.rnn_h = nn.LSTM(self.h_embed.out_dim, c.rnn_h_dim, c.rnn_h_layers, bidirectional=c.rnn_h_bidirectional)
        h_dim = c.rnn_h_dim * (2 if c.rnn_h_bidirectional else 1)
        self.decoder = MLP(h_dim, c.decoder_dims, c.activation, c.dropout)
        self.decoder_logvar = nn.Linear(self.decoder.out_dim, c.x_dim)

    # ---------------------------------------------------------------- cells

    def encode_speech(self, power: Tensor) -> Tensor:
        """Speech features ``g^x (batch, frames, gx_dim)`` of ``power (batch, frames, x_dim)``:
        ``[forward ; backward]`` LSTM outputs (non-causal) or the backward LSTM's (causal)."""
        return self._encode_speech_tm(power.transpose(0, 1).contiguous()).transpose(0, 1)

    def _encode_speech_tm(self, x: Tensor) -> Tensor:
        return run_lstm(self.rnn_x, self.x_embed(x), backward=not self.config.rnn_x_bidirectional)

    def posterior_cell(self, gx_t: Tensor, z_prev: Tensor, state: LSTMState) -> tuple[Tensor, Tensor, LSTMState]:
        """One step of q.

        Args:
            gx_t: speech features of frame t, ``(batch, gx_dim)``.
            z_prev: z_{t-1}, ``(batch, z_dim)`` (zeros at t = 1).
            state: ``(h, c)`` of the z LSTM, each ``(rnn_z_layers, batch, rnn_z_dim)`` (zeros at t = 1).

        Returns ``(mean, logvar, state)``: ``g^z_t = LSTM_z(z_embed(z_{t-1}))``, heads on ``[g^x_t ; g^z_t]``.
        """
        gz_t, state = lstm_step(self.rnn_z, self.z_embed(z_prev), state)
        hidden = self.posterior_mlp(torch.cat([gx_t, gz_t], dim=-1))
        return self.posterior_mean(hidden), self.posterior_logvar(hidden), state

    def inference_parameters(self) -> list[nn.Parameter]:
        """The parameters of the inference network q: the speech embedding and LSTM, the z embedding and LSTM, the
        posterior MLP and heads."""
        return [
            p
            for module in (
                self.x_embed,
                self.rnn_x,
                self.z_embed,
                self.rnn_z,
                self.posterior_mlp,
                self.posterior_mean,
                self.posterior_logvar,
            )
            for p in module.parameters()
        ]

    def decode(self, z: Tensor) -> Tensor:
        """Log-variance ``(batch, frames, x_dim)`` of p(s | z) for ``z (batch, frames, z_dim)``."""
        return _batch_first(self._decode_tm(z.transpose(0, 1).contiguous()))

    def _decode_tm(self, z: Tensor) -> Tensor:
        h = run_lstm(self.rnn_h, self.h_embed(z))
        return self.decoder_logvar(self.decoder(h))

    # ---------------------------------------------------------------- loops

    def sample_posterior(
        self, gx: Tensor, sample: bool = True, eps: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Draw z_1..z_T from q step by step (:func:`~lightdvae.models.layers.sequential_posterior`; zero LSTM
        state), ``gx`` being :meth:`encode_speech`'s ``(batch, frames, gx_dim)``.  Returns ``z, mean, logvar``,
        ``(batch, frames, z_dim)``."""

        def native(eps: Tensor | None):
            return sampling.rvae_posterior(
                gx,
                eps,
                linear_params(self.z_embed),
                lstm_params(self.rnn_z),
                linear_params(self.posterior_mlp),
                linear_params(self.posterior_mean, self.posterior_logvar),
                activation=self.config.activation,
                exact_lstm=self.exact_lstm,
            )

        state = lstm_zero_state(self.rnn_z, gx.shape[0], gx)

        def cell(gx_t: Tensor, z_prev: Tensor) -> tuple[Tensor, Tensor]:
            nonlocal state
            mean, logvar, state = self.posterior_cell(gx_t, z_prev, state)
            return mean, logvar

        return sequential_posterior(self, "rvae_posterior", gx, sample, eps, generator, native, cell)

    def sample_prior(
        self,
        n: int,
        frames: int,
        temperature: float = 1.0,
        eps: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``z ~ N(0, temperature^2 I)``, ``(n, frames, z_dim)``; ``eps`` is the noise when given."""
        like = self.decoder_logvar.weight
        zeros = like.new_zeros(n, frames, self.config.z_dim)
        return draw(zeros, zeros, True, check_eps(eps, n, frames, self.config.z_dim, like), generator, temperature)

    # ---------------------------------------------------------------- vocabulary

    def forward(
        self,
        power: Tensor,
        past: str = "gt",
        sample: bool = True,
        eps: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> DVAEOutput:
        """Infer z from ``power (batch, frames, x_dim)`` and decode it.

        ``past`` has no effect (the decoder sees no past speech).  ``sample=False``: z is the
        posterior mean at every step.  ``eps (batch, frames, z_dim)``: the posterior noise.
        The prior N(0, I) is reported as ``z_mean_p = z_logvar_p = None``.
        """
        check_past(past)
        check_power(power, self.config.x_dim)
        gx = self._encode_speech_tm(power.transpose(0, 1).contiguous())
        z, z_mean, z_logvar = self.sample_posterior(gx.transpose(0, 1), sample, eps, generator)
        logvar = self._decode_tm(z.transpose(0, 1))
        return DVAEOutput(
            logvar=_batch_first(logvar), z=z.contiguous(), z_mean=z_mean.contiguous(), z_logvar=z_logvar.contiguous()
        )

    def _generate(
        self, n: int, frames: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """Variance ``exp(logvar)`` ``(n, frames, x_dim)`` decoded from ``z ~ N(0, temperature^2 I)``."""
        return torch.exp(self.decode(self.sample_prior(n, frames, temperature, generator=generator)))


def _batch_first(t: Tensor) -> Tensor:
    return t.transpose(0, 1).contiguous()
