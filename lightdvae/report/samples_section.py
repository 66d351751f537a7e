"""What the models make: ``## Generation`` (a figure of each model's samples from its prior, from the
``generation.json`` folders of ``lightdvae generate``) and ``## The w exchange`` (each HiT/LigHT-DVAE's
``swap_w.json`` of ``lightdvae swap-w`` in one line, :func:`lightdvae.generation.exchange_verdict`, with its
figure).  A run without them gets one line with the command that makes them; the w exchange, two utterances
through the model, is computed for it when ``compute`` and its corpus is here."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from lightdvae._io import slug
from lightdvae.report.runs_section import run_label
from lightdvae.report.tables import model_sort_key

__all__ = ["generation_section", "exchange_section", "compute_exchanges", "missing_exchanges", "same_run"]

PRETRAINED = "pretrained:"


def same_run(result: dict, run: dict) -> bool:
    """Whether ``result`` (a generation, w exchange or evaluation) was computed from the run folder of ``run``."""
    name = result.get("run_dir")
    return isinstance(name, str) and not name.startswith(PRETRAINED) and Path(name).resolve() == run["dir"].resolve()


def _has_weights(run: dict) -> bool:
    from lightdvae.runs import checkpoint_path

    return checkpoint_path(run["dir"], "best").is_file()


def _tag(result: dict) -> str:
    """A file-name tag of the model of a result: ``shipped-NAME`` or the run folder's name."""
    name = str(result.get("run_dir") or Path(result["_path"]).parent.name)
    if name.startswith(PRETRAINED):
        return "shipped-" + slug(name[len(PRETRAINED) :], fill="-", keep="-_")
    return slug(Path(name).name, fill="-", keep="-_")


def _figure(src: Path, prefix: str, result: dict, fig_dir: Path | None, rel: str, used: set) -> str | None:
    """The link to the figure ``src`` of a result: copied to ``fig_dir`` (named ``prefix-TAG.png``) and linked
    as ``rel/NAME``, or linked where it is when there is no ``fig_dir``; None when the figure is missing."""
    if not src.is_file():
        return None
    if fig_dir is None:
        return str(src.resolve())
    name, i = f"{prefix}-{_tag(result)}.png", 2
    while name in used:
        name, i = f"{prefix}-{_tag(result)}-{i}.png", i + 1
    used.add(name)
    fig_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, fig_dir / name)
    return f"{rel}/{name}"


def generation_section(generations: Sequence[dict], runs: Sequence[dict], fig_dir: Path | None, rel: str) -> list[str]:
    """``## Generation``: each model's first figure of samples, then one line per run not sampled yet."""
    lines, used = ["## Generation", ""], set()
    for g in sorted(generations, key=model_sort_key):
        figures = (g.get("outputs") or {}).get("figures") or {}
        file = figures.get("generation") if isinstance(figures, dict) else None
        label = str((g.get("model") or {}).get("label", "?"))
        link = _figure(Path(g["_path"]).parent / str(file or "generation.png"), "generation", g, fig_dir, rel, used)
        what = (
            f"{g.get('n', '?')} samples of {g.get('frames', '?')} frames from the prior "
            f"(temperature {g.get('temperature', '?')}, seed {g.get('seed', '?')}), Griffin-Lim phase"
        )
        lines += [f"**{label}**: {what}.", ""]
        lines += [f"![{label} samples]({link})", ""] if link else ["_(its figure is missing)_", ""]
    todo = [r for r in runs if _has_weights(r) and not any(same_run(g, r) for g in generations)]
    for r in todo:
        lines.append(f"- {run_label(r)}: not sampled yet: `lightdvae generate {r['dir']}` (samples and their FDSD)")
    if not generations and not todo:
        lines.append("_No samples: `lightdvae generate RUN` samples a model's prior (figures, wavs, FDSD)._")
    return lines + [""] if lines[-1] else lines


def _w_runs(runs: Sequence[dict], exchanges: Sequence[dict]) -> list[dict]:
    """The runs of a model with a sequence latent w, with weights and no w exchange among ``exchanges``."""
    from lightdvae.models import HAS_W

    return [
        r
        for r in runs
        if r["meta"].get("model") in HAS_W and _has_weights(r) and not any(same_run(x, r) for x in exchanges)
    ]


def compute_exchanges(runs: Sequence[dict], exchanges: Sequence[dict]) -> tuple[list[dict], list[str]]:
    """Exchange the w of two test speakers of its corpus with every HiT/LigHT-DVAE run that has no w exchange
    (into the run's own ``swap_w/`` folder, as ``lightdvae swap-w RUN A B`` does).  Returns the new results and
    one line per run it could not do, with the command."""
    from lightdvae.generation import exchange_pair, swap_w
    from lightdvae.generation.common import SWAP_FILE
    from lightdvae.runs import corpus_spec

    made, notes = [], []
    for r in _w_runs(runs, exchanges):
        cmd = f"lightdvae swap-w {r['dir']}"
        spec = corpus_spec(r["meta"])
        try:
            pair = exchange_pair(spec) if spec else None
            if pair is None:
                notes.append(f"- {run_label(r)}: no w exchange: `{cmd} A.wav B.wav` (two utterances of two speakers)")
                continue
            result = swap_w(r["dir"], *pair)
        except Exception as exc:  # the report never fails on a piece it computes for convenience
            notes.append(f"- {run_label(r)}: the w exchange failed ({str(exc).splitlines()[0]}): `{cmd} A.wav B.wav`")
            continue
        made.append({**result, "_path": str(Path(result["out"]) / SWAP_FILE)})
    return made, notes


def missing_exchanges(runs: Sequence[dict], exchanges: Sequence[dict]) -> list[str]:
    """One line per HiT/LigHT-DVAE run without a w exchange: the command, with two test files when known."""
    from lightdvae.generation import exchange_pair
    from lightdvae.runs import corpus_spec

    lines = []
    for r in _w_runs(runs, exchanges):
        try:
            spec = corpus_spec(r["meta"])
            pair = exchange_pair(spec) if spec else None
        except Exception:  # a corpus that is not here: the command with placeholders
            pair = None
        files = " ".join(str(p) for p in pair) if pair else "A.wav B.wav"
        lines.append(f"- {run_label(r)}: no w exchange yet: `lightdvae swap-w {r['dir']} {files}`")
    return lines


def exchange_section(exchanges: Sequence[dict], missing: Sequence[str], fig_dir: Path | None, rel: str) -> list[str]:
    """``## The w exchange``: per result, the two inputs, the one-line verdict and the figure; then the lines of
    ``missing`` (:func:`compute_exchanges`, :func:`missing_exchanges`); nothing when both are empty."""
    from lightdvae.generation import exchange_verdict

    if not exchanges and not missing:
        return []
    lines, used = ["## The w exchange", ""], set()
    for x in sorted(exchanges, key=model_sort_key):
        label = str((x.get("model") or {}).get("label", "?"))
        inputs = ", ".join(Path(str((v or {}).get("path", "?"))).name for v in (x.get("inputs") or {}).values())
        past = str(x.get("past", "gen")).upper()
        lines += [f"{label}: two utterances ({inputs}), each decoded with its own z and the other's w ({past} past). "]
        lines += [exchange_verdict(x.get("check") or {}), ""]
        fig = (x.get("outputs") or {}).get("figure")
        link = _figure(Path(x["_path"]).parent / str(fig), "swap-w", x, fig_dir, rel, used) if fig else None
        if link:
            lines += [f"![{label}: the w exchange]({link})", ""]
    return lines + list(missing) + ([""] if missing else [])
