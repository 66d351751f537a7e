"""Corpora, the spectrogram cache and the datasets (lightdvae.data), on small generated audio."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from lightdvae import audio as A
from lightdvae.cli import UserError
from lightdvae.cli import main as cli_main
from lightdvae.data import (
    AudioFile,
    Corpus,
    DataError,
    DataWarning,
    SegmentDataset,
    SpectrogramCache,
    UtteranceDataset,
    collate_utterances,
    discover,
    make_loaders,
    resolve_corpus,
)
from lightdvae.data import cache as cache_mod


def utterance(seconds: float, sr: int = 16000, seed: int = 0, channels: int = 1, pad: float = 0.2) -> np.ndarray:
    """Speech-like audio (harmonics, syllable envelope) between two stretches of near-silence."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    f0 = 100 + 60 * rng.random()
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.1 * np.sin(2 * np.pi * 0.5 * t))) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.55 - 0.45 * np.cos(2 * np.pi * 3 * t))
    x = 0.4 * x / np.abs(x).max()
    sil = 1e-5 * rng.standard_normal(int(pad * sr))
    x = np.concatenate([sil, x, sil]).astype(np.float32)
    if channels > 1:
        x = np.stack([x * (1 - 0.1 * c) for c in range(channels)], axis=1)
    return x


def write(path: Path, seconds: float = 1.2, sr: int = 16000, seed: int = 0, channels: int = 1, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, utterance(seconds, sr, seed, channels, **kw), sr, subtype="PCM_16")
    return path


@pytest.fixture
def cache(tmp_path) -> SpectrogramCache:
    return SpectrogramCache(tmp_path / "cache")


@pytest.fixture
def folder_corpus(tmp_path) -> Path:
    root = tmp_path / "corpus"
    seed = 0
    for split, n_spk in (("train", 3), ("val", 1), ("test", 1)):
        for s in range(n_spk):
            for u in range(2):
                seed += 1
                write(root / split / f"{split}spk{s}" / f"utt{u}.wav", 1.0 + 0.3 * u, seed=seed)
    return root


