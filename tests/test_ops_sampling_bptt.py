"""The posterior loops' explicit backward through time (``<loop>_bptt`` ops, issue 17) against the references.

Outputs and the gradient of every input that requires one (weights, biases, the speech features, the noise), at
awkward lengths and batches, with non-contiguous inputs and output gradients; tolerances from a float64 run of the
reference: in float64 the two agree to a few ulps, in float32 the explicit backward is no further from float64 than
the composite loop's own autograd (and within 1e-5 of the scale).  gradcheck in float64, opcheck of both ops, and a
model's training step against the Python loops.
"""

import pytest
import torch
from helpers import report_close, requires_native
from test_ops_sampling import _cast, _leaves, _op_args, _tensors, make_case

from lightdvae import _ext
from lightdvae.errors import BackendError
from lightdvae.models import build
from lightdvae.ops import sampling
from lightdvae.ops.sampling_bptt import explicit_backward

BPTT_LOOPS = ["dkf_posterior", "rvae_posterior", "srnn_posterior"]
MODELS = {"dkf_posterior": "dkf", "rvae_posterior": "rvae", "srnn_posterior": "srnn"}

pytestmark = requires_native


@pytest.fixture
def native(monkeypatch):
    monkeypatch.setenv("LIGHTDVAE_BACKEND", "native")
    monkeypatch.delenv("LIGHTDVAE_LOOP_BACKWARD", raising=False)


def _run_with_grads(loop, args, opts, mode, monkeypatch, weights=None):
    """Outputs of ``sampling.<loop>`` and the gradients of a fixed random loss: mode 'bptt' (the explicit
    backward), 'composite' (autograd through the composite loop) or 'ref' (the Python loop)."""
    leaves = _leaves(args)
    if mode == "ref":
        outs = getattr(sampling, loop + "_ref")(*leaves, **opts)
    else:
        monkeypatch.setenv("LIGHTDVAE_LOOP_BACKWARD", mode)
        assert explicit_backward(loop, leaves[0], *leaves) == (mode == "bptt")
        outs = getattr(sampling, loop)(*leaves, **opts)
    g = torch.Generator().manual_seed(7)
    weights = weights or [torch.randn(o.shape, generator=g, dtype=torch.float64) for o in outs]
    loss = sum((o * w.to(o.dtype)).sum() for o, w in zip(outs, weights, strict=True))
    grads = torch.autograd.grad(loss, _tensors(leaves), allow_unused=True)
    return [o.detach() for o in outs], list(grads), weights


def _compare(name, got, want, truth, dtype, rows=1):
    """float64: a few ulps of the scale.  float32: no further from the float64 truth than 4x the reference's own
    float32 error plus a few ulps of the scale times sqrt(rows), and within 1e-5 of the scale.

    ``rows``: how many terms the explicit backward sums in one GEMM for a weight gradient (frames x batch).  The
    reference adds one product per step; one GEMM over all rows sums in the blocking of whichever BLAS the CPU gets
    (MKL, oneDNN, OpenBLAS; AVX2 or AVX-512), whose rounding error grows like sqrt(rows) ulps of the scale (measured
    on an AMD EPYC: 2.5e-6 of the scale at 151 x 17 rows, 5.8x the reference's own error there)."""
    scale = truth.abs().max().item() or 1.0
    if dtype == torch.float64:
        report_close(name, got, want, rtol=0, atol=1e-12 * scale)
        return
    err_got = (got.double() - truth).abs().max().item()
    err_want = (want.double() - truth).abs().max().item()
    ulp = torch.finfo(torch.float32).eps
    print(f"{name}: float32 error vs float64 {err_got / scale:.2e} (reference's own {err_want / scale:.2e})")
    assert err_got <= 4 * err_want + 4 * ulp * scale * rows**0.5
    assert err_got <= 1e-5 * scale


