"""PyTorch3D / mmcv drop-in completeness of the point-cloud ops: knn_points(norm=1), return_sorted=False,
furthest_point_sample_with_dist, mmcv's ball query (min_radius; batched and stacked), stacked grouping, and
float16 / bfloat16 features on CPU. Oracles are Python loops written from the libraries' documented kernels
(independent of our code) and the plain-PyTorch references."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from op_harness import BadInput, assert_close, gradcheck, random_lengths, run_bad_input
from pyvision_fast import ops, use_backend
from pyvision_fast.reference import pointcloud as ref


# ------------------------------------------------------------------ knn_points(norm=1)

def _knn_l1_loop(p1, p2, l1, l2, K):
    """PyTorch3D's norm=1 kNN, one query at a time: L1 distances (not squared), ascending, ties by index;
    padding 0 (rows past l1, slots past l2)."""
    B, P1, _ = p1.shape
    d = torch.zeros(B, P1, K, dtype=p1.dtype)
    i = torch.zeros(B, P1, K, dtype=torch.int64)
    for b in range(B):
        for q in range(int(l1[b])):
            cand = sorted((float((p1[b, q] - p2[b, j]).abs().sum()), j) for j in range(int(l2[b])))[:K]
            for k, (dist, j) in enumerate(cand):
                d[b, q, k], i[b, q, k] = dist, j
    return d, i


@settings(max_examples=20, deadline=None)
@given(B=st.integers(1, 3), P1=st.integers(1, 12), P2=st.integers(1, 15), D=st.integers(1, 4), K=st.integers(1, 8),
       seed=st.integers(0, 2**16))
def test_knn_l1_matches_loop_and_reference(B, P1, P2, D, K, seed):
    g = torch.Generator().manual_seed(seed)
    p1 = torch.rand(B, P1, D, generator=g, dtype=torch.float64)
    p2 = torch.rand(B, P2, D, generator=g, dtype=torch.float64)
    l1, l2 = random_lengths(B, P1, g, low=1), random_lengths(B, P2, g, low=1)
    dists, idx, nn = ops.knn_points(p1, p2, l1, l2, norm=1, K=K, return_nn=True)
    ed, ei = _knn_l1_loop(p1, p2, l1, l2, K)
    assert torch.equal(idx, ei)
    assert_close(dists, ed)
    rd, ri = ref.knn_points_idx(p1, p2, l1, l2, K, norm=1)
    assert torch.equal(idx, ri) and torch.equal(nn, ops.knn_gather(p2, idx, l2))
    d32, i32, _ = ops.knn_points(p1.float(), p2.float(), l1, l2, norm=1, K=K)
    assert_close(d32, ed.float())


def test_knn_l1_by_hand_and_empty_cloud():
    p1 = torch.tensor([[[0.0, 0.0]], [[0.0, 0.0]]])
    p2 = torch.tensor([[[1.0, 1.0], [0.0, -1.5], [3.0, 0.0]], [[1.0, 1.0], [0.0, -1.5], [3.0, 0.0]]])
    d, i, _ = ops.knn_points(p1, p2, lengths2=torch.tensor([3, 0]), norm=1, K=3)
    assert i[0].tolist() == [[1, 0, 2]] and d[0].tolist() == [[1.5, 2.0, 3.0]]  # L1, not squared
    assert (i[1] == -1).all() and torch.isinf(d[1]).all()  # an empty cloud names no point (as with norm 2)
    d, i, nn = ops.knn_points(p1, p2[:, :0], norm=1, K=2, return_nn=True)  # P2 == 0 (found by the property test)
    assert (i == -1).all() and torch.isinf(d).all() and nn.shape == (2, 1, 2, 2) and (nn == 0).all()
    d2, i2, _ = ops.knn_points(p1, p2, norm=2, K=3)
    assert i2[0].tolist() == [[0, 1, 2]] and d2[0].tolist() == [[2.0, 2.25, 9.0]]


def test_knn_l1_gradcheck_and_chunking():
    torch.manual_seed(5)
    p1 = torch.rand(2, 7, 3, dtype=torch.float64, requires_grad=True)
    p2 = torch.rand(2, 9, 3, dtype=torch.float64, requires_grad=True)
    l1, l2 = torch.tensor([7, 4]), torch.tensor([3, 9])
    gradcheck(lambda a, b: ops.knn_points(a, b, l1, l2, norm=1, K=4).dists, (p1, p2))
    # a large P2 makes the composition search its 300 query rows in two blocks
    q = torch.rand(1, 300, 3, dtype=torch.float64)
    c = torch.rand(1, 5000, 3, dtype=torch.float64)
    d, i, _ = ops.knn_points(q, c, norm=1, K=2)
    rd, ri = ref.knn_points_idx(q, c, None, None, 2, norm=1)
    assert torch.equal(i, ri) and torch.equal(d, rd)


def test_return_sorted_false_gives_the_same_neighbours():
    """PyTorch3D leaves the order unspecified for return_sorted=False; ours is the sorted one for both."""
    p1, p2 = torch.rand(2, 20, 3), torch.rand(2, 30, 3)
    for norm in (1, 2):
        a = ops.knn_points(p1, p2, K=6, norm=norm, return_sorted=False)
        b = ops.knn_points(p1, p2, K=6, norm=norm)
        assert torch.equal(a.idx, b.idx) and torch.equal(a.dists, b.dists)
        assert (a.dists[..., 1:] >= a.dists[..., :-1]).all()


# ------------------------------------------------------------------ furthest_point_sample_with_dist

def _fps_with_dist_loop(dist, m):
    """mmcv's kernel, one cloud: temp starts large, min with the row of the last pick, first maximum."""
    n = dist.shape[0]
    temp = [float("inf")] * n
    out, old = [0], 0
    for _ in range(1, m):
        for k in range(n):
            temp[k] = min(temp[k], float(dist[old, k]))
        old = max(range(n), key=lambda k: (temp[k], -k))
        out.append(old)
    return out


