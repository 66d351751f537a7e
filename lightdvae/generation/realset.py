"""The real set of a generation: the corpus split that FDSD and the comparison figure set the generated samples
against (by default the test split of the corpus the run was trained on), with one-line errors that say which
option to pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lightdvae.errors import DataError, GenerationError
from lightdvae.generation.common import logger
from lightdvae.runs import corpus_spec

#: What each error about the real set tells the user to do, when FDSD asked for it.
FDSD_SPEC_HINT = ", or --no-fdsd to skip FDSD"
FDSD_BUILD_HINT = " (build it with `lightdvae corpus build`), or pass --no-fdsd to skip FDSD"


def run_corpus_spec(meta: dict, data, run_dir: Path, hint: str):
    """``data`` when given, else the corpus spec the run records; :class:`GenerationError` when it records none."""
    if data is not None:
        return data
    spec = corpus_spec(meta)
    if spec is None:
        raise GenerationError(f"{run_dir} does not record the corpus it was trained on; pass --data SPEC{hint}")
    return spec


def open_corpus(spec, hint: str):
    """The :class:`~lightdvae.data.Corpus` of ``spec`` (never built here); its problems as a
    :class:`GenerationError`."""
    from lightdvae.data import resolve_corpus

    try:
        return resolve_corpus(spec, build=False)
    except DataError as exc:
        raise GenerationError(f"{exc}{hint}") from None


def real_files(corpus, split: str, need: int) -> list:
    """The files of the split; :class:`GenerationError` when there are fewer than ``need``."""
    try:
        files = corpus.split(split)
    except DataError as exc:
        raise GenerationError(f"{exc}; pass --data SPEC or --split, or --no-fdsd") from None
    if len(files) < need:
        raise GenerationError(
            f"the {split} split of corpus {corpus.name!r} ({corpus.root}) has {len(files)} file(s); FDSD needs at "
            f"least {need} real utterances: pass another --data / --split, or --no-fdsd"
        )
    return files


def load_real(corpus, split: str, pick: int | None = None) -> tuple[list[str], list[np.ndarray]]:
    """Names and front-end waveforms of the split's files (``pick``: that many, evenly spaced over the sorted split,
    so that they come from several speakers); unusable files are skipped with a warning."""
    from lightdvae.audio import AudioError, load_audio

    files = corpus.split(split)
    if pick is not None:
        idx = sorted({int(round(x)) for x in np.linspace(0, len(files) - 1, min(pick, len(files)))})
        files = [files[i] for i in idx]
    names, waves = [], []
    for f in files:
        try:
            waves.append(load_audio(f.path, log=False))
            names.append(str(f.path))
        except AudioError as exc:
            logger.warning("real set: skipped %s", exc)
    return names, waves
