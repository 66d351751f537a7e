"""The E-step of the variational EM: the DVAE's inference network, one copy per utterance, fine-tuned by Adam.

Each utterance of a batch has its own copy of the inference network (the reference fine-tunes one encoder per
utterance).  The copies are stacked: every inference parameter of shape ``S`` becomes one leaf tensor
``(batch, *S)``, and one :class:`torch.optim.Adam` steps them all.  Adam is element-wise (its moments and its
step are per element, with no norm across elements), so one Adam over stacked copies is exactly one Adam per
utterance, provided copy ``i`` receives the gradient of utterance ``i``'s loss alone: the batch loss is the sum
of the utterances' losses, and utterance ``i``'s loss reads only copy ``i``.  The decoder and the prior are the
model's own parameters, detached (frozen: no gradient is computed for them, none is stored on the model, and the
model itself is never modified).

How a family runs its copies (:func:`lightdvae.enhance.engines.engine_for` chooses):

- :class:`FramewiseEngine` (VAE): ``torch.func.vmap`` of the encoder over the stacked copies; frames are
  independent, so padding is neutral and utterances of any lengths batch together.
- :class:`HierarchicalEngine` (HiT-DVAE, LigHT-DVAE): ``vmap`` of the w and z encoders; their self-attention is
  not causal and w pools over time, so padding is not neutral: the batch must hold utterances of one length
  (:func:`lightdvae.enhance.api.enhance_batch` buckets them by length).
- :class:`RecurrentEngine` (DKF, RVAE, SRNN, the default; :mod:`lightdvae.enhance.recurrent`): the speech
  encoders are the models' own ``encode_speech``, run for each utterance with its copy on its own frames (native
  LSTMs; a backward LSTM starts at the utterance's last frame); the sequential posterior is one loop over frames
  for the whole batch, its layers batched products with each utterance's own weights; the decoders and priors
  are the models' own methods.  Padding is neutral, so utterances of any lengths batch.
- :class:`~lightdvae.enhance.sequential.SequentialEngine` (DKF, RVAE, SRNN with ``one_at_a_time=True``, and any
  batch of one; its own module): each utterance
  runs alone through ``torch.func.functional_call`` of the model's own ``forward(power, past="gen", eps=...)``:
  the native sampling loops inside :func:`lightdvae.ops.sampling.exact_loops` ``(False)`` (the posterior loops'
  ``_bptt`` ops, whose steps run on raw pointers at this batch, in both passes; ATen's LSTM cell), or the
  Python loops with ``LIGHTDVAE_BACKEND=ref``.  At batch 1 it is faster than the batched engine, whose frame
  loop is Python; it is also the path the batched engine is checked against.

- :class:`~lightdvae.enhance.latent.LatentEngine` (every family, ``latent_e_step=True``; its own module): no
  copies; the leaves are each utterance's posterior statistics, started from the model's encoder on the mixture.

Every random draw of utterance ``i`` (the reparameterisation noise) comes from its own generator, so an utterance
gets the same numbers in any batch.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from lightdvae.enhance import recurrent
from lightdvae.enhance.noise import NoiseModel, mixture_reconstruction
from lightdvae.errors import EnhanceError
from lightdvae.models import DVAE
from lightdvae.ops import gaussian_kl
from lightdvae.ops.sampling import exact_loops

__all__ = [
    "InferenceEngine",
    "FramewiseEngine",
    "HierarchicalEngine",
    "RecurrentEngine",
]


class _Method(nn.Module):
    """``model.<method>(*args)`` as a module call, so that ``functional_call`` can swap the model's parameters
    (named ``model.<name>``) for one call of any of its methods."""

    def __init__(self, model: nn.Module, method: str):
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, *args, **kwargs):
        return getattr(self.model, self.method)(*args, **kwargs)


def inference_names(model: DVAE) -> list[str]:
    """Names (as in ``model.named_parameters()``) of the model's inference parameters; raises
    :class:`EnhanceError` for a model without an inference network."""
    try:
        own = {id(p) for p in model.inference_parameters()}
    except NotImplementedError as exc:
        raise EnhanceError(f"cannot enhance with this model: {exc}") from None
    names = [n for n, p in model.named_parameters() if id(p) in own]
    if not names:
        raise EnhanceError(f"cannot enhance with {type(model).__name__}: its inference network has no parameters")
    return names


def draw(generators: list[torch.Generator], lengths: list[int], shape: tuple[int, ...], like: Tensor) -> Tensor:
    """Standard normal noise ``(batch, frames, *shape)`` (``frames = max(lengths)``, zeros on padded frames), or
    ``(batch, *shape)`` when ``lengths`` is empty; utterance ``i`` draws its own frames from ``generators[i]``."""
    if not lengths:
        rows = [torch.randn(shape, dtype=like.dtype, device=like.device, generator=g) for g in generators]
        return torch.stack(rows)
    out = like.new_zeros(len(generators), max(lengths), *shape)
    for i, (n, gen) in enumerate(zip(lengths, generators, strict=True)):
        out[i, :n] = torch.randn(n, *shape, dtype=like.dtype, device=like.device, generator=gen)
    return out


class KeptOutputs:
    """Outputs of the inference network's noise-free parts, kept from a pass without gradients for the next E-step.

    The EM draws a sample (a pass without gradients) right after each Adam step, and the next E-step runs at the
    same weights on the same mixture: a part of the inference network that draws no noise (the recurrent
    families' speech encoders, the transformers' w encoder) gives it the same numbers.  :meth:`get` without
    gradients computes such an output with its autograd graph, keeps it and returns it detached; with gradients it
    hands the kept one over (computing it only when none was kept under ``key``).  :meth:`stepped` (after each Adam
    step) drops them all: their weights have moved.  ``key`` names the output (its method, its inputs, the copy).
    """

    def __init__(self) -> None:
        self._kept: dict[tuple, object] = {}

    def get(self, key: tuple, compute, grad: bool):
        """``compute()`` or what a pass without gradients kept of it under ``key`` (see the class docstring)."""
        if grad:
            kept = self._kept.pop(key, None)
            return kept if kept is not None else compute()
        with torch.enable_grad():
            out = self._kept[key] = compute()
        return out.detach() if isinstance(out, Tensor) else type(out)(t.detach() for t in out)

    def stepped(self) -> None:
        """The weights moved: nothing kept is valid any more."""
        self._kept.clear()


def tensor_key(*tensors: Tensor) -> tuple:
    """What identifies the inputs of a kept output: each tensor's storage, shape and version."""
    return tuple((t.data_ptr(), tuple(t.shape), t._version) for t in tensors)


