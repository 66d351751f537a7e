"""The inference networks of DKF, RVAE and SRNN with one copy of the weights per utterance, run for a whole batch.

Every inference weight is a stacked ``(batch, *shape)`` tensor (:class:`~lightdvae.enhance.inference.InferenceEngine`).
A pass has two parts:

- The speech features (the encoders' LSTMs over the mixture, which do not see z): the model's own
  ``encode_speech`` for each utterance with its own copy, on its own frames (:func:`features`), so a backward
  LSTM starts at the utterance's last frame whatever the padding.  Each call is one ``nn.LSTM`` over the whole
  sequence: native (oneDNN on the CPU), its weights in cache, faster than any loop of batched products over the
  copies (measured: 7 ms per utterance with gradients at batch 1 against 14 ms per utterance for a loop of
  ``bmm`` at batch 16, on one thread).
- The sequential posterior (z_t depends on z_{t-1}): one loop over frames for the whole batch, each Linear a
  batched product with the utterances' own weights (``torch.baddbmm``): what a native loop runs one step at a
  time, amortised over the batch.  Padded frames come after an utterance's own and a forward recurrence never
  reads a later frame, so padding changes no real frame.

The decoders and priors are not here: the engine reaches them through the models' own methods (frozen, shared by
the batch).

Gradients (:class:`Tape`): inside the loop every Linear uses its weights detached, so autograd records no
per-frame weight gradient (with per-utterance weights each frame would otherwise allocate and accumulate a
``(batch, out, in)`` gradient: 1M numbers a frame for RVAE's 128-unit z LSTM at batch 16).  Instead each loop
layer adds a zero "probe" ``(batch, frames, out)`` to its output: the gradient of the loss with respect to the
probe is that with respect to the layer's output, ``dY``, and after the backward pass the weight gradient of all
frames is one product ``dY^T X`` with the layer's recorded inputs ``X``.  The gradients equal autograd's through
the models' own ``forward`` (tests/test_enhance.py checks it in float64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightdvae.models.dkf import DKF
from lightdvae.models.layers import shift_right
from lightdvae.models.rvae import RVAE
from lightdvae.models.srnn import SRNN

__all__ = ["Tape", "LoopLinear", "features", "lstm_update", "posterior_pass", "decode_pass"]

Params = dict[str, Tensor]


class Tape:
    """The loop layers of one posterior pass with gradients, and the gradients of a loss for the stacked leaves."""

    def __init__(self) -> None:
        self.layers: list[LoopLinear] = []

    def gradients(self, loss: Tensor, params: list[Tensor]) -> list[Tensor]:
        """``d loss / d params`` (one tensor per leaf, zeros where unused): autograd for everything outside the loops
        and the loops' activations, the probes' products for the loop layers' weights."""
        probes = [layer.probe for layer in self.layers]
        found = torch.autograd.grad(loss, params + probes, allow_unused=True)
        grads = list(found[: len(params)])
        weights, weight_grads = [], []
        with torch.no_grad():
            for layer, dy in zip(self.layers, found[len(params) :], strict=True):
                if dy is None:
                    continue
                for weight, inputs in zip(layer.weights, layer.inputs, strict=True):
                    weights.append(weight)
                    weight_grads.append(torch.bmm(dy.transpose(1, 2), torch.cat(inputs, 1)))
        if weights:
            more = torch.autograd.grad(weights, params, weight_grads, allow_unused=True)
            grads = [a if b is None else b if a is None else a + b for a, b in zip(grads, more, strict=True)]
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


