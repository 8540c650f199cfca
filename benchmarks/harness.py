"""Timing, machine ceilings, memory measurement and reports for the benchmark suite.

Every case runs all its implementations side by side in one process: warm-up, then turns in which each
implementation runs for an equal slice of time, until the case's time budget is spent; the report gives each
one's median. Each case states its useful work (FLOPs and/or bytes) and which ceiling bounds it, so the report
shows achieved GFLOP/s or GB/s as a share of the machine's measured matmul rate (the bf16 tensor-core rate for
half-precision cases) or copy bandwidth.

On a GPU a turn is a batch of calls queued behind a sleep kernel, each call preceded by an L2 flush and timed
between CUDA events: the GPU runs the batch back to back, so a call's time is its kernels' time (Triton's
do_bench measures the same way), and the host time of each call (what Python, dispatch and launches cost)
is reported beside it. An implementation whose host time exceeds its device time is marked host-bound: in a
real network it would starve the GPU.
"""
from __future__ import annotations

import dataclasses
import gc
import importlib
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch


@dataclasses.dataclass
class Impl:
    name: str
    fn: Callable[[], Any]
    kind: str = "peer"  # "ours" | "reference" | "peer"
    # compares this implementation's values with ours on the case's inputs: None when they are equal, else what
    # differs (run once before the timing; the report says "equal to ours" or the difference)
    check: Optional[Callable[[], Optional[str]]] = None
    semantics: str = ""  # how its meaning differs from ours (what the comparison allows for), shown under the table


def peer(skipped: list, name: str, module: str, build: Callable[[Any], Any], dtype: Optional[torch.dtype] = None,
         dtypes: Optional[tuple] = None, unusable: Optional[Callable[[Any], Optional[str]]] = None,
         install: str = "pip install -e .[peers]") -> list[Impl]:
    """The rows ``build(imported module)`` (an Impl or a list of them) of a peer library, or none: a peer that
    cannot run is appended to ``skipped`` as (name, reason) (not installed, the import's error, an unsupported
    dtype, or what ``unusable(module)`` says, e.g. a build without CUDA), so the report lists it under its case.
    ``install`` tells how to install it."""
    if dtypes is not None and dtype is not None and dtype not in dtypes:
        supported = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        skipped.append((name, f"unsupported dtype {str(dtype).replace('torch.', '')} (supports {supported})"))
        return []
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module.split(".")[0] == exc.name.split(".")[0]:
            skipped.append((name, f"not installed ({module}; {install})"))
        else:
            skipped.append((name, f"import error: {type(exc).__name__}: {_first_line(exc)}"))
        return []
    except Exception as exc:  # noqa: BLE001 - an installed peer that fails to import (ABI, missing library)
        skipped.append((name, f"import error: {type(exc).__name__}: {_first_line(exc)}"))
        return []
    reason = unusable(mod) if unusable is not None else None
    if reason:
        skipped.append((name, reason))
        return []
    rows = build(mod)
    return list(rows) if isinstance(rows, (list, tuple)) else [rows]


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else ""


Goal = tuple  # (implementation name, required speedup of ours over it)


@dataclasses.dataclass
class Case:
    family: str
    name: str
    params: dict
    impls: list[Impl]
    flops: Optional[float] = None  # useful floating-point work of one call
    bytes: Optional[float] = None  # minimal bytes moved by one call
    bound: str = "compute"  # "compute" (vs matmul rate) or "memory" (vs copy bandwidth)
    goal: Optional[tuple[str, float]] = None  # (implementation, required speedup of ours over it)
    measure_memory: bool = False
    note: str = ""
    goals: list = dataclasses.field(default_factory=list)  # more (implementation, speedup) goals
    samples: Optional[int] = None  # samples (images, clips) one call processes: the report adds samples/s
    competition: Optional[dict] = None  # what other processes took while the case's family ran (CpuCompetition)
    skipped: list = dataclasses.field(default_factory=list)  # (peer, reason) of each peer that could not run

    def __post_init__(self):
        self.impls = [impl for impl in self.impls if impl is not None]  # candidate rows without a candidate

    def all_goals(self) -> list[tuple[str, float]]:
        """``goal`` and ``goals`` together: every (implementation, required speedup of ours over it)."""
        return ([self.goal] if self.goal else []) + [g for g in self.goals if g != self.goal]