def test_fps_with_dist_by_hand():
    # points on a line at 0, 1, 5, 6: from 0 the farthest is 6 (index 3), then 5 vs 1 are 1 away from the
    # chosen set ... index 2 is 1 from 6, index 1 is 1 from 0: a tie, the first (1) wins
    x = torch.tensor([0.0, 1.0, 5.0, 6.0])
    dist = (x[:, None] - x[None]).abs()[None]
    assert ops.furthest_point_sample_with_dist(dist, 3).tolist() == [[0, 3, 1]]
    assert ops.furthest_point_sample_with_dist(dist, 6).tolist() == [[0, 3, 1, 2, -1, -1]]  # past N: -1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fps_with_dist_matches_loop_and_xyz_fps(seed):
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(3, 40, 3, generator=g, dtype=torch.float64)
    dist = ((pts[:, :, None] - pts[:, None]) ** 2).sum(-1)
    idx = ops.furthest_point_sample_with_dist(dist, 12)
    assert idx.dtype == torch.int64 and idx.shape == (3, 12)
    for b in range(3):
        assert idx[b].tolist() == _fps_with_dist_loop(dist[b], 12)
    # with squared Euclidean distances it is the xyz sampling
    assert torch.equal(idx, ops.furthest_point_sample(pts, 12))
    # a non-symmetric "distance" reads rows of the last pick
    feat = torch.rand(1, 15, 15, generator=g, dtype=torch.float64)
    assert ops.furthest_point_sample_with_dist(feat, 6)[0].tolist() == _fps_with_dist_loop(feat[0], 6)


# ------------------------------------------------------------------ mmcv ball query

def _mmcv_ball_loop(min_r, max_r, nsample, xyz, center):
    """mmcv's ball_query kernel, one centre at a time (float64 arithmetic on float64 inputs)."""
    B, M = center.shape[:2]
    idx = torch.zeros(B, M, nsample, dtype=torch.int64)
    for b in range(B):
        for m in range(M):
            cnt = 0
            for k in range(xyz.shape[1]):
                d2 = float(((center[b, m] - xyz[b, k]) ** 2).sum())
                if d2 == 0 or (min_r * min_r <= d2 < max_r * max_r):
                    if cnt == 0:
                        idx[b, m, :] = k
                    idx[b, m, cnt] = k
                    cnt += 1
                    if cnt >= nsample:
                        break
    return idx


