"""Plain-PyTorch StyleGAN2 resampling and activation, written for clarity: the oracle of the tests, the
fallback backend and what GPUs run until the CUDA kernels are verified.

``upfirdn2d`` is the composition NVlabs' reference path describes (stylegan2-ada-pytorch,
``torch_utils/ops/upfirdn2d.py``): upsample by zero insertion (a reshape + ``F.pad``), pad with ``F.pad`` and
crop negative pads by slicing, correlate with the filter flipped (unless ``flip_filter``) and scaled by
``gain ** (f.ndim / 2)`` as a depthwise ``F.conv2d`` (a 1-D filter as two passes, along W first), then keep
every ``down``-th sample. ``bias_act`` adds the bias along ``dim``, applies the activation of
``ACTIVATIONS``, the gain and the clamp. ``bias_act_grad`` is its derivative in closed form (the clamp passes
gradient strictly inside (-clamp, clamp), NVlabs' rule; torch.clamp's own gradient also passes on the
boundary).

Arguments are taken already parsed (``up``/``down`` as (x, y), ``padding`` as (x0, x1, y0, y1)) and are not
validated: ``pyvision_fast.ops.stylegan2`` checks them.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

SELU_SCALE = 1.0507009873554804934193349852946
SELU_ALPHA = 1.6732632423543772848170429916717

# name -> (kernel code, default alpha, default gain), NVlabs' activation table.
ACTIVATIONS = {
    "linear": (0, 0.0, 1.0),
    "relu": (1, 0.0, math.sqrt(2)),
    "lrelu": (2, 0.2, math.sqrt(2)),
    "tanh": (3, 0.0, 1.0),
    "sigmoid": (4, 0.0, 1.0),
    "elu": (5, 0.0, 1.0),
    "selu": (6, 0.0, 1.0),
    "softplus": (7, 0.0, 1.0),
    "swish": (8, 0.0, math.sqrt(2)),
}
ACT_NAMES = {code: name for name, (code, _, _) in ACTIVATIONS.items()}


def filter_taps(f: Tensor, dtype: torch.dtype, flip_filter: bool, gain: float) -> Tensor:
    """The correlation taps of filter f: f in ``dtype``, flipped on every axis unless flip_filter (upfirdn2d
    is a true convolution by default), times gain ** (f.ndim / 2)."""
    f = f.to(dtype)
    if not flip_filter:
        f = f.flip(list(range(f.dim())))
    return f * (gain ** (f.dim() / 2))


def upfirdn2d(x: Tensor, f: Tensor, up: Sequence[int] = (1, 1), down: Sequence[int] = (1, 1),
              padding: Sequence[int] = (0, 0, 0, 0), flip_filter: bool = False, gain: float = 1.0) -> Tensor:
    """x (N, C, H, W), f (fh, fw) or (f,) (separable) -> (N, C, out_h, out_w),
    out = (in * up + pad0 + pad1 - f + down) // down per axis."""
    N, C, H, W = x.shape
    upx, upy = up
    downx, downy = down
    px0, px1, py0, py1 = padding
    # upsample: up - 1 zeros after every sample
    x = x.reshape(N, C, H, 1, W, 1)
    x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
    x = x.reshape(N, C, H * upy, W * upx)
    # pad, then crop the negative pads
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    taps = filter_taps(f, x.dtype, flip_filter, gain)
    if taps.dim() == 2:
        x = F.conv2d(x, taps[None, None].expand(C, 1, *taps.shape), groups=C)
    else:
        x = F.conv2d(x, taps[None, None, None].expand(C, 1, 1, -1), groups=C)
        x = F.conv2d(x, taps[None, None, :, None].expand(C, 1, -1, 1), groups=C)
    return x[:, :, ::downy, ::downx]


def _bias_view(x: Tensor, b: Optional[Tensor], dim: int) -> Tensor:
    if b is None:
        return x
    return x + b.reshape([-1 if i == dim else 1 for i in range(x.dim())])


def _act(z: Tensor, act: str, alpha: float) -> Tensor:
    if act == "linear":
        return z
    if act == "relu":
        return F.relu(z)
    if act == "lrelu":
        return F.leaky_relu(z, alpha)
    if act == "tanh":
        return torch.tanh(z)
    if act == "sigmoid":
        return torch.sigmoid(z)
    if act == "elu":
        return F.elu(z)
    if act == "selu":
        return F.selu(z)
    if act == "softplus":
        return F.softplus(z)
    if act == "swish":
        return torch.sigmoid(z) * z
    raise ValueError(f"unknown activation {act!r}")


def _act_grad(z: Tensor, act: str, alpha: float) -> Tensor:
    one = torch.ones_like(z)
    if act == "linear":
        return one
    if act == "relu":
        return (z > 0).to(z.dtype)
    if act == "lrelu":
        return torch.where(z > 0, one, one * alpha)
    if act == "tanh":
        return 1 - torch.tanh(z) ** 2
    if act == "sigmoid":
        s = torch.sigmoid(z)
        return s * (1 - s)
    if act == "elu":
        return torch.where(z > 0, one, torch.exp(z))
    if act == "selu":
        return torch.where(z > 0, one * SELU_SCALE, SELU_SCALE * SELU_ALPHA * torch.exp(z))
    if act == "softplus":
        return torch.where(z > 20, one, torch.sigmoid(z))
    if act == "swish":
        s = torch.sigmoid(z)
        return s + z * s * (1 - s)
    raise ValueError(f"unknown activation {act!r}")


def bias_act(x: Tensor, b: Optional[Tensor] = None, dim: int = 1, act: str = "linear", alpha: float = 0.0,
             gain: float = 1.0, clamp: Optional[float] = None) -> Tensor:
    """clamp(act(x + b) * gain, -clamp, clamp), b broadcast along dim (alpha, gain already resolved)."""
    y = _act(_bias_view(x, b, dim), act, alpha)
    if gain != 1:
        y = y * gain
    if clamp is not None:
        y = y.clamp(-clamp, clamp)
    return y


def bias_act_grad(dy: Tensor, x: Tensor, b: Optional[Tensor] = None, dim: int = 1, act: str = "linear",
                  alpha: float = 0.0, gain: float = 1.0, clamp: Optional[float] = None) -> Tensor:
    """d loss / d x of bias_act given dy (d loss / d b is its sum over every dimension but dim)."""
    z = _bias_view(x, b, dim)
    g = dy * gain * _act_grad(z, act, alpha)
    if clamp is not None:
        v = _act(z, act, alpha) * gain
        g = torch.where((v > -clamp) & (v < clamp), g, torch.zeros_like(g))
    return g
