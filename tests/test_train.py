"""Training: the CLI end to end, exact resume, checkpoints, best weights, early stopping, NaN handling, the
scheduled-sampling and warm-up schedules, a 2-process gloo DDP run, and clear errors for bad options.

Everything runs on tiny models (config overrides) and tiny data: in-memory power tensors for the API tests, a
folder of short synthetic wav files for the CLI tests.
"""

import csv
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import lightdvae.train.loop as loop_mod
from lightdvae.cli import main as cli_main
from lightdvae.models import build
from lightdvae.models.vae import VAE
from lightdvae.resultdir import LOCK_FILE
from lightdvae.runs import load_checkpoint, load_run, read_config, read_status
from lightdvae.train import (
    LOG_COLUMNS,
    LR_FLOOR,
    ConfigError,
    TrainConfig,
    TrainingDiverged,
    kl_warm_at,
    lr_at,
    resume_config,
    ss_prob_at,
    steps_per_epoch,
    train,
)

F = 513
TINY = {
    "vae": {"encoder_dims": [16], "decoder_dims": [16]},
    "dkf": {"x_dims": [16], "rnn_dim": 8, "z_to_g_dims": [8], "posterior_dims": [8], "decoder_dims": [16]},
    "srnn": {
        "h_dims": [16],
        "rnn_h_dim": 8,
        "g_dims": [16],
        "rnn_g_dim": 8,
        "posterior_dims": [8],
        "prior_dims": [8],
        "decoder_dims": [16],
    },
    "light-dvae": {"d_model": 16, "n_heads": 2, "enc_layers": 1, "dec_layers": 1, "ff_dim": 32},
}
REPO = Path(__file__).resolve().parents[1]


def _power(n: int, frames: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.exp(2.0 * torch.randn(n, frames, F, generator=g)) + 1e-6


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models train fastest on one thread, and a busy machine makes several threads much slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    return _power(40, seed=1), _power(12, seed=2)


def _cfg(tmp_path, model="vae", name="run", **kw) -> TrainConfig:
    values = dict(
        model=model,
        out=str(tmp_path / name),
        model_config=dict(TINY[model]),
        epochs=3,
        batch_size=16,
        seq_len=8,
        kl_warmup_epochs=2,
        quiet=True,
        device="cpu",
    )
    values.update(kw)
    return TrainConfig(**values)


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------------------------
# schedules
# ----------------------------------------------------------------------------------------------------------------
def test_kl_warmup_schedule():
    assert [kl_warm_at(e, 50) for e in (1, 25, 49, 50, 51, 300)] == [0.02, 0.5, 0.98, 1.0, 1.0, 1.0]
    assert kl_warm_at(1, 0) == 1.0


def test_learning_rate_schedules():
    const = TrainConfig(model="vae", out="x", lr=1e-3)
    assert [lr_at(e, const) for e in (1, 100, 300)] == [1e-3] * 3  # the published protocol: no schedule
    warm = TrainConfig(model="vae", out="x", lr=1e-3, lr_warmup=4, epochs=20, lr_schedule="cosine")
    rates = [lr_at(e, warm) for e in range(1, 21)]
    assert rates[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert all(a > b for a, b in zip(rates[3:-1], rates[4:], strict=True))  # decays strictly after the warm-up
    assert rates[-1] == pytest.approx(LR_FLOOR * 1e-3) and lr_at(25, warm) == pytest.approx(LR_FLOOR * 1e-3)
    assert lr_at(12, warm) == pytest.approx(1e-3 * (LR_FLOOR + (1 - LR_FLOOR) / 2))  # half way: the mid value
    for bad, message in (({"lr_schedule": "step"}, "lr_schedule must be one of"), ({"lr_warmup": -1}, "lr_warmup")):
        with pytest.raises(ConfigError, match=message):
            TrainConfig(model="vae", out="x", **bad).validate()
    with pytest.raises(ConfigError, match="shorter than epochs"):
        TrainConfig(model="vae", out="x", epochs=5, lr_warmup=5, lr_schedule="cosine").validate()


def test_learning_rate_schedule_is_logged_and_resumes_exactly(tmp_path, data, monkeypatch):
    kw = dict(lr_warmup=2, lr_schedule="cosine", epochs=4)
    cfg = _cfg(tmp_path, "vae", "full", **kw)
    full = train(cfg, train_dataset=data[0], val_dataset=data[1])
    assert [row["lr"] for row in full.history] == pytest.approx([lr_at(e, cfg) for e in (1, 2, 3, 4)])
    # a kill in epoch 3 (3 steps per epoch), then --resume: the same schedule and the same numbers
    real, calls = loop_mod.train_step, {"n": 0}

    def killed(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop_mod, "train_step", killed)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tmp_path, "vae", "part", **kw), train_dataset=data[0], val_dataset=data[1])
    monkeypatch.setattr(loop_mod, "train_step", real)
    with pytest.raises(ConfigError, match="cosine learning rate decays to epoch 4"):
        resume_config(tmp_path / "part", epochs=6)
    resumed = train(resume_config(tmp_path / "part"), train_dataset=data[0], val_dataset=data[1])
    keys = ("lr", "train_loss", "val_loss")
    assert [[r[k] for k in keys] for r in resumed.history] == [[r[k] for k in keys] for r in full.history]


