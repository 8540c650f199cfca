#!/usr/bin/env bash
# GPU verification in one command, within a time budget (GPU_CHECK_SECONDS, default 360) on a bare GPU machine
# with torch, triton, nvcc, cmake, pybind11, pytest and no network:
#   1. build with CUDA for the GPU at hand;
#   2. tests: the `cuda` and `triton` tests twice at once, as users get them and with every unverified GPU
#      candidate enabled (PVF_CANDIDATES=all), while compute-sanitizer's memcheck runs tools/cuda_smoke.py
#      (every CUDA kernel once) beside them;
#   3. the GPU benchmarks, one process per family, alone on the GPU (a family that runs out of budget is cut
#      off; the ones before it keep their reports); slow references are timed once;
#   4. a profile of the cases with goals (host time against kernel time, heaviest kernels);
#   5. one table last: case, ours and candidate against each goal, met or not.
# GPU_CHECK_ONLY=tests|bench|profile (or a comma list) runs those parts after the build; GPU_CHECK_FAMILIES picks
# the benchmark families, GPU_CHECK_TESTS the test paths (default: tests).
# Logs and reports go to $OUT (or a temporary folder); benchmark reports to $OUT/bench/gpu-<family>.*.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-$(mktemp -d)}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
BUDGET="${GPU_CHECK_SECONDS:-360}"
ONLY="${GPU_CHECK_ONLY:-all}"
# attention first: it is the largest family and the one most users call
FAMILIES="${GPU_CHECK_FAMILIES:-attention mvf scale_space deform_conv sphere pointcloud overhead vector_quantize stylegan2 mesh_raster models}"
BENCH_BUDGET="${GPU_CHECK_BENCH_BUDGET:-0.25}"
export PVF_CUDA=1
if [ -z "${PVF_CUDA_ARCHS:-}" ]; then
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d '. ')
  [[ "$cap" =~ ^[0-9]+$ ]] || cap=90
  export PVF_CUDA_ARCHS="$cap"
fi
t0=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - t0) )); }
at_most() { local l; l=$(left); echo $(( $1 < l ? $1 : l )); }
want() { [ "$ONLY" = all ] || [[ ",$ONLY," == *",$1,"* ]]; }
status=0
section() { printf '\n==== %s (%s s left) ====\n' "$1" "$(left)"; }
mkdir -p "$OUT/bench"

section "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee "$OUT/gpu.txt"
"$PY" -c "import torch, triton, pybind11; print('torch', torch.__version__, 'triton', triton.__version__, 'pybind11', pybind11.__version__)" 2>&1 | tee -a "$OUT/gpu.txt"

section "build (PVF_CUDA_ARCHS=$PVF_CUDA_ARCHS)"
start=$(date +%s)
if ! "$PY" -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1; then
  tail -n 60 "$OUT/build.log"
  echo "BUILD FAILED"
  exit 1
fi
echo "built in $(( $(date +%s) - start )) s"
grep -iE "warning" "$OUT/build.log" | grep -v "^--" | sort | uniq | head -n 20
"$PY" -m pyvision_fast info | tee "$OUT/info.txt"

