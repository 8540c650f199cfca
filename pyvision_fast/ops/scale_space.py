"""Gaussian scale space (separable smoothing of an image at S scales in one call, differentiable in the image
and in sigma) and scale attention (a softmax re-weighting of scale groups), for SCAN-CNN's scale-space layers.

Both run on the compiled kernels of csrc/scale_space (CPU and CUDA), or on the plain-PyTorch reference.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from .. import _ext
from ..reference import scale_space as ref
from ._registry import as_int, dispatch

# The filter bank -------------------------------------------------------------------------------------------


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _bank_shape(x: Tensor, kernels: Tensor) -> tuple[int, ...]:
    B, C, H, W = _ext.dims(x, 4)
    return (B, kernels.shape[0] if kernels.dim() == 2 else 0, C, H, W)


def _bank_cpu(x, kernels, radii, boundary):
    out = x.new_empty(_bank_shape(x, kernels))
    _ext.cpu_module().filter_bank_forward(_ext.arg(x), _ext.arg(kernels), radii, boundary, _ext.arg(out))
    return out


def _bank_cuda(x, kernels, radii, boundary):
    out = x.new_empty(_bank_shape(x, kernels))
    ws = torch.empty(out.numel(), dtype=_acc(x.dtype), device=x.device)
    _ext.cuda_module().filter_bank_forward(_ext.arg(x), _ext.arg(kernels), radii, boundary, _ext.arg(out),
                                           _ext.arg(ws), _ext.stream(x.device))
    return out


def _bank_bwd_cpu(grad, x, kernels, radii, boundary):
    gx, gk = torch.empty_like(x), torch.empty_like(kernels)
    _ext.cpu_module().filter_bank_backward(_ext.arg(x), _ext.arg(grad), _ext.arg(kernels), radii, boundary,
                                           _ext.arg(gx), _ext.arg(gk))
    return gx, gk


def _bank_bwd_cuda(grad, x, kernels, radii, boundary):
    gx = torch.empty_like(x)
    gk = torch.empty(kernels.shape, dtype=_acc(x.dtype), device=x.device)
    ws = torch.empty(2 * grad.numel(), dtype=_acc(x.dtype), device=x.device)
    _ext.cuda_module().filter_bank_backward(_ext.arg(x), _ext.arg(grad), _ext.arg(kernels), radii, boundary,
                                            _ext.arg(gx), _ext.arg(gk), _ext.arg(ws), _ext.stream(x.device))
    return gx, gk.to(kernels.dtype)


_BANK = {"cpu": _bank_cpu, "cuda": _bank_cuda, "reference": ref.filter_bank}
_BANK_BWD = {"cpu": _bank_bwd_cpu, "cuda": _bank_bwd_cuda, "reference": ref.filter_bank_backward}


@torch.library.custom_op("pvf::filter_bank", mutates_args=())
def _filter_bank_op(x: Tensor, kernels: Tensor, radii: list[int], boundary: int) -> Tensor:
    impl = dispatch("gaussian_scale_space", x.device, _BANK)
    return impl(x.contiguous(), kernels.contiguous(), list(radii), boundary)


@_filter_bank_op.register_fake
def _(x, kernels, radii, boundary):
    return x.new_empty(_bank_shape(x, kernels))


@torch.library.custom_op("pvf::filter_bank_backward", mutates_args=())
def _filter_bank_backward_op(grad: Tensor, x: Tensor, kernels: Tensor, radii: list[int],
                             boundary: int) -> tuple[Tensor, Tensor]:
    impl = dispatch("gaussian_scale_space_backward", x.device, _BANK_BWD)
    gx, gk = impl(grad.contiguous(), x.contiguous(), kernels.contiguous(), list(radii), boundary)
    return gx, gk


@_filter_bank_backward_op.register_fake
def _(grad, x, kernels, radii, boundary):
    return torch.empty_like(x), torch.empty_like(kernels)


def _bank_setup(ctx, inputs, output):
    x, kernels, radii, boundary = inputs
    ctx.save_for_backward(x, kernels)
    ctx.radii, ctx.boundary = radii, boundary


def _bank_backward(ctx, grad):
    x, kernels = ctx.saved_tensors
    gx, gk = _filter_bank_backward_op(grad, x, kernels, ctx.radii, ctx.boundary)
    return gx, gk, None, None


_filter_bank_op.register_autograd(_bank_backward, setup_context=_bank_setup)


def gaussian_scale_space(x: Tensor, sigma: Union[Tensor, Sequence[float], float], truncate: float = 3.0,
                         padding_mode: str = "reflect",
                         radius: Optional[Union[int, Sequence[int]]] = None) -> Tensor:
    """Gaussian smoothing of x at S scales in one call (separable: along W, then H).

    Args:
        x: (B, C, H, W) float tensor (float32/float64; also float16/bfloat16 on CUDA, accumulated in float32).
        sigma: (S,) standard deviations in pixels (a tensor to differentiate in, or numbers), all > 0.
        truncate: the kernels are cut at radius round(truncate * sigma) (scipy.ndimage's rule), renormalised
            to unit sum.
        padding_mode: "reflect" (mirror without repeating the edge: scipy's "mirror"), "replicate" or "zeros".
        radius: the half-width of every scale (an int or S ints) instead of round(truncate * sigma). Reading
            sigma's values costs a host synchronisation; pass radius to avoid it (e.g. under torch.compile).

    Returns (B, S, C, H, W) in x's dtype, differentiable in x and sigma (d/dsigma through the sampled,
    normalised kernels). S <= 16 per call on CUDA.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"gaussian_scale_space: x must be a tensor, got {type(x).__name__}")
    if padding_mode not in ref.PADDING_MODES:
        raise ValueError(f"gaussian_scale_space: padding_mode must be one of {sorted(ref.PADDING_MODES)}, "
                         f"got {padding_mode!r}")
    if not isinstance(sigma, Tensor):
        sigma = torch.as_tensor([sigma] if isinstance(sigma, (int, float)) else list(sigma), dtype=torch.float64)
    if sigma.dim() != 1:
        raise ValueError(f"gaussian_scale_space: sigma must be (S,), got shape {tuple(sigma.shape)}")
    if not sigma.is_floating_point():
        raise TypeError(f"gaussian_scale_space: sigma must be a float tensor, got {sigma.dtype}")
    S = sigma.shape[0]
    if radius is None:
        values = sigma.detach().cpu().tolist()
        if not all(math.isfinite(v) and v > 0 for v in values):
            raise ValueError(f"gaussian_scale_space: every sigma must be a positive number, got {values}")
        if not (isinstance(truncate, (int, float)) and math.isfinite(truncate) and truncate > 0):
            raise ValueError(f"gaussian_scale_space: truncate must be a positive number, got {truncate!r}")
        radii = [ref.radius_for(v, truncate) for v in values]
    else:
        if isinstance(radius, (int, float)):
            radii = [as_int(radius, "radius")] * S
        else:
            radii = [as_int(r, "radius") for r in radius]
        if len(radii) != S or any(r < 0 for r in radii):
            raise ValueError(f"gaussian_scale_space: radius must be one int >= 0 or S = {S} of them, got {radius!r}")
    kernel_dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    kernels = ref.gaussian_kernels(sigma.to(device=x.device, dtype=kernel_dtype), radii).to(x.dtype)
    return _filter_bank_op(x, kernels, radii, ref.PADDING_MODES[padding_mode])


