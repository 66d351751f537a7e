#!/usr/bin/env bash
# The GPU check (issue #17): on a machine with an NVIDIA GPU, build lightdvae._C for that GPU only (in place, against
# the installed torch, no build isolation, no download), run the CUDA tests, the GPU benchmarks (and their CPU
# counterparts, for the ratios) and the fast test suite, and write benchmarks/RESULTS.md.
# Without a GPU (or with --dry-run) it says so, skips the build and the CUDA parts, and checks its own logic: a tiny
# CPU benchmark goes through the same JSON -> Markdown path into a scratch RESULTS file (not benchmarks/RESULTS.md).
#
#   bash scripts/gpu_check.sh [--dry-run]
#
# Every step runs under a time limit, all of them within GPU_CHECK_BUDGET_S (default 450 s); a step that fails or
# times out is logged and listed in RESULTS.md with its reason, and the next step runs.  RESULTS.md and a tarball of
# the logs go to $OUT when set (the device tool brings that folder back), else to build/gpu-check/.  Exit code 0 when
# every step that ran passed.  PYTHON: the interpreter (default python3).  Wheels in $GPU_CHECK_WHEELS (default .whl/)
# are installed first (into a scratch folder, no index).  GPU_CHECK_COMMIT: the commit to report where the tree has
# no .git.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
DRY_RUN=()
case "${1:-}" in
  "") ;;
  --dry-run) DRY_RUN=(--dry-run) ;;
  -h | --help) sed -n '2,15p' "$0" && exit 0 ;;
  *) echo "usage: bash scripts/gpu_check.sh [--dry-run]" >&2 && exit 2 ;;
esac

BUDGET=${GPU_CHECK_BUDGET_S:-450}
DEADLINE=$(($(date +%s) + BUDGET))
RESERVE=20 # seconds kept for the report
DEST=${OUT:-$ROOT/build/gpu-check}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$DEST"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
FAILED=0

