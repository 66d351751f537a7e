"""The paper's tables as Markdown, from the JSON files that ``lightdvae eval`` (and the FDSD computation) write.

``lightdvae report RUN_DIR... [--out report.md]`` searches every given folder (recursively) for

* evaluation summaries: ``summary.json`` files with ``"kind": "lightdvae-eval"`` (:mod:`lightdvae.evaluate`);
* FDSD results: any ``*.json`` with ``"kind": "lightdvae-fdsd"``, of this form (the fields the report reads)::

      {"kind": "lightdvae-fdsd",
       "model": {"name": "light-dvae", "label": "LigHT-DVAE"},       # or a plain label string
       "run_dir": "...",                                             # optional
       "dataset": {"name": "corpus", "split": "test"},               # the real audio compared with
       "feature_network": "lightdvae-ds2-small (CTC, built-in corpus phonemes)",
       "fdsd": {"mean": 22.5, "std": 0.4, "draws": 5, "n": 200},     # mean +- std over draws of n samples
       "floor": {"exact_phase": {"mean": ..., "std": ...},           # optional: real vs real
                 "griffin_lim": {"mean": ..., "std": ...}}}

and writes, per corpus and split:

1. the analysis-resynthesis table (the paper's main table): RMSE, SI-SDR, PESQ-WB, PESQ-NB, PESQ-NB raw and
   ESTOI, mean +- half-width of the 95 % interval of the mean, with the decoder fed its own past (GEN; a model
   evaluated only with the true past is marked "GT"), the best mean of each column in bold, and the medians;
2. the structure study: GEN and GT side by side for every model evaluated both ways;
3. the FDSD table, naming the feature network (or a line saying no FDSD results were found);
4. with ``--out``: figures (ground truth beside each model's resynthesis; GEN beside GT) in ``figures/`` next to
   the report, from the examples the evaluations saved.

Every table says which corpus and split it is on and which PESQ variant each column is.
"""

from __future__ import annotations

import datetime
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from lightdvae._io import atomic_write_text
from lightdvae.cli import UserError
from lightdvae.metrics import COLUMNS, HIGHER_IS_BETTER, LABELS, PESQ_VARIANTS

EVAL_KIND = "lightdvae-eval"
FDSD_KIND = "lightdvae-fdsd"
FIGURE_DIR = "figures"
#: Decimals per metric in the tables.
DECIMALS = {"rmse": 3, "si_sdr": 2, "pesq_wb": 2, "pesq_nb": 2, "pesq_nb_raw": 2, "estoi": 3}
#: Metrics of the structure study table.
STRUCTURE_METRICS = ("si_sdr", "pesq_wb", "estoi")
_MODEL_ORDER = ("vae", "dkf", "rvae", "rvae-causal", "srnn", "hit-dvae", "light-dvae")
_BASE_LABELS = {
    "vae": "VAE",
    "dkf": "DKF",
    "rvae": "RVAE",
    "rvae-causal": "RVAE (causal)",
    "srnn": "SRNN",
    "hit-dvae": "HiT-DVAE",
    "light-dvae": "LigHT-DVAE",
}
_SKIP_DIRS = {"checkpoints", "audio", "examples", "figures", "__pycache__"}

__all__ = ["ReportError", "find_results", "build_report", "write_report"]


class ReportError(UserError):
    """Nothing to report, or a path that does not exist: one line from ``lightdvae report``."""


