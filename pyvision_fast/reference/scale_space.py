"""Plain-PyTorch Gaussian scale space and scale attention.

``gaussian_scale_space`` is what one writes without this library: for every scale, generate the sampled
Gaussian, pad the image, and run two depthwise convolutions (along W, then H). ``filter_matrix`` gives the same
1-D filtering as an explicit (n, n) matrix, which the reference backend uses to write the gradients out.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

PADDING_MODES = {"zeros": 0, "reflect": 1, "replicate": 2}


def radius_for(sigma: float, truncate: float) -> int:
    """Half-width of the sampled Gaussian of standard deviation sigma cut at truncate * sigma (scipy's rule)."""
    return int(truncate * sigma + 0.5)


def gaussian_kernels(sigma: Tensor, radii: Sequence[int]) -> Tensor:
    """Sampled Gaussians normalised to unit sum: sigma (S,), radii (S,) -> (S, 2 R + 1) with R = max(radii),
    row s centred on tap R and zero beyond radii[s]. Differentiable in sigma."""
    R = max(radii) if len(radii) else 0
    pos = torch.arange(-R, R + 1, dtype=sigma.dtype, device=sigma.device)
    inside = pos.abs()[None, :] <= torch.tensor(list(radii), device=sigma.device, dtype=sigma.dtype)[:, None]
    g = torch.exp(-0.5 * (pos[None, :] / sigma[:, None]) ** 2) * inside
    return g / g.sum(dim=1, keepdim=True)


def gaussian_scale_space(x: Tensor, sigma: Tensor, truncate: float = 3.0, padding_mode: str = "reflect") -> Tensor:
    """x (B, C, H, W), sigma (S,) -> (B, S, C, H, W): per scale, pad and run two depthwise convolutions."""
    B, C, H, W = x.shape
    mode = {"zeros": "constant"}.get(padding_mode, padding_mode)
    outs = []
    for s in range(sigma.shape[0]):
        r = radius_for(float(sigma[s].detach()), truncate)
        k = gaussian_kernels(sigma[s:s + 1].to(x.dtype), [r])[0]
        xp = F.pad(x, (r, r, r, r), mode=mode)
        y = F.conv2d(xp, k.view(1, 1, 1, -1).expand(C, 1, 1, 2 * r + 1), groups=C)
        outs.append(F.conv2d(y, k.view(1, 1, -1, 1).expand(C, 1, 2 * r + 1, 1), groups=C))
    return torch.stack(outs, dim=1) if outs else x.new_empty(B, 0, C, H, W)


def boundary_index(j: Tensor, n: int, boundary: int) -> Tensor:
    """Source index of positions j of a line of n samples under the boundary rule; -1 reads a zero."""
    inside = (j >= 0) & (j < n)
    if boundary == 1:  # reflect
        return torch.where(j < 0, -j, torch.where(j >= n, 2 * (n - 1) - j, j))
    if boundary == 2:  # replicate
        return j.clamp(0, n - 1)
    return torch.where(inside, j, torch.full_like(j, -1))


def _taps(n: int, r: int, boundary: int, device) -> Tensor:
    """(n, 2r + 1) source index of tap t at output i (n where the tap reads a zero)."""
    j = torch.arange(n, device=device)[:, None] + torch.arange(2 * r + 1, device=device)[None, :] - r
    src = boundary_index(j, n, boundary)
    return torch.where(src < 0, torch.full_like(src, n), src)


def filter_matrix(k: Tensor, n: int, boundary: int) -> Tensor:
    """The (n, n) matrix M with (M v)[i] = sum_t k[t] v[bnd(i + t - r)] for taps k (2r + 1,)."""
    r = (k.shape[0] - 1) // 2
    src = _taps(n, r, boundary, k.device)
    M = k.new_zeros(n, n + 1).scatter_add_(1, src, k.expand(n, -1))
    return M[:, :n]


def filter_matrix_grad(gM: Tensor, r: int, boundary: int) -> Tensor:
    """Gradient of the taps (2r + 1,) from the gradient of filter_matrix's output (n, n)."""
    n = gM.shape[0]
    src = _taps(n, r, boundary, gM.device)
    return torch.cat([gM, gM.new_zeros(n, 1)], dim=1).gather(1, src).sum(0)


def filter_bank(x: Tensor, kernels: Tensor, radii: Sequence[int], boundary: int) -> Tensor:
    """The filter-bank op of csrc/scale_space written with matrices: out[:, s] = M_H,s x M_W,s^T."""
    B, C, H, W = x.shape
    R = (kernels.shape[1] - 1) // 2
    outs = []
    for s, r in enumerate(radii):
        k = kernels[s, R - r:R + r + 1]
        outs.append(filter_matrix(k, H, boundary) @ x @ filter_matrix(k, W, boundary).T)
    return torch.stack(outs, dim=1) if outs else x.new_empty(B, 0, C, H, W)


def filter_bank_backward(grad: Tensor, x: Tensor, kernels: Tensor, radii: Sequence[int],
                         boundary: int) -> tuple[Tensor, Tensor]:
    B, C, H, W = x.shape
    R = (kernels.shape[1] - 1) // 2
    gx = torch.zeros_like(x)
    gk = torch.zeros_like(kernels)
    for s, r in enumerate(radii):
        k = kernels[s, R - r:R + r + 1]
        MH, MW = filter_matrix(k, H, boundary), filter_matrix(k, W, boundary)
        g = grad[:, s]
        gx += MH.T @ g @ MW
        gMH = (g @ MW @ x.transpose(-1, -2)).sum((0, 1))  # d/dMH of <g, MH x MW^T>
        gMW = (g.transpose(-1, -2) @ MH @ x).sum((0, 1))  # d/dMW
        gk[s, R - r:R + r + 1] = filter_matrix_grad(gMH, r, boundary) + filter_matrix_grad(gMW, r, boundary)
    return gx, gk


def scale_attention(y: Tensor, gain: Tensor) -> Tensor:
    """y (B, S, P), gain (S,): S * softmax_s(gain_s |y_s|) * y_s."""
    S = y.shape[1]
    p = torch.softmax(gain.view(1, S, 1) * y.abs(), dim=1)
    return S * p * y


def scale_attention_backward(grad: Tensor, y: Tensor, gain: Tensor) -> tuple[Tensor, Tensor]:
    S = y.shape[1]
    p = torch.softmax(gain.view(1, S, 1) * y.abs(), dim=1)
    q = (p * grad * y).sum(dim=1, keepdim=True)
    da = S * p * (grad * y - q)
    return S * grad * p + gain.view(1, S, 1) * torch.sign(y) * da, (da * y.abs()).sum(dim=(0, 2))


