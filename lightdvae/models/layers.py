"""Building blocks of the recurrent baselines (VAE, DKF, RVAE, SRNN).

- :class:`MLP`: Linear layers, each followed by the activation (and dropout); an empty size list is
  the identity.  This is the ``dense_*`` layer list of the DVAE review's configurations.
- :func:`lstm_step`: one time step of an ``nn.LSTM`` (the module runs it, so the arithmetic is
  PyTorch's own); :func:`lstm_cell` writes the same step out gate by gate, in PyTorch's gate order
  (input, forget, cell, output): the math that a native sampling loop mirrors.
- :func:`run_lstm`: a whole sequence through an ``nn.LSTM`` forwards or backwards in time.
- :func:`draw`: the reparameterisation ``mean + exp(logvar / 2) * eps`` with optional pre-drawn noise.
- :func:`linear_params`, :func:`lstm_params`, :func:`use_native_loop`, :func:`loop_noise`: what the models
  hand to the native sampling loops of :mod:`lightdvae.ops.sampling` (weights as flat lists, the
  backend decision, the noise of a whole loop drawn at once).

Layout: the models' public tensors are batch first, ``(batch, frames, features)``; one step is
``(batch, features)``.  The recurrent models run their sequence layers time-major
``(frames, batch, features)`` inside, as the reference implementation does: Linear layers round
differently with another row order, and SRNN's own-past loop (``exp(logvar)`` fed back) amplifies
one ulp of difference to about 1e-5 relative, so this layout is what lets imported checkpoints
reproduce the reference's float32 outputs exactly on CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightdvae import _ext
from lightdvae.models.base import Dropout
from lightdvae.models.base import activation as make_activation
from lightdvae.ops import lstm as lstm_ops
from lightdvae.ops.activations import Tanh

LSTMState = tuple[Tensor, Tensor]


class MLP(nn.Module):
    """``x -> act(L_k(... act(L_1(x))))`` with dropout after every activation.

    Args:
        in_dim: size of the input's last dimension.
        sizes: output size of each Linear layer; empty means the identity (``out_dim == in_dim``).
        activation: ``"tanh"`` or ``"relu"``.
        dropout: dropout probability after each activation (0 disables it).

    Shapes: ``(..., in_dim) -> (..., out_dim)``.
    """

    def __init__(self, in_dim: int, sizes: list[int] | tuple[int, ...], activation: str = "tanh", dropout: float = 0.0):
        super().__init__()
        dims = [in_dim, *sizes]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        # the vectorised tanh (lightdvae.ops.activations) where it runs: ATen's CPU tanh is scalar
        self.act = Tanh() if activation == "tanh" else make_activation(activation)
        self.dropout = Dropout(dropout) if dropout > 0 else nn.Identity()
        self.in_dim = in_dim
        self.out_dim = dims[-1]

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = self.dropout(self.act(layer(x)))
        return x


def lstm_cell(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor) -> LSTMState:
    """One LSTM step: ``x (batch, in)``, ``h, c (batch, hidden)``, weights as in ``nn.LSTM``
    (``w_ih (4*hidden, in)``, ``w_hh (4*hidden, hidden)``, biases ``(4*hidden,)``).

    ``i, f, g, o = split(x w_ih^T + b_ih + h w_hh^T + b_hh)``; ``c' = sigmoid(f) c + sigmoid(i) tanh(g)``;
    ``h' = sigmoid(o) tanh(c')``.  Returns ``(h', c')``.
    """
    gates = F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, c


def lstm_zero_state(lstm: nn.LSTM, batch: int, like: Tensor) -> LSTMState:
    """Zero ``(h, c)``, each ``(num_layers, batch, hidden)``, of a unidirectional ``lstm``."""
    h = like.new_zeros(lstm.num_layers, batch, lstm.hidden_size)
    return h, h.clone()


@lstm_ops.float32_on_cpu_autocast
def lstm_step(lstm: nn.LSTM, x: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
    """Advance a unidirectional (possibly multi-layer) ``nn.LSTM`` by one step.

    The module itself runs the step (a length-1 sequence), so the arithmetic is exactly that of
    ``nn.LSTM`` (and of the DVAE reference code); the math is :func:`lstm_cell` layer after layer.

    Args:
        lstm: the module (``bidirectional=False``, no projection; either ``batch_first``).
        x: input of this step, ``(batch, input_size)``.
        state: ``(h, c)``, each ``(num_layers, batch, hidden)``.

    Returns:
        The last layer's output ``(batch, hidden)`` and the new state.
    """
    seq_dim = 1 if lstm.batch_first else 0
    out, state = lstm(x.unsqueeze(seq_dim), state)
    return out.squeeze(seq_dim), state


def run_lstm(lstm: nn.LSTM, x: Tensor, backward: bool = False) -> Tensor:
    """Run ``lstm`` over the sequence ``x`` from zero state.

    ``x`` is ``(frames, batch, in)``, or ``(batch, frames, in)`` for a ``batch_first`` module.
    ``backward=True`` runs it from the last frame to the first (the input is flipped in time, and so
    is the output), so that output ``t`` summarises frames ``t..T``.  A bidirectional module gives
    ``[forward ; backward]`` features per frame.  Returns the outputs, ``directions * hidden`` wide.  When a
    gradient is recorded at batch <= 4 on the CPU the layers run natively with an explicit backward
    (:func:`lightdvae.ops.lstm.lstm`, the enhancement E-step's case; nn.LSTM's results within float rounding).
    """
    return lstm_ops.lstm(lstm, x, reverse=backward)


def draw(
    mean: Tensor,
    logvar: Tensor,
    sample: bool = True,
    eps: Tensor | None = None,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """Reparameterised sample ``mean + temperature * exp(logvar / 2) * eps``.

    ``eps`` (same shape as ``mean``) is drawn from ``N(0, I)`` (with ``generator``) when not given;
    ``sample=False`` returns ``mean`` (deterministic mode).
    """
    if not sample:
        return mean
    if eps is None:
        eps = torch.randn(mean.shape, dtype=mean.dtype, device=mean.device, generator=generator)
    if temperature != 1.0:
        eps = eps * temperature
    return torch.addcmul(mean, eps, torch.exp(0.5 * logvar))


def posterior_loop(
    cell, features: Tensor, z_dim: int, sample: bool, eps: Tensor | None, generator: torch.Generator | None
) -> tuple[Tensor, Tensor, Tensor]:
    """The Python reference of the sequential posteriors (the ``*_ref`` of :mod:`lightdvae.ops.sampling`).

    For t = 1..T, ``mean, logvar = cell(features[:, t], z_{t-1})`` (z_0 = 0; a stateful cell keeps its state in
    a closure) and ``z_t = draw(mean, logvar, sample, eps[:, t])``.  Returns ``z, mean, logvar``, each
    ``(batch, frames, z_dim)`` (views of time-major storage).
    """
    batch, frames, _ = features.shape
    z_t = features.new_zeros(batch, z_dim)
    zs, means, logvars = [], [], []
    for t in range(frames):
        mean, logvar = cell(features[:, t], z_t)
        z_t = draw(mean, logvar, sample, None if eps is None else eps[:, t], generator)
        zs.append(z_t)
        means.append(mean)
        logvars.append(logvar)
    return tuple(torch.stack(v, 0).transpose(0, 1) for v in (zs, means, logvars))


def sequential_posterior(
    model: nn.Module,
    op: str,
    features: Tensor,
    sample: bool,
    eps: Tensor | None,
    generator: torch.Generator | None,
    native,
    cell,
) -> tuple[Tensor, Tensor, Tensor]:
    """The sequential posterior of a dynamical model: z_1..z_T drawn from q step by step (z_0 = 0).

    ``features (batch, frames, F)`` are the model's encoded speech; ``sample=False`` takes the mean at every step;
    ``eps (batch, frames, z_dim)`` is the noise, drawn with ``generator`` when omitted.  The native loop ``op``
    (:mod:`lightdvae.ops.sampling`) runs when :func:`use_native_loop` says so, as ``native(eps or None)`` (None in
    deterministic mode); otherwise the Python reference :func:`posterior_loop` with ``cell``.  With the same
    ``eps`` both give the same samples; without it the native path draws the loop's noise in one call
    (:func:`loop_noise`: the per-step draws' numbers whenever ``batch * z_dim`` is a multiple of 16).  Returns
    ``z, mean, logvar``, each ``(batch, frames, z_dim)`` (views of time-major storage).
    """
    batch, frames, _ = features.shape
    z_dim = model.config.z_dim
    eps = check_eps(eps, batch, frames, z_dim, features)
    if use_native_loop(model, op, features):
        if sample and eps is None:
            eps = loop_noise(batch, frames, z_dim, features, generator)
        return native(eps if sample else None)
    return posterior_loop(cell, features, z_dim, sample, eps, generator)


def linear_params(*modules: nn.Module) -> list[Tensor]:
    """Weights and biases ``[w0, b0, w1, b1, ...]`` of :class:`MLP` and ``nn.Linear`` modules, in
    order: the Linear-stack layout of the native sampling loops (an MLP adds all its layers)."""
    params = []
    for module in modules:
        for layer in module.layers if isinstance(module, MLP) else [module]:
            params += [layer.weight, layer.bias]
    return params


def lstm_params(lstm: nn.LSTM) -> list[Tensor]:
    """``nn.LSTM``'s flat weights ``[w_ih_l0, w_hh_l0, b_ih_l0, b_hh_l0, ...]`` (unidirectional, with biases)."""
    if lstm.bidirectional or not lstm.bias or lstm.proj_size:
        raise ValueError("the native sampling loops step unidirectional LSTMs with biases and no projection")
    return [w for layer in lstm.all_weights for w in layer]


def use_native_loop(model: nn.Module, op: str, like: Tensor) -> bool:
    """Whether ``model`` runs the native sampling loop ``op`` (``lightdvae.ops.sampling``) for inputs
    like ``like``, or its own Python loop.

    The backend (``LIGHTDVAE_BACKEND``, the build) decides, as for every op.  The native loops have
    no dropout, so a model whose dropout is active (training with ``config.dropout > 0``) keeps its
    Python loop whatever the backend: the loop then belongs to the model, not to an op, and
    ``LIGHTDVAE_BACKEND=native`` still trains such models.
    """
    if model.training and model.config.dropout > 0:
        return False
    return _ext.use_native(op, like.device.type)


def loop_noise(batch: int, frames: int, z_dim: int, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``N(0, I)`` noise of a whole sampling loop, ``(batch, frames, z_dim)``, drawn in one call.

    It is drawn in time order (a batch-first view of time-major storage), the order in which the
    Python loops draw one ``(batch, z_dim)`` block per step; on the CPU the two give the same numbers
    whenever ``batch * z_dim`` is a multiple of 16 (always with the published ``z_dim = 16``).
    """
    noise = torch.randn(frames, batch, z_dim, dtype=like.dtype, device=like.device, generator=generator)
    return noise.transpose(0, 1)


def shift_right(x: Tensor, dim: int = 1) -> Tensor:
    """Delay a sequence by one frame along ``dim`` (the time axis): frame ``t`` holds frame ``t-1``, frame 0 is zero."""
    zero = torch.zeros_like(x.narrow(dim, 0, 1))
    return torch.cat([zero, x.narrow(dim, 0, x.shape[dim] - 1)], dim=dim)


def check_power(power: Tensor, x_dim: int) -> None:
    """Clear errors for a power spectrogram that is not ``(batch, frames, x_dim)`` floating point."""
    if not isinstance(power, Tensor):
        raise TypeError(f"power must be a torch.Tensor, got {type(power).__name__}")
    if power.dim() != 3 or power.shape[-1] != x_dim:
        raise ValueError(
            f"power must be (batch, frames, {x_dim}) (batch first, frequency last), got shape {tuple(power.shape)}"
        )
    if power.shape[1] == 0:
        raise ValueError("power has no frames")
    if not power.is_floating_point():
        raise TypeError(f"power must be a floating-point tensor, got {power.dtype}")


def check_eps(eps: Tensor | None, batch: int, frames: int, z_dim: int, like: Tensor) -> Tensor | None:
    """Validate pre-drawn noise: ``(batch, frames, z_dim)`` on ``like``'s device, cast to its dtype."""
    if eps is None:
        return None
    if tuple(eps.shape) != (batch, frames, z_dim):
        raise ValueError(f"eps must be (batch, frames, z_dim) = {(batch, frames, z_dim)}, got {tuple(eps.shape)}")
    if eps.device != like.device:
        raise ValueError(f"eps is on {eps.device} but the model input is on {like.device}")
    return eps.to(like.dtype)


def check_dims(owner: str, **lists) -> None:
    """Every layer list holds positive ints (clear error otherwise)."""
    for name, values in lists.items():
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            raise ValueError(f"{owner}.{name} must be a list of layer sizes, got {values!r}")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{owner}.{name} must hold positive integers, got {list(values)!r}")


def check_positive(owner: str, **values) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{owner}.{name} must be a positive integer, got {v!r}")


def validate_common(config) -> None:
    """Checks of the fields every model config shares (``x_dim``, ``z_dim``, ``activation``, ``dropout``)."""
    owner = type(config).__name__
    check_positive(owner, x_dim=config.x_dim, z_dim=config.z_dim)
    make_activation(config.activation)
    if not isinstance(config.dropout, (int, float)) or not 0.0 <= float(config.dropout) < 1.0:
        raise ValueError(f"{owner}.dropout must be in [0, 1), got {config.dropout!r}")
