"""The paper's findings (SPEC section 6) checked on per-file SI-SDR (:func:`findings`), one small function per
finding, each from paired differences over the test files (mean and 95 % t-interval), and their section of the
report (:func:`findings_section`), from the ``per_file.csv`` beside each evaluation summary.

Models are known by their table label (``"LigHT-DVAE"``, ``"SRNN (TF)"``, ``"HiT-Inv-s-NR"``...).  The shipped
priors (``"... (shipped)"``) are checked apart from the trained runs: a set of converged priors and a set of runs
are two experiments.  A model with more than one run in a set is left out of that set's findings (say which run:
give the report the runs of one experiment)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["COLLAPSE_DB", "SAME_DB", "Scores", "findings", "paired", "scores_from", "findings_section"]

COLLAPSE_DB = 3.0  #: GEN SI-SDR this far below GT SI-SDR (paired mean over files) is called a collapse
SAME_DB = 1.0  #: two SI-SDR means closer than this (paired, dB) are called the same
TRANSFORMERS = ("HiT-DVAE", "LigHT-DVAE")
BASELINES = ("VAE", "DKF", "RVAE", "SRNN (TF)", "SRNN (SS)")
SHIPPED = " (shipped)"


def paired(a: dict[str, float], b: dict[str, float]) -> dict | None:
    """Mean of a - b over the files both have, with its 95 % t-interval."""
    from lightdvae.metrics import summarize

    names = sorted(set(a) & set(b))
    if len(names) < 2:
        return None
    s = summarize([a[n] - b[n] for n in names])
    return {"mean": s["mean"], "low": s["ci_low"], "high": s["ci_high"], "n": s["n"]}


def _fmt(d: dict | None) -> str:
    """``"+1.23 dB [+0.50, +1.96] (n=20)"``, or ``"n/a"``."""
    if d is None:
        return "n/a"
    return f"{d['mean']:+.2f} dB [{d['low']:+.2f}, {d['high']:+.2f}] (n={d['n']})"


def _mean(values: dict[str, float]) -> float:
    return float(np.mean(list(values.values()))) if values else float("nan")


def _finding(text: str, verdict: str, evidence: str) -> dict:
    return {"finding": text, "verdict": verdict, "evidence": evidence}


def _collapses(d: dict | None) -> bool:
    return d is not None and d["mean"] < -COLLAPSE_DB and d["high"] < 0


def _steady(d: dict | None) -> bool:
    return d is not None and d["mean"] >= -COLLAPSE_DB


@dataclass(frozen=True)
class Scores:
    """Per-file SI-SDR of each model (by label): GEN past, GT past (the models that see past speech), and each
    model's parameter count when known."""

    gen: dict[str, dict[str, float]]
    gt: dict[str, dict[str, float]] = field(default_factory=dict)
    parameters: dict[str, int] = field(default_factory=dict)

    def both(self, label: str) -> bool:
        """Evaluated with GEN and GT past."""
        return bool(self.gt.get(label) and self.gen.get(label))

    def gap(self, label: str) -> dict | None:
        """GEN minus GT of the same model."""
        return paired(self.gen.get(label) or {}, self.gt.get(label) or {})


def _transformers_lead(s: Scores) -> dict:
    text = "The transformer DVAEs (HiT-DVAE, LigHT-DVAE) lead on SI-SDR (GEN)"
    tf = [k for k in TRANSFORMERS if s.gen.get(k)]
    base = [k for k in BASELINES if s.gen.get(k)]
    if not (tf and base):
        return _finding(text, "not tested", "needs HiT-DVAE or LigHT-DVAE and at least one baseline")
    best_t = max(tf, key=lambda k: _mean(s.gen[k]))
    best_b = max(base, key=lambda k: _mean(s.gen[k]))
    d = paired(s.gen[best_t], s.gen[best_b])
    verdict = (
        "not resolved"
        if d is None
        else "holds"
        if d["low"] > 0
        else "does not hold"
        if d["mean"] <= 0
        else "not resolved"
    )
    return _finding(
        text,
        verdict,
        f"best transformer {best_t} {_mean(s.gen[best_t]):.2f} dB vs best baseline {best_b} "
        f"{_mean(s.gen[best_b]):.2f} dB; paired difference {_fmt(d)}",
    )


