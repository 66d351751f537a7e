"""The stages of an experiment after the corpus, each resumable and each a function of one :class:`Context`:
training every model within its budget (:func:`train_all`), evaluating the trained ones (:func:`evaluate_all`),
sampling them with FDSD (:func:`generate_all`), and measuring their cost with the native and the reference ops
(:func:`cost_all`)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from lightdvae._io import read_json, sha256_file, write_json
from lightdvae.experiments.budget import SS_FRACTIONS, WARMUP_FRACTION, schedule_for_budget, step_seconds
from lightdvae.experiments.config import ExperimentConfig
from lightdvae.experiments.entries import ENTRIES, Entry
from lightdvae.experiments.state import COST_FILE, ExperimentState, run_dir
from lightdvae.report import COST_KIND
from lightdvae.runs import checkpoint_path, read_config, read_log, read_status
from lightdvae.runtime import backend_scope, idle_cores, sync, thread_scope

if TYPE_CHECKING:
    from lightdvae.train import TrainConfig

__all__ = ["Context", "train_all", "evaluate_all", "generate_all", "cost_all", "trained", "trained_runs"]

#: How a training that needs no more time ended (``status.json``'s state).
ENDED = ("finished", "early_stopped", "time_limit")


@dataclass(frozen=True)
class Context:
    """What every stage works with: the settings, the state file, the experiment folder, the device, where
    messages go (``say``) and the progress-bar choice (None: on a terminal)."""

    cfg: ExperimentConfig
    state: ExperimentState
    out: Path
    device: torch.device
    say: Callable[[str], None]
    progress: bool | None = None

    def run_dir(self, key: str) -> Path:
        return run_dir(self.out, key)


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------
def train_all(ctx: Context) -> None:
    """Train every model within its budget, resuming an interrupted run with what is left of its budget; a run
    that diverges is recorded and the others go on."""
    batches = functools.cache(lambda: _batches_per_epoch(ctx))
    for i, key in enumerate(ctx.cfg.models, 1):
        head = f"[{i}/{len(ctx.cfg.models)}] {ENTRIES[key].label}"
        tcfg = _train_config(ctx, key, head, batches)
        if tcfg is not None:
            _train_one(ctx, key, head, tcfg)


def _batches_per_epoch(ctx: Context) -> tuple[int, int]:
    from lightdvae.train import steps_per_epoch

    cfg = ctx.cfg
    return steps_per_epoch(cfg.data, cfg.seq_len, cfg.batch_size, progress=ctx.progress)


def _train_config(ctx: Context, key: str, head: str, batches: Callable[[], tuple[int, int]]) -> TrainConfig | None:
    """The training settings of the model ``key`` (a fresh run or the rest of an interrupted one), or None when
    its training has ended (recorded in the state)."""
    info = ctx.state.model(key)
    run = ctx.run_dir(key)
    status = (read_status(run) or {}).get("state")
    if status in ENDED:
        info.setdefault("training", status)
        return None
    if status == "diverged":
        info["training"] = "diverged"
        return None
    if status in ("running", "interrupted") and checkpoint_path(run, "last").is_file():
        return _resume_config(ctx, key, head)
    return _fresh_config(ctx, key, head, batches)


def _resume_config(ctx: Context, key: str, head: str) -> TrainConfig | None:
    from lightdvae.train import resume_config

    run, budget = ctx.run_dir(key), ctx.cfg.budget_minutes(key)
    spent = float(sum(r["seconds"] for r in read_log(run) if isinstance(r.get("seconds"), float)))
    left = budget - spent / 60.0
    if left <= 0.05:
        ctx.state.model(key)["training"] = "time_limit"
        ctx.state.save()
        return None
    ctx.say(f"{head}: resuming training ({left:.1f} of {budget:.1f} min left)")
    threads = idle_cores()
    if (read_config(run).get("training") or {}).get("budget_schedule"):
        return resume_config(run, quiet=True, threads=threads)  # the run counts its budget from its log
    return resume_config(run, max_minutes=left, quiet=True, threads=threads)


def _fresh_config(ctx: Context, key: str, head: str, batches: Callable[[], tuple[int, int]]) -> TrainConfig:
    """A new run's settings, its schedule scaled to the budget (measured once, then kept in the state)."""
    from lightdvae.train import TrainConfig

    cfg, entry, info, run = ctx.cfg, ENTRIES[key], ctx.state.model(key), ctx.run_dir(key)
    budget = cfg.budget_minutes(key)
    sched = info.get("schedule")
    threads = idle_cores()  # one per core left idle by other processes: a shared machine costs its share only
    if sched is None:
        train_batches, val_batches = batches()
        with thread_scope(threads):
            step_s = step_seconds(entry, cfg.batch_size, cfg.seq_len, ctx.device)
        sched = schedule_for_budget(entry, budget, train_batches, val_batches, step_s)
        info["schedule"] = sched
        ctx.state.save()
    ramp = "ss_start" in sched
    ctx.say(
        f"{head}: training for {budget:.1f} min on {threads} thread{'s' if threads > 1 else ''}: about "
        f"{sched['epochs']} epochs"
        f" of ~{sched['epoch_seconds_estimate']:.0f} s"
        f" (KL warm-up over {WARMUP_FRACTION:.0%} of the time"
        + (f", scheduled sampling from {SS_FRACTIONS[0]:.0%} to {SS_FRACTIONS[1]:.0%}" if ramp else "")
        + ")"
    )
    extra = {"ss_start": sched["ss_start"], "ss_end": sched["ss_end"]} if ramp else {}
    return TrainConfig(
        model=entry.model,
        out=str(run),
        data=cfg.data,
        model_config=dict(entry.model_config),
        training=entry.training,
        epochs=sched["epochs"],
        max_minutes=budget,
        batch_size=cfg.batch_size,
        lr=cfg.lr_of(key),
        beta=cfg.beta,
        kl_warmup_epochs=sched["kl_warmup_epochs"],
        patience=0,
        budget_schedule=True,
        threads=threads,
        seq_len=cfg.seq_len,
        device=str(ctx.device),
        seed=cfg.seed,
        quiet=True,
        force=run.exists(),
        **extra,
    )


