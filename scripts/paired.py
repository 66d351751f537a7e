"""Paired per-file differences of two evaluations: mean of A - B over the files both scored, with its 95 %
t-interval (the statistic of the paper's findings in ``lightdvae reproduce``).

    python scripts/paired.py A_EVAL_DIR B_EVAL_DIR [--metric si_sdr]

Each argument is an evaluation folder (``RUN/eval/test-gen``, ``pretrained-vae/eval/test-gen``) or its
``per_file.csv``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from lightdvae.evaluate import PER_FILE, read_per_file
from lightdvae.report.findings import paired


def scores(path: str, metric: str) -> dict[str, float]:
    p = Path(path)
    p = p / PER_FILE if p.is_dir() else p
    if not p.is_file():
        sys.exit(f"paired.py: {p} does not exist (an evaluation folder or its {PER_FILE} was expected)")
    out = {}
    for row in read_per_file(p):
        try:
            value = float(row[metric])
        except (KeyError, TypeError, ValueError):
            continue
        if math.isfinite(value):
            out[row["name"]] = value
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="evaluation folder (or per_file.csv) A")
    ap.add_argument("b", help="evaluation folder (or per_file.csv) B")
    ap.add_argument("--metric", default="si_sdr", help="per_file.csv column (default si_sdr)")
    args = ap.parse_args()
    d = paired(scores(args.a, args.metric), scores(args.b, args.metric))
    if d is None:
        sys.exit("paired.py: fewer than 2 files scored in both")
    print(f"A - B {args.metric}: {d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}] (95 % t-interval, n = {d['n']})")


if __name__ == "__main__":
    main()
