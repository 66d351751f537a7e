"""KV-cached causal attention: native kernels against the PyTorch reference, in-place append, errors."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import CUDA_DTYPES, report_close, requires_cuda, requires_native

from lightdvae import _ext
from lightdvae.models import transformer_layers as layers
from lightdvae.ops import attention as attention_module
from lightdvae.ops import kv_attention, kv_attention_ref

# The module (the package's `kv_attention` attribute is the function of the same name).
kv_module = attention_module
SENTINEL = 7.0

# (batch, heads, n_q, n_new, cache_len, head_dim): single decoding steps at awkward cache lengths,
# chunks (n_q = n_new > 1), fewer queries than new keys, more queries than new keys (queries that
# reach back into the cache), head dims compiled as constants (16/32/64/128) and not (1, 24, 80).
CASES = [
    (1, 4, 1, 1, 0, 32),
    (1, 4, 1, 1, 1, 32),
    (1, 4, 1, 1, 129, 32),
    (1, 4, 1, 1, 1134, 32),
    (3, 5, 1, 1, 129, 16),
    (2, 3, 4, 4, 0, 64),
    (2, 3, 7, 7, 129, 16),
    (3, 1, 3, 5, 1134, 64),
    (5, 3, 1, 3, 151, 32),
    (2, 2, 5, 1, 9, 128),
    (1, 2, 2, 3, 1, 24),
    (2, 3, 2, 2, 1, 80),
    (1, 1, 1, 1, 0, 1),
]
CASE_IDS = ["b{}h{}q{}n{}c{}d{}".format(*c) for c in CASES]


def tolerance(dtype):
    return {torch.float64: 1e-10, torch.float32: 1e-5}.get(dtype, 2e-2)


def make_inputs(batch, heads, n_q, n_new, cache_len, head_dim, dtype, device="cpu", spare=3, seed=0):
    """q, filled caches (rows >= cache_len hold SENTINEL), k_new, v_new; random data drawn in float64."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    max_len = cache_len + n_new + spare
    q = randn(batch, heads, n_q, head_dim)
    k_cache, v_cache = randn(batch, heads, max_len, head_dim), randn(batch, heads, max_len, head_dim)
    k_cache[:, :, cache_len:] = SENTINEL
    v_cache[:, :, cache_len:] = SENTINEL
    k_new, v_new = randn(batch, heads, n_new, head_dim), randn(batch, heads, n_new, head_dim)
    return [t.to(device, dtype) for t in (q, k_cache, v_cache, k_new, v_new)]


def clone_all(tensors):
    return [t.clone() for t in tensors]


def expected_caches(k_cache, v_cache, k_new, v_new, cache_len):
    k, v = k_cache.clone(), v_cache.clone()
    n = k_new.shape[2]
    k[:, :, cache_len : cache_len + n] = k_new
    v[:, :, cache_len : cache_len + n] = v_new
    return k, v


def full_attention_f64(q, k, v, causal=True, scale=None):
    """Attention of q over all of k, v in float64 with the bottom-right aligned causal mask."""
    q, k, v = q.double(), k.double(), v.double()
    n_q, total = q.shape[2], k.shape[2]
    scores = q @ k.transpose(-1, -2) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    if causal:
        mask = torch.arange(total)[None, :] > torch.arange(total - n_q, total)[:, None]
        scores = scores.masked_fill(mask, float("-inf"))
    return torch.softmax(scores, -1) @ v


def native_op(*args, softmax_scale=None, causal=True):
    return torch.ops.lightdvae.kv_attention(*args, softmax_scale, causal)


# ---------------------------------------------------------------------------------------------
# native CPU kernel against the reference
# ---------------------------------------------------------------------------------------------


