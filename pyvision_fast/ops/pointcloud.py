"""Point-cloud ops: farthest point sampling, kNN, ball query, gathers, three-point interpolation, chamfer.

Signatures follow PyTorch3D (``sample_farthest_points``, ``knn_points``, ``knn_gather``, ``ball_query``,
``chamfer_distance``) and mmcv / PointNet++ (``furthest_point_sample``, ``furthest_point_sample_with_dist``,
``gather_points``, ``grouping_operation``, ``three_nn``, ``three_interpolate``; mmcv's ``ball_query`` is
``ball_query_mmcv``, its stacked forms ``stacked_ball_query`` and ``stacked_grouping_operation``), so switching
is one import.

Each kernel is a ``torch.library.custom_op`` in the ``pvf`` namespace with a fake implementation (for
``torch.compile`` / ``torch.export``) and, where differentiable, an autograd formula; plain eager calls skip the
custom op's dispatch and run the same implementation through a ``torch.autograd.Function``. Index outputs are
int64; index inputs may be int32 or int64. Point clouds are float32/float64 on CPU, plus float16/bfloat16 on CUDA
(and, for the feature gathers, on CPU through float32). Torch compositions over the kernels, not kernels of
their own: ``knn_points(norm=1)``, ``furthest_point_sample_with_dist``, ``ball_query_mmcv`` with min_radius > 0,
the stacked ops and ``chamfer_distance``.

Validation: every op checks its arguments in Python before any backend runs (ranks, every relation between
the arguments' sizes, dtypes, devices; see ``pointcloud_gather.check_*``), and so do the reference
implementations behind the custom ops when those are called directly. On CPU tensors, lengths outside [0, P],
FPS start indices outside a cloud and out-of-range indices raise ValueError on every backend. On CUDA the
current kernels check the same on the host (one synchronisation per call); the candidate kernels
(``"cuda:next"``, preferred since their GPU verification) never synchronise: they clamp lengths and start
indices and skip out-of-range indices (``_pointcloud_cuda`` has the details).
"""
from __future__ import annotations

import math
import numbers
from collections import namedtuple
from typing import Optional, Union

import torch
from torch import Tensor

from .. import _backend, _ext
from ..reference import pointcloud as ref
from . import _pointcloud_cuda as cu
from ._registry import dispatch, eager, eager_function
from .pointcloud_gather import (check_count, check_float, check_index, check_index_range, check_lengths,
                                check_like, check_size, check_tensor, tracing)
from .pointcloud_gather import (gather_points, grouping_operation, stacked_grouping_operation,  # noqa: F401
                                three_interpolate)
from .pointcloud_gather import check_batch_cnt

KNN = namedtuple("KNN", ["dists", "idx", "knn"])
KNN.__doc__ = "Result of knn_points / ball_query: dists (B, P1, K), idx (B, P1, K), knn (B, P1, K, D) or None."


# ============================================================== farthest point sampling

def _fps_cpu(points: Tensor, lengths: Optional[Tensor], start: Optional[Tensor], K: int) -> Tensor:
    B, N, D = _ext.dims(points, 3)
    idx = torch.empty(B, max(K, 0), dtype=torch.int64)
    ws = torch.empty(B * (D + 1) * N, dtype=points.dtype)
    _ext.cpu_module().sample_farthest_points(_ext.arg(points), _ext.opt(lengths), _ext.opt(start), K,
                                             _ext.arg(idx), _ext.arg(ws))
    return idx


def _fps_reference(points: Tensor, lengths: Optional[Tensor], start: Optional[Tensor], K: int) -> Tensor:
    """The reference behind the same checks as the C++ binding (the custom op may be called directly)."""
    op = "sample_farthest_points"
    _check_points(op, points)
    check_count(op, K, "K")
    B, N = points.shape[:2]
    lengths = check_lengths(op, lengths, "lengths", B, N, points.device)
    if start is not None:
        start = check_index(op, start, "start", 1, "(B,)")
        check_size(op, start, "start", 0, B, "the batch size")
        check_like(op, start, "start", points, "points", dtype=False)
        if not start.is_cuda and not tracing():
            lens = lengths if lengths is not None else torch.full((B,), N, dtype=torch.int64)
            for b, (s_, n) in enumerate(zip(start.tolist(), lens.tolist())):
                if n > 0 and not 0 <= s_ < n:
                    raise ValueError(f"{op}: start index {s_} of cloud {b} is outside [0, {n})")
    return ref.sample_farthest_points_idx(points, lengths, start, K)


_FPS = {"cpu": _fps_cpu, "cuda": cu.fps, "cuda:next": cu.fps_next, "reference": _fps_reference}
_backend.prefer("sample_farthest_points", "cuda:next")  # H200-verified 2026-12-04 (gpu-runs.md)


def _fps_impl(points: Tensor, lengths: Optional[Tensor], start: Optional[Tensor], K: int) -> Tensor:
    impl = dispatch("sample_farthest_points", points.device, _FPS)
    return impl(points.contiguous(), lengths, start, K)


_fps_op = torch.library.custom_op("pvf::sample_farthest_points", mutates_args=())(_fps_impl)


@_fps_op.register_fake
def _(points, lengths, start, K):
    return points.new_empty((points.shape[0], K), dtype=torch.int64)


def _fps(points, lengths, start, K):
    """The op without autograd (its output is an index): the implementation itself on eager calls."""
    return _fps_impl(points, lengths, start, K) if eager(points, lengths, start) else _fps_op(points, lengths, start, K)


def check_finite_points(points: Tensor, lengths: Optional[Tensor] = None, name: str = "points") -> None:
    """Raises a ValueError naming ``name``, the first cloud and point when a valid point of ``points`` (B, N, D)
    has a NaN or infinite coordinate (points past ``lengths`` are not read). Reads every value (on a GPU it
    synchronises); skipped while torch.compile/torch.export trace, where a value check cannot run."""
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() != 0:
        return
    bad = ~torch.isfinite(points).all(dim=-1)  # (B, N)
    if lengths is not None:
        bad &= torch.arange(points.shape[1], device=points.device)[None, :] < lengths.to(points.device)[:, None]
    if bool(bad.any()):
        b, i = (int(v) for v in bad.nonzero()[0])
        raise ValueError(f"{name}: points contain NaN or Inf: cloud {b}, point {i} is not finite "
                         f"({points[b, i].tolist()}); every valid point must have finite coordinates")


def _check_points(op: str, points, name: str = "points") -> Tensor:
    check_tensor(op, points, name, 3, "(B, N, D)")
    check_float(op, points, name)
    if points.shape[2] < 1:
        raise ValueError(f"{op}: points must have at least one coordinate (D >= 1), got shape {tuple(points.shape)}")
    return points


