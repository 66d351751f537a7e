"""Finding the audio files of a corpus and its train / val / test split (SPEC section 3).

Layouts recognised (``layout=`` of :func:`discover`, or the prefix of a spec for :func:`lightdvae.data.resolve_corpus`):

``folder``
    A folder with split sub-folders ``train/``, ``val/`` and ``test/`` (also ``training``, ``valid``,
    ``validation``, ``dev``, ``eval``, ...), each searched recursively for ``.wav`` / ``.flac``.
``lists``
    A folder with list files ``train.txt``, ``val.txt``, ``test.txt`` (or ``.lst``, ``.list``, ``.scp``): one audio
    path per line, relative to the list's folder or absolute; ``#`` starts a comment.
``wsj0``
    WSJ0: ``si_tr_s`` (train), ``si_dt_05`` (validation), ``si_et_05`` (test), found anywhere up to a few folders
    deep (the LDC discs nest them, e.g. ``csr_1/11-1.1/wsj0/si_tr_s``); the speaker is the sub-folder name.
``vb``
    VoiceBank-DEMAND: ``clean_trainset_28spk_wav`` (speakers p226 and p287 are the validation split, the other
    26 train) and ``clean_testset_wav`` (test).  The 48 kHz files are resampled on loading.
``builtin``
    A corpus written by ``lightdvae corpus build``: split folders plus ``manifest.jsonl`` (speaker, text and
    phoneme transcript of every file) and ``corpus.json``.

The test split may be missing from a ``folder`` or ``lists`` corpus (training still works; evaluation raises a
clear error); train and validation are required.  Every problem is a :class:`DataError` naming what was
expected and what was found.

Submodules: :mod:`~lightdvae.data.corpora.corpus` (:class:`Corpus`, :class:`AudioFile`, where the data lives),
:mod:`~lightdvae.data.corpora.layouts` (one reader per layout, the built-in corpus's manifest) and
:mod:`~lightdvae.data.corpora.discovery` (:func:`discover`: the layout of a folder).  Turning a spec string into
a corpus (and building the built-in one on first use) is :func:`lightdvae.data.resolve_corpus`, one level up.
"""

from lightdvae.data.corpora.corpus import SPLITS, AudioFile, Corpus, builtin_corpus_dir, data_root, default_cache_dir
from lightdvae.data.corpora.discovery import LAYOUTS, discover
from lightdvae.data.corpora.layouts import (
    BUILD_STATE,
    BUILTIN_MANIFEST,
    BUILTIN_MARKER,
    LIST_SUFFIXES,
    SEARCH_DEPTH,
    SPLIT_ALIASES,
    VB_TEST_FOLDER,
    VB_TRAIN_FOLDER,
    VB_VAL_SPEAKERS,
    WSJ0_FOLDERS,
    WSJ0_SPHERE_EXTENSIONS,
    list_audio_files,
    read_manifest,
)
from lightdvae.errors import DataError, DataWarning  # re-exported: they used to be defined here

__all__ = [
    "DataError",
    "DataWarning",
    "AudioFile",
    "Corpus",
    "SPLITS",
    "discover",
    "resolve_corpus",
    "data_root",
    "builtin_corpus_dir",
    "default_cache_dir",
    "list_audio_files",
    "read_manifest",
]

#: Also importable from here, as from the single module this package replaced.
__all__ += [
    "LAYOUTS",
    "SPLIT_ALIASES",
    "LIST_SUFFIXES",
    "WSJ0_FOLDERS",
    "WSJ0_SPHERE_EXTENSIONS",
    "VB_TRAIN_FOLDER",
    "VB_TEST_FOLDER",
    "VB_VAL_SPEAKERS",
    "BUILTIN_MARKER",
    "BUILTIN_MANIFEST",
    "BUILD_STATE",
    "SEARCH_DEPTH",
]


def __getattr__(name: str):
    # Compatibility: ``from lightdvae.data.corpora import resolve_corpus`` keeps working, although resolving a spec
    # lives one level up (lightdvae.data.resolve imports the layouts, never the reverse at import time).
    if name == "resolve_corpus":
        from lightdvae.data.resolve import resolve_corpus

        return resolve_corpus
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
