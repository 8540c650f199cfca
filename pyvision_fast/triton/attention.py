"""The first generation of pyvision_fast's Triton attention, since 2026-12-04 behind
``ops.attention.kernel_family("previous")`` (the default is ``flash``). FlashAttention-2-style: forward with
online softmax (log-sum-exp saved) and backward (dK/dV and dQ kernels recomputing the probabilities from the
log-sum-exp).

Semantics are those of ``F.scaled_dot_product_attention`` for (B, H, L, D) queries and (B, H, S, D) keys and
values: optional boolean (True = attend) or additive ``attn_mask`` broadcastable to (B, H, L, S), top-left
aligned ``is_causal``, ``scale`` (default 1/sqrt(D)), and dropout on the attention probabilities. Rows with no
key to attend to give zeros (as SDPA does). Any L and S: tiles are masked at the edges, nothing is padded in
memory; head dims up to 256 (the tile is the next power of two, masked).

Dropout draws Philox numbers from (seed + b * H + h, m * S + n), so a call is reproducible from its seed and
``dropout_mask`` returns the exact mask a call used. float32 inputs use tf32 tensor-core dots when
``torch.backends.cuda.matmul.allow_tf32`` is set, IEEE float32 otherwise; float16/bfloat16 accumulate in float32.

On CPU tensors these kernels run only under ``TRITON_INTERPRET=1`` (how CI tests them); configurations are
autotuned per (L, S, D, dtype) on GPUs, with Triton's cache (``PVF_TRITON_AUTOTUNE=0`` uses one configuration).

``_forward_launch`` / ``_backward_launch`` launch the kernels directly (``ops.attention``'s eager path, a plain
autograd.Function); ``flash_attention_fwd`` / ``flash_attention_bwd`` are the same launchers as
``torch.library.triton_op`` custom ops, for torch.compile, torch.export and fake tensors. ``dropout_mask`` gives the mask
of a call of either family (they draw the same Philox stream).
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from ._util import precision as _precision

_LOG2E = 1.4426950408889634
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _configs(backward: bool = False):
    if _INTERPRET:  # one small configuration: the interpreter is slow and does not benefit from tuning
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1)]
    if os.environ.get("PVF_TRITON_AUTOTUNE") == "0":  # tests: correctness only, no tuning time per shape
        return [triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=2)]
    # A few configurations only: every new (L, S, D, dtype) key compiles and times each of them once.
    sizes = [(64, 64, 4, 2), (128, 64, 8, 2), (128, 32, 4, 3)]
    if backward:
        sizes = [(64, 64, 4, 2), (32, 64, 4, 2)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in sizes]


@triton.jit
def _scores(q, k, offs_m, offs_n, b, h, L, S, qk_scale, mask_ptr, s_mb, s_mh, s_mm, s_mn,
            HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr, IS_CAUSAL: tl.constexpr, PRECISION: tl.constexpr):
    """Scaled scores in log2 units (BLOCK_M, BLOCK_N), -inf where a key may not be attended."""
    s = tl.dot(q, k, input_precision=PRECISION) * qk_scale
    valid = (offs_m[:, None] < L) & (offs_n[None, :] < S)
    if IS_CAUSAL:
        valid = valid & (offs_n[None, :] <= offs_m[:, None])
    if HAS_MASK:
        mptr = mask_ptr + b * s_mb + h * s_mh + offs_m[:, None] * s_mm + offs_n[None, :] * s_mn
        inside = (offs_m[:, None] < L) & (offs_n[None, :] < S)
        if MASK_BOOL:
            valid = valid & (tl.load(mptr, mask=inside, other=0) != 0)
        else:
            s = s + tl.load(mptr, mask=inside, other=0.0).to(tl.float32) * 1.4426950408889634
    return tl.where(valid, s, float("-inf"))


@triton.jit
def _tile_and_head(SIZE, BLOCK: tl.constexpr):
    """(tile index, b * H + h) of this program in a 1-D grid of cdiv(SIZE, BLOCK) * B * H programs. The tiles
    of one head are consecutive, so they run together while that head's K and V are in L2; and B * H is not
    bound by the 65535 limit of a grid's second dimension (PAVER's temporal attention has B * H = 301824)."""
    tiles = tl.cdiv(SIZE, BLOCK)
    pid = tl.program_id(0)
    return pid % tiles, pid // tiles


@triton.jit
def _keep(seed, b, h, H, offs_m, offs_n, S, p_drop):
    """Dropout keep-mask of a tile: Philox stream per (b, h), offset m * S + n."""
    return tl.rand(seed + b * H + h, offs_m[:, None] * S + offs_n[None, :]) >= p_drop


@triton.autotune(configs=_configs(), key=["L", "S", "HEAD_DIM", "IS_CAUSAL", "HAS_MASK", "DROPOUT"])
@triton.jit
def _attn_fwd(Q, K, V, O, LSE, MASK, sm_scale, seed, p_drop,
              s_qb, s_qh, s_qm, s_qd, s_kb, s_kh, s_kn, s_kd, s_vb, s_vh, s_vn, s_vd,
              s_ob, s_oh, s_om, s_od, s_mb, s_mh, s_mm, s_mn,
              H, L, S, HEAD_DIM,
              BLOCK_D: tl.constexpr, HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr, IS_CAUSAL: tl.constexpr,
              DROPOUT: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m, pid_bh = _tile_and_head(L, BLOCK_M)
    b = (pid_bh // H).to(tl.int64)  # 64-bit offsets: b * s_qb may pass 2**31 elements
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    q = tl.load(Q + b * s_qb + h * s_qh + offs_m[:, None] * s_qm + offs_d[None, :] * s_qd,
                mask=(offs_m[:, None] < L) & d_ok[None, :], other=0.0)
    qk_scale = sm_scale * 1.4426950408889634
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    end_n = S
    if IS_CAUSAL:
        end_n = tl.minimum(S, (pid_m + 1) * BLOCK_M)
    for start_n in range(0, end_n, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < S
        k = tl.load(K + b * s_kb + h * s_kh + offs_n[None, :] * s_kn + offs_d[:, None] * s_kd,
                    mask=n_ok[None, :] & d_ok[:, None], other=0.0)
        s = _scores(q, k, offs_m, offs_n, b, h, L, S, qk_scale, MASK, s_mb, s_mh, s_mm, s_mn,
                    HAS_MASK, MASK_BOOL, IS_CAUSAL, PRECISION)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing to attend to yet
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        if DROPOUT:
            p = tl.where(_keep(seed, b, h, H, offs_m, offs_n, S, p_drop), p / (1.0 - p_drop), 0.0)
        v = tl.load(V + b * s_vb + h * s_vh + offs_n[:, None] * s_vn + offs_d[None, :] * s_vd,
                    mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    has_keys = l_i > 0
    out = tl.where(has_keys[:, None], acc / tl.where(has_keys, l_i, 1.0)[:, None], 0.0)
    tl.store(O + b * s_ob + h * s_oh + offs_m[:, None] * s_om + offs_d[None, :] * s_od, out.to(O.dtype.element_ty),
             mask=(offs_m[:, None] < L) & d_ok[None, :])
    # natural-log LSE; +inf for rows without keys so that the backward recomputes p = 0 there
    lse = tl.where(has_keys, m_i / 1.4426950408889634 + tl.log(tl.where(has_keys, l_i, 1.0)), float("inf"))
    tl.store(LSE + pid_bh * L + offs_m, lse, mask=offs_m < L)


@triton.jit
def _attn_bwd_delta(O, DO, DELTA, s_ob, s_oh, s_om, s_od, s_gb, s_gh, s_gm, s_gd, H, L, HEAD_DIM,
                    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """delta[b, h, m] = sum_d dO * O (the row term of the softmax gradient)."""
    pid_m, pid_bh = _tile_and_head(L, BLOCK_M)
    b = (pid_bh // H).to(tl.int64)  # 64-bit offsets: b * s_qb may pass 2**31 elements
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    msk = (offs_m[:, None] < L) & (offs_d[None, :] < HEAD_DIM)
    o = tl.load(O + b * s_ob + h * s_oh + offs_m[:, None] * s_om + offs_d[None, :] * s_od, mask=msk, other=0.0)
    do = tl.load(DO + b * s_gb + h * s_gh + offs_m[:, None] * s_gm + offs_d[None, :] * s_gd, mask=msk, other=0.0)
    tl.store(DELTA + pid_bh * L + offs_m, tl.sum(o.to(tl.float32) * do.to(tl.float32), 1), mask=offs_m < L)


@triton.autotune(configs=_configs(True), key=["L", "S", "HEAD_DIM", "IS_CAUSAL", "HAS_MASK", "DROPOUT"])
@triton.jit
def _attn_bwd_dkdv(Q, K, V, DO, DK, DV, LSE, DELTA, MASK, sm_scale, seed, p_drop,
                   s_qb, s_qh, s_qm, s_qd, s_kb, s_kh, s_kn, s_kd, s_vb, s_vh, s_vn, s_vd,
                   s_gb, s_gh, s_gm, s_gd, s_mb, s_mh, s_mm, s_mn,
                   H, L, S, HEAD_DIM,
                   BLOCK_D: tl.constexpr, HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr, IS_CAUSAL: tl.constexpr,
                   DROPOUT: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One block of keys: dV = P'^T dO and dK = dS^T Q * scale, looping over all query blocks."""
    pid_n, pid_bh = _tile_and_head(S, BLOCK_N)
    b = (pid_bh // H).to(tl.int64)  # 64-bit offsets: b * s_qb may pass 2**31 elements
    h = pid_bh % H
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    n_ok = offs_n < S
    kT = tl.load(K + b * s_kb + h * s_kh + offs_n[None, :] * s_kn + offs_d[:, None] * s_kd,
                 mask=n_ok[None, :] & d_ok[:, None], other=0.0)  # (D, BLOCK_N)
    vT = tl.load(V + b * s_vb + h * s_vh + offs_n[None, :] * s_vn + offs_d[:, None] * s_vd,
                 mask=n_ok[None, :] & d_ok[:, None], other=0.0)
    qk_scale = sm_scale * 1.4426950408889634
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    start_m = 0
    if IS_CAUSAL:
        start_m = (pid_n * BLOCK_N) // BLOCK_M * BLOCK_M
    for m0 in range(start_m, L, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        m_ok = offs_m < L
        q = tl.load(Q + b * s_qb + h * s_qh + offs_m[:, None] * s_qm + offs_d[None, :] * s_qd,
                    mask=m_ok[:, None] & d_ok[None, :], other=0.0)
        do = tl.load(DO + b * s_gb + h * s_gh + offs_m[:, None] * s_gm + offs_d[None, :] * s_gd,
                     mask=m_ok[:, None] & d_ok[None, :], other=0.0)
        lse = tl.load(LSE + pid_bh * L + offs_m, mask=m_ok, other=float("inf"))
        delta = tl.load(DELTA + pid_bh * L + offs_m, mask=m_ok, other=0.0)
        s = _scores(q, kT, offs_m, offs_n, b, h, L, S, qk_scale, MASK, s_mb, s_mh, s_mm, s_mn,
                    HAS_MASK, MASK_BOOL, IS_CAUSAL, PRECISION)
        p = tl.exp2(s - lse[:, None] * 1.4426950408889634)  # (BLOCK_M, BLOCK_N), 0 where masked
        dp = tl.dot(do, vT, input_precision=PRECISION)
        if DROPOUT:
            keep = _keep(seed, b, h, H, offs_m, offs_n, S, p_drop)
            p_dropped = tl.where(keep, p / (1.0 - p_drop), 0.0)
            dp = tl.where(keep, dp / (1.0 - p_drop), 0.0)
        else:
            p_dropped = p
        dv += tl.dot(tl.trans(p_dropped.to(do.dtype)), do, input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
    out_mask = n_ok[:, None] & d_ok[None, :]
    tl.store(DK + b * s_kb + h * s_kh + offs_n[:, None] * s_kn + offs_d[None, :] * s_kd,
             (dk * sm_scale).to(DK.dtype.element_ty), mask=out_mask)
    tl.store(DV + b * s_vb + h * s_vh + offs_n[:, None] * s_vn + offs_d[None, :] * s_vd,
             dv.to(DV.dtype.element_ty), mask=out_mask)


@triton.autotune(configs=_configs(True), key=["L", "S", "HEAD_DIM", "IS_CAUSAL", "HAS_MASK", "DROPOUT"])
@triton.jit
def _attn_bwd_dq(Q, K, V, DO, DQ, LSE, DELTA, MASK, sm_scale, seed, p_drop,
                 s_qb, s_qh, s_qm, s_qd, s_kb, s_kh, s_kn, s_kd, s_vb, s_vh, s_vn, s_vd,
                 s_gb, s_gh, s_gm, s_gd, s_mb, s_mh, s_mm, s_mn,
                 H, L, S, HEAD_DIM,
                 BLOCK_D: tl.constexpr, HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr, IS_CAUSAL: tl.constexpr,
                 DROPOUT: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One block of queries: dQ = dS K * scale, looping over all key blocks."""
    pid_m, pid_bh = _tile_and_head(L, BLOCK_M)
    b = (pid_bh // H).to(tl.int64)  # 64-bit offsets: b * s_qb may pass 2**31 elements
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    m_ok = offs_m < L
    q = tl.load(Q + b * s_qb + h * s_qh + offs_m[:, None] * s_qm + offs_d[None, :] * s_qd,
                mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    do = tl.load(DO + b * s_gb + h * s_gh + offs_m[:, None] * s_gm + offs_d[None, :] * s_gd,
                 mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    lse = tl.load(LSE + pid_bh * L + offs_m, mask=m_ok, other=float("inf"))
    delta = tl.load(DELTA + pid_bh * L + offs_m, mask=m_ok, other=0.0)
    qk_scale = sm_scale * 1.4426950408889634
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    end_n = S
    if IS_CAUSAL:
        end_n = tl.minimum(S, (pid_m + 1) * BLOCK_M)
    for start_n in range(0, end_n, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < S
        kT = tl.load(K + b * s_kb + h * s_kh + offs_n[None, :] * s_kn + offs_d[:, None] * s_kd,
                     mask=n_ok[None, :] & d_ok[:, None], other=0.0)
        vT = tl.load(V + b * s_vb + h * s_vh + offs_n[None, :] * s_vn + offs_d[:, None] * s_vd,
                     mask=n_ok[None, :] & d_ok[:, None], other=0.0)
        s = _scores(q, kT, offs_m, offs_n, b, h, L, S, qk_scale, MASK, s_mb, s_mh, s_mm, s_mn,
                    HAS_MASK, MASK_BOOL, IS_CAUSAL, PRECISION)
        p = tl.exp2(s - lse[:, None] * 1.4426950408889634)
        dp = tl.dot(do, vT, input_precision=PRECISION)
        if DROPOUT:
            dp = tl.where(_keep(seed, b, h, H, offs_m, offs_n, S, p_drop), dp / (1.0 - p_drop), 0.0)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(kT.dtype), tl.trans(kT), input_precision=PRECISION)
    tl.store(DQ + b * s_qb + h * s_qh + offs_m[:, None] * s_qm + offs_d[None, :] * s_qd,
             (dq * sm_scale).to(DQ.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])


@triton.jit
def _dropout_mask_kernel(OUT, seed, p_drop, H, L, S, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_bh = tl.program_id(0)  # B * H in the grid's first dimension (up to 2**31 - 1, the others 65535)
    pid_m = tl.program_id(1)
    pid_n = tl.program_id(2)
    b = (pid_bh // H).to(tl.int64)  # as in the attention kernels: the same Philox seeds
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    keep = _keep(seed, b, h, H, offs_m, offs_n, S, p_drop)
    tl.store(OUT + (b * H + h) * L * S + offs_m[:, None] * S + offs_n[None, :], keep.to(tl.int8),
             mask=(offs_m[:, None] < L) & (offs_n[None, :] < S))


# ---------------------------------------------------------------------------------------------- launchers

def _mask_args(mask: Optional[Tensor], B: int, H: int, L: int, S: int):
    """The mask as a (B, H, L, S) view (broadcast dims get stride 0, nothing is copied)."""
    if mask is None:
        return None, (0, 0, 0, 0), False
    m = mask.expand(B, H, L, S)
    if m.dtype == torch.bool:
        m = m.view(torch.int8)
    return m, m.stride(), mask.dtype == torch.bool


def _head_block(D: int) -> int:
    return max(16, triton.next_power_of_2(D))


def _direct(kernel):
    return kernel


def _forward_launch(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], is_causal: bool, scale: float,
                    dropout_p: float, seed: int, wrap=_direct) -> tuple[Tensor, Tensor]:
    """Returns (out (B, H, L, D), lse (B, H, L) float32). wrap: how kernels are launched (``wrap_triton`` inside
    the custom op, directly on the eager path)."""
    B, H, L, D = q.shape
    S = k.shape[2]
    out = torch.empty_like(q)
    lse = torch.empty(B, H, L, device=q.device, dtype=torch.float32)
    m, ms, mask_bool = _mask_args(mask, B, H, L, S)

    def grid(meta):
        return (triton.cdiv(L, meta["BLOCK_M"]) * B * H,)

    wrap(_attn_fwd)[grid](
        q, k, v, out, lse, m if m is not None else q, scale, seed, dropout_p,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *ms,
        H, L, S, D, BLOCK_D=_head_block(D), HAS_MASK=m is not None, MASK_BOOL=mask_bool, IS_CAUSAL=is_causal,
        DROPOUT=dropout_p > 0, PRECISION=_precision(q.dtype))
    return out, lse


def _backward_launch(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                     mask: Optional[Tensor], is_causal: bool, scale: float, dropout_p: float, seed: int,
                     wrap=_direct) -> tuple[Tensor, Tensor, Tensor]:
    B, H, L, D = q.shape
    S = k.shape[2]
    grad_out = grad_out.contiguous()
    # The kernels write dQ, dK, dV with the strides of q, k, v. A view that is not dense (the heads of a qkv
    # projection) has strides no gradient buffer of its size can take: such inputs are made dense first.
    q, k, v = (t if torch.empty_like(t).stride() == t.stride() else t.contiguous() for t in (q, k, v))
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    delta = torch.empty(B, H, L, device=q.device, dtype=torch.float32)
    bd = _head_block(D)
    wrap(_attn_bwd_delta)[(triton.cdiv(L, 16) * B * H,)](
        out, grad_out, delta, *out.stride(), *grad_out.stride(), H, L, D, BLOCK_M=16, BLOCK_D=bd)
    m, ms, mask_bool = _mask_args(mask, B, H, L, S)
    common = dict(BLOCK_D=bd, HAS_MASK=m is not None, MASK_BOOL=mask_bool, IS_CAUSAL=is_causal,
                  DROPOUT=dropout_p > 0, PRECISION=_precision(q.dtype))
    mask_arg = m if m is not None else q

    def grid_n(meta):
        return (triton.cdiv(S, meta["BLOCK_N"]) * B * H,)

    def grid_m(meta):
        return (triton.cdiv(L, meta["BLOCK_M"]) * B * H,)

    # dK/dV and dQ share strides: dk/dv are allocated like k/v, dq like q.
    wrap(_attn_bwd_dkdv)[grid_n](
        q, k, v, grad_out, dk, dv, lse, delta, mask_arg, scale, seed, dropout_p,
        *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), *ms, H, L, S, D, **common)
    wrap(_attn_bwd_dq)[grid_m](
        q, k, v, grad_out, dq, lse, delta, mask_arg, scale, seed, dropout_p,
        *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), *ms, H, L, S, D, **common)
    return dq, dk, dv


@triton_op("pvf::flash_attention_fwd", mutates_args={})
def flash_attention_fwd(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], is_causal: bool, scale: float,
                        dropout_p: float, seed: int) -> tuple[Tensor, Tensor]:
    """Returns (out (B, H, L, D), lse (B, H, L) float32)."""
    return _forward_launch(q, k, v, mask, is_causal, scale, dropout_p, seed, wrap=wrap_triton)


@triton_op("pvf::flash_attention_bwd", mutates_args={})
def flash_attention_bwd(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                        mask: Optional[Tensor], is_causal: bool, scale: float, dropout_p: float,
                        seed: int) -> tuple[Tensor, Tensor, Tensor]:
    return _backward_launch(grad_out, q, k, v, out, lse, mask, is_causal, scale, dropout_p, seed, wrap=wrap_triton)


def setup_context(ctx, inputs, output):
    q, k, v, mask, is_causal, scale, dropout_p, seed = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, mask)
    ctx.args = (is_causal, scale, dropout_p, seed)


def _backward_with(bwd):
    def backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse, mask = ctx.saved_tensors
        dq, dk, dv = bwd(grad_out, q, k, v, out, lse, mask, *ctx.args)
        return dq, dk, dv, None, None, None, None, None
    return backward


eager_backward = _backward_with(_backward_launch)
flash_attention_fwd.register_autograd(_backward_with(flash_attention_bwd), setup_context=setup_context)


def dropout_mask(seed: int, dropout_p: float, B: int, H: int, L: int, S: int, device) -> Tensor:
    """The keep-mask (B, H, L, S) bool that a call with this seed and dropout_p applies."""
    out = torch.empty(B, H, L, S, dtype=torch.int8, device=device)
    _dropout_mask_kernel[(B * H, triton.cdiv(L, 16), triton.cdiv(S, 16))](out, seed, dropout_p, H, L, S,
                                                                           BLOCK_M=16, BLOCK_N=16)
    return out.bool()
