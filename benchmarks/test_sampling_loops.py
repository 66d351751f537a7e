"""Native sequential sampling loops vs the models' per-step Python loops (SPEC 7.3 and section 8).

    pytest benchmarks/test_sampling_loops.py --benchmark-only \\
        --benchmark-group-by=group,param:loop,param:batch,param:device --benchmark-columns=median,iqr,rounds

Groups per model (dkf, rvae, srnn); in each, the loops at batch 1 and 16, T = 500 frames, published
sizes, float32: ``posterior`` (q sampled step by step from precomputed speech features, no gradient:
analysis-resynthesis), ``posterior_train`` (the same loop, forward and backward to the weights:
training), ``generation`` (``model.sample_prior`` with the generator's noise: the prior loop, for
SRNN with its decoder inside; ``generate`` adds one parallel decoder pass, the same on both sides;
RVAE's prior is i.i.d., it has no loop), and for SRNN ``gen_decode`` (the decoder fed its own past, GEN
resynthesis) and ``ss_train_step`` (one scheduled-sampling training step of the published SS
SRNN, batch 128 x 50 frames, Adam, the whole model).

impl: ``reference`` runs the models' Python loops (``LIGHTDVAE_BACKEND=ref``), ``native`` the C++
loops with the model's default ``exact_lstm``; ``native-cell`` / ``native-exact`` the other LSTM
setting of SRNN / RVAE (see lightdvae.ops.sampling); ``native-inexact`` (posterior loops and SRNN's
``gen_decode``) the C++ loops inside ``exact_loops(False)``, as enhancement runs them: raw-pointer steps
up to batch 4 (csrc/sampling/small_batch.h, csrc/small_gemm.h), on CUDA one row-kernel launch per loop
(csrc/sampling/row_loops.h); ``native-composite`` (DKF, SRNN) trains through the composite loop's autograd
instead of the explicit backward (``LIGHTDVAE_LOOP_BACKWARD=composite``).  Target: native at least 3x faster than
reference for the loops at batch 1..16 on a CPU.

The loops are latency-bound chains of small ops, so they are timed on one thread
(``LIGHTDVAE_BENCH_THREADS`` changes it): the ratio then measures the loop rather than the
OpenMP/MKL thread pool, which on a shared machine can stall for whole milliseconds per GEMM while
its other thread waits for a core (medians swung 10x between runs with 2 threads on 2 shared cores).
"""

import pytest
import torch
from conftest import DEVICES, synchronize

from lightdvae import _ext
from lightdvae.models import build
from lightdvae.ops.sampling import exact_loops

FRAMES = 500
BATCHES = [1, 16]
OPS = {"dkf": "dkf_posterior", "rvae": "rvae_posterior", "srnn": "srnn_posterior"}


pytestmark = pytest.mark.usefixtures("bench_threads")


def _backend(monkeypatch, impl, device, model=None):
    """Select the backend (and the LSTM setting) for ``impl``; skip native without the build."""
    if impl == "reference":
        monkeypatch.setenv("LIGHTDVAE_BACKEND", "ref")
        return
    if not _ext.has_kernel("dkf_posterior", device):
        pytest.skip(f"no native sampling loops for {device} in this build")
    monkeypatch.setenv("LIGHTDVAE_BACKEND", "native")
    monkeypatch.setenv("LIGHTDVAE_LOOP_BACKWARD", "composite" if impl == "native-composite" else "bptt")
    if impl in ("native-cell", "native-inexact"):
        model.exact_lstm = False
    elif impl == "native-exact":
        model.exact_lstm = True


def _model(name, device, **options):
    torch.manual_seed(0)
    return build(name, **options).to(device).eval()


def _features(model, name, batch, device):
    """The precomputed speech features that each posterior loop reads."""
    g = torch.Generator().manual_seed(0)
    power = (torch.rand(batch, FRAMES, 513, generator=g) ** 4 * 10).to(device)
    with torch.no_grad():
        if name == "srnn":
            return model.encode_speech(power, model.deterministic_h(power)).contiguous()
        return model.encode_speech(power).contiguous()


def _eps(batch, device):
    return torch.randn(batch, FRAMES, 16, generator=torch.Generator().manual_seed(1)).to(device)


def _run_timed(benchmark, device, fn):
    def run():
        out = fn()
        synchronize(device)
        return out

    return benchmark(run)


LOOP_IMPLS = {
    "dkf": ["reference", "native"],
    "rvae": ["reference", "native", "native-exact"],
    "srnn": ["reference", "native", "native-cell"],
}


def _cases(loops, inexact=False, composite=False):
    """(model, impl) pairs; ``inexact`` adds ``native-inexact`` (the loops inside ``exact_loops(False)``),
    ``composite`` adds ``native-composite`` (training through the composite loop's autograd instead of the explicit
    backward through time: on CUDA the ATen loop's launches per step against one row-kernel launch per direction)."""
    extra = ["native-inexact"] * inexact + ["native-composite"] * composite
    return [(name, impl) for name in loops for impl in LOOP_IMPLS[name] + extra]


# ---------------------------------------------------------------------------------------------
# posterior sampling (DKF, RVAE, SRNN)
# ---------------------------------------------------------------------------------------------