@pytest.mark.parametrize("loop", BPTT_LOOPS)
@pytest.mark.parametrize("batch", [1, 4, 5, 17])  # raw-pointer steps up to batch 4 (small_batch.h), ATen's above
@pytest.mark.parametrize("frames", [1, 2, 151])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bptt_equals_reference(native, monkeypatch, loop, batch, frames, dtype):
    args, opts = make_case(loop, batch, frames, torch.float64)
    truth_out, truth_grads, weights = _run_with_grads(loop, args, opts, "ref", monkeypatch)
    args = [a.to(dtype) if isinstance(a, torch.Tensor) else [t.to(dtype) for t in a] for a in args]
    outs, grads, _ = _run_with_grads(loop, args, opts, "bptt", monkeypatch, weights)
    for mode in ("composite", "ref"):
        want_out, want_grads, _ = _run_with_grads(loop, args, opts, mode, monkeypatch, weights)
        for i, (a, b, c) in enumerate(zip(outs, want_out, truth_out, strict=True)):
            _compare(f"output {i} vs {mode}", a, b, c, dtype)
        assert len(grads) == len(want_grads) >= 7
        for i, (a, b, c) in enumerate(zip(grads, want_grads, truth_grads, strict=True)):
            assert a is not None and b is not None, f"gradient {i} missing"
            _compare(f"grad {i} vs {mode}", a, b, c, dtype, rows=frames * batch)


@pytest.mark.parametrize("loop", BPTT_LOOPS)
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_bptt_relu_deterministic_and_expanded_gradients(native, monkeypatch, loop, activation):
    """eps = None (z = mean), relu layers, and output gradients that are expanded (sum) rather than dense."""
    args, opts = make_case(loop, 3, 6, torch.float64, activation=activation)
    args[1] = None
    results = []
    for mode in ("bptt", "ref"):
        leaves = _leaves(args)
        if mode == "bptt":
            monkeypatch.setenv("LIGHTDVAE_LOOP_BACKWARD", "bptt")
            outs = getattr(sampling, loop)(*leaves, **opts)
        else:
            outs = getattr(sampling, loop + "_ref")(*leaves, **opts)
        loss = outs[0].sum() + outs[2].sum()  # z and logvar only: mean's gradient is materialised as zeros
        results.append(torch.autograd.grad(loss, _tensors(leaves)))
    for i, (a, b) in enumerate(zip(*results, strict=True)):
        report_close(f"grad {i}", a, b, rtol=0, atol=1e-12 * (b.abs().max().item() or 1.0))


@pytest.mark.parametrize("loop", BPTT_LOOPS)
def test_bptt_non_contiguous_inputs(native, monkeypatch, loop):
    args, opts = make_case(loop, 5, 33, torch.float64)

    def strided(t):  # same values, strided storage (every other element of a wider tensor; weights transposed)
        if t.dim() == 3:
            wide = torch.zeros(t.shape[1], t.shape[0], 2 * t.shape[2], dtype=t.dtype)
            wide[..., ::2] = t.transpose(0, 1)
            return wide[..., ::2].transpose(0, 1)
        return t.t().contiguous().t() if t.dim() == 2 else torch.stack([t, t], 1)[:, 0]

    odd = [strided(a) if isinstance(a, torch.Tensor) else [strided(t) for t in a] for a in args]
    assert not any(t.is_contiguous() for t in _tensors(odd) if t.dim() > 1)
    outs, grads, weights = _run_with_grads(loop, odd, opts, "bptt", monkeypatch)
    want_out, want_grads, _ = _run_with_grads(loop, args, opts, "ref", monkeypatch, weights)
    for i, (a, b) in enumerate(zip(outs + grads, want_out + want_grads, strict=True)):
        report_close(f"tensor {i}", a, b, rtol=0, atol=1e-12 * (b.abs().max().item() or 1.0))


