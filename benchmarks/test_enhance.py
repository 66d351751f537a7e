"""Speech enhancement with a DVAE prior (issue #16): seconds per VEM iteration per utterance, native vs reference.

    pytest benchmarks/test_enhance.py --benchmark-only \\
        --benchmark-group-by=group,param:seconds,param:batch,param:device --benchmark-columns=median,iqr,rounds
    LIGHTDVAE_BENCH_ENHANCE=full pytest benchmarks/test_enhance.py --benchmark-only ...   # every case

Groups per prior family (vae, dkf, rvae, srnn, hit-dvae, light-dvae) at the package's default sizes, random
weights, float32: ``enhance_batch`` of ``batch`` equal-length utterances (2.5 s = 157 frames, 8 s = 501 frames)
for :data:`ITERATIONS` EM iterations, ``impl`` ``reference`` (``LIGHTDVAE_BACKEND=ref``: the models' Python
loops; DKF, RVAE and SRNN one utterance at a time through the model's own forward), ``native`` (the C++ sampling
loops and kernels; DKF, RVAE and SRNN in the batched engine from batch 2, and at batch 1 through the model's own
forward, whose posterior loops then step on raw pointers), for DKF, RVAE and SRNN, ``one-at-a-time`` (the C++
loops, each utterance alone through the model's own forward: what ``native`` runs at batch 1), or ``latent`` (the
native ops with the latent E-step, ``latent_e_step=True``: Adam on the posteriors, no encoder in the loop), or
``latent-estimate`` (the latent E-step with ``speech_past="estimate"``, SRNN and the transformers: their decoders fed
the EM's estimate of the past speech, no frame-by-frame loop).  The timed
call covers the whole enhancement (STFT, the EM, the Wiener filter, the iSTFT); ``extra_info`` has the EM's own
``seconds_per_iteration_per_utterance`` (its wall time over iterations and utterances) and
``utterances_per_s_per_iteration``.

Targets (measured here, not asserted): every dynamical prior >= 5x faster per utterance at batch 1 native than
reference; >= 20x the utterances per second at batch 16 (enhanced together) than at batch 1 reference;
LigHT-DVAE: a batch of 16 utterances of 2.5 s under 0.5 s per iteration.

``test_m_step``: one M-step and the divergence of the updated model (:func:`lightdvae.enhance.noise.
m_step_and_divergence`) of ``batch`` utterances of 157 frames on the CPU, ``impl`` ``native`` (the kernel
``lightdvae::nmf_m_step``) or ``reference`` (the ATen calls, ``LIGHTDVAE_REFERENCE_OPS=nmf_m_step``).
``test_lstm_layer``: one LSTM layer forward and backward at batch 1 as the E-step runs it, ``native``
(``lightdvae::lstm_layer``) or ``reference`` (nn.LSTM, oneDNN's).

The default run (what the CI runs once with --benchmark-disable) keeps to the cases that finish in seconds on a
small CPU: 2.5 s utterances at batch 1 for every prior, and the VAE at batch 16; ``LIGHTDVAE_BENCH_ENHANCE=full``
adds batch 16 for every prior and the 8 s utterances.
"""

import importlib.util
import os
from pathlib import Path

import pytest
import torch
from conftest import DEVICES, synchronize

from lightdvae import _ext
from lightdvae.enhance import enhance_batch, init_noise_model, m_step_and_divergence
from lightdvae.models import build
from lightdvae.runtime import backend_scope

FULL = os.environ.get("LIGHTDVAE_BENCH_ENHANCE", "").lower() == "full"
PRIORS = ["vae", "dkf", "rvae", "srnn", "hit-dvae", "light-dvae"]
#: the priors with a one-at-a-time path (the model's own forward) besides the batched engine
RECURRENT = ("dkf", "rvae", "srnn")
ITERATIONS = int(os.environ.get("LIGHTDVAE_BENCH_ENHANCE_ITERATIONS", "2"))
# the waveforms of scripts/enhance_speed.py (the README's speed table), so that both time the same inputs
_spec = importlib.util.spec_from_file_location(
    "enhance_speed", Path(__file__).resolve().parent.parent / "scripts" / "enhance_speed.py"
)
_enhance_speed = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_enhance_speed)
_waves = _enhance_speed.waves

pytestmark = pytest.mark.usefixtures("bench_threads")


def _cases():
    for prior in PRIORS:
        for seconds in (2.5, 8.0):
            for batch in (1, 16):
                default = seconds == 2.5 and (batch == 1 or prior == "vae")
                marks = () if default or FULL else (pytest.mark.skip(reason="LIGHTDVAE_BENCH_ENHANCE=full"),)
                yield pytest.param(prior, seconds, batch, marks=marks, id=f"{prior}-{seconds:g}s-b{batch}")


