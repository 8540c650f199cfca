"""sample_farthest_points / furthest_point_sample against the reference loop and by definition."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from op_harness import BadInput, check_compiled, check_onnx, float_dtypes, opcheck, random_lengths
from op_harness import DEVICES_AND_CANDIDATES, candidate_switch  # noqa: F401 - autouse fixture
from op_harness import run_bad_input
from pyvision_fast import ops, use_backend
from pyvision_fast.reference import pointcloud as ref


def _brute_force_fps(points: torch.Tensor, K: int, start: int = 0) -> list[int]:
    """FPS by its definition, one cloud, float64, Python loops."""
    pts = points.double()
    chosen = [start]
    dist = ((pts - pts[start]) ** 2).sum(-1)
    while len(chosen) < min(K, len(pts)):
        nxt = int(torch.argmax(dist))
        chosen.append(nxt)
        dist = torch.minimum(dist, ((pts - pts[nxt]) ** 2).sum(-1))
    return chosen + [-1] * (K - len(chosen))


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 3), N=st.integers(1, 80), D=st.integers(1, 5), K=st.integers(1, 90),
       use_lengths=st.booleans(), seed=st.integers(0, 2**16))
def test_matches_reference(device, B, N, D, K, use_lengths, seed):
    g = torch.Generator().manual_seed(seed)
    for dtype in float_dtypes(device):
        pts = torch.rand(B, N, D, generator=g, dtype=torch.float64).to(device, dtype)
        lengths = random_lengths(B, N, g).to(device) if use_lengths else None
        sampled, idx = ops.sample_farthest_points(pts, lengths, K=K)
        expected = ref.sample_farthest_points_idx(pts.double(), lengths, None, K)
        assert idx.shape == (B, K) and idx.dtype == torch.int64
        if dtype in (torch.float32, torch.float64):
            assert torch.equal(idx, expected)
        assert torch.equal(sampled, ops.masked_gather(pts, idx))
        assert (sampled[idx < 0] == 0).all()


def test_matches_definition():
    torch.manual_seed(3)
    pts = torch.randn(1, 200, 3, dtype=torch.float64)
    _, idx = ops.sample_farthest_points(pts, K=40)
    assert idx[0].tolist() == _brute_force_fps(pts[0], 40)


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
def test_k_exceeds_length_pads_with_minus_one(device):
    pts = torch.rand(2, 10, 3, device=device)
    sampled, idx = ops.sample_farthest_points(pts, lengths=torch.tensor([4, 10], device=device), K=6)
    assert (idx[0, 4:] == -1).all() and (idx[0, :4] >= 0).all() and (idx[0, :4] < 4).all()
    assert sorted(idx[0, :4].tolist()) == [0, 1, 2, 3]
    assert (sampled[0, 4:] == 0).all()
    assert (idx[1] >= 0).all()


def test_random_start_point_is_seeded_and_valid():
    pts = torch.rand(4, 50, 3, dtype=torch.float64)
    lengths = torch.tensor([50, 1, 20, 7])
    torch.manual_seed(5)
    _, a = ops.sample_farthest_points(pts, lengths, K=5, random_start_point=True)
    torch.manual_seed(5)
    _, b = ops.sample_farthest_points(pts, lengths, K=5, random_start_point=True)
    assert torch.equal(a, b)
    assert (a[:, 0] < lengths).all() and (a[:, 0] >= 0).all()
    for cloud in range(4):
        assert a[cloud].tolist()[: min(5, int(lengths[cloud]))] == _brute_force_fps(
            pts[cloud, : lengths[cloud]], 5, int(a[cloud, 0]))[: min(5, int(lengths[cloud]))]


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
def test_duplicates_and_degenerate_clouds(device):
    pts = torch.zeros(1, 6, 3, device=device)  # every distance is 0: picks the lowest remaining index each time
    _, idx = ops.sample_farthest_points(pts, K=3)
    assert idx.tolist() == ref.sample_farthest_points_idx(pts, None, None, 3).tolist()
    _, idx = ops.sample_farthest_points(torch.rand(2, 0, 3, device=device), K=3)
    assert (idx == -1).all()
    _, idx = ops.sample_farthest_points(torch.rand(0, 5, 3, device=device), K=3)
    assert idx.shape == (0, 3)


def test_mmcv_name():
    pts = torch.rand(2, 64, 3)
    assert torch.equal(ops.furthest_point_sample(pts, 16), ops.sample_farthest_points(pts, K=16)[1])


def test_tensor_k():
    pts = torch.rand(2, 30, 3)
    assert torch.equal(ops.sample_farthest_points(pts, K=torch.tensor([5, 5]))[1],
                       ops.sample_farthest_points(pts, K=5)[1])


@pytest.mark.parametrize("as_tensor", [False, True])
def test_per_cloud_k_of_different_values(as_tensor):
    """PyTorch3D: K a list or (B,) tensor; the output has max(K) columns, cloud b's samples past K[b] are -1
    and their points 0; each cloud's first K[b] samples are those of K = K[b] (by the definition)."""
    torch.manual_seed(4)
    pts = torch.rand(3, 30, 3, dtype=torch.float64)
    lengths = torch.tensor([30, 4, 20])
    ks = [5, 7, 0]
    K = torch.tensor(ks, dtype=torch.int32) if as_tensor else ks
    sampled, idx = ops.sample_farthest_points(pts, lengths, K=K)
    assert idx.shape == (3, 7) and sampled.shape == (3, 7, 3)
    assert idx[0].tolist() == _brute_force_fps(pts[0], 5) + [-1, -1]
    assert idx[1].tolist() == _brute_force_fps(pts[1, :4], 4) + [-1, -1, -1]  # K beyond the cloud's length
    assert idx[2].tolist() == [-1] * 7
    assert (sampled[idx < 0] == 0).all() and torch.equal(sampled[0, :5], pts[0, idx[0, :5]])
    with use_backend("reference"):
        assert torch.equal(ops.sample_farthest_points(pts, lengths, K=K)[1], idx)


