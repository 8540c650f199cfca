"""MVFNet's multi-view fusion module (Wu et al., AAAI 2021) on ``ops.multi_view_fusion``.

``MVF`` has the official module's constructor, forward semantics and state_dict keys (``net.*``,
``shift_conv.weight``, ``h_conv.weight``, ``w_conv.weight``, ``bn.*``; Conv3d-shaped kernels), so official
checkpoints load unchanged. Input and output are (N*T, C, H, W) frames, as in TSN-style 2-D video networks.

Cost: the split, the three views, BatchNorm, HardSwish and the concatenation are one pass that reads the input
once and writes the wrapped conv's input once (``ops.multi_view_fusion`` with the folded BatchNorm in eval mode,
``ops.multi_view_fusion_batchnorm`` with batch statistics in training mode). The backward reads the incoming
gradient once and writes the input's gradient once; it recomputes the fused channels' views instead of keeping
them, so the module saves nothing for backward beyond its input and the per-channel statistics. In eval mode
without autograd the kernels' views and the folded BatchNorm are made once and reused until the module's tensors
change (see ``MVF._cached``).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .. import ops
from ._checks import check_input


def _update_running_stats(bn: nn.BatchNorm3d, mean: Tensor, var: Tensor, count: int) -> None:
    """nn.BatchNorm3d's running-statistics update from a batch's mean and biased variance over count values,
    without synchronising with the device (the cumulative average's weight 1 / num_batches_tracked stays a
    tensor)."""
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        if count == 0:  # as torch: an empty batch leaves the statistics alone
            return
        if bn.momentum is None:
            momentum = (1.0 / bn.num_batches_tracked.double()).to(bn.running_mean.dtype)
        else:
            momentum = bn.momentum
        bn.running_mean.lerp_(mean, momentum)
        bn.running_var.lerp_(var * (count / max(count - 1, 1)), momentum)


class MVF(nn.Module):
    """Wraps ``net`` (a ResNet Bottleneck's conv1); fuses T/H/W views on the first ``int(in_channels*alpha)``
    channels. ``mode``: "THW" (default), "TH" or "T" (a learnable temporal shift); ``share=True`` applies the
    temporal kernel along H and W too; ``use_hs`` adds BatchNorm + HardSwish on the fused channels (without it
    the views are summed only, as in the official code). ``alpha=0`` is the identity wrapper."""

    def __init__(self, net: nn.Module, n_segment: int, in_channels: int, alpha: float = 0.125, use_hs: bool = True,
                 share: bool = False, mode: str = "THW"):
        super().__init__()
        if mode not in ("THW", "TH", "T"):
            raise ValueError(f"MVF: mode must be 'THW', 'TH' or 'T', got {mode!r}")
        if n_segment < 1:
            raise ValueError(f"MVF: n_segment must be >= 1, got {n_segment}")
        self.net = net
        self.n_segment = n_segment
        self.in_channels = in_channels
        self.num_shift_channel = int(in_channels * alpha)
        self.share, self.mode, self.use_hs = share, mode, use_hs
        c = self.num_shift_channel
        if c == 0:
            return
        self.split_sizes = [c, in_channels - c]
        self.shift_conv = nn.Conv3d(c, c, (3, 1, 1), padding=(1, 0, 0), groups=c, bias=False)
        self.bn = nn.BatchNorm3d(c)
        if not share and mode in ("THW", "TH"):
            self.h_conv = nn.Conv3d(c, c, (1, 3, 1), padding=(0, 1, 0), groups=c, bias=False)
        if not share and mode == "THW":
            self.w_conv = nn.Conv3d(c, c, (1, 1, 3), padding=(0, 0, 1), groups=c, bias=False)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.kernel_size[2] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def kernels(self) -> tuple[Tensor, Tensor, Tensor]:
        """The (C_fused, 3) taps along T, H and W for the current mode (zeros for views the mode lacks)."""
        c = self.num_shift_channel
        wt = self.shift_conv.weight.reshape(c, 3)
        if self.mode == "THW" and not self.share:  # the common case: no zeros allocated
            return wt, self.h_conv.weight.reshape(c, 3), self.w_conv.weight.reshape(c, 3)
        zeros = torch.zeros_like(wt)
        if self.share:
            wh = wt if self.mode in ("THW", "TH") else zeros
            ww = wt if self.mode == "THW" else zeros
        else:
            wh = self.h_conv.weight.reshape(c, 3) if self.mode in ("THW", "TH") else zeros
            ww = self.w_conv.weight.reshape(c, 3) if self.mode == "THW" else zeros
        return wt, wh, ww

    def _bn_affine(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """BatchNorm's weight and bias (ones and zeros for a non-affine BatchNorm)."""
        if self.bn.affine:
            return self.bn.weight, self.bn.bias
        c = self.num_shift_channel
        return torch.ones(c, dtype=x.dtype, device=x.device), torch.zeros(c, dtype=x.dtype, device=x.device)

    def _cached(self, slot: str, x: Tensor, tensors: tuple, make):
        """make()'s result, reused while ``tensors`` are the same objects with the same storage and version
        counter (in-place updates, optimizer steps, load_state_dict and .to() all show there; writes through
        ``.data`` do not: after those, run the module once in training mode or bump a version, e.g.
        ``bn.running_var.add_(0)``) and x's dtype, device and the inference mode are those it was made for
        (tensors made under inference_mode must not reach autograd outside it)."""
        state = (self.bn.eps, x.dtype, x.device, torch.is_inference_mode_enabled(),
                 *(None if t is None else (t._version, t.data_ptr()) for t in tensors))
        cached = self.__dict__.get(slot)
        if cached is not None and cached[0] == state and all(a is b for a, b in zip(cached[1], tensors)):
            return cached[2]
        value = make()
        self.__dict__[slot] = (state, tensors, value)
        return value

    def _bn_tensors(self) -> tuple:
        bn = self._modules["bn"]
        return (bn._parameters["weight"], bn._parameters["bias"], bn._buffers["running_mean"],
                bn._buffers["running_var"])

    def _fold_bn(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The eval-mode BatchNorm as (scale, shift) (F,)."""
        gamma, beta = self._bn_affine(x)
        scale = gamma / torch.sqrt(self.bn.running_var + self.bn.eps)
        return scale, beta - self.bn.running_mean * scale

    def _folded_bn(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(scale, shift), folded once (see ``_cached``) unless the fold must be differentiable (grad enabled and
        BatchNorm's affine parameters require grad)."""
        bn = self.bn
        if torch.is_grad_enabled() and bn.affine and (bn.weight.requires_grad or bn.bias.requires_grad):
            return self._fold_bn(x)
        return self._cached("_folded", x, self._bn_tensors(), lambda: self._fold_bn(x))

    def _inference_args(self, x: Tensor) -> tuple:
        """(wt, wh, ww, scale, shift) for eval mode without autograd, made once (see ``_cached``)."""
        mods = self._modules
        convs = tuple(mods[k]._parameters["weight"] if k in mods else None for k in ("shift_conv", "h_conv", "w_conv"))
        return self._cached("_inference", x, convs + self._bn_tensors(), lambda: (*self.kernels(), *self._fold_bn(x)))

    def forward(self, x: Tensor) -> Tensor:
        check_input("MVF", "x", x, ("N*T", self.in_channels, "H", "W"))
        if x.shape[0] % self.n_segment:
            raise ValueError(f"MVF: x holds {x.shape[0]} frames (shape {tuple(x.shape)}), expected a multiple of "
                             f"n_segment={self.n_segment}")
        c = self.num_shift_channel
        if c == 0:
            return self.net(x)
        nt, C, H, W = x.shape
        n = nt // self.n_segment
        x5 = x.view(n, self.n_segment, C, H, W).transpose(1, 2)  # (N, C, T, H, W) view of the frames
        bn = self.bn
        if self.use_hs and not bn.training and bn.track_running_stats and not torch.is_grad_enabled():
            out = ops.multi_view_fusion(x5, *self._inference_args(x), hardswish=True, fused_channels=c)
            return self.net(out.transpose(1, 2).reshape(nt, C, H, W))
        wt, wh, ww = self.kernels()
        if not self.use_hs:
            out = ops.multi_view_fusion(x5, wt, wh, ww, fused_channels=c)
        elif not bn.training and bn.track_running_stats:
            scale, shift = self._folded_bn(x)
            out = ops.multi_view_fusion(x5, wt, wh, ww, scale, shift, hardswish=True, fused_channels=c)
        else:  # batch statistics: training, or a BatchNorm that tracks no running statistics
            count = n * self.n_segment * H * W
            if count == 1:
                raise ValueError(f"MVF: BatchNorm expects more than 1 value per channel when training, got input "
                                 f"size {tuple(x.shape)}")
            gamma, beta = self._bn_affine(x)
            out, mean, var = ops.multi_view_fusion_batchnorm(x5, wt, wh, ww, gamma, beta, bn.eps, True, c)
            if bn.training and bn.track_running_stats:
                _update_running_stats(bn, mean, var, count)
        return self.net(out.transpose(1, 2).reshape(nt, C, H, W))


def insert_mvf(resnet: nn.Module, n_segment: int, alpha: float = 0.125, stages=(0, 0, 1, 1), use_hs: bool = True,
               share: bool = False, mode: str = "THW") -> int:
    """Wrap the conv1 of every Bottleneck/BasicBlock of the selected stages (``layer1``..``layer4`` of a
    torchvision ResNet) in ``MVF``, as MVFNet does (default: layer3 and layer4). Returns how many were wrapped."""
    count = 0
    for i, enabled in enumerate(stages):
        if not enabled:
            continue
        for block in getattr(resnet, f"layer{i + 1}").children():
            block.conv1 = MVF(block.conv1, n_segment, block.conv1.in_channels, alpha, use_hs, share, mode)
            count += 1
    return count
