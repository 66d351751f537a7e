"""KV-cached attention: the op alone, and LigHT-DVAE generation with it (SPEC section 8).

    pytest benchmarks/test_kv_attention.py --benchmark-only --benchmark-group-by=group

Targets (CPU, batch 1, T = 1000 frames, default LigHT-DVAE sizes: d_model 128, 4 heads of 32):
- generation with the cached native op at least 20x faster than re-running the causal decoder over the whole
  prefix at every step (``speedup_vs_recompute_{wall,cpu}`` in the extra_info of ``test_generation_recompute``);
- per-step time flat in t: steps 900-1000 within 1.5x of steps 100-200 (``step_ratio_late_vs_early_{wall,cpu}``
  in the extra_info of ``test_generation[cached-native]``).

The recompute baseline runs both decoder bodies over the whole prefix and the output heads on the last position,
at every step (``recompute_step``): the models' own parallel pass, their best non-cached path, under
``torch.inference_mode()`` like the cached generation (``decode_stepwise``).  It is quadratic in T (about 40 s of
CPU for T = 1000 here), so it is not run in full: its step is timed at 20 evenly spaced prefix lengths, linearly
interpolated and summed over the T steps -- an estimate, and said so in its extra_info.
``test_recompute_baseline_is_the_same_computation`` checks on a short sequence that the baseline, run in full,
gives the cached path's samples.

Clocks: wall (perf_counter) and CPU (process_time).  Every workload here is single-threaded, so the CPU clock is
the wall clock minus the time the process waited for a core, the steadier figure on a machine shared with other
jobs; both are recorded.

Threads: every benchmark here runs on one thread (the ``bench_threads`` fixture; ``LIGHTDVAE_BENCH_THREADS``
changes it), recorded in extra_info.
Batch-1 decoding is a chain of small ops that extra threads do not speed up, and the comparison with the
recompute baseline is made at equal threads.  On a machine whose cores are shared with other jobs, more threads
than idle cores make OpenMP regions stall: one recompute step at prefix 100 took 1.5 s on 2 threads against
30 ms on 1 on the 2-core build machine under load.

With ``--benchmark-disable`` every test runs once on short sequences (a smoke test of a few seconds).
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch
from conftest import DEVICES, synchronize

from lightdvae import _ext
from lightdvae.models import build
from lightdvae.ops import kv_attention, kv_attention_ref

OP_IMPLS = {"reference": kv_attention_ref, "native": kv_attention}
T_FULL, T_SMOKE = 1000, 60
RECOMPUTE_SAMPLES = 20


def _skip_missing(impl: str, device: str) -> None:
    if impl == "native" and not _ext.has_kernel("kv_attention", device):
        pytest.skip(f"no native {device} kernel of kv_attention in this build")


# ---------------------------------------------------------------------------------------------
# (a) the op alone: one decoding step, batch 1, 4 heads of 32
# ---------------------------------------------------------------------------------------------


@pytest.mark.benchmark(group="kv_attention_step")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cache_len", [100, 500, 1000])
@pytest.mark.parametrize("impl", list(OP_IMPLS))
def test_kv_attention_op(benchmark, describe, bench_threads, impl, cache_len, device):
    _skip_missing(impl, device)
    g = torch.Generator().manual_seed(0)
    b, h, d = 1, 4, 32
    k_cache, v_cache = (torch.randn(b, h, 1024, d, generator=g).to(device) for _ in range(2))
    q, k_new, v_new = (torch.randn(b, h, 1, d, generator=g).to(device) for _ in range(3))
    fn = OP_IMPLS[impl]
    describe(device, impl=impl, batch=b, heads=h, head_dim=d, keys=cache_len)

    @torch.no_grad()
    def step():  # appends at row cache_len - 1 (the same row every call) and attends over cache_len keys
        out = fn(q, k_cache, v_cache, k_new, v_new, cache_len - 1)
        synchronize(device)
        return out

    out = benchmark(step)
    assert out.shape == (b, h, 1, d) and torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------
# (b) LigHT-DVAE generation, batch 1, CPU
# ---------------------------------------------------------------------------------------------


def _model():
    torch.manual_seed(0)
    return build("light-dvae").eval()  # default sizes: d_model 128, 4 heads, 2 decoder layers


def _frames(benchmark) -> int:
    return T_SMOKE if benchmark.disabled else T_FULL


class StepClock:
    """Wall and CPU (process) time of every generation step: a forward hook on the speech head, which runs once
    per frame.  Both workloads here are single-threaded, so CPU time is the wall time minus the time the process
    waited for a core: the steadier measure on a machine shared with other jobs."""

    def __init__(self, model):
        self.stamps: list[tuple[float, float]] = []
        self.handle = model.s_out.register_forward_hook(lambda *_: self.stamps.append(_now()))

    def start(self) -> None:
        self.stamps = [_now()]

    def window(self, first: int, last: int, clock: int) -> tuple[float, float]:
        """Mean and median time (s) of steps first .. last - 1 (0-based); clock 0: wall, 1: CPU."""
        t = [s[clock] for s in self.stamps[first : last + 1]]
        steps = [b - a for a, b in zip(t, t[1:], strict=False)]
        return sum(steps) / len(steps), statistics.median(steps)


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


@pytest.mark.benchmark(group="light_dvae_generation")
@pytest.mark.parametrize("impl", ["cached-native", "cached-reference"])
def test_generation(benchmark, describe, monkeypatch, bench_threads, impl):
    if impl == "cached-native":
        _skip_missing("native", "cpu")
    monkeypatch.setenv("LIGHTDVAE_BACKEND", "native" if impl == "cached-native" else "ref")
    model, frames = _model(), _frames(benchmark)
    clock = StepClock(model)
    describe("cpu", impl=impl, batch=1, frames=frames)
    windows: list[dict[str, float]] = []
    early, late = (frames // 10, frames // 5), (frames - frames // 10, frames)  # steps 100-200 and 900-1000

    def generate():
        clock.start()
        out = model.generate(1, frames, generator=torch.Generator().manual_seed(1))
        row = {}
        for name, index in (("wall", 0), ("cpu", 1)):
            (e_mean, e_med), (l_mean, l_med) = clock.window(*early, index), clock.window(*late, index)
            row.update(
                {
                    f"step_ms_early_mean_{name}": 1e3 * e_mean,
                    f"step_ms_late_mean_{name}": 1e3 * l_mean,
                    f"step_ms_early_median_{name}": 1e3 * e_med,
                    f"step_ms_late_median_{name}": 1e3 * l_med,
                    f"step_ratio_late_vs_early_{name}": l_mean / e_mean,
                }
            )
        row["total_s_cpu"] = clock.stamps[-1][1] - clock.stamps[0][1]
        windows.append(row)
        return out

    out = benchmark.pedantic(generate, rounds=1 if benchmark.disabled else 3, iterations=1)
    clock.handle.remove()
    assert out.shape == (1, frames, model.config.x_dim) and torch.isfinite(out).all()
    # per-step flatness from the round with the median total CPU time
    row = sorted(windows, key=lambda r: r["total_s_cpu"])[len(windows) // 2]
    benchmark.extra_info.update(
        step_window_early=f"steps {early[0]}-{early[1]}",
        step_window_late=f"steps {late[0]}-{late[1]}",
        step_ratio_late_vs_early_cpu_every_round=[r["step_ratio_late_vs_early_cpu"] for r in windows],
        **row,
    )


@pytest.mark.benchmark(group="light_dvae_generation")
@pytest.mark.parametrize("loop", ["native-loop", "python-loop"])
def test_generation_loop(benchmark, describe, monkeypatch, bench_threads, loop):
    """Whole generation at batch 1, the decoding loop in C++ (``lightdvae::transformer_decode``, one call) against
    the Python loop over the same native ops (``DecoderBody.step_rows``); both give the same samples bit for bit
    (tests/test_ops_transformer_decode.py).  ``ms_per_frame_cpu`` in extra_info.  (test_generation above times the
    Python loop step by step, through a hook on the speech head.)"""
    if not _ext.has_kernel("transformer_decode", "cpu"):
        pytest.skip("no native transformer_decode in this build")
    import lightdvae.models.transformer as transformer_mod

    monkeypatch.setenv("LIGHTDVAE_BACKEND", "native")
    if loop == "python-loop":
        monkeypatch.setattr(transformer_mod, "native_decoding", lambda *a, **k: False)
    model, frames = _model(), _frames(benchmark)
    describe("cpu", impl=loop, batch=1, frames=frames)
    cpu_times = []

    def generate():
        t0 = time.process_time()
        out = model.generate(1, frames, generator=torch.Generator().manual_seed(1))
        cpu_times.append(time.process_time() - t0)
        return out

    out = benchmark.pedantic(generate, rounds=1 if benchmark.disabled else 3, iterations=1)
    assert out.shape == (1, frames, model.config.x_dim) and torch.isfinite(out).all()
    benchmark.extra_info["ms_per_frame_cpu"] = 1e3 * statistics.median(cpu_times) / frames


if "cuda" in DEVICES:  # defined only where a GPU is visible: the CPU runs keep their cases

    @pytest.mark.benchmark(group="light_dvae_generation")
    @pytest.mark.parametrize("impl", ["cached-native", "cached-reference"])
    def test_generation_cuda(benchmark, describe, monkeypatch, bench_threads, impl):
        """test_generation on the GPU: batch 1, T frames, the total time (``ms_per_frame`` in extra_info).  No per-step
        clock: the device runs behind the host, so a host clock per step would time the launches, not the steps."""
        if impl == "cached-native":
            _skip_missing("native", "cuda")
        monkeypatch.setenv("LIGHTDVAE_BACKEND", "native" if impl == "cached-native" else "ref")
        model, frames = _model().cuda(), _frames(benchmark)
        describe("cuda", impl=impl, batch=1, frames=frames)

        def generate():
            out = model.generate(1, frames, generator=torch.Generator("cuda").manual_seed(1))
            torch.cuda.synchronize()
            return out

        warmup = 0 if benchmark.disabled else 1
        out = benchmark.pedantic(generate, rounds=1 if benchmark.disabled else 3, iterations=1, warmup_rounds=warmup)
        assert out.shape == (1, frames, model.config.x_dim) and torch.isfinite(out).all()
        if benchmark.stats is not None:
            benchmark.extra_info["ms_per_frame"] = 1e3 * benchmark.stats.stats.median / frames


@torch.inference_mode()
def recompute_step(model, w: torch.Tensor, z, feats, i: int, eps, temperature: float = 1.0):
    """Generation step i (0-based) by re-running both decoder bodies over the whole prefix 0..i, no cache.

    z (B, T, z_dim) and feats (B, T, x_dim) hold the steps before i; rows i are written here.  Row i of the
    inputs is a placeholder the outputs at i do not see (the decoders take the past shifted by one frame).
    The output heads run on the last position only (the baseline wastes nothing a careful user would not).
    Returns logvar_i (B, 1, x_dim).
    """
    past = model._shift(feats[:, : i + 1])
    h = model.z_body(model._with_w(model._shift(z[:, : i + 1]), w), past)[:, -1:]
    p_mean, p_logvar = model.z_prior_out(h).chunk(2, dim=-1)
    z[:, i : i + 1] = p_mean + temperature * torch.exp(0.5 * p_logvar) * eps
    logvar = model.s_out(model.s_body(model._with_w(z[:, : i + 1], w), past)[:, -1:])
    feats[:, i : i + 1] = model._feedback_features(logvar)
    return logvar


@torch.inference_mode()
def generate_recompute(model, n: int, frames: int, generator: torch.Generator) -> torch.Tensor:
    """model.generate without caches (the baseline): the same random draws in the same order."""
    c = model.config
    w = torch.randn(n, c.w_dim, generator=generator)
    z, feats = torch.zeros(n, frames, c.z_dim), torch.zeros(n, frames, c.x_dim)
    logvars = []
    for i in range(frames):
        eps = torch.randn(n, 1, c.z_dim, generator=generator)  # drawn where decode_stepwise draws it
        logvars.append(recompute_step(model, w, z, feats, i, eps))
    return torch.exp(torch.cat(logvars, 1))


def test_recompute_baseline_is_the_same_computation():
    """The baseline, run in full on a short sequence, gives the samples of the cached generation."""
    model = build("light-dvae", d_model=32, n_heads=4, enc_layers=1, dec_layers=2, ff_dim=64, dropout=0.0).eval()
    cached = model.generate(2, 12, generator=torch.Generator().manual_seed(5))
    recomputed = generate_recompute(model, 2, 12, torch.Generator().manual_seed(5))
    torch.testing.assert_close(recomputed.log(), cached.log(), rtol=1e-4, atol=1e-4)


@pytest.mark.benchmark(group="light_dvae_generation_recompute")
def test_generation_recompute(benchmark, describe, monkeypatch, bench_threads):
    """Recompute baseline at RECOMPUTE_SAMPLES prefix lengths; estimated total and the speedup in extra_info."""
    _skip_missing("native", "cpu")
    monkeypatch.setenv("LIGHTDVAE_BACKEND", "native")
    model, frames = _model(), _frames(benchmark)
    describe("cpu", impl="recompute", batch=1, frames=frames)
    # any prefix will do for timing (dense ops only): random values of the right shapes
    g = torch.Generator().manual_seed(2)
    c = model.config
    w = torch.randn(1, c.w_dim, generator=g)
    z, feats = torch.randn(1, frames, c.z_dim, generator=g), torch.randn(1, frames, c.x_dim, generator=g)
    eps = torch.zeros(1, 1, c.z_dim)
    samples = [round(frames * (k + 1) / RECOMPUTE_SAMPLES) - 1 for k in range(RECOMPUTE_SAMPLES)]
    step_s: dict[int, tuple[float, float]] = {}
    native_s: list[tuple[float, float]] = []

    def native_generation():  # pedantic's untimed setup: the two measurements alternate, round by round
        t = _now()
        model.generate(1, frames, generator=torch.Generator().manual_seed(1))
        native_s.append(tuple(b - a for a, b in zip(t, _now(), strict=True)))

    def sampled_steps():
        for i in samples:
            t = _now()
            recompute_step(model, w, z, feats, i, eps)
            dt = tuple(b - a for a, b in zip(t, _now(), strict=True))
            step_s[i] = tuple(min(a, b) for a, b in zip(step_s.get(i, (float("inf"),) * 2), dt, strict=True))

    # the faster of two rounds for both, so that load from other jobs on the machine favours neither
    benchmark.pedantic(sampled_steps, setup=native_generation, rounds=1 if benchmark.disabled else 2, iterations=1)
    info = {}
    for name, index in (("wall", 0), ("cpu", 1)):
        # step time at every i = 0 .. frames-1, linear between the sampled steps (and from 0 at i = -1)
        points = [(-1, 0.0)] + [(i, step_s[i][index]) for i in samples]
        total = 0.0
        for (i0, t0), (i1, t1) in zip(points, points[1:], strict=False):
            total += sum(t0 + (t1 - t0) * (i - i0) / (i1 - i0) for i in range(i0 + 1, i1 + 1))
        native = min(n[index] for n in native_s)
        info.update(
            {
                f"recompute_step_ms_{name}": {i + 1: round(1e3 * t[index], 3) for i, t in step_s.items()},
                f"recompute_total_s_estimated_{name}": total,
                f"native_cached_total_s_{name}": native,
                f"speedup_vs_recompute_{name}": total / native,
            }
        )
    benchmark.extra_info.update(
        method=(
            f"recompute total estimated, not measured: one recompute step timed at each of {len(samples)} prefix "
            f"lengths (steps {samples[0]}..{samples[-1]}, the faster of {len(native_s)} rounds each), linearly "
            f"interpolated and summed over steps 0..{frames - 1}; native: the faster of {len(native_s)} full cached "
            "generations, alternating with the recompute rounds; wall (perf_counter) and CPU (process_time) clocks; "
            "the benchmark's own statistics are the wall time of the sampled recompute steps only"
        ),
        native_cached_runs_s_wall=[n[0] for n in native_s],
        **info,
    )
