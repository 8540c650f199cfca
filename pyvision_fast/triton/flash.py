"""Second-generation FlashAttention in Triton: the kernels of op ``attention``'s Triton backend since the H200
run of 2026-12-04 verified them (``kernel_family("previous")`` in ``ops.attention`` runs the first generation).

Semantics, arguments, saved LSE and dropout stream are those of ``pyvision_fast.triton.attention`` (the first
generation): (B, H, L, D) queries, (B, H, S, D) keys and values, bool (True = attend) or additive masks broadcastable
to (B, H, L, S), top-left causal masking, dropout from Philox (seed + b * H + h, m * S + n), so
``attention.dropout_mask`` gives the mask of a call of either family. What changes is the kernels:

- ``flash_fwd`` / ``flash_bwd``: tiled kernels masking only boundary tiles, separate autotuned configuration
  lists (Hopper shapes) for the forward, dK/dV and dQ, no transposes of computed tiles, and head dims such as
  80 = 64 + 16 as two exact chunks (autotuned against one padded tile).
- ``flash_small``: L, S <= 16 as one-tile kernels with many heads per program (PAVER's temporal attention).

``forward`` / ``backward`` launch the kernels directly (``ops.attention`` calls them from a plain
autograd.Function in eager mode); ``flash_next_fwd`` / ``flash_next_bwd`` are the same launchers as
``torch.library.triton_op`` custom ops for torch.compile, torch.export and fake tensors.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import triton
from torch import Tensor
from torch.library import triton_op, wrap_triton

from . import flash_bwd, flash_fwd, flash_small
from .attention import _mask_args, _precision
from .flash_fwd import SMALL_MAX, TAIL, head_dims


def _direct(kernel):
    return kernel


_CHOSEN: dict = {}  # (kernel, launch key) -> launch kwargs of the configuration its autotuner chose


def _launch(wrap, kernel, key, grid_of, args, kwargs) -> None:
    """Launches an autotuned kernel. Through ``wrap_triton`` (the custom op) as it is; eagerly, the first call of
    a key goes through the autotuner and later calls launch the jitted function with the configuration it
    chose, without the autotuner's per-call processing of every argument."""
    if wrap is not _direct:
        wrap(kernel)[grid_of](*args, **kwargs)
        return
    chosen = _CHOSEN.get((kernel, key))
    if chosen is not None:
        kernel.fn[grid_of(chosen)](*args, **kwargs, **chosen)
        return
    kernel[grid_of](*args, **kwargs)
    best = getattr(kernel, "best_config", None)
    if best is not None:
        _CHOSEN[(kernel, key)] = best.all_kwargs()


def _empty_heads(t: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
    """An uninitialised (B, H, L, D) tensor in t's layout: (B, L, H, D) memory viewed as (B, H, L, D) when t is
    such a view (a qkv projection's heads), so FusedAttention's transpose back to (B, L, H * D) is free."""
    B, H, L, D = t.shape
    dtype = t.dtype if dtype is None else dtype
    if t.stride(1) < t.stride(2) and H > 1 and L > 1:
        return torch.empty(B, L, H, D, device=t.device, dtype=dtype).transpose(1, 2)
    return torch.empty(B, H, L, D, device=t.device, dtype=dtype)


@functools.lru_cache(maxsize=None)
def _plan(L: int, S: int, D: int, dtype: torch.dtype, is_causal: bool, mask_bool: Optional[bool], dropout: bool,
          d_mode: int, precision: str) -> tuple[bool, dict]:
    """(one-tile kernels?, constexpr arguments) of a launch; the tuple of arguments is also its cache key."""
    common = dict(HAS_MASK=mask_bool is not None, MASK_BOOL=bool(mask_bool), IS_CAUSAL=is_causal, DROPOUT=dropout)
    if L <= SMALL_MAX and S <= SMALL_MAX:
        bd = triton.next_power_of_2(D)
        return True, dict(BLOCK_L=max(2, triton.next_power_of_2(L)), S_KEYS=S, BLOCK_D=bd, PAD_D=bd != D, **common)
    d_pow, d_hi, d_lo = head_dims(D)
    return False, dict(D_POW=d_pow, D_HI=d_hi, D_LO=d_lo, D_MODE=d_mode, PAD_D=d_pow != D, PRECISION=precision,
                       TAIL_N=TAIL, **common)


def _planned(wrap, key: tuple) -> tuple[bool, dict]:
    """_plan of a launch: cached for eager calls; inside the custom op (torch.compile, torch.export) the sizes can
    be symbolic, which are not hashable, so it is computed."""
    if wrap is _direct:
        return _plan(*key)
    L, S, D, *rest = key
    small = L <= SMALL_MAX and S <= SMALL_MAX  # a guard on symbolic sizes
    # D sets constexprs, and so does S on the one-tile path (its loop over keys is unrolled): those specialise
    return _plan.__wrapped__(L if not small else int(L), int(S) if small else S, int(D), *rest)


def _mask_view(mask: Optional[Tensor], B: int, H: int, L: int, S: int):
    """(mask argument, its (B, H, L, S) strides, bool?) without copying (broadcast dims get stride 0)."""
    if mask is None:
        return None, (0, 0, 0, 0), None
    return _mask_args(mask, B, H, L, S)


def forward(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], is_causal: bool, scale: float,
            dropout_p: float, seed: int, wrap=_direct) -> tuple[Tensor, Tensor]:
    """(out (B, H, L, D) in q's dtype, lse (B, H, L) float32, natural log, +inf for rows without keys).

    mask: None or a 4-D bool/float tensor broadcastable to (B, H, L, S) (not with is_causal); wrap: how kernels are
    launched (``wrap_triton`` inside the custom op)."""
    B, H, L, D = q.shape
    S = k.shape[2]
    out = _empty_heads(q)
    lse = torch.empty(B, H, L, device=q.device, dtype=torch.float32)
    if B * H * L == 0:
        return out, lse
    if S == 0:  # no keys: zeros, as SDPA gives
        return out.zero_(), lse.fill_(float("inf"))
    m, ms, mask_bool = _mask_view(mask, B, H, L, S)
    key = (L, S, D, q.dtype, is_causal, mask_bool, dropout_p > 0, flash_fwd.D_MODE, _precision(q.dtype))
    small, constexprs = _planned(wrap, key)
    args = (q, k, v, out, lse, q if m is None else m, scale, seed, dropout_p,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(), *ms)
    if small:
        BH = B * H
        _launch(wrap, flash_small._small_fwd, key, lambda meta: (triton.cdiv(BH, meta["HEADS"]),),
                (*args, BH, H, L, S, D), constexprs)
    else:
        _launch(wrap, flash_fwd._fwd, key, lambda meta: (triton.cdiv(L, meta["BLOCK_M"]) * B * H,),
                (*args, H, L, S, D), constexprs)
    return out, lse


def backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, mask: Optional[Tensor],
             is_causal: bool, scale: float, dropout_p: float, seed: int,
             wrap=_direct) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) of ``forward``'s output for grad_out (B, H, L, D), in the layouts of q, k and v."""
    B, H, L, D = q.shape
    S = k.shape[2]
    if grad_out.stride(-1) != 1:
        grad_out = grad_out.contiguous()
    dq, dk, dv = _empty_heads(q), _empty_heads(k), _empty_heads(v)
    if B * H * L == 0 or S == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    m, ms, mask_bool = _mask_view(mask, B, H, L, S)
    key = (L, S, D, q.dtype, is_causal, mask_bool, dropout_p > 0, flash_fwd.D_MODE, _precision(q.dtype))
    small, constexprs = _planned(wrap, key)
    mask_arg = q if m is None else m
    strides = (*q.stride(), *k.stride(), *v.stride())
    if small:
        BH = B * H
        _launch(wrap, flash_small._small_bwd, key, lambda meta: (triton.cdiv(BH, meta["HEADS"]),),
                (q, k, v, out, grad_out, dq, dk, dv, lse, mask_arg, scale, seed, dropout_p, *strides, *out.stride(),
                 *grad_out.stride(), *ms, *dq.stride(), *dk.stride(), *dv.stride(), BH, H, L, S, D), constexprs)
        return dq, dk, dv
    d_pow = constexprs["D_POW"]
    delta = torch.empty(B, H, L, device=q.device, dtype=torch.float32)
    wrap(flash_bwd._bwd_delta)[(triton.cdiv(L, 64) * B * H,)](
        out, grad_out, delta, *out.stride(), *grad_out.stride(), H, L, D, BLOCK_M=64, BLOCK_D=d_pow,
        PAD_D=d_pow != D)
    _launch(wrap, flash_bwd._dkdv, key, lambda meta: (triton.cdiv(S, meta["BLOCK_N"]) * B * H,),
            (q, k, v, grad_out, dk, dv, lse, delta, mask_arg, scale, seed, dropout_p, *strides, *grad_out.stride(),
             *ms, *dk.stride(), *dv.stride(), H, L, S, D), constexprs)
    _launch(wrap, flash_bwd._dq, key, lambda meta: (triton.cdiv(L, meta["BLOCK_M"]) * B * H,),
            (q, k, v, grad_out, dq, lse, delta, mask_arg, scale, seed, dropout_p, *strides, *grad_out.stride(), *ms,
             *dq.stride(), H, L, S, D), constexprs)
    return dq, dk, dv


# ------------------------------------------------------------------------------------ custom ops and autograd

@triton_op("pvf::flash_next_fwd", mutates_args={})
def flash_next_fwd(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], is_causal: bool, scale: float,
                   dropout_p: float, seed: int) -> tuple[Tensor, Tensor]:
    """``forward`` as a custom op: (out (B, H, L, D), lse (B, H, L) float32)."""
    return forward(q, k, v, mask, is_causal, scale, dropout_p, seed, wrap=wrap_triton)


@triton_op("pvf::flash_next_bwd", mutates_args={})
def flash_next_bwd(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                   mask: Optional[Tensor], is_causal: bool, scale: float, dropout_p: float,
                   seed: int) -> tuple[Tensor, Tensor, Tensor]:
    return backward(grad_out, q, k, v, out, lse, mask, is_causal, scale, dropout_p, seed, wrap=wrap_triton)


def setup_context(ctx, inputs, output):
    q, k, v, mask, is_causal, scale, dropout_p, seed = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, mask)
    ctx.args = (is_causal, scale, dropout_p, seed)


def _backward_with(bwd):
    def backward_fn(ctx, grad_out, grad_lse):
        q, k, v, out, lse, mask = ctx.saved_tensors
        dq, dk, dv = bwd(grad_out, q, k, v, out, lse, mask, *ctx.args)
        return dq, dk, dv, None, None, None, None, None
    return backward_fn


custom_op_backward = _backward_with(flash_next_bwd)
eager_backward = _backward_with(backward)
flash_next_fwd.register_autograd(custom_op_backward, setup_context=setup_context)
