"""Scale-space convolution (SCAN-CNN reconstruction): a training step of ScaleSpaceConv2d against a plain
nn.Conv2d of the same size, the fused layer at inference, the Gaussian scale space (forward + backward in x and
sigma) against per-scale separable convolutions, and scale attention against its plain-PyTorch formulation."""
from __future__ import annotations

import torch

from pyvision_fast import ops
from pyvision_fast.nn import ScaleSpaceConv2d
from pyvision_fast.reference import scale_space as ref

from .harness import Case, Impl, candidate_impl


def _conv_cases(device: str, B: int, C: int, S: int, k: int) -> list[Case]:
    """The training-step and inference cases of one kernel size. (One function per size: closures made in a loop
    would all see the loop's last input.)"""
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
    return [Case("scale_space", f"ScaleSpaceConv2d train step {k}x{k}", params,
                 [Impl("pvf.nn.ScaleSpaceConv2d", step(ours), "ours"),
                  candidate_impl("pvf.nn.ScaleSpaceConv2d (candidate)", "scale_space_weight", step(ours)),
                  Impl("nn.Conv2d (same size)", step(plain), "reference")],
                 flops=3 * flops, bound="compute",
                 goals=[("nn.Conv2d (same size)", 1 / 1.3 if device == "cuda" else 1 / 1.2)],
                 note="Goal: at most 1.3x (GPU) / 1.2x (CPU) the time of the plain Conv2d (ratio >= 0.77 / 0.83). "
                      "On GPUs the weight "
                      "is built by the Triton kernels of pvf::scale_space_weight (one launch forward, two "
                      "backward)."),
            Case("scale_space", f"ScaleSpaceConv2d inference {k}x{k}", params,
                 [Impl("pvf ScaleSpaceConv2d.fuse()", infer(fused), "ours"),
                  Impl("nn.Conv2d (same size)", infer(plain), "reference")],
                 flops=flops, bound="compute")]


def cases(device: str, quick: bool) -> list[Case]:
    B, C, S = (2, 16, 28) if quick else (16, 64, 56)
    return [case for k in (3, 5) for case in _conv_cases(device, B, C, S, k)] + _gaussian_cases(device, quick)


CANDIDATE = "gaussian_scale_space"


def _gaussian_cases(device: str, quick: bool) -> list[Case]:
    from torchvision.transforms.v2 import functional as TF

    B, C, S = (2, 8, 32) if quick else (16, 64, 112)
    sigmas = [1.0, 2.0, 3.0, 4.0] if not quick else [0.5, 1.0, 2.0, 3.0]
    torch.manual_seed(0)
    x = torch.randn(B, C, S, S, device=device, requires_grad=True)
    sigma = torch.tensor(sigmas, device=device, requires_grad=True)
    grad = torch.randn(B, len(sigmas), C, S, S, device=device)

    def train(fn):
        def run():
            x.grad = sigma.grad = None
            fn(x, sigma).backward(grad)
        return run

    def infer(fn):
        def run():
            with torch.no_grad():
                return fn(x, sigma)
        return run

    def torchvision_blur(a, s):
        outs = []
        for v in s.tolist():
            r = ref.radius_for(v, 3.0)
            outs.append(TF.gaussian_blur(a, [2 * r + 1, 2 * r + 1], [v, v]))
        return torch.stack(outs, dim=1)

    taps = sum(2 * (2 * ref.radius_for(v, 3.0) + 1) for v in sigmas)
    params = dict(B=B, C=C, H=S, W=S, sigma=sigmas, truncate=3.0, padding="reflect")
    out = [
        Case("scale_space", "gaussian_scale_space fwd+bwd (x, sigma)", params,
             [Impl("pvf.ops.gaussian_scale_space", train(ops.gaussian_scale_space), "ours"),
              candidate_impl("pvf.ops.gaussian_scale_space (candidate)", CANDIDATE, train(ops.gaussian_scale_space)),
              Impl("per-scale separable conv2d (reference)", train(ref.gaussian_scale_space), "reference")],
             flops=3 * 2.0 * B * C * S * S * taps, bound="compute",
             goals=[("per-scale separable conv2d (reference)", 3.0)],
             note="FLOPs: the separable taps of every scale, forward and twice that backward. On GPUs ours runs "
                  "the tiled CUDA filter bank (csrc/scale_space/filter_bank_tiled.h)."),
        Case("scale_space", "gaussian_scale_space forward", params,
             [Impl("pvf.ops.gaussian_scale_space", infer(ops.gaussian_scale_space), "ours"),
              candidate_impl("pvf.ops.gaussian_scale_space (candidate)", CANDIDATE, infer(ops.gaussian_scale_space)),
              Impl("per-scale separable conv2d (reference)", infer(ref.gaussian_scale_space), "reference"),
              Impl("torchvision gaussian_blur per scale", infer(torchvision_blur))],
             flops=2.0 * B * C * S * S * taps, bound="compute"),
    ]
    G, Sa, HW = (4, 4, 16) if quick else (16, 4, 56)
    y = torch.randn(B, Sa, G, HW, HW, device=device, requires_grad=True)
    gain = torch.full((Sa,), 0.5, device=device, requires_grad=True)
    gy = torch.randn_like(y)

    def attention(fn):
        def run():
            y.grad = gain.grad = None
            fn(y, gain).backward(gy)
        return run

    def plain(a, g):
        return ref.scale_attention(a.reshape(B, Sa, -1), g).view(a.shape)

    out.append(Case("scale_space", "scale_attention fwd+bwd", dict(B=B, S=Sa, G=G, H=HW, W=HW),
                    [Impl("pvf.ops.scale_attention", attention(ops.scale_attention), "ours"),
                     Impl("softmax in PyTorch (reference)", attention(plain), "reference")],
                    bytes=4.0 * 5 * y.numel(), bound="memory",
                    note="Bytes: y read and out written forward; y, grad read and grad_y written backward."))
    return out
