"""Compare two folders written by scripts/equivalence/run.sh (before and after a change): model weights of every
checkpoint (torch.equal), the metric columns of every per_file.csv (ESTOI to 1e-12: pystoi's sums depend on array
alignment), the numbers of every fdsd.json (timings, paths and digests aside) and the keys of every JSON file.
The tiny `reproduce` is budgeted by wall time, so only its files' keys are compared.

    python scripts/equivalence/compare.py BEFORE AFTER
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import torch

TIMING = ("seconds", "time_s", "wall_s", "model_s", "metrics_s", "path")
VOLATILE = ("created", "updated", "path", "root", "spec", "sha256", "checkpoint_sha256", "corpus", "run_dir", "out")


def keys(x, prefix: str = "") -> set[str]:
    out: set[str] = set()
    if isinstance(x, dict):
        for k, v in x.items():
            out |= {f"{prefix}/{k}"} | keys(v, f"{prefix}/{k}")
    return out


def numbers(x):
    if isinstance(x, dict):
        return {k: numbers(v) for k, v in x.items() if "time" not in k and "seconds" not in k and k not in VOLATILE}
    if isinstance(x, list):
        return [numbers(v) for v in x]
    return x


def same_weights(a: Path, b: Path) -> bool:
    ma = torch.load(a, weights_only=True)["model"]
    mb = torch.load(b, weights_only=True)["model"]
    return ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)


def same_per_file(a: Path, b: Path) -> bool:
    ra, rb = list(csv.DictReader(a.open())), list(csv.DictReader(b.open()))
    if len(ra) != len(rb) or (ra and list(ra[0]) != list(rb[0])):
        return False
    cols = [c for c in (ra[0] if ra else []) if c not in TIMING and c != "estoi"]
    exact = all(all(x[c] == y[c] for c in cols) for x, y in zip(ra, rb, strict=True))
    estoi = max((abs(float(x["estoi"] or 0) - float(y["estoi"] or 0)) for x, y in zip(ra, rb, strict=True)), default=0)
    return exact and estoi <= 1e-12


def main(before: Path, after: Path) -> int:
    bad = 0
    for fa in sorted(before.rglob("*")):
        rel = fa.relative_to(before)
        fb = after / rel
        timed = "repro" in rel.parts  # budgeted by wall time: keys only
        if fa.is_dir() or "cache" in rel.parts or rel.parts[0] == "data":
            continue
        if not fb.exists():
            print("missing after:", rel)
            bad += 1
        elif fa.suffix == ".pt" and not timed and not same_weights(fa, fb):
            print("weights differ:", rel)
            bad += 1
        elif fa.name == "per_file.csv" and not timed and not same_per_file(fa, fb):
            print("per_file.csv metrics differ:", rel)
            bad += 1
        elif fa.suffix == ".json":
            ja, jb = json.loads(fa.read_text()), json.loads(fb.read_text())
            if keys(ja) != keys(jb):
                print("keys differ:", rel, sorted(keys(ja) ^ keys(jb))[:10])
                bad += 1
            elif fa.name == "fdsd.json" and not timed and numbers(ja) != numbers(jb):
                print("FDSD differs:", rel)
                bad += 1
    print(f"{bad} difference(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
