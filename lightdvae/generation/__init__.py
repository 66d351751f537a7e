"""Generation from the prior, its FDSD, and the w exchange (SPEC section 5).

Generation (:func:`generate_run`, ``lightdvae generate``): ``n`` sequences of ``frames`` frames sampled from the
model's prior, decoded autoregressively in batches (each batch with its own seeded random stream, so an interrupted
generation resumes batch by batch), Griffin-Lim'ed to 16 kHz waveforms and written with figures, a manifest
(``generation.json``) and their FDSD against the run's corpus split (``fdsd.json``, with real-vs-real floors at the
same sample size).  The w exchange (:func:`swap_w`, ``lightdvae swap-w``; :func:`exchange_w` on tensors): two
utterances decoded with each other's sequence latent w (HiT-DVAE, LigHT-DVAE), with a check that w carries global
traits (``swap_w.json``).

Submodules:

- :mod:`~lightdvae.generation.prior`: :func:`generate_run` / :func:`generate_model`, the batches, the output
  folder's layout.
- :mod:`~lightdvae.generation.settings`: :class:`GenerationSettings`, the options of one generation, checked once,
  and its fingerprint.
- :mod:`~lightdvae.generation.manifest`: ``generation.json`` and :func:`read_manifest`.
- :mod:`~lightdvae.generation.journal`: ``state.json`` (the fingerprint and the batches done), the per-batch seeded
  generators and the samples' names: what makes a generation resumable.
- :mod:`~lightdvae.generation.fdsd`: FDSD of the generated set against the real one, its floors and sample-size
  rule, the summary in the manifest and :func:`fdsd_line`.
- :mod:`~lightdvae.generation.realset`: the real set (the corpus split) with one-line errors.
- :mod:`~lightdvae.generation.figures`: ``generation.png`` and ``real_vs_generated.png``.
- :mod:`~lightdvae.generation.exchange`: :func:`exchange_w`, :func:`swap_w` and its check, read in one line by
  :func:`exchange_verdict`; :func:`exchange_pair`: two test utterances of two speakers of a corpus.
- :mod:`~lightdvae.generation.common`: file names, defaults and limits, the integer check, the figure helper.
"""

from __future__ import annotations

from lightdvae.errors import GenerationError
from lightdvae.generation.common import (
    COMPARISON_FIGURE,
    COMPARISON_PANELS,
    DEFAULT_BATCH,
    DEFAULT_DRAWS,
    DEFAULT_FIGURES,
    DEFAULT_FRAMES,
    DEFAULT_N,
    FDSD_FILE,
    FDSD_KIND,
    FORMAT_VERSION,
    GENERATION_FIGURE,
    GENERATION_KIND,
    MANIFEST,
    MAX_FRAMES,
    MAX_N,
    MIN_FRAMES,
    PEAK,
    SPEC_DIR,
    STATE,
    SWAP_FIGURE,
    SWAP_FILE,
    SWAP_KIND,
    WAV_DIR,
)
from lightdvae.generation.exchange import W_MODELS, exchange_pair, exchange_verdict, exchange_w, swap_w
from lightdvae.generation.fdsd import fdsd_line
from lightdvae.generation.manifest import read_manifest
from lightdvae.generation.prior import default_out_dir, generate_model, generate_run
from lightdvae.generation.settings import GenerationSettings

__all__ = [
    "GenerationError",
    "generate_run",
    "generate_model",
    "default_out_dir",
    "swap_w",
    "exchange_w",
    "exchange_verdict",
    "exchange_pair",
    "read_manifest",
    "fdsd_line",
    "GENERATION_KIND",
    "SWAP_KIND",
    "GenerationSettings",
    "W_MODELS",
    "FDSD_KIND",
    "FORMAT_VERSION",
    "MANIFEST",
    "FDSD_FILE",
    "STATE",
    "SWAP_FILE",
    "WAV_DIR",
    "SPEC_DIR",
    "GENERATION_FIGURE",
    "COMPARISON_FIGURE",
    "SWAP_FIGURE",
    "DEFAULT_N",
    "DEFAULT_FRAMES",
    "DEFAULT_BATCH",
    "DEFAULT_FIGURES",
    "DEFAULT_DRAWS",
    "MAX_N",
    "MIN_FRAMES",
    "MAX_FRAMES",
    "PEAK",
    "COMPARISON_PANELS",
]
