"""scripts/wiener_oracle_study.py (docs/enhancement/README.md, "More Adam steps per E-step"): on a tiny noisy set
it prints a line per Wiener filter, and the oracle filter beats the noisy input (in a subprocess, as the README runs
it)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_noisy_set

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("private_dirs")
pytest.importorskip("pystoi")


@pytest.fixture(scope="module")
def noisy_set(tmp_path_factory) -> Path:
    return write_noisy_set(tmp_path_factory.mktemp("oracle"), 1.2, "0,5")


def test_it_prints_each_filter_and_the_oracle_helps(noisy_set):
    command = [sys.executable, str(ROOT / "scripts" / "wiener_oracle_study.py"), str(noisy_set), "--snr", "0"]
    command += ["--iterations", "2", "--e-steps", "2", "--latent-e-step"]
    out = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "vae, 1 file at 0 dB; 2 iterations x 2 E-steps (latent), beta 0.01: ESTOI, SI-SDR (dB)", lines
    names = ["noisy input", "model", "oracle", "model speech + true noise", "true speech + model noise"]
    names.append("prior's resynthesis + model noise")
    scores = {}
    for name, line in zip(names, lines[1:], strict=True):
        match = re.fullmatch(rf"  {re.escape(name)} +(\d\.\d\d\d) +([+-]\d+\.\d\d)", line)
        assert match, line
        scores[name] = float(match[1]), float(match[2])
    assert scores["oracle"][1] > scores["noisy input"][1] + 3.0, scores  # SI-SDR of the ideal Wiener filter
