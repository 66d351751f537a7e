"""lightdvae: dynamical VAEs for unsupervised speech modelling, with native (C++/CUDA) hot paths.

Implements HiT-DVAE and LigHT-DVAE (Lin et al., ICASSP 2023) and the classic DVAEs they are
compared against (VAE, DKF, RVAE, SRNN; Girin et al., 2021).  See README.md.
"""

__version__ = "0.1.0"

from lightdvae import (
    _ext,  # noqa: F401  (one guarded import of the native extension)
    ops,  # noqa: F401
)

__all__ = ["__version__", "ops"]
