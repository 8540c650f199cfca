"""Point-cloud ops: farthest point sampling, kNN, ball query, gathers, three-point interpolation, chamfer.

Signatures follow PyTorch3D (``sample_farthest_points``, ``knn_points``, ``knn_gather``, ``ball_query``,
``chamfer_distance``) and mmcv / PointNet++ (``furthest_point_sample``, ``gather_points``,
``grouping_operation``, ``three_nn``, ``three_interpolate``), so switching is one import.

Each kernel is a ``torch.library.custom_op`` in the ``pvf`` namespace with a fake implementation (for
``torch.compile`` / ``torch.export``) and, where differentiable, an autograd formula; plain eager calls skip the
custom op's dispatch and run the same implementation through a ``torch.autograd.Function``. Index outputs are
int64; index inputs may be int32 or int64. Point clouds are float32/float64 on CPU, plus float16/bfloat16 on CUDA.

Validation: on CPU tensors, lengths outside [0, P], FPS start indices outside a cloud and out-of-range indices
raise ValueError. On CUDA the current kernels check the same on the host (one synchronisation per call); the
candidate kernels (``"cuda:next"``, opt-in until verified on a GPU) never synchronise: they clamp lengths and start
indices and skip out-of-range indices (``_pointcloud_cuda`` has the details).
"""
from __future__ import annotations

from collections import namedtuple
from typing import Optional, Union

import torch
from torch import Tensor

from .. import _backend, _ext
from ..reference import pointcloud as ref
from . import _pointcloud_cuda as cu
from ._registry import as_index, as_int, dispatch, eager, eager_function
from .pointcloud_gather import gather_points, grouping_operation, three_interpolate  # noqa: F401 - re-exported

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


_FPS = {"cpu": _fps_cpu, "cuda": cu.fps, "cuda:next": cu.fps_next, "reference": ref.sample_farthest_points_idx}
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


def sample_farthest_points(points: Tensor, lengths: Optional[Tensor] = None, K: Union[int, Tensor] = 50,
                           random_start_point: bool = False) -> tuple[Tensor, Tensor]:
    """Iterative farthest point sampling (PyTorch3D's ``sample_farthest_points``).

    Args:
        points: (B, N, D) float tensor.
        lengths: optional (B,) int tensor, the number of valid points of each cloud.
        K: number of samples (an int; a (B,) tensor is accepted when all its entries are equal; a CUDA tensor
            is read back to the host, which synchronises: pass an int in training loops).
        random_start_point: start each cloud at a random valid point (drawn with torch's RNG) instead of 0.

    Returns:
        (sampled points (B, K, D), idx (B, K) int64). Distances start at +inf, ties go to the lowest index;
        where K exceeds a cloud's length the extra idx are -1 and the extra points 0.

    A NaN or infinite coordinate among a cloud's valid points is a ValueError naming the cloud and the point,
    on every backend (farthest-point order is undefined with them). The check reads the points once (and, on a
    GPU, synchronises); it is skipped under torch.compile/torch.export tracing.
    """
    if isinstance(K, Tensor):
        if K.numel() == 0 or not bool((K == K.reshape(-1)[0]).all()):
            raise ValueError("sample_farthest_points: a per-cloud K must be the same for every cloud")
        K = int(K.reshape(-1)[0])
    K = as_int(K, "K")
    if lengths is not None:
        lengths = as_index(lengths, "lengths")
    if points.dim() == 3 and points.is_floating_point():
        check_finite_points(points, lengths, "sample_farthest_points")
    start = None
    if random_start_point and points.dim() == 3:
        B, N = points.shape[:2]
        lens = lengths.to(points.device) if lengths is not None else torch.full((B,), N, device=points.device)
        start = (torch.rand(B, device=points.device) * lens.clamp(min=1)).floor().to(torch.int64)
        start = torch.minimum(start, (lens - 1).clamp(min=0))
    idx = _fps(points, lengths, start, K)
    return masked_gather(points, idx), idx