class InferenceEngine:
    """Stacked copies of a model's inference network for a batch of ``batch`` utterances, and the E-step on them.

    Subclasses implement :meth:`posterior_pass` and say whether utterances batch (``batched``) and whether
    padding is neutral (``padding_neutral``).
    """

    batched: ClassVar[bool] = True
    padding_neutral: ClassVar[bool] = True

    def __init__(self, model: DVAE, batch: int, lr: float):
        self.model = model
        self.names = inference_names(model)
        own = dict(model.named_parameters())
        #: the decoder and the prior: the model's tensors, detached (read only)
        self.frozen = {n: p.detach() for n, p in own.items() if n not in self.names}
        #: what the E-step's Adam moves, ``(batch, *shape)`` leaves: one copy of each inference parameter per
        #: utterance (:meth:`_leaves`)
        self.stacked = self._leaves(own, batch)
        self.optimizer = self._adam(self.stacked, lr) if self.stacked else None
        self._methods: dict[str, _Method] = {}
        # functional_call's tying pass walks every submodule on each call (~2 ms for a transformer, a few percent
        # of an iteration at batch 1); only a model that shares a tensor between two names needs it
        self._tied = len(list(model.named_parameters(remove_duplicate=False))) != len(own)
        #: noise-free outputs of the last pass without gradients, for the next E-step (:class:`KeptOutputs`)
        self.kept = KeptOutputs()

    def _leaves(self, own: dict[str, Tensor], batch: int) -> dict[str, Tensor]:
        """The E-step's leaves: each inference parameter ``S`` of the model stacked ``batch`` times, ``(batch, *S)``."""
        return {
            n: own[n].detach().unsqueeze(0).repeat(batch, *([1] * own[n].dim())).requires_grad_() for n in self.names
        }

    @staticmethod
    def _adam(leaves: dict[str, Tensor], lr: float) -> torch.optim.Adam:
        """One Adam over all the leaves (fused on the CPU and CUDA: one pass over the copies)."""
        fused = next(iter(leaves.values())).device.type in ("cpu", "cuda")
        return torch.optim.Adam(list(leaves.values()), lr=lr, fused=fused or None)

    def call(self, method: str, params: dict[str, Tensor], *args, **kwargs):
        """``model.<method>(*args, **kwargs)`` with ``params`` (name -> tensor) in place of the model's own."""
        if method not in self._methods:
            self._methods[method] = _Method(self.model, method)
        named = {f"model.{n}": t for n, t in params.items()}
        return functional_call(self._methods[method], named, args, kwargs, tie_weights=self._tied)

    def parameters_of(self, i: int) -> dict[str, Tensor]:
        """Every parameter utterance ``i`` is enhanced with (detached): the frozen ones and its inference copy."""
        return {**self.frozen, **{n: p[i].detach() for n, p in self.stacked.items()}}

    def posterior_pass(
        self, power: Tensor, lengths: list[int], generators: list[torch.Generator], grad: bool
    ) -> tuple[Tensor, Tensor | None]:  # pragma: no cover
        """One sample through the model fed its own past: the decoder's log-variance ``(batch, frames, F)`` and,
        when ``grad``, each utterance's KL terms summed over its frames ``(batch,)`` (None otherwise)."""
        raise NotImplementedError

    def step(
        self,
        power: Tensor,
        lengths: list[int],
        mask: Tensor,
        gain: Tensor,
        noise: Tensor,
        beta: float,
        generators: list[torch.Generator],
    ) -> Tensor:
        """One Adam step on the negative ELBO of each utterance: ``sum d_IS(|X|^2, g v + WH) + beta * KL`` over its
        own frames (sums, as the reference).  ``gain (batch, frames)``, ``noise (batch, frames, F)``.  Returns the
        losses before the step, ``(batch,)``."""
        params = list(self.stacked.values())
        with torch.enable_grad():
            logvar, kl = self.posterior_pass(power, lengths, generators, grad=True)
            losses = mixture_reconstruction(power, logvar, gain, noise, mask) + beta * kl
            grads = self.gradients(losses.sum(), params)
        for p, g in zip(params, grads, strict=True):
            p.grad = g.contiguous()  # fused CPU Adam misreads a strided gradient (seen in torch 2.14)
        self.optimizer.step()
        self.kept.stepped()
        return losses.detach()

    def gradients(self, loss: Tensor, params: list[Tensor]) -> list[Tensor]:
        """``d loss / d params`` for the last :meth:`posterior_pass` with gradients."""
        return list(torch.autograd.grad(loss, params))

    def observe(self, power: Tensor, state: NoiseModel, speech: Tensor, mask: Tensor) -> None:
        """After each M-step: the noise model ``state`` just updated from the speech variance ``speech``; what an
        engine that follows the EM's estimates takes from them (nothing here)."""

    @torch.no_grad()
    def sample(self, power: Tensor, lengths: list[int], generators: list[torch.Generator]) -> Tensor:
        """A new sample of the clean-speech variance ``v = exp(logvar)``, ``(batch, frames, F)``."""
        return torch.exp(self.posterior_pass(power, lengths, generators, grad=False)[0])