def candidate_impl(name: str, ops, fn: Callable[[], Any], kind: str = "peer") -> Optional[Impl]:
    """A row that runs ``fn`` with the GPU candidates of ``ops`` enabled (see ``pyvision_fast._backend``), or
    None (which Case drops) when none of ``ops`` has a registered candidate: once a candidate becomes its op's
    default, the row would only repeat ours."""
    from pyvision_fast import _backend, use_candidates

    ops = [ops] if isinstance(ops, str) else list(ops)
    if not any(op in _backend.candidates() for op in ops):
        return None

    def run():
        with use_candidates(ops):
            return fn()

    return Impl(name, run, kind)


@dataclasses.dataclass
class Result:
    impl: str
    kind: str
    median_ms: float
    runs: int
    gflops: Optional[float]
    gbytes: Optional[float]
    ceiling_share: Optional[float]
    peak_mb: Optional[float]
    error: Optional[str] = None
    host_ms: Optional[float] = None  # GPU: median host (Python + launch) time per call
    values: Optional[str] = None  # "equal to ours", or how the values differ; None where not compared
    semantics: str = ""  # how the implementation's meaning differs from ours


class Timing(tuple):
    """(median ms, runs, host ms or None): what time_side_by_side reports for one function."""

    def __new__(cls, median_ms: float, runs: int, host_ms: Optional[float] = None):
        return super().__new__(cls, (median_ms, runs, host_ms))

    median_ms = property(lambda self: self[0])
    runs = property(lambda self: self[1])
    host_ms = property(lambda self: self[2])


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], Any], device: str, warmup: int = 1, min_runs: int = 3, max_runs: int = 50,
            budget_s: float = 2.0) -> tuple[float, int]:
    """Median wall time in milliseconds of ``fn()`` and the number of timed runs."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    start_all = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start_all < budget_s):
        times.append(_timed_call(fn, device))
    return statistics.median(times), len(times)


def _timed_call(fn: Callable[[], Any], device: str) -> float:
    """Milliseconds of one call (CUDA: between events around it, waited for)."""
    if device == "cuda":
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


class CudaTimer:
    """Device time of calls on the current CUDA device, free of host overhead (see the module docstring)."""

    FLUSH_BYTES = 256 << 20  # several times any GPU's L2

    def __init__(self):
        self.flush = torch.empty(self.FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
        self.stretch = 1.0  # grows when a batch outruns its sleep (clocks faster than at calibration)
        self.cycles_per_ms = self._calibrate()

    @staticmethod
    def _calibrate() -> float:
        """SM clock cycles per millisecond of torch.cuda._sleep, measured after ~50 ms of spinning so that the
        clock has left its idle frequency (an H200 idles at a fifth of its boost clock)."""
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        cycles = 20_000_000
        torch.cuda._sleep(100_000_000)
        best = 0.0
        for _ in range(3):
            begin.record()
            torch.cuda._sleep(cycles)
            end.record()
            end.synchronize()
            best = max(best, cycles / max(begin.elapsed_time(end), 1e-3))
        return best

    def batch(self, fn: Callable[[], Any], n: int, host_ms: float) -> tuple[list[float], list[float], bool]:
        """Times n calls queued behind a sleep long enough to queue them all: (device ms per call, host ms per
        call, whether the sleep ran out before the last call was queued, i.e. the device may have idled)."""
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        gate = torch.cuda.Event()
        sleep_ms = min(max(1.5 * self.stretch * n * (host_ms + 0.1), 0.5), 500.0)
        torch.cuda._sleep(int(sleep_ms * self.cycles_per_ms))
        gate.record()
        hosts = []
        for i in range(n):
            self.flush.zero_()
            starts[i].record()
            t0 = time.perf_counter()
            fn()
            hosts.append((time.perf_counter() - t0) * 1e3)
            ends[i].record()
        ran_out = gate.query()
        ends[-1].synchronize()
        return [b.elapsed_time(e) for b, e in zip(starts, ends)], hosts, ran_out

    def measure(self, fn: Callable[[], Any], n: int, host_ms: float, tries: int = 3):
        """``batch`` until one is queued entirely behind its sleep (the sleep doubles after each that was not;
        a call that synchronises the host never is): (device ms, host ms, whether the last one ran out)."""
        for attempt in range(tries):
            dev, hosts, ran_out = self.batch(fn, n, max(host_ms, statistics.median(hosts) if attempt else 0.0))
            if not ran_out:
                return dev, hosts, False
            self.stretch = min(self.stretch * 2, 64.0)
        return dev, hosts, True


_cuda_timer: Optional[CudaTimer] = None


def cuda_timer() -> CudaTimer:
    global _cuda_timer
    if _cuda_timer is None:
        _cuda_timer = CudaTimer()
    return _cuda_timer


def time_side_by_side(fns: list[Callable[[], Any]], device: str, warmup: int = 1, min_runs: int = 3,
                      budget_s: float = 2.0, rounds: int = 10, slow_s: Optional[float] = None) -> list:
    """A Timing (median ms, runs, host ms) for each of ``fns``, timed in turns: each round gives every function
    an equal slice of time (budget_s / rounds, at least one call), so all of them are measured across the same
    stretch of the machine's life. (On a VM whose memory bandwidth drifts by tens of percent within minutes,
    timing them one after another would compare different phases.) The case takes about
    ``budget_s * len(fns)`` seconds. A function whose warm-up call took longer than ``slow_s`` (default
    ``budget_s``) is timed once, outside the rounds (slow references). A function that raises gets its
    exception in place of the timing."""
    slow_s = budget_s if slow_s is None else slow_s
    times: list[list[float]] = [[] for _ in fns]
    hosts: list[list[float]] = [[] for _ in fns]
    errors: list[Optional[BaseException]] = [None] * len(fns)
    estimate = [0.0] * len(fns)  # wall ms of one call (warm-up), sizes the CUDA batches
    once = [False] * len(fns)
    for i, fn in enumerate(fns):
        try:
            for _ in range(warmup):
                fn()
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            estimate[i] = (time.perf_counter() - t0) * 1e3
        except Exception as exc:  # noqa: BLE001 - reported in the results
            errors[i] = exc
            continue
        if estimate[i] > slow_s * 1e3:
            once[i] = True
            try:
                times[i].append(_timed_call(fn, device))
            except Exception as exc:  # noqa: BLE001
                errors[i] = exc
    timer = cuda_timer() if device == "cuda" else None
    slice_s = budget_s / rounds
    start = time.perf_counter()
    while True:
        active = [i for i in range(len(fns)) if errors[i] is None and not once[i]]
        if not active:
            break
        for i in active:
            until = time.perf_counter() + slice_s
            try:
                while True:
                    if timer is not None:
                        host = statistics.median(hosts[i]) if hosts[i] else estimate[i]
                        n = max(1, min(32, int(slice_s * 1e3 / max(estimate[i], 1e-3))))
                        dev, host_ms, _ = timer.measure(fns[i], n, host)
                        times[i] += dev
                        hosts[i] += host_ms
                    else:
                        times[i].append(_timed_call(fns[i], device))
                    if time.perf_counter() >= until:
                        break
                _sync(device)  # a kernel fault surfaces here, attributed to the function that caused it
            except Exception as exc:  # noqa: BLE001
                errors[i] = exc
        if (time.perf_counter() - start >= budget_s * len(fns)
                and all(len(times[i]) >= min_runs for i in active if errors[i] is None)):
            break
    return [errors[i] if errors[i] is not None else
            Timing(statistics.median(times[i]), len(times[i]), statistics.median(hosts[i]) if hosts[i] else None)
            for i in range(len(fns))]


def keep_freed_memory() -> bool:
    """Tell glibc to keep freed memory in the process: no mmap/munmap per large block, no trimming of the heap.

    By default glibc serves every block above 32 MiB with fresh pages and returns them on free, so each call that
    allocates a large tensor pays its page faults (on the 2-core VM this suite was written on, about 25 ms per
    51 MB tensor: more than most of the ops measured here). A training loop does not pay them, because the
    allocator it runs with keeps memory (PyTorch's CUDA allocator, jemalloc or tcmalloc on CPUs). Applies to
    every implementation alike; returns False where it could not be set (not glibc)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory_mb(fn: Callable[[], Any], device: str) -> Optional[float]:
    """Extra memory at the peak of one call: CUDA allocator peak on GPU; on Linux CPUs the resident-set
    high-water mark above the level before the call (reset through /proc/self/clear_refs)."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        del out
        return peak / 2**20
    try:
        base = _status_kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        out = fn()
        peak = _status_kb("VmHWM") - base
        del out
        return max(peak, 0) / 1024
    except OSError:
        return None


def measure_ceilings(device: str, quick: bool = False) -> dict:
    """The machine's copy bandwidth (GB/s, read + write) and float32 matmul rate (GFLOP/s)."""
    n = (16 if quick else 64) * 2**20
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    ms, _ = time_fn(lambda: dst.copy_(src), device, budget_s=0.5)
    copy_gbs = 2 * n * 4 / (ms * 1e-3) / 1e9
    m = 1024 if quick else 2048
    a = torch.rand(m, m, device=device)
    b = torch.rand(m, m, device=device)
    ms, _ = time_fn(lambda: a @ b, device, budget_s=0.5)
    matmul_gflops = 2 * m**3 / (ms * 1e-3) / 1e9
    ceilings = {"copy_GBps": copy_gbs, "matmul_fp32_GFLOPps": matmul_gflops}
    if device == "cuda":  # half-precision cases are compared with the bf16 tensor-core rate
        m = 8192
        a16, b16 = torch.rand(m, m, device=device, dtype=torch.bfloat16), torch.rand(m, m, device=device,
                                                                                   dtype=torch.bfloat16)
        ms, _ = time_fn(lambda: a16 @ b16, device, budget_s=0.5)
        ceilings["matmul_bf16_GFLOPps"] = 2 * m**3 / (ms * 1e-3) / 1e9
        del a16, b16
    del src, dst, a, b
    return ceilings


def compare_values(impl: Impl) -> Optional[str]:
    """``impl.check()`` as the report states it: "equal to ours", the difference, or None without a check."""
    if impl.check is None:
        return None
    try:
        diff = impl.check()
    except Exception as exc:  # noqa: BLE001 - the timing reports a peer that fails; this says why it has no values
        return f"not compared: {type(exc).__name__}: {_first_line(exc, 120)}"
    return "equal to ours" if diff is None else f"differ: {diff}"


def run_case(case: Case, device: str, ceilings: dict, budget_s: float) -> list[Result]:
    results = []
    values = [compare_values(impl) for impl in case.impls]
    timings = time_side_by_side([impl.fn for impl in case.impls], device, budget_s=budget_s)
    for impl, timing, value in zip(case.impls, timings, values):
        if isinstance(timing, BaseException):  # a peer that fails on this shape is reported, not fatal
            exc = timing
            results.append(Result(impl.name, impl.kind, math.nan, 0, None, None, None, None, error=repr(exc)[:200],
                                  values=value, semantics=impl.semantics))
            print(f"  {impl.name}: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}",
                  flush=True)
            continue
        ms, runs, host_ms = timing
        gflops = case.flops / (ms * 1e-3) / 1e9 if case.flops else None
        gbytes = case.bytes / (ms * 1e-3) / 1e9 if case.bytes else None
        if case.bound == "memory" and gbytes is not None:
            share = gbytes / ceilings["copy_GBps"]
        elif case.bound == "compute" and gflops is not None:
            half = str(case.params.get("dtype", "")) in ("bfloat16", "float16")
            share = gflops / ceilings.get("matmul_bf16_GFLOPps" if half else "matmul_fp32_GFLOPps",
                                          ceilings["matmul_fp32_GFLOPps"])
        else:
            share = None
        results.append(Result(impl.name, impl.kind, ms, runs, gflops, gbytes, share, None, host_ms=host_ms,
                              values=value, semantics=impl.semantics))
    return results


def measure_memory(rows: list[tuple[Case, list[Result]]], device: str, quick: bool) -> None:
    """Fills in peak_mb for the cases that ask for it: in-process allocator statistics on CUDA, one fresh
    process per implementation on the CPU (see benchmarks/memory.py)."""
    import subprocess
    import sys

    for case, results in rows:
        if not case.measure_memory:
            continue
        by_name = {r.impl: r for r in results}  # rows added after the timing (the tuned row) have no impl
        for impl in case.impls:
            result = by_name.get(impl.name)
            if result is None or result.error is not None:
                continue
            if device == "cuda":
                try:
                    result.peak_mb = peak_memory_mb(impl.fn, device)
                except Exception as exc:  # e.g. the context lost to an earlier kernel fault: keep the timings
                    print(f"  {case.name} / {impl.name}: no memory measurement ({type(exc).__name__})", flush=True)
                continue
            cmd = [sys.executable, "-m", "benchmarks.memory", case.family, case.name, impl.name]
            out = subprocess.run(cmd + (["--quick"] if quick else []), capture_output=True, text=True,
                                 cwd=Path(__file__).resolve().parent.parent)
            if out.returncode == 0:
                result.peak_mb = float(out.stdout.strip().splitlines()[-1])


def _busy_seconds() -> Optional[float]:
    """CPU seconds all processes of the machine have spent busy since boot (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


# Other processes keeping this much of a core busy on average make the timings of a family unreliable.
COMPETITION_CORES = 0.2


class CpuCompetition:
    """How much CPU other processes used while a stretch of benchmarks ran: the machine's busy time
    (/proc/stat) minus this process's own CPU time, averaged over the wall time, in cores. Also the load
    average at the end. Use ``start()`` then ``stop()`` around one family."""

    def start(self) -> "CpuCompetition":
        self._wall, self._own, self._busy = time.perf_counter(), time.process_time(), _busy_seconds()
        return self

    def stop(self) -> dict:
        wall = time.perf_counter() - self._wall
        own = time.process_time() - self._own
        busy = _busy_seconds()
        cores = os.cpu_count() or 1
        result = {"cores": cores, "wall_s": wall,
                  "loadavg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
        if busy is None or self._busy is None or wall <= 0:
            result.update(other_cores=None, competing=None)
        else:
            other = max(0.0, (busy - self._busy - own) / wall)
            result.update(other_cores=other, competing=other > COMPETITION_CORES)
        return result


def competition_warning(family: str, c: Optional[dict]) -> Optional[str]:
    """One line for the table and the report when other processes competed for the CPU during ``family``."""
    if not c or not c.get("competing"):
        return None
    return (f"WARNING: other processes kept {c['other_cores']:.2f} of {c['cores']} cores busy while {family} ran "
            f"(load average {c['loadavg_1min']:.1f}): its timings and verdicts are unreliable; rerun on an idle "
            "machine")


def machine_description(device: str) -> dict:
    desc = {"device": device, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "machine": platform.machine()}
    if device == "cuda":
        desc["gpu"] = torch.cuda.get_device_name()
    else:
        try:
            with open("/proc/cpuinfo") as f:
                names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
            desc["cpu"] = f"{names[0]} ({os.cpu_count()} logical cores)" if names else platform.processor()
        except OSError:
            desc["cpu"] = platform.processor()
        from pyvision_fast import _ext

        mod = _ext.cpu_module()
        desc["cpu_isa"] = mod.cpu_capability if mod is not None else None  # the _C variant ours ran on
    return desc


def candidate_of(results: list[Result]) -> Optional[Result]:
    """The row of an unverified candidate implementation (named "<ours> (candidate)"), if the case has one."""
    return next((r for r in results if r.impl.endswith("(candidate)") and r.error is None), None)


def speedup_of_ours(case: Case, results: list[Result], against: str, use_candidate: bool = False) -> Optional[float]:
    """How many times faster ours (or, with use_candidate, the candidate row) is than ``against``."""
    ours = candidate_of(results) if use_candidate else next((r for r in results if r.kind == "ours"), None)
    other = next((r for r in results if r.impl == against), None)
    if ours is None or other is None or math.isnan(ours.median_ms) or math.isnan(other.median_ms):
        return None
    return other.median_ms / ours.median_ms


def goal_verdicts(case: Case, results: list[Result]) -> list[dict]:
    """One entry per goal: against, required speedup, achieved by ours and by the candidate, met or not."""
    out = []
    for against, need in case.all_goals():
        s = speedup_of_ours(case, results, against)
        c = speedup_of_ours(case, results, against, use_candidate=True)
        out.append({"against": against, "speedup": need, "achieved": s, "met": None if s is None else s >= need,
                    "candidate_achieved": c, "candidate_met": None if c is None else c >= need})
    return out


def format_table(rows: list[tuple[Case, list[Result]]], quick: bool = False) -> str:
    lines = []
    warned = set()
    for case, _ in rows:
        warning = competition_warning(case.family, case.competition)
        if warning and case.family not in warned:
            warned.add(case.family)
            lines.append(warning)
    if quick:
        lines.append("--quick: small shapes and short budgets; every verdict below is indicative only")
    if lines:
        lines.append("")
    iw = max([36] + [len(r.impl) for _, rs in rows for r in rs])  # the implementation column's width
    header = f"{'case':<44} {'implementation':<{iw}} {'median ms':>10} {'host ms':>8} {'x ours':>8} {'GFLOP/s':>9} " \
             f"{'GB/s':>8} {'ceiling':>8} {'peak MB':>8}"
    if any(case.samples for case, _ in rows):
        header += f" {'samples/s':>10}"
    lines.append(header)
    lines.append("-" * len(header))
    for case, results in rows:
        ours = next((r for r in results if r.kind == "ours"), None)
        for i, r in enumerate(results):
            label = f"{case.family}/{case.name}" if i == 0 else ""
            if r.error:
                lines.append(f"{label:<44} {r.impl:<{iw}} failed: {r.error}")
                continue
            rel = r.median_ms / ours.median_ms if ours and not math.isnan(ours.median_ms) else float("nan")
            bound = "*" if r.host_ms is not None and r.host_ms > r.median_ms else " "
            lines.append(
                f"{label:<44} {r.impl:<{iw}} {r.median_ms:>10.3f} "
                f"{(f'{r.host_ms:.3f}{bound}' if r.host_ms is not None else '-'):>8} {rel:>8.2f} "
                f"{(f'{r.gflops:.1f}' if r.gflops else '-'):>9} {(f'{r.gbytes:.1f}' if r.gbytes else '-'):>8} "
                f"{(f'{100 * r.ceiling_share:.1f}%' if r.ceiling_share else '-'):>8} "
                f"{(f'{r.peak_mb:.1f}' if r.peak_mb is not None else '-'):>8}"
                + (f" {case.samples * 1e3 / r.median_ms:>10.1f}" if case.samples else ""))
        for v in goal_verdicts(case, results):
            verdict = "n/a" if v["met"] is None else ("met" if v["met"] else "NOT met")
            if quick and v["met"] is not None:
                verdict += ", indicative"
            achieved = "-" if v["achieved"] is None else f"{v['achieved']:.2f}x"
            line = (f"{'':<44} goal: >= {v['speedup']:g}x faster than {v['against']}: {achieved} ({verdict})")
            if v["candidate_achieved"] is not None:
                line += (f"; candidate {v['candidate_achieved']:.2f}x "
                         f"({'met' if v['candidate_met'] else 'NOT met'})")
            lines.append(line)
        from .neighbour import retention_lines

        lines += retention_lines(case, results, f"{'':<44} ", quick)
        lines += _peer_lines(case, results)
    if any(r.host_ms is not None for _, rs in rows for r in rs):
        lines.append("")
        lines.append("median ms: device time per call (back-to-back calls, L2 flushed before each); host ms: Python "
                     "and launch time per call; * host-bound (host time above device time).")
    return "\n".join(lines)


def _peer_lines(case: Case, results: list[Result]) -> list[str]:
    """Under a case's rows: each peer's values against ours, how its meaning differs, each skipped peer and why."""
    pad = f"{'':<44} "
    lines = [f"{pad}values of {r.impl}: {r.values}" for r in results if r.values is not None]
    lines += [f"{pad}semantics of {r.impl}: {r.semantics}" for r in results if r.semantics]
    lines += [f"{pad}skipped peer {name}: {reason}" for name, reason in case.skipped]
    return lines


def write_reports(rows: list[tuple[Case, list[Result]]], ceilings: dict, machine: dict, out_dir: Path,
                  tag: str, quick: bool = False) -> dict[str, Path]:
    from .neighbour import retention_verdicts

    out_dir.mkdir(parents=True, exist_ok=True)
    families: dict[str, Optional[dict]] = {}
    for c, _ in rows:
        families.setdefault(c.family, c.competition)
    payload = {
        "machine": machine,
        "ceilings": ceilings,
        "quick": quick,
        "competition": {f: {**(c or {}), "warning": competition_warning(f, c)} for f, c in families.items()},
        "cases": [
            {"family": c.family, "name": c.name, "params": c.params, "bound": c.bound, "flops": c.flops,
             "bytes": c.bytes, "note": c.note, "samples": c.samples,
             "samples_per_s": {r.impl: c.samples * 1e3 / r.median_ms for r in rs if not r.error}
             if c.samples else None,
             "goal": None if c.goal is None else {"against": c.goal[0], "speedup": c.goal[1],
                                                  "achieved": speedup_of_ours(c, rs, c.goal[0])},
             "goals": goal_verdicts(c, rs),
             "neighbour_goals": retention_verdicts(c, rs),
             "skipped": [{"impl": name, "reason": reason} for name, reason in c.skipped],
             "results": [dataclasses.asdict(r) for r in rs]}
            for c, rs in rows
        ],
    }
    paths = {"json": out_dir / f"{tag}.json", "md": out_dir / f"{tag}.md", "png": out_dir / f"{tag}.png"}
    paths["json"].write_text(json.dumps(payload, indent=2, default=float))
    md = [f"# Benchmarks: {tag}", "",
          f"Machine: {machine.get('gpu') or machine.get('cpu')}; torch {machine['torch']}, {machine['threads']} threads.",
          f"Ceilings: copy {ceilings['copy_GBps']:.1f} GB/s, float32 matmul {ceilings['matmul_fp32_GFLOPps']:.1f} GFLOP/s.",
          f"Allocator: {machine.get('allocator', 'system default')}.",
          *([f"CPU kernels: the {machine['cpu_isa']} build (pyvision_fast/_cpu_isa.py); rows marked [native build]: "
             "ours from _C_native (-march=native)."] if machine.get("cpu_isa") else []),
          "", "```", format_table(rows, quick), "```", ""]
    for c, _ in rows:
        if c.note:
            md.append(f"- {c.family}/{c.name}: {c.note}")
    skipped = [f"- {c.family}/{c.name}: {name}: {reason}" for c, _ in rows for name, reason in c.skipped]
    if skipped:
        md += ["", "Skipped peers:", ""] + skipped
    paths["md"].write_text("\n".join(md) + "\n")
    try:
        _chart(rows, paths["png"], tag)
    except ImportError:
        paths.pop("png")
    return paths


def _chart(rows, path: Path, tag: str) -> None:
    """Horizontal bars, one per (case, implementation), median time on a log axis, coloured by role."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"ours": "#1f77b4", "reference": "#7f7f7f", "peer": "#ff7f0e"}
    labels, times, colour = [], [], []
    for case, results in rows:
        for r in results:
            if r.error is None and not math.isnan(r.median_ms):
                labels.append(f"{case.name}: {r.impl}")
                times.append(r.median_ms)
                colour.append(colours.get(r.kind, "#2ca02c"))
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(labels) + 1.2))
    y = list(range(len(labels)))[::-1]
    ax.barh(y, times, color=colour)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("median time per call (ms, log scale); blue: pyvision_fast, grey: reference, orange: peers")
    ax.set_title(f"pyvision_fast benchmarks: {tag}")
    for yi, t in zip(y, times):
        ax.text(t, yi, f" {t:.3g}", va="center", fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
