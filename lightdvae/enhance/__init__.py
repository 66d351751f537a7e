"""Unsupervised speech enhancement with a trained DVAE as the clean-speech prior (issue #16).

X. Bie, S. Leglaive, X. Alameda-Pineda, L. Girin, "Unsupervised speech enhancement using dynamical variational
autoencoders", IEEE/ACM Transactions on Audio, Speech, and Language Processing 30, 2022.

The mixture's STFT ``X`` (SPEC section 2; the waveform divided by its peak) is modelled as
``X_ft ~ N_c(0, g_t v_ft + (WH)_ft)``: ``v`` the clean-speech variance from the DVAE's decoder, ``g`` a gain per
frame, ``WH`` a rank-K NMF of the noise variance.  A variational EM alternates, for each iteration:

- E-step (:mod:`~lightdvae.enhance.inference`): one Adam step (``e_steps``: that many, each on a new sample) of the
  model's inference network (its ``inference_parameters()``; the decoder and the prior stay frozen) on the negative
  ELBO whose reconstruction term is ``d_IS(|X|^2, g v + WH)`` and whose KL terms are those of training, weighted by
  ``beta``; then a new sample of z and of ``v``.  The encoder reads the mixture's power; the models that see past
  speech (SRNN, HiT/LigHT-DVAE) decode with their own past (``past="gen"``).
- M-step (:mod:`~lightdvae.enhance.noise`): IS-NMF multiplicative updates of W, then H, W's columns normalised,
  then the gain g.

The estimate is the Wiener filter ``g v / (g v + WH)`` applied to ``X`` (noisy phase), inverted by the iSTFT
(:mod:`~lightdvae.enhance.api`; the loop is :mod:`~lightdvae.enhance.vem`).  Defaults as the reference runs them:
K = 8, Adam lr 1e-3, 100 iterations of one E-step each, random W and H, g = 1; the E-step's ``beta`` is 1 (the
priors were trained with 0.01).  More E-steps and fewer iterations enhance better (``iterations=30, e_steps=30``
with the shipped VAE: every metric up at every SNR of the built-in test set; docs/enhancement/README.md,
"More Adam steps per E-step").  One departure: HiT/LigHT-DVAE take their E-step at 1e-4, chosen on a development set
(:func:`~lightdvae.enhance.engines.default_lr`; at 1e-3 their post-norm encoders come apart).  The model runs in
eval mode (no dropout) and is not modified.  ``latent_e_step=True`` (:mod:`~lightdvae.enhance.latent`) replaces the
reference's E-step: the encoder reads the mixture once, then Adam moves each frame's posterior mean and log-variance
instead of the encoder's weights (semi-amortised inference); with it, ``speech_past="estimate"`` feeds SRNN's and
the transformers' decoders the EM's estimate of the past speech instead of their own predictions (no frame-by-frame
loop).

Typical use::

    from lightdvae.enhance import EnhanceSettings, enhance
    result = enhance(model, noisy_16k, iterations=100, seed=0)
    result.waveform, result.loss, result.seconds
    settings = EnhanceSettings(iterations=300, beta=0.01)   # the EM's options, checked once, passed as they are
    result = enhance(model, noisy_16k, settings)

A whole noisy test set (:mod:`~lightdvae.enhance.dataset`; ``lightdvae enhance RUN --data noisy:DIR``)::

    from lightdvae.enhance import enhance_set
    summary = enhance_set("pretrained:vae", "noisy:noisy-builtin", settings)     # or iterations=100, ...
    summary["overall"]["improvement"]["si_sdr"]["mean"], summary["by_snr"]["0"]["output"]["pesq_wb"]
"""

from lightdvae.enhance.api import batches, enhance, enhance_batch, stream_seed
from lightdvae.enhance.dataset import enhance_noisy_set, enhance_set
from lightdvae.enhance.engines import default_lr, engine_for, settings_for
from lightdvae.enhance.inference import inference_names
from lightdvae.enhance.noise import (
    NoiseModel,
    init_noise_model,
    m_step,
    m_step_and_divergence,
    mixture_divergence,
    mixture_reconstruction,
)
from lightdvae.enhance.set_outputs import ENHANCE_METRICS, SET_COLUMNS, default_enhance_dir, read_set_rows
from lightdvae.enhance.set_summary import ENHANCE_KIND, console_table, read_enhance_summary
from lightdvae.enhance.settings import EnhanceResult, EnhanceSettings, resolve_settings
from lightdvae.enhance.vem import run_vem, wiener_filter

__all__ = [
    "enhance",
    "enhance_batch",
    "EnhanceResult",
    "EnhanceSettings",
    "resolve_settings",
    "batches",
    "stream_seed",
    "engine_for",
    "default_lr",
    "settings_for",
    "inference_names",
    "NoiseModel",
    "init_noise_model",
    "m_step",
    "m_step_and_divergence",
    "mixture_divergence",
    "mixture_reconstruction",
    "run_vem",
    "wiener_filter",
    "enhance_set",
    "enhance_noisy_set",
    "ENHANCE_METRICS",
    "ENHANCE_KIND",
    "SET_COLUMNS",
    "default_enhance_dir",
    "read_set_rows",
    "read_enhance_summary",
    "console_table",
]