def test_scheduled_sampling_schedule():
    # SPEC: 0 before epoch 50, rising linearly to 1 at epoch 150
    values = [ss_prob_at(e, 50, 150) for e in (1, 49, 50, 51, 100, 149, 150, 151, 300)]
    assert values == pytest.approx([0.0, 0.0, 0.0, 0.01, 0.5, 0.99, 1.0, 1.0, 1.0])
    assert [ss_prob_at(e, 3, 3) for e in (2, 3, 4)] == [0.0, 1.0, 1.0]


def test_scheduled_sampling_reaches_the_model(tmp_path, data, monkeypatch):
    from lightdvae.models.srnn import SRNN

    seen = []
    original = SRNN.forward

    @functools.wraps(original)
    def spy(self, power, *args, **kwargs):
        if torch.is_grad_enabled():
            seen.append(kwargs.get("ss_prob"))
        return original(self, power, *args, **kwargs)

    monkeypatch.setattr(SRNN, "forward", spy)
    result = train(
        _cfg(tmp_path, "srnn", training="ss", ss_start=1, ss_end=3, epochs=4),
        train_dataset=data[0],
        val_dataset=data[1],
    )
    steps = len(seen) // 4
    assert [seen[i * steps] for i in range(4)] == [0.0, 0.5, 1.0, 1.0]
    assert [r["ss_prob"] for r in result.history] == [0.0, 0.5, 1.0, 1.0]
    # The scheduled-sampling SRNN is the published one: its prior sees the model's own past.
    assert result.model.config.prior_on_own_past is True


def test_teacher_forced_srnn_is_the_classic_one(tmp_path, data):
    result = train(_cfg(tmp_path, "srnn", epochs=1), train_dataset=data[0], val_dataset=data[1])
    assert result.model.config.prior_on_own_past is False
    forced = train(
        _cfg(tmp_path, "srnn", name="forced", training="ss", epochs=1, model_config={"prior_on_own_past": False}),
        train_dataset=data[0],
        val_dataset=data[1],
    )
    assert forced.model.config.prior_on_own_past is False


# ----------------------------------------------------------------------------------------------------------------
# API runs, checkpoints, resume
# ----------------------------------------------------------------------------------------------------------------
def test_run_directory_and_checkpoint_round_trip(tmp_path, data):
    result = train(_cfg(tmp_path, "light-dvae"), train_dataset=data[0], val_dataset=data[1])
    run = Path(result.run_dir)
    assert result.stop_reason == "finished" and result.epochs == 3
    meta = read_config(run)
    assert meta["model"] == "light-dvae" and meta["config"]["d_model"] == 16
    assert meta["training"]["lr"] == 1e-3 and meta["training"]["beta"] == 1e-2 and "torch" in meta["versions"]
    assert meta["data"]["train_segments"] == 40 and meta["data"]["val_segments"] == 12
    lines = (run / "log.csv").read_text().splitlines()
    assert lines[0].split(",") == list(LOG_COLUMNS) and len(lines) == 4
    assert read_status(run)["state"] == "finished"
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert {"model", "model_name", "config", "optimizer", "epoch", "rng", "early_stopping", "best_val_loss"} <= set(
        last
    )
    assert last["epoch"] == 3 and {"torch", "numpy", "python", "cuda"} <= set(last["rng"][0])
    assert not list(run.rglob("*.tmp"))
    # round trip: the loaded best model computes the same loss as the returned one
    model = load_run(run)
    assert not model.training
    torch.manual_seed(0)
    expected = result.model.loss(data[1][:4], sample=False).loss
    assert torch.equal(model.loss(data[1][:4], sample=False).loss, expected)
    assert _same_state(load_run(run, which="last").state_dict(), last["model"])


