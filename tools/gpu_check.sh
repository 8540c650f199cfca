#!/usr/bin/env bash
# GPU verification in one command (< 8 minutes on a bare GPU machine with torch, triton, nvcc, cmake,
# pybind11, pytest and no network): build with CUDA, run the `cuda` and `triton` tests, run the GPU
# benchmarks, print a short table last. Full logs and results go to $OUT (or a temporary folder).
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-$(mktemp -d)}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
export PVF_CUDA=1
# Compile only for the GPU at hand (fast builds); override with PVF_CUDA_ARCHS.
if [ -z "${PVF_CUDA_ARCHS:-}" ]; then
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d '. ')
  [[ "$cap" =~ ^[0-9]+$ ]] || cap=90
  export PVF_CUDA_ARCHS="$cap"
fi
status=0
section() { printf '\n==== %s ====\n' "$1"; }

section "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$OUT/gpu.txt"
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" 2>&1 | tee -a "$OUT/gpu.txt"

section "build (PVF_CUDA_ARCHS=$PVF_CUDA_ARCHS)"
start=$(date +%s)
if ! "$PY" -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1; then
  tail -n 60 "$OUT/build.log"
  echo "BUILD FAILED"
  exit 1
fi
echo "built in $(( $(date +%s) - start )) s"
"$PY" -m pyvision_fast info | tee "$OUT/info.txt"

section "tests: -m 'cuda or triton'"
timeout 180 "$PY" -m pytest -q -m "cuda or triton" -p no:cacheprovider tests --junitxml="$OUT/tests.xml" \
  2>&1 | tee "$OUT/tests.log" | tail -n 40
test_status=${PIPESTATUS[0]}
[ "$test_status" -eq 0 ] || status=1

section "benchmarks (cuda)"
timeout 240 "$PY" -m benchmarks --device cuda --budget 0.5 --out "$OUT" --tag gpu 2>&1 | tee "$OUT/bench.log" \
  | grep -vE '^running ' | tail -n 60
bench_status=${PIPESTATUS[0]}
[ "$bench_status" -eq 0 ] || status=1

section "summary"
"$PY" - "$OUT" <<'PYEOF'
import json, math, sys
from pathlib import Path
out = Path(sys.argv[1])
gpu = (out / "gpu.txt").read_text().strip().splitlines()
print("card:", gpu[1] if len(gpu) > 1 else "?")
tests = (out / "tests.log").read_text().strip().splitlines() if (out / "tests.log").exists() else []
print("tests:", tests[-1] if tests else "not run")
path = out / "gpu.json"
if path.exists():
    data = json.loads(path.read_text())
    print(f"{'case':<40} {'ours ms':>9} {'best other':>30} {'speedup':>8}")
    for case in data["cases"]:
        rs = [r for r in case["results"] if r["error"] is None and not math.isnan(r["median_ms"])]
        ours = next((r for r in rs if r["kind"] == "ours"), None)
        others = [r for r in rs if r["kind"] != "ours"]
        if ours and others:
            best = min(others, key=lambda r: r["median_ms"])
            print(f"{case['name']:<40} {ours['median_ms']:>9.3f} {best['impl'][:22]:>22} {best['median_ms']:>7.3f} "
                  f"{best['median_ms'] / ours['median_ms']:>7.2f}x")
else:
    print("benchmarks: no results")
PYEOF
echo "results in $OUT (exit $status)"
exit $status
