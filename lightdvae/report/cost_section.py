"""``## Cost``: what each run cost as its commands recorded it (training time from ``log.csv``, the model's time
in ``lightdvae eval`` and ``lightdvae generate`` per second of audio), and, when a ``cost.json`` of ``lightdvae
demo`` / ``reproduce`` is among the results, the training step and generation times measured with the native
ops and with the pure-PyTorch references in one process."""

from __future__ import annotations

import math
from collections.abc import Sequence

from lightdvae.report.runs_section import run_label
from lightdvae.report.samples_section import same_run
from lightdvae.report.tables import num, table

__all__ = ["cost_section", "measured_rows"]


def _per_audio_second(seconds, audio) -> float | None:
    ok = isinstance(seconds, (int, float)) and isinstance(audio, (int, float)) and audio > 0
    return seconds / audio if ok else None


def _run_row(run: dict, evals: Sequence[dict], generations: Sequence[dict]) -> list[str]:
    meta, t = run["meta"], run["meta"].get("training") or {}
    secs = [r["seconds"] for r in run["log"] if isinstance(r.get("seconds"), float)]
    gen_eval = [s for s in evals if same_run(s, run) and s.get("past") == "gen"]
    resynth = None
    if gen_eval:
        s = max(gen_eval, key=lambda s: str(s.get("created", "")))
        audio = (s.get("files") or {}).get("seconds_of_audio")
        resynth = _per_audio_second((s.get("seconds") or {}).get("model"), audio)
    gens = sorted((g for g in generations if same_run(g, run)), key=lambda g: str(g.get("created", "")))
    timings = (gens[-1].get("timings") or {}) if gens else {}
    return [
        run_label(run),
        str(meta.get("device") or t.get("device") or "?"),
        str(t.get("threads") or ""),
        num(sum(secs) / 60.0, 1) if secs else "",
        num(resynth, 3) if resynth is not None else "",
        num(timings.get("prior_sampling_s_per_audio_s"), 3) if timings else "",
        num(timings.get("griffin_lim_s_per_audio_s"), 3) if timings else "",
    ]


def measured_rows(cost: dict) -> list[dict]:
    """The model rows of a ``cost.json`` (its ``_about`` and ``kind`` left out)."""
    return [v for k, v in cost.items() if not k.startswith("_") and isinstance(v, dict) and "backends" in v]


def _measured_table(cost: dict) -> list[str]:
    about = cost.get("_about") or {}

    def ms(row, be):
        v = (row["backends"].get(be) or {}).get("train_step_s")
        return num(1000 * v, 1) if isinstance(v, (int, float)) else ""

    def ratio(row, key):
        ref, nat = (row["backends"].get(be) or {} for be in ("ref", "native"))
        return f"{ref[key] / nat[key]:.2f}x" if ref.get(key) and nat.get(key) else ""

    def gen(row, be):
        v = (row["backends"].get(be) or {}).get("generate_s_per_audio_s")
        return num(v, 3) if isinstance(v, (int, float)) and math.isfinite(v) else ""

    body = [
        [
            str(r.get("label", "?")),
            str(r.get("epoch_s") or ""),
            ms(r, "ref"),
            ms(r, "native"),
            ratio(r, "train_step_s"),
            gen(r, "ref"),
            gen(r, "native"),
            ratio(r, "generate_s_per_audio_s"),
        ]
        for r in measured_rows(cost)
    ]
    header = [
        "model",
        "s / epoch",
        "train step ref (ms)",
        "native (ms)",
        "speed-up",
        "generation ref (s per s of audio)",
        "native",
        "speed-up",
    ]
    return [
        f"Measured in one process after training ({about.get('device', '?')}, {about.get('threads', '?')} torch "
        f"threads): training step of batch {about.get('batch_size', '?')} x {about.get('seq_len', '?')} frames, and "
        f"generation of one {about.get('generate_frames', '?')}-frame sample (median of 2 after a warm-up), with the "
        "native ops and with the pure-PyTorch references (`LIGHTDVAE_BACKEND=ref`). s / epoch: the training run's "
        "median epoch.",
        "",
        table(header, body),
        "",
    ]


def cost_section(
    runs: Sequence[dict], evals: Sequence[dict], generations: Sequence[dict], costs: Sequence[dict]
) -> list[str]:
    """``## Cost``: the runs' recorded times and the measured native-vs-reference table of each ``cost.json``,
    with one line for what is missing."""
    lines = ["## Cost", ""]
    rows = [_run_row(r, evals, generations) for r in runs]
    rows = [row for row in rows if any(cell not in ("", "?") for cell in row[1:])]  # imported and never timed: none
    if rows:
        header = [
            "model",
            "device",
            "threads",
            "training (min)",
            "resynthesis (s per s of audio)",
            "prior sampling (s per s of audio)",
            "Griffin-Lim (s per s of audio)",
        ]
        lines += [
            "As the commands recorded them: training time over all sessions (log.csv), the model's time in "
            "`lightdvae eval` (GEN past) and in `lightdvae generate` per second of audio, each on the device its "
            "command ran on (a shared machine slows them alike only when the load is steady).",
            "",
            table(header, rows, ["l", "l"] + ["r"] * 5),
            "",
        ]
    for cost in costs:
        lines += _measured_table(cost)
    if not costs:
        lines += [
            "_Native vs reference ops not measured here: `lightdvae demo` and `lightdvae reproduce` time their "
            "models' training step and generation with both (cost.json, which the report reads); `pytest "
            "benchmarks/test_train_step.py --benchmark-only` times the published sizes._",
            "",
        ]
    return lines
