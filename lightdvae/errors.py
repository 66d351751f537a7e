"""The package's errors: every library module raises from here, and only the CLI turns them into one line.

:class:`UserError` is a problem with what the user asked for (a missing run, a bad option, a folder holding
other results): ``lightdvae COMMAND`` prints its message as ``lightdvae COMMAND: error: ...`` with exit code 2
and no traceback.  Each layer has its own subclass, so a caller can catch one layer's problems::

    from lightdvae.errors import UserError, EvalError
    try:
        evaluate_run("runs/light")
    except UserError as exc:       # every error a user can fix
        print(exc)

This module imports nothing of the package: anyone may import it.
"""

from __future__ import annotations

__all__ = [
    "UserError",
    "ConfigError",
    "DataError",
    "DataWarning",
    "RunError",
    "EvalError",
    "GenerationError",
    "ExperimentError",
    "ReportError",
    "EnhanceError",
    "FolderError",
    "BackendError",
    "first_line",
]


class UserError(Exception):
    """An error caused by the user's input: printed as one line, exit code 2, no traceback."""


class ConfigError(UserError, ValueError):
    """A training setting that is invalid; the message names the option."""


class DataError(UserError):
    """A problem with the data the user pointed at (missing or incomplete folders, nothing usable, ...)."""


class DataWarning(UserWarning):
    """Files were skipped (unreadable, silent, too short, ...): the message counts them by reason."""


class RunError(UserError):
    """A run folder that cannot be read as asked (missing, no such checkpoint, unreadable config)."""


class FolderError(UserError):
    """An output folder that holds other results (and no ``overwrite``), or cannot be used."""


class EvalError(UserError):
    """An evaluation that cannot run as asked (missing run or checkpoint, bad option, foreign output folder)."""


class GenerationError(UserError):
    """A generation or w exchange that cannot run as asked: one line from ``lightdvae generate`` / ``swap-w``."""


class ExperimentError(UserError):
    """An experiment that cannot run as asked (bad settings, a folder holding another experiment, ...)."""


class ReportError(UserError):
    """Nothing to report, or a path that does not exist: one line from ``lightdvae report``."""


class EnhanceError(UserError):
    """A speech enhancement that cannot run as asked (bad input audio, bad option, a model without an inference
    network): one line from ``lightdvae enhance``."""


class BackendError(UserError, ValueError):
    """``LIGHTDVAE_BACKEND`` names no backend, or asks for native kernels that are not built."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): how a failure that must not
    stop a long loop (one file, one batch) is recorded and logged."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