# ----------------------------------------------------------------------------------------------------------------
# Discovery
# ----------------------------------------------------------------------------------------------------------------
def test_folder_layout_recursive_with_speakers(folder_corpus):
    c = discover(folder_corpus)
    assert c.layout == "folder"
    assert [len(c.splits[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    assert c.speakers("train") == ["trainspk0", "trainspk1", "trainspk2"]
    assert all(isinstance(f, AudioFile) and f.path.is_file() for f in c.split("train"))
    assert "folder" in repr(c) and "train" in c.describe()


def test_folder_layout_aliases_and_missing_test(tmp_path):
    root = tmp_path / "c"
    write(root / "Training" / "a_1.wav")
    write(root / "dev" / "b_1.wav")
    c = discover(root)
    assert c.has("train") and c.has("val") and not c.has("test")
    assert c.split("train")[0].speaker == "a"  # flat file: speaker from the name prefix
    with pytest.raises(DataError, match="no test files"):
        c.split("test")


def test_list_layout(tmp_path):
    root = tmp_path / "lists"
    files = [write(root / "audio" / f"s{i}_{j}.wav", seed=i * 10 + j) for i in range(3) for j in range(2)]
    (root / "train.txt").write_text("# training files\n" + "\n".join(f"audio/{f.name}" for f in files[:4]) + "\n")
    (root / "val.lst").write_text(f"{files[4]}\n")  # absolute path
    (root / "test.txt").write_text(f"utt5 audio/{files[5].name}\naudio/missing.wav\n")  # scp style + a missing one
    with pytest.warns(DataWarning, match="1 file"):
        c = discover(root)
    assert c.layout == "lists"
    assert [len(c.splits[s]) for s in ("train", "val", "test")] == [4, 1, 1]


def test_wsj0_layout_nested_and_incomplete(tmp_path):
    root = tmp_path / "wsj0_root"
    base = root / "csr_1" / "11-1.1" / "wsj0"
    for folder, spk in (("si_tr_s", "011"), ("si_tr_s", "012"), ("si_dt_05", "050"), ("si_et_05", "440")):
        write(base / folder / spk / f"{spk}c0201.wav")
    c = resolve_corpus(f"wsj0:{root}")
    assert c.layout == "wsj0"
    assert c.speakers("train") == ["011", "012"] and c.speakers("val") == ["050"] and c.speakers("test") == ["440"]
    assert discover(root).layout == "wsj0"  # detected from the folder names
    import shutil

    shutil.rmtree(base / "si_et_05")
    with pytest.raises(DataError, match="si_et_05") as e:
        discover(root)
    assert "si_tr_s" in str(e.value) and "missing" in str(e.value)


def test_voicebank_layout_validation_speakers_and_resampling(tmp_path, cache):
    root = tmp_path / "vb"
    for spk in ("p226", "p287", "p230", "p231"):
        write(root / "clean_trainset_28spk_wav" / f"{spk}_001.wav", sr=48000, seed=int(spk[1:]))
    write(root / "clean_testset_wav" / "p232_001.wav", sr=48000, seed=1)
    write(root / "noisy_testset_wav" / "p232_001.wav", sr=48000, seed=2)  # ignored
    c = resolve_corpus(f"vb:{root}")
    assert c.layout == "vb"
    assert c.speakers("val") == ["p226", "p287"]
    assert c.speakers("train") == ["p230", "p231"]
    assert [f.path.parent.name for f in c.split("test")] == ["clean_testset_wav"]
    entry = cache.get(c.split("test")[0].path)  # 48 kHz -> 16 kHz
    assert abs(entry.samples - 1.2 * 16000) < 2 * 2048
    (root / "clean_testset_wav" / "p232_001.wav").unlink()
    (root / "clean_testset_wav").rmdir()
    with pytest.raises(DataError, match="clean_testset_wav"):
        discover(root, "vb")


def test_discovery_errors_are_clear(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        discover(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty"):
        discover(tmp_path / "empty")
    (tmp_path / "noaudio" / "sub").mkdir(parents=True)
    (tmp_path / "noaudio" / "sub" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no wav/flac files") as e:
        discover(tmp_path / "noaudio")
    assert "train/" in str(e.value) and "si_tr_s" in str(e.value) and "clean_testset_wav" in str(e.value)
    # a folder of audio files is a test set: evaluable, and training on it says how to make it a corpus
    write(tmp_path / "flat" / "a.wav")
    flat = discover(tmp_path / "flat")
    assert flat.layout == "files" and [f.path.name for f in flat.split("test")] == ["a.wav"]
    with pytest.raises(DataError, match="a folder of audio files, which is a test set; to train on it"):
        flat.split("train")
    (tmp_path / "noval" / "train").mkdir(parents=True)
    write(tmp_path / "noval" / "train" / "x.wav")
    with pytest.raises(DataError, match="val/"):
        discover(tmp_path / "noval", "folder")
    (tmp_path / "emptysplit" / "train").mkdir(parents=True)
    (tmp_path / "emptysplit" / "val").mkdir(parents=True)
    with pytest.raises(DataError, match="no audio files"):
        discover(tmp_path / "emptysplit")
    write(tmp_path / "emptysplit" / "test" / "t.wav")  # empty train/ and val/: the test split is still usable
    only_test = discover(tmp_path / "emptysplit")
    assert len(only_test.split("test")) == 1
    with pytest.raises(DataError, match="the train split of .* has no audio files"):
        only_test.split("train")
    with pytest.raises(DataError, match="unknown corpus layout"):
        discover(tmp_path, "nope")
    assert issubclass(DataError, UserError)


def test_resolve_corpus_specs(folder_corpus, tmp_path, monkeypatch):
    c = resolve_corpus(str(folder_corpus))
    assert c.layout == "folder"
    assert resolve_corpus(f"folder:{folder_corpus}").layout == "folder"
    assert resolve_corpus(c) is c
    with pytest.raises(DataError, match="names no folder"):
        resolve_corpus("wsj0:")
    with pytest.raises(DataError, match="not a finished built-in corpus"):
        resolve_corpus(f"builtin:{folder_corpus}")
    monkeypatch.setenv("LIGHTDVAE_DATA", str(tmp_path / "data"))
    with pytest.raises(DataError, match="lightdvae corpus build"):
        resolve_corpus("builtin", build=False)


def test_cli_reports_data_errors_in_one_line(tmp_path, capsys):
    assert cli_main(["corpus", "info", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not exist" in err and "Traceback" not in err


def test_cli_info_and_cache(folder_corpus, tmp_path, capsys):
    assert cli_main(["corpus", "info", str(folder_corpus)]) == 0
    assert "train" in capsys.readouterr().out
    assert cli_main(["corpus", "cache", str(folder_corpus), "--cache-dir", str(tmp_path / "cc"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "6 of 6 files usable" in out and "cache:" in out


# ----------------------------------------------------------------------------------------------------------------
# The cache
# ----------------------------------------------------------------------------------------------------------------
def test_cache_entry_contents_and_second_run_reads_cache(folder_corpus, cache):
    paths = discover(folder_corpus).paths("train")
    entries, report = cache.ensure(paths, workers=2)
    assert report.built == len(paths) and report.cached == 0 and report.n_skipped == 0
    e = entries[0]
    wave = A.load_audio(paths[0])
    np.testing.assert_array_equal(e.wave(), wave)
    np.testing.assert_allclose(e.power(), A.power_spectrogram(torch.from_numpy(wave)).numpy(), rtol=1e-6)
    assert e.power().shape == (e.frames, 513) and e.frames == A.num_frames(e.samples)
    assert (cache.dir / "settings.json").is_file()
    entries2, report2 = cache.ensure(paths)
    assert report2.cached == len(paths) and report2.built == 0
    assert [x.key for x in entries2] == [x.key for x in entries]
    assert not list(cache.dir.rglob("*.tmp"))


def test_cache_key_follows_file_and_settings(tmp_path, cache):
    p = write(tmp_path / "a.wav", seed=3)
    first = cache.get(p)
    assert cache.lookup(p) == first
    write(p, seconds=1.5, seed=4)  # edited: new size
    os.utime(p, ns=(1, 1))  # and a new mtime
    assert cache.lookup(p) is None
    second = cache.get(p)
    assert second.key != first.key and second.samples > first.samples
    other = SpectrogramCache(cache.root, A.FrontEnd(trim_db=None))
    assert other.dir != cache.dir and other.lookup(p) is None
    assert other.get(p).samples > second.samples  # no trimming


def test_cache_survives_interruption(folder_corpus, cache, monkeypatch):
    paths = discover(folder_corpus).paths("train")
    real = cache_mod.load_audio
    calls = []

    def flaky(path, *args, **kw):
        calls.append(path)
        if len(calls) == 4:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the build
        return real(path, *args, **kw)

    monkeypatch.setattr(cache_mod, "load_audio", flaky)
    with pytest.raises(KeyboardInterrupt):
        cache.ensure(paths, workers=1)
    monkeypatch.setattr(cache_mod, "load_audio", real)
    assert not list(cache.dir.rglob("*.tmp"))  # no half-written file
    entries, report = cache.ensure(paths, workers=1)
    assert report.cached == 3 and report.built == len(paths) - 3


def test_cache_write_failure_is_a_clear_error(tmp_path, cache, monkeypatch):
    p = write(tmp_path / "a.wav")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_mod.np, "save", full)
    with pytest.raises(DataError, match="No space left on device"):
        cache.ensure([p], workers=1)
    assert not list(cache.dir.rglob("*.npy")) and not list(cache.dir.rglob("*.tmp"))


@pytest.fixture
def messy_files(tmp_path) -> list[Path]:
    d = tmp_path / "messy"
    good = [write(d / f"good{i}.wav", 1.2, seed=i) for i in range(3)]
    stereo = d / "stereo44k.wav"
    sf.write(stereo, utterance(1.2, 44100, 7, channels=2), 44100)
    corrupt = d / "corrupt.wav"
    corrupt.write_bytes(b"RIFF" + os.urandom(300))
    empty = d / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    silent = d / "silent.wav"
    sf.write(silent, np.zeros(20000, np.float32), 16000)
    short = write(d / "short.wav", 0.3, seed=9, pad=0.0)  # ~19 frames < 50
    return [*good, stereo, corrupt, empty, silent, short]


def test_bad_files_are_skipped_with_one_counted_warning(messy_files, cache):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = SegmentDataset(messy_files, cache=cache, name="train")
    msgs = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert len(msgs) == 1, msgs
    msg = msgs[0]
    assert "skipped 4 of 8 files" in msg
    for part in ("1 unreadable or corrupt", "1 empty", "1 all-silent", "1 shorter than one segment", "corrupt.wav"):
        assert part in msg, msg
    assert len(ds.files) == 4  # three good ones and the stereo 44.1 kHz one
    assert ds.report.notes["resampled from 44100 Hz"] == 1 and ds.report.notes["mixed down from 2 channels"] == 1
    # the verdicts are cached: the second run reports the same without re-reading the bad files
    with pytest.warns(DataWarning, match="skipped 4 of 8"):
        ds2 = SegmentDataset(messy_files, cache=cache, name="train")
    assert ds2.report.cached == 5 and ds2.report.built == 0 and len(ds2) == len(ds)  # 4 usable + the short one


def test_nothing_usable_is_an_error(messy_files, cache):
    bad = messy_files[4:]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DataError, match="none of the 4 files gives a segment of 50 frames") as e:
            SegmentDataset(bad, cache=cache)
    assert "all-silent" in str(e.value)
    assert not [w for w in caught if issubclass(w.category, DataWarning)]  # said once, by the error
    with pytest.raises(DataError, match="no audio files"):
        SegmentDataset([], cache=cache)


def test_missing_file_is_skipped(tmp_path, cache):
    p = write(tmp_path / "a.wav", 1.5)
    with pytest.warns(DataWarning, match="1 missing"):
        ds = SegmentDataset([p, tmp_path / "gone.wav"], cache=cache)
    assert len(ds.files) == 1


# ----------------------------------------------------------------------------------------------------------------
# Datasets and loaders
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("L", [50, 20])
def test_segment_dataset_non_overlapping_segments(folder_corpus, cache, L):
    files = discover(folder_corpus).split("train")
    ds = SegmentDataset(files, segment_frames=L, cache=cache)
    assert len(ds) == sum(e.frames // L for e in ds.entries)
    assert np.all(ds.index[:, 1] % L == 0)
    for i in (0, len(ds) // 2, len(ds) - 1):
        x = ds[i]
        assert x.shape == (L, 513) and x.dtype == torch.float32
        f, start = ds.index[i]
        np.testing.assert_array_equal(x.numpy(), ds.entries[f].power()[start : start + L])
    x = ds[0]
    x.zero_()
    assert ds[0].abs().sum() > 0  # items are copies
    mm = SegmentDataset(files, segment_frames=L, cache=cache, in_memory=False)
    assert not mm.in_memory
    for i in range(len(ds)):
        torch.testing.assert_close(mm[i], ds[i], rtol=0, atol=0)
    assert ds.tensor().shape == (len(ds), L, 513)
    assert mm.segment_source(0)[0] == files[0].path


def test_segment_dataset_in_dataloader_workers(folder_corpus, cache):
    files = discover(folder_corpus).split("train")
    ds = SegmentDataset(files, cache=cache, in_memory=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True, num_workers=2)
    n = 0
    for x in loader:
        assert x.shape[1:] == (50, 513)
        n += x.shape[0]
    assert n == len(ds)


def test_utterance_dataset_items_and_collate(folder_corpus, cache):
    files = discover(folder_corpus).split("test")
    ds = UtteranceDataset(files, cache=cache)
    item = ds[1]
    assert set(item) >= {"power", "spec", "wave", "length", "frames", "path", "speaker", "text", "index"}
    n, T = item["length"], item["frames"]
    assert item["wave"].shape == (n,) and item["spec"].shape == (T, 513) and item["power"].shape == (T, 513)
    assert item["spec"].dtype == torch.complex64 and T == A.num_frames(n)
    rec = A.istft(item["spec"], n)
    err = (rec - item["wave"]).double()
    assert 10 * torch.log10(item["wave"].double().pow(2).sum() / err.pow(2).sum()) > 60
    torch.testing.assert_close(item["power"], torch.from_numpy(ds.entries[1].power()), rtol=1e-5, atol=1e-5)
    only = UtteranceDataset(files, cache=cache, returns=("power",))[0]
    assert "wave" not in only and "spec" not in only and only["power"].shape[1] == 513
    batch = collate_utterances([ds[0], ds[1]])
    assert batch["power"].shape == (2, int(batch["frames"].max()), 513)
    assert batch["wave"].shape == (2, int(batch["length"].max()))
    assert batch["mask"].sum(1).tolist() == batch["frames"].tolist()
    short = int(batch["frames"].argmin())
    assert batch["power"][short, batch["frames"][short] :].abs().sum() == 0
    with pytest.raises(ValueError):
        UtteranceDataset(files, cache=cache, returns=("mel",))


def test_make_loaders(folder_corpus, tmp_path):
    loaders = make_loaders(str(folder_corpus), batch_size=3, cache_dir=tmp_path / "c", seed=1)
    train, val, test = loaders
    x = next(iter(train))
    assert x.shape == (3, 50, 513)
    order1 = torch.cat(list(make_loaders(loaders.corpus, batch_size=3, cache_dir=tmp_path / "c", seed=1).train))
    order2 = torch.cat(list(make_loaders(loaders.corpus, batch_size=3, cache_dir=tmp_path / "c", seed=1).train))
    torch.testing.assert_close(order1, order2)  # the shuffle is seeded
    assert sum(v.shape[0] for v in val) == len(loaders.datasets["val"])
    b = next(iter(test))
    assert b["power"].shape[0] == 1 and b["wave"].ndim == 2
    only_train = make_loaders(loaders.corpus, splits=("train",), cache_dir=tmp_path / "c")
    assert only_train.val is None and only_train.test is None


def test_make_loaders_distributed(folder_corpus, tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        loaders = make_loaders(
            folder_corpus, batch_size=2, cache_dir=tmp_path / "c", distributed=True, splits=("train", "val")
        )
        assert isinstance(loaders.train.sampler, torch.utils.data.distributed.DistributedSampler)
        loaders.train.sampler.set_epoch(1)
        assert sum(x.shape[0] for x in loaders.train) == len(loaders.datasets["train"])
    finally:
        dist.destroy_process_group()


def test_corpus_without_test_split_gives_no_test_loader(tmp_path):
    root = tmp_path / "c"
    write(root / "train" / "a.wav")
    write(root / "val" / "b.wav")
    loaders = make_loaders(root, batch_size=1, cache_dir=tmp_path / "cache")
    assert loaders.test is None and isinstance(loaders.corpus, Corpus)


def test_import_is_light():
    """Importing lightdvae.data must not import the espeak builder."""
    code = "import sys, lightdvae.data; print('lightdvae.data.builtin' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ}, check=True)
    assert out.stdout.strip() == "False"


def test_build_logs_one_note_for_resampled_and_stereo_files(messy_files, cache, caplog):
    import logging

    with caplog.at_level(logging.INFO):
        with pytest.warns(DataWarning):
            SegmentDataset(messy_files, cache=cache, name="train")
    data_lines = [r.getMessage() for r in caplog.records if r.name == "lightdvae.data"]
    assert len(data_lines) == 1, data_lines
    assert "1 resampled from 44100 Hz" in data_lines[0] and "1 mixed down from 2 channels" in data_lines[0]
    assert not [r for r in caplog.records if r.name == "lightdvae.audio"]  # no per-file lines from the cache


def test_stale_temporary_files_are_cleaned(tmp_path, cache):
    p = write(tmp_path / "a.wav")
    cache.get(p)
    stale = cache.dir / "ab" / ".x.power.npy.123.456.tmp"
    stale.parent.mkdir(exist_ok=True)
    stale.write_bytes(b"half")
    os.utime(stale, (1, 1))
    fresh = cache.dir / "ab" / ".y.power.npy.123.456.tmp"
    fresh.write_bytes(b"in progress elsewhere")
    assert cache.clean_temporary() == 1
    assert not stale.exists() and fresh.exists()
