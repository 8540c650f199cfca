"""The benchmark harness: timing, ceilings, reports (the suite itself runs in `make bench`)."""
import importlib
import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from benchmarks.harness import (Case, Impl, format_table, measure_ceilings, run_case, time_fn, time_side_by_side,
                                write_reports)


def test_time_fn_reports_a_median_of_several_runs():
    ms, runs = time_fn(lambda: torch.rand(1000).sum(), "cpu", budget_s=0.05)
    assert ms > 0 and runs >= 3


def test_implementations_are_timed_in_turns():
    """Every function runs in every round (so all of them see the same stretch of the machine's life); one that
    raises is reported by its exception and the others go on."""
    import time

    calls = []
    fns = [lambda: calls.append("fast"), lambda: (calls.append("slow"), time.sleep(0.003)), lambda: 1 / 0]
    fast, slow, broken = time_side_by_side(fns, "cpu", budget_s=0.06, rounds=6)
    assert isinstance(broken, ZeroDivisionError)
    assert fast[1] >= 6 and slow[1] >= 6 and slow[0] > 2.5 > fast[0]
    timed = calls[2:]  # after the warm-up call of each
    switches = sum(a != b for a, b in zip(timed, timed[1:]))
    # fast, slow, fast, slow, ...: timed one after the other they would switch once. The rounds end by wall time
    # (budget_s * len(fns)), so on a loaded machine, where a slice overshoots, there may be fewer than 6 of them.
    assert switches >= 3


def test_reports_are_written(tmp_path):
    x = torch.rand(1 << 16)
    case = Case("demo", "copy", {"n": x.numel()},
                [Impl("ours", lambda: x.clone(), "ours"), Impl("reference", lambda: x + 0, "reference"),
                 Impl("broken peer", lambda: 1 / 0)],
                bytes=2 * 4 * x.numel(), bound="memory", goal=("reference", 0.01))
    ceilings = measure_ceilings("cpu", quick=True)
    assert ceilings["copy_GBps"] > 0 and ceilings["matmul_fp32_GFLOPps"] > 0
    rows = [(case, run_case(case, "cpu", ceilings, budget_s=0.05))]
    table = format_table(rows)
    assert "goal: >= 0.01x faster than reference" in table and "failed: ZeroDivisionError" in table
    paths = write_reports(rows, ceilings, {"device": "cpu", "torch": torch.__version__, "threads": 1, "cpu": "x"},
                          tmp_path, "demo")
    data = json.loads(paths["json"].read_text())
    assert data["cases"][0]["results"][0]["impl"] == "ours"
    assert data["cases"][0]["results"][0]["gbytes"] > 0
    assert "demo/copy" in paths["md"].read_text()
    assert paths["png"].stat().st_size > 0


