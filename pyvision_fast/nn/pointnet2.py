"""PointNet++ building blocks (Qi et al. 2017) on the library's point-cloud ops.

Conventions: coordinates are (B, N, 3) (PyTorch3D's layout), features are (B, C, N) (channels first, as in
the PointNet++ code bases and mmcv). Both layers export to ONNX with standard operators.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ._checks import check_input, check_same


def _shared_mlp(in_channels: int, channels: Sequence[int], conv: type, norm: type) -> nn.Sequential:
    layers: list[nn.Module] = []
    for out_channels in channels:
        layers += [conv(in_channels, out_channels, 1, bias=False), norm(out_channels), nn.ReLU(inplace=True)]
        in_channels = out_channels
    return nn.Sequential(*layers)


def _conv_bn_relu(convs: nn.ModuleList, bns: nn.ModuleList, x: Tensor) -> Tensor:
    for conv, bn in zip(convs, bns):
        x = torch.relu(bn(conv(x)))
    return x


def _official_mlp(in_channels: int, channels: Sequence[int]) -> tuple[nn.ModuleList, nn.ModuleList]:
    """The PointNet++ code's shared MLP: 1x1 Conv2d with bias, BatchNorm2d, as two parallel ModuleLists."""
    convs, bns = nn.ModuleList(), nn.ModuleList()
    for out_channels in channels:
        convs.append(nn.Conv2d(in_channels, out_channels, 1))
        bns.append(nn.BatchNorm2d(out_channels))
        in_channels = out_channels
    return convs, bns


def _check_points(module: str, xyz: Tensor, features: Optional[Tensor], in_channels: int) -> None:
    """xyz (B, N, 3); features (B, in_channels, N), or None when in_channels is 0."""
    check_input(module, "xyz", xyz, ("B", "N", 3))
    if features is None:
        if in_channels:
            raise ValueError(f"{module}: features of shape (B, {in_channels}, N) expected (in_channels="
                             f"{in_channels}), got None")
        return
    check_input(module, "features", features, ("B", in_channels, "N"))
    check_same(module, "features", features, 0, "xyz's batch", xyz.shape[0])
    check_same(module, "features", features, 2, "xyz's number of points", xyz.shape[1])


def _ball_idx(xyz: Tensor, centres: Tensor, radius: float, nsample: int) -> Tensor:
    """(B, S, nsample) int64 neighbour indices; missing neighbours repeat the first one found."""
    _, idx, _ = ops.ball_query(centres, xyz, K=nsample, radius=radius, return_nn=False)
    return torch.where(idx < 0, idx[..., :1], idx)


def _group(xyz: Tensor, centres: Tensor, features: Optional[Tensor], idx: Tensor, xyz_first: bool) -> Tensor:
    """Grouping around ``centres`` (B, S, 3): (B, 3 + C, S, nsample) with centred coordinates and the
    neighbours' features, coordinates first (``xyz_first``) or last."""
    grouped = ops.grouping_operation(xyz.transpose(1, 2).contiguous(), idx) - centres.transpose(1, 2)[..., None]
    if features is None:
        return grouped
    grouped_features = ops.grouping_operation(features.contiguous(), idx)
    parts = [grouped, grouped_features] if xyz_first else [grouped_features, grouped]
    return torch.cat(parts, dim=1)


def _grouped_first_conv(conv: nn.Module, xyz: Tensor, centres: Tensor, features: Tensor, idx: Tensor,
                        xyz_first: bool) -> Tensor:
    """``conv(_group(...))`` (B, C1, S, nsample) without the grouped input: the 1x1 convolution is linear, so
    W [x_j - c; f_j] + b = (W [x_j; f_j]) - (W_xyz c - b). The first product is taken once per point (B, C1,
    N) and gathered; the second once per centre. Fewer multiply-adds and a C1- instead of (3 + C)-channel
    gather wherever C1 <= 3 + C (PointNet++'s second set abstraction: 323 -> 64/128/128 in MSG, 131 -> 128 in
    SSG)."""
    w = conv.weight.flatten(1)  # (C1, 3 + C)
    xyz_t = xyz.transpose(1, 2)
    inputs = torch.cat([xyz_t, features] if xyz_first else [features, xyz_t], dim=1)
    per_point = F.conv1d(inputs, w[..., None])  # (B, C1, N)
    w_xyz = w[:, :3] if xyz_first else w[:, -3:]
    centre_term = torch.matmul(w_xyz, centres.transpose(1, 2))  # (B, C1, S)
    if conv.bias is not None:
        centre_term = centre_term - conv.bias[:, None]
    return ops.grouping_operation(per_point.contiguous(), idx) - centre_term[..., None]


