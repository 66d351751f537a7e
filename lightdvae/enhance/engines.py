"""Which E-step engine enhances a model's utterances (:mod:`lightdvae.enhance.inference`: the engines and the
stacked copies of the inference network they share; :mod:`lightdvae.enhance.sequential`: one utterance alone)."""

from __future__ import annotations

from lightdvae.enhance.inference import FramewiseEngine, HierarchicalEngine, InferenceEngine, RecurrentEngine
from lightdvae.enhance.sequential import SequentialEngine
from lightdvae.models import DVAE
from lightdvae.models.dkf import DKF
from lightdvae.models.rvae import RVAE
from lightdvae.models.srnn import SRNN
from lightdvae.models.transformer import HiTDVAE, LigHTDVAE
from lightdvae.models.vae import VAE

__all__ = ["engine_class", "engine_for"]


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


def engine_for(model: DVAE, batch: int, lr: float, one_at_a_time: bool = False) -> InferenceEngine:
    """A fresh engine (copies of the inference network at the model's weights, a new Adam) for ``batch``
    utterances (see :func:`engine_class` for ``one_at_a_time``, the reference path, which also encodes the speech
    in every pass as the reference implementation does).  DKF, RVAE and SRNN run a batch of one on the
    :class:`SequentialEngine`: the model's own native loops, faster than the batched engine's Python frame loop."""
    cls = engine_class(model, one_at_a_time or batch == 1)
    if cls is SequentialEngine:
        return cls(model, batch, lr, keep_features=not one_at_a_time)
    return cls(model, batch, lr)
