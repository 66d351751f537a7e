"""The experiment's write-up, ``OUT/report/README.md``: the tables of :func:`lightdvae.report.build_report`
(analysis-resynthesis, GEN/GT structure study, FDSD), then the training settings and schedules, the paper's
findings, generation figures and the cost table."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lightdvae._io import atomic_write_text, read_json
from lightdvae.experiments.budget import WARMUP_FRACTION
from lightdvae.experiments.config import ExperimentConfig
from lightdvae.experiments.entries import ENTRIES
from lightdvae.experiments.paper_findings import COLLAPSE_DB, SAME_DB, findings
from lightdvae.experiments.shipped import shipped_dir
from lightdvae.experiments.state import COST_FILE, REPORT_DIR, RUNS_DIR, SHIPPED_DIR, ExperimentState, run_dir
from lightdvae.runs import read_log

__all__ = ["REPORT_FILE", "write_report", "lr_text", "console_summary"]

REPORT_FILE = "README.md"
GENERATION_FIGURES = "figures"  #: generation figures, copied into the report folder


def write_report(cfg: ExperimentConfig, state: ExperimentState, out: Path, corpus) -> Path:
    """Write ``OUT/report/README.md`` (and its figures); returns its path."""
    from lightdvae.report import FIGURE_DIR, build_report, find_results

    report_dir = out / REPORT_DIR
    report_dir.mkdir(parents=True, exist_ok=True)
    shipped = state.data.get("shipped") or {}
    evals, fdsds = find_results([out / RUNS_DIR] + ([out / SHIPPED_DIR] if shipped else []))
    lines = [build_report(evals, fdsds, title=cfg.title, figure_dir=report_dir / FIGURE_DIR).rstrip(), ""]
    lines += _shipped_note(out, shipped)
    lines += _settings_section(cfg, state, out, corpus)
    lines += _findings_section(out, cfg.models)
    lines += _generation_section(cfg, state, report_dir)
    lines += _exchange_section(state, report_dir)
    lines += _cost_section(out)
    path = report_dir / REPORT_FILE
    atomic_write_text(path, "\n".join(lines).rstrip() + "\n")
    return path


def _shipped_note(out: Path, shipped: dict) -> list[str]:
    """Which rows are the shipped priors, and how they were trained (their cards)."""
    from lightdvae.models.pretrained import pretrained_card, pretrained_names

    names = [n for n in shipped if n in pretrained_names()]
    if not names:
        return []
    lines = [
        "## Shipped priors",
        "",
        "Rows marked _(shipped)_ are the package's converged priors (`lightdvae info`; `pretrained:NAME` in every "
        "command), trained on this built-in corpus to early stopping with the published protocol and evaluated "
        "here on the same test split; the other rows are the models this experiment trained within its budget.",
        "",
        "| prior | epochs (best) | training | command |",
        "|---|---:|---:|---|",
    ]
    for name in names:
        card = pretrained_card(name)
        lines.append(
            f"| {card.get('label', name)} (`pretrained:{name}`) | {card.get('epochs', '?')} "
            f"({card.get('best_epoch', '?')}) | {card.get('train_minutes', '?')} min | `{card.get('command', '?')}` |"
        )
    return lines + [""]


def console_summary(report: str) -> str:
    """The report's first table with its heading (the analysis-resynthesis results), for the end of a run on the
    console: the user sees the numbers, not only where they are."""
    lines = report.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), None)
    if start is None:
        return ""
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    heading = next((lines[i] for i in range(start - 1, -1, -1) if lines[i].startswith("#")), "")
    return "\n".join([heading.lstrip("# ").strip(), *lines[start:end]]).strip()


def lr_text(cfg: ExperimentConfig) -> str:
    """The learning rates in words: ``"lr 0.0005"``, or ``"lr per model, in the table: 0.001 for VAE, ..."``."""
    lrs = sorted({cfg.lr_of(key) for key in cfg.models}, reverse=True)
    if len(lrs) == 1:
        return f"lr {lrs[0]:g}"
    return "lr per model, in the table: " + ", ".join(
        f"{lr:g} for " + ", ".join(ENTRIES[k].label for k in cfg.models if cfg.lr_of(k) == lr) for lr in lrs
    )


def _settings_section(cfg: ExperimentConfig, state: ExperimentState, out: Path, corpus) -> list[str]:
    lines = [
        "## Training",
        "",
        f"Corpus `{cfg.data}` ({corpus.name}); batch {cfg.batch_size} segments of {cfg.seq_len} frames, Adam "
        f"({lr_text(cfg)}), beta {cfg.beta}, KL warm-up over the first {round(100 * WARMUP_FRACTION)} % of each "
        "model's minutes and training until they are spent (the schedules follow the time, not an epoch count), "
        "early stopping off, best validation weights kept; device "
        f"{state.data.get('device', cfg.device)}, torch threads per model in the table (one per core that other "
        "processes left idle when it started).",
        "",
        "| model | parameters | lr | budget (min) | threads | epochs (planned) | s / epoch | KL warm-up done at "
        "| best epoch | best val loss | stopped |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    lines += [_training_row(cfg, key, state.model(key), read_log(run_dir(out, key))) for key in cfg.models]
    stages = state.data["stages"]
    lines += [
        "",
        "Wall time of this experiment (all sessions): "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in stages.items())
        + f"; total {state.wall_seconds / 60:.1f} min.",
        "",
    ]
    return lines


def _training_row(cfg: ExperimentConfig, key: str, info: dict, rows: list[dict]) -> str:
    """One model's row of the training table (``rows``: its log.csv)."""
    label, stopped = ENTRIES[key].label, info.get("training", "not trained")
    secs = [r["seconds"] for r in rows if isinstance(r.get("seconds"), float)]
    if not secs:
        return f"| {label} | | {cfg.lr_of(key):g} | {cfg.budget_minutes(key):.1f} | | 0 | | | | | {stopped} |"
    sched = info.get("schedule") or {}
    best = info.get("best_val_loss")  # null in experiment.json when it was not finite
    best = float("nan") if best is None else best
    warnings = []
    if isinstance(rows[-1].get("kl_warm"), float) and rows[-1]["kl_warm"] < 1.0:
        warnings.append(f"KL warm-up not completed ({rows[-1]['kl_warm']:.2f})")
    if sched.get("epochs") and len(rows) < 0.5 * sched["epochs"]:
        warnings.append(f"{len(rows)} of ~{sched['epochs']} planned epochs")
    if warnings:
        stopped = f"{stopped}; **{', '.join(warnings)}**: a short training, read its scores with care"
    warm_done = next((int(r["epoch"]) for r in rows if isinstance(r.get("kl_warm"), float) and r["kl_warm"] >= 1), None)
    return (
        f"| {label} | {info.get('parameters', 0):,} | {cfg.lr_of(key):g} "
        f"| {cfg.budget_minutes(key):.1f} | {info.get('threads') or ''} | {len(rows)} ({sched.get('epochs', '?')}) "
        f"| {np.median(secs):.1f} | {'epoch ' + str(warm_done) if warm_done else 'not done'} "
        f"| {info.get('best_epoch', '')} | {best:.1f} | {stopped} |"
    )