def _run_mlp(pairs: Sequence[tuple[nn.Module, nn.Module]], xyz: Tensor, centres: Tensor,
             features: Optional[Tensor], idx: Tensor, xyz_first: bool) -> Tensor:
    """The shared MLP (1x1 conv, BN, ReLU per pair) over the grouped neighbourhood, max over the neighbours:
    (B, C_last, S)."""
    first_conv = pairs[0][0]
    if features is not None and first_conv.weight.shape[0] <= first_conv.weight.shape[1]:
        x = _grouped_first_conv(first_conv, xyz, centres, features, idx, xyz_first)
    else:
        x = first_conv(_group(xyz, centres, features, idx, xyz_first))
    x = torch.relu(pairs[0][1](x))
    for conv, bn in pairs[1:]:
        x = torch.relu(bn(conv(x)))
    return x.amax(dim=-1)


class PointNetSetAbstraction(nn.Module):
    """Single-scale-grouping set abstraction: farthest point sampling of ``npoint`` centres, ball query of
    ``nsample`` neighbours within ``radius``, centred coordinates concatenated with the neighbours' features,
    a shared MLP (1x1 conv, BatchNorm, ReLU) and a max over the neighbours.

    Missing neighbours repeat the first one found (the centre itself is always found), as in PointNet++.
    ``group_all=True`` groups the whole cloud around the origin (the last SA layer of a classifier).

    ``layout="sequential"`` (default) holds the MLP as ``mlp`` (an ``nn.Sequential`` of bias-free convs);
    ``layout="official"`` holds it as the PointNet++ code does (yanx27/Pointnet_Pointnet2_pytorch
    ``models/pointnet2_utils.py``): ``mlp_convs.i`` (Conv2d with bias) and ``mlp_bns.i``, so that the
    official classifiers' state_dicts load and their parameter counts match. The computation is the same.

    Where the first MLP layer has no more outputs than inputs (3 + in_channels), it is applied per point
    before the grouping and the centres' share is subtracted after it (``_grouped_first_conv``): the same
    values without the (B, 3 + C, npoint, nsample) grouped input.

    forward(xyz (B, N, 3), features (B, in_channels, N) or None)
        -> (new_xyz (B, npoint, 3) or (B, 1, 3) zeros, new_features (B, mlp[-1], npoint or 1))
    """

    def __init__(self, npoint: int, radius: float, nsample: int, in_channels: int, mlp: Sequence[int],
                 group_all: bool = False, layout: str = "sequential"):
        super().__init__()
        if layout not in ("sequential", "official"):
            raise ValueError(f"PointNetSetAbstraction: layout must be 'sequential' or 'official', got {layout!r}")
        self.npoint, self.radius, self.nsample, self.group_all = npoint, radius, nsample, group_all
        self.layout = layout
        if layout == "sequential":
            self.mlp = _shared_mlp(in_channels + 3, mlp, nn.Conv2d, nn.BatchNorm2d)
        else:
            self.mlp_convs, self.mlp_bns = _official_mlp(in_channels + 3, mlp)

    def _pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        if self.layout == "sequential":
            return [(self.mlp[i], self.mlp[i + 1]) for i in range(0, len(self.mlp), 3)]
        return list(zip(self.mlp_convs, self.mlp_bns))

    def _run_mlp(self, x: Tensor) -> Tensor:
        if self.layout == "sequential":
            return self.mlp(x)
        return _conv_bn_relu(self.mlp_convs, self.mlp_bns, x)

    def _in_channels(self) -> int:
        """The feature channels the layer takes (the first MLP layer's inputs less the 3 coordinates)."""
        first = self.mlp[0] if self.layout == "sequential" else self.mlp_convs[0]
        return first.in_channels - 3

    def forward(self, xyz: Tensor, features: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        _check_points("PointNetSetAbstraction", xyz, features, self._in_channels())
        B = xyz.shape[0]
        if self.group_all:
            new_xyz = xyz.new_zeros(B, 1, 3)
            grouped = xyz.transpose(1, 2)[:, :, None, :]  # (B, 3, 1, N)
            if features is not None:
                grouped = torch.cat([grouped, features[:, :, None, :]], dim=1)
            return new_xyz, self._run_mlp(grouped).amax(dim=-1)
        new_xyz, _ = ops.sample_farthest_points(xyz, K=self.npoint)
        idx = _ball_idx(xyz, new_xyz, self.radius, self.nsample)
        return new_xyz, _run_mlp(self._pairs(), xyz, new_xyz, features, idx, xyz_first=True)


class PointNetSetAbstractionMsg(nn.Module):
    """Multi-scale-grouping set abstraction (PointNet++ MSG): one farthest point sampling of ``npoint``
    centres, then for each scale i a ball query of ``nsample_list[i]`` neighbours within ``radius_list[i]``,
    the neighbours' features concatenated with their centred coordinates (features first, as the official
    code), the scale's shared MLP ``mlp_list[i]`` and a max over the neighbours; the scales' outputs are
    concatenated along channels.

    Parameters are named as in the PointNet++ code (``conv_blocks.i.j`` Conv2d with bias, ``bn_blocks.i.j``).
    The first layer of each scale is computed per point when it narrows the input (see
    PointNetSetAbstraction).

    forward(xyz (B, N, 3), features (B, in_channels, N) or None)
        -> (new_xyz (B, npoint, 3), new_features (B, sum_i mlp_list[i][-1], npoint))
    """

    def __init__(self, npoint: int, radius_list: Sequence[float], nsample_list: Sequence[int], in_channels: int,
                 mlp_list: Sequence[Sequence[int]]):
        super().__init__()
        if not (len(radius_list) == len(nsample_list) == len(mlp_list)) or not radius_list:
            raise ValueError("PointNetSetAbstractionMsg: radius_list, nsample_list and mlp_list must have the same "
                             f"non-zero length, got {len(radius_list)}, {len(nsample_list)}, {len(mlp_list)}")
        self.npoint = npoint
        self.radius_list, self.nsample_list = list(radius_list), list(nsample_list)
        self.conv_blocks, self.bn_blocks = nn.ModuleList(), nn.ModuleList()
        for mlp in mlp_list:
            convs, bns = _official_mlp(in_channels + 3, mlp)
            self.conv_blocks.append(convs)
            self.bn_blocks.append(bns)
        self.out_channels = sum(mlp[-1] for mlp in mlp_list)

    def forward(self, xyz: Tensor, features: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        _check_points("PointNetSetAbstractionMsg", xyz, features, self.conv_blocks[0][0].in_channels - 3)
        new_xyz, _ = ops.sample_farthest_points(xyz, K=self.npoint)
        outs = []
        for radius, nsample, convs, bns in zip(self.radius_list, self.nsample_list, self.conv_blocks,
                                               self.bn_blocks):
            idx = _ball_idx(xyz, new_xyz, radius, nsample)
            outs.append(_run_mlp(list(zip(convs, bns)), xyz, new_xyz, features, idx, xyz_first=False))
        return new_xyz, torch.cat(outs, dim=1)


class PointNetFeaturePropagation(nn.Module):
    """Feature propagation: features of the coarse cloud ``xyz2`` interpolated onto ``xyz1`` with
    inverse-distance weights of the three nearest neighbours, concatenated with ``xyz1``'s own features, then
    a shared MLP.

    forward(xyz1 (B, N, 3), xyz2 (B, S, 3), features1 (B, C1, N) or None, features2 (B, C2, S))
        -> (B, mlp[-1], N); in_channels = C1 + C2.
    """

    def __init__(self, in_channels: int, mlp: Sequence[int]):
        super().__init__()
        self.mlp = _shared_mlp(in_channels, mlp, nn.Conv1d, nn.BatchNorm1d)

    def _check(self, xyz1: Tensor, xyz2: Tensor, features1: Optional[Tensor], features2: Tensor) -> None:
        name = "PointNetFeaturePropagation"
        in_channels = self.mlp[0].in_channels
        check_input(name, "xyz1", xyz1, ("B", "N", 3))
        check_input(name, "xyz2", xyz2, ("B", "S", 3))
        check_same(name, "xyz2", xyz2, 0, "xyz1's batch", xyz1.shape[0])
        c1 = 0
        if features1 is not None:
            check_input(name, "features1", features1, ("B", "C1", "N"))
            check_same(name, "features1", features1, 0, "xyz1's batch", xyz1.shape[0])
            check_same(name, "features1", features1, 2, "xyz1's number of points", xyz1.shape[1])
            c1 = features1.shape[1]
        if c1 >= in_channels:
            raise ValueError(f"{name}: features1 has {c1} channels, expected fewer than in_channels={in_channels} "
                             f"(features1 and features2 together have in_channels); got shape "
                             f"{tuple(features1.shape)}")
        check_input(name, "features2", features2, ("B", in_channels - c1, "S"))
        check_same(name, "features2", features2, 0, "xyz2's batch", xyz2.shape[0])
        check_same(name, "features2", features2, 2, "xyz2's number of points", xyz2.shape[1])

    def forward(self, xyz1: Tensor, xyz2: Tensor, features1: Optional[Tensor], features2: Tensor) -> Tensor:
        self._check(xyz1, xyz2, features1, features2)
        if xyz2.shape[1] == 1:
            interpolated = features2.expand(-1, -1, xyz1.shape[1])
        else:
            dist, idx = ops.three_nn(xyz1, xyz2)
            weight = 1.0 / (dist + 1e-8)
            weight = weight / weight.sum(dim=-1, keepdim=True)
            interpolated = ops.three_interpolate(features2.contiguous(), idx, weight)
        if features1 is not None:
            interpolated = torch.cat([features1, interpolated], dim=1)
        return self.mlp(interpolated)
