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
from conftest import seeded_input, timed_forward_backward

from lightdvae import _ext
from lightdvae.ops import dropout, dropout_ref
from lightdvae.ops.dropout import relu_dropout

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
    x, grad = seeded_input(shape, what != "forward")
    fn = {"aten": lambda t: dropout_ref(t, P), "hashed": lambda t: dropout(t, P), "copy": torch.clone}[impl]
    benchmark.group = f"dropout-{'x'.join(map(str, shape))}-{what}"
    describe("cpu", shape=list(shape), p=P)
    y = timed_forward_backward(benchmark, fn, x, grad, what != "forward")
    if impl != "copy":
        assert 0.85 < (y != 0).float().mean().item() < 0.95


@pytest.mark.parametrize("what", ["forward", "forward+backward"])
@pytest.mark.parametrize("impl", ["relu+hashed", "fused"])
def test_relu_dropout(benchmark, describe, impl, what):
    """The feed-forward block's ReLU and dropout at (128, 50, 512): ``torch.relu`` then the hashed dropout (two passes
    each way) against ``relu_dropout`` (one pass each way, its backward from the output alone)."""
    if not _ext.has_kernel("relu_dropout", "cpu"):
        pytest.skip("the native extension is not built")
    shape = SHAPES[0]
    x, grad = seeded_input(shape, what != "forward")
    fn = {"relu+hashed": lambda t: dropout(torch.relu(t), P), "fused": lambda t: relu_dropout(t, P)}[impl]
    benchmark.group = f"relu-dropout-{'x'.join(map(str, shape))}-{what}"
    describe("cpu", shape=list(shape), p=P)
    y = timed_forward_backward(benchmark, fn, x, grad, what != "forward")
    assert 0.4 < (y != 0).float().mean().item() < 0.5  # half the inputs are negative, a tenth of the rest dropped


@pytest.mark.parametrize("impl", ["two-ops", "fused"])
def test_feed_forward_block(benchmark, describe, impl):
    """A LigHT-DVAE feed-forward block in training, forward + backward, at (128, 50, 128) -> 512 -> 128:
    ``FeedForward`` as it runs (``fused``: relu_dropout) against its modules one after the other (``two-ops``:
    ReLU, then the hashed dropout).  The products are the same on both sides; the difference is the passes saved."""
    from lightdvae.models.transformer_layers import FeedForward

    if not _ext.has_kernel("relu_dropout", "cpu"):
        pytest.skip("the native extension is not built")
    torch.manual_seed(0)
    block = FeedForward(128, 512, "relu", P).train()
    forward = block.forward if impl == "fused" else block.net.forward
    x, grad = seeded_input((128, 50, 128), True)
    benchmark.group = "feed-forward-128x50x128-forward+backward"
    describe("cpu", shape=[128, 50, 128], ff_dim=512, p=P)
    timed_forward_backward(benchmark, forward, x, grad, True)
