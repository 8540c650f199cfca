"""The candidate CUDA point-cloud kernels (csrc/pointcloud/pointcloud_next_*.cuh) executed on this CPU through the
SIMT emulation in tests/simt (one host thread per CUDA thread, real barriers and warp collectives), against
plain-PyTorch definitions. These are the same kernel sources the GPU runs: this is how their indexing, their
barrier and warp-collective structure and their semantics are tested without a GPU."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "simt"))
import emulated as E  # noqa: E402

from pyvision_fast.reference import pointcloud as ref  # noqa: E402

pytestmark = pytest.mark.skipif(E.compiler() is None, reason="needs a host C++ compiler (g++ or clang++)")

DTYPES = [torch.float32, torch.float64]


def _sq_dists(p1, p2):
    """(B, P1, D), (B, P2, D) -> (B, P1, P2), summed coordinate by coordinate in the kernels' order (exact in the
    input dtype, so that float32 results can be compared bit for bit)."""
    d = torch.zeros(p1.shape[0], p1.shape[1], p2.shape[1], dtype=p1.dtype)
    for c in range(p1.shape[2]):
        diff = p1[:, :, None, c] - p2[:, None, :, c]
        d = d + diff * diff
    return d


def _lengths(lengths, B, P):
    return torch.full((B,), P, dtype=torch.int64) if lengths is None else lengths.clamp(0, P)


def _knn_expected(p1, p2, l1, l2, K):
    B, P1, _ = p1.shape
    P2 = p2.shape[1]
    n1, n2 = _lengths(l1, B, P1), _lengths(l2, B, P2)
    d = _sq_dists(p1, p2)
    d = d.masked_fill(torch.arange(P2)[None, None] >= n2[:, None, None], float("inf"))
    sd, si = torch.sort(d, dim=2, stable=True)  # NaN last, ties in index order
    dists = torch.zeros(B, P1, K, dtype=p1.dtype)
    idx = torch.zeros(B, P1, K, dtype=torch.int64)
    k = min(K, P2)
    dists[..., :k], idx[..., :k] = sd[..., :k], si[..., :k]
    pad = (torch.arange(K)[None, None] >= n2[:, None, None]) | (torch.arange(P1)[None, :, None] >= n1[:, None, None])
    return dists.masked_fill(pad, 0), idx.masked_fill(pad, 0)


def _cloud(kind, B, P, D, dtype, g):
    if kind == "uniform":
        return torch.rand(B, P, D, generator=g, dtype=torch.float64).to(dtype)
    if kind == "lattice":  # exact, many equal distances
        return torch.randint(0, 3, (B, P, D), generator=g).to(dtype)
    if kind == "same":
        return torch.full((B, P, D), 0.5, dtype=dtype)
    raise ValueError(kind)


# ------------------------------------------------------------------ farthest point sampling

def _fps_expected(points, lengths, start, K):
    B, N, _ = points.shape
    n = _lengths(lengths, B, N)
    s = None
    if start is not None:
        s = torch.minimum(start.clamp(min=0), (n - 1).clamp(min=0))
    return ref.sample_farthest_points_idx(points, n, s, K)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,D,K", [(1, 3, 4), (31, 3, 40), (100, 3, 30), (1025, 3, 12), (2100, 3, 9), (4100, 3, 6),
                                   (70, 2, 20), (90, 5, 25), (40, 1, 41)])
def test_fps(dtype, N, D, K):
    g = torch.Generator().manual_seed(N * 10 + D)
    pts = _cloud("uniform", 3, N, D, dtype, g)
    lengths = torch.tensor([N, max(N // 2, 1), 0])
    got = E.sample_farthest_points(pts, lengths, None, K)
    assert torch.equal(got, _fps_expected(pts, lengths, None, K))


def test_fps_plans_cover_every_path():
    assert E.fps_plan(100, 3, False) == (1, 128)
    assert E.fps_plan(1025, 3, False) == (2, 544)
    assert E.fps_plan(4100, 3, False) == (8, 544)
    assert E.fps_plan(8192, 3, False) == (8, 1024)
    assert E.fps_plan(8193, 3, False)[0] == 0
    assert E.fps_plan(4100, 3, True)[0] == 0  # float64: 4 points per thread at most
    assert E.fps_plan(100, 2, False) == (0, 128)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["lattice", "same"])
@pytest.mark.parametrize("D", [3, 2])
def test_fps_ties_go_to_the_lowest_index(dtype, kind, D):
    g = torch.Generator().manual_seed(1)
    pts = _cloud(kind, 2, 300, D, dtype, g)
    got = E.sample_farthest_points(pts, None, None, 50)
    assert torch.equal(got, _fps_expected(pts, None, None, 50))


@pytest.mark.parametrize("dtype", DTYPES)
def test_fps_start_and_lengths_are_clamped(dtype):
    g = torch.Generator().manual_seed(2)
    pts = _cloud("uniform", 4, 64, 3, dtype, g)
    lengths = torch.tensor([64, 100, -3, 10])  # out of range on purpose: the candidate clamps
    start = torch.tensor([5, 70, 2, -1])
    got = E.sample_farthest_points(pts, lengths, start, 12)
    assert torch.equal(got, _fps_expected(pts, lengths, start, 12))
    assert got[1, 0] == 63 and (got[2] == -1).all() and got[3, 0] == 0


# ------------------------------------------------------------------ kNN

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", [1, 2, 3, 4, 5, 8, 13, 16, 20, 32, 33, 50])
def test_knn_every_list_size(dtype, K):
    g = torch.Generator().manual_seed(K)
    p1, p2 = _cloud("uniform", 2, 40, 3, dtype, g), _cloud("uniform", 2, 300, 3, dtype, g)
    got = E.knn_points(p1, p2, None, None, K)
    want = _knn_expected(p1, p2, None, None, K)
    assert torch.equal(got[1], want[1])
    assert torch.equal(got[0], want[0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [1, 2, 5])
@pytest.mark.parametrize("K", [1, 4, 16, 40])
def test_knn_other_dimensions(dtype, D, K):
    g = torch.Generator().manual_seed(D * 100 + K)
    p1, p2 = _cloud("uniform", 2, 30, D, dtype, g), _cloud("uniform", 2, 270, D, dtype, g)
    l1, l2 = torch.tensor([30, 7]), torch.tensor([270, 100])
    got = E.knn_points(p1, p2, l1, l2, K)
    want = _knn_expected(p1, p2, l1, l2, K)
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["lattice", "same"])
@pytest.mark.parametrize("K", [1, 3, 8, 16, 32, 40])
def test_knn_ties_keep_index_order(dtype, kind, K):
    g = torch.Generator().manual_seed(K)
    p1, p2 = _cloud(kind, 2, 33, 3, dtype, g), _cloud(kind, 2, 520, 3, dtype, g)
    got = E.knn_points(p1, p2, None, None, K)
    want = _knn_expected(p1, p2, None, None, K)
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])


@pytest.mark.parametrize("K", [2, 16, 40])
def test_knn_several_query_blocks_lengths_and_padding(K):
    """P1 over one block of 256 queries, P2 over one tile of 256 points and not a multiple of it, ragged and
    out-of-range lengths (clamped), empty reference clouds, K larger than a cloud."""
    g = torch.Generator().manual_seed(3)
    p1, p2 = _cloud("uniform", 4, 300, 3, torch.float32, g), _cloud("uniform", 4, 530, 3, torch.float32, g)
    l1 = torch.tensor([300, 257, 0, 999])
    l2 = torch.tensor([530, 9, 530, -4])
    got = E.knn_points(p1, p2, l1, l2, K)
    want = _knn_expected(p1, p2, l1, l2, K)
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])
    assert (got[0][3] == 0).all() and (got[1][3] == 0).all()


@pytest.mark.parametrize("K", [1, 4, 16, 40])
def test_knn_nan_and_inf_sort_last(K):
    p1 = torch.rand(1, 5, 3, dtype=torch.float64)
    p2 = torch.rand(1, 60, 3, dtype=torch.float64)
    p2[0, 3] = float("nan")
    p2[0, 7] = float("inf")
    p2[0, 50:] = 1e200  # squares overflow to +inf
    got = E.knn_points(p1, p2, None, None, K)
    want = _knn_expected(p1, p2, None, None, K)
    assert torch.equal(got[1], want[1])
    torch.testing.assert_close(got[0], want[0], equal_nan=True, rtol=0, atol=0)
    got = E.knn_points(p1, p2, None, None, 60)
    assert got[1][0, :, -1].tolist() == [3] * 5  # NaN after every +inf


# ------------------------------------------------------------------ ball query

def _ball_expected(p1, p2, l1, l2, K, radius, dtype):
    B, P1, _ = p1.shape
    P2 = p2.shape[1]
    d = _sq_dists(p1, p2)
    r2 = torch.tensor(radius * radius, dtype=torch.float64).to(dtype)
    n1, n2 = _lengths(l1, B, P1), _lengths(l2, B, P2)
    return _ball_by_definition(d, n1, n2, K, r2)


def _ball_by_definition(d, n1, n2, K, r2):
    """First K points of each row in index order with squared distance < r2 (0 / -1 padding)."""
    B, P1, P2 = d.shape
    dists = torch.zeros(B, P1, K, dtype=d.dtype)
    idx = torch.full((B, P1, K), -1, dtype=torch.int64)
    for b in range(B):
        for i in range(int(n1[b])):
            inside = [j for j in range(int(n2[b])) if d[b, i, j] < r2][:K]
            idx[b, i, : len(inside)] = torch.tensor(inside, dtype=torch.int64)
            dists[b, i, : len(inside)] = d[b, i, inside]
    return dists, idx


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D,K,radius", [(3, 5, 0.3), (3, 40, 0.6), (3, 100, 2.0), (2, 7, 0.25), (4, 33, 0.9)])
def test_ball_query(dtype, D, K, radius):
    g = torch.Generator().manual_seed(K)
    p1, p2 = _cloud("uniform", 3, 21, D, dtype, g), _cloud("uniform", 3, 75, D, dtype, g)
    l1, l2 = torch.tensor([21, 4, 30]), torch.tensor([75, 0, 40])
    got = E.ball_query(p1, p2, l1, l2, K, radius)
    want = _ball_expected(p1, p2, l1, l2, K, radius, dtype)
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])


# ------------------------------------------------------------------ gathers

@pytest.fixture
def smem_limit():
    yield E.set_max_dynamic_smem
    E.set_max_dynamic_smem(227 * 1024)


def _gather_expected(f, idx):
    B, C, N = f.shape
    ok = (idx >= 0) & (idx < N)
    out = torch.gather(f, 2, idx.clamp(0, max(N - 1, 0))[:, None].expand(B, C, idx.shape[1]))
    return out * ok[:, None].to(f.dtype)


def _scatter_expected(grad, idx, N):
    B, C, M = grad.shape
    ok = (idx >= 0) & (idx < N)
    g = grad * ok[:, None].to(grad.dtype)
    return torch.zeros(B, C, N, dtype=grad.dtype).scatter_add_(2, idx.clamp(0, N - 1)[:, None].expand(B, C, M), g)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C,N,M,limit", [(9, 40, 70, None), (3, 40, 70, None), (1, 33, 50, None),
                                         (5, 40, 70, 100), (4, 400, 20, None)])
def test_gather_and_scatter(dtype, C, N, M, limit, smem_limit):
    """Shared-memory paths with 4, 2 and 1 channels per block (C = 9, 3, 1), the global path (too little shared
    memory; few indices per row), repeated indices, out-of-range indices (read as 0, gradient dropped)."""
    if limit is not None:
        smem_limit(limit)
    g = torch.Generator().manual_seed(C * N + M)
    f = torch.randn(2, C, N, generator=g, dtype=torch.float64).to(dtype)
    idx = torch.randint(-3, N + 3, (2, M), generator=g)
    idx[0, :5] = 1  # repeats
    got = E.gather_columns(f, idx)
    assert torch.equal(got, _gather_expected(f, idx))
    grad = torch.randn(2, C, M, generator=g, dtype=torch.float64).to(dtype)
    gf = E.gather_columns_backward(grad, idx, N)
    torch.testing.assert_close(gf, _scatter_expected(grad, idx, N))


@pytest.mark.parametrize("dtype", DTYPES)
def test_three_interpolate(dtype):
    g = torch.Generator().manual_seed(4)
    B, C, M, N = 2, 5, 12, 37
    f = torch.randn(B, C, M, generator=g, dtype=torch.float64).to(dtype)
    idx = torch.randint(0, M, (B, N, 3), generator=g)
    idx[0, 3, 1] = M  # out of range: skipped
    idx[1, 5, 0] = -2
    w = torch.rand(B, N, 3, generator=g, dtype=torch.float64).to(dtype)
    ok = ((idx >= 0) & (idx < M)).to(dtype)
    want = ref.three_interpolate(f, idx.clamp(0, M - 1), w * ok)
    torch.testing.assert_close(E.three_interpolate(f, idx, w), want)
    go = torch.randn(B, C, N, generator=g, dtype=torch.float64).to(dtype)
    f2 = f.clone().requires_grad_()
    w2 = w.clone().requires_grad_()
    rf, rw = torch.autograd.grad(ref.three_interpolate(f2, idx.clamp(0, M - 1), w2 * ok), (f2, w2), go)
    gf, gw = E.three_interpolate_backward(go, f, idx, w)
    torch.testing.assert_close(gf, rf)
    torch.testing.assert_close(gw, rw)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["knn", "ball"])
def test_neighbour_distance_gradients(dtype, kind):
    g = torch.Generator().manual_seed(5)
    p1 = torch.rand(3, 20, 3, generator=g, dtype=torch.float64).to(dtype)
    p2 = torch.rand(3, 30, 3, generator=g, dtype=torch.float64).to(dtype)
    l1, l2 = torch.tensor([20, 6, 0]), torch.tensor([30, 4, 30])
    a, b = p1.clone().requires_grad_(), p2.clone().requires_grad_()
    if kind == "knn":
        dists, idx = ref.knn_points_idx(a, b, l1, l2, 7)
    else:
        dists, idx = ref.ball_query_idx(a, b, l1, l2, 7, 0.5)
    grad = torch.randn(dists.shape, generator=g, dtype=torch.float64).to(dtype)
    want = torch.autograd.grad(dists, (a, b), grad)
    got = E.neighbour_dists_backward(p1, p2, l1, l2, idx, grad)
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y)


# ------------------------------------------------------------------ the candidate path end to end

@pytest.fixture
def candidate_path(monkeypatch):
    """ops.* on CPU tensors take the candidate ("cuda:next") implementations, whose kernel calls run on the
    emulation: covers the Python side of the candidates (wrappers, buffers, autograd, eager functions)."""
    from pyvision_fast import _backend, _ext

    fake = E.EmulatedCudaModule()
    monkeypatch.setattr(_ext, "cuda_module", lambda: fake)
    monkeypatch.setattr(_ext, "stream", lambda device: 0)
    real_select = _backend.select

    def select(op, device, implemented):
        if "cuda:next" in implemented:
            return "cuda:next", implemented["cuda:next"]
        return real_select(op, device, implemented)

    monkeypatch.setattr(_backend, "select", select)
    yield fake.calls


def _grads(fn, *inputs):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=out.dtype)
    return (out, *torch.autograd.grad((out * w).sum(), leaves))


@pytest.mark.parametrize("K", [1, 5, 40])
def test_candidate_knn_and_ball_query_with_gradients(candidate_path, K):
    from pyvision_fast import ops

    g = torch.Generator().manual_seed(K)
    p1 = torch.rand(2, 30, 3, generator=g, dtype=torch.float64)
    p2 = torch.rand(2, 70, 3, generator=g, dtype=torch.float64)
    l1, l2 = torch.tensor([30, 11]), torch.tensor([70, 9])
    got = _grads(lambda a, b: ops.knn_points(a, b, l1, l2, K=K).dists, p1, p2)
    want = _grads(lambda a, b: ref.knn_points_idx(a, b, l1, l2, K)[0], p1, p2)
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y)
    assert torch.equal(ops.knn_points(p1, p2, l1, l2, K=K).idx, ref.knn_points_idx(p1, p2, l1, l2, K)[1])
    got = _grads(lambda a, b: ops.ball_query(a, b, l1, l2, K=K, radius=0.4, return_nn=False).dists, p1, p2)
    want = _grads(lambda a, b: ref.ball_query_idx(a, b, l1, l2, K, 0.4)[0], p1, p2)
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y)
    r = ops.ball_query(p1, p2, l1, l2, K=K, radius=0.4)
    assert torch.equal(r.idx, ref.ball_query_idx(p1, p2, l1, l2, K, 0.4)[1])
    assert torch.equal(r.knn, ops.masked_gather(p2, r.idx))
    assert {"knn_points_next", "ball_query_next", "neighbour_dists_backward_next"} <= set(candidate_path)


def test_candidate_fps_three_nn_interpolate_chamfer(candidate_path):
    from pyvision_fast import ops

    g = torch.Generator().manual_seed(9)
    pts = torch.rand(2, 90, 3, generator=g, dtype=torch.float64)
    lengths = torch.tensor([90, 40])
    _, idx = ops.sample_farthest_points(pts, lengths, K=20)
    assert torch.equal(idx, ref.sample_farthest_points_idx(pts, lengths, None, 20))
    assert torch.equal(ops.furthest_point_sample(pts, 7), ref.sample_farthest_points_idx(pts, None, None, 7))
    unknown, known = pts[:, :50].contiguous(), pts[:, 50:].contiguous()
    d, i = ops.three_nn(unknown, known)
    rd, ri = ref.knn_points_idx(unknown, known, None, None, 3)
    assert torch.equal(i, ri)
    torch.testing.assert_close(d, rd.sqrt())
    f = torch.randn(2, 4, 40, generator=g, dtype=torch.float64)
    w = torch.rand(2, 50, 3, generator=g, dtype=torch.float64)
    got = _grads(lambda a, b: ops.three_interpolate(a, i, b), f, w)
    want = _grads(lambda a, b: ref.three_interpolate(a, i, b), f, w)
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y)
    x, y = pts[:, :60].contiguous(), pts[:, 60:].contiguous()

    def chamfer_by_definition(a, b):
        d = ((a[:, :, None] - b[:, None]) ** 2).sum(-1)
        return (d.min(2).values.mean(1) + d.min(1).values.mean(1)).mean()

    got = _grads(lambda a, b: ops.chamfer_distance(a, b)[0], x, y)
    for p, q in zip(got, _grads(chamfer_by_definition, x, y)):
        torch.testing.assert_close(p, q)
    assert {"sample_farthest_points_next", "knn_points_next", "neighbour_dists_backward_next",
            "three_interpolate_next", "three_interpolate_backward_next"} <= set(candidate_path)


def test_candidate_gathers_and_out_of_range_indices(candidate_path, monkeypatch):
    from pyvision_fast import ops

    g = torch.Generator().manual_seed(3)
    f = torch.randn(2, 6, 50, generator=g, dtype=torch.float64)
    gidx = torch.randint(0, 50, (2, 9, 4), generator=g)
    got = _grads(lambda a: ops.grouping_operation(a, gidx.int()), f)
    want = _grads(lambda a: ref.gather_columns(a, gidx.reshape(2, 36)).view(2, 6, 9, 4), f)
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y)
    assert {"gather_columns_next", "gather_columns_backward_next"} <= set(candidate_path)
    bad = torch.tensor([[0, 50, 3], [-1, 2, 49]])
    out = ops.gather_points(f, bad)  # skipped, not an error: checking would synchronise on a GPU
    assert (out[0, :, 1] == 0).all() and (out[1, :, 0] == 0).all()
    assert torch.equal(out[0, :, 2], f[0, :, 3]) and torch.equal(out[1, :, 2], f[1, :, 49])
    monkeypatch.setenv("PVF_CHECK_INDICES", "1")
    with pytest.raises(ValueError, match="out of range"):
        ops.gather_points(f, bad)
    with pytest.raises(ValueError, match="out of range"):
        ops.three_interpolate(f, torch.full((2, 4, 3), 50), torch.rand(2, 4, 3, dtype=torch.float64))
