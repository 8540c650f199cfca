"""Deformable convolution (DCNv2, with mask) against torchvision's implementation and a dense convolution of the
same shape (the floor: what the matrix product alone costs). On GPUs ours is the Triton implicit GEMM
(``pyvision_fast.triton.deform_conv``); a registered candidate of the op gets its own row."""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision

import pyvision_fast
from pyvision_fast import ops

from .harness import Case, Impl, candidate_impl

OP = "deform_conv2d"


def _cases(device: str, quick: bool, dtype: torch.dtype) -> list[Case]:
    B, C, S = (2, 16, 16) if quick else (8, 64, 56)
    k = 3
    torch.manual_seed(0)
    make = dict(device=device, dtype=dtype)
    x = torch.randn(B, C, S, S, **make).requires_grad_()
    offset = (torch.randn(B, 2 * k * k, S, S, **make) * 2).requires_grad_()
    mask = torch.rand(B, k * k, S, S, **make).requires_grad_()
    weight = (torch.randn(C, C, k, k, **make) * 0.05).requires_grad_()
    bias = torch.zeros(C, **make).requires_grad_()
    grad = torch.randn(B, C, S, S, **make)
    leaves = (x, offset, mask, weight, bias)
    # torchvision's deform_conv2d has no bfloat16 kernels: in a bfloat16 case it runs in float16
    tv_dtype = torch.float16 if dtype == torch.bfloat16 else dtype
    tv_leaves = [t.detach().to(tv_dtype).requires_grad_() for t in leaves]
    tv_grad = grad.to(tv_dtype)

    def train(fn, tensors=leaves, g=grad):
        def run():
            for t in tensors:
                t.grad = None
            fn().backward(g)
        return run

    def infer(fn):
        def run():
            with torch.no_grad():
                return fn()
        return run

    ours = lambda: ops.deform_conv2d(x, offset, weight, bias, 1, 1, 1, mask)  # noqa: E731
    tx, toff, tmask, tw, tb = tv_leaves
    tv = lambda: torchvision.ops.deform_conv2d(tx, toff, tw, tb, 1, 1, 1, tmask)  # noqa: E731
    dense = lambda: F.conv2d(x, weight, bias, 1, 1)  # noqa: E731
    flops = 2.0 * B * C * C * k * k * S * S
    half = dtype != torch.float32
    params = dict(B=B, C_in=C, C_out=C, H=S, W=S, k=k, mask=True, dtype=str(dtype).replace("torch.", ""))
    name_tv = f"torchvision deform_conv2d ({device})" + (", float16" if dtype == torch.bfloat16 else "")
    suffix = f" ({params['dtype']})" if half else ""
    cpu = device == "cpu"
    return [
        Case("deform_conv", "deform_conv2d fwd+bwd" + suffix, params,
             [Impl("pvf.ops.deform_conv2d", train(ours), "ours"),
              candidate_impl("pvf.ops.deform_conv2d (candidate)", OP, train(ours)),
              Impl(name_tv, train(tv, tensors=tv_leaves, g=tv_grad), "reference"),
              Impl("dense F.conv2d (same shape)", train(dense))],
             flops=3 * flops, bound="compute", goals=[] if half else [(name_tv, 8.0 if cpu else 1.5)],
             note="FLOPs: the three matrix products of a convolution of this shape (sampling not counted)."),
        Case("deform_conv", "deform_conv2d forward" + suffix, params,
             [Impl("pvf.ops.deform_conv2d", infer(ours), "ours"),
              candidate_impl("pvf.ops.deform_conv2d (candidate)", OP, infer(ours)),
              Impl(name_tv, infer(tv), "reference"),
              Impl("dense F.conv2d (same shape)", infer(dense))],
             flops=flops, bound="compute", goals=[] if half or cpu else [(name_tv, 1.5)]),
    ]


def cases(device: str, quick: bool) -> list[Case]:
    out = _cases(device, quick, torch.float32)
    if device == "cuda":  # tensor cores: the half-precision training case
        out += _cases(device, quick, torch.bfloat16)
    return out
