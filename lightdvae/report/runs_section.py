"""Where the models come from: ``## Training`` (one row per training run, from its ``config.json``, ``log.csv``
and ``status.json``) and ``## Shipped priors`` (the cards of the shipped priors among the evaluations)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lightdvae.report.tables import model_sort_key, num, table

__all__ = ["read_run", "read_runs", "run_label", "lr_text", "training_section", "training_row", "shipped_section"]


def read_run(path: Path) -> dict | None:
    """A run folder as the report reads it: ``{"dir", "meta" (config.json), "log" (log.csv rows), "status"}``;
    None when its ``config.json`` describes no model (not a run)."""
    from lightdvae.runs import read_config, read_log, read_status

    try:
        meta = read_config(path)
        log, status = read_log(path), read_status(path) or {}
    except (OSError, ValueError):  # RunError is a ValueError: an unreadable file is not a run to report
        return None
    if not isinstance(meta.get("model"), str):
        return None
    return {"dir": Path(path), "meta": meta, "log": log, "status": status}


def read_runs(paths: Sequence[str | Path]) -> list[dict]:
    """The runs among ``paths`` (:func:`read_run`), in the paper's order of their models."""
    runs = [r for r in (read_run(Path(p)) for p in paths) if r is not None]
    return sorted(runs, key=lambda r: (_sort_key(r), str(r["dir"])))


def _sort_key(run: dict):
    meta = run["meta"]
    model = {"name": meta["model"], "config": meta.get("config") or {}, "label": run_label(run)}
    return model_sort_key({"model": {**model, "training": _training(run).get("training")}})


def _training(run: dict) -> dict:
    t = run["meta"].get("training")
    return t if isinstance(t, dict) else {}


def run_label(run: dict) -> str:
    """The model's table label (``"LigHT-DVAE"``, ``"SRNN (SS)"``...)."""
    from lightdvae.models import model_label

    meta = run["meta"]
    return model_label(meta["model"], meta.get("config") or {}, _training(run).get("training"))


def _labels(runs: Sequence[dict]) -> list[str]:
    """Row labels; runs of one label get their folder's name appended."""
    labels = [run_label(r) for r in runs]
    return [f"{lab} [{r['dir'].name}]" if labels.count(lab) > 1 else lab for lab, r in zip(labels, runs, strict=True)]


def _common(runs: Sequence[dict], key: str):
    """The training setting ``key`` when every run has the same, else None."""
    values = {repr(_training(r).get(key)) for r in runs}
    return _training(runs[0]).get(key) if len(values) == 1 else None


def lr_text(runs: Sequence[dict], labels: Sequence[str] | None = None) -> str:
    """The learning rates in words: ``"lr 0.0005"``, or ``"lr per model, in the table: 0.001 for VAE, ..."``."""
    labels = list(labels or _labels(runs))
    lrs = [_training(r).get("lr") for r in runs]
    distinct = sorted({lr for lr in lrs if isinstance(lr, (int, float))}, reverse=True)
    if len(distinct) == 1 and None not in lrs:
        return f"lr {distinct[0]:g}"
    return "lr per model, in the table: " + ", ".join(
        f"{lr:g} for " + ", ".join(lab for lab, x in zip(labels, lrs, strict=True) if x == lr) for lr in distinct
    )


def _settings(runs: Sequence[dict], labels: list[str]) -> str:
    """The training settings the runs share, in one paragraph (those that differ are said to)."""
    trained = [r for r in runs if _training(r)]
    if not trained:
        return "Imported or untrained runs: no training settings recorded."
    data, batch, seq = (_common(trained, k) for k in ("data", "batch_size", "seq_len"))
    beta, patience, budget = (_common(trained, k) for k in ("beta", "patience", "budget_schedule"))
    names = {str((r["meta"].get("data") or {}).get("corpus", "")) for r in trained} - {""}
    parts = [
        (f"Corpus `{data}`" + (f" ({names.pop()})" if len(names) == 1 else ""))
        if data is not None
        else "Corpus per run (its config.json)",
        f"batch {batch if batch is not None else '(per run)'} segments of {seq if seq is not None else '(per run)'}"
        f" frames, Adam ({lr_text(trained, [lab for lab, r in zip(labels, runs, strict=True) if _training(r)])})"
        + (f", beta {beta}" if beta is not None else ", beta per run"),
    ]
    warm = {
        round(100 * (_training(r).get("kl_warmup_epochs") or 0) / max(1, _training(r).get("epochs") or 1))
        for r in trained
    }
    if budget:
        share = f"{warm.pop()} %" if len(warm) == 1 else "a share (per run)"
        parts.append(
            f"KL warm-up over the first {share} of each model's minutes and training until they are spent (the "
            "schedules follow the time, not an epoch count)"
        )
    else:
        kl = _common(trained, "kl_warmup_epochs")
        parts.append(f"KL warm-up over {kl} epochs" if kl is not None else "KL warm-up per run")
    if patience is not None:
        parts.append("early stopping off" if not patience else f"early stopping after {patience} epochs without gain")
    devices = sorted({str(r["meta"].get("device") or _training(r).get("device") or "?") for r in trained})
    return "; ".join(parts) + f", best validation weights kept; device {', '.join(devices)}."


