"""Enhancement of a whole noisy test set (``lightdvae enhance RUN --data SPEC``): :func:`enhance_set`.

Every file of the set (or its first ``max_files``) is enhanced with :func:`~lightdvae.enhance.enhance_batch`,
up to ``batch_size`` utterances per EM run (the VAE, DKF, RVAE and SRNN any, HiT/LigHT-DVAE those of one
length); the enhanced waveform goes to ``audio/<name>.wav`` and the first ``figures``
files get a spectrogram figure (noisy / enhanced / clean).  SI-SDR, PESQ (WB and NB) and ESTOI of the input and
of the output against the clean reference are measured in the evaluation's metric worker pool
(:class:`lightdvae.evaluate.workers.MetricPool`; PESQ itself runs crash-isolated) while the model goes on; each
file's row is appended to ``per_file.csv`` (the evaluation's journal) as soon as both are known.

Resumption: a killed run, started again with the same settings, keeps the rows already written and enhances the
rest.  Utterance ``i`` of the set draws its random numbers from the stream seeded by ``(seed, i)``, whatever
batch it is in, so batching and resumption do not change the numbers.  A folder holding another enhancement
(other weights, set or settings) is refused unless ``overwrite``.

Files without a clean reference (a folder of noisy recordings) are enhanced and written, and scored as
"no reference"; a file that cannot be read, is silent, or whose clean reference differs in length is not
enhanced: its row says why, and the summary lists it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path

import numpy as np

from lightdvae import resultdir
from lightdvae._io import write_json
from lightdvae.audio import SAMPLE_RATE, SILENCE_PEAK, AudioError
from lightdvae.audio import save_audio as write_wav
from lightdvae.enhance.api import batches, enhance_batch
from lightdvae.enhance.engines import settings_for
from lightdvae.enhance.inference import inference_names
from lightdvae.enhance.set_outputs import (
    ENHANCE_METRICS,
    INPUT_ERROR,
    NO_REFERENCE,
    OUTPUT_DIRS,
    OUTPUT_FILES,
    PER_FILE,
    SET_COLUMNS,
    STATE_FILE,
    SUMMARY_FILE,
    SetSettings,
    default_enhance_dir,
    has_matplotlib,
    read_set_rows,
    write_figure,
)
from lightdvae.enhance.set_summary import build_set_summary, console_table
from lightdvae.enhance.settings import EnhanceSettings, resolve_settings
from lightdvae.errors import DataError, EnhanceError, first_line
from lightdvae.evaluate.journal import MODEL_ERROR, Journal, check_model_ran, kept_rows, write_per_file
from lightdvae.evaluate.outputs import audio_path
from lightdvae.evaluate.workers import MetricPool, default_workers, model_threads
from lightdvae.runtime import progress_bar, resolve_device, thread_scope

__all__ = ["enhance_set", "enhance_noisy_set", "enhance_chunk", "MAX_LENGTH_MISMATCH"]

logger = logging.getLogger("lightdvae.enhance")

#: Noisy and clean may differ by this many samples (resampling rounds); more is a mismatched pair.
MAX_LENGTH_MISMATCH = 160


def enhance_set(
    run,
    data,
    settings: EnhanceSettings | None = None,
    *,
    out=None,
    which: str = "best",
    device="auto",
    metrics=ENHANCE_METRICS,
    max_files: int | None = None,
    batch_size: int = 16,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    figures: int = 2,
    save_audio: bool = True,
    quiet: bool = True,
    **options,
) -> dict:
    """Enhance the noisy set ``data`` with the prior ``run``; returns the summary (also in ``summary.json``).

    Args:
        run: a run folder, an imported checkpoint's folder, or ``pretrained:NAME``.
        data: ``noisy:DIR``, ``vbd:DIR`` or ``wsj0-qut:DIR`` (:func:`lightdvae.data.noisy.read_noisy_set`).
        settings: the EM's options (:class:`EnhanceSettings`; None: the defaults).  They go, with the checkpoint
            and the set, into the folder's fingerprint (``state.json``) and into ``summary.json``: a resumed run
            with other settings is refused.
        out: output folder (default ``RUN/enhance/<set>-<settings tag>/``; ``./pretrained-NAME/enhance/...``).
        which: checkpoint, ``"best"`` or ``"last"``.  device: where the model runs (``"auto"``: a GPU if any).
        metrics: a subset of :data:`ENHANCE_METRICS` (PESQ is the slow one).
        max_files: only the first N files of the set (sorted by name).
        batch_size: at most this many utterances per EM run.
        workers: metric worker processes (default: a quarter of the CPUs, at least 1; 0: in this process).
        overwrite: replace another enhancement's results found in ``out``.
        progress: progress bar (None: on a terminal).  figures: how many files (the first) get a figure.
        save_audio: write ``audio/<name>.wav``.  quiet: no closing table on stdout.
        **options: EM options that replace those of ``settings`` (``iterations=300``; see :class:`EnhanceSettings`).
    Raises:
        EnhanceError / DataError (one line each): a bad option, a missing set or run, a model without an
        inference network, a folder holding another enhancement, a metric package missing.
    """
    em = resolve_settings(settings, options)
    if workers is None:
        workers = max(1, default_workers() // 4)
    set_settings = SetSettings.checked(
        em,
        metrics=metrics,
        max_files=max_files,
        batch_size=batch_size,
        workers=workers,
        figures=figures,
        overwrite=overwrite,
        progress=progress,
        save_audio=save_audio,
        quiet=quiet,
    )
    from lightdvae.data.noisy import read_noisy_set
    from lightdvae.runs import open_run

    noisy_set = read_noisy_set(data)
    opened = open_run(run, which, resolve_device(device, EnhanceError), error=EnhanceError)
    inference_names(opened.model)  # a model without an inference network: one line, before anything is written
    if out is None:
        out = default_enhance_dir(opened.run_dir, noisy_set.name, em, which)
    return enhance_noisy_set(opened.model, noisy_set, out=out, settings=set_settings, run_info=opened.info, spec=data)


def enhance_noisy_set(model, noisy_set, *, out, settings: SetSettings, run_info: dict, spec: str) -> dict:
    """:func:`enhance_set` for a model in memory and a :class:`~lightdvae.data.noisy.NoisySet` already read;
    ``run_info`` is :attr:`lightdvae.runs.OpenRun.info` (its checkpoint digest guards resumption)."""
    t_start = time.perf_counter()
    out = Path(out)
    inference_names(model)
    settings = dataclasses.replace(settings, em=settings_for(model, settings.em))  # the numbers it runs with
    if out.exists() and not out.is_dir():
        raise EnhanceError(f"output folder {out} exists and is not a folder")
    items = noisy_set.items[: settings.max_files] if settings.max_files else list(noisy_set.items)
    fingerprint = {
        "checkpoint_sha256": run_info["checkpoint"]["sha256"],
        "set": str(Path(noisy_set.root).resolve()),
        "layout": noisy_set.layout,
        **settings.fingerprint,
    }
    with resultdir.folder_lock(out, command="lightdvae enhance", error=EnhanceError):
        state = _open_state(out, fingerprint, settings.overwrite)
        loop = SetLoop(model, items, out, settings, run_info["model"]["label"])
        finished = False
        try:
            loop.run()
            finished = True
        finally:
            seconds = _close_state(out, state, time.perf_counter() - t_start, finished)
        rows = [loop.done[i] for i in sorted(loop.done)]
        check_model_ran(rows, EnhanceError)
        write_per_file(out / PER_FILE, rows, SET_COLUMNS)
        summary = build_set_summary(
            rows,
            run_info=run_info,
            noisy_set=noisy_set,
            spec=str(spec),
            settings=settings,
            names=[it.name for it in items],
            device=str(next(model.parameters()).device),
            seconds=seconds,
        )
        if settings.figures and not has_matplotlib():
            summary["outputs"]["figures"] = []
            summary["outputs"]["figures_note"] = "left out: matplotlib is not installed (pip install matplotlib)"
        write_json(out / SUMMARY_FILE, summary)
    if not settings.quiet:
        print(console_table(summary, out), flush=True)
    return summary


def _open_state(out: Path, fingerprint: dict, overwrite: bool) -> dict:
    return resultdir.open_session(
        out,
        fingerprint,
        state_file=STATE_FILE,
        files=OUTPUT_FILES,
        dirs=OUTPUT_DIRS,
        overwrite=overwrite,
        what="the results of another enhancement",
        error=EnhanceError,
    )


def _close_state(out: Path, state: dict, session_s: float, finished: bool) -> dict:
    return resultdir.close_session(out, STATE_FILE, state, session_s, finished, logger)


def _estimated_samples(item) -> int:
    """The noisy file's length at 16 kHz from its header (0 when unreadable): to plan batches of one length."""
    try:
        import soundfile

        info = soundfile.info(str(item.noisy))
        return int(round(info.frames * SAMPLE_RATE / info.samplerate))
    except Exception:
        return 0