def _findings_section(out: Path, models: Sequence[str]) -> list[str]:
    res = findings(out, models)
    if all(r["verdict"] == "not tested" for r in res):
        return []
    lines = [
        "## The paper's findings on this corpus",
        "",
        f"Paired differences of per-file SI-SDR on the test split (mean, 95 % t-interval). A collapse: GEN more than "
        f"{COLLAPSE_DB:g} dB below GT; the same: within {SAME_DB:g} dB.",
        "",
        "| finding | verdict | evidence |",
        "|---|---|---|",
    ]
    for r in res:
        lines.append(f"| {r['finding']} | **{r['verdict']}** | {r['evidence']} |")
    return lines + [""]


def _generation_section(cfg: ExperimentConfig, state: ExperimentState, report_dir: Path) -> list[str]:
    from lightdvae.models.pretrained import pretrained_card

    lines: list[str] = []
    fig_dir = report_dir / GENERATION_FIGURES
    for key in cfg.models:
        gen_out = (state.model(key).get("generation") or {}).get("out")
        if not gen_out:
            continue
        pngs = sorted(Path(gen_out).glob("*.png"))
        if not pngs:
            continue
        if not lines:
            lines = ["## Generation", "", f"Samples from the prior ({cfg.gen_frames} frames), Griffin-Lim phase.", ""]
        fig_dir.mkdir(parents=True, exist_ok=True)
        for png in pngs[:1]:
            dest = fig_dir / f"generation-{key}.png"
            shutil.copyfile(png, dest)
            label = ENTRIES[key].label
            lines += [f"**{label}**", "", f"![{label} samples]({GENERATION_FIGURES}/{dest.name})", ""]
    for name in state.data.get("shipped") or {}:
        pngs = sorted((shipped_dir(report_dir.parent, name) / "generate").glob("*.png"))[:1]
        if pngs:
            fig_dir.mkdir(parents=True, exist_ok=True)
            dest = fig_dir / f"generation-shipped-{name}.png"
            shutil.copyfile(pngs[0], dest)
            label = f"{pretrained_card(name).get('label', name)} (shipped)"
            lines += [f"**{label}**", "", f"![{label} samples]({GENERATION_FIGURES}/{dest.name})", ""]
    return lines


