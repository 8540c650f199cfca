"""Scale-space convolution for SCAN-CNN (Shi et al., arXiv 2209.08788).

No code of the paper is public: this layer is **our reconstruction** from its abstract ("the conv layer learns a
set of scales from data, each fulfilled by a conv kernel", "zero increase of inference cost") and from
scale-space theory (Gaussian derivative bases, Koenderink & van Doorn; scale-normalised derivatives, Lindeberg).

``ScaleSpaceConv2d`` splits its output channels among S scale groups. Every kernel of group s is a learned
linear combination of the 2-D Gaussian derivatives of orders 0..``order`` at scale sigma_s, sampled on the
layer's k x k support; sigma_s is learned in log space and kept within what the support represents
([0.5, (k - 1) / 2] pixels, so that the kernel is neither sub-pixel nor truncated below one sigma). ``fuse()``
materialises the kernels into one plain ``nn.Conv2d`` of the same size: the same output, no added cost.

``ScaleAttention`` (also our reconstruction of the paper's "hierarchical scale attention") re-weights the S scale
groups of such a layer's output per channel and location with a softmax across the groups of their
scale-normalised response magnitudes; stacking ScaleSpaceConv2d + ScaleAttention layers makes the attention
hierarchical. It runs as one fused pass (``pyvision_fast.ops.scale_attention``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import scale_attention
from ..ops.scale_space_weight import scale_space_weight
from ..reference import scale_space as ref
from ..reference.scale_space import gaussian_derivative_basis
from ._checks import check_input

__all__ = ["ScaleAttention", "ScaleSpaceConv2d", "gaussian_derivative_basis"]

_SIGMA_MIN = 0.5


class ScaleSpaceConv2d(nn.Module):
    """Conv2d whose kernels are learned combinations of Gaussian derivatives at learned scales.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, bias: as ``nn.Conv2d`` (square kernels).
        num_scales: S scale groups; output channels are split among them as evenly as possible (group s holds
            channels [offsets[s], offsets[s+1])).
        order: highest derivative order of the basis (0: Gaussian blobs only; 2: blobs, edges and ridges).

    Parameters: ``coeff`` (out_channels, in_channels, n_basis), ``log_sigma`` (S,), ``bias``.
    forward(x (B, in_channels, H, W)) -> (B, out_channels, H', W'), differentiable in every parameter incl. sigma.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, num_scales: int = 4, order: int = 2,
                 stride: int = 1, padding: int = 0, bias: bool = True):
        super().__init__()
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"ScaleSpaceConv2d: kernel_size must be odd and >= 3, got {kernel_size}")
        if not 1 <= num_scales <= out_channels:
            raise ValueError(f"ScaleSpaceConv2d: num_scales must be in [1, out_channels], got {num_scales}")
        if order < 0:
            raise ValueError(f"ScaleSpaceConv2d: order must be >= 0, got {order}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.num_scales, self.order = num_scales, order
        self.n_basis = (order + 1) * (order + 2) // 2
        self.sigma_max = (kernel_size - 1) / 2
        self.group_sizes = ref.group_sizes(out_channels, num_scales)
        init = torch.logspace(math.log10(_SIGMA_MIN * 1.2), math.log10(self.sigma_max), num_scales) \
            if num_scales > 1 else torch.tensor([math.sqrt(_SIGMA_MIN * self.sigma_max)])
        self.log_sigma = nn.Parameter(init.log())
        self.coeff = nn.Parameter(torch.empty(out_channels, in_channels, self.n_basis))
        # He-style initialisation of the equivalent kernel: std of the kernel entries ~ sqrt(2 / fan_in).
        nn.init.normal_(self.coeff, 0.0, math.sqrt(2.0 / (in_channels * self.n_basis)))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def sigma(self) -> Tensor:
        """The current scales (S,), kept within [0.5, (k - 1) / 2] pixels."""
        return self.log_sigma.clamp(math.log(_SIGMA_MIN), math.log(self.sigma_max)).exp()

    def weight(self) -> Tensor:
        """The equivalent Conv2d weight (out_channels, in_channels, k, k), built by one op
        (``pyvision_fast.ops.scale_space_weight``: one kernel each way on GPUs). While torch.export traces the
        layer (ONNX export) it is written with plain torch ops, which export to standard ONNX operators."""
        args = (self.coeff, self.log_sigma.to(self.coeff.dtype), self.kernel_size, self.order, _SIGMA_MIN,
                self.sigma_max)
        if torch.compiler.is_exporting():
            return ref.scale_space_weight(*args)
        return scale_space_weight(*args)

    def forward(self, x: Tensor) -> Tensor:
        check_input("ScaleSpaceConv2d", "x", x, ("B", self.in_channels, "H", "W"))
        return F.conv2d(x, self.weight(), self.bias, self.stride, self.padding)

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` with the materialised kernels (same output as this layer, no added cost)."""
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                         bias=self.bias is not None)
        conv = conv.to(device=self.coeff.device, dtype=self.coeff.dtype)
        conv.weight.copy_(self.weight())
        if self.bias is not None:
            conv.bias.copy_(self.bias)
        return conv

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"num_scales={self.num_scales}, order={self.order}, stride={self.stride}, padding={self.padding}")


class ScaleAttention(nn.Module):
    """Softmax attention across the scale groups of a scale-space layer's output (our reconstruction).

    For an input (B, S * G, H, W) whose channels are S consecutive groups of G (the layout of
    ``ScaleSpaceConv2d`` with out_channels divisible by num_scales), every channel g and location (h, w) gets
    weights p_s = softmax_s(gain_s * |y_s,g,h,w|) over the S groups, and the output is S * p_s * y_s: responses
    at the scale that dominates a location are amplified, the others damped. The responses are comparable
    across scales because ``ScaleSpaceConv2d``'s Gaussian-derivative basis is scale-normalised (gamma = 1);
    ``gain`` (S,) is learned and starts at ``init_gain`` (0: uniform weights, the layer starts as the identity).

    forward(y (B, S * G, H, W)) -> same shape and dtype; differentiable in y and gain.
    """

    def __init__(self, num_scales: int, init_gain: float = 0.0):
        super().__init__()
        if num_scales < 1:
            raise ValueError(f"ScaleAttention: num_scales must be >= 1, got {num_scales}")
        self.num_scales = num_scales
        self.gain = nn.Parameter(torch.full((num_scales,), float(init_gain)))

    def forward(self, y: Tensor) -> Tensor:
        if not isinstance(y, Tensor):
            raise TypeError(f"ScaleAttention: y must be a tensor (B, C, ...), got {type(y).__name__}")
        if y.dim() < 2 or y.shape[1] % self.num_scales:
            raise ValueError(f"ScaleAttention: expected y of shape (B, C, ...) with C a multiple of num_scales="
                             f"{self.num_scales}, got {tuple(y.shape)}: the channels must split into "
                             f"{self.num_scales} equal scale groups")
        B, C = y.shape[:2]
        grouped = y.reshape(B, self.num_scales, C // self.num_scales, *y.shape[2:])
        return scale_attention(grouped, self.gain.to(y.dtype)).reshape(y.shape)

    def extra_repr(self) -> str:
        return f"num_scales={self.num_scales}"
