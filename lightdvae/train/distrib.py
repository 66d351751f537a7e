"""Multi-process training helpers: tiny functions that ask ``torch.distributed`` and are no-ops in a single
process (encodec's ``distrib.py``), the set-up of the process group ``torchrun`` asks for, and the device of
this process.

Under ``torchrun`` (``WORLD_SIZE > 1``) :func:`setup` joins the process group: gloo on CPU, NCCL on GPU (one GPU
per process, ``cuda:LOCAL_RANK``).  A group the caller initialised is used as it is (and left to the caller).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from lightdvae.errors import ConfigError
from lightdvae.runtime import resolve_device

_REDUCE_OPS = {"sum": "SUM", "max": "MAX"}


def initialized() -> bool:
    """Whether a process group is up (one ``torchrun`` or the caller started)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if initialized() else 1


def is_distributed() -> bool:
    """More than one process trains: losses are all-reduced and the model is wrapped in DDP."""
    return world_size() > 1


def is_main() -> bool:
    """Rank 0: the process that writes files and prints."""
    return rank() == 0


def backend() -> str | None:
    return dist.get_backend() if initialized() else None


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce(tensor: Tensor, op: str = "sum") -> Tensor:
    """Reduce ``tensor`` in place over the processes (``op``: ``sum`` or ``max``); returns it."""
    if is_distributed():
        dist.all_reduce(tensor, op=getattr(dist.ReduceOp, _REDUCE_OPS[op]))
    return tensor


def gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every process (``[obj]`` alone)."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def _env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def process_device(spec: str, local_rank: int, distributed: bool) -> torch.device:
    """The device of this process: :func:`lightdvae.runtime.resolve_device`, with a bare ``cuda`` pinned to
    ``cuda:LOCAL_RANK`` under DDP (the current device otherwise).  Raises :class:`ConfigError`."""
    device = resolve_device(spec, ConfigError)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank if distributed else torch.cuda.current_device())
        if device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


@dataclass(frozen=True)
class Setup:
    """What :func:`setup` found: this process's device, and whether it started the process group (then
    :func:`teardown` ends it)."""

    device: torch.device
    owns_group: bool = False


def setup(device_spec: str) -> Setup:
    """Join the process group of ``torchrun`` (or one that the caller initialised) and pick this process's device."""
    if initialized():
        local = int(os.environ.get("LOCAL_RANK", rank()))
        return Setup(process_device(device_spec, local, world_size() > 1))
    world = _env_world_size()
    if world <= 1:
        return Setup(process_device(device_spec, 0, False))
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    device = process_device(device_spec, int(os.environ.get("LOCAL_RANK", "0")), True)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", **kwargs)
    return Setup(device, owns_group=True)


def teardown(setup: Setup) -> None:
    """End the process group if :func:`setup` started it."""
    if setup.owns_group and initialized():
        dist.destroy_process_group()
