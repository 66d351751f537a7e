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
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lightdvae.fdsd.network import (
    BLANK,
    DeepSpeech2,
    DS2Config,
    greedy_decode,
    load_weights,
    phoneme_error_rate,
    phoneme_inventory,
    phoneme_sequence,
    save_weights,
)

__all__ = [
    "Utterance",
    "TrainResult",
    "load_corpus_utterances",
    "evaluate",
    "recognize",
    "train_ds2",
    "metadata_path",
]


@dataclass
class Utterance:
    """One transcribed utterance, its normalised log-mel features filled in by :func:`train_ds2`."""

    path: str
    wave: np.ndarray  #: (samples,) float32, 16 kHz, trimmed and peak-normalised
    targets: list[int]  #: phoneme class indices (1..C-1)
    feats: torch.Tensor | None = None  #: (n_mels, T) normalised log-mel


@dataclass
class TrainResult:
    path: Path
    metadata: dict
    history: list[dict] = field(default_factory=list)


def metadata_path(weights: str | os.PathLike) -> Path:
    """The JSON sidecar of a weights file: ``ds2_builtin.pt`` -> ``ds2_builtin.json``."""
    return Path(weights).with_suffix(".json")


def load_corpus_utterances(
    spec: str, *, minutes: float | None = None, seed: int = 0
) -> tuple[object, dict[str, list[dict]], list[str]]:
    """Resolve a built-in corpus spec -> ``(corpus, manifest rows per split, phoneme inventory)``.

    Raises :class:`lightdvae.data.DataError` when the corpus has no phoneme manifest (only built-in corpora
    carry transcripts).
    """
    from lightdvae.data import DataError, read_manifest, resolve_corpus

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


def _load_split(rows: Sequence[dict], index: dict[str, int], unknown: int | None = None) -> list[Utterance]:
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


def _pad_feats(items: Sequence[Utterance]) -> tuple[torch.Tensor, torch.Tensor]:
    frames = torch.tensor([u.feats.shape[-1] for u in items], dtype=torch.long)
    n_mels = items[0].feats.shape[0]
    batch = torch.zeros(len(items), n_mels, int(frames.max()))
    for i, u in enumerate(items):
        batch[i, :, : u.feats.shape[-1]] = u.feats
    return batch, frames


def _targets(items: Sequence[Utterance]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(u.targets) for u in items], dtype=torch.long)
    flat = torch.tensor([t for u in items for t in u.targets], dtype=torch.long)
    return flat, lengths


def _batches(n_items: int, lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None) -> list[list[int]]:
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


