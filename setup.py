"""Build of the native extension ``lightdvae._C``.

CPU kernels (C++) are always built.  CUDA kernels are built whenever the torch built against is a CUDA
build and a CUDA toolkit is found (``CUDA_HOME`` / ``CUDA_PATH``, ``/usr/local/cuda``, or nvcc on
PATH) -- decided from the toolkit, never from ``torch.cuda.is_available()``, so a build machine
without a GPU still compiles them.  Which torch that is: see _build_backend/lightdvae_backend.py (the
installed one; pip's pick, pinned in the wheel's metadata, where none is installed).

The build records the torch it compiled against in ``lightdvae/_C.build.json`` (next to ``_C``);
``lightdvae._ext`` refuses to load ``_C`` under another torch and says how to rebuild.

A failed compile fails the install (pip then shows the compiler's output).

Environment flags:
  LIGHTDVAE_SKIP_CUDA_BUILD=1   build the CPU kernels only
  LIGHTDVAE_CUDA_ARCHS="80;90"  compute capabilities (default: 8.0 and 9.0, plus PTX of the newest)
  MAX_JOBS=N                    parallel compile jobs (ninja)
  NVCC_THREADS=N                nvcc --threads (default 2)
  LIGHTDVAE_PURE_PYTHON=1       do not build the extension at all (the pure-PyTorch reference ops run)
  LIGHTDVAE_REQUIRE_NATIVE=1    accepted for compatibility: a failed compile is always an error now
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _find_cuda_home() -> str | None:
    """The CUDA toolkit root: the folder whose bin/ holds the real nvcc (not a wrapper script)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        path = os.environ.get(var)
        if path and Path(path, "bin", "nvcc").exists():
            return path
    nvcc = shutil.which("nvcc")
    if nvcc:
        # nvcc on PATH may be a wrapper; `nvcc --dryrun` prints the real location as _HERE_.
        try:
            out = subprocess.run(
                [nvcc, "--dryrun", "-c", "-x", "cu", os.devnull], capture_output=True, text=True, timeout=60
            )
            match = re.search(r"_HERE_=(\S+)", out.stdout + out.stderr)
            if match and Path(match.group(1), "nvcc").exists():
                return str(Path(match.group(1)).parent)
        except (OSError, subprocess.SubprocessError):
            pass
        return str(Path(nvcc).resolve().parent.parent)
    if Path("/usr/local/cuda/bin/nvcc").exists():
        return "/usr/local/cuda"
    return None


def _cuda_archs() -> list[str]:
    raw = os.environ.get("LIGHTDVAE_CUDA_ARCHS", "80;90")
    archs = [a.strip().replace(".", "") for a in re.split(r"[;, ]+", raw) if a.strip()]
    if not archs or not all(re.fullmatch(r"\d{2,3}[af]?", a) for a in archs):
        sys.exit(f"LIGHTDVAE_CUDA_ARCHS={raw!r}: give compute capabilities such as '80;90'")
    return archs


# The runtime dependencies; torch is pinned to the version compiled against (see _dependencies).
DEPENDENCIES = ["numpy", "scipy", "soundfile", "tqdm"]
BUILD_INFO_NAME = "_C.build.json"


def _torch_public_version(version: str) -> str:
    """``2.14.1+cu130`` -> ``2.14.1``: the local label names the variant (CPU or CUDA), not the C++ ABI."""
    return version.split("+", 1)[0]


def _dependencies(torch_version: str | None) -> list[str]:
    torch_req = f"torch=={_torch_public_version(torch_version)}" if torch_version else "torch>=2.4"
    return [torch_req, *DEPENDENCIES]


def nvidia_include_dirs(search_roots: list[str]) -> list[str]:
    """The include folders of the NVIDIA wheels (cuBLAS, cuSPARSE, ...) that a CUDA build of torch depends on.

    ATen/cuda/CUDAContext.h includes cublas_v2.h and cusparse.h, which a bare toolkit may lack; the torch
    wheels' dependencies ship them under ``site-packages/nvidia/`` -- ``nvidia/cu13/include`` for CUDA 13,
    ``nvidia/cublas/include`` and ``nvidia/cusparse/include`` for CUDA 12 -- in whichever site-packages pip put
    them (the venv's, or the isolated build environment's).  Every folder holding one of those headers counts.
    """
    found: list[str] = []
    for root in search_roots:
        nvidia = Path(root, "nvidia")
        if not nvidia.is_dir():
            continue
        for header in ("cublas_v2.h", "cusparse.h"):
            for path in sorted(nvidia.glob(f"*/include/{header}")) + sorted(nvidia.glob(f"*/*/include/{header}")):
                folder = str(path.parent)
                if folder not in found:
                    found.append(folder)
    return found


def _search_roots(torch) -> list[str]:
    """torch's own site-packages first, then every folder on sys.path."""
    roots = [str(Path(torch.__file__).resolve().parent.parent)]
    roots += [p for p in sys.path if p and Path(p).is_dir() and p not in roots]
    return roots


