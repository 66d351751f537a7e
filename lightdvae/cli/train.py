"""``lightdvae train``: train a model on a corpus into a run directory, or continue one.

    lightdvae train --model light-dvae --data builtin --out runs/light [--epochs 300] [--max-minutes 60] ...
    lightdvae train --model srnn --training ss --data vb:/data/voicebank --out runs/srnn-ss
    lightdvae train --resume runs/light [--epochs 400]
    torchrun --nproc_per_node 4 -m lightdvae train --model hit-dvae --data wsj0:/data/wsj0 --out runs/hit

Defaults are the published settings of the DVAE baselines (Adam 1e-3, batch 128, up to 300 epochs, beta 1e-2,
KL warm-up over 50 epochs, early stopping with patience 30 after the warm-up).  The run directory holds
config.json, log.csv, status.json and checkpoints/{best,last}.pt (see lightdvae.runs).

Exit status: 0 when training ends normally (finished, early stopped or out of time), 2 for a usage or data
error, 3 when the loss diverged (NaN / inf; the last good checkpoint is kept).
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys

from lightdvae.cli import UserError, non_negative_int, positive_int

EXIT_DIVERGED = 3

# option name -> TrainConfig field, for the settings a resumed run may not change
_FIXED_ON_RESUME = {
    "model": "--model",
    "out": "--out",
    "set": "--set",
    "inv_s": "--inv-s",
    "no_residual": "--no-residual",
    "training": "--training",
    "ss_start": "--ss-start",
    "ss_end": "--ss-end",
    "seq_len": "--seq-len",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "lr_warmup": "--lr-warmup",
    "lr_schedule": "--lr-schedule",
    "beta": "--beta",
    "kl_warmup_epochs": "--kl-warmup",
    "grad_clip": "--grad-clip",
    "budget_schedule": "--budget-schedule",
    "precision": "--precision",
    "seed": "--seed",
    "force": "--force",
}
# argparse dest -> TrainConfig field, for the options that map one to one
_DIRECT = (
    "data",
    "training",
    "ss_start",
    "ss_end",
    "epochs",
    "max_minutes",
    "batch_size",
    "lr",
    "lr_warmup",
    "lr_schedule",
    "beta",
    "kl_warmup_epochs",
    "patience",
    "seq_len",
    "grad_clip",
    "budget_schedule",
    "precision",
    "device",
    "seed",
    "num_workers",
    "cache_dir",
    "threads",
    "curve_every",
    "curve_files",
)


def parse_set(items: list[str]) -> dict:
    """``["d_model=64", "encoder_dims=[64]"]`` -> ``{"d_model": 64, "encoder_dims": [64]}`` (values as JSON,
    plain strings otherwise)."""
    values = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            values[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            values[key.strip()] = raw
    return values


def _given(args, dest: str) -> bool:
    value = getattr(args, dest)
    return value not in (None, False, [])


def config_from_args(args):
    """The :class:`~lightdvae.train.TrainConfig` that the parsed arguments ask for."""
    from lightdvae.train import RESUME_OVERRIDABLE, TrainConfig, resume_config

    if args.resume:
        given = [flag for dest, flag in _FIXED_ON_RESUME.items() if _given(args, dest)]
        if given:
            allowed = ", ".join("--" + k.replace("_", "-") for k in RESUME_OVERRIDABLE)
            raise UserError(
                f"{', '.join(given)} cannot be given with --resume: a resumed run keeps its settings (only {allowed})"
            )
        overrides = {k: getattr(args, k) for k in RESUME_OVERRIDABLE if k != "quiet" and getattr(args, k) is not None}
        if args.quiet:
            overrides["quiet"] = True
        return resume_config(args.resume, **overrides)
    if not args.model:
        raise UserError("--model is required (or --resume RUN_DIR); models: " + ", ".join(_model_names()))
    if not args.out:
        raise UserError("--out RUN_DIR is required (or --resume RUN_DIR)")
    model_config = parse_set(args.set)
    transformer = args.model.strip().lower() in ("hit-dvae", "light-dvae")
    if (args.inv_s or args.no_residual) and not transformer:
        raise UserError(f"--inv-s and --no-residual are ablations of hit-dvae and light-dvae, not of {args.model}")
    if args.no_residual and not args.inv_s:
        raise UserError("--no-residual (the Inv-s-NR ablation) goes with --inv-s")
    if args.inv_s:
        model_config["inv_s"] = True
    if args.no_residual:
        model_config["no_residual"] = True
    values = {k: getattr(args, k) for k in _DIRECT if getattr(args, k) is not None}
    cfg = TrainConfig(
        model=args.model, out=args.out, model_config=model_config, quiet=args.quiet, force=args.force, **values
    )
    return cfg.validate()


def _model_names() -> list[str]:
    from lightdvae.models import names

    return names()


#: TrainConfig fields whose option name is not the field's (the others are ``--`` + field with dashes)
_FLAGS = {"kl_warmup_epochs": "--kl-warmup", "model_config": "--set"}


def _as_flags(exc: Exception) -> UserError:
    """A settings error with the option name a CLI user types (``--batch-size must be ...``, not ``batch_size``)."""
    from lightdvae.train import TrainConfig

    text = str(exc)
    fields = sorted((f.name for f in dataclasses.fields(TrainConfig)), key=len, reverse=True)
    field = next((f for f in fields if re.match(rf"{f}\b", text)), None)
    if field is not None:
        text = _FLAGS.get(field, "--" + field.replace("_", "-")) + text[len(field) :]
    return UserError(text)


def run(args) -> int:
    from lightdvae.train import ConfigError, TrainingDiverged, train

    try:
        cfg = config_from_args(args)
    except ConfigError as exc:
        raise _as_flags(exc) from None
    try:
        result = train(cfg)
    except TrainingDiverged as exc:
        print(f"lightdvae train: {exc}", file=sys.stderr)
        return EXIT_DIVERGED
    if args.json_result:
        summary = {
            "run_dir": str(result.run_dir),
            "stop_reason": result.stop_reason,
            "epochs": result.epochs,
            "best_epoch": result.best_epoch,
            "best_val_loss": result.best_val_loss,
            "final_val_loss": result.final_val_loss,
            "seconds": round(result.seconds, 2),
        }
        print(json.dumps(summary))
    return 0


def register(sub) -> None:
    from lightdvae.train import TrainConfig

    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    p = sub.add_parser(
        "train",
        help="train a model (published DVAE protocol by default), or resume a run",
        description=__doc__.split("\n\n")[1] + "\n\n" + __doc__.split("\n\n")[2],
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("what to train")
    g.add_argument("--model", metavar="NAME", help="vae, dkf, rvae, rvae-causal, srnn, hit-dvae, light-dvae")
    g.add_argument(
        "--data",
        metavar="SPEC",
        help=f"corpus: builtin, DIR, wsj0:DIR, vb:DIR, builtin:DIR (default {defaults['data']})",
    )
    g.add_argument("--out", metavar="RUN_DIR", help="run directory to create")
    g.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from checkpoints/last.pt")
    g.add_argument("--force", action="store_true", help="overwrite the run files already in --out")
    g.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model config value (JSON), repeatable, e.g. --set d_model=256 --set dropout=0.0",
    )
    g.add_argument("--inv-s", action="store_true", help="Inv-s ablation (hit-dvae, light-dvae)")
    g.add_argument("--no-residual", action="store_true", help="with --inv-s: Inv-s-NR ablation")
    _protocol_options(p.add_argument_group("protocol"), defaults)
    _execution_options(p.add_argument_group("execution"), defaults)
    p.set_defaults(func=run)


def _protocol_options(g, defaults: dict) -> None:
    from lightdvae.train import LR_FLOOR, LR_SCHEDULES, TRAININGS

    g.add_argument(
        "--training",
        choices=TRAININGS,
        help="tf: teacher forcing (default); ss: scheduled sampling (srnn)",
    )
    g.add_argument(
        "--ss-start", type=int, metavar="EPOCH", help=f"ss probability leaves 0 (default {defaults['ss_start']})"
    )
    g.add_argument(
        "--ss-end", type=int, metavar="EPOCH", help=f"ss probability reaches 1 (default {defaults['ss_end']})"
    )
    g.add_argument("--epochs", type=int, help=f"last epoch (default {defaults['epochs']})")
    g.add_argument("--max-minutes", type=float, metavar="M", help="stop at an epoch boundary within M minutes")
    g.add_argument("--batch-size", type=int, metavar="B", help=f"global batch (default {defaults['batch_size']})")
    g.add_argument(
        "--lr",
        type=float,
        help=f"Adam learning rate (default {defaults['lr']}, the baselines' published rate; "
        "the transformer DVAEs keep their latents on short budgets at 3e-4: see the README)",
    )
    g.add_argument(
        "--lr-warmup",
        type=int,
        metavar="EPOCHS",
        help=f"linear learning-rate warm-up length, 0 for none (default {defaults['lr_warmup']})",
    )
    g.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        help="after the warm-up: constant (default, the published protocol) or cosine (decays to "
        f"{LR_FLOOR:g} x --lr at --epochs)",
    )
    g.add_argument("--beta", type=float, help=f"KL weight (default {defaults['beta']})")
    g.add_argument(
        "--kl-warmup",
        dest="kl_warmup_epochs",
        type=int,
        metavar="EPOCHS",
        help=f"linear KL warm-up length, 0 for none (default {defaults['kl_warmup_epochs']})",
    )
    g.add_argument(
        "--patience", type=int, help=f"early-stopping patience in epochs, 0 disables (default {defaults['patience']})"
    )
    g.add_argument("--seq-len", type=int, metavar="FRAMES", help=f"segment length (default {defaults['seq_len']})")
    g.add_argument("--grad-clip", type=float, metavar="NORM", help="clip the gradient's global norm (default off)")
    g.add_argument(
        "--budget-schedule",
        action="store_true",
        default=None,
        help="with --max-minutes: the KL warm-up and the ss ramp follow the share of the budget spent, --epochs "
        "being the plan they are written for; training goes on until the budget is spent",
    )


def _execution_options(g, defaults: dict) -> None:
    from lightdvae.train import PRECISIONS

    g.add_argument("--precision", choices=PRECISIONS, help="fp32 (default), bf16 (GPU/CPU) or fp16 (GPU) autocast")
    g.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    g.add_argument("--seed", type=int, help=f"random seed (default {defaults['seed']})")
    g.add_argument("--num-workers", type=int, metavar="N", help="DataLoader workers (default 0: in-memory slicing)")
    g.add_argument("--cache-dir", metavar="DIR", help="spectrogram cache folder")
    g.add_argument(
        "--threads", type=positive_int, metavar="N", help="torch threads while training (default: one per core)"
    )
    g.add_argument(
        "--curve-every",
        type=non_negative_int,
        metavar="N",
        help="every N epochs, log the GEN and GT SI-SDR of --curve-files validation utterances (default 0: off)",
    )
    g.add_argument(
        "--curve-files", type=positive_int, metavar="N", help="validation utterances of the learning curve (8)"
    )
    g.add_argument("--quiet", action="store_true", help="no progress bar, no per-epoch lines")
    g.add_argument("--json-result", action="store_true", help="print a JSON summary line at the end")