@requires_native
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("causal", [True, False])
def test_native_matches_reference(case, dtype, causal):
    cache_len = case[4]
    inputs = make_inputs(*case, dtype)
    q, k_cache, v_cache, k_new, v_new = clone_all(inputs)
    ref_inputs = [t.double() for t in inputs]
    with torch.no_grad():
        out = native_op(q, k_cache, v_cache, k_new, v_new, cache_len, causal=causal)
        ref = kv_attention_ref(*ref_inputs, cache_len, causal=causal)
    assert out.shape == q.shape and out.dtype == dtype and out.is_contiguous()
    tol = tolerance(dtype)
    report_close("out", out, ref, rtol=tol, atol=tol)
    # In place: rows cache_len .. cache_len + n_new - 1 hold k_new/v_new exactly; nothing else moved.
    k_exp, v_exp = expected_caches(*inputs[1:], cache_len)
    assert torch.equal(k_cache, k_exp) and torch.equal(v_cache, v_exp)
    assert (k_cache[:, :, cache_len + case[3] :] == SENTINEL).all()


@requires_native
@pytest.mark.parametrize("chunks", [[1] * 9, [3, 1, 2, 1, 2], [9], [1, 8]])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cached_steps_equal_full_causal_attention(chunks, dtype):
    """Decoding chunk by chunk through the cache = one causal pass over the whole sequence."""
    g = torch.Generator().manual_seed(1)
    b, h, t, d = 2, 3, sum(chunks), 32
    q, k, v = (torch.randn(b, h, t, d, generator=g, dtype=torch.float64).to(dtype) for _ in range(3))
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True)
    k_cache = torch.full((b, h, t + 2, d), SENTINEL, dtype=dtype)
    v_cache = torch.full((b, h, t + 2, d), SENTINEL, dtype=dtype)
    pointers = (k_cache.data_ptr(), v_cache.data_ptr())
    filled, outs = 0, []
    with torch.no_grad():
        for n in chunks:
            sl = slice(filled, filled + n)
            outs.append(native_op(q[:, :, sl], k_cache, v_cache, k[:, :, sl], v[:, :, sl], filled))
            filled += n
    report_close("stepwise vs full", torch.cat(outs, 2), expected, rtol=tolerance(dtype), atol=tolerance(dtype))
    assert (k_cache.data_ptr(), v_cache.data_ptr()) == pointers
    assert torch.equal(k_cache[:, :, :t], k) and torch.equal(v_cache[:, :, :t], v)
    assert (k_cache[:, :, t:] == SENTINEL).all() and (v_cache[:, :, t:] == SENTINEL).all()


@requires_native
def test_non_contiguous_inputs():
    """q/k_new/v_new as the models make them (head split of a (B, T, d) projection, transposed), q strided
    along head_dim too, caches with permuted batch/head/time strides (rows still contiguous)."""
    g = torch.Generator().manual_seed(2)
    b, h, n, d, cache_len = 3, 5, 4, 16, 37
    proj = torch.randn(b, n, 3 * h * d, generator=g)
    q = proj[..., : h * d].unflatten(-1, (h, d)).transpose(1, 2)
    k_new = proj[..., h * d : 2 * h * d].unflatten(-1, (h, d)).transpose(1, 2)
    v_new = proj[..., 2 * h * d :].unflatten(-1, (h, d)).transpose(1, 2)
    q_wide = torch.randn(b, h, n, 2 * d, generator=g)[..., ::2]  # head_dim stride 2
    # caches stored (max_len, batch, heads, head_dim) and viewed as (batch, heads, max_len, head_dim)
    storage = torch.randn(2, cache_len + n + 5, b, h, d, generator=g)
    assert not q.is_contiguous() and not k_new.is_contiguous() and q_wide.stride(-1) == 2
    for query in (q, q_wide):
        k_cache, v_cache = (s.permute(1, 2, 0, 3) for s in storage.clone())
        k_ref, v_ref = (s.permute(1, 2, 0, 3).contiguous() for s in storage.clone())
        with torch.no_grad():
            out = native_op(query, k_cache, v_cache, k_new, v_new, cache_len)
            ref = kv_attention_ref(query.contiguous(), k_ref, v_ref, k_new.contiguous(), v_new.contiguous(), cache_len)
        report_close("non-contiguous", out, ref, rtol=1e-5, atol=1e-5)
        assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)


