"""DGCNN (Wang et al., "Dynamic Graph CNN for Learning on Point Clouds", TOG 2019) classifier as PointCAT
trains it (shikiw/PointCAT ``model/classifier/dgcnn.py``, from WangYueFt/dgcnn ``pytorch/model.py``), on the
library's ``knn_points`` and ``grouping_operation``. Interface as in ``models/pointnet.py``.

Layers and state_dict keys are the official ones: four EdgeConvs ``conv1``-``conv4`` (``Sequential(Conv2d(2C,
C', 1, bias=False), BatchNorm2d, LeakyReLU(0.2))`` with 64, 64, 128, 256 channels; the BatchNorms are also
registered as ``bn1``-``bn4``, so each appears under two keys, as in the official state_dict), ``conv5``
(Conv1d 512 -> 1024, ``bn5``), max and mean pooling concatenated (2048), ``linear1`` 512 (no bias, ``bn6``,
LeakyReLU, dropout), ``linear2`` 256 (``bn7``, LeakyReLU, dropout: ``feature``), ``linear3`` num_classes.
1,809,576 parameters for 40 classes.

EdgeConv computes the same values as the official ``conv(cat(x_j - x_i, x_i))`` over the k = 20 nearest
neighbours j of each point i (the point itself included, found with ``knn_points`` in the feature space of the
layer's input), without building the (B, 2C, N, k) edge tensor: the 1x1 convolution is linear, so with its
weight split as [W_a | W_b], W_a (x_j - x_i) + W_b x_i = (W_a x_j) + (W_b - W_a) x_i. Both products are taken
once per point (B, C', N), and only W_a x is gathered over the neighbours: k times fewer multiply-adds. In
eval mode the BatchNorm + LeakyReLU that follow are a monotone function per channel (increasing where the BN
scale is >= 0, decreasing where it is negative), so the max over the neighbours is taken before them, on the
gathered values (max where the scale is >= 0, min elsewhere, as one max over values negated where the scale is
negative).

Neighbour ties: ``knn_points`` breaks equal distances by the lower index; the official ``topk`` on
-||x_i||^2 + 2 x_i.x_j - ||x_j||^2 breaks them arbitrarily and computes distances with a different rounding.
The outputs differ only where the k-th and (k+1)-th neighbours are (nearly) equidistant.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ._registry import register_model
from .pointnet import PointCloudClassifier, check_points

__all__ = ["DGCNN", "dgcnn", "edge_conv"]


def edge_conv(x: Tensor, block: nn.Sequential, k: int) -> Tensor:
    """One EdgeConv: x (B, C, N) float -> (B, C', N), the max over the k nearest neighbours j (in x's feature
    space) of LeakyReLU(BN(W [x_j - x_i; x_i])) with ``block = Sequential(Conv2d(2C, C', 1, bias=False),
    BatchNorm2d(C'), LeakyReLU)``."""
    conv, bn, act = block[0], block[1], block[2]
    C = x.shape[1]
    idx = ops.knn_points(x.transpose(1, 2).contiguous(), x.transpose(1, 2).contiguous(), K=k).idx  # (B, N, k)
    w = conv.weight.flatten(1)  # (C', 2C)
    w_a, w_b = w[:, :C], w[:, C:]
    per_point = F.conv1d(x, torch.cat([w_a, w_b - w_a], dim=0)[..., None])  # (B, 2C', N)
    neighbour, centre = per_point.chunk(2, dim=1)
    if bn.training or not bn.track_running_stats or bn.running_var is None:
        gathered = ops.grouping_operation(neighbour.contiguous(), idx)  # (B, C', N, k)
        return act(bn(gathered + centre[..., None])).amax(dim=-1)
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps) if bn.affine else torch.rsqrt(bn.running_var + bn.eps)
    # max over the neighbours where the BN scale is >= 0, min (= -max of the negated values) elsewhere: one
    # reduction over the gathered (B, C', N, k) values
    sign = torch.where(scale >= 0, 1.0, -1.0).to(neighbour.dtype)[None, :, None]
    extreme = ops.grouping_operation((neighbour * sign).contiguous(), idx).amax(dim=-1) * sign
    return act(bn((extreme + centre)[..., None]))[..., 0]


class DGCNN(PointCloudClassifier):
    """DGCNN classifier (see the module docstring). forward(points (B, N >= k, 3)) -> (feature (B, 256),
    logits (B, num_classes))."""

    classifier_name = "linear3"

    def __init__(self, num_classes: int = 40, k: int = 20, emb_dims: int = 1024, dropout: float = 0.5,
                 normal_channel: bool = False):
        super().__init__()
        self.num_classes, self.k, self.in_channels = num_classes, k, 6 if normal_channel else 3
        self.min_points = k
        self.bn1, self.bn2, self.bn3, self.bn4 = (nn.BatchNorm2d(c) for c in (64, 64, 128, 256))
        self.bn5 = nn.BatchNorm1d(emb_dims)

        def block(cin: int, cout: int, bn: nn.Module) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), bn, nn.LeakyReLU(negative_slope=0.2))

        self.conv1 = block(2 * self.in_channels, 64, self.bn1)
        self.conv2 = block(64 * 2, 64, self.bn2)
        self.conv3 = block(64 * 2, 128, self.bn3)
        self.conv4 = block(128 * 2, 256, self.bn4)
        self.conv5 = nn.Sequential(nn.Conv1d(512, emb_dims, 1, bias=False), self.bn5, nn.LeakyReLU(0.2))
        self.linear1, self.bn6, self.dp1 = nn.Linear(emb_dims * 2, 512, bias=False), nn.BatchNorm1d(512), \
            nn.Dropout(dropout)
        self.linear2, self.bn7, self.dp2 = nn.Linear(512, 256), nn.BatchNorm1d(256), nn.Dropout(dropout)
        self.linear3 = nn.Linear(256, num_classes)

    def forward_global(self, points: Tensor) -> Tensor:
        """points (B, N, in_channels) -> the pooled (max ++ mean) embedding (B, 2 * emb_dims)."""
        check_points(points, self.in_channels, self.min_points, type(self).__name__)
        x = points.transpose(1, 2)
        feats = []
        for block in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = edge_conv(x, block, self.k)
            feats.append(x)
        x = self.conv5(torch.cat(feats, dim=1))
        return torch.cat([x.amax(dim=-1), x.mean(dim=-1)], dim=1)

    def forward(self, points: Tensor) -> tuple[Tensor, Tensor]:
        x = self.forward_global(points)
        x = self.dp1(F.leaky_relu(self.bn6(self.linear1(x)), negative_slope=0.2))
        feature = self.dp2(F.leaky_relu(self.bn7(self.linear2(x)), negative_slope=0.2))
        return feature, self.linear3(feature)


@register_model
def dgcnn(num_classes: int = 40, k: int = 20, emb_dims: int = 1024, dropout: float = 0.5,
          normal_channel: bool = False) -> DGCNN:
    """DGCNN with k = 20 EdgeConvs (ModelNet40 configuration: emb_dims 1024, dropout 0.5). Input (B, N >= k, 3)."""
    return DGCNN(num_classes, k, emb_dims, dropout, normal_channel)
