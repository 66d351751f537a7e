"""On-disk cache of the front end's output, so a second epoch or a second run never recomputes spectrograms.

Each source file gives one cache entry: its processed waveform (16 kHz, trimmed, normalised; ``(samples,)``
float32) and its power spectrogram (``(frames, 513)`` float32), two ``.npy`` files.  Layout::

    <cache root>/fe-<settings hash>/settings.json          the front-end settings of this folder
    <cache root>/fe-<settings hash>/<k[:2]>/<k>.wave.npy
    <cache root>/fe-<settings hash>/<k[:2]>/<k>.power.npy
    <cache root>/fe-<settings hash>/<k[:2]>/<k>.bad.json   a file that cannot be used, and why

``k`` hashes the file's absolute path, modification time and size, and the folder hashes the front-end
settings: editing a file, or changing the settings, makes a new entry (the old one is never read again).
Every file is written under a temporary name and renamed (atomic on POSIX), the spectrogram last, so an entry
exists only once it is complete: a build that is interrupted or killed keeps every entry it finished and the
next run starts where it stopped.  Files that cannot be used (unreadable, empty, all-silent, NaN) are recorded
as ``.bad.json`` so they are reported, not re-read, on later runs; fix the file (its mtime changes) to retry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lightdvae._io import atomic_write, atomic_write_bytes
from lightdvae.audio import N_FREQ, AudioError, FrontEnd, load_audio, power_spectrogram
from lightdvae.data.corpora import default_cache_dir
from lightdvae.errors import DataError, DataWarning
from lightdvae.runtime import progress_bar, thread_scope

logger = logging.getLogger("lightdvae.data")

CACHE_FORMAT = 1  #: bumped when the entry format changes

__all__ = ["SpectrogramCache", "CacheEntry", "CacheReport", "SKIP_REASONS"]

#: Why a file may be left out, in the order summaries list them.
SKIP_REASONS = {
    "missing": "missing",
    "unreadable": "unreadable or corrupt",
    "empty": "empty",
    "non-finite": "with NaN/inf samples",
    "silent": "all-silent",
    "error": "failed to process",
    "too-short": "shorter than one segment",
}


def _npy_shape(path: Path) -> tuple[int, ...]:
    """Shape stored in a ``.npy`` header (reads ~128 bytes)."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, _ = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, _, _ = np.lib.format.read_array_header_2_0(fh)
    return tuple(shape)


@dataclass(frozen=True)
class CacheEntry:
    """A cached file: where its arrays are and their sizes."""

    source: Path
    key: str
    wave_path: Path
    power_path: Path
    frames: int
    samples: int

    def power(self, mmap: bool = False) -> np.ndarray:
        """The power spectrogram, ``(frames, 513)`` float32 (a read-only memory map when ``mmap``)."""
        return np.load(self.power_path, mmap_mode="r" if mmap else None)

    def wave(self, mmap: bool = False) -> np.ndarray:
        """The processed waveform, ``(samples,)`` float32 at 16 kHz, trimmed and peak-normalised."""
        return np.load(self.wave_path, mmap_mode="r" if mmap else None)

    @property
    def nbytes(self) -> int:
        return self.frames * N_FREQ * 4


@dataclass
class CacheReport:
    """What :meth:`SpectrogramCache.ensure` did: counts, skipped files by reason, notes, time."""

    total: int = 0
    built: int = 0
    cached: int = 0
    skipped: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # reason -> [(path, message)]
    notes: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def n_skipped(self) -> int:
        return sum(len(v) for v in self.skipped.values())

    @property
    def n_ok(self) -> int:
        return self.built + self.cached

    def skip(self, reason: str, path: str | os.PathLike, message: str) -> None:
        self.skipped.setdefault(reason, []).append((str(path), message))

    def skip_summary(self, examples: int = 2) -> str:
        """``"3 unreadable or corrupt (spk1/a.wav: ...; spk2/a.wav: ...), 1 all-silent (spk1/c.wav)"``: files are
        named with their folder, which tells apart the same file name of two speakers."""
        parts = []
        order = list(SKIP_REASONS) + sorted(set(self.skipped) - set(SKIP_REASONS))
        for reason in order:
            items = self.skipped.get(reason)
            if not items:
                continue
            shown = "; ".join(f"{_short(p)}: {m}" if m else _short(p) for p, m in items[:examples])
            more = f"; +{len(items) - examples} more" if len(items) > examples else ""
            parts.append(f"{len(items)} {SKIP_REASONS.get(reason, reason)} ({shown}{more})")
        return ", ".join(parts)

    def summary(self) -> str:
        s = f"{self.n_ok} of {self.total} files usable ({self.cached} from cache, {self.built} computed"
        s += f" in {self.seconds:.1f} s)"
        if self.n_skipped:
            s += f"; skipped {self.n_skipped}: {self.skip_summary()}"
        if self.notes:
            s += "; " + ", ".join(f"{n} {what}" for what, n in sorted(self.notes.items()))
        return s


