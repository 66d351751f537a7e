"""Sequential latent sampling loops of DKF, RVAE and SRNN (SPEC section 7.3).

For t = 1..T, z_t is drawn from a Gaussian whose parameters depend on z_{t-1} (and on the model's
own past speech for SRNN), with the reparameterisation ``z_t = mean_t + exp(logvar_t / 2) * eps_t``.
Each loop is a pair: the public function runs the native op ``torch.ops.lightdvae.<name>`` (the
whole loop in C++, no Python per time step) when the extension is built, and ``<name>_ref`` (the
same loop in Python, step by step) otherwise; ``LIGHTDVAE_BACKEND=ref|native`` forces one.

The native loops are CompositeImplicitAutograd C++ ops: a C++ loop of ATen calls.  They run on
the device of their inputs (on CUDA, each ATen call launches its CUDA kernel from the C++ loop, and
the loop never reads device memory back, so the host does not wait on the GPU between steps), in
any floating dtype that ATen supports there, and they are differentiable through ATen's autograd.
When no input needs a gradient they run without recording one.

In training the posterior loops that have one run as their ``<loop>_bptt`` op instead
(:mod:`lightdvae.ops.sampling_bptt`): the same loop, saving every per-step activation, differentiated
by an explicit backward through time (the recurrence step by step, every weight gradient one GEMM over
all steps) instead of autograd's graph of some twenty ATen calls per step: ``dkf_posterior``,
``rvae_posterior`` (with ``exact_lstm=False``) and ``srnn_posterior``, on the CPU and on CUDA, where each
loop's step-by-step part is one kernel launch each way (a thread block per batch row walks every frame:
``csrc/sampling/row_loops.h``) instead of some twenty launches per step.
``LIGHTDVAE_LOOP_BACKWARD=composite`` keeps the composite loop's autograd.

Layouts: sequences are batch first, ``(batch, frames, features)``, like the models' public tensors;
the loops run time-major inside, and the returned sequences are batch-first views of time-major
storage (the layout the models' Python loops return) unless said otherwise.  Weights are passed as
flat lists in ``nn.Module`` layout:

- Linear stack ``[w0, b0, w1, b1, ...]`` (``w_i (out_i, in_i)``, ``b_i (out_i,)``), each layer
  followed by the activation (``lightdvae.models.layers.MLP`` without dropout; ``[]`` is the identity);
- Gaussian heads ``[w_mean, b_mean, w_logvar, b_logvar]``, each weight ``(z_dim, hidden)``;
- LSTM: ``nn.LSTM.all_weights`` flattened, ``[w_ih_l0, w_hh_l0, b_ih_l0, b_hh_l0, w_ih_l1, ...]``
  (unidirectional, with biases).

``eps``: the noise ``(batch, frames, z_dim)`` of every step, drawn by the caller (the models draw
it in one call); ``None`` in the posterior loops is the deterministic mode (z_t = mean_t).  With the
same noise the native loop gives the reference's samples: bit for bit where both run the same
kernels (see ``exact_lstm``), otherwise within float rounding, which SRNN's own-past loop amplifies
(it feeds ``exp(logvar)`` back) to about 1e-5 relative in float32 over a few hundred frames.

``exact_loops(False)`` (a context manager, :mod:`lightdvae.ops.sampling_bptt`) lets the loops trade that bit-parity
for speed within a block: the posterior loops run as their ``_bptt`` op (raw-pointer steps at batch <= 4) with or
without gradients, SRNN's own-past loop runs its steps on raw pointers at batch <= 4 (the loop it runs without a
graph: all of it without gradients, the search for the fed-back predictions with them), and ``exact_lstm`` is taken
as False.

``exact_lstm`` (the loops with an LSTM step): True runs the kernel that ``nn.LSTM`` runs
(``torch.lstm``: oneDNN on the CPU in float32, cuDNN on CUDA, ATen's LSTM cell otherwise), so the
loop reproduces the models' Python loops bit for bit.  Without gradients on the CPU the weights are
packed for oneDNN once per loop (about 55 us a step for SRNN's 256 -> 128 LSTM at batch 1, against
150 us for a ``torch.lstm`` call, which reorders them every time); with gradients every step is a
whole ``torch.lstm`` call.  False (the default) writes the cell out as ATen's ``LSTMCell`` does
(``linear(h, w_hh, b_hh) + linear(x, w_ih, b_ih)``, then the gates): the same arithmetic as
``nn.LSTM`` on the CPU in float64, within float rounding of it elsewhere; cheaper for small LSTMs
and whenever gradients are recorded.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lightdvae import _ext
from lightdvae.ops.precision import float32_under_autocast
from lightdvae.ops.sampling_bptt import exact_loops, exact_loops_enabled, explicit_backward

__all__ = [
    "ACTIVATIONS",
    "dkf_posterior",
    "dkf_posterior_ref",
    "dkf_prior",
    "dkf_prior_ref",
    "exact_loops",
    "rvae_posterior",
    "rvae_posterior_ref",
    "srnn_own_past",
    "srnn_own_past_ref",
    "srnn_posterior",
    "srnn_posterior_ref",
    "srnn_prior",
    "srnn_prior_ref",
]

#: Activation names of the Linear stacks and their codes in the native schemas.
ACTIVATIONS = {"tanh": 0, "relu": 1}

Params = Sequence[Tensor]


def _activation_code(activation: str) -> int:
    try:
        return ACTIVATIONS[activation]
    except (KeyError, TypeError):
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}") from None


def _check_sequence(op: str, name: str, t: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 3:
        raise ValueError(f"{op}: {name} must be (batch, frames, features), got shape {tuple(t.shape)}")
    if t.shape[1] == 0:
        raise ValueError(f"{op}: {name} has no frames")
    if not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")


def _check_eps(op: str, eps: Tensor | None, batch: int, frames: int) -> None:
    if eps is None:
        return
    _check_sequence(op, "eps", eps)
    if eps.shape[:2] != (batch, frames):
        raise ValueError(
            f"{op}: eps must be (batch, frames, z_dim) with batch, frames = {batch, frames}, "
            f"got shape {tuple(eps.shape)}"
        )


def _tm(t: Tensor | None) -> Tensor | None:
    """Batch-first -> time-major view."""
    return None if t is None else t.transpose(0, 1)


def _use_native(op: str, like: Tensor) -> bool:
    return _ext.use_native(op, like.device.type)


# --------------------------------------------------------------------------------------------
# Reference cells (the arithmetic of lightdvae.models' cells, written over explicit weights)
# --------------------------------------------------------------------------------------------


def _mlp(x: Tensor, layers: Params, activation: str) -> Tensor:
    act = torch.tanh if activation == "tanh" else torch.relu
    for i in range(0, len(layers), 2):
        x = act(F.linear(x, layers[i], layers[i + 1]))
    return x


def _heads(hidden: Tensor, heads: Params) -> tuple[Tensor, Tensor]:
    return F.linear(hidden, heads[0], heads[1]), F.linear(hidden, heads[2], heads[3])


def _draw(mean: Tensor, logvar: Tensor, eps: Tensor | None) -> Tensor:
    return mean if eps is None else torch.addcmul(mean, eps, torch.exp(0.5 * logvar))


def _lstm_step(x: Tensor, state: tuple[Tensor, Tensor], weights: Params, exact: bool):
    layers = len(weights) // 4
    if exact:  # nn.LSTM's own call
        out, h, c = torch.lstm(
            x.unsqueeze(0), state, list(weights), True, layers, 0.0, torch.is_grad_enabled(), False, False
        )
        return out.squeeze(0), (h, c)
    hs, cs = [], []
    for layer in range(layers):
        w_ih, w_hh, b_ih, b_hh = weights[4 * layer : 4 * layer + 4]
        gates = F.linear(state[0][layer], w_hh, b_hh) + F.linear(x, w_ih, b_ih)
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * state[1][layer] + torch.sigmoid(i) * torch.tanh(g)
        x = torch.sigmoid(o) * torch.tanh(c)
        hs.append(x)
        cs.append(c)
    return x, (torch.stack(hs), torch.stack(cs))


def _stack_batch_first(steps: list[Tensor]) -> Tensor:
    """Steps (batch, width) -> (batch, frames, width), a view of time-major storage."""
    return torch.stack(steps, 0).transpose(0, 1)


def _posterior_ref(features: Tensor, eps: Tensor | None, z_dim: int, cell) -> tuple[Tensor, Tensor, Tensor]:
    """The loop of the posterior references: for t = 1..T, ``mean, logvar = cell(t, z_{t-1})`` (z_0 = 0; a stateful
    cell keeps its state in a closure), ``z_t = mean + exp(logvar / 2) * eps[:, t]`` (the mean when eps is None).
    Returns ``z, mean, logvar`` as :func:`_stack_batch_first` views."""
    z = features.new_zeros(features.shape[0], z_dim)
    zs, means, logvars = [], [], []
    for t in range(features.shape[1]):
        mean, logvar = cell(t, z)
        z = _draw(mean, logvar, None if eps is None else eps[:, t])
        zs.append(z)
        means.append(mean)
        logvars.append(logvar)
    return _stack_batch_first(zs), _stack_batch_first(means), _stack_batch_first(logvars)


# --------------------------------------------------------------------------------------------
# DKF
# --------------------------------------------------------------------------------------------


def dkf_posterior_ref(
    gx: Tensor,
    eps: Tensor | None,
    z_to_g: Params,
    posterior_mlp: Params,
    heads: Params,
    g_terms: float = 2.0,
    activation: str = "tanh",
) -> tuple[Tensor, Tensor, Tensor]:
    """Python loop of :func:`dkf_posterior` (``DKF.sample_posterior`` over explicit weights)."""
    _activation_code(activation)

    def cell(t: int, z: Tensor) -> tuple[Tensor, Tensor]:
        g = (_mlp(z, z_to_g, activation) + gx[:, t]) / g_terms
        return _heads(_mlp(g, posterior_mlp, activation), heads)

    return _posterior_ref(gx, eps, heads[0].shape[0], cell)


@float32_under_autocast
def dkf_posterior(
    gx: Tensor,
    eps: Tensor | None,
    z_to_g: Params,
    posterior_mlp: Params,
    heads: Params,
    g_terms: float = 2.0,
    activation: str = "tanh",
) -> tuple[Tensor, Tensor, Tensor]:
    """DKF posterior q(z_t | z_{t-1}, s_{t:T}) sampled step by step from z_0 = 0.

    ``g_t = (z_to_g(z_{t-1}) + gx_t) / g_terms``; ``mean_t, logvar_t = heads(posterior_mlp(g_t))``;
    ``z_t = mean_t + exp(logvar_t / 2) * eps_t``.

    Args:
        gx: speech features ``(batch, frames, rnn_dim)`` (``DKF.encode_speech``).
        eps: noise ``(batch, frames, z_dim)``, or None for the deterministic mode (z_t = mean_t).
        z_to_g: Linear stack z_dim -> ... -> rnn_dim.
        posterior_mlp: Linear stack rnn_dim -> hidden.
        heads: Gaussian heads hidden -> z_dim.
        g_terms: 2 (3 with a bidirectional speech LSTM).
        activation: ``"tanh"`` or ``"relu"``.

    Returns:
        ``z, mean, logvar``, each ``(batch, frames, z_dim)``, dtype and device of ``gx``.

    Differentiable in every tensor argument (the loop runs in training; on the CPU with the explicit
    backward through time of ``dkf_posterior_bptt``; on CUDA too).  Bit-identical to the reference with the same
    noise when nothing requires a gradient, within float rounding otherwise.
    """
    _check_sequence("dkf_posterior", "gx", gx)
    _check_eps("dkf_posterior", eps, gx.shape[0], gx.shape[1])
    code = _activation_code(activation)
    if _use_native("dkf_posterior", gx):
        args = (_tm(gx), _tm(eps), list(z_to_g), list(posterior_mlp), list(heads), float(g_terms), code)
        if explicit_backward("dkf_posterior", gx, *args[:5]):
            out = torch.ops.lightdvae.dkf_posterior_bptt(*args)[:3]
        else:
            out = torch.ops.lightdvae.dkf_posterior(*args)
        return tuple(o.transpose(0, 1) for o in out)
    return dkf_posterior_ref(gx, eps, z_to_g, posterior_mlp, heads, g_terms, activation)


def dkf_prior_ref(eps: Tensor, transition: Params, temperature: float = 1.0) -> Tensor:
    """Python loop of :func:`dkf_prior` (``DKF.sample_prior`` over explicit weights)."""
    n, frames, z_dim = eps.shape
    w = transition
    z = eps.new_zeros(n, z_dim)
    zs = []
    for t in range(frames):
        gate = torch.sigmoid(F.linear(F.relu(F.linear(z, w[0], w[1])), w[2], w[3]))
        proposal = F.linear(F.relu(F.linear(z, w[4], w[5])), w[6], w[7])
        mean = (1 - gate) * F.linear(z, w[8], w[9]) + gate * proposal
        logvar = torch.log(F.softplus(F.linear(F.relu(proposal), w[10], w[11])))
        eps_t = eps[:, t] if temperature == 1.0 else eps[:, t] * temperature
        z = _draw(mean, logvar, eps_t)
        zs.append(z)
    return torch.stack(zs, 1)


@float32_under_autocast
def dkf_prior(eps: Tensor, transition: Params, temperature: float = 1.0) -> Tensor:
    """Generation from DKF's gated transition p(z_t | z_{t-1}), z_0 = 0.

    ``gate = sigmoid(L2(relu(L1(z))))``, ``proposal = L4(relu(L3(z)))``,
    ``mean = (1 - gate) * L5(z) + gate * proposal``, ``logvar = log(softplus(L6(relu(proposal))))``,
    ``z_t = mean + exp(logvar / 2) * temperature * eps_t``.

    Args:
        eps: noise ``(n, frames, z_dim)``.
        transition: the 12 weights and biases of gate_in, gate_out, proposal_in, proposal_out,
            prior_mean, prior_var (each Linear z_dim -> z_dim).
        temperature: scales the noise.

    Returns:
        z ``(n, frames, z_dim)``, contiguous, dtype and device of ``eps``.  Differentiable (it
        rarely needs to be); bit-identical to the reference with the same noise.
    """
    _check_sequence("dkf_prior", "eps", eps)
    if _use_native("dkf_prior", eps):
        z = torch.ops.lightdvae.dkf_prior(_tm(eps), list(transition), float(temperature))
        return z.transpose(0, 1).contiguous()
    return dkf_prior_ref(eps, transition, temperature)


# --------------------------------------------------------------------------------------------
# RVAE
# --------------------------------------------------------------------------------------------


def rvae_posterior_ref(
    gx: Tensor,
    eps: Tensor | None,
    z_embed: Params,
    rnn_z: Params,
    posterior_mlp: Params,
    heads: Params,
    activation: str = "tanh",
    exact_lstm: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Python loop of :func:`rvae_posterior` (``RVAE.sample_posterior`` over explicit weights;
    with ``exact_lstm=True`` the same calls as the model's loop)."""
    _activation_code(activation)
    layers, hidden = len(rnn_z) // 4, rnn_z[1].shape[1]
    state = (gx.new_zeros(layers, gx.shape[0], hidden), gx.new_zeros(layers, gx.shape[0], hidden))

    def cell(t: int, z: Tensor) -> tuple[Tensor, Tensor]:
        nonlocal state
        gz, state = _lstm_step(_mlp(z, z_embed, activation), state, rnn_z, exact_lstm)
        return _heads(_mlp(torch.cat([gx[:, t], gz], dim=-1), posterior_mlp, activation), heads)

    return _posterior_ref(gx, eps, heads[0].shape[0], cell)