def furthest_point_sample(xyz: Tensor, num_points: int) -> Tensor:
    """mmcv / PointNet++ ``furthest_point_sample``: xyz (B, N, 3) -> idx (B, num_points) int64."""
    return _fps(xyz, None, None, as_int(num_points, "num_points"))


def masked_gather(points: Tensor, idx: Tensor) -> Tensor:
    """points (B, N, D), idx (B, ...) with -1 for missing -> (B, ..., D), zeros where idx is -1."""
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


_KNN_IMPLS = {"cpu": _knn_cpu, "cuda": cu.knn, "cuda:next": cu.knn_next, "reference": ref.knn_points_idx}
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


def knn_points(p1: Tensor, p2: Tensor, lengths1: Optional[Tensor] = None, lengths2: Optional[Tensor] = None,
               norm: int = 2, K: int = 1, version: int = -1, return_nn: bool = False,
               return_sorted: bool = True) -> KNN:
    """K nearest neighbours of each p1 point among the points of p2 (PyTorch3D's ``knn_points``).

    Args:
        p1: (B, P1, D), p2: (B, P2, D) float tensors; lengths1 / lengths2: optional (B,) valid-point counts.
        norm: 2 (squared Euclidean) is the only distance supported.
        K: neighbours per point (>= 1, any size; memory is O(B * P1 * K), no P1 x P2 matrix).
        version: accepted for PyTorch3D compatibility and ignored.
        return_nn: also return the neighbour coordinates (B, P1, K, D).
        return_sorted: results are always sorted ascending (ties by index), which satisfies either value.

    Returns:
        KNN(dists (B, P1, K) squared distances, idx (B, P1, K) int64, knn or None). dists is differentiable in
        p1, p2. Padding follows PyTorch3D: where a p2 cloud has fewer than K points, the slots
        ``k >= lengths2[b]`` are 0 in dists and idx, and rows past lengths1 are 0 too, so padding is recognised
        by ``k >= lengths2`` (``knn_gather`` with ``lengths`` zeroes it). A cloud with no point at all
        (``lengths2[b] == 0``, or ``P2 == 0``) has no neighbour to give: its idx is -1 and its dists +inf (0
        would name a point that does not exist).
    """
    if norm != 2:
        raise ValueError(f"knn_points: only norm=2 (squared Euclidean) is supported, got norm={norm}")
    K = as_int(K, "K")
    if lengths1 is not None:
        lengths1 = as_index(lengths1, "lengths1")
    if lengths2 is not None:
        lengths2 = as_index(lengths2, "lengths2")
    dists, idx = _knn(p1, p2, lengths1, lengths2, K)
    if p2.shape[1] == 0:
        dists, idx = torch.full_like(dists, float("inf")), torch.full_like(idx, -1)
    elif lengths2 is not None:
        empty = (lengths2 <= 0).to(dists.device)[:, None, None]  # <= : GPU candidates clamp lengths to [0, P]
        dists, idx = dists.masked_fill(empty, float("inf")), idx.masked_fill(empty, -1)
    nn = knn_gather(p2, idx, lengths2) if return_nn else None
    return KNN(dists=dists, idx=idx, knn=nn)