def test_resume_continues_exactly(tmp_path, data):
    kw = dict(training="ss", ss_start=1, ss_end=3)
    full = train(_cfg(tmp_path, "srnn", "full", epochs=3, **kw), train_dataset=data[0], val_dataset=data[1])
    part = train(_cfg(tmp_path, "srnn", "part", epochs=2, **kw), train_dataset=data[0], val_dataset=data[1])
    assert part.epochs == 2
    resumed = train(resume_config(tmp_path / "part", epochs=3), train_dataset=data[0], val_dataset=data[1])
    keys = ("train_loss", "train_recon", "train_kl", "val_loss", "ss_prob", "kl_warm", "best")
    for a, b in zip(full.history, resumed.history, strict=True):
        assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "part" / "checkpoints" / "last.pt")
    assert _same_state(a["model"], b["model"])
    assert _same_state(a["optimizer"]["state"][0], b["optimizer"]["state"][0])
    assert len(read_config(tmp_path / "part")["resumed"]) == 1
    # the next step after the checkpoint: the same batch loss as the uninterrupted run's model
    nxt = train(resume_config(tmp_path / "part", epochs=4), train_dataset=data[0], val_dataset=data[1])
    again = train(resume_config(tmp_path / "full", epochs=4), train_dataset=data[0], val_dataset=data[1])
    assert nxt.history[-1]["train_loss"] == again.history[-1]["train_loss"]
    # already done: nothing to run
    done = train(resume_config(tmp_path / "full", epochs=4), train_dataset=data[0], val_dataset=data[1])
    assert done.epochs == 4 and len(done.history) == 4


def test_resume_a_checkpoint_saved_before_an_option_existed(tmp_path, data):
    """A run saved before a model option was added (its key absent from the saved configs) resumes with the
    option at its default; asking for another configuration names what differs."""
    from lightdvae.runs.layout import save_checkpoint

    train(_cfg(tmp_path, "light-dvae", "old", epochs=1), train_dataset=data[0], val_dataset=data[1])
    run = tmp_path / "old"
    last = run / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(last)
    for key in ("norm_first", "past_encoder", "positions"):
        del ckpt["config"][key]
    save_checkpoint(last, ckpt)
    meta = json.loads((run / "config.json").read_text())
    for key in ("norm_first", "past_encoder", "positions"):
        del meta["config"][key]
    (run / "config.json").write_text(json.dumps(meta))
    resumed = train(resume_config(run, epochs=2), train_dataset=data[0], val_dataset=data[1])
    assert resumed.epochs == 2 and len(resumed.history) == 2
    other = _cfg(tmp_path, "light-dvae", "old", epochs=3, resume=True)
    other.model_config["norm_first"] = True
    with pytest.raises(ConfigError, match="norm_first: False -> True"):
        train(other, train_dataset=data[0], val_dataset=data[1])


def test_best_weights_are_a_copy(tmp_path, data, monkeypatch):
    """The best epoch's weights survive later updates (a copy, not references to the live tensors)."""
    snapshots = []
    real = loop_mod.validate

    def fake(model, *args, **kwargs):
        terms, has_w = real(model, *args, **kwargs)
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        terms["loss"] = float(len(snapshots))  # epoch 1 is the best, later epochs get worse
        return terms, has_w

    monkeypatch.setattr(loop_mod, "validate", fake)
    result = train(_cfg(tmp_path, kl_warmup_epochs=0, patience=10), train_dataset=data[0], val_dataset=data[1])
    assert result.best_epoch == 1 and [r["best"] for r in result.history] == [True, False, False]
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert best["epoch"] == 1 and last["epoch"] == 3
    assert _same_state(best["model"], snapshots[0])
    assert _same_state(result.model.state_dict(), snapshots[0])
    assert not _same_state(best["model"], last["model"])


