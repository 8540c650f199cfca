"""The last table of tools/gpu_check.sh: card, test and memcheck verdicts, then one line per benchmark goal
(case, ours and candidate against the goal, met or not) from the JSON reports in <out>/bench.

    python tools/gpu_summary.py OUT_DIR
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _last_line(path: Path, default: str = "not run") -> str:
    if not path.exists():
        return default
    lines = [line for line in path.read_text(errors="replace").strip().splitlines() if not line.startswith("exit ")]
    return lines[-1] if lines else default


def goal_rows(bench: Path) -> list[dict]:
    rows = []
    for path in sorted(bench.glob("gpu-*.json")):
        for case in json.loads(path.read_text())["cases"]:
            results = {r["impl"]: r for r in case["results"]}
            ours = next((r for r in case["results"] if r["kind"] == "ours"), None)
            for goal in case.get("goals") or ([case["goal"]] if case.get("goal") else []):
                other = results.get(goal["against"])
                rows.append({
                    "case": f"{case['family']}/{case['name']}",
                    "ours_ms": None if ours is None or ours["error"] else ours["median_ms"],
                    "against": goal["against"],
                    "other_ms": None if other is None or other["error"] else other["median_ms"],
                    "goal": goal["speedup"], "ratio": goal.get("achieved"),
                    "met": goal.get("met", None if goal.get("achieved") is None else goal["achieved"] >= goal["speedup"]),
                    "candidate_ratio": goal.get("candidate_achieved"), "candidate_met": goal.get("candidate_met")})
    return rows


def main(out: Path) -> int:
    gpu = (out / "gpu.txt").read_text().strip().splitlines() if (out / "gpu.txt").exists() else []
    print("card:", gpu[1] if len(gpu) > 1 else "?")
    print("tests (current):", _last_line(out / "tests.log"))
    print("tests (candidates):", _last_line(out / "tests-candidates.log"))
    print("bad-input tables:", _last_line(out / "tests-bad-inputs.log"))
    memcheck = (out / "memcheck.log").read_text().splitlines() if (out / "memcheck.log").exists() else []
    print("memcheck:", next((line for line in memcheck if "ERROR SUMMARY" in line), memcheck[-1] if memcheck else "not run"))

    def fmt(x, spec):
        return f"{'-':>{spec.split('.')[0]}}" if x is None else format(x, spec)

    def yes(met):
        return f"{'-' if met is None else ('yes' if met else 'NO'):>4}"

    print(f"{'case':<46} {'ours ms':>8} {'against':<30} {'its ms':>8} {'ratio':>7} {'goal':>6} {'met':>4} "
          f"{'cand.':>7} {'met':>4}")
    for r in goal_rows(out / "bench"):
        print(f"{r['case'][:46]:<46} {fmt(r['ours_ms'], '8.3f')} {r['against'][:30]:<30} {fmt(r['other_ms'], '8.3f')} "
              f"{fmt(r['ratio'], '7.2f')} {r['goal']:>6g} {yes(r['met'])} {fmt(r['candidate_ratio'], '7.2f')} "
              f"{yes(r['candidate_met'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
