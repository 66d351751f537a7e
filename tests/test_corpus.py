"""The built-in espeak-ng corpus (lightdvae.data.builtin, ``lightdvae corpus``).

Tests that synthesise speech skip when espeak-ng is not installed (``apt-get install espeak-ng``).
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from lightdvae.cli import main as cli_main
from lightdvae.data import DataError, discover, read_manifest, resolve_corpus
from lightdvae.data import builtin as B
from lightdvae.data.builtin import build as build_mod
from lightdvae.data.builtin import espeak as espeak_mod
from lightdvae.data.builtin import plan as plan_mod

HAVE_ESPEAK = shutil.which("espeak-ng") is not None
needs_espeak = pytest.mark.skipif(
    not HAVE_ESPEAK, reason="espeak-ng is not installed (apt-get install espeak-ng); built-in corpus not tested"
)


# ----------------------------------------------------------------------------------------------------------------
# No espeak-ng needed
# ----------------------------------------------------------------------------------------------------------------
def test_sentences_are_many_and_distinct():
    sentences = B.load_sentences()
    assert len(sentences) >= 400
    assert len({s.lower() for s in sentences}) == len(sentences)
    assert all(3 <= len(s.split()) <= 30 for s in sentences)


def test_missing_espeak_is_a_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("LIGHTDVAE_ESPEAK", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no espeak-ng on PATH
    with pytest.raises(B.EspeakNotFound, match="apt-get install espeak-ng"):
        B.espeak_path()
    assert cli_main(["corpus", "build", str(tmp_path / "out"), "--minutes", "1"]) == 2
    err = capsys.readouterr().err
    assert "apt-get install espeak-ng" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv("LIGHTDVAE_ESPEAK", str(tmp_path / "nowhere" / "espeak-ng"))
    with pytest.raises(B.EspeakNotFound, match="LIGHTDVAE_ESPEAK"):
        B.espeak_path()


def test_phoneme_parsing():
    plain, tokens = espeak_mod._parse_phonemes("h @ l 'oU  w '3: l d\n_:  D 'E r\n")
    assert plain == "h@l'oU w'3:ld _: D'Er"
    assert tokens == [["h", "@", "l", "'oU"], ["w", "'3:", "l", "d"], ["_:"], ["D", "'E", "r"]]


def test_split_planning_keeps_variants_together():
    import random

    probes = [B.VoiceProbe(v, v, np.zeros(513), 1.0) for v in B.candidate_voices()[:80]]
    speakers = plan_mod.plan_speakers(probes, random.Random(0))
    split_of_variant = {}
    for s in speakers:
        split_of_variant.setdefault(plan_mod._variant(s.voice), set()).add(s.split)
    assert all(len(v) == 1 for v in split_of_variant.values())
    counts = {sp: sum(s.split == sp for s in speakers) for sp in ("train", "val", "test")}
    assert counts["val"] >= 1 and counts["test"] >= 1 and counts["train"] >= 0.6 * len(probes)
    # one variant only: split voice by voice
    few = [B.VoiceProbe(f"{b}+f2", b, np.zeros(513), 1.0) for b in B.DEFAULT_BASES[:5]]
    assert {s.split for s in plan_mod.plan_speakers(few, random.Random(0))} == {"train", "val", "test"}


def test_extra_train_speakers_never_share_a_held_out_timbre():
    import random

    probes = [B.VoiceProbe(v, v, np.zeros(513), 1.0) for v in B.candidate_voices()[:40]]
    speakers = plan_mod.plan_speakers(probes, random.Random(0))
    before = [dict(vars(s)) for s in speakers]
    spare = B.candidate_voices()[40:]
    extra = plan_mod.extra_train_speakers(speakers, spare, 25, seed=0)
    held_out = {plan_mod._variant(s.voice) for s in speakers if s.split != "train"}
    assert len(extra) == 25 and all(s.split == "train" for s in extra)
    assert not {plan_mod._variant(s.voice) for s in extra} & held_out
    assert [s.voice for s in extra] == [v for v in spare if plan_mod._variant(v) not in held_out][:25]  # in order
    assert [dict(vars(s)) for s in speakers] == before  # the plan itself untouched
    again = plan_mod.extra_train_speakers(speakers, spare, 25, seed=0)
    assert [(s.pitch, s.speed) for s in again] == [(s.pitch, s.speed) for s in extra]
    assert plan_mod.extra_train_speakers(speakers, spare, 0, seed=0) == []


def test_which_corpora_have_the_default_held_out_splits(tmp_path):
    # a shipped prior trained on more training speech is scored on the default test split: its corpus must have it
    default = B.BuildSettings.checked(B.DEFAULT_MINUTES, None, None, 0, plan_mod.load_sentences()).to_dict()
    cases = {
        "default": (default, True),
        "longer": ({**default, "train_minutes": 150.0}, True),
        "other-seed": ({**default, "seed": 1}, False),
        "shorter": ({**default, "minutes": 20.0}, False),
        "speakers": ({**default, "speakers": 12}, False),
        "floor": ({**default, "noise_floor_db": -70.0}, False),
        "longer-floor": ({**default, "train_minutes": 150.0, "noise_floor_db": -70.0}, False),
    }
    for name, (settings, expected) in cases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "corpus.json").write_text(json.dumps({"settings": settings}))
        assert B.has_default_held_out_splits(tmp_path / name) is expected, name
        # the same utterances under a noise floor: scored on the default test split itself
        floor_ok = expected or name.endswith("floor")
        assert B.has_default_held_out_splits(tmp_path / name, floor_ok=True) is floor_ok, name
    assert not B.has_default_held_out_splits(tmp_path / "missing")


# ----------------------------------------------------------------------------------------------------------------
# With espeak-ng
# ----------------------------------------------------------------------------------------------------------------
@needs_espeak
def test_ignored_variants_are_detected():
    kept, rejected = B.distinct_voices(["en-gb", "en-gb+f2", "en+f2", "en-us+m1", "en-us+m1", "xx-nonexistent"])
    assert [p.voice for p in kept] == ["en-gb", "en+f2", "en-us+m1"]
    assert "ignores the variant" in rejected["en-gb+f2"]
    assert rejected["en-us+m1"] == "listed twice"
    assert "cannot use" in rejected["xx-nonexistent"]


@needs_espeak
def test_synthesize_returns_16k_audio_and_phonemes(tmp_path):
    wave, phonemes, tokens = B.synthesize("The cat sat on the mat.", "en-us+f3", tmp_path / "x.wav", pitch=60)
    assert wave.dtype == np.float32 and 0.8 < len(wave) / 16000 < 4
    assert np.abs(wave).max() == pytest.approx(B.PEAK, rel=1e-6)
    info = sf.info(tmp_path / "x.wav")
    assert info.samplerate == 16000 and info.channels == 1
    assert phonemes == " ".join("".join(w) for w in tokens) and 5 <= len(tokens) <= 6  # espeak may join "on the"
    assert B.transcribe("The cat sat on the mat.", "en-us")[0] == phonemes
    with pytest.raises(DataError, match="espeak-ng failed"):
        B.synthesize("hello", "xx-nonexistent")


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    if not HAVE_ESPEAK:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    out = tmp_path_factory.mktemp("builtin") / "corpus"
    assert cli_main(["corpus", "build", str(out), "--minutes", "0.6", "--seed", "3", "-q"]) == 0
    return out


@needs_espeak
def test_built_corpus_layout_and_manifest(small_corpus):
    info = json.loads((small_corpus / "corpus.json").read_text())
    assert info["format"] == "lightdvae-builtin-corpus" and not (small_corpus / B.BUILD_STATE).exists()
    assert info["total_seconds"] >= 0.6 * 60 * 0.95
    rows = read_manifest(small_corpus)
    assert len(rows) == sum(s["files"] for s in info["splits"].values())
    for key in ("file", "split", "speaker", "voice", "pitch", "speed", "seconds", "text", "phonemes", "phoneme_tokens"):
        assert key in rows[0]
    for r in rows:
        assert r["file"].startswith(f"{r['split']}/{r['speaker']}/")
        assert r["phonemes"] and r["text"]
    sr = {sf.info(r["path"]).samplerate for r in rows}
    assert sr == {16000}
    # speaker- and sentence-disjoint splits, every split has speech
    by_split = {s: [r for r in rows if r["split"] == s] for s in ("train", "val", "test")}
    assert all(by_split.values())
    spk = {s: {r["speaker"] for r in v} for s, v in by_split.items()}
    txt = {s: {r["text"] for r in v} for s, v in by_split.items()}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not spk[a] & spk[b] and not txt[a] & txt[b]
    assert len(set().union(*spk.values())) == len(info["speakers"]) >= 6


@needs_espeak
def test_built_corpus_speakers_really_differ(small_corpus):
    """The same sentence spoken by different speakers gives different audio, and each speaker's voice is unique."""
    info = json.loads((small_corpus / "corpus.json").read_text())
    voices = [v["voice"] for v in info["speakers"].values()]
    assert len(set(voices)) == len(voices)
    digests = set()
    for v in voices:
        wave, _, _ = B.synthesize(B.PROBE_TEXT, v)
        digests.add(hashlib.sha1(wave.tobytes()).hexdigest())
    assert len(digests) == len(voices)


