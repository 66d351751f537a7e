"""``lightdvae demo``: from nothing to a results page on the built-in corpus, on a laptop's CPU.

    lightdvae demo [--out lightdvae-demo] [--minutes 10] [--models light-dvae,dkf,srnn-tf] [--device auto]

Builds the built-in espeak-ng corpus (installing espeak-ng with apt-get when it is missing and we are root),
trains LigHT-DVAE and two baselines (DKF, SRNN trained with teacher forcing) within the time budget, evaluates
them on the test split with their own past (GEN) and with the true past (GT), samples from their priors, computes
FDSD, and writes OUT/report/README.md with the tables and figures.  Beside them, the shipped converged priors
(``lightdvae info``) are evaluated and sampled on the same test split (``--no-shipped``: not), so the report shows
what the models do when trained and what minutes of training give.  Run the same command again to resume an
interrupted demo; ``--minutes`` is the whole demo's budget: training gets what the later stages leave (about 0.7
min per trained model, 0.8 per shipped prior that sees past speech (evaluated with the GT past too) and 0.4 per
other shipped prior on a 2-core CPU; LigHT-DVAE gets twice a baseline's share), the rest goes to evaluation,
generation and the report.
"""

from __future__ import annotations

import argparse
import math

from lightdvae.cli import UserError, positive_float, positive_int

#: Minutes the stages after training take on the 2-core reference machine, what ``--minutes`` keeps for them;
#: training gets the rest.  Measured in two 10-minute demos (stage times in their experiment.json, the shipped
#: priors' from their folders' times; one with a training paused beside it, one on an idle machine): evaluation
#: (GEN and GT), generation with FDSD and cost, per trained model, 36-47 s; per shipped prior, evaluation and
#: generation, 24 s for the VAE and 42-48 s for those evaluated with the GT past too (SRNN (SS), and HiT and
#: LigHT-DVAE with their w exchange); the start and the report, 10-15 s.
AFTER_TRAINING = {"model": 0.7, "shipped": 0.4, "shipped with past": 0.8, "report": 0.3}
MIN_PER_MODEL = 0.25  #: minutes of training a baseline gets at least (LigHT-DVAE twice that)


def training_minutes(minutes: float, models: int, shipped: list[str] | tuple[str, ...] = ()) -> float:
    """The part of a demo's ``minutes`` that goes to training ``models`` models beside the ``shipped`` priors
    (their names: a prior that sees past speech costs more, it is evaluated with the GT past too)."""
    from lightdvae.models import SEES_PAST_SPEECH
    from lightdvae.models.shipped import pretrained_card

    rest = AFTER_TRAINING["model"] * models + AFTER_TRAINING["report"]
    for name in shipped:
        rest += AFTER_TRAINING["shipped with past" if pretrained_card(name)["model"] in SEES_PAST_SPEECH else "shipped"]
    return minutes - rest


def add_common(p: argparse.ArgumentParser) -> None:
    """Options shared by ``demo`` and ``reproduce``."""
    p.add_argument("--data", default="builtin", metavar="SPEC", help="corpus: builtin (default), wsj0:DIR, vb:DIR, DIR")
    p.add_argument("--device", default="auto", help="auto (GPU if any), cpu, cuda, cuda:N")
    p.add_argument("--batch-size", type=positive_int, default=32, metavar="N", help="training batch size (32)")
    p.add_argument(
        "--lr",
        type=positive_float,
        metavar="LR",
        help="Adam learning rate for every model (default: each model's own: 1e-3 classic DVAEs, 3e-4 transformers)",
    )
    p.add_argument("--gen-n", type=positive_int, default=32, metavar="N", help="generated samples per model (32)")
    p.add_argument("--gen-frames", type=positive_int, default=188, metavar="F", help="frames per sample (188 = 3 s)")
    p.add_argument("--draws", type=positive_int, default=10, metavar="N", help="FDSD repeated draws (10)")
    p.add_argument("--max-files", type=positive_int, metavar="N", help="evaluate only the first N test files")
    p.add_argument("--no-cost", action="store_true", help="skip the native-vs-reference cost measurement")
    p.add_argument("--seed", type=int, default=0, help="training seed (0)")
    p.add_argument("--no-install", action="store_true", help="never install espeak-ng (just say how)")
    p.add_argument("--overwrite", action="store_true", help="discard an experiment with other settings found in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(
    args, *, out: str, models, minutes_per_model: float, weights: dict, title: str, shipped: tuple[str, ...] = ()
):
    from lightdvae.experiments import ExperimentConfig

    return ExperimentConfig(
        out=out,
        models=models,
        data=args.data,
        minutes_per_model=minutes_per_model,
        weights=weights,
        batch_size=args.batch_size,
        lr=args.lr,
        eval_max_files=args.max_files,
        gen_n=args.gen_n,
        gen_frames=args.gen_frames,
        fdsd_draws=args.draws,
        cost=not args.no_cost,
        device=args.device,
        seed=args.seed,
        shipped=shipped,
        title=title,
    )


def run(args) -> int:
    from lightdvae.experiments import parse_models, run_experiment
    from lightdvae.models.shipped import pretrained_names

    models = parse_models(args.models)
    weights = {"light-dvae": 2.0} if "light-dvae" in models and len(models) > 1 else {}
    units = sum(weights.get(k, 1.0) for k in models)
    shipped = () if args.no_shipped else tuple(pretrained_names())
    shown = shipped if args.data == "builtin" else ()  # the shipped priors are shown on their own corpus only
    per_model = training_minutes(args.minutes, len(models), shown) / units
    if per_model < MIN_PER_MODEL:
        need = math.ceil(args.minutes - (per_model - MIN_PER_MODEL) * units)
        raise UserError(
            f"--minutes {args.minutes:g} leaves {max(per_model, 0.0) * 60:.0f} s of training per model after the "
            f"evaluation{' and the shipped priors' if shown else ''}: give at least {need} minutes"
            + (" (or --no-shipped)" if shown else "")
        )
    cfg = config_from_args(
        args,
        out=args.out,
        models=models,
        minutes_per_model=round(per_model, 3),
        weights=weights,
        title="lightdvae demo: LigHT-DVAE and baselines on the built-in corpus"
        if args.data == "builtin"
        else f"lightdvae demo on {args.data}",
        shipped=shipped,
    )
    run_experiment(
        cfg, overwrite=args.overwrite, install_espeak=not args.no_install, progress=False if args.quiet else None
    )
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the main job: corpus, training within --minutes, evaluation, generation, FDSD, a report folder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="lightdvae-demo", metavar="DIR", help="experiment folder (lightdvae-demo)")
    p.add_argument("--minutes", type=positive_float, default=10.0, help="budget of the whole demo, in minutes (10)")
    p.add_argument(
        "--models", default="light-dvae,dkf,srnn-tf", help="comma-separated model keys (light-dvae,dkf,srnn-tf)"
    )
    p.add_argument(
        "--no-shipped",
        action="store_true",
        help="leave out the shipped converged priors (by default evaluated beside the trained models, on the "
        "built-in corpus)",
    )
    add_common(p)
    p.set_defaults(func=run)
