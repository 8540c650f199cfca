"""StyleGAN2 layers on ``pyvision_fast.ops.upfirdn2d`` / ``bias_act``: the modulated convolution (one grouped
convolution over the batch), fused bias + activation, and the FIR resampling helpers, with NVlabs'
stylegan2-ada-pytorch conventions (``setup_filter``, ``upsample2d``, ``downsample2d``, ``filter2d``,
``modulated_conv2d``).

Not imported by ``pyvision_fast.nn`` yet: ``from pyvision_fast.nn.stylegan2 import ModulatedConv2d``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import bias_act, upfirdn2d
from ..ops.stylegan2 import ACTIVATIONS, filter_size, parse_padding, parse_scaling
from ._checks import check_input

FilterLike = Union[Sequence[float], Tensor, None]


def setup_filter(f: FilterLike, normalize: bool = True, flip_filter: bool = False, gain: float = 1,
                 separable: Optional[bool] = None) -> Tensor:
    """A float32 FIR filter tensor from a list or tensor (NVlabs' ``setup_filter``): None is [[1]]; a 1-D
    filter of fewer than 8 taps becomes its outer product (2-D) unless ``separable``; normalised to sum 1,
    flipped if ``flip_filter``, times ``gain ** (ndim / 2)``."""
    f = torch.ones(1, dtype=torch.float32) if f is None else torch.as_tensor(f, dtype=torch.float32)
    if f.dim() not in (0, 1, 2) or f.numel() == 0:
        raise ValueError(f"setup_filter: the filter must be a non-empty scalar, 1-D or 2-D, got shape "
                         f"{tuple(f.shape)}")
    if f.dim() == 0:
        f = f[None]
    if separable is None:
        separable = f.dim() == 1 and f.numel() >= 8
    if f.dim() == 1 and not separable:
        f = torch.outer(f, f)
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.dim())))
    return f * (gain ** (f.dim() / 2))


def upsample2d(x: Tensor, f: Tensor, up=2, padding=0, flip_filter: bool = False, gain: float = 1) -> Tensor:
    """Upsample by ``up`` with the FIR filter f, keeping the image centred: (N, C, H * up_y, W * up_x) for
    zero padding. The padding adds (f + up - 1) // 2 before and (f - up) // 2 after; the gain is multiplied by
    up_x * up_y (the zeros inserted)."""
    upx, upy = parse_scaling(up, "up")
    px0, px1, py0, py1 = parse_padding(padding)
    fw, fh = filter_size(f)
    pad = [px0 + (fw + upx - 1) // 2, px1 + (fw - upx) // 2, py0 + (fh + upy - 1) // 2, py1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=(upx, upy), padding=pad, flip_filter=flip_filter, gain=gain * upx * upy)


def downsample2d(x: Tensor, f: Tensor, down=2, padding=0, flip_filter: bool = False,
                 gain: float = 1) -> Tensor:
    """Downsample by ``down`` with the FIR filter f: (N, C, H // down_y, W // down_x) for zero padding and
    sizes divisible by down. The padding adds (f - down + 1) // 2 before and (f - down) // 2 after."""
    dx, dy = parse_scaling(down, "down")
    px0, px1, py0, py1 = parse_padding(padding)
    fw, fh = filter_size(f)
    pad = [px0 + (fw - dx + 1) // 2, px1 + (fw - dx) // 2, py0 + (fh - dy + 1) // 2, py1 + (fh - dy) // 2]
    return upfirdn2d(x, f, down=(dx, dy), padding=pad, flip_filter=flip_filter, gain=gain)


def filter2d(x: Tensor, f: Tensor, padding=0, flip_filter: bool = False, gain: float = 1) -> Tensor:
    """Filter with f, keeping the size for zero padding (f // 2 before, (f - 1) // 2 after)."""
    px0, px1, py0, py1 = parse_padding(padding)
    fw, fh = filter_size(f)
    pad = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=pad, flip_filter=flip_filter, gain=gain)


class _FilterModule(nn.Module):
    def __init__(self, resample_filter: FilterLike):
        super().__init__()
        self.register_buffer("resample_filter", setup_filter(resample_filter))


class Upsample2d(_FilterModule):
    """``upsample2d`` as a module: (N, C, H, W) -> (N, C, H * factor, W * factor). The filter (default
    [1, 3, 3, 1], normalised, as a 4 x 4 outer product) is the buffer ``resample_filter``."""

    def __init__(self, factor: int = 2, resample_filter: FilterLike = (1, 3, 3, 1)):
        super().__init__(resample_filter)
        self.factor = parse_scaling(factor, "factor")

    def forward(self, x: Tensor) -> Tensor:
        check_input("Upsample2d", "x", x, ("N", "C", "H", "W"))
        return upsample2d(x, self.resample_filter, up=self.factor)


class Downsample2d(_FilterModule):
    """``downsample2d`` as a module: (N, C, H, W) -> (N, C, H // factor, W // factor) (sizes divisible by the
    factor)."""

    def __init__(self, factor: int = 2, resample_filter: FilterLike = (1, 3, 3, 1)):
        super().__init__(resample_filter)
        self.factor = parse_scaling(factor, "factor")

    def forward(self, x: Tensor) -> Tensor:
        check_input("Downsample2d", "x", x, ("N", "C", "H", "W"))
        return downsample2d(x, self.resample_filter, down=self.factor)


class Blur(_FilterModule):
    """Low-pass FIR filtering: ``upfirdn2d(x, f, padding=padding, gain=gain)``; padding None keeps the size
    (``filter2d``)."""

    def __init__(self, resample_filter: FilterLike = (1, 3, 3, 1), padding=None, gain: float = 1):
        super().__init__(resample_filter)
        self.padding = None if padding is None else parse_padding(padding)
        self.gain = float(gain)

    def forward(self, x: Tensor) -> Tensor:
        check_input("Blur", "x", x, ("N", "C", "H", "W"))
        if self.padding is None:
            return filter2d(x, self.resample_filter, gain=self.gain)
        return upfirdn2d(x, self.resample_filter, padding=self.padding, gain=self.gain)


class FusedBiasAct(nn.Module):
    """``bias_act`` with a learned bias of ``channels`` along ``dim`` (NVlabs' layers: ``act='lrelu'`` with
    gain sqrt 2 and an optional ``clamp``). ``lr_multiplier`` scales the bias (equalised learning rate)."""

    def __init__(self, channels: int, act: str = "lrelu", dim: int = 1, alpha: Optional[float] = None,
                 gain: Optional[float] = None, clamp: Optional[float] = None, bias_init: float = 0.0,
                 lr_multiplier: float = 1.0):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"FusedBiasAct: unknown act {act!r}; expected one of {sorted(ACTIVATIONS)}")
        self.bias = nn.Parameter(torch.full([channels], float(bias_init)))
        self.act, self.dim, self.alpha, self.gain, self.clamp = act, dim, alpha, gain, clamp
        self.lr_multiplier = float(lr_multiplier)

    def forward(self, x: Tensor) -> Tensor:
        channels = self.bias.shape[0]
        if not isinstance(x, Tensor):
            raise TypeError(f"FusedBiasAct: x must be a tensor, got {type(x).__name__}")
        if not -x.dim() <= self.dim < x.dim() or x.shape[self.dim] != channels:
            raise ValueError(f"FusedBiasAct: expected x with {channels} channels in dimension {self.dim}, got shape "
                             f"{tuple(x.shape)}")
        b = self.bias.to(x.dtype)
        if self.lr_multiplier != 1:
            b = b * self.lr_multiplier
        return bias_act(x, b, dim=self.dim, act=self.act, alpha=self.alpha, gain=self.gain, clamp=self.clamp)


def modulated_conv2d(x: Tensor, weight: Tensor, styles: Tensor, demodulate: bool = True, up: int = 1,
                     padding: Optional[int] = None, resample_filter: Optional[Tensor] = None,
                     eps: float = 1e-8) -> Tensor:
    """StyleGAN2's modulated convolution as one grouped convolution over the batch.

    x (N, I, H, W), weight (O, I, k, k), styles (N, I): sample n is convolved with weight * styles[n] (per
    input channel), demodulated to unit norm per output channel (``rsqrt(sum over I, k, k of w^2 + eps)``)
    when ``demodulate``. The N per-sample weights form one (N * O, I, k, k) weight for a conv with N groups
    over x reshaped to (1, N * I, H, W). ``up=1``: padding ``k // 2`` (default), (N, O, H, W) for odd k.
    ``up=2``: NVlabs' path, a stride-2 ``conv_transpose2d`` followed by the FIR ``resample_filter`` (gain 4)
    through ``upfirdn2d``: (N, O, 2H, 2W) for odd k and the default padding.
    """
    N, I, H, W = x.shape
    O, Iw, kh, kw = weight.shape
    if Iw != I or styles.shape != (N, I):
        raise ValueError(f"modulated_conv2d: x {tuple(x.shape)}, weight {tuple(weight.shape)} and styles "
                         f"{tuple(styles.shape)} do not match (expected weight (O, {I}, k, k), styles "
                         f"({N}, {I}))")
    if up not in (1, 2):
        raise ValueError(f"modulated_conv2d: up must be 1 or 2, got {up}")
    p = kw // 2 if padding is None else int(padding)
    w = weight[None] * styles.reshape(N, 1, I, 1, 1)  # (N, O, I, kh, kw)
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4]) + eps).rsqrt().reshape(N, O, 1, 1, 1)
    xg = x.reshape(1, N * I, H, W)
    if up == 1:
        y = F.conv2d(xg, w.reshape(N * O, I, kh, kw).to(x.dtype), padding=p, groups=N)
        return y.reshape(N, O, *y.shape[2:])
    f = setup_filter((1, 3, 3, 1)).to(x.device) if resample_filter is None else resample_filter
    fw, fh = filter_size(f)
    # padding of the upsampling filter, less what the transposed convolution already produced
    px0, px1 = p + (fw + 1) // 2 - (kw - 1), p + (fw - 2) // 2 - (kw - 2)
    py0, py1 = p + (fh + 1) // 2 - (kh - 1), p + (fh - 2) // 2 - (kh - 2)
    pxt, pyt = max(min(-px0, -px1), 0), max(min(-py0, -py1), 0)
    # conv_transpose2d's weight layout: (in, out / groups, k, k)
    wt = w.transpose(1, 2).reshape(N * I, O, kh, kw).to(x.dtype)
    y = F.conv_transpose2d(xg, wt, stride=2, padding=[pyt, pxt], groups=N)
    y = upfirdn2d(y, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=4)
    return y.reshape(N, O, *y.shape[2:])


