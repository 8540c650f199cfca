"""Backward kernels of the second-generation FlashAttention family (see ``flash``): the row term
delta = rowsum(dO * O), then dK/dV (one block of keys per program, iterating over query blocks) and dQ (one block
of queries per program, iterating over key blocks), each with its own tile shapes and configuration list.

dK/dV compute the transposed tiles S^T = K Q^T, P^T and dS^T directly, so the products dV += P'^T dO and
dK += dS^T Q take computed tiles as left operands as they are; only loaded tiles (Q, dO) are transposed.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .flash_fwd import _KEY, _configs, _head, _load, _prune, _store, _user_mask


@triton.jit
def _bwd_delta(O, DO, DELTA, s_ob, s_oh, s_om, s_od, s_gb, s_gh, s_gm, s_gd, H, L, HEAD_DIM,
               BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, PAD_D: tl.constexpr):
    """delta[b, h, m] = sum_d dO * O (the row term of the softmax gradient), float32."""
    tiles = tl.cdiv(L, BLOCK_M)
    pid = tl.program_id(0)
    pid_m = pid % tiles
    pid_bh = pid // tiles
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    o = _load(O + _head(pid_bh, H, s_ob, s_oh), offs_m, offs_d, s_om, s_od, L, HEAD_DIM, True, PAD_D)
    do = _load(DO + _head(pid_bh, H, s_gb, s_gh), offs_m, offs_d, s_gm, s_gd, L, HEAD_DIM, True, PAD_D)
    tl.store(DELTA + pid_bh.to(tl.int64) * L + offs_m, tl.sum(o.to(tl.float32) * do.to(tl.float32), 1),
             mask=offs_m < L)


# -------------------------------------------------------------------------------------------------- dK, dV

@triton.jit
def _dkdv_tile(dk0, dk1, dv0, dv1, k0, k1, v0, v1, q_base, do_base, lse_base, delta_base, m_base,
               s_qm, s_qd, s_gm, s_gd, s_mm, s_mn, start_m, offs_n, L, S, HEAD_DIM, qk_scale, seed_bh, p_drop,
               BLOCK_M: tl.constexpr, BD0: tl.constexpr, BD1: tl.constexpr, HAS_D1: tl.constexpr,
               MASK_D0: tl.constexpr, MASK_M: tl.constexpr, MASK_N: tl.constexpr, CAUSAL: tl.constexpr,
               HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr):
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d0 = tl.arange(0, BD0)
    q0 = _load(q_base, offs_m, offs_d0, s_qm, s_qd, L, HEAD_DIM, MASK_M, MASK_D0)
    do0 = _load(do_base, offs_m, offs_d0, s_gm, s_gd, L, HEAD_DIM, MASK_M, MASK_D0)
    if MASK_M:  # rows past L: lse = +inf gives p = 0, so they add nothing
        lse = tl.load(lse_base + offs_m, mask=offs_m < L, other=float("inf"))
        delta = tl.load(delta_base + offs_m, mask=offs_m < L, other=0.0)
    else:
        lse = tl.load(lse_base + offs_m)
        delta = tl.load(delta_base + offs_m)
    st = tl.dot(k0, tl.trans(q0), input_precision=PRECISION)  # (BLOCK_N, BLOCK_M)
    if HAS_D1:
        offs_d1 = BD0 + tl.arange(0, BD1)
        q1 = _load(q_base, offs_m, offs_d1, s_qm, s_qd, L, HEAD_DIM, MASK_M, False)
        do1 = _load(do_base, offs_m, offs_d1, s_gm, s_gd, L, HEAD_DIM, MASK_M, False)
        st += tl.dot(k1, tl.trans(q1), input_precision=PRECISION)
    st = st * qk_scale
    if HAS_MASK:
        st = _user_mask(st, m_base, offs_n, offs_m, s_mn, s_mm, S, L, MASK_N, MASK_M, MASK_BOOL)
    if MASK_N:
        st = tl.where(offs_n[:, None] < S, st, float("-inf"))
    if CAUSAL:
        st = tl.where(offs_n[:, None] <= offs_m[None, :], st, float("-inf"))
    pt = tl.exp2(st - (lse * 1.4426950408889634)[None, :])
    dpt = tl.dot(v0, tl.trans(do0), input_precision=PRECISION)
    if HAS_D1:
        dpt += tl.dot(v1, tl.trans(do1), input_precision=PRECISION)
    if DROPOUT:
        keep = tl.rand(seed_bh, offs_m[None, :] * S + offs_n[:, None]) >= p_drop
        pdt = tl.where(keep, pt * (1.0 / (1.0 - p_drop)), 0.0)
        dpt = tl.where(keep, dpt * (1.0 / (1.0 - p_drop)), 0.0)
    else:
        pdt = pt
    dv0 += tl.dot(pdt.to(do0.dtype), do0, input_precision=PRECISION)
    dst = (pt * (dpt - delta[None, :])).to(q0.dtype)
    dk0 += tl.dot(dst, q0, input_precision=PRECISION)
    if HAS_D1:
        dv1 += tl.dot(pdt.to(do1.dtype), do1, input_precision=PRECISION)
        dk1 += tl.dot(dst, q1, input_precision=PRECISION)
    return dk0, dk1, dv0, dv1


@triton.jit
def _dkdv_loops(dk0, dk1, dv0, dv1, k0, k1, v0, v1, q_base, do_base, lse_base, delta_base, m_base,
                s_qm, s_qd, s_gm, s_gd, s_mm, s_mn, n0, offs_n, L, S, HEAD_DIM, qk_scale, seed_bh, p_drop,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TAIL_M: tl.constexpr, BD0: tl.constexpr,
                BD1: tl.constexpr, HAS_D1: tl.constexpr, MASK_D0: tl.constexpr, MASK_N: tl.constexpr,
                IS_CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr, DROPOUT: tl.constexpr,
                PRECISION: tl.constexpr):
    """All query blocks for one key block: causal diagonal blocks (masked), full blocks, then the row tail."""
    l_full = L // BLOCK_M * BLOCK_M
    m_free = 0
    if IS_CAUSAL:
        m_start = n0 // BLOCK_M * BLOCK_M  # rows before n0 see none of these keys
        # first block whose first row sees every key of this block
        m_free = m_start + tl.cdiv(n0 + BLOCK_N - 1 - m_start, BLOCK_M) * BLOCK_M
        for start_m in range(m_start, tl.minimum(m_free, L), BLOCK_M):
            dk0, dk1, dv0, dv1 = _dkdv_tile(
                dk0, dk1, dv0, dv1, k0, k1, v0, v1, q_base, do_base, lse_base, delta_base, m_base,
                s_qm, s_qd, s_gm, s_gd, s_mm, s_mn, start_m, offs_n, L, S, HEAD_DIM, qk_scale, seed_bh, p_drop,
                BLOCK_M, BD0, BD1, HAS_D1, MASK_D0, True, MASK_N, True, HAS_MASK, MASK_BOOL, DROPOUT, PRECISION)
    for start_m in range(m_free, l_full, BLOCK_M):
        dk0, dk1, dv0, dv1 = _dkdv_tile(
            dk0, dk1, dv0, dv1, k0, k1, v0, v1, q_base, do_base, lse_base, delta_base, m_base,
            s_qm, s_qd, s_gm, s_gd, s_mm, s_mn, start_m, offs_n, L, S, HEAD_DIM, qk_scale, seed_bh, p_drop,
            BLOCK_M, BD0, BD1, HAS_D1, MASK_D0, False, MASK_N, False, HAS_MASK, MASK_BOOL, DROPOUT, PRECISION)
    for start_m in range(tl.maximum(m_free, l_full), L, TAIL_M):
        dk0, dk1, dv0, dv1 = _dkdv_tile(
            dk0, dk1, dv0, dv1, k0, k1, v0, v1, q_base, do_base, lse_base, delta_base, m_base,
            s_qm, s_qd, s_gm, s_gd, s_mm, s_mn, start_m, offs_n, L, S, HEAD_DIM, qk_scale, seed_bh, p_drop,
            TAIL_M, BD0, BD1, HAS_D1, MASK_D0, True, MASK_N, False, HAS_MASK, MASK_BOOL, DROPOUT, PRECISION)
    return dk0, dk1, dv0, dv1


@triton.jit
def _dkdv_body(Q, K, V, DO, DK, DV, LSE, DELTA, MASK, sm_scale, seed, p_drop,
               s_qb, s_qh, s_qm, s_qd, s_kb, s_kh, s_kn, s_kd, s_vb, s_vh, s_vn, s_vd,
               s_gb, s_gh, s_gm, s_gd, s_mb, s_mh, s_mm, s_mn,
               s_dkb, s_dkh, s_dkn, s_dkd, s_dvb, s_dvh, s_dvn, s_dvd, H, L, S, HEAD_DIM,
               BD0: tl.constexpr, BD1: tl.constexpr, HAS_D1: tl.constexpr, MASK_D0: tl.constexpr,
               HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr, IS_CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
               PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TAIL_M: tl.constexpr):
    tiles = tl.cdiv(S, BLOCK_N)
    pid = tl.program_id(0)
    pid_n = pid % tiles
    pid_bh = pid // tiles
    n0 = pid_n * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d0 = tl.arange(0, BD0)
    k_base = K + _head(pid_bh, H, s_kb, s_kh)
    v_base = V + _head(pid_bh, H, s_vb, s_vh)
    k0 = _load(k_base, offs_n, offs_d0, s_kn, s_kd, S, HEAD_DIM, True, MASK_D0)
    v0 = _load(v_base, offs_n, offs_d0, s_vn, s_vd, S, HEAD_DIM, True, MASK_D0)
    k1 = k0
    v1 = v0
    if HAS_D1:
        k1 = _load(k_base, offs_n, BD0 + tl.arange(0, BD1), s_kn, s_kd, S, HEAD_DIM, True, False)
        v1 = _load(v_base, offs_n, BD0 + tl.arange(0, BD1), s_vn, s_vd, S, HEAD_DIM, True, False)
    q_base = Q + _head(pid_bh, H, s_qb, s_qh)
    do_base = DO + _head(pid_bh, H, s_gb, s_gh)
    m_base = MASK + _head(pid_bh, H, s_mb, s_mh)
    lse_base = LSE + pid_bh.to(tl.int64) * L
    delta_base = DELTA + pid_bh.to(tl.int64) * L
    qk_scale = sm_scale * 1.4426950408889634
    seed_bh = seed + pid_bh.to(tl.int64)
    dk0 = tl.zeros([BLOCK_N, BD0], tl.float32)
    dv0 = tl.zeros([BLOCK_N, BD0], tl.float32)
    dk1 = tl.zeros([BLOCK_N, BD1], tl.float32)
    dv1 = tl.zeros([BLOCK_N, BD1], tl.float32)
    if n0 + BLOCK_N <= S:  # every key of the block exists: no key bound in the loops
        dk0, dk1, dv0, dv1 = _dkdv_loops(
            dk0, dk1, dv0, dv1, k0, k1, v0, v1, q_base, do_base, lse_base, delta_base, m_base,
            s_qm, s_qd, s_gm, s_gd, s_mm, s_mn, n0, offs_n, L, S, HEAD_DIM, qk_scale, seed_bh, p_drop,
            BLOCK_M, BLOCK_N, TAIL_M, BD0, BD1, HAS_D1, MASK_D0, False, IS_CAUSAL, HAS_MASK, MASK_BOOL,
            DROPOUT, PRECISION)
    else:
        dk0, dk1, dv0, dv1 = _dkdv_loops(
            dk0, dk1, dv0, dv1, k0, k1, v0, v1, q_base, do_base, lse_base, delta_base, m_base,
            s_qm, s_qd, s_gm, s_gd, s_mm, s_mn, n0, offs_n, L, S, HEAD_DIM, qk_scale, seed_bh, p_drop,
            BLOCK_M, BLOCK_N, TAIL_M, BD0, BD1, HAS_D1, MASK_D0, True, IS_CAUSAL, HAS_MASK, MASK_BOOL,
            DROPOUT, PRECISION)
    dk_base = DK + _head(pid_bh, H, s_dkb, s_dkh)
    dv_base = DV + _head(pid_bh, H, s_dvb, s_dvh)
    _store(dk_base, (dk0 * sm_scale).to(DK.dtype.element_ty), offs_n, offs_d0, s_dkn, s_dkd, S, HEAD_DIM, MASK_D0)
    _store(dv_base, dv0.to(DV.dtype.element_ty), offs_n, offs_d0, s_dvn, s_dvd, S, HEAD_DIM, MASK_D0)
    if HAS_D1:
        offs_d1 = BD0 + tl.arange(0, BD1)
        _store(dk_base, (dk1 * sm_scale).to(DK.dtype.element_ty), offs_n, offs_d1, s_dkn, s_dkd, S, HEAD_DIM,
               False)
        _store(dv_base, dv1.to(DV.dtype.element_ty), offs_n, offs_d1, s_dvn, s_dvd, S, HEAD_DIM, False)


@triton.autotune(configs=_configs("dkdv"), key=_KEY, prune_configs_by={"early_config_prune": _prune("dkdv")})
@triton.jit
def _dkdv(Q, K, V, DO, DK, DV, LSE, DELTA, MASK, sm_scale, seed, p_drop,
          s_qb, s_qh, s_qm, s_qd, s_kb, s_kh, s_kn, s_kd, s_vb, s_vh, s_vn, s_vd,
          s_gb, s_gh, s_gm, s_gd, s_mb, s_mh, s_mm, s_mn,
          s_dkb, s_dkh, s_dkn, s_dkd, s_dvb, s_dvh, s_dvn, s_dvd, H, L, S, HEAD_DIM,
          D_POW: tl.constexpr, D_HI: tl.constexpr, D_LO: tl.constexpr, D_MODE: tl.constexpr, PAD_D: tl.constexpr,
          HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr, IS_CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
          PRECISION: tl.constexpr, TAIL_N: tl.constexpr,
          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT_D: tl.constexpr):
    if SPLIT_D:
        _dkdv_body(Q, K, V, DO, DK, DV, LSE, DELTA, MASK, sm_scale, seed, p_drop,
                   s_qb, s_qh, s_qm, s_qd, s_kb, s_kh, s_kn, s_kd, s_vb, s_vh, s_vn, s_vd,
                   s_gb, s_gh, s_gm, s_gd, s_mb, s_mh, s_mm, s_mn,
                   s_dkb, s_dkh, s_dkn, s_dkd, s_dvb, s_dvh, s_dvn, s_dvd, H, L, S, HEAD_DIM,
                   D_HI, D_LO, True, False, HAS_MASK, MASK_BOOL, IS_CAUSAL, DROPOUT, PRECISION,
                   BLOCK_M, BLOCK_N, TAIL_N)
    else:
        _dkdv_body(Q, K, V, DO, DK, DV, LSE, DELTA, MASK, sm_scale, seed, p_drop,
                   s_qb, s_qh, s_qm, s_qd, s_kb, s_kh, s_kn, s_kd, s_vb, s_vh, s_vn, s_vd,
                   s_gb, s_gh, s_gm, s_gd, s_mb, s_mh, s_mm, s_mn,
                   s_dkb, s_dkh, s_dkn, s_dkd, s_dvb, s_dvh, s_dvn, s_dvd, H, L, S, HEAD_DIM,
                   D_POW, 16, False, PAD_D, HAS_MASK, MASK_BOOL, IS_CAUSAL, DROPOUT, PRECISION,
                   BLOCK_M, BLOCK_N, TAIL_N)


# ------------------------------------------------------------------------------------------------------- dQ

@triton.jit
def _dq_tile(dq0, dq1, q0, q1, do0, do1, lse2, delta, k_base, v_base, s_kn, s_kd, s_vn, s_vd, m_base, s_mm, s_mn,
             start_n, offs_m, offs_mc, L, S, HEAD_DIM, qk_scale, seed_bh, p_drop,
             BLOCK_N: tl.constexpr, BD0: tl.constexpr, BD1: tl.constexpr, HAS_D1: tl.constexpr,
             MASK_D0: tl.constexpr, MASK_N: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr,
             MASK_BOOL: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr):
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d0 = tl.arange(0, BD0)
    k0 = _load(k_base, offs_n, offs_d0, s_kn, s_kd, S, HEAD_DIM, MASK_N, MASK_D0)
    v0 = _load(v_base, offs_n, offs_d0, s_vn, s_vd, S, HEAD_DIM, MASK_N, MASK_D0)
    s = tl.dot(q0, tl.trans(k0), input_precision=PRECISION)
    dp = tl.dot(do0, tl.trans(v0), input_precision=PRECISION)
    if HAS_D1:
        offs_d1 = BD0 + tl.arange(0, BD1)
        k1 = _load(k_base, offs_n, offs_d1, s_kn, s_kd, S, HEAD_DIM, MASK_N, False)
        v1 = _load(v_base, offs_n, offs_d1, s_vn, s_vd, S, HEAD_DIM, MASK_N, False)
        s += tl.dot(q1, tl.trans(k1), input_precision=PRECISION)
        dp += tl.dot(do1, tl.trans(v1), input_precision=PRECISION)
    s = s * qk_scale
    if HAS_MASK:
        s = _user_mask(s, m_base, offs_mc, offs_n, s_mm, s_mn, L, S, False, MASK_N, MASK_BOOL)
    if MASK_N:
        s = tl.where(offs_n[None, :] < S, s, float("-inf"))
    if CAUSAL:
        s = tl.where(offs_n[None, :] <= offs_m[:, None], s, float("-inf"))
    p = tl.exp2(s - lse2[:, None])
    if DROPOUT:
        keep = tl.rand(seed_bh, offs_m[:, None] * S + offs_n[None, :]) >= p_drop
        dp = tl.where(keep, dp * (1.0 / (1.0 - p_drop)), 0.0)
    ds = (p * (dp - delta[:, None])).to(k0.dtype)
    dq0 += tl.dot(ds, k0, input_precision=PRECISION)
    if HAS_D1:
        dq1 += tl.dot(ds, k1, input_precision=PRECISION)
    return dq0, dq1


@triton.jit
def _dq_body(Q, K, V, DO, DQ, LSE, DELTA, MASK, sm_scale, seed, p_drop,
             s_qb, s_qh, s_qm, s_qd, s_kb, s_kh, s_kn, s_kd, s_vb, s_vh, s_vn, s_vd,
             s_gb, s_gh, s_gm, s_gd, s_mb, s_mh, s_mm, s_mn, s_dqb, s_dqh, s_dqm, s_dqd, H, L, S, HEAD_DIM,
             BD0: tl.constexpr, BD1: tl.constexpr, HAS_D1: tl.constexpr, MASK_D0: tl.constexpr,
             HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr, IS_CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
             PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TAIL_N: tl.constexpr):
    tiles = tl.cdiv(L, BLOCK_M)
    pid = tl.program_id(0)
    pid_m = pid % tiles
    pid_bh = pid // tiles
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_mc = tl.minimum(offs_m, L - 1)  # rows past L load row L - 1 and are not stored
    offs_d0 = tl.arange(0, BD0)
    q_base = Q + _head(pid_bh, H, s_qb, s_qh)
    do_base = DO + _head(pid_bh, H, s_gb, s_gh)
    q0 = _load(q_base, offs_mc, offs_d0, s_qm, s_qd, L, HEAD_DIM, False, MASK_D0)
    do0 = _load(do_base, offs_mc, offs_d0, s_gm, s_gd, L, HEAD_DIM, False, MASK_D0)
    q1 = q0
    do1 = do0
    if HAS_D1:
        q1 = _load(q_base, offs_mc, BD0 + tl.arange(0, BD1), s_qm, s_qd, L, HEAD_DIM, False, False)
        do1 = _load(do_base, offs_mc, BD0 + tl.arange(0, BD1), s_gm, s_gd, L, HEAD_DIM, False, False)
    lse2 = tl.load(LSE + pid_bh.to(tl.int64) * L + offs_mc) * 1.4426950408889634
    delta = tl.load(DELTA + pid_bh.to(tl.int64) * L + offs_mc)
    k_base = K + _head(pid_bh, H, s_kb, s_kh)
    v_base = V + _head(pid_bh, H, s_vb, s_vh)
    m_base = MASK + _head(pid_bh, H, s_mb, s_mh)
    qk_scale = sm_scale * 1.4426950408889634
    seed_bh = seed + pid_bh.to(tl.int64)
    dq0 = tl.zeros([BLOCK_M, BD0], tl.float32)
    dq1 = tl.zeros([BLOCK_M, BD1], tl.float32)
    if IS_CAUSAL:
        n_end = tl.minimum(S, m0 + BLOCK_M)
        n_free = tl.minimum(S, m0 + 1) // BLOCK_N * BLOCK_N
    else:
        n_end = S
        n_free = S // BLOCK_N * BLOCK_N
    for start_n in range(0, n_free, BLOCK_N):
        dq0, dq1 = _dq_tile(dq0, dq1, q0, q1, do0, do1, lse2, delta, k_base, v_base, s_kn, s_kd, s_vn, s_vd,
                            m_base, s_mm, s_mn, start_n, offs_m, offs_mc, L, S, HEAD_DIM, qk_scale, seed_bh, p_drop,
                            BLOCK_N, BD0, BD1, HAS_D1, MASK_D0, False, False, HAS_MASK, MASK_BOOL, DROPOUT,
                            PRECISION)
    if IS_CAUSAL:
        for start_n in range(n_free, n_end, BLOCK_N):
            dq0, dq1 = _dq_tile(dq0, dq1, q0, q1, do0, do1, lse2, delta, k_base, v_base, s_kn, s_kd, s_vn, s_vd,
                                m_base, s_mm, s_mn, start_n, offs_m, offs_mc, L, S, HEAD_DIM, qk_scale, seed_bh,
                                p_drop, BLOCK_N, BD0, BD1, HAS_D1, MASK_D0, True, True, HAS_MASK, MASK_BOOL, DROPOUT,
                                PRECISION)
    else:
        for start_n in range(n_free, n_end, TAIL_N):
            dq0, dq1 = _dq_tile(dq0, dq1, q0, q1, do0, do1, lse2, delta, k_base, v_base, s_kn, s_kd, s_vn, s_vd,
                                m_base, s_mm, s_mn, start_n, offs_m, offs_mc, L, S, HEAD_DIM, qk_scale, seed_bh,
                                p_drop, TAIL_N, BD0, BD1, HAS_D1, MASK_D0, True, False, HAS_MASK, MASK_BOOL, DROPOUT,
                                PRECISION)
    dq_base = DQ + _head(pid_bh, H, s_dqb, s_dqh)
    _store(dq_base, (dq0 * sm_scale).to(DQ.dtype.element_ty), offs_m, offs_d0, s_dqm, s_dqd, L, HEAD_DIM, MASK_D0)
    if HAS_D1:
        _store(dq_base, (dq1 * sm_scale).to(DQ.dtype.element_ty), offs_m, BD0 + tl.arange(0, BD1), s_dqm, s_dqd,
               L, HEAD_DIM, False)


@triton.autotune(configs=_configs("dq"), key=_KEY, prune_configs_by={"early_config_prune": _prune("dq")})
@triton.jit
def _dq(Q, K, V, DO, DQ, LSE, DELTA, MASK, sm_scale, seed, p_drop,
        s_qb, s_qh, s_qm, s_qd, s_kb, s_kh, s_kn, s_kd, s_vb, s_vh, s_vn, s_vd,
        s_gb, s_gh, s_gm, s_gd, s_mb, s_mh, s_mm, s_mn, s_dqb, s_dqh, s_dqm, s_dqd, H, L, S, HEAD_DIM,
        D_POW: tl.constexpr, D_HI: tl.constexpr, D_LO: tl.constexpr, D_MODE: tl.constexpr, PAD_D: tl.constexpr,
        HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr, IS_CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
        PRECISION: tl.constexpr, TAIL_N: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT_D: tl.constexpr):
    if SPLIT_D:
        _dq_body(Q, K, V, DO, DQ, LSE, DELTA, MASK, sm_scale, seed, p_drop,
                 s_qb, s_qh, s_qm, s_qd, s_kb, s_kh, s_kn, s_kd, s_vb, s_vh, s_vn, s_vd,
                 s_gb, s_gh, s_gm, s_gd, s_mb, s_mh, s_mm, s_mn, s_dqb, s_dqh, s_dqm, s_dqd, H, L, S, HEAD_DIM,
                 D_HI, D_LO, True, False, HAS_MASK, MASK_BOOL, IS_CAUSAL, DROPOUT, PRECISION,
                 BLOCK_M, BLOCK_N, TAIL_N)
    else:
        _dq_body(Q, K, V, DO, DQ, LSE, DELTA, MASK, sm_scale, seed, p_drop,
                 s_qb, s_qh, s_qm, s_qd, s_kb, s_kh, s_kn, s_kd, s_vb, s_vh, s_vn, s_vd,
                 s_gb, s_gh, s_gm, s_gd, s_mb, s_mh, s_mm, s_mn, s_dqb, s_dqh, s_dqm, s_dqd, H, L, S, HEAD_DIM,
                 D_POW, 16, False, PAD_D, HAS_MASK, MASK_BOOL, IS_CAUSAL, DROPOUT, PRECISION,
                 BLOCK_M, BLOCK_N, TAIL_N)
