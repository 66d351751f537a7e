"""The data of a training run: the segment datasets of the corpus (rank 0 fills the cache first), their checks,
the batches of this process (:mod:`lightdvae.data.batches`), and :func:`steps_per_epoch` (what an epoch of a
corpus costs, counted without loading the segments)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from lightdvae.data.batches import PowerBatches, SegmentBatches, Shard, as_power
from lightdvae.errors import ConfigError
from lightdvae.train import distrib
from lightdvae.train.config import TrainConfig

PASSED_DATASETS = "<datasets passed to lightdvae.train.train>"  #: the ``data.spec`` of a run given datasets


@dataclass
class TrainData:
    """The batches of this process and what config.json records about the data (``info``)."""

    train: PowerBatches
    val: PowerBatches
    info: dict
    local_batch: int
    #: the validation utterances of the learning curve (``curve_every``); empty without a corpus
    curve_files: list = field(default_factory=list)


def load_datasets(cfg: TrainConfig) -> tuple[object, object, dict, list]:
    """Training and validation segment datasets of the corpus ``cfg.data``, what config.json records of them, and
    the validation files; rank 0 fills the cache first."""
    from lightdvae.data import SegmentDataset, SpectrogramCache, resolve_corpus

    main = distrib.is_main()
    progress = None if (main and not cfg.quiet) else False
    if not main:
        distrib.barrier()  # rank 0 resolves (maybe builds) the corpus and fills the cache; the others then read it
    try:
        corpus = resolve_corpus(cfg.data, progress=progress)
        cache = SpectrogramCache(cfg.cache_dir)
        kw = {"segment_frames": cfg.seq_len, "cache": cache, "progress": progress}
        train_ds = SegmentDataset(corpus.split("train"), name="train", **kw)
        val_ds = SegmentDataset(corpus.split("val"), name="val", **kw)
    finally:
        if main:
            distrib.barrier()
    info = {
        "spec": cfg.data,
        "corpus": corpus.name,
        "layout": corpus.layout,
        "root": str(corpus.root),
        "train_files": len(train_ds.files),
        "val_files": len(val_ds.files),
    }
    return train_ds, val_ds, info, list(val_ds.files)


def _dataset_len_shape(dataset) -> tuple[int, tuple[int, ...]]:
    n = len(dataset)
    if n == 0:
        raise ConfigError("a dataset is empty")
    first = as_power(dataset[0])
    return n, tuple(first.shape)


def build_data(cfg: TrainConfig, train_dataset, val_dataset, x_dim: int, device: torch.device) -> TrainData:
    """The batches of this process over the datasets given (both None: the corpus ``cfg.data``); checks that
    their items are ``(frames, x_dim)`` power segments."""
    val_files: list = []
    if train_dataset is None:
        train_dataset, val_dataset, info, val_files = load_datasets(cfg)
    else:
        info = {"spec": PASSED_DATASETS}
        if cfg.curve_every:
            raise ConfigError(
                "curve_every needs the corpus (config.data) to read whole validation utterances from, "
                "not datasets passed to train()"
            )
    n_train, shape = _dataset_len_shape(train_dataset)
    n_val, val_shape = _dataset_len_shape(val_dataset)
    for what, s in (("training", shape), ("validation", val_shape)):
        if len(s) != 2 or s[1] != x_dim:
            raise ConfigError(f"{what} items must be (frames, {x_dim}) power segments, got shape {s}")
    info.update(train_segments=n_train, val_segments=n_val, segment_frames=shape[0])
    shard = Shard(distrib.rank(), distrib.world_size())
    local_batch = cfg.batch_size // shard.world
    batches = SegmentBatches(n_train, local_batch, shard, True, cfg.seed)
    train = PowerBatches(train_dataset, batches, device, cfg.num_workers, cfg.seed)
    batches = SegmentBatches(n_val, local_batch, shard, False, cfg.seed)
    val = PowerBatches(val_dataset, batches, device, cfg.num_workers, cfg.seed)
    from lightdvae.train.curve import curve_files

    return TrainData(train, val, info, local_batch, curve_files(val_files, cfg.curve_files))


def steps_per_epoch(
    data: str, seq_len: int, batch_size: int, cache_dir: str | os.PathLike | None = None, progress: bool | None = None
) -> tuple[int, int]:
    """``(training batches, validation batches)`` of one epoch over the corpus ``data`` in one process: the
    lengths of ``make_loaders(data, segment_frames=seq_len, batch_size=batch_size)``'s ``train`` and ``val``
    (0 when the corpus has no validation split).  The segments are counted from the cache's entries (computing
    the missing ones), never loaded into memory."""
    from lightdvae.data import SegmentDataset, SpectrogramCache, resolve_corpus

    corpus = resolve_corpus(data, progress=progress)
    kw = {"segment_frames": seq_len, "cache": SpectrogramCache(cache_dir), "in_memory": False, "progress": progress}
    counts = []
    for split in ("train", "val"):
        if split == "val" and not corpus.has("val"):
            counts.append(0)
            continue
        n = len(SegmentDataset(corpus.split(split), name=split, **kw))
        counts.append(len(SegmentBatches(n, batch_size)))
    return counts[0], counts[1]
