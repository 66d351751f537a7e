"""The per-file loop of an evaluation: each file is resynthesised in this process, one utterance at a time (no
padding, so non-causal models see exactly the utterance), its figure / example / audio written, its metrics
measured in the worker pool while the model goes on, and its row appended to the journal."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from lightdvae import resultdir
from lightdvae.audio import SAMPLE_RATE
from lightdvae.audio import save_audio as write_wav
from lightdvae.errors import EvalError, first_line
from lightdvae.evaluate.journal import MODEL_ERROR, Journal
from lightdvae.evaluate.outputs import PER_FILE, audio_path, example_path, write_example
from lightdvae.evaluate.resynthesis import resynthesize_utterance
from lightdvae.evaluate.settings import EvalSettings
from lightdvae.evaluate.workers import MetricPool, model_threads
from lightdvae.metrics import COLUMNS
from lightdvae.runtime import progress_bar, thread_scope

logger = logging.getLogger("lightdvae.evaluate")


class FileLoop:
    """Evaluates the files of ``dataset`` not yet in ``done`` (``{index: row}``, updated as files finish).

    ``names``: each file's name in the results; ``label``: the model's name in figure titles.
    """

    def __init__(
        self,
        model,
        dataset,
        names: list[str],
        out: Path,
        settings: EvalSettings,
        label: str,
        journal: Journal,
        done: dict[int, dict],
        pool: MetricPool,
    ):
        self.model, self.dataset, self.names, self.out = model, dataset, names, out
        self.settings, self.label, self.journal, self.done, self.pool = settings, label, journal, done, pool
        self.bar = None

    def _artefacts_missing(self, i: int) -> bool:
        if self.settings.save_audio and not audio_path(self.out, self.names[i]).is_file():
            return True
        return i < self.settings.figures and not example_path(self.out, self.names[i]).is_file()

    def run(self) -> None:
        """Evaluate every file still to do.  Ctrl-C keeps what is finished (and re-raises); a dead worker
        process raises :class:`EvalError` (:func:`lightdvae.resultdir.resumable_loop`)."""
        todo = [i for i in range(len(self.dataset)) if i not in self.done or self._artefacts_missing(i)]
        s = self.settings
        desc = f"eval {self.label} {s.split}/{s.past}"
        self.bar = progress_bar(
            total=len(self.dataset), initial=len(self.done), desc=desc, unit="file", progress=s.progress
        )
        guard = resultdir.resumable_loop(
            self.out / PER_FILE,
            self.done,
            len(self.dataset),
            verb="evaluate",
            salvage=lambda: self.pool.salvage(self.finish),
            error=EvalError,
        )
        try:
            # a CPU model gets the CPUs the metric workers leave (its small per-frame ops are fastest on few threads)
            with guard, thread_scope(s.model_threads or model_threads(self.model, s.workers)):
                for i in todo:
                    self.evaluate_file(i)
                self.pool.drain(self.finish)
        finally:
            self.bar.close()

    def evaluate_file(self, i: int) -> None:
        """Resynthesise file ``i``, write its artefacts, and send it to the metrics (unless they are known)."""
        item = self.dataset[i]
        need_metrics = i not in self.done
        s = self.settings
        t0 = time.perf_counter()
        try:
            estimate, variance = resynthesize_utterance(
                self.model, item["power"], item["spec"], item["length"], s.past, s.sample
            )
        except Exception as exc:  # one bad file must not end a long evaluation; it is retried on resume
            msg = first_line(exc)
            logger.warning("%s: the model failed: %s", self.names[i], msg)
            if need_metrics:  # (when only its audio / figure were missing, its metrics stand)
                result = {c: math.nan for c in COLUMNS}
                result["errors"] = {MODEL_ERROR: f"{type(exc).__name__}: {msg}"}
                self.finish(i, result, time.perf_counter() - t0, 0.0)
            return
        model_s = time.perf_counter() - t0
        self.write_artefacts(i, item, estimate, variance)
        if need_metrics:
            self.pool.submit(i, item["wave"].numpy(), estimate, model_s, self.finish)

    def write_artefacts(self, i: int, item: dict, estimate, variance) -> None:
        """The resynthesised audio (``save_audio``) and, for the first ``figures`` files, figure and example."""
        name = self.names[i]
        if self.settings.save_audio:
            write_wav(audio_path(self.out, name), estimate)
        if i < self.settings.figures:
            try:
                title = f"{self.label} ({self.settings.past.upper()})"
                write_example(self.out, name, item["power"].numpy(), variance, title)
            except Exception as exc:  # a figure is not worth the evaluation
                logger.warning("%s: no figure: %s: %s", name, type(exc).__name__, exc)

    def finish(self, i: int, result: dict, model_s: float, metrics_s: float) -> None:
        """File ``i`` is done: its row goes into the journal."""
        f = self.dataset.files[i]
        entry = self.dataset.entries[i]
        row = {
            "index": i,
            "name": self.names[i],
            "speaker": f.speaker,
            "seconds": entry.samples / SAMPLE_RATE,
            "frames": entry.frames,
            **{c: float(result.get(c, math.nan)) for c in COLUMNS},
            "errors": dict(result.get("errors", {})),
            "model_s": model_s,
            "metrics_s": metrics_s,
            "path": str(f.path),
        }
        self.journal.append(row)
        self.done[i] = row
        self.bar.update(1)
