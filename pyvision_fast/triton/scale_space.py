"""ScaleSpaceConv2d's weight in Triton: one kernel builds the (C_out, C_in, k, k) weight from the coefficients and
log-scales; one kernel (and a sum over programs) gives both gradients.

Every program takes BLOCK_R rows (o, i) of the weight and all k * k taps of each row (padded to a power of two,
masked). The basis is recomputed per element from the row's scale: the clamp and exp of log_sigma, the 1-D
Gaussian on the support normalised to unit sum, the Hermite factors of the derivative orders (i, j). That is a
few exponentials per element, far below a memory access per element, and needs no table in memory. Backward
differentiates the 1-D factors in log(sigma) analytically (see reference.scale_space.derivative_tables): the
coefficient gradient is a row sum per basis filter; log_sigma's gradient is summed per scale group within the
program into partial (programs, S), which one torch sum reduces (deterministic, no atomics). At the clamp's
bounds the gradient passes or not as the installed torch's clamp does (reference.CLAMP_GRAD_AT_BOUNDS).

The clamp bounds are read from a (2,) tensor of the op's dtype, so that float64 clamps at the exact float64
log(sigma_min) and log(sigma_max) (a Python float argument would reach the kernel as float32).
"""
from __future__ import annotations

import functools
import math
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..reference import scale_space as ref

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@functools.lru_cache(maxsize=64)
def _bounds(lo: float, hi: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(2,) clamp bounds on the device, built once: a pageable copy that is not waited for. (Only real tensors
    reach here: the kernels run inside the custom op's implementation, never under tracing.)"""
    return torch.tensor([lo, hi], dtype=dtype).to(device, non_blocking=True)


@triton.jit
def _hermite(u, N: tl.constexpr):
    """He_N(u) and He_{N-1}(u) (the latter 0 for N = 0) by the recurrence He_{n+1} = u He_n - n He_{n-1}."""
    prev = u * 0.0
    cur = u * 0.0 + 1.0
    for n in tl.static_range(N):
        prev, cur = cur, u * cur - n * prev
    return cur, prev


@triton.jit
def _row_scale(LOGS, BOUNDS, rows, rmask, I, O, S, AT_BOUNDS: tl.constexpr):
    """Per row (o, i): its scale group, the clamped log-scale's sigma, and whether the clamp passes gradients."""
    o = rows // I
    q = O // S
    big = (O % S) * (q + 1)
    grp = tl.where(o < big, o // (q + 1), O % S + (o - big) // q)
    grp = tl.where(rmask, grp, 0)
    ls = tl.load(LOGS + grp)
    lo = tl.load(BOUNDS)
    hi = tl.load(BOUNDS + 1)
    sigma = tl.exp(tl.minimum(tl.maximum(ls, lo), hi))
    if AT_BOUNDS:
        passes = (ls >= lo) & (ls <= hi)
    else:
        passes = (ls > lo) & (ls < hi)
    return grp, sigma, passes


@triton.jit
def _normaliser(inv, K: tl.constexpr):
    """Z = sum over the support of exp(-u^2 / 2) and m2 = sum exp(-u^2 / 2) u^2 / Z, per row."""
    z = inv * 0.0
    m = inv * 0.0
    for t in tl.static_range(K):
        u = (t - (K - 1) / 2) * inv
        e = tl.exp(-0.5 * u * u)
        z += e
        m += e * u * u
    return z, m / z


@triton.jit
def _factor(u, g, m2, N: tl.constexpr, DERIV: tl.constexpr):
    """The 1-D factor (-1)^N He_N(u) g and (DERIV) its log-sigma derivative
    (-1)^N g (He_N (u^2 - m2) - N u He_{N-1})."""
    he, he_prev = _hermite(u, N)
    sign = 1.0 - 2.0 * (N % 2)
    f = sign * he * g
    df = f
    if DERIV:
        df = sign * g * (he * (u * u - m2) - N * u * he_prev)
    return f, df


@triton.jit
def _weight_kernel(COEFF, LOGS, BOUNDS, GRAD, OUT, PARTIAL, O, I, S,
                   K: tl.constexpr, KK: tl.constexpr, ORDER: tl.constexpr, NB: tl.constexpr,
                   BACKWARD: tl.constexpr, AT_BOUNDS: tl.constexpr, BLOCK_R: tl.constexpr):
    """Forward: OUT (rows, K*K) = sum_b coeff[row, b] basis_b. Backward: OUT (rows, NB) = the coefficient
    gradient, PARTIAL (programs, S) = this program's log_sigma gradient per group."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < O * I
    grp, sigma, passes = _row_scale(LOGS, BOUNDS, rows, rmask, I, O, S, AT_BOUNDS)
    inv = 1.0 / sigma
    z, m2 = _normaliser(inv, K)
    cols = tl.arange(0, KK)
    cmask = cols < K * K
    uy = ((cols // K) - (K - 1) / 2)[None, :] * inv[:, None]
    ux = ((cols % K) - (K - 1) / 2)[None, :] * inv[:, None]
    gy = tl.exp(-0.5 * uy * uy) / z[:, None]
    gx = tl.exp(-0.5 * ux * ux) / z[:, None]
    m2 = m2[:, None]
    mask2 = rmask[:, None] & cmask[None, :]
    rows64 = rows.to(tl.int64)
    if BACKWARD:
        gw = tl.load(GRAD + rows64[:, None] * (K * K) + cols[None, :], mask=mask2, other=0.0)
        g_sigma = inv * 0.0
    else:
        acc = tl.zeros([BLOCK_R, KK], dtype=sigma.dtype)
    for total in tl.static_range(ORDER + 1):
        for j in tl.static_range(total + 1):  # basis filter b = (i, j) with i = total - j
            b = total * (total + 1) // 2 + j
            fy, dfy = _factor(uy, gy, m2, total - j, BACKWARD)
            fx, dfx = _factor(ux, gx, m2, j, BACKWARD)
            c = tl.load(COEFF + rows64 * NB + b, mask=rmask, other=0.0)
            if BACKWARD:
                tl.store(OUT + rows64 * NB + b, tl.sum(gw * fy * fx, axis=1), mask=rmask)
                g_sigma += c * tl.sum(gw * (dfy * fx + fy * dfx), axis=1)
            else:
                acc += c[:, None] * (fy * fx)
    if BACKWARD:
        g_sigma = tl.where(rmask & passes, g_sigma, 0.0)
        for s in range(0, S):
            tl.store(PARTIAL + pid * S + s, tl.sum(tl.where(grp == s, g_sigma, 0.0), axis=0))
    else:
        tl.store(OUT + rows64[:, None] * (K * K) + cols[None, :], acc, mask=mask2)


def _launch(coeff, log_sigma, kernel_size, order, sigma_min, sigma_max, grad=None):
    O, I, nb = coeff.shape
    S, k = log_sigma.shape[0], kernel_size
    rows = O * I
    block = 16 if _INTERPRET else 64
    programs = triton.cdiv(rows, block)
    bounds = _bounds(math.log(sigma_min), math.log(sigma_max), coeff.dtype, coeff.device)
    backward = grad is not None
    out = torch.empty((O, I, nb) if backward else (O, I, k, k), dtype=coeff.dtype, device=coeff.device)
    partial = torch.empty((programs if backward else 0, S), dtype=coeff.dtype, device=coeff.device)
    if programs:
        _weight_kernel[(programs,)](coeff, log_sigma, bounds, grad if backward else coeff, out, partial, O, I, S,
                                    K=k, KK=triton.next_power_of_2(k * k), ORDER=order, NB=nb, BACKWARD=backward,
                                    AT_BOUNDS=ref.CLAMP_GRAD_AT_BOUNDS, BLOCK_R=block, num_warps=4)
    return out, partial


def scale_space_weight(coeff: Tensor, log_sigma: Tensor, kernel_size: int, order: int, sigma_min: float,
                       sigma_max: float) -> Tensor:
    """coeff (C_out, C_in, n_basis), log_sigma (S,) contiguous, same float dtype -> (C_out, C_in, k, k)."""
    return _launch(coeff, log_sigma, kernel_size, order, sigma_min, sigma_max)[0]


def scale_space_weight_backward(grad: Tensor, coeff: Tensor, log_sigma: Tensor, kernel_size: int, order: int,
                                sigma_min: float, sigma_max: float) -> tuple[Tensor, Tensor]:
    """grad (C_out, C_in, k, k) contiguous -> (grad_coeff (C_out, C_in, n_basis), grad_log_sigma (S,))."""
    g_coeff, partial = _launch(coeff, log_sigma, kernel_size, order, sigma_min, sigma_max, grad=grad)
    return g_coeff, partial.sum(dim=0)
