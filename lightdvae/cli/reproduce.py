"""``lightdvae reproduce``: the paper's eleven models trained on one corpus with one budget each, evaluated,
sampled, and the paper's findings checked.

    lightdvae reproduce [--out lightdvae-reproduce] [--minutes-per-model 5] [--models all] [--data builtin]

Trains VAE, DKF, RVAE, SRNN (TF), SRNN (SS), HiT-DVAE, LigHT-DVAE and the four Inv-s / Inv-s-NR ablations with the
same wall-clock budget each (the schedule is scaled to it: see lightdvae.experiments), evaluates GEN and GT
resynthesis on the test split, generates and computes FDSD, measures training and generation cost with the native
and with the reference ops, and writes OUT/report/README.md: the paper's three tables, the findings (holds / does
not hold, with paired differences and intervals), the cost table and the figures.  Run the same command again to
resume.  ``--data wsj0:DIR`` / ``vb:DIR`` run the same protocol on the real corpora.
"""

from __future__ import annotations

import argparse

from lightdvae.cli import positive_float
from lightdvae.cli.demo import add_common, config_from_args


def run(args) -> int:
    from lightdvae.experiments import parse_models, run_experiment

    cfg = config_from_args(
        args,
        out=args.out,
        models=parse_models(args.models),
        minutes_per_model=args.minutes_per_model,
        weights={},
        title=f"lightdvae reproduce: the paper's models on {args.data}",
    )
    run_experiment(
        cfg, overwrite=args.overwrite, install_espeak=not args.no_install, progress=False if args.quiet else None
    )
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "reproduce",
        help="train and evaluate the paper's 11 models with one budget each; check the paper's findings",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="lightdvae-reproduce", metavar="DIR", help="experiment folder")
    p.add_argument(
        "--minutes-per-model", type=positive_float, default=5.0, metavar="M", help="training budget per model (5)"
    )
    p.add_argument("--models", default="all", help="comma-separated model keys, or all (default)")
    add_common(p)
    p.set_defaults(func=run)
