"""The report: :func:`build_report` puts the sections together; :func:`write_report` finds the results and writes
the Markdown (and its figures).  ``lightdvae report`` and the report of ``lightdvae demo`` / ``reproduce`` are both
this one report."""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from pathlib import Path

from lightdvae._io import atomic_write_text
from lightdvae.errors import ReportError
from lightdvae.report.analysis import analysis_section, structure_section
from lightdvae.report.cost_section import cost_section
from lightdvae.report.enhance_section import enhance_section
from lightdvae.report.fdsd_section import fdsd_section
from lightdvae.report.figure_section import figures_section
from lightdvae.report.findings import findings_section
from lightdvae.report.results import find_all, group_key
from lightdvae.report.runs_section import read_runs, shipped_section, training_section
from lightdvae.report.samples_section import compute_exchanges, exchange_section, generation_section, missing_exchanges
from lightdvae.report.tables import model_sort_key, num, table

FIGURE_DIR = "figures"

__all__ = ["FIGURE_DIR", "build_report", "write_report"]


def _evaluations_section(evals: list[dict]) -> list[str]:
    """``## Evaluations``: one line per summary (run, checkpoint, corpus, past, files, time, date)."""
    body = []
    for s in sorted(evals, key=lambda s: (group_key(s), model_sort_key(s), str(s.get("past")))):
        files = s.get("files") or {}
        body.append(
            [
                str((s.get("model") or {}).get("label", "?")),
                f"`{s.get('run_dir') or '?'}`",
                str((s.get("checkpoint") or {}).get("which") or "?"),
                f"{(s.get('dataset') or {}).get('name', '?')} / {s.get('split', '?')}",
                str(s.get("past", "?")).upper(),
                f"{files.get('evaluated', '?')} of {files.get('listed', '?')}",
                num((s.get("seconds") or {}).get("wall"), 1),
                str(s.get("created", "?")),
            ]
        )
    header = ["model", "run", "checkpoint", "corpus / split", "past", "files", "eval s", "created"]
    return ["## Evaluations", "", table(header, body, ["l"] * 5 + ["r", "r", "l"]), ""]


def _model_sections(
    evals: list[dict],
    groups: dict[tuple, list[dict]],
    runs: Sequence[str | os.PathLike],
    more: dict,
    fig_dir: Path | None,
    rel: str,
    compute: bool,
    training_note: Sequence[str],
) -> list[str]:
    """Shipped priors, training, findings, generation, the w exchange and cost (see :func:`build_report`)."""
    records = read_runs(runs)
    generations, exchanges, costs = (list(more.get(k) or ()) for k in ("generations", "exchanges", "costs"))
    lines = shipped_section(evals) + training_section(records, training_note)
    for key in sorted(groups):
        lines += findings_section(key, groups[key])
    if not groups:
        lines += [
            "## The paper's findings",
            "",
            "_Not tested: no evaluation among the given folders; `lightdvae eval RUN --past gen` (and `--past gt` for "
            "the models that see past speech) gives the per-file SI-SDR they compare._",
            "",
        ]
    lines += generation_section(generations, records, fig_dir, rel)
    if compute:
        made, missing = compute_exchanges(records, exchanges)
        exchanges += made
    else:
        missing = missing_exchanges(records, exchanges)
    lines += exchange_section(exchanges, missing, fig_dir, rel)
    return lines + cost_section(records, evals, generations, costs)


