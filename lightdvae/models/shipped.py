"""Pretrained priors shipped with the package: converged models of the built-in corpus, stored in float16.

Each prior is two files in the ``lightdvae/models/weights/`` package folder:

- ``<name>.pt``: ``{"model": state dict (float16), "model_name": registry name, "config": model config}``, loaded
  with ``torch.load(..., weights_only=True)`` (no code runs);
- ``<name>.json``: its card — the registry name and label, the exact command that reproduces it, epochs, wall time,
  validation loss, test metrics, the parameter count and the SHA-256 of the ``.pt`` file.

Typical use::

    from lightdvae.models import pretrained, pretrained_names
    model = pretrained("light-dvae")          # float32, eval mode; the digest is checked against the card
    card = pretrained_card("light-dvae")      # how it was trained, and what it scores

Run folders and evaluation take a shipped prior through the spec ``pretrained:NAME`` (see :mod:`lightdvae.runs`).
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import torch

from lightdvae._io import sha256_file
from lightdvae.errors import UserError

__all__ = ["PretrainedError", "pretrained", "pretrained_names", "pretrained_card", "weights_dir", "PREFIX"]

#: The spec prefix that names a shipped prior where a run folder is expected: ``pretrained:light-dvae``.
PREFIX = "pretrained:"
#: ``$LIGHTDVAE_PRETRAINED`` replaces the package folder (for tests and for priors trained elsewhere).
ENV = "LIGHTDVAE_PRETRAINED"


class PretrainedError(UserError, ValueError):
    """An unknown prior, or weights that do not match their card."""


def weights_dir() -> Path:
    """The folder of the shipped priors (``$LIGHTDVAE_PRETRAINED`` when set)."""
    env = os.environ.get(ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return Path(str(resources.files("lightdvae.models") / "weights"))


def pretrained_names() -> list[str]:
    """The shipped priors' names (those with both a card and weights), sorted."""
    folder = weights_dir()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.json") if (folder / f"{p.stem}.pt").is_file())


def _check_name(name: str) -> str:
    key = str(name).strip().lower()
    if key.startswith(PREFIX):
        key = key[len(PREFIX) :]
    valid = pretrained_names()
    if key not in valid:
        listed = ", ".join(valid) if valid else "none are installed"
        raise PretrainedError(f"no pretrained prior {name!r}; valid names: {listed}")
    return key


def pretrained_card(name: str) -> dict:
    """The card of the shipped prior ``name`` (see the module docstring)."""
    key = _check_name(name)
    path = weights_dir() / f"{key}.json"
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise PretrainedError(f"cannot read the card {path}: {exc}") from None
    if not isinstance(card, dict) or "sha256" not in card:
        raise PretrainedError(f"{path} is not a pretrained card (a JSON object with a sha256 was expected)")
    return card


def pretrained(name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """The shipped prior ``name`` (``"light-dvae"``, ``"pretrained:vae"``, ...), in eval mode on ``device``.

    The float16 weights are checked against the card's SHA-256 and cast to ``dtype`` (float32 by default).
    Raises :class:`PretrainedError` (a ``UserError``) for an unknown name (listing the valid ones) or a digest
    that does not match.
    """
    from lightdvae.models import build

    key = _check_name(name)
    card = pretrained_card(key)
    path = weights_dir() / f"{key}.pt"
    digest = sha256_file(path)
    if digest != card["sha256"]:
        raise PretrainedError(
            f"{path} does not match its card (sha256 {digest[:12]}... vs {str(card['sha256'])[:12]}...): "
            "the file is damaged or was replaced; reinstall lightdvae"
        )
    payload = torch.load(path, map_location="cpu", weights_only=True)
    model = build(payload["model_name"], **payload["config"])
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in payload["model"].items()}
    model.load_state_dict(state)
    return model.to(device=device, dtype=dtype).eval()