@requires_native
@pytest.mark.parametrize("scale", [None, 0.05, 1.0])
def test_softmax_scale(scale):
    inputs = make_inputs(2, 3, 3, 3, 20, 32, torch.float64)
    with torch.no_grad():
        out = native_op(*clone_all(inputs), 20, softmax_scale=scale)
    q, k_cache, v_cache, k_new, v_new = inputs
    k_full, v_full = expected_caches(k_cache, v_cache, k_new, v_new, 20)
    expected = full_attention_f64(q, k_full[:, :, :23], v_full[:, :, :23], scale=scale)
    report_close("scale", out, expected, rtol=1e-10, atol=1e-10)


@requires_native
def test_large_scores_are_stable():
    """Scores in the hundreds: the online softmax subtracts the running maximum, nothing overflows."""
    q, k_cache, v_cache, k_new, v_new = make_inputs(1, 2, 3, 3, 300, 32, torch.float32)
    q = q * 40.0
    with torch.no_grad():
        out = native_op(q, k_cache.clone(), v_cache.clone(), k_new, v_new, 300)
        ref = kv_attention_ref(q.double(), k_cache.double(), v_cache.double(), k_new.double(), v_new.double(), 300)
    assert torch.isfinite(out).all()
    report_close("large scores", out, ref, rtol=1e-4, atol=1e-4)


@requires_native
def test_no_query_only_appends():
    q, k_cache, v_cache, k_new, v_new = make_inputs(2, 3, 1, 4, 5, 16, torch.float32)
    q = q[:, :, :0]
    k_exp, v_exp = expected_caches(k_cache, v_cache, k_new, v_new, 5)
    for fn in (native_op, kv_attention_ref):
        kc, vc = k_cache.clone(), v_cache.clone()
        with torch.no_grad():
            out = fn(q, kc, vc, k_new, v_new, 5)
        assert out.shape == (2, 3, 0, 16)
        assert torch.equal(kc, k_exp) and torch.equal(vc, v_exp)


@requires_native
def test_same_result_for_any_thread_count():
    inputs = make_inputs(4, 4, 6, 6, 700, 32, torch.float32)
    old = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            with torch.no_grad():
                results.append(native_op(*clone_all(inputs), 700))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


# ---------------------------------------------------------------------------------------------
# torch.library integration
# ---------------------------------------------------------------------------------------------


@requires_native
@pytest.mark.parametrize(
    ("case", "scale", "causal"), [(CASES[2], None, True), (CASES[6], 0.3, True), (CASES[7], None, False)]
)
def test_opcheck(case, scale, causal):
    q, k_cache, v_cache, k_new, v_new = make_inputs(*case, torch.float32)
    torch.library.opcheck(
        torch.ops.lightdvae.kv_attention.default, (q, k_cache, v_cache, k_new, v_new, case[4], scale, causal)
    )


@requires_native
def test_fake_tensor_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        inputs = [mode.from_tensor(t) for t in make_inputs(2, 3, 4, 4, 10, 16, torch.float32)]
        out = torch.ops.lightdvae.kv_attention(*inputs, 10, None, True)
    assert out.shape == (2, 3, 4, 16) and out.dtype == torch.float32


@requires_native
def test_torch_compile_traces_the_op():
    def step(q, k_cache, v_cache, k_new, v_new):
        return kv_attention(q, k_cache, v_cache, k_new, v_new, 3) * 2

    with torch.no_grad():
        explained = torch._dynamo.explain(step)(*make_inputs(1, 2, 1, 1, 3, 16, torch.float32))
    assert explained.graph_break_count == 0


# ---------------------------------------------------------------------------------------------
# public op: backend choice, inference only, errors
# ---------------------------------------------------------------------------------------------


def test_models_step_through_the_public_op():
    assert layers.kv_attention is kv_attention
    assert layers.kv_attention_ref is kv_attention_ref


@pytest.mark.parametrize("backend", ["ref", "auto"])
def test_public_op_matches_reference(monkeypatch, backend):
    monkeypatch.setenv("LIGHTDVAE_BACKEND", backend)
    inputs = make_inputs(2, 4, 1, 1, 50, 32, torch.float32)
    a, b = clone_all(inputs), clone_all(inputs)
    with torch.no_grad():
        out, ref = kv_attention(*a, 50), kv_attention_ref(*b, 50)
    report_close("public", out, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])