def knn_gather(x: Tensor, idx: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
    """PyTorch3D's ``knn_gather``: x (B, M, U), idx (B, L, K) -> (B, L, K, U); entries whose k is past
    ``lengths`` (the valid sizes of x) are 0."""
    B, M, U = x.shape
    _, L, K = idx.shape
    idx = as_index(idx, "idx")
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


_BALL = {"cpu": _ball_cpu, "cuda": cu.ball, "cuda:next": cu.ball_next, "reference": ref.ball_query_idx}
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
    if fill not in (None, "first"):
        raise ValueError(f"ball_query: fill must be None or 'first', got {fill!r}")
    K = as_int(K, "K")
    if isinstance(radius, bool) or not isinstance(radius, (int, float)):
        raise TypeError(f"ball_query: radius must be a number, got {type(radius).__name__}")
    if lengths1 is not None:
        lengths1 = as_index(lengths1, "lengths1")
    if lengths2 is not None:
        lengths2 = as_index(lengths2, "lengths2")
    args = (p1, p2, lengths1, lengths2, K, float(radius))
    dists, idx = _BallFunction.apply(*args) if eager(*args[:4]) else _ball_op(*args)
    if fill == "first" and idx.shape[-1] > 0:
        missing = idx < 0
        idx = torch.where(missing, idx[..., :1], idx)
        dists = torch.where(missing, dists[..., :1], dists)
    nn = masked_gather(p2, idx) if return_nn else None
    return KNN(dists=dists, idx=idx, knn=nn)


# ============================================================== three_nn

def three_nn(unknown: Tensor, known: Tensor) -> tuple[Tensor, Tensor]:
    """mmcv ``three_nn``: unknown (B, n, 3), known (B, m, 3) -> (dist (B, n, 3) Euclidean, idx (B, n, 3) int64),
    nearest first. Built on the kNN kernel, so ``dist`` is differentiable in both clouds."""
    if known.dim() == 3 and known.shape[1] < 3:
        raise ValueError(f"three_nn: known must hold at least 3 points, got {known.shape[1]}")
    dists, idx = _knn(unknown, known, None, None, 3)
    return dists.clamp(min=0).sqrt(), idx


# ============================================================== chamfer distance

def chamfer_distance(x: Tensor, y: Tensor, x_lengths: Optional[Tensor] = None, y_lengths: Optional[Tensor] = None,
                     x_normals: Optional[Tensor] = None, y_normals: Optional[Tensor] = None,
                     weights: Optional[Tensor] = None, batch_reduction: Optional[str] = "mean",
                     point_reduction: Optional[str] = "mean", norm: int = 2, single_directional: bool = False,
                     abs_cosine: bool = True) -> tuple[Tensor, Optional[Tensor]]:
    """Chamfer distance between point clouds x (B, N, D) and y (B, M, D) (PyTorch3D's ``chamfer_distance``),
    on the kNN kernel (K=1, squared Euclidean).

    Returns (distance, normal term or None). point_reduction: "mean" | "sum" | None (per-point terms, summed
    over the two directions only when reduced); batch_reduction: "mean" | "sum" | None. weights (B,) must be
    non-negative (checked for CPU tensors; on CUDA not, as the check would synchronise the host).
    """
    if norm != 2:
        raise ValueError(f"chamfer_distance: only norm=2 is supported, got {norm}")
    if batch_reduction not in ("mean", "sum", None):
        raise ValueError(f"chamfer_distance: batch_reduction must be 'mean', 'sum' or None, got {batch_reduction!r}")
    if point_reduction not in ("mean", "sum", None):
        raise ValueError(f"chamfer_distance: point_reduction must be 'mean', 'sum' or None, got {point_reduction!r}")
    if point_reduction is None and batch_reduction is not None:
        raise ValueError("chamfer_distance: batch_reduction must be None when point_reduction is None")
    if (x_normals is None) != (y_normals is None):
        raise ValueError("chamfer_distance: give both x_normals and y_normals, or neither")
    if x.dim() != 3 or y.dim() != 3:
        raise ValueError(f"chamfer_distance: x and y must be (B, N, D) and (B, M, D), got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    B, N, _ = x.shape
    M = y.shape[1]
    xl = as_index(x_lengths, "x_lengths").to(x.device) if x_lengths is not None else torch.full(
        (B,), N, dtype=torch.int64, device=x.device)
    yl = as_index(y_lengths, "y_lengths").to(x.device) if y_lengths is not None else torch.full(
        (B,), M, dtype=torch.int64, device=x.device)
    if weights is not None:
        if weights.shape != (B,):
            raise ValueError(f"chamfer_distance: weights must have shape ({B},), got {tuple(weights.shape)}")
        if not weights.is_cuda and bool((weights < 0).any()):  # on a GPU the check would synchronise
            raise ValueError("chamfer_distance: weights must be non-negative")

    def one_direction(a, b, al, bl, a_normals, b_normals, P):
        nn = knn_points(a, b, lengths1=al, lengths2=bl, K=1)
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
