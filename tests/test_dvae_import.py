"""Importing checkpoints of the DVAE review's code; the golden vectors of the published models.

The fixtures (their VoiceBank checkpoints, config.ini files and golden outputs) are found through
``LIGHTDVAE_DVAE_FIXTURES`` or ``../shared/fixtures/dvae`` next to the repository; without them
the tests that need them skip (a user's clone has no shared/).  Never copy them into the project.
"""

import configparser
import copy
import json
import os
from pathlib import Path

import pytest
import torch

from lightdvae.cli import main as cli_main
from lightdvae.models import build, from_dvae
from lightdvae.models.dvae_import import (
    DVAEImportError,
    convert_state_dict,
    import_dvae,
    load_dvae_checkpoint,
    read_dvae_config,
)
from lightdvae.runs import load_run, save_model

REPO = Path(__file__).resolve().parents[1]


def _fixtures_dir() -> Path | None:
    env = os.environ.get("LIGHTDVAE_DVAE_FIXTURES")
    for candidate in ([Path(env)] if env else []) + [REPO.parent / "shared" / "fixtures" / "dvae"]:
        if (candidate / "README.json").is_file():
            return candidate
    return None


FIXTURES = _fixtures_dir()
needs_fixtures = pytest.mark.skipif(
    FIXTURES is None,
    reason="DVAE fixtures not found: set LIGHTDVAE_DVAE_FIXTURES to the folder holding vb_vae/, vb_dkf/, vb_rvae/, "
    "vb_srnn/ (the project's ../shared/fixtures/dvae)",
)
MODELS = {"vae": "vae", "dkf": "dkf", "rvae": "rvae", "srnn": "srnn"}  # fixture -> our registry name


def _paths(kind):
    folder = FIXTURES / f"vb_{kind}"
    return folder / "checkpoint.pt", folder / "config.ini"


_CACHE: dict = {}


def _imported(kind):
    if kind not in _CACHE:
        _CACHE[kind] = from_dvae(*_paths(kind))
    return _CACHE[kind]


def _golden(kind):
    return torch.load(FIXTURES / f"vb_{kind}" / "golden.pt", map_location="cpu", weights_only=True)


def _rel_err(actual: torch.Tensor, golden: torch.Tensor) -> float:
    """max |actual - golden| relative to the golden tensor's scale (its max |value|; 1 for a zero tensor)."""
    scale = golden.abs().max().item() or 1.0
    return (actual - golden).abs().max().item() / scale


# ----------------------------------------------------------------------------- golden vectors


GOLDEN_CASES = [
    ("vae", "out", "gt"),
    ("dkf", "out", "gt"),
    ("rvae", "out", "gt"),
    ("srnn", "gen", "gen"),
    ("srnn", "gt", "gt"),
]


FIELDS = ["logvar", "z_mean", "z_logvar", "z_mean_p", "z_logvar_p"]
#: The golden vectors come from the authors' float32 code; against the same pass of our model in float64 (the
#: exact value of the computation), their float32 error is measured at up to 6e-5 relative (SRNN GEN feeds
#: exp(logvar) back, which amplifies rounding; 1e-6..5e-6 elsewhere).  A wrong weight mapping is off by > 1e-2
#: (test_golden_bound_catches_a_wrong_mapping), so 1e-3 separates the two on any CPU.
MAPPING_BOUND = 1e-3
#: Our float32 pass may be at most this multiple of the reference's own float32 error (STYLE.md item 8), with a
#: floor of a few float32 roundings for fields that happen to be computed almost exactly by the reference.
PRECISION_FACTOR = 4.0
PRECISION_FLOOR = 8 * torch.finfo(torch.float32).eps


def _outputs(model, power, past, prefix):
    """Our outputs as the golden file lays them out, (frames, batch, ...) per field."""
    with torch.no_grad():
        out = model(power, past=past, sample=False)
    fields = {}
    for f in FIELDS:
        ours = getattr(out, f)
        if ours is None:  # a N(0, I) prior
            ours = torch.zeros_like(out.z_mean)
        fields[f"{prefix}_{f}"] = ours.transpose(0, 1)
    return fields


