"""One training step of every model: reference ops vs native ops (SPEC section 8, issue 4).

    pytest benchmarks/test_train_step.py --benchmark-only --benchmark-group-by=group

A step is what ``lightdvae.train`` runs per batch (:func:`lightdvae.train.train_step`): forward, the negative
ELBO (fused Itakura-Saito and KL ops), backward and an Adam update (denormals flushed, as there), on a batch of
128 segments x 50 frames x 513 bins with the published model sizes.  ``LIGHTDVAE_BACKEND`` selects the ops:
``ref`` (pure PyTorch) or ``native`` (the extension's kernels; skipped when it is not built); ``native-composite``
is ``native`` with the posterior loops differentiated by autograd through the composite loop
(``LIGHTDVAE_LOOP_BACKWARD=composite``) instead of their explicit backward through time.  One group per model
(and device).  With ``--benchmark-disable`` (a smoke run: one call each, no timing) the batch is cut to 8 segments.
Where a GPU is visible, ``native-bf16`` adds the native ops with the forward under bf16 autocast (on the GPU only).
"""

import pytest
import torch
from conftest import DEVICES, synchronize

from lightdvae import _ext
from lightdvae.models import build
from lightdvae.runtime import flush_denormals
from lightdvae.train import train_step

BATCH, FRAMES, F = 128, 50, 513
# case -> (registry name, forward kwargs); srnn-ss runs the scheduled-sampling loop at its mid-schedule p = 0.5
CASES = {
    "vae": ("vae", {}),
    "dkf": ("dkf", {}),
    "rvae": ("rvae", {}),
    "rvae-causal": ("rvae-causal", {}),
    "srnn-tf": ("srnn", {}),
    "srnn-ss": ("srnn", {"ss_prob": 0.5}),
    "hit-dvae": ("hit-dvae", {}),
    "light-dvae": ("light-dvae", {}),
}
# bf16 autocast: timed on the GPU only
BACKENDS = ["ref", "native-composite", "native"] + (["native-bf16"] if "cuda" in DEVICES else [])
SMOKE_BATCH = 8


@pytest.fixture(scope="module")
def power_cpu():
    g = torch.Generator().manual_seed(0)
    return torch.exp(2.0 * torch.randn(BATCH, FRAMES, F, generator=g)) + 1e-6


def _bench(benchmark, describe, monkeypatch, power_cpu, case, backend, device):
    backend, _, precision = backend.partition("-")
    loop_backward, precision = ("composite", "") if precision == "composite" else ("bptt", precision)
    if precision and device == "cpu":
        pytest.skip(f"{precision} autocast is benchmarked on the GPU only")
    if backend == "native" and not _ext.HAS_NATIVE:
        pytest.skip(f"native extension not built: {_ext.IMPORT_ERROR}")
    monkeypatch.setenv("LIGHTDVAE_BACKEND", backend)
    monkeypatch.setenv("LIGHTDVAE_LOOP_BACKWARD", loop_backward)
    precision = precision or "fp32"
    name, forward_kwargs = CASES[case]
    torch.manual_seed(0)
    model = build(name).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    # --benchmark-disable is a smoke run (one call, no timing): a small batch keeps it quick
    power = (power_cpu[:SMOKE_BATCH] if benchmark.disabled else power_cpu).to(device)
    describe(
        device,
        backend=backend,
        model=case,
        shape=tuple(power.shape),
        parameters=model.num_parameters(),
        forward_kwargs=forward_kwargs,
        precision=precision,
        loop_backward=loop_backward,
    )

    def step():
        terms, stepped = train_step(
            model, optimizer, power, beta=1e-2, kl_warm=1.0, forward_kwargs=forward_kwargs, precision=precision
        )
        synchronize(device)
        return terms, stepped

    with flush_denormals():  # as lightdvae.train runs its steps
        terms, stepped = benchmark(step)
    assert stepped and torch.isfinite(terms.loss)


def _make(case):
    @pytest.mark.benchmark(group=f"train_step_{case}")
    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("backend", BACKENDS)
    def test(benchmark, describe, monkeypatch, power_cpu, backend, device):
        _bench(benchmark, describe, monkeypatch, power_cpu, case, backend, device)

    test.__name__ = f"test_train_step_{case.replace('-', '_')}"
    return test


for _case in CASES:
    globals()[f"test_train_step_{_case.replace('-', '_')}"] = _make(_case)
