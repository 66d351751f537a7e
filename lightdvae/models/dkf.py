"""DKF: the deep Kalman filter with a gated transition and a backward-LSTM ("structured") posterior.

Krishnan, Shalit & Sontag, "Structured Inference Networks for Nonlinear State Space Models",
AAAI 2017; configured as in Girin et al., "Dynamical Variational Autoencoders: A Comprehensive
Review", Foundations and Trends in Machine Learning 15(1-2), 2021 (SPEC section 4).

    prior      p(z_t | z_{t-1}), z_0 = 0 (gated transition, every layer 16 -> 16):
               gate = sigmoid(L(ReLU(L(z)))), proposal = L(ReLU(L(z))),
               mean = (1 - gate) * L(z) + gate * proposal, var = softplus(L(ReLU(proposal)))
    decoder    p(s_t | z_t): MLP 16 -> 32 -> 64 -> 128 -> 256 (tanh), Linear 256 -> 513
    posterior  q(z_t | z_{t-1}, s_{t:T}): g^x = backward LSTM(256 -> 128) over tanh(L 513 -> 256 (s));
               g_t = (tanh(L 32 -> 128 (tanh(L 16 -> 32 (z_{t-1})))) + g^x_t) / 2;
               MLP 128 -> 32 (tanh), heads 32 -> 16; z drawn step by step.

516,641 parameters with the published sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightdvae.models.base import DVAE, DVAEOutput, ModelConfig, check_past
from lightdvae.models.layers import (
    MLP,
    check_dims,
    check_eps,
    check_positive,
    check_power,
    draw,
    linear_params,
    loop_noise,
    run_lstm,
    sequential_posterior,
    shift_right,
    use_native_loop,
    validate_common,
)
from lightdvae.ops import sampling


@dataclass
class DKFConfig(ModelConfig):
    """Sizes of :class:`DKF` (DVAE ``config.ini`` names in brackets).

    x_dims: MLP on s_t before the LSTM [dense_x_gx].
    rnn_dim, rnn_layers: the LSTM over the embedded speech [dim_RNN_gx, num_RNN_gx].
    rnn_bidirectional: a bidirectional LSTM instead of a backward one; then
        g_t = (z-term + forward + backward) / 3 [bidir_gx].
    z_to_g_dims: hidden layers of the MLP z_{t-1} -> rnn_dim [dense_ztm1_g].
    posterior_dims: MLP g_t -> posterior heads [dense_g_z].
    decoder_dims: MLP z_t -> output layer [dense_z_x].
    """

    x_dims: list[int] = field(default_factory=lambda: [256])
    rnn_dim: int = 128
    rnn_layers: int = 1
    rnn_bidirectional: bool = False
    z_to_g_dims: list[int] = field(default_factory=lambda: [32])
    posterior_dims: list[int] = field(default_factory=lambda: [32])
    decoder_dims: list[int] = field(default_factory=lambda: [32, 64, 128, 256])

    def __post_init__(self) -> None:
        validate_common(self)
        owner = type(self).__name__
        for name in ("x_dims", "z_to_g_dims", "posterior_dims", "decoder_dims"):
            setattr(self, name, list(getattr(self, name)))
        check_dims(
            owner,
            x_dims=self.x_dims,
            z_to_g_dims=self.z_to_g_dims,
            posterior_dims=self.posterior_dims,
            decoder_dims=self.decoder_dims,
        )
        check_positive(owner, rnn_dim=self.rnn_dim, rnn_layers=self.rnn_layers)
        if not isinstance(self.rnn_bidirectional, bool):
            raise ValueError(f"{owner}.rnn_bidirectional must be True or False, got {self.rnn_bidirectional!r}")


class DKF(DVAE):
    """Deep Kalman filter.  Inputs ``(batch, frames, x_dim)``; sequences run time-major inside.

    Recurrent cells (what a native sampling loop mirrors):
    :meth:`posterior_cell` (one step of q, given the precomputed speech features ``g^x_t``) and
    :meth:`transition` (one step of the prior).  :meth:`sample_posterior` and :meth:`sample_prior`
    are the loops over time: the native loops ``lightdvae.ops.sampling.dkf_posterior`` /
    ``dkf_prior`` when the extension is built (bit-identical to the Python loops here, which
    ``LIGHTDVAE_BACKEND=ref`` and active dropout select).
    """

    name = "dkf"
    config_class = DKFConfig
    sees_past_speech = False

    def __init__(self, config: DKFConfig):
        super().__init__(config)
        c = config
        zd = c.z_dim
        # inference
        self.x_embed = MLP(c.x_dim, c.x_dims, c.activation, c.dropout)
        self.rnn_x = nn.LSTM(self.x_embed.out_dim, c.rnn_dim, c.rnn_layers, bidirectional=c.rnn_bidirectional)
        self.z_to_g = MLP(zd, [*c.z_to_g_dims, c.rnn_dim], c.activation, c.dropout)
        self.posterior_mlp = MLP(c.rnn_dim, c.posterior_dims, c.activation, c.dropout)
        self.posterior_mean = nn.Linear(self.posterior_mlp.out_dim, zd)
        self.posterior_logvar = nn.Linear(self.posterior_mlp.out_dim, zd)
        # gated transition (prior)
        self.gate_in = nn.Linear(zd, zd)
        self.gate_out = nn.Linear(zd, zd)
        self.proposal_in = nn.Linear(zd, zd)
        self.proposal_out = nn.Linear(zd, zd)
        self.prior_mean = nn.Linear(zd, zd)
        self.prior_var = nn.Linear(zd, zd)
        # decoder
        self.decoder = MLP(zd, c.decoder_dims, c.activation, c.dropout)
        self.decoder_logvar = nn.Linear(self.decoder.out_dim, c.x_dim)

    # ---------------------------------------------------------------- cells

    def encode_speech(self, power: Tensor) -> Tensor:
        """Speech features ``g^x (batch, frames, rnn_dim)``: the backward LSTM's output (the sum of
        both directions when bidirectional) over the embedded ``power (batch, frames, x_dim)``."""
        return self._encode_speech_tm(power.transpose(0, 1).contiguous()).transpose(0, 1)

    def _encode_speech_tm(self, x: Tensor) -> Tensor:
        emb = self.x_embed(x)
        if self.config.rnn_bidirectional:
            out = run_lstm(self.rnn_x, emb)
            return out[..., : self.config.rnn_dim] + out[..., self.config.rnn_dim :]
        return run_lstm(self.rnn_x, emb, backward=True)

    def posterior_cell(self, gx_t: Tensor, z_prev: Tensor) -> tuple[Tensor, Tensor]:
        """One step of q: ``gx_t (batch, rnn_dim)``, ``z_prev (batch, z_dim)`` -> ``(mean, logvar)`` (batch, z_dim).

        ``g_t = (z_to_g(z_{t-1}) + g^x_t) / n`` with n = 2 (3 when the LSTM is bidirectional).
        """
        terms = 3.0 if self.config.rnn_bidirectional else 2.0
        hidden = self.posterior_mlp((self.z_to_g(z_prev) + gx_t) / terms)
        return self.posterior_mean(hidden), self.posterior_logvar(hidden)

    def transition(self, z_prev: Tensor) -> tuple[Tensor, Tensor]:
        """Gated transition p(z_t | z_{t-1}): ``z_prev (..., z_dim)`` -> ``(mean, logvar)`` (..., z_dim)."""
        gate = torch.sigmoid(self.gate_out(F.relu(self.gate_in(z_prev))))
        proposal = self.proposal_out(F.relu(self.proposal_in(z_prev)))
        mean = (1 - gate) * self.prior_mean(z_prev) + gate * proposal
        var = F.softplus(self.prior_var(F.relu(proposal)))
        return mean, torch.log(var)

    def decode(self, z: Tensor) -> Tensor:
        """Log-variance ``(..., x_dim)`` of p(s_t | z_t) for ``z (..., z_dim)``."""
        return self.decoder_logvar(self.decoder(z))

    def inference_parameters(self) -> list[nn.Parameter]:
        """The parameters of the inference network q: the speech embedding, its LSTM, the z_{t-1} MLP, the posterior MLP
        and heads."""
        return [
            p
            for module in (
                self.x_embed,
                self.rnn_x,
                self.z_to_g,
                self.posterior_mlp,
                self.posterior_mean,
                self.posterior_logvar,
            )
            for p in module.parameters()
        ]

    # ---------------------------------------------------------------- loops

    def sample_posterior(
        self, gx: Tensor, sample: bool = True, eps: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Draw z_1..z_T from q step by step (:func:`~lightdvae.models.layers.sequential_posterior`), ``gx`` being
        :meth:`encode_speech`'s ``(batch, frames, rnn_dim)``.  Returns ``z, mean, logvar``,
        ``(batch, frames, z_dim)``."""

        def native(eps: Tensor | None):
            return sampling.dkf_posterior(
                gx,
                eps,
                linear_params(self.z_to_g),
                linear_params(self.posterior_mlp),
                linear_params(self.posterior_mean, self.posterior_logvar),
                g_terms=3.0 if self.config.rnn_bidirectional else 2.0,
                activation=self.config.activation,
            )

        return sequential_posterior(self, "dkf_posterior", gx, sample, eps, generator, native, self.posterior_cell)

    def sample_prior(
        self,
        n: int,
        frames: int,
        temperature: float = 1.0,
        eps: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draw z_1..z_T ``(n, frames, z_dim)`` from the gated transition (z_0 = 0), noise scaled by
        ``temperature``; ``eps (n, frames, z_dim)`` is the noise when given."""
        like = self.decoder_logvar.weight
        eps = check_eps(eps, n, frames, self.config.z_dim, like)
        if use_native_loop(self, "dkf_prior", like):
            if eps is None:
                eps = loop_noise(n, frames, self.config.z_dim, like, generator)
            transition = linear_params(
                self.gate_in, self.gate_out, self.proposal_in, self.proposal_out, self.prior_mean, self.prior_var
            )
            return sampling.dkf_prior(eps, transition, temperature)
        z_t = like.new_zeros(n, self.config.z_dim)
        zs = []
        for t in range(frames):
            mean, logvar = self.transition(z_t)
            z_t = draw(mean, logvar, True, None if eps is None else eps[:, t], generator, temperature)
            zs.append(z_t)
        return torch.stack(zs, 1)

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
        The prior statistics are those of the transition from the inferred z_{t-1}.
        """
        check_past(past)
        check_power(power, self.config.x_dim)
        gx = self._encode_speech_tm(power.transpose(0, 1).contiguous())
        z, z_mean, z_logvar = self.sample_posterior(gx.transpose(0, 1), sample, eps, generator)
        z_tm = z.transpose(0, 1)
        z_mean_p, z_logvar_p = self.transition(shift_right(z_tm, dim=0))
        logvar = self.decode(z_tm)
        return DVAEOutput(
            logvar=_batch_first(logvar),
            z=z.contiguous(),
            z_mean=z_mean.contiguous(),
            z_logvar=z_logvar.contiguous(),
            z_mean_p=_batch_first(z_mean_p),
            z_logvar_p=_batch_first(z_logvar_p),
        )

    def _generate(
        self, n: int, frames: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """Variance ``exp(logvar)`` ``(n, frames, x_dim)`` decoded from z drawn from the gated transition."""
        return torch.exp(self.decode(self.sample_prior(n, frames, temperature, generator=generator)))


def _batch_first(t: Tensor) -> Tensor:
    return t.transpose(0, 1).contiguous()
