"""The one place that imports the native extension ``lightdvae._C``.

Everything else asks this module whether native code is there (``HAS_NATIVE``) and which backend
to use (``use_native``).  ``import lightdvae`` never fails because the extension is missing: the
pure-PyTorch references take over and a single warning says so.

``_C`` uses torch's C++ ABI: the build records the torch it compiled against (``_C.build.json``), and
under another torch release ``_C`` is not loaded at all (loading it could crash): ``HAS_NATIVE`` is
False, ``IMPORT_ERROR`` names both versions, and the warning gives the rebuild command.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

_PACKAGE = Path(__file__).resolve().parent
#: written by setup.py next to _C: the torch (and CUDA) the extension was compiled against
BUILD_INFO_FILE = _PACKAGE / "_C.build.json"


def _reinstall_command() -> str:
    """The one command that rebuilds ``_C`` against the installed torch (editable checkout or a wheel install)."""
    root = _PACKAGE.parent
    if (root / "setup.py").exists() and (root / "csrc").is_dir():  # an editable install of this checkout
        return f"pip install --no-build-isolation --force-reinstall --no-deps -e {root}"
    return "pip install --no-build-isolation --force-reinstall --no-deps .  (from the lightdvae source folder)"


REINSTALL_COMMAND = _reinstall_command()


def read_build_info(path: Path = BUILD_INFO_FILE) -> dict | None:
    """What the build recorded (``torch``, ``torch_cuda``, ``cuda_kernels``, ...); None for a build that predates it."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and isinstance(info.get("torch"), str) else None


def _public(version: str) -> str:
    return version.split("+", 1)[0]  # the local label (+cpu, +cu130) names the variant, not the C++ ABI


def version_mismatch(build_info: dict | None, running: str) -> str | None:
    """Why ``_C`` must not be loaded under torch ``running``, or None when it may be."""
    if build_info is None or _public(build_info["torch"]) == _public(running):
        return None
    return (
        f"lightdvae._C was compiled against torch {build_info['torch']} but torch {running} is installed; "
        "their C++ ABIs differ, so it was not loaded"
    )


BUILD_INFO = read_build_info()
VERSION_MISMATCH = version_mismatch(BUILD_INFO, torch.__version__)

if VERSION_MISMATCH:  # importing _C could crash the process, or run with mismatched structures
    _C = None
    HAS_NATIVE = False
    IMPORT_ERROR: str | None = VERSION_MISMATCH
else:
    try:
        from lightdvae import _C  # noqa: F401  (registers torch.ops.lightdvae.*)

        HAS_NATIVE = True
        IMPORT_ERROR = None
    except ImportError as exc:  # no build, or a build against another torch (ABI mismatch)
        _C = None
        HAS_NATIVE = False
        IMPORT_ERROR = (
            str(exc)
            if any(p.suffix in (".so", ".pyd") for p in _PACKAGE.glob("_C.*"))
            else "lightdvae._C is not in this installation (installed with LIGHTDVAE_PURE_PYTHON=1, or never built)"
        )

_BACKENDS = ("auto", "ref", "native")


def backend() -> str:
    """The backend asked for through ``LIGHTDVAE_BACKEND`` (``auto`` when unset)."""
    value = os.environ.get("LIGHTDVAE_BACKEND", "auto").strip().lower() or "auto"
    if value not in _BACKENDS:
        from lightdvae.errors import BackendError

        raise BackendError(
            f"LIGHTDVAE_BACKEND={value!r} is not one of {', '.join(_BACKENDS)}; "
            "unset it to pick the native kernels when they are built and the references otherwise."
        )
    return value


_LOOP_BACKWARDS = ("bptt", "composite")


def loop_backward() -> str:
    """How the native posterior loops are differentiated, from ``LIGHTDVAE_LOOP_BACKWARD`` (``bptt`` when unset).

    ``bptt``: the loops' explicit backward through time (``<loop>_bptt`` ops, where built for the device);
    ``composite``: autograd's graph of the composite loop's ATen calls (the behaviour before the explicit backward,
    kept as its reference and for timing against it).
    """
    value = os.environ.get("LIGHTDVAE_LOOP_BACKWARD", "bptt").strip().lower() or "bptt"
    if value not in _LOOP_BACKWARDS:
        from lightdvae.errors import BackendError

        raise BackendError(f"LIGHTDVAE_LOOP_BACKWARD={value!r} is not one of {', '.join(_LOOP_BACKWARDS)}")
    return value


