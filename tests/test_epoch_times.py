"""scripts/epoch_times.py (issue #17's epoch before and after): the configurations it runs, the figure it reads
and the table it writes; not its timings (the training runs are replaced by a stand-in that writes a log)."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("epoch_times", ROOT / "scripts" / "epoch_times.py")
epoch_times = importlib.util.module_from_spec(_spec)
sys.modules["epoch_times"] = epoch_times
_spec.loader.exec_module(epoch_times)

SECONDS = {"after": [2.0, 1.0, 1.5], "before": [3.0, 3.2, 2.8], "reference": [4.0, 4.0, 4.0]}


@pytest.fixture
def fake_training(monkeypatch):
    """``lightdvae train`` replaced: records each call's environment and writes a log.csv of known epoch times."""
    calls = []

    def run(cmd, env, check, stdout):
        config = "reference" if env.get("LIGHTDVAE_BACKEND") == "ref" else "after"
        config = "before" if env.get("LIGHTDVAE_LOOP_BACKWARD") == "composite" else config
        calls.append((cmd, env, config))
        out = Path(cmd[cmd.index("--out") + 1])
        out.mkdir(parents=True)
        with open(out / "log.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["epoch", "train_loss", "seconds"])
            for i, s in enumerate(SECONDS[config], 1):
                w.writerow([i, 1.0, s])

    monkeypatch.setattr(epoch_times.subprocess, "run", run)
    monkeypatch.setenv("LIGHTDVAE_MALLOC", "keep")  # the user's own settings do not leak into a configuration
    monkeypatch.setenv("MALLOC_TOP_PAD_", "0")
    return calls


def test_each_configuration_runs_in_its_environment_and_the_median_epoch_is_read(fake_training, tmp_path):
    out = tmp_path / "epochs.md"
    times = epoch_times.main(["--models", "vae,dkf", "--epochs", "3", "--threads", "2", "--out", str(out)])
    assert times[("vae", "after")] == 1.5 and times[("dkf", "before")] == 3.0 and times[("dkf", "reference")] == 4.0
    assert [c[2] for c in fake_training] == ["after", "before", "reference"] * 2  # interleaved model by model
    for cmd, env, config in fake_training:
        assert cmd[cmd.index("--epochs") + 1] == "3" and cmd[cmd.index("--threads") + 1] == "2"
        assert env["OMP_NUM_THREADS"] == "2" and "MALLOC_TOP_PAD_" not in env
        for name, value in epoch_times.CONFIGS[config].items():
            assert env[name] == value
        if config == "after":
            assert not any(k in env for k in epoch_times._OURS)  # the defaults, whatever the caller had set
    text = out.read_text()
    assert "median of 3 epochs, 2 thread(s)" in text
    assert "| vae | 1.50 | 3.00 | 4.00 | 2.00x |" in text


def test_unknown_names_are_refused(capsys):
    with pytest.raises(SystemExit):
        epoch_times.main(["--models", "vae,nope", "--configs", "after,sometimes"])
    assert "unknown model(s) or configuration(s): nope, sometimes" in capsys.readouterr().err
