"""Deformable convolution layers: torchvision's ``DeformConv2d`` and mmcv's ``DeformConv2dPack`` /
``ModulatedDeformConv2dPack`` (which predict their own offsets, and mask, with a zero-initialised convolution),
with the same constructors and state_dict keys, on ``pyvision_fast.ops.deform_conv2d``."""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from ..ops import deform_conv2d
from ..ops.deform_conv import DeformConvValueError
from ._checks import check_input

_IntPair = Union[int, tuple[int, int]]


class DeformConv2d(nn.Module):
    """torchvision.ops.DeformConv2d: ``forward(input, offset, mask=None)``; parameters ``weight``
    (out_channels, in_channels / groups, kh, kw) and ``bias``; torchvision's initialisation."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _IntPair, stride: _IntPair = 1,
                 padding: _IntPair = 0, dilation: _IntPair = 1, groups: int = 1, bias: bool = True):
        super().__init__()
        if groups < 1 or in_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) must be divisible by groups ({groups})")
        if out_channels % groups:
            raise ValueError(f"out_channels ({out_channels}) must be divisible by groups ({groups})")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = nn.init._calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def _check(self, name: str, x: Tensor) -> None:
        # DeformConvValueError is also the RuntimeError torchvision raises for a wrong input
        check_input(type(self).__name__, name, x, ("B", self.in_channels, "H", "W"), DeformConvValueError)

    def forward(self, input: Tensor, offset: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        self._check("input", input)
        return deform_conv2d(input, offset, self.weight, self.bias, self.stride, self.padding, self.dilation, mask)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"bias={self.bias is not None}")


class _PackBase(DeformConv2d):
    """Shared constructor of the mmcv-style layers: the offset (and mask) convolution, zero-initialised so the
    layer starts as a plain convolution (with a 0.5 mask for the modulated one)."""

    channels_per_tap = 2

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _IntPair, stride: _IntPair = 1,
                 padding: _IntPair = 0, dilation: _IntPair = 1, groups: int = 1, deform_groups: int = 1,
                 bias: bool = False):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        if deform_groups < 1 or in_channels % deform_groups:
            raise ValueError(f"in_channels ({in_channels}) must be divisible by deform_groups ({deform_groups})")
        self.deform_groups = deform_groups
        kh, kw = self.kernel_size
        self.conv_offset = nn.Conv2d(in_channels, deform_groups * self.channels_per_tap * kh * kw, self.kernel_size,
                                     self.stride, self.padding, self.dilation, bias=True)
        self.init_weights()

    def init_weights(self) -> None:
        """mmcv's initialisation: weight ~ U(-1/sqrt(n), 1/sqrt(n)), n = in_channels * kh * kw; bias 0; the
        offset convolution 0."""
        n = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        nn.init.uniform_(self.weight, -1 / math.sqrt(n), 1 / math.sqrt(n))
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", deform_groups={self.deform_groups}"


class DeformConv2dPack(_PackBase):
    """mmcv.ops.DeformConv2dPack (DCNv1): ``forward(x)`` predicts the offsets with ``conv_offset`` and applies the
    deformable convolution. state_dict: ``weight``, (``bias``), ``conv_offset.weight``, ``conv_offset.bias``."""

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        self._check("x", x)
        return deform_conv2d(x, self.conv_offset(x), self.weight, self.bias, self.stride, self.padding,
                             self.dilation)


class ModulatedDeformConv2dPack(_PackBase):
    """mmcv.ops.ModulatedDeformConv2dPack (DCNv2): ``conv_offset`` predicts 3 * deform_groups * kh * kw channels,
    split in three as mmcv does (the first two thirds are the offsets, the last the mask logits, through a
    sigmoid). Bias on by default, as in mmcv."""

    channels_per_tap = 3

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _IntPair, stride: _IntPair = 1,
                 padding: _IntPair = 0, dilation: _IntPair = 1, groups: int = 1, deform_groups: int = 1,
                 bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, deform_groups,
                         bias)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        self._check("x", x)
        o1, o2, mask = torch.chunk(self.conv_offset(x), 3, dim=1)
        return deform_conv2d(x, torch.cat((o1, o2), dim=1), self.weight, self.bias, self.stride, self.padding,
                             self.dilation, torch.sigmoid(mask))
