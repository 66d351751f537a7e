"""The posterior loops as row loops (csrc/sampling/row_loops.h, issue 17 item 4): the CUDA kernels' code.

On CUDA the explicit backward through time of DKF, RVAE and SRNN runs each loop, forward and backward, as one kernel
launch (a thread block per batch row).  The block's code is written for a team of threads;
``_row_loops_on_cpu(True)`` makes the CPU run the same code with a team of one, so its indices, order of operations
and layouts are checked here, without a GPU, against the Python loops (outputs and every gradient, float64 to a few
ulps, float32 against a float64 run), at awkward sizes and in every layout the ops accept.  The CUDA tests run the
same comparisons on a GPU (skipped without one; ``scripts/gpu_check.sh`` runs them).
"""

import pytest
import torch
from helpers import report_close, requires_native
from test_ops_sampling import _cast, make_case
from test_ops_sampling_bptt import _addmm_calls, _compare, _run_with_grads, check_inexact_own_past, own_past_run

from lightdvae import _ext

ROW_LOOPS = ["dkf_posterior", "rvae_posterior", "srnn_posterior"]

pytestmark = requires_native

requires_cuda_rows = pytest.mark.skipif(
    not (torch.cuda.is_available() and _ext.has_kernel("dkf_posterior_bptt", "cuda")),
    reason="needs a CUDA GPU and the extension's CUDA kernels",
)


@pytest.fixture
def rows_on_cpu(monkeypatch):
    """The CPU runs the row loops' code (a team of one) inside the DKF, RVAE and SRNN ``_bptt`` ops."""
    monkeypatch.setenv("LIGHTDVAE_BACKEND", "native")
    monkeypatch.delenv("LIGHTDVAE_LOOP_BACKWARD", raising=False)
    assert torch.ops.lightdvae._row_loops_on_cpu(True)
    try:
        yield
    finally:
        torch.ops.lightdvae._row_loops_on_cpu(False)


def _cast_all(args, dtype, device="cpu"):
    return [_cast(a, dtype, device) for a in args]


def _check_against_reference(loop, args, opts, dtype, monkeypatch, device="cpu"):
    """The bptt op's outputs and gradients (dtype, device) against the Python loop in float64 on the CPU (the truth)
    and in dtype (the reference's own rounding), as tests/test_ops_sampling_bptt.py holds the CPU loops."""
    frames, batch = args[0].shape[1], args[0].shape[0]
    truth_out, truth_grads, weights = _run_with_grads(loop, args, opts, "ref", monkeypatch)
    ref_out, ref_grads, _ = _run_with_grads(loop, _cast_all(args, dtype), opts, "ref", monkeypatch, weights)
    weights = [w.to(device) for w in weights]
    outs, grads, _ = _run_with_grads(loop, _cast_all(args, dtype, device), opts, "bptt", monkeypatch, weights)
    for i, (a, b, c) in enumerate(zip(outs, ref_out, truth_out, strict=True)):
        _compare(f"output {i}", a.cpu(), b, c, dtype)
    assert len(grads) == len(ref_grads)
    for i, (a, b, c) in enumerate(zip(grads, ref_grads, truth_grads, strict=True)):
        if c is None:
            assert a is None, f"gradient {i}: the reference has none"
            continue
        _compare(f"grad {i}", a.cpu(), b, c, dtype, rows=frames * batch)


@pytest.mark.parametrize("loop", ROW_LOOPS)
@pytest.mark.parametrize("batch", [1, 5, 17])
@pytest.mark.parametrize("frames", [1, 2, 151])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_row_loops_equal_the_reference(rows_on_cpu, monkeypatch, loop, batch, frames, dtype):
    args, opts = make_case(loop, batch, frames, torch.float64)
    _check_against_reference(loop, args, opts, dtype, monkeypatch)


