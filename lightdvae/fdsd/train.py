"""CTC training of the DeepSpeech2-style feature network on a built-in corpus (``lightdvae fdsd train``).

The recipe, all seeded (same seed, thread count and torch build -> the same weights):

* data: the corpus's train split for training, val for model selection, test for the final number; waveforms go
  through the package's front end (:func:`lightdvae.audio.load_audio`: 30 dB trim, peak normalisation); targets are
  the manifest's phoneme tokens normalised by :func:`~lightdvae.fdsd.network.normalize_phoneme`.
* log-mel features are computed once and normalised with the train split's per-band mean and standard deviation
  (stored in the weights).
* batches of utterances of similar length (sorted within shuffled pools; the first epoch in order of increasing
  length, DeepSpeech2's SortaGrad curriculum, which shortens CTC's all-blank plateau), SpecAugment-style masking
  (two frequency masks of up to 8 bands, two time masks of up to 5 % of the utterance each), Adam, learning rate
  warmed up linearly over the first epoch then cosine-decayed to 5 %, gradient norm clipped at 5.
* after every epoch: validation CTC loss and phoneme error rate (greedy decoding, edit distance); the weights of
  the best validation PER are kept (a copy) and written at the end, atomically, in float16; the final val and
  test PER are measured again on the written (rounded) weights.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lightdvae._io import atomic_write_text
from lightdvae.fdsd.network import DeepSpeech2, DS2Config, load_weights, save_weights
from lightdvae.fdsd.phonemes import BLANK, greedy_decode, phoneme_error_rate
from lightdvae.fdsd.utterances import (
    Utterance,
    compute_feats,
    length_batches,
    load_corpus_utterances,
    load_split,
    pad_feats,
    spec_augment,
    targets,
)
from lightdvae.runtime import thread_scope, versions

__all__ = [
    "Utterance",
    "TrainResult",
    "DS2TrainSettings",
    "load_corpus_utterances",
    "evaluate",
    "recognize",
    "train_ds2",
    "metadata_path",
]

SPLITS = ("train", "val", "test")


@dataclass
class TrainResult:
    path: Path
    metadata: dict
    history: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class DS2TrainSettings:
    """What :func:`train_ds2` was asked for (its arguments but ``out`` and ``log``; see there)."""

    data: str = "builtin"
    epochs: int = 40
    minutes: float | None = None
    device: str = "cpu"
    seed: int = 0
    threads: int | None = None
    batch_size: int = 16
    lr: float = 2e-3
    sortagrad: bool = True
    config: dict | None = None
    command: str | None = None
    name: str = "ds2-builtin"


def metadata_path(weights: str | os.PathLike) -> Path:
    """The JSON sidecar of a weights file: ``ds2_builtin.pt`` -> ``ds2_builtin.json``."""
    return Path(weights).with_suffix(".json")


# ----------------------------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(
    model: DeepSpeech2, items: Sequence[Utterance], *, batch_size: int = 16, device: torch.device | str = "cpu"
) -> dict:
    """Mean CTC loss (per utterance, normalised by target length) and greedy-decoding PER of ``items``."""
    was_training = model.training
    model.eval()
    lengths = np.array([u.feats.shape[-1] for u in items])
    loss_sum, hyps, refs = 0.0, [], []
    for idx in length_batches(len(items), lengths, batch_size, None):
        batch = [items[i] for i in idx]
        feats, frames = pad_feats(batch)
        log_probs, out_len, _ = model.encode(feats.to(device), frames.to(device))
        flat, tgt_len = targets(batch)
        per_utt = nn.functional.ctc_loss(
            log_probs.transpose(0, 1).float(),
            flat.to(device),
            out_len,
            tgt_len.to(device),
            blank=BLANK,
            reduction="none",
            zero_infinity=True,
        )
        loss_sum += float((per_utt / tgt_len.to(device)).sum())
        hyps.extend(greedy_decode(log_probs, out_len))
        refs.extend(u.targets for u in batch)
    model.train(was_training)
    return {"ctc_loss": loss_sum / max(1, len(items)), "per": phoneme_error_rate(hyps, refs), "utterances": len(items)}


@torch.no_grad()
def recognize(
    model: DeepSpeech2, rows: Sequence[dict], *, batch_size: int = 16, device: torch.device | str = "cpu"
) -> tuple[list[list[int]], list[list[int]]]:
    """Greedy phoneme recognition of manifest ``rows`` -> ``(references, hypotheses)`` as class-index lists
    (a reference phoneme outside the model's inventory is -1: always an error)."""
    model.eval().to(device)
    index = {p: i + 1 for i, p in enumerate(model.config.phonemes)}
    items = load_split(rows, index, unknown=-1)
    compute_feats(model.cpu(), items, normalized=True)
    model.to(device)
    hyps: list[list[int]] = [[] for _ in items]
    lengths = np.array([u.feats.shape[-1] for u in items])
    for idx in length_batches(len(items), lengths, batch_size, None):
        feats, frames = pad_feats([items[i] for i in idx])
        log_probs, out_len, _ = model.encode(feats.to(device), frames.to(device))
        for i, h in zip(idx, greedy_decode(log_probs, out_len), strict=True):
            hyps[i] = h
    return [u.targets for u in items], hyps


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------
def train_ds2(
    data: str = "builtin",
    out: str | os.PathLike = "ds2.pt",
    *,
    epochs: int = 40,
    minutes: float | None = None,
    device: str = "cpu",
    seed: int = 0,
    threads: int | None = None,
    batch_size: int = 16,
    lr: float = 2e-3,
    sortagrad: bool = True,
    config: dict | None = None,
    command: str | None = None,
    name: str = "ds2-builtin",
    log: Callable[[str], None] | None = print,
) -> TrainResult:
    """Train the DS2-style network with CTC on a built-in corpus; write ``out`` and ``out`` with ``.json``.

    Args:
        data: corpus spec (``"builtin"``, ``"builtin:DIR"``); must be a built-in corpus (phoneme manifest).
        out: weights file to write (see :func:`~lightdvae.fdsd.network.save_weights`).
        epochs: passes over the train split.
        minutes: size of the built-in corpus when ``data == "builtin"`` must be built first (default 30).
        device: ``"cpu"`` or ``"cuda"``.
        seed: seeds initialisation, batch order and masking.
        threads: ``torch.set_num_threads`` for the run, restored after (None: leave torch's setting).
        sortagrad: first epoch shortest utterances first (DeepSpeech2's curriculum).
        config: :class:`DS2Config` fields to change (sizes); the phoneme inventory comes from the corpus.
        command: the command line, recorded in the metadata.
        name: the feature network's name recorded in the metadata.
        log: called with one line per epoch (None: silent).
    Returns:
        :class:`TrainResult` with the path, the metadata written to the JSON sidecar and the per-epoch history.
    """
    settings = DS2TrainSettings(
        data=data,
        epochs=epochs,
        minutes=minutes,
        device=device,
        seed=seed,
        threads=threads,
        batch_size=batch_size,
        lr=lr,
        sortagrad=sortagrad,
        config=config,
        command=command,
        name=name,
    )
    say = log or (lambda _msg: None)
    t_start = time.perf_counter()
    with thread_scope(int(threads) if threads else None):
        torch.manual_seed(seed)
        corpus, model, splits = _prepare(settings, say)
        best, history = _fit(model, splits, settings, say)
        if best["state"] is not None:
            model.load_state_dict(best["state"])
        model.eval()
        train_seconds = time.perf_counter() - t_start
        out = Path(out)
        save_weights(model.cpu(), out)
        # Measure what ships: the float16-rounded weights as loaded back.
        shipped, _ = load_weights(out)
        scores = {s: evaluate(shipped, splits[s], batch_size=batch_size) for s in ("val", "test") if splits[s]}
        metadata = _metadata(settings, corpus, splits, model, best["epoch"], scores, history, train_seconds)
    save_weights(shipped, out, metadata)
    side = metadata_path(out)
    atomic_write_text(side, json.dumps(metadata, indent=2) + "\n")
    say(
        f"best epoch {best['epoch']}: val CTC {metadata['val_ctc_loss']:.3f}, val PER {100 * metadata['val_per']:.1f} %"
        + (f", test PER {100 * metadata['test_per']:.1f} %" if metadata["test_per"] is not None else "")
        + f"; {train_seconds / 60:.1f} min; wrote {out} ({out.stat().st_size / 1e6:.2f} MB) and {side.name}"
    )
    return TrainResult(out, metadata, history)


def _prepare(s: DS2TrainSettings, say: Callable[[str], None]) -> tuple[object, DeepSpeech2, dict[str, list]]:
    """The corpus, the freshly initialised network (its front end normalised with the train split's per-band
    statistics) and the utterances of each split with their normalised features."""
    corpus, rows, inventory = load_corpus_utterances(s.data, minutes=s.minutes, seed=0)
    cfg = DS2Config.from_dict({**(s.config or {}), "phonemes": inventory})
    model = DeepSpeech2(cfg)
    index = {p: i + 1 for i, p in enumerate(inventory)}
    splits = {split: load_split(rows[split], index) for split in SPLITS}
    t_load = time.perf_counter()

    compute_feats(model, splits["train"], normalized=False)
    cat = torch.cat([u.feats for u in splits["train"]], dim=1)
    model.frontend.set_normalization(cat.mean(1), cat.std(1))
    del cat
    for split in SPLITS:
        compute_feats(model, splits[split], normalized=True)
    say(
        f"corpus {corpus.root}: {len(splits['train'])} train / {len(splits['val'])} val / {len(splits['test'])} "
        f"test utterances, {len(inventory)} phonemes; network {model.num_parameters() / 1e6:.2f} M parameters; "
        f"features in {time.perf_counter() - t_load:.1f} s; {torch.get_num_threads()} threads"
    )
    return corpus, model, splits


def _lr_schedule(lr: float, steps_per_epoch: int, epochs: int) -> Callable[[int], float]:
    """Linear warm-up over the first epoch, then cosine decay to 5 % of ``lr`` at the last step."""
    total_steps = max(1, epochs * steps_per_epoch)
    warmup = max(1, steps_per_epoch)

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        frac = (step - warmup) / max(1, total_steps - warmup)
        return lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac))))

    return lr_at