def test_backend_ref_runs_the_reference(monkeypatch):
    monkeypatch.setenv("LIGHTDVAE_BACKEND", "ref")
    calls = []
    monkeypatch.setattr(kv_module, "kv_attention_ref", lambda *a, **k: calls.append(a[5]) or a[0])
    kv_attention(*make_inputs(1, 2, 1, 1, 3, 8, torch.float32), 3)
    assert calls == [3]


@requires_native
def test_half_on_cpu_falls_back_or_raises(monkeypatch):
    monkeypatch.setenv("LIGHTDVAE_BACKEND", "auto")  # the automatic choice, whatever the caller set
    inputs = make_inputs(1, 2, 1, 1, 4, 16, torch.bfloat16)
    with torch.no_grad():
        out = kv_attention(*clone_all(inputs), 4)  # auto: the reference (float32 math) takes it
        ref = kv_attention_ref(*[t.float() for t in inputs], 4)
    assert out.dtype == torch.bfloat16
    report_close("bf16 fallback", out, ref, rtol=2e-2, atol=2e-2)
    monkeypatch.setenv("LIGHTDVAE_BACKEND", "native")
    with pytest.raises(RuntimeError, match="does not support these inputs"):
        kv_attention(*inputs, 4)


@requires_native
def test_strided_cache_rows_fall_back_to_the_reference(monkeypatch):
    monkeypatch.setenv("LIGHTDVAE_BACKEND", "auto")  # the automatic choice, whatever the caller set
    q, k_cache, v_cache, k_new, v_new = make_inputs(1, 2, 1, 1, 4, 8, torch.float32)
    k_s = torch.zeros(1, 2, 8, 16)[..., ::2].copy_(k_cache)  # head_dim stride 2: cannot be written by the kernel
    v_s = torch.zeros(1, 2, 8, 16)[..., ::2].copy_(v_cache)
    with torch.no_grad():
        out = kv_attention(q, k_s, v_s, k_new, v_new, 4)
        ref = kv_attention_ref(q, k_cache, v_cache, k_new, v_new, 4)
    report_close("strided caches", out, ref, rtol=1e-6, atol=1e-6)
    assert torch.equal(k_s, k_cache)
    with pytest.raises(RuntimeError, match="last dimension must be contiguous"):
        native_op(q, k_s, v_s, k_new, v_new, 4)


def test_forcing_missing_native_names_the_reinstall_command(monkeypatch):
    monkeypatch.setenv("LIGHTDVAE_BACKEND", "native")
    monkeypatch.setattr(_ext, "HAS_NATIVE", False)
    with pytest.raises(RuntimeError, match="pip install --no-build-isolation"):
        kv_attention(*make_inputs(1, 2, 1, 1, 3, 8, torch.float32), 3)


def test_inference_only():
    q, k_cache, v_cache, k_new, v_new = make_inputs(1, 2, 1, 1, 3, 8, torch.float32)
    q.requires_grad_(True)
    with pytest.raises(RuntimeError, match="inference-only"):
        kv_attention(q, k_cache, v_cache, k_new, v_new, 3)
    with torch.no_grad():
        kv_attention(q, k_cache, v_cache, k_new, v_new, 3)
    with torch.inference_mode():
        kv_attention(q.detach(), k_cache, v_cache, k_new, v_new, 3)


BACKENDS = ["ref"] + (["native"] if _ext.has_kernel("kv_attention", "cpu") else [])