class LoopLinear:
    """``y_t = add_t + sum_j x_{j,t} W_j^T`` for one frame ``t`` at a time, each utterance with its own weights.

    Args:
        weights: ``W_j``, each ``(batch, out, in_j)`` (with its autograd graph to the stacked leaves when ``tape``).
        add: ``(batch, frames, out)`` per frame (pre-activations computed outside the loop), or ``(batch, out)``
            (a bias).
        frames: the loop's length.
        tape: where the layer registers its probe (None: no gradients).

    Called as ``layer(t, x_0, x_1, ...)`` with each ``x_j (batch, 1, in_j)``; returns ``(batch, 1, out)``.
    """

    def __init__(self, weights: list[Tensor], add: Tensor, frames: int, tape: Tape | None):
        self.weights = weights
        self._transposed = [w.detach().transpose(1, 2) for w in weights]
        add = add.unsqueeze(1) if add.dim() == 2 else add
        self.inputs: list[list[Tensor]] = [[] for _ in weights]
        self.probe = None
        if tape is not None:
            self.probe = add.new_zeros(add.shape[0], frames, add.shape[-1], requires_grad=True)
            add = add + self.probe
            tape.layers.append(self)
        self._adds = add.unsqueeze(2).unbind(1) if add.shape[1] > 1 or frames == 1 else [add] * frames

    def __call__(self, t: int, *xs: Tensor) -> Tensor:
        y = self._adds[t]
        for x, w, seen in zip(xs, self._transposed, self.inputs, strict=True):
            if self.probe is not None:
                seen.append(x)
            y = torch.baddbmm(y, x, w)
        return y


def features(call, lengths: list[int], method: str, *inputs: Tensor) -> Tensor:
    """The model's own ``method`` (an encoder over whole sequences: its LSTMs run as ``nn.LSTM`` runs them) for each
    utterance with its own copy of the weights, on its own frames: ``call(method, *rows, copy=i)``; stacked
    ``(batch, frames, d)``, zeros on padded frames."""
    frames = inputs[0].shape[1]
    rows = []
    for i, n in enumerate(lengths):
        out = call(method, *(x[i : i + 1, :n] for x in inputs), copy=i)[0]
        rows.append(F.pad(out, (0, 0, 0, frames - n)) if n < frames else out)
    return torch.stack(rows)