@pytest.mark.parametrize("loop", ROW_LOOPS)
def test_row_loops_replace_the_step_loops(rows_on_cpu, monkeypatch, loop):
    """With the switch on, no per-step product is left to ATen (the ATen loop makes several addmm per step, the row
    loops none: only the projections and gradients batched over all steps remain); off, the ATen loop is back."""
    args, opts = make_case(loop, 17, 60, torch.float64)
    monkeypatch.setenv("LIGHTDVAE_LOOP_BACKWARD", "bptt")

    def run():
        leaves = [a.clone().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
        from lightdvae.ops import sampling

        out = getattr(sampling, loop)(*leaves, **opts)
        return torch.autograd.grad(out[0].sum() + out[2].sum(), leaves[0])

    rows_grad, rows_calls = _addmm_calls(run)
    torch.ops.lightdvae._row_loops_on_cpu(False)
    aten_grad, aten_calls = _addmm_calls(run)
    assert rows_calls <= 2 < 60 <= aten_calls, (rows_calls, aten_calls)
    report_close("input gradient", rows_grad[0], aten_grad[0], rtol=0, atol=1e-12 * aten_grad[0].abs().max().item())


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("deterministic", [False, True])
def test_dkf_row_layouts(rows_on_cpu, monkeypatch, activation, deterministic):
    """No z_to_g layers (g_t = (z_{t-1} + gx_t) / g_terms), no posterior MLP (the heads read g_t), three g terms,
    relu, z = mean: float64 against the Python loop."""
    g = torch.Generator().manual_seed(11)
    args, opts = make_case("dkf_posterior", 6, 30, torch.float64, activation=activation)
    gx, eps, _, _, heads = args
    z_dim = eps.shape[2]
    gx = gx[:, :, :z_dim].contiguous()
    heads = [torch.randn(*w.shape[:-1], z_dim, generator=g, dtype=w.dtype) * 0.5 if w.dim() == 2 else w for w in heads]
    opts["g_terms"] = 3.0
    _check_against_reference(
        "dkf_posterior", [gx, None if deterministic else eps, [], [], heads], opts, torch.float64, monkeypatch
    )


@pytest.mark.parametrize("deterministic", [False, True])
def test_srnn_row_loop_without_posterior_mlp(rows_on_cpu, monkeypatch, deterministic):
    g = torch.Generator().manual_seed(6)
    args, opts = make_case("srnn_posterior", 4, 12, torch.float64)
    features, eps, _, heads = args
    width = features.shape[2] + eps.shape[2]
    heads = [torch.randn(*w.shape[:-1], width, generator=g, dtype=w.dtype) * 0.1 if w.dim() == 2 else w for w in heads]
    args = [features, None if deterministic else eps, [], heads]
    _check_against_reference("srnn_posterior", args, opts, torch.float64, monkeypatch)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("posterior", ["mlp", "none"])
@pytest.mark.parametrize("embed", ["mlp", "none"])
def test_rvae_row_layouts(rows_on_cpu, monkeypatch, layers, posterior, embed):
    """Two-layer z LSTMs, no posterior MLP (the heads read [gx_t ; gz_t]: RVAE's published layout), no z embedding
    (the LSTM reads z_{t-1}): float64 against the Python loop."""
    g = torch.Generator().manual_seed(5)
    args, opts = make_case("rvae_posterior", 3, 40, torch.float64, layers=layers)
    gx, eps, z_embed, rnn_z, posterior_mlp, heads = args
    if embed == "none":
        z_embed = []
        rnn_z = [torch.randn(rnn_z[0].shape[0], eps.shape[2], generator=g, dtype=torch.float64) * 0.4, *rnn_z[1:]]
    if posterior == "none":
        hidden = gx.shape[2] + rnn_z[1].shape[1]
        posterior_mlp = []
        heads = [torch.randn(*w.shape[:-1], hidden, generator=g, dtype=w.dtype) if w.dim() == 2 else w for w in heads]
    args = [gx, eps, z_embed, rnn_z, posterior_mlp, heads]
    _check_against_reference("rvae_posterior", args, opts, torch.float64, monkeypatch)


def test_rvae_with_more_lstm_layers_than_the_row_loops_take_runs_the_aten_loop(rows_on_cpu, monkeypatch):
    """Five z LSTM layers (the row loops take four): the ATen loop runs, with the same results."""
    args, opts = make_case("rvae_posterior", 3, 12, torch.float64, layers=5)
    monkeypatch.setenv("LIGHTDVAE_LOOP_BACKWARD", "bptt")
    _, calls = _addmm_calls(lambda: _check_against_reference("rvae_posterior", args, opts, torch.float64, monkeypatch))
    assert calls > 12 * 5


def test_stacks_deeper_than_the_row_loops_take_run_the_aten_loop(rows_on_cpu, monkeypatch):
    """Nine posterior layers (the row loops take eight): the ATen loop runs, with the same results."""
    from test_ops_sampling import _linears

    g = torch.Generator().manual_seed(3)
    args, opts = make_case("dkf_posterior", 5, 20, torch.float64)
    args[3] = _linears(g, [args[0].shape[2]] + [8] * 9)
    monkeypatch.setenv("LIGHTDVAE_LOOP_BACKWARD", "bptt")
    _, calls = _addmm_calls(lambda: _check_against_reference("dkf_posterior", args, opts, torch.float64, monkeypatch))
    assert calls > 20 * 9


def test_row_switch_reports_its_setting():
    op = torch.ops.lightdvae._row_loops_on_cpu
    assert op() is False
    try:
        assert op(True) is True and op() is True
    finally:
        op(False)
    assert op() is False


@requires_cuda_rows
@pytest.mark.parametrize("loop", ROW_LOOPS)
@pytest.mark.parametrize("batch", [1, 17, 130])
@pytest.mark.parametrize("frames", [1, 151])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_row_loops_equal_the_reference(monkeypatch, loop, batch, frames, dtype):
    monkeypatch.setenv("LIGHTDVAE_BACKEND", "native")
    monkeypatch.delenv("LIGHTDVAE_LOOP_BACKWARD", raising=False)
    args, opts = make_case(loop, batch, frames, torch.float64)
    _check_against_reference(loop, args, opts, dtype, monkeypatch, device="cuda")


@requires_cuda_rows
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_cuda_row_layouts(monkeypatch, activation):
    """Wide layers (more outputs than a block has threads), no posterior MLP, z = mean, on the GPU."""
    from test_ops_sampling import _linears

    monkeypatch.setenv("LIGHTDVAE_BACKEND", "native")
    g = torch.Generator().manual_seed(9)
    args, opts = make_case("dkf_posterior", 9, 40, torch.float64, activation=activation)
    gx = torch.randn(9, 40, 300, generator=g, dtype=torch.float64)
    z_dim = args[1].shape[2]
    args = [gx, None, _linears(g, [z_dim, 300]), _linears(g, [300, 520, 40]), _linears(g, [40, z_dim]) * 2]
    _check_against_reference("dkf_posterior", args, opts, torch.float64, monkeypatch, device="cuda")
    args, opts = make_case("srnn_posterior", 9, 40, torch.float64, activation=activation)
    features, eps, _, heads = args
    heads = [
        torch.randn(*w.shape[:-1], features.shape[2] + eps.shape[2], generator=g, dtype=w.dtype) * 0.1
        if w.dim() == 2
        else w
        for w in heads
    ]
    _check_against_reference("srnn_posterior", [features, eps, [], heads], opts, torch.float32, monkeypatch, "cuda")


@requires_cuda_rows
@pytest.mark.parametrize("name", ["dkf", "rvae", "srnn"])
def test_cuda_training_step_uses_the_row_loops(monkeypatch, name):
    """A DKF, RVAE and SRNN training step on the GPU (published sizes, float64): the bptt op runs, and the loss and
    every parameter gradient equal the composite loop's autograd."""
    from lightdvae.models import build
    from lightdvae.ops import sampling
    from lightdvae.ops.sampling_bptt import explicit_backward

    power_g = torch.Generator().manual_seed(0)
    power = (torch.exp(2.0 * torch.randn(3, 17, 513, generator=power_g, dtype=torch.float64)) + 1e-6).cuda()
    used = []

    def spy(op, *inputs):
        used.append(explicit_backward(op, *inputs))
        return used[-1]

    monkeypatch.setattr(sampling, "explicit_backward", spy)
    monkeypatch.setenv("LIGHTDVAE_BACKEND", "native")
    results = []
    for loop_backward in ("bptt", "composite"):
        monkeypatch.setenv("LIGHTDVAE_LOOP_BACKWARD", loop_backward)
        torch.manual_seed(0)
        model = build(name).double().cuda()
        loss = model.loss(power, beta=1e-2, generator=torch.Generator(device="cuda").manual_seed(1)).loss
        loss.backward()
        results.append([loss.detach()] + [p.grad for p in model.parameters()])
    assert used == [True, False]
    for i, (a, b) in enumerate(zip(*results, strict=True)):
        report_close(f"{name} tensor {i}", a, b, rtol=1e-9, atol=1e-10 * (b.abs().max().item() or 1.0))


# ------------------------------------------------------------------------------------------ SRNN's own past


@pytest.mark.parametrize("batch", [1, 5, 17])
@pytest.mark.parametrize("frames", [1, 2, 151])
@pytest.mark.parametrize("grad", [False, True])
def test_own_past_row_loop_equals_the_exact_loop(rows_on_cpu, batch, frames, grad):
    args, opts = make_case("srnn_own_past", batch, frames, torch.float64)
    _, calls, _ = check_inexact_own_past(args, opts, grad, rows=frames * batch)
    # no per-step product left to ATen: without gradients none at all; with them the sequence pass's few, however
    # many frames (the ATen loop makes at least three a step)
    assert calls <= (8 if grad else 0), calls


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_own_past_row_layouts(rows_on_cpu, layers, activation):
    """Two LSTM layers, relu, every step on its own past without h_true, no h_embed layer."""
    from test_ops_sampling import _lstm

    args, opts = make_case("srnn_own_past", 6, 40, torch.float64, layers=layers, activation=activation)
    check_inexact_own_past(args, opts, grad=True, rows=6 * 40)
    check_inexact_own_past([args[0], None, [True] * 40, *args[3:]], opts, grad=False, rows=6 * 40)
    x_dim, hidden = args[-1][0].shape[0], args[4][1].shape[1]
    no_embed = [*args[:3], [], _lstm(torch.Generator().manual_seed(4), x_dim, hidden, layers), *args[5:]]
    check_inexact_own_past(no_embed, opts, grad=True, rows=6 * 40)


def test_own_past_rows_take_their_place_only_without_bit_parity(rows_on_cpu):
    """With exact loops and no gradients the ATen loop runs (bit for bit the Python loop's); more LSTM layers than
    the row code takes run it too."""
    args, opts = make_case("srnn_own_past", 6, 30, torch.float64)
    _, _, calls = own_past_run(args, opts, grad=False, exact=True, weights=None)
    assert calls >= 3 * 30
    deep, opts = make_case("srnn_own_past", 6, 30, torch.float64, layers=5)
    _, _, calls = own_past_run(deep, opts, grad=False, exact=False, weights=None)
    assert calls >= 3 * 30


@requires_cuda_rows
@pytest.mark.parametrize("batch", [1, 17, 130])
@pytest.mark.parametrize("grad", [False, True])
def test_cuda_own_past_row_loop_equals_the_exact_loop(monkeypatch, batch, grad):
    monkeypatch.setenv("LIGHTDVAE_BACKEND", "native")
    args, opts = make_case("srnn_own_past", batch, 151, torch.float64, layers=2)
    check_inexact_own_past(args, opts, grad, device="cuda", rows=151 * batch)