def test_ball_query_mmcv_by_hand():
    xyz = torch.tensor([[[0.0, 0, 0], [0.5, 0, 0], [0.1, 0, 0], [2.0, 0, 0], [0.3, 0, 0], [-0.3, 0, 0]]])
    center = torch.tensor([[[0.0, 0, 0], [9.0, 0, 0]]])
    # min 0.2: 0.1 is too close, the centre itself (d2 == 0) counts; 0.5 is outside max 0.5 (strict <)
    idx = ops.ball_query_mmcv(0.2, 0.5, 5, xyz, center)
    assert idx.tolist() == [[[0, 4, 5, 0, 0], [0, 0, 0, 0, 0]]]  # first hit repeated; no hit: all 0
    assert ops.ball_query_mmcv(0.0, 0.5, 3, xyz, center).tolist() == [[[0, 2, 4], [0, 0, 0]]]
    # a centre away from every point with min_radius > 0 gets its ring only
    ring = ops.ball_query_mmcv(0.3, 0.6, 2, xyz, torch.tensor([[[0.05, 0, 0]]]))
    assert ring.tolist() == [[[1, 5]]]


@settings(max_examples=20, deadline=None)
@given(B=st.integers(1, 2), N=st.integers(1, 30), M=st.integers(1, 10), S=st.integers(1, 8),
       min_r=st.sampled_from([0.0, 0.1, 0.25]), max_r=st.floats(0.3, 0.8), seed=st.integers(0, 2**16))
def test_ball_query_mmcv_matches_kernel_loop(B, N, M, S, min_r, max_r, seed):
    g = torch.Generator().manual_seed(seed)
    xyz = torch.rand(B, N, 3, generator=g, dtype=torch.float64)
    center = torch.cat([xyz[:, : min(M, N)], torch.rand(B, max(M - N, 0), 3, generator=g, dtype=torch.float64)], 1)
    idx = ops.ball_query_mmcv(min_r, max_r, S, xyz, center)
    assert idx.dtype == torch.int64 and idx.shape == (B, M, S)
    assert torch.equal(idx, _mmcv_ball_loop(min_r, max_r, S, xyz, center))
    assert torch.equal(idx, ref.ball_query_mmcv_idx(min_r, max_r, S, xyz, center))
    assert torch.equal(ops.ball_query_mmcv(min_r, max_r, S, xyz.float(), center.float()),
                       ref.ball_query_mmcv_idx(min_r, max_r, S, xyz.float(), center.float()))
    with use_backend("reference"):
        assert torch.equal(ops.ball_query_mmcv(min_r, max_r, S, xyz, center), idx)


# ------------------------------------------------------------------ stacked ball query and grouping

def _stacked_ball_loop(radius, nsample, xyz, center, xcnt, ccnt):
    """mmcv's stack_ball_query kernel: d2 < radius^2, local indices, first hit repeated, -1 in slot 0 (and 0
    elsewhere) for an empty ball."""
    idx = torch.zeros(center.shape[0], nsample, dtype=torch.int64)
    starts = [sum(xcnt[:b]) for b in range(len(xcnt))]
    row = 0
    for b, m in enumerate(ccnt):
        for _ in range(m):
            cnt = 0
            for k in range(xcnt[b]):
                if float(((center[row] - xyz[starts[b] + k]) ** 2).sum()) < radius * radius:
                    if cnt == 0:
                        idx[row, :] = k
                    idx[row, cnt] = k
                    cnt += 1
                    if cnt >= nsample:
                        break
            if cnt == 0:
                idx[row, 0] = -1
            row += 1
    return idx


