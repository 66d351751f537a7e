"""Shared fixtures: ``private_dirs`` (the corpus and cache folders of a test are its own) and ``one_thread`` (torch
on one thread for the test, restored after)."""

import os

import pytest
import torch

# The tests import lightdvae with or without the native build; the fallback warning is expected
# noise when it is missing (the tests that need native code skip with their own reason).
os.environ.setdefault("LIGHTDVAE_QUIET_FALLBACK", "1")


@pytest.fixture
def private_dirs(tmp_path, monkeypatch):
    """LIGHTDVAE_DATA and LIGHTDVAE_CACHE inside the test's tmp_path: no test reads or fills the user's folders."""
    monkeypatch.setenv("LIGHTDVAE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("LIGHTDVAE_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def one_thread():
    """torch on one thread (small models: threads only add noise), the caller's count restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