def _per_cloud_k(K, B: int, device: torch.device) -> tuple[int, Optional[Tensor]]:
    """K an int, or a list / (B,) int tensor of per-cloud sample counts -> (max K, per-cloud K or None)."""
    op = "sample_farthest_points"
    if isinstance(K, (list, tuple)):
        if not all(isinstance(k, numbers.Integral) and not isinstance(k, bool) for k in K):
            raise TypeError(f"{op}: a per-cloud K list must hold ints, got {K!r}")
        K = torch.tensor([int(k) for k in K], dtype=torch.int64).reshape(len(K))
    if not isinstance(K, Tensor):
        return check_count(op, K, "K"), None
    K = check_index(op, K, "K", 1, "(B,) (one sample count per cloud)")
    check_size(op, K, "K", 0, B, "the batch size of points")
    if tracing():
        raise ValueError(f"{op}: a per-cloud K tensor is read on the host, which cannot be traced; pass an int")
    values = K.tolist()
    if any(k < 0 for k in values):
        raise ValueError(f"{op}: a per-cloud K must be >= 0, got {values}")
    if not values or max(values) < 1:
        raise ValueError(f"{op}: K must be >= 1 for at least one cloud, got {values}")
    return max(values), K.to(device)


def sample_farthest_points(points: Tensor, lengths: Optional[Tensor] = None,
                           K: Union[int, list, Tensor] = 50,
                           random_start_point: bool = False) -> tuple[Tensor, Tensor]:
    """Iterative farthest point sampling (PyTorch3D's ``sample_farthest_points``).

    Args:
        points: (B, N, D) float tensor.
        lengths: optional (B,) int tensor, the number of valid points of each cloud.
        K: number of samples: an int, or per cloud a list / (B,) int tensor (its length must be B; entries
            >= 0, at least one >= 1; a CUDA tensor is read back to the host, which synchronises: pass an int in
            training loops).
        random_start_point: start each cloud at a random valid point (drawn with torch's RNG) instead of 0.

    Returns:
        (sampled points (B, K, D), idx (B, K) int64), K = max(K) for per-cloud counts. Distances start at
        +inf, ties go to the lowest index; where K exceeds a cloud's length, or cloud b's own K[b], the extra
        idx are -1 and the extra points 0 (a cloud's first K[b] samples are those that K = K[b] gives).

    A NaN or infinite coordinate among a cloud's valid points is a ValueError naming the cloud and the point,
    on every backend (farthest-point order is undefined with them). The check reads the points once (and, on a
    GPU, synchronises); it is skipped under torch.compile/torch.export tracing.
    """
    op = "sample_farthest_points"
    _check_points(op, points)
    B, N = points.shape[:2]
    K, per_cloud = _per_cloud_k(K, B, points.device)
    lengths = check_lengths(op, lengths, "lengths", B, N, points.device, values=False)  # the backends check
    check_finite_points(points, lengths, op)
    start = None
    if random_start_point:
        lens = lengths if lengths is not None else torch.full((B,), N, device=points.device)
        start = (torch.rand(B, device=points.device) * lens.clamp(min=1)).floor().to(torch.int64)
        start = torch.minimum(start, (lens - 1).clamp(min=0))
    idx = _fps(points, lengths, start, K)
    if per_cloud is not None:
        idx = idx.masked_fill(torch.arange(K, device=idx.device)[None, :] >= per_cloud[:, None], -1)
    return masked_gather(points, idx), idx


def furthest_point_sample(xyz: Tensor, num_points: int) -> Tensor:
    """mmcv / PointNet++ ``furthest_point_sample``: xyz (B, N, 3) float -> idx (B, num_points) int64 (mmcv:
    int32), starting at point 0; -1 where num_points exceeds N."""
    op = "furthest_point_sample"
    _check_points(op, xyz, "xyz")
    return _fps(xyz, None, None, check_count(op, num_points, "num_points"))


def furthest_point_sample_with_dist(points_dist: Tensor, num_points: int) -> Tensor:
    """mmcv's ``furthest_point_sample_with_dist`` (the D-FPS / F-FPS sampling of 3DSSD): farthest point
    sampling on a precomputed distance matrix.

    Args:
        points_dist: (B, N, N) float tensor; points_dist[b, i, j] is the distance used from point i to point j
            (any measure: mmdet3d passes squared feature distances). Must not contain NaN.
        num_points: number of samples (>= 1).

    Returns:
        idx (B, num_points) int64 (mmcv: int32): starts at point 0; each step lowers every point's distance to
        the selected set by the row of the last selected point and takes the first maximum (distances start
        at +inf where mmcv starts at 1e10: they differ only for distances above 1e10). Where num_points
        exceeds N the extra idx are -1. Not differentiable (an index).

    A composition of torch operations (num_points vectorised steps over the batch; the same code on CPU and
    CUDA); the NaN check reads the matrix once (on a GPU it synchronises) and is skipped while tracing.
    """
    op = "furthest_point_sample_with_dist"
    check_tensor(op, points_dist, "points_dist", 3, "(B, N, N)")
    check_float(op, points_dist, "points_dist")
    check_size(op, points_dist, "points_dist", 2, points_dist.shape[1], "its number of rows N")
    K = check_count(op, num_points, "num_points")
    if not tracing() and points_dist.numel() and bool(torch.isnan(points_dist).any()):
        b, i, j = (int(v) for v in torch.isnan(points_dist).nonzero()[0])
        raise ValueError(f"{op}: points_dist[{b}, {i}, {j}] is NaN; every distance must be a number")
    with torch.no_grad():
        return ref.furthest_point_sample_with_dist_idx(points_dist, K)


def masked_gather(points: Tensor, idx: Tensor) -> Tensor:
    """points (B, N, D), idx (B, ...) int32/int64 in [-1, N) with -1 for missing -> (B, ..., D), zeros where
    idx is -1. Differentiable in points."""
    op = "masked_gather"
    check_tensor(op, points, "points", 3, "(B, N, D)")
    idx = check_index(op, idx, "idx")
    if idx.dim() < 1:
        raise ValueError(f"{op}: argument 'idx' must have at least 1 dimension (B, ...), got shape ()")
    check_like(op, idx, "idx", points, "points", dtype=False)
    check_size(op, idx, "idx", 0, points.shape[0], "the batch size of points")
    check_index_range(op, idx, points.shape[1], "the number of points N (or -1 for missing)", lo=-1)
    B, N, D = points.shape
    flat = idx.reshape(B, idx[0].numel() if B else 0)
    # Row gather from the flattened batch plus one zero row that every -1 maps to (index_select copies
    # whole D-rows: much faster than gather followed by a masked fill).
    table = torch.cat([points.reshape(B * N, D), points.new_zeros(1, D)])
    offsets = torch.arange(B, device=idx.device)[:, None] * N
    rows = torch.where(flat < 0, B * N, flat + offsets).reshape(-1)
    return table.index_select(0, rows).view(*idx.shape, D)