record() { # record STEP STATUS SECONDS DETAIL: one row of steps.tsv, one line on the console
  local detail=${4//$'\t'/ }
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$detail" >>"$WORK/steps.tsv"
  printf 'gpu_check: %-11s %-8s %4ss  %s\n' "$1" "$2" "$3" "$detail"
}

last_line() { grep -v '^[[:space:]]*$' "$1" | tail -n 1 | cut -c1-300 || true; }

step() { # step NAME LIMIT_S CMD...: run CMD (output in $WORK/NAME.log) under its limit, within the budget
  local name=$1 limit=$2 left rc=0 t0 secs
  shift 2
  left=$((DEADLINE - $(date +%s) - RESERVE))
  if ((left < limit)); then limit=$left; fi
  if ((limit < 10)); then
    record "$name" skipped 0 "no time left in the ${BUDGET} s budget"
    return 0
  fi
  t0=$(date +%s)
  # SIGINT first: pytest then still writes its JUnit and benchmark files for what has run
  timeout -s INT -k 20 "$limit" "$@" >"$WORK/$name.log" 2>&1 || rc=$?
  secs=$(($(date +%s) - t0))
  if ((rc == 0)); then
    record "$name" ok "$secs" "$(last_line "$WORK/$name.log")"
  elif ((rc == 124 || rc == 137)); then
    record "$name" timeout "$secs" "stopped at its ${limit} s limit; last output: $(last_line "$WORK/$name.log")"
    FAILED=1
  else
    record "$name" failed "$secs" "exit code $rc: $(last_line "$WORK/$name.log")"
    FAILED=1
  fi
}

env_get() { # env_get KEY: a value of env.json (a list as words), empty when absent
  "$PY" -c 'import json, sys; v = json.load(open(sys.argv[1])).get(sys.argv[2]) or ""
print(" ".join(v) if isinstance(v, list) else v)' "$WORK/env.json" "$1" 2>/dev/null || true
}

WHEELS=${GPU_CHECK_WHEELS:-.whl} # wheels of packages the machine lacks (soundfile, cffi, pycparser), carried along
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  step wheels 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" \
    "$WHEELS"/*.whl
  export PYTHONPATH="$PYTHONPATH:$WORK/site"
fi

# 1. the device: name and compute capability through torch, the driver through nvidia-smi
step detect 60 "$PY" scripts/gpu_results.py env --out "$WORK/env.json" "${DRY_RUN[@]}"
ARCH=$(env_get capability) # "9.0"; empty without a GPU

# test modules that import an absent package at the top, or import a helper module that does, are not run (and
# the steps table says which)
imports() { grep -lE "^(import|from) $1( |\.|$)" tests/*.py || true; } # imports MODULE: the test files importing it
IGNORE=() NOT_RUN=""
for mod in $(env_get missing_modules); do
  for f in $(imports "$mod"); do
    for g in "$f" $(imports "$(basename "$f" .py)"); do
      if [[ " ${IGNORE[*]} " != *" --ignore=$g "* ]]; then IGNORE+=("--ignore=$g") && NOT_RUN+=" $(basename "$g")"; fi
    done
  done
  if [[ -n $NOT_RUN ]]; then
    record not_run skipped 0 "no $mod here (carry wheels in $WHEELS/):$NOT_RUN" && NOT_RUN=""
  fi
done
PYTEST=("$PY" -m pytest -p no:cacheprovider -q -rfEs --continue-on-collection-errors "${IGNORE[@]}")
BENCH_FILES=(benchmarks/test_is_loss.py benchmarks/test_kv_attention.py benchmarks/test_train_step.py
  benchmarks/test_resynthesis.py)
BENCH_OPTS=(--benchmark-only --benchmark-min-time=0.01 --benchmark-max-time=0.5 --benchmark-columns=median,iqr,rounds)

if [[ -n $ARCH ]]; then
  echo "gpu_check: $(env_get gpu), compute capability $ARCH: building for sm_${ARCH/./} only; logs go to $DEST"
  # 2. the extension, in place, for this GPU's arch only, against the torch installed here (no isolation, no download)
  step build 240 env LIGHTDVAE_CUDA_ARCHS="${ARCH/./}" TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="$(nproc)" NVCC_THREADS=4 \
    "$PY" setup.py build_ext --inplace
  step kernels 60 "$PY" -c 'from lightdvae import _ext
assert _ext.cuda_kernels_compiled(), f"no CUDA kernels in lightdvae._C: {_ext.IMPORT_ERROR or _ext.BUILD_INFO}"
print("lightdvae._C: CUDA kernels loaded")'
  step info 60 "$PY" -m lightdvae info
  # 3. the CUDA tests (every test whose name or marker says cuda), then the GPU benchmarks and their CPU counterparts
  step cuda_tests 150 "${PYTEST[@]}" tests -k cuda --junitxml="$WORK/cuda_tests.xml"
  step bench_gpu 200 "${PYTEST[@]}" "${BENCH_FILES[@]}" -k cuda "${BENCH_OPTS[@]}" --benchmark-warmup=on \
    --benchmark-warmup-iterations=3 --benchmark-json="$WORK/bench_gpu.json" --junitxml="$WORK/bench_gpu.xml"
  step bench_cpu 90 "${PYTEST[@]}" "${BENCH_FILES[@]:0:3}" -k "not cuda and (cpu or cached-native)" "${BENCH_OPTS[@]}" \
    --benchmark-min-rounds=3 --benchmark-json="$WORK/bench_cpu.json" --junitxml="$WORK/bench_cpu.xml"
  # 4. the rest of the suite's fast part (what CI runs, here with a GPU visible), on several workers when it can
  XDIST=()
  if "$PY" -c "import xdist" 2>/dev/null; then XDIST=(-n 8); fi
  step fast_tests 150 env OMP_NUM_THREADS=2 "${PYTEST[@]}" tests -m "not slow" -k "not cuda" "${XDIST[@]}" \
    --junitxml="$WORK/fast_tests.xml"
  RESULTS=benchmarks/RESULTS.md
else
  echo "gpu_check: no GPU ($(env_get no_gpu_reason)): skipping the build, the CUDA tests and the GPU benchmarks;" \
    "checking this script's own logic on the CPU"
  record build skipped 0 "no GPU"
  step info 60 "$PY" -m lightdvae info
  record cuda_tests skipped 0 "no GPU"
  # a tiny CPU subset through the same JSON -> RESULTS.md path
  step bench_cpu 60 "${PYTEST[@]}" benchmarks/test_is_loss.py \
    -k "cpu and 128x50x513 and (test_is_forward_backward or test_copy_ceiling)" --benchmark-only \
    --benchmark-min-time=0.001 --benchmark-max-time=0.05 --benchmark-min-rounds=2 \
    --benchmark-json="$WORK/bench_cpu.json" --junitxml="$WORK/bench_cpu.xml"
  record fast_tests skipped 0 "no GPU (the fast suite is what CI runs)"
  RESULTS=$WORK/RESULTS.md
fi

# 5. RESULTS.md (in the tree with a GPU, a scratch file without), a copy and the logs into $DEST
if ! timeout 60 "$PY" scripts/gpu_results.py report --work "$WORK" --out "$RESULTS" >"$WORK/report.log" 2>&1; then
  echo "gpu_check: writing $RESULTS failed: $(last_line "$WORK/report.log")"
  FAILED=1
elif [[ -z $ARCH ]] && ! "$PY" scripts/gpu_results.py check "$RESULTS" >>"$WORK/report.log" 2>&1; then
  echo "gpu_check: self-check failed: $(last_line "$WORK/report.log")"
  FAILED=1
fi
if [[ -f $RESULTS ]]; then cp "$RESULTS" "$DEST/$([[ -n $ARCH ]] && echo RESULTS.md || echo RESULTS-no-gpu.md)"; fi
tar -czf "$DEST/gpu_check_logs.tar.gz" -C "$WORK" .
if [[ -n $ARCH && -f $RESULTS ]]; then cat "$RESULTS"; fi
echo "gpu_check: $([[ $FAILED == 0 ]] && echo 'every step that ran passed' || echo 'some steps failed (see above)');" \
  "results and logs in $DEST"
exit "$FAILED"
