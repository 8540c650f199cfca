"""Per-shape choice, for the attention layers, between pyvision_fast's Triton kernels and torch's
``F.scaled_dot_product_attention``, so that the layer a user imports is never the slower of the two.

The first call of each key (device, dtype, q/k/v shapes, mask kind and shape, causal, dropout, whether gradients
are needed, the Triton kernel family) times both on the inputs at hand (forward, or forward and
backward when gradients are needed) with CUDA events and caches the faster; only that first call waits for the
GPU, later calls of the key are a dictionary lookup. The timing runs on detached copies, under its own RNG state,
so it changes neither autograd graphs nor the random stream of the real call.

``PVF_ATTENTION_DISPATCH=triton|sdpa|auto`` (default auto) forces either side. A backend forced with
``PVF_BACKEND`` / ``use_backend`` wins over both (the layers then call ``ops.attention``). CPU tensors use
``ops.attention`` (torch's fused CPU attention). Under torch.compile a key without a cached choice takes the
static prior (our kernels for sequences of at most 16 tokens, SDPA otherwise) instead of timing.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _backend, ops
from ..ops.attention import current_family

MODES = ("auto", "triton", "sdpa")


def mode() -> str:
    """The dispatch mode from ``PVF_ATTENTION_DISPATCH``: "auto" (measure), "triton" or "sdpa"."""
    value = os.environ.get("PVF_ATTENTION_DISPATCH", "").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"PVF_ATTENTION_DISPATCH={value!r}: expected one of {MODES}")
    return value


def _ours(q, k, v, attn_mask, dropout_p, is_causal, scale):
    with _backend.use_backend("triton"):
        return ops.attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale)


def _sdpa(q, k, v, attn_mask, dropout_p, is_causal, scale):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                                          scale=scale)


def _cuda_ms(fn: Callable[[], None], repeats: int) -> float:
    """Mean milliseconds of fn over ``repeats`` back-to-back calls, timed with CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / repeats


class AttentionDispatcher:
    """Chooses and runs "triton" (``ops.attention`` on the Triton backend) or "sdpa" per key.

    timer: ``timer(name, fn) -> ms`` replaces the CUDA-event timing (and allows timing on any device), for
    tests; impls: replaces the two implementations, {"triton": f, "sdpa": f} with SDPA's signature."""

    def __init__(self, timer: Optional[Callable[[str, Callable[[], None]], float]] = None,
                 impls: Optional[dict] = None, repeats: int = 5, rounds: int = 2):
        self.timer = timer
        self.impls = dict(impls or {"triton": _ours, "sdpa": _sdpa})
        self.repeats = repeats
        self.rounds = rounds
        self.cache: dict[tuple, str] = {}
        self.timings: dict[tuple, dict[str, float]] = {}

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor] = None, dropout_p: float = 0.0,
                 is_causal: bool = False, scale: Optional[float] = None) -> Tensor:
        if _backend.forced_backend() is not None or (q.device.type != "cuda" and self.timer is None):
            return ops.attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale)
        choice = self.choose(q, k, v, attn_mask, dropout_p, is_causal, scale)
        return self.impls[choice](q, k, v, attn_mask, dropout_p, is_causal, scale)

    def key(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor], dropout_p: float,
            is_causal: bool) -> tuple:
        mask = None if attn_mask is None else (attn_mask.dtype, tuple(attn_mask.shape))
        grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
        return (q.device, q.dtype, tuple(q.shape), tuple(k.shape), tuple(v.shape), mask, bool(is_causal),
                dropout_p > 0, grad, current_family())

    def choose(self, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None) -> str:
        """"triton" or "sdpa" for these inputs: forced by the environment, cached, or measured now."""
        forced = mode()
        if forced != "auto":
            return forced
        key = self.key(q, k, v, attn_mask, dropout_p, is_causal)
        choice = self.cache.get(key)
        if choice is None:
            if torch.compiler.is_compiling():
                return prior(q, k)
            choice = self._measure(key, q, k, v, attn_mask, dropout_p, is_causal, scale)
            self.cache[key] = choice
        return choice

    def _measure(self, key, q, k, v, attn_mask, dropout_p, is_causal, scale) -> str:
        grad = key[-2]
        qd, kd, vd = (t.detach().requires_grad_(grad) for t in (q, k, v))
        cuda = q.device.type == "cuda"
        grad_out = None

        def call(name):
            def run():
                nonlocal grad_out
                if grad:
                    out = self.impls[name](qd, kd, vd, attn_mask, dropout_p, is_causal, scale)
                    if grad_out is None:
                        grad_out = torch.randn_like(out)
                    out.backward(grad_out)
                else:
                    with torch.no_grad():
                        self.impls[name](qd, kd, vd, attn_mask, dropout_p, is_causal, scale)
            return run

        times = {name: float("inf") for name in self.impls}
        debug_mode = torch.cuda.get_sync_debug_mode() if cuda else 0
        with torch.random.fork_rng(devices=[q.device] if cuda else []), torch.enable_grad():
            try:
                if cuda:
                    torch.cuda.set_sync_debug_mode(0)  # this first call of a key waits for the GPU by design
                for name in self.impls:  # the first calls compile and autotune the kernels
                    call(name)()
                for _ in range(self.rounds):
                    for name in self.impls:
                        if self.timer is not None:
                            ms = self.timer(name, call(name))
                        else:
                            torch.cuda.synchronize(q.device)
                            ms = _cuda_ms(call(name), self.repeats)
                        times[name] = min(times[name], ms)
            finally:
                if cuda:
                    torch.cuda.set_sync_debug_mode(debug_mode)
        self.timings[key] = times
        return min(times, key=times.get)


def prior(q: Tensor, k: Tensor) -> str:
    """The static choice where nothing was measured: our one-tile kernels for short sequences, else SDPA."""
    return "triton" if q.shape[-2] <= 16 and k.shape[-2] <= 16 else "sdpa"


DISPATCHER = AttentionDispatcher()


def attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor] = None, dropout_p: float = 0.0,
              is_causal: bool = False, scale: Optional[float] = None) -> Tensor:
    """``ops.attention``'s semantics, run by whichever of our kernels and SDPA is faster for this key (see the
    module docstring). Under torch.export it records SDPA, as ``ops.attention`` does."""
    if _is_exporting():
        return ops.attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale)
    return DISPATCHER(q, k, v, attn_mask, dropout_p, is_causal, scale)


def _is_exporting() -> bool:
    check = getattr(torch.compiler, "is_exporting", None)
    return bool(check and check())
