"""StyleGAN2 generator for UV texture maps (``stylegan2_texture``, paper 4 of ``docs/talking_face.md``), with
NVlabs stylegan2-ada-pytorch's architecture and state_dict keys (``training/networks.py``), so the state_dict
of an official ``G`` / ``G_ema`` loads strictly (``load_official_state_dict``).

Architecture (re-implemented from the official description; float32, or float64 after ``.double()``):

* ``MappingNetwork``: z (N, z_dim) -> 2nd-moment normalisation (and a label embedding ``embed`` when ``c_dim >
  0``) -> ``num_layers`` ``FullyConnectedLayer``s ``fc{i}`` (lrelu, equalised learning rate, lr multiplier
  0.01: weights stored N(0, 1) / 0.01, used times 0.01 / sqrt(fan_in)) -> w (N, w_dim), broadcast to ws (N,
  num_ws, w_dim). In training mode the buffer ``w_avg`` tracks the mean w (``w_avg_beta`` 0.995); truncation
  ``w_avg + psi (w - w_avg)`` on the first ``truncation_cutoff`` ws (all when None).
* ``SynthesisNetwork``: blocks ``b4``, ``b8``, ... ``b{img_resolution}`` with ``min(channel_base // res,
  channel_max)`` channels. ``b4`` starts from the learned ``const`` (C, 4, 4). Each ``SynthesisLayer`` is a
  modulated 3x3 convolution (``pyvision_fast.nn.stylegan2.modulated_conv2d``: the style affine ``affine``
  with bias init 1, demodulation, one grouped convolution over the batch; ``conv0`` upsamples x2 through the
  transposed convolution + [1, 3, 3, 1] FIR), noise ``noise_strength * noise`` (``noise_mode`` "random": fresh
  N(0, 1) per sample, "const": the buffer ``noise_const``, "none"), then ``ops.bias_act`` (lrelu, gain
  sqrt 2, clamp ``conv_clamp`` 256). ``torgb`` is a modulated 1x1 convolution without demodulation (styles
  scaled by 1 / sqrt(C)); architecture "skip" (default) sums the x2-upsampled (``upsample2d``) RGB of every
  block; "orig" and "resnet" as the official code. ``num_ws`` = 2 log2(res) - 2 (14 at 256^2).
* ``StyleGAN2Generator.forward(z, c)`` = ``synthesis(mapping(z, c))``: (N, img_channels, R, R) float32,
  nominally in [-1, 1] (``to_unit_range`` maps to [0, 1] for texture sampling).

The discriminator (resnet, minibatch std) is ``pyvision_fast.models.stylegan2_disc``; the losses
``pyvision_fast.losses.gan``; the training recipe ``texture_gan``.

Second derivatives (the R1 and path-length penalties): ``ops.upfirdn2d`` and ``ops.bias_act`` have a double
backward and the grouped convolution is differentiable twice, so both networks need no special mode.

``fused_modconv=False`` (and ``export_module()``) computes the modulated convolution as NVlabs' non-fused path
(x * styles, one convolution shared by the batch, x * demodulation), whose graph does not depend on the batch
size: the ONNX graph then has a dynamic batch.
"""
from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn._checks import check_input
from ..nn.stylegan2 import modulated_conv2d, setup_filter
from ..ops import bias_act, upfirdn2d
from ..ops.stylegan2 import ACTIVATIONS, filter_size
from ._registry import register_model

__all__ = ["StyleGAN2Generator", "MappingNetwork", "SynthesisNetwork", "SynthesisBlock", "SynthesisLayer",
           "ToRGBLayer", "FullyConnectedLayer", "Conv2dLayer", "conv2d_resample",
           "OFFICIAL_CONFIGS", "official_kwargs", "load_official_state_dict", "stylegan2_texture",
           "to_unit_range"]

def _resample(x: Tensor, f: Tensor, up: int = 1, down: int = 1, padding=(0, 0, 0, 0),
              gain: float = 1) -> Tensor:
    """``ops.upfirdn2d`` with one up/down factor for both axes."""
    return upfirdn2d(x, f, up=up, down=down, padding=list(padding), gain=gain)


