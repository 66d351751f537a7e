"""Fréchet DeepSpeech Distance (FDSD, Bińkowski et al. 2020) with a pluggable feature network.

Typical use::

    from lightdvae.fdsd import fdsd, fdsd_floor

    result = fdsd("data/test_wavs", "runs/light/generated", draws=10)      # folders, or lists of waveforms
    print(result)              # 23.1 ± 0.8 (10 draws of 50 vs 50, features ds2-builtin)
    floors = fdsd_floor("data/test_wavs", sample_size=result.sample_size)   # real halves, real vs Griffin-Lim

The default feature network, ``"ds2-builtin"``, is a small DeepSpeech2-style phoneme recogniser shipped with the
package (``ds2_builtin.pt``, its training record in ``ds2_builtin.json``) and CTC-trained on the built-in espeak-ng
corpus by ``lightdvae fdsd train``; features are its penultimate layer's activations averaged over time (see
:mod:`lightdvae.fdsd.network`).  Register your own network (e.g. real DeepSpeech2 weights) with
:func:`register_extractor`; results carry the network's name (``result.features``) for tables.

Modules: :mod:`~lightdvae.fdsd.network` (the network, its log-mel front end, weights files),
:mod:`~lightdvae.fdsd.phonemes` (phoneme classes, CTC decoding, phoneme error rate),
:mod:`~lightdvae.fdsd.features` (extractor protocol, registry, batched extraction, folders),
:mod:`~lightdvae.fdsd.distance` (Fréchet distance, FDSD, floors),
:mod:`~lightdvae.fdsd.utterances` (a built-in corpus's transcribed utterances, length-sorted batches, masking),
:mod:`~lightdvae.fdsd.train` (CTC training and scoring of the network).
"""

from lightdvae.fdsd.distance import (
    FDSDResult,
    fdsd,
    fdsd_floor,
    fdsd_from_features,
    frechet_distance,
    frechet_distance_features,
    gaussian_stats,
    griffin_lim_resynthesis,
)
from lightdvae.fdsd.features import (
    CallableExtractor,
    DS2Extractor,
    FeatureExtractor,
    as_extractor,
    builtin_weights_path,
    extract_features,
    get_extractor,
    list_extractors,
    load_waves,
    register_extractor,
    unregister_extractor,
)
from lightdvae.fdsd.network import DeepSpeech2, DS2Config, load_weights, save_weights


def train_ds2(*args, **kwargs):
    """Train the DS2-style feature network: see :func:`lightdvae.fdsd.train.train_ds2`."""
    from lightdvae.fdsd.train import train_ds2 as _train

    return _train(*args, **kwargs)


__all__ = [
    "FDSDResult",
    "fdsd",
    "fdsd_floor",
    "fdsd_from_features",
    "frechet_distance",
    "frechet_distance_features",
    "gaussian_stats",
    "griffin_lim_resynthesis",
    "FeatureExtractor",
    "CallableExtractor",
    "DS2Extractor",
    "as_extractor",
    "register_extractor",
    "unregister_extractor",
    "get_extractor",
    "list_extractors",
    "builtin_weights_path",
    "extract_features",
    "load_waves",
    "DeepSpeech2",
    "DS2Config",
    "load_weights",
    "save_weights",
    "train_ds2",
]