@pytest.mark.parametrize("loop", BPTT_LOOPS)
@pytest.mark.parametrize("deterministic", [False, True])
def test_bptt_gradcheck(native, monkeypatch, loop, deterministic):
    monkeypatch.setenv("LIGHTDVAE_LOOP_BACKWARD", "bptt")
    args, opts = make_case(loop, 2, 4)
    if deterministic:
        args[1] = None
    leaves = _leaves(args)
    flat = _tensors(leaves)

    def fn(*tensors):
        it = iter(tensors)
        rebuilt = [
            a if a is None else next(it) if isinstance(a, torch.Tensor) else [next(it) for _ in a] for a in leaves
        ]
        assert explicit_backward(loop, rebuilt[0], *rebuilt)
        return getattr(sampling, loop)(*rebuilt, **opts)

    assert torch.autograd.gradcheck(fn, tuple(flat), eps=1e-6, atol=1e-7)


def _bptt_args(loop, args, opts):
    """Arguments of torch.ops.lightdvae.<loop>_bptt (the composite op's, without exact_lstm)."""
    op_args = _op_args(loop, args, opts)
    return op_args[:-1] if loop == "rvae_posterior" else op_args


def _backward_args(loop, grads, op_args, outs):
    """Arguments of torch.ops.lightdvae.<loop>_bptt_backward."""
    saved = (outs[0],) if loop == "dkf_posterior" else (op_args[0], outs[0])  # (features,) z
    return (*grads, op_args[1], *saved, outs[2], outs[3], *op_args[2:])


@pytest.mark.parametrize("loop", BPTT_LOOPS)
@pytest.mark.parametrize("requires_grad", [False, True])
def test_bptt_opcheck(loop, requires_grad):
    args, opts = make_case(loop, 2, 3, torch.float32)
    if requires_grad:
        args = _leaves(args)
    forward = getattr(torch.ops.lightdvae, f"{loop}_bptt").default
    torch.library.opcheck(forward, _bptt_args(loop, args, opts))
    # the backward op runs inside autograd's backward, on tensors that record nothing (it has no double backward)
    op_args = _bptt_args(loop, make_case(loop, 2, 3, torch.float32)[0], opts)
    outs = forward(*op_args)
    grads = [torch.randn_like(o) for o in outs[:3]]
    backward = getattr(torch.ops.lightdvae, f"{loop}_bptt_backward").default
    torch.library.opcheck(backward, _backward_args(loop, grads, op_args, outs))


def test_bptt_checks_name_the_argument():
    args, opts = make_case("dkf_posterior", 2, 3, torch.float32)
    op_args = list(_op_args("dkf_posterior", args, opts))
    op_args[1] = op_args[1][:, :1]
    with pytest.raises(RuntimeError, match=r"dkf_posterior_bptt: eps must be \(frames, batch, z_dim\)"):
        torch.ops.lightdvae.dkf_posterior_bptt(*op_args)
    outs = torch.ops.lightdvae.dkf_posterior_bptt(*_op_args("dkf_posterior", args, opts))
    g = torch.zeros_like(outs[0])
    with pytest.raises(RuntimeError, match="dkf_posterior_bptt_backward: workspace is not the one"):
        torch.ops.lightdvae.dkf_posterior_bptt_backward(
            g, g, g, None, outs[0], outs[2], outs[3][1:], *_op_args("dkf_posterior", args, opts)[2:]
        )


def test_loop_backward_setting(monkeypatch):
    monkeypatch.setenv("LIGHTDVAE_LOOP_BACKWARD", "autograd")
    with pytest.raises(BackendError, match="LIGHTDVAE_LOOP_BACKWARD='autograd' is not one of bptt, composite"):
        _ext.loop_backward()
    monkeypatch.setenv("LIGHTDVAE_LOOP_BACKWARD", "composite")
    assert _ext.loop_backward() == "composite"
    monkeypatch.delenv("LIGHTDVAE_LOOP_BACKWARD")
    assert _ext.loop_backward() == "bptt"
    x = torch.zeros(1, 1, 1, requires_grad=True)
    assert explicit_backward("dkf_posterior", x, x) == _ext.has_kernel("dkf_posterior_bptt", "cpu")
    assert not explicit_backward("dkf_posterior", x, x.detach(), None, [x.detach()])
    with torch.no_grad():
        assert not explicit_backward("dkf_posterior", x, x)
    # a device the _bptt ops have no kernel for (they are registered for the CPU): the composite loop runs
    meta = torch.zeros(1, 1, 1, device="meta", requires_grad=True)
    assert not explicit_backward("dkf_posterior", meta, meta)


