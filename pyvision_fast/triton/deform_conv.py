"""Deformable convolution (DCNv1/v2, torchvision's semantics) as implicit GEMMs: the bilinear samples of a tile
(rows = output positions, columns = one tap's channels) are gathered in registers from the channels-last input
and fed to ``tl.dot``; no columns are written, forward or backward.

Forward: one program per (row tile, output-channel tile, group) accumulates
    out[r, :] = sum_k sum_c mask[r, k] bilinear(x[b, :, :, c], y_rk, x_rk) W[:, c, k]
over the taps k and the group's channels c, rows r = b Ho Wo + p.
Backward, two kernels over (channel chunk, tap, range of rows), both recomputing the samples:
- data: the columns' gradient tile ``grad_cols = g @ W_k`` (g: the output gradient over the group's C_out) from
  one dot; the input gradient scattered from it with atomics into a float32 channels-last buffer (DCNv4's way:
  offsets are data, so there is no fixed transpose to gather through), and the offset and mask gradients (sums
  over the offset group's channels) added with atomics;
- weight: ``grad_W_k = sum_r cols^T g`` per output-channel block, one partial per range of rows (summed after).

Sampling is in float32 (float64 for float64); float32 dots are tf32 where
``torch.backends.cuda.matmul.allow_tf32`` allows, IEEE otherwise; float16/bfloat16 use tensor cores with float32
accumulation. float64 runs only under the interpreter (on GPUs ``supported`` routes it to the CUDA kernels).
IEEE float32 dots are FMA loops that hold a dot's whole reduction slice in registers, so they get their own
configurations (narrow channel chunks); every configuration listed compiles for sm_90 without spills.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._util import (INTERPRET, accumulation_dtype, accumulator, configs, fits, precision, target_programs,
                    tuned_pair)

_NAMES = ("BLOCK_M", "BLOCK_C")
_INTERPRET_CONFIG = (64, 16, 1, 1)  # the interpreter: one configuration, few programs
# (BLOCK_M, BLOCK_C, num_warps, num_stages); "fma": IEEE float32, "mma": tensor-core dots (tf32, float16,
# bfloat16). Each compiles for sm_90 (Triton 3.8) without spills in float32, bfloat16 and float16.
_FWD = {"fma": [(64, 16, 8, 2), (64, 16, 4, 1), (128, 16, 8, 1), (32, 32, 4, 1)],
        "mma": [(64, 32, 8, 2), (128, 16, 8, 2), (64, 16, 4, 2), (64, 16, 8, 3)]}
_DATA = {"fma": [(64, 16, 8, 2), (64, 16, 4, 1), (64, 16, 8, 1), (32, 16, 4, 2)],
         "mma": [(64, 16, 8, 2), (32, 16, 4, 2), (64, 16, 8, 1)]}
_WEIGHT = {"fma": [(64, 16, 8, 2), (128, 16, 8, 2), (64, 32, 8, 2)],
           "mma": [(64, 32, 8, 2), (128, 32, 8, 2), (64, 16, 8, 2)]}
_DEFAULT = {"fma": (64, 16, 8, 2), "mma": (64, 16, 8, 2)}  # PVF_TRITON_AUTOTUNE=0


@triton.jit
def _sample_point(OFF, MSK, b, p, row_ok, ho, wo, og, k, ki, kj, P, H, W, K, OG, sh, sw, ph, pw, dh, dw,
                  HAS_MASK: tl.constexpr, ACC: tl.constexpr):
    """Per row, torchvision's bilinear sample: the corner (h0, w0), the fractional parts ly, lx, the corners'
    validity (inside the image) and the four bilinear weights, zero for an invalid corner and for every corner of
    a point outside (-1, H) x (-1, W); and the mask value. The coordinates are clamped to [-2, H + 1] x
    [-2, W + 1] (NaN to -2) first, which changes no corner's validity nor weight but keeps the integer math in
    range; torchvision's offset gradient uses the corners without the outside test (it differs from zero at
    exactly y = -1 or x = -1), and so do the callers."""
    o = b * (2 * OG * K * P) + (2 * (og * K + k)) * P + p
    y = (ho * sh - ph + ki * dh).to(ACC) + tl.load(OFF + o, mask=row_ok, other=0).to(ACC)
    x = (wo * sw - pw + kj * dw).to(ACC) + tl.load(OFF + o + P, mask=row_ok, other=0).to(ACC)
    inside = row_ok & (y > -1) & (y < H) & (x > -1) & (x < W)  # false for NaN as well
    nan_pt = (y != y) | (x != x)  # torchvision samples NaN there: the forward writes NaN, gradients treat it outside
    y = tl.where(y == y, tl.minimum(tl.maximum(y, -2.0), H + 1.0), -2.0)
    x = tl.where(x == x, tl.minimum(tl.maximum(x, -2.0), W + 1.0), -2.0)
    yf = tl.floor(y)
    xf = tl.floor(x)
    ly = y - yf
    lx = x - xf
    h0 = yf.to(tl.int32)
    w0 = xf.to(tl.int32)
    vh0 = row_ok & (h0 >= 0) & (h0 < H)
    vh1 = row_ok & (h0 >= -1) & (h0 + 1 < H)
    vw0 = (w0 >= 0) & (w0 < W)
    vw1 = (w0 >= -1) & (w0 + 1 < W)
    v00 = vh0 & vw0
    v01 = vh0 & vw1
    v10 = vh1 & vw0
    v11 = vh1 & vw1
    w00 = tl.where(v00 & inside, (1 - ly) * (1 - lx), 0)
    w01 = tl.where(v01 & inside, (1 - ly) * lx, 0)
    w10 = tl.where(v10 & inside, ly * (1 - lx), 0)
    w11 = tl.where(v11 & inside, ly * lx, 0)
    if HAS_MASK:
        m = tl.load(MSK + b * (OG * K * P) + (og * K + k) * P + p, mask=row_ok, other=0).to(ACC)
    else:
        m = tl.where(row_ok, 1, 0).to(ACC)
    return h0, w0, ly, lx, inside, w00, w01, w10, w11, v00, v01, v10, v11, m, nan_pt


@triton.jit
def _corner(X, pix, c, c_ok, valid, ACC: tl.constexpr):
    """One corner's values (BLOCK_M, BLOCK_C) of channels c, zero where the corner is not valid; pix = the flat
    channels-last offset of the corner's channel 0 (b H W C + (h W + w) C)."""
    return tl.load(X + (pix[:, None] + c[None, :]), mask=valid[:, None] & c_ok[None, :], other=0).to(ACC)


