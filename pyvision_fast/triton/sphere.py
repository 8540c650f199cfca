"""Spherical convolution on a fixed sampling table as implicit GEMMs: the sampled tile (rows x channels) is
gathered in registers and fed to ``tl.dot``; no columns are written.

Forward, rows r = b P + p (output locations), channels-last input (B, H*W, C):
    out[r, :] = sum_k (sum_i w[p, k, i] x[b, idx[p, k, i], :]) @ W_k,   W_k = weight[:, :, k] as (C, C_out)
Input gradient, rows r = b HW + q (pixels), through the transposed table (``equirect.TransposedTable``): the same
kernel with the roles exchanged, a gather (no atomics, deterministic):
    grad_x[r, :] = sum_k (sum_{entries e of (q, k)} w[e] g[b, e // 4K, :]) @ W_k^T
Weight gradient: grad_W_k = sum_r cols[r, k, :]^T g[r, :], split over row ranges (one partial per range, summed
after); the samples are recomputed, never stored.

float32 runs tf32 dots where ``torch.backends.cuda.matmul.allow_tf32`` allows them, IEEE float32 otherwise;
float16/bfloat16 use tensor cores with float32 accumulation; float64 only under the interpreter (the GPU path routes
it to the CUDA kernels, see ``supported``). Block sizes are autotuned per shape on GPUs, over separate lists for
IEEE float32 (FMA) and tensor-core dots.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._util import (INTERPRET, accumulation_dtype, accumulator, configs, fits, precision, target_programs,
                    tuned_pair)

# Below this many input channels the sampled tile would be mostly padding (tl.dot needs 16): the column kernels
# (one GEMM) serve such layers, e.g. the RGB patch embedding.
MIN_CHANNELS = 16

_NAMES = ("BLOCK_M", "BLOCK_C")
_INTERPRET_CONFIG = (64, 16, 1, 1)  # the interpreter: one configuration, few programs
# (BLOCK_M, BLOCK_C, num_warps, num_stages); "fma": IEEE float32 dots (FMA loops holding the reduction slice in
# registers: narrow chunks), "mma": tensor-core dots (tf32, float16, bfloat16). Each compiles for sm_90
# (Triton 3.8) without spills in float32, bfloat16 and float16.
_GEMM = {"fma": [(128, 16, 8, 2), (64, 16, 4, 2), (128, 32, 8, 2), (64, 16, 4, 1)],
         "mma": [(128, 32, 4, 2), (64, 32, 8, 2), (128, 32, 8, 2), (64, 64, 8, 2)]}
_WGRAD = {"fma": [(64, 16, 8, 2), (128, 16, 8, 2), (64, 32, 4, 1)],
          "mma": [(64, 32, 8, 2), (64, 16, 8, 2), (128, 16, 8, 2)]}
_DEFAULT = {"gemm": {"fma": (64, 16, 4, 2), "mma": (64, 32, 8, 2)},  # PVF_TRITON_AUTOTUNE=0
            "wgrad": {"fma": (64, 16, 8, 2), "mma": (64, 32, 8, 2)}}


def _tuned(kernel, table: dict, defaults: dict, key: list) -> dict:
    """The kernel autotuned over each precision's configurations: {"fma": ..., "mma": ...}."""
    return {kind: triton.autotune(configs=configs(cfgs, _NAMES, defaults[kind], _INTERPRET_CONFIG), key=key)(kernel)
            for kind, cfgs in table.items()}


def _block_n(n: int) -> int:
    """The output-channel block: the channels rounded up to a power of two, 16 to 64."""
    return min(64, max(16, triton.next_power_of_2(n)))