@needs_espeak
def test_built_corpus_is_discovered_and_loads(small_corpus, tmp_path):
    from lightdvae.data import make_loaders

    c = discover(small_corpus)
    assert c.layout == "builtin"
    f = c.split("test")[0]
    assert f.text and f.phonemes
    assert resolve_corpus(f"builtin:{small_corpus}").layout == "builtin"
    loaders = make_loaders(c, batch_size=4, cache_dir=tmp_path / "cache")
    assert next(iter(loaders.train)).shape == (4, 50, 513)


@needs_espeak
def test_rebuild_same_options_is_a_no_op_and_other_options_refused(small_corpus, capsys):
    mtime = (small_corpus / "corpus.json").stat().st_mtime_ns
    assert cli_main(["corpus", "build", str(small_corpus), "--minutes", "0.6", "--seed", "3", "-q"]) == 0
    assert (small_corpus / "corpus.json").stat().st_mtime_ns == mtime
    assert cli_main(["corpus", "build", str(small_corpus), "--minutes", "0.5", "-q"]) == 2
    assert "--force" in capsys.readouterr().err


@needs_espeak
def test_refuses_foreign_folder_and_bad_options(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("do not delete")
    assert cli_main(["corpus", "build", str(tmp_path / "mine"), "--force"]) == 2
    assert (tmp_path / "mine" / "thesis.tex").exists()
    assert "not empty" in capsys.readouterr().err
    assert cli_main(["corpus", "build", str(tmp_path / "x"), "--minutes", "0"]) == 2
    assert cli_main(["corpus", "build", str(tmp_path / "x"), "--voices", "en+f2", "en-gb"]) == 2
    assert "at least 3" in capsys.readouterr().err


@needs_espeak
def test_interrupted_build_resumes_to_the_same_corpus(tmp_path, monkeypatch):
    opts = {"minutes": 0.3, "seed": 1, "noise_floor_db": -70.0, "progress": False}  # the floor's draws resume too
    ref = B.build_corpus(tmp_path / "ref", **opts)
    ref_rows = [{k: v for k, v in r.items() if k != "path"} for r in read_manifest(ref.root)]

    out = tmp_path / "run"
    real = build_mod._synthesize_one
    calls = []

    def crash_after_five(root, utt, settings):
        calls.append(utt.file)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return real(root, utt, settings)

    monkeypatch.setattr(build_mod, "_synthesize_one", crash_after_five)
    with pytest.raises(KeyboardInterrupt):
        B.build_corpus(out, workers=1, **opts)
    monkeypatch.setattr(build_mod, "_synthesize_one", real)
    assert (out / B.BUILD_STATE).is_file() and not (out / "corpus.json").exists()
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.wav"))
    assert written and not list(out.rglob("*.tmp"))
    with pytest.raises(DataError, match="unfinished"):
        discover(out)
    with pytest.raises(DataError, match="other options"):
        B.build_corpus(out, minutes=0.4, seed=1, progress=False)
    B.build_corpus(out, **opts)  # same options: resumes
    rows = [{k: v for k, v in r.items() if k != "path"} for r in read_manifest(out)]
    assert rows == ref_rows  # deterministic, and the resumed build equals an uninterrupted one
    for r in rows:
        assert sf.read(out / r["file"])[0].tolist() == sf.read(ref.root / r["file"])[0].tolist()


@needs_espeak
def test_more_training_speech_keeps_the_validation_and_test_splits(tmp_path, capsys):
    voices = ["en+f2", "en-us+m1", "en-gb-scotland+m3", "en-029+f4", "en-us+m3", "en+m7", "en-029+f1", "en+klatt2"]
    opts = {"minutes": 0.4, "voices": voices, "speakers": 4, "seed": 2, "progress": False}
    base = B.build_corpus(tmp_path / "base", **opts)
    more = B.build_corpus(tmp_path / "more", train_minutes=1.0, **opts)
    base_rows, more_rows = (
        [{k: v for k, v in r.items() if k != "path"} for r in read_manifest(c.root)] for c in (base, more)
    )
    for split in ("val", "test"):
        held = [r for r in base_rows if r["split"] == split]
        assert held and held == [r for r in more_rows if r["split"] == split]
        for r in held:
            assert (base.root / r["file"]).read_bytes() == (more.root / r["file"]).read_bytes()
    train = [r for r in more_rows if r["split"] == "train"]
    assert sum(r["seconds"] for r in train) >= 60.0
    base_info, info = (json.loads((c.root / "corpus.json").read_text()) for c in (base, more))
    assert "train_minutes" not in base_info["settings"] and info["settings"]["train_minutes"] == 1.0
    held_out = {plan_mod._variant(v["voice"]) for v in info["speakers"].values() if v["split"] != "train"}
    added = set(info["speakers"]) - set(base_info["speakers"])
    assert added and {info["speakers"][s]["split"] for s in added} == {"train"}
    assert not {plan_mod._variant(info["speakers"][s]["voice"]) for s in added} & held_out
    assert {r["speaker"] for r in train} >= {s for s, v in base_info["speakers"].items() if v["split"] == "train"}
    # the same options reuse it; less training speech than --minutes already gives is one clear line
    assert B.build_corpus(tmp_path / "more", train_minutes=1.0, **opts).root == more.root
    assert cli_main(["corpus", "build", str(tmp_path / "x"), "--minutes", "10", "--train-minutes", "5"]) == 2
    err = capsys.readouterr().err
    assert "--train-minutes" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def _longest_zero_run(x: np.ndarray) -> int:
    edges = np.diff(np.concatenate([[0], (x == 0).astype(np.int8), [0]]))
    return int(np.max(np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1), initial=0))


