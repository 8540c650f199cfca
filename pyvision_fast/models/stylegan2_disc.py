"""StyleGAN2 discriminator (NVlabs stylegan2-ada-pytorch's ``Discriminator``, resnet architecture by default)
with the official state_dict keys: blocks ``b{res}`` from the image resolution down to 8 (``fromrgb`` on the
first block, or on every block for "skip"; ``conv0`` 3x3; ``conv1`` 3x3 with x2 FIR downsampling; ``skip`` 1x1
with x2 downsampling and no bias, the two branches summed with gain sqrt 0.5), then the epilogue ``b4``:
minibatch standard deviation (``mbstd``, groups of ``mbstd_group_size``, ``mbstd_num_channels`` features),
``conv`` 3x3, ``fc`` (C * 16 -> C, lrelu), ``out`` (C -> 1, or -> cmap_dim with a label ``mapping`` and the
projection ``(x * cmap).sum / sqrt(cmap_dim)`` when ``c_dim > 0``). Channels ``min(channel_base // res,
channel_max)``; activations clamped to ``conv_clamp`` (256 in the official configurations). Built on the
layers of ``pyvision_fast.models.stylegan2`` (``Conv2dLayer``, ``FullyConnectedLayer``); differentiable twice
(the R1 penalty).

``StyleGAN2Discriminator.forward(img, c=None)``: img (N, img_channels, R, R) float -> logits (N, 1) in the
network's dtype (float32; float64 after ``.double()``).
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ..nn._checks import check_input
from ..nn.stylegan2 import setup_filter
from .stylegan2 import Conv2dLayer, FullyConnectedLayer, MappingNetwork, _downsample2d, _unwrap_official

__all__ = ["StyleGAN2Discriminator", "DiscriminatorBlock", "DiscriminatorEpilogue", "MinibatchStdLayer"]


class DiscriminatorBlock(nn.Module):
    """(N, tmp, R, R) [+ image] -> (N, out, R / 2, R / 2) (official ``DiscriminatorBlock``)."""

    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, resolution: int,
                 img_channels: int, architecture: str = "resnet", activation: str = "lrelu",
                 resample_filter: Sequence[float] = (1, 3, 3, 1), conv_clamp: Optional[float] = None):
        super().__init__()
        self.in_channels, self.resolution, self.img_channels = in_channels, resolution, img_channels
        self.architecture = architecture
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        if in_channels == 0 or architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, activation=activation,
                                       conv_clamp=conv_clamp)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation=activation, conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation=activation, down=2,
                                 resample_filter=resample_filter, conv_clamp=conv_clamp)
        if architecture == "resnet":
            self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2,
                                    resample_filter=resample_filter)

    def forward(self, x: Optional[Tensor], img: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        if self.in_channels == 0 or self.architecture == "skip":
            y = self.fromrgb(img)
            x = y if x is None else x + y
            img = _downsample2d(img, self.resample_filter) if self.architecture == "skip" else None
        if self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = y + self.conv1(self.conv0(x), gain=math.sqrt(0.5))
        else:
            x = self.conv1(self.conv0(x))
        return x, img


class MinibatchStdLayer(nn.Module):
    """Appends ``num_channels`` feature maps: the standard deviation over groups of ``group_size`` samples
    (``min(group_size, N)``; None: the whole batch), averaged over channels (in ``num_channels`` groups) and
    pixels. (N, C, H, W) -> (N, C + num_channels, H, W); N must be divisible by the group size."""

    def __init__(self, group_size: Optional[int], num_channels: int = 1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: Tensor) -> Tensor:
        N, C, H, W = x.shape
        G = N if self.group_size is None else min(self.group_size, N)
        F = self.num_channels
        if N % G:
            raise ValueError(f"MinibatchStdLayer: the batch size {N} must be divisible by the group size {G} "
                             f"(mbstd_group_size={self.group_size})")
        y = x.reshape(G, -1, F, C // F, H, W)
        y = (y - y.mean(dim=0)).square().mean(dim=0)
        y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4]).reshape(-1, F, 1, 1).repeat(G, 1, H, W)
        return torch.cat([x, y], dim=1)


class DiscriminatorEpilogue(nn.Module):
    """The 4x4 end of the discriminator (official ``DiscriminatorEpilogue``): (N, C, 4, 4) -> (N, 1)."""

    def __init__(self, in_channels: int, cmap_dim: int, resolution: int, img_channels: int,
                 architecture: str = "resnet", mbstd_group_size: Optional[int] = 4,
                 mbstd_num_channels: int = 1,
                 activation: str = "lrelu", conv_clamp: Optional[float] = None):
        super().__init__()
        self.in_channels, self.cmap_dim, self.architecture = in_channels, cmap_dim, architecture
        if architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, in_channels, 1, activation=activation)
        self.mbstd = (MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0
                      else None)
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, 3, activation=activation,
                                conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution ** 2, in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x: Tensor, img: Optional[Tensor], cmap: Optional[Tensor]) -> Tensor:
        if self.architecture == "skip":
            x = x + self.fromrgb(img)
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.out(self.fc(self.conv(x).flatten(1)))
        if self.cmap_dim > 0:
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / math.sqrt(self.cmap_dim))
        return x


class StyleGAN2Discriminator(nn.Module):
    """See the module docstring. ``forward(img, c=None)``: (N, img_channels, R, R) -> (N, 1) logits."""

    def __init__(self, c_dim: int = 0, img_resolution: int = 256, img_channels: int = 3,
                 architecture: str = "resnet", channel_base: int = 16384, channel_max: int = 512,
                 conv_clamp: Optional[float] = 256, cmap_dim: Optional[int] = None,
                 mbstd_group_size: Optional[int] = 4, mbstd_num_channels: int = 1,
                 mapping_layers: int = 8, resample_filter: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        for name, v in (("c_dim", c_dim), ("img_resolution", img_resolution), ("img_channels", img_channels),
                        ("channel_base", channel_base), ("channel_max", channel_max)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise TypeError(f"StyleGAN2Discriminator: {name} must be an int, got {type(v).__name__}")
        if img_resolution < 8 or img_resolution & (img_resolution - 1):
            raise ValueError(f"StyleGAN2Discriminator: img_resolution must be a power of two >= 8, got "
                             f"{img_resolution}")
        if architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"StyleGAN2Discriminator: architecture must be orig, skip or resnet, got "
                             f"{architecture!r}")
        if min(img_channels, channel_max, channel_base // img_resolution) < 1:
            raise ValueError(f"StyleGAN2Discriminator: img_channels, channel_max and channel_base // "
                             f"img_resolution must be >= 1, got {img_channels}, {channel_max}, "
                             f"{channel_base // img_resolution}")
        self.c_dim, self.img_resolution, self.img_channels = c_dim, img_resolution, img_channels
        self.block_resolutions = [2 ** i for i in range(int(math.log2(img_resolution)), 2, -1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions + [4]}
        cmap_dim = (channels[4] if cmap_dim is None else cmap_dim) if c_dim > 0 else 0
        common = dict(img_channels=img_channels, architecture=architecture, conv_clamp=conv_clamp)
        for res in self.block_resolutions:
            block = DiscriminatorBlock(channels[res] if res < img_resolution else 0, channels[res],
                                       channels[res // 2], res, resample_filter=resample_filter, **common)
            setattr(self, f"b{res}", block)
        if c_dim > 0:
            self.mapping = MappingNetwork(0, c_dim, cmap_dim, None, num_layers=mapping_layers,
                                          w_avg_beta=None)
        self.b4 = DiscriminatorEpilogue(channels[4], cmap_dim, 4, mbstd_group_size=mbstd_group_size,
                                        mbstd_num_channels=mbstd_num_channels, **common)

    def forward(self, img: Tensor, c: Optional[Tensor] = None) -> Tensor:
        R = self.img_resolution
        check_input("StyleGAN2Discriminator", "img", img, ("N", self.img_channels, R, R))
        if not img.is_floating_point():
            raise TypeError(f"StyleGAN2Discriminator: img must be a float tensor, got {img.dtype}")
        img = img.to(self.b4.out.weight.dtype)   # float32 (float64 for a .double() network)
        x = None
        for res in self.block_resolutions:
            x, img = getattr(self, f"b{res}")(x, img)
        cmap = None
        if self.c_dim > 0:
            if c is None:
                raise ValueError(f"StyleGAN2Discriminator: c (N, {self.c_dim}) is required "
                                 f"(c_dim={self.c_dim})")
            cmap = self.mapping(None, c)
        return self.b4(x, img, cmap)

    def adapt_state_dict(self, state: dict) -> dict:
        """``load_weights`` hook: an official checkpoint wrapped as {"D": ...} or with a ``D.`` prefix."""
        return _unwrap_official(state, "D")
