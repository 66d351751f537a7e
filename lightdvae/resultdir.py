"""Fingerprinted result folders: the one rule by which ``eval``, ``generate``, ``swap-w``, the experiments and the
corpus build decide whether a folder's contents are theirs to resume, to refuse, or to replace.

A command writes a state file (``state.json``, ``experiment.json``, ...) holding the *fingerprint* of what it
computes: every setting that changes the numbers (the checkpoint's digest, the data, the options).  Running it
again with the same fingerprint resumes; with another one it is refused with one line naming what differs,
unless ``overwrite`` (then only this command's own files are deleted); a folder holding this command's files but
no readable state counts as foreign.

Typical use::

    previous = claim(out, fingerprint, state_file="state.json", files=("per_file.csv", "summary.json"),
                     dirs=("figures",), overwrite=False, what="results of another evaluation", error=EvalError)
    if previous is None: ...   # a fresh start
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from lightdvae._io import read_json, utc_now, write_json
from lightdvae.errors import FolderError

__all__ = [
    "claim",
    "open_session",
    "close_session",
    "resumable_loop",
    "clear",
    "differences",
    "describe_differences",
    "folder_lock",
    "lock_holder",
    "LOCK_FILE",
]

#: The lock file of a folder being written (kept after release: removing it would race with a new holder).
LOCK_FILE = ".lightdvae.lock"

#: How a fingerprint key is named in messages when its own name says little.
KEY_NAMES = {"checkpoint_sha256": "checkpoint weights"}


def differences(old: Mapping, new: Mapping) -> list[str]:
    """The keys whose values differ between two fingerprints (sorted)."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _short(value) -> str | None:
    """A fingerprint value as a message shows it: numbers, flags and short words (None: too long to help)."""
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value) if isinstance(value, float) else str(value)
    if isinstance(value, str) and len(value) <= 24:
        return value
    return None


def describe_differences(old: Mapping, new: Mapping) -> str:
    """``"checkpoint weights, iterations: 100 there, 300 asked"``: the differing keys in words, with both values
    where they are short (numbers, flags, short words; a key missing on one side is ``None`` there)."""
    parts = []
    for key in differences(old, new):
        there, asked = _short(old.get(key)), _short(new.get(key))
        name = KEY_NAMES.get(key, key)
        parts.append(f"{name}: {there} there, {asked} asked" if there is not None and asked is not None else name)
    return "; ".join(parts)


def clear(out: str | Path, files: Iterable[str] = (), dirs: Iterable[str] = ()) -> None:
    """Delete a command's own ``files`` and ``dirs`` from ``out`` (nothing else)."""
    out = Path(out)
    for name in files:
        (out / name).unlink(missing_ok=True)
    for name in dirs:
        if (out / name).is_dir():
            shutil.rmtree(out / name)


def claim(
    out: str | Path,
    fingerprint: Mapping,
    *,
    state_file: str,
    files: Iterable[str] = (),
    dirs: Iterable[str] = (),
    overwrite: bool = False,
    what: str = "other results",
    them: str = "them",
    error: type[Exception] = FolderError,
) -> dict | None:
    """Take ``out`` for the result ``fingerprint``: the state this command left there before (a dict whose
    ``"fingerprint"`` equals ``fingerprint``: resume from it), or None (start afresh).

    ``files`` / ``dirs``: the command's own outputs besides ``state_file`` (their presence without a readable
    state marks a foreign result; ``overwrite`` deletes them and the state).  Raises ``error`` when ``out`` holds
    ``what`` with another fingerprint and ``overwrite`` is false.
    """
    out = Path(out)
    files, dirs = tuple(files), tuple(dirs)
    state_path = out / state_file
    state = read_json(state_path)
    old = None
    if state is not None:
        old = state.get("fingerprint")
    elif state_path.exists():
        old = {"unreadable": True}
    elif any((out / f).is_file() for f in files) or any((out / d).is_dir() for d in dirs):
        old = {"unknown": True}
    if overwrite:
        clear(out, (state_file, *files), dirs)
        return None
    if old is not None and old != dict(fingerprint):
        old = old if isinstance(old, Mapping) else {"unreadable": True}
        if old.get("unreadable") or old.get("unknown"):
            why = f"{state_file} is unreadable" if old.get("unreadable") else f"no {state_file} says what they are"
        else:
            why = f"differs in: {describe_differences(old, fingerprint)}"
        raise error(f"{out} holds {what} ({why}); pass --overwrite to replace {them}, or --out DIR to keep both")
    return state if old is not None else None


def open_session(out: str | Path, fingerprint: Mapping, *, state_file: str, **claim_options) -> dict:
    """:func:`claim` ``out`` for the result ``fingerprint`` (``claim_options``: its keyword arguments) and write
    the state a resumable command keeps there: ``fingerprint``, ``wall_s`` (seconds of earlier sessions),
    ``sessions`` (how many), ``updated``.  Returns it; :func:`close_session` adds this session."""
    out = Path(out)
    previous = claim(out, fingerprint, state_file=state_file, **claim_options) or {}
    state = {
        "fingerprint": fingerprint,
        "wall_s": float(previous.get("wall_s") or 0.0),
        "sessions": int(previous.get("sessions") or 0),
        "updated": utc_now(),
    }
    write_json(out / state_file, state)
    return state


