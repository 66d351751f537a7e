"""The shipped priors beside an experiment's own models: the package's converged priors (``pretrained:NAME``,
:mod:`lightdvae.models.shipped`) evaluated and sampled on the experiment's test split, so that one report
shows what the models do when trained to convergence next to what a few minutes of training give.

They are trained on the built-in corpus (their cards say so), so they are compared only on that corpus, as it is
built by default: on another corpus, or a resized built-in one, their training data may overlap its test split
(a prior exported from a run on another corpus is shown on that corpus alone).
Results go to ``OUT/shipped/<name>/`` in the layout of a run folder's ``eval-*`` and ``generate`` folders; the
models carry the label ``"<model> (shipped)"`` (see :func:`lightdvae.runs.open_run`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lightdvae.experiments.config import ExperimentConfig
from lightdvae.experiments.state import SHIPPED_DIR
from lightdvae.models import HAS_W, SEES_PAST_SPEECH

if TYPE_CHECKING:
    from lightdvae.experiments.stages import Context

__all__ = ["SHIPPED_DIR", "shipped_priors", "shipped_dir", "evaluate_shipped"]


def shipped_priors(cfg: ExperimentConfig) -> list[str]:
    """The shipped priors this experiment shows: those of ``cfg.shipped`` that are installed and were trained on
    the experiment's corpus spec (``builtin`` for the package's own, as built by default); none on a resized
    built-in corpus, whose test split may hold their training data."""
    from lightdvae.models.shipped import pretrained_card, pretrained_names

    if not cfg.shipped or cfg.corpus_minutes is not None:
        return []
    installed, spec = set(pretrained_names()), cfg.data.strip()
    return [n for n in cfg.shipped if n in installed and str(pretrained_card(n).get("data", "builtin")) == spec]


def shipped_dir(out: Path, name: str) -> Path:
    return out / SHIPPED_DIR / name


def evaluate_shipped(ctx: Context) -> None:
    """Evaluate (GEN past, and GT for the models that see past speech) and sample (with FDSD, the experiment's
    sample size) every shipped prior of the experiment, and exchange the w of two test speakers with those that
    have one (HiT/LigHT-DVAE); each step is skipped once done for the same weights."""
    from lightdvae.evaluate import evaluate_run
    from lightdvae.generation import exchange_pair, generate_run, swap_w
    from lightdvae.models.shipped import pretrained_card

    cfg = ctx.cfg
    done = ctx.state.data.setdefault("shipped", {})
    for name in shipped_priors(cfg):
        card, spec, folder = pretrained_card(name), f"pretrained:{name}", shipped_dir(ctx.out, name)
        info = done.setdefault(name, {})
        if info.get("sha256") != card["sha256"]:
            info.clear()
            info["sha256"] = card["sha256"]
        label = card.get("label", name)
        for past in ("gen", "gt") if card["model"] in SEES_PAST_SPEECH else ("gen",):
            if past in info:
                continue
            ctx.say(f"evaluating the shipped {label} ({past.upper()} past) on the test split")
            summary = evaluate_run(
                spec,
                split="test",
                past=past,
                out=folder / f"eval-test-{past}",
                device=ctx.device,
                max_files=cfg.eval_max_files,
                overwrite=True,
                progress=ctx.progress,
                figures=2,
            )
            info[past] = {"si_sdr": summary["metrics"]["si_sdr"]["mean"]}
            ctx.state.save()
        if "generation" not in info:
            ctx.say(f"generating {cfg.gen_n} samples of {cfg.gen_frames} frames with the shipped {label}, FDSD")
            generate_run(
                spec,
                n=cfg.gen_n,
                frames=cfg.gen_frames,
                out=folder / "generate",
                seed=cfg.seed,
                device=ctx.device,
                fdsd_draws=cfg.fdsd_draws,
                quiet=True,
                progress=ctx.progress,
                overwrite=True,
            )
            info["generation"] = str((folder / "generate").resolve())
            ctx.state.save()
        if card["model"] in HAS_W and "swap_w" not in info:
            pair = exchange_pair(ctx.cfg.data)
            if pair is not None:
                ctx.say(f"exchanging the w of two test speakers with the shipped {label}")
                swap_w(spec, *pair, out=folder / "swap_w", device=ctx.device, overwrite=True)
                info["swap_w"] = str((folder / "swap_w").resolve())
                ctx.state.save()
