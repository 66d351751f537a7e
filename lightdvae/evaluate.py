"""Analysis-resynthesis evaluation of a trained model on whole test utterances (SPEC section 5).

For every file of a corpus split: the front end's power spectrogram goes through the model
(``model.resynthesize(power, past="gen" | "gt")``, latents at their means), the variance estimate is turned back
into a waveform with the original phase (:func:`lightdvae.audio.resynthesize`), and RMSE, SI-SDR, PESQ wide-band,
PESQ narrow-band (MOS-LQO, and the raw P.862 score derived from it) and ESTOI are computed against the front
end's waveform (trimmed and peak-normalised, the signal the model saw).  The model runs in this process, one
utterance at a time (no padding, so non-causal models see exactly the utterance); the metrics, whose cost is
PESQ and ESTOI, run in a pool of worker processes while the model goes on with the next files.

Output folder (default ``RUN_DIR/eval/<split>-<past>/``; ``RUN_DIR/eval/<corpus>-<split>-<past>/`` when the
corpus is not the one the run was trained on; ``-last`` appended for the last checkpoint)::

    per_file.csv      one row per file: index, name, speaker, seconds, frames, the metric columns, errors
                      ("metric: reason | ..."), model_s and metrics_s (compute seconds), path
    summary.json      kind "lightdvae-eval": model (name, label, parameters, config), dataset, split, past,
                      per metric mean / median / std / 95 % t-interval / failed count, the failed files and
                      why, PESQ variants, seconds, versions
    state.json        what the folder evaluates (checkpoint digest, corpus, split, past, metrics)
    figures/*.png     ground truth beside the resynthesis, for the first ``figures`` files
    examples/*.npz    the same files' reference and estimated power spectrograms (for ``lightdvae report``)
    audio/<name>.wav  the resynthesised waveforms, with ``save_audio`` (16-bit PCM, clipped to [-1, 1])

Interruption and resumption: each file's row is appended to ``per_file.csv`` (flushed and fsynced) as soon as
its metrics are known, so a killed evaluation loses at most the files in flight.  Running the same evaluation
again reads the rows already there and evaluates only the missing files; when everything is done, the CSV is
rewritten in file order and ``summary.json`` is written, both atomically.  A folder that holds another
evaluation (other checkpoint weights, corpus, split, past mode or metrics) is refused unless ``overwrite``.

Typical use::

    from lightdvae.evaluate import evaluate_run
    summary = evaluate_run("runs/light", data="builtin", split="test", past="gen")
    summary["metrics"]["si_sdr"]["mean"], summary["metrics"]["si_sdr"]["ci_half"]
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import multiprocessing
import os
import platform
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import torch

from lightdvae._io import atomic_write_bytes, atomic_write_text, sha256_file, utc_now
from lightdvae.audio import SAMPLE_RATE
from lightdvae.cli import UserError
from lightdvae.metrics import COLUMNS, METRICS, PESQ_VARIANTS, MetricUnavailable, check_available, compute_metrics
from lightdvae.runs import load_run, weights_sha256

logger = logging.getLogger("lightdvae.evaluate")

SUMMARY_KIND = "lightdvae-eval"
FORMAT_VERSION = 1
PER_FILE = "per_file.csv"
SUMMARY = "summary.json"
STATE = "state.json"
AUDIO_DIR = "audio"
FIGURE_DIR = "figures"
EXAMPLE_DIR = "examples"
DEFAULT_FIGURES = 3
CSV_COLUMNS = ("index", "name", "speaker", "seconds", "frames", *COLUMNS, "errors", "model_s", "metrics_s", "path")
PASTS = ("gen", "gt")
MODEL_ERROR = "model"  #: the errors key of a file the model itself failed on (retried on resume)

_MODEL_LABELS = {
    "vae": "VAE",
    "dkf": "DKF",
    "rvae": "RVAE",
    "rvae-causal": "RVAE (causal)",
    "srnn": "SRNN",
    "hit-dvae": "HiT-DVAE",
    "light-dvae": "LigHT-DVAE",
}
_ABLATION_PREFIX = {"hit-dvae": "HiT", "light-dvae": "LigHT"}

__all__ = [
    "EvalError",
    "evaluate_run",
    "evaluate_model",
    "model_label",
    "default_out_dir",
    "read_per_file",
    "read_summary",
    "SUMMARY_KIND",
    "CSV_COLUMNS",
]


class EvalError(UserError):
    """An evaluation that cannot run as asked (missing run or checkpoint, bad option, foreign output folder).

    A :class:`lightdvae.cli.UserError`: ``lightdvae eval`` prints it as one line."""


# ----------------------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------------------
def _atomic_write_json(path: Path, value) -> Path:
    return atomic_write_text(path, json.dumps(_jsonable(value), indent=2) + "\n")


def _jsonable(value):
    """NaN and inf are not JSON: they become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return _jsonable(value.item())
    if isinstance(value, Path):
        return str(value)
    return value


