"""Shared test helpers: markers for the native build and the GPU, tolerances by dtype."""

import pytest
import torch

from lightdvae import _ext

requires_native = pytest.mark.skipif(
    not _ext.HAS_NATIVE, reason=f"native extension not built ({_ext.IMPORT_ERROR}); rebuild: {_ext.REINSTALL_COMMAND}"
)
requires_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and _ext.cuda_kernels_compiled()),
    reason="needs a CUDA GPU and the extension's CUDA kernels",
)

CPU_DTYPES = [torch.float32, torch.float64]
CUDA_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def report_close(name: str, actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> None:
    """assert_close that prints the max errors first, so a failure log says by how much."""
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    if a.numel():
        err = (a - e).abs()
        scale = e.abs().max().clamp_min(1e-30)
        print(f"{name}: max abs err {err.max().item():.3e}, max rel-to-scale err {(err.max() / scale).item():.3e}")
    torch.testing.assert_close(a, e, rtol=rtol, atol=atol, equal_nan=True)