def close_session(out: str | Path, state_file: str, state: dict, session_s: float, finished: bool, log) -> dict:
    """Count this session (``session_s`` seconds, ``finished`` or not) into the state of :func:`open_session`;
    a failure to write it goes to ``log`` as a warning, never hiding the error that may be on its way out.
    Returns the seconds a summary records: ``wall`` (all sessions), ``wall_last_session`` and ``sessions``."""
    path = Path(out) / state_file
    new = {**state, "wall_s": state["wall_s"] + session_s, "sessions": state["sessions"] + 1}
    new.update(updated=utc_now(), finished=finished)
    try:
        write_json(path, new)
    except OSError as exc:
        log.warning("cannot update %s: %s", path, exc)
    return {"wall": new["wall_s"], "wall_last_session": session_s, "sessions": new["sessions"]}


@contextlib.contextmanager
def resumable_loop(
    journal: str | Path,
    done: Sized,
    total: int,
    *,
    verb: str,
    salvage: Callable[[], object] | None = None,
    error: type[Exception] = FolderError,
) -> Iterator[None]:
    """Around the per-file loop of a resumable command whose finished files are journaled (appended and synced,
    one row each) in ``journal``: ``done`` holds the files saved so far (a dict the loop fills), ``total`` the
    files of the whole selection, ``verb`` what the command does to a file (``"evaluate"``).

    Ctrl-C (``KeyboardInterrupt``): ``salvage()`` first (the results that worker processes had finished are
    journaled), then one line on stderr, ``interrupted: N of M files are saved in JOURNAL; run the same command
    again to VERB the rest``, and the interrupt goes on.  A worker process that died (``BrokenProcessPool``):
    ``error`` with one line saying what is saved and how to resume.
    """
    try:
        yield
    except KeyboardInterrupt:
        if salvage is not None:
            salvage()
        print(
            f"\ninterrupted: {len(done)} of {total} files are saved in {journal}; "
            f"run the same command again to {verb} the rest",
            file=sys.stderr,
            flush=True,
        )
        raise
    except BrokenProcessPool:
        raise error(
            f"a metric worker process died; the {len(done)} files done are saved in {journal}: run the same "
            "command again to resume (or --workers 0 to compute the metrics in one process)"
        ) from None


def _describe_holder(info: dict | None) -> str:
    if not info:
        return "another lightdvae process"
    command = info.get("command") or "lightdvae"
    where = f"pid {info.get('pid', '?')}" + (f" on {info['host']}" if info.get("host") != socket.gethostname() else "")
    return f"`{command}` ({where}, since {info.get('since', '?')})"


def lock_holder(out: str | Path) -> dict | None:
    """Who holds ``out``'s lock (``{"pid", "command", "host", "since"}``), or None when no live process does.
    A lock left by a killed process is free: the operating system releases it with the process."""
    path = Path(out) / LOCK_FILE
    if not path.is_file():
        return None
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no locks
        return None
    try:
        with open(path, "a+") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                try:
                    info = json.loads(fh.read() or "{}")
                except ValueError:
                    info = {}
                return info if isinstance(info, dict) else {}
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    except OSError:
        return None
    return None


def _command_line(command: str | None) -> str:
    """What the lock file says is writing: the command line when this process is the CLI, else ``command``."""
    prog = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    if prog.name == "lightdvae" or (prog.name == "__main__.py" and prog.parent.name == "lightdvae"):
        return " ".join(["lightdvae", *sys.argv[1:]])
    return command or "lightdvae"


def _try_lock(fh, fcntl, attempts: int = 20) -> bool:
    """An exclusive lock, retried for about a second (a :func:`lock_holder` probe holds it for microseconds)."""
    import time

    for i in range(attempts):
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if i + 1 < attempts:
                time.sleep(0.05)
    return False


def _remove_leftovers(out: Path) -> None:
    """Delete the temporary files of atomic writes that a killed writer left (``.NAME.*.tmp``, here and one level
    down): with the lock held no other process is writing them."""
    for path in (*out.glob(".*.tmp"), *out.glob("*/.*.tmp")):
        with contextlib.suppress(OSError):
            path.unlink()


@contextlib.contextmanager
def folder_lock(out: str | Path, command: str | None = None, error: type[Exception] = FolderError) -> Iterator[Path]:
    """Hold ``out``'s lock while this process writes into it: a second writer (another command, or the same one
    started twice) is refused at once with ``error`` naming the first; a lock left by a killed process is taken
    over (``flock`` locks die with their process).  Creates ``out``; an unwritable ``out`` raises ``error`` with
    one line.  Where ``fcntl`` is missing (Windows) nothing is locked."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fh = open(out / LOCK_FILE, "a+")
    except OSError as exc:
        raise error(f"cannot write to {out}: {exc.strerror or exc}; choose a folder you can write to") from None
    try:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            yield out
            return
        if not _try_lock(fh, fcntl):
            fh.seek(0)
            try:
                info = json.loads(fh.read() or "{}")
            except ValueError:
                info = None
            raise error(
                f"{out} is being written by {_describe_holder(info if isinstance(info, dict) else None)}; wait for it "
                "to finish, or use another folder"
            ) from None
        info = {"pid": os.getpid(), "command": _command_line(command), "host": socket.gethostname(), "since": utc_now()}
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps(info))
        fh.flush()
        _remove_leftovers(out)
        try:
            yield out
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    finally:
        fh.close()
