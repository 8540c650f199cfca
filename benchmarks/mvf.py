"""Multi-view fusion at MVFNet's shapes (ResNet-50 layer3/layer4 inputs, N=8 clips of T=8 frames)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from pyvision_fast.nn import MVF

from .harness import Case, Impl, candidate_impl


def _official_forward(m: MVF, x: torch.Tensor) -> torch.Tensor:
    """The official module's forward (three depthwise Conv3d, BN, HardSwish, concat), re-expressed."""
    nt, c, h, w = x.shape
    x5 = x.view(nt // m.n_segment, m.n_segment, c, h, w).transpose(1, 2)
    parts = list(x5.split(m.split_sizes, dim=1))
    parts[0] = m.shift_conv(parts[0]) + m.h_conv(parts[0]) + m.w_conv(parts[0])
    parts[0] = F.hardswish(m.bn(parts[0]))
    return m.net(torch.cat(parts, dim=1).transpose(1, 2).contiguous().view(nt, c, h, w))


_CANDIDATE_OPS = ["multi_view_fusion", "multi_view_fusion_batchnorm"]


def _cases_for(device: str, N: int, T: int, C: int, S: int) -> list[Case]:
    """The training-step and inference cases of one shape. (One function per shape: closures made in a loop
    would all see the loop's last tensors.)"""
    torch.manual_seed(0)
    m = MVF(torch.nn.Identity(), n_segment=T, in_channels=C, alpha=0.125).to(device).train()
    x = torch.randn(N * T, C, S, S, device=device, requires_grad=True)
    grad = torch.randn_like(x)

    # x stands for the activation MVF receives inside a network: its gradient is handed on, not added to a
    # leaf's .grad, so each step starts with x.grad = None (as zero_grad(set_to_none=True) does).
    def ours():
        m.train()
        x.grad = None
        m(x).backward(grad)

    def official():
        m.train()
        x.grad = None
        _official_forward(m, x).backward(grad)

    def ours_eval():
        with torch.no_grad():
            return m.eval()(x)

    def official_eval():
        with torch.no_grad():
            return _official_forward(m.eval(), x)

    size = 4.0 * x.numel()
    params = dict(N=N, T=T, C=C, H=S, W=S, alpha=0.125)
    return [Case("mvf", f"MVF fwd+bwd C={C} {S}x{S}", params,
                 [Impl("pvf.nn.MVF", ours, "ours"), Impl("official (3x depthwise Conv3d)", official, "reference"),
                  candidate_impl("pvf.nn.MVF (candidate)", _CANDIDATE_OPS, ours)],
                 bytes=4 * size, bound="memory",
                 goals=[("official (3x depthwise Conv3d)", 4.0 if device == "cuda" else 10.0)],
                 note="Bytes: input read + output write forward, gradient read + write backward. x.grad is reset "
                      "to None before each step (the input is an activation inside a network). Candidate: the "
                      "Triton kernels (one launch per direction)."),
            Case("mvf", f"MVF inference C={C} {S}x{S}", params,
                 [Impl("pvf.nn.MVF (eval, one pass)", ours_eval, "ours"),
                  Impl("official (3x depthwise Conv3d)", official_eval, "reference"),
                  Impl("copy of the input (x.clone)", lambda: x.detach().clone()),
                  candidate_impl("pvf.nn.MVF (eval, one pass) (candidate)", _CANDIDATE_OPS, ours_eval)],
                 bytes=2 * size, bound="memory",
                 goals=[("copy of the input (x.clone)", 0.6)] if device == "cuda" else [],
                 note="Goal: at least 60% of the copy's bandwidth (the output is mostly the pass-through copy).")]


def cases(device: str, quick: bool, shapes: Optional[list[tuple[int, int, int, int]]] = None) -> list[Case]:
    """shapes: (N, T, C, H = W) per shape; default MVFNet's ResNet-50 layer3 / layer4 inputs."""
    if shapes is None:
        shapes = [(2, 4, 256, 14)] if quick else [(8, 8, 1024, 14), (8, 8, 2048, 7)]
    return [case for shape in shapes for case in _cases_for(device, *shape)]
