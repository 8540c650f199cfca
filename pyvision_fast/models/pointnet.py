"""Point-cloud classifiers of PointCAT (Huang et al., arXiv 2209.07788): PointNet, PointNet++ SSG/MSG (here)
and DGCNN (``models/dgcnn.py``), on the library's point ops.

Architectures, layer sizes and state_dict keys are those of the classifiers PointCAT trains
(shikiw/PointCAT ``model/classifier/*.py``, which take PointNet/PointNet++ from
yanx27/Pointnet_Pointnet2_pytorch and DGCNN from WangYueFt/dgcnn), so their checkpoints load with
``load_state_dict(strict=True)``. Parameter counts (ModelNet40, 40 classes, xyz input; tests assert them):
``pointnet`` 3,471,473 (with the 64-d feature transform), ``pointnet2_ssg`` 1,475,688, ``pointnet2_msg``
1,747,368, ``dgcnn`` 1,809,576 (counted on the official modules; their state_dicts load here with
strict=True).

Interface, the same for every classifier here:

* ``forward(points)`` with ``points`` (B, N, 3) float (``(B, N, 6)`` xyz + normals with
  ``normal_channel=True``) returns ``(feature (B, num_features), logits (B, num_classes))``. ``feature`` is
  the penultimate feature (the 256-d output of ``fc2``/``linear2`` after BN, ReLU/LeakyReLU and dropout,
  PointCAT's ``h``). ``logits`` are un-normalised: the official PointNet/PointNet++ return their
  ``log_softmax`` (take it to compare), DGCNN the same raw scores. A wrong rank or last dimension, a
  non-finite coordinate or too few points raise ValueError.
* ``get_classifier()`` is the final layer (``fc3``, DGCNN ``linear3``); ``set_classifier(module)`` puts
  another module there (PointCAT's projection head) and returns the old one; ``num_features`` is that layer's
  input size. With another module in place, ``logits`` is that module's output.
* ``regularization_loss()`` is the model's own training term for the last forward (PointNet: 0.001 times the
  feature-transform orthogonality loss, as its ``get_loss``; zero for the others); recipes add it to the loss.

Differences from the official code (all of the computation, not of the weights): farthest point sampling
starts at point 0 instead of a random point (deterministic; the official ``farthest_point_sample`` draws its
start), and the ball query takes points with squared distance ``< r^2`` (official ``<= r^2``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.pointnet2 import PointNetSetAbstraction, PointNetSetAbstractionMsg
from ..ops.pointcloud import check_finite_points
from ._registry import register_model

__all__ = ["PointCloudClassifier", "PointNetClassifier", "PointNet2Classifier", "check_points",
           "feature_transform_regularizer", "pointnet", "pointnet2_ssg", "pointnet2_msg"]


def check_points(points: Tensor, channels: int, min_points: int, name: str) -> None:
    """Validates a classifier input: a float tensor (B, N, channels) with N >= min_points and finite values
    (the value check is skipped while torch.compile/torch.export trace). Raises TypeError/ValueError naming
    ``name`` and, for non-finite values, the first bad cloud and point."""
    if not isinstance(points, Tensor):
        raise TypeError(f"{name}: points must be a torch.Tensor, got {type(points).__name__}")
    if not points.is_floating_point():
        raise TypeError(f"{name}: points must be a float tensor, got {points.dtype}")
    if points.dim() != 3 or points.shape[-1] != channels:
        raise ValueError(f"{name}: points must have shape (B, N, {channels}), got {tuple(points.shape)}")
    if points.shape[1] < min_points:
        raise ValueError(f"{name}: needs at least {min_points} points per cloud, got N={points.shape[1]}")
    check_finite_points(points, None, name)


class PointCloudClassifier(nn.Module):
    """Base of the classifiers: the swappable final layer named ``classifier_name`` and the shared interface."""

    classifier_name = "fc3"
    num_features = 256
    min_points = 1
    default_input_size = (1024, 3)  # (N, 3): pvf export's example input is (batch, 1024, 3)

    @property
    def head_keys(self) -> tuple[str, ...]:
        """state_dict prefixes of the classification layer (``create_model(checkpoint_path=...)`` leaves a
        head of another shape at its initialisation)."""
        return (self.classifier_name + ".",)

    def get_classifier(self) -> nn.Module:
        return getattr(self, self.classifier_name)

    def set_classifier(self, module: nn.Module) -> nn.Module:
        """Puts ``module`` in place of the final layer; returns the layer it replaces."""
        if not isinstance(module, nn.Module):
            raise TypeError(f"set_classifier: expected an nn.Module, got {type(module).__name__}")
        old = self.get_classifier()
        setattr(self, self.classifier_name, module)
        return old

    def regularization_loss(self) -> Tensor:
        """The model's own loss term for the last forward pass (zero unless a subclass defines one)."""
        p = next(self.parameters())
        return p.new_zeros(())

    def _split(self, points: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        """(B, N, 3 or 6) -> xyz (B, N, 3) contiguous, normals (B, 3, N) or None."""
        check_points(points, self.in_channels, self.min_points, type(self).__name__)
        xyz = points[..., :3].contiguous()
        normals = points[..., 3:].transpose(1, 2).contiguous() if self.in_channels > 3 else None
        return xyz, normals


# ============================================================================ PointNet

class _STN(nn.Module):
    """PointNet's T-Net (``STN3d`` for in_channels 3/6 -> 3x3, ``STNkd`` for 64 -> 64x64): 1x1 convs
    64-128-1024, max pool, FC 512-256-k*k, plus the identity. forward (B, in_channels, N) -> (B, k, k)."""

    def __init__(self, in_channels: int, k: int):
        super().__init__()
        self.k = k
        self.conv1, self.conv2, self.conv3 = nn.Conv1d(in_channels, 64, 1), nn.Conv1d(64, 128, 1), \
            nn.Conv1d(128, 1024, 1)
        self.fc1, self.fc2, self.fc3 = nn.Linear(1024, 512), nn.Linear(512, 256), nn.Linear(256, k * k)
        self.bn1, self.bn2, self.bn3 = nn.BatchNorm1d(64), nn.BatchNorm1d(128), nn.BatchNorm1d(1024)
        self.bn4, self.bn5 = nn.BatchNorm1d(512), nn.BatchNorm1d(256)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x))).amax(dim=2)
        x = F.relu(self.bn4(self.fc1(x)))
        x = F.relu(self.bn5(self.fc2(x)))
        x = self.fc3(x) + torch.eye(self.k, dtype=x.dtype, device=x.device).flatten()
        return x.view(-1, self.k, self.k)


