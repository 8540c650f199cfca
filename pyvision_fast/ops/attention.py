"""Fused scaled dot-product attention with the semantics of ``F.scaled_dot_product_attention``.

Backends: ``triton`` (FlashAttention-2-style kernels, ``pyvision_fast.triton.flash``: boundary-only masking,
Hopper tiles, one-tile kernels for L, S <= 16) on GPUs, and on CPU tensors when forced with ``PVF_BACKEND=triton``
under ``TRITON_INTERPRET=1``. The previous kernel family (``pyvision_fast.triton.attention``) stays reachable
with ``kernel_family("previous")`` for comparisons; the H200 run of 2026-12-04
(benchmarks/results/gpu-attention.md) measured the current family 1.36-1.53x the SDPA flash backend and
1.2-1.6x the previous family. ``cpu``: torch's own fused CPU attention (``F.scaled_dot_product_attention``), which is already the best
implementation there, so the CPU path adds nothing but identical semantics; ``reference``: the attention written
out.

In eager mode the Triton kernels are launched from a plain autograd.Function; under torch.compile, torch.export,
dispatch modes and fake tensors they run as the ``pvf::flash_attention_fwd`` / ``pvf::flash_next_fwd`` custom ops.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import numbers
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _backend
from ..reference import attention as ref
from . import _registry

MAX_HEAD_DIM = 256


def _check(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor], dropout_p: float,
           is_causal: bool = False) -> None:
    if (attn_mask is None and type(q) is Tensor and type(k) is Tensor and type(v) is Tensor  # the common case,
            and q.dim() == 4 and k.dim() == 4 and v.dim() == 4 and q.dtype == k.dtype == v.dtype  # checked fast
            and q.is_floating_point() and q.device == k.device == v.device and q.shape[:2] == k.shape[:2]
            and k.shape[:3] == v.shape[:3] and q.shape[3] == k.shape[3] > 0 and type(dropout_p) is float
            and 0.0 <= dropout_p < 1.0):
        return
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"attention: {name} must be a tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"attention: {name} must be (B, H, L, D), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"attention: {name} must be a floating-point tensor, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise TypeError(f"attention: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3]:
        raise ValueError(f"attention: batch/head/length mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"attention: q and k head dims differ ({q.shape[-1]} vs {k.shape[-1]})")
    if q.shape[-1] < 1:
        raise ValueError(f"attention: q and k must have a head dim D >= 1, got q {tuple(q.shape)}")
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)):
        raise TypeError(f"attention: dropout_p must be a number, got {type(dropout_p).__name__}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"attention: dropout_p must be in [0, 1), got {dropout_p}")
    if attn_mask is not None:
        if not isinstance(attn_mask, Tensor):
            raise TypeError(f"attention: attn_mask must be a tensor or None, got {type(attn_mask).__name__}")
        if is_causal:  # SDPA's rule (the CPU path raised its RuntimeError, the reference combined the two)
            raise ValueError("attention: give attn_mask or is_causal=True, not both")
        if attn_mask.device != q.device:
            raise TypeError(f"attention: attn_mask is on {attn_mask.device}, q on {q.device}")
        target = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        try:
            fits = torch.broadcast_shapes(attn_mask.shape, target) == target  # no extra or larger dimension
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(f"attention: attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to "
                             f"(B, H, L, S) = {target}")
        if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
            raise TypeError(f"attention: attn_mask must be bool or floating point, got {attn_mask.dtype}")
        if attn_mask.dtype != torch.bool and attn_mask.dtype != q.dtype:
            raise TypeError(f"attention: a float attn_mask must have q's dtype ({q.dtype}), got {attn_mask.dtype}")


def _seed(dropout_p: float) -> int:
    """The dropout seed of a call (the kernels add b * H + h): drawn from torch's CPU generator, so that
    ``torch.manual_seed`` reproduces it and drawing it never waits for the GPU."""
    return int(torch.randint(0, 2**30, (1,), device="cpu")) if dropout_p > 0 else 0


@functools.lru_cache(maxsize=None)
def _family(name: str):
    """(eager autograd.Function, custom op) of a Triton kernel family: "current" (the verified default kernels,
    ``triton.attention``) or "next" (the candidate, ``triton.flash``)."""
    if name == "next":
        from ..triton import flash as mod

        fwd, op = mod.forward, mod.flash_next_fwd
    else:
        from ..triton import attention as mod

        fwd, op = mod._forward_launch, mod.flash_attention_fwd
    return _registry.eager_function(f"_FlashAttention_{name}", fwd, mod.setup_context, mod.eager_backward), op


def _run_triton(family: str, q, k, v, attn_mask, dropout_p, is_causal, scale):
    seed = _seed(dropout_p)
    if q.device.type == "cpu" and len({t.untyped_storage().data_ptr() for t in (q, k, v)}) < 3:
        # Triton's interpreter crashes on arguments that share one storage (q, k, v views of a qkv projection):
        # give it separate copies. Native GPU launches use the views in place.
        q, k, v = q.clone(), k.clone(), v.clone()
    mask = attn_mask
    if mask is not None and mask.dim() < 4:
        mask = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
    function, op = _family(family)
    args = (q, k, v, mask, is_causal, scale, dropout_p, seed)
    if _registry.eager(q, k, v, mask):
        return function.apply(*args)[0]
    return op(*args)[0]


_FAMILY: contextvars.ContextVar[str] = contextvars.ContextVar("pvf_attention_kernels", default="next")
FAMILIES = {"flash": "next", "previous": "current"}


@contextlib.contextmanager
def kernel_family(name: str):
    """Run the Triton backend's calls inside the block on kernel family ``name``: "flash" (the default,
    ``triton.flash``) or "previous" (``triton.attention``, the kernels before 2026-12-04). The backward of a call
    always uses its forward's family."""
    if name not in FAMILIES:
        raise ValueError(f"kernel_family: expected one of {tuple(FAMILIES)}, got {name!r}")
    token = _FAMILY.set(FAMILIES[name])
    try:
        yield
    finally:
        _FAMILY.reset(token)