@triton.jit
def _gather_gemm_kernel(X, TI, TW, TT, CNT, WK, BIAS, OUT, R, Q, NSRC, CX, N, K, J, sxb, sxp, sxc,
                 TRANSPOSED: tl.constexpr, HAS_BIAS: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """OUT (R, N), rows r = b Q + q: sum_k (sum_e w_e X[b, src_e, :]) @ WK[k] (CX, N), plus BIAS.
    Not TRANSPOSED: the entries of (q, k) are the 4 of table (TI, TW) (Q, K, 4), src = TI[e].
    TRANSPOSED: the CNT[k, q] entries TT[k, j, q] (K, J, Q), each a flat table position e, src = e // 4K."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < R
    b = rows // Q
    q = rows - b * Q
    xrow = b * sxb
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    cr = tl.arange(0, BLOCK_C)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k in range(K):
        if TRANSPOSED:
            cnt = tl.load(CNT + k * Q + q, mask=row_ok, other=0)
            n_entries = tl.max(cnt, axis=0)
        else:
            n_entries = 4
        for c0 in range(0, CX, BLOCK_C):
            c = c0 + cr
            c_ok = c < CX
            val = tl.zeros((BLOCK_M, BLOCK_C), dtype=ACC)
            for j in range(n_entries):
                if TRANSPOSED:
                    ok = row_ok & (j < cnt)
                    e = tl.load(TT + (k * J + j) * Q + q, mask=ok, other=0)
                    src = e // (4 * K)
                else:
                    ok = row_ok
                    e = (q * K + k) * 4 + j
                    src = tl.load(TI + e, mask=ok, other=0)
                w = tl.load(TW + e, mask=ok, other=0).to(ACC)
                src = tl.minimum(tl.maximum(src, 0), NSRC - 1)
                v = tl.load(X + (xrow + src * sxp)[:, None] + (c * sxc)[None, :],
                            mask=ok[:, None] & c_ok[None, :], other=0).to(ACC)
                val += w[:, None] * v
            wk = tl.load(WK + (k * CX + c)[:, None] * N + n[None, :], mask=c_ok[:, None] & n_ok[None, :], other=0)
            acc += tl.dot(val.to(WK.dtype.element_ty), wk, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(BIAS + n, mask=n_ok, other=0).to(ACC)[None, :]
    tl.store(OUT + rows[:, None] * N + n[None, :], acc.to(OUT.dtype.element_ty),
             mask=row_ok[:, None] & n_ok[None, :])


@triton.jit
def _table_wgrad_kernel(X, TI, TW, G, WS, R, Q, NSRC, C, N, K, sxb, sxp, sxc,
                 ACC: tl.constexpr, PRECISION: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """WS[s, k, c, n] = sum over the rows r of range s of cols[r, k, c] G[r, n]; grid (channel x output blocks, K,
    ranges). Every program writes its whole tile (zeros for an empty range)."""
    pid = tl.program_id(0)
    k = tl.program_id(1)
    split = tl.program_id(2)
    n_split = tl.num_programs(2)
    n_blocks = tl.cdiv(N, BLOCK_N)
    c = (pid // n_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    n = (pid % n_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    tiles = tl.cdiv(R, BLOCK_M)
    per = tl.cdiv(tiles, n_split)
    acc = tl.zeros((BLOCK_C, BLOCK_N), dtype=ACC)
    for t in range(split * per, tl.minimum(tiles, split * per + per)):
        rows = t * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < R
        b = rows // Q
        q = rows - b * Q
        xrow = b * sxb
        val = tl.zeros((BLOCK_M, BLOCK_C), dtype=ACC)
        for i in tl.static_range(4):
            e = (q * K + k) * 4 + i
            src = tl.load(TI + e, mask=row_ok, other=0)
            src = tl.minimum(tl.maximum(src, 0), NSRC - 1)
            w = tl.load(TW + e, mask=row_ok, other=0).to(ACC)
            v = tl.load(X + (xrow + src * sxp)[:, None] + (c * sxc)[None, :],
                        mask=row_ok[:, None] & c_ok[None, :], other=0).to(ACC)
            val += w[:, None] * v
        g = tl.load(G + rows[:, None] * N + n[None, :], mask=row_ok[:, None] & n_ok[None, :], other=0)
        acc += tl.dot(tl.trans(val.to(G.dtype.element_ty)), g, input_precision=PRECISION)
    tl.store(WS + ((split * K + k) * C + c)[:, None] * N + n[None, :], acc.to(WS.dtype.element_ty),
             mask=c_ok[:, None] & n_ok[None, :])


_gather_gemm = _tuned(_gather_gemm_kernel, _GEMM, _DEFAULT["gemm"],
                      ["R", "CX", "N", "K", "TRANSPOSED", "HAS_BIAS", "BLOCK_N"])
_table_wgrad = _tuned(_table_wgrad_kernel, _WGRAD, _DEFAULT["wgrad"], ["R", "C", "N", "K", "BLOCK_N"])


def supported(input: Tensor, weight: Tensor, index: Tensor) -> bool:
    """Whether these kernels take the call: at least ``MIN_CHANNELS`` input channels, 32-bit addressable sizes,
    and not float64 on a GPU (tl.dot there is for the tensor-core types and float32)."""
    if input.dtype == torch.float64 and not INTERPRET:
        return False
    B, C, H, W = input.shape
    P, K = index.shape[:2]
    return C >= MIN_CHANNELS and fits(input, index.numel() * 4, B * P * weight.shape[0], B * P * K * 4)


def _launch_gemm(x: Tensor, rows_per_image: int, sources: int, index: Tensor, tweight: Tensor, entries, wk: Tensor,
                 bias, out: Tensor, transposed: bool) -> None:
    """out (R, N) from x (B, sources, CX) through the table (or its transpose ``entries``) and wk (K, CX, N)."""
    R, N = out.shape
    K, CX = wk.shape[0], wk.shape[1]
    if R == 0 or N == 0:
        return
    tt, cnt = (entries.entry, entries.count) if transposed else (index, index)
    J = entries.entry.shape[1] if transposed else 4

    block_n = _block_n(N)

    def grid(meta):
        return triton.cdiv(R, meta["BLOCK_M"]), triton.cdiv(N, block_n)

    _gather_gemm[tuned_pair(x.dtype)][grid](
        x, index, tweight, tt, cnt, wk, wk if bias is None else bias, out, R, rows_per_image, sources, CX, N, K, J,
        x.stride(0), x.stride(1), x.stride(2), TRANSPOSED=transposed, HAS_BIAS=bias is not None,
        ACC=accumulator(x.dtype), PRECISION=precision(x.dtype), BLOCK_N=block_n)


def forward(input: Tensor, weight: Tensor, bias, index: Tensor, tweight: Tensor, out_h: int, out_w: int) -> Tensor:
    """(B, C_out, Ho, Wo) output (channels_last layout) of input (B, C, H, W), weight (C_out, C, kh, kw) and the
    table's (P, K, 4) index and weights, P = Ho Wo."""
    B, C, H, W = input.shape
    Cout, P, K = weight.shape[0], index.shape[0], index.shape[1]
    x = input.permute(0, 2, 3, 1).contiguous().view(B, H * W, C)
    wk = weight.permute(2, 3, 1, 0).reshape(K, C, Cout).contiguous()
    out = input.new_empty(B, out_h, out_w, Cout)
    _launch_gemm(x, P, H * W, index, tweight, None, wk, bias, out.view(B * P, Cout), False)
    return out.permute(0, 3, 1, 2)


def backward(grad: Tensor, input: Tensor, weight: Tensor, index: Tensor, tweight: Tensor, transposed,
             has_bias: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of input (channels last), weight and bias (empty without bias); ``transposed`` is the table's
    ``equirect.TransposedTable``."""
    B, C, H, W = input.shape
    Cout, P, K = weight.shape[0], index.shape[0], index.shape[1]
    acc = accumulation_dtype(input.dtype)
    g = grad.permute(0, 2, 3, 1).contiguous().view(B * P, Cout)
    # input gradient: pixels as rows, the output gradient as the gathered source, W_k^T (C_out, C) per tap
    grad_x = input.new_empty(B, H, W, C)
    wt = weight.permute(2, 3, 0, 1).reshape(K, Cout, C).contiguous()
    _launch_gemm(g.view(B, P, Cout), H * W, P, index, tweight, transposed, wt, None, grad_x.view(B * H * W, C),
                 True)
    # weight gradient: one partial per range of rows
    x = input.permute(0, 2, 3, 1).contiguous().view(B, H * W, C)
    R = B * P
    n_split = max(1, min(triton.cdiv(max(R, 1), 64), triton.cdiv(target_programs(input.device),
                                                                  K * triton.cdiv(C, 64) * triton.cdiv(Cout, 64))))
    ws = torch.empty(n_split, K, C, Cout, dtype=acc, device=input.device)
    if ws.numel():
        block_n = _block_n(Cout)

        def grid(meta):
            return triton.cdiv(C, meta["BLOCK_C"]) * triton.cdiv(Cout, block_n), K, n_split

        _table_wgrad[tuned_pair(input.dtype)][grid](
            x, index, tweight, g, ws, R, P, H * W, C, Cout, K, x.stride(0), x.stride(1), x.stride(2),
            ACC=accumulator(input.dtype), PRECISION=precision(input.dtype), BLOCK_N=block_n)
    kh, kw = weight.shape[2:]
    grad_w = ws.sum(0).view(kh, kw, C, Cout).permute(3, 2, 0, 1).contiguous().to(input.dtype)
    grad_b = g.sum(0, dtype=acc).to(input.dtype) if has_bias else input.new_empty(0)
    return grad_x.permute(0, 3, 1, 2), grad_w, grad_b
