"""The README's Python API block runs as written (on a speech-like file and a noisy mixture of it)."""

from __future__ import annotations

import functools
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


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but hyphens dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@functools.cache
def _prose(page: Path) -> str:
    """A markdown page without its fenced code blocks (read once per page)."""
    return re.sub(r"```.*?```", "", page.read_text(), flags=re.S)


@functools.cache
def _anchors(page: Path) -> frozenset[str]:
    return frozenset(_slug(h) for h in re.findall(r"^#{1,6} (.+)$", _prose(page), re.M))


_PAGES = [README, *sorted((README.parent / "docs").rglob("*.md"))]


@pytest.mark.parametrize("page", _PAGES, ids=[str(p.relative_to(README.parent)) for p in _PAGES])
def test_relative_links_reach_a_file_and_a_heading(page):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", _prose(page)):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked here
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(target)
    assert not broken, f"{page.name}: links to nothing: {broken}"
