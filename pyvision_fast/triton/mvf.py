"""Multi-view fusion (MVFNet) in Triton: one launch per direction, one program per fused channel.

A fused channel c of x (N, C, T, H, W) is R = N*T rows of an H*W plane. Its program walks the channel in tiles
of (BLOCK_R rows, BLOCK_P plane positions) and computes the views' sum y (depthwise 3-tap convolutions along T,
H and W, zero padding) from seven masked loads of x per tile (the neighbours come from L1/L2: x is read from
memory once). Epilogues (``EPI``):

- 0: none, 1: ``z = scale * y + shift`` (a folded inference BatchNorm), 2: training-mode BatchNorm: a first
  pass over the channel takes the batch mean and biased variance of y (per-tile mean and centred sum of squares,
  combined with Chan's formula), a second recomputes y and writes ``(y - mean) * gamma / std + beta``.
- HardSwish after any of them (``HS``, a runtime switch).

The pass-through channels F..C-1 are a strided copy done by the same launch: the programs after the F channel
programs each copy one chunk of one row of that block, which the host describes as rows of one contiguous run
at a fixed pitch (both the (N*T, C, H, W) frame layout and the contiguous (N, C, T, H, W) layout are; other
layouts are copied by the caller).

The backward program of a channel: (BatchNorm only) the sums of dz and dz * xhat over the channel, then the
gradient before the epilogue ``gy`` into a float workspace (and the kernel-weight gradients as sums of
``gy * x[neighbour]``), a block barrier, then ``grad_x`` through the transposed stencil from the workspace. For
half inputs the statistics are recomputed from float32 views (the saved ones are rounded to the half type).

Arithmetic is float32 (float64 for float64 inputs); indices are 32-bit, so the host sends tensors whose element
offsets reach 2**31 elsewhere. On CPU tensors these kernels run only under ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

import functools
import math
import os
import struct
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Launch shape (8 warps): channel tiles of 1024 elements (2048 in the training forward where the plane block
# is >= 256 wide), which keep float32 / half kernels at <= 128 registers per thread (ptxas, sm_90): two
# programs per SM, so that pass-through copy programs run beside a channel program. Copy chunks of 8192
# elements (32 per thread).
_COPY_BLOCK = 8192
_NUM_WARPS = 8
_INT32 = 2**31 - 1

# Sizes, strides and the HardSwish switch are not specialised on (divisibility by 16, == 1): each shape would
# compile its own kernels. The copy's alignment comes from VEC instead.
_SHAPE_ARGS = ["F", "R", "T", "H", "W", "HW", "s_n", "s_c", "s_t", "s_h", "so_n", "so_c", "so_t", "so_h",
               "sg_n", "sg_c", "sg_t", "sg_h", "cp_src_off", "cp_dst_off", "cp_src_pitch", "cp_dst_pitch", "cp_run",
               "cp_chunks", "HS"]


@triton.jit
def _taps(WT, WH, WW, c, ACC: tl.constexpr):
    a0 = tl.load(WT + 3 * c).to(ACC)
    a1 = tl.load(WT + 3 * c + 1).to(ACC)
    a2 = tl.load(WT + 3 * c + 2).to(ACC)
    b0 = tl.load(WH + 3 * c).to(ACC)
    b1 = tl.load(WH + 3 * c + 1).to(ACC)
    b2 = tl.load(WH + 3 * c + 2).to(ACC)
    d0 = tl.load(WW + 3 * c).to(ACC)
    d1 = tl.load(WW + 3 * c + 1).to(ACC)
    d2 = tl.load(WW + 3 * c + 2).to(ACC)
    return a0, a1 + b1 + d1, a2, b0, b2, d0, d2


@triton.jit
def _coords(r0, p0, R, T, W, HW, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr):
    """Rows r (= n * T + t) and plane positions p (= h * W + w) of one tile, and which of them exist."""
    r = r0 + tl.arange(0, BLOCK_R)
    p = p0 + tl.arange(0, BLOCK_P)
    t = r % T
    h = p // W
    w = p - h * W
    ok = (r < R)[:, None] & (p < HW)[None, :]
    return r, p, t, h, w, ok


@triton.jit
def _views(X, base, r, t, h, w, ok, T, H, W, s_n, s_t, s_h, a0, ctr, a2, b0, b2, d0, d2, ACC: tl.constexpr):
    """y of one tile and the seven values of x it reads (zero outside the volume)."""
    off = base + ((r // T) * s_n + t * s_t)[:, None] + (h * s_h + w)[None, :]
    xc = tl.load(X + off, mask=ok, other=0.0).to(ACC)
    xt0 = tl.load(X + off - s_t, mask=ok & (t > 0)[:, None], other=0.0).to(ACC)
    xt2 = tl.load(X + off + s_t, mask=ok & (t < T - 1)[:, None], other=0.0).to(ACC)
    xh0 = tl.load(X + off - s_h, mask=ok & (h > 0)[None, :], other=0.0).to(ACC)
    xh2 = tl.load(X + off + s_h, mask=ok & (h < H - 1)[None, :], other=0.0).to(ACC)
    xw0 = tl.load(X + off - 1, mask=ok & (w > 0)[None, :], other=0.0).to(ACC)
    xw2 = tl.load(X + off + 1, mask=ok & (w < W - 1)[None, :], other=0.0).to(ACC)
    y = ctr * xc + a0 * xt0 + a2 * xt2 + b0 * xh0 + b2 * xh2 + d0 * xw0 + d2 * xw2
    return y, xc, xt0, xt2, xh0, xh2, xw0, xw2


@triton.jit
def _invstd(var, eps, ACC: tl.constexpr):
    """1 / sqrt(var + eps), the square root correctly rounded (tl.sqrt is approximate in float32)."""
    if ACC == tl.float64:
        return 1.0 / tl.sqrt(var + eps)
    else:
        return 1.0 / tl.sqrt_rn(var + eps)


@triton.jit
def _hardswish(z):
    return z * tl.minimum(tl.maximum(z + 3.0, 0.0), 6.0) / 6.0


@triton.jit
def _hardswish_grad(z):
    return tl.where(z < -3.0, 0.0, tl.where(z > 3.0, 1.0, (2.0 * z + 3.0) / 6.0))


@triton.jit
def _tile_sum(v):
    return tl.sum(tl.sum(v, axis=1), axis=0)


@triton.jit
def _stats(X, base, R, T, H, W, HW, s_n, s_t, s_h, a0, ctr, a2, b0, b2, d0, d2,
           ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr):
    """Batch mean and biased variance of the channel's y: sums of y - K and (y - K)**2 per lane (no reduction
    per tile), K the first tile's mean, so that the variance does not cancel."""
    r, p, t, h, w, ok = _coords(0, 0, R, T, W, HW, BLOCK_R, BLOCK_P)
    y, xc, xt0, xt2, xh0, xh2, xw0, xw2 = _views(X, base, r, t, h, w, ok, T, H, W, s_n, s_t, s_h,
                                                 a0, ctr, a2, b0, b2, d0, d2, ACC)
    k = _tile_sum(y) / (tl.minimum(R, BLOCK_R) * tl.minimum(HW, BLOCK_P)).to(ACC)
    s1 = tl.zeros([BLOCK_R, BLOCK_P], ACC)
    s2 = tl.zeros([BLOCK_R, BLOCK_P], ACC)
    for r0 in range(0, R, BLOCK_R):
        for p0 in range(0, HW, BLOCK_P):
            r, p, t, h, w, ok = _coords(r0, p0, R, T, W, HW, BLOCK_R, BLOCK_P)
            y, xc, xt0, xt2, xh0, xh2, xw0, xw2 = _views(X, base, r, t, h, w, ok, T, H, W, s_n, s_t, s_h,
                                                         a0, ctr, a2, b0, b2, d0, d2, ACC)
            d = tl.where(ok, y - k, 0.0)
            s1 += d
            s2 += d * d
    count = (R * HW).to(ACC)
    dm = _tile_sum(s1) / count
    return k + dm, tl.maximum(_tile_sum(s2) / count - dm * dm, 0.0)


