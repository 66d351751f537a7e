"""The output folder of a noisy set's enhancement (:func:`lightdvae.enhance.enhance_set`): its settings, its file
names, where it goes by default, the ``per_file.csv`` columns and rows, and the spectrogram figures.

``RUN_DIR/enhance/<set>-<settings tag>/`` (``./pretrained-NAME/enhance/...`` for a shipped prior) holds
``per_file.csv``, ``summary.json``, ``state.json``, ``audio/<name>.wav`` and ``figures/<stem>.png``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from lightdvae._io import slug
from lightdvae.enhance.settings import EnhanceSettings
from lightdvae.errors import EnhanceError
from lightdvae.evaluate.journal import MODEL_ERROR, parse_errors, read_csv_rows
from lightdvae.evaluate.outputs import AUDIO_DIR, FIGURE_DIR, PER_FILE, STATE, SUMMARY, stem
from lightdvae.metrics import MetricUnavailable, check_available

__all__ = [
    "ENHANCE_DIR",
    "ENHANCE_METRICS",
    "SET_COLUMNS",
    "NO_REFERENCE",
    "INPUT_ERROR",
    "SetSettings",
    "default_enhance_dir",
    "settings_tag",
    "read_set_rows",
    "write_figure",
]

ENHANCE_DIR = "enhance"
#: What an enhancement is scored with, in table order (PESQ: the P.862.2 wide-band and P.862.1 narrow-band MOS-LQO).
ENHANCE_METRICS = ("si_sdr", "pesq_wb", "pesq_nb", "estoi")
#: The errors key of a file without a clean reference (enhanced and written, not scored).
NO_REFERENCE = "reference"
#: The errors key of a file that could not be read or paired (not enhanced).
INPUT_ERROR = "input"
OUTPUT_FILES = (PER_FILE, "summary.json")
OUTPUT_DIRS = (AUDIO_DIR, FIGURE_DIR)
_METRIC_COLUMNS = tuple(f"{side}_{m}" for m in ENHANCE_METRICS for side in ("in", "out", "delta"))
#: ``per_file.csv``: the file, its metrics before and after and their improvements, the EM's iterations, its
#: batch, the utterance's share of the batch's EM seconds, errors (``"key: reason | ..."``), the noisy path.
SET_COLUMNS = (
    "index",
    "name",
    "snr_db",
    "noise",
    "speaker",
    "audio_s",
    *_METRIC_COLUMNS,
    "iterations",
    "batch",
    "seconds",
    "errors",
    "path",
)
_FLOAT_COLUMNS = ("snr_db", "audio_s", *_METRIC_COLUMNS, "seconds")


#: EM options added after results folders were written, with the value every earlier run had.
LATER_OPTIONS = {"e_steps": 1, "latent_e_step": False, "speech_past": "own"}


@dataclass(frozen=True)
class SetSettings:
    """The options of one set's enhancement besides the EM's (see :func:`lightdvae.enhance.enhance_set`)."""

    em: EnhanceSettings
    metrics: tuple[str, ...] = ENHANCE_METRICS
    max_files: int | None = None
    batch_size: int = 16
    workers: int = 0
    overwrite: bool = False
    progress: bool | None = None
    figures: int = 2
    save_audio: bool = True
    quiet: bool = True

    @classmethod
    def checked(cls, em: EnhanceSettings, *, metrics, max_files, batch_size, workers, figures, **other) -> SetSettings:
        """Settings from user input; :class:`EnhanceError` for a bad value or a metric package missing."""
        metrics = tuple(metrics)
        bad = [m for m in metrics if m not in ENHANCE_METRICS]
        if bad or not metrics:
            raise EnhanceError(f"metrics must be a non-empty subset of {', '.join(ENHANCE_METRICS)}, got {metrics}")
        try:
            check_available(metrics)
        except MetricUnavailable as exc:
            raise EnhanceError(str(exc)) from None
        for name, value, low in (("max_files", max_files, 1), ("batch_size", batch_size, 1), ("workers", workers, 0)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise EnhanceError(f"{name} must be an integer >= {low}, got {value!r}")
        if batch_size is None:
            raise EnhanceError("batch_size must be an integer >= 1, got None")
        if workers is None:
            from lightdvae.evaluate.workers import default_workers

            workers = default_workers()
        figures = max(0, int(figures))
        return cls(em, metrics, max_files, batch_size, workers, figures=figures, **other)

    @property
    def recorded(self) -> dict:
        """The settings that change the numbers, every one (``summary.json``'s ``"settings"``)."""
        return {**self.em.to_dict(), "metrics": list(self.metrics)}

    @property
    def fingerprint(self) -> dict:
        """:attr:`recorded` as the folder's fingerprint (with the checkpoint and the set): an option added after
        results folders existed is left out at the value every run before it had (:data:`LATER_OPTIONS`), so
        those folders still resume."""
        return {k: v for k, v in self.recorded.items() if k not in LATER_OPTIONS or v != LATER_OPTIONS[k]}


def settings_tag(em: EnhanceSettings, which: str = "best") -> str:
    """``it100-k8-seed0`` plus the options that differ from the defaults (``-lr0.01``, ``-beta0``, ``-e10``,
    ``-latent``, ``-pastestimate``, ``-r4``, ``-max30s``, ``-last``)."""
    default = EnhanceSettings()
    tag = f"it{em.iterations}-k{em.rank}-seed{em.seed}"
    if em.lr != default.lr:
        tag += f"-lr{em.lr:g}"
    if em.beta != default.beta:
        tag += f"-beta{em.beta:g}"
    if em.e_steps != default.e_steps:
        tag += f"-e{em.e_steps}"
    if em.latent_e_step:
        tag += "-latent"
    if em.speech_past != default.speech_past:
        tag += f"-past{em.speech_past}"
    if em.samples != default.samples:
        tag += f"-r{em.samples}"
    if em.max_seconds is not None:
        tag += f"-max{em.max_seconds:g}s"
    if which != "best":
        tag += f"-{Path(str(which)).stem}"
    return tag


def default_enhance_dir(run_dir, set_name: str, em: EnhanceSettings, which: str = "best") -> Path:
    """``RUN_DIR/enhance/<set>-<settings tag>``."""
    return Path(run_dir) / ENHANCE_DIR / f"{slug(set_name, default='set')}-{settings_tag(em, which)}"


def _float(text: str) -> float:
    return float(text) if text not in ("", None) else math.nan


def read_set_rows(path) -> list[dict]:
    """The rows of an enhancement's ``per_file.csv`` (numbers as floats, NaN where missing; ``errors`` a dict).
    Rows the model failed on are left out (retried on resume), as are unreadable ones."""
    rows = []
    for raw in read_csv_rows(path, SET_COLUMNS):
        try:
            row = {**raw, "index": int(raw["index"]), "iterations": int(raw["iterations"] or 0)}
            row["batch"] = int(raw["batch"] or 0)
            row.update({c: _float(raw[c]) for c in _FLOAT_COLUMNS})
            row["errors"] = parse_errors(raw["errors"] or "")
            row["snr_db"] = None if math.isnan(row["snr_db"]) else row["snr_db"]
            row["noise"] = raw["noise"] or None
            row["speaker"] = raw["speaker"] or None
        except (KeyError, TypeError, ValueError):
            continue
        if MODEL_ERROR not in row["errors"]:
            rows.append(row)
    return rows


def figure_path(out: Path, name: str) -> Path:
    return Path(out) / FIGURE_DIR / f"{stem(name)}.png"


def write_figure(out: Path, name: str, noisy, enhanced, clean, label: str) -> Path:
    """``figures/<stem>.png``: the noisy, enhanced and clean (when known) spectrograms on one colour scale."""
    from lightdvae.audio import stft
    from lightdvae.figures import save_figure, spectrogram_grid

    panels = [("noisy", noisy), (f"enhanced ({label})", enhanced)] + ([("clean", clean)] if clean is not None else [])
    powers = [(t, stft(w).abs().square().numpy()) for t, w in panels]
    fig = spectrogram_grid(powers, ncols=len(powers), suptitle=name)
    return save_figure(fig, figure_path(out, name))


def has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


STATE_FILE = STATE
SUMMARY_FILE = SUMMARY
