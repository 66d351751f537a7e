"""Data sets: corpus discovery, the spectrogram cache, torch datasets and the built-in espeak-ng corpus.

Typical use::

    from lightdvae.data import make_loaders
    loaders = make_loaders("builtin", segment_frames=50, batch_size=128)   # or "wsj0:/data/wsj0", "vb:/data/vb"
    for x in loaders.train:          # (batch, 50, 513) float32 power spectrograms
        ...
    for item in loaders.test:        # whole utterances: item["power"], item["spec"], item["wave"], ...
        ...

Submodules:

* :mod:`~lightdvae.data.corpora`: what a corpus is, its layouts (folder, lists, WSJ0, VoiceBank, built-in) and
  :func:`discover`; :func:`read_manifest` reads a built-in corpus's manifest.
* :mod:`~lightdvae.data.resolve`: :func:`resolve_corpus`, a spec string (``builtin``, ``wsj0:DIR``, a folder)
  to a :class:`Corpus`, building the built-in corpus on first use.
* :mod:`~lightdvae.data.builtin`: the built-in espeak-ng corpus and its builder (:func:`build_corpus`).  Imported
  lazily: it is only needed to build one, and ``import lightdvae.data`` does not load it.
* :mod:`~lightdvae.data.cache`: the on-disk spectrogram cache.
* :mod:`~lightdvae.data.datasets`: the torch datasets (segments, whole utterances).
* :mod:`~lightdvae.data.loaders`: :func:`make_loaders`, the DataLoaders of a corpus in one call.
* :mod:`~lightdvae.data.batches`: the sharded segment batches of training (seeded by seed and epoch).
* :mod:`~lightdvae.data.noisy`: noisy test sets for speech enhancement: :func:`build_noisy_set` mixes a test split
  with generated or user noises at exact SNRs; :func:`read_noisy_set` reads ``noisy:DIR``, ``vbd:DIR`` and
  ``wsj0-qut:DIR``.  Imported on first use.

:class:`DataError` and :class:`DataWarning` are :mod:`lightdvae.errors`' (re-exported here).
"""

from lightdvae.data.cache import CacheEntry, CacheReport, SpectrogramCache
from lightdvae.data.corpora import (
    SPLITS,
    AudioFile,
    Corpus,
    builtin_corpus_dir,
    data_root,
    default_cache_dir,
    discover,
    list_audio_files,
    read_manifest,
)
from lightdvae.data.datasets import SEGMENT_FRAMES, SegmentDataset, UtteranceDataset, collate_utterances
from lightdvae.data.loaders import Loaders, make_loaders
from lightdvae.data.resolve import resolve_corpus
from lightdvae.errors import DataError, DataWarning


def build_corpus(*args, **kwargs):
    """Build the built-in espeak-ng corpus: see :func:`lightdvae.data.builtin.build_corpus` (imported on call)."""
    from lightdvae.data.builtin import build_corpus as _build

    return _build(*args, **kwargs)


def build_noisy_set(*args, **kwargs):
    """Build a noisy test set: see :func:`lightdvae.data.noisy.build_noisy_set` (imported on call)."""
    from lightdvae.data.noisy import build_noisy_set as _build

    return _build(*args, **kwargs)


def read_noisy_set(spec):
    """Read a noisy test set (``noisy:DIR``, ``vbd:DIR``, ``wsj0-qut:DIR``): see
    :func:`lightdvae.data.noisy.read_noisy_set` (imported on call)."""
    from lightdvae.data.noisy import read_noisy_set as _read

    return _read(spec)


__all__ = [
    "SPLITS",
    "SEGMENT_FRAMES",
    "AudioFile",
    "Corpus",
    "DataError",
    "DataWarning",
    "CacheEntry",
    "CacheReport",
    "SpectrogramCache",
    "SegmentDataset",
    "UtteranceDataset",
    "Loaders",
    "collate_utterances",
    "make_loaders",
    "discover",
    "resolve_corpus",
    "data_root",
    "builtin_corpus_dir",
    "default_cache_dir",
    "list_audio_files",
    "build_corpus",
    "read_manifest",
    "build_noisy_set",
    "read_noisy_set",
]