@float32_under_autocast
def rvae_posterior(
    gx: Tensor,
    eps: Tensor | None,
    z_embed: Params,
    rnn_z: Params,
    posterior_mlp: Params,
    heads: Params,
    activation: str = "tanh",
    exact_lstm: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """RVAE posterior q(z_t | z_{1:t-1}, s_{1:T}) sampled step by step (z_0 = 0, zero LSTM state).

    ``g^z_t = LSTM_z(z_embed(z_{t-1}))``; ``mean_t, logvar_t = heads(posterior_mlp([gx_t ; g^z_t]))``;
    ``z_t = mean_t + exp(logvar_t / 2) * eps_t``.

    Args:
        gx: speech features ``(batch, frames, gx_dim)`` (``RVAE.encode_speech``).
        eps: noise ``(batch, frames, z_dim)``, or None for the deterministic mode.
        z_embed: Linear stack z_dim -> embed (``[]``: identity).
        rnn_z: flat weights of the forward z LSTM (embed -> rnn_z_dim, any number of layers).
        posterior_mlp: Linear stack gx_dim + rnn_z_dim -> hidden.
        heads: Gaussian heads hidden -> z_dim.
        activation: ``"tanh"`` or ``"relu"``.
        exact_lstm: step the LSTM with nn.LSTM's own kernel (see the module docstring).

    Returns:
        ``z, mean, logvar``, each ``(batch, frames, z_dim)``.  Differentiable in every tensor argument; on
        the CPU and CUDA with ``exact_lstm=False``, by the explicit backward through time of ``rvae_posterior_bptt``
        (the ``gx`` part of the first layer on ``[gx_t ; g^z_t]`` then one GEMM over all frames).
    """
    _check_sequence("rvae_posterior", "gx", gx)
    _check_eps("rvae_posterior", eps, gx.shape[0], gx.shape[1])
    code = _activation_code(activation)
    exact_lstm = bool(exact_lstm) and exact_loops_enabled()
    if _use_native("rvae_posterior", gx):
        args = (_tm(gx), _tm(eps), list(z_embed), list(rnn_z), list(posterior_mlp), list(heads), code)
        # the explicit backward steps the ATen cell
        if not exact_lstm and explicit_backward("rvae_posterior", gx, *args[:6]):
            out = torch.ops.lightdvae.rvae_posterior_bptt(*args)[:3]
        else:
            out = torch.ops.lightdvae.rvae_posterior(*args, bool(exact_lstm))
        return tuple(o.transpose(0, 1) for o in out)
    return rvae_posterior_ref(gx, eps, z_embed, rnn_z, posterior_mlp, heads, activation, exact_lstm)


# --------------------------------------------------------------------------------------------
# SRNN
# --------------------------------------------------------------------------------------------


def srnn_posterior_ref(
    g: Tensor, eps: Tensor | None, posterior_mlp: Params, heads: Params, activation: str = "tanh"
) -> tuple[Tensor, Tensor, Tensor]:
    """Python loop of :func:`srnn_posterior` (``SRNN.sample_posterior`` over explicit weights)."""
    _activation_code(activation)

    def cell(t: int, z: Tensor) -> tuple[Tensor, Tensor]:
        return _heads(_mlp(torch.cat([g[:, t], z], dim=-1), posterior_mlp, activation), heads)

    return _posterior_ref(g, eps, heads[0].shape[0], cell)


@float32_under_autocast
def srnn_posterior(
    g: Tensor, eps: Tensor | None, posterior_mlp: Params, heads: Params, activation: str = "tanh"
) -> tuple[Tensor, Tensor, Tensor]:
    """SRNN posterior q(z_t | z_{t-1}, g_t) sampled step by step from z_0 = 0.

    ``mean_t, logvar_t = heads(posterior_mlp([g_t ; z_{t-1}]))``; ``z_t = mean_t + exp(logvar_t / 2) * eps_t``.

    Args:
        g: encoder features ``(batch, frames, rnn_g_dim)`` (``SRNN.encode_speech``).
        eps: noise ``(batch, frames, z_dim)``, or None for the deterministic mode.
        posterior_mlp: Linear stack rnn_g_dim + z_dim -> hidden.
        heads: Gaussian heads hidden -> z_dim.
        activation: ``"tanh"`` or ``"relu"``.

    Returns:
        ``z, mean, logvar``, each ``(batch, frames, z_dim)``.  Differentiable in every tensor
        argument (on the CPU and CUDA by the explicit backward through time of ``srnn_posterior_bptt``, the
        ``g`` part of the first layer on ``[g_t ; z_{t-1}]`` then one GEMM over all frames);
        bit-identical to the reference with the same noise when nothing requires a gradient.
    """
    _check_sequence("srnn_posterior", "g", g)
    _check_eps("srnn_posterior", eps, g.shape[0], g.shape[1])
    code = _activation_code(activation)
    if _use_native("srnn_posterior", g):
        args = (_tm(g), _tm(eps), list(posterior_mlp), list(heads), code)
        if explicit_backward("srnn_posterior", g, *args[:4]):
            out = torch.ops.lightdvae.srnn_posterior_bptt(*args)[:3]
        else:
            out = torch.ops.lightdvae.srnn_posterior(*args)
        return tuple(o.transpose(0, 1) for o in out)
    return srnn_posterior_ref(g, eps, posterior_mlp, heads, activation)


def _flags(use_own: Tensor | Sequence[bool], frames: int) -> list[bool]:
    flags = [bool(f) for f in (use_own.tolist() if isinstance(use_own, Tensor) else use_own)]
    if len(flags) != frames:
        raise ValueError(f"use_own must have one entry per frame ({frames}), got {len(flags)}")
    return flags


def srnn_own_past_ref(
    z: Tensor,
    h_true: Tensor | None,
    use_own: Tensor | Sequence[bool],
    h_embed: Params,
    rnn_h: Params,
    decoder: Params,
    decoder_out: Params,
    activation: str = "tanh",
    exact_lstm: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Python loop of :func:`srnn_own_past` (``SRNN.decode_own_past`` over explicit weights;
    with ``exact_lstm=True`` the same calls as the model's loop)."""
    _activation_code(activation)
    batch, frames, _ = z.shape
    flags = _flags(use_own, frames)
    layers, hidden = len(rnn_h) // 4, rnn_h[1].shape[1]
    state = (z.new_zeros(layers, batch, hidden), z.new_zeros(layers, batch, hidden))
    s_prev = z.new_zeros(batch, decoder_out[0].shape[0])
    logvars, used, own = [], [], []
    for t in range(frames):
        h_own, state = _lstm_step(_mlp(s_prev, h_embed, activation), state, rnn_h, exact_lstm)
        h = h_own if flags[t] else h_true[:, t]
        logvar = F.linear(_mlp(torch.cat([h, z[:, t]], dim=-1), decoder, activation), *decoder_out)
        s_prev = torch.exp(logvar.detach())
        logvars.append(logvar)
        used.append(h)
        own.append(h_own)
    return _stack_batch_first(logvars), _stack_batch_first(used), _stack_batch_first(own)


@float32_under_autocast
def srnn_own_past(
    z: Tensor,
    h_true: Tensor | None,
    use_own: Tensor | Sequence[bool],
    h_embed: Params,
    rnn_h: Params,
    decoder: Params,
    decoder_out: Params,
    activation: str = "tanh",
    exact_lstm: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """SRNN decoder run on its own past predictions: GEN resynthesis and scheduled sampling.

    ``h_own_t = LSTM_h(h_embed(s_hat_{t-1}))`` with ``s_hat_0 = 0`` and ``s_hat_t = exp(logvar_t)``
    (detached); the decoder uses ``h_t = h_own_t`` where ``use_own[t]``, else ``h_true[:, t]``;
    ``logvar_t = decoder_out(decoder([h_t ; z_t]))``.

    Args:
        z: latents ``(batch, frames, z_dim)``.
        h_true: h from the true past ``(batch, frames, rnn_h_dim)``; may be None when every
            ``use_own`` is True.
        use_own: ``(frames,)`` bools, one decision per step shared across the batch (a CPU bool
            tensor or a sequence; read on the host before the loop starts).
        h_embed: Linear stack x_dim -> embed.
        rnn_h: flat weights of the deterministic LSTM (embed -> rnn_h_dim).
        decoder: Linear stack rnn_h_dim + z_dim -> hidden; decoder_out: ``[w, b]`` hidden -> x_dim.
        activation: ``"tanh"`` or ``"relu"``.
        exact_lstm: step the LSTM with nn.LSTM's own kernel (see the module docstring).

    Returns:
        ``logvar (batch, frames, x_dim)``, ``h_used`` and ``h_own`` ``(batch, frames, rnn_h_dim)``
        (the h the decoder used, and the own-past h).  Differentiable in ``z``, ``h_true`` and the
        weights (the fed-back predictions are detached, as in the reference).
    """
    _check_sequence("srnn_own_past", "z", z)
    code = _activation_code(activation)
    exact_lstm = bool(exact_lstm) and exact_loops_enabled()
    flags = _flags(use_own, z.shape[1])
    if h_true is None and not all(flags):
        raise ValueError("srnn_own_past: h_true is needed where use_own is False")
    if _use_native("srnn_own_past", z):
        out = torch.ops.lightdvae.srnn_own_past(
            _tm(z),
            _tm(h_true),
            flags,
            list(h_embed),
            list(rnn_h),
            list(decoder),
            list(decoder_out),
            code,
            bool(exact_lstm),
            exact_loops_enabled(),
        )
        return tuple(o.transpose(0, 1) for o in out)
    return srnn_own_past_ref(z, h_true, flags, h_embed, rnn_h, decoder, decoder_out, activation, exact_lstm)


def srnn_prior_ref(
    eps: Tensor,
    h_embed: Params,
    rnn_h: Params,
    prior_mlp: Params,
    prior_heads: Params,
    decoder: Params,
    decoder_out: Params,
    activation: str = "tanh",
    temperature: float = 1.0,
    exact_lstm: bool = False,
) -> tuple[Tensor, Tensor]:
    """Python loop of :func:`srnn_prior` (``SRNN.sample_prior`` over explicit weights; with
    ``exact_lstm=True`` the same calls as the model's loop)."""
    _activation_code(activation)
    n, frames, z_dim = eps.shape
    layers, hidden = len(rnn_h) // 4, rnn_h[1].shape[1]
    state = (eps.new_zeros(layers, n, hidden), eps.new_zeros(layers, n, hidden))
    s_prev = eps.new_zeros(n, decoder_out[0].shape[0])
    z = eps.new_zeros(n, z_dim)
    zs, logvars = [], []
    for t in range(frames):
        h, state = _lstm_step(_mlp(s_prev, h_embed, activation), state, rnn_h, exact_lstm)
        mean, logvar_z = _heads(_mlp(torch.cat([h, z], dim=-1), prior_mlp, activation), prior_heads)
        eps_t = eps[:, t] if temperature == 1.0 else eps[:, t] * temperature
        z = _draw(mean, logvar_z, eps_t)
        logvar = F.linear(_mlp(torch.cat([h, z], dim=-1), decoder, activation), *decoder_out)
        s_prev = torch.exp(logvar)
        zs.append(z)
        logvars.append(logvar)
    return torch.stack(zs, 1), torch.stack(logvars, 1)


@float32_under_autocast
def srnn_prior(
    eps: Tensor,
    h_embed: Params,
    rnn_h: Params,
    prior_mlp: Params,
    prior_heads: Params,
    decoder: Params,
    decoder_out: Params,
    activation: str = "tanh",
    temperature: float = 1.0,
    exact_lstm: bool = False,
) -> tuple[Tensor, Tensor]:
    """Autoregressive generation from the SRNN prior.

    Each step: ``h_t = LSTM_h(h_embed(s_hat_{t-1}))``;
    ``mean, logvar = prior_heads(prior_mlp([h_t ; z_{t-1}]))``;
    ``z_t = mean + exp(logvar / 2) * temperature * eps_t``; ``logvar_t = decoder_out(decoder([h_t ; z_t]))``;
    ``s_hat_t = exp(logvar_t)``; ``s_hat_0 = 0``, ``z_0 = 0``.

    Args:
        eps: noise ``(n, frames, z_dim)``.
        h_embed, rnn_h, decoder, decoder_out: as in :func:`srnn_own_past`.
        prior_mlp: Linear stack rnn_h_dim + z_dim -> hidden; prior_heads: Gaussian heads hidden -> z_dim.
        activation: ``"tanh"`` or ``"relu"``.
        temperature: scales the noise.
        exact_lstm: step the LSTM with nn.LSTM's own kernel (see the module docstring).

    Returns:
        ``z (n, frames, z_dim)`` and ``logvar (n, frames, x_dim)``, contiguous.  An inference loop
        (generation); it is differentiable all the same.
    """
    _check_sequence("srnn_prior", "eps", eps)
    code = _activation_code(activation)
    if _use_native("srnn_prior", eps):
        z, logvar = torch.ops.lightdvae.srnn_prior(
            _tm(eps),
            list(h_embed),
            list(rnn_h),
            list(prior_mlp),
            list(prior_heads),
            list(decoder),
            list(decoder_out),
            code,
            float(temperature),
            bool(exact_lstm),
        )
        return z.transpose(0, 1).contiguous(), logvar.transpose(0, 1).contiguous()
    return srnn_prior_ref(
        eps, h_embed, rnn_h, prior_mlp, prior_heads, decoder, decoder_out, activation, temperature, exact_lstm
    )
