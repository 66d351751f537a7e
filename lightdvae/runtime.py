"""Where the package runs: the device, torch's thread count, device synchronisation, the version stamp every result
file carries, the ops backend, progress bars, and the CPU's floating-point and memory settings for training
(denormals flushed, freed memory kept).  One home for each, so that training, evaluation, generation and
experiments resolve ``--device cuda:1`` the same way, restore the thread count they change, and show a bar on the
same terminals.

Leaf module: it imports torch, NumPy and :mod:`lightdvae.errors` / :mod:`lightdvae._ext` only.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from lightdvae.errors import UserError

__all__ = [
    "STEP_LOOP_THREADS",
    "parse_device",
    "resolve_device",
    "thread_scope",
    "sync",
    "versions",
    "backend_scope",
    "progress_bar",
    "show_progress",
    "run_isolated",
    "available_memory",
    "flush_denormals",
    "keep_freed_memory",
    "malloc_choice",
]

DEVICE_HELP = "auto, cpu, cuda or cuda:N"
#: torch threads of step-by-step loops on the CPU (generation, GEN decoding) unless told otherwise: their ops are
#: small, a second thread gains nothing, and one contended core stalls every step (README, "Threads").
STEP_LOOP_THREADS = 1


def parse_device(spec: str | torch.device | None, error: type[Exception] = UserError) -> torch.device | None:
    """The device ``spec`` names, or None for ``auto`` (and None); raises ``error`` for a malformed spec or a
    device type other than cpu / cuda.  Nothing is checked against the hardware (see :func:`resolve_device`)."""
    if spec is None or str(spec) == "auto":
        return None
    if isinstance(spec, torch.device):
        device = spec
    else:
        try:
            device = torch.device(str(spec))
        except (RuntimeError, TypeError):
            raise error(f"device must be {DEVICE_HELP}, got {spec!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise error(f"device must be {DEVICE_HELP}, got {spec!r}")
    return device


def resolve_device(spec: str | torch.device | None = "auto", error: type[Exception] = UserError) -> torch.device:
    """The device to run on: ``auto`` (or None) is the GPU when torch sees one, else the CPU.  Raises ``error``
    for a malformed spec or a GPU that is not there."""
    device = parse_device(spec, error)
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise error(f"device {str(spec)!r} asks for a GPU but torch sees no CUDA device; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise error(f"device {str(spec)!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


@contextlib.contextmanager
def thread_scope(threads: int | None) -> Iterator[int]:
    """``torch.set_num_threads(threads)`` inside the block, the previous count restored after (also on error).
    ``threads=None`` leaves torch's setting alone.  Yields the count in force."""
    before = torch.get_num_threads()
    if threads is not None and int(threads) != before:
        torch.set_num_threads(int(threads))
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@contextlib.contextmanager
def flush_denormals() -> Iterator[bool]:
    """Denormal floats flushed to zero on the CPU inside the block (``torch.set_flush_denormal``; the calling
    thread, which runs the forward and the CPU backward), the default (kept) restored after.  Yields whether
    the CPU supports it.  Training the RVAE on the CPU spends ~80 % of its step in oneDNN's LSTM backward
    working on denormal gradients without it (issue #17: 3.4 s -> 0.7 s per step, one thread)."""
    supported = torch.set_flush_denormal(True)
    try:
        yield supported
    finally:
        torch.set_flush_denormal(False)


# glibc's mallopt parameters (malloc.h) and the values keep_freed_memory sets
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MALLOC_SETTINGS = ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TOP_PAD, 256 << 20), (_M_TRIM_THRESHOLD, 1 << 30))
_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_TRIM_THRESHOLD_")
_malloc_kept: bool | None = None


def malloc_choice() -> str:
    """``LIGHTDVAE_MALLOC``: ``keep`` (unset) or ``system`` (see :func:`keep_freed_memory`); raises UserError for
    anything else."""
    choice = os.environ.get("LIGHTDVAE_MALLOC", "keep").strip().lower() or "keep"
    if choice not in ("keep", "system"):
        raise UserError(
            f"LIGHTDVAE_MALLOC={choice!r} is not one of keep, system; unset it to keep freed memory for the next "
            "training step (the default), or set it to system to leave malloc as it is"
        )
    return choice


def keep_freed_memory() -> bool:
    """Keep the memory that tensors free inside the process for the next ones (glibc on Linux; once per process).

    torch's CPU tensors come from ``malloc``.  glibc serves a block above its (adaptive) mmap threshold with a
    fresh ``mmap`` and hands the top of its heap back to the system when enough of it is free, so every training
    step pays the kernel to map and zero the pages of its activations again: 4,000-40,000 minor page faults a step
    for the models at batch 128 x 50, 10-30 % of the step on one thread (issue #17's floor table: the RVAE step
    424 -> 294 ms, SRNN 393 -> 295 ms).  This sets the mmap threshold to glibc's maximum (32 MiB; only larger
    blocks are mapped), pads the heap by 256 MiB when it grows and trims it only when 1 GiB of its top is free:
    the process keeps up to that much of its peak after a step instead of giving it back.

    Process-wide and not undone (glibc has no way to read the settings back).  Does nothing when the C library is
    not glibc, when the user set any of glibc's own ``MALLOC_*_`` variables for these settings, or when
    ``LIGHTDVAE_MALLOC=system``.  Returns whether the settings are in force."""
    global _malloc_kept
    if _malloc_kept is None:
        wanted = malloc_choice() == "keep"
        _malloc_kept = False
        user_set = any(name in os.environ for name in _MALLOC_ENV)
        if wanted and not user_set and sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
            import ctypes

            try:
                mallopt = ctypes.CDLL(None).mallopt
            except (OSError, AttributeError):
                return False
            mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
            _malloc_kept = all(mallopt(param, value) == 1 for param, value in _MALLOC_SETTINGS)
    return _malloc_kept


