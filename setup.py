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

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import warnings
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


def _extensions():
    if _truthy("LIGHTDVAE_PURE_PYTHON"):
        return [], {}
    try:
        import torch
    except ImportError:
        warnings.warn(
            "torch is not installed in the build environment: lightdvae installs without native ops. "
            "Install torch first, then `pip install --no-build-isolation .`",
            stacklevel=1,
        )
        return [], {}

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

    if cuda_home:
        archs = _cuda_archs()
        # ATen/cuda/CUDAContext.h includes cuBLAS/cuSPARSE headers; CUDA builds of torch ship them
        # in site-packages/nvidia/*/include, which a bare toolkit may lack.
        site = Path(sysconfig.get_paths()["purelib"]) / "nvidia"
        include_dirs += [str(p) for p in sorted(site.glob("*/include")) if p.is_dir()]
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
        print(f"lightdvae: building CPU and CUDA kernels (CUDA_HOME={cuda_home}, archs {';'.join(archs)})")
    else:
        why = (
            "LIGHTDVAE_SKIP_CUDA_BUILD is set"
            if _truthy("LIGHTDVAE_SKIP_CUDA_BUILD")
            else "torch is a CPU build"
            if torch.version.cuda is None
            else "no CUDA toolkit (nvcc) was found"
        )
        print(f"lightdvae: building CPU kernels only ({why})")
        ext = CppExtension(
            "lightdvae._C",
            sources,
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
            py_limited_api=True,
        )
    return [ext], {"build_ext": _lenient_build_ext(BuildExtension)}


def _lenient_build_ext(base):
    """A build_ext that turns a failed compile into a pure-Python install, unless told otherwise."""

    class BuildExt(base.with_options(use_ninja=shutil.which("ninja") is not None)):
        def run(self):
            try:
                super().run()
            except Exception as exc:  # compiler missing or broken
                if _truthy("LIGHTDVAE_REQUIRE_NATIVE"):
                    raise
                warnings.warn(
                    f"lightdvae: building the native extension failed ({exc}); installing the pure-Python "
                    "package. Set LIGHTDVAE_REQUIRE_NATIVE=1 to make this an error.",
                    stacklevel=1,
                )

    return BuildExt


ext_modules, cmdclass = _extensions()
setup(
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp310"}} if ext_modules else {},
)
