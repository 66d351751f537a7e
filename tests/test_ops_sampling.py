"""Native sequential sampling loops (SPEC 7.3) against their Python references and the models' loops.

Same noise -> same samples: bit for bit on the CPU wherever both sides run the same kernels (every
loop, and the LSTM loops with ``exact_lstm=True``; with the ATen LSTM cell also in float64), within
float rounding otherwise.  Gradients of the native loops against the reference, gradcheck in
float64, opcheck of every registered op; the CUDA tests skip without a GPU.
"""

import math

import pytest
import torch
from helpers import report_close, requires_native

from lightdvae import _ext
from lightdvae.models import build
from lightdvae.ops import activations, sampling

LOOPS = ["dkf_posterior", "dkf_prior", "rvae_posterior", "srnn_posterior", "srnn_own_past", "srnn_prior"]
LSTM_LOOPS = {"rvae_posterior", "srnn_own_past", "srnn_prior"}
POSTERIORS = ["dkf_posterior", "rvae_posterior", "srnn_posterior"]

requires_cuda_loops = pytest.mark.skipif(
    not (torch.cuda.is_available() and _ext.has_kernel("dkf_posterior", "cuda")),
    reason="needs a CUDA GPU and the native extension",
)


@pytest.fixture
def native(monkeypatch):
    """Run the public ops natively (an error, not a silent fallback, if the build lacks them)."""
    monkeypatch.setenv("LIGHTDVAE_BACKEND", "native")


# ---------------------------------------------------------------------------------------------
# random loops of awkward sizes
# ---------------------------------------------------------------------------------------------

Z, X, G, H = 5, 9, 6, 7  # z_dim, speech bins, feature width, LSTM hidden


def _rand(g, *shape, scale=1.0):
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def _linears(g, dims):
    params = []
    for a, b in zip(dims[:-1], dims[1:], strict=True):
        params += [_rand(g, b, a, scale=1.5 / math.sqrt(a)), _rand(g, b, scale=0.3)]
    return params


def _lstm(g, in_dim, hidden, layers):
    params = []
    for layer in range(layers):
        width = in_dim if layer == 0 else hidden
        params += [
            _rand(g, 4 * hidden, width, scale=1 / math.sqrt(width)),
            _rand(g, 4 * hidden, hidden, scale=1 / math.sqrt(hidden)),
            _rand(g, 4 * hidden, scale=0.3),
            _rand(g, 4 * hidden, scale=0.3),
        ]
    return params


def make_case(loop, batch, frames, dtype=torch.float64, device="cpu", seed=0, layers=1, activation="tanh"):
    """Positional arguments and keyword options of ``sampling.<loop>`` for random weights and inputs."""
    g = torch.Generator().manual_seed(seed)
    eps = _rand(g, batch, frames, Z)
    opts = {"activation": activation} if loop != "dkf_prior" else {}
    if loop == "dkf_posterior":
        args = [
            _rand(g, batch, frames, G),
            eps,
            _linears(g, [Z, 4, G]),
            _linears(g, [G, 8]),
            _linears(g, [8, Z]) + _linears(g, [8, Z]),
        ]
        opts["g_terms"] = 2.0
    elif loop == "dkf_prior":
        args = [eps, [p for _ in range(6) for p in _linears(g, [Z, Z])]]
        opts["temperature"] = 0.7
    elif loop == "rvae_posterior":
        args = [_rand(g, batch, frames, G), eps, _linears(g, [Z, 4]), _lstm(g, 4, H, layers), _linears(g, [G + H, 8])]
        args.append(_linears(g, [8, Z]) + _linears(g, [8, Z]))
    elif loop == "srnn_posterior":
        args = [_rand(g, batch, frames, G), eps, _linears(g, [G + Z, 8, 6]), _linears(g, [6, Z]) + _linears(g, [6, Z])]
    elif loop == "srnn_own_past":
        use_own = (torch.rand(frames, generator=g) < 0.6).tolist()
        args = [eps, _rand(g, batch, frames, H), use_own, _linears(g, [X, 8]), _lstm(g, 8, H, layers)]
        args += [_linears(g, [H + Z, 8]), _linears(g, [8, X])]
    elif loop == "srnn_prior":
        args = [
            eps,
            _linears(g, [X, 8]),
            _lstm(g, 8, H, layers),
            _linears(g, [H + Z, 6]),
            _linears(g, [6, Z]) + _linears(g, [6, Z]),
        ]
        args += [_linears(g, [H + Z, 8]), _linears(g, [8, X])]
        opts["temperature"] = 0.8
    else:
        raise ValueError(loop)
    if loop in LSTM_LOOPS:
        opts["exact_lstm"] = False
    return [_cast(a, dtype, device) for a in args], opts


