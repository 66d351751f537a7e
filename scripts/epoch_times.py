"""An epoch of each model on the built-in corpus, before and after issue #17's training work (README, "Training
steps against their GEMM floor").

    python scripts/epoch_times.py [--models vae,dkf,...] [--epochs 3] [--threads 1] [--out FILE.md]

Each model trains ``--epochs`` epochs from scratch (``lightdvae train --data builtin``, batch 128, seed 0, its
published sizes) in a fresh process, once per configuration, the configurations interleaved model by model:

- **after**: the defaults (the posterior loops' explicit backward through time, the hashed dropout and fused
  ReLU + dropout, the vectorised tanh, freed memory kept for the next step);
- **before**: the same native build with those switched off — ``LIGHTDVAE_LOOP_BACKWARD=composite`` (autograd
  through the composite loops), ``LIGHTDVAE_REFERENCE_OPS=dropout,relu_dropout,tanh`` (ATen's kernels),
  ``LIGHTDVAE_MALLOC=system`` (glibc's defaults);
- **reference**: ``LIGHTDVAE_BACKEND=ref LIGHTDVAE_MALLOC=system``, the package's pure-PyTorch path.

The figure is the median of the epochs' wall times that the trainer logs (``log.csv``: training and validation,
not the process start).  Run it on an otherwise idle machine: every figure is a time.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

MODELS = ("vae", "dkf", "rvae", "srnn", "hit-dvae", "light-dvae")
CONFIGS = {
    "after": {},
    "before": {
        "LIGHTDVAE_LOOP_BACKWARD": "composite",
        "LIGHTDVAE_REFERENCE_OPS": "dropout,relu_dropout,tanh",
        "LIGHTDVAE_MALLOC": "system",
    },
    "reference": {"LIGHTDVAE_BACKEND": "ref", "LIGHTDVAE_MALLOC": "system"},
}
#: every switch a configuration sets: the caller's own values of them are dropped, so "after" is the defaults
_OURS = frozenset(name for env in CONFIGS.values() for name in env)


def epoch_seconds(model: str, config: str, epochs: int, threads: int, root: Path) -> float:
    """Median seconds per epoch of ``model`` trained in a fresh process under ``config``."""
    out = root / f"{model}-{config}"
    env = {k: v for k, v in os.environ.items() if k not in _OURS and not k.startswith("MALLOC_")}
    env.update(CONFIGS[config], OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "lightdvae", "train", "--model", model, "--data", "builtin", "--out", str(out),
           "--epochs", str(epochs), "--patience", "0", "--seed", "0", "--threads", str(threads), "--quiet"]  # fmt: skip
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    with open(out / "log.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return statistics.median(float(r["seconds"]) for r in rows)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, from {', '.join(CONFIGS)}")
    p.add_argument("--out", help="also write the Markdown table here")
    args = p.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [m for m in models if m not in MODELS] + [c for c in configs if c not in CONFIGS]
    if bad:
        p.error(f"unknown model(s) or configuration(s): {', '.join(bad)}")
    times: dict = {}
    with tempfile.TemporaryDirectory(prefix="lightdvae-epochs-") as tmp:
        for model in models:
            for config in configs:
                times[(model, config)] = epoch_seconds(model, config, args.epochs, args.threads, Path(tmp))
                print(f"{model} {config}: {times[(model, config)]:.2f} s per epoch", flush=True)
    lines = [
        f"Seconds per epoch on the built-in corpus (batch 128, median of {args.epochs} epochs, {args.threads} "
        "thread(s)); speed-up = before / after.",
        "",
        "| model | " + " | ".join(configs) + (" | speed-up |" if {"before", "after"} <= set(configs) else " |"),
        "|---|" + "---:|" * (len(configs) + ({"before", "after"} <= set(configs))),
    ]
    for model in models:
        cells = [f"{times[(model, c)]:.2f}" for c in configs]
        if {"before", "after"} <= set(configs):
            cells.append(f"{times[(model, 'before')] / times[(model, 'after')]:.2f}x")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        Path(args.out).write_text(table, encoding="utf-8")
    return times


if __name__ == "__main__":
    main()
