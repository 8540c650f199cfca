"""Forward kernel of the second-generation FlashAttention family (see ``flash``), with the configuration lists,
pruning and tile helpers its backward kernels (``flash_bwd``) share.

- Only boundary tiles are masked: each loop runs its full tiles without bounds, causal or padding masks and then
  a masked tail of 16-wide tiles (ViT's 197 = 3 * 64 + 5 tokens costs 3 full tiles and one 16-wide tail instead
  of a fourth 64-wide tile). Query rows past L are clamped to row L - 1 for loading (never stored), so Q is
  loaded without predicates.
- Hopper configurations (BLOCK_M 128, 4-8 warps, 3-4 stages), autotuned per (L, S, D, dtype, causal, mask,
  dropout); configurations whose tiles do not fit in shared memory or would spill registers (a model calibrated
  on sm_90 compiles, tools/triton_report.py) are pruned before compiling.
- Head dims that are a power of two plus a power of two >= 16 (ViT-H/14's 80 = 64 + 16, 96, 48) may run as two
  exact chunks instead of one masked power-of-two tile (80 padded to 128 wastes 37% of the dot work); the
  autotuner chooses (``SPLIT_D`` in the configurations; ``D_MODE`` forces one for tests).
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import flash_small
from .attention import _mask_args, _precision

_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
TAIL = 16  # width of the masked tail tiles
SMALL_MAX = 16  # L and S up to this run the one-tile kernels
D_MODE = 0  # 0: the autotuner chooses split or padded head dims; 1: split where possible; 2: padded (tests)
_SMEM_LIMIT = 200 * 1024  # of the H100/H200's 227 KiB per block, leaving room for the compiler's own buffers


def _cfg(m: int, n: int, warps: int, stages: int, split: bool = False) -> triton.Config:
    return triton.Config({"BLOCK_M": m, "BLOCK_N": n, "SPLIT_D": split}, num_warps=warps, num_stages=stages)


def _single() -> Optional[tuple[int, int, int, int]]:
    """The one tile configuration of the interpreter and of PVF_TRITON_AUTOTUNE=0, or None when tuning."""
    if _INTERPRET:
        return (16, 16, 4, 1)
    if os.environ.get("PVF_TRITON_AUTOTUNE") == "0":
        return (64, 64, 4, 2)
    return None


def _configs(kind: str) -> list[triton.Config]:
    """kind: "fwd" (BLOCK_M queries per program, BLOCK_N keys per step), "dkdv" (BLOCK_N keys per program,
    BLOCK_M queries per step) or "dq" (as "fwd")."""
    one = _single()
    if one is not None:
        return [_cfg(*one), _cfg(*one, split=True)]
    tiles = {
        "fwd": [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 64, 8, 4)],
        "dkdv": [(32, 128, 8, 3), (64, 128, 8, 3), (64, 64, 4, 3), (32, 64, 4, 4)],
        "dq": [(128, 32, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 4)],
    }[kind]
    return [_cfg(*t) for t in tiles] + [_cfg(*t, split=True) for t in tiles[:2]]


@functools.lru_cache(maxsize=None)
def head_dims(D: int) -> tuple[int, int, int]:
    """(padded power-of-two tile, high chunk, low chunk) for head dim D; the chunks are 0 when D is not the sum of
    two powers of two >= 16 (or is itself a power of two: one exact tile)."""
    pow2 = max(16, triton.next_power_of_2(D))
    hi = triton.next_power_of_2(D) // 2
    lo = D - hi
    if pow2 == D or lo < 16 or lo & (lo - 1):
        return pow2, 0, 0
    return pow2, hi, lo


# float32 values per thread above which a configuration spilled registers on sm_90 (tools/triton_report.py)
_REG_LIMIT = {"fwd": 208, "dq": 256, "dkdv": 256}


def _values_per_thread(kind: str, m: int, n: int, bd: int, warps: int) -> float:
    """A rough register model: accumulators (float32), resident operands (two half values per register) and
    the score-sized tiles (S, P, dP, dS) of one step."""
    threads = 32 * warps
    if kind == "fwd":
        return (m * bd + 2 * m * n) / threads
    if kind == "dq":
        return (m * bd + m * bd + 3 * m * n) / threads  # dQ; Q and dO; S, dP, dS
    return (2 * n * bd + n * bd + 3 * n * m) / threads  # dK, dV; K and V; S^T, dP^T, dS^T


def _prune(kind: str):
    """early_config_prune: drops split-head configurations where D cannot be split, tiles whose pipelined
    operands do not fit in shared memory and tiles that would spill registers; in single-configuration modes
    keeps exactly one."""
    def prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        d_pow, d_lo, mode = args["D_POW"], args["D_LO"], args.get("D_MODE", 0)
        elem = args["Q"].element_size()
        keep = []
        for c in configs:
            split = c.kwargs["SPLIT_D"]
            if split and d_lo == 0:
                continue
            if (mode == 1 and d_lo and not split) or (mode == 2 and split):
                continue
            bd = d_pow if not split else args["D_HI"] + d_lo
            m, n = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
            streamed, resident = (n, m) if kind != "dkdv" else (m, n)  # rows loaded per step / once
            smem = (c.num_stages * 2 * streamed + 2 * resident) * bd * elem
            regs = _values_per_thread(kind, m, n, bd, c.num_warps) * (elem / 2 if elem > 2 else 1)
            if not _INTERPRET and (smem > _SMEM_LIMIT or regs > _REG_LIMIT[kind]):
                continue
            keep.append(c)
        if not keep:  # large head dims: a small unpipelined tile that fits
            keep = [_cfg(32, 32, 4, 1) if kind == "dkdv" else _cfg(64, 32, 4, 1)]
        if _single() is not None:  # one configuration: no benchmarking (split where it is possible)
            keep = sorted(keep, key=lambda c: not c.kwargs["SPLIT_D"])[:1]
        return keep
    return prune


_KEY = ["L", "S", "HEAD_DIM", "IS_CAUSAL", "HAS_MASK", "DROPOUT", "D_MODE"]


# ------------------------------------------------------------------------------------------------ helpers

@triton.jit
def _load(base, rows, cols, s_r, s_c, R, C, MASK_R: tl.constexpr, MASK_C: tl.constexpr):
    """A (len(rows), len(cols)) tile, zero outside rows < R / cols < C where those bounds are asked for."""
    ptrs = base + rows[:, None] * s_r + cols[None, :] * s_c
    if MASK_R:
        if MASK_C:
            x = tl.load(ptrs, mask=(rows[:, None] < R) & (cols[None, :] < C), other=0.0)
        else:
            x = tl.load(ptrs, mask=rows[:, None] < R, other=0.0)
    else:
        if MASK_C:
            x = tl.load(ptrs, mask=cols[None, :] < C, other=0.0)
        else:
            x = tl.load(ptrs)
    return x


@triton.jit
def _store(base, x, rows, cols, s_r, s_c, R, C, MASK_C: tl.constexpr):
    ptrs = base + rows[:, None] * s_r + cols[None, :] * s_c
    if MASK_C:
        tl.store(ptrs, x, mask=(rows[:, None] < R) & (cols[None, :] < C))
    else:
        tl.store(ptrs, x, mask=rows[:, None] < R)


@triton.jit
def _user_mask(s, m_base, rows, cols, s_mm, s_mn, R, C, MASK_R: tl.constexpr, MASK_C: tl.constexpr,
               MASK_BOOL: tl.constexpr):
    """Applies the user's mask to a score tile in log2 units (rows x cols of the (L, S) mask)."""
    mv = _load(m_base, rows, cols, s_mm, s_mn, R, C, MASK_R, MASK_C)
    if MASK_BOOL:
        s = tl.where(mv != 0, s, float("-inf"))
    else:
        s = s + mv.to(tl.float32) * 1.4426950408889634
    return s


