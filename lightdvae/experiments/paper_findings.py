"""The paper's findings checked on an experiment's per-file SI-SDR (:func:`findings`), one small function per
finding, each from paired differences over the test files (mean and 95 % t-interval)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lightdvae.experiments.entries import ENTRIES
from lightdvae.experiments.state import run_dir

__all__ = ["COLLAPSE_DB", "SAME_DB", "findings", "per_file", "paired"]

COLLAPSE_DB = 3.0  #: GEN SI-SDR this far below GT SI-SDR (paired mean over files) is called a collapse
SAME_DB = 1.0  #: two SI-SDR means closer than this (paired, dB) are called the same
TRANSFORMERS = ("hit-dvae", "light-dvae")
BASELINES = ("vae", "dkf", "rvae", "srnn-tf", "srnn-ss")


def per_file(out: Path, key: str, past: str) -> dict[str, float]:
    """Test-split SI-SDR per file (finite values only) of the model ``key`` evaluated with ``past``; ``{}`` when
    it was not evaluated."""
    from lightdvae.evaluate import PER_FILE, default_out_dir, read_per_file

    path = default_out_dir(run_dir(out, key), "test", past) / PER_FILE
    if not path.is_file():
        return {}
    return {r["name"]: float(r["si_sdr"]) for r in read_per_file(path) if math.isfinite(float(r["si_sdr"]))}


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
class _Scores:
    """Per-file SI-SDR of each model: GEN past (every model), GT past (the models that see past speech)."""

    gen: dict[str, dict[str, float]]
    gt: dict[str, dict[str, float]]

    def both(self, key: str) -> bool:
        """Evaluated with GEN and GT past."""
        return bool(self.gt.get(key) and self.gen.get(key))

    def gap(self, key: str) -> dict | None:
        """GEN minus GT of the same model."""
        return paired(self.gen.get(key) or {}, self.gt.get(key) or {})


def _transformers_lead(s: _Scores) -> dict:
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
        f"best transformer {ENTRIES[best_t].label} {_mean(s.gen[best_t]):.2f} dB vs best baseline "
        f"{ENTRIES[best_b].label} {_mean(s.gen[best_b]):.2f} dB; paired difference {_fmt(d)}",
    )


def _srnn_collapse(s: _Scores) -> dict:
    text = "SRNN (TF) collapses in GEN while SRNN (SS) does not"
    if not s.both("srnn-tf"):
        return _finding(text, "not tested", "needs SRNN (TF) evaluated with GEN and GT past")
    d_tf = s.gap("srnn-tf")
    parts = [f"SRNN (TF) GEN - GT {_fmt(d_tf)}"]
    if s.both("srnn-ss"):
        d_ss = s.gap("srnn-ss")
        parts.append(f"SRNN (SS) GEN - GT {_fmt(d_ss)}")
        parts.append(f"GEN SI-SDR TF {_mean(s.gen['srnn-tf']):.2f} dB, SS {_mean(s.gen['srnn-ss']):.2f} dB")
        verdict = "holds" if _collapses(d_tf) and _steady(d_ss) else "does not hold"
    else:
        verdict = "holds" if _collapses(d_tf) else "does not hold"
        parts.append("(SRNN (SS) not in this experiment: only the TF half is tested)")
    return _finding(text, verdict, "; ".join(parts))


def _inv_s_collapse(s: _Scores, base_key: str, prefix: str) -> dict:
    """Inv-s collapses in GEN (GEN far below GT) but not in GT (GT not far below its full model's GT)."""
    k = f"{prefix}-inv-s"
    label = ENTRIES[k].label
    text = f"{label} collapses in GEN but not in GT"
    if not s.both(k):
        return _finding(text, "not tested", f"needs {label} evaluated with GEN and GT past")
    d = s.gap(k)
    parts = [f"GEN - GT {_fmt(d)}"]
    ok_gt = True
    if s.gt.get(base_key):
        d_gt = paired(s.gt[k], s.gt[base_key])
        parts.append(f"GT vs {ENTRIES[base_key].label} GT {_fmt(d_gt)}")
        ok_gt = d_gt is not None and d_gt["mean"] > -COLLAPSE_DB
    verdict = "holds" if _collapses(d) and ok_gt else "does not hold"
    return _finding(text, verdict, "; ".join(parts))


def _inv_s_nr_same(s: _Scores, prefix: str) -> dict:
    """Inv-s-NR scores the same in GEN and GT."""
    k = f"{prefix}-inv-s-nr"
    label = ENTRIES[k].label
    text = f"{label} scores the same in GEN and GT"
    if not s.both(k):
        return _finding(text, "not tested", f"needs {label} evaluated with GEN and GT past")
    d = s.gap(k)
    verdict = "holds" if d is not None and abs(d["mean"]) <= SAME_DB else "does not hold"
    return _finding(text, verdict, f"GEN - GT {_fmt(d)}")


def _light_matches_hit(s: _Scores) -> dict:
    text = "LigHT-DVAE matches HiT-DVAE with about 20 % fewer parameters"
    if not (s.gen.get("hit-dvae") and s.gen.get("light-dvae")):
        return _finding(text, "not tested", "needs HiT-DVAE and LigHT-DVAE")
    from lightdvae import models

    p_hit = models.build("hit-dvae").num_parameters()
    p_light = models.build("light-dvae").num_parameters()
    d = paired(s.gen["light-dvae"], s.gen["hit-dvae"])
    verdict = "holds" if d is not None and abs(d["mean"]) <= SAME_DB else "does not hold"
    return _finding(
        text,
        verdict,
        f"LigHT - HiT SI-SDR (GEN) {_fmt(d)}; parameters {p_light:,} vs {p_hit:,} ({p_light / p_hit:.2f})",
    )


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
    s = _Scores(
        gen={k: per_file(out, k, "gen") for k in have},
        gt={k: per_file(out, k, "gt") for k in have if ENTRIES[k].sees_past_speech},
    )
    res = [_transformers_lead(s), _srnn_collapse(s)]
    for base_key, prefix in (("hit-dvae", "hit"), ("light-dvae", "light")):
        res += [_inv_s_collapse(s, base_key, prefix), _inv_s_nr_same(s, prefix)]
    return res + [_light_matches_hit(s)]