def _load_pair(item) -> tuple[np.ndarray, np.ndarray | None]:
    """The noisy waveform and its clean reference (None without one); :class:`DataError` for an unusable pair."""
    try:
        noisy, clean = item.load()
    except (AudioError, OSError, RuntimeError, ValueError) as exc:
        raise DataError(first_line(exc)) from None
    if float(np.abs(noisy).max(initial=0.0)) < SILENCE_PEAK:
        raise DataError("the noisy file is silent")
    if clean is not None:
        if abs(clean.size - noisy.size) > MAX_LENGTH_MISMATCH:
            raise DataError(
                f"noisy and clean differ in length ({noisy.size} vs {clean.size} samples at 16 kHz): not a pair"
            )
        n = min(clean.size, noisy.size)
        noisy, clean = noisy[:n], clean[:n]
    return noisy, clean


def enhance_chunk(loop: SetLoop, chunk: list[int]) -> None:
    """Enhance the files ``chunk`` (indices into the set) in one call of :func:`enhance_batch`: write their audio
    and figures, send them to the metrics (rows without a reference or unreadable go straight to the journal)."""
    waves, pairs = [], {}
    for i in chunk:
        try:
            pairs[i] = _load_pair(loop.items[i])
        except DataError as exc:
            loop.write_row(i, {INPUT_ERROR: str(exc)}, None)
    todo = [i for i in chunk if i in pairs]
    if not todo:
        return
    waves = [pairs[i][0] for i in todo]
    try:
        results = enhance_batch(loop.model, waves, loop.settings.em, indices=todo, batch_size=loop.settings.batch_size)
    except Exception as exc:  # one failing batch must not end a long run; retried on resume
        msg = first_line(exc)
        logger.warning("the model failed on %d files (%s ...): %s", len(todo), loop.items[todo[0]].name, msg)
        for i in todo:
            loop.write_row(i, {MODEL_ERROR: f"{type(exc).__name__}: {msg}"}, None)
        return
    for i, result in zip(todo, results, strict=True):
        noisy, clean = pairs[i]
        loop.write_artefacts(i, noisy, result.waveform, clean)
        if clean is None:
            loop.write_row(i, {NO_REFERENCE: "no reference"}, result)
        else:
            loop.score(i, noisy, clean, result)


