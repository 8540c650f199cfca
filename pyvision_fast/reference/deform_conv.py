"""Plain-PyTorch deformable convolution (torchvision semantics): the sampling columns and their transposes
written with gathers and scatters, so that the reference backend has an explicit backward.

Geometry ``conv = (kh, kw, sh, sw, ph, pw, dh, dw)``; shapes as in ``pyvision_fast.ops.deform_conv2d``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def _samples(input: Tensor, offset: Tensor, conv: tuple):
    """Corner indices (B, OG, K, P, 4), their validity and bilinear weights, the fractional parts and whether
    each point lies inside (-1, H) x (-1, W)."""
    kh, kw, sh, sw, ph, pw, dh, dw = conv
    B, C, H, W = input.shape
    Ho, Wo = offset.shape[2:]
    K = kh * kw
    OG = offset.shape[1] // (2 * K)
    off = offset.view(B, OG, K, 2, Ho * Wo)
    dev, dt = input.device, input.dtype
    ti = torch.arange(kh, device=dev).repeat_interleave(kw) * dh  # (K,)
    tj = torch.arange(kw, device=dev).repeat(kh) * dw
    ho = torch.arange(Ho, device=dev).repeat_interleave(Wo) * sh - ph  # (P,)
    wo = torch.arange(Wo, device=dev).repeat(Ho) * sw - pw
    y = (ti[:, None] + ho[None, :]).to(dt) + off[:, :, :, 0]  # (B, OG, K, P)
    x = (tj[:, None] + wo[None, :]).to(dt) + off[:, :, :, 1]
    inside = (y > -1) & (y < H) & (x > -1) & (x < W)
    y = torch.where(inside, y, torch.zeros_like(y))
    x = torch.where(inside, x, torch.zeros_like(x))
    h0, w0 = y.floor().long(), x.floor().long()
    ly, lx = y - h0, x - w0
    hs, ws = torch.stack([h0, h0, h0 + 1, h0 + 1], -1), torch.stack([w0, w0 + 1, w0, w0 + 1], -1)
    valid = (hs >= 0) & (hs < H) & (ws >= 0) & (ws < W) & inside[..., None]
    idx = torch.where(valid, hs * W + ws, torch.zeros_like(hs))
    wts = torch.stack([(1 - ly) * (1 - lx), (1 - ly) * lx, ly * (1 - lx), ly * lx], -1) * valid
    return idx, valid.to(dt), wts, ly, lx


def _corner_values(input: Tensor, idx: Tensor, OG: int) -> Tensor:
    """input (B, C, H, W), idx (B, OG, K, P, 4) -> values (B, OG, Cg, K, P, 4)."""
    B, C, H, W = input.shape
    Cg = C // OG
    flat = input.reshape(B, OG, Cg, H * W)
    g = idx.reshape(B, OG, 1, -1).expand(B, OG, Cg, idx[0, 0].numel())
    return torch.gather(flat, 3, g).view(B, OG, Cg, *idx.shape[2:])


def im2col(input: Tensor, offset: Tensor, mask: Optional[Tensor], conv: tuple) -> Tensor:
    """Columns (B, C * K, Ho * Wo)."""
    B, C, H, W = input.shape
    kh, kw = conv[:2]
    K, P = kh * kw, offset.shape[2] * offset.shape[3]
    OG = offset.shape[1] // (2 * K)
    if H * W == 0:
        return input.new_zeros(B, C * K, P)
    idx, valid, wts, _, _ = _samples(input, offset, conv)
    if mask is not None:
        wts = wts * mask.reshape(B, OG, K, P, 1)
    corners = _corner_values(input, idx, OG)  # corners outside the image must read 0, never inf / NaN
    cols = (torch.where(valid[:, :, None] > 0, corners, torch.zeros_like(corners)) * wts[:, :, None]).sum(-1)
    nan_point = torch.isnan(offset.view(B, OG, K, 2, P)).any(3)  # torchvision samples NaN at a NaN offset
    cols = torch.where(nan_point[:, :, None], torch.full_like(cols, float("nan")), cols)
    return cols.reshape(B, C * K, P)


def col2im(input: Tensor, offset: Tensor, mask: Optional[Tensor], conv: tuple,
           grad_columns: Tensor) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """(grad_input, grad_offset, grad_mask) from grad_columns (B, C * K, Ho * Wo)."""
    B, C, H, W = input.shape
    kh, kw = conv[:2]
    K, Ho, Wo = kh * kw, offset.shape[2], offset.shape[3]
    P = Ho * Wo
    OG = offset.shape[1] // (2 * K)
    Cg = C // OG
    if H * W == 0:
        return torch.zeros_like(input), torch.zeros_like(offset), None if mask is None else torch.zeros_like(mask)
    idx, valid, wts, ly, lx = _samples(input, offset, conv)
    m = mask.reshape(B, OG, K, P) if mask is not None else torch.ones_like(ly)
    gc = grad_columns.reshape(B, OG, Cg, K, P)
    contrib = gc[..., None] * (wts * m[..., None])[:, :, None]  # (B, OG, Cg, K, P, 4)
    grad_input = input.new_zeros(B, OG, Cg, H * W)
    grad_input.scatter_add_(3, idx.reshape(B, OG, 1, -1).expand(B, OG, Cg, K * P * 4),
                            contrib.reshape(B, OG, Cg, -1))
    v = _corner_values(input, idx, OG)
    v = torch.where(valid[:, :, None] > 0, v, torch.zeros_like(v))  # (B, OG, Cg, K, P, 4)
    v0, v1, v2, v3 = v.unbind(-1)
    lyc, lxc = ly[:, :, None], lx[:, :, None]
    gy = (gc * ((1 - lxc) * (v2 - v0) + lxc * (v3 - v1))).sum(2) * m  # (B, OG, K, P)
    gx = (gc * ((1 - lyc) * (v1 - v0) + lyc * (v3 - v2))).sum(2) * m
    grad_offset = torch.stack([gy, gx], dim=3).reshape(offset.shape)
    grad_mask = None
    if mask is not None:
        grad_mask = (gc * (v * wts[:, :, None]).sum(-1)).sum(2).reshape(mask.shape)
    return grad_input.reshape(input.shape), grad_offset, grad_mask
