"""Point-cloud ops on NumPy / CuPy arrays: farthest point sampling, kNN, ball query, gathers, three-point
interpolation, chamfer distance. The functions of ``pyvision_fast.ops.pointcloud`` with the same names,
arguments, defaults, checks and results (bit for bit on CPU), without torch and without gradients.

NumPy arrays run the CPU kernels (``pyvision_fast._C``); CuPy arrays run the CUDA kernels (``_C_cuda``, the
ones the torch ops choose on GPUs) on CuPy's current stream. Index outputs are int64; index inputs may be
int32 or int64. Non-contiguous and negative-stride views are copied (as the torch ops copy non-contiguous
tensors); inputs are never written.
"""
from __future__ import annotations

from collections import namedtuple
from typing import Optional, Union

import math

import numpy as np

from . import _core

KNN = namedtuple("KNN", ["dists", "idx", "knn"])
KNN.__doc__ = ("Result of knn_points / ball_query: dists (B, P1, K), idx (B, P1, K), knn (B, P1, K, D) or "
               "None.")


def _acc_dtype(dtype) -> np.dtype:
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


# ============================================================== farthest point sampling

def _fps_kernel(points, lengths, start, K: int):
    op = "sample_farthest_points"
    points = _core.contiguous(points)
    B, N, D = _core.dims(points, 3)
    idx = _core.empty(points, (B, max(K, 0)), np.int64)
    if _core.is_cuda(points):
        ws = _core.empty(points, (B * N,), _acc_dtype(points.dtype))
        with _core.device_of(points):
            _core.cuda_module().sample_farthest_points_next(
                _core.describe(points, op, "points"), _core.describe(lengths, op, "lengths"),
                _core.describe(start, op, "start"), K, _core.describe(idx, op, "idx"),
                _core.describe(ws, op, "workspace"), _core.stream())
    else:
        ws = np.empty(B * (D + 1) * N, dtype=points.dtype)
        _core.cpu_module().sample_farthest_points(points, lengths, start, K, idx, ws)
    return idx


def check_finite_points(points, lengths=None, name: str = "points") -> None:
    """Raises a ValueError naming ``name``, the first cloud and point when a valid point of ``points``
    (B, N, D) has a NaN or infinite coordinate (points past ``lengths`` are not read). On CuPy arrays it
    synchronises."""
    xp = _core.namespace(points)
    bad = ~xp.isfinite(points).all(axis=-1)  # (B, N)
    if lengths is not None:
        bad &= xp.arange(points.shape[1])[None, :] < lengths[:, None]
    if bool(bad.any()):
        b, i = (int(v[0]) for v in xp.nonzero(bad))
        raise ValueError(f"{name}: points contain NaN or Inf: cloud {b}, point {i} is not finite "
                         f"({points[b, i].tolist()}); every valid point must have finite coordinates")


def _check_points(op: str, points, name: str = "points") -> None:
    _core.check_ndim(op, points, name, 3, "(B, N, D)")
    _core.check_float(op, points, name)
    if points.shape[2] < 1:
        raise ValueError(f"{op}: points must have at least one coordinate (D >= 1), got shape "
                         f"{tuple(points.shape)}")


def _per_cloud_k(K, B: int, like):
    """K an int, or a list / (B,) int array of per-cloud sample counts -> (max K, per-cloud K or None)."""
    op = "sample_farthest_points"
    if isinstance(K, (list, tuple)):
        if not all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in K):
            raise TypeError(f"{op}: a per-cloud K list must hold ints, got {K!r}")
        K = np.asarray(K, dtype=np.int64).reshape(len(K))
    if isinstance(K, (bool, int, float, np.number)) or not (hasattr(K, "__array_interface__") or hasattr(
            K, "__cuda_array_interface__") or hasattr(K, "__dlpack__")):
        return _core.check_count(op, K, "K"), None
    K = _core.check_index(op, _core.as_array(K, op, "K"), "K", 1, "(B,) (one sample count per cloud)")
    _core.check_size(op, K, "K", 0, B, "the batch size of points")
    values = K.tolist()
    if any(k < 0 for k in values):
        raise ValueError(f"{op}: a per-cloud K must be >= 0, got {values}")
    if not values or max(values) < 1:
        raise ValueError(f"{op}: K must be >= 1 for at least one cloud, got {values}")
    with _core.device_of(like):
        return max(values), _core.namespace(like).asarray(np.asarray(values, dtype=np.int64))


