"""python -m benchmarks [--family F] [--device cpu|cuda] [--quick] [--out DIR] [--process both|default|tuned]
[--neighbour]"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch

from .harness import (CpuCompetition, competition_warning, format_table, keep_freed_memory, machine_description,
                      measure_ceilings, measure_memory, run_case, write_reports)
from .neighbour import time_beside_neighbour
from .tuned import (add_native_rows, add_tuned_rows, family_has_process_rows, native_build_available, ours_times,
                    run_ours_only)

FAMILIES = ["pointcloud", "attention", "mvf", "scale_space", "deform_conv", "sphere", "overhead", "models", "deploy",
            "vector_quantize", "stylegan2", "mesh_raster"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--family", choices=FAMILIES, action="append", help="families to run (default: all)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small shapes and short budgets (smoke test)")
    parser.add_argument("--budget", type=float, default=None, help="seconds of timed runs per implementation")
    parser.add_argument("--out", type=Path, default=Path("bench-out"),
                        help="folder of the reports (default: bench-out/, ignored by git)")
    parser.add_argument("--record", action="store_true",
                        help="write the reports into benchmarks/results/ (the committed results) instead of --out")
    parser.add_argument("--tag", default=None, help="report file name (default: <device>-<families>)")
    parser.add_argument("--process", choices=["both", "default", "tuned"], default=None,
                        help="both (CPU default): every implementation in this plain process (the headline, as "
                             "users run it) and a row per case with ours in a tuned process (glibc keeping freed "
                             "memory), run in a subprocess; default: no tuned row (the GPU default); tuned: "
                             "everything in the tuned process")
    parser.add_argument("--system-allocator", action="store_true", help="the old name of --process default")
    parser.add_argument("--neighbour", action="store_true",
                        help="CPU: time ours and each goal's implementation again beside a busy neighbour (a "
                             "PyTorch matmul loop on all cores); goal: keep >= 0.6 of the idle speed-up")
    parser.add_argument("--native", choices=["auto", "off"], default="auto",
                        help="auto (CPU): a row per case with ours from the native build (_C_native, -march=native) "
                             "beside the portable variant loaded here, when it is built (PVF_NATIVE=1); off: none")
    parser.add_argument("--ours-json", type=Path, help=argparse.SUPPRESS)  # the tuned / native rows' subprocess
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("benchmarks: --device cuda but no GPU is available", file=sys.stderr)
        return 2
    families = args.family or FAMILIES
    budget = args.budget if args.budget is not None else (0.3 if args.quick else 2.0)
    if args.ours_json is not None:
        return run_ours_only(families, args.device, args.quick, budget, args.ours_json, args.process == "tuned")
    process = args.process or ("default" if args.system_allocator or args.device == "cuda" else "both")
    if process == "tuned":
        allocator = ("glibc keeping freed memory (mallopt): a tuned process" if keep_freed_memory()
                     else "system default (mallopt unavailable)")
    else:
        allocator = "system default (a plain process)" + (
            "; rows marked [tuned process]: ours with glibc keeping freed memory" if process == "both" else "")

    native = args.native == "auto" and args.device == "cpu" and process != "tuned" and native_build_available()
    machine = machine_description(args.device)
    machine["allocator"] = allocator
    isa = f" | CPU ISA {machine['cpu_isa']}" if machine.get("cpu_isa") else ""
    print(f"machine: {machine.get('gpu') or machine.get('cpu')} | torch {machine['torch']} | "
          f"{machine['threads']} threads{isa} | allocator: {allocator}")
    ceilings = measure_ceilings(args.device, quick=args.quick)
    print(f"ceilings: copy {ceilings['copy_GBps']:.1f} GB/s, float32 matmul {ceilings['matmul_fp32_GFLOPps']:.1f} "
          f"GFLOP/s")
    rows = []
    for family in families:
        module = importlib.import_module(f".{family}", __package__)
        monitor = CpuCompetition().start()
        family_rows = []
        for case in module.cases(args.device, args.quick):
            print(f"running {case.family}/{case.name} {case.params} ...", flush=True)
            family_rows.append((case, run_case(case, args.device, ceilings, budget)))
        competition = monitor.stop()
        for case, _ in family_rows:
            case.competition = competition
        if process == "both" and family_has_process_rows(family):
            print(f"running {family}: ours in a tuned process ...", flush=True)
            times, failure = ours_times(family, args.device, args.quick, budget, tuned=True)
            if failure:
                print(f"  {failure}", flush=True)
            add_tuned_rows(family, family_rows, times)
        if native and family_has_process_rows(family):
            print(f"running {family}: ours from the native build ...", flush=True)
            times, failure = ours_times(family, args.device, args.quick, budget, capability="native")
            if failure:
                print(f"  {failure}", flush=True)
            add_native_rows(family, family_rows, times)
        if args.neighbour and args.device == "cpu" and family_has_process_rows(family):
            time_beside_neighbour(family_rows, args.device, ceilings, budget)
        warning = competition_warning(family, competition)
        if warning:
            print(warning, flush=True)
        rows += family_rows
    measure_memory(rows, args.device, args.quick)
    print()
    print(format_table(rows, args.quick))
    tag = args.tag or (f"{args.device}-{'-'.join(families)}{'-neighbour' if args.neighbour else ''}"
                       f"{'-quick' if args.quick else ''}")
    out = Path(__file__).resolve().parent / "results" if args.record else args.out
    paths = write_reports(rows, ceilings, machine, out, tag, args.quick)
    print("\nwrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