def _extensions():
    if _truthy("LIGHTDVAE_PURE_PYTHON"):
        print("lightdvae: LIGHTDVAE_PURE_PYTHON is set: installing without the native extension")
        return [], {}, None
    if _truthy("LIGHTDVAE_SETUP_QUERY"):  # the backend only asks for build requirements or an sdist
        return [], {}, None
    try:
        import torch
    except ImportError:
        sys.exit(
            "lightdvae: torch is not importable in this build, so the native extension cannot be compiled. "
            "Install torch first (then `pip install --no-build-isolation .` builds against it), or let plain "
            "`pip install .` pick one; LIGHTDVAE_PURE_PYTHON=1 installs without native ops."
        )

    cuda_home = None
    if not _truthy("LIGHTDVAE_SKIP_CUDA_BUILD") and torch.version.cuda is not None:
        cuda_home = _find_cuda_home()
        if cuda_home:
            # torch.utils.cpp_extension reads CUDA_HOME when it is imported.
            os.environ["CUDA_HOME"] = cuda_home
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    cxx_flags = ["-O3", "-fopenmp-simd", "-fno-trapping-math", "-fno-math-errno"] if os.name != "nt" else ["/O2"]
    link_flags = []
    if sys.platform.startswith("linux") and torch.backends.openmp.is_available():
        # at::parallel_for is inline OpenMP code in torch's headers: without -fopenmp it runs on one
        # thread.  The libgomp it links is the one torch has already loaded (same soname).
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    sources = sorted(str(p.relative_to(ROOT)) for p in CSRC.rglob("*.cpp"))
    include_dirs = [str(CSRC)]
    define_macros = [("TORCH_API_INCLUDE_EXTENSION_H", None), ("Py_LIMITED_API", "0x030A0000")]
    build_info = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torch_path": str(Path(torch.__file__).resolve().parent),
        "cuda_kernels": bool(cuda_home),
        "cuda_home": cuda_home,
    }

    if cuda_home:
        archs = _cuda_archs()
        include_dirs += nvidia_include_dirs(_search_roots(torch))
        gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
        gencode.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")  # PTX for newer GPUs
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", ";".join(f"{a[:-1]}.{a[-1]}" for a in archs))
        nvcc_flags = [
            "-O3",
            "-lineinfo",
            "--expt-relaxed-constexpr",
            f"--threads={os.environ.get('NVCC_THREADS', '2')}",
            *gencode,
        ]
        sources += sorted(str(p.relative_to(ROOT)) for p in CSRC.rglob("*.cu"))
        ext = CUDAExtension(
            "lightdvae._C",
            sources,
            include_dirs=include_dirs,
            define_macros=[*define_macros, ("LIGHTDVAE_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            extra_link_args=link_flags,
            py_limited_api=True,
        )
        build_info["cuda_archs"] = archs
        print(
            f"lightdvae: building CPU and CUDA kernels against torch {torch.__version__} "
            f"(CUDA_HOME={cuda_home}, archs {';'.join(archs)})"
        )
    else:
        why = (
            "LIGHTDVAE_SKIP_CUDA_BUILD is set"
            if _truthy("LIGHTDVAE_SKIP_CUDA_BUILD")
            else "torch is a CPU build"
            if torch.version.cuda is None
            else "no CUDA toolkit (nvcc) was found"
        )
        print(f"lightdvae: building CPU kernels only against torch {torch.__version__} ({why})")
        ext = CppExtension(
            "lightdvae._C",
            sources,
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
            py_limited_api=True,
        )
    return [ext], {"build_ext": _build_ext(BuildExtension, build_info)}, torch.__version__


def _build_ext(base, build_info: dict):
    """torch's build_ext that fails with a clear last line and records which torch it compiled against."""

    class BuildExt(base.with_options(use_ninja=shutil.which("ninja") is not None)):
        def run(self):
            try:
                super().run()
            except Exception as exc:  # compiler missing or broken: the install fails (pip shows this output)
                cuda = build_info["cuda_kernels"]
                cpu_only = "LIGHTDVAE_SKIP_CUDA_BUILD=1 builds the CPU kernels only; " if cuda else ""
                sys.exit(
                    f"lightdvae: compiling the native extension against torch {build_info['torch']} failed ({exc}); "
                    f"the compiler's output is above. {cpu_only}LIGHTDVAE_PURE_PYTHON=1 installs without native ops "
                    "(the slower pure-PyTorch references run)."
                )
            self._write_build_info()

        def _write_build_info(self):
            # Next to _C in build_lib (what the wheel packs) and, for in-place / editable builds, in the source tree.
            fullname = self.get_ext_fullname("lightdvae._C")
            targets = {Path(self.build_lib, self.get_ext_filename(fullname)).parent}
            if self.inplace:
                targets.add(Path(self.get_ext_fullpath("lightdvae._C")).parent)
            for folder in targets:
                folder.mkdir(parents=True, exist_ok=True)
                (folder / BUILD_INFO_NAME).write_text(json.dumps(build_info, indent=2) + "\n")

    return BuildExt


if __name__ == "__main__":  # setuptools runs this file as __main__; the tests import its helpers
    ext_modules, cmdclass, torch_version = _extensions()
    setup(
        ext_modules=ext_modules,
        cmdclass=cmdclass,
        install_requires=_dependencies(torch_version),
        options={"bdist_wheel": {"py_limited_api": "cp310"}} if ext_modules else {},
    )