@needs_espeak
def test_noise_floor_replaces_digital_silence(tmp_path, capsys):
    opts = {"minutes": 0.3, "seed": 3, "progress": False}
    plain = B.build_corpus(tmp_path / "plain", **opts)
    floored = B.build_corpus(tmp_path / "floor", noise_floor_db=-60.0, **opts)
    rows = [[{k: v for k, v in r.items() if k != "path"} for r in read_manifest(c.root)] for c in (plain, floored)]
    assert rows[0] == rows[1]  # the same utterances
    sigma = B.PEAK * 10 ** (-60 / 20)
    silent = 0  # samples in the longest run of exact zeros, summed over the files
    for r in rows[0]:
        x = sf.read(plain.root / r["file"], dtype="float64")[0]
        y = sf.read(floored.root / r["file"], dtype="float64")[0]
        silent += _longest_zero_run(x)
        assert _longest_zero_run(y) < 8  # no run of digital silence is left (one sample in ~75 rounds to 0)
        # the difference is the floor: white, of the asked RMS (16-bit rounding adds 2 x LSB^2/12 of variance)
        d = y - x
        assert abs(np.std(d) / np.sqrt(sigma**2 + 2 / 12 / 32768**2) - 1) < 0.05 and abs(np.mean(d)) < 3 * sigma
    assert silent > 1000  # espeak-ng's pauses are digital silence without the floor
    info = json.loads((floored.root / "corpus.json").read_text())
    assert (
        info["settings"]["noise_floor_db"] == -60.0
        and "noise_floor_db" not in json.loads((plain.root / "corpus.json").read_text())["settings"]
    )
    assert not B.has_default_held_out_splits(floored.root)  # its test audio is not the default corpus's
    assert not B.has_default_held_out_splits(floored.root, floor_ok=True)  # nor its utterances (minutes 0.3)
    again = B.build_corpus(tmp_path / "again", noise_floor_db=-60.0, **opts)  # seeded by the file: reproducible
    for r in rows[0]:
        assert (again.root / r["file"]).read_bytes() == (floored.root / r["file"]).read_bytes()
    assert cli_main(["corpus", "info", f"builtin:{floored.root}"]) == 0
    assert "noise_floor_db=-60.0" in capsys.readouterr().out  # the build options are shown
    with pytest.raises(DataError, match="other options"):
        B.build_corpus(tmp_path / "floor", noise_floor_db=-70.0, **opts)
    assert cli_main(["corpus", "build", str(tmp_path / "x"), "--noise-floor", "-10"]) == 2
    err = capsys.readouterr().err
    assert "--noise-floor" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@needs_espeak