def _tuned(kernel, table: dict, key: list, reset: Optional[list] = None) -> dict:
    """The kernel autotuned over each precision's configurations: {"fma": ..., "mma": ...}."""
    return {kind: triton.autotune(configs=configs(cfgs, _NAMES, _DEFAULT[kind], _INTERPRET_CONFIG), key=key,
                                  reset_to_zero=reset)(kernel) for kind, cfgs in table.items()}


@triton.jit
def _dcn_fwd_kernel(X, OFF, MSK, WT, BIAS, OUT, R, P, Wo, H, W, C, Cg, Cog, S, Cout, Cout_g, K, kw, OG,
                    sh, sw, ph, pw, dh, dw,
                    HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """OUT (B, C_out, Ho, Wo) from X (B, H, W, C) channels last, offsets and mask as torchvision's, WT the weight
    as (groups, K, C/groups, C_out/groups). Channels are visited in units of S = gcd(C/groups, C/OG) channels,
    each inside one group and one offset group."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    gi = tl.program_id(2)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < R
    b = rows // P
    p = rows - b * P
    ho = p // Wo
    wo = p - ho * Wo
    xb = b * (H * W * C)
    co = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    co_ok = co < Cout_g
    cr = tl.arange(0, BLOCK_C)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k in range(K):
        ki = k // kw
        kj = k - ki * kw
        for u in range(Cg // S):
            cb = gi * Cg + u * S
            og = cb // Cog
            h0, w0, ly, lx, inside, w00, w01, w10, w11, v00, v01, v10, v11, m, nan_pt = _sample_point(
                OFF, MSK, b, p, row_ok, ho, wo, og, k, ki, kj, P, H, W, K, OG, sh, sw, ph, pw, dh, dw, HAS_MASK, ACC)
            pix = xb + (h0 * W + w0) * C
            for c0 in range(0, S, BLOCK_C):
                cl = c0 + cr
                c_ok = cl < S
                c = cb + cl
                val = w00[:, None] * _corner(X, pix, c, c_ok, v00 & inside, ACC)
                val += w01[:, None] * _corner(X, pix + C, c, c_ok, v01 & inside, ACC)
                val += w10[:, None] * _corner(X, pix + W * C, c, c_ok, v10 & inside, ACC)
                val += w11[:, None] * _corner(X, pix + (W + 1) * C, c, c_ok, v11 & inside, ACC)
                val = tl.where(nan_pt[:, None], float("nan"), val * m[:, None])
                wt = tl.load(WT + ((gi * K + k) * Cg + (c - gi * Cg))[:, None] * Cout_g + co[None, :],
                             mask=c_ok[:, None] & co_ok[None, :], other=0)
                acc += tl.dot(val.to(WT.dtype.element_ty), wt, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(BIAS + gi * Cout_g + co, mask=co_ok, other=0).to(ACC)[None, :]
    out = OUT + (b * (Cout * P) + p)[:, None] + ((gi * Cout_g + co) * P)[None, :]
    tl.store(out, acc.to(OUT.dtype.element_ty), mask=row_ok[:, None] & co_ok[None, :])


@triton.jit
def _chunk(pid, S, Cg, Cog, BLOCK_C: tl.constexpr):
    """Channels c (BLOCK_C,) of channel chunk pid (chunks of BLOCK_C inside units of S channels), their mask,
    and the group and offset group of the unit."""
    n_sub = tl.cdiv(S, BLOCK_C)
    unit = pid // n_sub
    cl = (pid % n_sub) * BLOCK_C + tl.arange(0, BLOCK_C)
    return unit * S + cl, cl < S, (unit * S) // Cg, (unit * S) // Cog


@triton.jit
def _dcn_data_kernel(X, OFF, MSK, WT, G, GI, GOFF, GM, R, P, Wo, H, W, C, Cg, Cog, S, Cout, Cout_g, K, kw, OG,
                     sh, sw, ph, pw, dh, dw,
                     HAS_MASK: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """Grid (channel chunks, K, row ranges): grad_cols = G @ WT_k^T per row tile, scattered to GI (B, H, W, C)
    and reduced into GOFF / GM (like offset / mask), all float32 (float64 for float64), with atomics."""
    c, c_ok, gi, og = _chunk(tl.program_id(0), S, Cg, Cog, BLOCK_C)
    k = tl.program_id(1)
    split = tl.program_id(2)
    ki = k // kw
    kj = k - ki * kw
    tiles = tl.cdiv(R, BLOCK_M)
    per = tl.cdiv(tiles, tl.num_programs(2))
    wrow = ((gi * K + k) * Cg + (c - gi * Cg)) * Cout_g  # (BLOCK_C,) rows of WT for these channels
    for t in range(split * per, tl.minimum(tiles, split * per + per)):
        rows = t * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < R
        b = rows // P
        p = rows - b * P
        ho = p // Wo
        wo = p - ho * Wo
        grow = b * (Cout * P) + p  # (BLOCK_M,) G[b, 0, p]
        # the columns' gradient first (it does not depend on the sample)
        gc = tl.zeros((BLOCK_M, BLOCK_C), dtype=ACC)
        for n0 in range(0, Cout_g, BLOCK_N):
            co = n0 + tl.arange(0, BLOCK_N)
            co_ok = co < Cout_g
            g = tl.load(G + grow[:, None] + ((gi * Cout_g + co) * P)[None, :],
                        mask=row_ok[:, None] & co_ok[None, :], other=0)
            wt = tl.load(WT + wrow[None, :] + co[:, None], mask=co_ok[:, None] & c_ok[None, :], other=0)
            gc += tl.dot(g, wt, input_precision=PRECISION)
        h0, w0, ly, lx, inside, w00, w01, w10, w11, v00, v01, v10, v11, m, nan_pt = _sample_point(
            OFF, MSK, b, p, row_ok, ho, wo, og, k, ki, kj, P, H, W, K, OG, sh, sw, ph, pw, dh, dw, HAS_MASK, ACC)
        pix = b * (H * W * C) + (h0 * W + w0) * C
        # each corner in turn: its row sums t = sum_c gc v give the offset and mask gradients, gc its input
        # gradient (torchvision's offset gradient reads the corners without the outside test)
        gcm = gc * m[:, None]
        into = c_ok[None, :] & inside[:, None]
        t00 = tl.sum(gc * _corner(X, pix, c, c_ok, v00, ACC), axis=1)
        tl.atomic_add(GI + (pix[:, None] + c[None, :]), w00[:, None] * gcm, mask=v00[:, None] & into)
        t01 = tl.sum(gc * _corner(X, pix + C, c, c_ok, v01, ACC), axis=1)
        tl.atomic_add(GI + ((pix + C)[:, None] + c[None, :]), w01[:, None] * gcm, mask=v01[:, None] & into)
        t10 = tl.sum(gc * _corner(X, pix + W * C, c, c_ok, v10, ACC), axis=1)
        tl.atomic_add(GI + ((pix + W * C)[:, None] + c[None, :]), w10[:, None] * gcm, mask=v10[:, None] & into)
        t11 = tl.sum(gc * _corner(X, pix + (W + 1) * C, c, c_ok, v11, ACC), axis=1)
        tl.atomic_add(GI + ((pix + (W + 1) * C)[:, None] + c[None, :]), w11[:, None] * gcm,
                      mask=v11[:, None] & into)
        gy = m * ((1 - lx) * (t10 - t00) + lx * (t11 - t01))
        gx = m * ((1 - ly) * (t01 - t00) + ly * (t11 - t10))
        o = b * (2 * OG * K * P) + (2 * (og * K + k)) * P + p
        tl.atomic_add(GOFF + o, gy.to(GOFF.dtype.element_ty), mask=row_ok)
        tl.atomic_add(GOFF + o + P, gx.to(GOFF.dtype.element_ty), mask=row_ok)
        if HAS_MASK:
            gm = w00 * t00 + w01 * t01 + w10 * t10 + w11 * t11
            tl.atomic_add(GM + b * (OG * K * P) + (og * K + k) * P + p, gm.to(GM.dtype.element_ty), mask=row_ok)


@triton.jit
def _dcn_weight_kernel(X, OFF, MSK, G, GW, R, P, Wo, H, W, C, Cg, Cog, S, Cout, Cout_g, K, kw, OG,
                       sh, sw, ph, pw, dh, dw,
                       HAS_MASK: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """Grid (channel chunks x output blocks, K, row ranges): GW[range, c, k, co] = sum over the range's rows of
    cols[r, k, c] G[r, co] (the group's output channels co of one block). Every program writes its whole tile."""
    n_co = tl.cdiv(Cout_g, BLOCK_N)
    pid = tl.program_id(0)
    c, c_ok, gi, og = _chunk(pid // n_co, S, Cg, Cog, BLOCK_C)
    co = (pid % n_co) * BLOCK_N + tl.arange(0, BLOCK_N)
    co_ok = co < Cout_g
    k = tl.program_id(1)
    split = tl.program_id(2)
    ki = k // kw
    kj = k - ki * kw
    tiles = tl.cdiv(R, BLOCK_M)
    per = tl.cdiv(tiles, tl.num_programs(2))
    acc = tl.zeros((BLOCK_C, BLOCK_N), dtype=ACC)
    for t in range(split * per, tl.minimum(tiles, split * per + per)):
        rows = t * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < R
        b = rows // P
        p = rows - b * P
        ho = p // Wo
        wo = p - ho * Wo
        h0, w0, ly, lx, inside, w00, w01, w10, w11, v00, v01, v10, v11, m, nan_pt = _sample_point(
            OFF, MSK, b, p, row_ok, ho, wo, og, k, ki, kj, P, H, W, K, OG, sh, sw, ph, pw, dh, dw, HAS_MASK, ACC)
        pix = b * (H * W * C) + (h0 * W + w0) * C
        val = w00[:, None] * _corner(X, pix, c, c_ok, v00 & inside, ACC)
        val += w01[:, None] * _corner(X, pix + C, c, c_ok, v01 & inside, ACC)
        val += w10[:, None] * _corner(X, pix + W * C, c, c_ok, v10 & inside, ACC)
        val += w11[:, None] * _corner(X, pix + (W + 1) * C, c, c_ok, v11 & inside, ACC)
        g = tl.load(G + (b * (Cout * P) + p)[:, None] + ((gi * Cout_g + co) * P)[None, :],
                    mask=row_ok[:, None] & co_ok[None, :], other=0)
        val = tl.where(nan_pt[:, None], float("nan"), val * m[:, None])  # the forward's NaN column
        acc += tl.dot(tl.trans(val.to(G.dtype.element_ty)), g, input_precision=PRECISION)
    tl.store(GW + ((split * C + c) * K + k)[:, None] * Cout_g + co[None, :], acc.to(GW.dtype.element_ty),
             mask=c_ok[:, None] & co_ok[None, :])


_KEY = ["R", "C", "Cout", "K", "OG", "HAS_MASK", "BLOCK_N"]
_dcn_fwd = _tuned(_dcn_fwd_kernel, _FWD, _KEY + ["HAS_BIAS"])
_dcn_data = _tuned(_dcn_data_kernel, _DATA, _KEY, reset=["GI", "GOFF", "GM"])
_dcn_weight = _tuned(_dcn_weight_kernel, _WEIGHT, _KEY)


class _Shape:
    """The sizes of one call: groups G (C_g = C / G inputs, C_out_g outputs each), offset groups OG (C_og channels
    each), the channel unit S = gcd(C_g, C_og), taps K, output positions P and rows R = B P."""

    def __init__(self, input: Tensor, weight: Tensor, offset: Tensor, conv):
        self.kh, self.kw, self.sh, self.sw, self.ph, self.pw, self.dh, self.dw = conv
        self.B, self.C, self.H, self.W = input.shape
        self.Cout, self.Cg = weight.shape[:2]
        self.G = self.C // self.Cg
        self.Cout_g = self.Cout // self.G
        self.K = self.kh * self.kw
        self.OG = offset.shape[1] // (2 * self.K)
        self.Cog = self.C // self.OG
        self.S = math.gcd(self.Cg, self.Cog)
        self.Ho, self.Wo = offset.shape[2:]
        self.P = self.Ho * self.Wo
        self.R = self.B * self.P

    def args(self) -> tuple:
        return (self.R, self.P, self.Wo, self.H, self.W, self.C, self.Cg, self.Cog, self.S, self.Cout, self.Cout_g,
                self.K, self.kw, self.OG, self.sh, self.sw, self.ph, self.pw, self.dh, self.dw)


def supported(input: Tensor, weight: Tensor, offset: Tensor) -> bool:
    """Whether these kernels take the call: not float64 on a GPU (the CUDA kernels serve it), and sizes whose
    index math fits 32 bits (rows past the end of a tile included)."""
    if input.dtype == torch.float64 and not INTERPRET:
        return False
    B, C, H, W = input.shape
    P = offset.shape[2] * offset.shape[3]
    images = (B * P + 256) // max(P, 1) + 2  # image index of a padded row, plus one
    return fits(images * H * W * C + 2 * (W + 2) * C, images * offset.shape[1] * P, images * weight.shape[0] * P)


def _weight_tiles(weight: Tensor, s: _Shape) -> Tensor:
    """(C_out, C_g, kh, kw) -> (G, K, C_g, C_out_g): the rows of tap k, channel c are contiguous output channels."""
    return weight.reshape(s.G, s.Cout_g, s.Cg, s.K).permute(0, 3, 2, 1).contiguous()


def forward(input: Tensor, weight: Tensor, offset: Tensor, mask: Optional[Tensor], bias: Optional[Tensor],
            conv) -> Tensor:
    """deform_conv2d's output (B, C_out, Ho, Wo) from contiguous input, offset, mask; conv = (kh, kw, sh, sw, ph,
    pw, dh, dw)."""
    s = _Shape(input, weight, offset, conv)
    out = input.new_empty(s.B, s.Cout, s.Ho, s.Wo)
    if s.R == 0 or s.Cout == 0:
        return out
    x = input.permute(0, 2, 3, 1).contiguous()
    wt = _weight_tiles(weight, s)
    block_n = _block_n(s.Cout_g)

    def grid(meta):
        return triton.cdiv(s.R, meta["BLOCK_M"]), triton.cdiv(s.Cout_g, block_n), s.G

    kind = tuned_pair(input.dtype)
    _dcn_fwd[kind][grid](x, offset, offset if mask is None else mask, wt, wt if bias is None else bias, out,
                         *s.args(), HAS_MASK=mask is not None, HAS_BIAS=bias is not None,
                         ACC=accumulator(input.dtype), PRECISION=precision(input.dtype), BLOCK_N=block_n)
    return out


def _block_n(n: int) -> int:
    """The output-channel block: the channels rounded up to a power of two, 16 to 64."""
    return min(64, max(16, triton.next_power_of_2(n)))


def backward(grad: Tensor, input: Tensor, weight: Tensor, offset: Tensor, mask: Optional[Tensor],
             bias: Optional[Tensor], conv) -> tuple:
    """Gradients (input, weight, offset, mask or None, bias or None) of deform_conv2d from contiguous tensors."""
    s = _Shape(input, weight, offset, conv)
    dtype, acc = input.dtype, accumulation_dtype(input.dtype)
    dev = input.device
    gi = torch.zeros(s.B, s.H, s.W, s.C, dtype=acc, device=dev)
    goff = torch.zeros(offset.shape, dtype=acc, device=dev)
    gm = torch.zeros(mask.shape, dtype=acc, device=dev) if mask is not None else None
    units = s.C // s.S
    block_n = _block_n(s.Cout_g)
    n_split = max(1, min(triton.cdiv(max(s.R, 1), 64),
                         triton.cdiv(target_programs(dev), s.K * units * triton.cdiv(s.S, 32))))
    gw = torch.empty(n_split, s.C, s.K, s.Cout_g, dtype=acc, device=dev)
    if gw.numel():
        x = input.permute(0, 2, 3, 1).contiguous()
        kind = tuned_pair(dtype)
        common = dict(HAS_MASK=mask is not None, ACC=accumulator(dtype), PRECISION=precision(dtype), BLOCK_N=block_n)
        msk = offset if mask is None else mask
        if s.R:
            def grid_data(meta):
                return units * triton.cdiv(s.S, meta["BLOCK_C"]), s.K, n_split

            _dcn_data[kind][grid_data](x, offset, msk, _weight_tiles(weight, s), grad, gi, goff,
                                       goff if gm is None else gm, *s.args(), **common)

        def grid_weight(meta):
            return units * triton.cdiv(s.S, meta["BLOCK_C"]) * triton.cdiv(s.Cout_g, block_n), s.K, n_split

        _dcn_weight[kind][grid_weight](x, offset, msk, grad, gw, *s.args(), **common)
    grad_input = torch.empty(input.shape, dtype=dtype, device=dev)
    grad_input.copy_(gi.permute(0, 3, 1, 2))
    grad_weight = gw.sum(0).view(s.G, s.Cg, s.K, s.Cout_g).permute(0, 3, 1, 2).reshape(weight.shape).to(dtype)
    grad_bias = None if bias is None else grad.sum(dim=(0, 2, 3), dtype=acc).to(dtype)
    return (grad_input, grad_weight, goff.to(dtype), None if gm is None else gm.to(dtype), grad_bias)