def _bias_act(x: Tensor, b: Optional[Tensor], act: str = "linear", gain: float = 1.0,
              clamp: Optional[float] = None) -> Tensor:
    """``ops.bias_act`` along dim 1 with the activation's default alpha and ``gain`` times its default
    gain."""
    _, alpha, def_gain = ACTIVATIONS[act]
    return bias_act(x, b, dim=1, act=act, gain=def_gain * gain, clamp=clamp)


def _upsample2d(x: Tensor, f: Tensor) -> Tensor:
    """x2 FIR upsampling keeping the image centred (``nn.stylegan2.upsample2d``'s padding, gain 4)."""
    fw, fh = filter_size(f)
    return _resample(x, f, up=2, padding=((fw + 1) // 2, (fw - 2) // 2, (fh + 1) // 2, (fh - 2) // 2), gain=4)


def _downsample2d(x: Tensor, f: Tensor) -> Tensor:
    fw, fh = filter_size(f)
    return _resample(x, f, down=2, padding=((fw - 1) // 2, (fw - 2) // 2, (fh - 1) // 2, (fh - 2) // 2))


def conv2d_resample(x: Tensor, w: Tensor, f: Optional[Tensor] = None, up: int = 1, down: int = 1) -> Tensor:
    """Convolution with ``k // 2`` padding and optional x2 FIR resampling, the paths NVlabs'
    ``conv2d_resample`` takes for the layers here: x (N, I, H, W), w (O, I, k, k) -> (N, O, H * up / down, W *
    up / down). down=2: FIR blur then stride-2 convolution (a 1x1 kernel: FIR downsampling then the
    convolution); up=2: stride-2 transposed convolution (weight not flipped) then the FIR blur with gain 4
    (1x1: the convolution then FIR upsampling)."""
    k = w.shape[-1]
    p = k // 2
    if up == 1 and down == 1:
        return F.conv2d(x, w, padding=p)
    fw, fh = filter_size(f)
    if down == 2:
        if k == 1:
            return F.conv2d(_downsample2d(x, f), w)
        pad = (p + (fw - 1) // 2, p + (fw - 2) // 2, p + (fh - 1) // 2, p + (fh - 2) // 2)
        return F.conv2d(_resample(x, f, padding=pad), w, stride=2)
    if k == 1:
        return _upsample2d(F.conv2d(x, w), f)
    px0, px1 = p + (fw + 1) // 2 - (k - 1), p + (fw - 2) // 2 - (k - 2)
    py0, py1 = p + (fh + 1) // 2 - (k - 1), p + (fh - 2) // 2 - (k - 2)
    pxt, pyt = max(min(-px0, -px1), 0), max(min(-py0, -py1), 0)
    y = F.conv_transpose2d(x, w.transpose(0, 1), stride=2, padding=[pyt, pxt])
    return _resample(y, f, padding=(px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt), gain=4)


def _modconv(x: Tensor, weight: Tensor, styles: Tensor, demodulate: bool, up: int, f: Tensor,
             fused: bool) -> Tensor:
    """The modulated convolution: fused = the library's grouped convolution (``nn.stylegan2``), else NVlabs'
    non-fused path (batch-independent graph)."""
    if fused:
        return modulated_conv2d(x, weight, styles, demodulate=demodulate, up=up, resample_filter=f)
    N = x.shape[0]
    y = conv2d_resample(x * styles.reshape(N, -1, 1, 1), weight, f, up=up)
    if demodulate:
        d = (weight[None] * styles.reshape(N, 1, -1, 1, 1)).square().sum(dim=[2, 3, 4]) + 1e-8
        y = y * d.rsqrt().reshape(N, -1, 1, 1)
    return y


# ----------------------------------------------------------------------------------------------- layers

class FullyConnectedLayer(nn.Module):
    """Linear layer with equalised learning rate (official ``FullyConnectedLayer``): ``weight`` (out, in)
    stored N(0, 1) / lr_multiplier and used times lr_multiplier / sqrt(in); ``bias`` times lr_multiplier; then
    ``bias_act``. (N, in) -> (N, out)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = None if self.bias is None else self.bias.to(x.dtype) * self.bias_gain
        if self.activation == "linear":
            return F.linear(x, w, b)
        return _bias_act(x.matmul(w.t()), b, act=self.activation)

    def extra_repr(self) -> str:
        out_features, in_features = self.weight.shape
        return f"in_features={in_features}, out_features={out_features}, act={self.activation}"


class Conv2dLayer(nn.Module):
    """Convolution with equalised learning rate (official ``Conv2dLayer``): weight N(0, 1) used times 1 /
    sqrt(in k^2), optional x2 up/down FIR resampling (``conv2d_resample``), ``bias_act`` with ``gain`` times
    the activation's gain and clamp ``conv_clamp * gain``. (N, in, H, W) -> (N, out, H', W')."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", up: int = 1, down: int = 1,
                 resample_filter: Sequence[float] = (1, 3, 3, 1), conv_clamp: Optional[float] = None):
        super().__init__()
        self.activation, self.up, self.down, self.conv_clamp = activation, up, down, conv_clamp
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None

    def forward(self, x: Tensor, gain: float = 1.0) -> Tensor:
        x = conv2d_resample(x, (self.weight * self.weight_gain).to(x.dtype), self.resample_filter, self.up,
                            self.down)
        b = None if self.bias is None else self.bias.to(x.dtype)
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        return _bias_act(x, b, act=self.activation, gain=gain, clamp=clamp)


def _normalize_2nd_moment(x: Tensor, eps: float = 1e-8) -> Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


def _check_psi(truncation_psi, truncation_cutoff) -> None:
    if isinstance(truncation_psi, bool) or not isinstance(truncation_psi, numbers.Real):
        raise TypeError(f"truncation_psi must be a number, got {type(truncation_psi).__name__}")
    if truncation_cutoff is not None and (isinstance(truncation_cutoff, bool)
                                          or not isinstance(truncation_cutoff, numbers.Integral)):
        raise TypeError(f"truncation_cutoff must be an int or None, got {type(truncation_cutoff).__name__}")


class MappingNetwork(nn.Module):
    """z (N, z_dim) [and c (N, c_dim)] -> ws (N, num_ws, w_dim) (or w (N, w_dim) when ``num_ws`` is None); see
    the module docstring. Keys: ``embed.*`` (c_dim > 0), ``fc{i}.weight/bias``, buffer ``w_avg``."""

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: Optional[int], num_layers: int = 8,
                 embed_features: Optional[int] = None, layer_features: Optional[int] = None,
                 activation: str = "lrelu", lr_multiplier: float = 0.01, w_avg_beta: Optional[float] = 0.995):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.num_layers, self.w_avg_beta = num_layers, w_avg_beta
        embed_features = (w_dim if embed_features is None else embed_features) if c_dim > 0 else 0
        layer_features = w_dim if layer_features is None else layer_features
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for i in range(num_layers):
            setattr(self, f"fc{i}", FullyConnectedLayer(features[i], features[i + 1], activation=activation,
                                                        lr_multiplier=lr_multiplier))
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def _dtype(self) -> torch.dtype:
        return self.fc0.weight.dtype

    def forward(self, z: Optional[Tensor], c: Optional[Tensor] = None, truncation_psi: float = 1,
                truncation_cutoff: Optional[int] = None, skip_w_avg_update: bool = False) -> Tensor:
        _check_psi(truncation_psi, truncation_cutoff)
        x = None
        if self.z_dim > 0:
            check_input("MappingNetwork", "z", z, ("N", self.z_dim))
            if not z.is_floating_point():
                raise TypeError(f"MappingNetwork: z must be a float tensor, got {z.dtype}")
            x = _normalize_2nd_moment(z.to(self._dtype()))
        if self.c_dim > 0:
            if c is None:
                raise ValueError(f"MappingNetwork: c (N, {self.c_dim}) is required (c_dim={self.c_dim})")
            check_input("MappingNetwork", "c", c, (x.shape[0] if x is not None else "N", self.c_dim))
            y = _normalize_2nd_moment(self.embed(c.to(self._dtype())))
            x = torch.cat([x, y], dim=1) if x is not None else y
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        if self.w_avg_beta is not None and self.training and not skip_w_avg_update:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            if self.w_avg_beta is None:
                raise ValueError("MappingNetwork: truncation needs w_avg (w_avg_beta is None)")
            if self.num_ws is None or truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                x = torch.cat([self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi),
                               x[:, truncation_cutoff:]], dim=1)
        return x


_NOISE_MODES = ("random", "const", "none")


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution + noise + bias/lrelu (official ``SynthesisLayer``): x (N, in, R / up, R /
    up), w (N, w_dim) -> (N, out, R, R). Keys: ``affine.*``, ``weight``, ``noise_const``, ``noise_strength``,
    ``bias``, ``resample_filter``."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, kernel_size: int = 3,
                 up: int = 1, use_noise: bool = True, activation: str = "lrelu",
                 resample_filter: Sequence[float] = (1, 3, 3, 1), conv_clamp: Optional[float] = None):
        super().__init__()
        self.resolution, self.up, self.use_noise = resolution, up, use_noise
        self.activation, self.conv_clamp = activation, conv_clamp
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x: Tensor, w: Tensor, noise_mode: str = "random", fused_modconv: bool = True,
                gain: float = 1.0) -> Tensor:
        styles = self.affine(w)
        x = _modconv(x, self.weight, styles, True, self.up, self.resample_filter, fused_modconv)
        if self.use_noise and noise_mode == "random":
            x = x + torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device,
                                dtype=x.dtype) * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            x = x + self.noise_const * self.noise_strength
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        return _bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=gain, clamp=clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 convolution without demodulation + bias (official ``ToRGBLayer``): (N, in, R, R) ->
    (N, img_channels, R, R)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1,
                 conv_clamp: Optional[float] = None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)

    def forward(self, x: Tensor, w: Tensor, fused_modconv: bool = True) -> Tensor:
        styles = self.affine(w) * self.weight_gain
        x = _modconv(x, self.weight, styles, False, 1, None, fused_modconv)
        return _bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the synthesis network (official ``SynthesisBlock``): ``const`` (first block) or
    ``conv0`` (x2 up), ``conv1``, ``torgb`` (skip architecture or last block), ``skip`` (resnet)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 is_last: bool, architecture: str = "skip", resample_filter: Sequence[float] = (1, 3, 3, 1),
                 conv_clamp: Optional[float] = None, use_noise: bool = True):
        super().__init__()
        self.in_channels, self.w_dim, self.resolution = in_channels, w_dim, resolution
        self.img_channels, self.is_last, self.architecture = img_channels, is_last, architecture
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.num_conv = self.num_torgb = 0
        layer = dict(w_dim=w_dim, resolution=resolution, resample_filter=resample_filter,
                     conv_clamp=conv_clamp, use_noise=use_noise)
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, up=2, **layer)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, **layer)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp)
            self.num_torgb += 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=2,
                                    resample_filter=resample_filter)

    def forward(self, x: Optional[Tensor], img: Optional[Tensor], ws: Tensor, noise_mode: str = "random",
                fused_modconv: bool = True) -> tuple[Tensor, Optional[Tensor]]:
        w = ws.unbind(dim=1)
        kw = dict(noise_mode=noise_mode, fused_modconv=fused_modconv)
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
            x = self.conv1(x, w[0], **kw)
        elif self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x, w[0], **kw)
            x = y + self.conv1(x, w[1], gain=math.sqrt(0.5), **kw)
        else:
            x = self.conv1(self.conv0(x, w[0], **kw), w[1], **kw)
        if img is not None:
            img = _upsample2d(img, self.resample_filter)
        if self.is_last or self.architecture == "skip":
            y = self.torgb(x, w[self.num_conv], fused_modconv=fused_modconv)
            img = y if img is None else img + y
        return x, img