@pytest.mark.parametrize("loop", BPTT_LOOPS)
def test_training_step_matches_python_loop(monkeypatch, loop):
    """A model's loss and every parameter gradient: native ops with the explicit backward against the Python loops
    (LIGHTDVAE_BACKEND=ref) and against the composite loop's autograd.  The models' LSTMs run nn.LSTM on every
    side (the native LSTM layer, which the ref backend does not take, has its own tests: test_ops_lstm.py)."""
    monkeypatch.setenv("LIGHTDVAE_REFERENCE_OPS", "lstm_layer")
    power_g = torch.Generator().manual_seed(0)
    power = torch.exp(2.0 * torch.randn(3, 17, 513, generator=power_g)) + 1e-6

    def step(backend, loop_backward):
        monkeypatch.setenv("LIGHTDVAE_BACKEND", backend)
        monkeypatch.setenv("LIGHTDVAE_LOOP_BACKWARD", loop_backward)
        torch.manual_seed(0)
        model = build(MODELS[loop])
        loss = model.loss(power, beta=1e-2, generator=torch.Generator().manual_seed(1)).loss
        loss.backward()
        return [loss.detach()] + [p.grad for p in model.parameters()]

    used = []

    def spy(op, *inputs):
        used.append(explicit_backward(op, *inputs))
        return used[-1]

    monkeypatch.setattr(sampling, "explicit_backward", spy)
    got = step("native", "bptt")
    assert used == [True], "the model's training step did not run the explicit backward"
    for backend, loop_backward in (("native", "composite"), ("ref", "bptt")):
        want = step(backend, loop_backward)
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            scale = b.abs().max().item() or 1.0
            report_close(f"{backend}/{loop_backward} tensor {i}", a, b, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("posterior", ["mlp", "none"])
@pytest.mark.parametrize("embed", ["mlp", "none"])
def test_rvae_bptt_layouts(native, monkeypatch, layers, posterior, embed):
    """Multi-layer z LSTMs, no posterior MLP (the heads read [gx_t ; g^z_t]: RVAE's published layout) and no z
    embedding (the LSTM reads z_{t-1}), in float64 against the Python loop."""
    g = torch.Generator().manual_seed(5)
    args, opts = make_case("rvae_posterior", 3, 40, torch.float64, layers=layers)
    gx, eps, z_embed, rnn_z, posterior_mlp, heads = args
    width = rnn_z[0].shape[1]
    if embed == "none":
        z_embed = []
        rnn_z = [torch.randn(rnn_z[0].shape[0], eps.shape[2], generator=g, dtype=torch.float64) * 0.4, *rnn_z[1:]]
        width = eps.shape[2]
    if posterior == "none":
        hidden = gx.shape[2] + rnn_z[1].shape[1]
        posterior_mlp = []
        heads = [torch.randn(*w.shape[:-1], hidden, generator=g, dtype=w.dtype) if w.dim() == 2 else w for w in heads]
    assert rnn_z[0].shape[1] == width
    args = [gx, eps, z_embed, rnn_z, posterior_mlp, heads]
    outs, grads, weights = _run_with_grads("rvae_posterior", args, opts, "bptt", monkeypatch)
    want_out, want_grads, _ = _run_with_grads("rvae_posterior", args, opts, "ref", monkeypatch, weights)
    for i, (a, b) in enumerate(zip(outs + grads, want_out + want_grads, strict=True)):
        report_close(f"tensor {i}", a, b, rtol=0, atol=1e-12 * (b.abs().max().item() or 1.0))


@pytest.mark.parametrize("deterministic", [False, True])
def test_srnn_bptt_without_posterior_mlp(native, monkeypatch, deterministic):
    """No posterior MLP: the heads read [g_t ; z_{t-1}] directly (float64, against the Python loop)."""
    g = torch.Generator().manual_seed(6)
    args, opts = make_case("srnn_posterior", 4, 12, torch.float64)  # a linear recurrence: a few frames stay finite
    features, eps, _, heads = args
    width = features.shape[2] + eps.shape[2]
    heads = [torch.randn(*w.shape[:-1], width, generator=g, dtype=w.dtype) * 0.1 if w.dim() == 2 else w for w in heads]
    args = [features, None if deterministic else eps, [], heads]
    outs, grads, weights = _run_with_grads("srnn_posterior", args, opts, "bptt", monkeypatch)
    want_out, want_grads, _ = _run_with_grads("srnn_posterior", args, opts, "ref", monkeypatch, weights)
    for i, (a, b) in enumerate(zip(outs + grads, want_out + want_grads, strict=True)):
        report_close(f"tensor {i}", a, b, rtol=0, atol=1e-12 * (b.abs().max().item() or 1.0))


@pytest.mark.parametrize("loop", BPTT_LOOPS)
@pytest.mark.parametrize("batch", [1, 5])
def test_inexact_loops_run_the_bptt_op_without_gradients(native, loop, batch):
    """Inside exact_loops(False) a call without gradients runs the ``_bptt`` op (raw steps at batch 1, ATen's at 5):
    within float rounding of the exact loop (float32 against the float64 reference); the switch nests, is per
    block, and the default stays exact."""
    args, opts = make_case(loop, batch, 151, torch.float64)
    truth = getattr(sampling, loop + "_ref")(*args, **opts)
    args = [a.float() if isinstance(a, torch.Tensor) else [t.float() for t in a] for a in args]
    with torch.no_grad():
        exact = getattr(sampling, loop)(*args, **opts)
        assert not explicit_backward(loop, args[0], *args)
        with sampling.exact_loops(False):
            assert explicit_backward(loop, args[0], *args)
            with sampling.exact_loops(True):
                assert not explicit_backward(loop, args[0], *args)
            fast = getattr(sampling, loop)(*args, **opts)
        assert not explicit_backward(loop, args[0], *args)
    for i, (a, b, c) in enumerate(zip(fast, exact, truth, strict=True)):
        _compare(f"output {i}", a, b, c.double(), torch.float32)


def test_own_past_records_its_lstm_only_when_its_weights_need_gradients(native):
    """The fed-back predictions are detached, so with only z requiring a gradient (enhancement's E-step) the
    own-past h carries no graph, and the gradient of z is the reference's (float64, a few ulps)."""
    args, opts = make_case("srnn_own_past", 2, 40, torch.float64)
    z = args[0].clone().requires_grad_()
    z_ref = args[0].clone().requires_grad_()
    out = sampling.srnn_own_past(z, *args[1:], **opts)
    ref = sampling.srnn_own_past_ref(z_ref, *args[1:], **opts)
    assert out[0].requires_grad and not out[2].requires_grad
    for a, b in zip(out, ref, strict=True):
        report_close("output", a.detach(), b.detach(), rtol=0, atol=1e-12 * b.abs().max().item())
    weight = torch.randn(out[0].shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    (grad,) = torch.autograd.grad((out[0] * weight).sum(), z)
    (grad_ref,) = torch.autograd.grad((ref[0] * weight).sum(), z_ref)
    report_close("dz", grad, grad_ref, rtol=0, atol=1e-12 * grad_ref.abs().max().item())


def _addmm_calls(fn) -> tuple[object, int]:
    """``fn()`` and the number of ``aten::addmm`` calls it made (each ATen loop step makes several)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = fn()
    return out, sum(e.count for e in prof.key_averages() if e.key == "aten::addmm")


def own_past_run(args, opts, grad, exact, weights):
    """srnn_own_past's outputs, the gradients of a fixed random loss of them (``weights``; with ``grad``) and its
    addmm calls, inside ``exact_loops(exact)``."""
    leaves = _leaves(args) if grad else args
    with torch.set_grad_enabled(grad), sampling.exact_loops(exact):
        outs, calls = _addmm_calls(lambda: sampling.srnn_own_past(*leaves, **opts))
    grads = []
    if grad:
        loss = sum((o * w.to(o.dtype)).sum() for o, w in zip(outs, weights, strict=True))
        grads = [g for g in torch.autograd.grad(loss, _tensors(leaves), allow_unused=True) if g is not None]
    return [o.detach() for o in outs], grads, calls


def check_inexact_own_past(args, opts, grad, device="cpu", rows=1):
    """The inexact own-past loop (``exact_loops(False)``; on ``device``) against the exact one on the CPU, outputs
    and gradients: float64 within a few ulps of the reference, float32 no further from float64 than 4x the exact
    loop's own float32 error (``rows``: see _compare).  Returns the float32 runs' addmm calls, exact and inexact
    (float32: the sequence pass's LSTM is oneDNN's kernel, where ATen's float64 LSTM makes a product per step), and
    how many inputs got a gradient."""
    batch, frames = args[0].shape[:2]
    hidden = args[4][1].shape[1]
    g = torch.Generator().manual_seed(5)
    widths = (args[-1][0].shape[0], hidden, hidden)
    weights = [torch.randn(batch, frames, w, generator=g, dtype=torch.float64) for w in widths]
    truth, truth_grads, _ = own_past_run(args, opts, grad, True, weights)
    fast64, grads64, _ = own_past_run([_cast(a, torch.float64, device) for a in args], opts, grad, False, weights)
    for i, (a, b) in enumerate(zip(fast64 + grads64, truth + truth_grads, strict=True)):
        _compare(f"float64 output/gradient {i}", a.cpu(), b, b, torch.float64)
    args32 = [_cast(a, torch.float32, "cpu") for a in args]
    exact, exact_grads, exact_calls = own_past_run(args32, opts, grad, True, weights)
    fast, fast_grads, fast_calls = own_past_run(
        [_cast(a, torch.float32, device) for a in args], opts, grad, False, weights
    )
    assert len(fast_grads) == len(truth_grads)
    for i, (a, b, c) in enumerate(zip(fast + fast_grads, exact + exact_grads, truth + truth_grads, strict=True)):
        _compare(f"output/gradient {i}", a.cpu(), b, c, torch.float32, rows=rows)
    return exact_calls, fast_calls, len(fast_grads)


@pytest.mark.parametrize("batch", [1, 2, 3, 4, 5])  # raw-pointer steps up to batch 4, the ATen loop above
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("grad", [False, True])
def test_inexact_own_past_runs_small_batches_on_raw_pointers(native, batch, layers, grad):
    """Inside exact_loops(False) SRNN's own-past loop runs batches <= 4 on raw pointers (no ATen call per step):
    without gradients all of it, with them the search for the fed-back predictions before the sequence-level pass.
    Outputs and gradients within float rounding of the exact loop: float64 within a few ulps of the reference,
    float32 no further from float64 than 4x the exact loop's own float32 error."""
    frames = 151
    args, opts = make_case("srnn_own_past", batch, frames, torch.float64, layers=layers)
    exact_calls, fast_calls, grads = check_inexact_own_past(args, opts, grad)
    assert grads == (len(_tensors(args)) if grad else 0)
    assert exact_calls >= 3 * frames  # the ATen loop: h_embed, the cell's two products, the decoder, the head
    raw = batch <= 4
    assert (fast_calls < frames) == raw, (fast_calls, exact_calls)


def _own_past_frozen_h(args, opts, exact: bool, decoder_grad: bool):
    """srnn_own_past with gradients for z (and the decoder's weights when ``decoder_grad``) but not for h_embed and
    the LSTM (the enhancement's E-step), inside ``exact_loops(exact)``: outputs, gradients, LSTM layer calls."""
    from torch.profiler import ProfilerActivity, profile

    z = args[0].detach().clone().requires_grad_()
    decoder = [_leaves(a) if decoder_grad else a for a in args[5:7]]
    leaves = [z, *(_tensors(decoder) if decoder_grad else [])]
    with sampling.exact_loops(exact), profile(activities=[ProfilerActivity.CPU]) as prof:
        outs = sampling.srnn_own_past(z, *args[1:5], *decoder, **opts)
    lstm_calls = sum(e.count for e in prof.key_averages() if e.key in ("aten::lstm", "aten::mkldnn_rnn_layer"))
    weight = torch.randn(outs[0].shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grads = torch.autograd.grad((outs[0] * weight.to(outs[0].dtype)).sum(), leaves)
    return [o.detach() for o in outs], list(grads), lstm_calls


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("decoder_grad", [False, True])
def test_inexact_own_past_with_a_frozen_lstm_recomputes_the_decoder_alone(native, batch, layers, decoder_grad):
    """With h_embed and the LSTM frozen (the enhancement's E-step), the raw-pointer loop's own-past h carries no
    gradient, so the sequence-level pass takes it from the loop and recomputes only the decoder (no LSTM call):
    outputs and gradients of z (and of the decoder) within float rounding of the exact loop, float64 within a few
    ulps, float32 no further from float64 than 4x the exact loop's own float32 error."""
    args, opts = make_case("srnn_own_past", batch, 151, torch.float64, layers=layers)
    truth, truth_grads, _ = _own_past_frozen_h(args, opts, True, decoder_grad)
    fast64, grads64, lstm_calls = _own_past_frozen_h(args, opts, False, decoder_grad)
    assert lstm_calls == 0
    assert not fast64[2].requires_grad
    for i, (a, b) in enumerate(zip(fast64 + grads64, truth + truth_grads, strict=True)):
        _compare(f"float64 output/gradient {i}", a, b, b, torch.float64)
    args32 = [_cast(a, torch.float32, "cpu") for a in args]
    exact, exact_grads, _ = _own_past_frozen_h(args32, opts, True, decoder_grad)
    fast, fast_grads, _ = _own_past_frozen_h(args32, opts, False, decoder_grad)
    for i, (a, b, c) in enumerate(zip(fast + fast_grads, exact + exact_grads, truth + truth_grads, strict=True)):
        _compare(f"output/gradient {i}", a, b, c, torch.float32, rows=151 * batch)


@pytest.mark.parametrize("name", ["dkf", "rvae", "srnn"])
def test_loops_run_in_float32_under_autocast(monkeypatch, name):
    """Under bf16 autocast (a training precision) the posterior loops' inputs would mix bfloat16 features and float32
    weights: the loops run in float32 with autocast off (the explicit backward too), the step trains, and its loss is
    the float32 step's within bfloat16 rounding of the autocast products."""
    monkeypatch.setenv("LIGHTDVAE_BACKEND", "native")
    monkeypatch.delenv("LIGHTDVAE_LOOP_BACKWARD", raising=False)
    used = []

    def spy(op, *inputs):
        used.append((explicit_backward(op, *inputs), inputs[0].dtype))
        return used[-1][0]

    from lightdvae.models import elbo_terms
    from lightdvae.train.step import autocast as autocast_for
    from lightdvae.train.step import float32_output

    monkeypatch.setattr(sampling, "explicit_backward", spy)
    power = torch.rand(2, 9, 513, generator=torch.Generator().manual_seed(0)) + 1e-3
    losses = []
    for autocast in (True, False):
        torch.manual_seed(0)
        model = build(name)
        torch.manual_seed(1)
        with autocast_for(power.device, "bf16" if autocast else "fp32"):  # the trainer's step (train/step.py)
            out = model(power)
        loss = elbo_terms(power, float32_output(out), beta=1e-2).loss
        loss.backward()
        assert torch.isfinite(loss)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        losses.append(loss.float().item())
    assert used == [(True, torch.float32)] * 2
    assert losses[0] == pytest.approx(losses[1], rel=0.05)