def lstm_update(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """One LSTM step from the pre-activations ``gates (..., 4 hidden)`` (PyTorch's order i, f, g, o) and the cell
    ``c``: ``(h, c)``."""
    i, f, g, o = gates.chunk(4, -1)
    c = torch.addcmul(torch.sigmoid(f) * c, torch.sigmoid(i), torch.tanh(g))
    return torch.sigmoid(o) * torch.tanh(c), c


def _loop_mlp(params: Params, prefix: str, mlp: nn.Module, frames: int, tape: Tape | None) -> list[LoopLinear]:
    """The Linear layers of the :class:`~lightdvae.models.layers.MLP` ``prefix`` as loop layers."""
    return [
        LoopLinear([params[f"{prefix}.layers.{k}.weight"]], params[f"{prefix}.layers.{k}.bias"], frames, tape)
        for k in range(len(mlp.layers))
    ]


def _posterior_layers(
    params: Params, mlp: nn.Module, features: Tensor | None, frames: int, tape: Tape | None
) -> list[LoopLinear]:
    """The posterior MLP's layers then the two heads (fused: ``[mean ; logvar]``) as loop layers.  With ``features
    (batch, frames, d)``, the first layer's input is ``[features_t ; x_t]``: its features part is computed for all
    frames at once, the loop applies the rest to ``x_t``."""

    def weight_bias(k: int) -> tuple[Tensor, Tensor]:
        if k < len(mlp.layers):
            return params[f"posterior_mlp.layers.{k}.weight"], params[f"posterior_mlp.layers.{k}.bias"]
        w = torch.cat([params["posterior_mean.weight"], params["posterior_logvar.weight"]], 1)
        return w, torch.cat([params["posterior_mean.bias"], params["posterior_logvar.bias"]], 1)

    layers = []
    for k in range(len(mlp.layers) + 1):
        weight, bias = weight_bias(k)
        if k == 0 and features is not None:
            d = features.shape[-1]
            pre = torch.baddbmm(bias.unsqueeze(1), features, weight[..., :d].mT)
            layers.append(LoopLinear([weight_bias(k)[0][..., d:]], pre, frames, tape))  # its own graph for the tape
        else:
            layers.append(LoopLinear([weight], bias, frames, tape))
    return layers


def _heads(layers: list[LoopLinear], t: int, x: Tensor, act) -> tuple[Tensor, Tensor]:
    for layer in layers[:-1]:
        x = act(layer(t, x))
    return layers[-1](t, x).chunk(2, -1)


def _sample(eps: Tensor, step) -> tuple[Tensor, Tensor, Tensor]:
    """z_1..z_T drawn step by step (z_0 = 0): ``mean, logvar = step(t, z_{t-1})``, ``z_t = mean + exp(logvar/2)
    eps_t``.  ``eps (batch, frames, z_dim)``; returns ``z, mean, logvar``, each ``(batch, frames, z_dim)``."""
    z = eps.new_zeros(eps.shape[0], 1, eps.shape[-1])
    zs, means, logvars = [], [], []
    for t, e in enumerate(eps.unsqueeze(2).unbind(1)):
        mean, logvar = step(t, z)
        z = torch.addcmul(mean, e, torch.exp(0.5 * logvar))
        zs.append(z)
        means.append(mean)
        logvars.append(logvar)
    return torch.cat(zs, 1), torch.cat(means, 1), torch.cat(logvars, 1)


def _dkf(model, params, power, eps, lengths, tape, call):
    c = model.config
    act = torch.tanh if c.activation == "tanh" else torch.relu
    feats = features(call, lengths, "encode_speech", power)
    frames, terms = power.shape[1], 3.0 if c.rnn_bidirectional else 2.0
    z_to_g = _loop_mlp(params, "z_to_g", model.z_to_g, frames, tape)
    heads = _posterior_layers(params, model.posterior_mlp, None, frames, tape)
    gx = feats.unsqueeze(2).unbind(1)

    def step(t: int, z: Tensor) -> tuple[Tensor, Tensor]:
        for layer in z_to_g:
            z = act(layer(t, z))
        return _heads(heads, t, (z + gx[t]) / terms, act)

    z, mean, logvar = _sample(eps, step)
    logvar_x, mean_p, logvar_p = decode_pass(model, power, z, lengths, call)
    return logvar_x, (mean, logvar, mean_p, logvar_p)


def _rvae(model, params, power, eps, lengths, tape, call):
    c = model.config
    act = torch.tanh if c.activation == "tanh" else torch.relu
    feats = features(call, lengths, "encode_speech", power)
    frames = power.shape[1]
    z_embed = _loop_mlp(params, "z_embed", model.z_embed, frames, tape)
    cells = [
        LoopLinear(
            [params[f"rnn_z.weight_ih_l{k}"], params[f"rnn_z.weight_hh_l{k}"]],
            params[f"rnn_z.bias_ih_l{k}"] + params[f"rnn_z.bias_hh_l{k}"],
            frames,
            tape,
        )
        for k in range(c.rnn_z_layers)
    ]
    heads = _posterior_layers(params, model.posterior_mlp, feats, frames, tape)
    state = [[power.new_zeros(power.shape[0], 1, c.rnn_z_dim)] * 2 for _ in cells]

    def step(t: int, z: Tensor) -> tuple[Tensor, Tensor]:
        x = z
        for layer in z_embed:
            x = act(layer(t, x))
        for k, cell in enumerate(cells):  # the z LSTM, layer by layer: (h, c) of layer k in state[k]
            x, state[k][1] = lstm_update(cell(t, x, state[k][0]), state[k][1])
            state[k][0] = x
        return _heads(heads, t, x, act)

    z, mean, logvar = _sample(eps, step)
    return decode_pass(model, power, z, lengths, call)[0], (mean, logvar, None, None)


def _decode_by_length(call, z: Tensor, lengths: list[int]) -> Tensor:
    """RVAE's decoder (its LSTM may run backward in time) on each utterance's own frames, utterances of one length
    together; zeros on padded frames."""
    if len(set(lengths)) == 1:
        return call("decode", z)
    rows: list[Tensor | None] = [None] * len(lengths)
    for n in sorted(set(lengths)):
        members = [i for i, m in enumerate(lengths) if m == n]
        out = F.pad(call("decode", z[members, :n]), (0, 0, 0, z.shape[1] - n))
        for k, i in enumerate(members):
            rows[i] = out[k]
    return torch.stack(rows)


def _srnn(model, params, power, eps, lengths, tape, call):
    c = model.config
    act = torch.tanh if c.activation == "tanh" else torch.relu
    with torch.no_grad():  # the deterministic path is the generative model's: frozen, and it does not see z
        h_true = call("deterministic_h", power)
    feats = features(call, lengths, "encode_speech", power, h_true)
    heads = _posterior_layers(params, model.posterior_mlp, feats, power.shape[1], tape)
    z, mean, logvar = _sample(eps, lambda t, z: _heads(heads, t, z, act))
    logvar_x, mean_p, logvar_p = decode_pass(model, power, z, lengths, call, h_true=h_true)
    return logvar_x, (mean, logvar, mean_p, logvar_p)


def decode_pass(
    model: nn.Module,
    power: Tensor,
    z: Tensor,
    lengths: list[int],
    call,
    h_true: Tensor | None = None,
    prior: bool = True,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The generative half of a DKF, RVAE or SRNN for a sample ``z (batch, frames, z_dim)``: the decoder's
    log-variance ``(batch, frames, x_dim)`` (SRNN's decoder fed its own past) and the prior's statistics of z
    (DKF's transition from z_{t-1}, SRNN's prior network; None for RVAE's N(0, I), and when ``prior`` is False).
    ``call(method, *args)`` runs the model's frozen methods; ``h_true`` is SRNN's true-past h (computed here when
    None)."""
    if isinstance(model, DKF):
        logvar_x = call("decode", z)
        return logvar_x, *(call("transition", shift_right(z, dim=1)) if prior else (None, None))
    if isinstance(model, RVAE):
        return _decode_by_length(call, z, lengths), None, None
    if isinstance(model, SRNN):
        if h_true is None:
            with torch.no_grad():
                h_true = call("deterministic_h", power)
        own = torch.ones(power.shape[1], dtype=torch.bool)
        logvar_x, h_used, h_own = call("decode_own_past", z, h_true, own)
        if not prior:
            return logvar_x, None, None
        h = h_own if model.config.prior_on_own_past else h_used
        return logvar_x, *call("prior", h, shift_right(z, dim=1))
    raise ValueError(f"no decoder pass for {type(model).__name__} (DKF, RVAE and SRNN have one)")


_PASSES = ((DKF, _dkf), (RVAE, _rvae), (SRNN, _srnn))


def posterior_pass(
    model: nn.Module, params: Params, power: Tensor, eps: Tensor, lengths: list[int], tape: Tape | None, call
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor | None, Tensor | None]]:
    """One sample through a DKF, RVAE or SRNN with per-utterance inference weights, as the model's
    ``forward(power, past="gen", eps=eps)`` computes it for each utterance alone (eval mode).

    Args:
        model: the model (its configuration and module sizes; its own inference weights are not used).
        params: the stacked inference parameters, name -> ``(batch, *shape)``.
        power: ``(batch, frames, x_dim)``, zeros after each utterance's ``lengths[i]`` frames.
        eps: the posterior noise ``(batch, frames, z_dim)``.
        tape: a :class:`Tape` for the gradients (None: no gradients are recorded for the loops).
        call: ``call(method, *args)`` runs one of the model's own methods with its frozen (decoder, prior) weights,
            ``call(method, *args, copy=i)`` with utterance ``i``'s copy of the inference weights.

    Returns the decoder's log-variance ``(batch, frames, x_dim)`` and ``(z_mean, z_logvar, z_mean_p, z_logvar_p)``
    ``(batch, frames, z_dim)`` (the prior's None for RVAE's N(0, I)).  Values on padded frames are finite and
    meaningless.
    """
    for family, run in _PASSES:
        if isinstance(model, family):
            return run(model, params, power, eps, lengths, tape, call)
    raise ValueError(f"no batched inference network for {type(model).__name__} (DKF, RVAE and SRNN have one)")
