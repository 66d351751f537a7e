"""Native ops of lightdvae, each beside its pure-PyTorch reference (``*_ref``).

The public function runs the native kernel (``torch.ops.lightdvae.*``) when the extension is
built and supports the inputs, and the reference otherwise; ``LIGHTDVAE_BACKEND=ref|native``
forces one.
"""

from lightdvae.ops.activations import tanh
from lightdvae.ops.attention import kv_attention, kv_attention_ref
from lightdvae.ops.dropout import dropout, dropout_ref
from lightdvae.ops.losses import REDUCTIONS, gaussian_kl, gaussian_kl_ref, is_divergence, is_divergence_ref
from lightdvae.ops.sampling import (
    dkf_posterior,
    dkf_posterior_ref,
    dkf_prior,
    dkf_prior_ref,
    rvae_posterior,
    rvae_posterior_ref,
    srnn_own_past,
    srnn_own_past_ref,
    srnn_posterior,
    srnn_posterior_ref,
    srnn_prior,
    srnn_prior_ref,
)

__all__ = [
    "REDUCTIONS",
    "dkf_posterior",
    "dkf_posterior_ref",
    "dkf_prior",
    "dkf_prior_ref",
    "dropout",
    "dropout_ref",
    "gaussian_kl",
    "gaussian_kl_ref",
    "is_divergence",
    "is_divergence_ref",
    "kv_attention",
    "kv_attention_ref",
    "rvae_posterior",
    "rvae_posterior_ref",
    "srnn_own_past",
    "srnn_own_past_ref",
    "srnn_posterior",
    "srnn_posterior_ref",
    "srnn_prior",
    "srnn_prior_ref",
    "tanh",
]
