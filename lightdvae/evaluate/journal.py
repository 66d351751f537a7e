"""``per_file.csv``, the journal of an evaluation: one row per file, appended (flushed and fsynced) as soon as its
metrics are known, so that a killed evaluation loses at most the files in flight, and read back on resumption.

Columns (:data:`CSV_COLUMNS`): index, name, speaker, seconds, frames, the metric columns, errors
(``"metric: reason | ..."``), model_s and metrics_s (compute seconds), path.  Floats are written exactly
(``repr``), a missing value as an empty cell.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

from lightdvae._io import atomic_write_bytes
from lightdvae.metrics import COLUMNS

CSV_COLUMNS = ("index", "name", "speaker", "seconds", "frames", *COLUMNS, "errors", "model_s", "metrics_s", "path")
MODEL_ERROR = "model"  #: the errors key of a file the model itself failed on (retried on resume)


def format_errors(errors: dict) -> str:
    """``{"pesq_nb": "no utterance"}`` -> ``"pesq_nb: no utterance"`` (several joined by ``" | "``)."""
    return " | ".join(f"{k}: {v}" for k, v in errors.items())


def parse_errors(text: str) -> dict:
    """The inverse of :func:`format_errors`."""
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


def csv_line(row: dict, columns: tuple[str, ...] = CSV_COLUMNS) -> str:
    """One row of ``per_file.csv`` (with its newline); ``columns``: the journal's columns (an evaluation's by
    default; an enhancement of a noisy set has its own)."""
    buf = io.StringIO()
    cells = [format_errors(row.get(c) or {}) if c == "errors" else _cell(row.get(c)) for c in columns]
    csv.writer(buf, lineterminator="\n").writerow(cells)
    return buf.getvalue()


def csv_header(columns: tuple[str, ...] = CSV_COLUMNS) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(columns)
    return buf.getvalue()


def write_per_file(path: str | os.PathLike, rows: list[dict], columns: tuple[str, ...] = CSV_COLUMNS) -> Path:
    """Write ``per_file.csv`` holding exactly ``rows``, atomically."""
    text = csv_header(columns) + "".join(csv_line(r, columns) for r in rows)
    return atomic_write_bytes(path, text.encode("utf-8"))


def _parse_row(raw: dict) -> dict | None:
    try:
        row: dict = {"index": int(raw["index"]), "name": raw["name"], "speaker": raw["speaker"], "path": raw["path"]}
        row["seconds"] = float(raw["seconds"])
        row["frames"] = int(raw["frames"])
        for c in (*COLUMNS, "model_s", "metrics_s"):
            row[c] = float(raw[c]) if raw[c] not in ("", None) else math.nan
        row["errors"] = parse_errors(raw["errors"] or "")
    except (KeyError, TypeError, ValueError):
        return None
    return row


def read_csv_rows(path, columns: tuple[str, ...] = CSV_COLUMNS) -> list[dict]:
    """The raw rows (cells as strings) of a journal whose header is exactly ``columns``; none when the file is
    missing or has other columns.  A truncated last line (an interrupted write) is ignored."""
    path = Path(path)
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # drop a half-written last row
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != tuple(columns):
        return []
    return list(reader)


def read_per_file(path) -> list[dict]:
    """The rows of a ``per_file.csv`` as dicts (metric columns as floats, NaN for failures; ``errors`` as a dict
    ``{metric: reason}``).  A truncated last line (an interrupted write) is ignored."""
    rows = []
    for raw in read_csv_rows(path):
        row = _parse_row(raw)
        if row is not None:
            rows.append(row)
    return rows


def kept_rows(previous: list[dict], names: list[str]) -> dict[int, dict]:
    """The rows of an earlier session that stand, by their index in this selection of files (``names``): rows of
    files no longer selected, and of files the model failed on (retried), are left out."""
    index_of = {n: i for i, n in enumerate(names)}
    done: dict[int, dict] = {}
    for row in previous:
        i = index_of.get(row["name"])
        if i is not None and MODEL_ERROR not in row["errors"]:
            row["index"] = i
            done[i] = row
    return done


def check_model_ran(rows: list[dict], error: type[Exception]) -> None:
    """Raise ``error`` (one line, the first failure's reason) when the model failed on every one of ``rows``: no
    file was computed, a broken model or device rather than a bad file."""
    if rows and all(MODEL_ERROR in r["errors"] for r in rows):
        raise error(f"the model failed on every file; first error: {rows[0]['errors'][MODEL_ERROR]}")


class Journal:
    """Appends rows to ``per_file.csv`` one at a time, flushed and fsynced (``columns``: as for :func:`csv_line`)."""

    def __init__(self, path: Path, rows: list[dict], columns: tuple[str, ...] = CSV_COLUMNS):
        self.path = path
        self.columns = tuple(columns)
        # start from a clean file holding exactly the rows kept (drops a torn last line)
        write_per_file(path, rows, self.columns)
        self.fh = open(path, "a", encoding="utf-8", newline="")

    def append(self, row: dict) -> None:
        self.fh.write(csv_line(row, self.columns))
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        if not self.fh.closed:
            self.fh.close()
