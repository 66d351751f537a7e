"""The latent E-step (``latent_e_step=True``): Adam on each frame's posterior instead of the encoder's weights.

The reference E-step (Bie et al. 2022) fine-tunes the inference network: one Adam step of the encoder's weights per
EM iteration, so the posterior of every frame moves only as far as a shared weight update carries it.  Here the
inference network runs once, on the mixture, and gives each utterance its starting posterior; from then on the
E-step optimises the posterior itself: a mean and a log-variance per frame and latent dimension (and per utterance
for HiT/LigHT-DVAE's w), mean-field, on the same negative ELBO (the IS divergence of ``|X|^2`` to ``g v + WH``
plus ``beta`` times the KL of the posterior to the model's prior).  This is the semi-amortised inference of Kim,
Wiseman, Miller, Sontag and Rush (*Semi-amortized variational autoencoders*, ICML 2018), which closes the
amortisation gap of an encoder that reads a mixture it was not trained on (Cremer, Li and Duvenaud, *Inference
suboptimality in variational autoencoders*, ICML 2018); the VAE-NMF enhancement of Leglaive, Girin and Horaud
(ICASSP 2018) also infers the latents per frame.

- The start: the model's own ``forward(power, sample=False)`` on each utterance's own frames (the posterior
  means along the mean path of a sequential posterior: DKF, RVAE, SRNN feed z_{t-1}'s mean back), with the model's
  weights, which stay as they are.
- A pass: ``z = mean + exp(logvar / 2) eps`` (``eps`` from the utterance's own generator: w's noise first, then
  z's, as the other engines draw), the decoder fed its own past where the model sees past speech (SRNN, HiT and
  LigHT-DVAE), and the prior's statistics of that sample for the KL (DKF's transition from z_{t-1}, SRNN's prior
  network, the transformers' z-prior decoder; N(0, I) for the VAE and RVAE, and for w).
- Adam is element-wise and each utterance's loss reads only its own rows, so a batch gives each utterance the
  result it gets alone (to the decoder's rounding), as with the weight copies.

With ``speech_past="estimate"`` the decoders that see past speech (SRNN, HiT-DVAE, LigHT-DVAE) are fed the EM's
current estimate of the clean speech instead of their own predictions: after each M-step the posterior second
moment of the observation model, ``E[|S|^2 | X] = G^2 |X|^2 + G WH`` with ``G = g v / (g v + WH)`` (the Wiener
filter), divided by the gain ``g`` (the decoder's own units, as its own past ``v`` is); before the first M-step the
mixture itself.  Where the own past is the prior's guess of the speech, the estimate is what the mixture says of
it: a decoder that does not carry over to a voice no longer builds on its own errors, and without the frame-by-frame
loop SRNN's and the transformers' decoders run over all frames at once (SRNN's h is the frozen LSTM over the
estimate, once per iteration; its prior reads the same h, also for an SRNN trained with scheduled sampling, whose
prior otherwise reads its own past).  A plug-in of the posterior mean where the exact E-step would average over the past
speech as well.

Without a posterior loop to differentiate, an E-step of DKF or RVAE is a few products over all frames at once (no
backward through LSTMs or the posterior recursion); SRNN and the transformers still decode their own past frame by
frame (not with the estimated past).  On the development set (docs/enhancement/README.md, "The latent E-step") the
latent E-step raised ESTOI where the encoder's fine-tuning lost it (the VAE at -5 dB: 0.382 -> 0.476 with 30
iterations of 10 steps) at Adam's rate :data:`LATENT_LR`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightdvae.enhance import recurrent
from lightdvae.enhance.inference import InferenceEngine, decode_own_past, draw, masked_kl
from lightdvae.enhance.settings import SPEECH_PASTS
from lightdvae.models import DVAE
from lightdvae.models.dkf import DKF
from lightdvae.models.layers import shift_right
from lightdvae.models.rvae import RVAE
from lightdvae.models.srnn import SRNN
from lightdvae.models.transformer import HiTDVAE, LigHTDVAE
from lightdvae.models.vae import VAE
from lightdvae.ops import gaussian_kl
from lightdvae.ops.sampling import exact_loops

__all__ = ["LatentEngine", "LATENT_LR"]

#: Adam's learning rate of the latent E-step (the posterior means and log-variances are of order one), chosen on
#: the development set with the shipped VAE among 0.03, 0.1 and 0.3 (docs/enhancement/README.md, "The latent
#: E-step").
LATENT_LR = 0.1


class LatentEngine(InferenceEngine):
    """The latent E-step for every family (see the module docstring): ``stacked`` holds each utterance's posterior
    statistics, ``z_mean`` and ``z_logvar`` ``(batch, frames, z_dim)`` (and ``w_mean``, ``w_logvar`` ``(batch,
    w_dim)`` for HiT/LigHT-DVAE), leaves made on the first pass from the model's encoder on the mixture;
    ``speech_past``: the decoders' past (``"own"`` or ``"estimate"``, see the module docstring)."""

    def __init__(self, model: DVAE, batch: int, lr: float, speech_past: str = "own"):
        if not isinstance(model, (VAE, DKF, RVAE, SRNN, HiTDVAE, LigHTDVAE)):
            raise ValueError(f"no latent E-step for {type(model).__name__}")
        if speech_past not in SPEECH_PASTS:
            raise ValueError(f"speech_past must be one of {', '.join(SPEECH_PASTS)}, got {speech_past!r}")
        self.lr = lr
        self.batch = batch
        #: the decoders are fed the EM's estimate of the past speech (only those that see past speech)
        self.estimated_past = speech_past == "estimate" and isinstance(model, (SRNN, HiTDVAE, LigHTDVAE))
        self._mixture: tuple[Tensor, int] | None = None  # the mixture the leaves were started from
        self._h_true: Tensor | None = None  # SRNN: the generative model's h over the mixture (frozen)
        self._past: Tensor | None = None  # the estimated past, decoder units (after the first M-step)
        self._h_past: Tensor | None = None  # SRNN: h over it
        super().__init__(model, batch, lr)

    def _leaves(self, own: dict[str, Tensor], batch: int) -> dict[str, Tensor]:
        return {}  # made from the first mixture seen (:meth:`_start`)

    def parameters_of(self, i: int) -> dict[str, Tensor]:
        """The model's own parameters (detached): the latent E-step does not move any weight."""
        return {n: p.detach() for n, p in self.model.named_parameters()}

    @torch.no_grad()
    def _start(self, power: Tensor, lengths: list[int]) -> None:
        """The leaves from the model's posterior on each utterance's own frames (once per mixture)."""
        if self._mixture is not None and self._mixture[0] is power and self._mixture[1] == power._version:
            return
        if power.shape[0] != self.batch:
            raise ValueError(f"this engine enhances {self.batch} utterances together, got {power.shape[0]}")
        hierarchical = isinstance(self.model, (HiTDVAE, LigHTDVAE))
        stats: dict[str, list[Tensor]] = {"z_mean": [], "z_logvar": []}
        if hierarchical:
            stats.update(w_mean=[], w_logvar=[])
        frames = power.shape[1]
        for i, n in enumerate(lengths):
            with exact_loops(False):
                out = self.model(power[i : i + 1, :n], past="gt", sample=False)
            for name in stats:
                value = getattr(out, name)[0]
                if name.startswith("z_") and n < frames:  # padded frames: a standard normal, never read
                    value = torch.cat([value, value.new_zeros(frames - n, value.shape[-1])])
                stats[name].append(value)
        self.stacked = {n: torch.stack(v).contiguous().requires_grad_() for n, v in stats.items()}
        self.optimizer = self._adam(self.stacked, self.lr)
        self._mixture = (power, power._version)
        self._h_true = self._past = self._h_past = None
        if isinstance(self.model, SRNN):
            self._h_true = self.call("deterministic_h", self.frozen, power)

    @torch.no_grad()
    def observe(self, power, state, speech, mask):
        """With the estimated past: ``E[|S|^2 | X] / g`` of the updated noise model and gain (module docstring),
        zero on padded frames; SRNN's h over it."""
        if not self.estimated_past:
            return
        gain = state.g[..., None]
        noise = state.noise_variance()
        per_gain = speech / torch.addcmul(noise, gain, speech)  # G / g, finite as g -> 0
        # E|S|^2 / g = (G^2 |X|^2 + G WH) / g = (G / g) (G |X|^2 + WH)
        past = per_gain * torch.addcmul(noise, gain * per_gain, power) * mask[..., None]
        self._past = past
        if isinstance(self.model, SRNN):
            self._h_past = self.call("deterministic_h", self.frozen, past)

    def step(self, power, lengths, mask, gain, noise, beta, generators):
        self._start(power, lengths)
        return super().step(power, lengths, mask, gain, noise, beta, generators)

    def posterior_pass(self, power, lengths, generators, grad):
        self._start(power, lengths)
        q = self.stacked if grad else {n: p.detach() for n, p in self.stacked.items()}
        w = None
        kl = None
        if "w_mean" in q:
            eps_w = draw(generators, [], (self.model.config.w_dim,), power)
            w = torch.addcmul(q["w_mean"], eps_w, torch.exp(0.5 * q["w_logvar"]))
            if grad:
                kl = gaussian_kl(q["w_mean"], q["w_logvar"], reduction="none").sum(-1)
        eps = draw(generators, lengths, (self.model.config.z_dim,), power)
        z = torch.addcmul(q["z_mean"], eps, torch.exp(0.5 * q["z_logvar"]))
        logvar, mean_p, logvar_p = self._decode(power, lengths, z, w, grad)
        if not grad:
            return logvar, None
        kl_z = masked_kl(q["z_mean"], q["z_logvar"], mean_p, logvar_p, lengths)
        return logvar, kl_z if kl is None else kl_z + kl

    def _decode(
        self, power: Tensor, lengths: list[int], z: Tensor, w: Tensor | None, grad: bool
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """The decoder's log-variance for ``z`` (and ``w``), fed its own past, and the prior's statistics of ``z``
        when ``grad`` (None: N(0, I), or not needed)."""
        model = self.model

        def call(method: str, *args, **kwargs):  # the model's method with its own (frozen) weights
            return self.call(method, self.frozen, *args, **kwargs)

        if isinstance(model, VAE):
            return call("decode", z), None, None
        if self.estimated_past:
            past = self._past if self._past is not None else power  # the mixture, before the first M-step
            if w is not None:
                feats = model.features(past)
                logvar = call("_decode_speech", z, w, feats)
                return logvar, *(call("_decode_prior", z, w, feats) if grad else (None, None))
            h = self._h_past if self._h_past is not None else self._h_true
            logvar = call("decode", h, z)
            return logvar, *(call("prior", h, shift_right(z, dim=1)) if grad else (None, None))
        if w is not None:
            return decode_own_past(self, z, w, grad)
        with exact_loops(False):  # a batch of <= 4 decodes on raw pointers (no bit-parity needed here)
            return recurrent.decode_pass(model, power, z, lengths, call, h_true=self._h_true, prior=grad)
