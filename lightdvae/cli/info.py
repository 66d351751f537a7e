"""``lightdvae info``: what this installation can do."""

from __future__ import annotations

import json
import platform


def _built_against(build: dict | None) -> str:
    if build is None:
        return "unknown (no _C.build.json: not built, or built before the build recorded it)"
    kernels = f"CPU and CUDA {build.get('torch_cuda')} kernels" if build.get("cuda_kernels") else "CPU kernels"
    return f"{build['torch']} ({kernels})"


def _priors() -> str:
    """The shipped priors, each as ``name (label, epochs, test GEN SI-SDR)``: what ``pretrained:NAME`` loads."""
    from lightdvae.models import pretrained_card, pretrained_names

    items = []
    for name in pretrained_names():
        card = pretrained_card(name)
        gen = (card.get("test") or {}).get("gen", {}).get("si_sdr")
        score = f", test GEN SI-SDR {gen:.2f} dB" if gen is not None else ""
        items.append(f"{name} ({card.get('label', name)}, {card.get('epochs', '?')} epochs{score})")
    return "; ".join(items) or "none"


def collect() -> dict:
    import torch

    import lightdvae
    from lightdvae import _ext

    ops = _ext.DEVICE_OPS + _ext.CPU_OPS
    build = _ext.BUILD_INFO
    info = {
        "lightdvae": lightdvae.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "backend": _ext.backend(),
        "native_extension": _ext.HAS_NATIVE,
        "built_against_torch": _built_against(build),
        "native_cpu_ops": {op: _ext.has_kernel(op, "cpu") for op in ops},
        # C++ loops of ATen calls (sampling and decoding loops): they run wherever ATen does
        "native_loops": {op: _ext.has_kernel(op, "cpu") for op in _ext.COMPOSITE_OPS},
        "cuda_kernels_compiled": _ext.cuda_kernels_compiled(),
        "gpu_visible": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
        "pretrained_priors": _priors(),
    }
    if not _ext.HAS_NATIVE:
        if _ext.VERSION_MISMATCH:
            info["torch_mismatch"] = f"built against {build['torch']}, running {torch.__version__}"
        info["extension_error"] = _ext.IMPORT_ERROR
        info["rebuild_with"] = _ext.REINSTALL_COMMAND
    return info


def run(args) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in value.items())
        elif isinstance(value, bool):
            value = "yes" if value else "no"
        print(f"{key:<{width}}  {value}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("info", help="print versions and which native kernels are built")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=run)