def sync(device: torch.device | str) -> None:
    """Wait for the device's queued work (a no-op on the CPU): call it on both sides of a timed region."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _package_version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


def versions(
    device: torch.device | None = None, *, packages: Iterable[str] = (), cuda: bool = False, threads: bool = False
) -> dict:
    """The version stamp of a result file: lightdvae, Python, torch, NumPy, the native extension and backend;
    ``cuda``: torch's CUDA version; ``device``: the device and GPU name; ``threads``: torch's thread count;
    ``packages``: the installed version of each (None when absent)."""
    import lightdvae
    from lightdvae import _ext

    out: dict = {
        "lightdvae": lightdvae.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "native_extension": bool(_ext.HAS_NATIVE),
        "backend": _ext.backend(),
    }
    if cuda:
        out["torch_cuda"] = torch.version.cuda
    if device is not None:
        device = torch.device(device)
        out["device"] = str(device)
        out["gpu"] = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    if threads:
        out["threads"] = torch.get_num_threads()
    for name in packages:
        out[name] = _package_version(name)
    return out


@contextlib.contextmanager
def backend_scope(name: str) -> Iterator[None]:
    """``LIGHTDVAE_BACKEND=name`` (``auto``, ``native``, ``ref``) inside the block, the previous value restored."""
    old = os.environ.get("LIGHTDVAE_BACKEND")
    os.environ["LIGHTDVAE_BACKEND"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LIGHTDVAE_BACKEND", None)
        else:
            os.environ["LIGHTDVAE_BACKEND"] = old


def show_progress(progress: bool | None, work: int | None = None, min_work: int = 0) -> bool:
    """The one rule for bars: ``progress`` True / False forces it; None shows a bar only on a terminal (stderr)
    and when there are at least ``min_work`` items to do."""
    if progress is not None:
        return bool(progress)
    if work is not None and work < min_work:
        return False
    return sys.stderr.isatty()


def progress_bar(
    iterable: Iterable | None = None,
    *,
    total: float | None = None,
    initial: float = 0,
    desc: str | None = None,
    unit: str = "it",
    progress: bool | None = None,
    min_work: int = 0,
    leave: bool = False,
):
    """A tqdm bar on stderr, shown by :func:`show_progress`'s rule (``min_work`` counts ``total``)."""
    from tqdm.auto import tqdm

    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    work = None if total is None else int(total - initial)
    shown = show_progress(progress, work, min_work)
    return tqdm(
        iterable, total=total, initial=initial, desc=desc, unit=unit, disable=not shown, leave=leave, dynamic_ncols=True
    )


def run_isolated(func, *args) -> tuple[bool, object]:
    """``func(*args)`` in a forked child process, so that a crash of C code cannot kill this one: ``(False,
    result)``, or ``(True, signal name)`` when the child died.  The result travels back pickled.  Where ``fork``
    is unavailable (Windows) it runs here."""
    import pickle
    import signal

    if not hasattr(os, "fork"):  # pragma: no cover - Windows
        return False, func(*args)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: compute, send, leave without running the parent's cleanup
        try:
            import faulthandler

            faulthandler.disable()  # a crash here is reported by the parent: no stack dump
            os.close(read_fd)
            data = pickle.dumps(func(*args))
            with os.fdopen(write_fd, "wb") as fh:
                fh.write(data)
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as fh:
        data = fh.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return True, signal.Signals(sig).name if sig in {s.value for s in signal.Signals} else f"signal {sig}"
    if not data:
        return True, f"exit status {os.WEXITSTATUS(status)}, no result"
    return False, pickle.loads(data)


def available_memory(device: torch.device | str = "cpu") -> int | None:
    """Bytes that a new allocation on ``device`` can use now: the GPU's free memory, or the host's
    ``MemAvailable`` (Linux); None when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _cpu_times() -> tuple[int, int] | None:
    """``(idle, total)`` jiffies of all CPUs since boot (Linux ``/proc/stat``), or None elsewhere."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    if len(fields) < 4:
        return None
    return fields[3] + (fields[4] if len(fields) > 4 else 0), sum(fields[:8])


def idle_cores(window: float = 0.5) -> int:
    """How many of :func:`usable_cpus` other processes leave idle now: measured over ``window`` seconds while this
    process waits (``/proc/stat``), at least 1; all of them where it cannot be measured.

    For choosing the threads of a GEMM-heavy job on a shared machine: torch's default of one thread per core
    collapses when another process holds a core (a LigHT-DVAE training step went from 0.9 s to 7-10 s on 2 cores
    with one other busy process), where one thread per idle core only loses the busy core's share."""
    import time

    cpus = usable_cpus()
    before = _cpu_times()
    if before is None:
        return cpus
    time.sleep(window)
    after = _cpu_times()
    if after is None or after[1] <= before[1]:
        return cpus
    idle_share = (after[0] - before[0]) / (after[1] - before[1])
    machine = os.cpu_count() or cpus
    return max(1, min(cpus, int(round(idle_share * machine))))
