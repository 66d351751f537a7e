"""Which E-step engine enhances a model's utterances (:mod:`lightdvae.enhance.inference`: the engines and the
stacked copies of the inference network they share; :mod:`lightdvae.enhance.sequential`: one utterance alone)."""

from __future__ import annotations

from lightdvae.enhance.inference import FramewiseEngine, HierarchicalEngine, InferenceEngine, RecurrentEngine
from lightdvae.enhance.sequential import SequentialEngine
from lightdvae.enhance.settings import EnhanceSettings
from lightdvae.models import DVAE
from lightdvae.models.dkf import DKF
from lightdvae.models.rvae import RVAE
from lightdvae.models.srnn import SRNN
from lightdvae.models.transformer import HiTDVAE, LigHTDVAE
from lightdvae.models.vae import VAE

__all__ = ["engine_class", "engine_for", "default_lr", "settings_for", "REFERENCE_LR", "TRANSFORMER_LR"]

#: Adam's learning rate of the E-step in the reference implementation (Bie et al. 2022), for its VAE, DKF, RVAE and
#: SRNN priors.
REFERENCE_LR = 1e-3
#: The E-step's rate for HiT-DVAE and LigHT-DVAE: the rate they are trained at
#: (:data:`lightdvae.experiments.TRANSFORMER_LR`).  At the reference's 1e-3 their post-norm encoders lose what they
#: infer within a few Adam steps, as they lose their latents in training: the shipped LigHT-DVAE on the 55-file
#: set (beta 0.01, 30 iterations) went from -5.4 dB SI-SDR at 1e-3 to +1.1 dB at 3e-4 (README, "The E-step's
#: learning rate").
TRANSFORMER_LR = 3e-4


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


def default_lr(model: DVAE) -> float:
    """Adam's learning rate of the E-step when the settings leave it open (``lr=None``): :data:`TRANSFORMER_LR` for
    HiT/LigHT-DVAE, :data:`REFERENCE_LR` for the others."""
    return TRANSFORMER_LR if isinstance(model, (HiTDVAE, LigHTDVAE)) else REFERENCE_LR


def settings_for(model: DVAE, settings: EnhanceSettings) -> EnhanceSettings:
    """``settings`` with what they leave to the prior decided for ``model`` (the learning rate: :func:`default_lr`),
    as they run and as a results folder records them."""
    return settings if settings.lr is not None else settings.replace(lr=default_lr(model))


def engine_for(model: DVAE, batch: int, lr: float, one_at_a_time: bool = False) -> InferenceEngine:
    """A fresh engine (copies of the inference network at the model's weights, a new Adam) for ``batch``
    utterances (see :func:`engine_class` for ``one_at_a_time``, the reference path, which also encodes the speech
    in every pass as the reference implementation does).  DKF, RVAE and SRNN run a batch of one on the
    :class:`SequentialEngine`: the model's own native loops, faster than the batched engine's Python frame loop."""
    cls = engine_class(model, one_at_a_time or batch == 1)
    if cls is SequentialEngine:
        return cls(model, batch, lr, keep_features=not one_at_a_time)
    return cls(model, batch, lr)
