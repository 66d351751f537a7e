"""The GPU check's Python half (scripts/gpu_check.sh): the environment, and RESULTS.md from the benchmark JSON.

    python scripts/gpu_results.py env --out WORK/env.json [--dry-run]   # device, versions, commit, missing modules
    python scripts/gpu_results.py report --work WORK --out RESULTS.md   # steps.tsv + *.json + *.xml -> Markdown
    python scripts/gpu_results.py check RESULTS.md                      # the sections are there (the self-check)

WORK is the check's scratch folder: ``env.json``, ``steps.tsv`` (step, status, seconds, detail; tab-separated),
pytest-benchmark files (``--benchmark-json``: any other ``*.json``) and JUnit files (``--junitxml``: ``*.xml``).
The IS loss figure is ``bytes_fused`` (extra_info of ``test_is_forward_backward``) over the median time, as a
fraction of the device's datasheet bandwidth (PEAK_TBPS, by device name; 'unknown' for others) and of a copy of
the same bytes timed in the same run (``test_copy_ceiling``).  Standard library only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: datasheet memory bandwidth (TB/s) by device name (``torch.cuda.get_device_name``), first match wins
PEAK_TBPS = [
    (r"\bh200\b", 4.8),
    (r"\bh100\b.*\bpcie\b", 2.0),
    (r"\bh100\b.*\bnvl\b", 3.9),
    (r"\bh100\b", 3.35),  # SXM ("NVIDIA H100 80GB HBM3")
    (r"\ba100\b.*80gb", 2.0),
    (r"\ba100\b", 1.555),  # 40 GB
    (r"\bb200\b", 8.0),
    (r"\bl40s?\b", 0.864),
    (r"\bl4\b", 0.3),
    (r"\ba10\b", 0.6),
    (r"\bt4\b", 0.32),
    (r"\bv100\b", 0.9),
    (r"\brtx 4090\b", 1.008),
]
#: Python modules that tests or benchmarks import; a missing one is reported (its tests skip or error)
MODULES = ["pytest", "pytest_benchmark", "xdist", "numpy", "scipy", "tqdm", "soundfile", "expecttest", "pesq", "pystoi"]
SECTIONS = ["## Device and versions", "## Steps", "## Tests", "## IS loss bandwidth", "## Benchmarks"]
#: what each benchmark group times (prefix match); units are in the tables
MEANING = {
    "is_loss_forward_backward": "fused Itakura-Saito loss, forward + backward to logvar, float32 (B, T, F)",
    "is_loss_forward": "Itakura-Saito loss, forward only, float32 (B, T, F)",
    "is_loss_copy_ceiling": "device copy reading and writing the bytes of the fused IS forward+backward",
    "kl_forward_backward": "Gaussian KL, forward + backward, (128, 50, 16)",
    "kv_attention_step": "one KV-cached attention step, batch 1, 4 heads of 32, over `keys` cached keys",
    "light_dvae_generation": "LigHT-DVAE generation of `frames` frames, batch 1 (cached decoding)",
    "train_step": "one training step (forward, negative ELBO, backward, Adam), 128 x 50 x 513, published sizes",
    "gen_resynthesis": "GEN analysis-resynthesis of a 10 s utterance, batch 1",
}


# ---------------------------------------------------------------------------------------------------------------
# env
# ---------------------------------------------------------------------------------------------------------------


def _run(cmd: list[str], timeout: float = 30) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _commit() -> str:
    if os.environ.get("GPU_CHECK_COMMIT"):
        return os.environ["GPU_CHECK_COMMIT"]
    head = _run(["git", "rev-parse", "HEAD"])
    if not head:
        return "unknown (no git checkout here; set GPU_CHECK_COMMIT)"
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"])
    return head + (" (with uncommitted changes)" if dirty else "")


def _nvcc() -> str | None:
    out = _run(["nvcc", "--version"]) if shutil.which("nvcc") else None
    match = re.search(r"release ([\d.]+)", out or "")
    return match.group(1) if match else None


def detect_env(dry_run: bool) -> dict:
    """Device, versions and missing modules; ``capability`` ("9.0") only when a GPU is used."""
    info: dict = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _commit(),
        "python": platform.python_version(),
        "host": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "nvcc": _nvcc(),
        "driver": (_run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]) or "").split("\n")[0]
        or None,
        "missing_modules": [m for m in MODULES if importlib.util.find_spec(m) is None],
    }
    try:
        import torch
    except ImportError as exc:
        return {**info, "torch": None, "no_gpu_reason": f"torch is not importable ({exc})"}
    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda)
    if dry_run:
        info["no_gpu_reason"] = "--dry-run"
    elif not torch.cuda.is_available():
        smi = _run(["nvidia-smi", "-L"])
        info["no_gpu_reason"] = "torch.cuda.is_available() is False" + (f"; nvidia-smi lists {smi!r}" if smi else "")
    else:
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
            l2_mib=round(getattr(props, "L2_cache_size", 0) / 2**20, 1) or None,
            gpus=torch.cuda.device_count(),
        )
    return info


# ---------------------------------------------------------------------------------------------------------------
# inputs of the report
# ---------------------------------------------------------------------------------------------------------------


def peak_tbps(name: str | None) -> float | None:
    """The datasheet memory bandwidth of a device by its name, None when the table does not know it."""
    low = (name or "").lower()
    return next((tbps for pattern, tbps in PEAK_TBPS if re.search(pattern, low)), None)


def read_steps(path: Path) -> list[dict]:
    steps = []
    if path.exists():
        for line in path.read_text().splitlines():
            name, status, seconds, detail = (line.split("\t") + ["", "", ""])[:4]
            steps.append({"name": name, "status": status, "seconds": seconds, "detail": detail})
    return steps


def read_benchmarks(work: Path) -> tuple[list[dict], list[str]]:
    """Every row of every pytest-benchmark file in ``work``, and the files that could not be read."""
    rows, bad = [], []
    for path in sorted(work.glob("*.json")):
        if path.name == "env.json":
            continue
        try:
            rows += json.loads(path.read_text())["benchmarks"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            bad.append(f"{path.name}: {exc}")
    return rows, bad


def read_junit(path: Path) -> dict:
    """Counts, failures (with their first message line) and skip reasons of one JUnit file."""
    result = {"name": path.stem, "passed": 0, "failed": [], "errors": [], "skipped": Counter()}
    for case in ET.parse(path).getroot().iter("testcase"):
        nodeid = "::".join(p for p in (case.get("classname", ""), case.get("name", "")) if p)
        outcome = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
        message = "" if outcome is None else (outcome.get("message") or (outcome.text or "")).strip()
        message = message.splitlines()[0][:200] if message else ""
        missing = re.search(r"No module named '[\w.]+'", (outcome.text or "") if outcome is not None else "")
        if missing and missing.group(0) not in message:
            message += f" ({missing.group(0)})"
        if outcome is None:
            result["passed"] += 1
        elif outcome.tag == "skipped":
            result["skipped"][re.sub(r"^\S+:\d+: ", "", message)] += 1
        else:
            result["failed" if outcome.tag == "failure" else "errors"].append(f"{nodeid}: {message}")
    return result


# ---------------------------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------------------------


def fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3g} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


def fmt_gbps(bytes_: float, seconds: float) -> str:
    gbps = bytes_ / seconds / 1e9
    return f"{gbps:.0f} GB/s" if gbps >= 100 else f"{gbps:.3g} GB/s"


def is_gpu_row(row: dict) -> bool:
    device = str(row.get("extra_info", {}).get("device", ""))
    return bool(device) and not device.startswith("cpu")


def _case(row: dict) -> tuple[str, str]:
    """(test function less a trailing _cuda, its parameters but the device): a GPU row and its CPU twin share it."""
    name = row["name"].split("[", 1)[0].removesuffix("_cuda")
    params = {k: v for k, v in (row.get("params") or {}).items() if k != "device"}
    return name, ", ".join(f"{k}={_value(v)}" for k, v in params.items())


def _value(value) -> str:
    return "x".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _meaning(group: str) -> str:
    return next((text for prefix, text in MEANING.items() if group.startswith(prefix)), "")


def _figure(row: dict) -> str:
    """A figure derived from the median, with its unit."""
    info, median = row.get("extra_info", {}), row["stats"]["median"]
    if "bytes_fused" in info or "bytes_moved" in info:
        return fmt_gbps(info.get("bytes_fused") or info["bytes_moved"], median)
    if "frames" in info and row.get("group", "").endswith("generation"):
        return f"{1e3 * median / info['frames']:.3g} ms/frame"
    if "audio_seconds" in info:
        return f"{median / info['audio_seconds']:.3g} s per s of audio"
    if row.get("group", "").startswith("train_step") and info.get("shape"):
        return f"{info['shape'][0] / median:.0f} segments/s"
    return ""


def bandwidth_section(rows: list[dict], env: dict) -> list[str]:
    peak = peak_tbps(env.get("gpu"))
    peak_text = f"{peak} TB/s (datasheet)" if peak else "unknown (device not in the table of scripts/gpu_results.py)"
    lines = [
        "## IS loss bandwidth",
        "",
        "Fused IS loss forward+backward (`test_is_forward_backward`): `bytes_fused` = 5 float32 arrays of the shape "
        "(forward reads power and logvar, backward reads both and writes the gradient) over the median time; the "
        "reference moves more bytes, so its figure is an effective bandwidth. 'copy' is `test_copy_ceiling`: a "
        "device copy reading and writing the same number of bytes in the same run, the bandwidth achievable here. "
        f"Target (SPEC section 8): at least 70 % of the device's memory bandwidth. Peak of this device: {peak_text}.",
        "",
    ]
    copies = {
        (r["extra_info"].get("device"), _value(r["params"].get("shape"))): r
        for r in rows
        if "bytes_moved" in r.get("extra_info", {})
    }
    fused = [
        r for r in rows if r.get("group") == "is_loss_forward_backward" and "bytes_fused" in r.get("extra_info", {})
    ]
    if not fused:
        return lines + ["No IS loss forward+backward rows with `bytes_fused` in this run.", ""]
    lines += [
        "| device | shape | impl | median | achieved | of peak | copy (same bytes) | of copy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    l2 = env.get("l2_mib")
    for row in sorted(fused, key=lambda r: (not is_gpu_row(r), _case(r))):
        info, median = row["extra_info"], row["stats"]["median"]
        gbps = info["bytes_fused"] / median / 1e9
        shape = _value(row["params"].get("shape"))
        copy = copies.get((info.get("device"), shape))
        in_l2 = is_gpu_row(row) and l2 and 3 / 5 * info["bytes_fused"] <= l2 * 2**20
        copy_gbps = copy["extra_info"]["bytes_moved"] / copy["stats"]["median"] / 1e9 if copy else None
        of_peak = f"{gbps / (peak * 1e3):.0%}" if peak and is_gpu_row(row) else "unknown"
        copy_text = fmt_gbps(copy["extra_info"]["bytes_moved"], copy["stats"]["median"]) if copy else "—"
        lines.append(
            f"| {info.get('device')} | {shape}{' (fits in L2)' if in_l2 else ''} | {row['params'].get('impl')} "
            f"| {fmt_time(median)} "
            f"| {fmt_gbps(info['bytes_fused'], median)} | {of_peak} | {copy_text} "
            f"| {f'{gbps / copy_gbps:.0%}' if copy_gbps else '—'} |"
        )
    if l2:
        lines += [
            "",
            f"The L2 cache holds {l2} MiB: at a shape marked 'fits in L2' the 3 arrays (3/5 of `bytes_fused`) stay "
            "partly in the cache between the repeated runs, so its figure can exceed the memory's; the other shape is "
            "the memory-bandwidth figure.",
        ]
    return lines + [""]


def benchmark_section(rows: list[dict], bad: list[str]) -> list[str]:
    lines = ["## Benchmarks", ""]
    lines += [f"- could not read {b}" for b in bad]
    if not rows:
        return lines + ["No benchmark rows in this run.", ""]
    cpu_by_case = {_case(r): r for r in rows if not is_gpu_row(r)}
    gpu_cases = {_case(r) for r in rows if is_gpu_row(r)}
    shown = [r for r in rows if is_gpu_row(r) or _case(r) not in gpu_cases]
    lines += [
        "Medians of pytest-benchmark (interquartile range, rounds); 'CPU' is the same case on the CPU in the same run, "
        "'GPU speed-up' its median over the GPU's; 'figure' is derived from the median.",
        "",
    ]
    for group in sorted({r.get("group") or "" for r in shown}):
        lines += [f"### {group or '(no group)'}", ""]
        if _meaning(group):
            lines += [_meaning(group) + ".", ""]
        lines += [
            "| case | device | median | IQR | rounds | CPU | GPU speed-up | figure |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in sorted((r for r in shown if (r.get("group") or "") == group), key=_case):
            stats, gpu = row["stats"], is_gpu_row(row)
            cpu = cpu_by_case.get(_case(row)) if gpu else None
            name, params = _case(row)
            cpu_median = fmt_time(cpu["stats"]["median"]) if cpu else "—"
            speedup = f"{cpu['stats']['median'] / stats['median']:.3g}x" if cpu else "—"
            lines.append(
                f"| {name}{f' ({params})' if params else ''} | {row['extra_info'].get('device', '?')} "
                f"| {fmt_time(stats['median'])} | {fmt_time(stats['iqr'])} | {stats['rounds']} "
                f"| {cpu_median} | {speedup} | {_figure(row)} |"
            )
        lines.append("")
    return lines


def tests_section(work: Path) -> list[str]:
    lines = ["## Tests", ""]
    files = sorted(work.glob("*.xml"))
    if not files:
        return lines + ["No test run in this check.", ""]
    lines += ["| run | passed | failed | errors | skipped |", "|---|---|---|---|---|"]
    details = []
    for path in files:
        try:
            r = read_junit(path)
        except (OSError, ET.ParseError) as exc:
            lines.append(f"| {path.stem} | could not read its JUnit file: {exc} | | | |")
            continue
        lines.append(
            f"| {r['name']} | {r['passed']} | {len(r['failed'])} | {len(r['errors'])} | {sum(r['skipped'].values())} |"
        )
        for kind in ("failed", "errors"):
            details += [f"- {r['name']}, {kind}: {item}" for item in r[kind][:25]]
            if len(r[kind]) > 25:
                details.append(f"- {r['name']}: {len(r[kind]) - 25} more {kind} (see its log)")
        details += [f"- {r['name']}, skipped {n}x: {reason}" for reason, n in r["skipped"].most_common(8)]
    return lines + [""] + details + [""]


def render(work: Path) -> str:
    env = json.loads((work / "env.json").read_text()) if (work / "env.json").exists() else {}
    steps = read_steps(work / "steps.tsv")
    rows, bad = read_benchmarks(work)
    gpu = env.get("gpu")
    build = _build_info()
    title = f"# GPU check: {gpu}" if gpu else f"# GPU check: no GPU ({env.get('no_gpu_reason', 'not detected')})"
    lines = [
        title,
        "",
        "Written by `bash scripts/gpu_check.sh` (scripts/gpu_results.py)"
        + ("." if gpu else ": no GPU, so this is the script's self-check on the CPU (build and CUDA parts skipped)."),
        "",
        "## Device and versions",
        "",
        "| | |",
        "|---|---|",
        f"| device | {gpu or 'none'}"
        + (
            f" (compute capability {env.get('capability')}, {env.get('gpu_memory_gib')} GiB, "
            f"{env.get('multiprocessors')} SMs, L2 {env.get('l2_mib')} MiB)"
            if gpu
            else ""
        )
        + " |",
        f"| peak memory bandwidth | {f'{peak_tbps(gpu)} TB/s (datasheet)' if peak_tbps(gpu) else 'unknown'} |",
        f"| driver | {env.get('driver') or 'n/a'} |",
        f"| CUDA | torch built with {env.get('torch_cuda') or 'none'}; nvcc {env.get('nvcc') or 'not found'} |",
        f"| torch | {env.get('torch')} |",
        f"| python | {env.get('python')} |",
        f"| lightdvae._C | {build} |",
        f"| host | {env.get('host')} |",
        f"| commit | {env.get('commit')} |",
        f"| date | {env.get('date')} |",
        f"| missing Python modules | {', '.join(env.get('missing_modules') or []) or 'none'} |",
        "",
        "## Steps",
        "",
        "| step | status | seconds | detail |",
        "|---|---|---|---|",
    ]
    lines += [f"| {s['name']} | {s['status']} | {s['seconds']} | {s['detail'].replace('|', '/')} |" for s in steps]
    failed = [s for s in steps if s["status"] not in ("ok", "skipped")]
    lines += [
        "",
        "Failed steps: " + (", ".join(f"{s['name']} ({s['status']}: {s['detail']})" for s in failed) or "none"),
    ]
    lines += [""] + tests_section(work) + bandwidth_section(rows, env) + benchmark_section(rows, bad)
    return "\n".join(lines).rstrip() + "\n"


def _build_info() -> str:
    try:
        info = json.loads((ROOT / "lightdvae" / "_C.build.json").read_text())
    except (OSError, ValueError):
        return "no build record (lightdvae/_C.build.json)"
    kernels = (
        f"CUDA kernels for {';'.join(info.get('cuda_archs') or [])}" if info.get("cuda_kernels") else "CPU kernels"
    )
    return f"built against torch {info.get('torch')}, {kernels}"


def check(text: str) -> list[str]:
    """What a RESULTS.md lacks: a section, a step table row, or a benchmark row."""
    problems = [f"no section {s!r}" for s in SECTIONS if s not in text]
    if "\n| detect |" not in text:
        problems.append("the step table has no 'detect' row")
    bench = text.split("## Benchmarks", 1)[-1]
    if not re.search(r"^\| test_\w+", bench, re.M):
        problems.append("no benchmark row under '## Benchmarks'")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_env = sub.add_parser("env", help="write the device and versions as JSON")
    p_env.add_argument("--out", type=Path, required=True)
    p_env.add_argument("--dry-run", action="store_true", help="act as if no GPU were there")
    p_report = sub.add_parser("report", help="write RESULTS.md from a work folder")
    p_report.add_argument("--work", type=Path, required=True)
    p_report.add_argument("--out", type=Path, required=True)
    p_check = sub.add_parser("check", help="check that a RESULTS.md has its sections")
    p_check.add_argument("results", type=Path)
    args = parser.parse_args(argv)
    if args.command == "env":
        env = detect_env(args.dry_run)
        args.out.write_text(json.dumps(env, indent=2) + "\n")
        versions = f"torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), python {env['python']}"
        if env.get("gpu"):
            print(f"{env['gpu']}, compute capability {env['capability']}, driver {env.get('driver')}; {versions}")
        else:
            print(f"no GPU ({env['no_gpu_reason']}); {versions}")
    elif args.command == "report":
        args.out.write_text(render(args.work))
        print(f"wrote {args.out}")
    else:
        problems = check(args.results.read_text())
        for problem in problems:
            print(f"{args.results}: {problem}", file=sys.stderr)
        if problems:
            return 1
        print(f"{args.results}: every section is there")
    return 0


if __name__ == "__main__":
    sys.exit(main())
