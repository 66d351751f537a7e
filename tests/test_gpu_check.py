"""The GPU check (scripts/gpu_check.sh, scripts/gpu_results.py) on a machine without a GPU.

The report is built from a hand-made work folder shaped like a GPU run (H200 rows, a CPU twin, a failed step, a
failed test, a test module that needs an absent package); the script itself runs its --dry-run path, which skips
the build and the CUDA parts and sends a tiny CPU benchmark through the same JSON -> Markdown path.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS_PY = ROOT / "scripts" / "gpu_results.py"
_spec = importlib.util.spec_from_file_location("gpu_results", RESULTS_PY)
gpu_results = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_results)

FUSED = 5 * 4 * 16 * 1000 * 513  # bytes_fused of test_is_forward_backward at (16, 1000, 513)
JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="4">
<testcase classname="tests.test_ops_losses" name="test_cuda_is_divergence[float32]" time="0.1"/>
<testcase classname="tests.test_ops_losses" name="test_cuda_gaussian_kl[bfloat16]" time="0.1">
  <failure message="AssertionError: max error 0.3 &gt; 0.01">trace</failure></testcase>
<testcase classname="tests.test_audio" name="test_stft_istft_griffin_lim_on_cuda" time="0.0">
  <skipped type="pytest.skip" message="needs a CUDA GPU">skip</skipped></testcase>
<testcase classname="" name="tests.test_fdsd" time="0.0">
  <error message="collection failure">ModuleNotFoundError: No module named 'soundfile'</error></testcase>
</testsuite></testsuites>
"""


def _row(name, group, median, device, **extra):
    params = dict(extra.pop("params", {}))
    return {
        "name": name,
        "group": group,
        "params": params,
        "extra_info": {"device": device, **extra},
        "stats": {"median": median, "iqr": median / 10, "rounds": 7},
    }


def _work(tmp_path: Path, gpu: str) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    env = {
        "date": "2026-12-01 12:00 UTC",
        "commit": "abc123",
        "python": "3.12.3",
        "torch": "2.11.0+cu130",
        "torch_cuda": "13.0",
        "nvcc": "13.0",
        "driver": "580.159.04",
        "host": "x86_64, 16 CPU cores",
        "missing_modules": ["soundfile"],
        "gpu": gpu,
        "capability": "9.0",
        "gpu_memory_gib": 139.8,
        "multiprocessors": 132,
        "l2_mib": 60.0,
    }
    (work / "env.json").write_text(json.dumps(env))
    steps = [
        ("detect", "ok", 2, gpu),
        ("build", "failed", 31, "exit code 1: nvcc fatal: bad arch"),
        ("bench_gpu", "ok", 90, ""),
    ]
    (work / "steps.tsv").write_text("".join(f"{n}\t{s}\t{t}\t{d}\n" for n, s, t, d in steps))
    shape = {"shape": [16, 1000, 513]}
    gpu_rows = [  # 4.0 TB/s for the fused loss, 4.3 TB/s for the copy of the same bytes
        _row("test_is_forward_backward[native-16x1000x513-cuda]", "is_loss_forward_backward", FUSED / 4.0e12, gpu,
             params={"impl": "native", **shape, "device": "cuda"}, bytes_fused=FUSED),
        _row("test_copy_ceiling[16x1000x513-cuda]", "is_loss_copy_ceiling", FUSED / 4.3e12, gpu,
             params={**shape, "device": "cuda"}, bytes_moved=FUSED),
        _row("test_train_step_vae[native-bf16-cuda]", "train_step_vae", 0.004, gpu,
             params={"backend": "native-bf16", "device": "cuda"}, shape=[128, 50, 513]),
        _row("test_generation_cuda[cached-native]", "light_dvae_generation", 1.5, gpu,
             params={"impl": "cached-native"}, frames=1000),
    ]  # fmt: skip
    cpu_rows = [  # the CPU twins: 20 ms for the fused loss (a 487x speed-up), 3 s for the generation (2x)
        _row("test_is_forward_backward[native-16x1000x513-cpu]", "is_loss_forward_backward", 0.020, "cpu (16 cores)",
             params={"impl": "native", **shape, "device": "cpu"}, bytes_fused=FUSED),
        _row("test_generation[cached-native]", "light_dvae_generation", 3.0, "cpu (16 cores)",
             params={"impl": "cached-native"}, frames=1000),
    ]  # fmt: skip
    (work / "bench_gpu.json").write_text(json.dumps({"benchmarks": gpu_rows}))
    (work / "bench_cpu.json").write_text(json.dumps({"benchmarks": cpu_rows}))
    (work / "cuda_tests.xml").write_text(JUNIT)
    return work


