"""The learning curves of training runs in one figure: validation loss and the validation SI-SDR that
``lightdvae train --curve-every N`` records (GEN solid, GT dashed), against epochs and against wall time.

    python scripts/learning_curves.py RUN [RUN ...] --out curves.png [--labels VAE,LigHT-DVAE]

Prints, per run, the epochs, the best validation loss and its epoch, the training wall time and the last SI-SDR
point.  The README's convergence section shows its figure.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from lightdvae.figures import learning_curves, save_figure
from lightdvae.models import model_label
from lightdvae.runs import read_log, read_meta, read_status, training_mode


def _label(run: str) -> str:
    meta = read_meta(run)
    return model_label(meta.get("model", run), meta.get("config") or {}, training_mode(meta)) if meta else run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--out", required=True, help="the figure's file (PNG)")
    p.add_argument("--labels", help="comma-separated labels (default: the models' names)")
    args = p.parse_args()
    labels = args.labels.split(",") if args.labels else [_label(r) for r in args.runs]
    if len(labels) != len(args.runs):
        p.error("--labels needs one label per run")
    if not args.labels:  # two runs of one model: each named by its folder too
        named = zip(labels, args.runs, strict=True)
        labels = [f"{lb} ({Path(r).name})" if labels.count(lb) > 1 else lb for lb, r in named]
    curves = {}
    for label, run in zip(labels, args.runs, strict=True):
        rows = read_log(run)
        if not rows:
            p.error(f"{run} has no log.csv rows")
        curves[label] = rows
        status = read_status(run) or {}
        lowest = min(rows, key=lambda r: r["val_loss"])
        # the run's own best (counted after the warm-up / scheduled-sampling ramp), else the lowest of the log
        best = {
            "val_loss": status.get("best_val_loss", lowest["val_loss"]),
            "epoch": status.get("best_epoch", lowest["epoch"]),
        }
        minutes = sum(r["seconds"] for r in rows) / 60
        points = [r for r in rows if isinstance(r.get("val_si_sdr_gen"), float) and math.isfinite(r["val_si_sdr_gen"])]
        last = points[-1] if points else None
        curve = f"SI-SDR GEN {last['val_si_sdr_gen']:.2f} / GT {last['val_si_sdr_gt']:.2f} dB at epoch " if last else ""
        print(
            f"{label}: {len(rows)} epochs in {minutes:.1f} min, best validation loss {best['val_loss']:.1f} at epoch "
            f"{int(best['epoch'])}" + (f"; {curve}{int(last['epoch'])}" if last else "")
        )
    print(save_figure(learning_curves(curves), args.out))


if __name__ == "__main__":
    main()