def _srnn_collapse(s: Scores) -> dict:
    text = "SRNN (TF) collapses in GEN while SRNN (SS) does not"
    if not s.both("SRNN (TF)"):
        return _finding(text, "not tested", "needs SRNN (TF) evaluated with GEN and GT past")
    d_tf = s.gap("SRNN (TF)")
    parts = [f"SRNN (TF) GEN - GT {_fmt(d_tf)}"]
    if s.both("SRNN (SS)"):
        d_ss = s.gap("SRNN (SS)")
        parts.append(f"SRNN (SS) GEN - GT {_fmt(d_ss)}")
        parts.append(f"GEN SI-SDR TF {_mean(s.gen['SRNN (TF)']):.2f} dB, SS {_mean(s.gen['SRNN (SS)']):.2f} dB")
        verdict = "holds" if _collapses(d_tf) and _steady(d_ss) else "does not hold"
    else:
        verdict = "holds" if _collapses(d_tf) else "does not hold"
        parts.append("(SRNN (SS) not evaluated here: only the TF half is tested)")
    return _finding(text, verdict, "; ".join(parts))


def _inv_s_collapse(s: Scores, base: str, prefix: str) -> dict:
    """Inv-s collapses in GEN (GEN far below GT) but not in GT (GT not far below its full model's GT)."""
    label = f"{prefix}-Inv-s"
    text = f"{label} collapses in GEN but not in GT"
    if not s.both(label):
        return _finding(text, "not tested", f"needs {label} evaluated with GEN and GT past")
    d = s.gap(label)
    parts = [f"GEN - GT {_fmt(d)}"]
    ok_gt = True
    if s.gt.get(base):
        d_gt = paired(s.gt[label], s.gt[base])
        parts.append(f"GT vs {base} GT {_fmt(d_gt)}")
        ok_gt = d_gt is not None and d_gt["mean"] > -COLLAPSE_DB
    verdict = "holds" if _collapses(d) and ok_gt else "does not hold"
    return _finding(text, verdict, "; ".join(parts))


def _inv_s_nr_same(s: Scores, prefix: str) -> dict:
    """Inv-s-NR scores the same in GEN and GT."""
    label = f"{prefix}-Inv-s-NR"
    text = f"{label} scores the same in GEN and GT"
    if not s.both(label):
        return _finding(text, "not tested", f"needs {label} evaluated with GEN and GT past")
    d = s.gap(label)
    verdict = "holds" if d is not None and abs(d["mean"]) <= SAME_DB else "does not hold"
    return _finding(text, verdict, f"GEN - GT {_fmt(d)}")


def _light_matches_hit(s: Scores) -> dict:
    text = "LigHT-DVAE matches HiT-DVAE with about 20 % fewer parameters"
    if not (s.gen.get("HiT-DVAE") and s.gen.get("LigHT-DVAE")):
        return _finding(text, "not tested", "needs HiT-DVAE and LigHT-DVAE")
    d = paired(s.gen["LigHT-DVAE"], s.gen["HiT-DVAE"])
    verdict = "holds" if d is not None and abs(d["mean"]) <= SAME_DB else "does not hold"
    p_hit, p_light = s.parameters.get("HiT-DVAE"), s.parameters.get("LigHT-DVAE")
    sizes = f"; parameters {p_light:,} vs {p_hit:,} ({p_light / p_hit:.2f})" if p_hit and p_light else ""
    return _finding(text, verdict, f"LigHT - HiT SI-SDR (GEN) {_fmt(d)}{sizes}")


def findings(s: Scores) -> list[dict]:
    """Check the paper's findings (SPEC section 6) on per-file SI-SDR.

    Each finding is ``{"finding", "verdict": "holds" | "does not hold" | "not resolved" | "not tested",
    "evidence"}``.  Differences are paired over test files (mean and 95 % t-interval):

    * the transformer DVAEs lead on SI-SDR: the better of HiT/LigHT-DVAE minus the best baseline (GEN) > 0, its
      interval above 0 (interval straddling 0: not resolved);
    * a *collapse* in GEN: GEN minus GT SI-SDR of the same model below -:data:`COLLAPSE_DB` dB with the interval
      below 0; *no collapse*: the mean gap above -:data:`COLLAPSE_DB` dB;
    * *the same*: a paired mean difference within +-:data:`SAME_DB` dB.
    """
    res = [_transformers_lead(s), _srnn_collapse(s)]
    for base, prefix in (("HiT-DVAE", "HiT"), ("LigHT-DVAE", "LigHT")):
        res += [_inv_s_collapse(s, base, prefix), _inv_s_nr_same(s, prefix)]
    return res + [_light_matches_hit(s)]


