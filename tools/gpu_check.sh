#!/usr/bin/env bash
# GPU verification in one command, within a time budget (GPU_CHECK_SECONDS, default 480) on a bare GPU machine
# with torch, triton, nvcc, cmake, pybind11, pytest and no network:
#   1. build with CUDA for the GPU at hand;
#   2. the `cuda` and `triton` tests (in parallel workers when pytest-xdist is there), while
#      compute-sanitizer's memcheck runs tools/cuda_smoke.py (every CUDA kernel once) beside them;
#   3. the GPU benchmarks, one process per family in the order below, each given what is left of the budget
#      (a family that runs out is cut off; the ones before it keep their reports);
#   4. a short table last.
# Logs and reports go to $OUT (or a temporary folder); benchmark reports to $OUT/bench/gpu-<family>.*.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-$(mktemp -d)}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
BUDGET="${GPU_CHECK_SECONDS:-480}"
FAMILIES="${GPU_CHECK_FAMILIES:-mvf scale_space deform_conv sphere pointcloud attention}"
export PVF_CUDA=1
# Compile only for the GPU at hand (fast builds); override with PVF_CUDA_ARCHS.
if [ -z "${PVF_CUDA_ARCHS:-}" ]; then
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d '. ')
  [[ "$cap" =~ ^[0-9]+$ ]] || cap=90
  export PVF_CUDA_ARCHS="$cap"
fi
t0=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - t0) )); }
at_most() { local l; l=$(left); echo $(( $1 < l ? $1 : l )); }
status=0
section() { printf '\n==== %s (%s s left) ====\n' "$1" "$(left)"; }
mkdir -p "$OUT/bench"

section "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$OUT/gpu.txt"
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

sanitizer_pid=""
if command -v compute-sanitizer >/dev/null; then
  ( timeout "$(at_most 240)" compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" tools/cuda_smoke.py \
      >"$OUT/memcheck.log" 2>&1; echo "exit $?" >>"$OUT/memcheck.log" ) &
  sanitizer_pid=$!
else
  echo "compute-sanitizer not found" >"$OUT/memcheck.log"
fi

section "tests: -m 'cuda or triton'"
workers=()
"$PY" -c "import xdist" 2>/dev/null && workers=(-n 8)
timeout "$(at_most 240)" "$PY" -m pytest -q -m "cuda or triton" -p no:cacheprovider "${workers[@]}" tests \
  --junitxml="$OUT/tests.xml" 2>&1 | tee "$OUT/tests.log" | tail -n 40
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

section "bad-input tables (errors raised through the compiled modules built here)"
timeout "$(at_most 60)" "$PY" -m pytest -q -k "bad_input or device_mix" -p no:cacheprovider tests 2>&1 \
  | tee "$OUT/tests-bad-inputs.log" | tail -n 5
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

section "memcheck: tools/cuda_smoke.py"
[ -n "$sanitizer_pid" ] && wait "$sanitizer_pid"
tail -n 25 "$OUT/memcheck.log"
grep -q "^exit 0$" "$OUT/memcheck.log" || status=1

for family in $FAMILIES; do
  section "benchmarks (cuda): $family"
  if [ "$(left)" -lt 30 ]; then
    echo "skipped: budget spent"
    status=1
    continue
  fi
  timeout "$(( $(left) - 15 ))" "$PY" -m benchmarks --device cuda --family "$family" --budget 0.5 \
    --out "$OUT/bench" --tag "gpu-$family" 2>&1 | tee "$OUT/bench/gpu-$family.log" | grep -vE '^running ' | tail -n 30
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
done

section "summary"
"$PY" - "$OUT" <<'PYEOF'
import json, math, sys
from pathlib import Path
out = Path(sys.argv[1])
gpu = (out / "gpu.txt").read_text().strip().splitlines()
print("card:", gpu[1] if len(gpu) > 1 else "?")
tests = (out / "tests.log").read_text().strip().splitlines() if (out / "tests.log").exists() else []
print("tests:", tests[-1] if tests else "not run")
bad = (out / "tests-bad-inputs.log").read_text().strip().splitlines() if (out / "tests-bad-inputs.log").exists() else []
print("bad-input tables:", bad[-1] if bad else "not run")
memcheck = (out / "memcheck.log").read_text().strip().splitlines()
print("memcheck:", next((l for l in memcheck if "ERROR SUMMARY" in l), memcheck[-1] if memcheck else "not run"))
print(f"{'case':<44} {'ours ms':>9} {'best other':>30} {'speedup':>8}")
for path in sorted((out / "bench").glob("gpu-*.json")):
    for case in json.loads(path.read_text())["cases"]:
        rs = [r for r in case["results"] if r["error"] is None and not math.isnan(r["median_ms"])]
        ours = next((r for r in rs if r["kind"] == "ours"), None)
        others = [r for r in rs if r["kind"] != "ours"]
        if ours and others:
            best = min(others, key=lambda r: r["median_ms"])
            print(f"{case['name'][:44]:<44} {ours['median_ms']:>9.3f} {best['impl'][:22]:>22} "
                  f"{best['median_ms']:>7.3f} {best['median_ms'] / ours['median_ms']:>7.2f}x")
PYEOF
echo "results in $OUT (exit $status)"
exit $status