def _fit(
    model: DeepSpeech2, splits: dict[str, list], s: DS2TrainSettings, say: Callable[[str], None]
) -> tuple[dict, list[dict]]:
    """The epochs: train, validate, keep (a copy of) the weights of the best validation PER.  Returns
    ``(best {"per", "ctc_loss", "epoch", "state"}, per-epoch history)``."""
    rng = np.random.default_rng(s.seed)
    gen = torch.Generator().manual_seed(s.seed + 1)
    device = torch.device(s.device)
    train = splits["train"]
    model.to(device).train()
    optim = torch.optim.Adam(model.parameters(), lr=s.lr)
    lengths = np.array([u.feats.shape[-1] for u in train])
    lr_at = _lr_schedule(s.lr, len(length_batches(len(train), lengths, s.batch_size, None)), s.epochs)
    ctc = nn.CTCLoss(blank=BLANK, reduction="mean", zero_infinity=True)
    history: list[dict] = []
    best = {"per": float("inf"), "ctc_loss": float("inf"), "epoch": 0, "state": None}
    step = 0
    for epoch in range(1, s.epochs + 1):
        t0 = time.perf_counter()
        if s.sortagrad and epoch == 1:
            order = sorted(length_batches(len(train), lengths, s.batch_size, None), key=lambda b: int(lengths[b].max()))
        else:
            order = length_batches(len(train), lengths, s.batch_size, rng)
        loss_sum = 0.0
        for idx in order:
            for group in optim.param_groups:
                group["lr"] = lr_at(step)
            loss_sum += _train_step(model, optim, ctc, [train[i] for i in idx], gen, device)
            step += 1
        val = evaluate(model, splits["val"], batch_size=s.batch_size, device=device)
        row = {
            "epoch": epoch,
            "train_ctc_loss": round(loss_sum / max(1, len(order)), 4),
            "val_ctc_loss": round(val["ctc_loss"], 4),
            "val_per": round(val["per"], 4),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        history.append(row)
        improved = (val["per"], val["ctc_loss"]) < (best["per"], best["ctc_loss"])
        if improved:
            state = copy.deepcopy(model.state_dict())
            best = {"per": val["per"], "ctc_loss": val["ctc_loss"], "epoch": epoch, "state": state}
        say(
            f"epoch {epoch:3d}/{s.epochs}  train CTC {row['train_ctc_loss']:.3f}  val CTC {row['val_ctc_loss']:.3f}  "
            f"val PER {100 * row['val_per']:.1f} %  {row['seconds']:.0f} s{'  *' if improved else ''}"
        )
    return best, history


def _train_step(
    model: DeepSpeech2,
    optim: torch.optim.Optimizer,
    ctc: nn.CTCLoss,
    batch: list[Utterance],
    gen: torch.Generator,
    device: torch.device,
) -> float:
    """One CTC step on ``batch`` (masked with SpecAugment, gradient norm clipped at 5); returns the loss."""
    feats, frames = pad_feats(batch)
    feats = spec_augment(feats, frames, gen)
    flat, tgt_len = targets(batch)
    log_probs, out_len, _ = model.encode(feats.to(device), frames.to(device))
    loss = ctc(log_probs.transpose(0, 1), flat.to(device), out_len, tgt_len.to(device))
    optim.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    optim.step()
    return loss.item()


def _corpus_info(root: str | os.PathLike) -> dict:
    """Size, seed and espeak-ng version of the corpus, from its ``corpus.json`` ({} when it has none)."""
    info_file = Path(root) / "corpus.json"
    if not info_file.is_file():
        return {}
    info = json.loads(info_file.read_text())
    return {
        "minutes": info.get("settings", {}).get("minutes", info.get("minutes")),
        "seed": info.get("settings", {}).get("seed", info.get("seed")),
        "espeak_ng": info.get("espeak_ng"),
        "total_seconds": info.get("total_seconds"),
    }


def _metadata(
    s: DS2TrainSettings,
    corpus,
    splits: dict[str, list],
    model: DeepSpeech2,
    best_epoch: int,
    scores: dict[str, dict],
    history: list[dict],
    train_seconds: float,
) -> dict:
    """The training record written into the weights file and its JSON sidecar."""
    cfg = model.config
    stamp = versions()
    return {
        "name": s.name,
        "description": (
            f"{s.name}: DeepSpeech2-style phoneme recogniser (log-mel 64, 2 conv, {cfg.rnn_layers} x BiGRU "
            f"{cfg.rnn_hidden}, fc {cfg.fc_dim}), CTC-trained by lightdvae on the built-in espeak-ng corpus; "
            "FDSD features = time-averaged penultimate (fc) activations"
        ),
        "command": s.command,
        "corpus": {
            "spec": s.data,
            "root": str(corpus.root),
            "utterances": {split: len(v) for split, v in splits.items()},
            **_corpus_info(corpus.root),
        },
        "phonemes": list(cfg.phonemes),
        "config": cfg.to_dict(),
        "parameters": model.num_parameters(),
        "feature_layer": "fc",
        "feature_dim": cfg.fc_dim,
        "epochs": s.epochs,
        "best_epoch": best_epoch,
        "seed": s.seed,
        "batch_size": s.batch_size,
        "lr": s.lr,
        "sortagrad": s.sortagrad,
        "threads": torch.get_num_threads(),
        "device": str(torch.device(s.device)),
        "train_seconds": round(train_seconds, 1),
        "val_ctc_loss": round(scores["val"]["ctc_loss"], 4),
        "val_per": round(scores["val"]["per"], 4),
        "test_ctc_loss": round(scores["test"]["ctc_loss"], 4) if "test" in scores else None,
        "test_per": round(scores["test"]["per"], 4) if "test" in scores else None,
        "torch": str(stamp["torch"]),
        "python": stamp["python"],
        "weights_dtype": "float16",
        "history": history,
    }
