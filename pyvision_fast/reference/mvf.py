"""Plain-PyTorch multi-view fusion: the official MVFNet formulation (three depthwise Conv3d, then
BatchNorm and HardSwish, then concatenation with the untouched channels)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def multi_view_fusion(x: Tensor, weight_t: Tensor, weight_h: Tensor, weight_w: Tensor,
                      bn_scale: Optional[Tensor] = None, bn_shift: Optional[Tensor] = None, hardswish: bool = False,
                      fused_channels: Optional[int] = None) -> Tensor:
    """x (N, C, T, H, W); kernels (F, 3); channels >= F pass through unchanged. Any of N, T, H, W zero gives
    the empty output (as the kernels do; conv3d refuses a zero-sized T, H or W)."""
    C = x.shape[1]
    Fc = C if fused_channels is None else fused_channels
    if Fc == 0 or x.numel() == 0:
        return x.clone()
    xf, xp = x[:, :Fc], x[:, Fc:]
    wt = weight_t.reshape(Fc, 1, 3, 1, 1)
    wh = weight_h.reshape(Fc, 1, 1, 3, 1)
    ww = weight_w.reshape(Fc, 1, 1, 1, 3)
    y = (F.conv3d(xf, wt, padding=(1, 0, 0), groups=Fc) + F.conv3d(xf, wh, padding=(0, 1, 0), groups=Fc)
         + F.conv3d(xf, ww, padding=(0, 0, 1), groups=Fc))
    if bn_scale is not None:
        y = y * bn_scale.view(1, Fc, 1, 1, 1) + bn_shift.view(1, Fc, 1, 1, 1)
    if hardswish:
        y = F.hardswish(y)
    return torch.cat([y, xp], dim=1)


def hardswish_grad(z: Tensor) -> Tensor:
    """d/dz HardSwish(z) = 0 below -3, 1 above 3, (2 z + 3) / 6 between (z's dtype)."""
    return torch.where(z < -3, 0.0, torch.where(z > 3, 1.0, (2 * z + 3) / 6)).to(z.dtype)


def multi_view_fusion_batchnorm(x: Tensor, weight_t: Tensor, weight_h: Tensor, weight_w: Tensor, bn_weight: Tensor,
                                bn_bias: Tensor, eps: float = 1e-5, hardswish: bool = True,
                                fused_channels: Optional[int] = None) -> tuple[Tensor, Tensor, Tensor]:
    """The views' sum on the first F channels, training-mode BatchNorm (batch statistics, F.batch_norm), optional
    HardSwish; returns (out, batch mean, biased batch variance)."""
    Fc = x.shape[1] if fused_channels is None else fused_channels
    y = multi_view_fusion(x[:, :Fc], weight_t, weight_h, weight_w, fused_channels=Fc)
    if y.numel() == 0:
        mean = var = torch.zeros(Fc, dtype=x.dtype, device=x.device)
    else:
        var, mean = torch.var_mean(y.float() if y.dtype in (torch.float16, torch.bfloat16) else y,
                                   dim=(0, 2, 3, 4), correction=0)
        mean, var = mean.to(x.dtype), var.to(x.dtype)
    z = F.batch_norm(y, None, None, bn_weight, bn_bias, training=True, eps=eps) if y.numel() else y
    if hardswish:
        z = F.hardswish(z)
    return torch.cat([z, x[:, Fc:]], dim=1), mean, var