@pytest.mark.parametrize("int32", [False, True])
def test_stacked_ball_query_matches_kernel_loop(int32):
    g = torch.Generator().manual_seed(3)
    xcnt, ccnt = [12, 0, 30, 5], [4, 2, 7, 3]  # cloud 1 has no points: its centres are empty balls
    xyz = torch.rand(sum(xcnt), 3, generator=g, dtype=torch.float64)
    center = torch.rand(sum(ccnt), 3, generator=g, dtype=torch.float64)
    center[-1] += 10  # far from its cloud: an empty ball
    dt = torch.int32 if int32 else torch.int64
    idx = ops.stacked_ball_query(0, 0.4, 6, xyz, center, torch.tensor(xcnt, dtype=dt), torch.tensor(ccnt, dtype=dt))
    expected = _stacked_ball_loop(0.4, 6, xyz, center, xcnt, ccnt)
    assert torch.equal(idx, expected)
    assert idx[-1].tolist() == [-1, 0, 0, 0, 0, 0] and (idx[4:6, 0] == -1).all()
    assert torch.equal(idx, ref.stacked_ball_query_idx(0, 0.4, 6, xyz, center, torch.tensor(xcnt),
                                                       torch.tensor(ccnt)))
    # the mmcv name with batch counts is the stacked form
    assert torch.equal(ops.ball_query_mmcv(0, 0.4, 6, xyz, center, torch.tensor(xcnt), torch.tensor(ccnt)), idx)
    # min_radius > 0 applies per cloud as in the batched form
    ring = ops.stacked_ball_query(0.2, 0.4, 6, xyz, center, torch.tensor(xcnt), torch.tensor(ccnt))
    assert torch.equal(ring, ref.stacked_ball_query_idx(0.2, 0.4, 6, xyz, center, torch.tensor(xcnt),
                                                        torch.tensor(ccnt)))
    batched = ops.ball_query_mmcv(0.2, 0.4, 6, xyz[None, :12], center[None, :4])[0]
    empty = ring[:4, 0] == -1
    assert torch.equal(ring[:4][~empty], batched[~empty]) and (batched[empty] == 0).all()
    assert (ring[:4][empty][:, 1:] == 0).all()


def test_stacked_grouping_matches_loop_and_gradcheck():
    g = torch.Generator().manual_seed(4)
    fcnt, icnt = [5, 8, 3], [2, 0, 4]
    f = torch.randn(sum(fcnt), 6, generator=g, dtype=torch.float64, requires_grad=True)
    idx = torch.cat([torch.randint(0, n, (m, 3), generator=g) for n, m in zip(fcnt, icnt)]).int()
    out = ops.stacked_grouping_operation(f, idx, torch.tensor(fcnt), torch.tensor(icnt))
    assert out.shape == (6, 6, 3) and out.is_contiguous()
    starts, rows = [0, 5, 13], [0, 0, 2, 2, 2, 2]
    for i in range(6):
        for s in range(3):
            assert torch.equal(out[i, :, s], f[starts[rows[i]] + int(idx[i, s])])
    assert torch.equal(out, ref.stacked_grouping(f, idx.long(), torch.tensor(fcnt), torch.tensor(icnt)))
    assert torch.equal(ops.grouping_operation(f, idx, torch.tensor(fcnt), torch.tensor(icnt)), out)
    gradcheck(lambda x: ops.stacked_grouping_operation(x, idx, torch.tensor(fcnt), torch.tensor(icnt)), (f,))


def test_stacked_query_then_group_like_pv_rcnn():
    """mmdet3d's StackQueryAndGroup: query, clear the empty-ball marker, group, zero the empty balls."""
    g = torch.Generator().manual_seed(6)
    xcnt, ccnt = torch.tensor([20, 9]), torch.tensor([3, 2])
    xyz = torch.rand(29, 3, generator=g)
    center = torch.cat([xyz[:3], torch.full((1, 3), 5.0), xyz[20:21]])
    idx = ops.stacked_ball_query(0, 0.3, 4, xyz, center, xcnt, ccnt)
    empty = idx[:, 0] == -1
    assert empty.tolist() == [False, False, False, True, False]
    idx[empty] = 0
    grouped = ops.stacked_grouping_operation(xyz, idx, xcnt, ccnt)  # (5, 3, 4)
    grouped[empty] = 0
    assert torch.equal(grouped[0, :, 0], xyz[0]) and torch.equal(grouped[4, :, 0], xyz[20])
    assert (grouped[3] == 0).all()


