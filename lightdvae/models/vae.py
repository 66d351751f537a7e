"""VAE: frames are modelled independently (the static baseline of the DVAE literature).

Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014; on speech power spectra with the
Itakura-Saito likelihood as in Girin et al., "Dynamical Variational Autoencoders: A Comprehensive
Review", Foundations and Trends in Machine Learning 15(1-2), 2021 (the baseline of SPEC section 4).

    q(z_t | s_t):  MLP 513 -> 128 (tanh), heads 128 -> 16 (mean, log-variance)
    p(s_t | z_t):  MLP 16 -> 128 (tanh), Linear 128 -> 513 (log-variance)
    p(z_t) = N(0, I)

138,273 parameters with the published sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lightdvae.models.base import DVAE, DVAEOutput, ModelConfig, check_past
from lightdvae.models.layers import MLP, check_dims, check_eps, check_power, draw, validate_common


@dataclass
class VAEConfig(ModelConfig):
    """Sizes of :class:`VAE` (DVAE ``config.ini`` names in brackets).

    encoder_dims: hidden layers of the encoder MLP s_t -> z_t  [dense_x_z].
    decoder_dims: hidden layers of the decoder MLP z_t -> s_t  [reversed dense_x_z].
    """

    encoder_dims: list[int] = field(default_factory=lambda: [128])
    decoder_dims: list[int] = field(default_factory=lambda: [128])

    def __post_init__(self) -> None:
        validate_common(self)
        self.encoder_dims, self.decoder_dims = list(self.encoder_dims), list(self.decoder_dims)
        check_dims(type(self).__name__, encoder_dims=self.encoder_dims, decoder_dims=self.decoder_dims)


class VAE(DVAE):
    """Frame-wise VAE.  Inputs ``(batch, frames, x_dim)``; every frame is encoded and decoded alone."""

    name = "vae"
    config_class = VAEConfig
    sees_past_speech = False

    def __init__(self, config: VAEConfig):
        super().__init__(config)
        c = config
        self.encoder = MLP(c.x_dim, c.encoder_dims, c.activation, c.dropout)
        self.posterior_mean = nn.Linear(self.encoder.out_dim, c.z_dim)
        self.posterior_logvar = nn.Linear(self.encoder.out_dim, c.z_dim)
        self.decoder = MLP(c.z_dim, c.decoder_dims, c.activation, c.dropout)
        self.decoder_logvar = nn.Linear(self.decoder.out_dim, c.x_dim)

    def encode(self, power: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior statistics ``(mean, logvar)``, each ``(..., z_dim)``, of ``power (..., x_dim)``."""
        hidden = self.encoder(power)
        return self.posterior_mean(hidden), self.posterior_logvar(hidden)

    def inference_parameters(self) -> list[nn.Parameter]:
        """The parameters of the inference network q: the encoder MLP and the posterior heads."""
        return [p for module in (self.encoder, self.posterior_mean, self.posterior_logvar) for p in module.parameters()]

    def decode(self, z: Tensor) -> Tensor:
        """Log-variance ``(..., x_dim)`` of p(s_t | z_t) for ``z (..., z_dim)``."""
        return self.decoder_logvar(self.decoder(z))

    def forward(
        self,
        power: Tensor,
        past: str = "gt",
        sample: bool = True,
        eps: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> DVAEOutput:
        """Encode and decode ``power (batch, frames, x_dim)``.

        ``past`` is accepted for the common vocabulary and has no effect (the decoder sees no past
        speech).  ``sample=False`` decodes the posterior mean; ``eps (batch, frames, z_dim)`` is the
        noise of the reparameterisation (drawn with ``generator`` when omitted).
        The prior N(0, I) is reported as ``z_mean_p = z_logvar_p = None``.
        """
        check_past(past)
        check_power(power, self.config.x_dim)
        eps = check_eps(eps, power.shape[0], power.shape[1], self.config.z_dim, power)
        z_mean, z_logvar = self.encode(power)
        z = draw(z_mean, z_logvar, sample, eps, generator)
        return DVAEOutput(logvar=self.decode(z), z=z, z_mean=z_mean, z_logvar=z_logvar)

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

    def _generate(
        self, n: int, frames: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """Variance ``exp(logvar)`` of ``n`` sequences decoded from prior samples: ``(n, frames, x_dim)``."""
        return torch.exp(self.decode(self.sample_prior(n, frames, temperature, generator=generator)))
