"""SI-SDR of a run's resynthesis of whole test utterances, split at a frame: the frames inside the training
segment length (positions the model saw in training) against the frames after it.

    python scripts/segment_sisdr.py RUN [RUN ...]  # RUN: a run folder or pretrained:NAME
    [--data builtin] [--split test] [--frames 48] [--past gen]

Each utterance is resynthesised whole (original phase, latents at their means, as ``lightdvae eval``), then
SI-SDR is computed on samples ``[0, frames * hop)`` and on ``[(frames + 2) * hop, end)`` (two frames skipped
around the cut, where both halves' windows overlap).  Prints the two means and their paired difference with its
95 % t-interval.  The README's "Reproducing the paper's findings" quotes it (the Inv-s-NR decoders go flat after
the 50-frame training segments; the plain transformer DVAEs do not).
"""

from __future__ import annotations

import argparse

import numpy as np

from lightdvae.audio import HOP
from lightdvae.data import resolve_corpus
from lightdvae.evaluate import resynthesize_file
from lightdvae.metrics import si_sdr
from lightdvae.runs.opening import open_run


def segment_scores(run: str, files, frames: int, past: str) -> tuple[np.ndarray, np.ndarray]:
    model = open_run(run).model  # a run folder or a shipped prior (pretrained:NAME)
    inside, after = [], []
    for path in files:
        reference, estimate, _ = resynthesize_file(model, path, past)
        cut = frames * HOP
        if reference.size < cut + 12 * HOP:  # too short to have an "after" part worth scoring
            continue
        inside.append(si_sdr(reference[:cut], estimate[:cut]))
        after.append(si_sdr(reference[cut + 2 * HOP :], estimate[cut + 2 * HOP :]))
    return np.array(inside), np.array(after)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--data", default="builtin")
    p.add_argument("--split", default="test")
    p.add_argument("--frames", type=int, default=48, help="the cut, in frames (48: inside the 50-frame segments)")
    p.add_argument("--past", choices=("gen", "gt"), default="gen")
    args = p.parse_args()
    corpus = resolve_corpus(args.data)
    files = corpus.paths(args.split)
    for run in args.runs:
        inside, after = segment_scores(run, files, args.frames, args.past)
        d = inside - after
        half = 1.96 * d.std(ddof=1) / np.sqrt(d.size)
        print(
            f"{run}: frames < {args.frames} {inside.mean():.2f} dB, after {after.mean():.2f} dB, "
            f"difference {d.mean():+.2f} [{d.mean() - half:+.2f}, {d.mean() + half:+.2f}] dB (n={d.size}, {args.past})"
        )


if __name__ == "__main__":
    main()