def sample_farthest_points(points, lengths=None, K: Union[int, list, "np.ndarray"] = 50,
                           random_start_point: bool = False):
    """Iterative farthest point sampling (PyTorch3D's ``sample_farthest_points``).

    Args:
        points: (B, N, D) float array (float32/float64; float16 too on CuPy).
        lengths: optional (B,) int32/int64 array, the number of valid points of each cloud.
        K: number of samples: an int, or per cloud a list / (B,) int array (entries >= 0, at least one >= 1).
        random_start_point: start each cloud at a random valid point, drawn from the global random state of
            NumPy (``numpy.random.seed``) or CuPy, instead of 0.

    Returns:
        (sampled points (B, K, D), idx (B, K) int64), K = max(K) for per-cloud counts. Distances start at
        +inf, ties go to the lowest index; where K exceeds a cloud's length, or cloud b's own K[b], the extra
        idx are -1 and the extra points 0.

    A NaN or infinite coordinate among a cloud's valid points is a ValueError naming the cloud and the point.
    """
    op = "sample_farthest_points"
    a = _core.arrays(op, points=points, lengths=lengths)
    points = a["points"]
    _check_points(op, points)
    B, N = points.shape[:2]
    K, per_cloud = _per_cloud_k(K, B, points)
    lengths = _core.check_lengths(op, a["lengths"], "lengths", B, N)
    check_finite_points(points, lengths, op)
    start = None
    xp = _core.namespace(points)
    if random_start_point:
        with _core.device_of(points):
            lens = lengths if lengths is not None else xp.full((B,), N, dtype=np.int64)
            start = xp.floor(xp.random.random(B) * xp.maximum(lens, 1)).astype(np.int64)
            start = xp.minimum(start, xp.maximum(lens - 1, 0))
    idx = _fps_kernel(points, lengths, start, K)
    if per_cloud is not None:
        with _core.device_of(points):
            idx = xp.where(xp.arange(K)[None, :] >= per_cloud[:, None], -1, idx)
    return masked_gather(points, idx), idx


def furthest_point_sample(xyz, num_points: int):
    """mmcv / PointNet++ ``furthest_point_sample``: xyz (B, N, 3) float -> idx (B, num_points) int64, starting
    at point 0; -1 where num_points exceeds N."""
    op = "furthest_point_sample"
    xyz = _core.as_array(xyz, op, "xyz")
    _check_points(op, xyz, "xyz")
    return _fps_kernel(xyz, None, None, _core.check_count(op, num_points, "num_points"))


def masked_gather(points, idx):
    """points (B, N, D), idx (B, ...) with -1 for missing -> (B, ..., D), zeros where idx is -1."""
    op = "masked_gather"
    a = _core.arrays(op, points=points, idx=idx)
    points = a["points"]
    _core.check_ndim(op, points, "points", 3, "(B, N, D)")
    idx = _core.check_index(op, a["idx"], "idx")
    if idx.ndim < 1:
        raise ValueError(f"{op}: argument 'idx' must have at least 1 dimension (B, ...), got shape ()")
    _core.check_size(op, idx, "idx", 0, points.shape[0], "the batch size of points")
    _core.check_index_range(op, idx, points.shape[1], "the number of points N (or -1 for missing)", lo=-1)
    xp = _core.namespace(points)
    B, N, D = points.shape
    flat = idx.reshape(B, idx[0].size if B else 0)
    with _core.device_of(points):
        table = xp.concatenate([points.reshape(B * N, D), xp.zeros((1, D), dtype=points.dtype)])
        offsets = xp.arange(B)[:, None] * N
        rows = xp.where(flat < 0, B * N, flat + offsets).reshape(-1)
        return table[rows].reshape(*idx.shape, D)


# ============================================================== kNN

def _knn_kernel(p1, p2, lengths1, lengths2, K: int):
    op = "knn_points"
    p1, p2 = _core.contiguous(p1), _core.contiguous(p2)
    B, P1, D = _core.dims(p1, 3)
    P2 = _core.dims(p2, 3)[1]
    dists = _core.empty(p1, (B, P1, max(K, 0)), p1.dtype)
    idx = _core.empty(p1, (B, P1, max(K, 0)), np.int64)
    if _core.is_cuda(p1):
        with _core.device_of(p1):
            _core.cuda_module().knn_points_next(
                _core.describe(p1, op, "p1"), _core.describe(p2, op, "p2"),
                _core.describe(lengths1, op, "lengths1"), _core.describe(lengths2, op, "lengths2"), K,
                _core.describe(dists, op, "dists"), _core.describe(idx, op, "idx"), _core.stream())
    else:
        mod = _core.cpu_module()
        ws = np.empty(B * D * P2, dtype=p1.dtype)
        iws = np.empty(B * mod.knn_index_workspace(P2), dtype=np.int64)
        mod.knn_points(p1, p2, lengths1, lengths2, K, dists, idx, ws, iws)
    return dists, idx


