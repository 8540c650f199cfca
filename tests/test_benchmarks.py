"""The benchmark harness: timing, ceilings, reports (the suite itself runs in `make bench`)."""
import json

import torch

from benchmarks.harness import Case, Impl, format_table, measure_ceilings, run_case, time_fn, write_reports


def test_time_fn_reports_a_median_of_several_runs():
    ms, runs = time_fn(lambda: torch.rand(1000).sum(), "cpu", budget_s=0.05)
    assert ms > 0 and runs >= 3


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
