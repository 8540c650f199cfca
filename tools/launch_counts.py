"""Count what one call of each op costs in launches: torch operators dispatched (top level: the calls that go
through the dispatcher from Python or from our op code), pvf custom-op dispatches, and on a GPU the kernels and
memory operations that reach the device. The calls are those of ``benchmarks/overhead.py`` (tiny shapes).

    python tools/launch_counts.py [--device cuda] [--json out.json]

The counts come from torch.profiler, which observes without changing the path a call takes (a dispatch mode
would send our ops through their custom-op path instead of the eager one users get).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import overhead  # noqa: E402


def count(fn, device: str) -> dict:
    """Operators and device work of one call of ``fn`` (after two warm-up calls)."""
    for _ in range(2):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
    events = prof.events()
    cpu = [e for e in events if e.device_type == DeviceType.CPU]

    def top_level(e) -> bool:
        p = e.cpu_parent
        while p is not None:
            if p.name.startswith(("aten::", "pvf::")):
                return False
            p = p.cpu_parent
        return True

    result = {
        "torch ops": sum(1 for e in cpu if e.name.startswith("aten::") and top_level(e)),
        "pvf custom ops": sum(1 for e in cpu if e.name.startswith("pvf::")),
        "all aten ops": sum(1 for e in cpu if e.name.startswith("aten::")),
    }
    if device == "cuda":
        gpu = [e for e in events if e.device_type == DeviceType.CUDA]
        result["GPU kernels"] = sum(1 for e in gpu if not e.name.lower().startswith("memcpy")
                                    and not e.name.lower().startswith("memset"))
        result["GPU memcpy/memset"] = len(gpu) - result["GPU kernels"]
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = []
    for case, impls in overhead.calls(args.device).items():
        for name, kind, fn in impls:
            try:
                rows.append({"case": case, "impl": name, "kind": kind, **count(fn, args.device)})
            except Exception as exc:  # noqa: BLE001 - one failing call must not hide the others
                rows.append({"case": case, "impl": name, "kind": kind, "error": repr(exc)[:160]})
    keys = [k for k in ("torch ops", "all aten ops", "pvf custom ops", "GPU kernels", "GPU memcpy/memset")
            if any(k in r for r in rows)]
    print(f"{'case':<32} {'implementation':<32} " + " ".join(f"{k:>17}" for k in keys))
    for r in rows:
        cells = r.get("error") or " ".join(f"{r.get(k, '-'):>17}" for k in keys)
        print(f"{r['case']:<32} {r['impl']:<32} {cells}")
    if args.json:
        args.json.write_text(json.dumps({"device": args.device, "torch": torch.__version__, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