def training_section(runs: Sequence[dict], note: Sequence[str] = ()) -> list[str]:
    """``## Training``: the shared settings, one row per run (:func:`training_row`), then ``note`` (lines); a line
    saying how to get the table when there is no run."""
    lines = ["## Training", ""]
    if not runs:
        return lines + [
            "_No training run among the given folders: this table reads a run folder's config.json, log.csv and "
            "status.json (`lightdvae train --model NAME --out RUN`); pass the run folders to `lightdvae report`._",
            "",
        ]
    imported = [r for r in runs if not _training(r) and not r["log"]]  # checkpoints brought in, not trained here
    runs = [r for r in runs if r not in imported]
    if not runs:
        return lines + [_imported_line(imported), ""]
    labels = _labels(runs)
    header = [
        "model",
        "parameters",
        "lr",
        "budget (min)",
        "threads",
        "epochs (planned)",
        "s / epoch",
        "KL warm-up done at",
        "best epoch",
        "best val loss",
        "stopped",
    ]
    body = [training_row(r, lab) for r, lab in zip(runs, labels, strict=True)]
    align = ["l"] + ["r"] * (len(header) - 2) + ["l"]
    lines += [_settings(runs, labels), "", table(header, body, align), ""]
    if imported:
        lines += [_imported_line(imported), ""]
    return lines + [*note] + ([""] if note else [])


def _imported_line(runs: Sequence[dict]) -> str:
    return "Imported checkpoints, not trained here: " + ", ".join(_labels(runs)) + "."


def training_row(run: dict, label: str | None = None) -> list[str]:
    """One run's cells of the training table; a short training (KL warm-up not completed, or fewer than half the
    planned epochs without early stopping) is flagged in its last cell."""
    t, rows, status = _training(run), run["log"], run["status"]
    label = label or run_label(run)
    stopped = str(status.get("state") or ("imported" if not t else "not trained"))
    budget = t.get("max_minutes")
    head = [
        label,
        f"{run['meta'].get('parameters', 0) or 0:,}",
        f"{t['lr']:g}" if t.get("lr") else "",
        num(budget, 1) if budget else "",
        str(t.get("threads") or ""),
    ]
    secs = [r["seconds"] for r in rows if isinstance(r.get("seconds"), float)]
    planned = t.get("epochs")
    if not secs:
        return head + [f"0 ({planned or '?'})", "", "", "", "", stopped]
    warnings = []
    kl = rows[-1].get("kl_warm")
    if isinstance(kl, float) and kl < 1.0:
        warnings.append(f"KL warm-up not completed ({kl:.2f})")
    if planned and len(rows) < 0.5 * planned and stopped != "early_stopped":
        warnings.append(f"{len(rows)} of ~{planned} planned epochs")
    if warnings:
        stopped = f"{stopped}; **{', '.join(warnings)}**: a short training, read its scores with care"
    warm = next((int(r["epoch"]) for r in rows if isinstance(r.get("kl_warm"), float) and r["kl_warm"] >= 1), None)
    best = status.get("best_val_loss")
    best = best if isinstance(best, (int, float)) and math.isfinite(best) else None
    return head + [
        f"{len(rows)} ({planned or '?'})",
        f"{np.median(secs):.1f}",
        f"epoch {warm}" if warm else "not done",
        str(status.get("best_epoch", "")),
        num(best, 1),
        stopped,
    ]


def shipped_section(evals: Sequence[dict]) -> list[str]:
    """``## Shipped priors``: which rows are the package's converged priors (``pretrained:NAME``) and their cards
    (how they were trained); nothing when no evaluation is of one."""
    from lightdvae.models.shipped import PretrainedError, pretrained_card

    names = sorted(
        {
            str(s.get("run_dir"))[len("pretrained:") :]
            for s in evals
            if str(s.get("run_dir") or "").startswith("pretrained:")
        }
    )
    if not names:
        return []
    lines = [
        "## Shipped priors",
        "",
        "Rows marked _(shipped)_ are the package's converged priors (`lightdvae info`; `pretrained:NAME` in every "
        "command), converged on the built-in corpus (a card's commands rebuild it: a longer training split first "
        "where it was trained on one; the test split is the same); the other rows are the runs given to the report.",
        "",
        "| prior | epochs (best) | training | command |",
        "|---|---:|---:|---|",
    ]
    for name in names:
        try:
            card = pretrained_card(name)
        except PretrainedError:
            lines.append(f"| `pretrained:{name}` | | | (its card is not installed here) |")
            continue
        corpus = (card.get("training_corpus") or {}).get("command")
        command = (f"`{corpus}`, then " if corpus else "") + f"`{card.get('command', '?')}`"
        kept = "last" if card.get("checkpoint") == "last" else card.get("best_epoch", "?")  # its weights' epoch
        lines.append(
            f"| {card.get('label', name)} (`pretrained:{name}`) | {card.get('epochs', '?')} "
            f"({kept}) | {card.get('train_minutes', '?')} min | {command} |"
        )
    return lines + [""]