# Which ops have which kernels, read once at import: the build does not change while running, and
# a plain dict lookup keeps the public ops traceable by torch.compile without graph breaks.
# DEVICE_OPS have a kernel per device (CPU, CUDA), CPU_OPS one for the CPU only.  COMPOSITE_OPS are
# CompositeImplicitAutograd ops (the sampling loops: C++ loops of ATen calls), which run wherever ATen does:
# the computed dispatch table counts their kernel for every device.
DEVICE_OPS = (
    "is_divergence",
    "is_divergence_with_grad",
    "gaussian_kl",
    "gaussian_kl_with_grad",
    "kv_attention",
    "dkf_posterior_bptt",
    "rvae_posterior_bptt",
    "srnn_posterior_bptt",
)
#: CPU_OPS have a CPU kernel only (the hashed dropout, alone and after a ReLU; the vectorised tanh; the enhancement's
#: M-step and E-step reconstruction term; one LSTM layer with its backward at small batch): on CUDA
#: ``lightdvae.ops.dropout`` and ``relu_dropout`` run ATen's fused dropout (after ``torch.relu``), ``tanh`` ATen's,
#: ``nmf_m_step`` and ``mixture_is`` the ATen calls of ``lightdvae.enhance.noise``, ``lstm_layer`` nn.LSTM.
CPU_OPS = ("dropout", "relu_dropout", "tanh", "nmf_m_step", "mixture_is", "lstm_layer")
COMPOSITE_OPS = (
    "dkf_posterior",
    "dkf_prior",
    "rvae_posterior",
    "srnn_posterior",
    "srnn_own_past",
    "srnn_prior",
    "transformer_decode",
)
_KERNELS: dict[tuple[str, str], bool] = {}


def _has_kernel(op: str, key: str, composite: bool) -> bool:
    lookup = (
        torch._C._dispatch_has_computed_kernel_for_dispatch_key
        if composite
        else torch._C._dispatch_has_kernel_for_dispatch_key
    )
    try:
        return lookup(f"lightdvae::{op}", key)
    except RuntimeError:  # an extension built from older sources lacks the op: it has no kernel
        return False


if HAS_NATIVE:
    for _op in DEVICE_OPS + CPU_OPS + COMPOSITE_OPS:
        for _device, _key in (("cpu", "CPU"), ("cuda", "CUDA")):
            _KERNELS[(_op, _device)] = _has_kernel(_op, _key, _op in COMPOSITE_OPS)


def has_kernel(op: str, device_type: str) -> bool:
    """Whether ``torch.ops.lightdvae.<op>`` has a kernel for ``device_type`` ('cpu' or 'cuda')."""
    return HAS_NATIVE and _KERNELS.get((op, device_type), False)


def cuda_kernels_compiled() -> bool:
    """Whether the extension was built with its CUDA kernels (independent of a visible GPU)."""
    return has_kernel("is_divergence", "cuda")


def missing_native_error(op: str, reason: str) -> RuntimeError:
    detail = f" (import failed: {IMPORT_ERROR})" if IMPORT_ERROR and not HAS_NATIVE else ""
    return RuntimeError(
        f"LIGHTDVAE_BACKEND=native asks for the native kernel of lightdvae::{op}, but {reason}{detail}. "
        f"Rebuild the extension from the repository root against the installed torch with:\n    {REINSTALL_COMMAND}\n"
        "or unset LIGHTDVAE_BACKEND to fall back to the pure-PyTorch reference."
    )


def reference_ops() -> frozenset[str]:
    """The CPU_OPS that take their reference even where their native kernel runs, from ``LIGHTDVAE_REFERENCE_OPS``
    (comma-separated: ``dropout``, ``relu_dropout``, ``tanh``, ``nmf_m_step``, ``mixture_is``, ``lstm_layer``;
    unset: none): to
    measure one of these kernels against ATen's in a whole training or enhancement run
    (``scripts/epoch_times.py``, ``benchmarks/test_enhance.py``)."""
    raw = os.environ.get("LIGHTDVAE_REFERENCE_OPS", "")
    names = frozenset(n.strip() for n in raw.split(",") if n.strip())
    unknown = sorted(names - set(CPU_OPS))
    if unknown:
        from lightdvae.errors import BackendError

        raise BackendError(
            f"LIGHTDVAE_REFERENCE_OPS names {', '.join(unknown)}; it takes a comma-separated list of "
            f"{', '.join(CPU_OPS)} (or unset it)"
        )
    return names


def use_native(op: str, device_type: str, supported: bool = True) -> bool:
    """Decide, for one call, whether the native kernel of ``op`` runs.

    ``supported`` is False when the kernel exists but cannot take these inputs (a dtype it does not
    implement on this device, say); ``auto`` then falls back to the reference and ``native`` raises.
    """
    choice = backend()
    if choice == "ref" or (op in CPU_OPS and op in reference_ops()):
        return False
    available = has_kernel(op, device_type)
    if choice == "native":
        if not HAS_NATIVE:
            raise missing_native_error(op, "the extension lightdvae._C is not built")
        if not available:
            raise missing_native_error(op, f"it has no {device_type.upper()} kernel in this build")
        if not supported:
            raise missing_native_error(op, "its kernel does not support these inputs (see the op's docstring)")
        return True
    return available and supported


if not HAS_NATIVE and os.environ.get("LIGHTDVAE_QUIET_FALLBACK") != "1":  # once: a module runs once
    warnings.warn(
        f"lightdvae: {VERSION_MISMATCH}. The pure-PyTorch reference ops are used instead (slower). "
        f"Rebuild against the installed torch with:\n    {REINSTALL_COMMAND}"
        if VERSION_MISMATCH
        else "lightdvae: the native extension is not available, so the pure-PyTorch reference ops are used "
        f"(slower). To build it: {REINSTALL_COMMAND}  [{IMPORT_ERROR}]",
        RuntimeWarning,
        stacklevel=2,
    )
