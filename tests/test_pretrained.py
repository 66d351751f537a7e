"""The shipped pretrained priors: names, a clear error listing the valid ones, the digest check, float16 -> float32."""

import json

import pytest
import torch
from helpers import make_run

from lightdvae.errors import UserError
from lightdvae.models import pretrained, pretrained_card, pretrained_names
from lightdvae.models.shipped import PretrainedError
from lightdvae.runs import export_pretrained, load_run


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A weights folder holding two exported priors, in place of the package's."""
    folder = tmp_path / "weights"
    for name, model in (("tiny-light", "light-dvae"), ("tiny-vae", "vae")):
        run = make_run(tmp_path / name, model)
        export_pretrained(run, folder, name, {"command": f"lightdvae train --model {model}", "epochs": 1})
    monkeypatch.setenv("LIGHTDVAE_PRETRAINED", str(folder))
    return tmp_path


def test_names_and_cards(shipped):
    assert pretrained_names() == ["tiny-light", "tiny-vae"]
    card = pretrained_card("tiny-light")
    assert card["model"] == "light-dvae" and card["label"] == "LigHT-DVAE"
    assert card["command"].startswith("lightdvae train") and card["epochs"] == 1
    assert len(card["sha256"]) == 64 and card["parameters"] > 0


def test_loads_float16_weights_as_float32(shipped):
    model = pretrained("pretrained:tiny-light")
    original = load_run(shipped / "tiny-light")
    assert not model.training
    for (k, a), (_, b) in zip(model.state_dict().items(), original.state_dict().items(), strict=True):
        assert a.dtype == b.dtype, k
        if a.is_floating_point():
            assert torch.equal(a, b.half().float()), k  # exactly the float16 rounding of the trained weights
    x = torch.rand(2, 20, 513)
    assert model.resynthesize(x).shape == x.shape


def test_unknown_name_lists_the_valid_ones(shipped):
    with pytest.raises(PretrainedError, match="valid names: tiny-light, tiny-vae") as err:
        pretrained("light")
    assert isinstance(err.value, UserError)


def test_a_damaged_file_is_refused(shipped):
    path = shipped / "weights" / "tiny-vae.pt"
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(PretrainedError, match="does not match its card"):
        pretrained("tiny-vae")


def test_a_bad_card_is_one_clear_error(shipped):
    (shipped / "weights" / "tiny-vae.json").write_text(json.dumps([1, 2]))
    with pytest.raises(PretrainedError, match="not a pretrained card"):
        pretrained_card("tiny-vae")


def test_commands_take_a_shipped_prior_like_a_run(shipped, tmp_path, monkeypatch, capsys):
    """eval, generate and swap-w accept ``pretrained:NAME``; results go to ./pretrained-NAME/ (never into the
    package), and report reads them."""
    from helpers import write_corpus

    from lightdvae.cli import main

    corpus = write_corpus(tmp_path / "corpus", [(s, "a", i, 1.0) for s in ("train", "val", "test") for i in (0, 1)])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIGHTDVAE_CACHE", str(tmp_path / "cache"))
    assert main(["eval", "pretrained:tiny-vae", "--data", str(corpus), "--workers", "0", "--quiet"]) == 0
    summary = json.loads((tmp_path / "pretrained-tiny-vae" / "eval" / "test-gen" / "summary.json").read_text())
    assert summary["model"]["label"] == "VAE (shipped)" and summary["files"]["evaluated"] == 2
    assert summary["checkpoint"]["sha256"] == pretrained_card("tiny-vae")["sha256"]
    gen = ["generate", "pretrained:tiny-light", "--n", "2", "--frames", "8", "--no-fdsd", "--figures", "0", "--quiet"]
    assert main(gen) == 0
    assert list((tmp_path / "pretrained-tiny-light" / "generate").glob("*/wav/sample_000.wav"))
    wavs = sorted(str(p) for p in (corpus / "test").rglob("*.wav"))
    assert main(["swap-w", "pretrained:tiny-light", *wavs, "--quiet"]) == 0
    assert main(["eval", "pretrained:nope", "--data", str(corpus)]) == 2
    assert "valid names: tiny-light, tiny-vae" in capsys.readouterr().err


def test_info_lists_the_shipped_priors(shipped, capsys):
    from lightdvae.cli import main

    assert main(["info"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("pretrained_priors"))
    assert "tiny-light (LigHT-DVAE, 1 epochs" in line and "tiny-vae (VAE" in line


def test_the_loader_stays_a_function_after_its_module_is_imported():
    """``lightdvae.models.pretrained`` is the loader function; importing the module that implements it (as the
    report and the run opener do) must not replace it with a module (it did when the module was named so)."""
    import importlib

    importlib.import_module("lightdvae.models.shipped")
    from lightdvae.models import pretrained

    assert callable(pretrained) and pretrained.__module__ == "lightdvae.models"