@pytest.mark.parametrize("backend", BACKENDS)
def test_input_errors(monkeypatch, backend):
    """Both backends raise ValueError with the same wording."""
    monkeypatch.setenv("LIGHTDVAE_BACKEND", backend)
    q, kc, vc, kn, vn = make_inputs(2, 3, 1, 2, 4, 8, torch.float32, spare=1)  # max_len 7

    def call(*args):
        with torch.no_grad():
            return kv_attention(*args)

    with pytest.raises(ValueError, match="caches must be"):
        call(q, kc[:, :2], vc[:, :2], kn, vn, 4)
    with pytest.raises(ValueError, match="caches must be"):
        call(q, kc, vc[..., :4], kn, vn, 4)
    with pytest.raises(ValueError, match="n_new >= 1"):
        call(q, kc, vc, kn[:, :, :0], vn[:, :, :0], 4)
    with pytest.raises(ValueError, match="k_new/v_new must be"):
        call(q, kc, vc, kn, vn[:, :, :1], 4)
    with pytest.raises(ValueError, match="exceeds the cache's max_len=7"):
        call(q, kc, vc, kn, vn, 6)
    with pytest.raises(ValueError, match="cache_len < 0"):
        call(q, kc, vc, kn, vn, -1)
    with pytest.raises(ValueError, match="q's dtype and device"):
        call(q, kc.double(), vc, kn, vn, 4)
    with pytest.raises(ValueError, match="q's dtype and device"):
        call(q, kc, vc, kn.to("meta"), vn, 4)
    with pytest.raises(ValueError, match="must be \\(batch, heads, time, head_dim\\)"):
        call(q[0], kc, vc, kn, vn, 4)
    with pytest.raises(ValueError, match="queries but only"):
        call(torch.zeros(2, 3, 7, 8), kc, vc, kn, vn, 4)
    with pytest.raises(TypeError):
        call(q, kc, vc, kn, vn, 4.0)


@pytest.mark.parametrize("backend", BACKENDS + ["auto"])
def test_select_kv_attention_picks_what_kv_attention_runs(monkeypatch, backend):
    """The once-per-loop choice of the step paths: the native op or the reference, by kv_attention's rules."""
    monkeypatch.setenv("LIGHTDVAE_BACKEND", backend)
    inputs = make_inputs(2, 3, 1, 1, 40, 32, torch.float32)
    fn = kv_module.select_kv_attention(inputs[1], inputs[2])
    native = backend != "ref" and _ext.has_kernel("kv_attention", "cpu")
    assert fn is (torch.ops.lightdvae.kv_attention.default if native else kv_attention_ref)
    a, b = clone_all(inputs), clone_all(inputs)
    with torch.inference_mode():
        out, ref = fn(*a, 40, None, True), kv_attention(*b, 40)
    report_close(f"selected ({backend})", out, ref, rtol=1e-6, atol=1e-6)
    assert torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])


def test_select_kv_attention_falls_back_or_raises(monkeypatch):
    half = make_inputs(1, 2, 1, 1, 4, 16, torch.bfloat16)
    monkeypatch.setenv("LIGHTDVAE_BACKEND", "auto")
    assert kv_module.select_kv_attention(half[1], half[2]) is kv_attention_ref  # no bfloat16 CPU kernel
    monkeypatch.setenv("LIGHTDVAE_BACKEND", "native")
    monkeypatch.setattr(_ext, "HAS_NATIVE", False)
    with pytest.raises(RuntimeError, match="pip install --no-build-isolation"):
        kv_module.select_kv_attention(*make_inputs(1, 2, 1, 1, 3, 8, torch.float32)[1:3])


@requires_native
def test_native_op_checks_its_inputs():
    q, kc, vc, kn, vn = make_inputs(1, 2, 1, 1, 3, 8, torch.float32)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        native_op(q.half(), kc.half(), vc.half(), kn.half(), vn.half(), 3)
    with pytest.raises(ValueError, match="exceeds the cache's max_len"):
        native_op(q, kc, vc, kn, vn, 7)


# ---------------------------------------------------------------------------------------------
# in the models
# ---------------------------------------------------------------------------------------------


@requires_native
def test_generation_native_equals_reference(monkeypatch):
    """LigHT-DVAE generation (every step through the cache) gives the same samples with either backend."""
    from lightdvae.models import build

    torch.manual_seed(0)
    model = build("light-dvae", d_model=32, n_heads=4, enc_layers=1, dec_layers=2, ff_dim=64, dropout=0.0).eval()
    outs = {}
    for backend in ("ref", "native"):
        monkeypatch.setenv("LIGHTDVAE_BACKEND", backend)
        outs[backend] = model.generate(2, 40, generator=torch.Generator().manual_seed(3))
    report_close("generation", outs["native"].log(), outs["ref"].log(), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)
