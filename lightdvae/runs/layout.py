"""The run folder's layout: its file names, the checkpoint, config, log and status readers and writers, and
loading a run's model (see :mod:`lightdvae.runs` for the layout)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import torch

from lightdvae._io import atomic_write, atomic_write_json, atomic_write_text, utc_now
from lightdvae.errors import RunError
from lightdvae.models import DVAE, build

CONFIG_FILE = "config.json"
LOG_FILE = "log.csv"
STATUS_FILE = "status.json"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINTS = ("best", "last")
EVAL_DIR = "eval"
GENERATE_DIR = "generate"
#: The files a training run owns (``--force`` deletes them, and its checkpoints).
RUN_FILES = (CONFIG_FILE, LOG_FILE, STATUS_FILE)


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
