"""Plain-PyTorch point-cloud ops, written for clarity, with the same semantics as the kernels.

They take the op-level arguments of ``pyvision_fast.ops.pointcloud`` (int64 indices, optional int64
``lengths`` of shape (B,)) and are differentiable by autograd where the ops are. Index ties resolve to the
lowest index, as in the kernels. They do not validate their arguments (the compiled backends do): they are
meant for correct inputs, as test oracles and as the fallback where no compiled module exists.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def _lengths(lengths: Optional[Tensor], B: int, P: int, device) -> Tensor:
    if lengths is None:
        return torch.full((B,), P, dtype=torch.int64, device=device)
    return lengths.to(device=device, dtype=torch.int64)


def pairwise_sq_dists(p1: Tensor, p2: Tensor) -> Tensor:
    """(B, P1, D), (B, P2, D) -> (B, P1, P2) squared distances, as sum of squared differences."""
    return ((p1[:, :, None, :] - p2[:, None, :, :]) ** 2).sum(-1)


def sample_farthest_points_idx(points: Tensor, lengths: Optional[Tensor], start: Optional[Tensor], K: int) -> Tensor:
    """Farthest point sampling -> idx (B, K) int64, -1 where K exceeds a cloud's length.

    One vectorised distance update over the whole batch per selected point.
    """
    B, N, _ = points.shape
    dev = points.device
    lens = _lengths(lengths, B, N, dev)
    valid = torch.arange(N, device=dev)[None, :] < lens[:, None]  # (B, N)
    dist = torch.full((B, N), float("inf"), dtype=points.dtype, device=dev)
    dist = dist.masked_fill(~valid, -1.0)  # never selected
    sel = torch.zeros(B, dtype=torch.int64, device=dev) if start is None else start.to(torch.int64).clone()
    idx = torch.full((B, K), -1, dtype=torch.int64, device=dev)
    batch = torch.arange(B, device=dev)
    for k in range(K):
        active = k < lens
        idx[:, k] = torch.where(active, sel, torch.full_like(sel, -1))
        last = points[batch, sel.clamp(min=0, max=max(N - 1, 0))] if N > 0 else None
        if last is None or k + 1 == K:
            break
        d = ((points - last[:, None, :]) ** 2).sum(-1)
        dist = torch.where(valid, torch.minimum(dist, d), dist)
        sel = dist.argmax(dim=1)  # first index of the maximum
    return idx


def knn_points_idx(p1: Tensor, p2: Tensor, lengths1: Optional[Tensor], lengths2: Optional[Tensor],
                   K: int) -> tuple[Tensor, Tensor]:
    """K nearest neighbours -> (dists (B, P1, K) squared, ascending; idx (B, P1, K)); padding is 0, and a p2
    cloud of length 0 gives idx -1 and dists +inf."""
    B, P1, _ = p1.shape
    P2 = p2.shape[1]
    l1 = _lengths(lengths1, B, P1, p1.device)
    l2 = _lengths(lengths2, B, P2, p1.device)
    d = pairwise_sq_dists(p1, p2)
    invalid2 = torch.arange(P2, device=p1.device)[None, None, :] >= l2[:, None, None]
    d = d.masked_fill(invalid2, float("inf"))
    kk = min(K, P2)
    # A stable sort keeps equal distances in index order (topk does not promise that).
    dists, idx = torch.sort(d, dim=2, stable=True)
    dists, idx = dists[:, :, :kk], idx[:, :, :kk]
    if kk < K:
        dists = torch.cat([dists, dists.new_zeros(B, P1, K - kk)], 2)
        idx = torch.cat([idx, idx.new_zeros(B, P1, K - kk)], 2)
    pad = (torch.arange(K, device=p1.device)[None, None, :] >= l2[:, None, None]) | (
        torch.arange(P1, device=p1.device)[None, :, None] >= l1[:, None, None])
    dists, idx = dists.masked_fill(pad, 0.0), idx.masked_fill(pad, 0)
    empty = (l2 == 0)[:, None, None]  # a cloud without points: no neighbour to name
    return dists.masked_fill(empty, float("inf")), idx.masked_fill(empty, -1)


def ball_query_idx(p1: Tensor, p2: Tensor, lengths1: Optional[Tensor], lengths2: Optional[Tensor], K: int,
                   radius: float) -> tuple[Tensor, Tensor]:
    """First K points of p2 (index order) with squared distance < radius^2 -> (dists, idx); padding 0 / -1."""
    B, P1, _ = p1.shape
    P2 = p2.shape[1]
    l1 = _lengths(lengths1, B, P1, p1.device)
    l2 = _lengths(lengths2, B, P2, p1.device)
    d = pairwise_sq_dists(p1, p2)
    j = torch.arange(P2, device=p1.device)
    inside = (d < radius * radius) & (j[None, None, :] < l2[:, None, None]) & (
        torch.arange(P1, device=p1.device)[None, :, None] < l1[:, None, None])
    key = torch.where(inside, j, j + P2)  # points inside sort first, each group in index order
    order = torch.sort(key, dim=2).indices[:, :, :K]
    found = torch.gather(inside, 2, order)
    dists = torch.gather(d, 2, order).masked_fill(~found, 0.0)
    idx = order.masked_fill(~found, -1)
    if order.shape[2] < K:
        pad = K - order.shape[2]
        dists = torch.cat([dists, dists.new_zeros(B, P1, pad)], 2)
        idx = torch.cat([idx, idx.new_full((B, P1, pad), -1)], 2)
    return dists, idx


def gather_columns(features: Tensor, idx: Tensor) -> Tensor:
    """features (B, C, N), idx (B, M) -> (B, C, M)."""
    B, C, _ = features.shape
    return torch.gather(features, 2, idx[:, None, :].expand(B, C, idx.shape[1]))


def three_interpolate(features: Tensor, idx: Tensor, weight: Tensor) -> Tensor:
    """features (B, C, M), idx (B, N, 3), weight (B, N, 3) -> (B, C, N)."""
    B, C, _ = features.shape
    N = idx.shape[1]
    g = gather_columns(features, idx.reshape(B, N * 3)).view(B, C, N, 3)
    return (g * weight[:, None, :, :]).sum(-1)