# ------------------------------------------------------------------ float16 / bfloat16 features on CPU

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_features_on_cpu(dtype):
    """Computed in float32, returned in the input dtype; gradients come back in the input dtype too."""
    g = torch.Generator().manual_seed(7)
    f = torch.randn(2, 4, 10, generator=g).to(dtype).requires_grad_()
    idx = torch.randint(0, 10, (2, 6), generator=g)
    gidx = torch.randint(0, 10, (2, 5, 3), generator=g)
    tidx = torch.randint(0, 10, (2, 7, 3), generator=g)
    w = torch.rand(2, 7, 3, generator=g).to(dtype).requires_grad_()
    out = ops.gather_points(f, idx)
    grouped = ops.grouping_operation(f, gidx)
    interp = ops.three_interpolate(f, tidx, w)
    f32, w32 = f.detach().float(), w.detach().float()
    assert out.dtype == grouped.dtype == interp.dtype == dtype
    assert torch.equal(out, ref.gather_columns(f32, idx).to(dtype))
    assert torch.equal(grouped, ref.gather_columns(f32, gidx.reshape(2, 15)).view(2, 4, 5, 3).to(dtype))
    assert_close(interp, ref.three_interpolate(f32, tidx, w32), dtype)
    gf, gw = torch.autograd.grad(interp.float().sum() + out.float().sum() + grouped.float().sum(), (f, w))
    assert gf.dtype == dtype and gw.dtype == dtype
    f64 = f.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_()
    total = (ref.three_interpolate(f64, tidx, w64).sum() + ref.gather_columns(f64, idx).sum()
             + ref.gather_columns(f64, gidx.reshape(2, 15)).sum())
    rf, rw = torch.autograd.grad(total, (f64, w64))
    assert_close(gf, rf, dtype)
    assert_close(gw, rw, dtype)
    stacked = ops.stacked_grouping_operation(f[0].t().contiguous(), gidx[0], torch.tensor([10]), torch.tensor([5]))
    assert stacked.dtype == dtype and torch.equal(stacked, grouped[0].permute(1, 0, 2))


def test_new_names_are_exported():
    for name in ("ball_query_mmcv", "stacked_ball_query", "stacked_grouping_operation",
                 "furthest_point_sample_with_dist"):
        assert name in ops.__all__ and callable(getattr(ops, name))


# ------------------------------------------------------------------ bad inputs of the new ops

