"""Gaussian scale space (separable smoothing of an image at S scales in one call, differentiable in the image
and in sigma) and scale attention (a softmax re-weighting of scale groups), for SCAN-CNN's scale-space layers.

Both run on the compiled kernels of csrc/scale_space (CPU and CUDA), or on the plain-PyTorch reference. The
filter bank has a GPU candidate, "cuda:next" (csrc/scale_space/filter_bank_tiled.h: shared-memory tiles with
their halo, every scale per tile, a one-pass backward with block partials of the kernel gradient).
"""
from __future__ import annotations

import functools
import math
import weakref
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from .. import _backend, _ext, _memory
from ..reference import scale_space as ref
from ._registry import as_int, dispatch, eager, eager_function

# The filter bank -------------------------------------------------------------------------------------------


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _bank_shape(x: Tensor, kernels: Tensor) -> tuple[int, ...]:
    B, C, H, W = _ext.dims(x, 4)
    return (B, kernels.shape[0] if kernels.dim() == 2 else 0, C, H, W)


def _bank_cpu(x, kernels, radii, boundary):
    out = _memory.empty(_bank_shape(x, kernels), x.dtype)
    _ext.cpu_module().filter_bank_forward(_ext.arg(x), _ext.arg(kernels), radii, boundary, _ext.arg(out))
    return out


def _bank_cuda(x, kernels, radii, boundary):
    out = x.new_empty(_bank_shape(x, kernels))
    ws = torch.empty(out.numel(), dtype=_acc(x.dtype), device=x.device)
    _ext.cuda_module().filter_bank_forward(_ext.arg(x), _ext.arg(kernels), radii, boundary, _ext.arg(out),
                                           _ext.arg(ws), _ext.stream(x.device))
    return out


def _bank_bwd_cpu(grad, x, kernels, radii, boundary):
    gx, gk = _memory.empty_like(x), torch.empty_like(kernels)
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


_next_workspaces: dict = {}


def _next_workspace(x, kernels, radii, boundary, backward: bool) -> Tensor:
    """The tiled kernels' workspace (accumulation type): sizes asked of the CUDA module once per shape."""
    key = (x.shape, x.dtype, x.device, kernels.shape[1], tuple(radii), boundary, backward)
    n = _next_workspaces.get(key)
    if n is None:
        if len(_next_workspaces) > 256:
            _next_workspaces.clear()
        n = _next_workspaces[key] = _ext.cuda_module().filter_bank_next_workspace(
            _ext.arg(x), _ext.arg(kernels), list(radii), boundary, backward)
    return torch.empty(n, dtype=_acc(x.dtype), device=x.device)


def _bank_cuda_next(x, kernels, radii, boundary):
    out = x.new_empty(_bank_shape(x, kernels))
    ws = _next_workspace(x, kernels, radii, boundary, False)
    _ext.cuda_module().filter_bank_forward_next(_ext.arg(x), _ext.arg(kernels), radii, boundary, _ext.arg(out),
                                                _ext.arg(ws), _ext.stream(x.device))
    return out


def _bank_bwd_cuda_next(grad, x, kernels, radii, boundary):
    gx = torch.empty_like(x)
    gk = torch.empty(kernels.shape, dtype=_acc(x.dtype), device=x.device)
    ws = _next_workspace(x, kernels, radii, boundary, True)
    _ext.cuda_module().filter_bank_backward_next(_ext.arg(x), _ext.arg(grad), _ext.arg(kernels), radii, boundary,
                                                 _ext.arg(gx), _ext.arg(gk), _ext.arg(ws), _ext.stream(x.device))
    return gx, gk.to(kernels.dtype)


