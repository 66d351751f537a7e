"""Before any training: the evaluation's packages (:func:`check_packages`), espeak-ng (:func:`ensure_espeak`,
installed with apt-get where that is possible) and the corpus (:func:`prepare_corpus`: the built-in one is
synthesised on first use)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from lightdvae.errors import ExperimentError
from lightdvae.experiments.config import ExperimentConfig

__all__ = ["ensure_espeak", "check_packages", "prepare_corpus"]

#: The packages of the evaluation (PESQ, STOI, figures).
EVAL_PACKAGES = ("pesq", "pystoi", "matplotlib")


def ensure_espeak(say: Callable[[str], None] = print, install: bool = True) -> str:
    """The espeak-ng executable; when it is missing and this is a Debian/Ubuntu system where we are root, install
    it with apt-get (the built-in corpus needs it).  Raises :class:`ExperimentError` with what to do otherwise."""
    from lightdvae.data.builtin import ESPEAK_INSTALL_HINT, EspeakNotFound, espeak_path

    try:
        return espeak_path()
    except EspeakNotFound:
        pass
    apt = shutil.which("apt-get")
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    if not (install and apt and root):
        why = "" if install else " (--no-install given)"
        raise ExperimentError(
            f"the built-in corpus is synthesised with espeak-ng, which is not installed{why}; {ESPEAK_INSTALL_HINT}"
        ) from None
    say("espeak-ng is missing: installing it with apt-get (the built-in corpus is synthesised with it)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", "espeak-ng"]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise ExperimentError(
                f"`{' '.join(cmd[1:])}` failed ({'; '.join(tail) or f'exit {proc.returncode}'}); "
                f"install espeak-ng yourself: {ESPEAK_INSTALL_HINT}"
            )
    return espeak_path()


def check_packages() -> None:
    """The evaluation's packages, checked before any training so that a missing one costs nothing."""
    import importlib.util

    missing = [m for m in EVAL_PACKAGES if importlib.util.find_spec(m) is None]
    if missing:
        raise ExperimentError(
            f"the evaluation needs {', '.join(missing)}: pip install 'lightdvae[eval]' "
            "(pesq builds from source: with --no-build-isolation, install numpy and cython first)"
        )


def prepare_corpus(cfg: ExperimentConfig, install_espeak: bool, say: Callable[[str], None], progress: bool | None):
    """The experiment's corpus (:func:`lightdvae.data.resolve_corpus`), the built-in one synthesised first when it
    is not there yet (installing espeak-ng when ``install_espeak`` and possible)."""
    from lightdvae.data import resolve_corpus

    spec = cfg.data.strip()
    if spec.lower() == "builtin":
        from lightdvae.data.corpora import BUILTIN_MARKER, builtin_corpus_dir

        if not (Path(builtin_corpus_dir()) / BUILTIN_MARKER).is_file():
            ensure_espeak(say, install_espeak)
            say(f"building the built-in corpus in {builtin_corpus_dir()} (espeak-ng; once)")
    return resolve_corpus(spec, build=True, minutes=cfg.corpus_minutes, progress=progress)