def _bad_cases():
    xyz, center = torch.rand(2, 10, 3), torch.rand(2, 4, 3)
    sx, sc = torch.rand(15, 3), torch.rand(5, 3)
    xc, cc = torch.tensor([10, 5]), torch.tensor([3, 2])
    f, gi = torch.rand(15, 4), torch.zeros(5, 2, dtype=torch.long)
    dist = torch.rand(2, 6, 6)
    return [
        # furthest_point_sample_with_dist
        BadInput("fps dist rank", lambda: ops.furthest_point_sample_with_dist(dist[0], 2), ValueError,
                 "'points_dist' must have 3 dimensions"),
        BadInput("fps dist not square", lambda: ops.furthest_point_sample_with_dist(dist[:, :, :5], 2), ValueError,
                 "'points_dist' has size 5 in dimension 2 but its number of rows N is 6"),
        BadInput("fps dist num_points", lambda: ops.furthest_point_sample_with_dist(dist, 0), ValueError,
                 "num_points must be >= 1"),
        BadInput("fps dist num_points type", lambda: ops.furthest_point_sample_with_dist(dist, 2.0), TypeError,
                 "num_points must be an int"),
        BadInput("fps dist int", lambda: ops.furthest_point_sample_with_dist(dist.long(), 2), TypeError,
                 "float32 or float64"),
        BadInput("fps dist nan", lambda: ops.furthest_point_sample_with_dist(
            dist.index_put((torch.tensor(1), torch.tensor(2), torch.tensor(3)), torch.tensor(float("nan"))), 2),
                 ValueError, r"points_dist\[1, 2, 3\] is NaN"),
        # ball_query_mmcv
        BadInput("mmcv radii order", lambda: ops.ball_query_mmcv(0.5, 0.5, 4, xyz, center), ValueError,
                 "min_radius must be < max_radius"),
        BadInput("mmcv negative radius", lambda: ops.ball_query_mmcv(-0.1, 0.5, 4, xyz, center), ValueError,
                 "min_radius must be a finite number >= 0"),
        BadInput("mmcv nan radius", lambda: ops.ball_query_mmcv(0, float("nan"), 4, xyz, center), ValueError,
                 "max_radius must be a finite number"),
        BadInput("mmcv radius type", lambda: ops.ball_query_mmcv(0, "1", 4, xyz, center), TypeError,
                 "max_radius must be a number"),
        BadInput("mmcv sample_num", lambda: ops.ball_query_mmcv(0, 0.5, 0, xyz, center), ValueError,
                 "sample_num must be >= 1"),
        BadInput("mmcv batch", lambda: ops.ball_query_mmcv(0, 0.5, 4, xyz, center[:1]), ValueError,
                 "'center_xyz' has size 1 in dimension 0 but the batch size of xyz is 2"),
        BadInput("mmcv D", lambda: ops.ball_query_mmcv(0, 0.5, 4, xyz, center[..., :2]), ValueError,
                 "point dimension D of xyz"),
        BadInput("mmcv rank", lambda: ops.ball_query_mmcv(0, 0.5, 4, xyz[0], center), ValueError,
                 "'xyz' must have 3 dimensions"),
        BadInput("mmcv dtype", lambda: ops.ball_query_mmcv(0, 0.5, 4, xyz, center.double()), TypeError,
                 "same dtype"),
        BadInput("mmcv one count only", lambda: ops.ball_query_mmcv(0, 0.5, 4, sx, sc, xc), ValueError,
                 "'center_xyz_batch_cnt' is required"),
        # stacked_ball_query
        BadInput("stacked xyz sum", lambda: ops.stacked_ball_query(0, 0.5, 4, sx, sc, torch.tensor([10, 4]), cc),
                 ValueError, "'xyz_batch_cnt' sums to 14 but the number of xyz rows is 15"),
        BadInput("stacked center sum", lambda: ops.stacked_ball_query(0, 0.5, 4, sx, sc, xc, torch.tensor([3, 3])),
                 ValueError, "'center_xyz_batch_cnt' sums to 6 but the number of center_xyz rows is 5"),
        BadInput("stacked count lengths", lambda: ops.stacked_ball_query(0, 0.5, 4, sx, sc, xc, torch.tensor([5])),
                 ValueError, "'center_xyz_batch_cnt' has size 1 in dimension 0 but the number of clouds"),
        BadInput("stacked negative count", lambda: ops.stacked_ball_query(0, 0.5, 4, sx, sc, torch.tensor([16, -1]),
                                                                          cc), ValueError, "negative count"),
        BadInput("stacked float count", lambda: ops.stacked_ball_query(0, 0.5, 4, sx, sc, xc.float(), cc),
                 TypeError, "int32 or int64"),
        BadInput("stacked count rank", lambda: ops.stacked_ball_query(0, 0.5, 4, sx, sc, xc[None], cc), ValueError,
                 "'xyz_batch_cnt' must have 1 dimensions"),
        BadInput("stacked xyz rank", lambda: ops.stacked_ball_query(0, 0.5, 4, sx[None], sc, xc, cc), ValueError,
                 "'xyz' must have 2 dimensions"),
        BadInput("stacked D", lambda: ops.stacked_ball_query(0, 0.5, 4, sx, sc[:, :2], xc, cc), ValueError,
                 "'center_xyz' has size 2 in dimension 1 but the point dimension D of xyz is 3"),
        BadInput("stacked radii", lambda: ops.stacked_ball_query(0.6, 0.5, 4, sx, sc, xc, cc), ValueError,
                 "min_radius must be < max_radius"),
        BadInput("stacked missing count", lambda: ops.stacked_ball_query(0, 0.5, 4, sx, sc, None, cc), ValueError,
                 "'xyz_batch_cnt' is required"),
        # stacked_grouping_operation
        BadInput("group index past its cloud", lambda: ops.stacked_grouping_operation(
            f, torch.tensor([[0, 1]] * 3 + [[4, 5]] * 2), xc, cc), ValueError,
                 r"idx\[3, 1\] = 5 is out of range for its cloud 1 of 5 points"),
        BadInput("group negative index", lambda: ops.stacked_grouping_operation(f, gi - 1, xc, cc), ValueError,
                 "out of range for its cloud"),
        BadInput("group feature sum", lambda: ops.stacked_grouping_operation(f, gi, torch.tensor([10, 6]), cc),
                 ValueError, "'features_batch_cnt' sums to 16 but the number of feature rows is 15"),
        BadInput("group idx sum", lambda: ops.stacked_grouping_operation(f, gi, xc, torch.tensor([4, 2])),
                 ValueError, "'indices_batch_cnt' sums to 6 but the number of idx rows is 5"),
        BadInput("group count lengths", lambda: ops.stacked_grouping_operation(f, gi, xc, torch.tensor([1, 1, 3])),
                 ValueError, "'indices_batch_cnt' has size 3 in dimension 0"),
        BadInput("group features rank", lambda: ops.stacked_grouping_operation(f[None], gi, xc, cc), ValueError,
                 "'features' must have 2 dimensions"),
        BadInput("group idx rank", lambda: ops.stacked_grouping_operation(f, gi[None], xc, cc), ValueError,
                 "'idx' must have 2 dimensions"),
        BadInput("group float idx", lambda: ops.stacked_grouping_operation(f, gi.float(), xc, cc), TypeError,
                 "int32 or int64"),
        BadInput("group int features", lambda: ops.stacked_grouping_operation(f.long(), gi, xc, cc), TypeError,
                 "float32 or float64"),
        # masked_gather (the gather behind sample_farthest_points / ball_query's knn)
        BadInput("masked_gather batch", lambda: ops.masked_gather(xyz, torch.zeros(3, 2, dtype=torch.long)),
                 ValueError, "'idx' has size 3 in dimension 0 but the batch size of points is 2"),
        BadInput("masked_gather range", lambda: ops.masked_gather(xyz, torch.full((2, 2), 10)), ValueError,
                 "out of range"),
        BadInput("masked_gather below -1", lambda: ops.masked_gather(xyz, torch.full((2, 2), -2)), ValueError,
                 "out of range"),
    ]


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("case", _bad_cases(), ids=str)
def test_bad_inputs(case, backend):
    with use_backend(backend):
        run_bad_input(case)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_custom_ops_called_directly_check_their_arguments(backend):
    """torch.ops.pvf.* skip the Python entry: the C++ bindings and the reference's wrappers check the same."""
    p1, p2 = torch.rand(2, 5, 3), torch.rand(2, 6, 3)
    f, idx, w = torch.rand(2, 3, 8), torch.randint(0, 8, (2, 4, 3)), torch.rand(2, 4, 3)
    with use_backend(backend):
        with pytest.raises(ValueError, match="batch size of p1"):
            torch.ops.pvf.knn_points(p1, p2[:1], None, None, 2)
        with pytest.raises(ValueError, match="'lengths2' has a length 7 outside"):
            torch.ops.pvf.knn_points(p1, p2, None, torch.tensor([7, 1]), 2)
        with pytest.raises(ValueError, match="K must be >= 1"):
            torch.ops.pvf.ball_query(p1, p2, None, None, 0, 0.5)
        with pytest.raises(ValueError, match="radius must be a positive number"):
            torch.ops.pvf.ball_query(p1, p2, None, None, 2, -0.5)
        with pytest.raises(ValueError, match="out of range"):
            torch.ops.pvf.gather_points(f, torch.full((2, 3), 8))
        with pytest.raises(ValueError, match="batch size of features"):
            torch.ops.pvf.gather_points(f, torch.zeros(3, 3, dtype=torch.long))
        with pytest.raises(ValueError, match="'weight' must have shape"):
            torch.ops.pvf.three_interpolate(f, idx, w[:, :3])
        with pytest.raises(ValueError, match="out of range"):
            torch.ops.pvf.three_interpolate(f, idx + 8, w)


