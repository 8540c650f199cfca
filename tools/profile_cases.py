"""Where the time of the benchmark cases with goals goes: host time per call against the GPU kernel time
inside it, kernel count and the heaviest kernels (torch.profiler), for our implementation and its candidate.

    python tools/profile_cases.py --family mvf --family attention [--json out.json]
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.__main__ import FAMILIES  # noqa: E402


def profile_call(fn, calls: int = 5) -> dict:
    """Host ms per call (wall time of the Python call, GPU left running), GPU kernel ms per call, kernels per
    call and the three heaviest kernels."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        host = 0.0
        for _ in range(calls):
            t0 = time.perf_counter()
            fn()
            host += time.perf_counter() - t0
        torch.cuda.synchronize()
    per_kernel: dict[str, float] = defaultdict(float)
    count = 0
    for e in prof.events():
        if e.device_type == DeviceType.CUDA:
            per_kernel[e.name] += e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
            count += 1
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1])[:3]
    return {"host_ms": 1e3 * host / calls, "kernel_ms": sum(per_kernel.values()) / 1e3 / calls,
            "kernels": count / calls, "top": [(name[:60], us / 1e3 / calls) for name, us in top]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=FAMILIES, action="append")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("profile_cases: needs a CUDA GPU", file=sys.stderr)
        return 2
    rows = []
    for family in args.family or FAMILIES:
        module = importlib.import_module(f"benchmarks.{family}")
        for case in module.cases("cuda", False):
            if not case.all_goals():
                continue
            for impl in case.impls:
                if impl.kind != "ours" and not impl.name.endswith("(candidate)"):
                    continue
                try:
                    r = profile_call(impl.fn)
                except Exception as exc:  # noqa: BLE001
                    r = {"error": repr(exc)[:160]}
                rows.append({"case": f"{family}/{case.name}", "impl": impl.name, **r})
                if "error" in r:
                    print(f"{rows[-1]['case'][:48]:<48} {impl.name[:34]:<34} failed: {r['error']}", flush=True)
                    continue
                top = "; ".join(f"{n} {ms:.3f}" for n, ms in r["top"])
                print(f"{rows[-1]['case'][:48]:<48} {impl.name[:34]:<34} host {r['host_ms']:7.3f} ms  "
                      f"kernels {r['kernel_ms']:7.3f} ms in {r['kernels']:5.1f}  | {top}", flush=True)
            del case
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
