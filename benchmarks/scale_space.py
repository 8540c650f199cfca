"""Scale-space convolution (SCAN-CNN reconstruction): a training step of ScaleSpaceConv2d against a plain
nn.Conv2d of the same size, and the fused layer at inference."""
from __future__ import annotations

import torch

from pyvision_fast.nn import ScaleSpaceConv2d

from .harness import Case, Impl


def cases(device: str, quick: bool) -> list[Case]:
    out = []
    B, C, S = (2, 16, 28) if quick else (16, 64, 56)
    for k in (3, 5):
        torch.manual_seed(0)
        ours = ScaleSpaceConv2d(C, C, k, num_scales=4, order=2, padding=k // 2).to(device)
        plain = torch.nn.Conv2d(C, C, k, padding=k // 2).to(device)
        fused = ours.fuse()
        x = torch.randn(B, C, S, S, device=device, requires_grad=True)

        def step(layer):
            def run():
                layer.zero_grad(set_to_none=True)
                layer(x).sum().backward()
            return run

        def infer(layer):
            def run():
                with torch.no_grad():
                    return layer(x)
            return run

        flops = 2.0 * B * C * C * k * k * S * S
        params = dict(B=B, C_in=C, C_out=C, k=k, H=S, W=S, num_scales=4, order=2)
        out.append(Case("scale_space", f"ScaleSpaceConv2d train step {k}x{k}", params,
                        [Impl("pvf.nn.ScaleSpaceConv2d", step(ours), "ours"),
                         Impl("nn.Conv2d (same size)", step(plain), "reference")],
                        flops=3 * flops, bound="compute",
                        note="Goal: at most 1.2x the time of the plain Conv2d (ratio column >= 0.83)."))
        out.append(Case("scale_space", f"ScaleSpaceConv2d inference {k}x{k}", params,
                        [Impl("pvf ScaleSpaceConv2d.fuse()", infer(fused), "ours"),
                         Impl("nn.Conv2d (same size)", infer(plain), "reference")],
                        flops=flops, bound="compute"))
    return out