def _golden_errors(model, kind, prefix, past):
    """Per field: the reference's own float32 error and ours, both against our model run in float64."""
    golden = _golden(kind)
    power = golden["input_power"].transpose(0, 1)  # theirs (frames, batch, F) -> ours (batch, frames, F)
    ours32 = _outputs(model, power, past, prefix)
    ours64 = _outputs(copy.deepcopy(model).double(), power.double(), past, prefix)
    assert set(ours64) <= set(golden)
    ref_err, our_err = {}, {}
    for key, exact in ours64.items():
        assert ours32[key].shape == golden[key].shape == exact.shape
        ref_err[key] = _rel_err(golden[key].double(), exact)
        our_err[key] = _rel_err(ours32[key].double(), exact)
    return ref_err, our_err


@needs_fixtures
@pytest.mark.parametrize("kind, prefix, past", GOLDEN_CASES)
def test_golden_vectors(kind, prefix, past):
    """The imported model computes what the authors' code computes: their float32 outputs are within float32
    rounding of our float64 pass (the weight mapping), and our float32 pass is as accurate as theirs."""
    ref_err, our_err = _golden_errors(_imported(kind), kind, prefix, past)
    print(f"{kind} {prefix}: " + ", ".join(f"{k} ref {ref_err[k]:.1e} ours {our_err[k]:.1e}" for k in ref_err))
    assert max(ref_err.values()) <= MAPPING_BOUND, ref_err
    bound = PRECISION_FACTOR * max(max(ref_err.values()), PRECISION_FLOOR)
    assert max(our_err.values()) <= bound, (our_err, bound)


@needs_fixtures
@pytest.mark.parametrize("kind", ["dkf", "srnn"])
def test_golden_bound_catches_a_wrong_mapping(kind):
    """Two output units of the first layer swapped (what a transposed or misordered weight does) must fail the
    mapping bound by a wide margin."""
    model = copy.deepcopy(_imported(kind))
    weight = next(p for p in model.parameters() if p.dim() == 2)
    with torch.no_grad():
        weight[[0, 1]] = weight[[1, 0]].clone()
    prefix, past = ("gen", "gen") if kind == "srnn" else ("out", "gt")
    ref_err, _ = _golden_errors(model, kind, prefix, past)
    print(f"{kind} with a wrong mapping: {max(ref_err.values()):.1e}")
    assert max(ref_err.values()) > 10 * MAPPING_BOUND


@needs_fixtures
@pytest.mark.parametrize("kind", list(MODELS))
def test_parameter_counts_equal_the_checkpoints(kind):
    state = load_dvae_checkpoint(_paths(kind)[0])
    readme = json.loads((FIXTURES / "README.json").read_text())
    theirs = sum(v.numel() for v in state.values())
    ours = _imported(kind).num_parameters()
    assert ours == theirs == readme["models"][kind]["params"] == build(MODELS[kind]).num_parameters()


@needs_fixtures
def test_read_config_translates_their_options():
    dkf = read_dvae_config(_paths("dkf")[1])
    assert dkf.model == "dkf" and dkf.dvae_name == "DKF"
    assert dkf.config["decoder_dims"] == [32, 64, 128, 256] and dkf.config["rnn_bidirectional"] is False
    assert dkf.config["z_to_g_dims"] == [32] and dkf.config["x_dims"] == [256]
    rvae = read_dvae_config(_paths("rvae")[1])
    assert rvae.model == "rvae" and rvae.config["x_dims"] == [] and rvae.config["causal"] is False
    srnn = read_dvae_config(_paths("srnn")[1])
    assert srnn.config["posterior_dims"] == [64, 32] and srnn.config["prior_on_own_past"] is True
    assert srnn.tag == "SRNN-ss_beta1e-2_ss50-150" and srnn.training["ss_start"] == "50"
    vae = read_dvae_config(_paths("vae")[1])
    assert vae.config["encoder_dims"] == [128] == vae.config["decoder_dims"]


# ----------------------------------------------------------------------------- errors


def _edited_config(tmp_path, kind, **changes) -> Path:
    parser = configparser.ConfigParser()
    parser.read(_paths(kind)[1])
    for option, value in changes.items():
        if value is None:
            parser.remove_option("Network", option)
        else:
            parser.set("Network", option, value)
    path = tmp_path / f"{kind}.ini"
    with open(path, "w") as fh:
        parser.write(fh)
    return path


@needs_fixtures
def test_checkpoint_of_another_model_names_the_keys(tmp_path):
    with pytest.raises(DVAEImportError, match=r"cannot place checkpoint key\(s\) mlp_x_h.linear0.weight"):
        from_dvae(_paths("srnn")[0], _paths("dkf")[1])


