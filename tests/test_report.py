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
