"""Native ops of lightdvae, each beside its pure-PyTorch reference (``*_ref``).

The public function runs the native kernel (``torch.ops.lightdvae.*``) when the extension is
built and supports the inputs, and the reference otherwise; ``LIGHTDVAE_BACKEND=ref|native``
forces one.
"""

from lightdvae.ops.attention import kv_attention, kv_attention_ref
from lightdvae.ops.losses import REDUCTIONS, gaussian_kl, gaussian_kl_ref, is_divergence, is_divergence_ref

__all__ = [
    "REDUCTIONS",
    "gaussian_kl",
    "gaussian_kl_ref",
    "is_divergence",
    "is_divergence_ref",
    "kv_attention",
    "kv_attention_ref",
]
