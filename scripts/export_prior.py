"""Ship a trained run as a pretrained prior: float16 weights and a card in lightdvae/models/weights/.

    python scripts/export_prior.py RUN NAME --command "lightdvae train ..."
                                   [--corpus-command "lightdvae corpus build ..."] [--out lightdvae/models/weights]

A run trained on a built-in corpus with more training speech (``lightdvae corpus build DIR --train-minutes M``,
whose validation and test splits are the default corpus's) or a noise floor (``--noise-floor DB``: the same
utterances under a floor) ships with ``data: builtin`` (what it is scored on, and
what ``pretrained:NAME`` evaluates on by default) and a ``training_corpus`` entry: the corpus's settings and the
command that builds it (``--corpus-command``, required then).

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
from lightdvae.runs import corpus_spec, export_pretrained, read_log, read_meta, read_status

WEIGHTS = Path(__file__).resolve().parents[1] / "lightdvae" / "models" / "weights"


def _scores(summary: dict) -> dict:
    return {m: round(v["mean"], 4) for m, v in summary["metrics"].items() if v.get("mean") is not None}


def _training_corpus(run: str, command: str | None, parser: argparse.ArgumentParser) -> dict | None:
    """The ``training_corpus`` entry of a run trained on a built-in corpus other than the default one whose held-out
    splits are the default's; None for the default corpus (and for any other corpus, whose spec stays ``data``)."""
    from lightdvae.data.builtin import has_default_held_out_splits

    spec = corpus_spec(read_meta(run)) or "builtin"
    if not spec.startswith("builtin:"):
        return None
    root = Path(spec.split(":", 1)[1]).expanduser()
    if not has_default_held_out_splits(root, floor_ok=True):
        return None
    if not command or not command.startswith("lightdvae corpus build"):
        parser.error(f'{run} was trained on {spec}: give --corpus-command "lightdvae corpus build ..."')
    info = json.loads((root / "corpus.json").read_text())
    return {
        "command": command,
        "settings": info["settings"],
        "train": {k: info["splits"]["train"][k] for k in ("files", "seconds")}
        | {"speakers": len(info["splits"]["train"]["speakers"])},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("name")
    p.add_argument("--command", required=True, help="the exact command that trained RUN")
    p.add_argument("--corpus-command", help="the command that built RUN's corpus, when not the default built-in one")
    p.add_argument("--out", default=str(WEIGHTS), help="weights folder (default: the package's)")
    p.add_argument(
        "--checkpoint",
        choices=("best", "last"),
        default="best",
        help="the run's best-validation weights (default) or its last epoch's, for a model whose validation loss "
        "does not select what it is used for (the card says which)",
    )
    args = p.parse_args()
    training_corpus = _training_corpus(args.run, args.corpus_command, p)
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
    }
    if args.checkpoint == "last":  # the last epoch's weights: its own validation loss
        card.update(checkpoint="last", val_loss=round(float(rows[-1]["val_loss"]), 2))
    card |= {
        "train_minutes": round(sum(r["seconds"] for r in rows) / 60, 1),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
    }
    if training_corpus is not None:
        card.update(data="builtin", training_corpus=training_corpus)
    export_pretrained(args.run, args.out, args.name, card, which=args.checkpoint)
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
    kept = "the last epoch's weights" if args.checkpoint == "last" else f"the best, at epoch {card['best_epoch']}"
    print(f"{pt}: {card['epochs']} epochs, {kept} (validation {card['val_loss']}); test {test}")


if __name__ == "__main__":
    main()