# ============================================================== gradient of neighbour distances

def _valid_slots(idx: Tensor, lengths1: Optional[Tensor], lengths2: Optional[Tensor], P1: int, P2: int) -> Tensor:
    B, _, K = idx.shape
    l1 = lengths1 if lengths1 is not None else torch.full((B,), P1, device=idx.device, dtype=torch.int64)
    l2 = lengths2 if lengths2 is not None else torch.full((B,), P2, device=idx.device, dtype=torch.int64)
    k = torch.arange(K, device=idx.device)[None, None, :]
    i = torch.arange(idx.shape[1], device=idx.device)[None, :, None]
    return (k < l2[:, None, None]) & (i < l1[:, None, None])


def _neighbour_backward_torch(p1: Tensor, p2: Tensor, idx: Tensor, lengths1: Optional[Tensor],
                              lengths2: Optional[Tensor], grad_dists: Tensor) -> tuple[Tensor, Tensor]:
    """Gradient of dists[b, i, k] = |p1[b, i] - p2[b, idx[b, i, k]]|^2 over the slots with i < lengths1[b],
    k < lengths2[b] and idx >= 0 (knn_points pads with idx 0 past the lengths, ball_query with -1)."""
    B, P1, K = idx.shape
    D = p1.shape[2]
    valid = _valid_slots(idx, lengths1, lengths2, P1, p2.shape[1]) & (idx >= 0)
    flat = idx.clamp(min=0).reshape(B, P1 * K, 1).expand(B, P1 * K, D)
    diff = p1[:, :, None, :] - torch.gather(p2, 1, flat).view(B, P1, K, D)
    g = (grad_dists * valid).to(diff.dtype)[..., None] * diff * 2
    grad_p1 = g.sum(2)
    grad_p2 = torch.zeros_like(p2).scatter_add_(1, flat, -g.reshape(B, P1 * K, D))
    return grad_p1, grad_p2


_NEIGHBOUR_BWD = {"cpu": _neighbour_backward_torch, "cuda": _neighbour_backward_torch,
                  "cuda:next": cu.neighbour_backward_next, "reference": _neighbour_backward_torch}
# The backward of each search op follows that op's candidate switch.
_backend.prefer("knn_points_backward", "cuda:next")  # H200-verified 2026-12-04 (gpu-runs.md)
_backend.prefer("ball_query_backward", "cuda:next")  # H200-verified 2026-12-04 (gpu-runs.md)


def _neighbour_backward_impl(p1: Tensor, p2: Tensor, idx: Tensor, lengths1: Optional[Tensor],
                             lengths2: Optional[Tensor], grad_dists: Tensor, op: str) -> tuple[Tensor, Tensor]:
    impl = dispatch(op + "_backward", p1.device, _NEIGHBOUR_BWD)
    return impl(p1.contiguous(), p2.contiguous(), idx.contiguous(), lengths1, lengths2, grad_dists.contiguous())


_neighbour_backward_op = torch.library.custom_op("pvf::neighbour_dists_backward",
                                                 mutates_args=())(_neighbour_backward_impl)


@_neighbour_backward_op.register_fake
def _(p1, p2, idx, lengths1, lengths2, grad_dists, op):
    return torch.empty_like(p1), torch.empty_like(p2)


def _search_setup(ctx, inputs, output):
    p1, p2, lengths1, lengths2 = inputs[:4]
    ctx.save_for_backward(p1, p2, output[1], lengths1, lengths2)


def _search_backward_with(backward_op, op: str, extra_inputs: int):
    def backward(ctx, grad_dists, grad_idx):
        p1, p2, idx, lengths1, lengths2 = ctx.saved_tensors
        if grad_dists is None:
            grad_dists = torch.zeros(idx.shape, dtype=p1.dtype, device=p1.device)
        grad_p1, grad_p2 = backward_op(p1, p2, idx, lengths1, lengths2, grad_dists, op)
        return (grad_p1, grad_p2, None, None) + (None,) * extra_inputs

    return backward


# ============================================================== kNN

def _knn_cpu(p1, p2, lengths1, lengths2, K):
    B, P1, D = _ext.dims(p1, 3)
    dists = torch.empty(B, P1, max(K, 0), dtype=p1.dtype)
    idx = torch.empty(B, P1, max(K, 0), dtype=torch.int64)
    P2 = _ext.dims(p2, 3)[1]
    mod = _ext.cpu_module()
    ws = torch.empty(B * D * P2, dtype=p1.dtype)
    iws = torch.empty(B * mod.knn_index_workspace(P2), dtype=torch.int64)
    mod.knn_points(_ext.arg(p1), _ext.arg(p2), _ext.opt(lengths1), _ext.opt(lengths2), K, _ext.arg(dists),
                   _ext.arg(idx), _ext.arg(ws), _ext.arg(iws))
    return dists, idx


def _knn_reference(p1, p2, lengths1, lengths2, K):
    check_count("knn_points", K, "K")
    lengths1, lengths2 = check_cloud_pair("knn_points", p1, p2, lengths1, lengths2)
    return ref.knn_points_idx(p1, p2, lengths1, lengths2, K)


_KNN_IMPLS = {"cpu": _knn_cpu, "cuda": cu.knn, "cuda:next": cu.knn_next, "reference": _knn_reference}
_backend.prefer("knn_points", "cuda:next")  # H200-verified 2026-12-04 (gpu-runs.md)


def _knn_impl(p1: Tensor, p2: Tensor, lengths1: Optional[Tensor], lengths2: Optional[Tensor],
              K: int) -> tuple[Tensor, Tensor]:
    impl = dispatch("knn_points", p1.device, _KNN_IMPLS)
    return impl(p1.contiguous(), p2.contiguous(), lengths1, lengths2, K)


_knn_op = torch.library.custom_op("pvf::knn_points", mutates_args=())(_knn_impl)


@_knn_op.register_fake
def _(p1, p2, lengths1, lengths2, K):
    shape = (p1.shape[0], p1.shape[1], K)
    return p1.new_empty(shape), p1.new_empty(shape, dtype=torch.int64)


