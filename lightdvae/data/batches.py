"""Segment batches for training: which segments each process takes at each step, and the power batches they give.

* :class:`SegmentBatches`: batches of segment indices for one process of a :class:`Shard` (``rank`` of
  ``world``): a ``DistributedSampler`` for training (a shuffle seeded by ``(seed, epoch)``, reshuffled per epoch
  with ``set_epoch``), a strided shard without padding for validation.
* :class:`PowerBatches`: ``(b, L, F)`` power batches on a device: slices of one in-memory array when the dataset
  is one (no per-item collation; kept on the GPU up to :data:`DEVICE_DATA_LIMIT`), a DataLoader over the dataset
  otherwise.

``len(SegmentBatches(n, batch_size))`` is the number of steps of an epoch of ``n`` segments in one process
(``ceil(n / batch_size)``, as a DataLoader without ``drop_last``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

#: a training set up to this size is kept on the GPU (one copy per process) instead of being copied per batch.
DEVICE_DATA_LIMIT = 2 * 2**30

__all__ = ["DEVICE_DATA_LIMIT", "Shard", "SegmentBatches", "PowerBatches", "as_power"]


@dataclass(frozen=True)
class Shard:
    """Process ``rank`` of ``world`` (``Shard()``: a single process)."""

    rank: int = 0
    world: int = 1


def as_power(batch) -> Tensor:
    """A batch of power segments from what a dataset yields: a tensor, a (tensor, ...) tuple or a dict."""
    if isinstance(batch, dict):
        batch = batch["power"]
    elif isinstance(batch, (list, tuple)):
        batch = batch[0]
    return batch


class SegmentBatches:
    """Batches of segment indices for one process: a ``DistributedSampler`` (seeded shuffle, reshuffled per epoch
    with ``set_epoch``) for training, a strided shard without padding for validation."""

    def __init__(self, n: int, batch_size: int, shard: Shard = Shard(), shuffle: bool = False, seed: int = 0):
        from torch.utils.data.distributed import DistributedSampler

        self.n, self.batch_size, self.shuffle = n, batch_size, shuffle
        if shuffle:
            self.sampler = DistributedSampler(
                range(n), num_replicas=shard.world, rank=shard.rank, shuffle=True, seed=seed, drop_last=False
            )
        else:
            self.sampler = list(range(shard.rank, n, shard.world))

    def set_epoch(self, epoch: int) -> None:
        if self.shuffle:
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        indices = list(self.sampler)
        for i in range(0, len(indices), self.batch_size):
            yield indices[i : i + self.batch_size]

    def __len__(self) -> int:
        count = len(self.sampler)
        return (count + self.batch_size - 1) // self.batch_size


class PowerBatches:
    """Iterates power batches ``(b, L, F)`` on ``device``: slices of an in-memory array when the dataset is one
    (no per-item collation; kept on the GPU when small), a DataLoader over the dataset otherwise.

    ``dataset``: a ``(n, L, F)`` tensor, a dataset with ``in_memory`` and ``tensor()`` (an in-memory
    :class:`~lightdvae.data.SegmentDataset`), or any dataset of power segments (see :func:`as_power`).
    ``seed`` seeds the DataLoader's worker seeds from a private generator.
    """

    def __init__(self, dataset, batches: SegmentBatches, device: torch.device, num_workers: int = 0, seed: int = 0):
        from torch.utils.data import DataLoader

        self.batches, self.device = batches, device
        self.tensor = self.loader = None
        if num_workers == 0 and isinstance(dataset, torch.Tensor):
            self.tensor = dataset
        elif num_workers == 0 and getattr(dataset, "in_memory", False) and callable(getattr(dataset, "tensor", None)):
            self.tensor = dataset.tensor()  # an in-memory SegmentDataset: all segments as one (n, L, F) array
        if self.tensor is not None:
            if device.type == "cuda" and self.tensor.numel() * self.tensor.element_size() <= DEVICE_DATA_LIMIT:
                self.tensor = self.tensor.to(device)
        else:
            self.loader = DataLoader(
                dataset,
                batch_sampler=batches,
                num_workers=num_workers,
                pin_memory=device.type == "cuda",
                persistent_workers=num_workers > 0,
                # worker seeds from a private generator: the global stream stays the same on resume
                generator=torch.Generator().manual_seed(seed),
            )

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Tensor]:
        non_blocking = self.device.type == "cuda"
        if self.tensor is not None:
            for idx in self.batches:
                index = torch.as_tensor(idx, dtype=torch.long, device=self.tensor.device)
                yield self.tensor.index_select(0, index).to(self.device, non_blocking=non_blocking)
        else:
            for batch in self.loader:
                yield as_power(batch).to(self.device, non_blocking=non_blocking)
