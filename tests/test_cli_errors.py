"""Every input a user can get wrong is one line on stderr, no traceback (issue #14, item 7 and the messages)."""

import shutil
from pathlib import Path

import pytest
from helpers import make_run, write_corpus

from lightdvae.cli import main

pytestmark = pytest.mark.usefixtures("private_dirs")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    files = [("train", "a", 0, 1.0), ("train", "a", 1, 1.0), ("val", "b", 0, 1.0), ("test", "c", 0, 1.0)]
    return write_corpus(tmp_path_factory.mktemp("errcorpus") / "tiny", files)


def _one_line_error(capsys, argv, expect: str, code: int = 2):
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith(f"lightdvae {argv[0]}: error: ") and expect in err[0], err[0]


def test_an_output_path_under_a_file(corpus, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    run = make_run(tmp_path / "run", "vae")
    common = ["--data", str(corpus)]
    cases = [
        ["train", "--model", "vae", *common, "--out", str(blocker / "run"), "--epochs", "1"],
        ["eval", str(run), *common, "--workers", "0", "--out", str(blocker / "e")],
        ["generate", str(run), "--n", "2", "--frames", "8", "--no-fdsd", "--out", str(blocker / "g")],
    ]
    for argv in cases:
        _one_line_error(capsys, argv, str(blocker))
    _one_line_error(capsys, ["corpus", "build", str(blocker / "c"), "--minutes", "0.1"], "Not a directory", code=1)


def test_a_config_that_is_not_an_object(corpus, tmp_path, capsys):
    run = make_run(tmp_path / "run", "vae")
    (run / "config.json").write_text("[1, 2]")
    _one_line_error(capsys, ["eval", str(run), "--data", str(corpus), "--workers", "0"], "not a run configuration")
    _one_line_error(capsys, ["generate", str(run), "--n", "2", "--frames", "8", "--no-fdsd"], "not a run config")


def test_resume_of_damaged_runs(corpus, tmp_path, capsys):
    argv = ["train", "--model", "vae", "--data", str(corpus), "--out", str(tmp_path / "r"), "--epochs", "1"]
    assert main([*argv, "--quiet", "--seq-len", "10", "--batch-size", "2"]) == 0
    binary, damaged = tmp_path / "binary", tmp_path / "damaged"
    shutil.copytree(tmp_path / "r", binary)
    shutil.copytree(tmp_path / "r", damaged)
    (binary / "config.json").write_bytes(bytes(range(256)))
    (damaged / "checkpoints" / "last.pt").write_bytes(b"\x80\x02not a checkpoint")
    _one_line_error(capsys, ["train", "--resume", str(binary)], "cannot read")
    _one_line_error(capsys, ["train", "--resume", str(damaged)], "--force")


def test_a_bad_backend_is_said_once_before_any_work(corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LIGHTDVAE_BACKEND", "bogus")
    run = make_run(tmp_path / "run", "vae")
    for argv in (["info"], ["eval", str(run), "--data", str(corpus)], ["generate", str(run), "--no-fdsd"]):
        _one_line_error(capsys, argv, "LIGHTDVAE_BACKEND='bogus'")
    assert not (run / "eval").exists() and not (run / "generate").exists()
    monkeypatch.delenv("LIGHTDVAE_BACKEND")
    monkeypatch.setenv("LIGHTDVAE_REFERENCE_OPS", "tanh,softmax")
    _one_line_error(capsys, ["info"], "LIGHTDVAE_REFERENCE_OPS names softmax")
    monkeypatch.delenv("LIGHTDVAE_REFERENCE_OPS")
    monkeypatch.setenv("LIGHTDVAE_MALLOC", "never")
    _one_line_error(capsys, ["info"], "LIGHTDVAE_MALLOC='never' is not one of keep, system")


def test_import_dvae_with_a_binary_config(tmp_path, capsys):
    ckpt, config = tmp_path / "model.pt", tmp_path / "config.ini"
    ckpt.write_bytes(b"x")
    config.write_bytes(bytes(range(128, 256)))
    _one_line_error(capsys, ["import-dvae", str(ckpt), str(config), "--out", str(tmp_path / "o")], "config.ini")


def test_an_unknown_option_shows_the_commands_usage(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["eval", "RUN", "--no-such-option"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: lightdvae eval") and "unrecognized arguments: --no-such-option" in err


def test_settings_errors_name_the_options(tmp_path, capsys):
    _one_line_error(
        capsys,
        ["train", "--model", "vae", "--out", str(tmp_path / "r"), "--batch-size", "0"],
        "--batch-size must be an integer >= 1",
    )
    _one_line_error(
        capsys, ["train", "--model", "vae", "--out", str(tmp_path / "r"), "--kl-warmup", "-1"], "--kl-warmup must be"
    )


def test_data_warnings_are_one_line_each(corpus, tmp_path, capsys):
    """A file training must skip is one 'warning:' line, not a Python warning with its source line."""
    import numpy as np
    import soundfile as sf

    data = tmp_path / "data"
    shutil.copytree(corpus, data)
    sf.write(data / "train" / "a" / "silent.wav", np.zeros(16000, dtype=np.float32), 16000, subtype="PCM_16")
    argv = ["train", "--model", "vae", "--data", str(data), "--out", str(tmp_path / "r"), "--epochs", "1"]
    assert main([*argv, "--quiet", "--seq-len", "10", "--batch-size", "2"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    warned = [line for line in err if "skipped" in line]
    assert len(warned) == 1 and warned[0].startswith("lightdvae train: warning: train: skipped 1 of"), err
    assert not any("warnings.warn" in line or "DataWarning" in line for line in err)
