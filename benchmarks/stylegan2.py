"""StyleGAN2 resampling and activation cases: the shapes of a 256 x 256 StyleGAN2 (config F channel counts
halved for the CPU) -- the synthesis network's 2x upsampling (``upsample2d``, 4 x 4 filter), the blur after
the modulated convolution's stride-2 transposed convolution, the ToRGB image upsampling (3 channels: fewer
planes than threads), the discriminator's 2x downsampling, a separable 12-tap filter, and the fused bias +
lrelu + clamp of every synthesis layer (forward, and forward + backward).

Peers: the plain-PyTorch compositions the ops replace (``pyvision_fast.reference.stylegan2``: zero insertion
by reshape + F.pad, F.pad / slicing for the padding, a depthwise F.conv2d with the flipped filter, strided
slicing; ``x + b``, F.leaky_relu, ``* gain``, ``clamp``) -- what NVlabs' code runs when its plugins fail to
compile. On GPUs the ops run those compositions until their CUDA kernels (the candidates) are verified: the
candidate rows time the kernels. ``quick`` divides the batch and channels."""
from __future__ import annotations

import math

import torch

from pyvision_fast import ops
from pyvision_fast.nn.stylegan2 import setup_filter
from pyvision_fast.ops.stylegan2 import parse_padding, parse_scaling
from pyvision_fast.reference import stylegan2 as ref

from .harness import Case, Impl, candidate_impl


def _upfirdn_case(device, name, shape, f, up=1, down=1, padding=0, gain=1.0, goal=None) -> Case:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g).to(device)
    f = f.to(device)
    upt, downt, pad = parse_scaling(up), parse_scaling(down, "down"), parse_padding(padding)
    y = ops.upfirdn2d(x, f, up, down, padding, gain=gain)
    taps = f.numel() if f.dim() == 2 else 2 * f.numel()  # multiply-adds per output without polyphase
    # useful work: only the taps that meet input samples (1 / (up_x * up_y) of them)
    flops = 2.0 * y.numel() * taps / (upt[0] * upt[1])
    impls = [Impl("pvf.upfirdn2d", lambda: ops.upfirdn2d(x, f, up, down, padding, gain=gain), "ours"),
             candidate_impl("pvf.upfirdn2d (candidate)", ["upfirdn2d"],
                            lambda: ops.upfirdn2d(x, f, up, down, padding, gain=gain))
             if device == "cuda" else None,
             Impl("F.pad + depthwise F.conv2d (plain PyTorch)",
                  lambda: ref.upfirdn2d(x, f, upt, downt, pad, False, gain), "reference")]
    params = dict(x=tuple(shape), f=tuple(f.shape), up=upt, down=downt, padding=pad)
    goals = [("F.pad + depthwise F.conv2d (plain PyTorch)", goal)] if goal and device == "cpu" else []
    return Case("stylegan2", name, params, impls, flops=flops, bytes=4.0 * (x.numel() + y.numel()),
                bound="memory", goals=goals,
                note="FLOPs: 2 per tap that meets an input sample (the zeros of the upsampling excluded).")


def _bias_act_cases(device, B, C, side) -> list[Case]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, C, side, side, generator=g).to(device)
    b = torch.randn(C, generator=g).to(device)
    gain = math.sqrt(2)

    def ours():
        return ops.bias_act(x, b, act="lrelu", clamp=256)

    def plain():
        return ref.bias_act(x, b, 1, "lrelu", 0.2, gain, 256)

    xg, bg = x.clone().requires_grad_(), b.clone().requires_grad_()
    gy = torch.randn_like(x)

    def step(fn):
        def run():
            y = fn(xg, bg)
            return torch.autograd.grad(y, (xg, bg), gy)
        return run

    params = dict(x=(B, C, side, side), act="lrelu", clamp=256)
    fwd = Case("stylegan2", "bias_act lrelu+clamp forward", params,
               [Impl("pvf.bias_act", ours, "ours"),
                candidate_impl("pvf.bias_act (candidate)", ["bias_act"], ours) if device == "cuda" else None,
                Impl("x + b, leaky_relu, * gain, clamp (plain PyTorch)", plain, "reference")],
               bytes=8.0 * x.numel(), bound="memory",
               goals=[("x + b, leaky_relu, * gain, clamp (plain PyTorch)", 1.5)] if device == "cpu" else [])
    train = Case("stylegan2", "bias_act lrelu+clamp forward+backward", params,
                 [Impl("pvf.bias_act", step(lambda t, c: ops.bias_act(t, c, act="lrelu", clamp=256)), "ours"),
                  Impl("x + b, leaky_relu, * gain, clamp (plain PyTorch)",
                       step(lambda t, c: ref.bias_act(t, c, 1, "lrelu", 0.2, gain, 256)), "reference")],
                 bytes=4.0 * 5 * x.numel(), bound="memory")
    return [fwd, train]


def cases(device: str, quick: bool) -> list[Case]:
    B, C = (1, 32) if quick else (4, 128)
    f4 = setup_filter([1, 3, 3, 1])  # 4 x 4, as NVlabs' generator and discriminator
    f12 = torch.kaiser_window(12, periodic=False, beta=8.0)
    f12 = f12 / f12.sum()
    return [
        _upfirdn_case(device, "upsample2d 64->128 (synthesis)", (B, C, 64, 64), f4, up=2,
                      padding=(2, 1, 2, 1), gain=4, goal=2.0),
        _upfirdn_case(device, "blur after transposed conv 129->128", (B, C, 129, 129), f4, padding=1,
                      goal=1.5),
        _upfirdn_case(device, "ToRGB upsample2d 128->256 (3 channels)", (B, 3, 128, 128), f4, up=2,
                      padding=(2, 1, 2, 1), gain=4, goal=2.0),
        _upfirdn_case(device, "downsample2d 128->64 (discriminator)", (B, C, 128, 128), f4, down=2, padding=1,
                      goal=2.0),
        _upfirdn_case(device, "separable 12-tap upsample 64->128", (B, C // 2, 64, 64), f12, up=2,
                      padding=(6, 5, 6, 5), gain=4, goal=2.0),
    ] + _bias_act_cases(device, B, C * 2 if not quick else C, 32 if quick else 64)
