"""Model zoo: ``build(name, **config)`` and ``names()``.

Names: ``vae``, ``dkf``, ``rvae``, ``rvae-causal``, ``srnn``, ``hit-dvae``, ``light-dvae``.
The transformer models take ``inv_s=True`` (Inv-s) and ``no_residual=True`` (Inv-s-NR), and the options
``norm_first=True`` (pre-norm layers), ``past_encoder="rnn"`` (an LSTM over the past speech) and
``positions="rope"`` (rotary positions); see :mod:`lightdvae.models.transformer`.  A run's label
(:func:`model_label`) does not show these options.
"""

from __future__ import annotations

import importlib

from lightdvae.models.base import DVAE, DVAEOutput, LossTerms, ModelConfig, elbo_terms

# name -> (module, class, fixed config overrides)
_REGISTRY: dict[str, tuple[str, str, dict]] = {
    "vae": ("lightdvae.models.vae", "VAE", {}),
    "dkf": ("lightdvae.models.dkf", "DKF", {}),
    "rvae": ("lightdvae.models.rvae", "RVAE", {"causal": False}),
    "rvae-causal": ("lightdvae.models.rvae", "RVAE", {"causal": True}),
    "srnn": ("lightdvae.models.srnn", "SRNN", {}),
    "hit-dvae": ("lightdvae.models.transformer", "HiTDVAE", {}),
    "light-dvae": ("lightdvae.models.transformer", "LigHTDVAE", {}),
}


# The name tables show for each registry name, in the paper's order; the transformer DVAEs' ablations get
# ``<prefix>-Inv-s[-NR]`` and the SRNN its training mode, ``SRNN (TF)`` / ``SRNN (SS)``.
LABELS: dict[str, str] = {
    "vae": "VAE",
    "dkf": "DKF",
    "rvae": "RVAE",
    "rvae-causal": "RVAE (causal)",
    "srnn": "SRNN",
    "hit-dvae": "HiT-DVAE",
    "light-dvae": "LigHT-DVAE",
}
ABLATION_PREFIX: dict[str, str] = {"hit-dvae": "HiT", "light-dvae": "LigHT"}
#: Families: which models decode from the past speech (autoregressive) and which have a sequence latent w.
SEES_PAST_SPEECH = frozenset({"srnn", "hit-dvae", "light-dvae"})
HAS_W = frozenset({"hit-dvae", "light-dvae"})


def model_label(name: str, config: dict | None = None, training: str | None = None) -> str:
    """The name a table shows for a model: ``"LigHT-DVAE"``, ``"HiT-Inv-s-NR"``, ``"SRNN (SS)"``, ``"RVAE"``...

    Args:
        name: registry name (:func:`names`).
        config: the model config (``inv_s`` / ``no_residual`` of the transformer DVAEs, ``prior_on_own_past`` of
            an imported SRNN).
        training: ``"tf"`` or ``"ss"`` (how an SRNN was trained); from the config when None.
    """
    config = config or {}
    key = name.strip().lower()
    if key in ABLATION_PREFIX and config.get("inv_s"):
        return f"{ABLATION_PREFIX[key]}-Inv-s{'-NR' if config.get('no_residual') else ''}"
    label = LABELS.get(key, name)
    if key == "srnn":
        mode = training or ("ss" if config.get("prior_on_own_past") else "tf")
        label += f" ({str(mode).upper()})"
    return label


def parse_label(label: str) -> dict:
    """The inverse of :func:`model_label`: ``"SRNN (TF)"`` -> ``{"label", "name": "srnn", "config", "training"}``
    (``name`` is ``""`` for a label no model has)."""
    text = str(label).lower()
    name = next((n for n, lab in LABELS.items() if text == lab.lower()), "")
    name = name or next((n for n, lab in LABELS.items() if text.split(" (")[0] == lab.lower()), "")
    for n, prefix in ABLATION_PREFIX.items():
        if text.startswith(prefix.lower() + "-inv-s"):
            name = n
    config = {"inv_s": "inv-s" in text, "no_residual": text.endswith("-nr")}
    training = "tf" if "(tf)" in text else "ss" if "(ss)" in text else None
    return {"label": str(label), "name": name, "config": config, "training": training}


def order_key(name: str) -> int:
    """A model's place in the paper's tables (unknown names last)."""
    key = str(name).lower()
    return list(LABELS).index(key) if key in LABELS else len(LABELS)


def names() -> list[str]:
    return list(_REGISTRY)


def model_class(name: str) -> type[DVAE]:
    key = name.strip().lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(_REGISTRY)}")
    module, cls, _ = _REGISTRY[key]
    return getattr(importlib.import_module(module), cls)


def build(name: str, **config) -> DVAE:
    """Build the model ``name`` with its default sizes, overridden by ``config``."""
    key = name.strip().lower()
    cls = model_class(key)
    values = {**_REGISTRY[key][2], **config}
    return cls(cls.config_class.from_dict(values))


def pretrained(name: str, device="cpu", dtype=None) -> DVAE:
    """A shipped pretrained prior of the built-in corpus, float32 in eval mode (see
    :mod:`lightdvae.models.shipped`; ``pretrained_names()`` lists them)."""
    import torch

    from lightdvae.models.shipped import pretrained as _load

    return _load(name, device=device, dtype=dtype or torch.float32)


def pretrained_names() -> list[str]:
    """The names of the shipped pretrained priors."""
    from lightdvae.models.shipped import pretrained_names as _names

    return _names()


def pretrained_card(name: str) -> dict:
    """The card of a shipped prior: the command that reproduces it, epochs, wall time, scores, digest."""
    from lightdvae.models.shipped import pretrained_card as _card

    return _card(name)


def from_dvae(checkpoint, config_ini, overrides: dict | None = None) -> DVAE:
    """The lightdvae model equivalent to a checkpoint of the DVAE review's code and its config.ini
    (see :mod:`lightdvae.models.dvae_import`)."""
    from lightdvae.models.dvae_import import from_dvae as _from_dvae

    return _from_dvae(checkpoint, config_ini, overrides)


__all__ = [
    "LABELS",
    "ABLATION_PREFIX",
    "SEES_PAST_SPEECH",
    "HAS_W",
    "model_label",
    "parse_label",
    "order_key",
    "pretrained",
    "pretrained_names",
    "pretrained_card",
    "DVAE",
    "DVAEOutput",
    "LossTerms",
    "ModelConfig",
    "build",
    "elbo_terms",
    "from_dvae",
    "model_class",
    "names",
]
