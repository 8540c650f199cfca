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


def pairwise_dists(p1: Tensor, p2: Tensor, norm: int = 2) -> Tensor:
    """(B, P1, D), (B, P2, D) -> (B, P1, P2): squared Euclidean distances (norm 2) or L1 distances (norm 1,
    the sum of absolute differences, not squared), as PyTorch3D's knn_points reports them."""
    if norm == 1:
        return (p1[:, :, None, :] - p2[:, None, :, :]).abs().sum(-1)
    return pairwise_sq_dists(p1, p2)


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


def furthest_point_sample_with_dist_idx(points_dist: Tensor, K: int) -> Tensor:
    """mmcv's ``furthest_point_sample_with_dist``: farthest point sampling on a given (B, N, N) distance
    matrix -> idx (B, K) int64. Starts at point 0; each step lowers every point's distance to the selected set
    with the row of the last selected point (``dist[b, last, :]``) and selects the first maximum. Where K
    exceeds N the extra idx are -1."""
    B, N, _ = points_dist.shape
    idx = torch.full((B, K), -1, dtype=torch.int64, device=points_dist.device)
    if N == 0:
        return idx
    rows = points_dist.reshape(B * N, N)
    first_row = torch.arange(B, device=points_dist.device) * N
    sel = torch.zeros(B, dtype=torch.int64, device=points_dist.device)
    temp = torch.full((B, N), float("inf"), dtype=points_dist.dtype, device=points_dist.device)
    for k in range(min(K, N)):
        idx[:, k] = sel
        temp = torch.minimum(temp, rows.index_select(0, first_row + sel))  # each cloud's row of its last pick
        sel = temp.argmax(dim=1)
    return idx


def knn_points_idx(p1: Tensor, p2: Tensor, lengths1: Optional[Tensor], lengths2: Optional[Tensor],
                   K: int, norm: int = 2) -> tuple[Tensor, Tensor]:
    """K nearest neighbours -> (dists (B, P1, K) ascending: squared Euclidean for norm 2, L1 for norm 1;
    idx (B, P1, K)); padding is 0, and a p2 cloud of length 0 gives idx -1 and dists +inf."""
    B, P1, _ = p1.shape
    P2 = p2.shape[1]
    l1 = _lengths(lengths1, B, P1, p1.device)
    l2 = _lengths(lengths2, B, P2, p1.device)
    d = pairwise_dists(p1, p2, norm)
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


def ball_query_mmcv_idx(min_radius: float, max_radius: float, sample_num: int, xyz: Tensor,
                        center_xyz: Tensor) -> Tensor:
    """mmcv's ``ball_query``: xyz (B, N, D), center_xyz (B, M, D) -> idx (B, M, sample_num) int64. A point k
    is a hit of a centre when its squared distance d2 is 0 or min_radius^2 <= d2 < max_radius^2; the first
    sample_num hits in index order fill the slots, the remaining slots repeat the first hit, and a centre
    without hits gets 0 everywhere."""
    d = pairwise_sq_dists(center_xyz, xyz)  # (B, M, N)
    N = xyz.shape[1]
    if N == 0:
        return torch.zeros(*d.shape[:2], sample_num, dtype=torch.int64, device=xyz.device)
    hit = (d == 0) | ((d >= min_radius * min_radius) & (d < max_radius * max_radius))
    j = torch.arange(N, device=xyz.device)
    order = torch.sort(torch.where(hit, j, j + N), dim=2).indices[:, :, :sample_num]  # hits first, index order
    found = torch.gather(hit, 2, order)
    first = torch.where(found[..., :1], order[..., :1], torch.zeros_like(order[..., :1]))
    idx = torch.where(found, order, first)
    if idx.shape[2] < sample_num:
        idx = torch.cat([idx, first.expand(-1, -1, sample_num - idx.shape[2])], 2)
    return idx