_knn_op.register_autograd(_search_backward_with(_neighbour_backward_op, "knn_points", 1), setup_context=_search_setup)
_KNNFunction = eager_function("_KNNFunction", _knn_impl, _search_setup,
                              _search_backward_with(_neighbour_backward_impl, "knn_points", 1))


def _knn(p1, p2, lengths1, lengths2, K):
    if eager(p1, p2, lengths1, lengths2):
        return _KNNFunction.apply(p1, p2, lengths1, lengths2, K)
    return _knn_op(p1, p2, lengths1, lengths2, K)


def check_cloud_pair(op: str, p1, p2, lengths1, lengths2, names=("p1", "p2", "lengths1", "lengths2"),
                     half_on_cpu: bool = False, values: bool = True):
    """p1 (B, P1, D) and p2 (B, P2, D): floating, same dtype and device, same B and D >= 1; lengths (B,) in
    [0, P] -> (lengths1, lengths2) as int64 or None."""
    n1, n2, nl1, nl2 = names
    check_tensor(op, p1, n1, 3, f"(B, {n1.upper()}, D)" if n1 in ("p1", "p2") else "(B, N, D)")
    check_tensor(op, p2, n2, 3, f"(B, {n2.upper()}, D)" if n2 in ("p1", "p2") else "(B, M, D)")
    check_float(op, p1, n1, half_on_cpu)
    check_like(op, p2, n2, p1, n1)
    check_size(op, p2, n2, 0, p1.shape[0], f"the batch size of {n1}")
    check_size(op, p2, n2, 2, p1.shape[2], f"the point dimension D of {n1}")
    if p1.shape[2] < 1:
        raise ValueError(f"{op}: points must have at least one coordinate (D >= 1), got shape {tuple(p1.shape)}")
    B = p1.shape[0]
    return (check_lengths(op, lengths1, nl1, B, p1.shape[1], p1.device, values),
            check_lengths(op, lengths2, nl2, B, p2.shape[1], p1.device, values))


def _first_k_smallest(d: Tensor, K: int) -> Tensor:
    """Positions (..., K) of the K smallest values of each row of d (..., P), ordered by (value, position),
    K <= P: topk finds the K-th value; the values below it, then the ties at it, each group in position
    order, are the K smallest of an integer key (distinct, so topk is exact); a stable sort of those K orders
    them (no sort of whole rows)."""
    P = d.shape[-1]
    j = torch.arange(P, device=d.device, dtype=torch.int32 if 3 * P < 2**31 else torch.int64)
    kth = d.topk(K, dim=-1, largest=False, sorted=True).values[..., -1:]
    key = torch.where(d < kth, j, torch.where(d == kth, j + P, j + 2 * P))
    chosen = key.topk(K, dim=-1, largest=False, sorted=True).values.remainder(P).long()
    return chosen.gather(-1, d.gather(-1, chosen).sort(dim=-1, stable=True).indices)


def _knn_l1_search(p1: Tensor, p2: Tensor, lengths1: Optional[Tensor], lengths2: Optional[Tensor],
                   K: int) -> Tensor:
    """idx (B, P1, K) of the L1 kNN with knn_points' padding (0 past lengths; -1 for an empty cloud)."""
    B, P1, _ = p1.shape
    P2 = p2.shape[1]
    l1 = lengths1 if lengths1 is not None else torch.full((B,), P1, dtype=torch.int64, device=p1.device)
    l2 = lengths2 if lengths2 is not None else torch.full((B,), P2, dtype=torch.int64, device=p1.device)
    idx = torch.zeros(B, P1, K, dtype=torch.int64, device=p1.device)
    kk = min(K, P2)
    if kk > 0:
        half = p1.dtype in (torch.float16, torch.bfloat16)  # searched in float32, as the kernels accumulate
        d = torch.cdist(p1.float(), p2.float(), p=1) if half else torch.cdist(p1, p2, p=1)  # no (B, P1, P2, D)
        if lengths2 is not None:
            d = d.masked_fill(torch.arange(P2, device=p1.device)[None, None, :] >= l2[:, None, None], float("inf"))
        idx[..., :kk] = _first_k_smallest(d, kk)
    pad = (torch.arange(K, device=p1.device)[None, None, :] >= l2[:, None, None]) | (
        torch.arange(P1, device=p1.device)[None, :, None] >= l1[:, None, None])
    return idx.masked_fill(pad, 0).masked_fill((l2 == 0)[:, None, None], -1)