@pytest.mark.parametrize("warmup,expected_stop", [(0, 3), (3, 5)])
def test_early_stopping_counts_only_after_warmup(tmp_path, data, monkeypatch, warmup, expected_stop):
    real = loop_mod.validate

    def flat(*args, **kwargs):
        terms, has_w = real(*args, **kwargs)
        terms["loss"] = 1.0  # never improves
        return terms, has_w

    monkeypatch.setattr(loop_mod, "validate", flat)
    cfg = _cfg(tmp_path, epochs=20, patience=2, kl_warmup_epochs=warmup)
    result = train(cfg, train_dataset=data[0], val_dataset=data[1])
    assert result.stop_reason == "early_stopped" and result.epochs == expected_stop
    assert result.best_epoch == max(1, warmup)
    assert read_status(cfg.out)["state"] == "early_stopped"
    again = train(resume_config(cfg.out), train_dataset=data[0], val_dataset=data[1])
    assert again.stop_reason == "early_stopped" and again.epochs == expected_stop


def test_time_limit_stops_at_an_epoch_boundary(tmp_path, data):
    cfg = _cfg(tmp_path, epochs=5, max_minutes=1e-6)
    result = train(cfg, train_dataset=data[0], val_dataset=data[1])
    assert result.stop_reason == "time_limit" and result.epochs == 1
    assert load_checkpoint(Path(cfg.out) / "checkpoints" / "last.pt")["epoch"] == 1
    assert read_status(cfg.out)["state"] == "time_limit"
    more = train(resume_config(cfg.out, max_minutes=None), train_dataset=data[0], val_dataset=data[1])
    assert more.stop_reason == "finished" and more.epochs == 5


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, data, monkeypatch):
    calls = {"n": 0}
    original = VAE.forward
    steps_per_epoch = 3  # 40 segments, batch 16

    def poisoned(self, power, *args, **kwargs):
        out = original(self, power, *args, **kwargs)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == steps_per_epoch + 2:  # epoch 2, step 2
                out.logvar = out.logvar * float("nan")
        return out

    monkeypatch.setattr(VAE, "forward", poisoned)
    cfg = _cfg(tmp_path)
    with pytest.raises(TrainingDiverged, match="epoch 2, step 2") as info:
        train(cfg, train_dataset=data[0], val_dataset=data[1])
    assert (info.value.epoch, info.value.step) == (2, 2)
    last = load_checkpoint(Path(cfg.out) / "checkpoints" / "last.pt")
    assert last["epoch"] == 1 and all(torch.isfinite(v).all() for v in last["model"].values())
    status = read_status(cfg.out)
    assert status["state"] == "diverged" and status["step"] == 2
    assert len((Path(cfg.out) / "log.csv").read_text().splitlines()) == 2


def test_bf16_autocast_on_cpu(tmp_path, data):
    result = train(_cfg(tmp_path, epochs=1, precision="bf16"), train_dataset=data[0], val_dataset=data[1])
    assert np.isfinite(result.history[0]["val_loss"])


def test_grad_clip_and_dataloader_workers_path(tmp_path, data):
    ds = torch.utils.data.TensorDataset(data[0])
    val = torch.utils.data.TensorDataset(data[1])
    a = train(_cfg(tmp_path, name="a", epochs=2, grad_clip=1.0), train_dataset=ds, val_dataset=val)
    b = train(_cfg(tmp_path, name="b", epochs=2, grad_clip=1.0), train_dataset=data[0], val_dataset=data[1])
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]


# ----------------------------------------------------------------------------------------------------------------
# API errors
# ----------------------------------------------------------------------------------------------------------------
def test_api_errors(tmp_path, data):
    with pytest.raises(ConfigError, match="scheduled sampling"):
        train(_cfg(tmp_path, training="ss"), train_dataset=data[0], val_dataset=data[1])
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        train(_cfg(tmp_path, precision="fp16"), train_dataset=data[0], val_dataset=data[1])
    with pytest.raises(ConfigError, match="unknown model"):
        _cfg(tmp_path).__class__(model="nope", out=str(tmp_path)).validate()
    with pytest.raises(ConfigError, match="has no option"):
        train(_cfg(tmp_path, model_config={"colour": 1}), train_dataset=data[0], val_dataset=data[1])
    with pytest.raises(ConfigError, match="ss_end"):
        _cfg(tmp_path, ss_start=5, ss_end=2).validate()
    with pytest.raises(ConfigError, match="items must be"):
        train(_cfg(tmp_path), train_dataset=torch.rand(4, 8, 100), val_dataset=data[1])
    with pytest.raises(ConfigError, match="not a training run directory"):
        resume_config(tmp_path / "missing")
    train(_cfg(tmp_path, epochs=1), train_dataset=data[0], val_dataset=data[1])
    with pytest.raises(ConfigError, match="cannot change lr"):
        resume_config(tmp_path / "run", lr=0.1)


