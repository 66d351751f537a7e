"""``lightdvae eval``: analysis-resynthesis of whole test utterances, per-file metrics and their summary.

    lightdvae eval RUN_DIR [--data builtin|DIR|wsj0:DIR|vb:DIR] [--split test] [--past gen|gt] [--workers N]
                   [--max-files N] [--save-audio] [--out DIR] [--device auto|cpu|cuda] [--checkpoint best|last]

Writes per_file.csv, summary.json and a few figures into RUN_DIR/eval/<split>-<past>/ (or --out); an interrupted
evaluation resumes where it stopped when run again (see lightdvae.evaluate).  ``--past both`` evaluates GEN and
GT one after the other (the structure study).
"""

from __future__ import annotations

import argparse
import json

from lightdvae.cli import UserError, non_negative_int, positive_int


def run(args) -> int:
    import logging

    from lightdvae.evaluate import evaluate_run

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    pasts = ("gen", "gt") if args.past == "both" else (args.past,)
    if args.out and len(pasts) > 1:
        raise UserError("--past both writes two folders: leave --out out (the defaults are <split>-gen and -gt)")
    summaries = []
    for past in pasts:
        summaries.append(
            evaluate_run(
                args.run_dir,
                data=args.data,
                split=args.split,
                past=past,
                which=args.checkpoint,
                out=args.out,
                device=args.device,
                workers=args.workers,
                max_files=args.max_files,
                save_audio=args.save_audio,
                figures=args.figures,
                label=args.label,
                overwrite=args.overwrite,
                cache_dir=args.cache_dir,
                progress=False if args.quiet else None,
                quiet=args.quiet or args.json,
                model_threads=args.threads,
            )
        )
    if args.json:
        print(json.dumps(summaries[0] if len(summaries) == 1 else summaries, indent=2, default=str))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="analysis-resynthesis evaluation: RMSE, SI-SDR, PESQ (WB, NB), ESTOI per test file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory (config.json + checkpoints/best.pt)")
    p.add_argument(
        "--data",
        metavar="SPEC",
        help="corpus: builtin, DIR, wsj0:DIR, vb:DIR (default: the corpus the run was trained on)",
    )
    p.add_argument("--split", default="test", choices=("test", "val", "train"), help="split to evaluate (test)")
    p.add_argument(
        "--past",
        default="gen",
        choices=("gen", "gt", "both"),
        help="decoder fed its own past predictions (gen, the default) or the true past (gt); both: one after the other",
    )
    p.add_argument(
        "--workers", type=non_negative_int, metavar="N", help="metric worker processes (default: CPUs; 0: none)"
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="torch threads of a CPU model (default: CPUs left by the workers)",
    )
    p.add_argument("--max-files", type=positive_int, metavar="N", help="only the first N files of the split")
    p.add_argument("--save-audio", action="store_true", help="write the resynthesised wavs to OUT/audio/")
    p.add_argument(
        "--figures", type=non_negative_int, default=3, metavar="N", help="spectrogram figures of the first N files (3)"
    )
    p.add_argument("--out", metavar="DIR", help="output folder (default RUN_DIR/eval/<split>-<past>/)")
    p.add_argument("--device", default="auto", help="auto (GPU if any), cpu, cuda, cuda:N")
    p.add_argument("--checkpoint", default="best", choices=("best", "last"), help="which checkpoint (best)")
    p.add_argument("--label", help="the model's name in tables (default: from the run, e.g. LigHT-DVAE)")
    p.add_argument("--cache-dir", metavar="DIR", help="spectrogram cache folder (default: the run's)")
    p.add_argument(
        "--overwrite", action="store_true", help="delete the results already in the output folder and start over"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar, no closing line")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)
