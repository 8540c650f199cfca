"""Deformable convolution (DCNv2, with mask) against torchvision's implementation and a dense convolution of the
same shape (the floor: what the matrix product alone costs)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision

from pyvision_fast import ops

from .harness import Case, Impl


def cases(device: str, quick: bool) -> list[Case]:
    B, C, S = (2, 16, 16) if quick else (8, 64, 56)
    k = 3
    torch.manual_seed(0)
    x = torch.randn(B, C, S, S, device=device, requires_grad=True)
    offset = (torch.randn(B, 2 * k * k, S, S, device=device) * 2).requires_grad_()
    mask = torch.rand(B, k * k, S, S, device=device).requires_grad_()
    weight = (torch.randn(C, C, k, k, device=device) * 0.05).requires_grad_()
    bias = torch.zeros(C, device=device, requires_grad=True)
    grad = torch.randn(B, C, S, S, device=device)
    leaves = (x, offset, mask, weight, bias)

    def train(fn):
        def run():
            for t in leaves:
                t.grad = None
            fn().backward(grad)
        return run

    def infer(fn):
        def run():
            with torch.no_grad():
                return fn()
        return run

    ours = lambda: ops.deform_conv2d(x, offset, weight, bias, 1, 1, 1, mask)  # noqa: E731
    tv = lambda: torchvision.ops.deform_conv2d(x, offset, weight, bias, 1, 1, 1, mask)  # noqa: E731
    dense = lambda: F.conv2d(x, weight, bias, 1, 1)  # noqa: E731
    flops = 2.0 * B * C * C * k * k * S * S
    params = dict(B=B, C_in=C, C_out=C, H=S, W=S, k=k, mask=True)
    name_tv = f"torchvision deform_conv2d ({device})"
    return [
        Case("deform_conv", "deform_conv2d fwd+bwd", params,
             [Impl("pvf.ops.deform_conv2d", train(ours), "ours"), Impl(name_tv, train(tv), "reference"),
              Impl("dense F.conv2d (same shape)", train(dense))],
             flops=3 * flops, bound="compute", goal=(name_tv, 8.0),
             note="FLOPs: the three matrix products of a convolution of this shape (sampling not counted)."),
        Case("deform_conv", "deform_conv2d forward", params,
             [Impl("pvf.ops.deform_conv2d", infer(ours), "ours"), Impl(name_tv, infer(tv), "reference"),
              Impl("dense F.conv2d (same shape)", infer(dense))],
             flops=flops, bound="compute"),
    ]
