"""Which E-step engine enhances a model's utterances (:mod:`lightdvae.enhance.inference`: the engines and the
stacked copies of the inference network they share; :mod:`lightdvae.enhance.sequential`: one utterance alone)."""

from __future__ import annotations

from lightdvae.enhance.inference import FramewiseEngine, HierarchicalEngine, InferenceEngine, RecurrentEngine
from lightdvae.enhance.latent import LATENT_LR, LatentEngine
from lightdvae.enhance.sequential import SequentialEngine
from lightdvae.enhance.settings import REFERENCE_LR, EnhanceSettings
from lightdvae.models import DVAE
from lightdvae.models.dkf import DKF
from lightdvae.models.rvae import RVAE
from lightdvae.models.srnn import SRNN
from lightdvae.models.transformer import HiTDVAE, LigHTDVAE
from lightdvae.models.vae import VAE

__all__ = [
    "engine_class",
    "engine_for",
    "default_lr",
    "settings_for",
    "REFERENCE_LR",
    "TRANSFORMER_E_STEP_LR",
    "LATENT_LR",
]

#: The E-step's rate for HiT-DVAE and LigHT-DVAE, chosen on a development set (``lightdvae corpus noisy --split
#: val``: 50 mixtures of the built-in validation split; beta 0.01, 30 iterations) among 3e-5, 1e-4, 3e-4 and 1e-3:
#: SI-SDR +3.15 / +3.99 / +3.03 / -5.26 dB for the shipped LigHT-DVAE, +2.87 / +3.77 / +3.70 / -1.40 for HiT-DVAE.
#: At the reference's 1e-3 their post-norm encoders come apart within a few Adam steps (as they lose their latents
#: when trained at it) and the NMF takes the speech.  The same sweep leaves the classic priors at the reference's
#: rate (docs/enhancement/README.md, "The transformer priors' E-step rate").
TRANSFORMER_E_STEP_LR = 1e-4


def engine_class(model: DVAE, one_at_a_time: bool = False) -> type[InferenceEngine]:
    """The engine of a model's family (see the module docstring); ``one_at_a_time``: DKF, RVAE and SRNN run each
    utterance alone through the model's own ``forward`` (the reference path)."""
    if isinstance(model, VAE):
        return FramewiseEngine
    if isinstance(model, (HiTDVAE, LigHTDVAE)):
        return HierarchicalEngine
    if isinstance(model, (DKF, RVAE, SRNN)) and not one_at_a_time:
        return RecurrentEngine
    return SequentialEngine


def default_lr(model: DVAE, latent_e_step: bool = False) -> float:
    """Adam's learning rate of the E-step when the settings leave it open (``lr=None``): :data:`LATENT_LR` for the
    latent E-step, :data:`TRANSFORMER_E_STEP_LR` for HiT/LigHT-DVAE, :data:`REFERENCE_LR` for the others."""
    if latent_e_step:
        return LATENT_LR
    return TRANSFORMER_E_STEP_LR if isinstance(model, (HiTDVAE, LigHTDVAE)) else REFERENCE_LR


def settings_for(model: DVAE, settings: EnhanceSettings) -> EnhanceSettings:
    """``settings`` with what they leave to the prior decided for ``model`` (the learning rate: :func:`default_lr`),
    as they run and as a results folder records them."""
    if settings.lr is not None:
        return settings
    return settings.replace(lr=default_lr(model, settings.latent_e_step))


def engine_for(
    model: DVAE,
    batch: int,
    lr: float,
    one_at_a_time: bool = False,
    latent_e_step: bool = False,
    speech_past: str = "own",
) -> InferenceEngine:
    """A fresh engine (copies of the inference network at the model's weights, a new Adam) for ``batch``
    utterances (see :func:`engine_class` for ``one_at_a_time``, the reference path, which also encodes the speech
    in every pass as the reference implementation does).  DKF, RVAE and SRNN run a batch of one on the
    :class:`SequentialEngine`: the model's own native loops, faster than the batched engine's Python frame loop.
    ``latent_e_step``: the :class:`~lightdvae.enhance.latent.LatentEngine` (no copies: Adam moves the posteriors),
    whose decoders are fed ``speech_past`` (:class:`~lightdvae.enhance.settings.EnhanceSettings`)."""
    if latent_e_step:
        return LatentEngine(model, batch, lr, speech_past)
    if speech_past != "own":
        raise ValueError(f"speech_past={speech_past!r} needs the latent E-step")
    cls = engine_class(model, one_at_a_time or batch == 1)
    if cls is SequentialEngine:
        return cls(model, batch, lr, keep_features=not one_at_a_time)
    return cls(model, batch, lr)
