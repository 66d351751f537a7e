"""Import checkpoints of the DVAE review's code (XiaoyuBIE1994/DVAE and its speech variants).

Their training code saves a plain ``state_dict`` of its model and describes the model in a
``config.ini`` (section ``[Network]``: ``name``, ``x_dim``, ``z_dim``, ``activation``,
``dropout_p``, layer lists such as ``dense_gz_z = 64,32`` where an empty value is the identity,
LSTM sizes ``dim_RNN_*`` / ``num_RNN_*`` and bidirectional flags ``bidir_*``).
:func:`from_dvae` reads both and returns the equivalent lightdvae model (VAE, DKF, RVAE causal or
not, SRNN), with every tensor placed and its shape checked.

Two facts of their code that the conversion accounts for:

- RVAE runs its speech LSTM on the time-reversed sequence and flips the output back, also when
  the LSTM is bidirectional; so their "forward" direction is our backward one and the feature
  halves come in the order ``[backward ; forward]``.  The directions' weights are swapped (and
  the input columns of whatever reads those features are swapped to match), which is exact.
- Their SRNN trained with scheduled sampling (``ss_start`` / ``ss_end`` in ``[Training]``)
  conditions the prior on h from the model's own past predictions; that sets
  ``prior_on_own_past=True`` (False for a config without scheduled sampling).

A converted model is written as a run directory by :func:`lightdvae.runs.save_model` (what ``lightdvae
import-dvae`` does) and read back by :func:`lightdvae.runs.load_run`, like a trained one.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from lightdvae.models.base import DVAE

__all__ = [
    "DVAEImportError",
    "DVAEConfigInfo",
    "convert_state_dict",
    "from_dvae",
    "import_dvae",
    "load_dvae_checkpoint",
    "read_dvae_config",
]

SUPPORTED = ("VAE", "DKF", "RVAE", "SRNN")


class DVAEImportError(ValueError):
    """A checkpoint or config.ini that cannot be converted (the message says which key or option)."""


@dataclass
class DVAEConfigInfo:
    """What :func:`read_dvae_config` found: our model name and config, and their description."""

    model: str  # lightdvae registry name
    config: dict  # lightdvae config values
    dvae_name: str  # their [Network] name
    network: dict = field(default_factory=dict)  # their [Network] section, as read
    training: dict = field(default_factory=dict)  # their [Training] section, as read
    tag: str | None = None


# --------------------------------------------------------------------------------------------
# config.ini
# --------------------------------------------------------------------------------------------


class _Network:
    """Typed access to the ``[Network]`` section with errors that name the option."""

    def __init__(self, section: Mapping[str, str], source: str):
        self.section = section
        self.source = source

    def raw(self, option: str) -> str:
        try:
            return self.section[option.lower()]
        except KeyError:
            raise DVAEImportError(f"{self.source}: [Network] has no option {option!r}") from None

    def int(self, option: str) -> int:
        value = self.raw(option).strip()
        try:
            return int(value)
        except ValueError:
            raise DVAEImportError(f"{self.source}: [Network] {option} = {value!r} is not an integer") from None

    def float(self, option: str, default: float | None = None) -> float:
        if default is not None and option.lower() not in self.section:
            return default
        value = self.raw(option).strip()
        try:
            return float(value)
        except ValueError:
            raise DVAEImportError(f"{self.source}: [Network] {option} = {value!r} is not a number") from None

    def bool(self, option: str) -> bool:
        value = self.raw(option).strip().lower()
        if value in ("1", "yes", "true", "on"):
            return True
        if value in ("0", "no", "false", "off"):
            return False
        raise DVAEImportError(f"{self.source}: [Network] {option} = {value!r} is not a boolean")

    def layers(self, option: str) -> list[int]:
        """A layer list: ``"64,32"`` -> [64, 32]; an empty value -> [] (the identity)."""
        value = self.raw(option).strip()
        if not value:
            return []
        try:
            sizes = [int(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise DVAEImportError(
                f"{self.source}: [Network] {option} = {value!r} is not a comma-separated list of layer sizes"
            ) from None
        if any(s <= 0 for s in sizes):
            raise DVAEImportError(f"{self.source}: [Network] {option} = {value!r} has a non-positive layer size")
        return sizes


def _read_parser(config_ini) -> tuple[configparser.ConfigParser, str]:
    if isinstance(config_ini, configparser.ConfigParser):
        return config_ini, "config"
    parser = configparser.ConfigParser()
    path = Path(config_ini)
    if not path.is_file():
        raise FileNotFoundError(f"DVAE config file not found: {path}")
    try:
        parser.read(path, encoding="utf-8")
    except configparser.Error as exc:
        raise DVAEImportError(f"{path}: not a DVAE config.ini ({exc})") from None
    except UnicodeDecodeError:
        raise DVAEImportError(
            f"{path} is not a text file: the DVAE review's config.ini (the text file beside the checkpoint) was "
            "expected"
        ) from None
    return parser, str(path)


def read_dvae_config(config_ini) -> DVAEConfigInfo:
    """Read their ``config.ini`` (a path or a ``ConfigParser``) into our model name and config.

    Raises :class:`DVAEImportError` for a model we do not implement or a missing / malformed
    option (naming it).
    """
    parser, source = _read_parser(config_ini)
    if not parser.has_section("Network"):
        raise DVAEImportError(f"{source}: no [Network] section; is this a DVAE config.ini?")
    net = _Network(parser["Network"], source)
    dvae_name = net.raw("name").strip()
    kind = dvae_name.upper()
    if kind not in SUPPORTED:
        raise DVAEImportError(
            f"{source}: model {dvae_name!r} is not supported; lightdvae imports {', '.join(SUPPORTED)}"
        )
    training = dict(parser["Training"]) if parser.has_section("Training") else {}
    common = {
        "x_dim": net.int("x_dim"),
        "z_dim": net.int("z_dim"),
        "activation": net.raw("activation").strip().lower(),
        "dropout": net.float("dropout_p", default=0.0),
    }
    if common["activation"] not in ("tanh", "relu"):
        raise DVAEImportError(f"{source}: [Network] activation = {common['activation']!r}; expected tanh or relu")
    if kind == "VAE":
        dense = net.layers("dense_x_z")
        model, config = "vae", {"encoder_dims": dense, "decoder_dims": dense[::-1]}
    elif kind == "DKF":
        model, config = (
            "dkf",
            {
                "x_dims": net.layers("dense_x_gx"),
                "rnn_dim": net.int("dim_RNN_gx"),
                "rnn_layers": net.int("num_RNN_gx"),
                "rnn_bidirectional": net.bool("bidir_gx"),
                "z_to_g_dims": net.layers("dense_ztm1_g"),
                "posterior_dims": net.layers("dense_g_z"),
                "decoder_dims": net.layers("dense_z_x"),
            },
        )
    elif kind == "RVAE":
        bidir_x, bidir_h = net.bool("bidir_g_x"), net.bool("bidir_h")
        causal = not (bidir_x or bidir_h)
        model, config = (
            ("rvae-causal" if causal else "rvae"),
            {
                "causal": causal,
                "x_dims": net.layers("dense_x_gx"),
                "rnn_x_dim": net.int("dim_RNN_g_x"),
                "rnn_x_layers": net.int("num_RNN_g_x"),
                "rnn_x_bidirectional": bidir_x,
                "z_dims": net.layers("dense_z_gz"),
                "rnn_z_dim": net.int("dim_RNN_g_z"),
                "rnn_z_layers": net.int("num_RNN_g_z"),
                "posterior_dims": net.layers("dense_g_z"),
                "h_dims": net.layers("dense_z_h"),
                "rnn_h_dim": net.int("dim_RNN_h"),
                "rnn_h_layers": net.int("num_RNN_h"),
                "rnn_h_bidirectional": bidir_h,
                "decoder_dims": net.layers("dense_h_x"),
            },
        )
    else:  # SRNN
        scheduled = any(k in training for k in ("ss_start", "ss_end"))
        model, config = (
            "srnn",
            {
                "h_dims": net.layers("dense_x_h"),
                "rnn_h_dim": net.int("dim_RNN_h"),
                "rnn_h_layers": net.int("num_RNN_h"),
                "g_dims": net.layers("dense_hx_g"),
                "rnn_g_dim": net.int("dim_RNN_g"),
                "rnn_g_layers": net.int("num_RNN_g"),
                "posterior_dims": net.layers("dense_gz_z"),
                "prior_dims": net.layers("dense_hz_z"),
                "decoder_dims": net.layers("dense_hz_x"),
                "prior_on_own_past": scheduled,
            },
        )
    tag = parser["Network"].get("tag")
    return DVAEConfigInfo(
        model=model,
        config={**common, **config},
        dvae_name=dvae_name,
        network=dict(parser["Network"]),
        training=training,
        tag=tag.strip() if tag else None,
    )


# --------------------------------------------------------------------------------------------
# state dict
# --------------------------------------------------------------------------------------------


def _mlp(theirs: str, ours: str, n: int) -> list[tuple[str, str]]:
    return [(f"{theirs}.linear{i}", f"{ours}.layers.{i}") for i in range(n)]


def _prefix_map(info: DVAEConfigInfo) -> list[tuple[str, str]]:
    """(their module prefix, our module prefix) pairs; a key maps by replacing the prefix."""
    c = info.config
    out_layer = [("gen_logvar", "decoder_logvar"), ("gen_out", "decoder_logvar")]
    if info.model == "vae":
        return [
            *_mlp("mlp_x_z", "encoder", len(c["encoder_dims"])),
            ("inf_mean", "posterior_mean"),
            ("inf_logvar", "posterior_logvar"),
            *_mlp("mlp_z_x", "decoder", len(c["decoder_dims"])),
            *out_layer,
        ]
    if info.model == "dkf":
        return [
            *_mlp("mlp_x_gx", "x_embed", len(c["x_dims"])),
            ("rnn_gx", "rnn_x"),
            *_mlp("mlp_ztm1_g", "z_to_g", len(c["z_to_g_dims"])),
            ("mlp_ztm1_g.linear_last", f"z_to_g.layers.{len(c['z_to_g_dims'])}"),
            *_mlp("mlp_g_z", "posterior_mlp", len(c["posterior_dims"])),
            ("inf_mean", "posterior_mean"),
            ("inf_logvar", "posterior_logvar"),
            ("mlp_gate.linear1", "gate_in"),
            ("mlp_gate.linear2", "gate_out"),
            ("mlp_z_prop.linear1", "proposal_in"),
            ("mlp_z_prop.linear2", "proposal_out"),
            ("prior_mean", "prior_mean"),
            ("prior_logvar.1", "prior_var"),
            *_mlp("mlp_z_x", "decoder", len(c["decoder_dims"])),
            *out_layer,
        ]
    if info.model in ("rvae", "rvae-causal"):
        return [
            *_mlp("mlp_x_gx", "x_embed", len(c["x_dims"])),
            ("rnn_g_x", "rnn_x"),
            *_mlp("mlp_z_gz", "z_embed", len(c["z_dims"])),
            ("rnn_g_z", "rnn_z"),
            *_mlp("mlp_g_z", "posterior_mlp", len(c["posterior_dims"])),
            ("inf_mean", "posterior_mean"),
            ("inf_logvar", "posterior_logvar"),
            *_mlp("mlp_z_h", "h_embed", len(c["h_dims"])),
            ("rnn_h", "rnn_h"),
            *_mlp("mlp_h_x", "decoder", len(c["decoder_dims"])),
            *out_layer,
        ]
    return [  # srnn
        *_mlp("mlp_x_h", "h_embed", len(c["h_dims"])),
        ("rnn_h", "rnn_h"),
        *_mlp("mlp_hx_g", "g_embed", len(c["g_dims"])),
        ("rnn_g", "rnn_g"),
        *_mlp("mlp_gz_z", "posterior_mlp", len(c["posterior_dims"])),
        ("inf_mean", "posterior_mean"),
        ("inf_logvar", "posterior_logvar"),
        *_mlp("mlp_hz_z", "prior_mlp", len(c["prior_dims"])),
        ("prior_mean", "prior_mean"),
        ("prior_logvar", "prior_logvar"),
        *_mlp("mlp_hz_x", "decoder", len(c["decoder_dims"])),
        *out_layer,
    ]


def _map_key(key: str, pairs: list[tuple[str, str]]) -> str | None:
    # the longest matching prefix wins (``mlp_ztm1_g.linear_last`` before ``mlp_ztm1_g.linear0``)
    best = None
    for theirs, ours in pairs:
        if key.startswith(theirs + ".") and (best is None or len(theirs) > len(best[0])):
            best = (theirs, ours)
    if best is None:
        return None
    return best[1] + key[len(best[0]) :]


def _swap_halves(w: Tensor, width: int) -> Tensor:
    """Swap columns ``[0, width)`` and ``[width, 2 width)`` of ``w``; the rest stays."""
    return torch.cat([w[:, width : 2 * width], w[:, :width], w[:, 2 * width :]], dim=1)


def _unflip_rvae_encoder(state: dict[str, Tensor], info: DVAEConfigInfo) -> dict[str, Tensor]:
    """Their RVAE feeds its bidirectional speech LSTM the time-reversed sequence and flips the
    output back: swap the directions, and the feature halves for the next layer and the consumer."""
    c = info.config
    hidden = c["rnn_x_dim"]
    out = dict(state)
    params = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    for layer in range(c["rnn_x_layers"]):
        for p in params:
            fwd, rev = f"rnn_x.{p}_l{layer}", f"rnn_x.{p}_l{layer}_reverse"
            if fwd in state and rev in state:
                out[fwd], out[rev] = state[rev], state[fwd]
        if layer > 0:  # this layer reads the previous one's [dir0 ; dir1] features
            for name in (f"rnn_x.weight_ih_l{layer}", f"rnn_x.weight_ih_l{layer}_reverse"):
                if name in out and out[name].shape[1] == 2 * hidden:
                    out[name] = _swap_halves(out[name], hidden)
    consumers = (
        ["posterior_mlp.layers.0.weight"]
        if c["posterior_dims"]
        else ["posterior_mean.weight", "posterior_logvar.weight"]
    )
    for name in consumers:
        if name in out and out[name].dim() == 2 and out[name].shape[1] >= 2 * hidden:
            out[name] = _swap_halves(out[name], hidden)
    return out


def convert_state_dict(state: Mapping[str, Tensor], info: DVAEConfigInfo, model: DVAE) -> dict[str, Tensor]:
    """Their state dict -> ours for ``model`` (built from ``info``).

    Raises :class:`DVAEImportError` naming every key it cannot place, every parameter of ours that
    the checkpoint does not provide, and every shape that disagrees.
    """
    pairs = _prefix_map(info)
    ours = model.state_dict()
    mapped: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    unplaced = []
    for key, value in state.items():
        target = _map_key(key, pairs)
        if target is None or target not in ours:
            unplaced.append(key)
            continue
        if target in mapped:
            raise DVAEImportError(f"checkpoint keys {origin[target]!r} and {key!r} both map to {target!r}")
        mapped[target] = value
        origin[target] = key
    if unplaced:
        raise DVAEImportError(
            f"cannot place checkpoint key(s) {', '.join(unplaced)} in the {info.dvae_name} model that the config "
            f"describes (a checkpoint of another model or config?)"
        )
    missing = [k for k in ours if k not in mapped]
    if missing:
        names = ", ".join(f"{k} (their {_theirs_for(k, pairs)})" for k in missing)
        raise DVAEImportError(f"the checkpoint lacks parameter(s) {names} that the config implies")
    wrong = [
        f"{origin[k]} is {tuple(v.shape)} but the config gives {k} shape {tuple(ours[k].shape)}"
        for k, v in mapped.items()
        if tuple(v.shape) != tuple(ours[k].shape)
    ]
    if wrong:
        raise DVAEImportError("shape mismatch: " + "; ".join(wrong))
    if info.model == "rvae" and info.config.get("rnn_x_bidirectional"):
        mapped = _unflip_rvae_encoder(mapped, info)
    return {k: v.detach().to(ours[k].dtype).clone() for k, v in mapped.items()}


def _theirs_for(our_key: str, pairs: list[tuple[str, str]]) -> str:
    for theirs, ours in pairs:
        if our_key.startswith(ours + "."):
            return theirs + our_key[len(ours) :]
    return "?"


def load_dvae_checkpoint(checkpoint) -> dict[str, Tensor]:
    """A state dict from a path (loaded on CPU, tensors only) or from a mapping; accepts the usual
    wrappers (``state_dict``, ``model_state_dict``, ``model``)."""
    if isinstance(checkpoint, (str, os.PathLike)):
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"DVAE checkpoint not found: {path}")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle errors, truncated files, non-tensor content
            raise DVAEImportError(f"{path}: cannot read as a PyTorch checkpoint ({exc})") from None
    if not isinstance(checkpoint, Mapping):
        raise DVAEImportError(f"a checkpoint must be a state dict (mapping), got {type(checkpoint).__name__}")
    if checkpoint and not all(isinstance(v, Tensor) for v in checkpoint.values()):
        for wrapper in ("state_dict", "model_state_dict", "model"):
            inner = checkpoint.get(wrapper)
            if isinstance(inner, Mapping) and all(isinstance(v, Tensor) for v in inner.values()):
                return dict(inner)
        raise DVAEImportError("the checkpoint holds non-tensor values and no state_dict / model_state_dict / model")
    return dict(checkpoint)


def import_dvae(checkpoint, config_ini, overrides: Mapping | None = None) -> tuple[DVAE, DVAEConfigInfo]:
    """Like :func:`from_dvae`, also returning what was read from the config."""
    from lightdvae.models import build

    info = read_dvae_config(config_ini)
    if overrides:
        info.config.update(overrides)
    try:
        model = build(info.model, **{k: v for k, v in info.config.items() if k != "causal"})
    except (TypeError, ValueError) as exc:
        raise DVAEImportError(f"the config describes a model lightdvae cannot build: {exc}") from None
    state = load_dvae_checkpoint(checkpoint)
    model.load_state_dict(convert_state_dict(state, info, model))
    return model.eval(), info


def from_dvae(checkpoint, config_ini, overrides: Mapping | None = None) -> DVAE:
    """The lightdvae model equivalent to a DVAE-code checkpoint, in eval mode.

    Args:
        checkpoint: path of their ``.pt`` state dict (loaded on CPU), or the state dict itself.
        config_ini: path of their ``config.ini`` (or a ``configparser.ConfigParser``).
        overrides: lightdvae config values to force (e.g. ``{"prior_on_own_past": False}``).

    Raises :class:`DVAEImportError` (a ``ValueError``) for anything that does not convert, and
    ``FileNotFoundError`` for a missing file.
    """
    return import_dvae(checkpoint, config_ini, overrides)[0]