class SynthesisNetwork(nn.Module):
    """ws (N, num_ws, w_dim) -> image (N, img_channels, R, R) float32; blocks ``b4`` ... ``b{R}``."""

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int = 32768,
                 channel_max: int = 512, architecture: str = "skip", conv_clamp: Optional[float] = None,
                 resample_filter: Sequence[float] = (1, 3, 3, 1), use_noise: bool = True):
        super().__init__()
        if architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"SynthesisNetwork: architecture must be orig, skip or resnet, got "
                             f"{architecture!r}")
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        log2 = int(math.log2(img_resolution))
        self.block_resolutions = [2 ** i for i in range(2, log2 + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        self.num_ws = 0
        for res in self.block_resolutions:
            block = SynthesisBlock(channels[res // 2] if res > 4 else 0, channels[res], w_dim, res,
                                   img_channels, res == img_resolution, architecture, resample_filter,
                                   conv_clamp, use_noise)
            self.num_ws += block.num_conv + (block.num_torgb if res == img_resolution else 0)
            setattr(self, f"b{res}", block)

    def forward(self, ws: Tensor, noise_mode: str = "random", fused_modconv: bool = True) -> Tensor:
        """ws (N, num_ws, w_dim) float -> (N, img_channels, R, R) float32 (the W / W+ latent of the
        editor)."""
        check_input("SynthesisNetwork", "ws", ws, ("N", self.num_ws, self.w_dim))
        if not ws.is_floating_point():
            raise TypeError(f"SynthesisNetwork: ws must be a float tensor, got {ws.dtype}")
        if noise_mode not in _NOISE_MODES:
            raise ValueError(f"SynthesisNetwork: noise_mode must be one of {_NOISE_MODES}, got "
                             f"{noise_mode!r}")
        ws = ws.to(self.b4.conv1.weight.dtype)   # float32 (float64 for a .double() network)
        x = img = None
        idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            x, img = block(x, img, ws.narrow(1, idx, block.num_conv + block.num_torgb), noise_mode,
                           fused_modconv)
            idx += block.num_conv
        return img


# -------------------------------------------------------------------------------------------- generator

class StyleGAN2Generator(nn.Module):
    """The official ``Generator``: ``mapping`` (z, c -> ws) and ``synthesis`` (ws -> image), see the module
    docstring. ``forward(z, c=None, truncation_psi=1, truncation_cutoff=None, noise_mode="random",
    fused_modconv=True)``: z (N, z_dim) float -> (N, img_channels, img_resolution, img_resolution) float32."""

    def __init__(self, z_dim: int = 512, c_dim: int = 0, w_dim: int = 512, img_resolution: int = 256,
                 img_channels: int = 3, mapping_layers: int = 8, mapping_lr_multiplier: float = 0.01,
                 w_avg_beta: Optional[float] = 0.995, channel_base: int = 16384, channel_max: int = 512,
                 architecture: str = "skip", conv_clamp: Optional[float] = 256, use_noise: bool = True,
                 resample_filter: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        for name, v in (("z_dim", z_dim), ("c_dim", c_dim), ("w_dim", w_dim), ("img_channels", img_channels),
                        ("mapping_layers", mapping_layers), ("channel_base", channel_base),
                        ("channel_max", channel_max), ("img_resolution", img_resolution)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise TypeError(f"StyleGAN2Generator: {name} must be an int, got {type(v).__name__}")
        if img_resolution < 4 or img_resolution & (img_resolution - 1):
            raise ValueError(f"StyleGAN2Generator: img_resolution must be a power of two >= 4, got "
                             f"{img_resolution}")
        bad = min(w_dim, img_channels, mapping_layers, channel_max) < 1 or min(z_dim, c_dim) < 0
        if bad or z_dim + c_dim == 0:
            raise ValueError(f"StyleGAN2Generator: need w_dim, img_channels, mapping_layers, channel_max >= "
                             f"1 and z_dim + c_dim >= 1, got w_dim={w_dim}, img_channels={img_channels}, "
                             f"mapping_layers={mapping_layers}, channel_max={channel_max}, z_dim={z_dim}, "
                             f"c_dim={c_dim}")
        if channel_base // img_resolution < 1:
            raise ValueError(f"StyleGAN2Generator: channel_base {channel_base} gives no channel at "
                             f"{img_resolution}^2 (min(channel_base // res, channel_max) must be >= 1)")
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, channel_base, channel_max,
                                          architecture, conv_clamp, resample_filter, use_noise)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.num_ws, num_layers=mapping_layers,
                                      lr_multiplier=mapping_lr_multiplier, w_avg_beta=w_avg_beta)
        self.default_input_size = (z_dim,)   # the export example: z (batch, z_dim)

    def forward(self, z: Tensor, c: Optional[Tensor] = None, truncation_psi: float = 1,
                truncation_cutoff: Optional[int] = None, noise_mode: str = "random",
                fused_modconv: bool = True, mix_z: Optional[Tensor] = None, mix_cutoff: Optional[int] = None,
                return_ws: bool = False):
        """z (N, z_dim) [c (N, c_dim)] -> image (N, img_channels, R, R) float32, or (image, ws) with
        ``return_ws``. Style mixing (training): ws[:, mix_cutoff:] come from ``mix_z`` (mapped without
        updating w_avg), as the official loss does with probability 0.9."""
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        if mix_z is not None:
            if mix_cutoff is None or not 0 <= int(mix_cutoff) <= self.num_ws:
                raise ValueError(f"StyleGAN2Generator: mix_cutoff must be in [0, {self.num_ws}] with mix_z, "
                                 f"got "
                                 f"{mix_cutoff}")
            cut = int(mix_cutoff)
            if cut < self.num_ws:
                mixed = self.mapping(mix_z, c, truncation_psi=truncation_psi,
                                     truncation_cutoff=truncation_cutoff, skip_w_avg_update=True)
                ws = torch.cat([ws[:, :cut], mixed[:, cut:]], dim=1)
        img = self.synthesis(ws, noise_mode=noise_mode, fused_modconv=fused_modconv)
        return (img, ws) if return_ws else img

    def export_module(self, truncation_psi: float = 1.0, input: str = "z") -> nn.Module:
        """The deployable generator: z (N, z_dim) -> texture (``input="z"``) or ws (N, num_ws, w_dim) ->
        texture (``"ws"``), noise_mode "const" (no randomness), non-fused modulated convolution (dynamic
        batch)."""
        if input not in ("z", "ws"):
            raise ValueError(f"export_module: input must be 'z' or 'ws', got {input!r}")
        return _ExportGenerator(self, truncation_psi, input)

    def adapt_state_dict(self, state: dict) -> dict:
        """``load_weights`` hook: an official checkpoint wrapped as {"G_ema": ...} or with a ``G_ema.``
        prefix."""
        return _unwrap_official(state, "G_ema")


class _ExportGenerator(nn.Module):
    def __init__(self, g: StyleGAN2Generator, truncation_psi: float, input: str):
        super().__init__()
        self.g, self.truncation_psi, self.input = g, float(truncation_psi), input
        self.default_input_size = (g.z_dim,) if input == "z" else (g.num_ws, g.w_dim)
        if g.c_dim:
            raise ValueError("export_module: a conditional generator (c_dim > 0) is not exported")

    def forward(self, x: Tensor) -> Tensor:
        ws = self.g.mapping(x, None, truncation_psi=self.truncation_psi) if self.input == "z" else x
        return self.g.synthesis(ws, noise_mode="const", fused_modconv=False)


def to_unit_range(img: Tensor) -> Tensor:
    """A generated texture in [-1, 1] (nominal) -> [0, 1], clamped: (N, C, H, W) for
    ``ops.texture_sample``."""
    return ((img + 1) * 0.5).clamp(0, 1)


# ------------------------------------------------------------------------------ official configurations

# train.py's cfg_specs: (feature-map multiplier, mapping layers, minibatch, mbstd group, lr, R1 gamma,
# ema kimg)
OFFICIAL_CONFIGS = {
    "stylegan2": dict(fmaps=1, map=8, mb=32, mbstd=4, lrate=0.002, gamma=10, ema=10),
    "paper256": dict(fmaps=0.5, map=8, mb=64, mbstd=8, lrate=0.0025, gamma=1, ema=20),
    "paper512": dict(fmaps=1, map=8, mb=64, mbstd=8, lrate=0.0025, gamma=0.5, ema=20),
    "paper1024": dict(fmaps=1, map=8, mb=32, mbstd=4, lrate=0.002, gamma=2, ema=10),
    "cifar": dict(fmaps=1, map=2, mb=64, mbstd=32, lrate=0.0025, gamma=0.01, ema=500),
}


def official_kwargs(cfg: str, resolution: int, gpus: int = 1) -> tuple[dict, dict, dict]:
    """(generator kwargs, discriminator kwargs, training spec) of stylegan2-ada-pytorch's ``--cfg`` at
    ``resolution`` (``"auto"`` computed from the resolution and ``gpus`` as its train.py does)."""
    if cfg == "auto":
        mb = max(min(gpus * min(4096 // resolution, 32), 64), gpus)
        spec = dict(fmaps=1 if resolution >= 512 else 0.5, map=2, mb=mb, mbstd=min(mb // gpus, 4),
                    lrate=0.002 if resolution >= 1024 else 0.0025, gamma=0.0002 * resolution ** 2 / mb,
                    ema=mb * 10 / 32)
    elif cfg in OFFICIAL_CONFIGS:
        spec = dict(OFFICIAL_CONFIGS[cfg])
    else:
        raise ValueError(f"official_kwargs: cfg must be 'auto' or one of {sorted(OFFICIAL_CONFIGS)}, got "
                         f"{cfg!r}")
    base = int(spec["fmaps"] * 32768)
    g = dict(z_dim=512, w_dim=512, img_resolution=resolution, mapping_layers=spec["map"], channel_base=base,
             channel_max=512, conv_clamp=256)
    d = dict(img_resolution=resolution, channel_base=base, channel_max=512, conv_clamp=256,
             mbstd_group_size=spec["mbstd"])
    return g, d, spec


# ----------------------------------------------------------------------------------- official weights

def _unwrap_official(state: dict, which: str) -> dict:
    if isinstance(state.get(which), dict):
        return state[which]
    prefix = which + "."
    if any(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def load_official_state_dict(model: nn.Module, source: Union[str, Path, dict],
                             which: str = "G_ema") -> nn.Module:
    """Loads the weights of an official stylegan2-ada-pytorch network into ``model`` (strict keys and shapes).

    ``source``: a state_dict (the tensors of ``G_ema.state_dict()``), a dict of them keyed ``G`` / ``G_ema`` /
    ``D`` (``which`` picks one), or a ``.safetensors`` / ``.pt`` / ``.pth`` file holding either (read with
    ``torch.load(weights_only=True)``). An official ``.pkl`` pickles NVlabs' classes and needs their code
    (``dnnlib``, ``torch_utils``) to unpickle, which this loader never runs: convert it once where that code
    is, e.g. ``with open(pkl, 'rb') as f: G = legacy.load_network_pkl(f)['G_ema']`` then
    ``torch.save(G.state_dict(), 'G_ema.pt')`` (``D`` likewise)."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.suffix == ".pkl":
            raise ValueError(f"{path}: an official .pkl needs NVlabs' dnnlib/torch_utils to unpickle; save "
                             f"legacy.load_network_pkl(f)[{which!r}].state_dict() with torch.save (or as "
                             f".safetensors) and load that file")
        if not path.is_file():
            raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    elif isinstance(source, dict):
        state = source
    else:
        raise TypeError(f"load_official_state_dict: source must be a path or a dict, got "
                        f"{type(source).__name__}")
    state = _unwrap_official(state, which)
    own = model.state_dict()
    bad = [f"{k}: {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
           if k in own and isinstance(v, Tensor) and v.shape != own[k].shape]
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if bad or missing or unexpected:
        raise ValueError(f"load_official_state_dict: the weights do not fit {type(model).__name__} (check "
                         f"the configuration: resolution, channel_base, mapping layers): shape mismatch "
                         f"{bad[:4]}, "
                         f"missing {missing[:6]}, unexpected {unexpected[:6]}")
    model.load_state_dict(state)
    return model


@register_model(pretrained_file="the state_dict of an official stylegan2-ada-pytorch G_ema (paper256 config "
                                "at "
                                "256^2, see load_official_state_dict) as .safetensors or .pt")
def stylegan2_texture(z_dim: int = 512, c_dim: int = 0, w_dim: int = 512, img_resolution: int = 256,
                      img_channels: int = 3, mapping_layers: int = 8, channel_base: int = 16384,
                      channel_max: int = 512, architecture: str = "skip", conv_clamp: Optional[float] = 256,
                      mapping_lr_multiplier: float = 0.01, w_avg_beta: Optional[float] = 0.995,
                      use_noise: bool = True) -> StyleGAN2Generator:
    """StyleGAN2 UV-texture generator, 256^2 by default in the official ``paper256`` configuration
    (channel_base 16384, 8 mapping layers, z = w = 512, 14 ws): 24,767,458 parameters."""
    return StyleGAN2Generator(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution,
                              img_channels=img_channels, mapping_layers=mapping_layers,
                              channel_base=channel_base,
                              channel_max=channel_max, architecture=architecture, conv_clamp=conv_clamp,
                              mapping_lr_multiplier=mapping_lr_multiplier, w_avg_beta=w_avg_beta,
                              use_noise=use_noise)
