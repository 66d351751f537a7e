"""SI-SDR of a run's resynthesis of the test utterances, per frequency band: which part of the spectrum a model
gets right.  Whole-band SI-SDR weights each bin by its energy, so the low bands (harmonics, first formants) decide
it; the Itakura-Saito training loss weights each bin by its relative error.

    python scripts/band_sisdr.py RUN [RUN ...] [--data builtin] [--split test] [--past gt] [--edges 0,1000,4000,8000]

Each utterance is resynthesised whole (original phase, latents at their means, as ``lightdvae eval``); the
reference and the resynthesis are then band-limited alike (STFT bins outside the band set to zero, inverse STFT)
and scored with SI-SDR.  Prints the mean over files per band.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from lightdvae.audio import SAMPLE_RATE, istft, stft
from lightdvae.data import resolve_corpus
from lightdvae.evaluate import resynthesize_file
from lightdvae.metrics import si_sdr
from lightdvae.runs import load_run

N_BINS = 513


def band_limited(spec: torch.Tensor, lo: int, hi: int, length: int) -> np.ndarray:
    masked = spec.clone()
    masked[..., :lo] = 0
    masked[..., hi:] = 0
    return istft(masked, length).numpy()


def band_scores(run: str, files, bins: list[tuple[int, int]], past: str) -> np.ndarray:
    """``(files, bands)`` SI-SDR in dB."""
    model = load_run(run).eval()
    rows = []
    for path in files:
        reference, estimate, info = resynthesize_file(model, path, past)
        spec, estimated, n = info["spec"], stft(estimate), reference.size
        rows.append([si_sdr(band_limited(spec, lo, hi, n), band_limited(estimated, lo, hi, n)) for lo, hi in bins])
    return np.array(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--data", default="builtin")
    p.add_argument("--split", default="test")
    p.add_argument("--past", choices=("gen", "gt"), default="gt")
    p.add_argument("--edges", default="0,1000,4000,8000", help="band edges in Hz (default 0,1000,4000,8000)")
    args = p.parse_args()
    edges = [float(e) for e in args.edges.split(",")]
    if len(edges) < 2 or edges != sorted(edges) or edges[0] < 0 or edges[-1] > SAMPLE_RATE / 2:
        p.error(f"--edges must be increasing frequencies within 0..{SAMPLE_RATE // 2} Hz, got {args.edges}")
    bands = list(zip(edges[:-1], edges[1:], strict=True))
    hz_per_bin = SAMPLE_RATE / 2 / (N_BINS - 1)
    bins = [(round(lo / hz_per_bin), round(hi / hz_per_bin) + (hi == edges[-1])) for lo, hi in bands]
    files = resolve_corpus(args.data).paths(args.split)
    names = [f"{lo / 1000:g}-{hi / 1000:g} kHz" for lo, hi in bands]
    for run in args.runs:
        scores = band_scores(run, files, bins, args.past)
        cells = ", ".join(f"{name} {m:.2f}" for name, m in zip(names, scores.mean(0), strict=True))
        print(f"{run} ({args.past}, n={len(scores)}): SI-SDR (dB) {cells}")


if __name__ == "__main__":
    main()
