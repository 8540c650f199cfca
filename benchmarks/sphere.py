"""Spherical convolution on ERP images: PAVER's patch embedding (SpherePatchEmbed) and the tangent-plane 3x3
convolution (SphereConv2d) against torchvision's deformable convolution with the same fixed offsets, and a dense
convolution of the same shape (what the matrix product alone costs). On GPUs ours is the Triton implicit GEMM
(``pyvision_fast.triton.sphere``); a registered candidate of the op gets its own row."""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision

import pyvision_fast
from pyvision_fast.geometry import equirect
from pyvision_fast.nn import SphereConv2d, SpherePatchEmbed

from .harness import Case, Impl, candidate_impl

OP = "sphere_conv2d"


def _fixed_offsets(positions: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    """torchvision offsets (2 K, Ho, Wo) that sample the absolute positions (Ho, Wo, kh, kw, 2)."""
    Ho, Wo, kh, kw, _ = positions.shape
    ho = torch.arange(Ho, dtype=torch.float64)[:, None, None, None] * stride - padding
    wo = torch.arange(Wo, dtype=torch.float64)[None, :, None, None] * stride - padding
    ti, tj = torch.arange(kh, dtype=torch.float64)[:, None], torch.arange(kw, dtype=torch.float64)[None, :]
    off = torch.stack([positions[..., 0] - (ho + ti), positions[..., 1] - (wo + tj)], dim=-1)
    return off.permute(2, 3, 4, 0, 1).reshape(2 * kh * kw, Ho, Wo)


def cases(device: str, quick: bool) -> list[Case]:
    out = []
    torch.manual_seed(0)
    # PAVER's patch embedding: B=8 ERP frames 224 x 448, 16 x 16 patches, 3 -> 768
    B, H, R, E = (2, 64, 8, 64) if quick else (8, 224, 16, 768)
    embed = SpherePatchEmbed((H, 2 * H), R, 3, E, layout="paver").to(device).eval()
    tv = torchvision.ops.DeformConv2d(3, E, R, stride=R).to(device).eval()
    tv.load_state_dict(embed.proj.state_dict())
    x = torch.randn(B, 3, H, 2 * H, device=device)
    patch_offsets = equirect.paver_offsets(H, R).float().to(device).repeat(B, 1, 1, 1)

    def infer(fn):
        def run():
            with torch.no_grad():
                return fn()
        return run

    params = dict(B=B, H=H, W=2 * H, patch=R, C_in=3, C_out=E, layout="paver")
    name_tv = f"torchvision DeformConv2d + repeated offsets ({device})"
    out.append(Case("sphere", "SpherePatchEmbed forward", params,
                    [Impl("pvf.nn.SpherePatchEmbed", infer(lambda: embed(x)), "ours"),
                     candidate_impl("pvf.nn.SpherePatchEmbed (candidate)", OP, infer(lambda: embed(x))),
                     Impl(name_tv, infer(lambda: tv(x, patch_offsets)), "reference"),
                     Impl("dense F.conv2d (same shape)", infer(lambda: F.conv2d(x, embed.proj.weight,
                                                                                embed.proj.bias, R)))],
                    flops=2.0 * B * (H // R) * (2 * H // R) * E * 3 * R * R, bound="compute",
                    goals=[(name_tv, 3.0), ("dense F.conv2d (same shape)", 0.67)],
                    note="Goals: >= 3x faster than torchvision, <= 1.5x the dense convolution (ratio >= 0.67)."))
    # SphereConv2d 3x3 training step: B=8, 64 -> 64 channels, 112 x 224
    B, C, H = (2, 16, 16) if quick else (8, 64, 112)
    conv = SphereConv2d(C, C, 3).to(device)
    xs = torch.randn(B, C, H, 2 * H, device=device, requires_grad=True)
    grad = torch.randn(B, C, H, 2 * H, device=device)
    conv_offsets = _fixed_offsets(equirect.tangent_sampling(H, 2 * H, 3, 1), 1, 1).float().to(device)
    conv_offsets = conv_offsets.repeat(B, 1, 1, 1)

    def train(fn):
        def run():
            xs.grad = conv.weight.grad = conv.bias.grad = None
            fn().backward(grad)
        return run

    params = dict(B=B, C_in=C, C_out=C, H=H, W=2 * H, k=3)
    name_tv = f"torchvision deform_conv2d, fixed offsets ({device})"
    out.append(Case("sphere", "SphereConv2d 3x3 fwd+bwd", params,
                    [Impl("pvf.nn.SphereConv2d", train(lambda: conv(xs)), "ours"),
                     candidate_impl("pvf.nn.SphereConv2d (candidate)", OP, train(lambda: conv(xs))),
                     Impl(name_tv, train(lambda: torchvision.ops.deform_conv2d(xs, conv_offsets, conv.weight, conv.bias,
                                                                               padding=1)), "reference"),
                     Impl("dense F.conv2d (same shape)", train(lambda: F.conv2d(xs, conv.weight, conv.bias,
                                                                                padding=1)))],
                    flops=3 * 2.0 * B * C * C * 9 * H * 2 * H, bound="compute",
                    goals=[(name_tv, 4.0 if device == "cuda" else 15.0)]))
    return out