def _spec_augment(feats: torch.Tensor, frames: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
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


@torch.no_grad()
def evaluate(
    model: DeepSpeech2, items: Sequence[Utterance], *, batch_size: int = 16, device: torch.device | str = "cpu"
) -> dict:
    """Mean CTC loss (per utterance, normalised by target length) and greedy-decoding PER of ``items``."""
    was_training = model.training
    model.eval()
    lengths = np.array([u.feats.shape[-1] for u in items])
    loss_sum, hyps, refs = 0.0, [], []
    for idx in _batches(len(items), lengths, batch_size, None):
        batch = [items[i] for i in idx]
        feats, frames = _pad_feats(batch)
        log_probs, out_len, _ = model.encode(feats.to(device), frames.to(device))
        flat, tgt_len = _targets(batch)
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
    items = _load_split(rows, index, unknown=-1)
    _compute_feats(model.cpu(), items, normalized=True)
    model.to(device)
    hyps: list[list[int]] = [[] for _ in items]
    lengths = np.array([u.feats.shape[-1] for u in items])
    for idx in _batches(len(items), lengths, batch_size, None):
        feats, frames = _pad_feats([items[i] for i in idx])
        log_probs, out_len, _ = model.encode(feats.to(device), frames.to(device))
        for i, h in zip(idx, greedy_decode(log_probs, out_len), strict=True):
            hyps[i] = h
    return [u.targets for u in items], hyps


def _compute_feats(model: DeepSpeech2, items: Sequence[Utterance], *, normalized: bool) -> None:
    with torch.no_grad():
        for u in items:
            w = torch.from_numpy(u.wave)[None]
            if normalized:
                u.feats = model.frontend(w)[0][0]
            else:
                u.feats = model.frontend.log_mel(w)[0]


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
        threads: ``torch.set_num_threads`` for the run (None: leave torch's setting).
        sortagrad: first epoch shortest utterances first (DeepSpeech2's curriculum).
        config: :class:`DS2Config` fields to change (sizes); the phoneme inventory comes from the corpus.
        command: the command line, recorded in the metadata.
        name: the feature network's name recorded in the metadata.
        log: called with one line per epoch (None: silent).
    Returns:
        :class:`TrainResult` with the path, the metadata written to the JSON sidecar and the per-epoch history.
    """
    say = log or (lambda _msg: None)
    t_start = time.perf_counter()
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    device = torch.device(device)

    corpus, rows, inventory = load_corpus_utterances(data, minutes=minutes, seed=0)
    cfg = DS2Config.from_dict({**(config or {}), "phonemes": inventory})
    model = DeepSpeech2(cfg)
    index = {p: i + 1 for i, p in enumerate(inventory)}
    splits = {s: _load_split(rows[s], index) for s in ("train", "val", "test")}
    t_load = time.perf_counter()

    _compute_feats(model, splits["train"], normalized=False)
    cat = torch.cat([u.feats for u in splits["train"]], dim=1)
    model.frontend.set_normalization(cat.mean(1), cat.std(1))
    del cat
    for s in ("train", "val", "test"):
        _compute_feats(model, splits[s], normalized=True)
    train = splits["train"]
    say(
        f"corpus {corpus.root}: {len(train)} train / {len(splits['val'])} val / {len(splits['test'])} test "
        f"utterances, {len(inventory)} phonemes; network {model.num_parameters() / 1e6:.2f} M parameters; "
        f"features in {time.perf_counter() - t_load:.1f} s; {torch.get_num_threads()} threads"
    )

    model.to(device).train()
    optim = torch.optim.Adam(model.parameters(), lr=lr)
    lengths = np.array([u.feats.shape[-1] for u in train])
    steps_per_epoch = len(_batches(len(train), lengths, batch_size, None))
    total_steps = max(1, epochs * steps_per_epoch)
    warmup = max(1, steps_per_epoch)

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        frac = (step - warmup) / max(1, total_steps - warmup)
        return lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac))))

    ctc = nn.CTCLoss(blank=BLANK, reduction="mean", zero_infinity=True)
    history: list[dict] = []
    best = {"per": float("inf"), "ctc_loss": float("inf"), "epoch": 0, "state": None}
    step = 0
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        loss_sum, n_batches = 0.0, 0
        if sortagrad and epoch == 1:
            order = _batches(len(train), lengths, batch_size, None)
            order = sorted(order, key=lambda b: int(lengths[b].max()))
        else:
            order = _batches(len(train), lengths, batch_size, rng)
        for idx in order:
            batch = [train[i] for i in idx]
            feats, frames = _pad_feats(batch)
            feats = _spec_augment(feats, frames, gen)
            flat, tgt_len = _targets(batch)
            for group in optim.param_groups:
                group["lr"] = lr_at(step)
            log_probs, out_len, _ = model.encode(feats.to(device), frames.to(device))
            loss = ctc(log_probs.transpose(0, 1), flat.to(device), out_len, tgt_len.to(device))
            optim.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optim.step()
            loss_sum += loss.item()
            n_batches += 1
            step += 1
        val = evaluate(model, splits["val"], batch_size=batch_size, device=device)
        row = {
            "epoch": epoch,
            "train_ctc_loss": round(loss_sum / max(1, n_batches), 4),
            "val_ctc_loss": round(val["ctc_loss"], 4),
            "val_per": round(val["per"], 4),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        history.append(row)
        improved = (val["per"], val["ctc_loss"]) < (best["per"], best["ctc_loss"])
        if improved:
            best = {
                "per": val["per"],
                "ctc_loss": val["ctc_loss"],
                "epoch": epoch,
                "state": copy.deepcopy(model.state_dict()),
            }
        say(
            f"epoch {epoch:3d}/{epochs}  train CTC {row['train_ctc_loss']:.3f}  val CTC {row['val_ctc_loss']:.3f}  "
            f"val PER {100 * row['val_per']:.1f} %  {row['seconds']:.0f} s{'  *' if improved else ''}"
        )

    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    train_seconds = time.perf_counter() - t_start
    out = Path(out)
    save_weights(model.cpu(), out)
    # Measure what ships: the float16-rounded weights as loaded back.
    shipped, _ = load_weights(out)
    scores = {s: evaluate(shipped, splits[s], batch_size=batch_size) for s in ("val", "test") if splits[s]}
    corpus_info = {}
    info_file = Path(corpus.root) / "corpus.json"
    if info_file.is_file():
        info = json.loads(info_file.read_text())
        corpus_info = {
            "minutes": info.get("settings", {}).get("minutes", info.get("minutes")),
            "seed": info.get("settings", {}).get("seed", info.get("seed")),
            "espeak_ng": info.get("espeak_ng"),
            "total_seconds": info.get("total_seconds"),
        }
    metadata = {
        "name": name,
        "description": (
            f"{name}: DeepSpeech2-style phoneme recogniser (log-mel 64, 2 conv, {cfg.rnn_layers} x BiGRU "
            f"{cfg.rnn_hidden}, fc {cfg.fc_dim}), CTC-trained by lightdvae on the built-in espeak-ng corpus; "
            "FDSD features = time-averaged penultimate (fc) activations"
        ),
        "command": command,
        "corpus": {
            "spec": data,
            "root": str(corpus.root),
            "utterances": {s: len(v) for s, v in splits.items()},
            **corpus_info,
        },
        "phonemes": inventory,
        "config": cfg.to_dict(),
        "parameters": shipped.num_parameters(),
        "feature_layer": "fc",
        "feature_dim": cfg.fc_dim,
        "epochs": epochs,
        "best_epoch": best["epoch"],
        "seed": seed,
        "batch_size": batch_size,
        "lr": lr,
        "sortagrad": sortagrad,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "train_seconds": round(train_seconds, 1),
        "val_ctc_loss": round(scores["val"]["ctc_loss"], 4),
        "val_per": round(scores["val"]["per"], 4),
        "test_ctc_loss": round(scores["test"]["ctc_loss"], 4) if "test" in scores else None,
        "test_per": round(scores["test"]["per"], 4) if "test" in scores else None,
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "weights_dtype": "float16",
        "history": history,
    }
    save_weights(shipped, out, metadata)
    side = metadata_path(out)
    tmp = side.with_name(f".{side.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(metadata, indent=2) + "\n")
    os.replace(tmp, side)
    say(
        f"best epoch {best['epoch']}: val CTC {metadata['val_ctc_loss']:.3f}, val PER {100 * metadata['val_per']:.1f} %"
        + (f", test PER {100 * metadata['test_per']:.1f} %" if metadata["test_per"] is not None else "")
        + f"; {train_seconds / 60:.1f} min; wrote {out} ({out.stat().st_size / 1e6:.2f} MB) and {side.name}"
    )
    return TrainResult(out, metadata, history)