class _ShapesSeen(TorchDispatchMode):
    """Records the shape of every tensor an operator receives."""

    def __init__(self):
        super().__init__()
        self.shapes = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.shapes.update(tuple(t.shape) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("family, kwargs, input_shape", [
    ("mvf", dict(shapes=[(1, 2, 16, 4), (1, 3, 24, 3)]), lambda p: (p["N"] * p["T"], p["C"], p["H"], p["W"])),
    ("attention", dict(workloads=[("a", 1, 2, 5, 8), ("b", 2, 1, 7, 4)]), lambda p: (p["B"], p["H"], p["L"], p["D"])),
])
def test_every_case_runs_on_its_own_shape(family, kwargs, input_shape):
    """Cases of several shapes built by one function: every implementation of a case runs on a tensor of the shape
    its parameters report, not on another case's (closures made in a loop would all see its last tensors)."""
    cases = importlib.import_module(f"benchmarks.{family}").cases("cpu", True, **kwargs)
    assert len({input_shape(case.params) for case in cases}) == 2
    for case in cases:
        for impl in case.impls:
            with _ShapesSeen() as seen:
                impl.fn()
            assert input_shape(case.params) in seen.shapes, (case.name, impl.name)


def test_slow_functions_are_timed_once():
    import time

    calls = []
    fast, slow = time_side_by_side([lambda: calls.append(0), lambda: (calls.append(1), time.sleep(0.03))], "cpu",
                                   budget_s=0.02, rounds=2)
    assert slow.runs == 1 and calls.count(1) == 3  # warm-up, estimate, the one timed call
    assert fast.runs >= 3 and slow.median_ms >= 30


def test_several_goals_and_the_candidate_row_are_judged():
    x = torch.rand(1 << 14)
    case = Case("demo", "goals", {}, [Impl("ours", lambda: x.clone(), "ours"),
                                      Impl("ours (candidate)", lambda: x.clone()),
                                      Impl("slow peer", lambda: [x.clone() for _ in range(20)])],
                goals=[("slow peer", 2.0), ("ours", 1000.0)])
    rows = [(case, run_case(case, "cpu", {"copy_GBps": 1.0, "matmul_fp32_GFLOPps": 1.0}, budget_s=0.05))]
    table = format_table(rows)
    assert "goal: >= 2x faster than slow peer" in table and "goal: >= 1000x faster than ours: 1.00x (NOT met)" in table
    assert "candidate" in table.split("goal: >= 2x")[1].splitlines()[0]


@pytest.mark.cuda
def test_cuda_timer_measures_device_time_not_host_time():
    """A call that sleeps 2 ms on the host and launches a 0.1-ms kernel takes ~0.1 ms of device time (the batch is
    queued behind a sleep kernel) and ~2 ms of host time; a 1-ms kernel takes ~1 ms."""
    import time

    from benchmarks.harness import cuda_timer

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    timer = cuda_timer()
    short, long = int(0.1 * timer.cycles_per_ms), int(1.0 * timer.cycles_per_ms)
    dev, host, ran_out = timer.measure(lambda: (time.sleep(0.002), torch.cuda._sleep(short)), 8, 2.0)
    assert not ran_out and max(dev) < 0.5 and min(host) >= 2.0
    dev, _, ran_out = timer.measure(lambda: torch.cuda._sleep(long), 8, 0.05)
    assert not ran_out and all(0.7 < d < 1.4 for d in dev)


def test_gpu_summary_reads_the_goals_of_written_reports(tmp_path, capsys):
    """tools/gpu_summary.py (the last table of the GPU check) reads goals, ratios and candidate verdicts back."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    import gpu_summary

    x = torch.rand(1 << 14)
    case = Case("demo", "summary", {}, [Impl("ours", lambda: x.clone(), "ours"),
                                        Impl("ours (candidate)", lambda: x.clone()),
                                        Impl("slow peer", lambda: [x.clone() for _ in range(20)])],
                goals=[("slow peer", 1000.0)])
    rows = [(case, run_case(case, "cpu", {"copy_GBps": 1.0, "matmul_fp32_GFLOPps": 1.0}, budget_s=0.03))]
    write_reports(rows, {"copy_GBps": 1.0, "matmul_fp32_GFLOPps": 1.0},
                  {"device": "cpu", "torch": torch.__version__, "threads": 1, "cpu": "x"}, tmp_path / "bench", "gpu-demo")
    (row,) = gpu_summary.goal_rows(tmp_path / "bench")
    assert row["case"] == "demo/summary" and row["against"] == "slow peer" and row["met"] is False
    assert row["ratio"] > 1 and row["candidate_ratio"] > 1 and row["candidate_met"] is False
    gpu_summary.main(tmp_path)
    assert "demo/summary" in capsys.readouterr().out


def test_samples_per_second_column(tmp_path):
    """A case that says how many samples one call processes gets samples/s = samples / median time."""
    x = torch.rand(1 << 12)
    case = Case("demo", "step", {}, [Impl("ours", lambda: x.clone(), "ours")], samples=4)
    ceilings = {"copy_GBps": 1.0, "matmul_fp32_GFLOPps": 1.0}
    rows = [(case, run_case(case, "cpu", ceilings, budget_s=0.02))]
    assert "samples/s" in format_table(rows)
    data = json.loads(write_reports(rows, ceilings, {"device": "cpu", "torch": "x", "threads": 1, "cpu": "x"},
                                    tmp_path, "demo")["json"].read_text())
    median = data["cases"][0]["results"][0]["median_ms"]
    assert data["cases"][0]["samples_per_s"]["ours"] == pytest.approx(4e3 / median)


def test_competing_processes_are_measured_and_warned_about(tmp_path):
    """A process that burns CPU while a family runs shows up as other processes' cores (the machine's busy time
    minus the runner's own), and the table, the Markdown and the JSON carry the warning; --quick marks every
    verdict indicative."""
    import subprocess
    import sys
    import time

    from benchmarks.harness import CpuCompetition, competition_warning

    monitor = CpuCompetition().start()
    burner = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass"])
    burner.wait()
    time.sleep(0.1)
    measured = monitor.stop()
    assert measured["other_cores"] > 0.3 and measured["competing"]  # the burner alone is most of a core
    x = torch.rand(1 << 12)
    case = Case("demo", "copy", {}, [Impl("ours", lambda: x.clone(), "ours"), Impl("reference", lambda: x + 0,
                                                                                    "reference")],
                goal=("reference", 0.01))
    case.competition = measured
    rows = [(case, run_case(case, "cpu", {"copy_GBps": 1.0, "matmul_fp32_GFLOPps": 1.0}, budget_s=0.02))]
    table = format_table(rows, quick=True)
    assert table.startswith("WARNING: other processes kept") and "while demo ran" in table
    assert "indicative)" in table and "every verdict below is indicative" in table
    paths = write_reports(rows, {"copy_GBps": 1.0, "matmul_fp32_GFLOPps": 1.0},
                          {"device": "cpu", "torch": "x", "threads": 1, "cpu": "x"}, tmp_path, "demo", quick=True)
    data = json.loads(paths["json"].read_text())
    assert data["quick"] and data["competition"]["demo"]["competing"]
    assert data["competition"]["demo"]["warning"].startswith("WARNING")
    assert "WARNING: other processes" in paths["md"].read_text()
    quiet = dict(measured, other_cores=0.05, competing=False)
    assert competition_warning("demo", quiet) is None


def test_tuned_process_rows():
    """CPU tables: ours again in a tuned subprocess (glibc keeping freed memory), inserted after ours with the
    goal that the plain process loses at most 25% against it."""
    from benchmarks import mvf
    from benchmarks.tuned import add_tuned_rows, family_has_process_rows, ours_times

    times, failure = ours_times("mvf", "cpu", True, 0.02, tuned=True)
    assert failure is None
    assert set(times) == {f"mvf/{c.name}" for c in mvf.cases("cpu", True)}
    assert all(ms > 0 and runs >= 1 and error is None for ms, runs, error in times.values())
    assert family_has_process_rows("mvf") and not family_has_process_rows("deploy")
    x = torch.rand(1 << 12)
    case = Case("demo", "copy", {}, [Impl("ours", lambda: x.clone(), "ours"), Impl("reference", lambda: x + 0,
                                                                                    "reference")])
    rows = [(case, run_case(case, "cpu", {"copy_GBps": 1.0, "matmul_fp32_GFLOPps": 1.0}, budget_s=0.02))]
    add_tuned_rows("demo", rows, {"demo/copy": [2.0, 5, None], "demo/other": [1.0, 1, None]})
    assert [r.impl for r in rows[0][1]] == ["ours", "ours [tuned process]", "reference"]
    assert rows[0][1][1].kind == "tuned" and rows[0][1][1].median_ms == 2.0
    table = format_table(rows)
    assert "goal: >= 0.8x faster than ours [tuned process]" in table


def test_native_build_rows():
    """CPU tables: ours again from _C_native in a subprocess, after ours' other subprocess rows, with the goal
    that the portable variant loaded here is within 10% of it."""
    from benchmarks import mvf
    from benchmarks.tuned import add_native_rows, add_tuned_rows, native_build_available, ours_times

    from pyvision_fast import _cpu_isa

    if "native" not in _cpu_isa.built_capabilities():  # a build without PVF_NATIVE=1 (pip install); make has it
        pytest.skip("_C_native is not built (PVF_NATIVE=1; make builds it)")
    assert native_build_available()
    times, failure = ours_times("mvf", "cpu", True, 0.02, capability="native")
    assert failure is None
    assert set(times) == {f"mvf/{c.name}" for c in mvf.cases("cpu", True)}
    assert all(ms > 0 and error is None for ms, _, error in times.values())
    times, failure = ours_times("mvf", "cpu", True, 0.02, capability="sse9")
    assert times == {} and "default-build" not in failure and "sse9" in failure
    x = torch.rand(1 << 12)
    case = Case("demo", "copy", {}, [Impl("ours", lambda: x.clone(), "ours"), Impl("reference", lambda: x + 0,
                                                                                    "reference")])
    rows = [(case, run_case(case, "cpu", {"copy_GBps": 1.0, "matmul_fp32_GFLOPps": 1.0}, budget_s=0.02))]
    add_tuned_rows("demo", rows, {"demo/copy": [2.0, 5, None]})
    add_native_rows("demo", rows, {"demo/copy": [1.5, 5, None]})
    assert [r.impl for r in rows[0][1]] == ["ours", "ours [tuned process]", "ours [native build]", "reference"]
    assert rows[0][1][2].kind == "native" and rows[0][1][2].median_ms == 1.5
    assert "goal: >= 0.91x faster than ours [native build]" in format_table(rows)


def test_neighbour_rows_and_retention_verdicts():
    """--neighbour: ours and each goal's implementation timed again beside a running neighbour process (killed
    afterwards), and the share of ours' idle speed-up it keeps judged against 0.6."""
    from benchmarks.harness import Result
    from benchmarks.neighbour import Neighbour, retention_verdicts, time_beside_neighbour

    x = torch.rand(1 << 12)
    case = Case("demo", "copy", {}, [Impl("ours", lambda: x.clone(), "ours"),
                                     Impl("reference", lambda: x + 0, "reference"),
                                     Impl("peer", lambda: x * 1)], goal=("reference", 0.01))
    ceilings = {"copy_GBps": 1.0, "matmul_fp32_GFLOPps": 1.0}
    rows = [(case, run_case(case, "cpu", ceilings, budget_s=0.02))]
    time_beside_neighbour(rows, "cpu", ceilings, 0.02)
    names = [r.impl for r in rows[0][1]]
    assert names[3:] == ["ours [beside a neighbour]", "reference [beside a neighbour]"]  # no peer: no goal
    assert all(r.kind == "neighbour" and r.median_ms > 0 for r in rows[0][1][3:])
    (verdict,) = retention_verdicts(case, rows[0][1])
    assert verdict["against"] == "reference" and verdict["retained"] > 0
    assert "goal: beside a neighbour keep >= 0.6 of the idle speed-up over reference" in format_table(rows)
    # the arithmetic: ours 1 -> 2 ms, reference 10 -> 11 ms: 10x idle, 5.5x beside: 0.55 kept (not met)
    made = [Result("ours", "ours", 1.0, 3, None, None, None, None),
            Result("reference", "reference", 10.0, 3, None, None, None, None),
            Result("ours [beside a neighbour]", "neighbour", 2.0, 3, None, None, None, None),
            Result("reference [beside a neighbour]", "neighbour", 11.0, 3, None, None, None, None)]
    (v,) = retention_verdicts(case, made)
    assert v["retained"] == pytest.approx(0.55) and not v["met"]
    with Neighbour(warm_s=0.0) as n:
        proc = n.proc
        assert proc.poll() is None
    assert proc.poll() is not None  # killed on exit