@needs_fixtures
def test_shape_mismatch_names_both_shapes(tmp_path):
    config = _edited_config(tmp_path, "vae", dense_x_z="64")
    with pytest.raises(DVAEImportError, match=r"mlp_x_z.linear0.weight is \(128, 513\) .* \(64, 513\)"):
        from_dvae(_paths("vae")[0], config)


@needs_fixtures
def test_missing_tensor_is_named():
    state = load_dvae_checkpoint(_paths("dkf")[0])
    del state["prior_logvar.1.bias"]
    with pytest.raises(DVAEImportError, match=r"lacks parameter\(s\) prior_var.bias \(their prior_logvar.1.bias\)"):
        from_dvae(state, _paths("dkf")[1])


@needs_fixtures
def test_bad_configs_are_named(tmp_path):
    with pytest.raises(DVAEImportError, match="'STORN' is not supported"):
        read_dvae_config(_edited_config(tmp_path, "vae", name="STORN"))
    with pytest.raises(DVAEImportError, match="no option 'dim_RNN_g'"):
        read_dvae_config(_edited_config(tmp_path, "srnn", dim_rnn_g=None))
    with pytest.raises(DVAEImportError, match="dense_gz_z = '64;32' is not a comma-separated list"):
        read_dvae_config(_edited_config(tmp_path, "srnn", dense_gz_z="64;32"))
    with pytest.raises(FileNotFoundError):
        read_dvae_config(tmp_path / "missing.ini")


def test_non_tensor_checkpoint_is_refused():
    with pytest.raises(DVAEImportError, match="non-tensor values"):
        load_dvae_checkpoint({"epoch": 3})
    assert set(load_dvae_checkpoint({"model_state_dict": {"a": torch.zeros(1)}, "epoch": 3})) == {"a"}


# ----------------------------------------------------------------------------- conversions without fixtures


def _rvae_ini(tmp_path, layers=2, dense_g_z="") -> Path:
    text = f"""[Network]
name = RVAE
x_dim = 513
z_dim = 16
activation = tanh
dense_x_gx = 32
dim_RNN_g_x = 8
num_RNN_g_x = {layers}
bidir_g_x = True
dense_z_gz =
dim_RNN_g_z = 8
num_RNN_g_z = 1
dense_g_z = {dense_g_z}
dense_z_h =
dim_RNN_h = 8
num_RNN_h = 1
bidir_h = True
dense_h_x =
dropout_p = 0
"""
    path = tmp_path / "rvae.ini"
    path.write_text(text)
    return path


def _their_rvae_state(info, seed=0) -> dict:
    """A random state dict with the reference code's key names for ``info``'s RVAE."""
    torch.manual_seed(seed)
    ours = build(info.model, **{k: v for k, v in info.config.items() if k != "causal"})
    rename = {
        "x_embed.layers.": "mlp_x_gx.linear",
        "rnn_x.": "rnn_g_x.",
        "rnn_z.": "rnn_g_z.",
        "posterior_mlp.layers.": "mlp_g_z.linear",
        "posterior_mean.": "inf_mean.",
        "posterior_logvar.": "inf_logvar.",
        "rnn_h.": "rnn_h.",
        "decoder_logvar.": "gen_logvar.",
    }
    state = {}
    for key, value in ours.state_dict().items():
        prefix = next(p for p in rename if key.startswith(p))
        state[rename[prefix] + key[len(prefix) :]] = torch.randn_like(value) * 0.3
    return state