def masked_kl(mean, logvar, mean_p, logvar_p, lengths: list[int]) -> Tensor:
    """Gaussian KL summed over z and over each utterance's own frames: ``(batch,)``."""
    kl = gaussian_kl(mean, logvar, mean_p, logvar_p, reduction="none").sum(-1)  # (batch, frames)
    frames = torch.arange(kl.shape[1], device=kl.device)
    keep = frames[None, :] < torch.tensor(lengths, device=kl.device)[:, None]
    return (kl * keep).sum(-1)


class FramewiseEngine(InferenceEngine):
    """VAE: the encoder of each copy ``vmap``-ped over the batch; the shared decoder decodes all at once."""

    def posterior_pass(self, power, lengths, generators, grad):
        def encode(params, x):
            return self.call("encode", params, x)

        mean, logvar = vmap(encode)(self.stacked if grad else _detached(self.stacked), power)
        eps = draw(generators, lengths, (self.model.config.z_dim,), power)
        z = torch.addcmul(mean, eps, torch.exp(0.5 * logvar))
        out = self.call("decode", self.frozen, z)
        return out, masked_kl(mean, logvar, None, None, lengths) if grad else None


def decode_own_past(
    engine: InferenceEngine, z: Tensor, w: Tensor, grad: bool
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """HiT/LigHT-DVAE's speech decoder with the engine's frozen weights, fed its own past (the model's cached loop,
    without gradients), for ``z (batch, frames, z_dim)`` and ``w (batch, w_dim)``; with ``grad`` the parallel pass
    on that past, as ``forward(power, past="gen")`` does.  ``(logvar, mean_p, logvar_p)``, the z-prior's statistics
    None without ``grad``."""
    with exact_loops(False):  # a batch of <= 4 decodes on raw pointers (no bit-parity needed here)
        steps = engine.call("decode_stepwise", engine.frozen, w.detach(), z.shape[1], z=z.detach(), prior=False)
    if not grad:
        return steps["logvar"], None, None
    return engine.call("decode", engine.frozen, z, w, torch.exp(steps["logvar"]))


class HierarchicalEngine(InferenceEngine):
    """HiT-DVAE / LigHT-DVAE: the w and z encoders of each copy ``vmap``-ped over the batch (equal lengths only);
    the speech decoder fed its own past by the model's cached loop, then (with gradients) the parallel pass on that
    past, as ``forward(power, past="gen")`` does."""

    padding_neutral = False

    def _encoder(self, params: dict[str, Tensor], batch: int):
        """``encode(method, *inputs)``: each utterance's copy of the encoders on its own rows of ``inputs``.  One copy
        runs the plain modules (a vmap of one turns every product into a bmm); several are ``vmap``-ped (their
        attention batches there: MultiHeadAttention takes the products' form)."""
        if batch == 1:
            one = {n: p[0] for n, p in params.items()}
            return lambda method, *inputs: self.call(method, one, *inputs)

        def encode(method, *inputs):
            def per_copy(p, *rows):
                mean, logvar = self.call(method, p, *(r[None] for r in rows))
                return mean[0], logvar[0]

            return vmap(per_copy)(params, *inputs)

        return encode

    def posterior_pass(self, power, lengths, generators, grad):
        if len(set(lengths)) != 1:
            raise ValueError("HiT-DVAE / LigHT-DVAE enhance utterances of one length per batch (bucket them)")
        params = self.stacked if grad else _detached(self.stacked)
        c = self.model.config
        feats = self.model.features(power)

        encode = self._encoder(params, len(lengths))
        # the w encoder draws no noise: the sample pass keeps its output for the next E-step (KeptOutputs); the
        # copies' views are taken inside, where gradients are on

        def encode_w() -> tuple[Tensor, Tensor]:
            return self._encoder(self.stacked, len(lengths))("encode_w", feats)

        w_mean, w_logvar = self.kept.get(("encode_w", *tensor_key(power)), encode_w, grad)
        eps_w = draw(generators, [], (c.w_dim,), power)  # per utterance: w's noise, then z's
        w = torch.addcmul(w_mean, eps_w, torch.exp(0.5 * w_logvar))
        z_mean, z_logvar = encode("encode_z", feats, w)
        z = torch.addcmul(z_mean, draw(generators, lengths, (c.z_dim,), power), torch.exp(0.5 * z_logvar))
        logvar, mean_p, logvar_p = decode_own_past(self, z, w, grad)
        if not grad:
            return logvar, None
        kl_w = gaussian_kl(w_mean, w_logvar, reduction="none").sum(-1)
        return logvar, masked_kl(z_mean, z_logvar, mean_p, logvar_p, lengths) + kl_w


class RecurrentEngine(InferenceEngine):
    """DKF, RVAE, SRNN, many utterances at once: the inference networks of the copies run together
    (:func:`lightdvae.enhance.recurrent.posterior_pass`), the decoder and prior through the model's own methods.

    The speech features (``encode_speech``: no noise, so the same numbers until Adam moves the copies) of a pass
    without gradients are computed with their autograd graph and kept; the next :meth:`step`, at the same weights,
    uses them instead of encoding again (one encoder pass less per EM iteration)."""

    def __init__(self, model: DVAE, batch: int, lr: float):
        super().__init__(model, batch, lr)
        self._tape: recurrent.Tape | None = None
        self._frozen_cache: tuple[Tensor, Tensor] | None = None  # SRNN: (power, h from the true past)
        self._copies: list[dict[str, Tensor]] = []

    def _call(self, method: str, *args, copy: int | None = None):
        """The model's ``method`` with its frozen weights, or with utterance ``copy``'s inference copy."""
        if copy is not None:
            if method != "encode_speech":
                return self.call(method, self._copies[copy], *args)
            params = self._copies[copy]
            return self.kept.get(
                (method, copy, *tensor_key(*args)),
                lambda: self.call(method, params, *args),
                torch.is_grad_enabled(),
            )
        if method == "deterministic_h":  # depends on the mixture and frozen weights only: once per EM run
            if self._frozen_cache is None or self._frozen_cache[0] is not args[0]:
                self._frozen_cache = (args[0], self.call(method, self.frozen, *args))
            return self._frozen_cache[1]
        return self.call(method, self.frozen, *args)

    def posterior_pass(self, power, lengths, generators, grad):
        params = self.stacked if grad else _detached(self.stacked)
        with torch.enable_grad():  # the encoders' copies keep their graph in either pass (see the class docstring)
            rows = {n: p.unbind(0) for n, p in self.stacked.items()}  # one backward node per leaf, not per utterance
        self._copies = [{n: r[i] for n, r in rows.items()} for i in range(power.shape[0])]
        self._tape = recurrent.Tape() if grad else None
        eps = draw(generators, lengths, (self.model.config.z_dim,), power)
        logvar, (mean, logvar_q, mean_p, logvar_p) = recurrent.posterior_pass(
            self.model, params, power, eps, lengths, self._tape, self._call
        )
        self._copies = []
        return logvar, masked_kl(mean, logvar_q, mean_p, logvar_p, lengths) if grad else None

    def gradients(self, loss, params):
        tape, self._tape = self._tape, None
        return tape.gradients(loss, params)


def _detached(params: dict[str, Tensor]) -> dict[str, Tensor]:
    return {n: p.detach() for n, p in params.items()}
