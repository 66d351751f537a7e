"""Ship a trained run as a pretrained prior: float16 weights and a card in lightdvae/models/weights/.

    python scripts/export_prior.py RUN NAME --command "lightdvae train ..." [--out lightdvae/models/weights]

The card records the command that reproduces the run, its epochs, best epoch, training wall time and validation
loss (from the run's log), and the test-split scores of the *exported* float16 prior (``lightdvae eval
pretrained:NAME --past both``, so that evaluating the shipped file reproduces them), then its digest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

from lightdvae._io import atomic_write_json
from lightdvae.evaluate import evaluate_run
from lightdvae.runs import export_pretrained, read_log, read_status

WEIGHTS = Path(__file__).resolve().parents[1] / "lightdvae" / "models" / "weights"


def _scores(summary: dict) -> dict:
    return {m: round(v["mean"], 4) for m, v in summary["metrics"].items() if v.get("mean") is not None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("name")
    p.add_argument("--command", required=True, help="the exact command that trained RUN")
    p.add_argument("--out", default=str(WEIGHTS), help="weights folder (default: the package's)")
    args = p.parse_args()
    rows = read_log(args.run)
    status = read_status(args.run) or {}
    # the run's own best (the early stopper's, counted after the KL warm-up and the scheduled-sampling ramp), which
    # is what best.pt holds: not the lowest validation loss of the whole log
    card = {
        "command": args.command,
        "epochs": len(rows),
        "stop": status.get("state"),
        "best_epoch": int(status["best_epoch"]),
        "val_loss": round(float(status["best_val_loss"]), 2),
        "train_minutes": round(sum(r["seconds"] for r in rows) / 60, 1),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
    }
    export_pretrained(args.run, args.out, args.name, card)
    os.environ["LIGHTDVAE_PRETRAINED"] = args.out
    test = {}
    for past in ("gen", "gt"):
        out = Path(f"pretrained-{args.name}") / "eval" / f"test-{past}"
        # the scores of the file just written: an earlier export's evaluation there is replaced
        test[past] = _scores(evaluate_run(f"pretrained:{args.name}", past=past, out=out, quiet=True, overwrite=True))
    card_path = Path(args.out) / f"{args.name}.json"
    full = json.loads(card_path.read_text())
    atomic_write_json(card_path, {**full, "test": test, "test_split": "builtin test (GEN and GT past)"})
    pt = Path(args.out) / f"{args.name}.pt"
    print(f"{pt}: {card['epochs']} epochs, best {card['val_loss']} at {card['best_epoch']}; test {test}")


if __name__ == "__main__":
    main()
