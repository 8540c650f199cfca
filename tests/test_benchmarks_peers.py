"""Peer libraries in the benchmark tables: a peer that cannot run is listed under its case with the reason (in the
table, the Markdown and the JSON), and an installed peer's row states whether its values equal ours."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from benchmarks import pointcloud
from benchmarks.harness import Case, Impl, compare_values, format_table, peer, run_case, write_reports

CEILINGS = {"copy_GBps": 1.0, "matmul_fp32_GFLOPps": 1.0}
MACHINE = {"device": "cpu", "torch": torch.__version__, "threads": 1, "cpu": "x"}
PEERS = ("torch_cluster", "pykeops", "pytorch3d")


def test_peer_reasons(tmp_path, monkeypatch):
    skipped: list = []
    assert peer(skipped, "nothing.op", "pvf_test_no_such_module", lambda m: Impl("x", lambda: 0)) == []
    (tmp_path / "pvf_test_broken_peer.py").write_text("raise RuntimeError('undefined symbol: _ZN3c10')\n")
    (tmp_path / "pvf_test_peer_needing_dep.py").write_text("import pvf_test_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert peer(skipped, "broken.op", "pvf_test_broken_peer", lambda m: Impl("x", lambda: 0)) == []
    assert peer(skipped, "dep.op", "pvf_test_peer_needing_dep", lambda m: Impl("x", lambda: 0)) == []
    assert peer(skipped, "half.op", "math", lambda m: Impl("x", lambda: 0), dtype=torch.float16,
                dtypes=(torch.float32, torch.float64)) == []
    assert peer(skipped, "gpu.op", "math", lambda m: Impl("x", lambda: 0), unusable=lambda m: "built without CUDA") == []
    rows = peer(skipped, "math.sqrt", "math", lambda m: Impl("math.sqrt", lambda: m.sqrt(4.0)))
    assert [r.name for r in rows] == ["math.sqrt"] and rows[0].fn() == 2.0
    assert skipped == [
        ("nothing.op", "not installed (pvf_test_no_such_module; pip install -e .[peers])"),
        ("broken.op", "import error: RuntimeError: undefined symbol: _ZN3c10"),
        # installed, but a module it needs is missing: an import error, not "not installed"
        ("dep.op", "import error: ModuleNotFoundError: No module named 'pvf_test_missing_dependency'"),
        ("half.op", "unsupported dtype float16 (supports float32, float64)"),
        ("gpu.op", "built without CUDA"),
    ]


def test_missing_peers_are_listed_under_their_case(tmp_path, monkeypatch):
    """With the peer libraries absent (None in sys.modules makes their import fail as for an absent package),
    every point-cloud case that has peers lists each with "not installed", in the table, the Markdown and the
    JSON."""
    for name in PEERS:
        monkeypatch.setitem(sys.modules, name, None)
    cases = {c.name: c for c in pointcloud.cases("cpu", True)}
    expected = {
        "sample_farthest_points": {"torch_cluster.fps", "pytorch3d.sample_farthest_points"},
        "knn_points": {"torch_cluster.knn", "pykeops LazyTensor.Kmin_argKmin", "pytorch3d.knn_points"},
        "ball_query": {"torch_cluster.radius", "pytorch3d.ball_query"},
    }
    for name, peers in expected.items():
        case = cases[name]
        assert {p for p, _ in case.skipped} == peers, name
        assert all(reason.startswith("not installed") for _, reason in case.skipped)
        assert not any(impl.name in peers for impl in case.impls)
    assert "c++17" in dict(cases["knn_points"].skipped)["pytorch3d.knn_points"]

    case = cases["sample_farthest_points"]
    case.impls = case.impls[:1]  # ours only: the report, not the timing, is under test
    rows = [(case, run_case(case, "cpu", CEILINGS, budget_s=0.01))]
    table = format_table(rows)
    assert "skipped peer torch_cluster.fps: not installed (torch_cluster; pip install -e .[peers])" in table
    paths = write_reports(rows, CEILINGS, MACHINE, tmp_path, "peers")
    md = paths["md"].read_text()
    assert "Skipped peers:" in md
    assert "- pointcloud/sample_farthest_points: torch_cluster.fps: not installed" in md
    data = json.loads(paths["json"].read_text())
    assert {s["impl"] for s in data["cases"][0]["skipped"]} == expected["sample_farthest_points"]


def test_values_are_compared_and_reported():
    x = torch.arange(6.0)
    case = Case("demo", "values", {}, [
        Impl("ours", lambda: x.clone(), "ours"),
        Impl("same peer", lambda: x + 0, check=lambda: None),
        Impl("other peer", lambda: x + 1, check=lambda: "6 of 6 values differ", semantics="adds one"),
        Impl("broken peer", lambda: 1 / 0, check=lambda: 1 / 0),
        Impl("unchecked peer", lambda: x * 1)])
    results = run_case(case, "cpu", CEILINGS, budget_s=0.01)
    assert [r.values for r in results] == [None, "equal to ours", "differ: 6 of 6 values differ",
                                           "not compared: ZeroDivisionError: division by zero", None]
    table = format_table([(case, results)])
    assert "values of same peer: equal to ours" in table
    assert "values of other peer: differ: 6 of 6 values differ" in table
    assert "semantics of other peer: adds one" in table


def test_ball_comparison_counts_and_partial_balls():
    """torch_cluster.radius' edge list against ours: counts of every query, sets of the balls below K."""
    ours = torch.tensor([[[0, 2, -1], [1, 3, 4]]])  # B=1, P1=2, K=3: query 0 has 2 neighbours, query 1 is full
    same = torch.tensor([[0, 0, 1, 1, 1], [2, 0, 4, 1, 0]])  # any order; the full ball kept another point (0)
    assert pointcloud._same_balls(ours, same, 1, 2, 5, 3) is None
    other_set = torch.tensor([[0, 0, 1, 1, 1], [2, 1, 4, 1, 0]])
    assert "fewer than K" in pointcloud._same_balls(ours, other_set, 1, 2, 5, 3)
    short = torch.tensor([[0, 1, 1, 1], [2, 4, 1, 0]])
    assert "1 of 2 queries" in pointcloud._same_balls(ours, short, 1, 2, 5, 3)


