"""The eager fast path of the point-cloud ops: plain calls run the implementation through a
torch.autograd.Function instead of the torch.library custom op; both must agree bit for bit, and anything
that traces or intercepts dispatch (modes, torch.compile, export) must still see the custom op."""
import pytest
import torch

from op_harness import DEVICES_AND_CANDIDATES, candidate_switch  # noqa: F401 - autouse fixture
from op_harness import ops_dispatched
from pyvision_fast import ops


def _cases(device):
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64).to(device)

    p1, p2 = rand(2, 20, 3), rand(2, 30, 3)
    l1, l2 = torch.tensor([20, 7], device=device), torch.tensor([30, 5], device=device)
    f = rand(2, 4, 30)
    idx = torch.randint(0, 30, (2, 9), generator=g).to(device)
    gidx = torch.randint(0, 30, (2, 5, 3), generator=g).to(device)
    iidx = torch.randint(0, 30, (2, 20, 3), generator=g).to(device)
    w = rand(2, 20, 3)
    # name: (differentiable inputs, call through ops.*, call through the custom op, custom op name)
    return {
        "knn_points": ((p1, p2), lambda a, b: ops.knn_points(a, b, l1, l2, K=4).dists,
                       lambda a, b: torch.ops.pvf.knn_points(a, b, l1, l2, 4)[0], "pvf.knn_points.default"),
        "ball_query": ((p1, p2), lambda a, b: ops.ball_query(a, b, l1, l2, K=6, radius=0.5).dists,
                       lambda a, b: torch.ops.pvf.ball_query(a, b, l1, l2, 6, 0.5)[0], "pvf.ball_query.default"),
        "gather_points": ((f,), lambda a: ops.gather_points(a, idx), lambda a: torch.ops.pvf.gather_points(a, idx),
                          "pvf.gather_points.default"),
        "grouping_operation": ((f,), lambda a: ops.grouping_operation(a, gidx),
                               lambda a: torch.ops.pvf.gather_points(a, gidx.reshape(2, 15)).view(2, 4, 5, 3),
                               "pvf.gather_points.default"),
        "three_interpolate": ((f, w), lambda a, b: ops.three_interpolate(a, iidx, b),
                              lambda a, b: torch.ops.pvf.three_interpolate(a, iidx, b),
                              "pvf.three_interpolate.default"),
    }


NAMES = ["knn_points", "ball_query", "gather_points", "grouping_operation", "three_interpolate"]


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
@pytest.mark.parametrize("name", NAMES)
def test_eager_path_equals_the_custom_op(device, name):
    inputs, eager, custom, _ = _cases(device)[name]
    results = []
    for call, backward_name in ((eager, "Function"), (custom, "pvf_")):
        leaves = [t.clone().requires_grad_() for t in inputs]
        out = call(*leaves)
        nodes = [out.grad_fn] + [f for f, _ in out.grad_fn.next_functions if f is not None]  # through a view
        assert any(backward_name in type(n).__name__ for n in nodes)
        grad = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).view(out.shape)
        results.append((out, *torch.autograd.grad(out, leaves, grad)))
    for a, b in zip(*results):
        if device == "cuda":  # scatter-add gradients sum with atomics, in any order
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_dispatch_modes_see_the_custom_op_and_no_double_backward(name):
    inputs, eager, _, op_name = _cases("cpu")[name]
    leaves = [t.clone().requires_grad_() for t in inputs]
    out = eager(*leaves)
    (g,) = torch.autograd.grad(out, leaves[0], torch.ones_like(out, requires_grad=True), create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        g.sum().backward()

    seen = ops_dispatched(lambda: eager(*inputs))
    assert op_name in seen


def test_fps_eager_and_custom_op_agree_and_modes_see_it():
    pts = torch.rand(2, 50, 3, dtype=torch.float64)
    assert torch.equal(ops.sample_farthest_points(pts, K=9)[1], torch.ops.pvf.sample_farthest_points(pts, None, None, 9))
    seen = ops_dispatched(lambda: ops.furthest_point_sample(pts, 5))
    assert "pvf.sample_farthest_points.default" in seen


def test_search_backward_is_a_custom_op_under_tracing():
    """The custom-op path differentiates knn_points / ball_query with pvf::neighbour_dists_backward, so that
    torch.compile sees one opaque op; the eager path calls its implementation directly."""
    p1 = torch.rand(2, 10, 3, requires_grad=True)
    p2 = torch.rand(2, 12, 3, requires_grad=True)
    seen = ops_dispatched(lambda: torch.ops.pvf.knn_points(p1, p2, None, None, 3)[0].sum().backward())
    assert "pvf.neighbour_dists_backward.default" in seen


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
def test_neighbour_dists_backward_opcheck(device):
    from op_harness import opcheck

    p1, p2 = torch.rand(2, 7, 3, device=device), torch.rand(2, 9, 3, device=device)
    dists, idx, _ = ops.knn_points(p1, p2, K=4)
    lengths = (torch.tensor([7, 3], device=device), torch.tensor([9, 2], device=device))
    for l1, l2 in ((None, None), lengths):
        opcheck(torch.ops.pvf.neighbour_dists_backward.default,
                (p1, p2, idx, l1, l2, torch.randn_like(dists), "knn_points"))
