"""knn_points / knn_gather against the plain-PyTorch reference, and PyTorch3D's semantics."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from op_harness import BadInput, assert_close, check_compiled, check_onnx, float_dtypes, gradcheck, opcheck
from op_harness import DEVICES_AND_CANDIDATES, candidate_switch  # noqa: F401 - autouse fixture
from op_harness import random_lengths, run_bad_input
from pyvision_fast import ops, use_backend
from pyvision_fast.reference import pointcloud as ref


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 3), P1=st.integers(1, 40), P2=st.integers(1, 60), D=st.integers(1, 6),
       K=st.integers(1, 70), use_lengths=st.booleans(), seed=st.integers(0, 2**16))
def test_matches_reference(device, B, P1, P2, D, K, use_lengths, seed):
    g = torch.Generator().manual_seed(seed)
    for dtype in float_dtypes(device):
        p1 = torch.rand(B, P1, D, generator=g, dtype=torch.float64).to(device, dtype)
        p2 = torch.rand(B, P2, D, generator=g, dtype=torch.float64).to(device, dtype)
        l1 = random_lengths(B, P1, g).to(device) if use_lengths else None
        l2 = random_lengths(B, P2, g).to(device) if use_lengths else None
        dists, idx, nn = ops.knn_points(p1, p2, l1, l2, K=K, return_nn=True)
        rd, ri = ref.knn_points_idx(p1.double(), p2.double(), l1, l2, K)
        assert dists.shape == idx.shape == (B, P1, K) and idx.dtype == torch.int64
        assert_close(dists, rd, dtype)
        if dtype == torch.float64:  # exact index agreement where the distances are computed identically
            assert torch.equal(idx, ri)
        # the neighbours found are as close as the reference's, whatever the tie order
        assert_close(ref.knn_points_idx(p1.double(), p2.double(), l1, l2, K)[0], rd, torch.float64)
        assert nn.shape == (B, P1, K, D)
        full = torch.full((B,), P2, device=device)  # PyTorch3D gathers with lengths2 = P2 when none are given
        assert torch.equal(nn, ops.knn_gather(p2, idx, l2 if l2 is not None else full))
        if K > P2:
            assert (nn[:, :, P2:] == 0).all()


def test_tie_order_is_lowest_index_first():
    p2 = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [2.0, 0.0]]])
    p1 = torch.zeros(1, 1, 2)
    d, idx, _ = ops.knn_points(p1, p2, K=5)
    assert idx.tolist() == [[[0, 1, 2, 3, 4]]]
    assert d.tolist() == [[[1.0, 1.0, 1.0, 1.0, 4.0]]]


def test_padding_is_zero_like_pytorch3d():
    p1 = torch.rand(2, 5, 3)
    p2 = torch.rand(2, 4, 3)
    l1 = torch.tensor([5, 2])
    l2 = torch.tensor([3, 4])
    d, idx, _ = ops.knn_points(p1, p2, l1, l2, K=6)
    assert (d[0, :, 3:] == 0).all() and (idx[0, :, 3:] == 0).all()  # cloud 0 of p2 has 3 points
    assert (d[1, :, 4:] == 0).all() and (d[1, 2:] == 0).all() and (idx[1, 2:] == 0).all()  # p1 rows past 2
    assert (d[0, :, :3] > 0).all()


def test_large_k_and_memory_shape():
    p1 = torch.rand(1, 300, 3)
    p2 = torch.rand(1, 400, 3)
    d, idx, _ = ops.knn_points(p1, p2, K=128)
    rd, ri = ref.knn_points_idx(p1, p2, None, None, 128)
    assert_close(d, rd)
    assert (idx == ri).float().mean() > 0.999  # float32 ties aside


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
def test_gradients_match_reference(device):
    torch.manual_seed(1)
    p1 = torch.rand(2, 30, 3, dtype=torch.float64, device=device, requires_grad=True)
    p2 = torch.rand(2, 25, 3, dtype=torch.float64, device=device, requires_grad=True)
    l1 = torch.tensor([30, 17], device=device)
    l2 = torch.tensor([9, 25], device=device)
    w = torch.rand(2, 30, 12, dtype=torch.float64, device=device)
    (ops.knn_points(p1, p2, l1, l2, K=12).dists * w).sum().backward()
    g1, g2 = p1.grad.clone(), p2.grad.clone()
    p1.grad = p2.grad = None
    (ref.knn_points_idx(p1, p2, l1, l2, 12)[0] * w).sum().backward()
    assert_close(g1, p1.grad)
    assert_close(g2, p2.grad)


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
def test_gradcheck(device):
    torch.manual_seed(2)
    p1 = torch.rand(2, 8, 3, dtype=torch.float64, device=device, requires_grad=True)
    p2 = torch.rand(2, 10, 3, dtype=torch.float64, device=device, requires_grad=True)
    l1, l2 = torch.tensor([8, 5], device=device), torch.tensor([3, 10], device=device)
    gradcheck(lambda a, b: ops.knn_points(a, b, K=4).dists, (p1, p2))
    gradcheck(lambda a, b: ops.knn_points(a, b, l1, l2, K=4).dists, (p1, p2))


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
def test_non_contiguous_inputs(device):
    p1 = torch.rand(2, 3, 20, device=device).transpose(1, 2)
    p2 = torch.rand(2, 3, 30, device=device).transpose(1, 2)
    d, idx, _ = ops.knn_points(p1, p2, K=5)
    rd, ri = ref.knn_points_idx(p1, p2, None, None, 5)
    assert_close(d, rd)


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
def test_empty_inputs(device):
    d, idx, _ = ops.knn_points(torch.rand(0, 5, 3, device=device), torch.rand(0, 7, 3, device=device), K=2)
    assert d.shape == (0, 5, 2)
    d, idx, _ = ops.knn_points(torch.rand(2, 0, 3, device=device), torch.rand(2, 7, 3, device=device), K=2)
    assert d.shape == (2, 0, 2)
    # no candidates: no neighbour to name
    d, idx, _ = ops.knn_points(torch.rand(2, 4, 3, device=device), torch.rand(2, 0, 3, device=device), K=2)
    assert torch.isinf(d).all() and (idx == -1).all()


def test_backends_agree():
    p1, p2 = torch.rand(2, 50, 3), torch.rand(2, 60, 3)
    with use_backend("reference"):
        rd, ri, _ = ops.knn_points(p1, p2, K=7)
    with use_backend("cpu"):
        d, i, _ = ops.knn_points(p1, p2, K=7)
    assert_close(d, rd)
    assert torch.equal(i, ri)


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
def test_opcheck(device):
    p1 = torch.rand(2, 9, 3, device=device, requires_grad=True)
    p2 = torch.rand(2, 11, 3, device=device, requires_grad=True)
    opcheck(torch.ops.pvf.knn_points.default, (p1, p2, None, None, 4))
    opcheck(torch.ops.pvf.knn_points.default,
            (p1, p2, torch.tensor([9, 3], device=device), torch.tensor([2, 11], device=device), 4))


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
def test_torch_compile(device):
    p1 = torch.rand(2, 20, 3, device=device, requires_grad=True)
    p2 = torch.rand(2, 25, 3, device=device, requires_grad=True)

    def fn(a, b):
        r = ops.knn_points(a, b, K=5, return_nn=True)
        return r.dists.sum() + r.knn.sum(), r.idx

    check_compiled(fn, p1, p2)


def test_onnx_export(tmp_path):
    class M(torch.nn.Module):
        def forward(self, a, b, la, lb):
            r = ops.knn_points(a, b, la, lb, K=6, return_nn=True)
            return r.dists, r.idx, r.knn

    inputs = (torch.rand(2, 30, 3), torch.rand(2, 20, 3), torch.tensor([30, 11]), torch.tensor([4, 20]))
    check_onnx(M(), inputs, tmp_path, exact_outputs=(1,))


def _bad_cases():
    p1, p2 = torch.rand(2, 5, 3), torch.rand(2, 6, 3)
    return [
        BadInput("rank", lambda: ops.knn_points(p1[0], p2, K=2), ValueError, "'p1' must have 3 dimensions"),
        BadInput("D mismatch", lambda: ops.knn_points(p1, torch.rand(2, 6, 2), K=2), ValueError,
                 "point dimension D"),
        BadInput("batch mismatch", lambda: ops.knn_points(p1, torch.rand(3, 6, 3), K=2), ValueError, "batch size"),
        BadInput("K zero", lambda: ops.knn_points(p1, p2, K=0), ValueError, "K must be >= 1"),
        BadInput("K float", lambda: ops.knn_points(p1, p2, K=2.0), TypeError, "K must be an int"),
        BadInput("lengths too long", lambda: ops.knn_points(p1, p2, lengths2=torch.tensor([6, 7]), K=2), ValueError,
                 "length 7 outside"),
        BadInput("lengths negative", lambda: ops.knn_points(p1, p2, lengths1=torch.tensor([-1, 2]), K=2),
                 ValueError, "outside"),
        BadInput("lengths shape", lambda: ops.knn_points(p1, p2, lengths1=torch.tensor([1, 2, 3]), K=2),
                 ValueError, "batch size"),
        BadInput("lengths float", lambda: ops.knn_points(p1, p2, lengths1=torch.tensor([1.0, 2.0]), K=2),
                 TypeError, "lengths1 must be an int32 or int64"),
        BadInput("int points", lambda: ops.knn_points(p1.long(), p2.long(), K=2), TypeError, "float32 or float64"),
        BadInput("half on cpu", lambda: ops.knn_points(p1.half(), p2.half(), K=2), TypeError, "float32 or float64"),
        BadInput("dtype mix", lambda: ops.knn_points(p1, p2.double(), K=2), TypeError, "same dtype"),
        BadInput("norm 3", lambda: ops.knn_points(p1, p2, K=2, norm=3), ValueError, "norm must be 1"),
        BadInput("p1 not a tensor", lambda: ops.knn_points(p1.tolist(), p2, K=2), TypeError,
                 "'p1' must be a tensor"),
        BadInput("p2 rank", lambda: ops.knn_points(p1, p2[0], K=2), ValueError, "'p2' must have 3 dimensions"),
        BadInput("D zero", lambda: ops.knn_points(p1[..., :0], p2[..., :0], K=2), ValueError, "D >= 1"),
        BadInput("lengths2 batch", lambda: ops.knn_points(p1, p2, lengths2=torch.tensor([6]), K=2), ValueError,
                 "'lengths2' has size 1 in dimension 0 but the batch size is 2"),
        BadInput("lengths rank", lambda: ops.knn_points(p1, p2, lengths1=torch.tensor([[5, 5]]), K=2), ValueError,
                 "'lengths1' must have 1 dimensions"),
        BadInput("lengths1 above P1", lambda: ops.knn_points(p1, p2, lengths1=torch.tensor([6, 2]), K=2),
                 ValueError, r"'lengths1' has a length 6 outside \[0, 5\]"),
        BadInput("return_sorted not bool", lambda: ops.knn_points(p1, p2, K=2, return_sorted=None), TypeError,
                 "return_sorted must be a bool"),
        BadInput("norm 1 batch mismatch", lambda: ops.knn_points(p1, torch.rand(1, 6, 3), K=2, norm=1), ValueError,
                 "batch size"),
        BadInput("norm 1 lengths", lambda: ops.knn_points(p1, p2, lengths2=torch.tensor([7, 1]), K=2, norm=1),
                 ValueError, "outside"),
        BadInput("knn_gather batch", lambda: ops.knn_gather(p2, torch.zeros(3, 5, 2, dtype=torch.long)), ValueError,
                 "'idx' has size 3 in dimension 0 but the batch size of x is 2"),
        BadInput("knn_gather idx rank", lambda: ops.knn_gather(p2, torch.zeros(2, 5, dtype=torch.long)), ValueError,
                 "'idx' must have 3 dimensions"),
        BadInput("knn_gather x rank", lambda: ops.knn_gather(p2[0], torch.zeros(2, 5, 1, dtype=torch.long)),
                 ValueError, "'x' must have 3 dimensions"),
        BadInput("knn_gather idx range", lambda: ops.knn_gather(p2, torch.full((2, 5, 1), 6)), ValueError,
                 "out of range for the number of points M"),
        BadInput("knn_gather -1 without lengths", lambda: ops.knn_gather(p2, torch.full((2, 5, 1), -1)),
                 ValueError, "out of range"),
        BadInput("knn_gather lengths batch", lambda: ops.knn_gather(p2, torch.zeros(2, 5, 1, dtype=torch.long),
                                                                     torch.tensor([1, 2, 3])), ValueError,
                 "batch size"),
    ]


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("case", _bad_cases(), ids=str)
def test_bad_inputs(case, backend):
    """Every row raises before any backend runs: the compiled kernels and the reference alike."""
    with use_backend(backend):
        run_bad_input(case)


@pytest.mark.cuda
def test_device_mix_raises():
    p1 = torch.rand(2, 5, 3, device="cuda")
    with pytest.raises(TypeError, match="is on cpu"):
        ops.knn_points(p1, torch.rand(2, 6, 3), K=2)


def _cloud(kind: str, B: int, P: int, g: torch.Generator) -> torch.Tensor:
    if kind == "uniform":
        return torch.rand(B, P, 3, generator=g, dtype=torch.float64)
    if kind == "lattice":  # many exactly equal distances: exercises the (distance, index) tie order
        return torch.randint(0, 4, (B, P, 3), generator=g).double()
    if kind == "plane":
        pts = torch.rand(B, P, 3, generator=g, dtype=torch.float64)
        pts[..., 2] = 0.5
        return pts
    if kind == "line":
        return torch.rand(B, P, 1, generator=g, dtype=torch.float64).expand(B, P, 3).clone()
    if kind == "same":
        return torch.full((B, P, 3), 0.25, dtype=torch.float64)
    if kind == "clusters":
        centers = torch.rand(B, 4, 3, generator=g, dtype=torch.float64) * 100
        pick = torch.randint(0, 4, (B, P), generator=g)
        return torch.gather(centers, 1, pick[..., None].expand(B, P, 3)) + 0.01 * torch.randn(
            B, P, 3, generator=g, dtype=torch.float64)
    raise ValueError(kind)


@settings(max_examples=30, deadline=None)
@given(kind=st.sampled_from(["uniform", "lattice", "plane", "line", "same", "clusters"]),
       P1=st.integers(1, 50), P2=st.integers(64, 300), K=st.integers(1, 40), use_lengths=st.booleans(),
       outside=st.booleans(), seed=st.integers(0, 2**16))
def test_spatial_grid_search_equals_brute_force(kind, P1, P2, K, use_lengths, outside, seed):
    """3-D clouds of >= 64 points use the grid search: it must give exactly the brute-force answer."""
    g = torch.Generator().manual_seed(seed)
    B = 2
    p2 = _cloud(kind, B, P2, g)
    p1 = _cloud(kind, B, P1, g)
    if outside:  # queries outside the cloud's bounding box, some far away
        p1 = p1 * 3 - 1
        p1[:, ::2] += 1e4
    l1 = random_lengths(B, P1, g) if use_lengths else None
    l2 = random_lengths(B, P2, g) if use_lengths else None
    d, idx, _ = ops.knn_points(p1, p2, l1, l2, K=K)
    rd, ri = ref.knn_points_idx(p1, p2, l1, l2, K)
    assert torch.equal(idx, ri)
    assert_close(d, rd)
    d32, idx32, _ = ops.knn_points(p1.float(), p2.float(), l1, l2, K=K)
    rd32, _ = ref.knn_points_idx(p1.float(), p2.float(), l1, l2, K)
    assert_close(d32, rd32)


def test_empty_reference_cloud_names_no_point():
    """A p2 cloud of length 0 has no neighbour: idx -1 and dists +inf (never index 0 with distance 0, which
    names a point that does not exist), as with P2 == 0; the gradient stays finite and the other
    clouds are untouched. Partial clouds keep PyTorch3D's zero padding (recognised by k >= lengths2)."""
    p1 = torch.rand(2, 3, 3, dtype=torch.float64, requires_grad=True)
    p2 = torch.rand(2, 5, 3, dtype=torch.float64, requires_grad=True)
    d, idx, nn = ops.knn_points(p1, p2, lengths2=torch.tensor([0, 2]), K=4, return_nn=True)
    assert (idx[0] == -1).all() and torch.isinf(d[0]).all() and (nn[0] == 0).all()
    expected = ((p1[1, :, None] - p2[1, None, :2]) ** 2).sum(-1).sort(-1)
    torch.testing.assert_close(d[1, :, :2], expected.values)
    assert torch.equal(idx[1, :, :2], expected.indices) and (idx[1, :, 2:] == 0).all() and (d[1, :, 2:] == 0).all()
    d[1].sum().backward()
    assert torch.isfinite(p1.grad).all() and torch.isfinite(p2.grad).all() and (p2.grad[0] == 0).all()
    loss, _ = ops.chamfer_distance(p1.detach(), p2.detach(), y_lengths=torch.tensor([0, 2]), batch_reduction=None)
    assert loss[0] == 0 and loss[1] > 0  # PyTorch3D's value for a cloud against an empty one