def _knn_l1(p1: Tensor, p2: Tensor, lengths1: Optional[Tensor], lengths2: Optional[Tensor],
            K: int) -> tuple[Tensor, Tensor]:
    """norm=1 kNN as a torch composition (no kernel; the same code on CPU and CUDA): neighbours found without
    autograd on blocks of p1 rows (O(rows * P2 * D) memory per block; topk, no sort of whole rows), then the
    L1 distances recomputed from the chosen pairs, which autograd differentiates (d|x|/dx = sign(x), 0 at
    0)."""
    B, P1, D = p1.shape
    P2 = p2.shape[1]
    if P2 == 0:  # nothing to gather from; knn_points reports -1 / +inf
        return p1.new_zeros(B, P1, K), torch.full((B, P1, K), -1, dtype=torch.int64, device=p1.device)
    rows = max(1, (1 << 22) // max(1, B * P2 * D))
    parts = []
    with torch.no_grad():
        for s in range(0, P1, rows):
            l1 = None if lengths1 is None else (lengths1 - s).clamp(0, min(rows, P1 - s))
            parts.append(_knn_l1_search(p1[:, s:s + rows], p2, l1, lengths2, K))
    idx = torch.cat(parts, 1) if parts else torch.zeros(B, 0, K, dtype=torch.int64, device=p1.device)
    valid = _valid_slots(idx, lengths1, lengths2, P1, P2) & (idx >= 0)
    near = torch.gather(p2, 1, idx.clamp(min=0).reshape(B, P1 * K, 1).expand(B, P1 * K, D)).view(B, P1, K, D)
    dists = (p1[:, :, None, :] - near).abs().sum(-1)
    return torch.where(valid, dists, torch.zeros_like(dists)), idx


def knn_points(p1: Tensor, p2: Tensor, lengths1: Optional[Tensor] = None, lengths2: Optional[Tensor] = None,
               norm: int = 2, K: int = 1, version: int = -1, return_nn: bool = False,
               return_sorted: bool = True) -> KNN:
    """K nearest neighbours of each p1 point among the points of p2 (PyTorch3D's ``knn_points``).

    Args:
        p1: (B, P1, D), p2: (B, P2, D) float tensors; lengths1 / lengths2: optional (B,) valid-point counts.
        norm: 2 (squared Euclidean distances, the kernels) or 1 (L1 distances, sum of absolute differences,
            not squared, as PyTorch3D reports them; a torch composition, see ``_knn_l1``).
        K: neighbours per point (>= 1, any size; with norm 2 memory is O(B * P1 * K), no P1 x P2 matrix).
        version: accepted for PyTorch3D compatibility and ignored.
        return_nn: also return the neighbour coordinates (B, P1, K, D): ``knn_gather(p2, idx, lengths2)`` with
            lengths2 = P2 where not given (PyTorch3D's), so slots past a cloud's points are 0.
        return_sorted: PyTorch3D leaves the order of the K neighbours unspecified when False. Here both values
            return the same tensors, sorted ascending with ties in index order (a valid unspecified order; the
            search produces them sorted, so no sort is skipped).

    Returns:
        KNN(dists (B, P1, K), idx (B, P1, K) int64, knn or None). dists is differentiable in p1, p2. Padding
        follows PyTorch3D: where a p2 cloud has fewer than K points, the slots ``k >= lengths2[b]`` are 0 in
        dists and idx, and rows past lengths1 are 0 too, so padding is recognised by ``k >= lengths2``
        (``knn_gather`` with ``lengths`` zeroes it). A cloud with no point at all (``lengths2[b] == 0``, or
        ``P2 == 0``) has no neighbour to give: its idx is -1 and its dists +inf (0 would name a point that
        does not exist).
    """
    op = "knn_points"
    if isinstance(norm, bool) or norm not in (1, 2):
        raise ValueError(f"{op}: norm must be 1 (L1) or 2 (squared Euclidean), got norm={norm!r}")
    if not isinstance(return_sorted, bool):
        raise TypeError(f"{op}: return_sorted must be a bool, got {type(return_sorted).__name__}")
    K = check_count(op, K, "K")
    lengths1, lengths2 = check_cloud_pair(op, p1, p2, lengths1, lengths2,
                                          values=norm == 1)  # norm 2: the backends check the lengths
    if norm == 1:
        dists, idx = _knn_l1(p1, p2, lengths1, lengths2, K)
    else:
        dists, idx = _knn(p1, p2, lengths1, lengths2, K)
    if p2.shape[1] == 0:
        dists, idx = torch.full_like(dists, float("inf")), torch.full_like(idx, -1)
    elif lengths2 is not None:
        empty = (lengths2 <= 0).to(dists.device)[:, None, None]  # <= : GPU candidates clamp lengths to [0, P]
        dists, idx = dists.masked_fill(empty, float("inf")), idx.masked_fill(empty, -1)
    nn = None
    if return_nn:  # as PyTorch3D: knn_gather with lengths2 or, without them, every cloud's full length P2
        full = torch.full((p2.shape[0],), p2.shape[1], dtype=torch.int64, device=p2.device)
        nn = knn_gather(p2, idx, lengths2 if lengths2 is not None else full)
    return KNN(dists=dists, idx=idx, knn=nn)


def knn_gather(x: Tensor, idx: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
    """PyTorch3D's ``knn_gather``: x (B, M, U), idx (B, L, K) int32/int64 in [0, M) -> (B, L, K, U); entries
    whose k is past ``lengths`` (B,) (the valid sizes of x) are 0 (there idx may be -1, as knn_points gives
    for an empty cloud). Differentiable in x."""
    op = "knn_gather"
    check_tensor(op, x, "x", 3, "(B, M, U)")
    idx = check_index(op, idx, "idx", 3, "(B, L, K)")
    check_like(op, idx, "idx", x, "x", dtype=False)
    check_size(op, idx, "idx", 0, x.shape[0], "the batch size of x")
    if isinstance(lengths, Tensor):
        lengths = lengths.to(x.device)  # as before: moved, not refused
    lengths = check_lengths(op, lengths, "lengths", x.shape[0], x.shape[1], x.device)
    B, M, U = x.shape
    _, L, K = idx.shape
    check_index_range(op, idx, M, "the number of points M", lo=-1 if lengths is not None else 0)
    if M == 0:  # every slot is past its cloud's length 0 (idx -1 there): nothing to gather
        return x.new_zeros(B, L, K, U)
    if lengths is not None:  # slots past a cloud's length may hold -1 (knn_points of an empty cloud)
        idx = idx.clamp(min=0)
    flat = idx.reshape(B, L * K, 1).expand(B, L * K, U)
    out = torch.gather(x, 1, flat).view(B, L, K, U)
    if lengths is not None:
        short = torch.arange(K, device=x.device)[None, :] >= lengths.to(x.device)[:, None]  # (B, K)
        out = out.masked_fill(short[:, None, :, None], 0.0)
    return out


# ============================================================== ball query

def _ball_cpu(p1, p2, lengths1, lengths2, K, radius):
    B, P1, D = _ext.dims(p1, 3)
    dists = torch.empty(B, P1, max(K, 0), dtype=p1.dtype)
    idx = torch.empty(B, P1, max(K, 0), dtype=torch.int64)
    ws = torch.empty(B * D * _ext.dims(p2, 3)[1], dtype=p1.dtype)
    _ext.cpu_module().ball_query(_ext.arg(p1), _ext.arg(p2), _ext.opt(lengths1), _ext.opt(lengths2), K, radius,
                                 _ext.arg(dists), _ext.arg(idx), _ext.arg(ws))
    return dists, idx


def _ball_reference(p1, p2, lengths1, lengths2, K, radius):
    check_count("ball_query", K, "K")
    if not (radius > 0 and math.isfinite(radius)):
        raise ValueError(f"ball_query: radius must be a positive number, got {radius}")
    lengths1, lengths2 = check_cloud_pair("ball_query", p1, p2, lengths1, lengths2)
    return ref.ball_query_idx(p1, p2, lengths1, lengths2, K, radius)


_BALL = {"cpu": _ball_cpu, "cuda": cu.ball, "cuda:next": cu.ball_next, "reference": _ball_reference}
_backend.prefer("ball_query", "cuda:next")  # H200-verified 2026-12-04 (gpu-runs.md)


def _ball_impl(p1: Tensor, p2: Tensor, lengths1: Optional[Tensor], lengths2: Optional[Tensor], K: int,
               radius: float) -> tuple[Tensor, Tensor]:
    impl = dispatch("ball_query", p1.device, _BALL)
    return impl(p1.contiguous(), p2.contiguous(), lengths1, lengths2, K, radius)


_ball_op = torch.library.custom_op("pvf::ball_query", mutates_args=())(_ball_impl)


@_ball_op.register_fake
def _(p1, p2, lengths1, lengths2, K, radius):
    shape = (p1.shape[0], p1.shape[1], K)
    return p1.new_empty(shape), p1.new_empty(shape, dtype=torch.int64)


_ball_op.register_autograd(_search_backward_with(_neighbour_backward_op, "ball_query", 2),
                           setup_context=_search_setup)
_BallFunction = eager_function("_BallFunction", _ball_impl, _search_setup,
                               _search_backward_with(_neighbour_backward_impl, "ball_query", 2))


def ball_query(p1: Tensor, p2: Tensor, lengths1: Optional[Tensor] = None, lengths2: Optional[Tensor] = None,
               K: int = 500, radius: float = 0.2, return_nn: bool = True, fill: Optional[str] = None) -> KNN:
    """The first K points of p2, in index order, within ``radius`` of each p1 point (PyTorch3D semantics:
    squared distance < radius^2).

    Returns KNN(dists (B, P1, K) squared, 0-padded; idx (B, P1, K) int64, -1-padded; knn (B, P1, K, D) with
    zeros for padding, or None). dists is differentiable in p1, p2.

    ``fill="first"`` repeats each row's first neighbour (its idx, dist and point) in the missing slots instead
    of padding, as PointNet++ and mmcv's ball query group (a fixed-size group whose max-pool sees real points
    only; with the centres drawn from p2 the first neighbour is the centre itself). A row without any neighbour
    keeps -1 / 0. Without it, missing slots are -1: never clamp them to 0, which groups point 0 instead.
    """
    op = "ball_query"
    if fill not in (None, "first"):
        raise ValueError(f"{op}: fill must be None or 'first', got {fill!r}")
    K = check_count(op, K, "K")
    radius = _radius(op, radius, "radius")
    if not radius > 0:
        raise ValueError(f"{op}: radius must be a positive number, got {radius}")
    lengths1, lengths2 = check_cloud_pair(op, p1, p2, lengths1, lengths2, values=False)  # the backends check
    args = (p1, p2, lengths1, lengths2, K, float(radius))
    dists, idx = _BallFunction.apply(*args) if eager(*args[:4]) else _ball_op(*args)
    if fill == "first" and idx.shape[-1] > 0:
        missing = idx < 0
        idx = torch.where(missing, idx[..., :1], idx)
        dists = torch.where(missing, dists[..., :1], dists)
    nn = masked_gather(p2, idx) if return_nn else None
    return KNN(dists=dists, idx=idx, knn=nn)


def _radius(op: str, value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{op}: {name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{op}: {name} must be a finite number >= 0, got {value}")
    return value


def _mmcv_radii(op: str, min_radius, max_radius) -> tuple[float, float]:
    lo, hi = _radius(op, min_radius, "min_radius"), _radius(op, max_radius, "max_radius")
    if not lo < hi:
        raise ValueError(f"{op}: min_radius must be < max_radius (mmcv asserts it), got {lo} and {hi}")
    return lo, hi


def _sq_dists(a: Tensor, b: Tensor) -> Tensor:
    """(B, R, D), (B, N, D) -> (B, R, N) squared distances summed coordinate by coordinate in order (as mmcv's
    kernel and, for D <= 4, torch's sum over the last dimension), without a (B, R, N, D) difference tensor."""
    acc = None
    for c in range(a.shape[-1]):
        t = a[..., :, None, c] - b[..., None, :, c]
        acc = t * t if acc is None else acc.add_(t * t)
    return acc


def _ball_query_mmcv(min_radius: float, max_radius: float, sample_num: int, xyz: Tensor,
                     center_xyz: Tensor) -> tuple[Tensor, Tensor]:
    """-> (idx (B, M, sample_num) with 0 for centres without hits, empty (B, M) bool: no hit)."""
    if min_radius == 0:
        # hits are d2 < max_radius^2 (d2 == 0 among them): PyTorch3D's ball query, first hit repeated, -1 if none
        with torch.no_grad():
            idx = ball_query(center_xyz, xyz, K=sample_num, radius=max_radius, return_nn=False, fill="first").idx
        return idx.clamp(min=0), idx[..., 0] < 0
    # blocks of centres (O(centres * N) memory per block): each hit's rank among its row's hits (a cumulative
    # sum) places the first sample_num hits, then the first hit fills the slots left
    B, N, _ = xyz.shape
    rows = max(1, (1 << 22) // max(1, B * N))
    idx, empty = [], []
    with torch.no_grad():
        for s in range(0, center_xyz.shape[1], rows):
            d = _sq_dists(center_xyz[:, s:s + rows], xyz)  # (B, R, N)
            hit = (d == 0) | ((d >= min_radius * min_radius) & (d < max_radius * max_radius))
            rank = hit.cumsum(2) - 1
            keep = hit & (rank < sample_num)
            slots = torch.full((*d.shape[:2], sample_num + 1), -1, dtype=torch.int64, device=xyz.device)
            j = torch.arange(N, device=xyz.device).expand_as(rank)
            slots.scatter_(2, torch.where(keep, rank, sample_num), torch.where(keep, j, -1))  # dump slot: -1
            found = slots[..., :sample_num]
            none = ~hit.any(2)
            first = found[..., :1].clamp(min=0)
            idx.append(torch.where(found < 0, first, found))
            empty.append(none)
    if not idx:
        return (torch.zeros(B, 0, sample_num, dtype=torch.int64, device=xyz.device),
                torch.zeros(B, 0, dtype=torch.bool, device=xyz.device))
    return torch.cat(idx, 1), torch.cat(empty, 1)


def ball_query_mmcv(min_radius: float, max_radius: float, sample_num: int, xyz: Tensor, center_xyz: Tensor,
                    xyz_batch_cnt: Optional[Tensor] = None,
                    center_xyz_batch_cnt: Optional[Tensor] = None) -> Tensor:
    """mmcv's ``ball_query`` (argument order and semantics), named apart from PyTorch3D's ``ball_query``.

    Args:
        min_radius, max_radius: 0 <= min_radius < max_radius. Point k is a hit of a centre when its squared
            distance d2 is 0 (the centre itself) or min_radius^2 <= d2 < max_radius^2 (radii squared in double
            and rounded to the points' dtype, where mmcv squares them in float32).
        sample_num: slots per centre (>= 1).
        xyz: (B, N, D) float points (mmcv: D = 3; any D >= 1 here).
        center_xyz: (B, M, D) centres, same dtype and device.
        xyz_batch_cnt, center_xyz_batch_cnt: give both for the stacked form (``stacked_ball_query``).

    Returns:
        idx (B, M, sample_num) int64 (mmcv: int32): the first sample_num hits in index order, the remaining
        slots repeat the first hit, and a centre without hits gets 0 in every slot. Not differentiable.

    min_radius == 0 runs the ``ball_query`` kernels (CPU and CUDA); min_radius > 0 is a torch composition
    over blocks of centres (O(B * N) memory per centre in a block).
    """
    op = "ball_query_mmcv"
    if xyz_batch_cnt is not None or center_xyz_batch_cnt is not None:
        return stacked_ball_query(min_radius, max_radius, sample_num, xyz, center_xyz, xyz_batch_cnt,
                                  center_xyz_batch_cnt)
    lo, hi = _mmcv_radii(op, min_radius, max_radius)
    sample_num = check_count(op, sample_num, "sample_num")
    check_cloud_pair(op, xyz, center_xyz, None, None, names=("xyz", "center_xyz", "", ""))
    return _ball_query_mmcv(lo, hi, sample_num, xyz, center_xyz)[0]


def stacked_ball_query(min_radius: float, max_radius: float, sample_num: int, xyz: Tensor, center_xyz: Tensor,
                       xyz_batch_cnt: Tensor, center_xyz_batch_cnt: Tensor) -> Tensor:
    """mmcv's stacked ball query (``ball_query`` with batch counts, PV-RCNN / PointNet++ stacked code): clouds
    of different sizes stacked along the first dimension.

    Args:
        min_radius, max_radius, sample_num: as in ``ball_query_mmcv``. mmcv's stacked kernel ignores
            min_radius (its hits are d2 < max_radius^2); here min_radius applies as in the batched form, so the
            results equal mmcv's exactly when min_radius is 0.
        xyz: (N1 + N2 + ..., D) float points of every cloud, stacked; center_xyz: (M1 + M2 + ..., D) centres.
        xyz_batch_cnt: (B,) int32/int64 (N1, N2, ...), summing to the rows of xyz.
        center_xyz_batch_cnt: (B,) int32/int64 (M1, M2, ...), summing to the rows of center_xyz.

    Returns:
        idx (M1 + M2 + ..., sample_num) int64, local to each cloud (0 is the cloud's first point), filled as in
        ``ball_query_mmcv``, except that a centre without hits gets -1 in its first slot and 0 in the others
        (mmcv's marker of an empty ball: replace it before ``stacked_grouping_operation``). Not
        differentiable.

    One ``ball_query_mmcv`` per cloud; it reads the counts (on a GPU this synchronises once).
    """
    op = "stacked_ball_query"
    lo, hi = _mmcv_radii(op, min_radius, max_radius)
    sample_num = check_count(op, sample_num, "sample_num")
    check_tensor(op, xyz, "xyz", 2, "(N1 + N2 + ..., D)")
    check_tensor(op, center_xyz, "center_xyz", 2, "(M1 + M2 + ..., D)")
    check_float(op, xyz, "xyz")
    check_like(op, center_xyz, "center_xyz", xyz, "xyz")
    check_size(op, center_xyz, "center_xyz", 1, xyz.shape[1], "the point dimension D of xyz")
    if xyz.shape[1] < 1:
        raise ValueError(f"{op}: points must have at least one coordinate (D >= 1), got shape {tuple(xyz.shape)}")
    _, nvals = check_batch_cnt(op, xyz_batch_cnt, "xyz_batch_cnt", None, xyz.shape[0], "the number of xyz rows",
                               xyz.device)
    _, mvals = check_batch_cnt(op, center_xyz_batch_cnt, "center_xyz_batch_cnt", len(nvals), center_xyz.shape[0],
                               "the number of center_xyz rows", xyz.device)
    out = torch.zeros(center_xyz.shape[0], sample_num, dtype=torch.int64, device=xyz.device)
    xs = cs = 0
    for n, m in zip(nvals, mvals):
        if m and n:
            idx, empty = _ball_query_mmcv(lo, hi, sample_num, xyz[None, xs:xs + n], center_xyz[None, cs:cs + m])
            idx[0, :, 0] = idx[0, :, 0].masked_fill(empty[0], -1)
            out[cs:cs + m] = idx[0]
        elif m:
            out[cs:cs + m, 0] = -1
        xs += n
        cs += m
    return out


# ============================================================== three_nn

def three_nn(unknown: Tensor, known: Tensor) -> tuple[Tensor, Tensor]:
    """mmcv ``three_nn``: unknown (B, n, 3), known (B, m, 3) -> (dist (B, n, 3) Euclidean, idx (B, n, 3) int64),
    nearest first. Built on the kNN kernel, so ``dist`` is differentiable in both clouds."""
    op = "three_nn"
    check_cloud_pair(op, unknown, known, None, None, names=("unknown", "known", "", ""))
    if known.shape[1] < 3:
        raise ValueError(f"{op}: known must hold at least 3 points, got {known.shape[1]}")
    dists, idx = _knn(unknown, known, None, None, 3)
    return dists.clamp(min=0).sqrt(), idx


# ============================================================== chamfer distance

def _chamfer_input(x, lengths, normals, name: str):
    """A (B, P, D) tensor, or a PyTorch3D ``Pointclouds`` (anything with ``points_padded``) -> (points,
    lengths, normals); anything else is PyTorch3D's ValueError."""
    if not isinstance(x, Tensor) and callable(getattr(x, "points_padded", None)):
        return x.points_padded(), x.num_points_per_cloud(), x.normals_padded()
    if not isinstance(x, Tensor):
        raise ValueError(f"chamfer_distance: {name} must be a torch.Tensor of shape (B, P, D) or a Pointclouds "
                         f"object, got {type(x).__name__}")
    return x, lengths, normals


def chamfer_distance(x, y, x_lengths: Optional[Tensor] = None, y_lengths: Optional[Tensor] = None,
                     x_normals: Optional[Tensor] = None, y_normals: Optional[Tensor] = None,
                     weights: Optional[Tensor] = None, batch_reduction: Optional[str] = "mean",
                     point_reduction: Optional[str] = "mean", norm: int = 2, single_directional: bool = False,
                     abs_cosine: bool = True):
    """Chamfer distance between point clouds x (B, N, D) and y (B, M, D) (PyTorch3D's ``chamfer_distance``),
    on ``knn_points`` with K=1: squared Euclidean distances for norm 2, L1 distances for norm 1.

    x and y may also be PyTorch3D ``Pointclouds`` (their padded points, lengths and normals are used); any other
    type is a ValueError. x_lengths / y_lengths (B,), x_normals (B, N, D), y_normals (B, M, D) (both or
    neither), weights (B,) non-negative (checked for CPU tensors; on CUDA not, as the check would synchronise).

    Returns (distance, normal term or None). point_reduction: "mean" | "sum" | "max" (the Hausdorff distance:
    each direction's largest term, the two directions' maximum; no normals) | None (per-point terms (B, N),
    (B, M), a tuple unless single_directional); batch_reduction: "mean" (divided by B, or by the weights' sum)
    | "sum" | None (must be None when point_reduction is). Padded points, and points whose other cloud is
    empty, contribute 0. All-zero weights give a zero distance and a zero normal term (not None) of the
    reduced shape, as PyTorch3D does (PyTorch3D's unreduced shapes there are (B, B); here they stay the
    shapes of the non-zero case); that check reads the weights (on a GPU it synchronises; it is skipped while
    tracing).
    """
    op = "chamfer_distance"
    if isinstance(norm, bool) or norm not in (1, 2):
        raise ValueError(f"{op}: norm must be 1 (L1) or 2 (squared Euclidean), got {norm!r}")
    if batch_reduction not in ("mean", "sum", None):
        raise ValueError(f"{op}: batch_reduction must be 'mean', 'sum' or None, got {batch_reduction!r}")
    if point_reduction not in ("mean", "sum", "max", None):
        raise ValueError(f"{op}: point_reduction must be 'mean', 'sum', 'max' or None, got {point_reduction!r}")
    if point_reduction is None and batch_reduction is not None:
        raise ValueError(f"{op}: batch_reduction must be None when point_reduction is None")
    x, x_lengths, x_normals = _chamfer_input(x, x_lengths, x_normals, "x")
    y, y_lengths, y_normals = _chamfer_input(y, y_lengths, y_normals, "y")
    if (x_normals is None) != (y_normals is None):
        raise ValueError(f"{op}: give both x_normals and y_normals, or neither")
    if point_reduction == "max" and x_normals is not None:
        raise ValueError(f"{op}: normals must be None when point_reduction is 'max'")
    if isinstance(x, Tensor):  # lengths may live on another device (as before): moved, not refused
        x_lengths, y_lengths = (t.to(x.device) if isinstance(t, Tensor) else t for t in (x_lengths, y_lengths))
    xl, yl = check_cloud_pair(op, x, y, x_lengths, y_lengths, names=("x", "y", "x_lengths", "y_lengths"))
    B, N, D = x.shape
    M = y.shape[1]
    for name, nrm, pts in (("x_normals", x_normals, x), ("y_normals", y_normals, y)):
        if nrm is not None:
            check_tensor(op, nrm, name, 3, "(B, P, D)")
            if nrm.shape != pts.shape:
                raise ValueError(f"{op}: argument '{name}' must have the shape of its points {tuple(pts.shape)}, "
                                 f"got {tuple(nrm.shape)}")
            check_like(op, nrm, name, x, "x")
    if weights is not None:
        check_tensor(op, weights, "weights", 1, "(B,)")
        if weights.shape != (B,):
            raise ValueError(f"{op}: weights must have shape ({B},), got {tuple(weights.shape)}")
        check_float(op, weights, "weights")
        check_like(op, weights, "weights", x, "x", dtype=False)
        if not weights.is_cuda and not tracing() and bool((weights < 0).any()):
            raise ValueError(f"{op}: weights must be non-negative")
        if not tracing() and bool(weights.sum() == 0):
            return _chamfer_zero(x, y, weights, batch_reduction, point_reduction, single_directional)
    xl = xl if xl is not None else torch.full((B,), N, dtype=torch.int64, device=x.device)
    yl = yl if yl is not None else torch.full((B,), M, dtype=torch.int64, device=x.device)

    def one_direction(a, b, al, bl, a_normals, b_normals, P):
        nn = knn_points(a, b, lengths1=al, lengths2=bl, K=1, norm=norm)
        # padded points of a, and every point of a whose b cloud is empty (0, as PyTorch3D's chamfer gives)
        mask = (torch.arange(P, device=a.device)[None, :] >= al[:, None]) | (bl == 0)[:, None]
        dist = nn.dists[..., 0].masked_fill(mask, 0.0)
        cos = None
        if a_normals is not None:
            nb = knn_gather(b_normals, nn.idx, bl)[..., 0, :]
            c = torch.nn.functional.cosine_similarity(a_normals, nb, dim=2, eps=1e-6)
            cos = (1 - (c.abs() if abs_cosine else c)).masked_fill(mask, 0.0)
        if weights is not None:
            dist = dist * weights.view(B, 1)
            cos = cos * weights.view(B, 1) if cos is not None else None
        if point_reduction is None:
            return dist, cos
        if point_reduction == "max":
            return (dist.max(1).values if P > 0 else dist.new_zeros(B)), None
        dist = dist.sum(1)
        cos = cos.sum(1) if cos is not None else None
        if point_reduction == "mean":
            denom = al.clamp(min=1).to(dist.dtype)
            dist = dist / denom
            cos = cos / denom if cos is not None else None
        return dist, cos

    dx, nx = one_direction(x, y, xl, yl, x_normals, y_normals, N)
    if single_directional:
        dist, normals = dx, nx
    else:
        dy, ny = one_direction(y, x, yl, xl, y_normals, x_normals, M)
        if point_reduction is None:
            dist, normals = (dx, dy), ((nx, ny) if nx is not None else None)
            return dist, normals
        if point_reduction == "max":
            dist, normals = torch.maximum(dx, dy), None
        else:
            dist = dx + dy
            normals = nx + ny if nx is not None else None
    if point_reduction is None:
        return dist, normals
    if batch_reduction is not None:
        dist = dist.sum()
        normals = normals.sum() if normals is not None else None
        if batch_reduction == "mean":
            div = weights.sum().clamp(min=1e-12) if weights is not None else max(B, 1)
            dist = dist / div
            normals = normals / div if normals is not None else None
    return dist, normals


def _chamfer_zero(x: Tensor, y: Tensor, weights: Tensor, batch_reduction, point_reduction, single_directional):
    """PyTorch3D's answer to all-zero weights: zeros (connected to x and the weights for autograd) for the
    distance and the normal term alike."""
    B, N, _ = x.shape
    per_cloud = x.sum((1, 2)) * weights * 0.0  # (B,)
    if point_reduction is None:
        zx = per_cloud[:, None].expand(B, N) * 0.0
        if single_directional:
            return zx, zx
        zy = (y.sum((1, 2)) * weights * 0.0)[:, None].expand(B, y.shape[1])
        return (zx, zy), (zx, zy)
    if batch_reduction is None:
        return per_cloud, per_cloud
    return per_cloud.sum(), per_cloud.sum()
