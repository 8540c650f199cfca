"""PointNet++ building blocks (Qi et al. 2017) on the library's point-cloud ops.

Conventions: coordinates are (B, N, 3) (PyTorch3D's layout), features are (B, C, N) (channels first, as in
the PointNet++ code bases and mmcv). Both layers export to ONNX with standard operators.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .. import ops


def _shared_mlp(in_channels: int, channels: Sequence[int], conv: type, norm: type) -> nn.Sequential:
    layers: list[nn.Module] = []
    for out_channels in channels:
        layers += [conv(in_channels, out_channels, 1, bias=False), norm(out_channels), nn.ReLU(inplace=True)]
        in_channels = out_channels
    return nn.Sequential(*layers)


class PointNetSetAbstraction(nn.Module):
    """Single-scale-grouping set abstraction: farthest point sampling of ``npoint`` centres, ball query of
    ``nsample`` neighbours within ``radius``, centred coordinates concatenated with the neighbours' features,
    a shared MLP (1x1 conv, BatchNorm, ReLU) and a max over the neighbours.

    Missing neighbours repeat the first one found (the centre itself is always found), as in PointNet++.
    ``group_all=True`` groups the whole cloud around the origin (the last SA layer of a classifier).

    forward(xyz (B, N, 3), features (B, in_channels, N) or None)
        -> (new_xyz (B, npoint, 3) or (B, 1, 3) zeros, new_features (B, mlp[-1], npoint or 1))
    """

    def __init__(self, npoint: int, radius: float, nsample: int, in_channels: int, mlp: Sequence[int],
                 group_all: bool = False):
        super().__init__()
        self.npoint, self.radius, self.nsample, self.group_all = npoint, radius, nsample, group_all
        self.mlp = _shared_mlp(in_channels + 3, mlp, nn.Conv2d, nn.BatchNorm2d)

    def forward(self, xyz: Tensor, features: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        B = xyz.shape[0]
        if self.group_all:
            new_xyz = xyz.new_zeros(B, 1, 3)
            grouped = xyz.transpose(1, 2)[:, :, None, :]  # (B, 3, 1, N)
            if features is not None:
                grouped = torch.cat([grouped, features[:, :, None, :]], dim=1)
        else:
            new_xyz, _ = ops.sample_farthest_points(xyz, K=self.npoint)
            _, idx, _ = ops.ball_query(new_xyz, xyz, K=self.nsample, radius=self.radius, return_nn=False)
            idx = torch.where(idx < 0, idx[..., :1], idx)
            grouped = ops.grouping_operation(xyz.transpose(1, 2).contiguous(), idx)  # (B, 3, npoint, nsample)
            grouped = grouped - new_xyz.transpose(1, 2)[..., None]
            if features is not None:
                grouped = torch.cat([grouped, ops.grouping_operation(features.contiguous(), idx)], dim=1)
        return new_xyz, self.mlp(grouped).amax(dim=-1)


class PointNetFeaturePropagation(nn.Module):
    """Feature propagation: features of the coarse cloud ``xyz2`` interpolated onto ``xyz1`` with inverse-distance
    weights of the three nearest neighbours, concatenated with ``xyz1``'s own features, then a shared MLP.

    forward(xyz1 (B, N, 3), xyz2 (B, S, 3), features1 (B, C1, N) or None, features2 (B, C2, S))
        -> (B, mlp[-1], N); in_channels = C1 + C2.
    """

    def __init__(self, in_channels: int, mlp: Sequence[int]):
        super().__init__()
        self.mlp = _shared_mlp(in_channels, mlp, nn.Conv1d, nn.BatchNorm1d)

    def forward(self, xyz1: Tensor, xyz2: Tensor, features1: Optional[Tensor], features2: Tensor) -> Tensor:
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
