"""ball_query against the reference (PyTorch3D semantics: first K in index order, squared dist < r^2)."""
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
@given(B=st.integers(1, 3), P1=st.integers(1, 30), P2=st.integers(1, 60), D=st.integers(1, 4),
       K=st.integers(1, 40), radius=st.floats(0.05, 1.5), use_lengths=st.booleans(), seed=st.integers(0, 2**16))
def test_matches_reference(device, B, P1, P2, D, K, radius, use_lengths, seed):
    g = torch.Generator().manual_seed(seed)
    for dtype in float_dtypes(device):
        p1 = torch.rand(B, P1, D, generator=g, dtype=torch.float64).to(device, dtype)
        p2 = torch.rand(B, P2, D, generator=g, dtype=torch.float64).to(device, dtype)
        l1 = random_lengths(B, P1, g).to(device) if use_lengths else None
        l2 = random_lengths(B, P2, g).to(device) if use_lengths else None
        dists, idx, nn = ops.ball_query(p1, p2, l1, l2, K=K, radius=radius)
        assert torch.equal(nn, ops.masked_gather(p2, idx))
        if dtype in (torch.float32, torch.float64):
            rd, ri = ref.ball_query_idx(p1, p2, l1, l2, K, radius)
            assert torch.equal(idx, ri)
            assert_close(dists, rd, dtype)
        else:  # half types: distances are accumulated in float, so membership at the boundary may differ from
            # any reference; check what was returned instead: in radius, in index order, distances right.
            true_d = ((p1.double()[:, :, None] - ops.masked_gather(p2, idx).double()) ** 2).sum(-1)
            found = idx >= 0
            assert (true_d[found] < radius**2 * 1.02 + 1e-3).all()
            assert_close(dists.double()[found], true_d[found], dtype)
            assert not (found[..., 1:] & ~found[..., :-1]).any()  # the -1 padding only after what was found
            both = found[..., 1:] & found[..., :-1]
            assert (idx[..., 1:] > idx[..., :-1])[both].all()


def test_semantics_by_hand():
    p2 = torch.tensor([[[0.0], [0.5], [0.1], [2.0], [0.2], [-0.3]]])
    p1 = torch.zeros(1, 1, 1)
    d, idx, nn = ops.ball_query(p1, p2, K=3, radius=0.31)
    assert idx.tolist() == [[[0, 2, 4]]]  # index order, not distance order; 0.5 and 2.0 are outside
    d, idx, nn = ops.ball_query(p1, p2, K=5, radius=0.5)  # 0.5 itself is not inside (strict <)
    assert idx.tolist() == [[[0, 2, 4, 5, -1]]]
    assert d[0, 0, 4] == 0 and (nn[0, 0, 4] == 0).all()
    torch.testing.assert_close(d[0, 0, :4], torch.tensor([0.0, 0.01, 0.04, 0.09]))


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
def test_gradcheck(device):
    torch.manual_seed(4)
    p1 = torch.rand(2, 6, 3, dtype=torch.float64, device=device, requires_grad=True)
    p2 = torch.rand(2, 12, 3, dtype=torch.float64, device=device, requires_grad=True)
    gradcheck(lambda a, b: ops.ball_query(a, b, K=5, radius=0.6, return_nn=False).dists, (p1, p2))


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
def test_empty(device):
    d, idx, nn = ops.ball_query(torch.rand(2, 3, 3, device=device), torch.rand(2, 0, 3, device=device), K=4,
                                radius=1.0)
    assert (idx == -1).all() and (d == 0).all()
    d, idx, nn = ops.ball_query(torch.rand(0, 3, 3, device=device), torch.rand(0, 5, 3, device=device), K=4,
                                radius=1.0)
    assert idx.shape == (0, 3, 4)


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
def test_opcheck(device):
    p1 = torch.rand(2, 9, 3, device=device, requires_grad=True)
    p2 = torch.rand(2, 11, 3, device=device, requires_grad=True)
    opcheck(torch.ops.pvf.ball_query.default, (p1, p2, None, None, 4, 0.5))


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
def test_torch_compile(device):
    p1, p2 = torch.rand(2, 20, 3, device=device), torch.rand(2, 30, 3, device=device)
    check_compiled(lambda a, b: tuple(ops.ball_query(a, b, K=6, radius=0.4)), p1, p2)


def test_onnx_export(tmp_path):
    class M(torch.nn.Module):
        def forward(self, a, b, la, lb):
            r = ops.ball_query(a, b, la, lb, K=8, radius=0.35)
            return r.dists, r.idx, r.knn

    inputs = (torch.rand(2, 25, 3), torch.rand(2, 30, 3), torch.tensor([25, 10]), torch.tensor([30, 12]))
    check_onnx(M(), inputs, tmp_path, exact_outputs=(1,))


