"""The ``lightdvae`` command line.  Each sub-command lives in ``lightdvae/cli/<name>.py`` and
exposes ``register(subparsers)``, which adds its parser and sets ``func`` to a callable taking the
parsed arguments and returning an exit code."""

from __future__ import annotations

import argparse
import importlib
import sys

# Sub-command modules, in the order ``lightdvae --help`` lists them.
COMMANDS = ("info", "corpus", "train", "eval", "generate", "swap_w", "report", "fdsd", "import_dvae")


class UserError(Exception):
    """An error caused by the user's input: printed as one line, exit code 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    from lightdvae import __version__

    parser = argparse.ArgumentParser(
        prog="lightdvae",
        description="Dynamical VAEs for speech: HiT-DVAE, LigHT-DVAE and the classic DVAEs.",
    )
    parser.add_argument("--version", action="version", version=f"lightdvae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"lightdvae.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"lightdvae {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lightdvae {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