@triton.jit
def _copy_chunk(SRC, DST, j, src_off, dst_off, src_pitch, dst_pitch, run, chunks, COPY_BLOCK: tl.constexpr,
                VEC: tl.constexpr):
    """Chunk j of the pass-through block: row j // chunks, elements [k * COPY_BLOCK, (k + 1) * COPY_BLOCK).
    VEC: the row starts are multiples of VEC elements (16-byte vectors where VEC fills one); full chunks
    take unmasked vector loads and stores, the row's last one masked ones."""
    row = j // chunks
    start = (j - row * chunks) * COPY_BLOCK
    src = SRC + tl.multiple_of(src_off + row * src_pitch, VEC)
    dst = DST + tl.multiple_of(dst_off + row * dst_pitch, VEC)
    offs = tl.max_contiguous(tl.multiple_of(start + tl.arange(0, COPY_BLOCK), COPY_BLOCK), COPY_BLOCK)
    if start + COPY_BLOCK <= run:
        tl.store(dst + offs, tl.load(src + offs, eviction_policy="evict_first"))
    else:
        m = offs < run
        tl.store(dst + offs, tl.load(src + offs, mask=m, eviction_policy="evict_first"), mask=m)


@triton.jit(do_not_specialize=_SHAPE_ARGS)
def _forward_kernel(X, OUT, WT, WH, WW, P0, P1, MEAN, VAR,
                    F, R, T, H, W, HW, s_n, s_c, s_t, s_h, so_n, so_c, so_t, so_h, eps_hi, eps_lo,
                    cp_src_off, cp_dst_off, cp_src_pitch, cp_dst_pitch, cp_run, cp_chunks, HS,
                    EPI: tl.constexpr, ACC: tl.constexpr,
                    BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr, COPY_BLOCK: tl.constexpr,
                    VEC: tl.constexpr):
    pid = tl.program_id(0)
    if pid < F:
        c = pid
        base = c * s_c
        a0, ctr, a2, b0, b2, d0, d2 = _taps(WT, WH, WW, c, ACC)
        if EPI == 2:
            mean, var = _stats(X, base, R, T, H, W, HW, s_n, s_t, s_h, a0, ctr, a2, b0, b2, d0, d2,
                               ACC, BLOCK_R, BLOCK_P)
            tl.store(MEAN + c, mean.to(MEAN.dtype.element_ty))
            tl.store(VAR + c, var.to(VAR.dtype.element_ty))
            eps = tl.sum(tl.zeros([BLOCK_P], ACC), axis=0) + eps_hi + eps_lo  # in ACC: exact in float64
            scale = tl.load(P0 + c).to(ACC) * _invstd(var, eps, ACC)
            shift = tl.load(P1 + c).to(ACC)
        if EPI == 1:
            scale = tl.load(P0 + c).to(ACC)
            shift = tl.load(P1 + c).to(ACC)
        for r0 in range(0, R, BLOCK_R):
            for p0 in range(0, HW, BLOCK_P):
                r, p, t, h, w, ok = _coords(r0, p0, R, T, W, HW, BLOCK_R, BLOCK_P)
                y, xc, xt0, xt2, xh0, xh2, xw0, xw2 = _views(X, base, r, t, h, w, ok, T, H, W, s_n, s_t, s_h,
                                                             a0, ctr, a2, b0, b2, d0, d2, ACC)
                z = y
                if EPI == 1:
                    z = scale * y + shift
                if EPI == 2:
                    z = (y - mean) * scale + shift
                if HS != 0:
                    z = _hardswish(z)
                off = c * so_c + ((r // T) * so_n + t * so_t)[:, None] + (h * so_h + w)[None, :]
                tl.store(OUT + off, z.to(OUT.dtype.element_ty), mask=ok)
    else:
        _copy_chunk(X, OUT, pid - F, cp_src_off, cp_dst_off, cp_src_pitch, cp_dst_pitch, cp_run, cp_chunks,
                    COPY_BLOCK, VEC)


@triton.jit
def _ws_load(WS, off, mask):
    return tl.load(WS + off, mask=mask, other=0.0, cache_modifier=".cg")


@triton.jit(do_not_specialize=_SHAPE_ARGS)
def _backward_kernel(X, GO, GX, WS, WT, WH, WW, P0, P1, MEAN, VAR, GWT, GWH, GWW, GP0, GP1,
                     F, R, T, H, W, HW, s_n, s_c, s_t, s_h, so_n, so_c, so_t, so_h, sg_n, sg_c, sg_t, sg_h,
                     eps_hi, eps_lo, cp_src_off, cp_dst_off, cp_src_pitch, cp_dst_pitch, cp_run, cp_chunks, HS,
                     EPI: tl.constexpr, RECOMPUTE: tl.constexpr, ACC: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr, COPY_BLOCK: tl.constexpr,
                     VEC: tl.constexpr):
    pid = tl.program_id(0)
    if pid < F:
        c = pid
        base = c * s_c
        ws_base = c * (R * HW)
        a0, ctr, a2, b0, b2, d0, d2 = _taps(WT, WH, WW, c, ACC)
        if EPI == 1:
            scale = tl.load(P0 + c).to(ACC)
            shift = tl.load(P1 + c).to(ACC)
        if EPI == 2:
            if RECOMPUTE:
                mean, var = _stats(X, base, R, T, H, W, HW, s_n, s_t, s_h, a0, ctr, a2, b0, b2, d0, d2,
                                   ACC, BLOCK_R, BLOCK_P)
            else:
                mean = tl.load(MEAN + c).to(ACC)
                var = tl.load(VAR + c).to(ACC)
            eps = tl.sum(tl.zeros([BLOCK_P], ACC), axis=0) + eps_hi + eps_lo
            invstd = _invstd(var, eps, ACC)
            gamma = tl.load(P0 + c).to(ACC)
            beta = tl.load(P1 + c).to(ACC)
            # dz = grad * HardSwish'(z); its sum and its sum against xhat give the BatchNorm backward. y goes to
            # the workspace, where the next pass reads it back instead of recomputing the views.
            acc_dz = tl.zeros([BLOCK_R, BLOCK_P], ACC)
            acc_dz_xhat = tl.zeros([BLOCK_R, BLOCK_P], ACC)
            for r0 in range(0, R, BLOCK_R):
                for p0 in range(0, HW, BLOCK_P):
                    r, p, t, h, w, ok = _coords(r0, p0, R, T, W, HW, BLOCK_R, BLOCK_P)
                    y, xc, xt0, xt2, xh0, xh2, xw0, xw2 = _views(X, base, r, t, h, w, ok, T, H, W, s_n, s_t, s_h,
                                                                 a0, ctr, a2, b0, b2, d0, d2, ACC)
                    tl.store(WS + ws_base + (r * HW)[:, None] + p[None, :], y, mask=ok)
                    xhat = (y - mean) * invstd
                    goff = c * so_c + ((r // T) * so_n + t * so_t)[:, None] + (h * so_h + w)[None, :]
                    dz = tl.load(GO + goff, mask=ok, other=0.0).to(ACC)
                    if HS != 0:
                        dz = dz * _hardswish_grad(gamma * xhat + beta)
                    acc_dz += dz
                    acc_dz_xhat += tl.where(ok, dz * xhat, 0.0)
            sum_dz = _tile_sum(acc_dz)
            sum_dz_xhat = _tile_sum(acc_dz_xhat)
            tl.store(GP0 + c, sum_dz_xhat.to(GP0.dtype.element_ty))
            tl.store(GP1 + c, sum_dz.to(GP1.dtype.element_ty))
            count = (R * HW).to(ACC)
            k_mean = sum_dz / count
            k_xhat = sum_dz_xhat / count
            g_scale = gamma * invstd
            tl.debug_barrier()  # y is read back by whichever thread the next loop's layout gives the element
        # gy, the gradient of y, into the workspace.
        for r0 in range(0, R, BLOCK_R):
            for p0 in range(0, HW, BLOCK_P):
                r, p, t, h, w, ok = _coords(r0, p0, R, T, W, HW, BLOCK_R, BLOCK_P)
                woff = ws_base + (r * HW)[:, None] + p[None, :]
                goff = c * so_c + ((r // T) * so_n + t * so_t)[:, None] + (h * so_h + w)[None, :]
                gy = tl.load(GO + goff, mask=ok, other=0.0).to(ACC)
                if EPI == 2:
                    xhat = (_ws_load(WS, woff, ok) - mean) * invstd
                    if HS != 0:
                        gy = gy * _hardswish_grad(gamma * xhat + beta)
                    gy = g_scale * (gy - k_mean - xhat * k_xhat)
                else:
                    if HS != 0:
                        y, xc, xt0, xt2, xh0, xh2, xw0, xw2 = _views(X, base, r, t, h, w, ok, T, H, W, s_n, s_t,
                                                                     s_h, a0, ctr, a2, b0, b2, d0, d2, ACC)
                        if EPI == 1:
                            gy = gy * _hardswish_grad(scale * y + shift)
                        else:
                            gy = gy * _hardswish_grad(y)
                    if EPI == 1:
                        gy = gy * scale
                tl.store(WS + woff, gy, mask=ok)
        # Every thread's gy is stored before any neighbour is read back (a CTA barrier orders global memory too).
        tl.debug_barrier()
        # grad_x through the transposed stencil (x[t] feeds y[t + 1] through tap 0, y[t - 1] through tap 2), and
        # the kernel gradients in the same form: sum over t of gy[t] * x[t - 1] = sum over s of x[s] * gy[s + 1].
        acc_c = tl.zeros([BLOCK_R, BLOCK_P], ACC)
        acc_t0 = tl.zeros([BLOCK_R, BLOCK_P], ACC)
        acc_t2 = tl.zeros([BLOCK_R, BLOCK_P], ACC)
        acc_h0 = tl.zeros([BLOCK_R, BLOCK_P], ACC)
        acc_h2 = tl.zeros([BLOCK_R, BLOCK_P], ACC)
        acc_w0 = tl.zeros([BLOCK_R, BLOCK_P], ACC)
        acc_w2 = tl.zeros([BLOCK_R, BLOCK_P], ACC)
        for r0 in range(0, R, BLOCK_R):
            for p0 in range(0, HW, BLOCK_P):
                r, p, t, h, w, ok = _coords(r0, p0, R, T, W, HW, BLOCK_R, BLOCK_P)
                woff = ws_base + (r * HW)[:, None] + p[None, :]
                g_c = _ws_load(WS, woff, ok)
                g_tp = _ws_load(WS, woff + HW, ok & (t < T - 1)[:, None])
                g_tm = _ws_load(WS, woff - HW, ok & (t > 0)[:, None])
                g_hp = _ws_load(WS, woff + W, ok & (h < H - 1)[None, :])
                g_hm = _ws_load(WS, woff - W, ok & (h > 0)[None, :])
                g_wp = _ws_load(WS, woff + 1, ok & (w < W - 1)[None, :])
                g_wm = _ws_load(WS, woff - 1, ok & (w > 0)[None, :])
                xv = tl.load(X + base + ((r // T) * s_n + t * s_t)[:, None] + (h * s_h + w)[None, :], mask=ok,
                             other=0.0).to(ACC)
                acc_c += xv * g_c
                acc_t0 += xv * g_tp
                acc_t2 += xv * g_tm
                acc_h0 += xv * g_hp
                acc_h2 += xv * g_hm
                acc_w0 += xv * g_wp
                acc_w2 += xv * g_wm
                g = ctr * g_c + a0 * g_tp + a2 * g_tm + b0 * g_hp + b2 * g_hm + d0 * g_wp + d2 * g_wm
                xoff = c * sg_c + ((r // T) * sg_n + t * sg_t)[:, None] + (h * sg_h + w)[None, :]
                tl.store(GX + xoff, g.to(GX.dtype.element_ty), mask=ok)
        s_c0 = _tile_sum(acc_c)
        tl.store(GWT + 3 * c, _tile_sum(acc_t0).to(GWT.dtype.element_ty))
        tl.store(GWT + 3 * c + 1, s_c0.to(GWT.dtype.element_ty))
        tl.store(GWT + 3 * c + 2, _tile_sum(acc_t2).to(GWT.dtype.element_ty))
        tl.store(GWH + 3 * c, _tile_sum(acc_h0).to(GWH.dtype.element_ty))
        tl.store(GWH + 3 * c + 1, s_c0.to(GWH.dtype.element_ty))
        tl.store(GWH + 3 * c + 2, _tile_sum(acc_h2).to(GWH.dtype.element_ty))
        tl.store(GWW + 3 * c, _tile_sum(acc_w0).to(GWW.dtype.element_ty))
        tl.store(GWW + 3 * c + 1, s_c0.to(GWW.dtype.element_ty))
        tl.store(GWW + 3 * c + 2, _tile_sum(acc_w2).to(GWW.dtype.element_ty))
    else:
        _copy_chunk(GO, GX, pid - F, cp_src_off, cp_dst_off, cp_src_pitch, cp_dst_pitch, cp_run, cp_chunks,
                    COPY_BLOCK, VEC)


# ----------------------------------------------------------------------------------------------- host side


_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check(op: str, x: Tensor, tensors: list, fused: int, pair_names: tuple = (), grad: Optional[Tensor] = None,
          eps: Optional[float] = None) -> None:
    """The preconditions the C++ bindings check for the CUDA kernels, with the same errors: x (N, C, T, H, W) of
    a float dtype with non-negative strides, 0 <= fused <= C, every (name, tensor, shape) of ``tensors`` (None
    skipped) on x's device in x's dtype with that shape, the pair named ``pair_names`` given together, grad
    like x, eps > 0. (It runs on every call: attribute reads only.)"""
    if x.dim() != 5:
        raise ValueError(f"{op}: argument 'x' must have 5 dimensions (N, C, T, H, W), got shape {tuple(x.shape)}")
    dtype, device = x.dtype, x.get_device()
    if dtype not in _FLOATS:
        raise TypeError(f"{op}: argument 'x' must be float32, float64, float16 or bfloat16, got {dtype}")
    if not 0 <= fused <= x.shape[1]:
        raise ValueError(f"{op}: fused_channels must be in [0, {x.shape[1]}], got {fused}")
    if pair_names and (tensors[3][1] is None) != (tensors[4][1] is None):
        raise ValueError(f"{op}: give both {pair_names[0]} and {pair_names[1]}, or neither")
    for name, t, shape in tensors:
        if t is None:
            continue
        if t.get_device() != device or t.is_cuda != x.is_cuda:
            raise TypeError(f"{op}: argument '{name}' is on {t.device} but this call runs on {x.device}")
        if t.shape != shape:
            raise ValueError(f"{op}: argument '{name}' must have shape {shape}, got {tuple(t.shape)}")
        if t.dtype is not dtype:
            raise TypeError(f"{op}: arguments '{name}' ({t.dtype}) and 'x' ({dtype}) must have the same dtype")
    if grad is not None and (grad.shape != x.shape or grad.dtype is not dtype or grad.get_device() != device
                             or grad.is_cuda != x.is_cuda):
        raise ValueError(f"{op}: argument 'grad_out' must be like x {tuple(x.shape)} {dtype} on {x.device}, got "
                         f"{tuple(grad.shape)} {grad.dtype} on {grad.device}")
    for name, t in (("x", x), ("grad_out", grad)):
        if t is not None and t.numel() and min(t.stride()) < 0:
            raise ValueError(f"{op}: argument '{name}' has a negative stride")
    if eps is not None and not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"{op}: eps must be a positive number, got {eps}")


@functools.lru_cache(maxsize=1024)
def _span(shape: tuple, stride: tuple) -> int:
    """One past the largest element offset of a tensor (0 when empty)."""
    if any(s == 0 for s in shape):
        return 0
    return 1 + sum((s - 1) * st for s, st in zip(shape, stride))


def supported(*tensors: Optional[Tensor], size: int = 0) -> bool:
    """Whether 32-bit element offsets reach every element of these tensors (and of a workspace of size)."""
    if size > _INT32:
        return False
    for t in tensors:
        if t is not None and _span(t.shape, t.stride()) > _INT32:
            return False
    return True


@functools.lru_cache(maxsize=512)
def _copy_plan(sizes: tuple, fused: int, src: tuple, dst: tuple) -> Optional[tuple]:
    """The pass-through block [fused, C) of a (N, C, T, H, W) source and destination with element strides
    src / dst (W stride 1), as (rows, run, src_pitch, dst_pitch, src_offset, dst_offset): rows of `run`
    contiguous elements at fixed pitches; None when it is not one. (rows = 0: nothing to copy.)"""
    N, C, T, H, W = sizes
    rest = C - fused
    if rest == 0 or N * T * H * W == 0:
        return (0, 0, 0, 0, 0, 0)
    dims = [(size, a, b) for size, a, b in
            ((N, src[0], dst[0]), (rest, src[1], dst[1]), (T, src[2], dst[2]), (H, src[3], dst[3]), (W, 1, 1))
            if size != 1]
    dims.sort(key=lambda d: d[1])  # innermost (smallest source stride) first; stable
    i, run = 0, 1
    while i < len(dims) and dims[i][1] == run and dims[i][2] == run:
        run *= dims[i][0]
        i += 1
    rows, pa, pb = 1, run, run
    if i < len(dims):
        rows, pa, pb = dims[i]
        i += 1
        while i < len(dims) and dims[i][1] == pa * rows and dims[i][2] == pb * rows:
            rows *= dims[i][0]
            i += 1
    if i < len(dims) or pa < run or pb < run:
        return None
    return rows, run, pa, pb, fused * src[1], fused * dst[1]


@functools.lru_cache(maxsize=256)
def _blocks(HW: int, dtype: torch.dtype, wide: bool) -> tuple[int, int]:
    """(BLOCK_R, BLOCK_P): the plane block is HW rounded up to a power of two (64 to 1024); wide: 2048-element
    tiles where that stays at <= 128 registers (the two-pass training forward: half the steps per pass)."""
    block_p = min(max(1 << (HW - 1).bit_length(), 64), 1024)
    tile = 2048 if wide and block_p >= 256 and dtype != torch.float64 else 1024
    return max(tile // block_p, 1), block_p


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _vec(plan: tuple, item: int) -> int:
    """VEC of _copy_chunk: 16 bytes of elements when the row starts and pitches allow, else 1."""
    vec = max(16 // item, 1)
    return vec if all(v % vec == 0 for v in plan[2:]) else 1


@functools.lru_cache(maxsize=64)
def _eps_parts(eps: float) -> tuple[float, float]:
    """eps as a sum of two float32 values (Triton passes Python floats as float32; float64 needs the rest)."""
    hi = struct.unpack("f", struct.pack("f", eps))[0]
    return hi, eps - hi


def _launch(kernel, grid: int, device: torch.device, args: tuple, meta: dict) -> None:
    if grid == 0:  # no fused channel, and the pass-through block copied by the caller
        return
    if device.type == "cuda" and device.index is not None and device.index != torch.cuda.current_device():
        with torch.cuda.device(device):
            kernel[(grid,)](*args, **meta)
    else:
        kernel[(grid,)](*args, **meta)


def forward(x: Tensor, wt: Tensor, wh: Tensor, ww: Tensor, p0: Optional[Tensor], p1: Optional[Tensor], eps: float,
            epilogue: int, hardswish: bool, fused: int, out: Tensor, mean: Optional[Tensor] = None,
            var: Optional[Tensor] = None) -> None:
    """Writes out (x's sizes; W stride 1) and, for the BatchNorm epilogue (2), mean and var (F,).

    x (N, C, T, H, W) with W stride 1; wt, wh, ww (F, 3) contiguous; p0, p1 (F,) contiguous: scale and shift
    (epilogue 1) or BatchNorm weight and bias (epilogue 2). Every tensor is non-empty or the call is a no-op
    (the caller fills the statistics of an empty batch)."""
    N, C, T, H, W = x.shape
    if x.numel() == 0:
        return
    sx, so = x.stride(), out.stride()
    plan = _copy_plan(x.shape, fused, sx[:4], so[:4])
    if plan is None:
        out[:, fused:].copy_(x[:, fused:])
        plan = (0, 0, 0, 0, 0, 0)
    rows, run, pa, pb, oa, ob = plan
    chunks = -(-run // _COPY_BLOCK)  # (triton.cdiv is slow to call)
    block_r, block_p = _blocks(H * W, x.dtype, epilogue == 2)
    eps_hi, eps_lo = _eps_parts(eps)
    p0 = x if p0 is None else p0
    p1 = x if p1 is None else p1
    args = (x, out, wt, wh, ww, p0, p1, x if mean is None else mean, x if var is None else var,
            fused, N * T, T, H, W, H * W, *sx[:4], *so[:4], eps_hi, eps_lo,
            oa, ob, pa, pb, run, max(chunks, 1), int(hardswish))
    meta = dict(EPI=epilogue, ACC=_acc(x.dtype), BLOCK_R=block_r, BLOCK_P=block_p,
                COPY_BLOCK=_COPY_BLOCK, VEC=_vec(plan, x.element_size()), num_warps=_NUM_WARPS, num_stages=1)
    _launch(_forward_kernel, fused + rows * chunks, x.device, args, meta)


def backward(grad: Tensor, x: Tensor, wt: Tensor, wh: Tensor, ww: Tensor, p0: Optional[Tensor],
             p1: Optional[Tensor], mean: Optional[Tensor], var: Optional[Tensor], eps: float, epilogue: int,
             hardswish: bool, fused: int, grad_x: Tensor, grad_w: tuple, grad_p: tuple, workspace: Tensor) -> None:
    """Writes grad_x (x's sizes; W stride 1), grad_w = (grad_wt, grad_wh, grad_ww) (F, 3) and, for the BatchNorm
    epilogue, grad_p = (grad_gamma, grad_beta) (F,). workspace: F * N * T * H * W values of the accumulation
    dtype (float64 for float64 inputs, float32 otherwise). Half inputs recompute the batch statistics."""
    N, C, T, H, W = x.shape
    if x.numel() == 0:
        return
    sg, sgx = grad.stride(), grad_x.stride()
    plan = _copy_plan(x.shape, fused, sg[:4], sgx[:4])
    if plan is None:
        grad_x[:, fused:].copy_(grad[:, fused:])
        plan = (0, 0, 0, 0, 0, 0)
    rows, run, pa, pb, oa, ob = plan
    chunks = -(-run // _COPY_BLOCK)  # (triton.cdiv is slow to call)
    block_r, block_p = _blocks(H * W, x.dtype, False)
    eps_hi, eps_lo = _eps_parts(eps)
    gp0, gp1 = grad_p if grad_p else (x, x)
    args = (x, grad, grad_x, workspace, wt, wh, ww, x if p0 is None else p0, x if p1 is None else p1,
            x if mean is None else mean, x if var is None else var, *grad_w, gp0, gp1,
            fused, N * T, T, H, W, H * W, *x.stride()[:4], *sg[:4], *sgx[:4],
            eps_hi, eps_lo, oa, ob, pa, pb, run, max(chunks, 1), int(hardswish))
    meta = dict(EPI=epilogue, RECOMPUTE=x.dtype in (torch.float16, torch.bfloat16),
                ACC=_acc(x.dtype), BLOCK_R=block_r, BLOCK_P=block_p, COPY_BLOCK=_COPY_BLOCK,
                VEC=_vec(plan, x.element_size()), num_warps=_NUM_WARPS, num_stages=1)
    _launch(_backward_kernel, fused + rows * chunks, x.device, args, meta)