_KEOPS_WARM = textwrap.dedent("""
    import torch
    from pykeops.torch import LazyTensor
    p1, p2 = torch.rand(1, 20, 3), torch.rand(1, 30, 3)
    d2 = ((LazyTensor(p1[:, :, None, :]) - LazyTensor(p2[:, None, :, :])) ** 2).sum(-1)
    d2.Kmin_argKmin({K}, dim=2)
""")


def test_pykeops_row_equals_ours():
    """An installed pykeops gives the kNN case a row whose indices and distances equal ours. Its first use
    compiles (about a minute on a loaded 2-core machine; the build is cached): that compile runs first in a
    separate process and the test is skipped if it takes more than 180 s."""
    pytest.importorskip("pykeops")
    case = next(c for c in pointcloud.cases("cpu", True) if c.name == "knn_points")
    K = case.params["K"]
    try:
        subprocess.run([sys.executable, "-c", _KEOPS_WARM.format(K=K)], check=True, capture_output=True,
                       timeout=180)
    except subprocess.TimeoutExpired:
        pytest.skip("pykeops' first compile took more than 180 s")
    row = next(i for i in case.impls if i.name == "pykeops LazyTensor.Kmin_argKmin")
    assert compare_values(row) == "equal to ours"
    ours = next(i for i in case.impls if i.kind == "ours")
    case.impls = [ours, row]
    results = run_case(case, "cpu", CEILINGS, budget_s=0.01)
    assert results[1].error is None and results[1].values == "equal to ours"


@pytest.mark.parametrize("name, row", [("sample_farthest_points", "torch_cluster.fps"),
                                       ("knn_points", "torch_cluster.knn"),
                                       ("ball_query", "torch_cluster.radius")])
def test_torch_cluster_rows_equal_ours(name, row):
    pytest.importorskip("torch_cluster")
    case = next(c for c in pointcloud.cases("cpu", True) if c.name == name)
    impl = next(i for i in case.impls if i.name == row)
    assert compare_values(impl) == "equal to ours"


def test_overhead_lists_a_missing_torchvision(monkeypatch):
    from benchmarks import overhead

    # An earlier test may have imported torchvision.ops: import_module finds a submodule in sys.modules
    # without looking at its parent, so both names must be blocked.
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.ops", None)
    case = next(c for c in overhead.cases("cpu", True) if c.name == "deform_conv2d fwd+bwd")
    assert case.skipped == [("torchvision deform_conv2d", "not installed (torchvision.ops; pip install torchvision)")]
    assert [i.name for i in case.impls] == ["pvf.ops.deform_conv2d", "F.conv2d"]
    monkeypatch.undo()
    pytest.importorskip("torchvision")
    case = next(c for c in overhead.cases("cpu", True) if c.name == "deform_conv2d fwd+bwd")
    assert case.skipped == [] and "torchvision deform_conv2d" in [i.name for i in case.impls]
