"""Experiments: several models trained on one corpus under one time budget, evaluated the paper's way, sampled,
and written up as a results folder.  ``lightdvae demo`` and ``lightdvae reproduce`` are two presets of
:func:`run_experiment`.

An experiment folder ``OUT`` holds::

    experiment.json        settings, each model's schedule, what is done, wall time per stage (written atomically)
    runs/<key>/            one training run per model (``lightdvae train`` layout, with its eval/ and generate/ folders)
    cost.json              training step and generation time per model, native vs reference ops, same process
    report/README.md       the tables (analysis-resynthesis, GEN/GT structure study, FDSD), findings, cost, figures

Stages, each resumable (an interrupted experiment continues where it stopped when the same command is run again):

1. the corpus (the built-in one is synthesised on first use; needs espeak-ng);
2. training: every model gets the same wall-clock budget (``minutes_per_model``; the demo weights LigHT-DVAE
   double).  The schedule is scaled to the budget: the step time of the model is measured on a few batches, the
   number of epochs that fit is derived from it, and the KL warm-up (30 % of them) and, for SRNN (SS), the
   scheduled-sampling ramp (from 1/6 to 1/2 of them, the published 50 -> 150 of 300) follow.  Adam runs at each
   model's rate (:attr:`Entry.lr`: 1e-3 for the classic DVAEs, 3e-4 for the transformer DVAEs).  Early stopping is
   off (a budget run is short); the best validation weights are kept.  A run that diverges is reported, the others
   go on;
3. evaluation of whole test utterances: GEN past for every model, GT past too for the models that see past speech;
4. generation from the prior with Griffin-Lim, and FDSD against the test split with its real-vs-real floor;
5. cost: one process measures each model's training step and generation time with the native ops and with the
   pure-PyTorch references (``LIGHTDVAE_BACKEND``), so the ratios come from one run on one machine;
6. the report, with the findings of the paper checked (:func:`findings`) when their models are present.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lightdvae._io import atomic_write_json, atomic_write_text, sha256_file, utc_now
from lightdvae.cli import UserError

__all__ = [
    "Entry",
    "ENTRIES",
    "DEMO_MODELS",
    "PAPER_MODELS",
    "ExperimentConfig",
    "ExperimentError",
    "run_experiment",
    "schedule_for_budget",
    "findings",
    "ensure_espeak",
]

KIND = "lightdvae-experiment"
FORMAT_VERSION = 1
STATE_FILE = "experiment.json"
COST_FILE = "cost.json"
REPORT_DIR = "report"
WARMUP_FRACTION = 0.3  #: KL warm-up, as a fraction of the epochs that fit the budget
SS_FRACTIONS = (1 / 6, 1 / 2)  #: scheduled-sampling ramp of SRNN (SS): the published epochs 50 -> 150 of 300
COLLAPSE_DB = 3.0  #: GEN SI-SDR this far below GT SI-SDR (paired mean over files) is called a collapse
SAME_DB = 1.0  #: two SI-SDR means closer than this (paired, dB) are called the same
BASELINE_LR = 1e-3  #: Adam learning rate of the classic DVAEs: the published protocol (SPEC section 6)
#: Adam learning rate of the transformer DVAEs.  At 1e-3 the post-norm transformers collapse their latents on a
#: short budget (validation KL 0.9-1.8 nats per frame after 5 minutes, GEN SI-SDR -4.3 to -4.9 dB on the built-in
#: corpus); at 3e-4 LigHT-DVAE keeps its latents (KL 37) and halves its validation loss in the same 5 minutes
#: (README, "Reproducing the paper's findings").
TRANSFORMER_LR = 3e-4


class ExperimentError(UserError):
    """A setting or an experiment folder the user got wrong: printed as one line."""


# ----------------------------------------------------------------------------------------------------------------
# The models of the paper
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """One trained model of an experiment: a registry name, config overrides, the training mode and its Adam
    learning rate (an experiment's ``lr`` overrides it for every model)."""

    key: str
    model: str
    model_config: dict = field(default_factory=dict)
    training: str = "tf"
    lr: float = BASELINE_LR

    @property
    def label(self) -> str:
        from lightdvae.evaluate import model_label

        return model_label(self.model, self.model_config, self.training)

    @property
    def sees_past_speech(self) -> bool:
        return self.model not in ("vae", "dkf", "rvae", "rvae-causal")


def _entries() -> dict[str, Entry]:
    items = [
        Entry("vae", "vae"),
        Entry("dkf", "dkf"),
        Entry("rvae", "rvae"),
        Entry("srnn-tf", "srnn"),
        Entry("srnn-ss", "srnn", training="ss"),
        Entry("hit-dvae", "hit-dvae", lr=TRANSFORMER_LR),
        Entry("light-dvae", "light-dvae", lr=TRANSFORMER_LR),
    ]
    for base, key in (("hit-dvae", "hit"), ("light-dvae", "light")):
        items.append(Entry(f"{key}-inv-s", base, {"inv_s": True}, lr=TRANSFORMER_LR))
        items.append(Entry(f"{key}-inv-s-nr", base, {"inv_s": True, "no_residual": True}, lr=TRANSFORMER_LR))
    return {e.key: e for e in items}


#: Every model the experiments know, by key (``lightdvae reproduce --models`` takes these keys).
ENTRIES: dict[str, Entry] = _entries()
#: The demo: LigHT-DVAE and two baselines (DKF: the strongest classic model for its size; SRNN trained with
#: teacher forcing: the model whose GEN collapse the paper shows).
DEMO_MODELS = ("light-dvae", "dkf", "srnn-tf")
#: The paper's eleven models (main table and structure study).
PAPER_MODELS = (
    "vae",
    "dkf",
    "rvae",
    "srnn-tf",
    "srnn-ss",
    "hit-dvae",
    "light-dvae",
    "hit-inv-s",
    "hit-inv-s-nr",
    "light-inv-s",
    "light-inv-s-nr",
)


def parse_models(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"light-dvae,dkf"`` / ``"all"`` / a list -> entry keys, checked."""
    items = [t.strip().lower() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if items == ["all"]:
        return PAPER_MODELS
    if items == ["demo"]:
        return DEMO_MODELS
    unknown = [t for t in items if t not in ENTRIES]
    if unknown or not items:
        raise ExperimentError(
            f"unknown model key(s) {', '.join(unknown) or '(none given)'}; valid: all, demo, {', '.join(ENTRIES)}"
        )
    if len(set(items)) != len(items):
        raise ExperimentError(f"a model is listed twice in {','.join(items)}")
    return tuple(items)


# ----------------------------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class ExperimentConfig:
    """What an experiment depends on (stored in ``experiment.json``; a folder holding a different experiment is
    refused unless ``overwrite``).

    out: the experiment folder.  models: entry keys (:data:`ENTRIES`).  data: corpus spec (``builtin``,
    ``wsj0:DIR``, ``vb:DIR``, ``DIR``).  minutes_per_model: training budget of one model (wall clock, this
    machine); ``weights`` multiplies it per key (the demo gives LigHT-DVAE 2).  batch_size, seq_len, beta: the
    training settings (batch 32 rather than the published 128: four times the optimizer steps in a short budget).
    lr: Adam's learning rate for every model; None (default): each model's own (:attr:`Entry.lr`: 1e-3 for the
    classic DVAEs, 3e-4 for the transformer DVAEs).
    eval_max_files: evaluate only the first N test files (None: all).  gen_n, gen_frames: generated samples and
    their length (frames; 188 = 3 s).  fdsd_draws: FDSD repeated draws.  cost: measure native vs reference cost.
    device: ``auto``, ``cpu``, ``cuda``.  seed: training seeds.  corpus_minutes: size of the built-in corpus.
    """

    out: str
    models: tuple[str, ...] = DEMO_MODELS
    data: str = "builtin"
    minutes_per_model: float = 5.0
    weights: dict = field(default_factory=dict)
    batch_size: int = 32
    lr: float | None = None
    seq_len: int = 50
    beta: float = 1e-2
    eval_max_files: int | None = None
    gen_n: int = 32
    gen_frames: int = 188
    fdsd_draws: int = 10
    cost: bool = True
    device: str = "auto"
    seed: int = 0
    corpus_minutes: float | None = None
    title: str = "lightdvae results"

    def validate(self) -> ExperimentConfig:
        self.models = parse_models(self.models)
        if not (isinstance(self.minutes_per_model, (int, float)) and math.isfinite(self.minutes_per_model)):
            raise ExperimentError(f"minutes per model must be a number, got {self.minutes_per_model!r}")
        if self.minutes_per_model <= 0:
            raise ExperimentError(f"minutes per model must be > 0, got {self.minutes_per_model}")
        for name, value, low in (
            ("batch size", self.batch_size, 1),
            ("seq_len", self.seq_len, 2),
            ("gen_n", self.gen_n, 2),
            ("gen_frames", self.gen_frames, 2),
            ("fdsd draws", self.fdsd_draws, 1),
        ):
            if not isinstance(value, int) or value < low:
                raise ExperimentError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.lr is not None and (
            isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not 0 < self.lr < math.inf
        ):
            raise ExperimentError(f"lr must be a finite number > 0 (or None: each model's own), got {self.lr!r}")
        if self.eval_max_files is not None and (not isinstance(self.eval_max_files, int) or self.eval_max_files < 1):
            raise ExperimentError(f"eval max files must be an integer >= 1, got {self.eval_max_files!r}")
        bad = sorted(set(self.weights) - set(self.models))
        if bad:
            raise ExperimentError(f"budget weights given for models not in the experiment: {', '.join(bad)}")
        return self

    def budget_minutes(self, key: str) -> float:
        return float(self.minutes_per_model) * float(self.weights.get(key, 1.0))

    def lr_of(self, key: str) -> float:
        """Adam's learning rate of the model ``key``: ``lr`` when set, else the entry's own."""
        return float(self.lr) if self.lr is not None else ENTRIES[key].lr

    def fingerprint(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("out")
        d.pop("title")
        d["models"] = list(self.models)
        return d


# ----------------------------------------------------------------------------------------------------------------
# State
# ----------------------------------------------------------------------------------------------------------------
class _State:
    """``experiment.json``: settings, per-model schedule and progress, wall time per stage over sessions."""

    def __init__(self, out: Path, cfg: ExperimentConfig, overwrite: bool):
        self.path = out / STATE_FILE
        data = None
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError):
                data = None
            if data is None or data.get("kind") != KIND:
                raise ExperimentError(f"{self.path} is not a lightdvae experiment file; use another --out")
            if data.get("settings") != cfg.fingerprint():
                if not overwrite:
                    old = data.get("settings") or {}
                    new = cfg.fingerprint()
                    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                    raise ExperimentError(
                        f"{out} holds an experiment with other settings (differs in: {', '.join(diff)}); "
                        "run the same command to resume it, pass --overwrite to start over, or use another --out"
                    )
                data = None
        elif out.is_dir() and any(out.iterdir()) and not overwrite:
            raise ExperimentError(
                f"{out} exists and is not an experiment folder; choose another --out (or --overwrite to use it)"
            )
        if data is None and overwrite:
            for name in (STATE_FILE, COST_FILE):
                (out / name).unlink(missing_ok=True)
            for sub in ("runs", REPORT_DIR):
                if (out / sub).is_dir():
                    shutil.rmtree(out / sub)
        self.data = data or {
            "kind": KIND,
            "format": FORMAT_VERSION,
            "created": utc_now(),
            "settings": cfg.fingerprint(),
            "models": {},
            "stages": {},
            "done": [],
            "sessions": 0,
        }
        self.data["sessions"] = int(self.data.get("sessions", 0)) + 1
        self.data["updated"] = utc_now()
        self.save()

    def save(self) -> None:
        self.data["updated"] = utc_now()
        atomic_write_json(self.path, self.data)

    def model(self, key: str) -> dict:
        return self.data["models"].setdefault(key, {})

    @contextlib.contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            stages = self.data["stages"]
            stages[name] = round(float(stages.get(name, 0.0)) + time.perf_counter() - t0, 2)
            self.save()

    @property
    def wall_seconds(self) -> float:
        return float(sum(self.data["stages"].values()))


# ----------------------------------------------------------------------------------------------------------------
# espeak-ng
# ----------------------------------------------------------------------------------------------------------------
def ensure_espeak(say: Callable[[str], None] = print, install: bool = True) -> str:
    """The espeak-ng executable; when it is missing and this is a Debian/Ubuntu system where we are root, install
    it with apt-get (the built-in corpus needs it).  Raises :class:`ExperimentError` with what to do otherwise."""
    from lightdvae.data.builtin import ESPEAK_INSTALL_HINT, EspeakNotFound, espeak_path

    try:
        return espeak_path()
    except EspeakNotFound:
        pass
    apt = shutil.which("apt-get")
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    if not (install and apt and root):
        why = "" if install else " (--no-install given)"
        raise ExperimentError(
            f"the built-in corpus is synthesised with espeak-ng, which is not installed{why}; {ESPEAK_INSTALL_HINT}"
        ) from None
    say("espeak-ng is missing: installing it with apt-get (the built-in corpus is synthesised with it)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", "espeak-ng"]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise ExperimentError(
                f"`{' '.join(cmd[1:])}` failed ({'; '.join(tail) or f'exit {proc.returncode}'}); "
                f"install espeak-ng yourself: {ESPEAK_INSTALL_HINT}"
            )
    return espeak_path()


# ----------------------------------------------------------------------------------------------------------------
# Budget -> schedule
# ----------------------------------------------------------------------------------------------------------------
def _step_seconds(entry: Entry, batch_size: int, seq_len: int, device: torch.device, steps: int = 3) -> float:
    """Median wall time of one training step (forward, loss, backward, Adam) on random spectrograms."""
    from lightdvae import models
    from lightdvae.train import train_step

    torch.manual_seed(0)
    model = models.build(entry.model, **entry.model_config).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    power = torch.rand(batch_size, seq_len, 513, device=device) ** 2 + 1e-4
    kwargs = {"ss_prob": 0.5} if entry.training == "ss" else {}
    times = []
    for i in range(steps + 1):
        _sync(device)
        t0 = time.perf_counter()
        train_step(model, opt, power, forward_kwargs=kwargs)
        _sync(device)
        if i:  # the first step allocates and warms up
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def schedule_for_budget(
    entry: Entry, minutes: float, steps_per_epoch: int, val_steps: int, step_seconds: float
) -> dict:
    """Epochs, KL warm-up and scheduled-sampling ramp that fit ``minutes`` of training.

    An epoch costs ``steps_per_epoch`` training steps plus the validation pass (about a third of a step per
    validation batch: forward only) and a little bookkeeping."""
    epoch_s = step_seconds * (steps_per_epoch + val_steps / 3.0) + 0.5
    epochs = max(2, int(60.0 * minutes / epoch_s))
    sched = {
        "minutes": round(float(minutes), 3),
        "step_seconds": round(step_seconds, 4),
        "epoch_seconds_estimate": round(epoch_s, 2),
        "epochs": epochs,
        "kl_warmup_epochs": max(1, round(WARMUP_FRACTION * epochs)),
    }
    if entry.training == "ss":
        start, end = (max(1, round(f * epochs)) for f in SS_FRACTIONS)
        sched.update(ss_start=start, ss_end=max(start, end))
    return sched


# ----------------------------------------------------------------------------------------------------------------
# The experiment
# ----------------------------------------------------------------------------------------------------------------
def run_experiment(
    cfg: ExperimentConfig,
    *,
    overwrite: bool = False,
    install_espeak: bool = True,
    say: Callable[[str], None] | None = None,
    progress: bool | None = None,
) -> dict:
    """Run (or resume) the experiment ``cfg``; returns ``{"report": path, "state": experiment.json contents}``.

    Raises:
        ExperimentError / DataError / ConfigError (all :class:`lightdvae.cli.UserError`): bad settings, a folder
        holding another experiment, no corpus, espeak-ng missing and not installable.
    """
    cfg = dataclasses.replace(cfg).validate()
    say = say or (lambda text: print(text, flush=True))
    _check_packages()
    out = Path(cfg.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    state = _State(out, cfg, overwrite)
    from lightdvae.train import _parse_device

    device = _parse_device(cfg.device) or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ExperimentError("--device cuda: no CUDA GPU is visible (use --device cpu or auto)")
    state.data["device"] = str(device)

    with state.stage("corpus"):
        corpus = _corpus(cfg, install_espeak, say, progress)
    stages = [("training", _train_all), ("evaluation", _evaluate_all), ("generation", _generate_all)]
    if cfg.cost:
        stages.append(("cost", _cost_all))
    for name, func in stages:
        if name in state.data["done"]:
            continue
        with state.stage(name):
            func(cfg, state, out, device, say, progress)
        state.data["done"].append(name)
        state.save()
    with state.stage("report"):
        path = _write_report(cfg, state, out, corpus)
    say(f"report: {path}")
    return {"report": path, "state": state.data}


def _check_packages() -> None:
    """The evaluation's packages, checked before any training so that a missing one costs nothing."""
    import importlib.util

    missing = [m for m in ("pesq", "pystoi", "matplotlib") if importlib.util.find_spec(m) is None]
    if missing:
        raise ExperimentError(
            f"the evaluation needs {', '.join(missing)}: pip install 'lightdvae[eval]' "
            "(pesq builds from source: with --no-build-isolation, install numpy and cython first)"
        )


def _corpus(cfg: ExperimentConfig, install_espeak: bool, say, progress):
    from lightdvae.data import resolve_corpus

    spec = cfg.data.strip()
    if spec.lower() == "builtin":
        from lightdvae.data.corpora import builtin_corpus_dir

        if not (Path(builtin_corpus_dir()) / "corpus.json").is_file():
            ensure_espeak(say, install_espeak)
            say(f"building the built-in corpus in {builtin_corpus_dir()} (espeak-ng; once)")
    return resolve_corpus(spec, build=True, minutes=cfg.corpus_minutes, progress=progress)


def _run_dir(out: Path, key: str) -> Path:
    return out / "runs" / key


def _train_all(cfg: ExperimentConfig, state: _State, out: Path, device: torch.device, say, progress) -> None:
    from lightdvae.data import make_loaders
    from lightdvae.runs import LOG_FILE, read_status
    from lightdvae.train import TrainConfig, TrainingDiverged, resume_config, train

    loaders = None
    for i, key in enumerate(cfg.models, 1):
        entry = ENTRIES[key]
        info = state.model(key)
        run = _run_dir(out, key)
        status = (read_status(run) or {}).get("state") if (run / "status.json").is_file() else None
        if status in ("finished", "early_stopped", "time_limit"):
            info.setdefault("training", status)
            continue
        if status == "diverged":
            info["training"] = "diverged"
            continue
        budget = cfg.budget_minutes(key)
        head = f"[{i}/{len(cfg.models)}] {entry.label}"
        if status in ("running", "interrupted") and (run / "checkpoints" / "last.pt").is_file():
            spent = _logged_seconds(run / LOG_FILE)
            left = budget - spent / 60.0
            if left <= 0.05:
                info["training"] = "time_limit"
                state.save()
                continue
            say(f"{head}: resuming training ({left:.1f} of {budget:.1f} min left)")
            tcfg = resume_config(run, max_minutes=left, quiet=True)
        else:
            if loaders is None:
                loaders = make_loaders(
                    cfg.data, segment_frames=cfg.seq_len, batch_size=cfg.batch_size, progress=progress
                )
            sched = info.get("schedule")
            if sched is None:
                step_s = _step_seconds(entry, cfg.batch_size, cfg.seq_len, device)
                sched = schedule_for_budget(entry, budget, len(loaders.train), len(loaders.val or ()), step_s)
                info["schedule"] = sched
                state.save()
            say(
                f"{head}: training for {budget:.1f} min: {sched['epochs']} epochs"
                f" of ~{sched['epoch_seconds_estimate']:.0f} s"
                f" (KL warm-up {sched['kl_warmup_epochs']} epochs"
                + (f", scheduled sampling {sched['ss_start']}->{sched['ss_end']}" if "ss_start" in sched else "")
                + ")"
            )
            extra = {"ss_start": sched["ss_start"], "ss_end": sched["ss_end"]} if "ss_start" in sched else {}
            tcfg = TrainConfig(
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
                seq_len=cfg.seq_len,
                device=str(device),
                seed=cfg.seed,
                quiet=True,
                force=run.exists(),
                **extra,
            )
        try:
            result = train(tcfg)
        except TrainingDiverged as exc:
            info["training"] = "diverged"
            info["error"] = str(exc)
            state.save()
            say(f"{head}: training diverged ({exc}); going on with the other models")
            continue
        info.update(
            training=result.stop_reason,
            epochs=result.epochs,
            best_epoch=result.best_epoch,
            best_val_loss=round(float(result.best_val_loss), 4),
            parameters=int(result.model.num_parameters()),
        )
        state.save()
        say(
            f"{head}: {result.epochs} epochs in {result.seconds / 60:.1f} min, best validation loss "
            f"{result.best_val_loss:.2f} (epoch {result.best_epoch})"
        )


def _logged_seconds(path: Path) -> float:
    return float(sum(r["seconds"] for r in _log_rows(path) if isinstance(r.get("seconds"), float)))


def _trained(state: _State, key: str, out: Path) -> bool:
    return (state.model(key).get("training") not in (None, "diverged")) and (
        _run_dir(out, key) / "checkpoints" / "best.pt"
    ).is_file()


def _trained_runs(cfg: ExperimentConfig, state: _State, out: Path):
    """``(key, entry, run_dir, sha256 of best.pt)`` of every model whose training ended with weights."""
    for key in cfg.models:
        if _trained(state, key, out):
            run = _run_dir(out, key)
            yield key, ENTRIES[key], run, sha256_file(run / "checkpoints" / "best.pt")


def _evaluate_all(cfg: ExperimentConfig, state: _State, out: Path, device, say, progress) -> None:
    from lightdvae.evaluate import STATE, default_out_dir, evaluate_run

    for key, entry, run, sha in _trained_runs(cfg, state, out):
        evals = state.model(key).setdefault("eval", {})
        for past in ("gen", "gt") if entry.sees_past_speech else ("gen",):
            if (evals.get(past) or {}).get("sha256") == sha:
                continue
            folder = default_out_dir(run, "test", past)
            stale = False
            if (folder / STATE).is_file():
                with contextlib.suppress(OSError, ValueError):
                    old = json.loads((folder / STATE).read_text()).get("fingerprint") or {}
                    stale = old.get("checkpoint_sha256") not in (None, sha)
            say(f"evaluating {entry.label} ({past.upper()} past) on the test split")
            summary = evaluate_run(
                run,
                split="test",
                past=past,
                device=device,
                max_files=cfg.eval_max_files,
                overwrite=stale,
                progress=progress,
                figures=2,
            )
            m = summary["metrics"]
            evals[past] = {"sha256": sha, "si_sdr": m["si_sdr"]["mean"], "pesq_wb": m.get("pesq_wb", {}).get("mean")}
            state.save()


def _generate_all(cfg: ExperimentConfig, state: _State, out: Path, device, say, progress) -> None:
    from lightdvae.generation import generate_run

    for key, entry, run, sha in _trained_runs(cfg, state, out):
        info = state.model(key)
        if (info.get("generation") or {}).get("sha256") == sha:
            continue
        say(f"generating {cfg.gen_n} samples of {cfg.gen_frames} frames with {entry.label}, FDSD")
        manifest = generate_run(
            run,
            n=cfg.gen_n,
            frames=cfg.gen_frames,
            seed=cfg.seed,
            device=device,
            fdsd_draws=cfg.fdsd_draws,
            quiet=True,
            progress=progress,
            overwrite=True,
        )
        info["generation"] = {"sha256": sha, "out": str(Path(manifest["out"]).resolve()) if "out" in manifest else None}
        state.save()


@contextlib.contextmanager
def _backend(name: str):
    old = os.environ.get("LIGHTDVAE_BACKEND")
    os.environ["LIGHTDVAE_BACKEND"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LIGHTDVAE_BACKEND", None)
        else:
            os.environ["LIGHTDVAE_BACKEND"] = old


def _cost_all(cfg: ExperimentConfig, state: _State, out: Path, device, say, progress=None) -> None:
    """Training step and generation time per model, native vs reference ops, measured here, now."""
    from lightdvae import _ext
    from lightdvae.runs import LOG_FILE, load_run

    path = out / COST_FILE
    cost = json.loads(path.read_text()) if path.is_file() else {}
    backends = ["ref", "native"] if _ext.HAS_NATIVE else ["ref"]
    frames = cfg.gen_frames
    seconds_audio = frames * 256 / 16000
    for key in cfg.models:
        if key in cost or not _trained(state, key, out):
            continue
        entry = ENTRIES[key]
        say(f"measuring the cost of {entry.label} (native vs reference ops)")
        row: dict = {"label": entry.label, "backends": {}}
        model = load_run(_run_dir(out, key), which="best", device=device).eval()
        for be in backends:
            with _backend(be):
                step = _step_seconds(entry, cfg.batch_size, cfg.seq_len, device)
                gen_s = []
                with torch.inference_mode():
                    for i in range(3):
                        g = torch.Generator(device=device).manual_seed(i)
                        _sync(device)
                        t0 = time.perf_counter()
                        model.generate(1, frames=frames, generator=g)
                        _sync(device)
                        gen_s.append(time.perf_counter() - t0)
            row["backends"][be] = {
                "train_step_s": round(step, 5),
                "generate_s": round(float(np.median(gen_s[1:])), 5),
                "generate_s_per_audio_s": round(float(np.median(gen_s[1:])) / seconds_audio, 5),
            }
        epochs = _log_rows(_run_dir(out, key) / LOG_FILE)
        row["epoch_s"] = round(float(np.median([r["seconds"] for r in epochs])), 2) if epochs else None
        row["epochs"] = len(epochs)
        row["parameters"] = int(model.num_parameters())
        cost[key] = row
        atomic_write_json(
            path,
            {
                **cost,
                "_about": {
                    "batch_size": cfg.batch_size,
                    "seq_len": cfg.seq_len,
                    "generate_frames": frames,
                    "device": str(device),
                    "threads": torch.get_num_threads(),
                },
            },
        )


def _log_rows(path: Path) -> list[dict]:
    import csv

    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [{k: _float(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _float(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


# ----------------------------------------------------------------------------------------------------------------
# Findings
# ----------------------------------------------------------------------------------------------------------------
def _per_file(out: Path, key: str, past: str) -> dict[str, float]:
    from lightdvae.evaluate import PER_FILE, default_out_dir, read_per_file

    path = default_out_dir(_run_dir(out, key), "test", past) / PER_FILE
    if not path.is_file():
        return {}
    return {r["name"]: float(r["si_sdr"]) for r in read_per_file(path) if math.isfinite(float(r["si_sdr"]))}


def _paired(a: dict[str, float], b: dict[str, float]) -> dict | None:
    """Mean of a - b over the files both have, with its 95 % t-interval."""
    from lightdvae.metrics import summarize

    names = sorted(set(a) & set(b))
    if len(names) < 2:
        return None
    s = summarize([a[n] - b[n] for n in names])
    return {"mean": s["mean"], "low": s["ci_low"], "high": s["ci_high"], "n": s["n"]}


def _fmt(d: dict | None) -> str:
    if d is None:
        return "n/a"
    return f"{d['mean']:+.2f} dB [{d['low']:+.2f}, {d['high']:+.2f}] (n={d['n']})"


def _mean(values: dict[str, float]) -> float:
    return float(np.mean(list(values.values()))) if values else float("nan")


def findings(out: str | os.PathLike, models: Sequence[str]) -> list[dict]:
    """Check the paper's findings (SPEC section 6) on the experiment's GEN/GT per-file SI-SDR.

    Each finding is ``{"finding", "verdict": "holds" | "does not hold" | "not resolved" | "not tested",
    "evidence"}``.  Differences are paired over test files (mean and 95 % t-interval):

    * the transformer DVAEs lead on SI-SDR: the better of HiT/LigHT-DVAE minus the best baseline (GEN) > 0, its
      interval above 0 (interval straddling 0: not resolved);
    * a *collapse* in GEN: GEN minus GT SI-SDR of the same model below -:data:`COLLAPSE_DB` dB with the interval
      below 0; *no collapse*: the mean gap above -:data:`COLLAPSE_DB` dB;
    * *the same*: a paired mean difference within +-:data:`SAME_DB` dB.
    """
    out = Path(out)
    have = set(models)
    gen = {k: _per_file(out, k, "gen") for k in have}
    gt = {k: _per_file(out, k, "gt") for k in have if ENTRIES[k].sees_past_speech}
    res: list[dict] = []

    def add(text, verdict, evidence):
        res.append({"finding": text, "verdict": verdict, "evidence": evidence})

    def gap(k):
        return _paired(gen.get(k) or {}, gt.get(k) or {})

    def collapses(d):
        return d is not None and d["mean"] < -COLLAPSE_DB and d["high"] < 0

    def steady(d):
        return d is not None and d["mean"] >= -COLLAPSE_DB

    # 1. transformers lead
    text = "The transformer DVAEs (HiT-DVAE, LigHT-DVAE) lead on SI-SDR (GEN)"
    tf = [k for k in ("hit-dvae", "light-dvae") if gen.get(k)]
    base = [k for k in ("vae", "dkf", "rvae", "srnn-tf", "srnn-ss") if gen.get(k)]
    if tf and base:
        best_t = max(tf, key=lambda k: _mean(gen[k]))
        best_b = max(base, key=lambda k: _mean(gen[k]))
        d = _paired(gen[best_t], gen[best_b])
        verdict = (
            "not resolved"
            if d is None
            else "holds"
            if d["low"] > 0
            else "does not hold"
            if d["mean"] <= 0
            else "not resolved"
        )
        add(
            text,
            verdict,
            f"best transformer {ENTRIES[best_t].label} {_mean(gen[best_t]):.2f} dB vs best baseline "
            f"{ENTRIES[best_b].label} {_mean(gen[best_b]):.2f} dB; paired difference {_fmt(d)}",
        )
    else:
        add(text, "not tested", "needs HiT-DVAE or LigHT-DVAE and at least one baseline")

    # 2. SRNN TF collapses, SS does not
    text = "SRNN (TF) collapses in GEN while SRNN (SS) does not"
    if gt.get("srnn-tf") and gen.get("srnn-tf"):
        d_tf = gap("srnn-tf")
        parts = [f"SRNN (TF) GEN - GT {_fmt(d_tf)}"]
        if gt.get("srnn-ss") and gen.get("srnn-ss"):
            d_ss = gap("srnn-ss")
            parts.append(f"SRNN (SS) GEN - GT {_fmt(d_ss)}")
            parts.append(f"GEN SI-SDR TF {_mean(gen['srnn-tf']):.2f} dB, SS {_mean(gen['srnn-ss']):.2f} dB")
            verdict = "holds" if collapses(d_tf) and steady(d_ss) else "does not hold"
        else:
            verdict = "holds" if collapses(d_tf) else "does not hold"
            parts.append("(SRNN (SS) not in this experiment: only the TF half is tested)")
        add(text, verdict, "; ".join(parts))
    else:
        add(text, "not tested", "needs SRNN (TF) evaluated with GEN and GT past")

    # 3. Inv-s collapses in GEN but not in GT; 4. Inv-s-NR same in both
    for base_key, prefix in (("hit-dvae", "hit"), ("light-dvae", "light")):
        label = ENTRIES[f"{prefix}-inv-s"].label
        k = f"{prefix}-inv-s"
        text = f"{label} collapses in GEN but not in GT"
        if gt.get(k) and gen.get(k):
            d = gap(k)
            parts = [f"GEN - GT {_fmt(d)}"]
            ok_gt = True
            if gt.get(base_key):
                d_gt = _paired(gt[k], gt[base_key])
                parts.append(f"GT vs {ENTRIES[base_key].label} GT {_fmt(d_gt)}")
                ok_gt = d_gt is not None and d_gt["mean"] > -COLLAPSE_DB
            verdict = "holds" if collapses(d) and ok_gt else "does not hold"
            add(text, verdict, "; ".join(parts))
        else:
            add(text, "not tested", f"needs {label} evaluated with GEN and GT past")
        k = f"{prefix}-inv-s-nr"
        label = ENTRIES[k].label
        text = f"{label} scores the same in GEN and GT"
        if gt.get(k) and gen.get(k):
            d = gap(k)
            verdict = "holds" if d is not None and abs(d["mean"]) <= SAME_DB else "does not hold"
            add(text, verdict, f"GEN - GT {_fmt(d)}")
        else:
            add(text, "not tested", f"needs {label} evaluated with GEN and GT past")

    # 5. LigHT matches HiT with ~20 % fewer parameters
    text = "LigHT-DVAE matches HiT-DVAE with about 20 % fewer parameters"
    if gen.get("hit-dvae") and gen.get("light-dvae"):
        from lightdvae import models as _models

        p_hit = _models.build("hit-dvae").num_parameters()
        p_light = _models.build("light-dvae").num_parameters()
        d = _paired(gen["light-dvae"], gen["hit-dvae"])
        verdict = "holds" if d is not None and abs(d["mean"]) <= SAME_DB else "does not hold"
        add(
            text,
            verdict,
            f"LigHT - HiT SI-SDR (GEN) {_fmt(d)}; parameters {p_light:,} vs {p_hit:,} ({p_light / p_hit:.2f})",
        )
    else:
        add(text, "not tested", "needs HiT-DVAE and LigHT-DVAE")
    return res


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------
def _write_report(cfg: ExperimentConfig, state: _State, out: Path, corpus) -> Path:
    from lightdvae.report import FIGURE_DIR, build_report, find_results

    report_dir = out / REPORT_DIR
    report_dir.mkdir(parents=True, exist_ok=True)
    evals, fdsds = find_results([out / "runs"])
    lines = [build_report(evals, fdsds, title=cfg.title, figure_dir=report_dir / FIGURE_DIR).rstrip(), ""]
    lines += _settings_section(cfg, state, out, corpus)
    lines += _findings_section(out, cfg.models)
    lines += _generation_section(cfg, state, out, report_dir)
    lines += _cost_section(out)
    path = report_dir / "README.md"
    atomic_write_text(path, "\n".join(lines).rstrip() + "\n")
    return path


def _settings_section(cfg: ExperimentConfig, state: _State, out: Path, corpus) -> list[str]:
    lines = [
        "## Training",
        "",
        f"Corpus `{cfg.data}` ({corpus.name}); batch {cfg.batch_size} segments of {cfg.seq_len} frames, Adam "
        f"({_lr_text(cfg)}), beta {cfg.beta}, KL warm-up over {round(100 * WARMUP_FRACTION)} % of the epochs that "
        "fit the budget, early stopping off, best validation weights kept; device "
        f"{state.data.get('device', cfg.device)}, {torch.get_num_threads()} torch threads.",
        "",
        "| model | parameters | lr | budget (min) | epochs | s / epoch | KL warm-up | best epoch | best val loss "
        "| stopped |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    from lightdvae.runs import LOG_FILE

    for key in cfg.models:
        info = state.model(key)
        rows = _log_rows(_run_dir(out, key) / LOG_FILE)
        sched = info.get("schedule") or {}
        secs = [r["seconds"] for r in rows if isinstance(r.get("seconds"), float)]
        lines.append(
            f"| {ENTRIES[key].label} | {info.get('parameters', 0):,} | {cfg.lr_of(key):g} "
            f"| {cfg.budget_minutes(key):.1f} | {len(rows)} "
            f"| {np.median(secs):.1f} | {sched.get('kl_warmup_epochs', '')} | {info.get('best_epoch', '')} | "
            f"{info.get('best_val_loss', float('nan')):.1f} | {info.get('training', 'not trained')} |"
            if secs
            else f"| {ENTRIES[key].label} | | {cfg.lr_of(key):g} | {cfg.budget_minutes(key):.1f} | 0 | | | | "
            f"| {info.get('training', 'not trained')} |"
        )
    stages = state.data["stages"]
    lines += [
        "",
        "Wall time of this experiment (all sessions): "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in stages.items())
        + f"; total {state.wall_seconds / 60:.1f} min.",
        "",
    ]
    return lines


def _lr_text(cfg: ExperimentConfig) -> str:
    lrs = sorted({cfg.lr_of(key) for key in cfg.models}, reverse=True)
    if len(lrs) == 1:
        return f"lr {lrs[0]:g}"
    return "lr per model, in the table: " + ", ".join(
        f"{lr:g} for " + ", ".join(ENTRIES[k].label for k in cfg.models if cfg.lr_of(k) == lr) for lr in lrs
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


def _generation_section(cfg: ExperimentConfig, state: _State, out: Path, report_dir: Path) -> list[str]:
    lines: list[str] = []
    fig_dir = report_dir / "figures"
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
            lines += [f"**{ENTRIES[key].label}**", "", f"![{ENTRIES[key].label} samples](figures/{dest.name})", ""]
    return lines


def _cost_section(out: Path) -> list[str]:
    path = out / COST_FILE
    if not path.is_file():
        return []
    cost = json.loads(path.read_text())
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
    for row in cost.values():
        ref, nat = row["backends"].get("ref", {}), row["backends"].get("native", {})

        def ratio(k, ref=ref, nat=nat):
            return f"{ref[k] / nat[k]:.2f}x" if ref.get(k) and nat.get(k) else ""

        lines.append(
            f"| {row['label']} | {row.get('epoch_s') or ''} | {1000 * ref.get('train_step_s', float('nan')):.1f} | "
            f"{1000 * nat.get('train_step_s', float('nan')):.1f} | {ratio('train_step_s')} | "
            f"{ref.get('generate_s_per_audio_s', float('nan')):.3f} | "
            f"{nat.get('generate_s_per_audio_s', float('nan')):.3f} "
            f"| {ratio('generate_s_per_audio_s')} |"
        )
    return lines + [""]