class _PointNetEncoder(nn.Module):
    """PointNet's global-feature encoder (``PointNetEncoder(global_feat=True, feature_transform=True)``):
    input transform, conv 64, feature transform (64x64), convs 128 and 1024 (the last without ReLU), max pool.
    forward (B, C, N) -> (global feature (B, 1024), trans (B, 3, 3), trans_feat (B, 64, 64) or None)."""

    def __init__(self, in_channels: int, feature_transform: bool = True):
        super().__init__()
        self.stn = _STN(in_channels, 3)
        self.conv1, self.conv2, self.conv3 = nn.Conv1d(in_channels, 64, 1), nn.Conv1d(64, 128, 1), \
            nn.Conv1d(128, 1024, 1)
        self.bn1, self.bn2, self.bn3 = nn.BatchNorm1d(64), nn.BatchNorm1d(128), nn.BatchNorm1d(1024)
        self.feature_transform = feature_transform
        if feature_transform:
            self.fstn = _STN(64, 64)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        trans = self.stn(x)
        xyz = torch.bmm(trans.transpose(1, 2), x[:, :3])  # (x^T trans)^T on the coordinates
        x = torch.cat([xyz, x[:, 3:]], dim=1) if x.shape[1] > 3 else xyz
        x = F.relu(self.bn1(self.conv1(x)))
        trans_feat = None
        if self.feature_transform:
            trans_feat = self.fstn(x)
            x = torch.bmm(trans_feat.transpose(1, 2), x)
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x)).amax(dim=2)
        return x, trans, trans_feat


def feature_transform_regularizer(trans: Tensor) -> Tensor:
    """PointNet's orthogonality loss: mean over the batch of ||A A^T - I||_F for A (B, k, k) -> scalar."""
    eye = torch.eye(trans.shape[1], dtype=trans.dtype, device=trans.device)
    return torch.linalg.matrix_norm(torch.bmm(trans, trans.transpose(1, 2)) - eye).mean()


class PointNetClassifier(PointCloudClassifier):
    """PointNet classification network (PointCAT's ``pointnet_cls``): encoder -> fc1 512 (BN, ReLU) -> fc2 256
    (dropout 0.4, BN, ReLU; this is ``feature``) -> fc3 num_classes."""

    classifier_name = "fc3"

    def __init__(self, num_classes: int = 40, normal_channel: bool = False, feature_transform: bool = True,
                 dropout: float = 0.4, mat_diff_loss_scale: float = 0.001):
        super().__init__()
        self.num_classes, self.in_channels = num_classes, 6 if normal_channel else 3
        self.mat_diff_loss_scale = mat_diff_loss_scale
        self.feat = _PointNetEncoder(self.in_channels, feature_transform)
        self.fc1, self.fc2, self.fc3 = nn.Linear(1024, 512), nn.Linear(512, 256), nn.Linear(256, num_classes)
        self.bn1, self.bn2 = nn.BatchNorm1d(512), nn.BatchNorm1d(256)
        self.dropout = nn.Dropout(p=dropout)
        self._trans_feat: Optional[Tensor] = None

    def forward(self, points: Tensor) -> tuple[Tensor, Tensor]:
        check_points(points, self.in_channels, self.min_points, type(self).__name__)
        x, _, trans_feat = self.feat(points.transpose(1, 2))
        self._trans_feat = trans_feat
        x = F.relu(self.bn1(self.fc1(x)))
        feature = F.relu(self.bn2(self.dropout(self.fc2(x))))
        return feature, self.fc3(feature)

    def regularization_loss(self) -> Tensor:
        """0.001 x ``feature_transform_regularizer`` of the last forward's 64x64 feature transform (the
        official ``get_loss``'s ``mat_diff_loss``); zero before any forward or without the feature
        transform."""
        if self._trans_feat is None:
            return self.fc1.weight.new_zeros(())
        return self.mat_diff_loss_scale * feature_transform_regularizer(self._trans_feat)


