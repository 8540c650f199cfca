"""One-tile attention for short sequences (L, S <= 16), forward and backward: PAVER's temporal attention over 5
frames has B * H = 301824 heads of L = S = 5, D = 64.

A program takes HEADS heads at once, as (HEADS, BLOCK_L, BLOCK_D) register tiles in float32, and walks over the
S keys one at a time (unrolled: S is a compile-time constant) with elementwise products and reductions: a 5 x 5 score tile would fill 10% of a 16 x 16
tensor-core tile, while the elementwise work (about 2 * L * S * D multiply-adds per head) stays far below the
time of moving q, k, v and out, which bounds these kernels. Head groups are a 1-D grid with 64-bit offsets.

The dropout stream, mask and causal semantics and the saved LSE are those of the tiled kernels (``flash_fwd``),
so a call gives the same result, dropout mask and gradients whichever family runs it.
"""
from __future__ import annotations

import os

import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_KEY = ["L", "S", "HEAD_DIM", "IS_CAUSAL", "HAS_MASK", "DROPOUT"]


def _configs() -> list[triton.Config]:
    if _INTERPRET:
        return [triton.Config({"HEADS": 4}, num_warps=4, num_stages=1)]
    if os.environ.get("PVF_TRITON_AUTOTUNE") == "0":
        return [triton.Config({"HEADS": 4}, num_warps=4, num_stages=1)]
    return [triton.Config({"HEADS": h}, num_warps=w, num_stages=1) for h, w in ((4, 4), (8, 4), (8, 8), (16, 8))]


def _prune(backward: bool):
    """Keeps the head groups whose (HEADS, BLOCK_L, BLOCK_D) float32 tiles hold at most 32 (forward) / 16
    (backward, which keeps three such tiles live) elements per thread: about 128 registers, measured for sm_90
    with tools/triton_report.py, so that enough warps stay resident to keep loads in flight. Never more heads per
    program than there are heads."""
    def prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        per_head = args["BLOCK_L"] * args["BLOCK_D"]
        limit = 16 if backward else 32
        keep = [c for c in configs
                if c.kwargs["HEADS"] * per_head <= limit * 32 * c.num_warps
                and c.kwargs["HEADS"] <= max(4, triton.next_power_of_2(args["BH"]))]
        return keep or [max(configs, key=lambda c: c.num_warps / c.kwargs["HEADS"])]
    return prune