def stacked_ball_query_idx(min_radius: float, max_radius: float, sample_num: int, xyz: Tensor, center_xyz: Tensor,
                           xyz_batch_cnt: Tensor, center_xyz_batch_cnt: Tensor) -> Tensor:
    """Ball query on stacked clouds (mmcv's ``ball_query`` with batch counts): xyz (N1 + N2 + ..., D) and
    center_xyz (M1 + M2 + ..., D) -> idx (M1 + M2 + ..., sample_num) int64 local to each cloud (0 is the cloud's
    first point). Hits as in ``ball_query_mmcv_idx``; a centre without hits gets -1 in its first slot and 0 in
    the others (mmcv's stacked marker for an empty ball)."""
    out = []
    xs = 0
    cs = 0
    for n, m in zip(xyz_batch_cnt.tolist(), center_xyz_batch_cnt.tolist()):
        idx = ball_query_mmcv_idx(min_radius, max_radius, sample_num, xyz[None, xs:xs + n],
                                  center_xyz[None, cs:cs + m])[0]
        d = pairwise_sq_dists(center_xyz[None, cs:cs + m], xyz[None, xs:xs + n])[0]
        empty = ~((d == 0) | ((d >= min_radius * min_radius) & (d < max_radius * max_radius))).any(1)
        idx[:, 0] = torch.where(empty, torch.full_like(idx[:, 0], -1), idx[:, 0])
        out.append(idx)
        xs += n
        cs += m
    if not out:
        return torch.zeros(0, sample_num, dtype=torch.int64, device=xyz.device)
    return torch.cat(out)


def stacked_grouping(features: Tensor, idx: Tensor, features_batch_cnt: Tensor, idx_batch_cnt: Tensor) -> Tensor:
    """Grouping on stacked clouds (mmcv's ``grouping_operation`` with batch counts): features (N1 + N2 + ...,
    C), idx (M1 + M2 + ..., S) local to each cloud -> (M1 + M2 + ..., C, S)."""
    out = []
    fs = 0
    rs = 0
    for n, m in zip(features_batch_cnt.tolist(), idx_batch_cnt.tolist()):
        f = features[fs:fs + n]  # (n, C)
        out.append(f[idx[rs:rs + m]].permute(0, 2, 1))  # (m, S, C) -> (m, C, S)
        fs += n
        rs += m
    if not out:
        return features.new_zeros(0, features.shape[1], idx.shape[1])
    return torch.cat(out)


def chamfer_distance(x: Tensor, y: Tensor, x_lengths: Optional[Tensor] = None, y_lengths: Optional[Tensor] = None,
                     weights: Optional[Tensor] = None, batch_reduction: Optional[str] = "mean",
                     point_reduction: Optional[str] = "mean", norm: int = 2, single_directional: bool = False):
    """PyTorch3D's chamfer distance without normals, one cloud at a time: each point's distance to its
    nearest neighbour in the other cloud (squared Euclidean or L1), 0 for padded points and against an empty
    cloud, times the cloud's weight; per cloud reduced by "mean" | "sum" | "max" over points (the two
    directions added, or for "max" their maximum), then over the batch ("mean" divides by the weights' sum
    where weights are given). point_reduction None returns the per-point terms (B, N) and (B, M)."""
    B, N, _ = x.shape
    M = y.shape[1]
    xl = _lengths(x_lengths, B, N, x.device)
    yl = _lengths(y_lengths, B, M, x.device)

    def direction(a, b, al, bl, P):
        terms = []
        for i in range(B):
            t = a.new_zeros(P)
            if int(bl[i]) > 0 and int(al[i]) > 0:
                d = pairwise_dists(a[i:i + 1, :al[i]], b[i:i + 1, :bl[i]], norm)[0]
                t = torch.cat([d.min(1).values, a.new_zeros(P - int(al[i]))])
            terms.append(t * (weights[i] if weights is not None else 1))
        terms = torch.stack(terms) if terms else a.new_zeros(0, P)
        if point_reduction is None:
            return terms
        if point_reduction == "max":
            return terms.max(1).values if P > 0 else terms.new_zeros(B)
        total = terms.sum(1)
        return total / al.clamp(min=1) if point_reduction == "mean" else total

    cx = direction(x, y, xl, yl, N)
    if single_directional:
        loss = cx
    else:
        cy = direction(y, x, yl, xl, M)
        if point_reduction is None:
            return cx, cy
        loss = torch.maximum(cx, cy) if point_reduction == "max" else cx + cy
    if point_reduction is None or batch_reduction is None:
        return loss
    loss = loss.sum()
    if batch_reduction == "mean":
        w = weights.sum() if weights is not None else None
        loss = loss / (max(B, 1) if w is None else (1 if float(w) == 0 else w))
    return loss