def current_family() -> str:
    """The kernel family ("flash" or "previous") the Triton backend runs here."""
    return "flash" if _FAMILY.get() == "next" else "previous"


def _triton(q, k, v, attn_mask, dropout_p, is_causal, scale):
    return _run_triton(_FAMILY.get(), q, k, v, attn_mask, dropout_p, is_causal, scale)


def _sdpa(q, k, v, attn_mask, dropout_p, is_causal, scale):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                                          scale=scale)


def _reference(q, k, v, attn_mask, dropout_p, is_causal, scale):
    return ref.attention(q, k, v, attn_mask, dropout_p, is_causal, scale)


_IMPLS = {"triton": _triton, "cpu": _sdpa, "reference": _reference}
_IMPLS_NO_TRITON = {"cpu": _sdpa, "reference": _reference}


def _is_exporting() -> bool:
    check = getattr(torch.compiler, "is_exporting", None)
    return bool(check and check())


def _triton_supported(q: Tensor, attn_mask: Optional[Tensor], is_causal: bool) -> bool:
    return (q.shape[-1] <= MAX_HEAD_DIM and (attn_mask is None or not attn_mask.requires_grad)
            and not (is_causal and attn_mask is not None))


def attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor] = None, dropout_p: float = 0.0,
              is_causal: bool = False, scale: Optional[float] = None) -> Tensor:
    """Scaled dot-product attention, ``F.scaled_dot_product_attention`` semantics.

    Args:
        q: (B, H, L, D); k: (B, H, S, D); v: (B, H, S, Dv) with Dv == D on the Triton path.
        attn_mask: bool (True = may attend) or additive float mask broadcastable to (B, H, L, S), e.g. a
            key-padding mask of shape (B, 1, 1, S).
        dropout_p: dropout on the attention probabilities (pass 0 in eval). The Triton path draws its seed from
            torch's CPU generator (without waiting for the GPU), so ``torch.manual_seed`` makes calls
            reproducible.
        is_causal: top-left aligned causal mask (query i attends keys j <= i).
        scale: score scale, default 1/sqrt(D).

    Returns (B, H, L, Dv) in the input dtype. Differentiable in q, k, v (the mask receives no gradient on the
    Triton path; a mask that requires grad is routed to SDPA). attn_mask together with is_causal=True is a
    ValueError, as in SDPA.
    """
    _check(q, k, v, attn_mask, dropout_p, is_causal)
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, numbers.Real)):
        raise TypeError(f"attention: scale must be a number or None, got {type(scale).__name__}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if _is_exporting():
        # Export (ONNX, torch.export) records SDPA, which exporters lower to the MatMul/Softmax pattern
        # that TensorRT fuses into its own attention kernel.
        return _sdpa(q, k, v, attn_mask, dropout_p, is_causal, scale)
    device = q.device
    if device.type == "cpu" and _backend.forced_backend() is None:
        return _sdpa(q, k, v, attn_mask, dropout_p, is_causal, scale)  # the automatic CPU choice, without lookups
    supported = _triton_supported(q, attn_mask, is_causal) and v.shape[-1] == q.shape[-1]
    implemented = _IMPLS if supported else _IMPLS_NO_TRITON
    if device.type == "cuda" and not (supported and _backend.available("triton", device)):
        implemented = {**implemented, "cuda": _sdpa}  # cases the Triton kernels do not cover, or no Triton
    _, impl = _backend.select("attention", device, implemented)
    return impl(q, k, v, attn_mask, dropout_p, is_causal, scale)