if want tests; then
  sanitizer_pid=""
  if command -v compute-sanitizer >/dev/null; then
    ( PVF_CANDIDATES=all timeout "$(at_most 200)" compute-sanitizer --tool memcheck --error-exitcode 1 \
        "$PY" tools/cuda_smoke.py >"$OUT/memcheck.log" 2>&1; echo "exit $?" >>"$OUT/memcheck.log" ) &
    sanitizer_pid=$!
  else
    echo "compute-sanitizer not found" >"$OUT/memcheck.log"
  fi
  section "tests: -m 'cuda or triton', current paths and candidates, side by side"
  workers=()
  "$PY" -c "import xdist" 2>/dev/null && workers=(-n "${GPU_CHECK_WORKERS:-8}")
  "$PY" -c "import pytest_timeout" 2>/dev/null && workers+=(--timeout 120)  # one hung test must not eat the run
  workers+=(--durations=20)
  export PVF_TRITON_AUTOTUNE=0  # correctness only: one configuration per Triton kernel, no tuning per shape
  tests_s=$(at_most "${GPU_CHECK_TEST_SECONDS:-200}")
  ( timeout "$tests_s" "$PY" -m pytest -v -rfE --tb=short -m "cuda or triton" -p no:cacheprovider "${workers[@]}" ${GPU_CHECK_TESTS:-tests} \
      --junitxml="$OUT/tests.xml" >"$OUT/tests.log" 2>&1; echo "exit $?" >>"$OUT/tests.log" ) &
  current_pid=$!
  candidates_pid=""
  if [ "${GPU_CHECK_CANDIDATE_RUN:-1}" = 1 ]; then  # the tests of each family run its candidates too; this
    # second run sends every other test through the candidates as well
    ( PVF_CANDIDATES=all timeout "$tests_s" "$PY" -m pytest -v -rfE --tb=short -m "cuda or triton" \
        -p no:cacheprovider "${workers[@]}" ${GPU_CHECK_TESTS:-tests} --junitxml="$OUT/tests-candidates.xml" \
        >"$OUT/tests-candidates.log" 2>&1
      echo "exit $?" >>"$OUT/tests-candidates.log" ) &
    candidates_pid=$!
  fi
  wait "$current_pid" $candidates_pid
  echo "-- current paths"; grep -E "FAILED|ERROR|passed|failed" "$OUT/tests.log" | grep -v "^\[gw" | tail -n 30
  echo "-- with candidates"; grep -E "FAILED|ERROR|passed|failed" "$OUT/tests-candidates.log" | grep -v "^\[gw" | tail -n 30
  grep -q "^exit 0$" "$OUT/tests.log" || status=1

  section "bad-input tables (errors raised through the compiled modules built here)"
  timeout "$(at_most 60)" "$PY" -m pytest -q -k "bad_input or device_mix" -p no:cacheprovider tests 2>&1 \
    | tee "$OUT/tests-bad-inputs.log" | tail -n 5
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1

  section "memcheck: tools/cuda_smoke.py (candidates enabled)"
  [ -n "$sanitizer_pid" ] && wait "$sanitizer_pid"
  tail -n 15 "$OUT/memcheck.log"
  grep -q "^exit 0$" "$OUT/memcheck.log" || status=1
fi

if want bench; then
  unset PVF_TRITON_AUTOTUNE
  for family in $FAMILIES; do
    section "benchmarks (cuda): $family"
    if [ "$(left)" -lt 20 ]; then
      echo "skipped: budget spent"
      status=1
      continue
    fi
    timeout "$(( $(left) - 10 ))" "$PY" -m benchmarks --device cuda --family "$family" --budget "$BENCH_BUDGET" \
      --out "$OUT/bench" --tag "gpu-$family" 2>&1 | tee "$OUT/bench/gpu-$family.log" | grep -vE '^running ' \
      | grep -E "goal:|failed|Error|error" | head -n 40
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  done
fi

if want profile && [ "$(left)" -gt 30 ]; then
  section "profile of the cases with goals"
  timeout "$(( $(left) - 10 ))" "$PY" tools/profile_cases.py --json "$OUT/profile.json" \
    $(for f in $FAMILIES; do [ "$f" != overhead ] && printf -- '--family %s ' "$f"; done) 2>&1 \
    | grep -v "^USDT" | tee "$OUT/profile.log" | tail -n 60
  timeout 60 "$PY" tools/launch_counts.py --device cuda --json "$OUT/launch-counts.json" 2>&1 | grep -v "^USDT" \
    > "$OUT/launch-counts.log"
fi

section "summary"
"$PY" tools/gpu_summary.py "$OUT"
echo "results in $OUT (exit $status)"
exit $status
