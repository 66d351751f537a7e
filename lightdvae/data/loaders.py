"""The DataLoaders of a corpus in one call: :func:`make_loaders` gives shuffled training segments, validation
segments (:class:`~lightdvae.data.datasets.SegmentDataset`) and whole test utterances
(:class:`~lightdvae.data.datasets.UtteranceDataset`, padded by :func:`~lightdvae.data.datasets.collate_utterances`).

Training itself batches segments its own way (:mod:`lightdvae.data.batches`: a shuffle seeded by (seed, epoch),
sharded over processes); these loaders keep the plain DataLoader behaviour their users rely on.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Dataset

from lightdvae.data.cache import SpectrogramCache
from lightdvae.data.corpora import Corpus
from lightdvae.data.datasets import SEGMENT_FRAMES, UTTERANCE_KEYS, SegmentDataset, UtteranceDataset, collate_utterances
from lightdvae.data.resolve import resolve_corpus

__all__ = ["Loaders", "make_loaders"]


@dataclass
class Loaders:
    """The DataLoaders of a corpus.  ``test`` is None when the corpus has no test split or it was not asked for."""

    corpus: Corpus
    train: DataLoader | None
    val: DataLoader | None
    test: DataLoader | None
    datasets: dict[str, Dataset] = field(default_factory=dict)

    def __iter__(self):  # train, val, test = make_loaders(...)
        return iter((self.train, self.val, self.test))


def make_loaders(
    corpus: Corpus | str | os.PathLike,
    *,
    segment_frames: int = SEGMENT_FRAMES,
    batch_size: int = 128,
    eval_batch_size: int | None = None,
    test_batch_size: int = 1,
    splits: Sequence[str] = ("train", "val", "test"),
    test_returns: Sequence[str] = UTTERANCE_KEYS,
    num_workers: int = 0,
    cache: SpectrogramCache | None = None,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    drop_last: bool = False,
    distributed: bool = False,
    pin_memory: bool = False,
    in_memory: bool | None = None,
    progress: bool | None = None,
) -> Loaders:
    """DataLoaders of a corpus: shuffled training segments, validation segments, whole test utterances.

    Args:
        corpus: a :class:`Corpus` or a spec for :func:`~lightdvae.data.resolve_corpus` (``"builtin"``, ``DIR``,
            ``"wsj0:DIR"``, ``"vb:DIR"``).
        segment_frames: L (default 50).
        batch_size: training batch size; ``eval_batch_size`` (default the same) for validation;
            ``test_batch_size`` utterances per test batch (padded by :func:`collate_utterances`).
        splits: which loaders to build (the others are None).  "test" is skipped silently when the corpus has
            no test split.
        test_returns: what test items carry (see :class:`UtteranceDataset`).
        num_workers, pin_memory, drop_last: passed to the DataLoaders (``drop_last`` only for training).
        cache / cache_dir: the spectrogram cache, or its folder.
        seed: seeds the training shuffle (and the DistributedSampler).
        distributed: use a ``DistributedSampler`` for train and val (the caller sets ``sampler.set_epoch``).
        in_memory, progress: see :class:`SegmentDataset`.
    Returns:
        a :class:`Loaders`; training batches are ``(batch, L, 513)`` float32 tensors.
    """
    corpus = resolve_corpus(corpus, progress=progress)
    if cache is None:
        cache = SpectrogramCache(cache_dir)
    eval_batch_size = eval_batch_size or batch_size
    unknown = set(splits) - {"train", "val", "test"}
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; use train, val, test")
    common = {"num_workers": num_workers, "pin_memory": pin_memory, "persistent_workers": num_workers > 0}
    loaders: dict[str, DataLoader | None] = {"train": None, "val": None, "test": None}
    datasets: dict[str, Dataset] = {}
    for split in ("train", "val"):
        if split not in splits:
            continue
        ds = SegmentDataset(
            corpus.split(split),
            segment_frames=segment_frames,
            cache=cache,
            in_memory=in_memory,
            progress=progress,
            name=split,
        )
        datasets[split] = ds
        size = batch_size if split == "train" else eval_batch_size
        loaders[split] = _segment_loader(ds, split == "train", size, seed, drop_last, distributed, common)
    if "test" in splits and corpus.has("test"):
        ds = UtteranceDataset(corpus.split("test"), returns=test_returns, cache=cache, progress=progress, name="test")
        datasets["test"] = ds
        loaders["test"] = DataLoader(
            ds, batch_size=test_batch_size, shuffle=False, collate_fn=collate_utterances, **common
        )
    return Loaders(corpus, loaders["train"], loaders["val"], loaders["test"], datasets)


def _segment_loader(
    ds: SegmentDataset, train: bool, batch_size: int, seed: int, drop_last: bool, distributed: bool, common: dict
) -> DataLoader:
    """The DataLoader of a segment split: shuffled by a seeded generator (training) or a DistributedSampler."""
    sampler = None
    if distributed:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(ds, shuffle=train, seed=seed, drop_last=drop_last and train)
    generator = torch.Generator().manual_seed(seed) if train and sampler is None else None
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        drop_last=drop_last and train,
        generator=generator,
        **common,
    )
