"""The priors shipped in lightdvae/models/weights/ reproduce their cards: evaluating the shipped file on the built-in
test split gives the card's GEN SI-SDR to 0.05 dB (issue #15).  Needs espeak-ng (the built-in corpus is built into a
private folder, ~15 s); skips without it."""

import shutil

import pytest

from lightdvae.evaluate import evaluate_run
from lightdvae.models import pretrained_card, pretrained_names

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng for the built-in corpus")

#: SI-SDR differs between CPUs (AVX2 / AVX-512) and thread counts only by float rounding (~1e-5 dB measured);
#: the card's value is rounded to 1e-4 dB.  0.05 dB is the reproduction bound the issue sets.
TOLERANCE_DB = 0.05


@pytest.fixture(scope="module")
def builtin(tmp_path_factory):
    from lightdvae.data import build_corpus

    return build_corpus(tmp_path_factory.mktemp("builtin") / "corpus", progress=False)  # the default settings


@pytest.mark.parametrize("name", pretrained_names())
def test_a_shipped_prior_reproduces_its_card(builtin, name, tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTDVAE_CACHE", str(tmp_path / "cache"))
    card = pretrained_card(name)
    assert card["command"].startswith("lightdvae train") and card["data"] == "builtin"
    summary = evaluate_run(
        f"pretrained:{name}", data=builtin, past="gen", out=tmp_path / "eval", metrics=("si_sdr",), workers=0
    )
    ours, theirs = summary["metrics"]["si_sdr"]["mean"], card["test"]["gen"]["si_sdr"]
    print(f"{name}: GEN SI-SDR {ours:.4f} dB, card {theirs:.4f} dB")
    assert summary["files"]["evaluated"] == 55
    assert abs(ours - theirs) <= TOLERANCE_DB
