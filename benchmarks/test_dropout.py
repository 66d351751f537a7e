"""Dropout: the hashed-mask kernel (``lightdvae.ops.dropout``) vs ATen's (``torch.nn.functional.dropout``), issue #17.

    pytest benchmarks/test_dropout.py --benchmark-only --benchmark-group-by=param:shape,param:what

Forward alone and forward + backward at the shapes of a LigHT-DVAE training step (the feed-forward block's
(128, 50, 512) and the residual stream's (128, 50, 128)), float32, on the CPU; ``copy`` reads the input and writes
the output once (``x.clone()``), the fewest bytes a forward can move: the floor the hashed kernel is measured
against in the same group (relative column).  What it buys in a training step is in benchmarks/test_train_step.py
(``native`` runs this dropout, ``reference`` ATen's).
"""

import pytest
import torch

from lightdvae import _ext
from lightdvae.ops import dropout, dropout_ref

pytestmark = pytest.mark.usefixtures("bench_threads")
SHAPES = [(128, 50, 512), (128, 50, 128)]
P = 0.1


@pytest.mark.parametrize("what", ["forward", "forward+backward"])
@pytest.mark.parametrize("impl", ["aten", "hashed", "copy"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_dropout(benchmark, describe, shape, impl, what):
    if impl == "hashed" and not _ext.has_kernel("dropout", "cpu"):
        pytest.skip("the native extension is not built")
    if impl == "copy" and what != "forward":
        pytest.skip("the floor is a forward's traffic")
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0), requires_grad=what != "forward")
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    fn = {"aten": lambda t: dropout_ref(t, P), "hashed": lambda t: dropout(t, P), "copy": torch.clone}[impl]
    benchmark.group = f"dropout-{'x'.join(map(str, shape))}-{what}"
    describe("cpu", shape=list(shape), p=P)

    def run():
        y = fn(x)
        if what != "forward":
            y.backward(grad)
        return y

    y = benchmark(run)
    if impl != "copy":
        assert 0.85 < (y != 0).float().mean().item() < 0.95
