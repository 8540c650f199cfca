"""Plain-PyTorch Gaussian scale space, scale attention and ScaleSpaceConv2d's weight.

``gaussian_scale_space`` is what one writes without this library: for every scale, generate the sampled
Gaussian, pad the image, and run two depthwise convolutions (along W, then H). ``filter_matrix`` gives the same
1-D filtering as an explicit (n, n) matrix, which the reference backend uses to write the gradients out.
``scale_space_weight`` is ScaleSpaceConv2d's weight as the layer first built it (basis per scale, one matrix
product per scale group), with its gradients written out.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

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




# ScaleSpaceConv2d's weight -------------------------------------------------------------------------------


def hermite(n: int, u: Tensor) -> Tensor:
    """Probabilists' Hermite polynomial He_n(u): d^n/du^n exp(-u^2/2) = (-1)^n He_n(u) exp(-u^2/2)."""
    h0, h1 = torch.ones_like(u), u
    if n == 0:
        return h0
    for k in range(1, n):
        h0, h1 = h1, u * h1 - k * h0
    return h1


def basis_orders(order: int) -> list[tuple[int, int]]:
    """The derivative orders (i along y, j along x) of the basis filters: (0,0), (1,0), (0,1), (2,0), (1,1), ..."""
    return [(i, total - i) for total in range(order + 1) for i in range(total, -1, -1)]


def gaussian_derivative_basis(sigma: Tensor, kernel_size: int, order: int) -> Tensor:
    """Sampled, scale-normalised 2-D Gaussian derivative filters.

    sigma: (S,) scales in pixels -> (S, n_basis, k, k) with n_basis = (order + 1) (order + 2) / 2, derivative
    orders (i, j), i + j <= order, in the order (0,0), (1,0), (0,1), (2,0), (1,1), (0,2), ... The order-(i, j)
    filter is sigma^(i+j) d^i/dy^i d^j/dx^j of the Gaussian normalised to unit sum on the support
    (Lindeberg's gamma = 1 normalisation), so responses of different scales are comparable.
    """
    r = (kernel_size - 1) / 2
    pos = torch.arange(kernel_size, dtype=sigma.dtype, device=sigma.device) - r  # (k,)
    u = pos[None, :] / sigma[:, None]  # (S, k)
    g = torch.exp(-0.5 * u * u)
    g = g / g.sum(dim=1, keepdim=True)
    # 1-D derivative of order n, scale-normalised: sigma^n d^n/dx^n g = (-1)^n He_n(u) g
    d1 = [((-1) ** n) * hermite(n, u) * g for n in range(order + 1)]  # each (S, k)
    return torch.stack([d1[i][:, :, None] * d1[j][:, None, :] for i, j in basis_orders(order)], dim=1)


def _clamp_grad_at_bounds() -> bool:
    """Whether this torch's clamp passes the gradient at its bounds (>= / <=: torch up to mid-2026) or not (the
    minimum-norm subgradient, > / <: later releases). The weight op's gradient follows the installed torch."""
    with torch.enable_grad():
        x = torch.zeros(2, requires_grad=True)
        (g,) = torch.autograd.grad(x.clamp(0.0, 1.0).sum(), x)
    return bool(g[0] == 1)


CLAMP_GRAD_AT_BOUNDS = _clamp_grad_at_bounds()


def clamp_passes(log_sigma: Tensor, lo: float, hi: float) -> Tensor:
    """Where autograd's clamp(lo, hi) passes log_sigma's gradient (see CLAMP_GRAD_AT_BOUNDS)."""
    if CLAMP_GRAD_AT_BOUNDS:
        return (log_sigma >= lo) & (log_sigma <= hi)
    return (log_sigma > lo) & (log_sigma < hi)