# Scale attention -------------------------------------------------------------------------------------------


def _att_cpu(y, gain):
    out = torch.empty_like(y)
    _ext.cpu_module().scale_attention_forward(_ext.arg(y), _ext.arg(gain), _ext.arg(out))
    return out


def _att_cuda(y, gain):
    out = torch.empty_like(y)
    _ext.cuda_module().scale_attention_forward(_ext.arg(y), _ext.arg(gain), _ext.arg(out), _ext.stream(y.device))
    return out


def _att_bwd_cpu(grad, y, gain):
    gy, gg = torch.empty_like(y), torch.empty_like(gain)
    _ext.cpu_module().scale_attention_backward(_ext.arg(y), _ext.arg(gain), _ext.arg(grad), _ext.arg(gy),
                                               _ext.arg(gg))
    return gy, gg


def _att_bwd_cuda(grad, y, gain):
    gy = torch.empty_like(y)
    gg = torch.empty(gain.shape, dtype=_acc(y.dtype), device=y.device)
    _ext.cuda_module().scale_attention_backward(_ext.arg(y), _ext.arg(gain), _ext.arg(grad), _ext.arg(gy),
                                                _ext.arg(gg), _ext.stream(y.device))
    return gy, gg.to(gain.dtype)


_ATT = {"cpu": _att_cpu, "cuda": _att_cuda, "reference": ref.scale_attention}
_ATT_BWD = {"cpu": _att_bwd_cpu, "cuda": _att_bwd_cuda, "reference": ref.scale_attention_backward}


@torch.library.custom_op("pvf::scale_attention", mutates_args=())
def _scale_attention_op(y: Tensor, gain: Tensor) -> Tensor:
    return dispatch("scale_attention", y.device, _ATT)(y.contiguous(), gain.contiguous())


@_scale_attention_op.register_fake
def _(y, gain):
    return torch.empty_like(y)


@torch.library.custom_op("pvf::scale_attention_backward", mutates_args=())
def _scale_attention_backward_op(grad: Tensor, y: Tensor, gain: Tensor) -> tuple[Tensor, Tensor]:
    gy, gg = dispatch("scale_attention_backward", y.device, _ATT_BWD)(grad.contiguous(), y.contiguous(),
                                                                       gain.contiguous())
    return gy, gg


@_scale_attention_backward_op.register_fake
def _(grad, y, gain):
    return torch.empty_like(y), torch.empty_like(gain)


def _att_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _att_backward(ctx, grad):
    y, gain = ctx.saved_tensors
    return _scale_attention_backward_op(grad, y, gain)


_scale_attention_op.register_autograd(_att_backward, setup_context=_att_setup)


def scale_attention(y: Tensor, gain: Tensor) -> Tensor:
    """Re-weight S scale groups per channel and location: ``S * softmax_s(gain_s * |y_s|) * y_s``.

    Args:
        y: (B, S, ...) responses, the S scale groups along dim 1 (any trailing shape, e.g. (B, S, G, H, W)).
        gain: (S,) per-scale gains of the attention logits (0 everywhere: the identity).

    Returns y's shape and dtype, in one pass over y (differentiable in y and gain).
    """
    if not isinstance(y, Tensor) or not isinstance(gain, Tensor):
        raise TypeError("scale_attention: y and gain must be tensors")
    if y.dim() < 2:
        raise ValueError(f"scale_attention: y must be (B, S, ...), got shape {tuple(y.shape)}")
    flat = y.reshape(y.shape[0], y.shape[1], math.prod(y.shape[2:]))
    return _scale_attention_op(flat, gain).view(y.shape)
