"""SCAN-CNN (Shi et al., "Scale Attention for Learning Deep Face Representation", arXiv 2209.08788) on the
IR-ResNet of ArcFace, and that plain IR-ResNet itself.

The paper has no public code. What is taken from its abstract: every conv layer is rebuilt on scale-space
theory, (1) it learns a set of scales from data, each scale fulfilled by a conv kernel, (2) it highlights the
feature at the channel and location matching the input pattern's scale; stacking such layers gives
hierarchical scale attention; and the trained network costs no more at inference than the plain CNN. What is
our design:

* The backbone is insightface's IR-ResNet (``iresnet`` of arcface_torch, the network ArcFace results are
  quoted on): a 3x3 stem (Conv-BN-PReLU, 112x112 input), four stages of IBasicBlocks (BN - Conv3x3 - BN -
  PReLU - Conv3x3(stride) - BN, plus a 1x1 Conv-BN shortcut at each stage's first block), every stage halving
  the resolution (112 -> 7), and the output layer BN2d -> dropout -> flatten -> Linear(512 * 7 * 7, 512) ->
  BN1d (its scale frozen at 1, as insightface) giving the 512-d embedding. Module names are those of
  insightface's ``iresnet`` (conv1, bn1, prelu, layer1-4 with bn1/conv1/bn2/prelu/conv2/bn3/downsample, bn2,
  fc, features), so that arcface_torch's ``backbone.pth`` should load into ``iresnet50``/``iresnet18`` (not
  checked against a released file here: none is available offline); a fused SCAN loads there strictly
  (tested).
* SCAN replaces every 3x3 convolution (stem included) by :class:`ScanConv2d`, a
  :class:`pyvision_fast.nn.ScaleSpaceConv2d`: its kernels are learned combinations of scale-normalised
  Gaussian derivatives (orders 0..2, Lindeberg's gamma = 1) at S = 4 learned scales sigma_s (in [0.5, 1] pixel
  on the 3x3 support, learned in log space). Each output channel c applies the *same* derivative pattern at
  all S scales and mixes the S responses with scale-attention weights a_c = softmax(scale_logits_c) (learned,
  uniform at initialisation). Because responses are scale-normalised, a channel responds most at the locations
  where the input pattern has the scale its attention favours: the channel-and-location selection of the paper
  comes from that response, the per-channel choice of scales from the attention weights.
* The attention is deliberately linear in the responses: sum_s a_cs (K_cs * x) = (sum_s a_cs K_cs) * x, so
  each layer is one ordinary 3x3 convolution at inference. :meth:`IResNet.fuse` materialises every
  ``ScanConv2d`` into an ``nn.Conv2d`` and returns an ``IResNet`` of only Conv2d/BatchNorm/PReLU/Linear layers
  with the plain network's exact structure, hence its exact FLOPs ("zero increase of inference cost"). An
  input-dependent softmax across scales (``nn.ScaleAttention``) cannot fuse into a plain convolution; it is
  not used here.
* The price during training is building each kernel from its basis (a (C_out, C_in, 6) x (C_out, 6, 9) product
  per layer per step), which is small next to the convolution itself. A 3x3 kernel from 6 basis coefficients
  has fewer parameters than a free 3x3 kernel: scan_ir50 has 33.5M parameters where iresnet50 has 43.6M (the
  FC of 25088 x 512 alone is 12.8M of them).

Inputs: (B, 3, 112, 112) float32 RGB normalised to [-1, 1] (insightface's (x - 127.5) / 127.5); output: (B,
512) float32 embeddings (not L2-normalised; the margin head and the verification metric normalise).
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import Tensor, nn

from ..nn import ScaleSpaceConv2d
from ..reference.scale_space import gaussian_derivative_basis
from ._registry import register_model

__all__ = ["IBasicBlock", "IResNet", "ScanConv2d", "iresnet18", "iresnet50", "scan_ir18", "scan_ir50"]

_ARCFACE_TORCH = ("insightface's arcface_torch backbone.pth (github.com/deepinsight/insightface, "
                  "recognition/arcface_torch, model zoo: {})")


class ScanConv2d(ScaleSpaceConv2d):
    """Scale-attention convolution: one Gaussian-derivative pattern per (output, input) channel pair, applied
    at S learned scales and mixed per output channel by softmax attention weights (see the module docstring).

    Args: as ``ScaleSpaceConv2d`` (``num_scales`` S is capped at ``out_channels``); ``bias`` defaults to False
    (a BatchNorm follows every convolution of the IR-ResNet).

    Parameters: ``coeff`` (C_out, C_in, n_basis), ``log_sigma`` (S,), ``scale_logits`` (C_out, S), ``bias``.
    forward(x (B, C_in, H, W) float) -> (B, C_out, H', W'), differentiable in all of them; ``fuse()``
    (inherited) gives the equivalent ``nn.Conv2d``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, num_scales: int = 4,
                 order: int = 2, stride: int = 1, padding: int = 1, bias: bool = False):
        super().__init__(in_channels, out_channels, kernel_size, num_scales=min(num_scales, out_channels),
                         order=order, stride=stride, padding=padding, bias=bias)
        self.scale_logits = nn.Parameter(torch.zeros(out_channels, self.num_scales))

    def scale_weights(self) -> Tensor:
        """Attention over the scales, (C_out, S), rows summing to 1."""
        return self.scale_logits.softmax(dim=-1)

    def weight(self) -> Tensor:
        """The equivalent Conv2d weight (C_out, C_in, k, k) in ``coeff``'s dtype."""
        k = self.kernel_size
        basis = gaussian_derivative_basis(self.sigma(), k, self.order).to(self.coeff.dtype)  # (S, nb, k, k)
        mixed = torch.einsum("os,sbq->obq", self.scale_weights().to(self.coeff.dtype), basis.flatten(2))
        return torch.bmm(self.coeff, mixed).view(self.out_channels, self.in_channels, k, k)


