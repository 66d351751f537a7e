"""The build's choice of torch and NVIDIA headers (setup.py), and the import-time check of the torch that ``_C`` was
compiled against (lightdvae._ext).  Fast: no compiler runs here (tests/test_install.py installs for real)."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightdvae import _ext

REPO = Path(__file__).resolve().parents[1]


def _load_setup():
    spec = importlib.util.spec_from_file_location("lightdvae_setup", REPO / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not __main__: setup() does not run
    return module


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("/* header */\n")


def test_nvidia_headers_found_in_every_layout(tmp_path):
    """CUDA 13 wheels (nvidia/cu13/include), CUDA 12 wheels (one folder per library), in any site-packages."""
    cu13, cu12, empty = tmp_path / "venv_site", tmp_path / "build_env_site", tmp_path / "other"
    _touch(cu13 / "nvidia/cu13/include/cusparse.h")
    _touch(cu13 / "nvidia/cu13/include/cublas_v2.h")
    _touch(cu13 / "nvidia/cudnn/include/cudnn.h")  # no cuBLAS / cuSPARSE header: not needed
    _touch(cu12 / "nvidia/cublas/include/cublas_v2.h")
    _touch(cu12 / "nvidia/cusparse/include/cusparse.h")
    empty.mkdir()
    found = _load_setup().nvidia_include_dirs([str(empty), str(cu13), str(cu12), str(tmp_path / "missing")])
    assert found == [
        str(cu13 / "nvidia/cu13/include"),
        str(cu12 / "nvidia/cublas/include"),
        str(cu12 / "nvidia/cusparse/include"),
    ]


def test_wheel_pins_the_torch_it_was_compiled_against():
    setup = _load_setup()
    assert setup._dependencies("2.13.0+cpu")[0] == "torch==2.13.0"  # either variant of that release
    assert setup._dependencies("2.14.1")[0] == "torch==2.14.1"
    assert setup._dependencies(None)[0] == "torch>=2.4"  # pure Python: any torch


def test_version_check():
    assert _ext.version_mismatch(None, "2.13.0") is None  # a build that predates the record: loaded as before
    assert _ext.version_mismatch({"torch": "2.13.0+cpu"}, "2.13.0+cu130") is None  # same release, same ABI
    message = _ext.version_mismatch({"torch": "2.14.1+cu130"}, "2.13.0+cpu")
    assert "2.14.1+cu130" in message and "2.13.0+cpu" in message


def test_read_build_info(tmp_path):
    path = tmp_path / "_C.build.json"
    assert _ext.read_build_info(path) is None
    path.write_text("not json")
    assert _ext.read_build_info(path) is None
    path.write_text(json.dumps({"torch": "2.13.0+cpu", "cuda_kernels": False}))
    assert _ext.read_build_info(path)["torch"] == "2.13.0+cpu"


def _package_copy(tmp_path: Path, build_torch: str) -> Path:
    """lightdvae (with the _C that is built here, if any) under tmp_path, recorded as built against ``build_torch``."""
    root = tmp_path / "site"
    shutil.copytree(
        REPO / "lightdvae", root / "lightdvae", ignore=shutil.ignore_patterns("__pycache__", "_C.build.json")
    )
    info = {"torch": build_torch, "torch_cuda": None, "cuda_kernels": False}
    (root / "lightdvae" / "_C.build.json").write_text(json.dumps(info))
    return root


def _run(root: Path, code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("LIGHTDVAE_QUIET_FALLBACK", "LIGHTDVAE_BACKEND")}
    env.update(PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, cwd=root)


PROBE = """
import json, sys
import lightdvae
from lightdvae import _ext
from lightdvae.cli import info
assert lightdvae.__file__.startswith({root!r}), lightdvae.__file__
print(json.dumps({{"has_native": _ext.HAS_NATIVE, "error": _ext.IMPORT_ERROR, "loaded": "lightdvae._C" in sys.modules,
                  "info": info.collect()}}))
"""


def test_build_for_another_torch_is_not_loaded(tmp_path):
    """A _C recorded as built against another torch release is never imported; one warning says both versions and
    the rebuild command, and ``lightdvae info`` shows the mismatch."""
    root = _package_copy(tmp_path, "2.0.0+fake")
    proc = _run(root, PROBE.format(root=str(root)))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["has_native"] is False and result["loaded"] is False
    assert "2.0.0+fake" in result["error"] and torch.__version__ in result["error"]
    assert result["info"]["torch_mismatch"] == f"built against 2.0.0+fake, running {torch.__version__}"
    assert result["info"]["rebuild_with"].startswith("pip install --no-build-isolation --force-reinstall --no-deps")
    assert proc.stderr.count("was compiled against torch 2.0.0+fake") == 1, proc.stderr  # warned once
    assert "--force-reinstall" in proc.stderr


def test_build_for_this_torch_is_loaded(tmp_path):
    if not any((REPO / "lightdvae").glob("_C*.so")):
        pytest.skip("no native build in this checkout")
    root = _package_copy(tmp_path, torch.__version__)
    proc = _run(root, PROBE.format(root=str(root)))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["has_native"] is True and result["loaded"] is True, result["error"]
    assert result["info"]["built_against_torch"].startswith(torch.__version__)
    assert "torch_mismatch" not in result["info"] and "native extension" not in proc.stderr
