"""The README's Python API block runs as written (on a speech-like file and a noisy mixture of it)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import speech_like

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_api_block() -> str:
    text = README.read_text()
    found = re.search(r"<!-- python-api -->\n```python\n(.*?)```\n<!-- /python-api -->", text, re.S)
    assert found, "README.md has no python-api block"
    return found.group(1)


def test_the_python_api_block_runs(tmp_path, monkeypatch):
    clean = speech_like(1.5, 0)
    noise = np.random.default_rng(1).standard_normal(clean.size)
    noise *= np.sqrt(np.sum(clean**2) / np.sum(noise**2) / 10 ** (5 / 10))  # 5 dB SNR
    sf.write(tmp_path / "speech.wav", clean, 16000, subtype="PCM_16")
    sf.write(tmp_path / "noisy.wav", 0.5 * (clean + noise) / np.abs(clean + noise).max(), 16000, subtype="PCM_16")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_python_api_block(), "README.md python-api", "exec"), namespace)
    for name in ("resynthesis.wav", "sample.wav", "enhanced.wav"):
        wave, rate = sf.read(tmp_path / name)
        assert rate == 16000 and wave.size > 0 and np.isfinite(wave).all(), name
    assert namespace["result"].iterations == 30 and len(namespace["results"]) == 2
    assert namespace["variance"].shape == namespace["power"].shape
    assert namespace["samples"].shape == (2, 120, 513)
    assert namespace["terms"].loss.requires_grad


@pytest.mark.parametrize("marker", ["<!-- python-api -->", "<!-- /python-api -->"])
def test_the_block_is_marked_once(marker):
    assert README.read_text().count(marker) == 1