def _check_bank_args(x: Tensor, kernels: Tensor, radii: Sequence[int], boundary: int) -> None:
    """The relations the C++ bindings check before the filter bank (csrc/bindings/scale_space_args.h, same
    messages), for every backend: ``filter_bank`` runs it before dispatch, the reference when the custom op is
    called directly. The dtype rule and the scale limit of each device stay with the backends."""
    op = "filter_bank"
    for name, t in (("x", x), ("kernels", kernels)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: argument '{name}' must be a tensor, got {type(t).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{op}: argument 'x' must have 4 dimensions (B, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{op}: argument 'x' must be float32 or float64 (or float16/bfloat16 on GPUs), got {x.dtype}")
    if kernels.device != x.device:
        raise TypeError(f"{op}: argument 'kernels' is on {kernels.device} but this call runs on {x.device}")
    if kernels.dim() != 2:
        raise ValueError(f"{op}: argument 'kernels' must have 2 dimensions (S, 2R + 1), got shape "
                         f"{tuple(kernels.shape)}")
    if kernels.dtype != x.dtype:
        raise TypeError(f"{op}: arguments 'kernels' ({kernels.dtype}) and 'x' ({x.dtype}) must have the same dtype")
    S, L = kernels.shape
    if L % 2 == 0:
        raise ValueError(f"{op}: kernels must have an odd number of taps (2R + 1), got {L}")
    if len(radii) != S:
        raise ValueError(f"{op}: radii has {len(radii)} values but kernels has {S} scales")
    if boundary not in (0, 1, 2):
        raise ValueError(f"{op}: boundary must be 0 (zeros), 1 (reflect) or 2 (replicate), got {boundary}")
    R, (H, W) = (L - 1) // 2, x.shape[2:]
    for r in radii:
        if not 0 <= r <= R:
            raise ValueError(f"{op}: radius {r} is outside [0, {R}] (the kernels' half-width)")
        if boundary == 1 and x.numel() > 0 and (r >= H or r >= W):
            raise ValueError(f"{op}: reflect padding needs every radius below the image size, got radius {r} for "
                             f"{H}x{W} (use a smaller truncate or padding_mode='replicate')")


def _bank_ref(x, kernels, radii, boundary):
    _check_bank_args(x, kernels, radii, boundary)
    return ref.filter_bank(x, kernels, radii, boundary)


_BANK = {"cpu": _bank_cpu, "cuda": _bank_cuda, "cuda:next": _bank_cuda_next, "reference": _bank_ref}
_BANK_BWD = {"cpu": _bank_bwd_cpu, "cuda": _bank_bwd_cuda, "cuda:next": _bank_bwd_cuda_next,
             "reference": ref.filter_bank_backward}
_backend.prefer("gaussian_scale_space", "cuda:next")  # H200-verified 2026-12-04 (gpu-runs.md)


def _filter_bank_impl(x: Tensor, kernels: Tensor, radii: list[int], boundary: int) -> Tensor:
    impl = dispatch("gaussian_scale_space", x.device, _BANK)
    return impl(x.contiguous(), kernels.contiguous(), list(radii), boundary)


def _filter_bank_backward_impl(grad: Tensor, x: Tensor, kernels: Tensor, radii: list[int],
                               boundary: int) -> tuple[Tensor, Tensor]:
    impl = dispatch("gaussian_scale_space_backward", x.device, _BANK_BWD)
    gx, gk = impl(grad.contiguous(), x.contiguous(), kernels.contiguous(), list(radii), boundary)
    return gx, gk


_filter_bank_op = torch.library.custom_op("pvf::filter_bank", mutates_args=())(_filter_bank_impl)
_filter_bank_backward_op = torch.library.custom_op("pvf::filter_bank_backward",
                                                   mutates_args=())(_filter_bank_backward_impl)


@_filter_bank_op.register_fake
def _(x, kernels, radii, boundary):
    return x.new_empty(_bank_shape(x, kernels))


@_filter_bank_backward_op.register_fake
def _(grad, x, kernels, radii, boundary):
    return torch.empty_like(x), torch.empty_like(kernels)


def _bank_setup(ctx, inputs, output):
    x, kernels, radii, boundary = inputs
    ctx.save_for_backward(x, kernels)
    ctx.radii, ctx.boundary = radii, boundary


def _bank_backward_with(backward_op):
    def backward(ctx, grad):
        x, kernels = ctx.saved_tensors
        gx, gk = backward_op(grad, x, kernels, ctx.radii, ctx.boundary)
        return gx, gk, None, None

    return backward


_filter_bank_op.register_autograd(_bank_backward_with(_filter_bank_backward_op), setup_context=_bank_setup)
_FilterBankFunction = eager_function("_FilterBankFunction", _filter_bank_impl, _bank_setup,
                                     _bank_backward_with(_filter_bank_backward_impl))


def filter_bank(x: Tensor, kernels: Tensor, radii: Sequence[int], boundary: int) -> Tensor:
    """The filter-bank op under ``gaussian_scale_space`` (see csrc/scale_space/scale_space.h): x (B, C, H, W),
    kernels (S, 2R + 1) centred on tap R, radii (S,) ints <= R, boundary 0 zeros / 1 reflect / 2 replicate ->
    (B, S, C, H, W). Differentiable in x and kernels."""
    args = (x, kernels, list(radii), boundary)
    _check_bank_args(*args)
    return _FilterBankFunction.apply(*args) if eager(x, kernels) else _filter_bank_op(*args)


# Gaussian kernels without host synchronisation -----------------------------------------------------------

_sigma_reads: dict = {}


def _sigma_values(sigma: Tensor) -> list[float]:
    """sigma's values on the host. A CPU tensor is read as it is; a GPU tensor is read (one host synchronisation)
    once per tensor and version: calls with the same, unmodified sigma reuse the values."""
    if sigma.device.type == "cpu":
        return sigma.detach().tolist()
    try:
        key = (id(sigma), sigma.data_ptr(), sigma._version)
    except RuntimeError:  # inference tensors have no version counter
        return sigma.detach().cpu().tolist()
    hit = _sigma_reads.get(key)
    if hit is not None and hit[0]() is sigma:
        return hit[1]
    if len(_sigma_reads) > 64:
        _sigma_reads.clear()
    values = sigma.detach().cpu().tolist()
    _sigma_reads[key] = (weakref.ref(sigma), values)
    return values


def _support(radii: tuple, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """Tap positions (2R + 1,) and which taps each scale keeps (S, 2R + 1), made on the device."""
    R = max(radii)
    pos = torch.arange(-R, R + 1, dtype=dtype, device=device)
    return pos, torch.stack([pos.abs() <= r for r in radii])


_cached_support = functools.lru_cache(maxsize=64)(_support)


def _gaussian_kernels(sigma: Tensor, radii: list[int]) -> Tensor:
    """reference.gaussian_kernels (the same operations, so the same values) with the support cached per device
    in eager calls (no host-to-device copy per call; tracing makes its tensors afresh)."""
    support = _cached_support if eager(sigma) else _support
    pos, inside = support(tuple(radii), sigma.dtype, sigma.device)
    g = torch.exp(-0.5 * (pos[None, :] / sigma[:, None]) ** 2) * inside
    return g / g.sum(dim=1, keepdim=True)


@functools.lru_cache(maxsize=64)
def _constant_kernels(values: tuple, radii: tuple, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The kernels of sigma given as numbers, built once on the host and copied without waiting."""
    kernels = ref.gaussian_kernels(torch.tensor(values, dtype=torch.float64), list(radii)).to(dtype)
    return kernels.to(device, non_blocking=True)


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
        radius: the half-width of every scale (an int or S ints) instead of round(truncate * sigma). Without it
            a sigma tensor on a GPU is read to the host (one synchronisation) the first time that tensor is seen
            unmodified (same object and version); pass radius to never read it (e.g. learned sigmas, which change
            every step, or under torch.compile).

    Returns (B, S, C, H, W) in x's dtype, differentiable in x and sigma (d/dsigma through the sampled,
    normalised kernels). S <= 16 per call on CUDA.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"gaussian_scale_space: x must be a tensor, got {type(x).__name__}")
    if padding_mode not in ref.PADDING_MODES:
        raise ValueError(f"gaussian_scale_space: padding_mode must be one of {sorted(ref.PADDING_MODES)}, "
                         f"got {padding_mode!r}")
    constant = not isinstance(sigma, Tensor)
    if constant:
        values = [sigma] if isinstance(sigma, (int, float)) else list(sigma)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise TypeError(f"gaussian_scale_space: sigma must be a tensor or numbers, got {sigma!r}")
        values = [float(v) for v in values]
        S = len(values)
    else:
        if sigma.dim() != 1:
            raise ValueError(f"gaussian_scale_space: sigma must be (S,), got shape {tuple(sigma.shape)}")
        if not sigma.is_floating_point():
            raise TypeError(f"gaussian_scale_space: sigma must be a float tensor, got {sigma.dtype}")
        S = sigma.shape[0]
    if radius is None:
        if not constant:
            values = _sigma_values(sigma)
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
    if S == 0:
        kernels = x.new_zeros(0, 1)
    elif constant:
        if not all(math.isfinite(v) and v > 0 for v in values):
            raise ValueError(f"gaussian_scale_space: every sigma must be a positive number, got {values}")
        make = _constant_kernels if eager(x) else _constant_kernels.__wrapped__
        kernels = make(tuple(values), tuple(radii), kernel_dtype, x.device).to(x.dtype)
    else:
        kernels = _gaussian_kernels(sigma.to(device=x.device, dtype=kernel_dtype, non_blocking=True), radii)
        kernels = kernels.to(x.dtype)
    return filter_bank(x, kernels, radii, ref.PADDING_MODES[padding_mode])


# Scale attention -------------------------------------------------------------------------------------------


def _att_cpu(y, gain):
    out = _memory.empty_like(y)
    _ext.cpu_module().scale_attention_forward(_ext.arg(y), _ext.arg(gain), _ext.arg(out))
    return out


def _att_cuda(y, gain):
    out = torch.empty_like(y)
    _ext.cuda_module().scale_attention_forward(_ext.arg(y), _ext.arg(gain), _ext.arg(out), _ext.stream(y.device))
    return out


def _att_bwd_cpu(grad, y, gain):
    gy, gg = _memory.empty_like(y), torch.empty_like(gain)
    _ext.cpu_module().scale_attention_backward(_ext.arg(y), _ext.arg(gain), _ext.arg(grad), _ext.arg(gy),
                                               _ext.arg(gg))
    return gy, gg


def _att_bwd_cuda(grad, y, gain):
    gy = torch.empty_like(y)
    gg = torch.empty(gain.shape, dtype=_acc(y.dtype), device=y.device)
    _ext.cuda_module().scale_attention_backward(_ext.arg(y), _ext.arg(gain), _ext.arg(grad), _ext.arg(gy),
                                                _ext.arg(gg), _ext.stream(y.device))
    return gy, gg.to(gain.dtype)


def _check_attention_args(y: Tensor, gain: Tensor) -> None:
    """The relations the C++ bindings check (csrc/bindings/scale_space_args.h, same messages), for every
    backend: the public function runs it before dispatch, the reference when the custom op is called directly.
    The dtype rule of each device (float16/bfloat16 on GPUs) stays with the backends."""
    op = "scale_attention"
    if not y.is_floating_point():
        raise TypeError(f"{op}: argument 'y' must be float32 or float64 (or float16/bfloat16 on GPUs), got {y.dtype}")
    if y.shape[1] < 1:
        raise ValueError(f"{op}: the number of scales (dimension 1 of 'y', shape {tuple(y.shape)}) must be >= 1")
    if gain.device != y.device:
        raise TypeError(f"{op}: argument 'gain' is on {gain.device} but this call runs on {y.device}")
    if tuple(gain.shape) != (y.shape[1],):
        raise ValueError(f"{op}: argument 'gain' must have shape ({y.shape[1]}), got {tuple(gain.shape)}")
    if gain.dtype != y.dtype:
        raise TypeError(f"{op}: arguments 'gain' ({gain.dtype}) and 'y' ({y.dtype}) must have the same dtype")


def _att_ref(y, gain):
    _check_attention_args(y, gain)
    return ref.scale_attention(y, gain)


_ATT = {"cpu": _att_cpu, "cuda": _att_cuda, "reference": _att_ref}
_ATT_BWD = {"cpu": _att_bwd_cpu, "cuda": _att_bwd_cuda, "reference": ref.scale_attention_backward}


def _scale_attention_impl(y: Tensor, gain: Tensor) -> Tensor:
    return dispatch("scale_attention", y.device, _ATT)(y.contiguous(), gain.contiguous())


def _scale_attention_backward_impl(grad: Tensor, y: Tensor, gain: Tensor) -> tuple[Tensor, Tensor]:
    gy, gg = dispatch("scale_attention_backward", y.device, _ATT_BWD)(grad.contiguous(), y.contiguous(),
                                                                       gain.contiguous())
    return gy, gg


_scale_attention_op = torch.library.custom_op("pvf::scale_attention", mutates_args=())(_scale_attention_impl)
_scale_attention_backward_op = torch.library.custom_op("pvf::scale_attention_backward",
                                                       mutates_args=())(_scale_attention_backward_impl)


@_scale_attention_op.register_fake
def _(y, gain):
    return torch.empty_like(y)


@_scale_attention_backward_op.register_fake
def _(grad, y, gain):
    return torch.empty_like(y), torch.empty_like(gain)


def _att_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _att_backward_with(backward_op):
    def backward(ctx, grad):
        y, gain = ctx.saved_tensors
        return backward_op(grad, y, gain)

    return backward


_scale_attention_op.register_autograd(_att_backward_with(_scale_attention_backward_op), setup_context=_att_setup)
_ScaleAttentionFunction = eager_function("_ScaleAttentionFunction", _scale_attention_impl, _att_setup,
                                         _att_backward_with(_scale_attention_backward_impl))


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
    _check_attention_args(y, gain)
    flat = y.reshape(y.shape[0], y.shape[1], math.prod(y.shape[2:]))
    out = _ScaleAttentionFunction.apply(flat, gain) if eager(flat, gain) else _scale_attention_op(flat, gain)
    return out.view(y.shape)
