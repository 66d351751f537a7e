"""Corpus discovery: :func:`discover` reads the corpus at a folder in a given layout, or detects the layout."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from lightdvae.data.corpora.corpus import SPLITS, Corpus
from lightdvae.data.corpora.layouts import (
    BUILD_STATE,
    BUILTIN_MARKER,
    VB_TEST_FOLDER,
    VB_TRAIN_FOLDER,
    WSJ0_FOLDERS,
    builtin_corpus,
    files_corpus,
    find_dirs,
    folder_corpus,
    list_audio_files,
    list_files,
    lists_corpus,
    split_dirs,
    vb_corpus,
    wsj0_corpus,
)
from lightdvae.errors import DataError, DataWarning

LAYOUTS = ("auto", "folder", "files", "lists", "wsj0", "vb", "builtin")

__all__ = ["LAYOUTS", "discover"]


def _check_disjoint(corpus: Corpus) -> None:
    """The built-in corpus promises speaker-disjoint splits; say so loudly if a hand-edited one breaks that."""
    if corpus.layout != "builtin":
        return  # WSJ0 and VoiceBank are disjoint by construction; a generic folder's speakers are only guessed
    first_split: dict[str, str] = {}
    shared = set()
    for split in SPLITS:
        for spk in {f.speaker for f in corpus.splits.get(split) or []}:
            if first_split.setdefault(spk, split) != split:
                shared.add(spk)
    if shared:
        names = ", ".join(sorted(shared))
        corpus.notes.append(f"speakers shared between splits: {names}")
        warnings.warn(f"{corpus.root}: splits are not speaker-disjoint ({names})", DataWarning, stacklevel=3)


def discover(root: str | os.PathLike, layout: str = "auto") -> Corpus:
    """Find the files of the corpus at ``root`` and its train / val / test split.

    Args:
        root: the corpus folder.
        layout: one of ``auto`` (detect), ``folder``, ``files`` (a folder of audio files: a test set only),
            ``lists``, ``wsj0``, ``vb``, ``builtin`` (see the module doc).
    Returns:
        a :class:`Corpus`.
    Raises:
        DataError: the folder does not exist, is not a folder, is empty, or the layout is incomplete; the message
        names the folders (or list files) that were expected.
    """
    if layout not in LAYOUTS:
        raise DataError(f"unknown corpus layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"corpus folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"corpus path {root} is not a folder")
    root = root.resolve()
    if layout == "folder":
        corpus = folder_corpus(root)
    elif layout == "files":
        corpus = files_corpus(root)
    elif layout == "lists":
        corpus = lists_corpus(root)
    elif layout == "wsj0":
        corpus = wsj0_corpus(root)
    elif layout == "vb":
        corpus = vb_corpus(root)
    elif layout == "builtin":
        corpus = builtin_corpus(root)
    else:
        corpus = _detect(root)
    _check_disjoint(corpus)
    return corpus


def _detect(root: Path) -> Corpus:
    if (root / BUILTIN_MARKER).is_file():
        return builtin_corpus(root)
    if (root / BUILD_STATE).is_file():
        raise DataError(
            f"{root} holds an unfinished built-in corpus (the build was interrupted); "
            f"finish it with `lightdvae corpus build {root}` (the same options resume it)"
        )
    dirs = split_dirs(root)
    if "train" in dirs or "val" in dirs:
        return folder_corpus(root)
    lists = list_files(root)
    if "train" in lists or "val" in lists:
        return lists_corpus(root)
    found = find_dirs(root, set(WSJ0_FOLDERS.values()) | {VB_TRAIN_FOLDER, VB_TEST_FOLDER})
    if any(name in found for name in WSJ0_FOLDERS.values()):
        return wsj0_corpus(root, found)
    if VB_TRAIN_FOLDER in found or VB_TEST_FOLDER in found:
        return vb_corpus(root, found)
    try:
        has_anything = any(not p.name.startswith(".") for p in root.iterdir())
    except OSError as exc:
        raise DataError(f"cannot list {root}: {exc.strerror or exc}") from None
    if not has_anything:
        raise DataError(f"corpus folder {root} is empty")
    if list_audio_files(root):
        return files_corpus(root)
    raise DataError(
        f"cannot tell the layout of {root} (no wav/flac files). Expected one of: sub-folders train/, val/, test/; "
        f"list files train.txt, val.txt, test.txt; WSJ0 folders {', '.join(WSJ0_FOLDERS.values())}; "
        f"VoiceBank-DEMAND folders {VB_TRAIN_FOLDER} and {VB_TEST_FOLDER}; or a corpus built by "
        "`lightdvae corpus build`"
    )
