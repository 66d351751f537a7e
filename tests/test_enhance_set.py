"""Enhancement of a whole noisy set (issue #16): ``enhance_set`` / ``lightdvae enhance RUN --data SPEC``.

A tiny set (3 test utterances x white, pink x 0, 10 dB) built in tmp_path, a tiny untrained VAE, 3 EM iterations,
SI-SDR only (PESQ is slow): the rows and the summary's breakdowns, resumption after an interrupt giving the same
numbers, a folder of other settings refused, files without a clean reference, a mismatched pair, the report's
enhancement section, and the command's one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import make_run, write_corpus

import lightdvae.enhance.dataset as dataset
from lightdvae.cli import main
from lightdvae.data.noisy import build_noisy_set
from lightdvae.enhance import SET_COLUMNS, EnhanceSettings, enhance_set, read_enhance_summary, read_set_rows
from lightdvae.errors import EnhanceError
from lightdvae.models import DVAE
from lightdvae.models.vae import VAE
from lightdvae.report import write_report

pytestmark = pytest.mark.usefixtures("private_dirs", "one_thread")

TESTS = (("t", 1.0), ("u", 1.3), ("w", 1.0))
FILES = [("train", "a", 0, 1.0), ("val", "v", 0, 1.0)] + [("test", s, 0, n) for s, n in TESTS]
FAST = dict(iterations=3, metrics=("si_sdr",), workers=0, batch_size=4, progress=False, device="cpu")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("enh")
    corpus = write_corpus(root / "corpus", FILES)
    build_noisy_set(root / "set", speech=str(corpus), snrs="0,10", noises="white,pink", seed=0, progress=False)
    return root / "set"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("run") / "vae", "vae", encoder_dims=[32], decoder_dims=[32])


def _numbers(out: Path) -> dict[str, tuple]:
    rows = read_set_rows(out / "per_file.csv")
    return {r["name"]: (r["in_si_sdr"], r["out_si_sdr"], r["delta_si_sdr"]) for r in rows}


def test_rows_audio_figures_and_the_summary_by_snr_and_noise(built, run, tmp_path):
    out = tmp_path / "out"
    summary = enhance_set(run, f"noisy:{built}", out=out, figures=1, **FAST)
    rows = read_set_rows(out / "per_file.csv")
    assert len(rows) == 12 and [r["index"] for r in rows] == list(range(12))
    header = (out / "per_file.csv").read_text().splitlines()[0].split(",")
    assert tuple(header) == SET_COLUMNS
    for r in rows:
        assert np.isfinite(r["in_si_sdr"]) and np.isfinite(r["out_si_sdr"]) and not r["errors"]
        assert r["delta_si_sdr"] == pytest.approx(r["out_si_sdr"] - r["in_si_sdr"])
        assert r["iterations"] == 3 and r["batch"] == 4
        assert r["snr_db"] in (0.0, 10.0) and r["noise"] in ("white", "pink")
        assert np.isnan(r["in_pesq_wb"])  # not asked for
        wave, rate = sf.read(out / "audio" / f"{r['name']}.wav")
        assert rate == 16000 and wave.size == round(r["audio_s"] * 16000)
    assert summary == json.loads((out / "summary.json").read_text()) == read_enhance_summary(out)
    assert summary["kind"] == "lightdvae-enhance" and summary["metric_names"] == ["si_sdr"]
    assert list(summary["by_snr"]) == ["0", "10"] and set(summary["by_noise"]) == {"pink", "white"}
    assert sum(v["n"] for v in summary["by_snr"].values()) == summary["overall"]["n"] == 12
    assert summary["by_snr"]["0"]["input"]["si_sdr"]["mean"] == pytest.approx(0.0, abs=0.05)  # exact-SNR mixtures
    assert summary["overall"]["improvement"]["si_sdr"]["ci_half"] > 0
    assert summary["files"] == {**summary["files"], "enhanced": 12, "scored": 12, "no_reference": 0, "failed": 0}
    assert summary["seconds"]["per_iteration_per_utterance"] > 0 and summary["settings"]["iterations"] == 3
    # every EM option, the E-step's rate as it ran (the VAE's: the reference's)
    assert EnhanceSettings.from_dict(summary["settings"]) == EnhanceSettings(iterations=3, lr=1e-3)
    assert summary["model"]["name"] == "vae" and summary["checkpoint"]["sha256"]
    if summary["outputs"]["figures"]:  # matplotlib installed
        assert [(out / f).is_file() for f in summary["outputs"]["figures"]] == [True]


def test_an_interrupted_run_resumes_with_the_same_numbers(built, run, tmp_path, monkeypatch, capsys):
    whole = tmp_path / "whole"
    enhance_set(run, f"noisy:{built}", out=whole, figures=0, **FAST)
    original, calls = dataset.enhance_chunk, []

    def interrupted(loop, chunk):
        if calls:
            raise KeyboardInterrupt
        calls.append(chunk)
        original(loop, chunk)

    monkeypatch.setattr(dataset, "enhance_chunk", interrupted)
    parts = tmp_path / "parts"
    with pytest.raises(KeyboardInterrupt):
        enhance_set(run, f"noisy:{built}", out=parts, figures=0, **FAST)
    assert len(read_set_rows(parts / "per_file.csv")) == 4 and not (parts / "summary.json").exists()
    said = capsys.readouterr().err.strip().splitlines()
    assert said == [
        f"interrupted: 4 of 12 files are saved in {parts / 'per_file.csv'}; run the same command again to "
        "enhance the rest"
    ], said
    monkeypatch.setattr(dataset, "enhance_chunk", original)
    summary = enhance_set(run, f"noisy:{built}", out=parts, figures=0, **{**FAST, "batch_size": 3})
    assert summary["seconds"]["sessions"] == 2 and summary["files"]["enhanced"] == 12
    a, b = _numbers(whole), _numbers(parts)
    assert a.keys() == b.keys()
    for name in a:  # other batches after the resume (3, not 4): the same numbers, to float rounding
        np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_a_recurrent_prior_enhances_files_of_different_lengths_together(built, tmp_path):
    """SRNN (like DKF and RVAE) batches utterances of any lengths (1.0 s and 1.3 s here): batches of 4 give each file
    the numbers it gets alone (float32: to float rounding)."""
    srnn = make_run(tmp_path / "srnn", "srnn", h_dims=[32], rnn_h_dim=16, g_dims=[32], rnn_g_dim=16, decoder_dims=[32])
    together = enhance_set(srnn, f"noisy:{built}", out=tmp_path / "together", figures=0, **FAST)
    rows = read_set_rows(tmp_path / "together" / "per_file.csv")
    assert [r["batch"] for r in rows] == [4] * 12 and len({r["audio_s"] for r in rows}) == 2
    alone = enhance_set(srnn, f"noisy:{built}", out=tmp_path / "alone", figures=0, **{**FAST, "batch_size": 1})
    assert together["files"]["enhanced"] == alone["files"]["enhanced"] == 12
    a, b = _numbers(tmp_path / "together"), _numbers(tmp_path / "alone")
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_a_folder_of_other_settings_is_refused_unless_overwrite(built, run, tmp_path):
    out = tmp_path / "out"
    enhance_set(run, f"noisy:{built}", out=out, max_files=2, figures=0, **FAST)
    with pytest.raises(EnhanceError, match="differs in: iterations: 3 there, 4 asked\\).*--overwrite"):
        enhance_set(run, f"noisy:{built}", out=out, max_files=2, figures=0, **{**FAST, "iterations": 4})
    other = EnhanceSettings(iterations=3, beta=0.01)  # a settings object: the same guard
    with pytest.raises(EnhanceError, match="differs in: beta: 1.0 there, 0.01 asked\\).*--overwrite"):
        enhance_set(run, f"noisy:{built}", other, out=out, max_files=2, figures=0, **{**FAST, "iterations": 3})
    with pytest.raises(EnhanceError, match="differs in: e_steps: .* there, 2 asked\\).*--overwrite"):
        enhance_set(run, f"noisy:{built}", out=out, max_files=2, figures=0, **{**FAST, "e_steps": 2})
    summary = enhance_set(run, f"noisy:{built}", out=out, max_files=2, overwrite=True, **{**FAST, "iterations": 4})
    assert summary["settings"]["iterations"] == 4 and len(read_set_rows(out / "per_file.csv")) == 2


def test_a_folder_written_before_an_option_existed_resumes(built, run, tmp_path):
    """A folder whose fingerprint predates ``e_steps`` (``latent_e_step``) ran one E-step per iteration (on the
    encoder's weights): it resumes at that, and only at that."""
    out = tmp_path / "out"
    enhance_set(run, f"noisy:{built}", out=out, max_files=2, figures=0, **FAST)
    state = json.loads((out / "state.json").read_text())
    for option in ("e_steps", "latent_e_step"):  # at the reference's values: the fingerprint earlier folders have
        assert option not in json.dumps(state), state
    summary = enhance_set(run, f"noisy:{built}", out=out, max_files=3, figures=0, **{**FAST, "e_steps": 1})
    assert summary["files"]["enhanced"] == 3 and summary["settings"]["e_steps"] == 1


def test_files_without_a_reference_and_a_mismatched_pair(built, run, tmp_path):
    only = tmp_path / "only"
    only.mkdir()
    for p in sorted((built / "noisy").glob("*.wav"))[:2]:
        shutil.copy(p, only / p.name)
    summary = enhance_set(run, f"noisy:{only}", out=tmp_path / "o1", figures=0, **FAST)
    rows = read_set_rows(tmp_path / "o1" / "per_file.csv")
    assert [r["errors"] for r in rows] == [{"reference": "no reference"}] * 2
    assert all((tmp_path / "o1" / "audio" / f"{r['name']}.wav").is_file() for r in rows)
    assert summary["files"]["no_reference"] == 2 and summary["files"]["scored"] == 0 and not summary["failures"]
    pairs = tmp_path / "pairs"
    shutil.copytree(built / "noisy", pairs / "noisy")
    shutil.copytree(built / "clean", pairs / "clean")
    first = sorted((pairs / "clean").glob("*.wav"))[0]
    sf.write(first, sf.read(first)[0][:8000], 16000)  # half a second: not the noisy file's clean speech
    summary = enhance_set(run, f"noisy:{pairs}", out=tmp_path / "o2", max_files=3, figures=0, **FAST)
    assert summary["files"]["enhanced"] == 2 and summary["files"]["failed"] == 1
    assert "differ in length" in summary["failures"][0]["reason"]


def test_the_report_has_an_enhancement_section(built, run, tmp_path):
    out = tmp_path / "res"
    enhance_set(run, f"noisy:{built}", out=out, figures=0, **FAST)
    text = write_report([tmp_path])
    section = text[text.index("## Enhancement") :]
    assert f"### Noisy set **{built.name}**" in section and "_noisy input_" in section
    assert "Δ SI-SDR (dB) ↑" in section and "| prior | 0 dB | 10 dB |" in section
    assert "VAE" in section.split("_noisy input_")[1]
    # the same prior with another KL weight and iteration count gets a row of its own, labelled with both
    enhance_set(run, f"noisy:{built}", out=tmp_path / "res-beta", figures=0, **{**FAST, "beta": 0.01})
    section = write_report([tmp_path])
    rows = [line for line in section.splitlines() if line.startswith("| VAE")]
    assert any(f"β 0.01, {FAST['iterations']} iterations" in line for line in rows), rows
    # and another E-step rate (the VAE's default is the reference's 1e-3, which no label names)
    enhance_set(run, f"noisy:{built}", out=tmp_path / "res-lr", figures=0, **{**FAST, "lr": 3e-4})
    rows = [line for line in write_report([tmp_path]).splitlines() if line.startswith("| VAE")]
    assert len(rows) == 2 * 3 and sum(", lr 0.0003" in line for line in rows) == 2, rows  # main and SNR tables
    # and more Adam steps per E-step
    enhance_set(run, f"noisy:{built}", out=tmp_path / "res-e", figures=0, **{**FAST, "e_steps": 2})
    rows = [line for line in write_report([tmp_path]).splitlines() if line.startswith("| VAE")]
    assert sum(f"{FAST['iterations']} iterations x 2 E-steps" in line for line in rows) == 2, rows
    # and the latent E-step
    enhance_set(run, f"noisy:{built}", out=tmp_path / "res-latent", figures=0, **{**FAST, "latent_e_step": True})
    rows = [line for line in write_report([tmp_path]).splitlines() if line.startswith("| VAE")]
    assert sum(", lr 0.1, 3 iterations, latent E-step" in line for line in rows) == 2, rows


def test_the_report_breaks_every_metric_down_by_snr():
    """One per-SNR table per metric a summary holds (the quality target reads every metric at every SNR)."""
    from lightdvae.report.enhance_section import enhance_section

    def stats(mean):
        return {"n": 4, "mean": mean, "ci_half": 0.1}

    by_snr = {
        k: {"improvement": {"si_sdr": stats(d), "estoi": stats(d / 100)}, "output": {}} for k, d in (("0", 3), ("5", 2))
    }
    summary = {
        "kind": "lightdvae-enhance",
        "run_dir": "pretrained:vae",
        "model": {"label": "VAE", "name": "vae"},
        "set": {"name": "s", "root": "/s", "snrs": [0, 5]},
        "settings": {"iterations": 30, "e_steps": 10},
        "files": {"scored": 8},
        "overall": {m: {} for m in ("input", "output", "improvement")},
        "by_snr": by_snr,
    }
    lines = "\n".join(enhance_section([summary])).splitlines()
    notes = [line for line in lines if "by input SNR" in line]
    assert notes == [
        "Δ SI-SDR (dB) by input SNR, mean ± half-width of the 95 % interval of the mean.",
        "Δ ESTOI by input SNR, mean ± half-width of the 95 % interval of the mean.",
    ], notes
    rows = [line for line in lines if line.startswith("| VAE, 30 iterations x 10 E-steps |")][1:]  # after the main
    assert rows == [
        "| VAE, 30 iterations x 10 E-steps | **3.00** ± 0.10 | **2.00** ± 0.10 |",
        "| VAE, 30 iterations x 10 E-steps | **0.030** ± 0.100 | **0.020** ± 0.100 |",
    ], rows


def _one_line_error(capsys, argv, expect: str):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0], err


