"""Experiments (lightdvae.experiments, ``lightdvae demo`` / ``lightdvae reproduce``): budget -> schedule, a whole
tiny experiment end to end with its resumption, and its report (the one of ``lightdvae report``) with the shipped
priors beside the trained models (the findings and the training table on known numbers: tests/test_report.py)."""

import json
from pathlib import Path

import pytest
from helpers import write_corpus

from lightdvae import experiments as X
from lightdvae.cli import main
from lightdvae.experiments import stages

SR = 16000
TINY = {
    "light-dvae": X.Entry(
        "light-dvae",
        "light-dvae",
        dict(d_model=16, n_heads=2, enc_layers=1, dec_layers=1, ff_dim=32, w_dim=4, z_dim=3, dropout=0.0),
        lr=X.TRANSFORMER_LR,
    ),
    "dkf": X.Entry("dkf", "dkf", dict(x_dims=[16], rnn_dim=8, z_to_g_dims=[], posterior_dims=[8], decoder_dims=[16])),
    "srnn-tf": X.Entry(
        "srnn-tf",
        "srnn",
        dict(h_dims=[16], rnn_h_dim=8, g_dims=[16], rnn_g_dim=8, posterior_dims=[8], prior_dims=[8], decoder_dims=[16]),
    ),
}


