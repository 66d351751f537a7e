"""tanh: the vectorised kernel (``lightdvae.ops.tanh``) vs ATen's (``torch.tanh``), issue #17.

    pytest benchmarks/test_activations.py --benchmark-only --benchmark-group-by=param:shape,param:what

Forward alone and forward + backward at the shapes of the recurrent models' MLP activations in a training step at
batch 128 x 50 frames (DKF's and SRNN's 256-wide layers, the VAE's 128), float32, on the CPU; ``copy`` reads the
input and writes the output once (``x.clone()``), the fewest bytes a forward can move.  What it buys in a training
step is in the floor table (``scripts/floor_table.py``) and benchmarks/test_train_step.py.
"""

import pytest
import torch
from conftest import seeded_input, timed_forward_backward

from lightdvae import _ext
from lightdvae.ops import tanh

pytestmark = pytest.mark.usefixtures("bench_threads")
SHAPES = [(128, 50, 256), (128, 50, 128)]


@pytest.mark.parametrize("what", ["forward", "forward+backward"])
@pytest.mark.parametrize("impl", ["aten", "native", "copy"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_tanh(benchmark, describe, shape, impl, what):
    if impl == "native" and not _ext.has_kernel("tanh", "cpu"):
        pytest.skip("the native extension is not built")
    if impl == "copy" and what != "forward":
        pytest.skip("the floor is a forward's traffic")
    x, grad = seeded_input(shape, what != "forward")
    fn = {"aten": torch.tanh, "native": tanh, "copy": torch.clone}[impl]
    benchmark.group = f"tanh-{'x'.join(map(str, shape))}-{what}"
    describe("cpu", shape=list(shape), isa=torch.ops.lightdvae.loss_cpu_isa() if _ext.HAS_NATIVE else None)
    y = timed_forward_backward(benchmark, fn, x, grad, what != "forward")
    if impl != "copy":
        torch.testing.assert_close(y, torch.tanh(x), rtol=3e-7, atol=1e-7)
