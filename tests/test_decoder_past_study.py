"""scripts/decoder_past_study.py (docs/enhancement/README.md, "The transformer priors' E-step rate"): it runs each
variant on a tiny noisy set and prints its line (in a subprocess: the script replaces the engine's methods for its
own run)."""

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


@pytest.fixture(scope="module")
def noisy_set(tmp_path_factory) -> Path:
    return write_noisy_set(tmp_path_factory.mktemp("past"), 0.4, "5")


@pytest.mark.parametrize("variant", ["own", "mixture", "estimate", "oracle"])
def test_each_variant_prints_its_line(noisy_set, variant):
    command = [sys.executable, str(ROOT / "scripts" / "decoder_past_study.py"), str(noisy_set)]
    command += ["--variant", variant, "--iterations", "2", "--lr", "1e-4"]
    out = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(
        rf"light-dvae past={variant} lr=0.0001: ΔSI-SDR [+-]\d+\.\d\d dB, by SNR \{{5.0: -?\d+\.\d+\}}, \d+ s\n",
        out.stdout,
    ), out.stdout
