"""The evaluation of a run (:func:`evaluate_run`) or of a model in memory (:func:`evaluate_model`): the output
folder claimed through its fingerprint (resumed, refused or replaced), the dataset loaded, the per-file loop run,
and per_file.csv and summary.json written when every file is done."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from lightdvae import resultdir
from lightdvae._io import write_json
from lightdvae.audio import HOP, SAMPLE_RATE
from lightdvae.errors import EvalError
from lightdvae.evaluate.journal import Journal, check_model_ran, kept_rows, read_per_file, write_per_file
from lightdvae.evaluate.loop import FileLoop
from lightdvae.evaluate.outputs import (
    DEFAULT_FIGURES,
    OUTPUT_DIRS,
    OUTPUT_FILES,
    PER_FILE,
    STATE,
    SUMMARY,
    corpus_tag,
    default_out_dir,
    file_name,
)
from lightdvae.evaluate.settings import EvalSettings, check_past, check_split
from lightdvae.evaluate.summary import build_summary, closing_line
from lightdvae.evaluate.workers import MetricPool
from lightdvae.metrics import METRICS, PESQ_MIN_SECONDS
from lightdvae.models import model_label
from lightdvae.runs import OpenRun, corpus_spec, open_run, weights_sha256
from lightdvae.runtime import resolve_device

logger = logging.getLogger("lightdvae.evaluate")


def evaluate_run(
    run_dir,
    data=None,
    split: str = "test",
    past: str = "gen",
    *,
    which: str = "best",
    out=None,
    device: str | torch.device | None = "auto",
    workers: int | None = None,
    max_files: int | None = None,
    save_audio: bool = False,
    figures: int = DEFAULT_FIGURES,
    metrics: Sequence[str] = METRICS,
    label: str | None = None,
    overwrite: bool = False,
    cache_dir=None,
    progress: bool | None = None,
    quiet: bool = True,
    mp_context: str | None = None,
    model_threads: int | None = None,
) -> dict:
    """Analysis-resynthesis evaluation of the model in ``run_dir``; returns the summary (also in ``summary.json``).

    Args:
        run_dir: a run directory (``config.json`` + ``checkpoints/<which>.pt``, as written by ``lightdvae train``
            or ``lightdvae import-dvae``).
        data: corpus spec (``"builtin"``, ``DIR``, ``"wsj0:DIR"``, ``"vb:DIR"``) or a :class:`~lightdvae.data.Corpus`;
            default: the corpus the run was trained on (its config.json).  The built-in corpus is not built here:
            build it with ``lightdvae corpus build`` (or by training).
        split: ``"test"`` (default), ``"val"`` or ``"train"``.
        past: ``"gen"``: the decoder is fed its own past predictions (the paper's main setting); ``"gt"``: the true
            past (teacher forcing).  Identical for models that do not see past speech (VAE, DKF, RVAE).
        which: checkpoint, ``"best"`` or ``"last"``.
        out: output folder (default :func:`default_out_dir`).
        device: where the model runs (``"auto"``: the GPU when there is one).
        workers: metric worker processes (default: the usable CPUs); 0 computes the metrics in this process.
        max_files: evaluate only the first N files of the split (sorted by path).
        save_audio: write the resynthesised waveforms to ``out/audio``.
        figures: how many files (the first ones) get a spectrogram figure and an example for the report.
        metrics: subset of :data:`lightdvae.metrics.METRICS`.
        label: the model's name in tables (default :func:`model_label`).
        overwrite: replace the results of another evaluation found in ``out``.
        cache_dir: spectrogram cache folder (default: the run's, else the package default).
        progress: progress bar (None: on a terminal).  quiet: no closing line on stdout.
        mp_context: multiprocessing start method of the metric workers (default ``"fork"`` on Linux).
        model_threads: torch threads of a model on the CPU during the evaluation (default: the CPUs the metric
            workers leave, at least 1; the autoregressive GEN decoding is many small ops, fastest on few threads).
    Raises:
        EvalError / DataError (both :class:`lightdvae.errors.UserError`): missing run or checkpoint, unknown corpus,
        empty split, bad option, a folder holding another evaluation, a metric package missing.
    """
    check_past(past)
    check_split(split)
    run = open_run(run_dir, which, resolve_device(device, EvalError), error=EvalError)
    corpus, data, tag = _corpus_of(run, data, progress)
    if cache_dir is None:
        cache_dir = _training(run.meta).get("cache_dir")
    if out is None:
        out = default_out_dir(run.run_dir, split, past, tag, which)
    run_info = _run_info(run, label, data)
    return evaluate_model(
        run.model,
        corpus,
        split=split,
        past=past,
        out=out,
        run_info=run_info,
        workers=workers,
        max_files=max_files,
        save_audio=save_audio,
        figures=figures,
        metrics=metrics,
        overwrite=overwrite,
        cache_dir=cache_dir,
        progress=progress,
        quiet=quiet,
        mp_context=mp_context,
        model_threads=model_threads,
    )


def _training(meta: dict) -> dict:
    return meta.get("training") if isinstance(meta.get("training"), dict) else {}


def _corpus_of(run: OpenRun, data, progress: bool | None):
    """The corpus to evaluate on (``data``, else the one the run was trained on), its spec, and the tag of its
    results' folder (None when it is the run's own corpus)."""
    from lightdvae.data import resolve_corpus

    meta = run.meta
    if data is None:
        data = corpus_spec(meta)
        if data is None:
            raise EvalError(f"{run.run_dir} does not record the corpus it was trained on; pass --data SPEC")
    corpus = resolve_corpus(data, build=False, progress=progress)
    trained_root = (meta.get("data") or {}).get("root") if isinstance(meta.get("data"), dict) else None
    same_corpus = trained_root is None or Path(trained_root).resolve() == Path(corpus.root).resolve()
    return corpus, data, None if same_corpus else corpus_tag(corpus.name)


def _run_info(run: OpenRun, label: str | None, data) -> dict:
    """What the summary records of the run: :attr:`OpenRun.info`, the label shown, and the corpus spec."""
    described = run.info["model"]
    return {
        **run.info,
        "model": {
            **described,
            "label": label or described["label"],
            "sees_past_speech": bool(getattr(run.model, "sees_past_speech", True)),
        },
        "data_spec": data if isinstance(data, str) else str(getattr(data, "root", data)),
    }


def evaluate_model(
    model,
    corpus,
    *,
    split: str = "test",
    past: str = "gen",
    out,
    run_info: dict | None = None,
    workers: int | None = None,
    max_files: int | None = None,
    save_audio: bool = False,
    figures: int = DEFAULT_FIGURES,
    metrics: Sequence[str] = METRICS,
    overwrite: bool = False,
    cache_dir=None,
    progress: bool | None = None,
    quiet: bool = True,
    mp_context: str | None = None,
    model_threads: int | None = None,
    sample: bool = False,
) -> dict:
    """The evaluation loop behind :func:`evaluate_run`, for a model already in memory.

    ``corpus`` is a :class:`~lightdvae.data.Corpus` or a spec; ``run_info`` (``run_dir``, ``checkpoint``,
    ``model``: name / label / parameters / config, ``data_spec``) goes into the summary and, with the checkpoint
    digest, into the fingerprint that guards resumption; without it the model is described from itself and its
    weights are hashed.  Other arguments as for :func:`evaluate_run`.  Returns the summary dict.
    """
    t_start = time.perf_counter()
    settings = EvalSettings.checked(
        split=split,
        past=past,
        sample=sample,
        metrics=metrics,
        workers=workers,
        max_files=max_files,
        save_audio=save_audio,
        figures=figures,
        overwrite=overwrite,
        cache_dir=cache_dir,
        progress=progress,
        quiet=quiet,
        mp_context=mp_context,
        model_threads=model_threads,
    )
    return _evaluate(model, corpus, Path(out), run_info, settings, t_start)


def _evaluate(model, corpus, out: Path, run_info: dict | None, settings: EvalSettings, t_start: float) -> dict:
    """:func:`evaluate_model` once its settings are checked, with the output folder locked (one writer)."""
    if out.exists() and not out.is_dir():
        raise EvalError(f"output folder {out} exists and is not a folder")
    with resultdir.folder_lock(out, command="lightdvae eval", error=EvalError):
        return _evaluate_locked(model, corpus, out, run_info, settings, t_start)


def _evaluate_locked(model, corpus, out: Path, run_info: dict | None, settings: EvalSettings, t_start: float) -> dict:
    """Select the files, evaluate them, conclude."""
    from lightdvae.data import resolve_corpus

    corpus = resolve_corpus(corpus, build=False, progress=settings.progress)
    files = corpus.split(settings.split)  # DataError when the split is empty
    n_listed = len(files)
    if settings.max_files is not None:
        files = files[: int(settings.max_files)]
    run_info = _describe_model(model, run_info)
    fingerprint = {
        "checkpoint_sha256": run_info["checkpoint"]["sha256"],
        "corpus": str(Path(corpus.root).resolve()),
        "layout": corpus.layout,
        **settings.fingerprint,
    }
    done, skipped, names, seconds = _evaluate_files(model, corpus, files, out, fingerprint, run_info, settings, t_start)
    rows = [done[i] for i in sorted(done)]
    check_model_ran(rows, EvalError)
    write_per_file(out / PER_FILE, rows)
    device = str(next(model.parameters()).device)
    summary = build_summary(
        rows,
        run_info=run_info,
        corpus=corpus,
        settings=settings,
        n_listed=n_listed,
        skipped=skipped,
        names=names,
        device=device,
        seconds=seconds,
    )
    write_json(out / SUMMARY, summary)
    if not settings.quiet:
        print(closing_line(summary, out), flush=True)
    return summary


def _describe_model(model, run_info: dict | None) -> dict:
    """``run_info`` completed from the model itself: its description (without ``"model"``) and the digest of its
    weights (without ``"checkpoint"``)."""
    run_info = dict(run_info or {})
    if "model" not in run_info:
        name = getattr(model, "name", type(model).__name__)
        config = model.config.to_dict() if hasattr(model, "config") else {}
        run_info["model"] = {
            "name": name,
            "label": model_label(name, config),
            "parameters": int(model.num_parameters()),
            "config": config,
            "training": None,
            "sees_past_speech": bool(getattr(model, "sees_past_speech", True)),
        }
    if "checkpoint" not in run_info:
        run_info["checkpoint"] = {"which": None, "path": None, "sha256": weights_sha256(model)}
    return run_info


#: The shortest file evaluated: 0.25 s of frames, the least PESQ scores (a 1-sample file would enter the means
#: with an RMSE of 0 and an infinite SI-SDR).  Shorter files are skipped and listed in summary.json.
MIN_FRAMES = math.ceil(PESQ_MIN_SECONDS * SAMPLE_RATE / HOP) + 1


def _load_dataset(files, settings: EvalSettings):
    """The selected files through the spectrogram cache, and the unusable ones by reason."""
    from lightdvae.data import SpectrogramCache, UtteranceDataset

    cache = SpectrogramCache(settings.cache_dir) if settings.cache_dir else SpectrogramCache()
    dataset = UtteranceDataset(
        files,
        min_frames=MIN_FRAMES,  # shorter files cannot be scored (PESQ needs 0.25 s): skipped, with the reason
        returns=("power", "spec", "wave"),
        cache=cache,
        progress=settings.progress,
        name=settings.split,
        warn=False,
    )
    skipped = {reason: [str(p) for p, _ in items] for reason, items in dataset.report.skipped.items()}
    if skipped:
        logger.warning(
            "%s: skipped %d unusable files: %s", settings.split, dataset.report.n_skipped, dataset.report.skip_summary()
        )
    return dataset, skipped


def _open_state(out: Path, fingerprint: dict, overwrite: bool) -> dict:
    """Claim ``out`` for this evaluation (refuse another one; ``overwrite``: clear its results and start over);
    return the state to keep (``fingerprint``, ``wall_s``: seconds spent by earlier sessions, ``sessions``)."""
    return resultdir.open_session(
        out,
        fingerprint,
        state_file=STATE,
        files=OUTPUT_FILES,
        dirs=OUTPUT_DIRS,
        overwrite=overwrite,
        what="results of another evaluation",
        them="them",
        error=EvalError,
    )


def _close_state(out: Path, state: dict, session_s: float, finished: bool) -> dict:
    return resultdir.close_session(out, STATE, state, session_s, finished, logger)


def _evaluate_files(model, corpus, files, out: Path, fingerprint: dict, run_info: dict, settings, t_start: float):
    """Run (or resume) the per-file loop in ``out``; returns the rows by index, the unusable input files by
    reason, the file names and the seconds (``wall``, ``wall_last_session``, ``sessions``).  The state file is
    closed also on error."""
    # The metric workers are forked before the data loading and the evaluation loop start threads.
    pool = MetricPool(settings.workers, settings.metrics, settings.mp_context)
    journal, state, finished = None, None, False
    try:
        dataset, skipped = _load_dataset(files, settings)
        out.mkdir(parents=True, exist_ok=True)
        state = _open_state(out, fingerprint, settings.overwrite)
        names = [file_name(Path(f.path), Path(corpus.root)) for f in dataset.files]
        previous = read_per_file(out / PER_FILE)
        done = kept_rows(previous, names)
        dropped = len(previous) - len(done)
        if dropped:
            logger.info("%s: %d earlier rows are not part of this selection (or failed in the model)", out, dropped)
        journal = Journal(out / PER_FILE, [done[i] for i in sorted(done)])
        if previous and not settings.quiet:
            print(f"resuming {out}: {len(done)} of {len(dataset)} files already evaluated", flush=True)
        label = run_info["model"]["label"]
        FileLoop(model, dataset, names, out, settings, label, journal, done, pool).run()
        journal.close()
        finished = True
    finally:
        if journal is not None:
            journal.close()
        pool.close()
        if state is not None:
            seconds = _close_state(out, state, time.perf_counter() - t_start, finished)
    return done, skipped, names, seconds
