"""Analysis-resynthesis evaluation (lightdvae.evaluate, ``lightdvae eval``) on a tiny corpus with tiny untrained
models: outputs, the CLI end to end, resumption after an interruption, and one-line errors for bad input."""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import TINY_LIGHT, make_run, speech_like, write_corpus

from lightdvae import evaluate as E
from lightdvae.cli import main
from lightdvae.evaluate import workers as W
from lightdvae.metrics import COLUMNS
from lightdvae.models import build

SR = 16000


pytestmark = pytest.mark.usefixtures("private_dirs")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """train/val/test folders; the test split has 3 files of 1.0 to 1.4 s from 2 speakers."""
    files = [("train", "a", 0), ("val", "b", 0), ("test", "c", 0), ("test", "c", 1), ("test", "d", 0)]
    return write_corpus(
        tmp_path_factory.mktemp("evalcorpus") / "tiny",
        [(split, spk, u, 1.0 + 0.2 * (seed % 3)) for seed, (split, spk, u) in enumerate(files, start=1)],
    )


def rows_of(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_cli_end_to_end_eval_and_report(corpus, tmp_path, capsys):
    run = make_run(tmp_path / "light")
    code = main(["eval", str(run), "--data", str(corpus), "--past", "both", "--workers", "2", "--figures", "1"])
    assert code == 0
    out = capsys.readouterr().out
    assert "LigHT-DVAE on tiny test (GEN past): 3 files" in out and "(GT past)" in out
    for past in ("gen", "gt"):
        folder = run / "eval" / f"test-{past}"
        rows = rows_of(folder / "per_file.csv")
        assert [r["name"] for r in rows] == ["test/c/utt0.wav", "test/c/utt1.wav", "test/d/utt0.wav"]
        assert tuple(rows[0]) == E.CSV_COLUMNS
        for r in rows:
            assert r["errors"] == "" and all(math.isfinite(float(r[c])) for c in COLUMNS), r
        s = json.loads((folder / "summary.json").read_text())
        assert s["kind"] == "lightdvae-eval" and s["past"] == past and s["split"] == "test"
        assert s["model"]["name"] == "light-dvae" and s["model"]["label"] == "LigHT-DVAE"
        assert s["model"]["parameters"] == build("light-dvae", **TINY_LIGHT).num_parameters()
        assert s["dataset"]["name"] == "tiny" and s["dataset"]["root"] == str(corpus)
        assert s["files"] == {**s["files"], "listed": 3, "evaluated": 3, "skipped_input": 0}
        assert set(s["metrics"]) == set(COLUMNS) and s["pesq_variants"]["pesq_wb"].startswith("ITU-T P.862.2")
        m = s["metrics"]["si_sdr"]
        assert m["n"] == 3 and m["n_failed"] == 0 and m["ci_low"] < m["mean"] < m["ci_high"]
        values = [float(r["si_sdr"]) for r in rows]
        assert m["mean"] == pytest.approx(np.mean(values)) and m["median"] == pytest.approx(np.median(values))
        assert s["seconds"]["wall"] > 0 and s["workers"] == 2
        assert (folder / s["outputs"]["figures"][0]).is_file() and (folder / s["outputs"]["examples"][0]).is_file()
    # the untrained decoder is a poor resynthesiser: far below the identity's scores
    assert json.loads((run / "eval" / "test-gen" / "summary.json").read_text())["metrics"]["pesq_wb"]["mean"] < 2.0

    report = tmp_path / "site" / "report.md"
    assert main(["report", str(run), "--out", str(report)]) == 0
    text = report.read_text()
    assert "### Analysis-resynthesis: corpus **tiny**" in text and "| LigHT-DVAE |" in text
    assert "ITU-T P.862.2 wide-band" in text and "Structure study" in text
    assert (report.parent / "figures" / "resynthesis-tiny-test.png").is_file()
    assert (report.parent / "figures" / "gen-vs-gt-tiny-test.png").is_file()
    assert main(["report", str(run)]) == 0
    assert "| LigHT-DVAE |" in capsys.readouterr().out


def test_pool_and_in_process_metrics_agree_and_audio_is_saved(corpus, tmp_path):
    run = make_run(tmp_path / "vae", "vae", encoder_dims=[16], decoder_dims=[16], z_dim=4)
    kw = dict(data=str(corpus), figures=0, cache_dir=tmp_path / "cache", max_files=2, model_threads=1)
    a = E.evaluate_run(run, out=tmp_path / "serial", workers=0, save_audio=True, **kw)
    b = E.evaluate_run(run, out=tmp_path / "pool", workers=2, **kw)
    ra, rb = E.read_per_file(tmp_path / "serial" / "per_file.csv"), E.read_per_file(tmp_path / "pool" / "per_file.csv")
    assert len(ra) == len(rb) == 2 and a["files"]["listed"] == 3 and a["files"]["evaluated"] == 2
    for x, y in zip(ra, rb, strict=True):
        assert [x[c] for c in COLUMNS] == pytest.approx([y[c] for c in COLUMNS], rel=1e-9)  # BLAS sum order
    assert a["model"]["label"] == "VAE" and not a["model"]["sees_past_speech"]
    wav = tmp_path / "serial" / "audio" / "test" / "c" / "utt0.wav"
    data, sr = sf.read(wav)
    assert sr == SR and data.shape[0] == round(ra[0]["seconds"] * SR)
    assert b["outputs"]["audio"] is None and not (tmp_path / "pool" / "audio").exists()


def test_interrupted_eval_resumes_without_redoing_files(corpus, tmp_path, monkeypatch):
    run = make_run(tmp_path / "light")
    out = tmp_path / "out"
    kw = dict(data=str(corpus), out=out, workers=0, figures=0, metrics=("rmse", "si_sdr"), model_threads=1)
    real = W.compute_metrics
    calls, interrupt = [], [True]

    def flaky(ref, est, metrics):
        calls.append(1)
        if len(calls) == 2 and interrupt and interrupt.pop():  # Ctrl-C while the second file is measured, once
            raise KeyboardInterrupt
        return real(ref, est, metrics)

    monkeypatch.setattr(W, "compute_metrics", flaky)
    with pytest.raises(KeyboardInterrupt):
        E.evaluate_run(run, **kw)
    assert len(E.read_per_file(out / "per_file.csv")) == 1 and not (out / "summary.json").exists()
    # a torn half-row (killed while writing) is dropped, not parsed
    with open(out / "per_file.csv", "a") as fh:
        fh.write("1,test/c/utt1.wav,c,1.2,7")
    calls.clear()
    summary = E.evaluate_run(run, **kw)
    assert len(calls) == 2  # only the two missing files
    rows = E.read_per_file(out / "per_file.csv")
    assert [r["index"] for r in rows] == [0, 1, 2] and summary["files"]["evaluated"] == 3
    assert summary["seconds"]["sessions"] == 2 and summary["metric_names"] == ["rmse", "si_sdr"]
    # a finished evaluation run again computes nothing
    calls.clear()
    again = E.evaluate_run(run, **kw)
    assert calls == [] and again["metrics"]["si_sdr"]["mean"] == summary["metrics"]["si_sdr"]["mean"]


def test_a_folder_of_another_evaluation_is_refused(corpus, tmp_path):
    run = make_run(tmp_path / "light")
    out = tmp_path / "out"
    kw = dict(data=str(corpus), out=out, workers=0, figures=0, metrics=("si_sdr",), max_files=1, model_threads=1)
    E.evaluate_run(run, past="gen", **kw)
    with pytest.raises(E.EvalError, match=r"another evaluation \(differs in: past: gen there, gt asked\).*--overwrite"):
        E.evaluate_run(run, past="gt", **kw)
    assert E.evaluate_run(run, past="gt", overwrite=True, **kw)["past"] == "gt"
    make_run(run, dropout=0.0, d_model=16, n_heads=4)  # new weights in the same run
    with pytest.raises(E.EvalError, match="checkpoint weights"):
        E.evaluate_run(run, past="gt", **kw)


def test_a_model_error_on_one_file_is_recorded_and_the_run_goes_on(corpus, tmp_path, monkeypatch):
    run = make_run(tmp_path / "light")
    import lightdvae.models.base as base

    original = base.DVAE.resynthesize
    seen = []

    def sometimes(self, power, past="gen", sample=False):
        seen.append(power.shape[1])
        if len(seen) == 2:
            raise RuntimeError("out of memory (simulated)")
        return original(self, power, past=past, sample=sample)

    monkeypatch.setattr(base.DVAE, "resynthesize", sometimes)
    kw = dict(data=str(corpus), out=tmp_path / "o", workers=0, figures=0, metrics=("si_sdr",), model_threads=1)
    s = E.evaluate_run(run, **kw)
    assert s["n_failed"] == {"model": 1} and s["metrics"]["si_sdr"]["n"] == 2
    assert "simulated" in s["failures"]["model"][0]["reason"]


def test_bad_input_gives_one_line_errors(corpus, tmp_path, capsys):
    def error_of(argv) -> str:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "Traceback" not in err
        return err

    assert "does not exist" in error_of(["eval", str(tmp_path / "nope"), "--data", str(corpus)])
    (tmp_path / "empty_run").mkdir()
    assert "no checkpoint checkpoints/best.pt" in error_of(["eval", str(tmp_path / "empty_run"), "--data", str(corpus)])
    run = make_run(tmp_path / "light")
    assert "does not record the corpus" in error_of(["eval", str(run)])
    assert "nowhere" in error_of(["eval", str(run), "--data", str(tmp_path / "nowhere")])
    assert "not a complete" in error_of(["eval", str(run), "--data", f"vb:{corpus}"])
    no_test = tmp_path / "no_test"
    for split in ("train", "val", "test"):
        (no_test / split).mkdir(parents=True)
    sf.write(no_test / "train" / "a.wav", speech_like(1.0, 1), SR)
    sf.write(no_test / "val" / "a.wav", speech_like(1.0, 2), SR)
    assert "has no test files" in error_of(["eval", str(run), "--data", str(no_test)])
    assert "no evaluation results found" in error_of(["report", str(tmp_path / "empty_run")])
    assert "does not exist" in error_of(["report", str(tmp_path / "nope")])


def test_a_one_sample_and_a_tiny_file_are_skipped_and_reported(corpus, tmp_path):
    """Files the metrics cannot score (shorter than 0.25 s) are skipped with the reason, not scored (a 1-sample
    file once entered the RMSE mean as 0.0 and counted SI-SDR inf as a failure)."""
    data = tmp_path / "odd"
    for split in ("train", "val", "test"):
        (data / split / "s").mkdir(parents=True)
        sf.write(data / split / "s" / "ok.wav", speech_like(1.2, 3), SR, subtype="PCM_16")
    sf.write(data / "test" / "s" / "one.wav", np.array([0.3], dtype=np.float32), SR, subtype="PCM_16")
    sf.write(data / "test" / "s" / "short.wav", speech_like(0.1, 4), SR, subtype="PCM_16")
    run = make_run(tmp_path / "vae", "vae")
    assert main(["eval", str(run), "--data", str(data), "--workers", "0", "--quiet"]) == 0
    s = json.loads((run / "eval" / "test-gen" / "summary.json").read_text())
    assert s["files"]["evaluated"] == 1 and s["files"]["skipped_input"] == 2
    skipped = [Path(p).name for items in s["files"]["skipped_input_files"].values() for p in items]
    assert sorted(skipped) == ["one.wav", "short.wav"]
    assert [r["name"] for r in rows_of(run / "eval" / "test-gen" / "per_file.csv")] == ["test/s/ok.wav"]