# ---------------------------------------------------------------------------------------------

CUDA_CASES = CASES + [(2, 3, 3, 3, 40, 256), (1, 2, 1, 1, 1000, 3), (2, 2, 2, 2, 300, 40)]


@requires_cuda
@pytest.mark.parametrize("case", CUDA_CASES, ids=lambda c: "b{}h{}q{}n{}c{}d{}".format(*c))
@pytest.mark.parametrize("dtype", CUDA_DTYPES)
@pytest.mark.parametrize("causal", [True, False])
def test_cuda_matches_reference(case, dtype, causal):
    cache_len = case[4]
    inputs64 = make_inputs(*case, torch.float64)
    gpu = [t.to("cuda", dtype) for t in inputs64]
    with torch.no_grad():
        out = native_op(*gpu, cache_len, causal=causal)
        ref64 = kv_attention_ref(*clone_all(inputs64), cache_len, causal=causal)
    k_exp, v_exp = expected_caches(*[t.to(dtype) for t in inputs64[1:]], cache_len)
    assert torch.equal(gpu[1].cpu(), k_exp) and torch.equal(gpu[2].cpu(), v_exp)
    if dtype in (torch.float32, torch.float64):
        report_close("cuda out", out, ref64, rtol=tolerance(dtype), atol=tolerance(dtype))
    else:
        # Low precision: the kernel's error against float64 is at most a small multiple of the error of the
        # reference run on the same rounded inputs (float32 math, one rounding at the end).
        ref_low = kv_attention_ref(*[t.to(dtype) for t in inputs64], cache_len, causal=causal)
        err = (out.double().cpu() - ref64).abs().max().item()
        ref_err = (ref_low.double() - ref64).abs().max().item()
        print(f"kernel err {err:.3e}, reference err {ref_err:.3e}")
        assert err <= 2 * ref_err + 1e-6


@requires_cuda
@pytest.mark.parametrize("dtype", CUDA_DTYPES)
def test_cuda_stepwise_and_misaligned(dtype):
    """Cached steps equal the full causal pass; tensors offset by one element (no vector loads) too."""
    g = torch.Generator().manual_seed(4)
    b, h, t, d = 2, 3, 23, 32
    q, k, v = (torch.randn(b, h, t, d + 1, generator=g, dtype=torch.float64) for _ in range(3))
    q, k, v = (x.to("cuda", dtype)[..., 1:] for x in (q, k, v))  # storage offset 1: misaligned
    expected = full_attention_f64(q.cpu(), k.cpu(), v.cpu())
    k_cache = torch.zeros(b, h, t, d + 1, dtype=dtype, device="cuda")[..., 1:]
    v_cache = torch.zeros_like(k_cache)
    outs, filled = [], 0
    for n in (1, 4, 1, 7, 10):
        sl = slice(filled, filled + n)
        outs.append(native_op(q[:, :, sl], k_cache, v_cache, k[:, :, sl], v[:, :, sl], filled))
        filled += n
    tol = tolerance(dtype)
    report_close("cuda stepwise", torch.cat(outs, 2), expected, rtol=tol, atol=tol)
    assert torch.equal(k_cache, k) and torch.equal(v_cache, v)


@requires_cuda
def test_cuda_opcheck_and_public_op():
    inputs = make_inputs(2, 3, 2, 2, 40, 32, torch.float32, device="cuda")
    torch.library.opcheck(torch.ops.lightdvae.kv_attention.default, (*inputs, 40, None, True))
    with torch.no_grad():
        out = kv_attention(*clone_all(inputs), 40)
        ref = kv_attention_ref(*clone_all(inputs), 40)
    report_close("cuda public", out, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="q's dtype and device"):
        native_op(inputs[0], inputs[1].cpu(), inputs[2], inputs[3], inputs[4], 40)
