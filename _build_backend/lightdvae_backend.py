"""The PEP 517 build backend of lightdvae: setuptools, made to compile against the torch that will run the extension.

``lightdvae._C`` uses torch's C++ ABI, so it must be compiled against the very torch it is imported with.  A plain
``pip install .`` builds in an isolated environment, and with ``requires = ["torch"]`` pip would install the newest
torch into it (several GB for a CUDA build) and compile against that, whatever torch the user has.  This backend
instead asks the interpreter pip installs into (``sys.executable`` of the hook process, then ``$VIRTUAL_ENV`` and
``$CONDA_PREFIX``) whether it has torch:

- it has: torch is not requested for the build environment; the build imports the installed torch from its own
  site-packages folder (appended to ``sys.path``, after the build environment's setuptools), so nothing is downloaded
  and the extension is compiled against exactly the torch that runs it;
- it has none: the build environment gets ``torch`` (what pip picks), and the wheel's metadata pins
  ``torch==<that version>`` (setup.py), so pip installs the same torch to run it.

With ``--no-build-isolation`` the build already sees the installed torch and nothing changes.  An sdist needs no
torch.  Everything else is ``setuptools.build_meta``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403  (the hooks this module does not change)

# Asks an interpreter, without PYTHONPATH (pip's build environment lives there), where its torch is.
_PROBE = (
    "import importlib.metadata as m, json\n"
    "try:\n"
    "    d = m.distribution('torch')\n"
    "except m.PackageNotFoundError:\n"
    "    print('null')\n"
    "else:\n"
    "    print(json.dumps({'version': d.version, 'site': str(d.locate_file(''))}))\n"
)


def _candidate_pythons() -> list[str]:
    found = [sys.executable]
    for var in ("VIRTUAL_ENV", "CONDA_PREFIX"):
        prefix = os.environ.get(var)
        if prefix:
            exe = Path(prefix, "Scripts", "python.exe") if os.name == "nt" else Path(prefix, "bin", "python")
            found.append(str(exe))
    unique: list[str] = []
    for python in found:
        if python and Path(python).exists() and python not in unique:
            unique.append(python)
    return unique


def target_torch() -> dict | None:
    """``{'version', 'site', 'python'}`` of the torch installed where lightdvae is being installed, or None."""
    for python in _candidate_pythons():
        try:
            out = subprocess.run([python, "-E", "-c", _PROBE], capture_output=True, text=True, timeout=120)
            info = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout else None
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            info = None
        if info and Path(info["site"], "torch", "__init__.py").exists():
            return {**info, "python": python}
    return None


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _use_target_torch() -> dict | None:
    """Make the installed torch importable in this (build) process; returns it, or None if there is none."""
    if _truthy("LIGHTDVAE_PURE_PYTHON"):
        return None
    torch = target_torch()
    if torch is None:
        return None
    if torch["site"] not in sys.path:
        sys.path.append(torch["site"])  # after the build environment's own packages: only torch comes from here
        print(f"lightdvae: building against the installed torch {torch['version']} ({torch['python']})")
    return torch


def _requires(base: list[str]) -> list[str]:
    if _truthy("LIGHTDVAE_PURE_PYTHON") or target_torch() is not None:
        return base
    print("lightdvae: no torch where lightdvae is installed: the build uses the one pip picks, and so will the run")
    return [*base, "torch"]


def _query_only(hook, *args, **kwargs):
    # setuptools runs setup.py to answer these; setup.py then skips everything that needs torch.
    os.environ["LIGHTDVAE_SETUP_QUERY"] = "1"
    try:
        return hook(*args, **kwargs)
    finally:
        os.environ.pop("LIGHTDVAE_SETUP_QUERY", None)


def get_requires_for_build_wheel(config_settings=None):
    return _requires(_query_only(_setuptools.get_requires_for_build_wheel, config_settings))


def get_requires_for_build_editable(config_settings=None):
    return _requires(_query_only(_setuptools.get_requires_for_build_editable, config_settings))


def get_requires_for_build_sdist(config_settings=None):
    return _query_only(_setuptools.get_requires_for_build_sdist, config_settings)


def build_sdist(sdist_directory, config_settings=None):
    return _query_only(_setuptools.build_sdist, sdist_directory, config_settings)


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    _use_target_torch()
    return _setuptools.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def prepare_metadata_for_build_editable(metadata_directory, config_settings=None):
    _use_target_torch()
    return _setuptools.prepare_metadata_for_build_editable(metadata_directory, config_settings)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _use_target_torch()
    return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    _use_target_torch()
    return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