@triton.jit
def _heads(pid, HEADS: tl.constexpr, BH, H, s_b, s_h):
    """(64-bit offsets of this program's heads in one tensor, valid-head flags); heads past BH are clamped to
    the last one for loading and never stored."""
    g = pid.to(tl.int64) * HEADS + tl.arange(0, HEADS)
    ok = g < BH
    g = tl.minimum(g, BH - 1)
    return (g // H) * s_b + (g % H) * s_h, ok


@triton.jit
def _tile3(ptr, head_off, rows, cols, s_r, s_c, R, C, PAD_D: tl.constexpr):
    """(HEADS, BLOCK_L, BLOCK_D) tile, zero past R rows and (when padded) C columns."""
    ptrs = ptr + head_off[:, None, None] + rows[None, :, None] * s_r + cols[None, None, :] * s_c
    if PAD_D:
        msk = (rows[None, :, None] < R) & (cols[None, None, :] < C)
    else:
        msk = rows[None, :, None] < R
    return tl.load(ptrs, mask=msk, other=0.0).to(tl.float32)


@triton.jit
def _row2(ptr, head_off, j, cols, s_r, s_c, C, PAD_D: tl.constexpr):
    """Row j of every head: (HEADS, BLOCK_D) float32."""
    ptrs = ptr + head_off[:, None] + j * s_r + cols[None, :] * s_c
    if PAD_D:
        x = tl.load(ptrs, mask=cols[None, :] < C, other=0.0)
    else:
        x = tl.load(ptrs)
    return x.to(tl.float32)


@triton.jit
def _scores(q, kj, j, rows, m_ptr, m_off, s_mm, s_mn, L, qk_scale, HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr,
            IS_CAUSAL: tl.constexpr):
    """Column j of the scores in log2 units, (HEADS, BLOCK_L), -inf where key j may not be attended."""
    s = tl.sum(q * kj[:, None, :], 2) * qk_scale
    if HAS_MASK:
        mv = tl.load(m_ptr + m_off[:, None] + rows[None, :] * s_mm + j * s_mn, mask=rows[None, :] < L, other=0)
        if MASK_BOOL:
            s = tl.where(mv != 0, s, float("-inf"))
        else:
            s = s + mv.to(tl.float32) * 1.4426950408889634
    if IS_CAUSAL:
        s = tl.where(rows[None, :] >= j, s, float("-inf"))
    return s


@triton.jit
def _keep(seed_g, rows, j, S, p_drop):
    """Dropout keep-mask of column j: the Philox stream of the tiled kernels, (seed + b * H + h, m * S + n)."""
    offs = (rows * S + j)[None, :] + (seed_g * 0).to(tl.int32)[:, None]
    seeds = seed_g[:, None] + (rows * 0).to(tl.int64)[None, :]
    return tl.rand(seeds, offs) >= p_drop


@triton.autotune(configs=_configs(), key=_KEY, prune_configs_by={"early_config_prune": _prune(False)})
@triton.jit
def _small_fwd(Q, K, V, O, LSE, MASK, sm_scale, seed, p_drop,
               s_qb, s_qh, s_qm, s_qd, s_kb, s_kh, s_kn, s_kd, s_vb, s_vh, s_vn, s_vd,
               s_ob, s_oh, s_om, s_od, s_mb, s_mh, s_mm, s_mn, BH, H, L, S, HEAD_DIM,
               BLOCK_L: tl.constexpr, S_KEYS: tl.constexpr, BLOCK_D: tl.constexpr, PAD_D: tl.constexpr,
               HAS_MASK: tl.constexpr,
               MASK_BOOL: tl.constexpr, IS_CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, HEADS: tl.constexpr):
    pid = tl.program_id(0)
    rows = tl.arange(0, BLOCK_L)
    cols = tl.arange(0, BLOCK_D)
    q_off, ok = _heads(pid, HEADS, BH, H, s_qb, s_qh)
    k_off, _ = _heads(pid, HEADS, BH, H, s_kb, s_kh)
    v_off, _ = _heads(pid, HEADS, BH, H, s_vb, s_vh)
    m_off, _ = _heads(pid, HEADS, BH, H, s_mb, s_mh)
    g = tl.minimum(pid.to(tl.int64) * HEADS + tl.arange(0, HEADS), BH - 1)
    seed_g = seed + g
    q = _tile3(Q, q_off, rows, cols, s_qm, s_qd, L, HEAD_DIM, PAD_D)
    qk_scale = sm_scale * 1.4426950408889634
    m_i = tl.full([HEADS, BLOCK_L], float("-inf"), tl.float32)
    l_i = tl.zeros([HEADS, BLOCK_L], tl.float32)
    acc = tl.zeros([HEADS, BLOCK_L, BLOCK_D], tl.float32)
    for j in tl.static_range(S_KEYS):  # unrolled: every key row is loaded up front
        kj = _row2(K, k_off, j, cols, s_kn, s_kd, HEAD_DIM, PAD_D)
        s = _scores(q, kj, j, rows, MASK, m_off, s_mm, s_mn, L, qk_scale, HAS_MASK, MASK_BOOL, IS_CAUSAL)
        m_new = tl.maximum(m_i, s)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe)
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + p
        if DROPOUT:
            p = tl.where(_keep(seed_g, rows, j, S, p_drop), p * (1.0 / (1.0 - p_drop)), 0.0)
        vj = _row2(V, v_off, j, cols, s_vn, s_vd, HEAD_DIM, PAD_D)
        acc = acc * alpha[:, :, None] + p[:, :, None] * vj[:, None, :]
        m_i = m_new
    has_keys = l_i > 0
    inv = tl.where(has_keys, 1.0 / tl.where(has_keys, l_i, 1.0), 0.0)
    lse = tl.where(has_keys, m_i * 0.6931471805599453 + tl.log(tl.where(has_keys, l_i, 1.0)), float("inf"))
    o_off, _ = _heads(pid, HEADS, BH, H, s_ob, s_oh)
    o_ptrs = O + o_off[:, None, None] + rows[None, :, None] * s_om + cols[None, None, :] * s_od
    o_ok = ok[:, None, None] & (rows[None, :, None] < L) & (cols[None, None, :] < HEAD_DIM)
    tl.store(o_ptrs, (acc * inv[:, :, None]).to(O.dtype.element_ty), mask=o_ok)
    tl.store(LSE + g[:, None] * L + rows[None, :], lse, mask=ok[:, None] & (rows[None, :] < L))