def _cast(arg, dtype, device):
    if isinstance(arg, torch.Tensor):
        return arg.to(device, dtype)
    if isinstance(arg, list) and arg and isinstance(arg[0], torch.Tensor):
        return [_cast(a, dtype, device) for a in arg]
    return arg


def _tensors(args):
    """Every tensor in the arguments, in order (lists flattened)."""
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif isinstance(a, list):
            out += [t for t in a if isinstance(t, torch.Tensor)]
    return out


def _leaves(args):
    """A copy of the arguments whose tensors are fresh leaves that require grad."""

    def leaf(a):
        if isinstance(a, torch.Tensor):
            return a.detach().clone().requires_grad_(True)
        if isinstance(a, list):
            return [leaf(t) for t in a]
        return a

    return [leaf(a) for a in args]


def run(loop, args, opts, ref=False):
    fn = getattr(sampling, loop + ("_ref" if ref else ""))
    out = fn(*args, **opts)
    return out if isinstance(out, tuple) else (out,)


def assert_same(outs, refs, exact, rtol=0.0, atol=0.0):
    assert len(outs) == len(refs)
    for i, (a, b) in enumerate(zip(outs, refs, strict=True)):
        assert a.shape == b.shape and a.dtype == b.dtype and a.device == b.device
        assert torch.isfinite(b).all(), f"output {i}: the test inputs overflow"
        if exact:
            report_close(f"output {i}", a, b, rtol=0, atol=0)
            assert torch.equal(a, b), f"output {i} differs"
        else:
            scale = b.detach().abs().max().item() or 1.0
            report_close(f"output {i}", a, b, rtol=rtol, atol=atol * scale)


# ---------------------------------------------------------------------------------------------
# same noise, same samples (CPU)
# ---------------------------------------------------------------------------------------------


@requires_native
@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("frames", [1, 2, 129])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_equals_reference(native, loop, batch, frames, dtype):
    args, opts = make_case(loop, batch, frames, dtype)
    with torch.no_grad():
        assert_same(run(loop, args, opts), run(loop, args, opts, ref=True), exact=True)


@requires_native
@pytest.mark.parametrize("loop", sorted(LSTM_LOOPS))
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exact_lstm_equals_reference(native, loop, layers, dtype):
    args, opts = make_case(loop, 3, 129, dtype, layers=layers)
    opts["exact_lstm"] = True
    with torch.no_grad():
        assert_same(run(loop, args, opts), run(loop, args, opts, ref=True), exact=True)


@requires_native
@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")  # torch.backends.mkldnn.flags' own
@pytest.mark.parametrize("grad", [False, True])
def test_exact_lstm_without_onednn(native, grad):
    """With oneDNN switched off nn.LSTM runs ATen's cell; the native loop follows it (no packed weights)."""
    args, opts = make_case("srnn_prior", 2, 33, torch.float32, layers=2)
    opts["exact_lstm"] = True
    if grad:
        args = _leaves(args)
    with torch.backends.mkldnn.flags(enabled=False), torch.set_grad_enabled(grad):
        outs, refs = run("srnn_prior", args, opts), run("srnn_prior", args, opts, ref=True)
        cell = run("srnn_prior", args, {**opts, "exact_lstm": False})
    assert_same([o.detach() for o in outs], [r.detach() for r in refs], exact=True)
    assert_same([o.detach() for o in outs], [c.detach() for c in cell], exact=True)


@requires_native
@pytest.mark.parametrize("loop", sorted(LSTM_LOOPS))
def test_lstm_cell_and_nn_lstm_kernel_agree(native, loop):
    """The ATen cell equals nn.LSTM's kernel in float64 and is within float32 rounding of it in float32."""
    for dtype, tol in ((torch.float64, 0.0), (torch.float32, 1e-4)):
        args, opts = make_case(loop, 3, 129, dtype, layers=2)
        with torch.no_grad():
            cell = run(loop, args, opts)
            kernel = run(loop, args, {**opts, "exact_lstm": True})
        assert_same(cell, kernel, exact=tol == 0.0, rtol=tol, atol=tol)