@pytest.mark.parametrize("K", [1, 4, 9, 30])
def test_knn_l1_exact_ties_keep_index_order(K):
    """Integer lattice clouds: many equal L1 distances, including at the K-th place; the set and order are
    (distance, index), as the stable-sort reference gives."""
    g = torch.Generator().manual_seed(K)
    p1 = torch.randint(0, 3, (2, 25, 3), generator=g).double()
    p2 = torch.randint(0, 3, (2, 40, 3), generator=g).double()
    l2 = torch.tensor([40, 7])
    d, i, _ = ops.knn_points(p1, p2, lengths2=l2, K=K, norm=1)
    rd, ri = ref.knn_points_idx(p1, p2, None, l2, K, norm=1)
    assert torch.equal(i, ri) and torch.equal(d, rd)


def test_compiled_l1_knn_and_hausdorff():
    p1 = torch.rand(2, 20, 3, requires_grad=True)
    p2 = torch.rand(2, 25, 3, requires_grad=True)

    def fn(a, b):
        r = ops.knn_points(a, b, K=4, norm=1)
        return r.dists, r.idx, ops.chamfer_distance(a, b, point_reduction="max", norm=1)[0]

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)
    for e, c in zip(fn(p1, p2), compiled(p1, p2)):
        torch.testing.assert_close(c, e)