def _posterior_bench(benchmark, describe, monkeypatch, name, impl, batch, device, train):
    model = _model(name, device)
    _backend(monkeypatch, impl, device, model)
    features, eps = _features(model, name, batch, device), _eps(batch, device)
    describe(device, impl=impl, model=name, batch=batch, frames=FRAMES, exact_lstm=getattr(model, "exact_lstm", None))

    exact = impl != "native-inexact"
    if train:

        def step():
            model.zero_grad(set_to_none=True)
            with exact_loops(exact):
                z, mean, logvar = model.sample_posterior(features, eps=eps)
            (z.square().sum() + mean.sum() + logvar.sum()).backward()

        _run_timed(benchmark, device, step)
        return

    def sample():
        with exact_loops(exact):
            return model.sample_posterior(features, eps=eps)

    with torch.no_grad():
        z = _run_timed(benchmark, device, sample)[0]
    assert z.shape == (batch, FRAMES, 16) and torch.isfinite(z).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("loop", ["posterior", "posterior_train"])
@pytest.mark.parametrize("name, impl", _cases(["dkf"], inexact=True, composite=True))
@pytest.mark.benchmark(group="dkf")
def test_dkf(benchmark, describe, monkeypatch, name, impl, loop, batch, device):
    _posterior_bench(benchmark, describe, monkeypatch, name, impl, batch, device, loop == "posterior_train")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("loop", ["posterior", "posterior_train"])
@pytest.mark.parametrize("name, impl", _cases(["rvae"], inexact=True))
@pytest.mark.benchmark(group="rvae")
def test_rvae(benchmark, describe, monkeypatch, name, impl, loop, batch, device):
    _posterior_bench(benchmark, describe, monkeypatch, name, impl, batch, device, loop == "posterior_train")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("loop", ["posterior", "posterior_train"])
@pytest.mark.parametrize("name, impl", _cases(["srnn"], inexact=True))
@pytest.mark.benchmark(group="srnn")
def test_srnn_posterior(benchmark, describe, monkeypatch, name, impl, loop, batch, device):
    _posterior_bench(benchmark, describe, monkeypatch, name, impl, batch, device, loop == "posterior_train")


# ---------------------------------------------------------------------------------------------
# generation (DKF, SRNN) and SRNN's own-past loops
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("loop", ["generation"])
@pytest.mark.parametrize("name, impl", _cases(["dkf", "srnn"]))
def test_generation(benchmark, describe, monkeypatch, name, impl, loop, batch, device):
    benchmark.group = name
    model = _model(name, device)
    _backend(monkeypatch, impl, device, model)
    describe(device, impl=impl, model=name, batch=batch, frames=FRAMES, exact_lstm=getattr(model, "exact_lstm", None))
    generator = torch.Generator(device)

    def sample_prior():
        return model.sample_prior(batch, FRAMES, generator=generator.manual_seed(0))

    with torch.no_grad():
        out = _run_timed(benchmark, device, sample_prior)
    z = out[0] if name == "srnn" else out
    assert z.shape == (batch, FRAMES, 16) and torch.isfinite(z).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("loop", ["gen_decode"])
@pytest.mark.parametrize("name, impl", _cases(["srnn"], inexact=True))
@pytest.mark.benchmark(group="srnn")
def test_srnn_gen_decode(benchmark, describe, monkeypatch, name, impl, loop, batch, device):
    model = _model(name, device, prior_on_own_past=True)
    _backend(monkeypatch, impl, device, model)
    describe(device, impl=impl, model=name, batch=batch, frames=FRAMES, exact_lstm=model.exact_lstm)
    g = torch.Generator().manual_seed(2)
    z = torch.randn(batch, FRAMES, 16, generator=g).to(device)
    h_true = torch.randn(batch, FRAMES, 128, generator=g).tanh().to(device)
    use_own = torch.ones(FRAMES, dtype=torch.bool)

    def decode():
        with exact_loops(impl != "native-inexact"):
            return model.decode_own_past(z, h_true, use_own)

    with torch.no_grad():
        logvar = _run_timed(benchmark, device, decode)[0]
    assert torch.isfinite(logvar).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch, frames", [(128, 50)])
@pytest.mark.parametrize("loop", ["ss_train_step"])
@pytest.mark.parametrize("name, impl", _cases(["srnn"]))
@pytest.mark.benchmark(group="srnn")
def test_srnn_scheduled_sampling_step(benchmark, describe, monkeypatch, name, impl, loop, batch, frames, device):
    """One training step of the published scheduled-sampling SRNN (ss_prob 0.5): both loops run with
    gradients, then backward through ATen's autograd and an Adam step."""
    model = _model(name, device, prior_on_own_past=True).train()
    _backend(monkeypatch, impl, device, model)
    describe(device, impl=impl, model=name, batch=batch, frames=frames, exact_lstm=model.exact_lstm)
    power = (torch.rand(batch, frames, 513, generator=torch.Generator().manual_seed(0)) ** 4 * 10 + 1e-4).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator(device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = model.loss(power, beta=1e-2, ss_prob=0.5, generator=generator.manual_seed(0)).loss
        loss.backward()
        optimizer.step()
        return loss.detach()

    loss = _run_timed(benchmark, device, step)
    assert torch.isfinite(loss)
