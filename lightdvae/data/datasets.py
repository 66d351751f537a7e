"""Torch datasets over a corpus: training / validation segments and whole test utterances.

* :class:`SegmentDataset` cuts every file's power spectrogram into non-overlapping segments of ``L`` frames
  (default 50 = 0.8 s; the remainder of each file is dropped) and returns one ``(L, 513)`` float32 tensor per
  item, so a DataLoader gives ``(batch, L, 513)`` batches, the layout of the models.  Training shuffles them
  (DataLoader ``shuffle=True``); validation uses the same segmentation unshuffled.
* :class:`UtteranceDataset` returns whole test utterances (evaluation works on full files) as dicts with the
  power spectrogram, the complex STFT and the waveform; :func:`collate_utterances` pads a batch of them.
* :func:`~lightdvae.data.loaders.make_loaders` (in :mod:`lightdvae.data.loaders`) builds the three DataLoaders
  of a corpus spec in one call.

Both datasets read the :class:`~lightdvae.data.cache.SpectrogramCache`; building them computes what is missing
(with a progress bar) and warns once, counting the files left out by reason.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from lightdvae.audio import N_FREQ, stft
from lightdvae.data.cache import CacheEntry, CacheReport, SpectrogramCache
from lightdvae.data.corpora import AudioFile
from lightdvae.errors import DataError, DataWarning
from lightdvae.runtime import progress_bar

SEGMENT_FRAMES = 50  #: default training segment length L (frames; 0.8 s at hop 16 ms)
IN_MEMORY_LIMIT = 4 * 2**30  #: bytes; segment sets up to this size are loaded into RAM by default
UTTERANCE_KEYS = ("power", "spec", "wave")

__all__ = [
    "SEGMENT_FRAMES",
    "SegmentDataset",
    "UtteranceDataset",
    "collate_utterances",
]


def _as_audio_files(files: Sequence[AudioFile | str | os.PathLike], split: str) -> list[AudioFile]:
    out = []
    for f in files:
        if isinstance(f, AudioFile):
            out.append(f)
        else:
            p = Path(f)
            out.append(AudioFile(p, p.parent.name, split))
    return out


def _in_memory_limit() -> int:
    env = os.environ.get("LIGHTDVAE_DATASET_RAM_GB", "").strip()
    try:
        return int(float(env) * 2**30) if env else IN_MEMORY_LIMIT
    except ValueError:
        return IN_MEMORY_LIMIT


class SegmentDataset(Dataset):
    """Non-overlapping ``segment_frames``-frame segments of the power spectrograms of ``files``.

    Args:
        files: audio files (:class:`AudioFile` or paths), e.g. ``corpus.split("train")``.
        segment_frames: L, frames per segment (default 50).  Segment ``k`` of a file covers frames
            ``[k L, (k + 1) L)``; files shorter than L frames are skipped (counted in the warning).
        cache: the spectrogram cache (default: a :class:`SpectrogramCache` in the default folder).
        in_memory: load all segments into one array (fast, ``n * L * 513 * 4`` bytes).  None: when that is at
            most 4 GiB (``$LIGHTDVAE_DATASET_RAM_GB`` changes the limit); otherwise items are read from
            memory-mapped cache files.
        workers: threads for computing missing cache entries.
        progress: progress bars (None: automatic).
        name: label used in progress bars and messages (e.g. "train").
        warn: emit a :class:`DataWarning` counting skipped files.

    Items: ``dataset[i]`` is a ``(L, 513)`` float32 tensor (a copy; safe to modify).
    Attributes: ``files`` (kept :class:`AudioFile` list), ``entries`` (their cache entries), ``index``
    (``(n, 2)`` int64 array of (file number, first frame)), ``report`` (:class:`CacheReport`, with the too-short
    files under ``"too-short"``).

    Raises:
        DataError: no file gives a single segment.
    """

    def __init__(
        self,
        files: Sequence[AudioFile | str | os.PathLike],
        *,
        segment_frames: int = SEGMENT_FRAMES,
        cache: SpectrogramCache | None = None,
        in_memory: bool | None = None,
        workers: int | None = None,
        progress: bool | None = None,
        name: str = "segments",
        warn: bool = True,
    ):
        if int(segment_frames) < 1:
            raise ValueError(f"segment_frames must be >= 1, got {segment_frames}")
        self.segment_frames = L = int(segment_frames)
        self.name = name
        self.cache = cache if cache is not None else SpectrogramCache()
        audio_files = _as_audio_files(files, name)
        if not audio_files:
            raise DataError(f"{name}: no audio files given")
        entries, report = self.cache.ensure(
            [f.path for f in audio_files], workers=workers, progress=progress, desc=name, warn=False
        )
        self.files: list[AudioFile] = []
        self.entries: list[CacheEntry] = []
        counts = []
        for f, e in zip(audio_files, entries, strict=True):
            if e is None:
                continue
            n = e.frames // L
            if n == 0:
                report.skip("too-short", f.path, f"{e.frames} frames after trimming")
                continue
            self.files.append(f)
            self.entries.append(e)
            counts.append(n)
        self.report: CacheReport = report
        if warn and report.n_skipped and counts:  # all bad: the error below says it once
            warnings.warn(
                f"{name}: skipped {report.n_skipped} of {report.total} files: {report.skip_summary()}",
                DataWarning,
                stacklevel=2,
            )
        if not counts:
            detail = f": {report.skip_summary()}" if report.n_skipped else ""
            raise DataError(
                f"{name}: none of the {report.total} files gives a segment of {L} frames "
                f"({L * 256 / 16000:.2f} s){detail}"
            )
        counts_arr = np.asarray(counts, dtype=np.int64)
        file_idx = np.repeat(np.arange(len(counts), dtype=np.int64), counts_arr)
        first = np.concatenate([np.arange(c, dtype=np.int64) * L for c in counts])
        self.index = np.stack([file_idx, first], axis=1)
        nbytes = len(self.index) * L * N_FREQ * 4
        self.in_memory = nbytes <= _in_memory_limit() if in_memory is None else bool(in_memory)
        self._segments: np.ndarray | None = None
        self._mmaps: OrderedDict[int, np.ndarray] = OrderedDict()
        if self.in_memory:
            self._segments = self._load_all(progress)

    def _load_all(self, progress: bool | None) -> np.ndarray:
        L = self.segment_frames
        out = np.empty((len(self.index), L, N_FREQ), dtype=np.float32)
        pos = 0
        bar = progress_bar(self.entries, desc=f"{self.name}: loading", unit="file", progress=progress, min_work=201)
        for e in bar:
            power = e.power()
            n = power.shape[0] // L
            out[pos : pos + n] = power[: n * L].reshape(n, L, N_FREQ)
            pos += n
        return out

    def __len__(self) -> int:
        return len(self.index)

    def _power(self, file_idx: int) -> np.ndarray:
        arr = self._mmaps.get(file_idx)
        if arr is None:
            arr = self.entries[file_idx].power(mmap=True)
            self._mmaps[file_idx] = arr
            if len(self._mmaps) > 64:  # each memory map holds a file descriptor
                self._mmaps.popitem(last=False)
        else:
            self._mmaps.move_to_end(file_idx)
        return arr

    def __getitem__(self, i: int) -> torch.Tensor:
        if self._segments is not None:
            return torch.from_numpy(self._segments[i].copy())
        f, start = self.index[i]
        seg = np.array(self._power(int(f))[start : start + self.segment_frames], dtype=np.float32)
        return torch.from_numpy(seg)

    def segment_source(self, i: int) -> tuple[Path, int]:
        """``(file, first frame)`` of segment ``i``."""
        f, start = self.index[i]
        return self.files[int(f)].path, int(start)

    def tensor(self) -> torch.Tensor:
        """All segments as one ``(n, L, 513)`` float32 tensor (shares memory with the dataset when in memory);
        handy for moving a small corpus to the GPU once."""
        if self._segments is None:
            self._segments = self._load_all(None)
            self.in_memory = True
            self._mmaps.clear()
        return torch.from_numpy(self._segments)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_mmaps"] = OrderedDict()  # memory maps are reopened in each worker
        return state

    def __repr__(self) -> str:
        return (
            f"SegmentDataset(name={self.name!r}, segments={len(self)}, L={self.segment_frames}, "
            f"files={len(self.files)}, skipped={self.report.n_skipped}, in_memory={self.in_memory})"
        )


class UtteranceDataset(Dataset):
    """Whole utterances, for evaluation (analysis-resynthesis on full files).

    Args:
        files: audio files, e.g. ``corpus.split("test")``.
        returns: which of ``"power"``, ``"spec"``, ``"wave"`` each item carries.
        min_frames: files with fewer frames are skipped (default 1: keep all usable files).
        cache, workers, progress, name, warn: as for :class:`SegmentDataset`.

    Items: a dict with, for an utterance of ``N`` samples and ``T = 1 + N // 256`` frames,

    * ``"power"``: ``(T, 513)`` float32 power spectrogram (model input);
    * ``"spec"``: ``(T, 513)`` complex64 STFT (its phase is reused for resynthesis);
    * ``"wave"``: ``(N,)`` float32 reference waveform, 16 kHz, trimmed and peak-normalised; ``istft(spec, N)``
      gives it back;
    * ``"length"`` (N), ``"frames"`` (T), ``"index"`` (int); ``"path"``, ``"speaker"``, ``"text"`` (str; text is
      ``""`` when unknown).
    """

    def __init__(
        self,
        files: Sequence[AudioFile | str | os.PathLike],
        *,
        returns: Sequence[str] = UTTERANCE_KEYS,
        min_frames: int = 1,
        cache: SpectrogramCache | None = None,
        workers: int | None = None,
        progress: bool | None = None,
        name: str = "test",
        warn: bool = True,
    ):
        bad = set(returns) - set(UTTERANCE_KEYS)
        if bad or not returns:
            raise ValueError(f"returns must be a non-empty subset of {UTTERANCE_KEYS}, got {tuple(returns)}")
        self.returns = tuple(returns)
        self.name = name
        self.cache = cache if cache is not None else SpectrogramCache()
        audio_files = _as_audio_files(files, name)
        if not audio_files:
            raise DataError(f"{name}: no audio files given")
        entries, report = self.cache.ensure(
            [f.path for f in audio_files], workers=workers, progress=progress, desc=name, warn=False
        )
        self.files: list[AudioFile] = []
        self.entries: list[CacheEntry] = []
        for f, e in zip(audio_files, entries, strict=True):
            if e is None:
                continue
            if e.frames < min_frames:
                report.skip("too-short", f.path, f"{e.frames} frames < {min_frames}")
                continue
            self.files.append(f)
            self.entries.append(e)
        self.report = report
        if warn and report.n_skipped and self.files:  # all bad: the error below says it once
            warnings.warn(
                f"{name}: skipped {report.n_skipped} of {report.total} files: {report.skip_summary()}",
                DataWarning,
                stacklevel=2,
            )
        if not self.files:
            raise DataError(f"{name}: none of the {report.total} files is usable: {report.skip_summary()}")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        f, e = self.files[i], self.entries[i]
        item: dict = {
            "index": i,
            "path": str(f.path),
            "speaker": f.speaker,
            "text": f.text or "",
            "length": e.samples,
            "frames": e.frames,
        }
        need_wave = "wave" in self.returns or "spec" in self.returns
        wave = torch.from_numpy(e.wave()) if need_wave else None
        if "spec" in self.returns:
            spec = stft(wave)
            item["spec"] = spec
            if "power" in self.returns:
                item["power"] = torch.view_as_real(spec).square().sum(-1)
        elif "power" in self.returns:
            item["power"] = torch.from_numpy(e.power())
        if "wave" in self.returns:
            item["wave"] = wave
        return item

    def __repr__(self) -> str:
        return f"UtteranceDataset(name={self.name!r}, files={len(self)}, skipped={self.report.n_skipped})"


def collate_utterances(items: list[dict]) -> dict:
    """Batch :class:`UtteranceDataset` items of different lengths by zero-padding.

    Returns a dict with ``"power"`` ``(B, T_max, 513)``, ``"spec"`` ``(B, T_max, 513)`` complex, ``"wave"``
    ``(B, N_max)`` (those requested), ``"frames"`` and ``"length"`` (``(B,)`` int64), ``"mask"`` ``(B, T_max)``
    bool (True on real frames), and ``"index"`` / ``"path"`` / ``"speaker"`` / ``"text"`` as lists.
    """
    if not items:
        raise ValueError("collate_utterances needs at least one item")
    out: dict = {}
    frames = torch.tensor([it["frames"] for it in items], dtype=torch.long)
    lengths = torch.tensor([it["length"] for it in items], dtype=torch.long)
    t_max, n_max = int(frames.max()), int(lengths.max())
    for key in ("power", "spec"):
        if key in items[0]:
            first = items[0][key]
            batch = first.new_zeros((len(items), t_max, N_FREQ))
            for b, it in enumerate(items):
                batch[b, : it[key].shape[0]] = it[key]
            out[key] = batch
    if "wave" in items[0]:
        batch = items[0]["wave"].new_zeros((len(items), n_max))
        for b, it in enumerate(items):
            batch[b, : it["wave"].shape[0]] = it["wave"]
        out["wave"] = batch
    out["frames"] = frames
    out["length"] = lengths
    out["mask"] = torch.arange(t_max)[None, :] < frames[:, None]
    for key in ("index", "path", "speaker", "text"):
        out[key] = [it[key] for it in items]
    return out


def __getattr__(name: str):
    # Compatibility: Loaders and make_loaders moved to lightdvae.data.loaders (which imports this module).
    if name in ("Loaders", "make_loaders"):
        from lightdvae.data import loaders

        return getattr(loaders, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