# ============================================================================ PointNet++

class PointNet2Classifier(PointCloudClassifier):
    """PointNet++ classification network (PointCAT's / yanx27's ``pointnet2_cls_ssg`` and
    ``pointnet2_cls_msg``): three set-abstraction layers (the last groups everything into 1024 channels) ->
    fc1 512 (BN, ReLU, dropout 0.4) -> fc2 256 (BN, ReLU, dropout ``drop2``: 0.4 SSG, 0.5 MSG; this is
    ``feature``) -> fc3. Needs at least 512 points (the first layer samples 512 centres)."""

    classifier_name = "fc3"

    def __init__(self, sa1: nn.Module, sa2: nn.Module, sa3: nn.Module, num_classes: int, in_channels: int,
                 drop2: float):
        super().__init__()
        self.num_classes, self.in_channels = num_classes, in_channels
        self.sa1, self.sa2, self.sa3 = sa1, sa2, sa3
        self.min_points = sa1.npoint
        self.fc1, self.bn1, self.drop1 = nn.Linear(1024, 512), nn.BatchNorm1d(512), nn.Dropout(0.4)
        self.fc2, self.bn2, self.drop2 = nn.Linear(512, 256), nn.BatchNorm1d(256), nn.Dropout(drop2)
        self.fc3 = nn.Linear(256, num_classes)

    def forward_global(self, points: Tensor) -> Tensor:
        """points (B, N, in_channels) -> the 1024-d global feature (B, 1024) of the last SA layer."""
        xyz, normals = self._split(points)
        l1_xyz, l1 = self.sa1(xyz, normals)
        l2_xyz, l2 = self.sa2(l1_xyz, l1)
        _, l3 = self.sa3(l2_xyz, l2)
        return l3.flatten(1)

    def forward(self, points: Tensor) -> tuple[Tensor, Tensor]:
        x = self.forward_global(points)
        x = self.drop1(F.relu(self.bn1(self.fc1(x))))
        feature = self.drop2(F.relu(self.bn2(self.fc2(x))))
        return feature, self.fc3(feature)


def _normal_channels(normal_channel: bool) -> int:
    return 3 if normal_channel else 0


@register_model
def pointnet(num_classes: int = 40, normal_channel: bool = False, feature_transform: bool = True,
             dropout: float = 0.4) -> PointNetClassifier:
    """PointNet (Qi et al. 2017) with input and 64-d feature transforms, as PointCAT trains it. Input (B, N, 3)."""
    return PointNetClassifier(num_classes, normal_channel, feature_transform, dropout)


@register_model
def pointnet2_ssg(num_classes: int = 40, normal_channel: bool = False) -> PointNet2Classifier:
    """PointNet++ single-scale grouping: SA(512, r 0.2, 32, [64, 64, 128]), SA(128, r 0.4, 64, [128, 128,
    256]), SA(all, [256, 512, 1024]). Input (B, N >= 512, 3)."""
    c = _normal_channels(normal_channel)
    sa1 = PointNetSetAbstraction(512, 0.2, 32, c, (64, 64, 128), layout="official")
    sa2 = PointNetSetAbstraction(128, 0.4, 64, 128, (128, 128, 256), layout="official")
    sa3 = PointNetSetAbstraction(None, None, None, 256, (256, 512, 1024), group_all=True, layout="official")
    return PointNet2Classifier(sa1, sa2, sa3, num_classes, 3 + c, drop2=0.4)


@register_model
def pointnet2_msg(num_classes: int = 40, normal_channel: bool = False) -> PointNet2Classifier:
    """PointNet++ multi-scale grouping: SA-MSG(512, r [0.1, 0.2, 0.4], [16, 32, 128]), SA-MSG(128, r [0.2,
    0.4, 0.8], [32, 64, 128]), SA(all, [256, 512, 1024]) (PointCAT's default classifier). Input (B, N >= 512,
    3)."""
    c = _normal_channels(normal_channel)
    sa1 = PointNetSetAbstractionMsg(512, (0.1, 0.2, 0.4), (16, 32, 128), c,
                                    ((32, 32, 64), (64, 64, 128), (64, 96, 128)))
    sa2 = PointNetSetAbstractionMsg(128, (0.2, 0.4, 0.8), (32, 64, 128), sa1.out_channels,
                                    ((64, 64, 128), (128, 128, 256), (128, 128, 256)))
    sa3 = PointNetSetAbstraction(None, None, None, sa2.out_channels, (256, 512, 1024), group_all=True,
                                 layout="official")
    return PointNet2Classifier(sa1, sa2, sa3, num_classes, 3 + c, drop2=0.5)