def test_the_command_enhances_a_set_and_says_what_is_wrong_in_one_line(built, run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "cli"
    base = ["enhance", str(run), "--device", "cpu", "--iterations", "2", "--workers", "0"]
    assert main([*base, "--data", f"noisy:{built}", "--out", str(out), "--max-files", "4", "--no-audio"]) == 0
    said = capsys.readouterr().out
    assert "SNR (dB)" in said and "SI-SDR (dB)" in said and str(out / "summary.json") in said
    assert not (out / "audio").exists() and len(read_set_rows(out / "per_file.csv")) == 4
    _one_line_error(capsys, base, "nothing to enhance")
    wav = str(built / "noisy" / "x.wav")  # the file comes right after RUN
    _one_line_error(capsys, ["enhance", str(run), wav, *base[2:], "--data", f"noisy:{built}"], "not both")
    _one_line_error(capsys, [*base, "--data", f"noisy:{tmp_path / 'nowhere'}"], "no such folder")
    _one_line_error(capsys, ["enhance", str(run), wav, "--out", "o.wav", "--max-files", "2"], "--max-files")
    broken = tmp_path / "broken"
    shutil.copytree(built, broken)
    next((broken / "clean").glob("*.wav")).unlink()  # a built set's clean file missing: the set is refused
    _one_line_error(capsys, [*base, "--data", f"noisy:{broken}"], "missing")
    monkeypatch.setattr(VAE, "inference_parameters", DVAE.inference_parameters)
    _one_line_error(capsys, [*base, "--data", f"noisy:{built}", "--out", str(tmp_path / "n")], "no inference network")
    assert not (tmp_path / "n").exists()


def test_a_dead_metric_worker_is_one_line(built, run, tmp_path, monkeypatch):
    from concurrent.futures.process import BrokenProcessPool

    def broken(loop, chunk):
        raise BrokenProcessPool("a child process terminated abruptly")

    monkeypatch.setattr(dataset, "enhance_chunk", broken)
    out = tmp_path / "dead"
    with pytest.raises(EnhanceError, match=r"worker process died; the 0 files done are saved in .*per_file.csv"):
        enhance_set(run, f"noisy:{built}", out=out, figures=0, **FAST)
    assert json.loads((out / "state.json").read_text())["finished"] is False


def test_the_command_builds_the_settings_once_and_passes_them_down(built, run, tmp_path, monkeypatch):
    import lightdvae.enhance as E

    seen = []
    monkeypatch.setattr(E, "enhance_set", lambda run, data, settings=None, **kw: seen.append((settings, kw)) or {})
    argv = ["enhance", str(run), "--data", f"noisy:{built}", "--iterations", "2", "--rank", "4", "--samples", "2"]
    assert main(argv) == 0
    assert seen[0][0] == EnhanceSettings(iterations=2, rank=4, samples=2)
    assert not set(seen[0][1]) & set(EnhanceSettings.names())  # the EM options travel only in the settings
