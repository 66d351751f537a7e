"""The E-step engine of a DKF, RVAE or SRNN enhancing one utterance alone: the model's own forward with the
utterance's copy of the inference network swapped in (see :mod:`lightdvae.enhance.inference` for the engines and
the stacked copies they share)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import ClassVar

import torch
from torch import Tensor

from lightdvae.enhance.inference import InferenceEngine, draw, masked_kl, tensor_key
from lightdvae.models import DVAE
from lightdvae.models.dkf import DKF
from lightdvae.models.rvae import RVAE
from lightdvae.models.srnn import SRNN
from lightdvae.ops.sampling import exact_loops

__all__ = ["SequentialEngine"]


class SequentialEngine(InferenceEngine):
    """DKF, RVAE, SRNN: one utterance per batch, through the model's own ``forward(power, past="gen", eps=...)``
    (the native posterior and own-past loops) with the utterance's inference copy swapped in.

    Two outputs of the model's own methods are kept instead of computed again, as :class:`RecurrentEngine` keeps
    them (the same numbers, the same gradients):

    - the speech features (``_encode_speech_tm``: DKF's and RVAE's embedding and backward LSTM over the mixture,
      SRNN's over the mixture and its true-past h) carry no noise, so at the same weights the sample pass and the
      next E-step get the same features: the sample pass computes them with their autograd graph and keeps them,
      the E-step takes them instead of encoding again (one encoder pass less per EM iteration);
    - SRNN's true-past h (``_deterministic_h_tm``: the generative model's LSTM over the mixture) reads only the
      frozen weights and the mixture: it is computed once per mixture, not twice per iteration.

    And the sample pass skips the prior's statistics (DKF's gated transition, SRNN's prior network), which only
    the E-step's KL reads: the model's method is shadowed by zeros of its output's shape.  ``keep_features=False``
    does none of this, as the reference implementation (the ``one_at_a_time`` reference path)."""

    batched = False
    #: the method of the model whose output is kept from a pass without gradients to the next E-step
    KEPT_ENCODER = "_encode_speech_tm"
    #: the methods whose output depends only on the frozen weights and the mixture, per family: kept for the EM
    FROZEN_METHODS: ClassVar[dict[type, str]] = {SRNN: "_deterministic_h_tm"}
    #: the prior's method, ``(..., z_prev) -> (mean, logvar)`` shaped like ``z_prev``, per family: not run without
    #: gradients (the sample pass keeps the decoder's output alone)
    PRIOR_METHODS: ClassVar[dict[type, str]] = {DKF: "transition", SRNN: "prior"}

    def __init__(self, model: DVAE, batch: int, lr: float, keep_features: bool = True):
        super().__init__(model, batch, lr)
        self.keep_features = keep_features and isinstance(model, (DKF, RVAE, SRNN))
        self._frozen: tuple[Tensor, int, Tensor] | None = None  # SRNN: (mixture, its version, true-past h)

    def posterior_pass(self, power, lengths, generators, grad):
        if power.shape[0] != 1:
            raise ValueError(f"{type(self.model).__name__} enhances one utterance at a time, got {power.shape[0]}")
        reuse = self.keep_features
        # without gradients the copy stays attached only when its features are kept (no other op records a graph);
        # its views are taken with gradients on (a view made under no_grad would not carry them).  squeeze, not
        # p[0]: the backward of a select writes its gradient into a zero-filled tensor of the leaf's shape (one
        # allocation, fill and copy per parameter and iteration), that of squeeze is a view
        with torch.enable_grad():
            copy = {n: p.squeeze(0) if grad or reuse else p.squeeze(0).detach() for n, p in self.stacked.items()}
        params = {**self.frozen, **copy}
        eps = draw(generators, lengths, (self.model.config.z_dim,), power)
        with exact_loops(False), self._shortcuts(power, grad, reuse):  # the fast loops: no bit-parity needed
            out = self.call("forward", params, power, past="gen", eps=eps)
        if not grad:
            return out.logvar, None
        return out.logvar, masked_kl(out.z_mean, out.z_logvar, out.z_mean_p, out.z_logvar_p, lengths)

    @contextmanager
    def _shortcuts(self, power: Tensor, grad: bool, reuse: bool):
        """While the model runs on ``power``: its speech encoder keeps its output (a pass without gradients) or
        takes the kept one (the E-step at the same weights and mixture), SRNN's true-past h is computed once per
        mixture, and a pass without gradients skips the prior, through instance attributes that shadow the methods
        (their inputs are derived from ``power`` alone, which identifies them)."""
        if not reuse:
            yield
            return
        model = self.model
        encoder = getattr(model, self.KEPT_ENCODER)
        key = (self.KEPT_ENCODER, *tensor_key(power))

        def kept_encoder(*args: Tensor) -> Tensor:
            return self.kept.get(key, lambda: encoder(*args), grad)

        shadows = {self.KEPT_ENCODER: kept_encoder}

        def family_method(table: dict[type, str]) -> str | None:
            return next((m for family, m in table.items() if isinstance(model, family)), None)

        frozen = family_method(self.FROZEN_METHODS)
        if frozen is not None:
            method = getattr(model, frozen)

            def once_per_mixture(*args: Tensor) -> Tensor:
                cached = self._frozen
                if cached is None or cached[0] is not power or cached[1] != power._version:
                    with torch.no_grad():  # the frozen weights and the mixture: nothing to differentiate
                        cached = self._frozen = (power, power._version, method(*args))
                return cached[2]

            shadows[frozen] = once_per_mixture
        prior = family_method(self.PRIOR_METHODS)
        if prior is not None and not grad:

            def no_prior(*args: Tensor) -> tuple[Tensor, Tensor]:
                zeros = args[-1].new_zeros(()).expand_as(args[-1])
                return zeros, zeros

            shadows[prior] = no_prior
        model.__dict__.update(shadows)
        try:
            yield
        finally:
            for name in shadows:
                del model.__dict__[name]
