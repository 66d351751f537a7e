"""``lightdvae report`` on small hand-written evaluation summaries and FDSD results."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from lightdvae.cli import main
from lightdvae.report import ReportError, build_report, find_results, write_report

DATASET = {"spec": "vb:/data/vb", "name": "voicebank", "layout": "vb", "root": "/data/vb"}


def stats(mean: float, half: float = 0.1, n: int = 10, n_failed: int = 0) -> dict:
    return {
        "n": n,
        "n_failed": n_failed,
        "mean": mean,
        "median": mean + 0.01,
        "std": half,
        "ci_low": mean - half,
        "ci_high": mean + half,
        "ci_half": half,
        "level": 0.95,
        "method": "t-interval",
    }


def summary(
    run: str,
    name: str,
    label: str,
    past: str,
    si_sdr: float,
    pesq_wb: float = 3.0,
    config: dict | None = None,
    created: str = "2026-01-01T00:00:00+00:00",
    failures: dict | None = None,
    sees_past_speech: bool = True,
    dataset: dict = DATASET,
) -> dict:
    return {
        "kind": "lightdvae-eval",
        "format": 1,
        "created": created,
        "run_dir": f"/runs/{run}",
        "checkpoint": {"which": "best", "sha256": run * 4},
        "model": {
            "name": name,
            "label": label,
            "parameters": 1_234_567,
            "config": config or {},
            "sees_past_speech": sees_past_speech,
        },
        "dataset": dataset,
        "split": "test",
        "past": past,
        "metrics": {
            "rmse": stats(0.04 - si_sdr / 1000, 0.002),
            "si_sdr": stats(si_sdr, 0.3, n_failed=0),
            "pesq_wb": stats(pesq_wb, 0.05, n=9 if failures else 10, n_failed=1 if failures else 0),
            "pesq_nb": stats(pesq_wb + 0.3, 0.05),
            "pesq_nb_raw": stats(pesq_wb + 0.2, 0.05),
            "estoi": stats(0.9, 0.01),
        },
        "ci": "95 % Student-t interval of the mean over files",
        "files": {"listed": 10, "evaluated": 10, "seconds_of_audio": 30.0},
        "failures": failures or {},
        "seconds": {"wall": 12.5},
    }


def write(folder: Path, value: dict, name: str = "summary.json") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(value))
    return path


@pytest.fixture
def results(tmp_path) -> Path:
    root = tmp_path / "runs"
    write(root / "light" / "eval" / "test-gen", summary("light", "light-dvae", "LigHT-DVAE", "gen", 11.6))
    write(root / "light" / "eval" / "test-gt", summary("light", "light-dvae", "LigHT-DVAE", "gt", 11.7))
    inv = {"inv_s": True}
    write(root / "inv" / "eval" / "test-gen", summary("inv", "light-dvae", "LigHT-Inv-s", "gen", 3.9, config=inv))
    write(root / "inv" / "eval" / "test-gt", summary("inv", "light-dvae", "LigHT-Inv-s", "gt", 10.9, config=inv))
    failed = {"pesq_wb": [{"name": "p232_001.wav", "reason": "no-utterances"}]}
    write(
        root / "vae" / "eval" / "test-gen",
        summary("vae", "vae", "VAE", "gen", 8.4, pesq_wb=3.24, failures=failed, sees_past_speech=False),
    )
    # an older evaluation of the same run and setting: replaced by the newer one
    old = summary("vae", "vae", "VAE", "gen", -50.0, created="2025-01-01T00:00:00+00:00")
    write(root / "vae" / "eval" / "old", old)
    # the files the report must ignore
    write(root / "light", {"model": "light-dvae", "config": {}}, "config.json")
    write(root / "light" / "checkpoints", {"kind": "lightdvae-eval"}, "junk.json")
    return root


def table_rows(text: str, heading: str) -> list[list[str]]:
    """The body rows (cells stripped) of the first Markdown table after the first line starting with ``heading``."""
    lines = text[text.index(heading) :].splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    table = []
    for ln in lines[start:]:
        if not ln.startswith("|"):
            break
        table.append([c.strip() for c in ln.strip("|").split("|")])
    return table[2:]


def test_main_table_structure_study_and_fdsd_slot(results):
    evals, fdsds = find_results([results])
    assert len(evals) == 5 and fdsds == []  # the older duplicate and the non-summaries are left out
    text = build_report(evals, fdsds)
    print(text)
    assert "corpus **voicebank**, vb layout (`/data/vb`), **test** split: 10 files" in text
    rows = table_rows(text, "### Analysis-resynthesis")
    assert [r[0] for r in rows] == ["VAE", "LigHT-DVAE", "LigHT-Inv-s"]  # the paper's order
    assert [r[2] for r in rows] == ["GEN", "GEN", "GEN"]  # the main table is the GEN setting
    header = text[text.index("| model | params") :].splitlines()[0]
    assert "RMSE ↓" in header and "SI-SDR (dB) ↑" in header and "PESQ-WB ↑" in header and "ESTOI ↑" in header
    light = rows[1]
    assert light[1] == "1.23 M" and light[5] == "**11.60** ± 0.30"  # best SI-SDR in bold, mean ± CI
    assert rows[0][6] == "**3.24** ± 0.05"  # best PESQ-WB
    assert "ITU-T P.862.2 wide-band" in text and "P.862.1 narrow-band" in text and "raw MOS" in text
    assert "95 % Student-t interval" in text
    assert "- VAE: PESQ-WB: 1 (no-utterances: p232_001.wav)" in text
    medians = table_rows(text, "Medians over files:")
    assert medians[1][5] == "11.61"

    study = table_rows(text, "### Structure study")
    assert [r[0] for r in study] == ["LigHT-DVAE", "LigHT-Inv-s"]
    assert study[1][1:4] == ["3.90 ± 0.30", "10.90 ± 0.30", "7.00"]  # Inv-s collapses in GEN only
    assert "_No FDSD results found" in text
    assert "-50" not in text


def test_fdsd_table_with_feature_network_and_floors(results, tmp_path):
    fdsd = {
        "kind": "lightdvae-fdsd",
        "model": {"name": "light-dvae", "label": "LigHT-DVAE"},
        "dataset": {"name": "voicebank", "split": "test"},
        "feature_network": "lightdvae-ds2-small",
        "fdsd": {"mean": 29.22, "std": 0.41, "draws": 5, "n": 200},
        "floor": {"exact_phase": {"mean": 1.5, "std": 0.1}, "griffin_lim": {"mean": 4.25, "std": 0.2}},
    }
    write(results / "light" / "fdsd", fdsd, "fdsd.json")
    write(
        results / "vae" / "fdsd",
        {**fdsd, "model": "VAE", "fdsd": {"mean": 70.92, "std": 1.0, "draws": 5, "n": 200}},
        "x.json",
    )
    text = write_report([results])
    assert "Feature network: lightdvae-ds2-small" in text
    rows = table_rows(text, "### FDSD against corpus **voicebank**")
    assert rows[0][:2] == ["VAE", "70.92 ± 1.00"] and rows[1][:4] == ["LigHT-DVAE", "29.22 ± 0.41", "5", "200"]
    assert ["_real vs real (exact phase)_", "1.50 ± 0.10"] == rows[2][:2]
    assert rows[3][:2] == ["_real vs real (Griffin-Lim)_", "4.25 ± 0.20"]


def test_same_label_different_runs_are_told_apart_and_datasets_get_own_tables(tmp_path):
    wsj = {"spec": "wsj0:/data/wsj0", "name": "wsj0", "layout": "wsj0", "root": "/data/wsj0"}
    write(tmp_path / "a" / "e", summary("a", "light-dvae", "LigHT-DVAE", "gen", 10.0))
    write(tmp_path / "b" / "e", summary("b", "light-dvae", "LigHT-DVAE", "gen", 9.0))
    write(tmp_path / "c" / "e", summary("c", "srnn", "SRNN (TF)", "gt", 2.6, dataset=wsj))
    text = write_report([tmp_path / "a", tmp_path / "b", tmp_path / "c"])
    vb = table_rows(text, "### Analysis-resynthesis: corpus **voicebank**")
    assert sorted(r[0] for r in vb) == ["LigHT-DVAE [a]", "LigHT-DVAE [b]"]
    wsj_rows = table_rows(text, "### Analysis-resynthesis: corpus **wsj0**")
    assert wsj_rows[0][0] == "SRNN (TF)" and wsj_rows[0][2] == "GT"  # only GT there: shown, and marked
    assert "Structure study" not in text


def test_a_replaced_shipped_prior_is_told_apart_by_its_digest(tmp_path):
    # the same pretrained:NAME before and after its weights were replaced: one run folder, two digests
    old = summary("x", "vae", "VAE (shipped)", "gen", 4.6)
    new = summary("x", "vae", "VAE (shipped)", "gen", 4.8)
    for s, digest in ((old, "385407ec" + "0" * 56), (new, "9f1c2e3d" + "1" * 56)):
        s["run_dir"], s["checkpoint"]["sha256"] = "pretrained:vae", digest
    write(tmp_path / "old" / "e", old)
    write(tmp_path / "new" / "e", new)
    write(tmp_path / "again" / "e", dict(new, created="2026-01-02T00:00:00+00:00"))  # the same weights twice
    rows = table_rows(write_report([tmp_path]), "### Analysis-resynthesis: corpus **voicebank**")
    assert sorted({r[0] for r in rows}) == ["VAE (shipped) [385407ec]", "VAE (shipped) [9f1c2e3d]"]


def test_figures_from_saved_examples(results, tmp_path):
    rng = np.random.default_rng(0)
    ref = rng.random((40, 513)).astype(np.float32)
    for run in ("light", "inv"):
        for past in ("gen", "gt"):
            folder = results / run / "eval" / f"test-{past}"
            np.savez(
                folder / "ex.npz", reference=ref, estimate=ref * rng.random(ref.shape), name=np.array("p232_001.wav")
            )
            s = json.loads((folder / "summary.json").read_text())
            s["outputs"] = {"examples": ["ex.npz"]}
            (folder / "summary.json").write_text(json.dumps(s))
    out = tmp_path / "site" / "report.md"
    assert main(["report", str(results), "--out", str(out)]) == 0
    text = out.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links == ["figures/resynthesis-voicebank-test.png", "figures/gen-vs-gt-voicebank-test.png"]
    for link in links:
        assert (out.parent / link).stat().st_size > 10_000


def test_nothing_to_report_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ReportError, match="no evaluation results found"):
        write_report([tmp_path])
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_fdsd_results_of_other_sample_sizes_get_their_own_tables_and_floors(results):
    base = {
        "kind": "lightdvae-fdsd",
        "dataset": {"name": "voicebank", "split": "test"},
        "feature_network": "lightdvae-ds2-small",
    }
    write(
        results / "a",
        {
            **base,
            "model": "VAE",
            "fdsd": {"mean": 70.9, "std": 1.0, "draws": 5, "n": 200},
            "floor": {"exact_phase": {"mean": 1.5, "std": 0.1, "n": 200}},
        },
        "fdsd.json",
    )
    write(
        results / "b",
        {
            **base,
            "model": "DKF",
            "fdsd": {"mean": 90.1, "std": 2.0, "draws": 5, "n": 32},
            "floor": {"exact_phase": {"mean": 9.5, "std": 0.5, "n": 32}},
        },
        "fdsd.json",
    )
    text = write_report([results])
    small = table_rows(text, "### FDSD against corpus **voicebank**, **test** split, **32** samples per draw")
    large = table_rows(text, "### FDSD against corpus **voicebank**, **test** split, **200** samples per draw")
    assert [r[0] for r in small] == ["DKF", "_real vs real (exact phase)_"] and small[1][1] == "9.50 ± 0.50"
    assert [r[0] for r in large] == ["VAE", "_real vs real (exact phase)_"] and large[1][1] == "1.50 ± 0.10"


def test_a_best_score_at_the_floor_of_its_scale_is_not_bold():
    from lightdvae.report.tables import best_mean

    rows = [{"metrics": {"pesq_wb": stats(1.05), "si_sdr": stats(-3.0)}}, {"metrics": {"pesq_wb": stats(1.08)}}]
    rows[1]["metrics"]["si_sdr"] = stats(-2.5)
    assert best_mean(rows, "pesq_wb") is None  # every model at PESQ's floor: nothing is best
    assert best_mean(rows, "si_sdr") == -2.5  # SI-SDR has no floor
    rows[1]["metrics"]["pesq_wb"] = stats(1.6)
    assert best_mean(rows, "pesq_wb") == 1.6


# ----------------------------------------------------------------------------------------------------------------
# What the demo's report shows, from run folders: training, findings, generation, the w exchange, cost
# ----------------------------------------------------------------------------------------------------------------
TINY_DKF = dict(x_dims=[16], rnn_dim=8, z_to_g_dims=[], posterior_dims=[8], decoder_dims=[16])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Two tiny runs trained 2 epochs by ``lightdvae train`` on a tiny corpus of two test speakers (a LigHT-DVAE
    and a DKF); the DKF sampled by ``lightdvae generate``, the LigHT-DVAE not."""
    import torch
    from helpers import TINY_LIGHT, write_corpus

    root = tmp_path_factory.mktemp("reportruns")
    files = [(s, u) for s, n in (("train", 3), ("val", 1), ("test", 4)) for u in range(n)]
    corpus = write_corpus(root / "tiny", [(s, f"spk{u % 2}", u, 0.8 + 0.1 * (u % 3)) for s, u in files])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    common = ["--data", str(corpus), "--epochs", "2", "--batch-size", "2", "--seq-len", "20", "--device", "cpu"]
    try:
        for name, model, config in (("light", "light-dvae", TINY_LIGHT), ("dkf", "dkf", TINY_DKF)):
            sets = [a for k, v in config.items() for a in ("--set", f"{k}={json.dumps(v)}")]
            argv = ["train", "--model", model, "--out", str(root / "runs" / name), *common, *sets, "--quiet"]
            assert main(argv) == 0
        gen = ["generate", str(root / "runs" / "dkf"), "--n", "2", "--frames", "20", "--no-fdsd", "--quiet"]
        assert main([*gen, "--griffin-lim-iters", "4", "--batch-size", "2", "--figures", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    return root / "runs"


@pytest.mark.usefixtures("private_dirs")
def test_report_of_trained_runs_shows_training_samples_w_exchange_and_cost(trained, tmp_path):
    out = tmp_path / "site" / "report.md"
    # read-only: the w exchange the LigHT-DVAE lacks is a command line, with two test files of two speakers
    assert main(["report", str(trained), "--out", str(out), "--read-only"]) == 0
    text = out.read_text()
    assert not list((trained / "light").glob("swap_w/*/swap_w.json"))
    line = next(ln for ln in text.splitlines() if "no w exchange yet" in ln)
    assert f"`lightdvae swap-w {trained / 'light'} " in line and "spk0" in line and "spk1" in line

    assert main(["report", str(trained), "--out", str(out)]) == 0
    text = out.read_text()
    print(text)
    rows = table_rows(text, "## Training")
    assert [r[0] for r in rows] == ["DKF", "LigHT-DVAE"]  # the paper's order
    assert [r[5] for r in rows] == ["2 (2)", "2 (2)"] and all(r[-1].startswith("finished") for r in rows)
    assert "batch 2 segments of 20 frames" in text and "lr 0.001" in text and "early stopping" in text
    # generation: the DKF's samples (figure copied beside the report), the LigHT-DVAE's command
    assert "![DKF samples](figures/generation-dkf.png)" in text
    assert (out.parent / "figures" / "generation-dkf.png").stat().st_size > 5_000
    assert f"LigHT-DVAE: not sampled yet: `lightdvae generate {trained / 'light'}`" in text
    # the w exchange, computed by the report into the run folder, in one line with its figure
    section = text[text.index("## The w exchange") : text.index("## Cost")]
    assert re.search(
        r"\*\*w (carries|partly carries|does not carry) global traits\*\* \(a with w of b: w transfer", section
    )
    assert "utt0.wav, utt1.wav" in section and "(figures/swap-w-light.png)" in section
    assert (out.parent / "figures" / "swap-w-light.png").is_file()
    swap = json.loads(next((trained / "light").glob("swap_w/*/swap_w.json")).read_text())
    assert swap["kind"] == "lightdvae-swap-w"
    # cost: recorded times per run, and one line on the native-vs-reference timings this folder lacks
    cost = table_rows(text, "## Cost")
    assert [r[0] for r in cost] == ["DKF", "LigHT-DVAE"] and all(float(r[3]) >= 0 for r in cost)
    assert cost[0][5] != "" and cost[1][5] == ""  # prior sampling time: only the DKF was sampled
    assert "Native vs reference ops not measured here" in text
    assert "_Not tested: no evaluation among the given folders; `lightdvae eval RUN --past gen`" in text
    # nothing is found twice, and a second report reuses the exchange
    assert main(["report", str(trained), str(trained / "light"), "--out", str(out)]) == 0
    assert len(list((trained / "light").glob("swap_w/*/swap_w.json"))) == 1
    assert out.read_text().count("![DKF samples]") == 1


def test_report_never_fails_on_a_piece_it_cannot_compute(trained, tmp_path, monkeypatch):
    import shutil

    run = tmp_path / "moved"
    shutil.copytree(trained / "light", run, ignore=shutil.ignore_patterns("swap_w"))
    config = json.loads((run / "config.json").read_text())
    config["data"]["spec"] = str(tmp_path / "gone")  # its corpus is not here any more
    config["training"]["data"] = str(tmp_path / "gone")
    (run / "config.json").write_text(json.dumps(config))
    text = write_report([run])
    line = next(ln for ln in text.splitlines() if "LigHT-DVAE:" in ln and "swap-w" in ln)
    assert f"`lightdvae swap-w {run} A.wav B.wav`" in line
    assert "## Training" in text and "## Cost" in text


def test_findings_verdicts_from_paired_differences():
    from lightdvae.models import build
    from lightdvae.report.findings import Scores, findings

    rng = np.random.default_rng(0)
    base = 8 + rng.standard_normal(20)
    noise = lambda s: 0.1 * rng.standard_normal(20)  # noqa: E731
    values = {
        ("DKF", "gen"): base,
        ("SRNN (TF)", "gen"): base - 6 + noise(0),
        ("SRNN (TF)", "gt"): base + 1 + noise(1),
        ("SRNN (SS)", "gen"): base + 0.5 + noise(2),
        ("SRNN (SS)", "gt"): base + 0.7 + noise(3),
        ("HiT-DVAE", "gen"): base + 2 + noise(4),
        ("HiT-DVAE", "gt"): base + 2.1 + noise(5),
        ("LigHT-DVAE", "gen"): base + 2.2 + noise(6),
        ("LigHT-DVAE", "gt"): base + 2.3 + noise(7),
        ("HiT-Inv-s", "gen"): base - 5 + noise(8),
        ("HiT-Inv-s", "gt"): base + 2 + noise(9),
        ("HiT-Inv-s-NR", "gen"): base - 2 + noise(10),
        ("HiT-Inv-s-NR", "gt"): base - 4 + noise(11),  # GEN and GT 2 dB apart: not "the same"
    }
    sizes = {"HiT-DVAE": build("hit-dvae").num_parameters(), "LigHT-DVAE": build("light-dvae").num_parameters()}

    def check():
        per = {
            p: {k: {f"f{i}": float(x) for i, x in enumerate(v)} for (k, q), v in values.items() if q == p}
            for p in ("gen", "gt")
        }
        return {r["finding"]: r for r in findings(Scores(per["gen"], per["gt"], sizes))}

    res = check()
    verdict = {k: r["verdict"] for k, r in res.items()}
    assert verdict["The transformer DVAEs (HiT-DVAE, LigHT-DVAE) lead on SI-SDR (GEN)"] == "holds"
    assert verdict["SRNN (TF) collapses in GEN while SRNN (SS) does not"] == "holds"
    assert verdict["HiT-Inv-s collapses in GEN but not in GT"] == "holds"
    assert verdict["HiT-Inv-s-NR scores the same in GEN and GT"] == "does not hold"
    assert verdict["LigHT-Inv-s collapses in GEN but not in GT"] == "not tested"
    assert verdict["LigHT-DVAE matches HiT-DVAE with about 20 % fewer parameters"] == "holds"
    assert "0.80" in res["LigHT-DVAE matches HiT-DVAE with about 20 % fewer parameters"]["evidence"]
    # the baselines ahead: the first finding does not hold; a difference lost in the noise is not resolved
    lead = "The transformer DVAEs (HiT-DVAE, LigHT-DVAE) lead on SI-SDR (GEN)"
    values[("DKF", "gen")] = base + 3
    assert check()[lead]["verdict"] == "does not hold"
    values[("SRNN (SS)", "gen")] = base - 6
    srnn = check()["SRNN (TF) collapses in GEN while SRNN (SS) does not"]
    assert srnn["verdict"] == "does not hold" and "SRNN (SS) GEN - GT" in srnn["evidence"]


def test_findings_keep_shipped_priors_apart_and_leave_out_models_with_several_runs(tmp_path):
    import csv

    from lightdvae.evaluate import CSV_COLUMNS
    from lightdvae.report.findings import findings_section

    rng = np.random.default_rng(1)
    base = 5 + rng.standard_normal(8)

    def evaluated(run: str, label: str, name: str, past: str, shift: float) -> dict:
        folder = tmp_path / run / past
        folder.mkdir(parents=True)
        with (folder / "per_file.csv").open("w", newline="") as f:  # the columns `lightdvae eval` writes
            w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, restval="")
            w.writeheader()
            w.writerows(
                {"index": i, "name": f"f{i}", "seconds": 1, "frames": 60, "si_sdr": x + shift}
                for i, x in enumerate(base)
            )
        s = summary(run, name, label, past, float(np.mean(base) + shift))
        return {
            **s,
            "run_dir": f"pretrained:{run}" if "shipped" in label else s["run_dir"],
            "_path": str(folder / "summary.json"),
        }

    evals = [
        evaluated("l", "LigHT-DVAE", "light-dvae", "gen", -4.0),  # a few minutes of training: behind the VAE
        evaluated("v", "VAE", "vae", "gen", 0.0),
        evaluated("ls", "LigHT-DVAE (shipped)", "light-dvae", "gen", 2.0),  # converged: ahead
        evaluated("vs", "VAE (shipped)", "vae", "gen", 0.0),
        evaluated("d1", "DKF", "dkf", "gen", 1.0),
        evaluated("d2", "DKF", "dkf", "gen", 5.0),
    ]
    text = "\n".join(findings_section(("tiny", "", "test"), evals))
    runs = table_rows(text, "| finding")
    shipped = table_rows(text, "The shipped priors")
    lead = "The transformer DVAEs (HiT-DVAE, LigHT-DVAE) lead on SI-SDR (GEN)"
    assert runs[0][0] == lead and runs[0][1] == "**does not hold**" and "best baseline VAE" in runs[0][2]
    assert shipped[0][0] == lead and shipped[0][1] == "**holds**"
    assert "left out (several runs of one model; report one experiment at a time): DKF" in text


def test_training_table_flags_a_short_training():
    from lightdvae.report.runs_section import training_row

    meta = {"model": "dkf", "config": {}, "parameters": 10, "training": {"lr": 1e-3, "epochs": 30}}
    status = {"state": "time_limit", "best_epoch": 4, "best_val_loss": 2.0}
    rows = [{"epoch": e, "seconds": 1.0, "kl_warm": min(1.0, e / 9)} for e in range(1, 5)]
    row = training_row({"dir": Path("dkf"), "meta": meta, "log": rows, "status": status})
    assert "KL warm-up not completed (0.44)" in row[-1] and "4 of ~30 planned epochs" in row[-1]
    full = [{"epoch": e, "seconds": 1.0, "kl_warm": min(1.0, e / 9)} for e in range(1, 31)]
    assert "short training" not in training_row({"dir": Path("dkf"), "meta": meta, "log": full, "status": status})[-1]
    stopped = {**status, "state": "early_stopped"}  # early stopping ends a run early on purpose
    few = [{"epoch": e, "seconds": 1.0, "kl_warm": 1.0} for e in range(1, 5)]
    assert "short" not in training_row({"dir": Path("dkf"), "meta": meta, "log": few, "status": stopped})[-1]


def test_a_column_at_the_floor_of_its_scale_is_said_to_be_so(tmp_path):
    write(tmp_path / "a" / "e", summary("a", "dkf", "DKF", "gen", -3.0, pesq_wb=1.05))
    write(tmp_path / "b" / "e", summary("b", "vae", "VAE", "gen", -2.5, pesq_wb=1.07))
    text = write_report([tmp_path])
    rows = {r[0]: r for r in table_rows(text, "### Analysis-resynthesis")}
    assert rows["VAE"][5].startswith("**-2.50**")  # SI-SDR has no floor
    assert "**" not in rows["VAE"][6] + rows["DKF"][6]  # PESQ-WB 1.05 / 1.07: nobody is best at the floor
    assert "Nothing bold in PESQ-WB: the best mean is at the floor of the scale" in text


def test_imported_checkpoints_are_named_not_tabulated_as_zero_trainings():
    """Imported runs (no training here) get one line, not a row of zeros, in the training table; the cost table
    leaves out a run with nothing timed."""
    from lightdvae.report.cost_section import cost_section
    from lightdvae.report.runs_section import training_section

    imported = {"dir": Path("vb-dkf"), "meta": {"model": "dkf", "config": {}}, "log": [], "status": {}}
    trained_meta = {"model": "vae", "config": {}, "parameters": 10, "training": {"lr": 1e-3, "epochs": 3}}
    rows = [{"epoch": e, "seconds": 2.0, "kl_warm": 1.0} for e in (1, 2, 3)]
    trained = {"dir": Path("vae"), "meta": trained_meta, "log": rows, "status": {"state": "finished"}}
    alone = "\n".join(training_section([imported]))
    assert "Imported checkpoints, not trained here: DKF." in alone and "| DKF |" not in alone
    both = "\n".join(training_section([trained, imported]))
    assert "| VAE | 10 |" in both and "| DKF |" not in both and "Imported checkpoints, not trained here: DKF." in both
    cost = "\n".join(cost_section([trained, imported], [], [], []))
    assert "| VAE |" in cost and "| DKF |" not in cost
    assert "| DKF |" not in "\n".join(cost_section([imported], [], [], []))
