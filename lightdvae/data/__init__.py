"""Data sets: corpus discovery, the spectrogram cache, torch datasets and the built-in espeak-ng corpus.

Typical use::

    from lightdvae.data import make_loaders
    loaders = make_loaders("builtin", segment_frames=50, batch_size=128)   # or "wsj0:/data/wsj0", "vb:/data/vb"
    for x in loaders.train:          # (batch, 50, 513) float32 power spectrograms
        ...
    for item in loaders.test:        # whole utterances: item["power"], item["spec"], item["wave"], ...
        ...

See :func:`resolve_corpus` for the accepted corpus specs, :mod:`lightdvae.data.cache` for the cache, and
:mod:`lightdvae.data.builtin` for the built-in corpus.  The built-in corpus module is imported lazily (it is
only needed to build one).
"""

from lightdvae.data.cache import CacheEntry, CacheReport, SpectrogramCache
from lightdvae.data.corpora import (
    SPLITS,
    AudioFile,
    Corpus,
    DataError,
    DataWarning,
    builtin_corpus_dir,
    data_root,
    default_cache_dir,
    discover,
    list_audio_files,
    resolve_corpus,
)
from lightdvae.data.datasets import (
    SEGMENT_FRAMES,
    Loaders,
    SegmentDataset,
    UtteranceDataset,
    collate_utterances,
    make_loaders,
)


def build_corpus(*args, **kwargs):
    """Build the built-in espeak-ng corpus: see :func:`lightdvae.data.builtin.build_corpus`."""
    from lightdvae.data.builtin import build_corpus as _build

    return _build(*args, **kwargs)


def read_manifest(root):
    """Rows of a built-in corpus's manifest: see :func:`lightdvae.data.builtin.read_manifest`."""
    from lightdvae.data.builtin import read_manifest as _read

    return _read(root)


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
]
