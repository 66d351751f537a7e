"""What every lightdvae model shares: the output record, the ELBO terms, the method vocabulary.

Layout everywhere: power spectrograms ``(batch, frames, F)`` with ``F = 513``; latents
``(batch, frames, z_dim)``; a sequence-level latent ``(batch, w_dim)`` for the hierarchical models.

Method vocabulary (the same for every model):

- ``forward(power, past="gt", sample=True) -> DVAEOutput``: inference of the latents from
  ``power`` and decoding.  ``sample=False`` is the deterministic mode: every latent takes its
  mean (evaluation, golden-vector tests).  ``past`` says which past speech the decoder is fed
  where it sees one (SRNN, the transformer DVAEs): ``"gt"`` the true past (teacher forcing),
  ``"gen"`` its own past predictions ``exp(logvar)`` (autoregressive).
- ``loss(power, beta, kl_warm) -> LossTerms``: the negative ELBO of SPEC section 4 for a batch.
- ``resynthesize(power, past="gen", sample=False) -> variance``: ``exp(logvar)`` of the decoder,
  the estimate of the power spectrogram used for analysis-resynthesis.
- ``generate(n, frames, temperature=1.0, generator=None) -> variance``: samples from the prior,
  decoded autoregressively.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from lightdvae.ops import dropout, gaussian_kl, is_divergence

N_FREQ = 513


@dataclass
class ModelConfig:
    """Fields common to every model config; each model subclasses it with its own sizes."""

    x_dim: int = N_FREQ
    z_dim: int = 16
    activation: str = "tanh"
    dropout: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"{cls.__name__} has no option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(known))}"
            )
        return cls(**values)


@dataclass
class DVAEOutput:
    """What a forward pass produces; ``None`` where a model has no such quantity.

    logvar: decoder log-variance of the power spectrum, (batch, frames, F).
    z, z_mean, z_logvar: posterior sample and statistics, (batch, frames, z_dim).
    z_mean_p, z_logvar_p: prior statistics of z_t, (batch, frames, z_dim); ``None`` = N(0, I).
    w, w_mean, w_logvar: sequence-level latent and its posterior (batch, w_dim), hierarchical models.
    """

    logvar: Tensor
    z: Tensor | None = None
    z_mean: Tensor | None = None
    z_logvar: Tensor | None = None
    z_mean_p: Tensor | None = None
    z_logvar_p: Tensor | None = None
    w: Tensor | None = None
    w_mean: Tensor | None = None
    w_logvar: Tensor | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class LossTerms:
    """The negative ELBO and its parts, each already divided by ``batch * frames``."""

    loss: Tensor  # recon + beta * kl_warm * kl, what is back-propagated
    recon: Tensor  # Itakura-Saito term
    kl: Tensor  # all KL terms (z, plus w for hierarchical models)
    kl_z: Tensor
    kl_w: Tensor | None = None

    def as_floats(self) -> dict[str, float]:
        out = {"loss": self.loss, "recon": self.recon, "kl": self.kl, "kl_z": self.kl_z}
        if self.kl_w is not None:
            out["kl_w"] = self.kl_w
        return {k: float(v.detach()) for k, v in out.items()}


def elbo_terms(power: Tensor, out: DVAEOutput, beta: float = 1.0, kl_warm: float = 1.0) -> LossTerms:
    """Negative ELBO of SPEC section 4 from explicit tensors.

    ``[sum d_IS + beta * kl_warm * (sum KL_z + KL_w)] / (batch * frames)``.
    """
    if power.dim() != 3:
        raise ValueError(f"power must be (batch, frames, bins), got shape {tuple(power.shape)}")
    norm = power.shape[0] * power.shape[1]
    recon = is_divergence(power, out.logvar, reduction="sum") / norm
    kl_z = gaussian_kl(out.z_mean, out.z_logvar, out.z_mean_p, out.z_logvar_p, reduction="sum") / norm
    kl_w = None
    kl = kl_z
    if out.w_mean is not None:
        kl_w = gaussian_kl(out.w_mean, out.w_logvar, reduction="sum") / norm
        kl = kl_z + kl_w
    return LossTerms(loss=recon + beta * kl_warm * kl, recon=recon, kl=kl, kl_z=kl_z, kl_w=kl_w)


def reparameterize(
    mean: Tensor, logvar: Tensor, sample: bool = True, generator: torch.Generator | None = None
) -> Tensor:
    """``mean + exp(logvar / 2) * eps`` with ``eps ~ N(0, I)``; the mean itself when ``sample`` is False."""
    if not sample:
        return mean
    eps = torch.randn(mean.shape, dtype=mean.dtype, device=mean.device, generator=generator)
    return mean + torch.exp(0.5 * logvar) * eps


_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


def activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(_ACTIVATIONS)}") from None


class Dropout(nn.Module):
    """``nn.Dropout`` on the package's one-pass kernel (:func:`lightdvae.ops.dropout`: the mask hashed from a seed
    drawn from torch's generator, nothing saved for the backward; ATen's dropout on CUDA).  ``p`` in ``[0, 1)``."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class DVAE(nn.Module):
    """Base class of all models.  Subclasses set ``name`` and ``config_class`` and implement
    ``forward`` and ``generate``; ``loss`` and ``resynthesize`` come from here."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    #: True when the decoder is fed past speech (so GEN and GT resynthesis differ).
    sees_past_speech: ClassVar[bool] = False

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config

    def forward(self, power: Tensor, past: str = "gt", sample: bool = True) -> DVAEOutput:  # pragma: no cover
        raise NotImplementedError

    def loss(self, power: Tensor, beta: float = 1.0, kl_warm: float = 1.0, **forward_kwargs) -> LossTerms:
        return elbo_terms(power, self(power, **forward_kwargs), beta=beta, kl_warm=kl_warm)

    def inference_parameters(self) -> list[nn.Parameter]:
        """The parameters of the inference network q (the encoder): what speech enhancement fine-tunes while the
        decoder and the prior stay frozen (:mod:`lightdvae.enhance`).  Every model of the package has one; a
        model without one raises NotImplementedError."""
        raise NotImplementedError(
            f"{type(self).__name__} has no inference network to fine-tune (it defines no inference_parameters())"
        )

    @torch.no_grad()
    def resynthesize(self, power: Tensor, past: str = "gen", sample: bool = False) -> Tensor:
        """Variance estimate ``exp(logvar)`` of ``power`` (batch, frames, F); no gradients."""
        check_past(past)
        return torch.exp(self(power, past=past, sample=sample).logvar)

    @torch.no_grad()
    def generate(
        self, n: int, frames: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """Sample ``n`` power spectrograms of ``frames`` frames from the prior: the variances ``exp(logvar)``,
        ``(n, frames, x_dim)``.  ``n = 0`` or ``frames = 0`` gives an empty tensor of that shape (every model
        alike); a negative count raises ValueError."""
        for name, value in (("n", n), ("frames", frames)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"generate needs n >= 0 and frames >= 0 (integers), got {name}={value!r}")
        if n == 0 or frames == 0:
            p = next(self.parameters())
            return torch.empty(n, frames, self.config.x_dim, dtype=p.dtype, device=p.device)
        return self._generate(n, frames, temperature, generator)

    def _generate(
        self, n: int, frames: int, temperature: float, generator: torch.Generator | None
    ) -> Tensor:  # pragma: no cover
        """The model's own sampling (``n, frames >= 1``), called by :meth:`generate`."""
        raise NotImplementedError

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def check_past(past: str) -> None:
    if past not in ("gen", "gt"):
        raise ValueError(f"past must be 'gen' (the model's own past predictions) or 'gt' (the true past), got {past!r}")