def _bad_cases():
    p1, p2 = torch.rand(2, 5, 3), torch.rand(2, 6, 3)
    return [
        BadInput("radius zero", lambda: ops.ball_query(p1, p2, K=2, radius=0.0), ValueError, "radius must be a positive number"),
        BadInput("radius negative", lambda: ops.ball_query(p1, p2, K=2, radius=-1.0), ValueError, "radius"),
        BadInput("radius nan", lambda: ops.ball_query(p1, p2, K=2, radius=float("nan")), ValueError, "radius"),
        BadInput("radius str", lambda: ops.ball_query(p1, p2, K=2, radius="1"), TypeError, "radius must be a number"),
        BadInput("K zero", lambda: ops.ball_query(p1, p2, K=0, radius=1.0), ValueError, "K must be >= 1"),
        BadInput("D mismatch", lambda: ops.ball_query(p1, torch.rand(2, 6, 4), K=2, radius=1.0), ValueError,
                 "point dimension"),
        BadInput("lengths", lambda: ops.ball_query(p1, p2, lengths1=torch.tensor([6, 1]), K=2, radius=1.0),
                 ValueError, "outside"),
        BadInput("dtype", lambda: ops.ball_query(p1.double(), p2, K=2, radius=1.0), TypeError, "same dtype"),
        BadInput("radius inf", lambda: ops.ball_query(p1, p2, K=2, radius=float("inf")), ValueError, "radius"),
        BadInput("K float", lambda: ops.ball_query(p1, p2, K=2.0, radius=1.0), TypeError, "K must be an int"),
        BadInput("batch mismatch", lambda: ops.ball_query(p1, p2[:1], K=2, radius=1.0), ValueError,
                 "'p2' has size 1 in dimension 0 but the batch size of p1 is 2"),
        BadInput("rank", lambda: ops.ball_query(p1[0], p2, K=2, radius=1.0), ValueError,
                 "'p1' must have 3 dimensions"),
        BadInput("lengths2 above P2", lambda: ops.ball_query(p1, p2, lengths2=torch.tensor([7, 1]), K=2, radius=1.0),
                 ValueError, "'lengths2' has a length 7 outside"),
        BadInput("lengths batch", lambda: ops.ball_query(p1, p2, lengths2=torch.tensor([6]), K=2, radius=1.0),
                 ValueError, "batch size"),
        BadInput("half on cpu", lambda: ops.ball_query(p1.half(), p2.half(), K=2, radius=1.0), TypeError,
                 "float32 or float64"),
        BadInput("D zero", lambda: ops.ball_query(p1[..., :0], p2[..., :0], K=2, radius=1.0), ValueError, "D >= 1"),
    ]


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("case", _bad_cases(), ids=str)
def test_bad_inputs(case, backend):
    with use_backend(backend):
        run_bad_input(case)


def test_fill_first_repeats_the_first_neighbour_like_pointnet2():
    """fill='first' puts each row's first neighbour (idx, dist, point) in its missing slots, as PointNet++ and
    mmcv group; rows without neighbours keep -1; found slots are unchanged; dists stay differentiable."""
    torch.manual_seed(0)
    p2 = torch.rand(2, 64, 3, dtype=torch.float64, requires_grad=True)
    p1 = torch.cat([p2[:, :5].detach(), torch.full((2, 1, 3), 10.0, dtype=torch.float64)], 1)  # last: no neighbour
    plain = ops.ball_query(p1, p2, K=16, radius=0.3)
    filled = ops.ball_query(p1, p2, K=16, radius=0.3, fill="first")
    found = plain.idx >= 0
    assert found[:, :5].sum() < found[:, :5].numel()  # some slots are missing in this cloud
    assert torch.equal(filled.idx[found], plain.idx[found])
    first = plain.idx[..., :1].expand_as(plain.idx)
    assert torch.equal(filled.idx[:, :5][~found[:, :5]], first[:, :5][~found[:, :5]])
    assert torch.equal(filled.idx[:, 0, 0], torch.tensor([0, 0]))  # a centre taken from p2 finds itself first
    assert (filled.idx[:, 5] == -1).all() and (filled.knn[:, 5] == 0).all()
    expected = torch.gather(p2.detach(), 1, filled.idx[:, :5].reshape(2, -1, 1).expand(-1, -1, 3)).view(2, 5, 16, 3)
    assert torch.equal(filled.knn[:, :5].detach(), expected)
    filled.dists.sum().backward()
    assert torch.isfinite(p2.grad).all()
    grouped = ops.grouping_operation(p2.detach().transpose(1, 2).contiguous(), filled.idx[:, :5])
    assert torch.equal(grouped.permute(0, 2, 3, 1), expected)
    with pytest.raises(ValueError, match="fill must be"):
        ops.ball_query(p1, p2, K=4, fill="zero")
