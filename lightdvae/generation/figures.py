"""The figures of a generation folder: ``generation.png`` (the first samples' spectrograms, one colour scale) and
``real_vs_generated.png`` (real utterances of the corpus split above generated ones).  A figure that cannot be
drawn is a note in the manifest, never a failed generation."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lightdvae.generation.common import (
    COMPARISON_FIGURE,
    COMPARISON_PANELS,
    GENERATION_FIGURE,
    SPEC_DIR,
    save_figure_or_note,
)
from lightdvae.generation.realset import load_real


def generation_figures(
    out: Path,
    names: list[str],
    n_figures: int,
    frames: int,
    temperature: float,
    info: dict,
    corpus,
    split: str,
    notes: list[str],
    redraw: bool,
) -> dict:
    """``generation.png`` (the first samples' spectrograms) and ``real_vs_generated.png`` (with a corpus), each
    drawn when missing or ``redraw``.  Returns ``{kind: file name}`` of those present."""
    label = info["model"]["label"]
    spectra = [np.load(out / SPEC_DIR / f"{names[i]}.npy") for i in range(n_figures)]
    grid_path, compare_path = out / GENERATION_FIGURE, out / COMPARISON_FIGURE
    if not spectra:  # --figures 0: none of this generation's figures
        grid_path.unlink(missing_ok=True)
        compare_path.unlink(missing_ok=True)
    if spectra and (redraw or not grid_path.is_file()):
        _sample_grid(spectra, grid_path, label, temperature, notes)
    if corpus is not None and spectra and (redraw or not compare_path.is_file()):
        _comparison(spectra, compare_path, label, frames, corpus, split, notes)
    made = {}
    for key, path in (("generation", grid_path), ("real_vs_generated", compare_path)):
        if path.is_file():
            made[key] = path.name
    return made


def _sample_grid(spectra: list[np.ndarray], path: Path, label: str, temperature: float, notes: list[str]) -> None:
    def make_grid():
        from lightdvae.figures import spectrogram_grid

        panels = [(f"sample {i}", s) for i, s in enumerate(spectra)]
        title = f"{label}: samples from the prior (temperature {temperature:g})"
        return spectrogram_grid(panels, ncols=min(4, len(panels)), suptitle=title)

    save_figure_or_note(make_grid, path, notes)


def _comparison(spectra, path: Path, label: str, frames: int, corpus, split: str, notes: list[str]) -> None:
    real_names, real_waves = load_real(corpus, split, pick=COMPARISON_PANELS)
    if not real_waves:
        return

    def make_comparison():
        from lightdvae.audio import power_spectrogram
        from lightdvae.figures import spectrogram_grid

        real = [
            (f"real: {Path(nm).name}", power_spectrogram(w).numpy()[:frames])
            for nm, w in zip(real_names, real_waves, strict=True)
        ]
        fake = [(f"generated: sample {i}", s) for i, s in enumerate(spectra[:COMPARISON_PANELS])]
        title = f"corpus {corpus.name}, {split} split (at most {frames} frames), above {label} samples"
        return spectrogram_grid([real, fake], suptitle=title, share_time=False)

    save_figure_or_note(make_comparison, path, notes)
