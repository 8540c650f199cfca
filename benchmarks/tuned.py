"""The tuned-process row of the CPU tables.

A user's process runs with glibc's defaults: every block above the mmap threshold (128 KiB, rising to at most
32 MiB as blocks are freed) is fresh pages, which the kernel zeroes on first touch, and is returned on free.
PyTorch's CPU allocator does not cache either, so a training loop pays those page faults on every step. The
headline figures of the CPU tables therefore come from such a default process. Beside ours, each CPU case gets
one more row: ours timed in a *tuned* process, where glibc keeps freed memory (``mallopt``: no mmap/munmap per
large block, no trimming; what jemalloc/tcmalloc through ``LD_PRELOAD`` or a caching allocator give). The row
runs in a subprocess (mallopt settings cannot be undone in a running process), and a goal asks that the
default process lose at most 25% against it (ours' default time at most 1.25x its tuned time: a "0.8x"
speed-up goal against the tuned row).

``python -m benchmarks --process tuned`` runs every implementation tuned; ``--process default`` leaves the row
out. A family module that sets ``PROCESS_ROWS = False`` (serving stacks, call-overhead cases) gets neither
this row nor the neighbour nor the native-build rows (benchmarks/neighbour.py).

The same subprocess gives the *native-build* row: ours from ``_C_native`` (``-march=native``, built with
``PVF_NATIVE=1``; ``make`` does) instead of the portable variant this process loaded (``_C_avx512`` here;
pyvision_fast/_cpu_isa.py), in a default process like the headline. Its goal: the portable build within 10% of
the native one (at most 1.1x its time).
"""
from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

from .harness import Case, Result, keep_freed_memory, run_case

TUNED_SUFFIX = " [tuned process]"
MIN_SHARE = 0.8  # ours in the default process: at least 0.8x the tuned speed (at most 1.25x its time)
NATIVE_SUFFIX = " [native build]"
NATIVE_MIN_SHARE = 0.91  # ours from the portable build: within 10% of the native build (at most ~1.1x its time)


def family_has_process_rows(family: str) -> bool:
    module = importlib.import_module(f".{family}", __package__)
    return bool(getattr(module, "PROCESS_ROWS", True))


def native_build_available() -> bool:
    """Whether ``_C_native`` is built and this process loaded another variant (so a native row means something)."""
    from pyvision_fast import _cpu_isa, _ext

    mod = _ext.cpu_module()
    return "native" in _cpu_isa.built_capabilities() and mod is not None and mod.cpu_capability != "native"


def run_ours_only(families: list[str], device: str, quick: bool, budget: float, out: Path, tuned: bool) -> int:
    """The subprocess's side: time only ours of every case of ``families`` (in a tuned process when ``tuned``);
    writes ``{"times": {"family/case": [median ms, runs, error or null]}}`` as JSON to ``out``."""
    if tuned and not keep_freed_memory():
        print("benchmarks: the tuned process needs glibc's mallopt, which is not available here", file=sys.stderr)
        return 2
    forced = os.environ.get("PVF_CPU_CAPABILITY")
    if forced and device == "cpu":  # time the variant asked for, never the plain-PyTorch fallback
        from pyvision_fast import _ext

        mod = _ext.cpu_module()
        if mod is None or mod.cpu_capability != forced.strip().lower():
            print(f"benchmarks: PVF_CPU_CAPABILITY={forced}: {_ext.load_error('_C')}", file=sys.stderr)
            return 2
    nan_ceilings = {"copy_GBps": math.nan, "matmul_fp32_GFLOPps": math.nan}
    times = {}
    for family in families:
        module = importlib.import_module(f".{family}", __package__)
        for case in module.cases(device, quick):
            ours = [impl for impl in case.impls if impl.kind == "ours"]
            if not ours:
                continue
            case.impls = ours[:1]
            (result,) = run_case(case, device, nan_ceilings, budget)
            times[f"{family}/{case.name}"] = [result.median_ms, result.runs, result.error]
    out.write_text(json.dumps({"times": times}))
    return 0


def ours_times(family: str, device: str, quick: bool, budget: float, *, tuned: bool = False,
               capability: Optional[str] = None) -> tuple[dict, Optional[str]]:
    """Runs ``run_ours_only`` for ``family`` in a fresh process (tuned, or loading the CPU variant
    ``capability``); returns (its times, None) or ({}, why not)."""
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ours.json"
        cmd = [sys.executable, "-m", "benchmarks", "--family", family, "--device", device, "--budget", str(budget),
               "--ours-json", str(out)] + (["--quick"] if quick else []) + (["--process", "tuned"] if tuned else [])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
        if capability:
            env["PVF_CPU_CAPABILITY"] = capability
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            what = "tuned-process" if tuned else f"{capability or 'default'}-build"
            return {}, f"the {what} run failed (exit {proc.returncode}): {tail[:200]}"
        return json.loads(out.read_text())["times"], None


def add_tuned_rows(family: str, rows: list[tuple[Case, list[Result]]], times: dict) -> None:
    """Puts each case's tuned time of ours right after ours, and the <= 25% loss goal against it."""
    add_ours_rows(family, rows, times, TUNED_SUFFIX, "tuned", MIN_SHARE)


def add_native_rows(family: str, rows: list[tuple[Case, list[Result]]], times: dict) -> None:
    """Puts each case's native-build time of ours after ours, and the within-10% goal against it."""
    add_ours_rows(family, rows, times, NATIVE_SUFFIX, "native", NATIVE_MIN_SHARE)


def add_ours_rows(family: str, rows: list[tuple[Case, list[Result]]], times: dict, suffix: str, kind: str,
                  min_share: float) -> None:
    """Inserts ``times`` (ours from a subprocess) as rows ``<ours><suffix>`` after ours' own row (and after the
    rows other subprocesses put there), each with the goal: ours at least ``min_share`` x that row's speed."""
    for case, results in rows:
        entry = times.get(f"{family}/{case.name}")
        ours_at = next((i for i, r in enumerate(results) if r.kind == "ours"), None)
        if entry is None or ours_at is None:
            continue
        ms, runs, error = entry
        ours = results[ours_at]
        gflops = case.flops / (ms * 1e-3) / 1e9 if case.flops and not error else None
        gbytes = case.bytes / (ms * 1e-3) / 1e9 if case.bytes and not error else None
        name = ours.impl + suffix
        at = ours_at + 1
        while at < len(results) and results[at].impl.startswith(ours.impl + " ["):
            at += 1
        results.insert(at, Result(name, kind, ms if not error else math.nan, runs, gflops, gbytes, None, None,
                                  error=error))
        if not error:
            case.goals.append((name, min_share))
