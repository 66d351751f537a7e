"""Model zoo: ``build(name, **config)`` and ``names()``.

Names: ``vae``, ``dkf``, ``rvae``, ``rvae-causal``, ``srnn``, ``hit-dvae``, ``light-dvae``.
The transformer models take ``inv_s=True`` (Inv-s) and ``no_residual=True`` (Inv-s-NR).
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


def from_dvae(checkpoint, config_ini, overrides: dict | None = None) -> DVAE:
    """The lightdvae model equivalent to a checkpoint of the DVAE review's code and its config.ini
    (see :mod:`lightdvae.models.dvae_import`)."""
    from lightdvae.models.dvae_import import from_dvae as _from_dvae

    return _from_dvae(checkpoint, config_ini, overrides)


__all__ = [
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
