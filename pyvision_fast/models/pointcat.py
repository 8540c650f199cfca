"""PointCAT's trained parts beside the classifier (shared/papers.md section 5; re-implemented from
``shikiw/PointCAT:model/networks.py`` and ``solver.py``):

* ``PointCATNoiseGenerator`` (the official ``AutoEncoder`` with its ``normal_conv`` decoder, registered as
  ``pointcat_noise_generator``): a 1920-d max-pooled point encoder and a convolutional decoder that emits one
  raw perturbation per point. State-dict keys and parameter count are the official module's (``ComMLP.conv1``
  ... ``bn1_3``; 11,094,984 parameters at 1024 points); its unused label input is dropped.
* ``scale_perturbation`` / ``perturb_points``: the perturbation normalised per cloud to L2 norm exactly
  ``eps * sqrt(3N)`` (eps 0.04), then ``x_adv = clamp(x + pert, -1, 1)``.
* ``ProjectionHead`` (official ``ProjHead``: Linear -> BN1d -> ReLU -> Linear, keys ``l1``, ``bn1``, ``l2``),
  swapped in for the classifier's last layer during contrastive training.
* ``search_feature_peaks``: the dynamic class prototypes: one input cloud per class optimised with Adam to
  maximise the targeted C&W margin, all classes in one batch; the prototype is the classifier's penultimate
  feature of the optimised cloud.

Points are (B, N, 3) float tensors here (the official code works on (B, 3, N)); the generator's output is laid
out as the official one's, so its weights load unchanged.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._registry import register_model

__all__ = ["PointCATNoiseGenerator", "ProjectionHead", "perturb_points", "pointcat_noise_generator",
           "scale_perturbation", "search_feature_peaks"]


def _check_points(points: Tensor, name: str = "points") -> None:
    if not isinstance(points, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(points).__name__}")
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"{name} must be (B, N, 3), got shape {tuple(points.shape)}")
    if not points.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {points.dtype}")


class _PointEncoder(nn.Module):
    """The official ``Convlayer``: (B, N, 3) -> (B, 1920), the max over points of the 1024-, 512-, 256- and
    128-d maps of a per-point MLP (Conv2d(1, 64, (1, 3)) then 1x1 convolutions, each with BN and ReLU),
    concatenated in that order."""

    def __init__(self):
        super().__init__()
        widths = [64, 64, 128, 256, 512, 1024]
        self.conv1 = nn.Conv2d(1, 64, (1, 3))
        for i in range(1, 6):
            setattr(self, f"conv{i + 1}", nn.Conv2d(widths[i - 1], widths[i], 1))
        for i, w in enumerate(widths):
            setattr(self, f"bn{i + 1}", nn.BatchNorm2d(w))

    def forward(self, points: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(points.unsqueeze(1))))          # (B, 64, N, 1)
        x = F.relu(self.bn2(self.conv2(x)))
        x128 = F.relu(self.bn3(self.conv3(x)))
        x256 = F.relu(self.bn4(self.conv4(x128)))
        x512 = F.relu(self.bn5(self.conv5(x256)))
        x1024 = F.relu(self.bn6(self.conv6(x512)))
        return torch.cat([m.amax(dim=(2, 3)) for m in (x1024, x512, x256, x128)], 1)


class PointCATNoiseGenerator(nn.Module):
    """PointCAT's noise generator (official ``AutoEncoder``, ``decoder_type="normal_conv"``).

    forward(points (B, num_points, 3) float) -> raw perturbation (B, num_points, 3), same dtype; normalise it
    with ``scale_perturbation``. Encoder: ``_PointEncoder`` (1920-d) -> Linear(1920, 1024) + BN + ReLU.
    Decoder: Linear(1024, 64*128) + BN + ReLU -> (B, 64, 128) -> Conv1d(64, 64, 1) + BN + ReLU -> Conv1d(64,
    3N/128, 1) + BN -> reshaped to (B, 3, N) as the official code does, then transposed to (B, N, 3). ``3 *
    num_points`` must be a multiple of 128 (1024 points: 24 output channels). BatchNorm makes a batch of one
    an error in train mode.
    """

    def __init__(self, num_points: int = 1024):
        super().__init__()
        if not isinstance(num_points, int) or num_points <= 0 or (3 * num_points) % 128:
            raise ValueError(f"num_points must be a positive integer with 3 * num_points a multiple of 128 "
                             f"(e.g. 1024), got {num_points!r}")
        self.num_points = num_points
        out_ch = 3 * num_points // 128
        self.ComMLP = _PointEncoder()
        self.fc1 = nn.Linear(1920, 1024)
        self.bn1 = nn.BatchNorm1d(1024)
        self.fc1_1 = nn.Linear(1024, 128 * 64)
        self.conv1_2 = nn.Conv1d(64, 64, 1)
        self.conv1_3 = nn.Conv1d(64, out_ch, 1)
        self.bn1_1 = nn.BatchNorm1d(128 * 64)
        self.bn1_2 = nn.BatchNorm1d(64)
        self.bn1_3 = nn.BatchNorm1d(out_ch)

    def forward(self, points: Tensor) -> Tensor:
        _check_points(points)
        if points.shape[1] != self.num_points:
            raise ValueError(f"the generator was built for {self.num_points} points, got clouds of "
                             f"{points.shape[1]} (points {tuple(points.shape)})")
        latent = F.relu(self.bn1(self.fc1(self.ComMLP(points))))
        feat = F.relu(self.bn1_1(self.fc1_1(latent))).reshape(-1, 64, 128)
        feat = F.relu(self.bn1_2(self.conv1_2(feat)))
        xyz = self.bn1_3(self.conv1_3(feat)).reshape(-1, 3, self.num_points)
        return xyz.transpose(1, 2)


@register_model
def pointcat_noise_generator(num_points: int = 1024) -> PointCATNoiseGenerator:
    """PointCAT's noise generator for clouds of ``num_points`` points (11.1M parameters at 1024)."""
    return PointCATNoiseGenerator(num_points)


