"""``lightdvae import-dvae CHECKPOINT CONFIG --out RUN_DIR``: a DVAE-code checkpoint as a lightdvae run.

Reads a checkpoint of the DVAE review's code (a state dict) and its ``config.ini``, converts it to
the equivalent lightdvae model and writes a run directory (``config.json``,
``checkpoints/best.pt``) that the other commands accept like one of ours.
"""

from __future__ import annotations

import json
from pathlib import Path

from lightdvae.errors import UserError


def _parse_set(items: list[str]) -> dict:
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


def run(args) -> int:
    from lightdvae.models.dvae_import import DVAEImportError, import_dvae
    from lightdvae.runs import CHECKPOINT_DIR, checkpoint_path, read_config, save_model

    checkpoint, config = Path(args.checkpoint), Path(args.config)
    for what, path in (("checkpoint", checkpoint), ("config", config)):
        if not path.is_file():
            raise UserError(f"{what} file not found: {path}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if checkpoint_path(out, "best").exists() and not args.force:
        raise UserError(f"{out} already holds a run ({CHECKPOINT_DIR}/best.pt); pass --force to overwrite it")
    try:
        model, info = import_dvae(checkpoint, config, _parse_set(args.set))
    except (DVAEImportError, ValueError, TypeError) as exc:
        raise UserError(str(exc)) from None
    source = {
        "kind": "dvae-import",
        "checkpoint": str(checkpoint.resolve()),
        "config_ini": str(config.resolve()),
        "dvae_name": info.dvae_name,
        "tag": info.tag,
        "training": info.training,
    }
    try:
        save_model(out, model, source)
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc}") from None
    name = read_config(out)["model"]
    tag = info.tag or "no tag"
    print(f"imported {info.dvae_name} ({tag}) as {name}, {model.num_parameters():,} parameters -> {out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "import-dvae",
        help="convert a checkpoint of the DVAE review's code (VAE, DKF, RVAE, SRNN) into a lightdvae run directory",
        description=__doc__.split("\n\n")[1],
    )
    p.add_argument("checkpoint", help="their checkpoint (.pt, a state dict)")
    p.add_argument("config", help="their config.ini describing that model")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory to write")
    p.add_argument("--force", action="store_true", help="overwrite a run already in RUN_DIR")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="force a lightdvae config value (JSON), e.g. --set prior_on_own_past=false for an SRNN",
    )
    p.set_defaults(func=run)