@triton.jit
def _head(pid_bh, H, s_b, s_h):
    """The offset of head pid_bh = b * H + h in 64 bits (b * s_b may pass 2**31 elements)."""
    bh = pid_bh.to(tl.int64)
    return (bh // H) * s_b + (bh % H) * s_h


# ------------------------------------------------------------------------------------------------ forward

@triton.jit
def _fwd_tile(acc0, acc1, l_i, m_i, q0, q1, k_base, v_base, s_kn, s_vn, s_d_k, s_d_v, m_base, s_mm, s_mn,
              start_n, offs_m, offs_mc, L, S, HEAD_DIM, qk_scale, seed_bh, p_drop,
              BLOCK_N: tl.constexpr, BD0: tl.constexpr, BD1: tl.constexpr, HAS_D1: tl.constexpr,
              MASK_D0: tl.constexpr, MASK_N: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr,
              MASK_BOOL: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr):
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d0 = tl.arange(0, BD0)
    k0 = _load(k_base, offs_n, offs_d0, s_kn, s_d_k, S, HEAD_DIM, MASK_N, MASK_D0)
    s = tl.dot(q0, tl.trans(k0), input_precision=PRECISION)
    if HAS_D1:
        offs_d1 = BD0 + tl.arange(0, BD1)
        k1 = _load(k_base, offs_n, offs_d1, s_kn, s_d_k, S, HEAD_DIM, MASK_N, False)
        s += tl.dot(q1, tl.trans(k1), input_precision=PRECISION)
    s = s * qk_scale
    if HAS_MASK:
        s = _user_mask(s, m_base, offs_mc, offs_n, s_mm, s_mn, L, S, False, MASK_N, MASK_BOOL)
    if MASK_N:
        s = tl.where(offs_n[None, :] < S, s, float("-inf"))
    if CAUSAL:
        s = tl.where(offs_n[None, :] <= offs_m[:, None], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_use = m_new
    if HAS_MASK:  # a user mask may leave a row without any key so far
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - m_use[:, None])
    alpha = tl.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    if DROPOUT:
        keep = tl.rand(seed_bh, offs_m[:, None] * S + offs_n[None, :]) >= p_drop
        p = tl.where(keep, p * (1.0 / (1.0 - p_drop)), 0.0)
    v0 = _load(v_base, offs_n, offs_d0, s_vn, s_d_v, S, HEAD_DIM, MASK_N, MASK_D0)
    acc0 = acc0 * alpha[:, None] + tl.dot(p.to(v0.dtype), v0, input_precision=PRECISION)
    if HAS_D1:
        v1 = _load(v_base, offs_n, offs_d1, s_vn, s_d_v, S, HEAD_DIM, MASK_N, False)
        acc1 = acc1 * alpha[:, None] + tl.dot(p.to(v1.dtype), v1, input_precision=PRECISION)
    return acc0, acc1, l_i, m_new


@triton.jit
def _fwd_body(Q, K, V, O, LSE, MASK, sm_scale, seed, p_drop,
              s_qb, s_qh, s_qm, s_qd, s_kb, s_kh, s_kn, s_kd, s_vb, s_vh, s_vn, s_vd,
              s_ob, s_oh, s_om, s_od, s_mb, s_mh, s_mm, s_mn, H, L, S, HEAD_DIM,
              BD0: tl.constexpr, BD1: tl.constexpr, HAS_D1: tl.constexpr, MASK_D0: tl.constexpr,
              HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr, IS_CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
              PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TAIL_N: tl.constexpr):
    tiles = tl.cdiv(L, BLOCK_M)
    pid = tl.program_id(0)
    pid_m = pid % tiles  # the tiles of one head are consecutive: they share its K and V in L2
    pid_bh = pid // tiles
    q_base = Q + _head(pid_bh, H, s_qb, s_qh)
    k_base = K + _head(pid_bh, H, s_kb, s_kh)
    v_base = V + _head(pid_bh, H, s_vb, s_vh)
    m_base = MASK + _head(pid_bh, H, s_mb, s_mh)
    seed_bh = seed + pid_bh.to(tl.int64)
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_mc = tl.minimum(offs_m, L - 1)  # rows past L load row L - 1: no predicates, never stored
    offs_d0 = tl.arange(0, BD0)
    q0 = _load(q_base, offs_mc, offs_d0, s_qm, s_qd, L, HEAD_DIM, False, MASK_D0)
    q1 = q0
    if HAS_D1:
        q1 = _load(q_base, offs_mc, BD0 + tl.arange(0, BD1), s_qm, s_qd, L, HEAD_DIM, False, False)
    qk_scale = sm_scale * 1.4426950408889634
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc0 = tl.zeros([BLOCK_M, BD0], tl.float32)
    acc1 = tl.zeros([BLOCK_M, BD1], tl.float32)
    if IS_CAUSAL:
        n_end = tl.minimum(S, m0 + BLOCK_M)
        n_free = tl.minimum(S, m0 + 1) // BLOCK_N * BLOCK_N  # tiles every row of the block sees whole
    else:
        n_end = S
        n_free = S // BLOCK_N * BLOCK_N
    for start_n in range(0, n_free, BLOCK_N):
        acc0, acc1, l_i, m_i = _fwd_tile(
            acc0, acc1, l_i, m_i, q0, q1, k_base, v_base, s_kn, s_vn, s_kd, s_vd, m_base, s_mm, s_mn,
            start_n, offs_m, offs_mc, L, S, HEAD_DIM, qk_scale, seed_bh, p_drop,
            BLOCK_N, BD0, BD1, HAS_D1, MASK_D0, False, False, HAS_MASK, MASK_BOOL, DROPOUT, PRECISION)
    if IS_CAUSAL:
        for start_n in range(n_free, n_end, BLOCK_N):
            acc0, acc1, l_i, m_i = _fwd_tile(
                acc0, acc1, l_i, m_i, q0, q1, k_base, v_base, s_kn, s_vn, s_kd, s_vd, m_base, s_mm, s_mn,
                start_n, offs_m, offs_mc, L, S, HEAD_DIM, qk_scale, seed_bh, p_drop,
                BLOCK_N, BD0, BD1, HAS_D1, MASK_D0, True, True, HAS_MASK, MASK_BOOL, DROPOUT, PRECISION)
    else:
        for start_n in range(n_free, n_end, TAIL_N):
            acc0, acc1, l_i, m_i = _fwd_tile(
                acc0, acc1, l_i, m_i, q0, q1, k_base, v_base, s_kn, s_vn, s_kd, s_vd, m_base, s_mm, s_mn,
                start_n, offs_m, offs_mc, L, S, HEAD_DIM, qk_scale, seed_bh, p_drop,
                TAIL_N, BD0, BD1, HAS_D1, MASK_D0, True, False, HAS_MASK, MASK_BOOL, DROPOUT, PRECISION)
    if HAS_MASK:  # rows without any key: zeros, and +inf LSE so that the backward recomputes p = 0
        has_keys = l_i > 0
        inv = tl.where(has_keys, 1.0 / tl.where(has_keys, l_i, 1.0), 0.0)
        lse = tl.where(has_keys, m_i * 0.6931471805599453 + tl.log(tl.where(has_keys, l_i, 1.0)), float("inf"))
    else:
        inv = 1.0 / l_i
        lse = m_i * 0.6931471805599453 + tl.log(l_i)
    o_base = O + _head(pid_bh, H, s_ob, s_oh)
    _store(o_base, (acc0 * inv[:, None]).to(O.dtype.element_ty), offs_m, offs_d0, s_om, s_od, L, HEAD_DIM, MASK_D0)
    if HAS_D1:
        _store(o_base, (acc1 * inv[:, None]).to(O.dtype.element_ty), offs_m, BD0 + tl.arange(0, BD1), s_om, s_od,
               L, HEAD_DIM, False)
    tl.store(LSE + pid_bh.to(tl.int64) * L + offs_m, lse, mask=offs_m < L)


@triton.autotune(configs=_configs("fwd"), key=_KEY, prune_configs_by={"early_config_prune": _prune("fwd")})
@triton.jit
def _fwd(Q, K, V, O, LSE, MASK, sm_scale, seed, p_drop,
         s_qb, s_qh, s_qm, s_qd, s_kb, s_kh, s_kn, s_kd, s_vb, s_vh, s_vn, s_vd,
         s_ob, s_oh, s_om, s_od, s_mb, s_mh, s_mm, s_mn, H, L, S, HEAD_DIM,
         D_POW: tl.constexpr, D_HI: tl.constexpr, D_LO: tl.constexpr, D_MODE: tl.constexpr, PAD_D: tl.constexpr,
         HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr, IS_CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
         PRECISION: tl.constexpr, TAIL_N: tl.constexpr,
         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT_D: tl.constexpr):
    if SPLIT_D:  # head dim = D_HI + D_LO, two exact chunks
        _fwd_body(Q, K, V, O, LSE, MASK, sm_scale, seed, p_drop, s_qb, s_qh, s_qm, s_qd, s_kb, s_kh, s_kn, s_kd,
                  s_vb, s_vh, s_vn, s_vd, s_ob, s_oh, s_om, s_od, s_mb, s_mh, s_mm, s_mn, H, L, S, HEAD_DIM,
                  D_HI, D_LO, True, False, HAS_MASK, MASK_BOOL, IS_CAUSAL, DROPOUT, PRECISION, BLOCK_M, BLOCK_N,
                  TAIL_N)
    else:  # one power-of-two tile, masked when D is not a power of two
        _fwd_body(Q, K, V, O, LSE, MASK, sm_scale, seed, p_drop, s_qb, s_qh, s_qm, s_qd, s_kb, s_kh, s_kn, s_kd,
                  s_vb, s_vh, s_vn, s_vd, s_ob, s_oh, s_om, s_od, s_mb, s_mh, s_mm, s_mn, H, L, S, HEAD_DIM,
                  D_POW, 16, False, PAD_D, HAS_MASK, MASK_BOOL, IS_CAUSAL, DROPOUT, PRECISION,
                  BLOCK_M, BLOCK_N, TAIL_N)