class SpectrogramCache:
    """Computes and stores the front end's output per file (see the module doc for the layout and guarantees).

    Args:
        root: cache folder; default :func:`lightdvae.data.default_cache_dir` (``$LIGHTDVAE_CACHE`` or
            ``~/.cache/lightdvae/spectrograms``).
        frontend: front-end settings (the protocol's defaults when None); they select the sub-folder.
    """

    def __init__(self, root: str | os.PathLike | None = None, frontend: FrontEnd | None = None):
        self.frontend = frontend or FrontEnd()
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        settings = {"cache_format": CACHE_FORMAT, **self.frontend.to_dict()}
        self.settings_hash = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        self.dir = self.root / f"fe-{self.settings_hash}"
        self._settings = settings
        self._ready = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SpectrogramCache({str(self.dir)!r})"

    # -- keys and lookups -------------------------------------------------------------------------------------
    def key(self, path: str | os.PathLike) -> str:
        """Hash of the file's absolute path, mtime (ns) and size.  Raises :class:`AudioError` (``"missing"``) when
        the file cannot be stat'ed."""
        p = Path(path)
        try:
            st = os.stat(p)
        except FileNotFoundError:
            raise AudioError(p, "missing", "file not found") from None
        except OSError as exc:
            raise AudioError(p, "unreadable", f"cannot stat ({exc.strerror or exc})") from None
        ident = f"{os.path.abspath(p)}\0{st.st_mtime_ns}\0{st.st_size}"
        return hashlib.sha1(ident.encode("utf-8", "surrogateescape")).hexdigest()

    def _paths(self, key: str) -> tuple[Path, Path, Path]:
        d = self.dir / key[:2]
        return d / f"{key}.wave.npy", d / f"{key}.power.npy", d / f"{key}.bad.json"

    def lookup(self, path: str | os.PathLike) -> CacheEntry | None:
        """The entry of ``path`` if it is cached and complete; raises :class:`AudioError` if it is cached as bad."""
        key = self.key(path)
        wave_p, power_p, bad_p = self._paths(key)
        if power_p.is_file() and wave_p.is_file():
            try:
                frames, bins = _npy_shape(power_p)
                (samples,) = _npy_shape(wave_p)
            except (OSError, ValueError):
                return None  # damaged entry (disk trouble): recompute
            if bins == N_FREQ:
                return CacheEntry(Path(path), key, wave_p, power_p, int(frames), int(samples))
            return None
        if bad_p.is_file():
            try:
                info = json.loads(bad_p.read_text())
            except (OSError, ValueError):
                return None
            raise AudioError(path, info.get("reason", "unreadable"), info.get("message", "unusable file"))
        return None

    # -- writing ----------------------------------------------------------------------------------------------
    def _prepare_dir(self) -> None:
        with self._lock:
            if self._ready:
                return
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                settings = self.dir / "settings.json"
                if not settings.is_file():
                    self._atomic_write_bytes(settings, json.dumps(self._settings, indent=2).encode())
            except OSError as exc:
                raise self._write_error(exc) from None
            self.clean_temporary()
            self._ready = True

    def _write_error(self, exc: OSError) -> DataError:
        return DataError(
            f"cannot write the spectrogram cache in {self.dir}: {exc.strerror or exc}. Free disk space, or pick "
            "another folder (--cache-dir, or the LIGHTDVAE_CACHE environment variable)"
        )

    @staticmethod
    def _atomic_write_bytes(path: Path, data: bytes) -> None:
        atomic_write_bytes(path, data, fsync=False)  # a cache: rebuilt if a crash loses it

    @staticmethod
    def _atomic_save(path: Path, array: np.ndarray) -> None:
        atomic_write(path, lambda fh: np.save(fh, array, allow_pickle=False), fsync=False)

    def compute(self, path: str | os.PathLike, key: str | None = None) -> tuple[CacheEntry, list[str]]:
        """Run the front end on ``path`` and store the result; returns the entry and notes (resampled, mixed down).

        Raises :class:`AudioError` for an unusable file (and records it as bad), :class:`DataError` when the cache
        cannot be written.
        """
        self._prepare_dir()
        key = key or self.key(path)
        wave_p, power_p, bad_p = self._paths(key)
        try:
            wave, info = load_audio(path, self.frontend, return_info=True, log=False)
        except AudioError as exc:
            if exc.reason != "missing":
                try:
                    bad_p.parent.mkdir(parents=True, exist_ok=True)
                    record = {"path": str(path), "reason": exc.reason, "message": exc.detail}
                    self._atomic_write_bytes(bad_p, json.dumps(record).encode())
                except OSError as werr:
                    raise self._write_error(werr) from None
            raise
        with torch.no_grad():
            power = power_spectrogram(torch.from_numpy(wave)).numpy()
        power = np.ascontiguousarray(power, dtype=np.float32)
        try:
            wave_p.parent.mkdir(parents=True, exist_ok=True)
            self._atomic_save(wave_p, wave)
            self._atomic_save(power_p, power)  # last: its presence marks a complete entry
        except OSError as exc:
            raise self._write_error(exc) from None
        notes = []
        if info.resampled:
            notes.append(f"resampled from {info.orig_sample_rate} Hz")
        if info.mixed_down:
            notes.append(f"mixed down from {info.channels} channels")
        return CacheEntry(Path(path), key, wave_p, power_p, int(power.shape[0]), int(wave.shape[0])), notes

    def get(self, path: str | os.PathLike) -> CacheEntry:
        """The entry of ``path``, computed and stored if needed.  Raises :class:`AudioError` for unusable files."""
        entry = self.lookup(path)
        return entry if entry is not None else self.compute(path)[0]

    # -- many files -------------------------------------------------------------------------------------------
    def ensure(
        self,
        paths: list[str | os.PathLike],
        *,
        workers: int | None = None,
        progress: bool | None = None,
        desc: str = "spectrograms",
        warn: bool = True,
    ) -> tuple[list[CacheEntry | None], CacheReport]:
        """Make sure every file of ``paths`` is cached.

        Args:
            paths: audio files.
            workers: threads computing missing entries (default ``min(4, cpu_count)``; 0 or 1 = in this thread).
                While they run, torch is limited to one intra-op thread (``torch.set_num_threads``, restored after).
            progress: show a tqdm bar (None: only on a terminal and when more than a few files must be computed).
            desc: label of the bar and of the summary.
            warn: emit one :class:`DataWarning` summarising the skipped files.
        Returns:
            ``(entries, report)``: ``entries[i]`` is the :class:`CacheEntry` of ``paths[i]``, or None when that file
            was skipped (the report says why).
        Raises:
            DataError: the cache cannot be written (disk full, permissions).  Entries finished before stay valid.
        """
        t0 = time.perf_counter()
        report = CacheReport(total=len(paths))
        entries: list[CacheEntry | None] = [None] * len(paths)
        todo: list[tuple[int, str]] = []
        for i, p in enumerate(paths):
            try:
                entry = self.lookup(p)
            except AudioError as exc:
                report.skip(exc.reason, p, exc.detail)
                continue
            if entry is None:
                todo.append((i, str(p)))
            else:
                entries[i] = entry
                report.cached += 1
        if todo:
            self._prepare_dir()
            self._build(todo, entries, report, workers=workers, progress=progress, desc=desc)
        report.seconds = time.perf_counter() - t0
        if report.built:  # one line for the whole build, including how many files were resampled / mixed down
            logger.info("%s: %s", desc, report.summary())
        if warn and report.n_skipped:
            warnings.warn(
                f"{desc}: skipped {report.n_skipped} of {report.total} files: {report.skip_summary()}",
                DataWarning,
                stacklevel=2,
            )
        return entries, report

    def _build(self, todo, entries, report, *, workers, progress, desc) -> None:
        if workers is None:
            workers = min(4, os.cpu_count() or 1)
        # progress=None: a bar on a terminal when there is real work (more than 20 files to compute).
        bar = progress_bar(total=len(todo), desc=desc, unit="file", progress=progress, min_work=21)

        def one(item):
            i, p = item
            try:
                return i, p, self.compute(p), None
            except AudioError as exc:
                return i, p, None, exc
            except DataError:
                raise
            except Exception as exc:  # anything unexpected in one file must not stop the build
                return i, p, None, AudioError(p, "error", f"{type(exc).__name__}: {exc}")

        def record(result):
            i, p, done, err = result
            if err is not None:
                report.skip(err.reason, p, err.detail)
            else:
                entry, notes = done
                entries[i] = entry
                report.built += 1
                report.notes.update(notes)
            bar.update(1)

        # One file's STFT is far too small for intra-op parallelism: on a busy machine torch's thread pool makes it
        # 50x slower.  The build parallelises over files instead, with torch limited to one thread meanwhile.
        try:
            with thread_scope(1):
                if workers <= 1:
                    for item in todo:
                        record(one(item))
                else:
                    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lightdvae-cache") as pool:
                        futures = [pool.submit(one, item) for item in todo]
                        try:
                            for fut in as_completed(futures):
                                record(fut.result())
                        except BaseException:
                            for f in futures:
                                f.cancel()
                            raise
        finally:
            bar.close()

    # -- housekeeping -----------------------------------------------------------------------------------------
    def clean_temporary(self, older_than_s: float = 3600.0) -> int:
        """Remove temporary files left by killed processes (older than ``older_than_s``); returns how many."""
        if not self.dir.is_dir():
            return 0
        now, n = time.time(), 0
        for tmp in self.dir.glob("*/.*.tmp"):
            try:
                if now - tmp.stat().st_mtime > older_than_s:
                    tmp.unlink()
                    n += 1
            except OSError:
                pass
        return n


def _short(path) -> str:
    """``folder/name`` of a file: short, and unambiguous in the corpora's speaker folders."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name