def test_gradient_flows_to_sampled_points():
    pts = torch.rand(2, 20, 3, dtype=torch.float64, requires_grad=True)
    sampled, idx = ops.sample_farthest_points(pts, K=5)
    sampled.sum().backward()
    expected = torch.zeros_like(pts)
    for b in range(2):
        expected[b, idx[b]] = 1.0
    assert torch.equal(pts.grad, expected)


def test_backends_agree():
    pts = torch.rand(3, 100, 3)
    with use_backend("reference"):
        expected = ops.furthest_point_sample(pts, 20)
    assert torch.equal(ops.furthest_point_sample(pts, 20), expected)


def test_non_contiguous():
    pts = torch.rand(2, 3, 40).transpose(1, 2)
    assert torch.equal(ops.furthest_point_sample(pts, 10), ref.sample_farthest_points_idx(pts, None, None, 10))


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
def test_opcheck(device):
    pts = torch.rand(2, 30, 3, device=device)
    opcheck(torch.ops.pvf.sample_farthest_points.default, (pts, None, None, 8))
    opcheck(torch.ops.pvf.sample_farthest_points.default,
            (pts, torch.tensor([30, 5], device=device), torch.tensor([3, 1], device=device), 8))


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
def test_torch_compile(device):
    pts = torch.rand(2, 40, 3, device=device)
    check_compiled(lambda p: ops.sample_farthest_points(p, K=10), pts)


def test_onnx_export(tmp_path):
    class M(torch.nn.Module):
        def forward(self, p, lengths):
            return ops.sample_farthest_points(p, lengths, K=12)

    check_onnx(M(), (torch.rand(2, 40, 3), torch.tensor([40, 9])), tmp_path, exact_outputs=(1,))