def test_resolve_builtin_builds_in_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTDVAE_DATA", str(tmp_path / "data"))
    c = resolve_corpus("builtin", minutes=0.3, progress=False)
    assert c.layout == "builtin" and c.root == (tmp_path / "data" / "corpus").resolve()
    again = resolve_corpus("builtin", build=False)
    assert again.splits.keys() == c.splits.keys()


@needs_espeak
def test_explicit_voices(tmp_path):
    voices = ["en+f2", "en-us+m1", "en-gb-scotland+m3", "en-029+f4", "en-gb+f2"]  # en-gb ignores +f2
    c = B.build_corpus(tmp_path / "v", minutes=0.3, voices=voices, progress=False)
    info = json.loads((c.root / "corpus.json").read_text())
    assert sorted(v["voice"] for v in info["speakers"].values()) == sorted(voices[:4])
    assert "ignores the variant" in info["rejected_voices"]["en-gb+f2"]


@needs_espeak
def test_resolve_builtin_resumes_an_interrupted_build(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTDVAE_DATA", str(tmp_path / "data"))
    real = build_mod._synthesize_one
    calls = []

    def crash_after_three(root, utt, settings):
        calls.append(utt.file)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return real(root, utt, settings)

    monkeypatch.setattr(build_mod, "_synthesize_one", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        resolve_corpus("builtin", minutes=0.25, seed=2, progress=False)
    monkeypatch.setattr(build_mod, "_synthesize_one", real)
    c = resolve_corpus("builtin", progress=False)  # picks up the interrupted build's own options
    info = json.loads((c.root / "corpus.json").read_text())
    assert info["settings"]["minutes"] == 0.25 and info["settings"]["seed"] == 2