class ModulatedConv2d(nn.Module):
    """StyleGAN2's modulated (and demodulated) convolution with its style affine layer.

    ``forward(x, w)``: x (N, in_channels, H, W), w (N, style_dim) latent -> (N, out_channels, H', W'). The
    affine layer maps w to per-input-channel styles (equalised learning rate: weight ~ N(0, 1) scaled by 1 /
    sqrt(style_dim), bias initialised to 1, NVlabs' ``bias_init=1``); the convolution weight is N(0, 1)
    (demodulation normalises it). ``up=2`` upsamples (transposed convolution + FIR blur). Bias and activation
    are separate (``FusedBiasAct``), as in NVlabs' SynthesisLayer.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, up: int = 1, resample_filter: FilterLike = (1, 3, 3, 1),
                 eps: float = 1e-8):
        super().__init__()
        if up not in (1, 2):
            raise ValueError(f"ModulatedConv2d: up must be 1 or 2, got {up}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.style_dim, self.demodulate, self.up, self.eps = style_dim, demodulate, up, eps
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.affine_weight = nn.Parameter(torch.randn(in_channels, style_dim))
        self.affine_bias = nn.Parameter(torch.ones(in_channels))
        self.register_buffer("resample_filter", setup_filter(resample_filter))

    def styles(self, w: Tensor) -> Tensor:
        """(N, style_dim) -> (N, in_channels): the affine layer with equalised learning rate."""
        return F.linear(w, self.affine_weight * (1 / math.sqrt(self.style_dim)), self.affine_bias)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        check_input("ModulatedConv2d", "x", x, ("N", self.in_channels, "H", "W"))
        check_input("ModulatedConv2d", "w", w, (x.shape[0], self.style_dim))
        return modulated_conv2d(x, self.weight, self.styles(w), demodulate=self.demodulate, up=self.up,
                                resample_filter=self.resample_filter, eps=self.eps)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"style_dim={self.style_dim}, demodulate={self.demodulate}, up={self.up}")
