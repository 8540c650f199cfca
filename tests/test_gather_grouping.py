"""gather_points / grouping_operation (mmcv semantics) against torch.gather, with gradients."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from op_harness import BadInput, assert_close, check_compiled, check_onnx, float_dtypes, gradcheck, opcheck
from op_harness import DEVICES_AND_CANDIDATES, candidate_switch  # noqa: F401 - autouse fixture
from op_harness import run_bad_input
from pyvision_fast import ops, use_backend
from pyvision_fast.reference import pointcloud as ref


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 3), C=st.integers(1, 9), N=st.integers(1, 50), M=st.integers(0, 40), S=st.integers(1, 5),
       int32=st.booleans(), seed=st.integers(0, 2**16))
def test_matches_reference(device, B, C, N, M, S, int32, seed):
    g = torch.Generator().manual_seed(seed)
    for dtype in float_dtypes(device):
        f = torch.randn(B, C, N, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_()
        idx = torch.randint(0, N, (B, M), generator=g).to(device)
        gidx = torch.randint(0, N, (B, M, S), generator=g).to(device)
        if int32:
            idx, gidx = idx.int(), gidx.int()
        out = ops.gather_points(f, idx)
        grouped = ops.grouping_operation(f, gidx)
        expected = ref.gather_columns(f, idx.long())
        expected_g = ref.gather_columns(f, gidx.long().reshape(B, M * S)).view(B, C, M, S)
        assert torch.equal(out, expected) and torch.equal(grouped, expected_g)
        w1 = torch.randn_like(out)
        w2 = torch.randn_like(grouped)
        (gf,) = torch.autograd.grad((out * w1).sum() + (grouped * w2).sum(), f)
        f64 = f.detach().double().requires_grad_()  # reference gradient accumulated in float64
        e64 = ref.gather_columns(f64, idx.long())
        eg64 = ref.gather_columns(f64, gidx.long().reshape(B, M * S)).view(B, C, M, S)
        (rf,) = torch.autograd.grad((e64 * w1.double()).sum() + (eg64 * w2.double()).sum(), f64)
        assert_close(gf, rf, dtype)


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
def test_gradcheck(device):
    f = torch.randn(2, 4, 10, dtype=torch.float64, device=device, requires_grad=True)
    idx = torch.randint(0, 10, (2, 7), device=device)
    gradcheck(lambda x: ops.gather_points(x, idx), (f,))
    gradcheck(lambda x: ops.grouping_operation(x, idx.view(2, 7, 1).expand(2, 7, 3).contiguous()), (f,))


def test_backends_agree_on_backward():
    f = torch.randn(2, 5, 30, requires_grad=True)
    idx = torch.randint(0, 30, (2, 50))
    ops.gather_points(f, idx).pow(2).sum().backward()
    g = f.grad.clone()
    f.grad = None
    with use_backend("reference"):
        ops.gather_points(f, idx).pow(2).sum().backward()
    assert_close(g, f.grad)


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
def test_non_contiguous(device):
    f = torch.randn(2, 30, 5, device=device).transpose(1, 2)
    idx = torch.randint(0, 30, (2, 8), device=device)
    assert torch.equal(ops.gather_points(f, idx), ref.gather_columns(f, idx))


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
def test_opcheck(device):
    f = torch.randn(2, 4, 10, device=device, requires_grad=True)
    idx = torch.randint(0, 10, (2, 6), device=device)
    opcheck(torch.ops.pvf.gather_points.default, (f, idx))
    opcheck(torch.ops.pvf.gather_points_backward.default, (torch.randn(2, 4, 6, device=device), idx, 10))


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
def test_torch_compile(device):
    f = torch.randn(2, 4, 10, device=device, requires_grad=True)
    idx = torch.randint(0, 10, (2, 6, 3), device=device)
    check_compiled(lambda x: ops.grouping_operation(x, idx).sum(-1), f)


def test_onnx_export(tmp_path):
    class M(torch.nn.Module):
        def forward(self, f, idx, gidx):
            return ops.gather_points(f, idx), ops.grouping_operation(f, gidx)

    inputs = (torch.randn(2, 4, 20), torch.randint(0, 20, (2, 9)), torch.randint(0, 20, (2, 5, 3)))
    check_onnx(M(), inputs, tmp_path, atol=0)


def _bad_cases():
    f = torch.randn(2, 3, 10)
    return [
        BadInput("index too large", lambda: ops.gather_points(f, torch.tensor([[0, 10], [1, 2]])), ValueError,
                 "out of range"),
        BadInput("negative index", lambda: ops.grouping_operation(f, torch.full((2, 2, 2), -1)), ValueError,
                 "out of range"),
        BadInput("float index", lambda: ops.gather_points(f, torch.zeros(2, 3)), TypeError, "int32 or int64"),
        BadInput("idx rank", lambda: ops.gather_points(f, torch.zeros(2, 3, 1, dtype=torch.long)), ValueError,
                 "'idx' must have 2 dimensions"),
        BadInput("group idx rank", lambda: ops.grouping_operation(f, torch.zeros(2, 3, dtype=torch.long)),
                 ValueError, r"'idx' must have 3 dimensions \(B, M, S\)"),
        BadInput("group batch mismatch", lambda: ops.grouping_operation(f, torch.zeros(1, 3, 2, dtype=torch.long)),
                 ValueError, "'idx' has size 1 in dimension 0 but the batch size of features is 2"),
        BadInput("group index too large", lambda: ops.grouping_operation(f, torch.full((2, 2, 2), 10)), ValueError,
                 r"idx\[0\] = 10 is out of range for the number of points N \(10\)"),
        BadInput("group float index", lambda: ops.grouping_operation(f, torch.zeros(2, 2, 2)), TypeError,
                 "int32 or int64"),
        BadInput("features not a tensor", lambda: ops.gather_points(f.tolist(), torch.zeros(2, 4, dtype=torch.long)),
                 TypeError, "'features' must be a tensor"),
        BadInput("group with one batch count", lambda: ops.grouping_operation(
            f[0].t(), torch.zeros(3, 2, dtype=torch.long), torch.tensor([10])), ValueError,
                 "'indices_batch_cnt' is required"),
        BadInput("batch mismatch", lambda: ops.gather_points(f, torch.zeros(3, 4, dtype=torch.long)), ValueError,
                 "batch size"),
        BadInput("features rank", lambda: ops.gather_points(f[0], torch.zeros(2, 4, dtype=torch.long)), ValueError,
                 "'features' must have 3 dimensions"),
        BadInput("empty features", lambda: ops.gather_points(torch.randn(2, 3, 0), torch.zeros(2, 4, dtype=torch.long)),
                 ValueError, "N = 0"),
        BadInput("int features", lambda: ops.gather_points(f.long(), torch.zeros(2, 4, dtype=torch.long)), TypeError,
                 "float32 or float64"),
    ]


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("case", _bad_cases(), ids=str)
def test_bad_inputs(case, backend):
    with use_backend(backend):
        run_bad_input(case)