def _conv3x3(scan: bool, num_scales: int, cin: int, cout: int, stride: int = 1) -> nn.Module:
    if scan:
        return ScanConv2d(cin, cout, 3, num_scales=num_scales, stride=stride, padding=1)
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """insightface's IR unit: BN - Conv3x3 - BN - PReLU - Conv3x3(stride) - BN, plus the shortcut (identity,
    or Conv1x1(stride)-BN when the shape changes). (B, cin, H, W) -> (B, cout, H / stride, W / stride)."""

    def __init__(self, cin: int, cout: int, stride: int, scan: bool, num_scales: int, bn_eps: float = 1e-5):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=bn_eps)
        self.conv1 = _conv3x3(scan, num_scales, cin, cout)
        self.bn2 = nn.BatchNorm2d(cout, eps=bn_eps)
        self.prelu = nn.PReLU(cout)
        self.conv2 = _conv3x3(scan, num_scales, cout, cout, stride)
        self.bn3 = nn.BatchNorm2d(cout, eps=bn_eps)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(cout, eps=bn_eps))

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (self.downsample(x) if self.downsample is not None else x)


class IResNet(nn.Module):
    """IR-ResNet face embedding network, plain (``scan=False``) or SCAN (``scan=True``).

    Args:
        layers: blocks per stage ((2, 2, 2, 2) for 18, (3, 4, 14, 3) for 50).
        widths: channels per stage (64, 128, 256, 512); the stem has widths[0].
        num_features: embedding size (512).
        img_size: square input side (112); it must be divisible by 16 (four stride-2 stages).
        dropout: dropout before the FC (insightface: 0 for MS1M training, 0.4 in its older configs).
        scan: 3x3 convolutions are ``ScanConv2d`` (SCAN-CNN) instead of ``nn.Conv2d``.
        num_scales, in_chans: scales per SCAN layer (4); input channels (3).

    forward(x (B, in_chans, img_size, img_size)) -> (B, num_features) embeddings.
    """

    def __init__(self, layers: Sequence[int], widths: Sequence[int] = (64, 128, 256, 512),
                 num_features: int = 512, img_size: int = 112, dropout: float = 0.0, scan: bool = False,
                 num_scales: int = 4, in_chans: int = 3):
        super().__init__()
        if len(layers) != 4 or len(widths) != 4:
            raise ValueError(f"IResNet: layers and widths need 4 stages, got {tuple(layers)} and "
                             f"{tuple(widths)}")
        if img_size % 16:
            raise ValueError(f"IResNet: img_size must be divisible by 16 (four stride-2 stages), got "
                             f"{img_size}")
        self.scan, self.num_scales, self.img_size = scan, num_scales, img_size
        self.num_features = num_features
        self.default_input_size = (in_chans, img_size, img_size)
        self.conv1 = _conv3x3(scan, num_scales, in_chans, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0], eps=1e-5)
        self.prelu = nn.PReLU(widths[0])
        cin = widths[0]
        for i, (n, w) in enumerate(zip(layers, widths)):
            blocks = [IBasicBlock(cin if j == 0 else w, w, 2 if j == 0 else 1, scan, num_scales)
                      for j in range(n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = w
        self.bn2 = nn.BatchNorm2d(cin, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        side = img_size // 16
        self.fc = nn.Linear(cin * side * side, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # insightface keeps the embedding BN's scale at 1 (a learnable scale would only rescale the embedding)
        self.features.weight.requires_grad_(False)

    def no_weight_decay(self) -> set[str]:
        """The scales and scale-attention logits: weight decay would pull sigma towards 1 pixel and the
        attention towards uniform for no reason of the task."""
        return {n for n, _ in self.named_parameters() if n.endswith(("log_sigma", "scale_logits"))}

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> the last stage's map after ``bn2``, (B, widths[3], H / 16, W / 16)."""
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.bn2(x)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"IResNet: expected input (B, {self.default_input_size[0]}, {self.img_size}, "
                             f"{self.img_size}), got {tuple(x.shape)}")
        x = torch.flatten(self.dropout(self.forward_features(x)), 1)
        return self.features(self.fc(x))

    @torch.no_grad()
    def fuse(self) -> "IResNet":
        """A copy in which every ``ScanConv2d`` is its materialised ``nn.Conv2d``: only Conv2d, BatchNorm,
        PReLU, Dropout and Linear remain, the structure (and FLOPs) of the plain IR-ResNet, state_dict keys
        included. The copy is in this model's train/eval mode; in eval mode its outputs equal this model's."""
        fused = copy.deepcopy(self)
        for name, module in list(fused.named_modules()):
            if isinstance(module, ScanConv2d):
                parent_name, _, attr = name.rpartition(".")
                setattr(fused.get_submodule(parent_name) if parent_name else fused, attr, module.fuse())
        fused.scan = False
        return fused

    def export_module(self) -> nn.Module:
        """What deployment runs: the fused network (the model itself when it is already plain), in eval
        mode."""
        return (self.fuse() if self.scan else self).eval()


def _create(layers, scan: bool, kwargs: dict) -> IResNet:
    kwargs.pop("num_classes", None)  # an embedding network: the classes live in the margin head
    return IResNet(layers, scan=scan, **kwargs)


@register_model
def scan_ir18(**kwargs) -> IResNet:
    """SCAN-CNN on IR-ResNet-18: stages (2, 2, 2, 2), 112x112 -> 512-d."""
    return _create((2, 2, 2, 2), True, kwargs)


@register_model
def scan_ir50(**kwargs) -> IResNet:
    """SCAN-CNN on IR-ResNet-50: stages (3, 4, 14, 3), 112x112 -> 512-d."""
    return _create((3, 4, 14, 3), True, kwargs)


@register_model(pretrained_file=_ARCFACE_TORCH.format("ms1mv3_arcface_r18"))
def iresnet18(**kwargs) -> IResNet:
    """The plain IR-ResNet-18 of insightface (arcface_torch ``r18``)."""
    return _create((2, 2, 2, 2), False, kwargs)


@register_model(pretrained_file=_ARCFACE_TORCH.format("ms1mv3_arcface_r50"))
def iresnet50(**kwargs) -> IResNet:
    """The plain IR-ResNet-50 of insightface (arcface_torch ``r50``), 43.6M parameters."""
    return _create((3, 4, 14, 3), False, kwargs)