def _train_one(ctx: Context, key: str, head: str, tcfg: TrainConfig) -> None:
    from lightdvae.train import TrainingDiverged, train

    info = ctx.state.model(key)
    try:
        result = train(tcfg, callback=_epoch_reporter(ctx, head, tcfg))
    except TrainingDiverged as exc:
        info["training"] = "diverged"
        info["error"] = str(exc)
        ctx.state.save()
        ctx.say(f"{head}: training diverged ({exc}); going on with the other models")
        return
    info.update(
        training=result.stop_reason,
        epochs=result.epochs,
        best_epoch=result.best_epoch,
        best_val_loss=round(float(result.best_val_loss), 4),
        parameters=int(result.model.num_parameters()),
        threads=tcfg.threads,
    )
    ctx.state.save()
    ctx.say(
        f"{head}: {result.epochs} epochs in {result.seconds / 60:.1f} min, best validation loss "
        f"{result.best_val_loss:.2f} (epoch {result.best_epoch})"
    )


def _epoch_reporter(ctx: Context, head: str, tcfg: TrainConfig, every: float = 15.0) -> Callable[[dict], None]:
    """A training callback that says where a model's training stands (epoch, validation loss, time spent of its
    budget), at most once per ``every`` seconds: minutes of training are never silent."""
    done = read_log(tcfg.out) if tcfg.resume else []  # a resumed run's budget counts its earlier sessions
    last = {
        "t": time.perf_counter(),
        "spent": float(sum(r["seconds"] for r in done if isinstance(r.get("seconds"), float))),
    }
    budget = 60.0 * float(tcfg.max_minutes or 0.0)

    def report(row: dict) -> None:
        last["spent"] += float(row.get("seconds") or 0.0)
        now = time.perf_counter()
        if now - last["t"] < every:
            return
        last["t"] = now
        of = f" of {budget:.0f}" if budget else ""
        ctx.say(f"{head}: epoch {row['epoch']}, validation loss {row['val_loss']:.1f}, {last['spent']:.0f}{of} s")

    return report


def trained(ctx: Context, key: str) -> bool:
    """Whether the model ``key`` ended its training with weights (not diverged, a best checkpoint)."""
    return (ctx.state.model(key).get("training") not in (None, "diverged")) and checkpoint_path(
        ctx.run_dir(key), "best"
    ).is_file()


def trained_runs(ctx: Context) -> Iterator[tuple[str, Entry, Path, str]]:
    """``(key, entry, run_dir, sha256 of best.pt)`` of every model whose training ended with weights."""
    for key in ctx.cfg.models:
        if trained(ctx, key):
            run = ctx.run_dir(key)
            yield key, ENTRIES[key], run, sha256_file(checkpoint_path(run, "best"))