def test_load_run_errors_and_imported_runs(tmp_path):
    from lightdvae.runs import save_model

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_run(tmp_path / "nothing")
    torch.manual_seed(0)
    model = build("vae", **TINY["vae"])
    save_model(tmp_path / "imported", model, {"kind": "test"})
    loaded = load_run(tmp_path / "imported")
    assert _same_state(loaded.state_dict(), model.state_dict())
    with pytest.raises(FileNotFoundError, match="it has: best"):
        load_run(tmp_path / "imported", which="last")
    with pytest.raises(ValueError, match="which must be"):
        load_run(tmp_path / "imported", which="first")


# ----------------------------------------------------------------------------------------------------------------
# CLI on a folder corpus of wav files
# ----------------------------------------------------------------------------------------------------------------
def _utterance(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    f0 = 100 + 80 * rng.random()
    x = sum(np.sin(2 * np.pi * k * f0 * t + rng.random()) / k for k in range(1, 10))
    x = x * (0.55 - 0.45 * np.cos(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(t.size)
    return (0.4 * x / np.abs(x).max()).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    seed = 0
    for split, n in (("train", 4), ("val", 2), ("test", 1)):
        for i in range(n):
            seed += 1
            path = root / split / f"{split}{i % 2}" / f"u{i}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, _utterance(1.2, seed), 16000, subtype="PCM_16")
    return root


@pytest.mark.parametrize("seq_len,batch_size", [(10, 3), (20, 8), (50, 1)])
def test_steps_per_epoch_is_the_loaders_length(corpus, tmp_path, monkeypatch, seq_len, batch_size):
    from lightdvae.data import make_loaders
    from lightdvae.data.cache import CacheEntry

    cache = tmp_path / "cache"
    loaders = make_loaders(str(corpus), segment_frames=seq_len, batch_size=batch_size, cache_dir=cache)

    def no_loading(*args, **kwargs):
        raise AssertionError("steps_per_epoch read a spectrogram")

    monkeypatch.setattr(CacheEntry, "power", no_loading)  # the counts come from the cache's metadata
    steps = steps_per_epoch(str(corpus), seq_len, batch_size, cache_dir=cache, progress=False)
    assert steps == (len(loaders.train), len(loaders.val)) and steps[0] > 0


def _cli_args(corpus, out, cache, model="vae", *extra):
    sets = [f"--set={k}={json.dumps(v)}" for k, v in TINY[model].items()]
    common = ["--data", str(corpus), "--cache-dir", str(cache), "--seq-len", "10", "--batch-size", "8"]
    return ["train", "--model", model, "--out", str(out), *common, *sets, "--quiet", "--device", "cpu", *extra]


@pytest.mark.parametrize("model", ["vae", "light-dvae"])
def test_cli_end_to_end(corpus, tmp_path, capsys, model):
    out = tmp_path / model
    args = _cli_args(corpus, out, tmp_path / "cache", model, "--epochs", "2", "--kl-warmup", "2", "--json-result")
    assert cli_main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["stop_reason"] == "finished" and summary["epochs"] == 2 and np.isfinite(summary["final_val_loss"])
    meta = read_config(out)
    assert meta["model"] == model and meta["data"]["layout"] == "folder" and meta["training"]["seq_len"] == 10
    assert len((out / "log.csv").read_text().splitlines()) == 3
    assert load_run(out, device="cpu").num_parameters() == meta["parameters"]
    # resume with more epochs from the command line
    assert cli_main(["train", "--resume", str(out), "--epochs", "3", "--quiet"]) == 0
    assert len((out / "log.csv").read_text().splitlines()) == 4


def test_cli_options_map_to_the_config(corpus, tmp_path):
    from lightdvae.cli import build_parser
    from lightdvae.cli.train import config_from_args

    args = _cli_args(corpus, tmp_path / "nr", tmp_path / "cache", "light-dvae", "--inv-s", "--no-residual")
    extra = ["--kl-warmup", "7", "--grad-clip", "5", "--precision", "bf16", "--num-workers", "2", "--max-minutes", "9"]
    extra += ["--lr-warmup", "3", "--lr-schedule", "cosine"]
    cfg = config_from_args(build_parser().parse_args([*args, *extra]))
    assert (cfg.lr_warmup, cfg.lr_schedule) == (3, "cosine")
    assert cfg.model_config == {**TINY["light-dvae"], "inv_s": True, "no_residual": True}
    assert (cfg.seq_len, cfg.batch_size, cfg.kl_warmup_epochs, cfg.grad_clip) == (10, 8, 7, 5.0)
    assert (cfg.precision, cfg.num_workers, cfg.max_minutes, cfg.device, cfg.quiet) == ("bf16", 2, 9.0, "cpu", True)
    # untouched options keep the published defaults
    defaults = config_from_args(build_parser().parse_args(["train", "--model", "srnn", "--out", str(tmp_path / "d")]))
    assert (defaults.lr, defaults.batch_size, defaults.epochs, defaults.beta) == (1e-3, 128, 300, 1e-2)
    assert (defaults.kl_warmup_epochs, defaults.patience, defaults.seq_len, defaults.training) == (50, 30, 50, "tf")
    assert (defaults.ss_start, defaults.ss_end, defaults.data) == (50, 150, "builtin")
    assert (defaults.lr_warmup, defaults.lr_schedule) == (0, "constant")


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--training", "ss"], "scheduled sampling"),
        (["--precision", "fp16"], "fp16 needs a CUDA GPU"),
        (["--inv-s"], "ablations of hit-dvae and light-dvae"),
        (["--set", "nonsense"], "KEY=VALUE"),
        (["--set", "colour=3"], "has no option"),
        (["--epochs", "0"], "epochs must be an integer >= 1"),
        (["--batch-size", "0"], "--batch-size must be"),
        (["--lr", "-1"], "lr must be"),
        (["--lr-warmup", "-2"], "--lr-warmup must be"),
        (["--device", "tpu"], "device must be"),
    ],
)
def test_cli_bad_flags_are_clear_errors(corpus, tmp_path, capsys, extra, message):
    assert cli_main(_cli_args(corpus, tmp_path / "bad", tmp_path / "cache", "vae", *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_cli_run_directory_protection(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = _cli_args(corpus, out, tmp_path / "cache", "vae", "--epochs", "1")
    assert cli_main(args) == 2
    assert "not empty" in capsys.readouterr().err
    assert cli_main([*args, "--force"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "checkpoints" / "best.pt").is_file()
    assert cli_main(["train", "--resume", str(out), "--lr", "0.1"]) == 2
    assert "cannot be given with --resume" in capsys.readouterr().err
    assert cli_main(["train", "--resume", str(tmp_path / "none")]) == 2
    assert "not a training run directory" in capsys.readouterr().err
    assert cli_main(["train", "--out", str(tmp_path / "x")]) == 2
    assert "--model is required" in capsys.readouterr().err


def test_cli_nan_exit_code(corpus, tmp_path, capsys, monkeypatch):
    original = VAE.forward

    def poisoned(self, power, *args, **kwargs):
        out = original(self, power, *args, **kwargs)
        out.logvar = out.logvar * float("nan")
        return out

    monkeypatch.setattr(VAE, "forward", poisoned)
    assert cli_main(_cli_args(corpus, tmp_path / "nan", tmp_path / "cache", "vae", "--epochs", "2")) == 3
    err = capsys.readouterr().err
    assert "diverged" in err and "epoch 1, step 1" in err and "no checkpoint was saved yet" in err


# ----------------------------------------------------------------------------------------------------------------
# torch.distributed: 2 CPU processes with gloo under torchrun
# ----------------------------------------------------------------------------------------------------------------
def test_ddp_two_processes_gloo(corpus, tmp_path):
    out = tmp_path / "ddp"
    args = _cli_args(corpus, out, tmp_path / "cache", "light-dvae", "--epochs", "2", "--kl-warmup", "2")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LIGHTDVAE_QUIET_FALLBACK": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "lightdvae"]
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    meta = read_config(out)
    assert meta["distributed"] == {"world_size": 2, "backend": "gloo", "local_batch": 4}
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    assert len(last["rng"]) == 2 and last["epoch"] == 2
    assert all(np.isfinite(r["val_loss"]) for r in last["history"])
    assert sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE) == [
        "checkpoints",
        "config.json",
        "log.csv",
        "status.json",
    ]
    assert read_status(out)["state"] == "finished"
    # resume under torchrun: every process restores its own random state
    resume = ["train", "--resume", str(out), "--epochs", "3", "--quiet"]
    proc = subprocess.run([*cmd, *resume], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "reseeded" not in proc.stderr
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    assert last["epoch"] == 3 and [r["epoch"] for r in last["history"]] == [1, 2, 3]


def test_interrupt_marks_the_run_and_resume_continues(tmp_path, data, monkeypatch):
    real = loop_mod.train_step
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # epoch 2 (3 steps per epoch)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop_mod, "train_step", interrupted)
    cfg = _cfg(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, train_dataset=data[0], val_dataset=data[1])
    assert read_status(cfg.out)["state"] == "interrupted" and read_status(cfg.out)["epoch"] == 1
    monkeypatch.setattr(loop_mod, "train_step", real)
    result = train(resume_config(cfg.out), train_dataset=data[0], val_dataset=data[1])
    assert result.epochs == 3 and [r["epoch"] for r in result.history] == [1, 2, 3]


def test_learning_curve_option_logs_si_sdr_and_trains_the_same(corpus, tmp_path):
    """--curve-every writes the GEN / GT SI-SDR of fixed validation utterances into log.csv, at every N-th epoch and
    the last, and does not touch the training: the weights equal those of the same run without it."""
    plain, curve = tmp_path / "plain", tmp_path / "curve"
    extra = ("--epochs", "3", "--kl-warmup", "1", "--threads", "1")
    assert cli_main(_cli_args(corpus, plain, tmp_path / "cache", "srnn", *extra)) == 0
    assert cli_main(_cli_args(corpus, curve, tmp_path / "cache", "srnn", *extra, "--curve-every", "2")) == 0
    rows = list(csv.DictReader((curve / "log.csv").open()))
    assert [bool(r["val_si_sdr_gen"]) for r in rows] == [False, True, True]  # epoch 2 and the last
    for r in rows[1:]:
        assert np.isfinite(float(r["val_si_sdr_gen"])) and np.isfinite(float(r["val_si_sdr_gt"]))
    assert all(not r["val_si_sdr_gen"] for r in csv.DictReader((plain / "log.csv").open()))
    a, b = load_checkpoint(plain / "checkpoints" / "last.pt"), load_checkpoint(curve / "checkpoints" / "last.pt")
    assert _same_state(a["model"], b["model"])
    # the option may be switched on when resuming (it changes nothing of the training)
    assert cli_main(["train", "--resume", str(plain), "--epochs", "4", "--curve-every", "1", "--quiet"]) == 0
    assert list(csv.DictReader((plain / "log.csv").open()))[-1]["val_si_sdr_gt"]


def test_learning_curve_needs_the_corpus(tmp_path, data):
    with pytest.raises(ConfigError, match="curve_every needs the corpus"):
        train(_cfg(tmp_path, curve_every=1), train_dataset=data[0], val_dataset=data[1])


def test_learning_curve_figure_from_log_rows(corpus, tmp_path):
    """scripts/learning_curves.py's figure from real log.csv rows (with and without SI-SDR points)."""
    pytest.importorskip("matplotlib")
    from lightdvae.figures import learning_curves, save_figure
    from lightdvae.runs import read_log

    run = tmp_path / "run"
    args = _cli_args(corpus, run, tmp_path / "cache", "vae", "--epochs", "3", "--curve-every", "2")
    assert cli_main(args) == 0
    rows = read_log(run)
    assert [isinstance(r["val_si_sdr_gen"], float) for r in rows] == [False, True, True]
    path = save_figure(
        learning_curves({"VAE": rows, "no curve": [dict(r, val_si_sdr_gen="") for r in rows]}), tmp_path / "curves.png"
    )
    assert path.stat().st_size > 10_000


def test_budget_schedule_follows_the_share_of_time_spent(tmp_path, data, monkeypatch):
    """The schedules follow the budget: a fake clock makes every epoch last 1 s, so a 5 s budget trains 5 epochs
    whatever the plan (2), and the KL warm-up (1 planned epoch) ends when the time spent says so."""
    clock = {"t": 0.0}

    def tick():
        clock["t"] += 1.0
        return clock["t"]

    monkeypatch.setattr(loop_mod.time, "perf_counter", tick)
    cfg = _cfg(tmp_path, epochs=2, kl_warmup_epochs=1, max_minutes=5 / 60, budget_schedule=True)
    result = train(cfg, train_dataset=data[0], val_dataset=data[1])
    assert [r["seconds"] for r in result.history] == [1.0] * 5 and result.stop_reason == "time_limit"
    # epoch k stands at 2 * (k - 1 + 1) / 5 of the plan: 0, 0.8, then past the 1-epoch warm-up
    assert [r["kl_warm"] for r in result.history] == pytest.approx([0.0, 0.8, 1.0, 1.0, 1.0])
    assert read_status(cfg.out)["state"] == "time_limit"
    # a resume with a larger budget goes on from the log's time; the same budget has nothing left to do
    assert train(resume_config(cfg.out), train_dataset=data[0], val_dataset=data[1]).epochs == 5
    more = train(resume_config(cfg.out, max_minutes=7 / 60), train_dataset=data[0], val_dataset=data[1])
    assert more.epochs == 7
    with pytest.raises(ConfigError, match="give max_minutes"):
        _cfg(tmp_path, budget_schedule=True).validate()


_FAULT_PROBE = """
import resource
import torch
from lightdvae.runtime import keep_freed_memory
kept = keep_freed_memory()
def round_():  # a training step's pattern: many large tensors written, then all freed at once
    tensors = [torch.ones(2 << 20) for _ in range(10)]  # 10 x 8 MiB
    del tensors
for _ in range(3):
    round_()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    round_()
print(kept, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_kept_memory_spares_the_page_faults_of_every_step():
    """runtime.keep_freed_memory (issue #17): kept, rounds of 80 MiB of tensors freed at once fault no page in again
    (glibc's defaults hand them back to the system: ~20,000 minor faults a round in a plain process).
    LIGHTDVAE_MALLOC=system and the user's own MALLOC_TOP_PAD_ leave malloc alone; another value is one clear
    error."""
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("the C library is not glibc")

    def probe(**env):
        run_env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LIGHTDVAE_MALLOC"}
        out = subprocess.run(
            [sys.executable, "-c", _FAULT_PROBE], env={**run_env, **env}, capture_output=True, text=True, check=True
        )
        kept, faults = out.stdout.split()
        return kept == "True", float(faults)

    kept, faults = probe()
    assert kept and faults < 500
    # glibc's own heuristics decide the faults without it (~20,000 a round here, none where a small block happens
    # to sit above the large ones in the heap): only that it is left alone is certain
    for env in ({"LIGHTDVAE_MALLOC": "system"}, {"MALLOC_TOP_PAD_": "0"}):
        kept, faults = probe(**env)
        assert not kept, env
    bad = subprocess.run(
        [sys.executable, "-c", "from lightdvae.runtime import keep_freed_memory; keep_freed_memory()"],
        env={**os.environ, "LIGHTDVAE_MALLOC": "keepp"},
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "LIGHTDVAE_MALLOC='keepp' is not one of keep, system" in bad.stderr


def test_training_keeps_freed_memory(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(loop_mod, "keep_freed_memory", lambda: calls.append(True) or True)
    train(_cfg(tmp_path, epochs=1))
    assert calls == [True]


def test_training_flushes_denormals_and_restores_the_default(tmp_path, monkeypatch):
    """lightdvae.train runs its steps with denormals flushed to zero (the RVAE's LSTM backward is ~5x slower on
    denormal gradients, issue #17) and leaves the process's default behind it."""
    import torch

    calls = []
    real = torch.set_flush_denormal
    monkeypatch.setattr(torch, "set_flush_denormal", lambda mode: calls.append(mode) or real(mode))
    train(_cfg(tmp_path, epochs=1))
    assert calls == [True, False]
