"""three_nn and three_interpolate (mmcv / PointNet++ feature propagation) against the reference."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from op_harness import BadInput, assert_close, check_compiled, check_onnx, float_dtypes, gradcheck, opcheck
from op_harness import DEVICES_AND_CANDIDATES, candidate_switch  # noqa: F401 - autouse fixture
from op_harness import run_bad_input
from pyvision_fast import ops, use_backend
from pyvision_fast.reference import pointcloud as ref


def _weights(dist):
    w = 1.0 / (dist + 1e-8)
    return w / w.sum(-1, keepdim=True)


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 3), C=st.integers(1, 8), n=st.integers(1, 40), m=st.integers(3, 30), seed=st.integers(0, 2**16))
def test_matches_reference(device, B, C, n, m, seed):
    g = torch.Generator().manual_seed(seed)
    for dtype in float_dtypes(device):
        unknown = torch.rand(B, n, 3, generator=g, dtype=torch.float64).to(device, dtype)
        known = torch.rand(B, m, 3, generator=g, dtype=torch.float64).to(device, dtype)
        dist, idx = ops.three_nn(unknown, known)
        rd, ri = ref.knn_points_idx(unknown.double(), known.double(), None, None, 3)
        assert_close(dist, rd.sqrt(), dtype)
        if dtype == torch.float64:
            assert torch.equal(idx, ri)
        f = torch.randn(B, C, m, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_()
        w = _weights(dist).detach().requires_grad_()
        out = ops.three_interpolate(f, idx, w)
        # the reference runs in float64 on the same values: the kernels accumulate half types in float
        f64 = f.detach().double().requires_grad_()
        w64 = w.detach().double().requires_grad_()
        expected = ref.three_interpolate(f64, idx, w64)
        assert_close(out, expected, dtype)
        go = torch.randn_like(out)
        grads = torch.autograd.grad(out, (f, w), go)
        rgrads = torch.autograd.grad(expected, (f64, w64), go.double())
        for a, b in zip(grads, rgrads):
            assert_close(a, b, dtype)


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
def test_gradcheck(device):
    f = torch.randn(2, 3, 8, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.rand(2, 6, 3, dtype=torch.float64, device=device, requires_grad=True)
    idx = torch.randint(0, 8, (2, 6, 3), device=device)
    gradcheck(lambda a, b: ops.three_interpolate(a, idx, b), (f, w))
    u = torch.rand(2, 5, 3, dtype=torch.float64, device=device, requires_grad=True)
    k = torch.rand(2, 9, 3, dtype=torch.float64, device=device, requires_grad=True)
    gradcheck(lambda a, b: ops.three_nn(a, b)[0], (u, k))


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
def test_only_feature_gradient_requested(device):
    f = torch.randn(2, 3, 8, device=device, requires_grad=True)
    w = torch.rand(2, 6, 3, device=device)
    idx = torch.randint(0, 8, (2, 6, 3), device=device)
    ops.three_interpolate(f, idx, w).sum().backward()
    with use_backend("reference"):
        expected = torch.autograd.grad(ops.three_interpolate(f, idx, w).sum(), f)[0]
    assert_close(f.grad, expected)


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
def test_opcheck(device):
    f = torch.randn(2, 3, 8, device=device, requires_grad=True)
    w = torch.rand(2, 6, 3, device=device, requires_grad=True)
    idx = torch.randint(0, 8, (2, 6, 3), device=device)
    opcheck(torch.ops.pvf.three_interpolate.default, (f, idx, w))
    opcheck(torch.ops.pvf.three_interpolate_backward.default,
            (torch.randn(2, 3, 6, device=device), f.detach(), idx, w.detach(), True, False))


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
def test_torch_compile(device):
    u, k = torch.rand(2, 20, 3, device=device), torch.rand(2, 10, 3, device=device)
    f = torch.randn(2, 4, 10, device=device, requires_grad=True)

    def fn(u, k, f):
        d, i = ops.three_nn(u, k)
        return ops.three_interpolate(f, i, _weights(d))

    check_compiled(fn, u, k, f)


def test_onnx_export(tmp_path):
    class FeaturePropagation(torch.nn.Module):
        def forward(self, unknown, known, features):
            d, i = ops.three_nn(unknown, known)
            return ops.three_interpolate(features, i, _weights(d)), i

    inputs = (torch.rand(2, 30, 3), torch.rand(2, 12, 3), torch.randn(2, 5, 12))
    check_onnx(FeaturePropagation(), inputs, tmp_path, atol=1e-4, exact_outputs=(1,))


def _bad_cases():
    f = torch.randn(2, 3, 8)
    w = torch.rand(2, 6, 3)
    idx = torch.randint(0, 8, (2, 6, 3))
    return [
        BadInput("index out of range", lambda: ops.three_interpolate(f, idx + 8, w), ValueError, "out of range"),
        BadInput("weight shape", lambda: ops.three_interpolate(f, idx, w[:, :5]), ValueError, "'weight' must have shape"),
        BadInput("idx last dim", lambda: ops.three_interpolate(f, idx[..., :2], w), ValueError, "neighbours"),
        BadInput("weight dtype", lambda: ops.three_interpolate(f, idx, w.double()), TypeError, "same dtype"),
        BadInput("too few known points", lambda: ops.three_nn(torch.rand(2, 5, 3), torch.rand(2, 2, 3)), ValueError,
                 "at least 3 points"),
        BadInput("three_nn rank", lambda: ops.three_nn(torch.rand(5, 3), torch.rand(2, 5, 3)), ValueError,
                 "3 dimensions"),
        BadInput("three_nn batch", lambda: ops.three_nn(torch.rand(3, 5, 3), torch.rand(2, 5, 3)), ValueError,
                 "'known' has size 2 in dimension 0 but the batch size of unknown is 3"),
        BadInput("three_nn D", lambda: ops.three_nn(torch.rand(2, 5, 3), torch.rand(2, 5, 2)), ValueError,
                 "point dimension D of unknown"),
        BadInput("three_nn dtype", lambda: ops.three_nn(torch.rand(2, 5, 3), torch.rand(2, 5, 3).double()),
                 TypeError, "same dtype"),
        BadInput("negative index", lambda: ops.three_interpolate(f, idx - 8, w), ValueError, "out of range"),
        BadInput("idx batch", lambda: ops.three_interpolate(f, idx[:1], w), ValueError,
                 "'idx' has size 1 in dimension 0 but the batch size of features is 2"),
        BadInput("weight batch", lambda: ops.three_interpolate(f, idx, w[:1]), ValueError,
                 r"'weight' must have shape \(2, 6, 3\)"),
        BadInput("weight last dim", lambda: ops.three_interpolate(f, idx, w[..., :2]), ValueError,
                 "'weight' must have shape"),
        BadInput("idx rank", lambda: ops.three_interpolate(f, idx[0], w), ValueError, "'idx' must have 3 dimensions"),
        BadInput("features rank", lambda: ops.three_interpolate(f[0], idx, w), ValueError,
                 "'features' must have 3 dimensions"),
        BadInput("no known points", lambda: ops.three_interpolate(f[..., :0], idx, w), ValueError, "M = 0"),
        BadInput("float idx", lambda: ops.three_interpolate(f, idx.float(), w), TypeError, "int32 or int64"),
        BadInput("int features", lambda: ops.three_interpolate(f.long(), idx, w), TypeError, "float32 or float64"),
    ]


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("case", _bad_cases(), ids=str)
def test_bad_inputs(case, backend):
    with use_backend(backend):
        run_bad_input(case)