# ----------------------------------------------------------------------------------------------------------------
# Evaluation, generation
# ----------------------------------------------------------------------------------------------------------------
def evaluate_all(ctx: Context) -> None:
    """Evaluate every trained model on whole test utterances: GEN past, and GT past too for the models that see
    past speech.  An evaluation of the same weights is not repeated; one of older weights is replaced."""
    from lightdvae.evaluate import STATE, default_out_dir, evaluate_run

    for key, entry, run, sha in trained_runs(ctx):
        evals = ctx.state.model(key).setdefault("eval", {})
        for past in ("gen", "gt") if entry.sees_past_speech else ("gen",):
            if (evals.get(past) or {}).get("sha256") == sha:
                continue
            old = (read_json(default_out_dir(run, "test", past) / STATE) or {}).get("fingerprint") or {}
            stale = old.get("checkpoint_sha256") not in (None, sha)
            ctx.say(f"evaluating {entry.label} ({past.upper()} past) on the test split")
            summary = evaluate_run(
                run,
                split="test",
                past=past,
                device=ctx.device,
                max_files=ctx.cfg.eval_max_files,
                overwrite=stale,
                progress=ctx.progress,
                figures=2,
            )
            m = summary["metrics"]
            evals[past] = {"sha256": sha, "si_sdr": m["si_sdr"]["mean"], "pesq_wb": m.get("pesq_wb", {}).get("mean")}
            ctx.state.save()


def generate_all(ctx: Context) -> None:
    """Sample every trained model's prior (Griffin-Lim), with FDSD against the test split."""
    from lightdvae.generation import generate_run

    cfg = ctx.cfg
    for key, entry, run, sha in trained_runs(ctx):
        info = ctx.state.model(key)
        if (info.get("generation") or {}).get("sha256") == sha:
            continue
        ctx.say(f"generating {cfg.gen_n} samples of {cfg.gen_frames} frames with {entry.label}, FDSD")
        manifest = generate_run(
            run,
            n=cfg.gen_n,
            frames=cfg.gen_frames,
            seed=cfg.seed,
            device=ctx.device,
            fdsd_draws=cfg.fdsd_draws,
            quiet=True,
            progress=ctx.progress,
            overwrite=True,
        )
        info["generation"] = {"sha256": sha, "out": str(Path(manifest["out"]).resolve()) if "out" in manifest else None}
        ctx.state.save()


# ----------------------------------------------------------------------------------------------------------------
# Cost
# ----------------------------------------------------------------------------------------------------------------
def cost_all(ctx: Context) -> None:
    """Training step and generation time per model, native vs reference ops, measured here, now (``cost.json``,
    rewritten after each model)."""
    from lightdvae import _ext

    cfg, path = ctx.cfg, ctx.out / COST_FILE
    cost = {k: v for k, v in (read_json(path) or {}).items() if not k.startswith("_") and k != "kind"}
    backends = ["ref", "native"] if _ext.HAS_NATIVE else ["ref"]
    for key in cfg.models:
        if key in cost or not trained(ctx, key):
            continue
        ctx.say(f"measuring the cost of {ENTRIES[key].label} (native vs reference ops)")
        cost[key] = _cost_row(ctx, key, backends)
        about = {
            "batch_size": cfg.batch_size,
            "seq_len": cfg.seq_len,
            "generate_frames": cfg.gen_frames,
            "device": str(ctx.device),
            "threads": torch.get_num_threads(),
        }
        write_json(path, {**cost, "kind": COST_KIND, "_about": about})


def _cost_row(ctx: Context, key: str, backends: list[str]) -> dict:
    """One model's row of ``cost.json``: step and generation time per backend, its epochs and parameters."""
    from lightdvae.runs import load_run

    cfg, entry, device = ctx.cfg, ENTRIES[key], ctx.device
    frames = cfg.gen_frames
    seconds_audio = frames * 256 / 16000
    row: dict = {"label": entry.label, "backends": {}}
    model = load_run(ctx.run_dir(key), which="best", device=device).eval()
    for be in backends:
        with backend_scope(be):
            step = step_seconds(entry, cfg.batch_size, cfg.seq_len, device)
            gen_s = _generate_seconds(model, frames, device)
        row["backends"][be] = {
            "train_step_s": round(step, 5),
            "generate_s": round(gen_s, 5),
            "generate_s_per_audio_s": round(gen_s / seconds_audio, 5),
        }
    epochs = read_log(ctx.run_dir(key))
    row["epoch_s"] = round(float(np.median([r["seconds"] for r in epochs])), 2) if epochs else None
    row["epochs"] = len(epochs)
    row["parameters"] = int(model.num_parameters())
    return row


def _generate_seconds(model, frames: int, device: torch.device) -> float:
    """Median time of generating one ``frames``-frame sample, over 2 runs after a warm-up."""
    times = []
    with torch.inference_mode():
        for i in range(3):
            g = torch.Generator(device=device).manual_seed(i)
            sync(device)
            t0 = time.perf_counter()
            model.generate(1, frames=frames, generator=g)
            sync(device)
            times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))
