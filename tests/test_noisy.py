"""Noisy test sets (lightdvae.data.noisy, ``lightdvae corpus noisy``): exact SNRs, determinism, babble speakers, the
manifest, the readers of ``noisy:``, ``vbd:`` and ``wsj0-qut:``, resuming, and one-line errors.

Everything runs on a tiny corpus of speech-like signals written in tmp_path: no espeak-ng needed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import speech_like, write_corpus

from lightdvae import resultdir
from lightdvae.cli import main
from lightdvae.data import DataError
from lightdvae.data.noisy import (
    GENERATED_NOISES,
    MANIFEST_FIELDS,
    PEAK_LIMIT,
    build_noisy_set,
    parse_snrs,
    read_noisy_set,
    snr_db,
    snr_tag,
)
from lightdvae.errors import ConfigError

pytestmark = pytest.mark.usefixtures("private_dirs")

SNRS = [-5.0, 10.0, 40.0]
#: train speakers a-d, plus "t", who is also a test speaker: babble must leave them out
FILES = [("train", s, i, 1.5) for s in "abcd" for i in range(2)] + [
    ("train", "t", 5, 1.5),
    ("val", "v", 0, 1.0),
    ("test", "t", 0, 1.2),
    ("test", "u", 0, 2.0),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("noisy") / "corpus", FILES)


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("set") / "set"
    report = build_noisy_set(out, speech=str(corpus), snrs=SNRS, seed=0, progress=False)
    assert report.files == 2 * len(SNRS) * len(GENERATED_NOISES) and report.written == report.files
    return out


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def _read(path: Path) -> np.ndarray:
    return sf.read(str(path), dtype="float64")[0]


def _one_line_error(capsys, argv, expect: str, code: int = 2):
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith("lightdvae corpus: error: ") and expect in err[0], err[0]


# ----------------------------------------------------------------------------------------------------------------
# The set
# ----------------------------------------------------------------------------------------------------------------
def test_the_written_files_hold_the_target_snr_for_every_noise(built):
    rows = _rows(built)
    assert {r["noise"] for r in rows} == set(GENERATED_NOISES)
    assert {r["snr_db"] for r in rows} == set(SNRS)
    for r in rows:
        measured = snr_db(_read(built / r["clean"]), _read(built / r["noisy"]))
        assert abs(measured - r["snr_db"]) < 0.01, (r["name"], measured)
        assert abs(measured - r["measured_snr_db"]) < 1e-4


def test_the_manifest_matches_the_files(built, corpus):
    rows = _rows(built)
    names = [r["name"] for r in rows]
    assert len(set(names)) == len(names)
    assert {p.stem for p in (built / "noisy").glob("*.wav")} == set(names)
    assert {p.stem for p in (built / "clean").glob("*.wav")} == set(names)
    info = json.loads((built / "noisy.json").read_text())
    assert info["complete"] and info["files"] == len(rows) and info["snrs"] == SNRS
    assert info["format_version"] == 1 and info["seed"] == 0 and "whole utterance" in info["snr_definition"]
    for r in rows:
        assert tuple(r) == MANIFEST_FIELDS
        assert re.fullmatch(r"[A-Za-z0-9_+-]+", r["name"]), r["name"]
        assert (
            r["name"] == f"{Path(r['speech']).parent.name}_{Path(r['speech']).stem}_{r['noise']}_{snr_tag(r['snr_db'])}"
        )
        noisy, clean = _read(built / r["noisy"]), _read(built / r["clean"])
        assert noisy.size == clean.size == r["samples"]
        assert np.abs(noisy).max() <= PEAK_LIMIT + 1e-4
        # the clean file is the speech times the recorded gain (16-bit rounding aside)
        speech = _read(Path(r["speech"]))
        np.testing.assert_allclose(clean, r["gain"] * speech, atol=2.0 / 32768)
    assert any(r["gain"] < 1.0 for r in rows) and any(r["gain"] == 1.0 for r in rows)


def test_babble_uses_only_training_speakers_absent_from_the_test_split(built):
    talkers = json.loads((built / "noisy.json").read_text())["noises"]["babble"]["talkers"]
    assert len(talkers) >= 2 and set(talkers) <= set("abcd")  # "t" speaks in train and test: left out


def test_same_seed_same_bytes_other_seed_other_noise(corpus, tmp_path):
    kwargs = dict(speech=str(corpus), snrs="0", noises="white,babble,engine", files=1, progress=False)
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        build_noisy_set(tmp_path / name, seed=seed, **kwargs)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.wav"))
    assert files and files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.wav"))
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
        other = tmp_path / "c" / f
        if f.parts[0] == "noisy" and other.is_file():
            assert other.read_bytes() != (tmp_path / "a" / f).read_bytes()
    assert _rows(tmp_path / "a") == _rows(tmp_path / "b")


def test_a_balanced_set_has_each_utterance_once(corpus, tmp_path):
    build_noisy_set(tmp_path / "s", speech=str(corpus), snrs="0,5", design="balanced", progress=False)
    rows = _rows(tmp_path / "s")
    assert sorted(r["speaker"] for r in rows) == ["t", "u"]


def test_a_development_set_mixes_the_validation_split(corpus, built, tmp_path):
    """split="val": the validation split's utterances (a set to choose EM options on without the test set), with
    babble still from training speakers outside the mixed split; a test set's fingerprint has no split key (the
    sets made before the option resume as they are), and a folder holding the test set refuses the other split."""
    report = build_noisy_set(tmp_path / "dev", speech=str(corpus), snrs="0", split="val", progress=False)
    rows = _rows(tmp_path / "dev")
    assert report.files == len(GENERATED_NOISES) and {r["speaker"] for r in rows} == {"v"}
    info = json.loads((tmp_path / "dev" / "noisy.json").read_text())
    assert info["speech"]["split"] == "val" and info["fingerprint"]["split"] == "val"
    assert set(info["noises"]["babble"]["talkers"]) <= set("abcdt")  # "v" speaks in val only
    test_info = json.loads((built / "noisy.json").read_text())
    assert test_info["speech"]["split"] == "test" and "split" not in test_info["fingerprint"]
    with pytest.raises(DataError, match="other options"):
        build_noisy_set(built, speech=str(corpus), snrs=SNRS, seed=0, split="val", progress=False)
    with pytest.raises(ConfigError, match="--split must be one of test, val"):
        build_noisy_set(tmp_path / "x", speech=str(corpus), split="train", progress=False)


def test_parse_snrs_and_tags():
    assert parse_snrs("-5, 0,5,10,5") == [-5.0, 0.0, 5.0, 10.0]
    assert [snr_tag(s) for s in (5, -10, 0, 2.5)] == ["+5dB", "-10dB", "+0dB", "+2p5dB"]
    for bad in ("41", "-21", "x", ","):
        with pytest.raises(ConfigError):
            parse_snrs(bad)


# ----------------------------------------------------------------------------------------------------------------
# Noise folders
# ----------------------------------------------------------------------------------------------------------------
def test_a_noise_folder_at_another_rate_is_resampled(corpus, tmp_path):
    noise_dir = tmp_path / "noises"
    noise_dir.mkdir()
    rng = np.random.default_rng(3)
    sf.write(noise_dir / "fan hum.wav", 0.1 * rng.standard_normal(8000 * 5), 8000, subtype="PCM_16")
    sf.write(noise_dir / "short.flac", 0.1 * rng.standard_normal(16000 // 2), 16000)  # shorter than speech: looped
    report = build_noisy_set(tmp_path / "s", speech=str(corpus), snrs="0,20", noise_dir=noise_dir, progress=False)
    assert report.noises == ["fan-hum", "short"]
    info = json.loads((tmp_path / "s" / "noisy.json").read_text())
    assert info["noises"]["fan-hum"]["sample_rate"] == 8000
    rows = _rows(tmp_path / "s")
    assert any(r["noise_looped"] for r in rows if r["noise"] == "short")
    for r in rows:
        assert r["noise_source"].endswith((".wav", ".flac"))
        measured = snr_db(_read(tmp_path / "s" / r["clean"]), _read(tmp_path / "s" / r["noisy"]))
        assert abs(measured - r["snr_db"]) < 0.01


# ----------------------------------------------------------------------------------------------------------------
# Readers
# ----------------------------------------------------------------------------------------------------------------
def test_the_reader_reads_back_what_the_builder_wrote(built):
    found = read_noisy_set(f"noisy:{built}")
    rows = {r["name"]: r for r in _rows(built)}
    assert found.layout == "noisy" and [i.name for i in found] == sorted(rows)
    assert found.snrs() == SNRS and found.noises() == sorted(GENERATED_NOISES)
    item = found.items[0]
    assert (item.snr_db, item.noise) == (rows[item.name]["snr_db"], rows[item.name]["noise"])
    noisy, clean = item.load()
    assert noisy.dtype == np.float32 and noisy.shape == clean.shape == (rows[item.name]["samples"],)
    np.testing.assert_allclose(noisy, _read(item.noisy), atol=1e-6)


def test_the_reader_of_plain_pairs_and_of_noisy_files_only(built, tmp_path):
    (tmp_path / "pairs").symlink_to(built / "noisy", target_is_directory=True)
    (tmp_path / "both").mkdir()
    (tmp_path / "both" / "noisy").symlink_to(built / "noisy", target_is_directory=True)
    (tmp_path / "both" / "clean").symlink_to(built / "clean", target_is_directory=True)
    pairs = read_noisy_set(f"noisy:{tmp_path / 'both'}")
    assert pairs.layout == "noisy-pairs" and all(i.clean is not None for i in pairs)
    alone = read_noisy_set(f"noisy:{tmp_path / 'pairs'}")
    assert alone.layout == "noisy-only" and len(alone) == len(pairs) and all(i.clean is None for i in alone)


def _vbd_folder(root: Path, with_log: bool = True) -> Path:
    for i, name in enumerate(("p232_001", "p232_002", "p257_001")):
        clean = speech_like(1.0, i + 1, sr=48000)
        noise = 0.05 * np.random.default_rng(i).standard_normal(clean.size)
        for folder, wave in (("clean_testset_wav", clean), ("noisy_testset_wav", clean + noise)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            sf.write(root / folder / f"{name}.wav", wave, 48000, subtype="PCM_16")
    if with_log:
        (root / "logfiles").mkdir()
        (root / "logfiles" / "log_testset.txt").write_text("p232_001 living 17.5\np232_002 bus 2.5\n")
    return root


def test_the_voicebank_demand_reader_resamples_48k(tmp_path):
    found = read_noisy_set(f"vbd:{_vbd_folder(tmp_path / 'vb')}")
    assert found.layout == "vbd" and [i.name for i in found] == ["p232_001", "p232_002", "p257_001"]
    assert [(i.noise, i.snr_db) for i in found] == [("living", 17.5), ("bus", 2.5), (None, None)]
    assert found.items[0].speaker == "p232"
    noisy, clean = found.items[0].load()
    assert noisy.shape == clean.shape == (16000,)
    unlabelled = read_noisy_set(f"vbd:{_vbd_folder(tmp_path / 'vb2', with_log=False)}")
    assert unlabelled.snrs() == [] and any("log_testset.txt" in n for n in unlabelled.notes)


def test_the_wsj0_qut_reader_parses_names_and_lists(tmp_path):
    root = tmp_path / "qut"
    for utt, noisy_name in (("440c0201", "440c0201_CAFE-CAFE-2_-5"), ("440c0202", "440c0202_STREET-KG-2_5")):
        (root / "clean" / "440").mkdir(parents=True, exist_ok=True)
        (root / "test").mkdir(exist_ok=True)
        sf.write(root / "clean" / "440" / f"{utt}.wav", speech_like(0.5, 1), 16000, subtype="PCM_16")
        sf.write(root / "test" / f"{noisy_name}.wav", speech_like(0.5, 2), 16000, subtype="PCM_16")
    found = read_noisy_set(f"wsj0-qut:{root}")
    assert [(i.noise, i.snr_db, i.clean.name) for i in found] == [
        ("CAFE-CAFE-2", -5.0, "440c0201.wav"),
        ("STREET-KG-2", 5.0, "440c0202.wav"),
    ]
    listing = {
        "440c0201": {
            "p_id": "440",
            "noisy_wav": "{noisy_root}/440c0201_CAFE-CAFE-2_-5.wav",
            "clean_wav": "{clean_root}/440/440c0201.wav",
            "noise_type": "CAFE-CAFE-2",
            "snr": -5,
        },
    }
    (root / "wsj_test.json").write_text(json.dumps(listing))
    listed = read_noisy_set(f"wsj0-qut:{root}")
    assert [(i.name, i.noise, i.snr_db, i.speaker) for i in listed] == [
        ("440c0201_CAFE-CAFE-2_-5", "CAFE-CAFE-2", -5.0, "440")
    ]


# ----------------------------------------------------------------------------------------------------------------
# Reruns, resumes, refusals
# ----------------------------------------------------------------------------------------------------------------
def test_a_rerun_is_a_no_op_and_an_interrupted_build_resumes(corpus, tmp_path, capsys):
    out = tmp_path / "s"
    argv = ["corpus", "noisy", str(out), "--speech", str(corpus), "--snr", "-5,5", "--noises", "pink,ssn", "-q"]
    assert main(argv) == 0
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.wav")}
    before = {p: p.read_bytes() for p in stamps}
    capsys.readouterr()
    assert main(argv) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.wav")} == stamps
    # an interruption: the set is unfinished and two files are missing; the same command finishes it, identically
    info = json.loads((out / "noisy.json").read_text())
    (out / "noisy.json").write_text(json.dumps({**info, "complete": False}))
    victims = sorted(stamps)[:2]
    for p in victims:
        p.unlink()
    with pytest.raises(DataError, match="unfinished"):
        read_noisy_set(f"noisy:{out}")
    assert main(argv) == 0
    assert {p: p.read_bytes() for p in stamps} == before
    _one_line_error(capsys, [*argv[:-3], "--noises", "white"], "--force")
    assert main([*argv[:-3], "--noises", "white", "--force", "-q"]) == 0
    assert {r["noise"] for r in _rows(out)} == {"white"} and not any(p.exists() for p in victims)


def test_a_second_writer_is_refused_with_one_line(corpus, tmp_path, capsys):
    out = tmp_path / "s"
    with resultdir.folder_lock(out, command="lightdvae corpus noisy"):
        _one_line_error(capsys, ["corpus", "noisy", str(out), "--speech", str(corpus)], "is being written by")


# ----------------------------------------------------------------------------------------------------------------
# One-line errors
# ----------------------------------------------------------------------------------------------------------------
def test_user_errors_are_one_line(corpus, tmp_path, capsys):
    empty, silent, broken, train_only = (tmp_path / n for n in ("empty", "silent", "broken", "train_only"))
    for d in (empty, silent, broken):
        d.mkdir()
    sf.write(silent / "zeros.wav", np.zeros(16000), 16000, subtype="PCM_16")
    (broken / "bad.wav").write_bytes(b"RIFF not really a wav file")
    write_corpus(train_only, [("train", "a", 0, 0.5), ("val", "b", 0, 0.5)])
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    out, speech = str(tmp_path / "out"), ["--speech", str(corpus)]
    cases = [
        (["--snr", "50"], "outside -20..40 dB"),
        (["--snr", "-5,loud"], "'loud' is not a number"),
        (["--noises", "white,rain"], "choose from white, pink"),
        (["--noise", str(tmp_path / "nowhere")], "no such folder"),
        (["--noise", str(empty)], "has no wav/flac files"),
        (["--noise", str(silent)], "no SNR can be reached"),
        (["--noise", str(broken)], "cannot read audio"),
    ]
    for extra, expect in cases:
        _one_line_error(capsys, ["corpus", "noisy", out, *speech, *extra], expect)
    _one_line_error(capsys, ["corpus", "noisy", out, "--speech", str(train_only)], "no test split")
    _one_line_error(capsys, ["corpus", "noisy", str(blocker / "out"), *speech], "cannot write to")
    _one_line_error(capsys, ["corpus", "noisy", str(tmp_path / "foreign"), *speech], "holds no noisy set")
    vb = _vbd_folder(tmp_path / "vb")
    for p in (vb / "clean_testset_wav").iterdir():
        p.unlink()
    (vb / "clean_testset_wav").rmdir()
    _one_line_error(capsys, ["corpus", "info", f"vbd:{vb}"], "no clean_testset_wav/")
    _one_line_error(capsys, ["corpus", "info", f"wsj0-qut:{tmp_path / 'empty'}"], "no test/ or noisy/ folder")
    assert not (tmp_path / "out" / "noisy").exists()


def test_corpus_info_describes_a_noisy_set(built, capsys):
    assert main(["corpus", "info", f"noisy:{built}"]) == 0
    out = capsys.readouterr().out
    assert "42 noisy files, 42 with a clean reference" in out and "SNRs (dB): -5, 10, 40" in out
    assert main(["corpus", "info", f"noisy:{built}", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["files"] == 42
