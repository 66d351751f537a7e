"""What the parts of :mod:`lightdvae.generation` share: the names of the files they write, their defaults and
limits, the integer check behind their one-line errors, and the figure helper that turns a missing matplotlib
into a note."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lightdvae.errors import GenerationError

logger = logging.getLogger("lightdvae.generation")

GENERATION_KIND = "lightdvae-generation"
SWAP_KIND = "lightdvae-swap-w"
FDSD_KIND = "lightdvae-fdsd"  #: what ``lightdvae report`` looks for (see :mod:`lightdvae.report`)
FORMAT_VERSION = 1
MANIFEST = "generation.json"
FDSD_FILE = "fdsd.json"
STATE = "state.json"
SWAP_FILE = "swap_w.json"
WAV_DIR = "wav"
SPEC_DIR = "spectrograms"
GENERATION_FIGURE = "generation.png"
COMPARISON_FIGURE = "real_vs_generated.png"
SWAP_FIGURE = "swap_w.png"
SWAP_DIR = "swap_w"  #: ``RUN_DIR/swap_w/<a>--<b>-<past>``: the default folder of a w exchange

DEFAULT_N = 100
DEFAULT_FRAMES = 200  #: 3.2 s, about the length of a built-in corpus test utterance (1.5 to 4.6 s, mean 2.7 s)
DEFAULT_BATCH = 32
DEFAULT_FIGURES = 8
DEFAULT_DRAWS = 10
MAX_N = 100_000
MIN_FRAMES = 2  #: a waveform needs (frames - 1) * 256 > 0 samples
MAX_FRAMES = 100_000  #: 26.7 min per sample
PEAK = 0.95  #: peak level of the written generated waveforms
COMPARISON_PANELS = 4  #: real and generated spectrograms per row of the comparison figure


def check_int(value, name: str, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]``, else a :class:`GenerationError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise GenerationError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise GenerationError(f"{name} must be {bound}, got {value}")
    return value


def save_figure_or_note(make: Callable, path: Path, notes: list[str]) -> str | None:
    """Draw and save one figure; a missing matplotlib or a drawing error is a note, never a failed run."""
    try:
        from lightdvae.figures import save_figure

        save_figure(make(), path)
    except ImportError:
        notes.append(f"{path.name} left out: matplotlib is not installed (pip install matplotlib)")
        return None
    except Exception as exc:  # a figure is not worth the run
        logger.warning("no figure %s: %s: %s", path.name, type(exc).__name__, exc)
        notes.append(f"{path.name} left out: {type(exc).__name__}: {exc}")
        return None
    return str(path)
