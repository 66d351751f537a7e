"""The ``lightdvae`` command line.  Each sub-command lives in ``lightdvae/cli/<name>.py`` and
exposes ``register(subparsers)``, which adds its parser and sets ``func`` to a callable taking the
parsed arguments and returning an exit code."""

from __future__ import annotations

import argparse
import functools
import importlib
import sys
import warnings

from lightdvae.errors import UserError  # the class every library error derives from

# Sub-command modules, in the order ``lightdvae --help`` lists them.
COMMANDS = (
    "demo",
    "info",
    "corpus",
    "train",
    "eval",
    "enhance",
    "generate",
    "swap_w",
    "report",
    "fdsd",
    "import_dvae",
    "reproduce",
)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = float(text)
    if not 0 < value < float("inf"):
        raise ValueError(text)
    return value


# argparse names the type in its error message ("invalid positive integer value: '0'")
positive_int.__name__ = "positive integer"
non_negative_int.__name__ = "non-negative integer"
positive_float.__name__ = "positive number"


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
    parser.commands = sub.choices  # command name -> its parser (errors in a command's options show its usage)
    return parser


def _show_warning(command: str, message, category, filename, lineno, file=None, line=None) -> None:
    """The package's data warnings as one line each (no source line); other warnings as Python prints them."""
    from lightdvae.errors import DataWarning

    if issubclass(category, DataWarning):
        print(f"lightdvae {command}: warning: {message}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def main(argv: list[str] | None = None) -> int:
    """Run one command.  The library raises; this is the one place that turns an error into one line and an exit
    code: 2 for what the user can fix (:class:`lightdvae.errors.UserError`), 1 for what the system refused (a
    read-only or full disk, a path that is a file: ``OSError``), 130 for Ctrl-C."""
    from lightdvae import _ext
    from lightdvae.runtime import malloc_choice

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # said by the sub-command's parser, with its usage (not the top-level one)
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        # a bad LIGHTDVAE_BACKEND / LIGHTDVAE_REFERENCE_OPS / LIGHTDVAE_MALLOC is said once, before any work
        _ext.backend()
        _ext.reference_ops()
        malloc_choice()
        with warnings.catch_warnings():
            warnings.showwarning = functools.partial(_show_warning, args.command)
            return int(args.func(args) or 0)
    except UserError as exc:
        print(f"lightdvae {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"lightdvae {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"lightdvae {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