def _per_file(summary: dict) -> dict[str, float]:
    """Per-file SI-SDR (finite values) from the ``per_file.csv`` beside an evaluation summary; ``{}`` without."""
    from lightdvae.evaluate import PER_FILE, read_per_file

    rel = (summary.get("outputs") or {}).get("per_file") or PER_FILE
    path = Path(summary["_path"]).parent / rel
    if not path.is_file():
        return {}
    rows = read_per_file(path)
    values = {r.get("name"): float(r.get("si_sdr", math.nan)) for r in rows}
    return {n: v for n, v in values.items() if n is not None and math.isfinite(v)}


def scores_from(summaries: Sequence[dict]) -> tuple[dict[str, Scores], dict[str, list[str]]]:
    """The :class:`Scores` of each set of evaluations of one corpus and split (``"runs"``, ``"shipped"``), and
    the labels of each set left out for having several runs."""
    runs: dict[str, dict[str, set]] = {}
    for s in summaries:
        label = str((s.get("model") or {}).get("label", "?"))
        kind = "shipped" if label.endswith(SHIPPED) else "runs"
        runs.setdefault(kind, {}).setdefault(label.removesuffix(SHIPPED), set()).add(s.get("run_dir") or s["_path"])
    sets: dict[str, Scores] = {}
    for s in summaries:
        label = str((s.get("model") or {}).get("label", "?"))
        kind, key = ("shipped" if label.endswith(SHIPPED) else "runs"), label.removesuffix(SHIPPED)
        if len(runs[kind][key]) > 1:
            continue
        sc = sets.setdefault(kind, Scores({}, {}, {}))
        values = _per_file(s)
        if values:
            (sc.gt if s.get("past") == "gt" else sc.gen)[key] = values
        n = (s.get("model") or {}).get("parameters")
        if isinstance(n, int):
            sc.parameters[key] = n
    several = {k: sorted(lab for lab, r in v.items() if len(r) > 1) for k, v in runs.items()}
    return sets, {k: v for k, v in several.items() if v}


def findings_section(key: tuple[str, str, str], summaries: Sequence[dict]) -> list[str]:
    """``## The paper's findings`` on one corpus and split: a table per set of models (trained runs, shipped
    priors) with a finding tested, or one line saying what they need."""
    sets, several = scores_from(summaries)
    head = f"## The paper's findings on corpus **{key[0]}**, **{key[2]}** split"
    lines = []
    for kind in ("runs", "shipped"):
        res = findings(sets[kind]) if kind in sets else []
        if all(r["verdict"] == "not tested" for r in res):
            continue
        if kind == "shipped":
            lines += ["The shipped priors (evaluated here), apart from the runs:", ""]
        lines += ["| finding | verdict | evidence |", "|---|---|---|"]
        lines += [f"| {r['finding']} | **{r['verdict']}** | {r['evidence']} |" for r in res] + [""]
    notes = [
        f"- left out (several runs of one model; report one experiment at a time): {', '.join(v)}"
        for v in several.values()
    ]
    if not lines:
        return [
            head,
            "",
            "_None testable here: the findings compare the per-file SI-SDR of the paper's models (at least a "
            "transformer DVAE and a baseline, or a model evaluated with both pasts: `lightdvae eval RUN --past gen` "
            "and `--past gt`)._",
            *notes,
            "",
        ]
    return [
        head,
        "",
        "Paired differences of per-file SI-SDR (mean, 95 % t-interval). A collapse: GEN more than "
        f"{COLLAPSE_DB:g} dB below GT; the same: within {SAME_DB:g} dB.",
        "",
        *lines,
        *notes,
        *([""] if notes else []),
    ]