def group_sizes(out_channels: int, num_scales: int) -> list[int]:
    """Output channels per scale group: as even as possible, the first out_channels % num_scales one larger."""
    return [out_channels // num_scales + (1 if s < out_channels % num_scales else 0) for s in range(num_scales)]


def scale_space_weight(coeff: Tensor, log_sigma: Tensor, kernel_size: int, order: int, sigma_min: float,
                       sigma_max: float, log_bounds: Optional[tuple[float, float]] = None) -> Tensor:
    """ScaleSpaceConv2d's Conv2d weight, written as the layer first did: sigma = exp(clamp(log_sigma)), the
    basis of every scale, then one matrix product per scale group (coefficients (channels * C_in, n_basis)
    times basis (n_basis, k * k)) and a concatenation.

    coeff (C_out, C_in, n_basis), log_sigma (S,) -> (C_out, C_in, k, k) in coeff's dtype. log_bounds: the clamp's
    bounds when they must differ from (log sigma_min, log sigma_max), e.g. those bounds rounded to float32 for a
    float64 reference of a float32 computation (a log-sigma exactly at a rounded bound is then at the bound in
    both)."""
    k = kernel_size
    lo, hi = log_bounds if log_bounds is not None else (math.log(sigma_min), math.log(sigma_max))
    sigma = log_sigma.clamp(lo, hi).exp()
    basis = gaussian_derivative_basis(sigma, k, order).to(coeff.dtype)  # (S, nb, k, k)
    O, I, nb = coeff.shape
    parts, start = [], 0
    for s, size in enumerate(group_sizes(O, log_sigma.shape[0])):
        c = coeff[start:start + size].reshape(size * I, nb)
        parts.append((c @ basis[s].reshape(nb, k * k)).view(size, I, k, k))
        start += size
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def derivative_tables(sigma: Tensor, kernel_size: int, order: int) -> tuple[Tensor, Tensor]:
    """The 1-D factors of the basis and their log-sigma derivatives: (S, order + 1, k) each.

    f_n = (-1)^n He_n(u) g(u) / Z with u = x / sigma and Z = sum of g over the support. With m2 = sum g u^2 / Z,
    d g/Z / d log(sigma) = g/Z (u^2 - m2) and du / d log(sigma) = -u, so
    d f_n / d log(sigma) = (-1)^n g/Z (He_n(u) (u^2 - m2) - n u He_{n-1}(u))."""
    r = (kernel_size - 1) / 2
    pos = torch.arange(kernel_size, dtype=sigma.dtype, device=sigma.device) - r
    u = pos[None, :] / sigma[:, None]
    u2 = u * u
    g = torch.exp(-0.5 * u2)
    g = g / g.sum(dim=1, keepdim=True)
    dg = g * (u2 - (g * u2).sum(dim=1, keepdim=True))
    he = [hermite(n, u) for n in range(order + 1)]
    f = [((-1) ** n) * he[n] * g for n in range(order + 1)]
    df = [((-1) ** n) * (he[n] * dg - (n * u * he[n - 1] * g if n else 0)) for n in range(order + 1)]
    return torch.stack(f, dim=1), torch.stack(df, dim=1)


def scale_space_weight_backward(grad: Tensor, coeff: Tensor, log_sigma: Tensor, kernel_size: int, order: int,
                                sigma_min: float, sigma_max: float) -> tuple[Tensor, Tensor]:
    """Gradients of ``scale_space_weight`` in coeff and log_sigma, written out per scale group (custom-op
    implementations run below autograd). log_sigma's gradient is zero where the clamp holds it, as autograd's
    clamp gives (at the bounds themselves: see CLAMP_GRAD_AT_BOUNDS)."""
    k = kernel_size
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    sigma = log_sigma.clamp(lo, hi).exp()
    f, df = derivative_tables(sigma, k, order)
    O, I, nb = coeff.shape
    g_coeff = torch.empty_like(coeff)
    g_log_sigma = torch.zeros_like(log_sigma)
    start = 0
    for s, size in enumerate(group_sizes(O, log_sigma.shape[0])):
        basis = torch.stack([f[s, i][:, None] * f[s, j][None, :] for i, j in basis_orders(order)])  # (nb, k, k)
        dbasis = torch.stack([df[s, i][:, None] * f[s, j][None, :] + f[s, i][:, None] * df[s, j][None, :]
                              for i, j in basis_orders(order)])
        gw = grad[start:start + size].reshape(size * I, k * k)
        c = coeff[start:start + size].reshape(size * I, nb)
        g_coeff[start:start + size] = (gw @ basis.to(gw.dtype).reshape(nb, k * k).T).view(size, I, nb)
        g_basis = c.T @ gw  # (nb, k * k)
        g_log_sigma[s] = (g_basis.to(dbasis.dtype) * dbasis.reshape(nb, k * k)).sum()
        start += size
    inside = clamp_passes(log_sigma, lo, hi)
    return g_coeff, torch.where(inside, g_log_sigma, torch.zeros_like(g_log_sigma))
