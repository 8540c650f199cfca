"""Attention cases: ViT-S/B/L/H at 224 and 384, PAVER's 393-token ERP frames and its temporal attention
over 5 frames, forward and forward+backward, and the per-call overhead at a tiny shape; ours (the Triton flash
kernels), the previous kernel family (``kernel_family("previous")``), what the nn layers' dispatch runs for the
same q, k, v, SDPA (and its flash backend on GPU) and the naive math."""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn.functional as F

from pyvision_fast import ops
from pyvision_fast.ops.attention import kernel_family
from pyvision_fast.nn import attention_dispatch
from pyvision_fast.reference import attention as ref

from .harness import Case, Impl

# (name, heads, head dim, tokens)
_VITS = [("ViT-S/16", 6, 64), ("ViT-B/16", 12, 64), ("ViT-L/16", 16, 64), ("ViT-H/14", 16, 80)]
_TOKENS = {224: {"ViT-H/14": 257}, 384: {"ViT-H/14": 730}}


def _tokens(name: str, res: int) -> int:
    return _TOKENS[res].get(name, (res // 16) ** 2 + 1)


def _workloads(device: str, quick: bool):
    gpu = device == "cuda"
    if quick:
        return [("ViT-S/16 224", 2, 6, 197, 64), ("PAVER temporal (5 frames)", 64, 12, 5, 64)]
    out = []
    for name, heads, dim in _VITS:
        for res in (224, 384):
            if not gpu and res == 384 and name in ("ViT-L/16", "ViT-H/14"):
                continue
            big = name in ("ViT-L/16", "ViT-H/14") or res == 384
            batch = (32 if big else 128) if gpu else (2 if big else 8)
            out.append((f"{name} {res}", batch, heads, _tokens(name, res), dim))
    out.append(("PAVER ERP frame 224x448 (393 tokens)", 64 if gpu else 4, 12, 393, 64))
    out.append(("PAVER temporal (5 frames)", (64 if gpu else 4) * 393, 12, 5, 64))
    return out


def _flash_context():
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        return None
    return lambda: sdpa_kernel(SDPBackend.FLASH_ATTENTION)


def _cases_for(device: str, dtype: torch.dtype, g: torch.Generator, name: str, B: int, H: int, L: int,
               D: int) -> list[Case]:
    """The forward and forward+backward cases of one workload. (One function per workload: closures made in a
    loop would all see the loop's last q, k, v.)"""
    q, k, v = [torch.randn(B, H, L, D, generator=g).to(device, dtype).requires_grad_() for _ in range(3)]
    flops = 4.0 * B * H * L * L * D
    naive_ok = B * H * L * L * 4 < 2**31  # the score matrix of the naive math must fit comfortably

    def fwd(fn):
        def run():
            with torch.no_grad():
                return fn(q, k, v)
        return run

    def fwd_bwd(fn):
        def run():
            out_ = fn(q, k, v)
            out_.backward(torch.ones_like(out_))
        return run

    impls = {
        "pvf.attention": lambda a, b, c: ops.attention(a, b, c),
        "pvf.attention (previous kernels)": _previous,
        "pvf.nn.FusedAttention dispatch": lambda a, b, c: attention_dispatch.attention(a, b, c),
        "F.scaled_dot_product_attention": lambda a, b, c: F.scaled_dot_product_attention(a, b, c),
    }
    flash = _flash_context() if device == "cuda" else None
    # PyTorch's FlashAttention backward (torch 2.11) indexes in 32 bits: past this bound its backward writes out
    # of bounds (seen on an H200 at PAVER's temporal shape, B*H = 301824: an illegal memory access that ends the
    # process's CUDA context), so the flash backend is left out of such cases.
    flash_in_range = B * H * (-(-L // 128) * 128) * max(D, 32) <= 2**31
    if flash is not None and flash_in_range:
        def sdpa_flash(a, b, c):
            with flash():
                return F.scaled_dot_product_attention(a, b, c)
        impls["SDPA flash backend"] = sdpa_flash
    if naive_ok:
        impls["naive math (reference)"] = lambda a, b, c: ref.attention(a, b, c)
    kinds = {"pvf.attention": "ours", "naive math (reference)": "reference"}
    params = dict(B=B, H=H, L=L, S=L, D=D, dtype=str(dtype).replace("torch.", ""))
    gpu = device == "cuda"
    goals_fwd, goals_bwd = [], []
    if name.startswith("ViT") and "SDPA flash backend" in impls:
        goals_fwd, goals_bwd = [("SDPA flash backend", 1.0)], [("SDPA flash backend", 0.9)]
    if name.startswith("PAVER temporal") and gpu:
        goals_fwd = [("F.scaled_dot_product_attention", 2.0)] + ([("naive math (reference)", 1.5)] if naive_ok else [])
    memory = "peak MB: the allocator's peak above the inputs during one call." if gpu else ""
    return [Case("attention", f"{name} fwd", params,
                 [Impl(n, fwd(f), kinds.get(n, "peer")) for n, f in impls.items()],
                 flops=flops, bound="compute", goals=goals_fwd, measure_memory=gpu, note=memory),
            Case("attention", f"{name} fwd+bwd", params,
                 [Impl(n, fwd_bwd(f), kinds.get(n, "peer")) for n, f in impls.items()],
                 flops=3.5 * flops, bound="compute", goals=goals_bwd, measure_memory=gpu,
                 note="FLOPs: 4*B*H*L*S*D forward, 2.5x that backward. " + memory)]


def _previous(q, k, v):
    with kernel_family("previous"):
        return ops.attention(q, k, v)


def _overhead_case(device: str, dtype: torch.dtype) -> Case:
    """One head of 16 tokens: a few microseconds of GPU work, so the time is the host's per-call overhead (argument
    checks, dispatch, launch) against SDPA's."""
    g = torch.Generator().manual_seed(1)
    q, k, v = [torch.randn(1, 1, 16, 64, generator=g).to(device, dtype) for _ in range(3)]
    impls = {
        "pvf.attention": lambda: ops.attention(q, k, v),
        "pvf.attention (previous kernels)": lambda: _previous(q, k, v),
        "pvf.nn.FusedAttention dispatch": lambda: attention_dispatch.attention(q, k, v),
        "F.scaled_dot_product_attention": lambda: F.scaled_dot_product_attention(q, k, v),
    }

    def no_grad(fn):
        def run():
            with torch.no_grad():
                return fn()
        return run

    return Case("attention", "per-call overhead (1 head, 16 tokens) fwd",
                dict(B=1, H=1, L=16, S=16, D=64, dtype=str(dtype).replace("torch.", "")),
                [Impl(n, no_grad(f), "ours" if n == "pvf.attention" else "peer") for n, f in impls.items()],
                flops=4.0 * 16 * 16 * 64, bound="compute",
                note="Host-bound: the GPU work is about a microsecond; the time is each call's host overhead.")


def cases(device: str, quick: bool, workloads: Optional[list[tuple[str, int, int, int, int]]] = None) -> list[Case]:
    """workloads: (name, B, H, L, D) per workload; default the ViT and PAVER shapes above."""
    g = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    default = workloads is None
    if default:
        workloads = _workloads(device, quick)
    out = [case for workload in workloads for case in _cases_for(device, dtype, g, *workload)]
    if default:
        out.append(_overhead_case(device, dtype))
    return out
