"""Spherical layers for equirectangular (ERP) feature maps: a convolution whose kernel lies on the tangent plane
around each output location, and PAVER's deformable patch embedding for ViTs, both on a fixed, cached sampling
table (``pyvision_fast.geometry.equirect``) and ``pyvision_fast.ops.sphere_conv2d``."""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from ..geometry import equirect
from ..ops import sphere_conv2d
from ._checks import check_input

_IntPair = Union[int, tuple[int, int]]


class SphereConv2d(nn.Module):
    """Convolution on ERP images with the k x k kernel laid on the tangent plane around each output location
    (``equirect.tangent_sampling``): longitude wraps across the seam, rows crossing a pole continue on the opposite
    meridian. Parameters as ``nn.Conv2d`` (``weight`` (C_out, C_in, kh, kw), ``bias``), same initialisation.

    forward(x (B, C_in, H, W)) -> (B, C_out, ceil(H / stride), ceil(W / stride)). The sampling table is built once
    per (H, W, dtype, device) and shared by all layers and batches. x is a whole 360x180 degree panorama, so
    W = 2 H; a frame covering less of the sphere states its field of view ``fov=(horizontal, vertical)`` in
    degrees (centred on the equator; columns then clamp at the edges instead of wrapping)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _IntPair, stride: _IntPair = 1,
                 bias: bool = True, fov: Optional[tuple[float, float]] = None):
        super().__init__()
        self.fov = tuple(fov) if fov is not None else None
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(in_channels * self.kernel_size[0] * self.kernel_size[1])
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        check_input("SphereConv2d", "x", x, ("B", self.in_channels, "H", "W"))
        try:
            table = equirect.sampling_table(x.shape[2], x.shape[3], self.kernel_size, self.stride, "natural",
                                            x.dtype, x.device, fov=self.fov)
        except ValueError as exc:
            raise ValueError(f"SphereConv2d: {exc}") from None
        return sphere_conv2d(x, self.weight, self.bias, table)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"bias={self.bias is not None}" + (f", fov={self.fov}" if self.fov is not None else ""))


class SpherePatchEmbed(nn.Module):
    """ViT patch embedding for ERP images, like timm's ``PatchEmbed`` (``proj`` is an ``nn.Conv2d`` with timm's
    keys), each patch sampled on the tangent plane of its centre.

    ``layout="paver"`` reproduces PAVER's deformable patch embedding exactly (its offsets, its patch order with
    columns running right to left, bilinear sampling; ``discrete=True`` takes the integer positions as PAVER's
    ``DeformViT`` does); ``layout="natural"`` puts patch (i, j) on the tangent plane at the centre of the regular
    patch (i, j), so at the equator it samples nearly the regular grid.

    forward(x (B, in_chans, H, W)) -> (B, N, embed_dim) tokens, N = (H / R) (W / R), row-major; or
    (B, embed_dim, H / R, W / R) with ``flatten=False``. ``img_size`` is a 2:1 panorama, or (``layout="natural"``)
    a frame of the stated field of view ``fov=(horizontal, vertical)`` degrees.
    """

    def __init__(self, img_size: _IntPair = (224, 448), patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768, layout: str = "paver", flatten: bool = True, bias: bool = True,
                 discrete: bool = False, fov: Optional[tuple[float, float]] = None):
        super().__init__()
        self.img_size = _pair(img_size)
        H, W = self.img_size
        if H % patch_size or W % patch_size:
            raise ValueError(f"SpherePatchEmbed: img_size {self.img_size} must be a multiple of patch_size "
                             f"{patch_size}")
        self.patch_size, self.layout, self.flatten, self.discrete = patch_size, layout, flatten, discrete
        self.grid_size = (H // patch_size, W // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size, bias=bias)
        try:
            table = equirect.sampling_table(H, W, patch_size, patch_size, layout, torch.float64, "cpu", discrete,
                                            fov=fov)
        except ValueError as exc:
            raise ValueError(f"SpherePatchEmbed: {exc}") from None
        # Fixed geometry: buffers follow .to(device) and become constants on export; not in the state_dict. The
        # weights are kept in float64 and cast to the projection's dtype when used (the cast is cached).
        self.register_buffer("table_index", table.index.clone(), persistent=False)
        self.register_buffer("table_weight", table.weight.clone(), persistent=False)
        equirect.mark_valid(self.table_index, H, W)
        self._cast: tuple = ()

    def _apply(self, fn, *args, **kwargs):
        module = super()._apply(fn, *args, **kwargs)
        # .to() / .cuda() copy the buffers: the copies are as valid as the table they came from
        equirect.mark_valid(self.table_index, *self.img_size)
        self._cast = ()
        return module

    def _table_weight(self, dtype: torch.dtype) -> Tensor:
        """table_weight in ``dtype``, cast once per (buffer, dtype) rather than on every call."""
        src = self.table_weight
        if torch.compiler.is_compiling() or src.dtype == dtype:
            return src.to(dtype)
        if not (self._cast and self._cast[0] is src and self._cast[1] == src._version and self._cast[2] == dtype):
            self._cast = (src, src._version, dtype, src.to(dtype))
        return self._cast[3]

    def table(self) -> equirect.SamplingTable:
        return equirect.SamplingTable(self.table_index, self._table_weight(self.proj.weight.dtype), self.img_size,
                                      self.grid_size, (self.patch_size, self.patch_size))

    def forward(self, x: Tensor) -> Tensor:
        check_input("SpherePatchEmbed", "x", x, ("B", self.proj.in_channels, *self.img_size))
        out = sphere_conv2d(x, self.proj.weight, self.proj.bias, self.table())
        return out.flatten(2).transpose(1, 2) if self.flatten else out

    @classmethod
    def from_patch_embed(cls, patch_embed: nn.Module, img_size: _IntPair = (224, 448), layout: str = "paver",
                         flatten: bool = True, discrete: bool = False) -> "SpherePatchEmbed":
        """A SpherePatchEmbed with the weights of a pretrained ``nn.Conv2d`` patch projection or of a timm
        ``PatchEmbed`` (its ``proj``), without retraining."""
        conv = getattr(patch_embed, "proj", patch_embed)
        if not isinstance(conv, nn.Conv2d) or conv.kernel_size != conv.stride or conv.kernel_size[0] != \
                conv.kernel_size[1]:
            raise TypeError("from_patch_embed needs an nn.Conv2d patch projection (kernel_size == stride, square) "
                            "or a module with one as .proj")
        layer = cls(img_size, conv.kernel_size[0], conv.in_channels, conv.out_channels, layout, flatten,
                    conv.bias is not None, discrete)
        layer.proj.load_state_dict(conv.state_dict())
        return layer.to(device=conv.weight.device, dtype=conv.weight.dtype)

    def extra_repr(self) -> str:
        return f"img_size={self.img_size}, patch_size={self.patch_size}, layout={self.layout!r}"