class SetLoop:
    """Enhances the files of ``items`` not yet in ``done`` (``{index: row}``), in chunks planned by length."""

    def __init__(self, model, items: list, out: Path, settings: SetSettings, label: str):
        self.model, self.items, self.out, self.settings, self.label = model, items, out, settings, label
        self.names = [it.name for it in items]
        self.done: dict[int, dict] = kept_rows(read_set_rows(out / PER_FILE), self.names)
        self.pending: dict[int, tuple] = {}  # index -> (result, {side: metrics result})
        self.journal = None
        self.bar = None

    def plan(self) -> list[list[int]]:
        """The chunks of the files to do: each a batch the model can run together (see :func:`batches`)."""
        todo = [i for i in range(len(self.items)) if i not in self.done]
        groups = batches(self.model, [_estimated_samples(self.items[i]) for i in todo], self.settings.batch_size)
        return [[todo[k] for k in g] for g in groups]

    def run(self) -> None:
        """Enhance every file still to do.  Ctrl-C keeps what is finished (and re-raises); a dead worker process
        raises :class:`EnhanceError` (:func:`lightdvae.resultdir.resumable_loop`)."""
        s = self.settings
        # the metric workers are forked before the loop starts threads
        self.pool = MetricPool(s.workers, s.metrics)
        self.journal = Journal(self.out / PER_FILE, [self.done[i] for i in sorted(self.done)], SET_COLUMNS)
        if self.done and not s.quiet:
            print(f"resuming {self.out}: {len(self.done)} of {len(self.items)} files already enhanced", flush=True)
        total, desc = len(self.items), f"enhance {self.label}"
        self.bar = progress_bar(total=total, initial=len(self.done), desc=desc, unit="file", progress=s.progress)
        guard = resultdir.resumable_loop(
            self.out / PER_FILE,
            self.done,
            total,
            verb="enhance",
            salvage=lambda: self.pool.salvage(self.finish_metrics),
            error=EnhanceError,
        )
        try:
            with guard, thread_scope(model_threads(self.model, s.workers)):
                for chunk in self.plan():
                    enhance_chunk(self, chunk)
                self.pool.drain(self.finish_metrics)
        finally:
            self.bar.close()
            self.journal.close()
            self.pool.close()

    def write_artefacts(self, i: int, noisy, enhanced, clean) -> None:
        name = self.names[i]
        if self.settings.save_audio:
            write_wav(audio_path(self.out, name), enhanced)
        if i < self.settings.figures and has_matplotlib():
            try:
                write_figure(self.out, name, noisy, enhanced, clean, self.label)
            except Exception as exc:  # a figure is not worth the enhancement
                logger.warning("%s: no figure: %s: %s", name, type(exc).__name__, exc)

    def score(self, i: int, noisy, clean, result) -> None:
        """Send file ``i``'s input and output to the metric pool (keys ``2 i`` and ``2 i + 1``)."""
        self.pending[i] = (result, {})
        self.pool.submit(2 * i, clean, noisy, 0.0, self.finish_metrics)
        self.pool.submit(2 * i + 1, clean, result.waveform, 0.0, self.finish_metrics)

    def finish_metrics(self, key: int, scores: dict, _model_s: float, _metrics_s: float) -> None:
        i, side = divmod(key, 2)
        if i not in self.pending:
            return
        result, got = self.pending[i]
        got["out" if side else "in"] = scores
        if len(got) == 2:
            del self.pending[i]
            errors = {f"{s}_{m}": r for s in ("in", "out") for m, r in got[s]["errors"].items() if m in ENHANCE_METRICS}
            self.write_row(i, errors, result, got)

    def write_row(self, i: int, errors: dict, result, scores: dict | None = None) -> None:
        """File ``i`` is done: its row goes into the journal."""
        item = self.items[i]
        row = {
            "index": i,
            "name": item.name,
            "snr_db": item.snr_db,
            "noise": item.noise,
            "speaker": item.speaker,
            "audio_s": result.waveform.size / SAMPLE_RATE if result is not None else math.nan,
            "iterations": result.iterations if result is not None else 0,
            "batch": result.batch if result is not None else 0,
            "seconds": result.seconds / result.batch if result is not None else math.nan,
            "errors": errors,
            "path": str(item.noisy),
        }
        for m in ENHANCE_METRICS:
            a = float(scores["in"].get(m, math.nan)) if scores else math.nan
            b = float(scores["out"].get(m, math.nan)) if scores else math.nan
            row.update({f"in_{m}": a, f"out_{m}": b, f"delta_{m}": b - a})
        self.journal.append(row)
        self.done[i] = row
        self.bar.update(1)
