"""An experiment folder's layout and its state file ``experiment.json``: settings, each model's schedule and
progress, the stages done and the wall time per stage over sessions (written atomically after every change).

A folder holding an experiment with other settings is refused (``overwrite``: this experiment's own files are
deleted and it starts afresh), as is a non-empty folder that holds no experiment."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from lightdvae._io import read_json, utc_now, write_json
from lightdvae.errors import ExperimentError
from lightdvae.experiments.config import ExperimentConfig
from lightdvae.resultdir import LOCK_FILE, clear, differences

__all__ = [
    "KIND",
    "FORMAT_VERSION",
    "STATE_FILE",
    "COST_FILE",
    "RUNS_DIR",
    "REPORT_DIR",
    "SHIPPED_DIR",
    "ExperimentState",
    "run_dir",
]

KIND = "lightdvae-experiment"
FORMAT_VERSION = 1
STATE_FILE = "experiment.json"
COST_FILE = "cost.json"
RUNS_DIR = "runs"
REPORT_DIR = "report"
SHIPPED_DIR = "shipped"  #: the shipped priors' results (:mod:`lightdvae.experiments.shipped`)


def run_dir(out: Path, key: str) -> Path:
    """The training run of the model ``key``: ``OUT/runs/<key>``."""
    return out / RUNS_DIR / key


def _previous(out: Path, cfg: ExperimentConfig, overwrite: bool) -> dict | None:
    """The state of the same experiment left in ``out`` (resume from it), or None (start afresh); refuses a
    foreign folder or, without ``overwrite``, an experiment with other settings."""
    path = out / STATE_FILE
    if path.is_file():
        data = read_json(path)
        if data is None or data.get("kind") != KIND:
            raise ExperimentError(f"{path} is not a lightdvae experiment file; use another --out")
        if _with_defaults(data.get("settings")) == cfg.fingerprint():
            return data
        if not overwrite:
            diff = differences(_with_defaults(data.get("settings")) or {}, cfg.fingerprint())
            raise ExperimentError(
                f"{out} holds an experiment with other settings (differs in: {', '.join(diff)}); "
                "run the same command to resume it, pass --overwrite to start over, or use another --out"
            )
    elif out.is_dir() and any(p.name != LOCK_FILE for p in out.iterdir()) and not overwrite:
        raise ExperimentError(
            f"{out} exists and is not an experiment folder; choose another --out (or --overwrite to use it)"
        )
    return None


def _with_defaults(settings) -> dict | None:
    """Stored settings with the fields added to :class:`ExperimentConfig` since they were written filled in
    with their defaults, so that an experiment of an older version resumes."""
    if not isinstance(settings, dict):
        return settings
    defaults = ExperimentConfig(out="").fingerprint()
    return {**{k: v for k, v in defaults.items() if k not in settings}, **settings}


class ExperimentState:
    """``experiment.json``: settings, per-model schedule and progress, wall time per stage over sessions.

    Opening it counts a session; a fresh start with ``overwrite`` deletes the experiment's own files
    (``experiment.json``, ``cost.json``, ``runs/``, ``report/``) and nothing else."""

    def __init__(self, out: Path, cfg: ExperimentConfig, overwrite: bool):
        self.path = out / STATE_FILE
        data = _previous(out, cfg, overwrite)
        if data is None and overwrite:
            clear(out, (STATE_FILE, COST_FILE), (RUNS_DIR, REPORT_DIR, SHIPPED_DIR))
        self.data = data or {
            "kind": KIND,
            "format": FORMAT_VERSION,
            "created": utc_now(),
            "settings": cfg.fingerprint(),
            "models": {},
            "stages": {},
            "done": [],
            "sessions": 0,
        }
        self.data["sessions"] = int(self.data.get("sessions", 0)) + 1
        self.data["updated"] = utc_now()
        self.save()

    def save(self) -> None:
        self.data["updated"] = utc_now()
        write_json(self.path, self.data)

    def model(self, key: str) -> dict:
        return self.data["models"].setdefault(key, {})

    @contextlib.contextmanager
    def stage(self, name: str):
        """Add the block's wall time to the stage ``name`` (also when it raises), then save."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            stages = self.data["stages"]
            stages[name] = round(float(stages.get(name, 0.0)) + time.perf_counter() - t0, 2)
            self.save()

    @property
    def wall_seconds(self) -> float:
        return float(sum(self.data["stages"].values()))
