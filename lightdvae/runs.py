"""Run directories: what ``lightdvae train`` (and ``lightdvae import-dvae``) write, and how to read them back.

Layout of a run directory::

    RUN_DIR/
      config.json          {"model": NAME, "config": {model config}, "training": {TrainConfig}, "data": {...},
                            "versions": {...}, ...}  (an imported run has "model", "config" and "source")
      log.csv              one row per epoch (see :data:`lightdvae.train.LOG_COLUMNS`)
      status.json          {"state": "running" | "finished" | "early_stopped" | "time_limit" | "diverged"
                            | "interrupted", "epoch": N, ...}
      checkpoints/best.pt  the weights with the best validation loss
      checkpoints/last.pt  the state at the end of the last completed epoch (what ``--resume`` continues from)

A checkpoint is a dict holding at least ``{"model": state_dict, "model_name": NAME, "config": {model config}}``;
those of a training run add ``optimizer``, ``scaler``, ``epoch`` (completed epochs), ``rng`` (torch, CUDA, NumPy
and Python states, one entry per process), ``early_stopping``, ``best_val_loss``, ``best_epoch`` and ``history``
(the rows of log.csv).  Every file is written atomically (a temporary file in the same folder, then
``os.replace``), so a killed process never leaves a broken file.  Checkpoints hold only tensors and plain Python
values and load with ``torch.load(..., weights_only=True)``.

Results computed from a run live beside it: ``RUN_DIR/eval/<split>-<past>/`` (``lightdvae eval``) and
``RUN_DIR/generate/<which>-n<N>-f<F>-t<T>-s<seed>/`` (``lightdvae generate``).

This module is the only reader and writer of these files (mamba's ``save_pretrained`` / ``from_pretrained``
pair): training writes through :func:`write_config`, :func:`write_log`, :func:`write_status` and
:func:`save_checkpoint`; an import through :func:`save_model`; everything that uses a trained model opens it
with :func:`open_run` (the model, its checkpoint, the run's description and checkpoint digest, computed once).

Typical use::

    from lightdvae.runs import load_run
    model = load_run("runs/light", which="best", device="cuda")   # eval mode
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from lightdvae._io import atomic_write, atomic_write_json, atomic_write_text, sha256_file, utc_now
from lightdvae.errors import RunError
from lightdvae.models import DVAE, build, model_label

CONFIG_FILE = "config.json"
LOG_FILE = "log.csv"
STATUS_FILE = "status.json"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINTS = ("best", "last")
EVAL_DIR = "eval"
GENERATE_DIR = "generate"
#: The files a training run owns (``--force`` deletes them, and its checkpoints).
RUN_FILES = (CONFIG_FILE, LOG_FILE, STATUS_FILE)

__all__ = [
    "CONFIG_FILE",
    "LOG_FILE",
    "STATUS_FILE",
    "CHECKPOINT_DIR",
    "EVAL_DIR",
    "GENERATE_DIR",
    "OpenRun",
    "open_run",
    "read_meta",
    "training_mode",
    "corpus_spec",
    "save_model",
    "write_config",
    "write_log",
    "read_log",
    "log_csv",
    "write_status",
    "clear_run_files",
    "weights_sha256",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "save_checkpoint",
    "checkpoint_path",
    "load_checkpoint",
    "read_config",
    "read_status",
    "load_run",
    "is_run_dir",
]


def save_checkpoint(path: str | os.PathLike, payload: dict) -> Path:
    """``torch.save(payload)`` to ``path`` atomically."""
    return atomic_write(path, lambda fh: torch.save(payload, fh))


def checkpoint_path(run_dir: str | os.PathLike, which: str = "best") -> Path:
    """``run_dir/checkpoints/<which>.pt``; ``which`` may also be the path of a ``.pt`` file."""
    if which in CHECKPOINTS:
        return Path(run_dir) / CHECKPOINT_DIR / f"{which}.pt"
    if str(which).endswith(".pt"):
        return Path(which)
    raise ValueError(f"which must be one of {', '.join(CHECKPOINTS)} or a .pt file, got {which!r}")


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """A checkpoint written by :func:`save_checkpoint` (``weights_only`` loading: no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise ValueError(
            f"cannot read checkpoint {path}: the file is truncated, damaged or not a torch checkpoint "
            f"({type(exc).__name__})"
        ) from exc
    if not isinstance(payload, dict) or not {"model", "model_name", "config"} <= set(payload):
        raise ValueError(f"{path} is not a lightdvae checkpoint (needs the keys model, model_name, config)")
    return payload


def is_run_dir(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds a run (a config.json or a checkpoint)."""
    run_dir = Path(run_dir)
    return (run_dir / CONFIG_FILE).is_file() or any(checkpoint_path(run_dir, w).is_file() for w in CHECKPOINTS)


def read_config(run_dir: str | os.PathLike) -> dict:
    """The parsed ``config.json`` of a run.  Raises FileNotFoundError when there is none, :class:`RunError`
    (a ``UserError``) when it is not a JSON object."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: no {CONFIG_FILE}")
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise RunError(f"cannot read {path}: {exc}") from None
    if not isinstance(value, dict):
        raise RunError(f"{path} is not a run configuration (a JSON object was expected, found {type(value).__name__})")
    return value


def read_meta(run_dir: str | os.PathLike) -> dict:
    """The run's ``config.json``, or ``{}`` when the folder has none (a bare checkpoint folder)."""
    return read_config(run_dir) if (Path(run_dir) / CONFIG_FILE).is_file() else {}


def training_mode(meta: dict) -> str | None:
    """``"tf"`` / ``"ss"``: how the run's model was trained (an imported SRNN: from its prior's input), or None."""
    training = meta.get("training")
    if isinstance(training, dict) and training.get("training") in ("tf", "ss"):
        return training["training"]
    source = meta.get("source")
    if isinstance(source, dict) and source.get("kind") == "dvae-import":
        return "ss" if (meta.get("config") or {}).get("prior_on_own_past") else "tf"
    return None


def corpus_spec(meta: dict) -> str | None:
    """The corpus spec the run was trained on (``data.spec``, else the training settings' ``data``), or None
    when it records none (an imported checkpoint, or datasets passed in directly: ``"<...>"``)."""
    training = meta.get("training") if isinstance(meta.get("training"), dict) else {}
    recorded = (meta.get("data") or {}).get("spec") if isinstance(meta.get("data"), dict) else None
    spec = recorded or training.get("data")
    return None if not spec or str(spec).startswith("<") else spec


def read_status(run_dir: str | os.PathLike) -> dict | None:
    """The parsed ``status.json`` of a training run, or None (imported runs have none).

    A run whose status says ``running`` but whose folder no live process holds (it was killed) is reported as
    ``interrupted``, with the command that continues it."""
    from lightdvae.resultdir import lock_holder

    path = Path(run_dir) / STATUS_FILE
    if not path.is_file():
        return None
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise RunError(f"cannot read {path}: {exc}") from None
    if not isinstance(status, dict):
        raise RunError(f"{path} is not a run status (a JSON object was expected)")
    if status.get("state") == "running" and lock_holder(run_dir) is None:
        status = {**status, "state": "interrupted", "message": f"resume with: lightdvae train --resume {run_dir}"}
    return status


def model_from_checkpoint(payload: dict, device: str | torch.device = "cpu") -> DVAE:
    """Build the model a checkpoint describes and load its weights (eval mode, on ``device``)."""
    model = build(payload["model_name"], **payload["config"])
    model.load_state_dict(payload["model"])
    return model.to(device).eval()


def load_run(run_dir: str | os.PathLike, which: str = "best", device: str | torch.device = "cpu") -> DVAE:
    """The model of a run directory, in eval mode on ``device``.

    Args:
        run_dir: a folder written by ``lightdvae train`` or ``lightdvae import-dvae``.
        which: ``"best"`` (best validation loss; the default), ``"last"`` (end of the last completed epoch),
            or the path of a ``.pt`` checkpoint.
        device: where to put the model (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...).

    Raises:
        FileNotFoundError: no such run or checkpoint.  ValueError: the file is not a lightdvae checkpoint.
    """
    run_dir = Path(run_dir)
    if which in CHECKPOINTS and not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    path = checkpoint_path(run_dir, which)
    if not path.is_file():
        have = [w for w in CHECKPOINTS if checkpoint_path(run_dir, w).is_file()]
        hint = f" (it has: {', '.join(have)})" if have else " (it holds no checkpoint)"
        raise FileNotFoundError(f"no checkpoint {path}{hint if which in CHECKPOINTS else ''}")
    return model_from_checkpoint(load_checkpoint(path), device)


@dataclass
class OpenRun:
    """A trained model opened for inference, with what result files record about it.

    model: eval mode, on ``device``.  checkpoint: the ``.pt`` file.  meta: the run's config.json (``{}`` if none).
    info: ``{"run_dir", "checkpoint": {"which", "path", "sha256"}, "model": {"name", "label", "parameters",
    "config", "training"}}``.
    """

    run_dir: Path
    model: DVAE
    checkpoint: Path
    meta: dict
    device: torch.device
    info: dict

    @property
    def label(self) -> str:
        return self.info["model"]["label"]

    @property
    def sha256(self) -> str:
        return self.info["checkpoint"]["sha256"]


def open_run(
    run_dir: str | os.PathLike, which: str = "best", device: torch.device | str = "cpu", error: type = RunError
) -> OpenRun:
    """Open a run for inference: the model (eval mode, on ``device``), its checkpoint and the run's description.

    ``run_dir`` may also name a shipped pretrained prior, ``pretrained:NAME`` (:mod:`lightdvae.models.pretrained`):
    its results then go to ``./pretrained-NAME/`` (the package folder is not written into).

    Every failure a user can cause (no such folder, no such checkpoint, an unreadable file) raises ``error``
    (a :class:`lightdvae.errors.UserError` subclass) with one line that says what to do.
    """
    if str(run_dir).startswith(PRETRAINED_PREFIX):
        return _open_pretrained(str(run_dir)[len(PRETRAINED_PREFIX) :], which, device, error)
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise error(f"run directory {run_dir} does not exist")
    if not run_dir.is_dir():
        raise error(f"{run_dir} is not a run directory (not a folder)")
    if which not in CHECKPOINTS:
        raise error(f"which must be one of {', '.join(CHECKPOINTS)}, got {which!r}")
    ckpt = checkpoint_path(run_dir, which)
    if not ckpt.is_file():
        folder = run_dir / CHECKPOINT_DIR
        have = sorted(p.stem for p in folder.glob("*.pt")) if folder.is_dir() else []
        hint = f" (it has: {', '.join(have)})" if have else " (it holds no checkpoint: was training started?)"
        raise error(f"{run_dir} has no checkpoint {CHECKPOINT_DIR}/{which}.pt{hint}")
    try:
        model = load_run(run_dir, which=which, device=device)
    except (FileNotFoundError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise error(f"cannot load {ckpt}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    try:
        meta = read_meta(run_dir)
    except RunError as exc:
        raise error(str(exc)) from None
    name = meta.get("model") or getattr(model, "name", type(model).__name__)
    checkpoint = {"which": which, "path": str(ckpt.resolve()), "sha256": sha256_file(ckpt)}
    info = _describe(str(run_dir.resolve()), checkpoint, model, name, training_mode(meta))
    return OpenRun(run_dir, model.eval(), ckpt, meta, torch.device(device), info)


def _describe(where: str, checkpoint: dict, model: DVAE, name: str, mode: str | None, label: str | None = None) -> dict:
    """The ``info`` of an :class:`OpenRun`: what result files record about the model they come from."""
    config = model.config.to_dict() if hasattr(model, "config") else {}
    return {
        "run_dir": where,
        "checkpoint": checkpoint,
        "model": {
            "name": name,
            "label": label or model_label(name, config, mode),
            "parameters": int(model.num_parameters()),
            "config": config,
            "training": mode,
        },
    }


PRETRAINED_PREFIX = "pretrained:"


def _open_pretrained(name: str, which: str, device, error: type) -> OpenRun:
    """A shipped prior opened like a run (``which`` must be ``best``: a prior has only its final weights)."""
    from lightdvae.models.pretrained import PretrainedError, pretrained, pretrained_card, weights_dir

    if which != "best":
        raise error(f"a pretrained prior has only its best weights; drop --checkpoint {which}")
    try:
        card = pretrained_card(name)
        model = pretrained(name, device=device)
    except PretrainedError as exc:
        raise error(str(exc)) from None
    key = card["name"]
    mode = card.get("training_mode")
    meta = {
        "model": card["model"],
        "config": card["config"],
        "training": {"training": mode} if mode else {},
        "data": {"spec": card.get("data", "builtin")},
        "pretrained": key,
    }
    path = weights_dir() / f"{key}.pt"
    checkpoint = {"which": "best", "path": str(path), "sha256": card["sha256"]}
    info = _describe(f"{PRETRAINED_PREFIX}{key}", checkpoint, model, card["model"], mode, card.get("label"))
    return OpenRun(Path(f"pretrained-{key}"), model, path, meta, torch.device(device), info)


def save_model(run_dir: str | os.PathLike, model: DVAE, source: dict | None = None, checkpoint: str = "best") -> Path:
    """Write ``model`` as a run folder (``config.json`` and ``checkpoints/<checkpoint>.pt``), atomically: what
    ``lightdvae import-dvae`` writes, and what :func:`load_run` reads back."""
    run_dir = Path(run_dir)
    config = model.config.to_dict()
    # the registry name of an RVAE depends on its causal flag
    name = "rvae-causal" if model.name == "rvae" and config.get("causal") else model.name
    meta = {"model": name, "config": config, "source": dict(source) if source else None}
    payload = {
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "model_name": name,
        "config": config,
    }
    save_checkpoint(checkpoint_path(run_dir, checkpoint), payload)
    atomic_write_json(run_dir / CONFIG_FILE, meta)
    return run_dir


def write_config(run_dir: str | os.PathLike, meta: dict) -> Path:
    """Write a training run's ``config.json`` (model, config, training settings, data, versions)."""
    return atomic_write_json(Path(run_dir) / CONFIG_FILE, meta)


def log_csv(history: list[dict], columns: tuple[str, ...]) -> str:
    """The text of ``log.csv``: one row per epoch; None as an empty cell, booleans as 0/1, floats exactly."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in history:
        cells = []
        for key in columns:
            value = row.get(key)
            if value is None:
                cells.append("")
            elif isinstance(value, bool):
                cells.append(int(value))
            elif isinstance(value, float):
                cells.append(repr(value))
            else:
                cells.append(value)
        writer.writerow(cells)
    return buf.getvalue()


def write_log(run_dir: str | os.PathLike, history: list[dict], columns: tuple[str, ...]) -> Path:
    """Rewrite ``log.csv`` from the epoch rows ``history`` (atomically)."""
    return atomic_write_text(Path(run_dir) / LOG_FILE, log_csv(history, columns))


def _number(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def read_log(run_dir: str | os.PathLike) -> list[dict]:
    """The rows of ``log.csv`` (numbers as floats, other cells as text); ``[]`` when there is none."""
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(f)]


def write_status(run_dir: str | os.PathLike, state: str, **extra) -> Path:
    """Write ``status.json``: ``{"state": state, "updated": now, **extra}``."""
    return atomic_write_json(Path(run_dir) / STATUS_FILE, {"state": state, "updated": utc_now(), **extra})


def clear_run_files(run_dir: str | os.PathLike) -> None:
    """Delete the files of a training run (config, log, status, both checkpoints) and the results computed from
    its weights (``eval/``, ``generate/``), so that nothing of a previous run passes for the new one's."""
    run_dir = Path(run_dir)
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for which in CHECKPOINTS:
        checkpoint_path(run_dir, which).unlink(missing_ok=True)
    for sub in (EVAL_DIR, GENERATE_DIR):
        if (run_dir / sub).is_dir():
            shutil.rmtree(run_dir / sub)


def weights_sha256(model: torch.nn.Module) -> str:
    """Hex SHA-256 of a model's state dict (names and raw bytes, in name order): identifies weights that were
    never saved as a checkpoint file."""
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def export_pretrained(run_dir: str | os.PathLike, out_dir: str | os.PathLike, name: str, card: dict) -> Path:
    """Write the best weights of ``run_dir`` as the shipped prior ``name`` in ``out_dir``: ``<name>.pt`` (float16
    state dict, model name and config) and ``<name>.json`` (``card`` plus the label, parameter count, config and
    the SHA-256 of the ``.pt``), both atomically.  :func:`lightdvae.models.pretrained` reads them back."""
    payload = load_checkpoint(checkpoint_path(run_dir, "best"))
    state = {k: v.half() if v.is_floating_point() else v for k, v in payload["model"].items()}
    half = {"model": state, "model_name": payload["model_name"], "config": payload["config"]}
    out_dir = Path(out_dir)
    pt = save_checkpoint(out_dir / f"{name}.pt", half)
    meta = read_meta(run_dir)
    params = build(payload["model_name"], **payload["config"]).num_parameters()
    full = {
        "name": name,
        "model": payload["model_name"],
        "label": model_label(payload["model_name"], payload["config"], training_mode(meta)),
        "training_mode": training_mode(meta),
        "data": corpus_spec(meta) or "builtin",
        "parameters": int(params),
        "config": payload["config"],
        **card,
        "sha256": sha256_file(pt),
    }
    atomic_write_json(out_dir / f"{name}.json", full)
    return pt
