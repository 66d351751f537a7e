"""The output folder of an evaluation: its file names, where it goes by default, and the files written per
utterance besides its row (a figure and an example for the first files, the resynthesised audio).

``RUN_DIR/eval/[<corpus>-]<split>-<past>[-last]/`` holds ``per_file.csv``, ``summary.json``, ``state.json``,
``figures/<stem>.png``, ``examples/<stem>.npz`` and ``audio/<name>.wav``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from lightdvae._io import atomic_write_bytes, slug
from lightdvae.runs import EVAL_DIR

PER_FILE = "per_file.csv"
SUMMARY = "summary.json"
STATE = "state.json"
AUDIO_DIR = "audio"
FIGURE_DIR = "figures"
EXAMPLE_DIR = "examples"
#: The evaluation's own files and folders (``overwrite`` deletes them, nothing else).
OUTPUT_FILES = (PER_FILE, SUMMARY)
OUTPUT_DIRS = (AUDIO_DIR, FIGURE_DIR, EXAMPLE_DIR)
DEFAULT_FIGURES = 3


def default_out_dir(run_dir, split: str = "test", past: str = "gen", corpus_tag: str | None = None, which="best"):
    """``RUN_DIR/eval/[<corpus_tag>-]<split>-<past>[-<which>]``."""
    name = f"{split}-{past}" if not corpus_tag else f"{corpus_tag}-{split}-{past}"
    if which != "best":
        name += f"-{Path(str(which)).stem}"
    return Path(run_dir) / EVAL_DIR / name


def corpus_tag(name: str) -> str:
    """The folder-name form of a corpus name (the prefix of an evaluation on another corpus than the run's)."""
    return slug(name, default="corpus")


def file_name(path: Path, root: Path) -> str:
    """A file's name in the results: its path relative to the corpus root (POSIX), else its file name."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.name


def stem(name: str) -> str:
    """A flat file stem for figures and examples: ``test/spk/utt.wav`` -> ``test__spk__utt``."""
    return slug(str(Path(name).with_suffix("")).replace("/", "__").replace("\\", "__"), default="corpus")


def audio_path(out: str | os.PathLike, name: str) -> Path:
    """Where ``save_audio`` puts a file's resynthesis: ``out/audio/<name>.wav``."""
    return Path(out) / AUDIO_DIR / Path(name).with_suffix(".wav")


def example_path(out: str | os.PathLike, name: str) -> Path:
    """``out/examples/<stem>.npz``: the reference and estimated power of a file (for ``lightdvae report``)."""
    return Path(out) / EXAMPLE_DIR / f"{stem(name)}.npz"


def write_example(out: Path, name: str, reference: np.ndarray, estimate: np.ndarray, title: str) -> None:
    """``examples/<stem>.npz`` (reference and estimated power, float32) and ``figures/<stem>.png``."""
    from lightdvae.figures import resynthesis_figure, save_figure

    buf = io.BytesIO()
    np.savez(buf, reference=reference.astype(np.float32), estimate=estimate.astype(np.float32), name=np.array(name))
    atomic_write_bytes(example_path(out, name), buf.getvalue())
    fig = resynthesis_figure(reference, {title: estimate}, suptitle=name)
    save_figure(fig, Path(out) / FIGURE_DIR / f"{stem(name)}.png")