def exchange_verdict(check: dict) -> str:
    """One line on whether w carries global traits, from a ``swap_w.json`` check: both exchanged outputs have
    their w moved toward the donor's (beyond the own-w resynthesis) and their spectrum too, or not."""
    moved = []
    for name in ("a_with_w_of_b", "b_with_w_of_a"):
        c = check.get(name) or {}
        w_moved = (c.get("w_transfer") or 0.0) > (c.get("own_w_transfer") or 0.0)
        moved.append(w_moved and (c.get("ltas_db_toward_donor") or 0.0) > 0)
    parts = ", ".join(
        f"{n.replace('_', ' ')}: w transfer {check[n]['w_transfer']:.2f} (own-w {check[n]['own_w_transfer']:.2f}), "
        f"spectrum {check[n]['ltas_db_toward_donor']:+.2f} dB toward the donor"
        for n in ("a_with_w_of_b", "b_with_w_of_a")
        if isinstance((check.get(n) or {}).get("w_transfer"), float)
    )
    verdict = (
        "w carries global traits"
        if all(moved)
        else "w partly carries global traits"
        if any(moved)
        else ("w does not carry global traits")
    )
    return f"**{verdict}** ({parts})."


def _exchange_section(state: ExperimentState, report_dir: Path) -> list[str]:
    """The w exchange of the shipped priors that have a sequence latent: the figure and the one-line verdict."""
    lines: list[str] = []
    for name, info in (state.data.get("shipped") or {}).items():
        folder = Path(info["swap_w"]) if info.get("swap_w") else None
        result = read_json(folder / "swap_w.json") if folder else None
        if not result:
            continue
        fig_dir = report_dir / GENERATION_FIGURES
        fig_dir.mkdir(parents=True, exist_ok=True)
        label = f"{(result.get('model') or {}).get('label', name)}"
        if not lines:
            lines = ["## The w exchange", ""]
        inputs = ", ".join(Path(str((v or {}).get("path", "?"))).name for v in (result.get("inputs") or {}).values())
        lines.append(f"{label}: two test speakers ({inputs}), each decoded with the other's w (own past). ")
        lines += [exchange_verdict(result.get("check") or {}), ""]
        if (folder / "swap_w.png").is_file():
            dest = fig_dir / f"swap-w-{name}.png"
            shutil.copyfile(folder / "swap_w.png", dest)
            lines += [f"![{label}: the w exchange]({GENERATION_FIGURES}/{dest.name})", ""]
    return lines


def _cost_section(out: Path) -> list[str]:
    cost = read_json(out / COST_FILE)
    if cost is None:
        return []
    about = cost.pop("_about", {})
    lines = [
        "## Cost",
        "",
        f"Measured in one process after training ({about.get('device', '?')}, {about.get('threads', '?')} torch "
        f"threads): training step of batch {about.get('batch_size', '?')} x {about.get('seq_len', '?')} frames, and "
        f"generation of one {about.get('generate_frames', '?')}-frame sample (median of 2 after a warm-up), with the "
        "native ops and with the pure-PyTorch references (`LIGHTDVAE_BACKEND=ref`). s / epoch: the training run's "
        "median epoch.",
        "",
        "| model | s / epoch | train step ref (ms) | native (ms) | speed-up | generation ref (s per s of audio) "
        "| native | speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    return lines + [_cost_row(row) for row in cost.values()] + [""]


def _cost_row(row: dict) -> str:
    ref, nat = row["backends"].get("ref", {}), row["backends"].get("native", {})

    def ratio(k):
        return f"{ref[k] / nat[k]:.2f}x" if ref.get(k) and nat.get(k) else ""

    return (
        f"| {row['label']} | {row.get('epoch_s') or ''} | {1000 * ref.get('train_step_s', float('nan')):.1f} | "
        f"{1000 * nat.get('train_step_s', float('nan')):.1f} | {ratio('train_step_s')} | "
        f"{ref.get('generate_s_per_audio_s', float('nan')):.3f} | "
        f"{nat.get('generate_s_per_audio_s', float('nan')):.3f} "
        f"| {ratio('generate_s_per_audio_s')} |"
    )