@pytest.mark.parametrize("layers, dense_g_z", [(2, ""), (1, "24")])
def test_rvae_reversed_bidirectional_encoder_is_converted_exactly(tmp_path, layers, dense_g_z):
    """Their speech BiLSTM runs on the time-reversed input (output flipped back)."""
    info = read_dvae_config(_rvae_ini(tmp_path, layers, dense_g_z))
    theirs = _their_rvae_state(info)
    model, _ = import_dvae(theirs, _rvae_ini(tmp_path, layers, dense_g_z))
    power = torch.rand(2, 9, 513) * 10
    # their features: flip in time, BiLSTM, flip back -> [their dir 0 ; their dir 1]
    lstm = torch.nn.LSTM(32, 8, layers, bidirectional=True)
    lstm.load_state_dict({k[len("rnn_g_x.") :]: v for k, v in theirs.items() if k.startswith("rnn_g_x.")})
    emb = model.x_embed(power.transpose(0, 1))
    gx_theirs = torch.flip(lstm(torch.flip(emb, [0]))[0], [0]).transpose(0, 1)
    gx_ours = model.encode_speech(power)
    torch.testing.assert_close(gx_ours, torch.cat([gx_theirs[..., 8:], gx_theirs[..., :8]], -1))
    # whatever reads the features sees the same pre-activation
    first = "mlp_g_z.linear0.weight" if dense_g_z else "inf_mean.weight"
    layer = model.posterior_mlp.layers[0] if dense_g_z else model.posterior_mean
    torch.testing.assert_close(gx_ours @ layer.weight[:, :16].T, gx_theirs @ theirs[first][:, :16].T)


def test_rvae_unknown_key_is_named(tmp_path):
    info = read_dvae_config(_rvae_ini(tmp_path, 1))
    theirs = _their_rvae_state(info)
    theirs["rnn_g_x.weight_ih_l5"] = torch.zeros(1)
    with pytest.raises(DVAEImportError, match="rnn_g_x.weight_ih_l5"):
        convert_state_dict(theirs, info, build("rvae", **{k: v for k, v in info.config.items() if k != "causal"}))


# ----------------------------------------------------------------------------- run directories and the CLI


def test_run_dir_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build("rvae-causal", rnn_x_dim=16, rnn_z_dim=8, rnn_h_dim=8)
    save_model(tmp_path / "run", model, {"kind": "test"})
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert meta["model"] == "rvae-causal" and meta["config"]["rnn_x_dim"] == 16 and meta["source"] == {"kind": "test"}
    payload = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    assert set(payload) == {"model", "model_name", "config"}
    loaded = load_run(tmp_path / "run")
    power = torch.rand(1, 4, 513)
    with torch.no_grad():
        torch.testing.assert_close(loaded(power, sample=False).logvar, model(power, sample=False).logvar)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["best.pt"]  # no temp files


@needs_fixtures
@pytest.mark.parametrize("kind", ["vae", "srnn"])
def test_import_dvae_cli_round_trip(tmp_path, capsys, kind):
    checkpoint, config = _paths(kind)
    out = tmp_path / "run"
    assert cli_main(["import-dvae", str(checkpoint), str(config), "--out", str(out)]) == 0
    assert "parameters ->" in capsys.readouterr().out
    meta = json.loads((out / "config.json").read_text())
    assert meta["model"] == MODELS[kind] and meta["source"]["dvae_name"] == kind.upper()
    loaded = load_run(out)
    golden = _golden(kind)
    power = golden["input_power"].transpose(0, 1)
    past = "gen" if kind == "srnn" else "gt"
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(power, past=past, sample=False).logvar,
            _imported(kind)(power, past=past, sample=False).logvar,
            rtol=0,
            atol=0,
        )
    # a second import into the same run needs --force
    assert cli_main(["import-dvae", str(checkpoint), str(config), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert cli_main(["import-dvae", str(checkpoint), str(config), "--out", str(out), "--force"]) == 0


@needs_fixtures
def test_import_dvae_cli_errors(tmp_path, capsys):
    srnn_ckpt, _ = _paths("srnn")
    _, dkf_ini = _paths("dkf")
    assert cli_main(["import-dvae", str(srnn_ckpt), str(dkf_ini), "--out", str(tmp_path / "a")]) == 2
    assert "cannot place checkpoint key" in capsys.readouterr().err
    assert cli_main(["import-dvae", str(tmp_path / "none.pt"), str(dkf_ini), "--out", str(tmp_path / "b")]) == 2
    assert "checkpoint file not found" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@needs_fixtures
def test_import_dvae_cli_set_overrides(tmp_path, capsys):
    checkpoint, config = _paths("srnn")
    out = tmp_path / "run"
    args = ["import-dvae", str(checkpoint), str(config), "--out", str(out), "--set", "prior_on_own_past=false"]
    assert cli_main(args) == 0
    assert json.loads((out / "config.json").read_text())["config"]["prior_on_own_past"] is False
    assert cli_main(["import-dvae", str(checkpoint), str(config), "--out", str(out), "--force", "--set", "nope=1"]) == 2
    assert "no option(s) nope" in capsys.readouterr().err
