"""CUDA implementations of the point-cloud ops: the current kernels (implementation key ``"cuda"``) and the
candidates (``"cuda:next"``, registered with ``_backend.register_candidate``; see ``ops.pointcloud``).

Candidates never synchronise the host: they do not read lengths, start indices or index tensors back to
validate them. Instead the kernels clamp lengths to [0, P] and FPS start indices to [0, n - 1], and skip an
out-of-range index (a gathered / interpolated value reads it as 0, a scatter-add drops it): nothing outside
the tensors is ever read or written. ``PVF_CHECK_INDICES=1`` in the environment restores the error for
out-of-range indices on CUDA, at the price of one synchronisation per call. CPU tensors are always checked.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor

from .. import _ext


def _is_half(t: Tensor) -> bool:
    return t.dtype in (torch.float16, torch.bfloat16)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation / scatter-add buffer dtype of the CUDA kernels."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _flag(device: torch.device) -> Tensor:
    return torch.empty(1, dtype=torch.int32, device=device)


def check_indices_if_asked(idx: Tensor, hi: int, op: str, what: str) -> None:
    """With PVF_CHECK_INDICES=1: raise ValueError for an index outside [0, hi) (synchronises the host)."""
    if os.environ.get("PVF_CHECK_INDICES", "0") not in ("", "0") and idx.numel():
        if bool(((idx < 0) | (idx >= hi)).any()):
            raise ValueError(f"{op}: idx has values out of range for {what} ({hi})")


# ------------------------------------------------------------------ farthest point sampling

def fps(points: Tensor, lengths: Optional[Tensor], start: Optional[Tensor], K: int, next_: bool = False) -> Tensor:
    B, N, _ = _ext.dims(points, 3)
    idx = torch.empty(B, max(K, 0), dtype=torch.int64, device=points.device)
    ws = torch.empty(B * N, dtype=_acc_dtype(points.dtype), device=points.device)
    mod = _ext.cuda_module()
    fn = mod.sample_farthest_points_next if next_ else mod.sample_farthest_points
    fn(_ext.arg(points), _ext.opt(lengths), _ext.opt(start), K, _ext.arg(idx), _ext.arg(ws), _ext.stream(points.device))
    return idx


def fps_next(points, lengths, start, K):
    return fps(points, lengths, start, K, next_=True)


# ------------------------------------------------------------------ kNN and ball query

def knn(p1: Tensor, p2: Tensor, lengths1, lengths2, K: int, next_: bool = False) -> tuple[Tensor, Tensor]:
    B, P1, _ = _ext.dims(p1, 3)
    dists = torch.empty(B, P1, max(K, 0), dtype=p1.dtype, device=p1.device)
    idx = torch.empty(B, P1, max(K, 0), dtype=torch.int64, device=p1.device)
    mod = _ext.cuda_module()
    fn = mod.knn_points_next if next_ else mod.knn_points
    fn(_ext.arg(p1), _ext.arg(p2), _ext.opt(lengths1), _ext.opt(lengths2), K, _ext.arg(dists), _ext.arg(idx),
       _ext.stream(p1.device))
    return dists, idx


def knn_next(p1, p2, lengths1, lengths2, K):
    return knn(p1, p2, lengths1, lengths2, K, next_=True)


def ball(p1: Tensor, p2: Tensor, lengths1, lengths2, K: int, radius: float, next_: bool = False):
    B, P1, _ = _ext.dims(p1, 3)
    dists = torch.empty(B, P1, max(K, 0), dtype=p1.dtype, device=p1.device)
    idx = torch.empty(B, P1, max(K, 0), dtype=torch.int64, device=p1.device)
    mod = _ext.cuda_module()
    fn = mod.ball_query_next if next_ else mod.ball_query
    fn(_ext.arg(p1), _ext.arg(p2), _ext.opt(lengths1), _ext.opt(lengths2), K, radius, _ext.arg(dists), _ext.arg(idx),
       _ext.stream(p1.device))
    return dists, idx


def ball_next(p1, p2, lengths1, lengths2, K, radius):
    return ball(p1, p2, lengths1, lengths2, K, radius, next_=True)


def neighbour_backward_next(p1: Tensor, p2: Tensor, idx: Tensor, lengths1: Optional[Tensor],
                            lengths2: Optional[Tensor], grad_dists: Tensor) -> tuple[Tensor, Tensor]:
    """The fused gradient of neighbour distances (one kernel, atomics into p2's gradient)."""
    grad_p1 = torch.empty_like(p1)
    grad_p2 = torch.empty(p2.shape, dtype=torch.float32 if _is_half(p2) else p2.dtype, device=p2.device)
    _ext.cuda_module().neighbour_dists_backward_next(
        _ext.arg(p1), _ext.arg(p2), _ext.opt(lengths1), _ext.opt(lengths2), _ext.arg(idx), _ext.arg(grad_dists),
        _ext.arg(grad_p1), _ext.arg(grad_p2), _ext.stream(p1.device))
    return grad_p1, grad_p2.to(p2.dtype)


# ------------------------------------------------------------------ column gathers

def gather(features: Tensor, idx: Tensor) -> Tensor:
    B, C, _ = _ext.dims(features, 3)
    out = torch.empty(B, C, _ext.dims(idx, 2)[1], dtype=features.dtype, device=features.device)
    _ext.cuda_module().gather_columns(_ext.arg(features), _ext.arg(idx), _ext.arg(out), _ext.arg(_flag(out.device)),
                                      _ext.stream(out.device))
    return out


def gather_next(features: Tensor, idx: Tensor) -> Tensor:
    B, C, N = _ext.dims(features, 3)
    check_indices_if_asked(idx, N, "gather_points", "the number of points N")
    out = torch.empty(B, C, _ext.dims(idx, 2)[1], dtype=features.dtype, device=features.device)
    _ext.cuda_module().gather_columns_next(_ext.arg(features), _ext.arg(idx), _ext.arg(out), _ext.stream(out.device))
    return out


def gather_backward(grad_out: Tensor, idx: Tensor, N: int, next_: bool = False) -> Tensor:
    B, C, _ = _ext.dims(grad_out, 3)
    buf_dtype = torch.float32 if _is_half(grad_out) else grad_out.dtype
    grad = torch.empty(B, C, N, dtype=buf_dtype, device=grad_out.device)
    mod = _ext.cuda_module()
    if next_:
        check_indices_if_asked(idx, N, "gather_points_backward", "the number of points N")
        mod.gather_columns_backward_next(_ext.arg(grad_out), _ext.arg(idx), _ext.arg(grad), _ext.stream(grad.device))
    else:
        mod.gather_columns_backward(_ext.arg(grad_out), _ext.arg(idx), _ext.arg(grad), _ext.arg(_flag(grad.device)),
                                    _ext.stream(grad.device))
    return grad.to(grad_out.dtype)


def gather_backward_next(grad_out, idx, N):
    return gather_backward(grad_out, idx, N, next_=True)


# ------------------------------------------------------------------ three-point interpolation

def interp(features: Tensor, idx: Tensor, weight: Tensor, next_: bool = False) -> Tensor:
    B, C, M = _ext.dims(features, 3)
    out = torch.empty(B, C, _ext.dims(idx, 3)[1], dtype=features.dtype, device=features.device)
    mod = _ext.cuda_module()
    if next_:
        check_indices_if_asked(idx, M, "three_interpolate", "the number of known points M")
        mod.three_interpolate_next(_ext.arg(features), _ext.arg(idx), _ext.arg(weight), _ext.arg(out),
                                   _ext.stream(out.device))
    else:
        mod.three_interpolate(_ext.arg(features), _ext.arg(idx), _ext.arg(weight), _ext.arg(out),
                              _ext.arg(_flag(out.device)), _ext.stream(out.device))
    return out


def interp_next(features, idx, weight):
    return interp(features, idx, weight, next_=True)


def interp_backward(grad_out, features, idx, weight, need_features, need_weight, next_: bool = False):
    gf = (torch.empty(features.shape, dtype=torch.float32 if _is_half(features) else features.dtype,
                      device=features.device) if need_features else None)
    gw = torch.empty_like(weight) if need_weight else None
    mod = _ext.cuda_module()
    if next_:
        check_indices_if_asked(idx, features.shape[2], "three_interpolate_backward", "the number of known points M")
        mod.three_interpolate_backward_next(_ext.arg(grad_out), _ext.arg(features), _ext.arg(idx), _ext.arg(weight),
                                            _ext.opt(gf), _ext.opt(gw), _ext.stream(features.device))
    else:
        mod.three_interpolate_backward(_ext.arg(grad_out), _ext.arg(features), _ext.arg(idx), _ext.arg(weight),
                                       _ext.opt(gf), _ext.opt(gw), _ext.arg(_flag(features.device)),
                                       _ext.stream(features.device))
    return (gf.to(features.dtype) if gf is not None else None), gw


def interp_backward_next(grad_out, features, idx, weight, need_features, need_weight):
    return interp_backward(grad_out, features, idx, weight, need_features, need_weight, next_=True)