# ----------------------------------------------------------------------------------------------------------------
# Finding the results
# ----------------------------------------------------------------------------------------------------------------
def _load(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(value, dict) or value.get("kind") not in (EVAL_KIND, FDSD_KIND):
        return None
    value["_path"] = str(path)
    return value


def _json_files(root: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith(".json") and not name.startswith("."):
                yield Path(dirpath) / name


def find_results(paths: Sequence[str | os.PathLike]) -> tuple[list[dict], list[dict]]:
    """``(eval summaries, FDSD results)`` found in ``paths`` (folders are searched recursively; JSON files are
    read directly).  Each result gets ``"_path"``: the file it came from.

    Raises:
        ReportError: a path does not exist.
    """
    evals, fdsds, seen = [], [], set()
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise ReportError(f"{p} does not exist")
        files = [p] if p.is_file() else _json_files(p)
        for f in files:
            key = f.resolve()
            if key in seen:
                continue
            seen.add(key)
            value = _load(f)
            if value is None:
                continue
            (evals if value["kind"] == EVAL_KIND else fdsds).append(value)
    return _latest(evals), fdsds


def _latest(evals: list[dict]) -> list[dict]:
    """One summary per (run, checkpoint weights, corpus, split, past): the most recent."""
    best: dict[tuple, dict] = {}
    for s in evals:
        key = (
            s.get("run_dir") or s["_path"],
            (s.get("checkpoint") or {}).get("sha256"),
            _group_key(s),
            s.get("past"),
        )
        if key not in best or str(s.get("created", "")) > str(best[key].get("created", "")):
            best[key] = s
    return list(best.values())


# ----------------------------------------------------------------------------------------------------------------
# Formatting
# ----------------------------------------------------------------------------------------------------------------
def _group_key(s: dict) -> tuple[str, str, str]:
    d = s.get("dataset") or {}
    return (str(d.get("name", "?")), str(d.get("root", "")), str(s.get("split", "?")))


def _num(value, decimals: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    text = f"{value:.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.00"


def _mean_ci(stats: dict | None, metric: str, bold: bool = False) -> str:
    if not stats or not stats.get("n"):
        return "n/a"
    d = DECIMALS.get(metric, 3)
    mean = _num(stats.get("mean"), d)
    if bold:
        mean = f"**{mean}**"
    half = stats.get("ci_half")
    return f"{mean} ± {_num(half, d)}" if half is not None and math.isfinite(half) else mean


def _model_sort_key(s: dict):
    m = s.get("model") or {}
    name = str(m.get("name", "")).lower()
    cfg = m.get("config") or {}
    order = _MODEL_ORDER.index(name) if name in _MODEL_ORDER else len(_MODEL_ORDER)
    return (order, bool(cfg.get("inv_s")), bool(cfg.get("no_residual")), m.get("training") == "tf", m.get("label", ""))


def _labels(rows: list[dict]) -> dict[int, str]:
    """Row labels; two different runs with one label get their run folder's name appended."""
    labels = {id(s): str((s.get("model") or {}).get("label", "?")) for s in rows}
    counts: dict[str, set] = {}
    for s in rows:
        counts.setdefault(labels[id(s)], set()).add(s.get("run_dir") or s["_path"])
    for s in rows:
        if len(counts[labels[id(s)]]) > 1:
            run = Path(s.get("run_dir") or s["_path"]).name
            labels[id(s)] = f"{labels[id(s)]} [{run}]"
    return labels


def _params(s: dict) -> str:
    n = (s.get("model") or {}).get("parameters")
    if not isinstance(n, int):
        return "?"
    if n >= 1e6:
        return f"{n / 1e6:.2f} M"
    if n >= 1e3:
        return f"{n / 1e3:.1f} k"
    return str(n)


def _table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    align = align or ["l"] + ["r"] * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _metric_columns(summaries: list[dict]) -> list[str]:
    present = set()
    for s in summaries:
        present |= {c for c, v in (s.get("metrics") or {}).items() if v}
    return [c for c in COLUMNS if c in present]


def _best(rows: list[dict], metric: str) -> float | None:
    means = [
        (r.get("metrics") or {}).get(metric, {}).get("mean")
        for r in rows
        if (r.get("metrics") or {}).get(metric, {}).get("n")
    ]
    means = [m for m in means if isinstance(m, (int, float)) and math.isfinite(m)]
    if len(means) < 2:
        return None
    return max(means) if HIGHER_IS_BETTER.get(metric, True) else min(means)


def _arrow(metric: str) -> str:
    return "↑" if HIGHER_IS_BETTER.get(metric, True) else "↓"


# ----------------------------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------------------------
def _main_rows(summaries: list[dict]) -> list[dict]:
    """One summary per run for the main table: GEN when there is one, else GT."""
    by_run: dict[tuple, dict] = {}
    for s in summaries:
        key = (s.get("run_dir") or s["_path"], (s.get("checkpoint") or {}).get("sha256"))
        if key not in by_run or (by_run[key].get("past") != "gen" and s.get("past") == "gen"):
            by_run[key] = s
    return sorted(by_run.values(), key=_model_sort_key)


def _describe_group(key: tuple[str, str, str], summaries: list[dict]) -> str:
    name, root, split = key
    d = summaries[0].get("dataset") or {}
    files = sorted({(s.get("files") or {}).get("evaluated") for s in summaries} - {None})
    n = "/".join(str(f) for f in files) if files else "?"
    minutes = max(((s.get("files") or {}).get("seconds_of_audio") or 0.0) for s in summaries) / 60.0
    layout = f", {d['layout']} layout" if d.get("layout") else ""
    return f"corpus **{name}**{layout} (`{root}`), **{split}** split: {n} files, {minutes:.1f} min of speech"


def _analysis_section(key, summaries: list[dict]) -> list[str]:
    rows = _main_rows(summaries)
    labels = _labels(rows)
    metrics = _metric_columns(rows)
    best = {m: _best(rows, m) for m in metrics}
    header = ["model", "params", "past", "files"] + [f"{LABELS[m]} {_arrow(m)}" for m in metrics]
    align = ["l", "r", "l"] + ["r"] * (len(header) - 3)
    body, medians = [], []
    for s in rows:
        stats = s.get("metrics") or {}
        cells = [
            labels[id(s)],
            _params(s),
            str(s.get("past", "?")).upper(),
            str((s.get("files") or {}).get("evaluated", "?")),
        ]
        mcells = list(cells)
        for m in metrics:
            st = stats.get(m)
            is_best = best[m] is not None and st and st.get("n") and st.get("mean") == best[m]
            cells.append(_mean_ci(st, m, bold=bool(is_best)))
            mcells.append(_num((st or {}).get("median"), DECIMALS.get(m, 3)) if st and st.get("n") else "n/a")
        body.append(cells)
        medians.append(mcells)
    ci = sorted({str(s.get("ci", "")) for s in rows} - {""})
    lines = [
        f"### Analysis-resynthesis: {_describe_group(key, summaries)}",
        "",
        "Whole utterances, resynthesis with the original phase; per-file metrics, mean ± half-width of the "
        f"{'; '.join(ci) or '95 % interval of the mean'}. Best mean of each column in bold. "
        "Past: GEN = the decoder is fed its own past predictions, GT = the true past.",
        "",
        _table(header, body, align),
        "",
    ]
    pesq = [m for m in metrics if m in PESQ_VARIANTS]
    if pesq:
        lines += ["PESQ variants: " + "; ".join(f"{LABELS[m]} = {PESQ_VARIANTS[m]}" for m in pesq) + ".", ""]
    failed = _failure_lines(rows, labels)
    if failed:
        lines += ["Files left out of a metric's statistics (the metric failed on them):", "", *failed, ""]
    lines += ["Medians over files:", "", _table(header, medians, align), ""]
    return lines


def _failure_lines(rows: list[dict], labels: dict[int, str]) -> list[str]:
    out = []
    for s in rows:
        failures = s.get("failures") or {}
        parts = []
        for metric, items in failures.items():
            if metric == "pesq_nb_raw" or not items:
                continue
            reasons = sorted({i.get("reason", "?") for i in items})
            names = ", ".join(i.get("name", "?") for i in items[:3]) + (", ..." if len(items) > 3 else "")
            parts.append(f"{LABELS.get(metric, metric)}: {len(items)} ({'; '.join(reasons)}: {names})")
        if parts:
            out.append(f"- {labels[id(s)]}: " + "; ".join(parts))
    return out


def _structure_section(key, summaries: list[dict]) -> list[str]:
    pairs: dict[tuple, dict[str, dict]] = {}
    for s in summaries:
        run = (s.get("run_dir") or s["_path"], (s.get("checkpoint") or {}).get("sha256"))
        pairs.setdefault(run, {})[s.get("past")] = s
    both = [p for p in pairs.values() if "gen" in p and "gt" in p]
    if not both:
        return []
    both.sort(key=lambda p: _model_sort_key(p["gen"]))
    labels = _labels([p["gen"] for p in both])
    metrics = [m for m in STRUCTURE_METRICS if m in _metric_columns([p["gen"] for p in both])]
    header = ["model"]
    for m in metrics:
        header += [f"{LABELS[m]} GEN", f"{LABELS[m]} GT", "GT − GEN"]
    body = []
    for p in both:
        row = [labels[id(p["gen"])] + ("" if (p["gen"].get("model") or {}).get("sees_past_speech", True) else " ¹")]
        for m in metrics:
            g = (p["gen"].get("metrics") or {}).get(m) or {}
            t = (p["gt"].get("metrics") or {}).get(m) or {}
            d = DECIMALS.get(m, 3)
            diff = t.get("mean", math.nan) - g.get("mean", math.nan) if g.get("n") and t.get("n") else math.nan
            row += [_mean_ci(g, m), _mean_ci(t, m), _num(diff, d)]
        body.append(row)
    lines = [
        f"### Structure study (GEN vs GT past): {_describe_group(key, summaries)}",
        "",
        "The same model and test files with the decoder fed its own past predictions (GEN) or the true past (GT). "
        "A model whose quality rests on seeing the true past collapses in GEN (SRNN trained with teacher forcing, "
        "the Inv-s ablations); Inv-s-NR and the models that see no past speech are the same in both.",
        "",
        _table(header, body),
        "",
    ]
    if any(not (p["gen"].get("model") or {}).get("sees_past_speech", True) for p in both):
        lines += ["¹ the decoder of this model sees no past speech: GEN and GT are the same computation.", ""]
    return lines


def _fdsd_section(fdsds: list[dict]) -> list[str]:
    lines = ["## FDSD (generation)", ""]
    if not fdsds:
        return lines + [
            '_No FDSD results found: no JSON file with `"kind": "lightdvae-fdsd"` under the given folders._',
            "",
        ]
    groups: dict[tuple, list[dict]] = {}
    for f in fdsds:
        d = f.get("dataset") or {}
        groups.setdefault((str(d.get("name", "?")), str(d.get("split", "?"))), []).append(f)
    for (name, split), items in sorted(groups.items()):
        nets = sorted({str(f.get("feature_network", "unknown feature network")) for f in items})
        lines += [
            f"### FDSD against corpus **{name}**, **{split}** split",
            "",
            "Fréchet distance between Gaussians fitted to time-averaged deep speech features of real and generated "
            "audio (Griffin-Lim), mean ± std over repeated draws; lower is better. "
            f"Feature network: {'; '.join(nets)}.",
            "",
        ]
        body, floors = [], {}
        for f in sorted(items, key=lambda f: _model_sort_key({"model": _fdsd_model(f)})):
            r = f.get("fdsd") or f
            cells = [
                str(_fdsd_model(f).get("label", "?")),
                _num(r.get("mean"), 2) + (f" ± {_num(r.get('std'), 2)}" if r.get("std") is not None else ""),
                str(r.get("draws", "?")),
                str(r.get("n", "?")),
            ]
            if len(nets) > 1:
                cells.append(str(f.get("feature_network", "?")))
            body.append(cells)
            for kind, value in (f.get("floor") or {}).items():
                if isinstance(value, dict):
                    floors.setdefault(kind, value)
        header = ["model", "FDSD ↓", "draws", "samples per draw"] + (["feature network"] if len(nets) > 1 else [])
        for kind, value in floors.items():
            what = {"exact_phase": "real vs real (exact phase)", "griffin_lim": "real vs real (Griffin-Lim)"}
            body.append(
                [
                    f"_{what.get(kind, kind)}_",
                    _num(value.get("mean"), 2) + f" ± {_num(value.get('std'), 2)}",
                    str(value.get("draws", "")),
                    str(value.get("n", "")),
                ]
                + ([""] if len(nets) > 1 else [])
            )
        lines += [_table(header, body), ""]
    return lines


def _fdsd_model(f: dict) -> dict:
    """The model description of an FDSD result; a plain label (``"SRNN (TF)"``, ``"HiT-Inv-s"``) is parsed back
    into a registry name and config so the rows come in the paper's order."""
    m = f.get("model")
    if isinstance(m, dict):
        return m
    label = str(m) if m is not None else "?"
    text = label.lower()
    name = next((n for n, lab in _BASE_LABELS.items() if text == lab.lower()), "")
    name = name or next((n for n, lab in _BASE_LABELS.items() if text.split(" (")[0] == lab.lower()), "")
    for prefix, n in (("hit", "hit-dvae"), ("light", "light-dvae")):
        if text.startswith(prefix + "-inv-s"):
            name = n
    config = {"inv_s": "inv-s" in text, "no_residual": text.endswith("-nr")}
    training = "tf" if "(tf)" in text else "ss" if "(ss)" in text else None
    return {"label": label, "name": name, "config": config, "training": training}


# ----------------------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------------------
def _example(s: dict, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    base = Path(s["_path"]).parent
    for rel in (s.get("outputs") or {}).get("examples") or []:
        path = base / rel
        if not path.is_file():
            continue
        try:
            with np.load(path) as z:
                if str(z["name"]) == name:
                    return z["reference"], z["estimate"]
        except (OSError, ValueError, KeyError):
            continue
    return None


def _example_names(s: dict) -> list[str]:
    base = Path(s["_path"]).parent
    names = []
    for rel in (s.get("outputs") or {}).get("examples") or []:
        try:
            with np.load(base / rel) as z:
                names.append(str(z["name"]))
        except (OSError, ValueError, KeyError):
            continue
    return names


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text).strip("-") or "x"


def _figures_section(key, summaries: list[dict], fig_dir: Path, rel: str) -> list[str]:
    from lightdvae.figures import resynthesis_figure, save_figure

    lines = []
    rows = _main_rows(summaries)
    labels = _labels(rows)
    with_examples = [s for s in rows if _example_names(s)]
    if with_examples:
        common = None
        for s in with_examples:
            names = _example_names(s)
            common = [n for n in (common if common is not None else names) if n in names]
        name = (common or _example_names(with_examples[0]))[0]
        panels, reference = [], None
        for s in with_examples:
            ex = _example(s, name)
            if ex is None:
                continue
            reference = ex[0] if reference is None else reference
            if ex[1].shape == reference.shape:
                panels.append((f"{labels[id(s)]} ({str(s.get('past', '')).upper()})", ex[1]))
        if reference is not None and panels:
            file = f"resynthesis-{_slug(key[0])}-{_slug(key[2])}.png"
            save_figure(resynthesis_figure(reference, panels, suptitle=name), fig_dir / file)
            lines += [f"![ground truth and each model's resynthesis of {name}]({rel}/{file})", ""]
    # GEN beside GT for the models that see past speech
    pairs: dict[tuple, dict] = {}
    for s in summaries:
        if (s.get("model") or {}).get("sees_past_speech", True):
            run = (s.get("run_dir") or s["_path"], (s.get("checkpoint") or {}).get("sha256"))
            pairs.setdefault(run, {})[s.get("past")] = s
    both = sorted((p for p in pairs.values() if "gen" in p and "gt" in p), key=lambda p: _model_sort_key(p["gen"]))
    if both:
        blabels = _labels([p["gen"] for p in both])
        names = [n for n in _example_names(both[0]["gen"]) if all(n in _example_names(p[k]) for p in both for k in p)]
        if names:
            name, reference, panels = names[0], None, []
            for p in both:
                for past in ("gen", "gt"):
                    ex = _example(p[past], name)
                    if ex is None:
                        continue
                    reference = ex[0] if reference is None else reference
                    panels.append((f"{blabels[id(p['gen'])]} ({past.upper()})", ex[1]))
            if reference is not None and panels:
                file = f"gen-vs-gt-{_slug(key[0])}-{_slug(key[2])}.png"
                fig = resynthesis_figure(reference, panels, ncols=3 if len(panels) % 2 == 0 else None, suptitle=name)
                save_figure(fig, fig_dir / file)
                lines += [f"![ground truth and the GEN and GT resyntheses of {name}]({rel}/{file})", ""]
    return ["### Figures", "", *lines] if lines else []


# ----------------------------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------------------------
def build_report(
    evals: list[dict],
    fdsds: Sequence[dict] = (),
    *,
    title: str = "lightdvae results",
    figure_dir: str | os.PathLike | None = None,
    figure_rel: str = FIGURE_DIR,
) -> str:
    """The Markdown report of evaluation summaries (and FDSD results).

    Args:
        evals: summaries as read by :func:`find_results` (each needs ``"_path"`` for its figures).
        fdsds: FDSD results (see the module docstring for their fields).
        title: the report's first heading.
        figure_dir: where to write the figures (none when None); ``figure_rel`` is how the Markdown links them.
    """
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# {title}",
        "",
        f"Generated by `lightdvae report` on {now} from {len(evals)} evaluation summaries"
        + (f" and {len(fdsds)} FDSD results" if fdsds else "")
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
        groups.setdefault(_group_key(s), []).append(s)
    if groups:
        lines += ["## Analysis-resynthesis", ""]
    for key in sorted(groups):
        lines += _analysis_section(key, groups[key])
        lines += _structure_section(key, groups[key])
        if figure_dir is not None:
            lines += _figures_section(key, groups[key], Path(figure_dir), figure_rel)
    lines += _fdsd_section(list(fdsds))
    if evals:
        lines += ["## Evaluations", ""]
        body = []
        for s in sorted(evals, key=lambda s: (_group_key(s), _model_sort_key(s), str(s.get("past")))):
            files = s.get("files") or {}
            body.append(
                [
                    str((s.get("model") or {}).get("label", "?")),
                    f"`{s.get('run_dir') or '?'}`",
                    str((s.get("checkpoint") or {}).get("which") or "?"),
                    f"{(s.get('dataset') or {}).get('name', '?')} / {s.get('split', '?')}",
                    str(s.get("past", "?")).upper(),
                    f"{files.get('evaluated', '?')} of {files.get('listed', '?')}",
                    _num((s.get("seconds") or {}).get("wall"), 1),
                    str(s.get("created", "?")),
                ]
            )
        header = ["model", "run", "checkpoint", "corpus / split", "past", "files", "eval s", "created"]
        lines += [_table(header, body, ["l"] * 5 + ["r", "r", "l"]), ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike | None = None,
    *,
    title: str = "lightdvae results",
    figures: bool = True,
) -> str:
    """Find the results under ``paths``, build the Markdown report, write it to ``out`` (atomically; figures go to
    ``<out's folder>/figures/``) when given, and return it.

    Raises:
        ReportError: a path does not exist, or no evaluation summary or FDSD result was found.
    """
    evals, fdsds = find_results(paths)
    if not evals and not fdsds:
        where = ", ".join(str(p) for p in paths)
        raise ReportError(f"no evaluation results found under {where}; run `lightdvae eval RUN_DIR` first")
    fig_dir = None
    if out is not None and figures:
        fig_dir = Path(out).parent / FIGURE_DIR
    text = build_report(evals, fdsds, title=title, figure_dir=fig_dir)
    if out is not None:
        atomic_write_text(Path(out), text)
    return text