@pytest.mark.parametrize("impl", ["reference", "one-at-a-time", "native", "latent", "latent-estimate"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("prior,seconds,batch", list(_cases()))
def test_vem_iteration(benchmark, describe, prior, seconds, batch, device, impl):
    if impl != "reference" and not _ext.HAS_NATIVE:
        pytest.skip("the native extension is not built")
    if impl == "one-at-a-time" and prior not in RECURRENT:
        pytest.skip("only DKF, RVAE and SRNN have a one-at-a-time path")
    if impl == "latent-estimate" and prior not in ("srnn", "light-dvae", "hit-dvae"):
        pytest.skip("only SRNN's and the transformers' decoders see past speech")
    one_at_a_time = impl == "one-at-a-time" or (impl == "reference" and prior in RECURRENT)
    benchmark.group = f"enhance-{prior}"
    torch.manual_seed(0)
    model = build(prior).to(device).eval()
    waves = _waves(seconds, batch)
    seen = {}

    def run():
        with backend_scope("ref" if impl == "reference" else "native"):
            results = enhance_batch(
                model,
                waves,
                iterations=ITERATIONS,
                seed=0,
                batch_size=batch,
                one_at_a_time=one_at_a_time,
                latent_e_step=impl.startswith("latent"),
                speech_past="estimate" if impl == "latent-estimate" else "own",
            )
        synchronize(device)
        seen["results"] = results
        return results

    benchmark(run)
    results = seen["results"]
    em_seconds = sum(r.seconds / r.batch for r in results)  # each EM run once (its utterances share its time)
    per = em_seconds / (results[0].iterations * batch)
    describe(
        device,
        prior=prior,
        impl=impl,
        batch=batch,
        utterance_s=seconds,
        iterations=results[0].iterations,
        enhanced_together=max(r.batch for r in results),
        seconds_per_iteration_per_utterance=per,
        utterances_per_s_per_iteration=1.0 / per,
        seconds_per_iteration_of_the_batch=per * batch,
    )


@pytest.mark.parametrize("impl", ["reference", "native"])
@pytest.mark.parametrize("batch", [1, 16])
def test_m_step(benchmark, describe, monkeypatch, batch, impl):
    if impl == "native" and not _ext.has_kernel("nmf_m_step", "cpu"):
        pytest.skip("the native extension (its M-step kernel) is not built")
    if impl == "reference":
        monkeypatch.setenv("LIGHTDVAE_REFERENCE_OPS", "nmf_m_step")
    benchmark.group = f"enhance-m-step-b{batch}"
    gen = torch.Generator().manual_seed(0)
    frames, bins = 157, 513
    power = torch.rand(batch, frames, bins, generator=gen) ** 3
    speech = torch.rand(batch, frames, bins, generator=gen) + 1e-6
    mask = torch.ones(batch, frames, dtype=torch.bool)
    gens = [torch.Generator().manual_seed(i) for i in range(batch)]
    state = init_noise_model([frames] * batch, bins, 8, gens, dtype=torch.float32, device="cpu")
    benchmark(m_step_and_divergence, state, power, speech, mask)
    describe("cpu", impl=impl, batch=batch, frames=frames, rank=8)


@pytest.mark.parametrize("impl", ["reference", "native"])
@pytest.mark.parametrize("layer", ["dkf", "rvae-decoder"])
def test_lstm_layer(benchmark, describe, monkeypatch, layer, impl):
    """One LSTM layer over 157 frames at batch 1, forward and backward (the E-step's case): DKF's backward LSTM over
    the embedded mixture (256 -> 128, weights and input trained) and RVAE's decoder LSTM over z (16 -> 128, the
    weights frozen, the input z trained); ``native`` = ``lightdvae::lstm_layer``, ``reference`` = nn.LSTM
    (oneDNN), ``LIGHTDVAE_REFERENCE_OPS=lstm_layer``."""
    from lightdvae.ops import lstm as lstm_ops

    if impl == "native" and not _ext.has_kernel("lstm_layer", "cpu"):
        pytest.skip("the native extension (its LSTM layer) is not built")
    if impl == "reference":
        monkeypatch.setenv("LIGHTDVAE_REFERENCE_OPS", "lstm_layer")
    benchmark.group = f"enhance-lstm-{layer}"
    torch.manual_seed(0)
    inputs, hidden, reverse, frozen = {"dkf": (256, 128, True, False), "rvae-decoder": (16, 128, False, True)}[layer]
    module = torch.nn.LSTM(inputs, hidden).requires_grad_(not frozen)
    x = torch.randn(157, 1, inputs, requires_grad=True)
    assert lstm_ops.applies(module, x) == (impl == "native")
    wrt = [x] if frozen else [x, *module.parameters()]

    def step():
        out = lstm_ops.lstm(module, x, reverse=reverse)
        return torch.autograd.grad(out.square().sum(), wrt)

    benchmark(step)
    describe("cpu", impl=impl, layer=layer, frames=157, batch=1)
