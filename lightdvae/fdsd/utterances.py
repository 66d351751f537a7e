"""The transcribed utterances the DS2-style network trains and is scored on: a built-in corpus's manifest read
into waveforms and phoneme targets, their log-mel features, length-sorted batches and SpecAugment-style masking
(used by :mod:`lightdvae.fdsd.train`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lightdvae.errors import DataError
from lightdvae.fdsd.network import DeepSpeech2
from lightdvae.fdsd.phonemes import phoneme_inventory, phoneme_sequence

__all__ = [
    "Utterance",
    "load_corpus_utterances",
    "load_split",
    "compute_feats",
    "pad_feats",
    "targets",
    "length_batches",
    "spec_augment",
]


@dataclass
class Utterance:
    """One transcribed utterance, its normalised log-mel features filled in by :func:`compute_feats`."""

    path: str
    wave: np.ndarray  #: (samples,) float32, 16 kHz, trimmed and peak-normalised
    targets: list[int]  #: phoneme class indices (1..C-1)
    feats: torch.Tensor | None = None  #: (n_mels, T) normalised log-mel


def load_corpus_utterances(
    spec: str, *, minutes: float | None = None, seed: int = 0
) -> tuple[object, dict[str, list[dict]], list[str]]:
    """Resolve a built-in corpus spec -> ``(corpus, manifest rows per split, phoneme inventory)``.

    Raises :class:`lightdvae.errors.DataError` when the corpus has no phoneme manifest (only built-in corpora
    carry transcripts).
    """
    from lightdvae.data import read_manifest, resolve_corpus

    corpus = resolve_corpus(spec, minutes=minutes, seed=seed, progress=False)
    if corpus.layout != "builtin":
        raise DataError(
            f"fdsd train needs phoneme transcripts, which only a built-in corpus has; got a {corpus.layout} "
            f"corpus at {corpus.root} (use --data builtin or builtin:DIR)"
        )
    rows = read_manifest(corpus.root)
    by_split: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for row in rows:
        by_split.setdefault(row["split"], []).append(row)
    for split in by_split.values():
        split.sort(key=lambda r: r["file"])
    if not by_split["train"] or not by_split["val"]:
        raise DataError(f"corpus at {corpus.root} has no train or no val utterances in its manifest")
    return corpus, by_split, phoneme_inventory(rows)


def load_split(rows: Sequence[dict], index: dict[str, int], unknown: int | None = None) -> list[Utterance]:
    """Load and transcribe ``rows``; phonemes missing from ``index`` are dropped (``unknown`` None) or mapped to
    ``unknown`` (so that they count as errors when scoring)."""
    from lightdvae.audio import AudioError, load_audio

    out = []
    for row in rows:
        try:
            wave = load_audio(row["path"], log=False)
        except AudioError:
            continue
        seq = phoneme_sequence(row["phoneme_tokens"])
        targets = [index.get(p, unknown) for p in seq if p in index or unknown is not None]
        if targets:
            out.append(Utterance(row["path"], wave, targets))
    return out


def compute_feats(model: DeepSpeech2, items: Sequence[Utterance], *, normalized: bool) -> None:
    """Fill in each utterance's log-mel features: normalised by the model's front end, or raw (``log_mel``)."""
    with torch.no_grad():
        for u in items:
            w = torch.from_numpy(u.wave)[None]
            if normalized:
                u.feats = model.frontend(w)[0][0]
            else:
                u.feats = model.frontend.log_mel(w)[0]


def pad_feats(items: Sequence[Utterance]) -> tuple[torch.Tensor, torch.Tensor]:
    """The utterances' features zero-padded into ``(B, n_mels, T)``, and their frame counts ``(B,)``."""
    frames = torch.tensor([u.feats.shape[-1] for u in items], dtype=torch.long)
    n_mels = items[0].feats.shape[0]
    batch = torch.zeros(len(items), n_mels, int(frames.max()))
    for i, u in enumerate(items):
        batch[i, :, : u.feats.shape[-1]] = u.feats
    return batch, frames


def targets(items: Sequence[Utterance]) -> tuple[torch.Tensor, torch.Tensor]:
    """CTC targets: the concatenated class indices and each utterance's target length."""
    lengths = torch.tensor([len(u.targets) for u in items], dtype=torch.long)
    flat = torch.tensor([t for u in items for t in u.targets], dtype=torch.long)
    return flat, lengths


def length_batches(
    n_items: int, lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None
) -> list[list[int]]:
    """Index batches of similar-length utterances; shuffled pools and batch order when ``rng`` is given."""
    order = np.arange(n_items) if rng is None else rng.permutation(n_items)
    pool = batch_size * 16
    batches = []
    for start in range(0, n_items, pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size].tolist() for i in range(0, len(chunk), batch_size))
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def spec_augment(feats: torch.Tensor, frames: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Two frequency masks (<= 8 bands) and two time masks (<= 5 % of each utterance) set to 0 (the mean)."""
    feats = feats.clone()
    b, n_mels, _ = feats.shape
    for i in range(b):
        for _ in range(2):
            w = int(torch.randint(0, 9, (1,), generator=gen))
            f0 = int(torch.randint(0, max(1, n_mels - w), (1,), generator=gen))
            feats[i, f0 : f0 + w, :] = 0.0
        t_len = int(frames[i])
        max_w = max(1, int(0.05 * t_len))
        for _ in range(2):
            w = int(torch.randint(0, max_w + 1, (1,), generator=gen))
            t0 = int(torch.randint(0, max(1, t_len - w), (1,), generator=gen))
            feats[i, :, t0 : t0 + w] = 0.0
    return feats