def _bad_cases():
    pts = torch.rand(2, 10, 3)
    return [
        BadInput("rank", lambda: ops.sample_farthest_points(pts[0], K=2), ValueError, "must have 3 dimensions"),
        BadInput("K zero", lambda: ops.sample_farthest_points(pts, K=0), ValueError, "K must be >= 1"),
        BadInput("num_points negative", lambda: ops.furthest_point_sample(pts, -3), ValueError,
                 "num_points must be >= 1"),
        BadInput("num_points float", lambda: ops.furthest_point_sample(pts, 3.0), TypeError,
                 "num_points must be an int"),
        BadInput("mmcv rank", lambda: ops.furthest_point_sample(pts[0], 3), ValueError,
                 "'xyz' must have 3 dimensions"),
        BadInput("K tensor longer than the batch", lambda: ops.sample_farthest_points(
            torch.rand(5, 10, 3), K=torch.full((8,), 3)), ValueError,
                 "'K' has size 8 in dimension 0 but the batch size of points is 5"),
        BadInput("K list shorter than the batch", lambda: ops.sample_farthest_points(pts, K=[3]), ValueError,
                 "batch size of points"),
        BadInput("K tensor rank", lambda: ops.sample_farthest_points(pts, K=torch.full((2, 1), 3)), ValueError,
                 "'K' must have 1 dimensions"),
        BadInput("K tensor float", lambda: ops.sample_farthest_points(pts, K=torch.tensor([3.0, 2.0])), TypeError,
                 "K must be an int32 or int64"),
        BadInput("K list negative", lambda: ops.sample_farthest_points(pts, K=[3, -1]), ValueError, ">= 0"),
        BadInput("K list all zero", lambda: ops.sample_farthest_points(pts, K=[0, 0]), ValueError,
                 "at least one cloud"),
        BadInput("K list of floats", lambda: ops.sample_farthest_points(pts, K=[1.5, 2]), TypeError, "ints"),
        BadInput("K float", lambda: ops.sample_farthest_points(pts, K=2.0), TypeError, "K must be an int"),
        BadInput("lengths batch", lambda: ops.sample_farthest_points(pts, torch.tensor([3]), K=2), ValueError,
                 "'lengths' has size 1 in dimension 0 but the batch size is 2"),
        BadInput("lengths negative", lambda: ops.sample_farthest_points(pts, torch.tensor([3, -1]), K=2),
                 ValueError, "length -1 outside"),
        BadInput("lengths float", lambda: ops.sample_farthest_points(pts, torch.tensor([3.0, 1.0]), K=2),
                 TypeError, "int32 or int64"),
        BadInput("points not a tensor", lambda: ops.sample_farthest_points(pts.tolist(), K=2), TypeError,
                 "must be a tensor"),
        BadInput("lengths out of range", lambda: ops.sample_farthest_points(pts, torch.tensor([11, 2]), K=2),
                 ValueError, "outside"),
        BadInput("int points", lambda: ops.sample_farthest_points(pts.int(), K=2), TypeError, "float32 or float64"),
        BadInput("D zero", lambda: ops.sample_farthest_points(torch.rand(2, 10, 0), K=2), ValueError, "D >= 1"),
    ]


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("case", _bad_cases(), ids=str)
def test_bad_inputs(case, backend):
    with use_backend(backend):
        run_bad_input(case)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_bad_start_index_of_the_custom_op(backend):
    """The custom op called directly (no Python entry): the C++ binding and the reference's wrapper check the
    start indices and lengths."""
    pts = torch.rand(2, 10, 3)
    with use_backend(backend):
        with pytest.raises(ValueError, match="start index 10 of cloud 1"):
            torch.ops.pvf.sample_farthest_points(pts, None, torch.tensor([0, 10]), 2)
        with pytest.raises(ValueError, match="start index 4 of cloud 0"):
            torch.ops.pvf.sample_farthest_points(pts, torch.tensor([4, 10]), torch.tensor([4, 0]), 2)
        with pytest.raises(ValueError, match="argument 'start' (has size 1|must have shape)"):
            torch.ops.pvf.sample_farthest_points(pts, None, torch.tensor([0]), 2)


@pytest.mark.parametrize("D", [2, 3, 5])
@pytest.mark.parametrize("kind", ["uniform", "lattice"])
@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
def test_large_clouds_span_several_blocks(D, kind, device):
    """Clouds larger than the kernel's 256-point blocks; lattice points make maxima tie across blocks."""
    g = torch.Generator().manual_seed(D)
    if kind == "uniform":
        pts = torch.rand(3, 1500, D, generator=g, dtype=torch.float64)
    else:
        pts = torch.randint(0, 5, (3, 1500, D), generator=g).double()
    lengths = torch.tensor([1500, 700, 257])
    for dtype in (torch.float32, torch.float64):
        _, idx = ops.sample_farthest_points(pts.to(device, dtype), lengths.to(device), K=300)
        assert torch.equal(idx.cpu(), ref.sample_farthest_points_idx(pts.to(dtype), lengths, None, 300))


def test_two_sampling_stages_export(tmp_path):
    """Two Loop subgraphs in one model: their value names must stay unique."""

    class TwoStages(torch.nn.Module):
        def forward(self, p):
            first, _ = ops.sample_farthest_points(p, K=20)
            second, idx = ops.sample_farthest_points(first, K=5)
            return second, idx

    check_onnx(TwoStages(), (torch.rand(2, 60, 3),), tmp_path, exact_outputs=(1,))


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_non_finite_point_is_an_error_naming_cloud_and_point(backend):
    """NaN/inf coordinates make the farthest-point order undefined (backends used to disagree); every backend
    raises naming the cloud and point. Points past a cloud's length are not read."""
    x = torch.rand(3, 10, 3)
    x[2, 7, 1] = float("nan")
    with use_backend(backend):
        with pytest.raises(ValueError, match="cloud 2, point 7 is not finite"):
            ops.sample_farthest_points(x, K=4)
        x[2, 7, 1] = float("inf")
        with pytest.raises(ValueError, match="cloud 2, point 7 is not finite"):
            ops.sample_farthest_points(x, K=4)
        _, idx = ops.sample_farthest_points(x, lengths=torch.tensor([10, 10, 7]), K=4)
        assert (idx[2] < 7).all()