def check_cloud_pair(op: str, p1, p2, lengths1, lengths2, names=("p1", "p2", "lengths1", "lengths2"),
                     half_on_cpu: bool = False):
    """p1 (B, P1, D) and p2 (B, P2, D): floating, same dtype, same B and D >= 1; lengths (B,) in [0, P] ->
    (lengths1, lengths2) as contiguous int64 or None."""
    n1, n2, nl1, nl2 = names
    _core.check_ndim(op, p1, n1, 3, f"(B, {n1.upper()}, D)" if n1 in ("p1", "p2") else "(B, N, D)")
    _core.check_ndim(op, p2, n2, 3, f"(B, {n2.upper()}, D)" if n2 in ("p1", "p2") else "(B, M, D)")
    _core.check_float(op, p1, n1, half_on_cpu)
    _core.check_like(op, p2, n2, p1, n1)
    _core.check_size(op, p2, n2, 0, p1.shape[0], f"the batch size of {n1}")
    _core.check_size(op, p2, n2, 2, p1.shape[2], f"the point dimension D of {n1}")
    if p1.shape[2] < 1:
        raise ValueError(f"{op}: points must have at least one coordinate (D >= 1), got shape "
                         f"{tuple(p1.shape)}")
    B = p1.shape[0]
    return (_core.check_lengths(op, lengths1, nl1, B, p1.shape[1]),
            _core.check_lengths(op, lengths2, nl2, B, p2.shape[1]))


def _valid_slots(xp, idx, lengths1, lengths2, P1: int, P2: int):
    B, _, K = idx.shape
    l1 = lengths1 if lengths1 is not None else xp.full((B,), P1, dtype=np.int64)
    l2 = lengths2 if lengths2 is not None else xp.full((B,), P2, dtype=np.int64)
    k = xp.arange(K)[None, None, :]
    i = xp.arange(idx.shape[1])[None, :, None]
    return (k < l2[:, None, None]) & (i < l1[:, None, None])


def _knn_l1_idx(xp, p1, p2, lengths1, lengths2, K: int):
    """The torch op's reference L1 neighbours (stable sort of the pairwise L1 distances, padding 0, -1 for an
    empty cloud) on one block of p1 rows."""
    B, P1, _ = p1.shape
    P2 = p2.shape[1]
    l1 = lengths1 if lengths1 is not None else xp.full((B,), P1, dtype=np.int64)
    l2 = lengths2 if lengths2 is not None else xp.full((B,), P2, dtype=np.int64)
    d = xp.abs(p1[:, :, None, :] - p2[:, None, :, :]).sum(-1)
    d = xp.where(xp.arange(P2)[None, None, :] >= l2[:, None, None], xp.asarray(np.inf, dtype=d.dtype), d)
    kk = min(K, P2)
    idx = xp.argsort(d, axis=2, kind="stable")[:, :, :kk]
    if kk < K:
        idx = xp.concatenate([idx, xp.zeros((B, P1, K - kk), dtype=idx.dtype)], 2)
    pad = ((xp.arange(K)[None, None, :] >= l2[:, None, None])
           | (xp.arange(P1)[None, :, None] >= l1[:, None, None]))
    idx = xp.where(pad, 0, idx)
    return xp.where((l2 == 0)[:, None, None], -1, idx).astype(np.int64)