pytestmark = pytest.mark.usefixtures("private_dirs", "one_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    files = [(split, u) for split, n in (("train", 4), ("val", 2), ("test", 6)) for u in range(n)]
    return write_corpus(
        tmp_path_factory.mktemp("expcorpus") / "tiny",
        [(split, f"spk{u % 2}", u, 1.2 + 0.1 * (u % 3)) for split, u in files],
    )


def test_model_keys_parse_and_bad_keys_are_named():
    assert X.parse_models("all") == X.PAPER_MODELS and len(X.PAPER_MODELS) == 11
    assert X.parse_models("demo") == X.DEMO_MODELS
    assert X.parse_models(" light-dvae, DKF ") == ("light-dvae", "dkf")
    with pytest.raises(X.ExperimentError, match="unknown model key.*lite"):
        X.parse_models("lite,dkf")
    with pytest.raises(X.ExperimentError, match="twice"):
        X.parse_models("dkf,dkf")
    labels = {k: X.ENTRIES[k].label for k in X.PAPER_MODELS}
    assert labels["srnn-ss"] == "SRNN (SS)" and labels["light-inv-s-nr"] == "LigHT-Inv-s-NR"
    assert labels["hit-inv-s"] == "HiT-Inv-s" and labels["srnn-tf"] == "SRNN (TF)"


def test_schedule_scales_with_the_budget():
    e = X.ENTRIES["srnn-ss"]
    s = X.schedule_for_budget(e, minutes=10, steps_per_epoch=50, val_steps=6, step_seconds=0.1)
    # epoch = 0.1 * (50 + 2) + 0.5 = 5.7 s -> 600 / 5.7 = 105 epochs
    assert s["epochs"] == 105 and s["kl_warmup_epochs"] == round(0.3 * 105)
    assert (s["ss_start"], s["ss_end"]) == (round(105 / 6), round(105 / 2))
    tiny = X.schedule_for_budget(X.ENTRIES["dkf"], minutes=0.01, steps_per_epoch=50, val_steps=6, step_seconds=0.1)
    assert tiny["epochs"] == 2 and tiny["kl_warmup_epochs"] == 1 and "ss_start" not in tiny


@pytest.fixture
def tiny_entries(monkeypatch):
    for key, entry in TINY.items():  # every module of lightdvae.experiments reads this one dict
        monkeypatch.setitem(X.ENTRIES, key, entry)


def _experiment(corpus, out, **kw):
    base = dict(
        out=str(out),
        models=("light-dvae", "dkf", "srnn-tf"),
        data=str(corpus),
        minutes_per_model=0.02,
        batch_size=4,
        gen_n=4,
        gen_frames=24,
        fdsd_draws=2,
        device="cpu",
    )
    return X.ExperimentConfig(**{**base, **kw})


def test_tiny_experiment_end_to_end_then_resume_and_refuse_other_settings(corpus, tmp_path, tiny_entries, monkeypatch):
    out = tmp_path / "exp"
    lines = []
    calls = {"eval": 0}
    real_eval = stages.evaluate_all

    def interrupted_eval(*args, **kwargs):
        calls["eval"] += 1
        raise KeyboardInterrupt

    # first session: trained, then interrupted at the evaluation
    monkeypatch.setattr(stages, "evaluate_all", interrupted_eval)
    with pytest.raises(KeyboardInterrupt):
        X.run_experiment(_experiment(corpus, out), say=lines.append)
    state = json.loads((out / X.STATE_FILE).read_text())
    assert set(state["models"]) == {"light-dvae", "dkf", "srnn-tf"}
    epochs = {k: (out / "runs" / k / "log.csv").read_text().count("\n") - 1 for k in state["models"]}
    assert all(e >= 1 for e in epochs.values())
    assert all(state["models"][k]["training"] in ("finished", "time_limit") for k in epochs)

    # second session: resumes at the evaluation, does not train again
    monkeypatch.setattr(stages, "evaluate_all", real_eval)
    result = X.run_experiment(_experiment(corpus, out), say=lines.append)
    assert {k: (out / "runs" / k / "log.csv").read_text().count("\n") - 1 for k in epochs} == epochs
    state = result["state"]
    assert state["sessions"] == 2 and set(state["stages"]) >= {"corpus", "training", "evaluation", "generation"}
    report = Path(result["report"]).read_text()
    table = [line for line in "\n".join(lines).splitlines() if line.startswith("| LigHT-DVAE |")]
    assert table and table[-1] in report  # the results table ends the run on the console
    for text in ("Analysis-resynthesis", "LigHT-DVAE", "DKF", "SRNN (TF)", "FDSD", "## Training", "## Cost"):
        assert text in report, text
    assert "The paper's findings" in report and "SRNN (TF) collapses in GEN" in report
    for key in ("light-dvae", "srnn-tf"):
        assert (out / "runs" / key / "eval" / "test-gt" / "summary.json").is_file()
    assert not (out / "runs" / "dkf" / "eval" / "test-gt").exists()  # DKF does not see past speech
    # each model trained with its own learning rate, and the report says which
    lrs = {k: json.loads((out / "runs" / k / "config.json").read_text())["training"]["lr"] for k in epochs}
    assert lrs == {"light-dvae": X.TRANSFORMER_LR, "dkf": X.BASELINE_LR, "srnn-tf": X.BASELINE_LR}
    assert "lr per model" in report and "| LigHT-DVAE | " in report
    cost = json.loads((out / X.COST_FILE).read_text())
    assert set(cost["light-dvae"]["backends"]) >= {"ref"}
    assert (out / "report" / "figures").is_dir() and any((out / "report" / "figures").glob("*.png"))

    # third session: everything done, nothing recomputed
    monkeypatch.setattr(stages, "evaluate_all", interrupted_eval)
    X.run_experiment(_experiment(corpus, out), say=lines.append)  # would raise if evaluation ran again
    with pytest.raises(X.ExperimentError, match="other settings.*minutes_per_model"):
        X.run_experiment(_experiment(corpus, out, minutes_per_model=0.05), say=lines.append)


def test_learning_rate_per_model_and_override():
    cfg = X.ExperimentConfig(out="x", models=("vae", "light-dvae", "hit-inv-s")).validate()
    assert [cfg.lr_of(k) for k in cfg.models] == [1e-3, 3e-4, 3e-4]
    assert all(X.ENTRIES[k].lr == X.TRANSFORMER_LR for k in X.PAPER_MODELS if "hit" in k or "light" in k)
    assert all(X.ENTRIES[k].lr == X.BASELINE_LR for k in ("vae", "dkf", "rvae", "srnn-tf", "srnn-ss"))
    forced = X.ExperimentConfig(out="x", models=("vae", "light-dvae"), lr=5e-4).validate()
    assert {forced.lr_of(k) for k in forced.models} == {5e-4}
    # the report's training section says which rate each model trained at (from each run's config.json)
    from lightdvae.report.runs_section import lr_text

    def runs(c):
        return [
            {
                "dir": Path(k),
                "meta": {
                    "model": X.ENTRIES[k].model,
                    "config": X.ENTRIES[k].model_config,
                    "training": {"lr": c.lr_of(k)},
                },
            }
            for k in c.models
        ]

    assert lr_text(runs(forced)) == "lr 0.0005" and "1e-3" not in lr_text(runs(cfg))
    assert lr_text(runs(cfg)) == "lr per model, in the table: 0.001 for VAE, 0.0003 for LigHT-DVAE, HiT-Inv-s"
    for bad in (0.0, -1e-3, float("nan"), float("inf"), True, "1e-3"):
        with pytest.raises(X.ExperimentError, match="lr must be"):
            X.ExperimentConfig(out="x", models=("vae",), lr=bad).validate()


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["reproduce", "--models", "vae,nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown model key(s) nope" in capsys.readouterr().err
    assert main(["demo", "--minutes", "0.5", "--no-shipped", "--out", str(tmp_path / "y")]) == 2
    assert "give at least 4 minutes" in capsys.readouterr().err
    assert main(["demo", "--minutes", "4", "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "after the evaluation and the shipped priors: give at least 7 minutes (or --no-shipped)" in err
    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "--lr", "0", "--out", str(tmp_path / "x")])
    assert exc.value.code == 2 and "invalid positive number value: '0'" in capsys.readouterr().err
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "notes.txt").write_text("mine")
    assert main(["reproduce", "--models", "vae", "--out", str(tmp_path / "z")]) == 2
    assert "not an experiment folder" in capsys.readouterr().err
    assert (tmp_path / "z" / "notes.txt").read_text() == "mine"


def test_the_demo_plan_keeps_each_shipped_prior_its_measured_share():
    from lightdvae.cli.demo import AFTER_TRAINING, training_minutes
    from lightdvae.models import SEES_PAST_SPEECH
    from lightdvae.models.shipped import pretrained_card, pretrained_names

    names = pretrained_names()
    assert training_minutes(10.0, 3) == pytest.approx(10.0 - 3 * AFTER_TRAINING["model"] - AFTER_TRAINING["report"])
    kept = 10.0 - training_minutes(10.0, 3, names)
    with_past = sum(pretrained_card(n)["model"] in SEES_PAST_SPEECH for n in names)
    assert kept == pytest.approx(
        3 * AFTER_TRAINING["model"]
        + AFTER_TRAINING["report"]
        + with_past * AFTER_TRAINING["shipped with past"]
        + (len(names) - with_past) * AFTER_TRAINING["shipped"]
    )
    assert AFTER_TRAINING["shipped with past"] > AFTER_TRAINING["shipped"]  # evaluated twice (GEN and GT)


def test_a_missing_metric_package_stops_before_any_training(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pesq" else real(name, *a))
    with pytest.raises(X.ExperimentError, match=r"needs pesq: pip install 'lightdvae\[eval\]'"):
        X.run_experiment(X.ExperimentConfig(out=str(tmp_path / "e"), models=("vae",)), say=lambda s: None)
    assert not (tmp_path / "e" / "runs").exists()


def test_demo_report_shows_shipped_priors_beside_the_trained_models(corpus, tmp_path, tiny_entries, monkeypatch):
    from lightdvae.experiments.shipped import shipped_priors
    from lightdvae.runs import export_pretrained

    base = dict(models=("dkf",), cost=False)
    trained = _experiment(corpus, tmp_path / "first", models=("dkf", "light-dvae"), cost=False)
    first = X.run_experiment(trained, say=lambda s: None)
    first_report = Path(first["report"]).read_text()
    assert "(shipped)" not in first_report
    # the trained LigHT-DVAE's w exchange, computed by the report into its run folder
    assert "## The w exchange" in first_report and "swap-w-light-dvae.png" in first_report
    assert list((tmp_path / "first" / "runs" / "light-dvae" / "swap_w").glob("*/swap_w.json"))
    # `lightdvae report` on the experiment folder shows what the demo's report shows
    site = tmp_path / "site" / "report.md"
    assert main(["report", str(tmp_path / "first"), "--out", str(site)]) == 0
    again = site.read_text()
    for heading in ("## Training", "## The paper's findings", "## Generation", "## The w exchange", "## Cost"):
        assert heading in first_report and heading in again, heading
    assert (site.parent / "figures" / "swap-w-light-dvae.png").is_file()
    # the trained models become shipped priors of this corpus (cards like the package's own)
    folder = tmp_path / "weights"
    card = {"command": "lightdvae train --model dkf ...", "epochs": 3, "best_epoch": 2, "train_minutes": 0.1}
    export_pretrained(tmp_path / "first" / "runs" / "dkf", folder, "tiny-dkf", card)
    export_pretrained(tmp_path / "first" / "runs" / "light-dvae", folder, "tiny-light", card)
    monkeypatch.setenv("LIGHTDVAE_PRETRAINED", str(folder))
    cfg = _experiment(corpus, tmp_path / "demo", shipped=("tiny-dkf", "not-installed", "tiny-light"), **base)
    assert shipped_priors(cfg) == ["tiny-dkf", "tiny-light"]
    assert shipped_priors(_experiment(tmp_path / "another-corpus", tmp_path / "x", shipped=("tiny-dkf",))) == []
    lines = []
    result = X.run_experiment(cfg, say=lines.append)
    report = Path(result["report"]).read_text()
    out = tmp_path / "demo" / "shipped" / "tiny-dkf"
    assert (out / "eval-test-gen" / "summary.json").is_file() and (out / "generate" / "fdsd.json").is_file()
    rows = [line for line in report.splitlines() if line.startswith("| DKF")]
    assert any(r.startswith("| DKF (shipped) |") for r in rows) and any(r.startswith("| DKF |") for r in rows)
    assert (
        "## Shipped priors" in report and "`pretrained:tiny-dkf`" in report and "generation-shipped-tiny-dkf" in report
    )
    assert any("shipped DKF" in line for line in lines)
    # the shipped LigHT-DVAE exchanges the w of two test speakers
    swap = json.loads((tmp_path / "demo" / "shipped" / "tiny-light" / "swap_w" / "swap_w.json").read_text())
    assert swap["kind"] == "lightdvae-swap-w" and "a_with_w_of_b" in swap["check"]
    assert "## The w exchange" in report and "global traits** (a with w of b: w transfer" in report
    assert "swap-w-shipped-tiny-light.png" in report
    # resumed: the shipped priors are not evaluated again
    monkeypatch.setattr("lightdvae.evaluate.evaluate_run", lambda *a, **k: pytest.fail("evaluated again"))
    X.run_experiment(cfg, say=lambda s: None)


def test_threads_follow_the_cores_other_processes_leave_idle(monkeypatch):
    from lightdvae import runtime

    monkeypatch.setattr(runtime, "usable_cpus", lambda: 4)
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 4)
    samples = iter([(100, 400), (150, 500)])  # over the window: 50 of 100 jiffies idle -> 2 of 4 cores
    monkeypatch.setattr(runtime, "_cpu_times", lambda: next(samples))
    assert runtime.idle_cores(window=0) == 2
    busy = iter([(100, 400), (100, 500)])  # nothing idle: still one thread
    monkeypatch.setattr(runtime, "_cpu_times", lambda: next(busy))
    assert runtime.idle_cores(window=0) == 1
    monkeypatch.setattr(runtime, "_cpu_times", lambda: None)  # not measurable (not Linux): every usable CPU
    assert runtime.idle_cores(window=0) == 4


def test_training_says_where_it_stands(tmp_path):
    from lightdvae.train import TrainConfig

    lines = []
    ctx = stages.Context(X.ExperimentConfig(out=str(tmp_path)), None, tmp_path, None, lines.append)
    tcfg = TrainConfig(model="dkf", out=str(tmp_path / "run"), max_minutes=2.0)
    report = stages._epoch_reporter(ctx, "[1/3] DKF", tcfg, every=0.0)
    report({"epoch": 1, "val_loss": 2498.86, "seconds": 14.3})
    report({"epoch": 2, "val_loss": 2113.64, "seconds": 12.8})
    assert lines == [
        "[1/3] DKF: epoch 1, validation loss 2498.9, 14 of 120 s",
        "[1/3] DKF: epoch 2, validation loss 2113.6, 27 of 120 s",
    ]