def build_report(
    evals: list[dict],
    fdsds: Sequence[dict] = (),
    *,
    title: str = "lightdvae results",
    figure_dir: str | os.PathLike | None = None,
    figure_rel: str = FIGURE_DIR,
    enhancements: Sequence[dict] = (),
    runs: Sequence[str | os.PathLike] = (),
    generations: Sequence[dict] = (),
    exchanges: Sequence[dict] = (),
    costs: Sequence[dict] = (),
    compute: bool = False,
    training_note: Sequence[str] = (),
) -> str:
    """The Markdown report of evaluation summaries (and FDSD results, enhancement summaries, training runs,
    generations, w exchanges and measured costs: :class:`~lightdvae.report.results.Found`).

    Sections: analysis-resynthesis (with the structure study and figures) per corpus and split, FDSD,
    enhancement; then, when there are evaluations, runs, generations or w exchanges: the shipped priors among
    them, training, the paper's findings, generation, the w exchange, cost (a missing piece gets one line with
    the command that makes it); last the list of evaluations.

    Args:
        evals: summaries as read by :func:`find_results` (each needs ``"_path"`` for its figures).
        fdsds: FDSD results (see the :mod:`lightdvae.report` docstring for their fields).
        enhancements: enhancement summaries as read by :func:`find_enhancements` (the ``## Enhancement`` section).
        runs: training run folders; generations, exchanges, costs: ``generation.json``, ``swap_w.json`` and
            ``cost.json`` contents with ``"_path"``.
        compute: exchange the w of two test utterances with each HiT/LigHT-DVAE run that has no w exchange
            (written into the run's ``swap_w/`` folder); else one line with the command.
        training_note: lines after the training table.
        title: the report's first heading.
        figure_dir: where to write the figures (none when None: the analysis figures are left out, those of
            the samples and the w exchange linked where they are); ``figure_rel`` is how the Markdown links them.
    """
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# {title}",
        "",
        f"Generated by `lightdvae report` on {now} from {len(evals)} evaluation summaries"
        + (f" and {len(fdsds)} FDSD results" if fdsds else "")
        + (f" and {len(enhancements)} enhancement summaries" if enhancements else "")
        + (f" and {len(runs)} training runs" if runs else "")
        + ".",
        "",
    ]
    if figure_dir is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            figure_dir = None
            lines += ["_Figures left out: matplotlib is not installed (pip install matplotlib)._", ""]
    groups: dict[tuple, list[dict]] = {}
    for s in evals:
        groups.setdefault(group_key(s), []).append(s)
    if groups:
        lines += ["## Analysis-resynthesis", ""]
    elif runs:
        lines += ["_No evaluation among the given folders: `lightdvae eval RUN` scores a run's test split._", ""]
    for key in sorted(groups):
        lines += analysis_section(key, groups[key])
        lines += structure_section(key, groups[key])
        if figure_dir is not None:
            lines += figures_section(key, groups[key], Path(figure_dir), figure_rel)
    lines += fdsd_section(list(fdsds))
    lines += enhance_section(list(enhancements))
    if evals or runs or generations or exchanges:
        more = {"generations": generations, "exchanges": exchanges, "costs": costs}
        fig_dir = Path(figure_dir) if figure_dir is not None else None
        lines += _model_sections(evals, groups, runs, more, fig_dir, figure_rel, compute, training_note)
    if evals:
        lines += _evaluations_section(evals)
    return "\n".join(lines).rstrip() + "\n"


def write_report(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike | None = None,
    *,
    title: str = "lightdvae results",
    figures: bool = True,
    compute: bool = True,
    training_note: Sequence[str] = (),
) -> str:
    """Find the results and runs under ``paths`` (:func:`find_all`), build the Markdown report, write it to
    ``out`` (atomically; figures go to ``<out's folder>/figures/``) when given, and return it.  ``compute``: see
    :func:`build_report`.

    Raises:
        ReportError: a path does not exist, or no result and no run was found.
    """
    found = find_all(paths)
    if found.empty:
        where = ", ".join(str(p) for p in paths)
        raise ReportError(
            f"no evaluation results found under {where}, nor a training run; run `lightdvae eval RUN_DIR` first"
        )
    fig_dir = None
    if out is not None and figures:
        fig_dir = Path(out).parent / FIGURE_DIR
    text = build_report(
        found.evals,
        found.fdsds,
        title=title,
        figure_dir=fig_dir,
        enhancements=found.enhancements,
        runs=found.runs,
        generations=found.generations,
        exchanges=found.exchanges,
        costs=found.costs,
        compute=compute,
        training_note=training_note,
    )
    if out is not None:
        atomic_write_text(Path(out), text)
    return text