@triton.autotune(configs=_configs(), key=_KEY, prune_configs_by={"early_config_prune": _prune(True)})
@triton.jit
def _small_bwd(Q, K, V, O, DO, DQ, DK, DV, LSE, MASK, sm_scale, seed, p_drop,
               s_qb, s_qh, s_qm, s_qd, s_kb, s_kh, s_kn, s_kd, s_vb, s_vh, s_vn, s_vd,
               s_ob, s_oh, s_om, s_od, s_gb, s_gh, s_gm, s_gd, s_mb, s_mh, s_mm, s_mn,
               s_dqb, s_dqh, s_dqm, s_dqd, s_dkb, s_dkh, s_dkn, s_dkd, s_dvb, s_dvh, s_dvn, s_dvd, BH, H, L, S, HEAD_DIM,
               BLOCK_L: tl.constexpr, S_KEYS: tl.constexpr, BLOCK_D: tl.constexpr, PAD_D: tl.constexpr,
               HAS_MASK: tl.constexpr,
               MASK_BOOL: tl.constexpr, IS_CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, HEADS: tl.constexpr):
    """dQ, dK, dV in one pass over the keys: per key j, dV_j = sum_i P'_ij dO_i and dK_j = scale * sum_i dS_ij Q_i
    are complete (stored at once), dQ accumulates over j."""
    pid = tl.program_id(0)
    rows = tl.arange(0, BLOCK_L)
    cols = tl.arange(0, BLOCK_D)
    q_off, ok = _heads(pid, HEADS, BH, H, s_qb, s_qh)
    k_off, _ = _heads(pid, HEADS, BH, H, s_kb, s_kh)
    v_off, _ = _heads(pid, HEADS, BH, H, s_vb, s_vh)
    o_off, _ = _heads(pid, HEADS, BH, H, s_ob, s_oh)
    g_off, _ = _heads(pid, HEADS, BH, H, s_gb, s_gh)
    m_off, _ = _heads(pid, HEADS, BH, H, s_mb, s_mh)
    dq_off, _ = _heads(pid, HEADS, BH, H, s_dqb, s_dqh)
    dk_off, _ = _heads(pid, HEADS, BH, H, s_dkb, s_dkh)
    dv_off, _ = _heads(pid, HEADS, BH, H, s_dvb, s_dvh)
    g = tl.minimum(pid.to(tl.int64) * HEADS + tl.arange(0, HEADS), BH - 1)
    seed_g = seed + g
    q = _tile3(Q, q_off, rows, cols, s_qm, s_qd, L, HEAD_DIM, PAD_D)
    do = _tile3(DO, g_off, rows, cols, s_gm, s_gd, L, HEAD_DIM, PAD_D)
    delta = tl.sum(do * _tile3(O, o_off, rows, cols, s_om, s_od, L, HEAD_DIM, PAD_D), 2)
    lse2 = tl.load(LSE + g[:, None] * L + rows[None, :], mask=rows[None, :] < L, other=float("inf"))
    lse2 = lse2 * 1.4426950408889634
    qk_scale = sm_scale * 1.4426950408889634
    dq = tl.zeros([HEADS, BLOCK_L, BLOCK_D], tl.float32)
    store_ok = ok[:, None]
    if PAD_D:
        store_ok = store_ok & (cols[None, :] < HEAD_DIM)
    for j in tl.static_range(S_KEYS):  # unrolled: every key row is loaded up front
        kj = _row2(K, k_off, j, cols, s_kn, s_kd, HEAD_DIM, PAD_D)
        vj = _row2(V, v_off, j, cols, s_vn, s_vd, HEAD_DIM, PAD_D)
        s = _scores(q, kj, j, rows, MASK, m_off, s_mm, s_mn, L, qk_scale, HAS_MASK, MASK_BOOL, IS_CAUSAL)
        p = tl.exp2(s - lse2)  # 0 for rows past L (lse = +inf) and rows without keys
        dp = tl.sum(do * vj[:, None, :], 2)
        if DROPOUT:
            keep = _keep(seed_g, rows, j, S, p_drop)
            pd = tl.where(keep, p * (1.0 / (1.0 - p_drop)), 0.0)
            dp = tl.where(keep, dp * (1.0 / (1.0 - p_drop)), 0.0)
        else:
            pd = p
        ds = p * (dp - delta)
        dvj = tl.sum(pd[:, :, None] * do, 1)
        dkj = tl.sum(ds[:, :, None] * q, 1) * sm_scale
        dq += ds[:, :, None] * kj[:, None, :]
        tl.store(DK + dk_off[:, None] + j * s_dkn + cols[None, :] * s_dkd, dkj.to(DK.dtype.element_ty),
                 mask=store_ok)
        tl.store(DV + dv_off[:, None] + j * s_dvn + cols[None, :] * s_dvd, dvj.to(DV.dtype.element_ty),
                 mask=store_ok)
    dq_ptrs = DQ + dq_off[:, None, None] + rows[None, :, None] * s_dqm + cols[None, None, :] * s_dqd
    dq_ok = ok[:, None, None] & (rows[None, :, None] < L) & (cols[None, None, :] < HEAD_DIM)
    tl.store(dq_ptrs, (dq * sm_scale).to(DQ.dtype.element_ty), mask=dq_ok)