def scale_perturbation(pert: Tensor, eps: float = 0.04) -> Tensor:
    """Each cloud's perturbation (B, N, 3) rescaled to L2 norm exactly ``eps * sqrt(3N)`` (over its N x 3
    values; an all-zero perturbation stays zero). Differentiable; same shape and dtype."""
    _check_points(pert, "pert")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    norm = pert.flatten(1).norm(dim=1).clamp_min(torch.finfo(pert.dtype).tiny)
    return pert * (eps * math.sqrt(pert.shape[1] * 3) / norm)[:, None, None]


def perturb_points(points: Tensor, pert: Tensor, eps: float = 0.04,
                   clamp: Optional[tuple] = (-1.0, 1.0)) -> Tensor:
    """``clamp(points + scale_perturbation(pert, eps), -1, 1)``: PointCAT's adversarial cloud (B, N, 3)."""
    _check_points(points)
    if pert.shape != points.shape:
        raise ValueError(f"pert {tuple(pert.shape)} must have the shape of points {tuple(points.shape)}")
    x = points + scale_perturbation(pert, eps)
    return x.clamp(*clamp) if clamp is not None else x


class ProjectionHead(nn.Module):
    """PointCAT's ``ProjHead``: Linear(in, in) -> BatchNorm1d -> ReLU -> Linear(in, out); (B, in) -> (B,
    out)."""

    def __init__(self, in_dim: int, out_dim: Optional[int] = None):
        super().__init__()
        self.l1 = nn.Linear(in_dim, in_dim)
        self.bn1 = nn.BatchNorm1d(in_dim)
        self.l2 = nn.Linear(in_dim, out_dim or in_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.l2(F.relu(self.bn1(self.l1(x))))


def search_feature_peaks(model: nn.Module, inputs: Tensor, labels: Optional[Tensor] = None, iters: int = 500,
                         lr: float = 0.005, weight_decay: float = 1e-4, kappa: float = -100.0
                         ) -> tuple[Tensor, Tensor]:
    """PointCAT's prototype ("feature peak") search, every class at once.

    Runs ``iters`` Adam steps (``lr``, ``weight_decay``, betas (0.9, 0.999)) on the clouds ``inputs`` to
    minimise the summed targeted C&W loss ``max(max_{j != y} z_j - z_y, kappa)`` of ``model(clamp(x, -1,
    1))``'s logits, with the model in eval mode (so the clouds do not interact through BatchNorm and the batch
    equals a loop over classes) and only the clouds receiving gradients. The official code starts from ``U(-1,
    1)`` clouds (lr 0.005, 500 steps) and then warm-starts from the last clouds after every mini-batch (lr
    0.001, 10 steps); it runs ``iters - 1`` steps and takes the feature of the unclamped cloud, here ``iters``
    steps and the clamped cloud.

    Args:
        model: classifier, ``forward(points (M, N, 3)) -> (features (M, F), logits (M, K))``.
        inputs: (M, N, 3) float start clouds, one per label.
        labels: (M,) int64 classes; default ``arange(M)``.
    Returns:
        (clouds (M, N, 3) after the steps, unclamped, detached; features (M, F) of the clamped clouds,
        detached).
    """
    from ..losses.pointcat import cw_margin_loss

    _check_points(inputs, "inputs")
    if labels is None:
        labels = torch.arange(inputs.shape[0], device=inputs.device)
    if not isinstance(iters, int) or iters < 0:
        raise ValueError(f"iters must be an integer >= 0, got {iters!r}")
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        x = inputs.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)
        for _ in range(iters):
            with torch.enable_grad():
                _, logits = model(x.clamp(-1, 1))
                loss = cw_margin_loss(logits, labels, kappa=kappa, targeted=True)
                (grad,) = torch.autograd.grad(loss, x)
            x.grad = grad
            opt.step()
        with torch.no_grad():
            features, _ = model(x.clamp(-1, 1))
    finally:
        for m, training in flags:
            m.training = training
    return x.detach(), features.detach()