@requires_native
@pytest.mark.parametrize("loop", LOOPS)
def test_relu_and_deterministic_mode(native, loop):
    # relu layers leave SRNN's exp(logvar) feedback unbounded: a few frames only
    args, opts = make_case(loop, 2, 6, activation="tanh" if loop == "dkf_prior" else "relu")
    if loop in POSTERIORS:
        args[1] = None  # eps = None: z_t = mean_t
    with torch.no_grad():
        outs, refs = run(loop, args, opts), run(loop, args, opts, ref=True)
    assert_same(outs, refs, exact=True)
    if loop in POSTERIORS:
        torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


@requires_native
def test_non_contiguous_inputs(native):
    args, opts = make_case("dkf_posterior", 3, 20, torch.float32)
    gx = torch.randn(20, 3, 2 * G)[..., ::2].transpose(0, 1)  # strided in time and features
    eps = args[1].transpose(0, 1).contiguous().transpose(0, 1)
    args[0], args[1] = gx, eps
    with torch.no_grad():
        assert_same(run("dkf_posterior", args, opts), run("dkf_posterior", args, opts, ref=True), exact=True)


# ---------------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------------


def _grads(loop, args, opts, ref):
    leaves = _leaves(args)
    outs = run(loop, leaves, opts, ref=ref)
    g = torch.Generator().manual_seed(7)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs)
    inputs = _tensors(leaves)
    return torch.autograd.grad(loss, inputs, allow_unused=True)