def _report(tmp_path: Path, gpu: str) -> str:
    out = tmp_path / "RESULTS.md"
    cmd = [sys.executable, str(RESULTS_PY), "report", "--work", str(_work(tmp_path, gpu)), "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60)
    return out.read_text()


def _line(text: str, *needles: str) -> str:
    return next(line for line in text.splitlines() if all(n in line for n in needles))


def test_report_of_a_gpu_run(tmp_path):
    text = _report(tmp_path, "NVIDIA H200")
    assert gpu_results.check(text) == []
    assert text.startswith("# GPU check: NVIDIA H200\n")
    assert "| peak memory bandwidth | 4.8 TB/s (datasheet) |" in text
    assert "compute capability 9.0" in text and "| driver | 580.159.04 |" in text and "| commit | abc123 |" in text
    # the fused loss at 4.0 TB/s: 83 % of the H200's 4.8 TB/s, 93 % of the 4.3 TB/s copy of the same bytes
    row = _line(text, "| NVIDIA H200 | 16x1000x513 | native |")
    assert "| 4000 GB/s | 83% | 4300 GB/s | 93% |" in row, row
    cpu_row = _line(text, "| cpu (16 cores) | 16x1000x513 | native |")
    assert "| unknown |" in cpu_row  # no datasheet peak for a CPU
    # GPU rows carry their CPU twins' medians and the speed-up; a row without a twin says so
    bench = text.split("## Benchmarks", 1)[1]
    assert "487x" in _line(bench, "test_is_forward_backward (impl=native, shape=16x1000x513)")
    gen = _line(bench, "test_generation (impl=cached-native)")
    assert "| 3 s | 2x | 1.5 ms/frame |" in gen, gen
    assert "| — | — | 32000 segments/s |" in _line(bench, "backend=native-bf16")
    assert "cpu (16 cores)" not in bench.split("### is_loss_forward_backward", 1)[1].split("###", 1)[0]
    # failed steps, failed tests and a module that is absent
    assert "Failed steps: build (failed: exit code 1: nvcc fatal: bad arch)" in text
    assert "| cuda_tests | 1 | 1 | 1 | 1 |" in text
    assert "test_cuda_gaussian_kl[bfloat16]: AssertionError: max error 0.3 > 0.01" in text
    assert "No module named 'soundfile'" in text and "| missing Python modules | soundfile |" in text
    assert "skipped 1x: needs a CUDA GPU" in text


def test_report_of_an_unknown_device(tmp_path):
    text = _report(tmp_path, "NVIDIA Foo 9000")
    assert "| peak memory bandwidth | unknown |" in text
    assert "Peak of this device: unknown" in text
    row = _line(text, "| NVIDIA Foo 9000 | 16x1000x513 | native |")
    assert "| 4000 GB/s | unknown | 4300 GB/s | 93% |" in row, row  # the copy ceiling still gives a fraction


@pytest.mark.parametrize(
    "name, tbps",
    [
        ("NVIDIA H200", 4.8),
        ("NVIDIA H100 80GB HBM3", 3.35),
        ("NVIDIA H100 PCIe", 2.0),
        ("NVIDIA A100-SXM4-80GB", 2.0),
        ("NVIDIA GH200 480GB", None),  # not an H200
        ("NVIDIA GeForce GTX 1080", None),
        (None, None),
    ],
)
def test_peak_bandwidth_table(name, tbps):
    assert gpu_results.peak_tbps(name) == tbps


def test_check_lists_what_is_missing():
    problems = gpu_results.check("# GPU check: x\n\n## Steps\n\n| step |\n| detect | ok |\n")
    assert "no section '## IS loss bandwidth'" in problems and "no benchmark row under '## Benchmarks'" in problems


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_script_dry_run(tmp_path):
    """The no-GPU path end to end: one line says so, the CPU benchmark goes into a scratch RESULTS file, exit 0."""
    tree_results = ROOT / "benchmarks" / "RESULTS.md"
    before = tree_results.stat().st_mtime_ns if tree_results.exists() else None
    env = {**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    run = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "gpu_check: no GPU (--dry-run): skipping the build" in run.stdout
    assert "every step that ran passed" in run.stdout
    text = (tmp_path / "RESULTS-no-gpu.md").read_text()
    assert gpu_results.check(text) == []
    assert "| bench_cpu | ok |" in text and "| build | skipped | 0 | no GPU |" in text
    assert "GB/s" in text.split("## IS loss bandwidth", 1)[1]
    assert (tmp_path / "gpu_check_logs.tar.gz").stat().st_size > 0
    after = tree_results.stat().st_mtime_ns if tree_results.exists() else None
    assert after == before  # benchmarks/RESULTS.md is written only with a GPU