@pytest.mark.cuda
def test_new_ops_on_cuda_equal_cpu():
    """The compositions run the same torch code on CUDA (the min_radius = 0 ball query runs the CUDA ball query
    kernels): CUDA results equal the CPU ones."""
    g = torch.Generator().manual_seed(8)
    p1 = torch.rand(2, 50, 3, generator=g, dtype=torch.float64)
    p2 = torch.rand(2, 70, 3, generator=g, dtype=torch.float64)
    l2 = torch.tensor([70, 9])
    for dtype in (torch.float32, torch.float64):
        a, b = p1.to(dtype), p2.to(dtype)
        d, i, _ = ops.knn_points(a.cuda(), b.cuda(), lengths2=l2.cuda(), K=5, norm=1)
        rd, ri, _ = ops.knn_points(a, b, lengths2=l2, K=5, norm=1)
        assert torch.equal(i.cpu(), ri)
        assert_close(d.cpu(), rd)
        for lo in (0.0, 0.1):
            assert torch.equal(ops.ball_query_mmcv(lo, 0.3, 8, b.cuda(), a.cuda()).cpu(),
                               ops.ball_query_mmcv(lo, 0.3, 8, b, a))
        dist = ((b[:, :, None] - b[:, None]) ** 2).sum(-1)
        assert torch.equal(ops.furthest_point_sample_with_dist(dist.cuda(), 10).cpu(),
                           ops.furthest_point_sample_with_dist(dist, 10))
        for red in ("max", "mean"):
            assert_close(ops.chamfer_distance(a.cuda(), b.cuda(), norm=1, point_reduction=red)[0].cpu(),
                         ops.chamfer_distance(a, b, norm=1, point_reduction=red)[0])
        xc, cc = torch.tensor([50, 20]), torch.tensor([30, 40])
        sx, sc = a.reshape(-1, 3)[:70], b.reshape(-1, 3)[:70]
        sidx = ops.stacked_ball_query(0, 0.3, 6, sx.cuda(), sc.cuda(), xc.cuda(), cc.cuda())
        assert torch.equal(sidx.cpu(), ops.stacked_ball_query(0, 0.3, 6, sx, sc, xc, cc))
        sidx = sidx.clamp(min=0)
        assert torch.equal(ops.stacked_grouping_operation(sx.cuda(), sidx, xc.cuda(), cc.cuda()).cpu(),
                           ops.stacked_grouping_operation(sx, sidx.cpu(), xc, cc))
    h = ops.knn_points(p1.half().cuda(), p2.half().cuda(), K=3, norm=1)
    assert h.dists.dtype == torch.float16 and h.idx.shape == (2, 50, 3)