def _knn_l1(p1, p2, lengths1, lengths2, K: int):
    """norm=1 kNN as the torch op computes it (no kernel): neighbours on blocks of p1 rows, then the L1
    distances of the chosen pairs."""
    xp = _core.namespace(p1)
    B, P1, D = p1.shape
    P2 = p2.shape[1]
    rows = max(1, (1 << 22) // max(1, B * P2 * D))
    parts = []
    for s in range(0, P1, rows):
        l1 = None if lengths1 is None else xp.clip(lengths1 - s, 0, min(rows, P1 - s))
        parts.append(_knn_l1_idx(xp, p1[:, s:s + rows], p2, l1, lengths2, K))
    idx = xp.concatenate(parts, 1) if parts else xp.zeros((B, 0, K), dtype=np.int64)
    if P2 == 0:  # nothing to gather from (knn_points reports -1 / inf)
        return xp.zeros(idx.shape, dtype=p1.dtype), idx
    valid = _valid_slots(xp, idx, lengths1, lengths2, P1, P2) & (idx >= 0)
    near = xp.take_along_axis(p2, xp.maximum(idx, 0).reshape(B, P1 * K, 1), axis=1).reshape(B, P1, K, D)
    dists = xp.abs(p1[:, :, None, :] - near).sum(-1)
    return xp.where(valid, dists, xp.zeros((), dtype=dists.dtype)), idx


def knn_points(p1, p2, lengths1=None, lengths2=None, norm: int = 2, K: int = 1, version: int = -1,
               return_nn: bool = False, return_sorted: bool = True) -> KNN:
    """K nearest neighbours of each p1 point among the points of p2 (PyTorch3D's ``knn_points``).

    Args:
        p1: (B, P1, D), p2: (B, P2, D) float arrays; lengths1 / lengths2: optional (B,) valid-point counts.
        norm: 2 (squared Euclidean distances, the kernels) or 1 (L1 distances, sum of absolute differences,
            computed with array operations as the torch op computes them).
        K: neighbours per point (>= 1).
        version: accepted for PyTorch3D compatibility and ignored.
        return_nn: also return the neighbour coordinates (B, P1, K, D): ``knn_gather(p2, idx, lengths2)``
            with lengths2 = P2 where not given (PyTorch3D's), so slots past a cloud's points are 0.
        return_sorted: results are always sorted ascending (ties by index), which satisfies either value.

    Returns:
        KNN(dists (B, P1, K) in p1's dtype, idx (B, P1, K) int64, knn or None). Padding as PyTorch3D: the
        slots ``k >= lengths2[b]`` are 0 in dists and idx, rows past lengths1 are 0 too; a cloud with no
        point at all (``lengths2[b] == 0`` or ``P2 == 0``) gives idx -1 and dists +inf (and zeros in knn).
    """
    op = "knn_points"
    if isinstance(norm, bool) or norm not in (1, 2):
        raise ValueError(f"{op}: norm must be 1 (L1) or 2 (squared Euclidean), got norm={norm!r}")
    if not isinstance(return_sorted, bool):
        raise TypeError(f"{op}: return_sorted must be a bool, got {type(return_sorted).__name__}")
    K = _core.check_count(op, K, "K")
    a = _core.arrays(op, p1=p1, p2=p2, lengths1=lengths1, lengths2=lengths2)
    p1, p2 = a["p1"], a["p2"]
    lengths1, lengths2 = check_cloud_pair(op, p1, p2, a["lengths1"], a["lengths2"])
    xp = _core.namespace(p1)
    with _core.device_of(p1):
        dists, idx = (_knn_l1 if norm == 1 else _knn_kernel)(p1, p2, lengths1, lengths2, K)
        if p2.shape[1] == 0:
            dists, idx = xp.full_like(dists, np.inf), xp.full_like(idx, -1)
        elif lengths2 is not None:
            empty = (lengths2 <= 0)[:, None, None]
            dists = xp.where(empty, xp.asarray(np.inf, dtype=dists.dtype), dists)
            idx = xp.where(empty, -1, idx)
        nn = None
        if return_nn:
            if p2.shape[1] == 0:
                nn = xp.zeros((*idx.shape, p2.shape[2]), dtype=p2.dtype)
            else:  # as PyTorch3D: lengths2, or every cloud's full length P2, so padded slots are 0
                full = xp.full((p2.shape[0],), p2.shape[1], dtype=np.int64)
                nn = knn_gather(p2, idx, lengths2 if lengths2 is not None else full)
    return KNN(dists=dists, idx=idx, knn=nn)


def knn_gather(x, idx, lengths=None):
    """PyTorch3D's ``knn_gather``: x (B, M, U), idx (B, L, K) int32/int64 in [0, M) -> (B, L, K, U); entries
    whose k is past ``lengths`` (B,) (the valid sizes of x) are 0 (there idx may be -1, as knn_points gives
    for an empty cloud)."""
    op = "knn_gather"
    a = _core.arrays(op, x=x, idx=idx, lengths=lengths)
    x = a["x"]
    _core.check_ndim(op, x, "x", 3, "(B, M, U)")
    idx = _core.check_index(op, a["idx"], "idx", 3, "(B, L, K)")
    _core.check_size(op, idx, "idx", 0, x.shape[0], "the batch size of x")
    lengths = _core.check_lengths(op, a["lengths"], "lengths", x.shape[0], x.shape[1])
    xp = _core.namespace(x)
    B, M, U = x.shape
    _, L, K = idx.shape
    _core.check_index_range(op, idx, M, "the number of points M", lo=-1 if lengths is not None else 0)
    with _core.device_of(x):
        if lengths is not None:
            idx = xp.maximum(idx, 0)
        out = xp.take_along_axis(x, idx.reshape(B, L * K, 1), axis=1).reshape(B, L, K, U)
        if lengths is not None:
            short = xp.arange(K)[None, :] >= lengths[:, None]  # (B, K)
            out = xp.where(short[:, None, :, None], xp.zeros((), dtype=out.dtype), out)
    return out


# ============================================================== ball query

def _ball_kernel(p1, p2, lengths1, lengths2, K: int, radius: float):
    op = "ball_query"
    p1, p2 = _core.contiguous(p1), _core.contiguous(p2)
    B, P1, D = _core.dims(p1, 3)
    dists = _core.empty(p1, (B, P1, max(K, 0)), p1.dtype)
    idx = _core.empty(p1, (B, P1, max(K, 0)), np.int64)
    if _core.is_cuda(p1):
        with _core.device_of(p1):
            _core.cuda_module().ball_query_next(
                _core.describe(p1, op, "p1"), _core.describe(p2, op, "p2"),
                _core.describe(lengths1, op, "lengths1"), _core.describe(lengths2, op, "lengths2"), K, radius,
                _core.describe(dists, op, "dists"), _core.describe(idx, op, "idx"), _core.stream())
    else:
        ws = np.empty(B * D * _core.dims(p2, 3)[1], dtype=p1.dtype)
        _core.cpu_module().ball_query(p1, p2, lengths1, lengths2, K, radius, dists, idx, ws)
    return dists, idx


def ball_query(p1, p2, lengths1=None, lengths2=None, K: int = 500, radius: float = 0.2,
               return_nn: bool = True, fill: Optional[str] = None) -> KNN:
    """The first K points of p2, in index order, within ``radius`` of each p1 point (PyTorch3D semantics:
    squared distance < radius^2).

    Args:
        p1: (B, P1, D), p2: (B, P2, D) float arrays; lengths1 / lengths2: optional (B,) valid-point counts.
        K: neighbours per point (>= 1). radius: the ball's radius.
        return_nn: also return the neighbour coordinates.
        fill: ``"first"`` repeats each row's first neighbour (idx, dist and point) in the missing slots, as
            PointNet++ / mmcv group; None pads.

    Returns:
        KNN(dists (B, P1, K) squared, 0-padded; idx (B, P1, K) int64, -1-padded; knn (B, P1, K, D) with zeros
        for padding, or None).
    """
    op = "ball_query"
    if fill not in (None, "first"):
        raise ValueError(f"{op}: fill must be None or 'first', got {fill!r}")
    K = _core.check_count(op, K, "K")
    if isinstance(radius, bool) or not isinstance(radius, (int, float, np.floating, np.integer)):
        raise TypeError(f"{op}: radius must be a number, got {type(radius).__name__}")
    radius = float(radius)
    if not math.isfinite(radius) or radius < 0:
        raise ValueError(f"{op}: radius must be a finite number >= 0, got {radius}")
    if not radius > 0:
        raise ValueError(f"{op}: radius must be a positive number, got {radius}")
    a = _core.arrays(op, p1=p1, p2=p2, lengths1=lengths1, lengths2=lengths2)
    p1, p2 = a["p1"], a["p2"]
    lengths1, lengths2 = check_cloud_pair(op, p1, p2, a["lengths1"], a["lengths2"])
    dists, idx = _ball_kernel(p1, p2, lengths1, lengths2, K, float(radius))
    if fill == "first" and idx.shape[-1] > 0:
        xp = _core.namespace(idx)
        missing = idx < 0
        idx = xp.where(missing, idx[..., :1], idx)
        dists = xp.where(missing, dists[..., :1], dists)
    nn = masked_gather(p2, idx) if return_nn else None
    return KNN(dists=dists, idx=idx, knn=nn)


# ============================================================== three_nn / three_interpolate / gathers

def three_nn(unknown, known):
    """mmcv ``three_nn``: unknown (B, n, 3), known (B, m, 3) -> (dist (B, n, 3) Euclidean, idx (B, n, 3)
    int64), nearest first."""
    op = "three_nn"
    a = _core.arrays(op, unknown=unknown, known=known)
    unknown, known = a["unknown"], a["known"]
    check_cloud_pair(op, unknown, known, None, None, names=("unknown", "known", "", ""))
    if known.shape[1] < 3:
        raise ValueError(f"{op}: known must hold at least 3 points, got {known.shape[1]}")
    dists, idx = _knn_kernel(unknown, known, None, None, 3)
    xp = _core.namespace(dists)
    return xp.sqrt(xp.maximum(dists, xp.zeros((), dtype=dists.dtype))), idx


def _features(op: str, features, name: str = "features") -> None:
    _core.check_ndim(op, features, name, 3, "(B, C, N)")
    _core.check_float(op, features, name, half_on_cpu=True)


def _float32_on_cpu(fn, features, *rest):
    """fn on float32 copies of NumPy float16 inputs, cast back (the torch ops' CPU half path)."""
    if features.dtype == np.float16 and not _core.is_cuda(features):
        rest = tuple(a.astype(np.float32) if a.dtype.kind == "f" else a for a in rest)
        out = fn(features.astype(np.float32), *rest)
        return out.astype(np.float16)
    return fn(features, *rest)


def _gather_kernel(features, idx):
    op = "gather_points"
    features, idx = _core.contiguous(features), _core.contiguous(idx)
    B, C, _ = _core.dims(features, 3)
    out = _core.empty(features, (B, C, _core.dims(idx, 2)[1]), features.dtype)
    if _core.is_cuda(features):
        with _core.device_of(features):
            _core.cuda_module().gather_columns_next(
                _core.describe(features, op, "features"), _core.describe(idx, op, "idx"),
                _core.describe(out, op, "out"), _core.stream())
    else:
        _core.cpu_module().gather_columns(features, idx, out)
    return out


def _check_gather(op: str, features, idx, ndim: int, layout: str):
    _features(op, features)
    idx = _core.check_index(op, idx, "idx", ndim, layout)
    _core.check_size(op, idx, "idx", 0, features.shape[0], "the batch size of features")
    N = features.shape[2]
    if N == 0 and idx.size and features.shape[1]:
        raise ValueError(f"{op}: cannot gather from features with N = 0 points")
    _core.check_index_range(op, idx, N, "the number of points N")
    return idx


def gather_points(features, idx):
    """mmcv ``gather_points``: features (B, C, N) float, idx (B, M) int32/int64 in [0, N) -> (B, C, M) in the
    features' dtype (float16 NumPy arrays are computed in float32). On NumPy arrays an index outside [0, N)
    is a ValueError; the CUDA kernel skips it (reads 0), as the torch op's."""
    op = "gather_points"
    a = _core.arrays(op, features=features, idx=idx)
    idx = _check_gather(op, a["features"], a["idx"], 2, "(B, M)")
    return _float32_on_cpu(_gather_kernel, a["features"], idx)


def grouping_operation(features, idx):
    """mmcv ``grouping_operation``: features (B, C, N) float, idx (B, M, S) int32/int64 in [0, N) ->
    (B, C, M, S) in the features' dtype. (mmcv's stacked form with batch counts is not offered on arrays.)"""
    op = "grouping_operation"
    a = _core.arrays(op, features=features, idx=idx)
    idx = _check_gather(op, a["features"], a["idx"], 3, "(B, M, S)")
    B, M, S = idx.shape
    out = _float32_on_cpu(_gather_kernel, a["features"], idx.reshape(B, M * S))
    return out.reshape(out.shape[0], out.shape[1], M, S)


def _interp_kernel(features, idx, weight):
    op = "three_interpolate"
    features, idx, weight = _core.contiguous(features), _core.contiguous(idx), _core.contiguous(weight)
    B, C, _ = _core.dims(features, 3)
    out = _core.empty(features, (B, C, _core.dims(idx, 3)[1]), features.dtype)
    if _core.is_cuda(features):
        with _core.device_of(features):
            _core.cuda_module().three_interpolate_next(
                _core.describe(features, op, "features"), _core.describe(idx, op, "idx"),
                _core.describe(weight, op, "weight"), _core.describe(out, op, "out"), _core.stream())
    else:
        _core.cpu_module().three_interpolate(features, idx, weight, out)
    return out


def three_interpolate(features, idx, weight):
    """mmcv ``three_interpolate``: features (B, C, m) float, idx (B, n, 3) int32/int64 in [0, m), weight
    (B, n, 3) of the features' dtype -> (B, C, n) in that dtype (float16 NumPy arrays computed in float32)."""
    op = "three_interpolate"
    a = _core.arrays(op, features=features, idx=idx, weight=weight)
    features, weight = a["features"], a["weight"]
    _core.check_ndim(op, features, "features", 3, "(B, C, M)")
    _core.check_float(op, features, "features", half_on_cpu=True)
    idx = _core.check_index(op, a["idx"], "idx", 3, "(B, N, 3)")
    _core.check_size(op, idx, "idx", 0, features.shape[0], "the batch size of features")
    _core.check_size(op, idx, "idx", 2, 3, "the number of interpolated neighbours")
    if tuple(weight.shape) != (features.shape[0], idx.shape[1], 3):
        raise ValueError(f"{op}: argument 'weight' must have shape ({features.shape[0]}, {idx.shape[1]}, 3), "
                         f"got {tuple(weight.shape)}")
    _core.check_like(op, weight, "weight", features, "features")
    M = features.shape[2]
    if M == 0 and idx.shape[1] and features.shape[1]:
        raise ValueError(f"{op}: cannot interpolate from features with M = 0 points")
    _core.check_index_range(op, idx, M, "the number of known points M")
    return _float32_on_cpu(_interp_kernel, features, idx, weight)


# ============================================================== chamfer distance

def _cosine_similarity(a, b, eps: float):
    """torch.nn.functional.cosine_similarity along the last axis: each vector divided by its norm clamped to
    eps, then the dot product."""
    xp = _core.namespace(a)
    na = xp.maximum(xp.sqrt((a * a).sum(-1, keepdims=True)), eps)
    nb = xp.maximum(xp.sqrt((b * b).sum(-1, keepdims=True)), eps)
    return ((a / na) * (b / nb)).sum(-1)


def _chamfer_input(x, name: str):
    try:
        return _core.as_array(x, "chamfer_distance", name)
    except TypeError:  # the torch op's error for what is neither a tensor nor a Pointclouds object
        raise ValueError(f"chamfer_distance: {name} must be an array of shape (B, P, D), got "
                         f"{type(x).__name__}") from None


def chamfer_distance(x, y, x_lengths=None, y_lengths=None, x_normals=None, y_normals=None, weights=None,
                     batch_reduction: Optional[str] = "mean", point_reduction: Optional[str] = "mean",
                     norm: int = 2, single_directional: bool = False, abs_cosine: bool = True):
    """Chamfer distance between point clouds x (B, N, D) and y (B, M, D) (PyTorch3D's ``chamfer_distance``),
    on ``knn_points`` with K=1: squared Euclidean distances for norm 2, L1 distances for norm 1.

    x_lengths / y_lengths (B,), x_normals (B, N, D), y_normals (B, M, D) (both or neither), weights (B,)
    non-negative.

    Returns (distance, normal term or None) as arrays (0-d when reduced over the batch). point_reduction:
    "mean" | "sum" | "max" (the Hausdorff distance; no normals) | None (per-point terms (B, N), (B, M), a
    tuple unless single_directional); batch_reduction: "mean" (divided by B, or by the weights' sum) | "sum" |
    None (must be None when point_reduction is). Padded points, and points whose other cloud is empty,
    contribute 0. All-zero weights give zeros for the distance and the normal term.
    """
    op = "chamfer_distance"
    if isinstance(norm, bool) or norm not in (1, 2):
        raise ValueError(f"{op}: norm must be 1 (L1) or 2 (squared Euclidean), got {norm!r}")
    if batch_reduction not in ("mean", "sum", None):
        raise ValueError(f"{op}: batch_reduction must be 'mean', 'sum' or None, got {batch_reduction!r}")
    if point_reduction not in ("mean", "sum", "max", None):
        raise ValueError(f"{op}: point_reduction must be 'mean', 'sum', 'max' or None, got "
                         f"{point_reduction!r}")
    if point_reduction is None and batch_reduction is not None:
        raise ValueError(f"{op}: batch_reduction must be None when point_reduction is None")
    x, y = _chamfer_input(x, "x"), _chamfer_input(y, "y")
    if (x_normals is None) != (y_normals is None):
        raise ValueError(f"{op}: give both x_normals and y_normals, or neither")
    if point_reduction == "max" and x_normals is not None:
        raise ValueError(f"{op}: normals must be None when point_reduction is 'max'")
    a = _core.arrays(op, x=x, y=y, x_lengths=x_lengths, y_lengths=y_lengths, x_normals=x_normals,
                     y_normals=y_normals, weights=weights)
    x_normals, y_normals, weights = a["x_normals"], a["y_normals"], a["weights"]
    xl, yl = check_cloud_pair(op, x, y, a["x_lengths"], a["y_lengths"],
                              names=("x", "y", "x_lengths", "y_lengths"))
    xp = _core.namespace(x)
    B, N, D = x.shape
    M = y.shape[1]
    for name, nrm, pts in (("x_normals", x_normals, x), ("y_normals", y_normals, y)):
        if nrm is not None:
            _core.check_ndim(op, nrm, name, 3, "(B, P, D)")
            if nrm.shape != pts.shape:
                raise ValueError(f"{op}: argument '{name}' must have the shape of its points "
                                 f"{tuple(pts.shape)}, got {tuple(nrm.shape)}")
            _core.check_like(op, nrm, name, x, "x")
    if weights is not None:
        _core.check_ndim(op, weights, "weights", 1, "(B,)")
        if weights.shape != (B,):
            raise ValueError(f"{op}: weights must have shape ({B},), got {tuple(weights.shape)}")
        _core.check_float(op, weights, "weights")
        if not _core.is_cuda(weights) and bool((weights < 0).any()):
            raise ValueError(f"{op}: weights must be non-negative")
        if bool(weights.sum() == 0):
            return _chamfer_zero(xp, x, y, weights, batch_reduction, point_reduction, single_directional)
    with _core.device_of(x):
        xl = xl if xl is not None else xp.full((B,), N, dtype=np.int64)
        yl = yl if yl is not None else xp.full((B,), M, dtype=np.int64)

        def one_direction(p, q, pl, ql, p_normals, q_normals, P):
            nn = knn_points(p, q, lengths1=pl, lengths2=ql, K=1, norm=norm)
            # padded points of p, and every point of p whose q cloud is empty (0, as PyTorch3D's gives)
            mask = (xp.arange(P)[None, :] >= pl[:, None]) | (ql == 0)[:, None]
            dist = xp.where(mask, xp.zeros((), dtype=nn.dists.dtype), nn.dists[..., 0])
            cos = None
            if p_normals is not None:
                nq = knn_gather(q_normals, nn.idx, ql)[..., 0, :]
                c = _cosine_similarity(p_normals, nq, 1e-6)
                cos = xp.where(mask, xp.zeros((), dtype=c.dtype), 1 - (xp.abs(c) if abs_cosine else c))
            if weights is not None:
                dist = dist * weights.reshape(B, 1)
                cos = cos * weights.reshape(B, 1) if cos is not None else None
            if point_reduction is None:
                return dist, cos
            if point_reduction == "max":
                return (dist.max(1) if P > 0 else xp.zeros((B,), dtype=dist.dtype)), None
            dist = dist.sum(1)
            cos = cos.sum(1) if cos is not None else None
            if point_reduction == "mean":
                denom = xp.maximum(pl, 1).astype(dist.dtype)
                dist = dist / denom
                cos = cos / denom if cos is not None else None
            return dist, cos

        dx, nx = one_direction(x, y, xl, yl, x_normals, y_normals, N)
        if single_directional:
            dist, normals = dx, nx
        else:
            dy, ny = one_direction(y, x, yl, xl, y_normals, x_normals, M)
            if point_reduction is None:
                return (dx, dy), ((nx, ny) if nx is not None else None)
            if point_reduction == "max":
                dist, normals = xp.maximum(dx, dy), None
            else:
                dist = dx + dy
                normals = nx + ny if nx is not None else None
        if point_reduction is None:
            return dist, normals
        if batch_reduction is not None:
            dist = dist.sum()
            normals = normals.sum() if normals is not None else None
            if batch_reduction == "mean":
                div = xp.maximum(weights.sum(), 1e-12) if weights is not None else max(B, 1)
                dist = dist / div
                normals = normals / div if normals is not None else None
    return dist, normals


def _chamfer_zero(xp, x, y, weights, batch_reduction, point_reduction, single_directional):
    """The torch op's (PyTorch3D's) answer to all-zero weights: zeros for the distance and the normal term."""
    B, N, _ = x.shape
    per_cloud = x.sum((1, 2)) * weights * 0.0  # (B,)
    if point_reduction is None:
        zx = xp.broadcast_to(per_cloud[:, None], (B, N)) * 0.0
        if single_directional:
            return zx, zx
        zy = xp.broadcast_to((y.sum((1, 2)) * weights * 0.0)[:, None], (B, y.shape[1]))
        return (zx, zy), (zx, zy)
    if batch_reduction is None:
        return per_cloud, per_cloud
    return per_cloud.sum(), per_cloud.sum()
