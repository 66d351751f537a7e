"""Generation from the prior and the w exchange (lightdvae.generation, ``lightdvae generate`` / ``swap-w``) on a tiny
corpus with tiny untrained models: outputs, FDSD in the report's format, resumption and reuse, refused folders,
one-line errors, determinism, and the own-w decode being exactly the plain resynthesis."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import TINY_LIGHT, make_run, speech_like, write_corpus

from lightdvae import generation as G
from lightdvae.audio import HOP, load_audio, power_spectrogram, resynthesize, save_audio, stft
from lightdvae.cli import main
from lightdvae.models import build
from lightdvae.report import build_report, find_results
from lightdvae.runs import open_run

SR = 16000
FAST = dict(griffin_lim_iters=8, batch_size=4)  # Griffin-Lim's iterations are most of a generation's cost


pytestmark = pytest.mark.usefixtures("private_dirs", "one_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """train/val/test folders; the test split has 6 files of 0.6 to 1.0 s from 3 speakers."""
    files = [("train", "a", 0), ("val", "b", 0)] + [("test", spk, u) for spk in "cde" for u in range(2)]
    return write_corpus(
        tmp_path_factory.mktemp("gencorpus") / "tiny",
        [(split, spk, u, 0.6 + 0.2 * (seed % 3)) for seed, (split, spk, u) in enumerate(files, start=1)],
    )


@pytest.fixture
def tiny_features():
    """A 4-d feature 'network' (level statistics of the waveform): FDSD without the cost of the 256-d DS2 features."""
    from lightdvae.fdsd import as_extractor, register_extractor, unregister_extractor

    def stats(waves, lengths):
        rows = [w[: int(n)] for w, n in zip(waves, lengths, strict=True)]
        return torch.stack([torch.stack([r.abs().mean(), r.std(), r.square().mean(), r.abs().max()]) for r in rows])

    register_extractor("tiny-test", lambda: as_extractor(stats, "tiny-test", "waveform level statistics (4-d)"))
    yield "tiny-test"
    unregister_extractor("tiny-test")


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def test_cli_generate_end_to_end_fdsd_and_report(corpus, tmp_path, capsys):
    run = make_run(tmp_path / "light", data=str(corpus))
    argv = ["generate", str(run), "--n", "6", "--frames", "40", "--draws", "2", "--figures", "2", "--batch-size", "4"]
    assert main([*argv, "--griffin-lim-iters", "8"]) == 0
    out = run / "generate" / "best-n6-f40-t1-s0"
    printed = capsys.readouterr().out
    assert str(out) in printed and "LigHT-DVAE: generated 6 samples of 0.62 s" in printed
    assert "FDSD (ds2-builtin, tiny test): " in printed and "(2 draws of 3 vs 3); real-vs-real floor" in printed

    wavs = sorted((out / "wav").glob("*.wav"))
    assert [w.name for w in wavs] == [f"sample_{i:03d}.wav" for i in range(6)]
    for w in wavs:
        data, sr = sf.read(w)
        assert sr == SR and data.shape == (39 * HOP,) and 0.9 < np.abs(data).max() <= 0.951
    assert (out / "generation.png").stat().st_size > 10_000 and (out / "real_vs_generated.png").is_file()

    m = json.loads((out / "generation.json").read_text())
    assert m["kind"] == "lightdvae-generation" and m["n"] == 6 and m["frames"] == 40 and m["seed"] == 0
    assert m["model"]["name"] == "light-dvae" and m["model"]["label"] == "LigHT-DVAE"
    assert m["model"]["parameters"] == build("light-dvae", **TINY_LIGHT).num_parameters()
    assert m["run_dir"] == str(run.resolve()) and len(m["checkpoint"]["sha256"]) == 64
    assert m["seconds_of_audio"] == pytest.approx(6 * 39 * HOP / SR) and m["temperature"] == 1.0
    t = m["timings"]
    assert t["batches"] == 2 and t["prior_sampling_s"] > 0 and t["griffin_lim_s"] > 0
    assert t["prior_sampling_s_per_audio_s"] == pytest.approx(t["prior_sampling_s"] / m["seconds_of_audio"])
    assert m["outputs"]["figures"] == {"generation": "generation.png", "real_vs_generated": "real_vs_generated.png"}
    assert m["versions"]["torch"] == torch.__version__ and m["fdsd"]["fdsd"]["n"] == 3

    f = json.loads((out / "fdsd.json").read_text())
    assert f["kind"] == "lightdvae-fdsd" and f["model"] == {**f["model"], "name": "light-dvae", "label": "LigHT-DVAE"}
    assert f["dataset"]["name"] == "tiny" and f["dataset"]["split"] == "test" and f["dataset"]["files"] == 6
    assert f["feature_network"].startswith("ds2-builtin: DeepSpeech2-style")
    # 6 real files: the FDSD and both floors at 6 // 2 = 3 per set, the FDSD also at min(6, 6) = 6
    assert f["fdsd"]["n"] == 3 and f["fdsd"]["draws"] == 2 and f["fdsd"]["mean"] > 0 and f["fdsd"]["std"] >= 0
    assert f["floor"]["exact_phase"]["n"] == f["floor"]["griffin_lim"]["n"] == 3
    assert f["fdsd_all_real"]["n"] == 6 and f["fdsd_all_real"]["std"] == 0  # both sets whole: every draw the same
    # the same number as `lightdvae fdsd score` on the folders (same front end, sample size and seed)
    from lightdvae.fdsd import fdsd

    again = fdsd(corpus / "test", out / "wav", draws=2, sample_size=3, seed=0)
    assert again.values == pytest.approx(f["fdsd"]["values"], rel=1e-9)

    evals, fdsds = find_results([run])
    assert evals == [] and len(fdsds) == 1 and fdsds[0]["_path"] == str(out / "fdsd.json")
    text = build_report(evals, fdsds)
    table = text[text.index("### FDSD against corpus **tiny**, **test** split") :]
    assert "Feature network: ds2-builtin: DeepSpeech2-style" in table
    assert f"| LigHT-DVAE | {f['fdsd']['mean']:.2f} ± {f['fdsd']['std']:.2f} | 2 | 3 |" in table
    assert "| _real vs real (exact phase)_ |" in table and "| _real vs real (Griffin-Lim)_ |" in table


def test_resume_batch_by_batch_and_reuse(corpus, tmp_path, monkeypatch, tiny_features):
    run = make_run(tmp_path / "light")
    out = tmp_path / "gen"
    kw = dict(n=5, frames=24, out=out, fdsd=False, figures=0, griffin_lim_iters=4, batch_size=2)
    first = G.generate_run(run, **kw)
    assert not first["reused"] and first["timings"]["batches"] == 3 and first["sessions"] == 1
    assert first["outputs"]["figures"] == {} and first["fdsd"] is None
    before = {p.name: p.read_bytes() for p in (out / "wav").glob("*.wav")}

    calls = []
    model_class = type(open_run(run, "best", "cpu").model)
    real_generate = model_class.generate

    def counting(self, n, frames, temperature=1.0, generator=None):
        calls.append(n)
        return real_generate(self, n, frames, temperature=temperature, generator=generator)

    monkeypatch.setattr(model_class, "generate", counting)
    # an interruption during the second batch: its files are half written, it is not recorded as done
    state = json.loads((out / "state.json").read_text())
    del state["batches"]["1"]
    state["finished"] = False
    (out / "state.json").write_text(json.dumps(state))
    (out / "wav" / "sample_003.wav").unlink()
    resumed = G.generate_run(run, **kw)
    assert calls == [2] and not resumed["reused"] and resumed["sessions"] == 2
    assert {p.name: p.read_bytes() for p in (out / "wav").glob("*.wav")} == before  # each batch its own stream

    calls.clear()
    again = G.generate_run(run, **kw)
    assert calls == [] and again["reused"] and again["created"] == resumed["created"]
    # FDSD added later: computed on the files already there, then reused; new FDSD settings: computed again
    fd = dict(kw, fdsd=True, data=str(corpus), fdsd_draws=2, features=tiny_features)
    with_fdsd = G.generate_run(run, **fd)
    assert calls == [] and with_fdsd["fdsd"]["fdsd"]["n"] == 3 and with_fdsd["fdsd"]["features"] == "tiny-test"
    assert json.loads((out / "fdsd.json").read_text())["feature_network"] == "waveform level statistics (4-d)"
    mtime = (out / "fdsd.json").stat().st_mtime_ns
    assert G.generate_run(run, **fd)["fdsd"]["reused"] and (out / "fdsd.json").stat().st_mtime_ns == mtime
    assert G.generate_run(run, **{**fd, "fdsd_draws": 3})["fdsd"]["fdsd"]["draws"] == 3
    assert json.loads((out / "generation.json").read_text())["fdsd"]["fdsd"]["draws"] == 3 and calls == []


def test_a_folder_of_another_generation_is_refused(corpus, tmp_path, capsys):
    run = make_run(tmp_path / "light")
    out = tmp_path / "gen"
    kw = dict(n=2, frames=8, out=out, fdsd=False, figures=0, **FAST)
    G.generate_run(run, **kw)
    with pytest.raises(
        G.GenerationError, match=r"another generation \(differs in: seed: 0 there, 1 asked\).*--overwrite"
    ):
        G.generate_run(run, **{**kw, "seed": 1})
    base = ["generate", str(run), "--out", str(out), "--no-fdsd", "--frames", "8", "--griffin-lim-iters", "8"]
    err = one_line_error(capsys, [*base, "--n", "3", "--batch-size", "4"])
    assert "differs in: n" in err and "--overwrite" in err and "--out DIR" in err
    redone = G.generate_run(run, **{**kw, "seed": 1}, overwrite=True)
    assert redone["seed"] == 1 and not redone["reused"] and redone["sessions"] == 1
    make_run(run, d_model=8)  # new weights in the same run
    with pytest.raises(G.GenerationError, match="checkpoint weights"):
        G.generate_run(run, **{**kw, "seed": 1})
    (tmp_path / "foreign" / "wav").mkdir(parents=True)  # a folder of unknown origin is not written into
    with pytest.raises(G.GenerationError, match="another generation"):
        G.generate_run(run, **{**kw, "out": tmp_path / "foreign"})


def test_generate_errors_are_one_line(corpus, tmp_path, capsys):
    run = make_run(tmp_path / "light")
    assert "does not exist" in one_line_error(capsys, ["generate", str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    assert "no checkpoint checkpoints/best.pt" in one_line_error(capsys, ["generate", str(tmp_path / "empty")])
    err = one_line_error(capsys, ["generate", str(run), "--frames", "1"])
    assert "frames must be between 2 and 100000, got 1" in err
    with pytest.raises(SystemExit):  # argparse: invalid positive integer value: '0'
        main(["generate", str(run), "--n", "0"])
    capsys.readouterr()
    for bad, match in ((dict(n=0), "n must be between 1"), (dict(n=10**6), "n must be between 1 and 100000")):
        with pytest.raises(G.GenerationError, match=match):
            G.generate_run(run, fdsd=False, **bad)
    with pytest.raises(G.GenerationError, match="temperature must be a finite number >= 0"):
        G.generate_run(run, fdsd=False, temperature=float("nan"))
    err = one_line_error(capsys, ["generate", str(run), "--n", "1", "--data", str(corpus)])
    assert "at least 2 generated samples" in err and "--no-fdsd" in err
    err = one_line_error(capsys, ["generate", str(run)])
    assert "does not record the corpus" in err and "--data SPEC" in err and "--no-fdsd" in err
    err = one_line_error(capsys, ["generate", str(run), "--data", str(tmp_path / "nowhere")])
    assert "does not exist" in err and "--no-fdsd" in err
    err = one_line_error(capsys, ["generate", str(run), "--data", "builtin"])
    assert "lightdvae corpus build" in err and "--no-fdsd" in err
    small = tmp_path / "small"
    for split, name in (("train", "a"), ("val", "b"), ("test", "c")):
        (small / split).mkdir(parents=True)
        sf.write(small / split / f"{name}.wav", speech_like(0.5, 1), SR)
    err = one_line_error(capsys, ["generate", str(run), "--data", str(small), "--split", "test"])
    assert "has 1 file(s); FDSD needs at least 2" in err
    assert not (run / "generate").exists()  # every error came before any output


def test_cli_swap_w_outputs_and_check(corpus, tmp_path, capsys):
    run = make_run(tmp_path / "light")
    a, b = corpus / "test" / "c" / "utt0.wav", corpus / "test" / "e" / "utt1.wav"
    out = tmp_path / "swap"
    assert main(["swap-w", str(run), str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "LigHT-DVAE w exchange (GEN past)" in printed and "a_with_w_of_b: w transfer" in printed
    length = {"a": len(load_audio(a)), "b": len(load_audio(b))}
    for name in ("a_with_w_of_b", "b_with_w_of_a", "a_with_w_of_a", "b_with_w_of_b"):
        data, sr = sf.read(out / f"{name}.wav")
        assert sr == SR and data.shape == (length[name[0]],)  # the length of the file whose z (and phase) it has
    assert (out / "swap_w.png").stat().st_size > 10_000 and not list(out.glob("*_gl.wav"))
    s = json.loads((out / "swap_w.json").read_text())
    assert s["kind"] == "lightdvae-swap-w" and s["past"] == "gen" and s["model"]["label"] == "LigHT-DVAE"
    assert len(s["w"]["a"]) == len(s["w"]["b"]) == TINY_LIGHT["w_dim"] and s["inputs"]["a"]["path"] == str(a)
    c = s["check"]
    for name, src, donor in (("a_with_w_of_b", "a", "b"), ("b_with_w_of_a", "b", "a")):
        d = c[name]
        assert d["source"] == src and d["w_donor"] == donor and 0 <= d["w_transfer"] <= 1
        assert d["w_transfer"] == pytest.approx(d["w_dist_to_source"] / (d["w_dist_to_source"] + d["w_dist_to_donor"]))
        assert d["ltas_db_to_donor"] >= 0 and d["ltas_db_to_source"] >= 0
        own = c[f"{src}_with_w_of_{src}"]  # the baseline of the swapped output: its source's own-w resynthesis
        assert d["own_ltas_db_to_donor"] == own["ltas_db_to_other"]
        assert d["ltas_db_toward_donor"] == pytest.approx(own["ltas_db_to_other"] - d["ltas_db_to_donor"])
        ow = own["w_dist_to_source"] / (own["w_dist_to_source"] + own["w_dist_to_other"])
        assert d["own_w_transfer"] == pytest.approx(ow)
    assert "w_transfer" not in c["a_with_w_of_a"] and c["w_dist_a_b"] > 0 and c["ltas_db_a_b"] > 0
    assert s["outputs"]["figure"] == "swap_w.png" and 0 < s["gain"] <= 1

    # GT past and Griffin-Lim outputs; the default folder
    result = G.swap_w(run, a, b, past="gt", griffin_lim=True, griffin_lim_iters=4)
    assert Path(result["out"]) == run / "swap_w" / "utt0--utt1-gt"
    assert sorted(p.name for p in Path(result["out"]).glob("*_gl.wav")) == [
        "a_with_w_of_a_gl.wav",
        "a_with_w_of_b_gl.wav",
        "b_with_w_of_a_gl.wav",
        "b_with_w_of_b_gl.wav",
    ]
    with pytest.raises(G.GenerationError, match=r"another w exchange \(differs in: .*past.*--overwrite"):
        G.swap_w(run, a, b, out=result["out"])


def test_swap_w_is_deterministic_and_own_w_is_the_plain_resynthesis(corpus, tmp_path):
    run = make_run(tmp_path / "light")
    a, b = corpus / "test" / "c" / "utt1.wav", corpus / "test" / "d" / "utt0.wav"
    r1 = G.swap_w(run, a, b, out=tmp_path / "one", device="cpu")
    r2 = G.swap_w(run, a, b, out=tmp_path / "two", device="cpu")
    assert r1["check"] == r2["check"] and r1["w"] == r2["w"]
    for name in r1["outputs"]["wav"].values():
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()

    model = open_run(run, "best", "cpu").model
    wave_a, wave_b = load_audio(a), load_audio(b)
    pa, pb = power_spectrogram(torch.from_numpy(wave_a)), power_spectrogram(torch.from_numpy(wave_b))
    for past in ("gen", "gt"):
        ex = G.exchange_w(model, pa, pb, past=past)
        # w swapped back (a's own w) is exactly the plain resynthesis of a, bit for bit
        assert torch.equal(ex["a_with_w_of_a"], model.resynthesize(pa[None], past=past)[0])
        assert torch.equal(ex["b_with_w_of_b"], model.resynthesize(pb[None], past=past)[0])
        assert not torch.allclose(ex["a_with_w_of_b"], ex["a_with_w_of_a"])  # the donor's w changes the output
    # and so is the written file (same gain, same 16-bit rounding)
    plain = resynthesize(model.resynthesize(pa[None], past="gen")[0], stft(torch.from_numpy(wave_a)), len(wave_a))
    save_audio(tmp_path / "plain.wav", plain * r1["gain"])
    assert (tmp_path / "plain.wav").read_bytes() == (tmp_path / "one" / "a_with_w_of_a.wav").read_bytes()


def test_swap_w_refuses_models_without_w_and_bad_files(corpus, tmp_path, capsys):
    a = corpus / "test" / "c" / "utt0.wav"
    vae = make_run(tmp_path / "vae", "vae", encoder_dims=[16], decoder_dims=[16], z_dim=4)
    err = one_line_error(capsys, ["swap-w", str(vae), str(a), str(a)])
    assert "VAE model, which has no sequence latent w" in err and "hit-dvae, light-dvae" in err
    run = make_run(tmp_path / "light")
    assert "does not exist" in one_line_error(capsys, ["swap-w", str(run), str(a), str(tmp_path / "no.wav")])
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    assert "cannot use" in one_line_error(capsys, ["swap-w", str(run), str(a), str(tmp_path / "bad.wav")])
    assert "does not exist" in one_line_error(capsys, ["swap-w", str(tmp_path / "nope"), str(a), str(a)])


def test_generation_runs_on_one_thread_by_default_and_restores_the_count(corpus, tmp_path):
    """Step-by-step decoding on the CPU uses one torch thread unless told (a second one only waits on a busy
    machine); the caller's thread count is restored."""
    import torch

    run = make_run(tmp_path / "light")
    before = torch.get_num_threads()
    manifest = G.generate_run(run, n=2, frames=8, fdsd=False, figures=0, quiet=True, device="cpu")
    assert manifest["versions"]["threads"] == 1 and torch.get_num_threads() == before
    two = G.generate_run(run, n=2, frames=8, fdsd=False, figures=0, quiet=True, device="cpu", threads=2, seed=1)
    assert two["versions"]["threads"] == 2 and torch.get_num_threads() == before