@requires_native
@pytest.mark.parametrize("loop", [*POSTERIORS, "srnn_own_past"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("exact_lstm", [False, True])
def test_gradients_equal_reference(native, loop, dtype, exact_lstm):
    if exact_lstm and loop not in LSTM_LOOPS:
        pytest.skip("no LSTM in this loop")
    args, opts = make_case(loop, 3, 40, dtype, layers=2 if loop in LSTM_LOOPS else 1)
    if loop in LSTM_LOOPS:
        opts["exact_lstm"] = exact_lstm
    native_grads = _grads(loop, args, opts, ref=False)
    ref_grads = _grads(loop, args, opts, ref=True)
    checked = 0
    for i, (a, b) in enumerate(zip(native_grads, ref_grads, strict=True)):
        assert (a is None) == (b is None), f"gradient {i}: one side has none"
        if a is not None:
            scale = b.abs().max().item() or 1.0
            tol = 1e-12 if dtype == torch.float64 else 1e-5
            report_close(f"grad {i}", a, b, rtol=tol, atol=tol * scale)
            checked += 1
    assert checked >= 5


@requires_native
@pytest.mark.parametrize("loop", LOOPS)
def test_gradcheck(native, loop):
    # The own-past loop feeds back detached predictions (as the reference does): its gradient is the
    # true derivative of the first frame only; test_gradients_equal_reference covers the rest.
    frames = 1 if loop == "srnn_own_past" else 3
    args, opts = make_case(loop, 2, frames, layers=2 if loop in LSTM_LOOPS else 1)
    leaves = _leaves(args)
    flat = _tensors(leaves)

    def fn(*tensors):
        it = iter(tensors)
        rebuilt = []
        for a in leaves:
            if isinstance(a, torch.Tensor):
                rebuilt.append(next(it))
            elif isinstance(a, list) and a and isinstance(a[0], torch.Tensor):
                rebuilt.append([next(it) for _ in a])
            else:
                rebuilt.append(a)
        return run(loop, rebuilt, opts)

    assert torch.autograd.gradcheck(fn, tuple(flat), eps=1e-6, atol=1e-7, fast_mode=True)


@requires_native
def test_gradcheck_nn_lstm_kernel(native):
    args, opts = make_case("rvae_posterior", 2, 3, layers=2)
    opts["exact_lstm"] = True
    gx, eps, z_embed, rnn_z, mlp, heads = _leaves(args)
    rnn_z = [w.detach() for w in rnn_z]  # the LSTM weights are checked through the ATen cell above
    assert torch.autograd.gradcheck(
        lambda a, b: sampling.rvae_posterior(a, b, z_embed, rnn_z, mlp, heads, **opts), (gx, eps), eps=1e-6
    )


# ---------------------------------------------------------------------------------------------
# registration: opcheck, torch.compile, errors
# ---------------------------------------------------------------------------------------------


def _op_args(loop, args, opts):
    """Arguments of torch.ops.lightdvae.<loop>: time-major sequences, codes, flags."""
    tm = [a.transpose(0, 1).contiguous() if isinstance(a, torch.Tensor) and a.dim() == 3 else a for a in args]
    act = sampling.ACTIVATIONS[opts.get("activation", "tanh")]
    if loop == "dkf_posterior":
        return (*tm, opts["g_terms"], act)
    if loop == "dkf_prior":
        return (*tm, opts["temperature"])
    if loop == "rvae_posterior":
        return (*tm, act, opts["exact_lstm"])
    if loop == "srnn_posterior":
        return (*tm, act)
    if loop == "srnn_own_past":
        return (*tm, act, opts["exact_lstm"])
    return (*tm, act, opts["temperature"], opts["exact_lstm"])


@requires_native
@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(loop, requires_grad):
    args, opts = make_case(loop, 2, 3, torch.float32)
    if requires_grad:
        args = _leaves(args)
    op = getattr(torch.ops.lightdvae, loop).default
    torch.library.opcheck(op, _op_args(loop, args, opts))


@requires_native
def test_opcheck_nn_lstm_kernel():
    args, opts = make_case("srnn_own_past", 2, 3, torch.float32)
    opts["exact_lstm"] = True
    torch.library.opcheck(torch.ops.lightdvae.srnn_own_past.default, _op_args("srnn_own_past", args, opts))


@requires_native
def test_torch_compile_runs_the_loop(native):
    args, opts = make_case("srnn_posterior", 2, 6, torch.float32)
    expected = run("srnn_posterior", args, opts, ref=True)
    compiled = torch.compile(lambda *a: sampling.srnn_posterior(*a, **opts), backend="eager", fullgraph=True)
    assert_same(compiled(*args), expected, exact=True)


@requires_native
def test_native_checks_name_the_argument():
    args, opts = make_case("srnn_own_past", 2, 4, torch.float32)
    op = torch.ops.lightdvae.srnn_own_past.default
    good = list(_op_args("srnn_own_past", args, opts))
    bad = list(good)
    bad[4] = good[4][:3]
    with pytest.raises(RuntimeError, match=r"rnn_h must be nn.LSTM's flat weights"):
        op(*bad)
    bad = list(good)
    bad[2] = good[2][:3]
    with pytest.raises(RuntimeError, match=r"use_own must have one entry per frame \(4\)"):
        op(*bad)
    bad = list(good)
    bad[5] = [good[5][0][:, :-1], good[5][1]]
    with pytest.raises(RuntimeError, match=r"decoder\[0\] must be a \(8, 12\) weight"):
        op(*bad)
    bad = list(good)
    bad[1] = good[1].double()
    with pytest.raises(RuntimeError, match="h_true must be on the device and of the dtype of z"):
        op(*bad)
    args, opts = make_case("dkf_posterior", 2, 4, torch.float32)
    good = list(_op_args("dkf_posterior", args, opts))
    bad = list(good)
    bad[1] = good[1][:, :1]
    with pytest.raises(RuntimeError, match=r"eps must be \(frames, batch, z_dim\) = \(4, 2, 5\)"):
        torch.ops.lightdvae.dkf_posterior.default(*bad)
    bad = list(good)
    bad[2] = [w.double() for w in good[2]]
    with pytest.raises(RuntimeError, match=r"z_to_g\[0\] is Double but the input sequence is Float"):
        torch.ops.lightdvae.dkf_posterior.default(*bad)
    with pytest.raises(RuntimeError, match="activation must be 0 \\(tanh\\) or 1 \\(relu\\)"):
        torch.ops.lightdvae.dkf_posterior.default(*good[:-1], 5)


def test_python_checks():
    args, opts = make_case("srnn_posterior", 2, 4)
    with pytest.raises(ValueError, match="activation must be one of"):
        sampling.srnn_posterior(*args, activation="gelu")
    with pytest.raises(ValueError, match=r"eps must be \(batch, frames, z_dim\)"):
        sampling.srnn_posterior(args[0], args[1][:, :2], *args[2:])
    with pytest.raises(ValueError, match="g must be \\(batch, frames, features\\)"):
        sampling.srnn_posterior(args[0][0], *args[1:])
    args, opts = make_case("srnn_own_past", 2, 4)
    args[1] = None
    args[2] = [True, False, True, True]
    with pytest.raises(ValueError, match="h_true is needed where use_own is False"):
        sampling.srnn_own_past(*args, **opts)
    args[2] = [True] * 3
    with pytest.raises(ValueError, match=r"use_own must have one entry per frame \(4\)"):
        sampling.srnn_own_past(*args, **opts)


def test_reference_backend_runs_the_python_loops(monkeypatch):
    monkeypatch.setenv("LIGHTDVAE_BACKEND", "ref")
    args, opts = make_case("dkf_posterior", 2, 5)
    calls = []
    original = sampling.dkf_posterior_ref
    monkeypatch.setattr(sampling, "dkf_posterior_ref", lambda *a, **k: calls.append(1) or original(*a, **k))
    sampling.dkf_posterior(*args, **opts)
    assert calls == [1]


# ---------------------------------------------------------------------------------------------
# the models: native loops against the models' own Python loops
# ---------------------------------------------------------------------------------------------


def _power(batch, frames, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.exp(2.0 * torch.randn(batch, frames, 513, generator=g)) + 1e-6


def _model(name, **options):
    torch.manual_seed(0)
    return build(name, **options)


def _both_backends(monkeypatch, fn):
    """``fn()`` with the native ops and with the references.  The models' MLPs take ATen's tanh in both: the native
    one is within 2 ulp of it, not equal (test_ops_activations.py), and the comparisons here are of the loops, bit
    for bit."""
    monkeypatch.setattr(activations, "tanh", torch.tanh)
    results = {}
    for backend in ("native", "ref"):
        monkeypatch.setenv("LIGHTDVAE_BACKEND", backend)
        results[backend] = fn()
    return results["native"], results["ref"]


@requires_native
@pytest.mark.parametrize("name", ["dkf", "rvae", "srnn"])
@pytest.mark.parametrize("batch", [1, 3])
def test_models_forward_same_samples_as_python_loops(monkeypatch, name, batch):
    """The models' forward passes with the generator's noise: the native loops draw the noise of the
    whole loop at once, in the order the Python loops draw it step by step.  Without gradients (with
    them the posterior loops run their explicit backward's forward, equal within float rounding:
    test_ops_sampling_bptt.py)."""
    model = _model(name)
    model.exact_lstm = True
    power = _power(batch, 23)
    kwargs = {"ss_prob": 0.5} if name == "srnn" else {}

    def forward():
        with torch.no_grad():
            out = model(power, generator=torch.Generator().manual_seed(3), **kwargs)
        return [t for t in (out.logvar, out.z, out.z_mean, out.z_logvar, out.z_mean_p, out.z_logvar_p) if t is not None]

    native_out, ref_out = _both_backends(monkeypatch, forward)
    assert_same(native_out, ref_out, exact=True)


@requires_native
@pytest.mark.parametrize("name", ["dkf", "srnn"])
@pytest.mark.parametrize("batch", [1, 3])
def test_models_generate_same_as_python_loops(monkeypatch, name, batch):
    model = _model(name)
    native_out, ref_out = _both_backends(
        monkeypatch, lambda: model.generate(batch, 31, temperature=0.9, generator=torch.Generator().manual_seed(4))
    )
    assert_same([native_out], [ref_out], exact=True)


@requires_native
def test_srnn_gen_with_the_aten_cell_is_within_float32_rounding(monkeypatch):
    """exact_lstm=False: the exp(logvar) feedback amplifies float32 rounding to ~1e-5 relative."""
    model = _model("srnn")
    power = _power(2, 129)
    monkeypatch.setenv("LIGHTDVAE_BACKEND", "ref")
    with torch.no_grad():
        ref = model(power, past="gen", sample=False).logvar
        monkeypatch.setenv("LIGHTDVAE_BACKEND", "native")
        model.exact_lstm = False
        fast = model(power, past="gen", sample=False).logvar
        model64 = _model("srnn").double()
        model64.exact_lstm = False
        truth = model64(power.double(), past="gen", sample=False).logvar
    report_close("gen logvar, ATen cell vs nn.LSTM kernel", fast, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    # no further from float64 than the Python loop's own float32 result
    err_fast = (fast.double() - truth).abs().max().item()
    err_ref = (ref.double() - truth).abs().max().item()
    print(f"float32 error vs float64: ATen cell {err_fast:.2e}, nn.LSTM kernel {err_ref:.2e}")
    assert err_fast <= 4 * err_ref + 1e-6


@requires_native
def test_scheduled_sampling_training_step_matches_python_loops(monkeypatch):
    """One SRNN training step with scheduled sampling: loss and every parameter gradient."""

    def step():
        model = _model("srnn")
        loss = model.loss(_power(3, 17), beta=1e-2, ss_prob=0.5, generator=torch.Generator().manual_seed(1)).loss
        loss.backward()
        return [loss.detach()] + [p.grad for p in model.parameters()]

    native_out, ref_out = _both_backends(monkeypatch, step)
    for i, (a, b) in enumerate(zip(native_out, ref_out, strict=True)):
        scale = b.abs().max().item() or 1.0
        report_close(f"tensor {i}", a, b, rtol=1e-5, atol=1e-6 * scale)


@requires_native
def test_active_dropout_keeps_the_python_loop(monkeypatch):
    monkeypatch.setenv("LIGHTDVAE_BACKEND", "native")
    model = _model("dkf", dropout=0.2)
    called = []
    monkeypatch.setattr(sampling, "dkf_posterior", lambda *a, **k: called.append(1))
    model.train()
    model(_power(2, 5))
    assert not called
    model.eval()
    with pytest.raises(TypeError):  # the patched native loop returned None: it was called
        model(_power(2, 5))
    assert called


# ---------------------------------------------------------------------------------------------
# CUDA: every ATen call of the C++ loop runs on the device
# ---------------------------------------------------------------------------------------------


@requires_cuda_loops
@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("exact_lstm", [False, True])
def test_cuda_native_equals_reference(native, loop, dtype, exact_lstm):
    if exact_lstm and loop not in LSTM_LOOPS:
        pytest.skip("no LSTM in this loop")
    args, opts = make_case(loop, 3, 129, dtype, device="cuda")
    if loop in LSTM_LOOPS:
        opts["exact_lstm"] = exact_lstm
    with torch.no_grad():
        outs, refs = run(loop, args, opts), run(loop, args, opts, ref=True)
    # The same CUDA kernels in the same order; cuBLAS may still pick other GEMM kernels per call.
    tol = 1e-12 if dtype == torch.float64 else (1e-4 if loop in {"srnn_own_past", "srnn_prior"} else 1e-5)
    assert all(o.is_cuda for o in outs)
    assert_same(outs, refs, exact=False, rtol=tol, atol=tol)


@requires_cuda_loops
@pytest.mark.parametrize("loop", [*POSTERIORS, "srnn_own_past"])
def test_cuda_gradients_and_gradcheck(native, loop):
    args, opts = make_case(loop, 3, 20, torch.float64, device="cuda")
    native_grads = _grads(loop, args, opts, ref=False)
    ref_grads = _grads(loop, args, opts, ref=True)
    for a, b in zip(native_grads, ref_grads, strict=True):
        if a is not None:
            report_close("grad", a, b, rtol=1e-10, atol=1e-10 * (b.abs().max().item() or 1.0))
    args, opts = make_case(loop, 2, 3, torch.float64, device="cuda")
    gx = args[0].detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: run(loop, [a, *args[1:]], opts), (gx,), eps=1e-6)


@requires_cuda_loops
@pytest.mark.parametrize("loop", LOOPS)
def test_cuda_opcheck(loop):
    args, opts = make_case(loop, 2, 3, torch.float32, device="cuda")
    torch.library.opcheck(getattr(torch.ops.lightdvae, loop).default, _op_args(loop, args, opts))


@requires_cuda_loops
@pytest.mark.parametrize("name", ["dkf", "rvae", "srnn"])
def test_cuda_models(monkeypatch, name):
    model = _model(name).cuda()
    power = _power(2, 33).cuda()

    def forward():
        with torch.no_grad():
            out = model(power, past="gen", sample=False)
            gen = model.generate(2, 17, generator=torch.Generator("cuda").manual_seed(0))
        return [out.logvar, out.z_mean, gen]

    native_out, ref_out = _both_backends(monkeypatch, forward)
    for a, b in zip(native_out, ref_out, strict=True):
        report_close("cuda model output", a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())