def _versions() -> dict:
    import lightdvae

    versions = {
        "lightdvae": lightdvae.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    for pkg in ("pesq", "pystoi"):
        try:
            from importlib.metadata import version

            versions[pkg] = version(pkg)
        except Exception:
            versions[pkg] = None
    return versions


def model_label(name: str, config: dict | None = None, training: str | None = None) -> str:
    """The name a table shows for a model: ``"LigHT-DVAE"``, ``"HiT-Inv-s-NR"``, ``"SRNN (SS)"``, ``"RVAE"``...

    Args:
        name: registry name (``lightdvae.models.names()``).
        config: the model config (``inv_s`` / ``no_residual`` of the transformer DVAEs, ``prior_on_own_past`` of
            an imported SRNN).
        training: ``"tf"`` or ``"ss"`` (how an SRNN was trained); from the config when None.
    """
    config = config or {}
    key = name.strip().lower()
    if key in _ABLATION_PREFIX and config.get("inv_s"):
        return f"{_ABLATION_PREFIX[key]}-Inv-s{'-NR' if config.get('no_residual') else ''}"
    label = _MODEL_LABELS.get(key, name)
    if key == "srnn":
        mode = training or ("ss" if config.get("prior_on_own_past") else "tf")
        label += f" ({str(mode).upper()})"
    return label


def _run_meta(run_dir: Path) -> dict:
    path = run_dir / "config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EvalError(f"cannot read {path}: {exc}") from None


def _training_mode(meta: dict) -> str | None:
    training = meta.get("training")
    if isinstance(training, dict) and training.get("training") in ("tf", "ss"):
        return training["training"]
    source = meta.get("source")
    if isinstance(source, dict) and source.get("kind") == "dvae-import":
        return "ss" if (meta.get("config") or {}).get("prior_on_own_past") else "tf"
    return None


def _resolve_device(device: str | torch.device | None) -> torch.device:
    spec = "auto" if device is None else str(device)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise EvalError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EvalError(f"device {spec!r} asked for, but no CUDA GPU is visible to torch")
    return dev


def _load_model(run_dir: Path, which: str, device: torch.device):
    """The run's model (eval mode, on ``device``), with one-line errors for a missing run or checkpoint."""
    if not run_dir.exists():
        raise EvalError(f"run directory {run_dir} does not exist")
    if not run_dir.is_dir():
        raise EvalError(f"{run_dir} is not a run directory (not a folder)")
    ckpt = run_dir / "checkpoints" / f"{which}.pt"
    if not ckpt.is_file():
        have = (
            sorted(p.stem for p in (run_dir / "checkpoints").glob("*.pt")) if (run_dir / "checkpoints").is_dir() else []
        )
        hint = f" (it has: {', '.join(have)})" if have else " (it holds no checkpoint: was training started?)"
        raise EvalError(f"{run_dir} has no checkpoint checkpoints/{which}.pt{hint}")
    try:
        model = load_run(run_dir, which=which, device=device)
    except (FileNotFoundError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise EvalError(f"cannot load {ckpt}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return model.eval(), ckpt


def default_out_dir(run_dir, split: str = "test", past: str = "gen", corpus_tag: str | None = None, which="best"):
    """``RUN_DIR/eval/[<corpus_tag>-]<split>-<past>[-<which>]``."""
    name = f"{split}-{past}" if not corpus_tag else f"{corpus_tag}-{split}-{past}"
    if which != "best":
        name += f"-{Path(str(which)).stem}"
    return Path(run_dir) / "eval" / name


def _safe_tag(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("._") or "corpus"


def _file_name(path: Path, root: Path) -> str:
    """A file's name in the results: its path relative to the corpus root (POSIX), else its file name."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.name


def _stem(name: str) -> str:
    """A flat file stem for figures and examples: ``test/spk/utt.wav`` -> ``test__spk__utt``."""
    return _safe_tag(str(Path(name).with_suffix("")).replace("/", "__").replace("\\", "__"))


# ----------------------------------------------------------------------------------------------------------------
# Per-file CSV (the journal of an evaluation)
# ----------------------------------------------------------------------------------------------------------------
def _format_errors(errors: dict) -> str:
    return " | ".join(f"{k}: {v}" for k, v in errors.items())


def _parse_errors(text: str) -> dict:
    out = {}
    for part in (text or "").split(" | "):
        key, sep, reason = part.partition(": ")
        if sep and key.strip():
            out[key.strip()] = reason.strip()
    return out


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _csv_line(row: dict) -> str:
    buf = io.StringIO()
    cells = [_format_errors(row.get(c) or {}) if c == "errors" else _cell(row.get(c)) for c in CSV_COLUMNS]
    csv.writer(buf, lineterminator="\n").writerow(cells)
    return buf.getvalue()


def _csv_header() -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(CSV_COLUMNS)
    return buf.getvalue()


def _parse_row(raw: dict) -> dict | None:
    try:
        row: dict = {"index": int(raw["index"]), "name": raw["name"], "speaker": raw["speaker"], "path": raw["path"]}
        row["seconds"] = float(raw["seconds"])
        row["frames"] = int(raw["frames"])
        for c in (*COLUMNS, "model_s", "metrics_s"):
            row[c] = float(raw[c]) if raw[c] not in ("", None) else math.nan
        row["errors"] = _parse_errors(raw["errors"] or "")
    except (KeyError, TypeError, ValueError):
        return None
    return row


def read_per_file(path) -> list[dict]:
    """The rows of a ``per_file.csv`` as dicts (metric columns as floats, NaN for failures; ``errors`` as a dict
    ``{metric: reason}``).  A truncated last line (an interrupted write) is ignored."""
    path = Path(path)
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # drop a half-written last row
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
        return []
    rows = []
    for raw in reader:
        row = _parse_row(raw)
        if row is not None:
            rows.append(row)
    return rows


def read_summary(path) -> dict:
    """A ``summary.json`` written by an evaluation (a folder holding one is accepted too)."""
    path = Path(path)
    if path.is_dir():
        path = path / SUMMARY
    value = json.loads(path.read_text())
    if value.get("kind") != SUMMARY_KIND:
        raise ValueError(f"{path} is not an evaluation summary (kind {value.get('kind')!r})")
    return value


class _Journal:
    """Appends rows to ``per_file.csv`` one at a time, flushed and fsynced."""

    def __init__(self, path: Path, rows: list[dict]):
        self.path = path
        # start from a clean file holding exactly the rows kept (drops a torn last line)
        atomic_write_bytes(path, (_csv_header() + "".join(_csv_line(r) for r in rows)).encode("utf-8"))
        self.fh = open(path, "a", encoding="utf-8", newline="")

    def append(self, row: dict) -> None:
        self.fh.write(_csv_line(row))
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        if not self.fh.closed:
            self.fh.close()


# ----------------------------------------------------------------------------------------------------------------
# Worker processes
# ----------------------------------------------------------------------------------------------------------------
def _worker_init() -> None:
    # Ctrl-C goes to the whole process group: the parent handles it and shuts the pool down cleanly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _metrics_job(index: int, reference: np.ndarray, estimate: np.ndarray, metrics: tuple[str, ...]):
    t0 = time.perf_counter()
    result = compute_metrics(reference, estimate, metrics)
    return index, result, time.perf_counter() - t0


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def _make_pool(workers: int, mp_context: str | None) -> ProcessPoolExecutor:
    """A process pool for the metrics.  On Linux the workers are forked (instant start; they only run NumPy,
    pesq and pystoi, never torch), and all are started right away, before the model runs."""
    if mp_context is None:
        mp_context = "fork" if sys.platform.startswith("linux") else None
    ctx = multiprocessing.get_context(mp_context) if mp_context else None
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init)
    for fut in [pool.submit(int, 0) for _ in range(workers)]:
        fut.result()
    return pool


# ----------------------------------------------------------------------------------------------------------------
# The evaluation
# ----------------------------------------------------------------------------------------------------------------
def _progress_bar(total: int, initial: int, desc: str, progress: bool | None):
    from tqdm.auto import tqdm

    disable = (not sys.stderr.isatty()) if progress is None else not progress
    return tqdm(total=total, initial=initial, desc=desc, unit="file", disable=disable, dynamic_ncols=True, leave=False)


def _clear_outputs(out: Path) -> None:
    for name in (PER_FILE, SUMMARY, STATE):
        (out / name).unlink(missing_ok=True)
    for sub in (AUDIO_DIR, FIGURE_DIR, EXAMPLE_DIR):
        if (out / sub).is_dir():
            shutil.rmtree(out / sub)


def _check_state(out: Path, fingerprint: dict, overwrite: bool) -> dict:
    """Refuse a folder holding another evaluation (``overwrite``: clear the folder's results and start over);
    return the state to keep
    (``fingerprint``, ``wall_s``: seconds spent by earlier sessions of this evaluation, ``sessions``)."""
    state_path = out / STATE
    old, state = None, {}
    if state_path.is_file():
        try:
            state = json.loads(state_path.read_text())
            old = state.get("fingerprint")
        except (OSError, ValueError):
            old = {"unreadable": True}
    elif (out / PER_FILE).is_file() or (out / SUMMARY).is_file():
        old = {"unknown": True}
    if overwrite:
        _clear_outputs(out)
        old, state = None, {}
    elif old is not None and old != fingerprint:
        diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
        what = ", ".join("checkpoint weights" if k == "checkpoint_sha256" else k for k in diff)
        raise EvalError(
            f"{out} holds results of another evaluation (differs in: {what}); pass --overwrite to replace "
            "them, or --out DIR to keep both"
        )
    state = {
        "fingerprint": fingerprint,
        "wall_s": float(state.get("wall_s") or 0.0) if old == fingerprint else 0.0,
        "sessions": int(state.get("sessions") or 0) if old == fingerprint else 0,
        "updated": utc_now(),
    }
    _atomic_write_json(state_path, state)
    return state


def _close_state(out: Path, state: dict, session_s: float, finished: bool) -> None:
    state = {**state, "wall_s": state["wall_s"] + session_s, "sessions": state["sessions"] + 1}
    state.update(updated=utc_now(), finished=finished)
    try:
        _atomic_write_json(out / STATE, state)
    except OSError as exc:  # never hide the original error behind this one
        logger.warning("cannot update %s: %s", out / STATE, exc)


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
        EvalError / DataError (both :class:`lightdvae.cli.UserError`): missing run or checkpoint, unknown corpus,
        empty split, bad option, a folder holding another evaluation, a metric package missing.
    """
    if past not in PASTS:
        raise EvalError(f"past must be 'gen' (own past predictions) or 'gt' (true past), got {past!r}")
    if split not in ("train", "val", "test"):
        raise EvalError(f"split must be train, val or test, got {split!r}")
    run_dir = Path(run_dir)
    dev = _resolve_device(device)
    model, ckpt = _load_model(run_dir, which, dev)
    meta = _run_meta(run_dir)
    training = meta.get("training") if isinstance(meta.get("training"), dict) else {}
    if data is None:
        recorded = (meta.get("data") or {}).get("spec") if isinstance(meta.get("data"), dict) else None
        data = recorded or training.get("data")
        if not data or str(data).startswith("<"):
            raise EvalError(f"{run_dir} does not record the corpus it was trained on; pass --data SPEC")
    if cache_dir is None:
        cache_dir = training.get("cache_dir")

    from lightdvae.data import resolve_corpus

    corpus = resolve_corpus(data, build=False, progress=progress)
    trained_root = (meta.get("data") or {}).get("root") if isinstance(meta.get("data"), dict) else None
    same_corpus = trained_root is None or Path(trained_root).resolve() == Path(corpus.root).resolve()
    if out is None:
        out = default_out_dir(run_dir, split, past, None if same_corpus else _safe_tag(corpus.name), which)
    name = meta.get("model") or getattr(model, "name", type(model).__name__)
    config = model.config.to_dict() if hasattr(model, "config") else {}
    run_info = {
        "run_dir": str(run_dir.resolve()),
        "checkpoint": {"which": which, "path": str(ckpt.resolve()), "sha256": sha256_file(ckpt)},
        "model": {
            "name": name,
            "label": label or model_label(name, config, _training_mode(meta)),
            "parameters": int(model.num_parameters()),
            "config": config,
            "training": _training_mode(meta),
            "sees_past_speech": bool(getattr(model, "sees_past_speech", True)),
        },
        "data_spec": data if isinstance(data, str) else str(getattr(data, "root", data)),
    }
    return evaluate_model(
        model,
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
    from lightdvae.audio import resynthesize
    from lightdvae.audio import save_audio as write_wav
    from lightdvae.data import SpectrogramCache, UtteranceDataset, resolve_corpus

    t_start = time.perf_counter()
    if past not in PASTS:
        raise EvalError(f"past must be 'gen' (own past predictions) or 'gt' (true past), got {past!r}")
    metrics = tuple(metrics)
    try:
        check_available(metrics)
    except MetricUnavailable as exc:
        raise EvalError(str(exc)) from None
    except ValueError as exc:
        raise EvalError(str(exc)) from None
    if workers is None:
        workers = _default_workers()
    if int(workers) < 0:
        raise EvalError(f"workers must be >= 0, got {workers}")
    workers = int(workers)
    if max_files is not None and int(max_files) < 1:
        raise EvalError(f"max_files must be >= 1, got {max_files}")
    figures = max(0, int(figures))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EvalError(f"output folder {out} exists and is not a folder")

    corpus = resolve_corpus(corpus, build=False, progress=progress)
    files = corpus.split(split)  # DataError when the split is empty
    n_listed = len(files)
    if max_files is not None:
        files = files[: int(max_files)]
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
    fingerprint = {
        "checkpoint_sha256": run_info["checkpoint"]["sha256"],
        "corpus": str(Path(corpus.root).resolve()),
        "layout": corpus.layout,
        "split": split,
        "past": past,
        "sample": bool(sample),
        "metrics": list(metrics),
    }

    # The metric workers are forked before the data loading and the evaluation loop start threads.
    pool = _make_pool(workers, mp_context) if workers > 0 else None
    journal, state, finished = None, None, False
    try:
        cache = SpectrogramCache(cache_dir) if cache_dir else SpectrogramCache()
        dataset = UtteranceDataset(
            files, returns=("power", "spec", "wave"), cache=cache, progress=progress, name=split, warn=False
        )
        skipped = {reason: [str(p) for p, _ in items] for reason, items in dataset.report.skipped.items()}
        if skipped:
            logger.warning(
                "%s: skipped %d unusable files: %s", split, dataset.report.n_skipped, dataset.report.skip_summary()
            )
        out.mkdir(parents=True, exist_ok=True)
        state = _check_state(out, fingerprint, overwrite)
        names = [_file_name(Path(f.path), Path(corpus.root)) for f in dataset.files]
        index_of = {n: i for i, n in enumerate(names)}
        previous = read_per_file(out / PER_FILE)
        done: dict[int, dict] = {}
        for row in previous:
            i = index_of.get(row["name"])
            if i is not None and MODEL_ERROR not in row["errors"]:
                row["index"] = i
                done[i] = row
        dropped = len(previous) - len(done)
        if dropped:
            logger.info("%s: %d earlier rows are not part of this selection (or failed in the model)", out, dropped)
        journal = _Journal(out / PER_FILE, [done[i] for i in sorted(done)])

        label = run_info["model"]["label"]

        def artefacts_missing(i: int) -> bool:
            stem = _stem(names[i])
            if save_audio and not (out / AUDIO_DIR / Path(names[i]).with_suffix(".wav")).is_file():
                return True
            return i < figures and not (out / EXAMPLE_DIR / f"{stem}.npz").is_file()

        todo = [i for i in range(len(dataset)) if i not in done or artefacts_missing(i)]
        if previous and not quiet:
            print(f"resuming {out}: {len(done)} of {len(dataset)} files already evaluated", flush=True)
        bar = _progress_bar(len(dataset), len(done), f"eval {label} {split}/{past}", progress)
        pending: dict[Future, tuple[int, float]] = {}
        model_device = next(model.parameters()).device
        threads = torch.get_num_threads()
        if model_device.type == "cpu":
            # The metric workers already keep the cores busy; the model's small per-frame ops (the autoregressive
            # GEN decoding) run far faster on one thread than on threads that fight the workers for the cores.
            torch.set_num_threads(model_threads or max(1, min(threads, _default_workers() - workers)))

        def finish(i: int, result: dict, model_s: float, metrics_s: float) -> None:
            f = dataset.files[i]
            entry = dataset.entries[i]
            row = {
                "index": i,
                "name": names[i],
                "speaker": f.speaker,
                "seconds": entry.samples / SAMPLE_RATE,
                "frames": entry.frames,
                **{c: float(result.get(c, math.nan)) for c in COLUMNS},
                "errors": dict(result.get("errors", {})),
                "model_s": model_s,
                "metrics_s": metrics_s,
                "path": str(f.path),
            }
            journal.append(row)
            done[i] = row
            bar.update(1)

        def collect(block: bool) -> None:
            if not pending:
                return
            finished, _ = wait(list(pending), timeout=None if block else 0, return_when=FIRST_COMPLETED)
            for fut in finished:
                i, model_s = pending.pop(fut)
                _, result, metrics_s = fut.result()
                finish(i, result, model_s, metrics_s)

        try:
            for i in todo:
                item = dataset[i]
                need_metrics = i not in done
                t0 = time.perf_counter()
                try:
                    power = item["power"].to(model_device)
                    variance = model.resynthesize(power[None], past=past, sample=sample)[0]
                    estimate = resynthesize(variance, item["spec"].to(model_device), item["length"])
                    estimate = estimate.detach().float().cpu().numpy()
                    variance = variance.detach().float().cpu().numpy()
                except Exception as exc:  # one bad file must not end a long evaluation; it is retried on resume
                    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    logger.warning("%s: the model failed: %s", names[i], msg)
                    if not need_metrics:  # only its audio / figure were missing: its metrics stand
                        continue
                    result = {c: math.nan for c in COLUMNS}
                    result["errors"] = {MODEL_ERROR: f"{type(exc).__name__}: {msg}"}
                    finish(i, result, time.perf_counter() - t0, 0.0)
                    continue
                model_s = time.perf_counter() - t0
                if save_audio:
                    write_wav(out / AUDIO_DIR / Path(names[i]).with_suffix(".wav"), estimate)
                if i < figures:
                    try:
                        _write_example(out, names[i], item["power"].numpy(), variance, f"{label} ({past.upper()})")
                    except Exception as exc:  # a figure is not worth the evaluation
                        logger.warning("%s: no figure: %s: %s", names[i], type(exc).__name__, exc)
                if not need_metrics:
                    continue
                reference = item["wave"].numpy()
                if pool is None:
                    t1 = time.perf_counter()
                    result = compute_metrics(reference, estimate, metrics)
                    finish(i, result, model_s, time.perf_counter() - t1)
                else:
                    pending[pool.submit(_metrics_job, i, reference, estimate, metrics)] = (i, model_s)
                    while len(pending) >= 2 * workers:
                        collect(block=True)
                    collect(block=False)
            while pending:
                collect(block=True)
        except KeyboardInterrupt:
            for fut in pending:
                fut.cancel()
            for fut, (i, model_s) in list(pending.items()):  # keep what the workers had already finished
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    finish(i, fut.result()[1], model_s, fut.result()[2])
            print(
                f"\ninterrupted: {len(done)} of {len(dataset)} files are saved in {out / PER_FILE}; run the same "
                "command again to evaluate the rest",
                file=sys.stderr,
                flush=True,
            )
            raise
        except BrokenProcessPool:
            raise EvalError(
                f"a metric worker process died; the {len(done)} files done are saved in {out / PER_FILE}: run the "
                "same command again to resume (or --workers 0 to compute the metrics in one process)"
            ) from None
        finally:
            bar.close()
            torch.set_num_threads(threads)
        journal.close()
        finished = True
    finally:
        if journal is not None:
            journal.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        session_s = time.perf_counter() - t_start
        if state is not None:
            _close_state(out, state, session_s, finished)

    rows = [done[i] for i in sorted(done)]
    model_failed = [r for r in rows if MODEL_ERROR in r["errors"]]
    if rows and len(model_failed) == len(rows):
        raise EvalError(f"the model failed on every file; first error: {model_failed[0]['errors'][MODEL_ERROR]}")
    atomic_write_bytes(out / PER_FILE, (_csv_header() + "".join(_csv_line(r) for r in rows)).encode("utf-8"))
    summary = _summary(
        rows=rows,
        run_info=run_info,
        corpus=corpus,
        split=split,
        past=past,
        sample=sample,
        metrics=metrics,
        n_listed=n_listed,
        max_files=max_files,
        skipped=skipped,
        out=out,
        names=names,
        figures=figures,
        save_audio=save_audio,
        workers=workers,
        device=str(next(model.parameters()).device),
        wall=state["wall_s"] + session_s,
        session=session_s,
        sessions=state["sessions"] + 1,
    )
    _atomic_write_json(out / SUMMARY, summary)
    if not quiet:
        print(_closing_line(summary, out), flush=True)
    return summary


def _write_example(out: Path, name: str, reference: np.ndarray, estimate: np.ndarray, title: str) -> None:
    """``examples/<stem>.npz`` (reference and estimated power, float32) and ``figures/<stem>.png``."""
    from lightdvae.figures import resynthesis_figure, save_figure

    stem = _stem(name)
    buf = io.BytesIO()
    np.savez(buf, reference=reference.astype(np.float32), estimate=estimate.astype(np.float32), name=np.array(name))
    atomic_write_bytes(out / EXAMPLE_DIR / f"{stem}.npz", buf.getvalue())
    fig = resynthesis_figure(reference, {title: estimate}, suptitle=name)
    save_figure(fig, out / FIGURE_DIR / f"{stem}.png")


def _summary(
    *,
    rows,
    run_info,
    corpus,
    split,
    past,
    sample,
    metrics,
    n_listed,
    max_files,
    skipped,
    out,
    names,
    figures,
    save_audio,
    workers,
    device,
    wall,
    session,
    sessions,
) -> dict:
    from lightdvae.metrics import summarize

    columns = [c for c in COLUMNS if c in metrics or (c == "pesq_nb_raw" and "pesq_nb" in metrics)]
    stats = {c: summarize([r[c] for r in rows]) for c in columns}
    failures: dict[str, list[dict]] = {}
    for r in rows:
        for metric, reason in r["errors"].items():
            failures.setdefault(metric, []).append({"name": r["name"], "reason": reason})
    return {
        "kind": SUMMARY_KIND,
        "format": FORMAT_VERSION,
        "created": utc_now(),
        "run_dir": run_info.get("run_dir"),
        "checkpoint": run_info.get("checkpoint"),
        "model": run_info["model"],
        "dataset": {
            "spec": run_info.get("data_spec"),
            "name": corpus.name,
            "layout": corpus.layout,
            "root": str(corpus.root),
        },
        "split": split,
        "past": past,
        "sample": bool(sample),
        "metrics": stats,
        "metric_names": list(columns),
        "ci": "95 % Student-t interval of the mean over files (metrics.summarize, method 't')",
        "pesq_variants": {k: v for k, v in PESQ_VARIANTS.items() if k in columns},
        "files": {
            "listed": n_listed,
            "selected": n_listed if max_files is None else min(n_listed, int(max_files)),
            "evaluated": len(rows),
            "max_files": max_files,
            "skipped_input": sum(len(v) for v in skipped.values()),
            "skipped_input_files": skipped,
            "seconds_of_audio": float(sum(r["seconds"] for r in rows)),
        },
        "n_failed": {m: len(v) for m, v in failures.items()},
        "failures": failures,
        "seconds": {
            "wall": wall,
            "wall_last_session": session,
            "sessions": sessions,
            "model": float(sum(r["model_s"] for r in rows if math.isfinite(r["model_s"]))),
            "metrics": float(sum(r["metrics_s"] for r in rows if math.isfinite(r["metrics_s"]))),
        },
        "workers": workers,
        "device": device,
        "outputs": {
            "per_file": PER_FILE,
            "figures": [f"{FIGURE_DIR}/{_stem(n)}.png" for n in names[:figures]],
            "examples": [f"{EXAMPLE_DIR}/{_stem(n)}.npz" for n in names[:figures]],
            "audio": AUDIO_DIR if save_audio else None,
        },
        "versions": _versions(),
    }


def _closing_line(summary: dict, out: Path) -> str:
    from lightdvae.metrics import LABELS

    parts = []
    for c in summary["metric_names"]:
        s = summary["metrics"][c]
        if s["n"]:
            parts.append(f"{LABELS[c]} {s['mean']:.3f}")
    failed = len({f["name"] for items in summary["failures"].values() for f in items})
    files = summary["files"]
    text = (
        f"{summary['model']['label']} on {summary['dataset']['name']} {summary['split']} "
        f"({summary['past'].upper()} past): {files['evaluated']} files, " + ", ".join(parts)
    )
    if failed:
        text += f"; {failed} files with failed metrics (listed in summary.json)"
    return text + f"; {summary['seconds']['wall']:.1f} s -> {out}"