def test_a_generation_that_cannot_fit_in_memory_is_refused_with_the_estimate(corpus, tmp_path, capsys, monkeypatch):
    from lightdvae import runtime

    run = make_run(tmp_path / "light")
    monkeypatch.setattr(runtime, "available_memory", lambda device: 8 * 2**30)  # an 8 GiB machine
    err = one_line_error(capsys, ["generate", str(run), "--frames", "100000", "--no-fdsd"])
    assert "32 samples of 100,000 frames at once need about 190.7 GiB" in err and "--batch-size 1 " in err
    monkeypatch.setattr(runtime, "available_memory", lambda device: 2**30)
    err = one_line_error(capsys, ["generate", str(run), "--frames", "100000", "--n", "1", "--no-fdsd"])
    assert "generate fewer frames: about 13,421 fit" in err


def test_real_set_features_and_floors_are_computed_once_per_real_set(corpus, tmp_path, monkeypatch, tiny_features):
    import lightdvae.fdsd as fdsd_pkg

    run = make_run(tmp_path / "light", data=str(corpus))
    calls = {"floor": 0}
    real_floor = fdsd_pkg.fdsd_floor

    def counted(*args, **kwargs):
        calls["floor"] += 1
        return real_floor(*args, **kwargs)

    monkeypatch.setattr(fdsd_pkg, "fdsd_floor", counted)
    kw = dict(n=4, frames=24, fdsd_draws=2, features=tiny_features, device="cpu", **FAST)
    first = json.loads((Path(G.generate_run(run, seed=0, **kw)["out"]) / "fdsd.json").read_text())
    cache = sorted(p.name for p in (tmp_path / "cache" / "fdsd").iterdir())
    assert calls["floor"] == 1 and len(cache) == 2  # the real features and the floor at m = 3
    # another generation of the same real set: its own FDSD, the same floor, nothing recomputed
    second = json.loads((Path(G.generate_run(run, seed=1, **kw)["out"]) / "fdsd.json").read_text())
    assert calls["floor"] == 1 and second["floor"] == first["floor"]
    assert any("small-sample bias" in note for note in second["notes"])  # 3 utterances per set
    # a real file changes: a new real set, computed again
    test_file = sorted((corpus / "test").rglob("*.wav"))[0]
    data, sr = sf.read(test_file)
    try:
        sf.write(test_file, data * 0.5, sr)
        G.generate_run(run, seed=2, **kw)
        assert calls["floor"] == 2
    finally:
        sf.write(test_file, data, sr)  # the module's corpus, as the other tests know it
