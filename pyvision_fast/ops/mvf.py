"""Multi-view fusion (MVFNet): the sum of depthwise 3-tap convolutions along T, H and W in one pass, with an
optional fused inference epilogue (folded BatchNorm, HardSwish) and pass-through channels."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _backend, _ext
from .._memory import empty_like, empty_strided
from ..reference import mvf as ref
from ._registry import as_int, dispatch, eager, eager_function


def _output_like(x: Tensor) -> Tensor:
    """A new tensor with x's layout when x is (N, C, T, H, W)-contiguous or in the (N*T, C, H, W) frame layout,
    the frame layout otherwise (what 2-D video networks consume)."""
    N, C, T, H, W = x.shape
    if x.is_contiguous() or x.transpose(1, 2).is_contiguous():
        return empty_like(x)
    return empty_strided((N, C, T, H, W), (T * C * H * W, H * W, C * H * W, W, 1), x.dtype, x.device)


def _w_contiguous(x: Tensor) -> Tensor:
    return x if x.shape[-1] <= 1 or x.stride(-1) == 1 else x.contiguous()


def _fwd_cpu(x, wt, wh, ww, scale, shift, hardswish, fused):
    out = _output_like(x)
    _ext.cpu_module().mvf_forward(_ext.arg(x), _ext.arg(wt), _ext.arg(wh), _ext.arg(ww), _ext.opt(scale),
                                  _ext.opt(shift), hardswish, fused, _ext.arg(out))
    return out


def _fwd_cuda(x, wt, wh, ww, scale, shift, hardswish, fused):
    out = _output_like(x)
    _ext.cuda_module().mvf_forward(_ext.arg(x), _ext.arg(wt), _ext.arg(wh), _ext.arg(ww), _ext.opt(scale),
                                   _ext.opt(shift), hardswish, fused, _ext.arg(out), _ext.stream(x.device))
    return out


def _fwd_ref(x, wt, wh, ww, scale, shift, hardswish, fused):
    _check_args("multi_view_fusion", x, (wt, wh, ww), scale, shift, fused)
    return ref.multi_view_fusion(x, wt, wh, ww, scale, shift, hardswish, fused)


def _bwd_native(grad, x, wt, wh, ww, scale, shift, hardswish, fused, grad_fused, cuda: bool):
    N, C, T, H, W = x.shape
    acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) and cuda else x.dtype
    gx = _output_like(x)  # dense even when x is a slice of a larger tensor
    gw = [torch.empty(fused, 3, dtype=acc, device=x.device) for _ in range(3)]
    if grad_fused is not None:  # the fused channels' gradient before the epilogue, given: it is the workspace
        ws = grad_fused.to(acc).contiguous().view(-1)
    elif cuda:
        ws = torch.empty(N * fused * T * H * W, dtype=acc, device=x.device)
    else:  # the CPU kernel needs none
        ws = None
    args = [_ext.arg(x), _ext.arg(grad), _ext.arg(wt), _ext.arg(wh), _ext.arg(ww), _ext.opt(scale), _ext.opt(shift),
            hardswish, fused, _ext.arg(gx), *(_ext.arg(g) for g in gw), _ext.opt(ws), grad_fused is not None]
    if cuda:
        _ext.cuda_module().mvf_backward(*args, _ext.stream(x.device))
    else:
        _ext.cpu_module().mvf_backward(*args)
    return (gx, *(g.to(x.dtype) for g in gw))


def _bwd_ref(grad, x, wt, wh, ww, scale, shift, hardswish, fused, grad_fused):
    """The gradients written out with convolutions (custom-op implementations run below autograd, so they
    cannot differentiate the reference with autograd)."""
    import torch.nn.functional as F
    from torch.nn.grad import conv3d_weight

    Fc = fused
    if x.numel() == 0:  # an empty N, T, H or W (conv3d refuses the last three): empty grad_x, zero kernel grads
        return (torch.zeros_like(x), *(w.new_zeros(Fc, 3) for w in (wt, wh, ww)))
    views = [(wt, (Fc, 1, 3, 1, 1), (1, 0, 0)), (wh, (Fc, 1, 1, 3, 1), (0, 1, 0)), (ww, (Fc, 1, 1, 1, 3), (0, 0, 1))]
    xf = x[:, :Fc]
    gy = grad[:, :Fc] if grad_fused is None else grad_fused
    if grad_fused is None and (scale is not None or hardswish):
        y = ref.multi_view_fusion(xf, wt, wh, ww, None, None, False, Fc)
        s = scale.view(1, -1, 1, 1, 1) if scale is not None else torch.ones((), dtype=x.dtype, device=x.device)
        z = y * s + (shift.view(1, -1, 1, 1, 1) if scale is not None else 0)
        d = ref.hardswish_grad(z) if hardswish else 1.0
        gy = gy * d * s
    gx = grad.clone()
    gx[:, :Fc] = sum(F.conv_transpose3d(gy, w.reshape(shape), padding=pad, groups=Fc) for w, shape, pad in views) \
        if Fc else gx[:, :Fc]
    gws = [conv3d_weight(xf, shape, gy, padding=pad, groups=Fc).reshape(Fc, 3) if Fc else w.new_zeros(0, 3)
           for w, shape, pad in views]
    return (gx, *gws)


def _native(x: Tensor) -> str:
    return "cuda" if x.is_cuda else "cpu"


_triton_mvf = None


def _tri():
    """pyvision_fast.triton.mvf, imported on first use (Triton is optional)."""
    global _triton_mvf
    if _triton_mvf is None:
        from ..triton import mvf  # noqa: PLC0415

        _triton_mvf = mvf
    return _triton_mvf


def _acc_dtype(x: Tensor) -> torch.dtype:
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _views_args(x, wt, wh, ww, p0, p1, fused, pair=("bn_scale", "bn_shift")) -> list:
    """(name, tensor, expected shape) of the kernels and the per-channel pair, for the Triton path's checks."""
    return [("weight_t", wt, (fused, 3)), ("weight_h", wh, (fused, 3)), ("weight_w", ww, (fused, 3)),
            (pair[0], p0, (fused,)), (pair[1], p1, (fused,))]


def _fwd_triton(x, wt, wh, ww, scale, shift, hardswish, fused):
    """One Triton launch: the fused channels' views and epilogue, and the pass-through copy."""
    tri = _tri()
    tri.check("multi_view_fusion", x, _views_args(x, wt, wh, ww, scale, shift, fused), fused,
              ("bn_scale", "bn_shift"))
    out = _output_like(x)
    if not tri.supported(x, out):
        return _FWD[_native(x)](x, wt, wh, ww, scale, shift, hardswish, fused)
    tri.forward(x, wt, wh, ww, scale, shift, 0.0, 0 if scale is None else 1, hardswish, fused, out)
    return out


def _grad_buffers(x: Tensor, fused: int, count: int) -> list[Tensor]:
    """count (F, 3) kernel gradients, zero when x is empty (no program writes them then)."""
    make = torch.zeros if x.numel() == 0 else torch.empty
    return [make(fused, 3, dtype=x.dtype, device=x.device) for _ in range(count)]


def _bwd_triton(grad, x, wt, wh, ww, scale, shift, hardswish, fused, grad_fused):
    """One Triton launch: gy into a workspace, the kernel gradients, grad_x of the fused channels and the
    pass-through copy of grad. A given grad_fused goes to the native kernels."""
    tri = _tri()
    tri.check("multi_view_fusion_backward", x, _views_args(x, wt, wh, ww, scale, shift, fused), fused,
              ("bn_scale", "bn_shift"), grad)
    N, C, T, H, W = x.shape
    gx = _output_like(x)
    if grad_fused is not None or not tri.supported(x, grad, gx, size=fused * N * T * H * W):
        return _BWD[_native(x)](grad, x, wt, wh, ww, scale, shift, hardswish, fused, grad_fused)
    gw = _grad_buffers(x, fused, 3)
    ws = torch.empty(fused * N * T * H * W, dtype=_acc_dtype(x), device=x.device)
    tri.backward(grad, x, wt, wh, ww, scale, shift, None, None, 0.0, 0 if scale is None else 1, hardswish, fused,
                 gx, gw, (), ws)
    return (gx, *gw)


_FWD = {"cpu": _fwd_cpu, "cuda": _fwd_cuda, "triton": _fwd_triton, "reference": _fwd_ref}
_BWD = {"cpu": lambda *a: _bwd_native(*a, cuda=False), "cuda": lambda *a: _bwd_native(*a, cuda=True),
        "triton": _bwd_triton, "reference": _bwd_ref}


def _mvf_impl(x: Tensor, weight_t: Tensor, weight_h: Tensor, weight_w: Tensor, bn_scale: Optional[Tensor],
              bn_shift: Optional[Tensor], hardswish: bool, fused_channels: int) -> Tensor:
    impl = dispatch("multi_view_fusion", x.device, _FWD)
    return impl(_w_contiguous(x), weight_t.contiguous(), weight_h.contiguous(), weight_w.contiguous(),
                None if bn_scale is None else bn_scale.contiguous(), None if bn_shift is None else bn_shift.contiguous(),
                hardswish, fused_channels)


_mvf_op = torch.library.custom_op("pvf::multi_view_fusion", mutates_args=())(_mvf_impl)


@_mvf_op.register_fake
def _(x, weight_t, weight_h, weight_w, bn_scale, bn_shift, hardswish, fused_channels):
    return _output_like(x)


def _mvf_backward_impl(grad: Tensor, x: Tensor, weight_t: Tensor, weight_h: Tensor, weight_w: Tensor,
                       bn_scale: Optional[Tensor], bn_shift: Optional[Tensor], hardswish: bool, fused_channels: int,
                       grad_fused: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of x and the three kernels. grad_fused (N, F, T, H, W), when given, is the fused channels'
    gradient before the epilogue (the caller differentiated it, e.g. through a training-mode BatchNorm): grad is
    then read for the pass-through channels only and the epilogue arguments are ignored."""
    impl = dispatch("multi_view_fusion_backward", x.device, _BWD)
    x = _w_contiguous(x)
    return tuple(impl(_w_contiguous(grad), x, weight_t.contiguous(), weight_h.contiguous(), weight_w.contiguous(),
                      None if bn_scale is None else bn_scale.contiguous(),
                      None if bn_shift is None else bn_shift.contiguous(), hardswish, fused_channels, grad_fused))


_mvf_backward_op = torch.library.custom_op("pvf::multi_view_fusion_backward",
                                           mutates_args=())(_mvf_backward_impl)


@_mvf_backward_op.register_fake
def _(grad, x, weight_t, weight_h, weight_w, bn_scale, bn_shift, hardswish, fused_channels, grad_fused=None):
    return _output_like(x), torch.empty_like(weight_t), torch.empty_like(weight_h), torch.empty_like(weight_w)


def _setup(ctx, inputs, output):
    x, wt, wh, ww, scale, shift, hardswish, fused = inputs
    ctx.save_for_backward(x, wt, wh, ww, scale, shift)
    ctx.hardswish, ctx.fused = hardswish, fused


def _backward_with(backward_op, forward_op):
    """The autograd backward on the given backward and forward (the custom ops, or their implementations)."""

    def backward(ctx, grad):
        x, wt, wh, ww, scale, shift = ctx.saved_tensors
        gx, gwt, gwh, gww = backward_op(grad, x, wt, wh, ww, scale, shift, ctx.hardswish, ctx.fused)
        g_scale = g_shift = None
        if scale is not None and (ctx.needs_input_grad[4] or ctx.needs_input_grad[5]):
            # The folded BatchNorm's parameters (eval-mode fine-tuning): recompute the views, differentiate
            # z = scale * y + shift (and HardSwish) with plain tensor ops.
            Fc = ctx.fused
            y = forward_op(x[:, :Fc], wt, wh, ww, None, None, False, Fc)
            z = y * scale.view(1, -1, 1, 1, 1) + shift.view(1, -1, 1, 1, 1)
            gz = grad[:, :Fc]
            if ctx.hardswish:
                gz = gz * ref.hardswish_grad(z)
            g_shift = gz.sum(dim=(0, 2, 3, 4))
            g_scale = (gz * y).sum(dim=(0, 2, 3, 4))
        return gx, gwt, gwh, gww, g_scale, g_shift, None, None

    return backward


_mvf_op.register_autograd(_backward_with(_mvf_backward_op, _mvf_op), setup_context=_setup)
_MVFFunction = eager_function("_MVFFunction", _mvf_impl, _setup,
                              _backward_with(_mvf_backward_impl, _mvf_impl))


def _check_args(op: str, x: Tensor, kernels, p0: Optional[Tensor], p1: Optional[Tensor], fused: int,
                pair=("bn_scale", "bn_shift"), pair_required: bool = False) -> None:
    """The relations between the arguments that the C++ bindings check (csrc/bindings/mvf_args.h, same
    messages), for every backend: the public functions run it before dispatch, the reference implementations
    when the custom op is called directly. x is already known to be 5-D. The dtype rule of each device (float16
    and bfloat16 on GPUs) stays with the backends; here x must be floating point."""
    if not x.is_floating_point():
        raise TypeError(f"{op}: argument 'x' must be float32 or float64 (or float16/bfloat16 on GPUs), got "
                        f"{x.dtype}")
    C = x.shape[1]
    if not 0 <= fused <= C:
        raise ValueError(f"{op}: fused_channels must be in [0, {C}], got {fused}")
    named = list(zip(("weight_t", "weight_h", "weight_w"), kernels))
    if (p0 is None) != (p1 is None):
        if pair_required:
            raise TypeError(f"{op}: {pair[0] if p0 is None else pair[1]} must be a tensor")
        raise ValueError(f"{op}: give both {pair[0]} and {pair[1]}, or neither")
    for name, t, shape in [(n, w, (fused, 3)) for n, w in named] + [(pair[0], p0, (fused,)), (pair[1], p1, (fused,))]:
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: argument '{name}' must be a tensor, got {type(t).__name__}")
        if t.device != x.device:
            raise TypeError(f"{op}: argument '{name}' is on {t.device} but this call runs on {x.device}")
        if tuple(t.shape) != shape:
            raise ValueError(f"{op}: argument '{name}' must have shape {shape}, got {tuple(t.shape)}".replace(
                ",)", ")"))
        if t.dtype != x.dtype:
            raise TypeError(f"{op}: arguments '{name}' ({t.dtype}) and 'x' ({x.dtype}) must have the same dtype")


def _kernels(weight_t, weight_h, weight_w) -> tuple[Tensor, Tensor, Tensor]:
    return _kernel(weight_t, "weight_t"), _kernel(weight_h, "weight_h"), _kernel(weight_w, "weight_w")


def _kernel(w: Tensor, name: str) -> Tensor:
    """(F, 3) from (F, 3) or a depthwise Conv3d weight (F, 1, 3, 1, 1) / (F, 1, 1, 3, 1) / (F, 1, 1, 1, 3)."""
    if not isinstance(w, Tensor):
        raise TypeError(f"multi_view_fusion: {name} must be a tensor")
    if w.dim() == 2:
        return w
    if w.dim() == 5 and w.shape[1] == 1 and sorted(w.shape[2:]) == [1, 1, 3]:
        return w.reshape(w.shape[0], 3)
    raise ValueError(f"multi_view_fusion: {name} must be (C, 3) or a depthwise Conv3d weight with one 3-tap axis, "
                     f"got {tuple(w.shape)}")


def multi_view_fusion(x: Tensor, weight_t: Tensor, weight_h: Tensor, weight_w: Tensor,
                      bn_scale: Optional[Tensor] = None, bn_shift: Optional[Tensor] = None, hardswish: bool = False,
                      fused_channels: Optional[int] = None) -> Tensor:
    """Sum of three depthwise 3-tap convolutions of x along T, H and W (zero padding 1), in one pass.

    Args:
        x: (N, C, T, H, W) float tensor, any strides with stride 1 along W (the (N*T, C, H, W) frame layout of
            2-D video networks viewed as (N, C, T, H, W) is used in place).
        weight_t, weight_h, weight_w: (F, 3) taps, or the matching depthwise Conv3d weights; F = fused_channels.
        bn_scale, bn_shift: optional (F,) folded inference BatchNorm applied to the sum.
        hardswish: apply HardSwish after the (optional) BatchNorm.
        fused_channels: F, default C; channels F..C-1 are copied unchanged (MVFNet's channel split, in the same
            pass).

    Returns a tensor of x's shape (x's layout when x is dense). Differentiable in x, the three kernels and
    the epilogue's scale and shift.
    """
    if not isinstance(x, Tensor) or x.dim() != 5:
        raise ValueError(f"multi_view_fusion: x must be (N, C, T, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    fused = x.shape[1] if fused_channels is None else as_int(fused_channels, "fused_channels")
    args = (x, *_kernels(weight_t, weight_h, weight_w), bn_scale, bn_shift, bool(hardswish), fused)
    _check_args("multi_view_fusion", x, args[1:4], bn_scale, bn_shift, fused)
    if not eager(*args[:6]):
        return _mvf_op(*args)
    return _MVFFunction.apply(*args) if torch.is_grad_enabled() else _mvf_impl(*args)


# Training-mode BatchNorm on the fused channels -------------------------------------------------------------

_DIMS = (0, 2, 3, 4)


def _bn_fwd_cpu(x, wt, wh, ww, gamma, beta, eps, hardswish, fused):
    out = _output_like(x)
    mean, var = x.new_empty(fused), x.new_empty(fused)
    _ext.cpu_module().mvf_forward_bn_train(_ext.arg(x), _ext.arg(wt), _ext.arg(wh), _ext.arg(ww), _ext.arg(gamma),
                                           _ext.arg(beta), eps, hardswish, fused, _ext.arg(out), _ext.arg(mean),
                                           _ext.arg(var))
    return out, mean, var


def _hardswish(z: Tensor) -> Tensor:
    """F.hardswish, but exact in float64: torch's CUDA kernel scales by 1/6 rounded to float32 (relative error
    3e-8), which a float64 op must not inherit."""
    return z * (z + 3).clamp(0, 6) / 6 if z.dtype == torch.float64 else torch.nn.functional.hardswish(z)


def _views_in(acc: torch.dtype, backend: str, x, wt, wh, ww, fused):
    """The views' sum y of the fused channels (N, F, T, H, W) in dtype acc: half inputs are widened first, so
    that y (whose batch statistics are then taken) is not rounded to a half type."""
    xf = x[:, :fused]
    if acc != x.dtype:
        xf, wt, wh, ww = (t.to(acc) for t in (xf, wt, wh, ww))
    return _FWD[backend](xf, wt, wh, ww, None, None, False, fused)


def _bn_fwd_cuda(x, wt, wh, ww, gamma, beta, eps, hardswish, fused):
    """The views kernel, then BatchNorm with batch statistics in torch on the fused channels (float32 math for
    half inputs, from views computed in float32)."""
    acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    if acc == x.dtype:  # one kernel writes the views and copies the pass-through channels
        out = _fwd_cuda(x, wt, wh, ww, None, None, False, fused)
        yf = out[:, :fused]
    else:
        out = _output_like(x)
        out[:, fused:] = x[:, fused:]
        yf = _views_in(acc, "cuda", x, wt, wh, ww, fused)
    if yf.numel() == 0:
        return out, x.new_zeros(fused), x.new_zeros(fused)
    var, mean = torch.var_mean(yf, dim=_DIMS, correction=0)
    shape = (1, fused, 1, 1, 1)
    scale = gamma.to(acc) * torch.rsqrt(var + eps)
    z = yf * scale.view(shape) + (beta.to(acc) - mean * scale).view(shape)
    out[:, :fused] = (_hardswish(z) if hardswish else z).to(x.dtype)
    return out, mean.to(x.dtype), var.to(x.dtype)


def _bn_fwd_ref(x, wt, wh, ww, gamma, beta, eps, hardswish, fused):
    _check_args("multi_view_fusion_batchnorm", x, (wt, wh, ww), gamma, beta, fused, _BN_PAIR, True)
    return ref.multi_view_fusion_batchnorm(x, wt, wh, ww, gamma, beta, eps, hardswish, fused)


def _bn_bwd_cpu(grad, x, wt, wh, ww, gamma, beta, mean, var, eps, hardswish, fused):
    gx = _output_like(x)
    grads = [x.new_empty(fused, 3) for _ in range(3)] + [x.new_empty(fused), x.new_empty(fused)]
    _ext.cpu_module().mvf_backward_bn_train(_ext.arg(x), _ext.arg(grad), _ext.arg(wt), _ext.arg(wh), _ext.arg(ww),
                                            _ext.arg(gamma), _ext.arg(beta), _ext.arg(mean), _ext.arg(var), eps,
                                            hardswish, fused, _ext.arg(gx), *(_ext.arg(g) for g in grads))
    return (gx, *grads)


def _bn_bwd_composite(grad, x, wt, wh, ww, gamma, beta, mean, var, eps, hardswish, fused, backend: str):
    """BatchNorm (and HardSwish) differentiated in torch on the fused channels, on views recomputed by the
    backend (float32 math for half inputs), then the backend's views backward given that gradient."""
    acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    y = _views_in(acc if backend == "cuda" else x.dtype, backend, x, wt, wh, ww, fused)
    if acc != x.dtype and backend == "cuda" and y.numel():
        # the statistics the forward used, from the float32 views: the saved ones are rounded to x's dtype
        var, mean = torch.var_mean(y, dim=_DIMS, correction=0)
    shape = (1, fused, 1, 1, 1)
    invstd = torch.rsqrt(var.to(acc) + eps).view(shape)
    y_hat = (y.to(acc) - mean.to(acc).view(shape)) * invstd
    gz = grad[:, :fused].to(acc)
    if hardswish:
        gz = gz * ref.hardswish_grad(y_hat * gamma.to(acc).view(shape) + beta.to(acc).view(shape))
    g_beta = gz.sum(_DIMS)
    g_gamma = (gz * y_hat).sum(_DIMS)
    if y.numel():
        g_y = (gz - gz.mean(_DIMS, keepdim=True) - y_hat * (gz * y_hat).mean(_DIMS, keepdim=True)) \
            * (gamma.to(acc).view(shape) * invstd)
    else:
        g_y = gz
    # The CUDA kernel takes the float32 gradient of half inputs as it is; the reference convolves in x's dtype.
    g_y = g_y if backend == "cuda" else g_y.to(x.dtype)
    gx, gwt, gwh, gww = _BWD[backend](grad, x, wt, wh, ww, None, None, False, fused, g_y)
    return gx, gwt, gwh, gww, g_gamma.to(x.dtype), g_beta.to(x.dtype)


_BN_PAIR = ("bn_weight", "bn_bias")


def _bn_fwd_triton(x, wt, wh, ww, gamma, beta, eps, hardswish, fused):
    """One Triton launch: per fused channel the views, their batch statistics, BatchNorm and HardSwish (the
    views recomputed for the second pass, not stored), beside the pass-through copy."""
    tri = _tri()
    tri.check("multi_view_fusion_batchnorm", x, _views_args(x, wt, wh, ww, gamma, beta, fused, _BN_PAIR), fused,
              eps=eps)
    out = _output_like(x)
    if x.numel() == 0:
        return out, x.new_zeros(fused), x.new_zeros(fused)
    if not tri.supported(x, out):
        return _BN_FWD[_native(x)](x, wt, wh, ww, gamma, beta, eps, hardswish, fused)
    mean, var = x.new_empty(fused), x.new_empty(fused)
    tri.forward(x, wt, wh, ww, gamma, beta, eps, 2, hardswish, fused, out, mean, var)
    return out, mean, var


def _bn_bwd_triton(grad, x, wt, wh, ww, gamma, beta, mean, var, eps, hardswish, fused):
    """One Triton launch: per fused channel the BatchNorm + HardSwish backward sums, gy into a workspace and the
    kernel gradients, then grad_x through the transposed stencil; beside it the pass-through copy of grad."""
    tri = _tri()
    tri.check("multi_view_fusion_batchnorm_backward", x,
              _views_args(x, wt, wh, ww, gamma, beta, fused, _BN_PAIR) + [("mean", mean, (fused,)),
                                                                          ("var", var, (fused,))],
              fused, grad=grad, eps=eps)
    N, C, T, H, W = x.shape
    gx = _output_like(x)
    if not tri.supported(x, grad, gx, size=fused * N * T * H * W):
        return _BN_BWD[_native(x)](grad, x, wt, wh, ww, gamma, beta, mean, var, eps, hardswish, fused)
    gw = _grad_buffers(x, fused, 3)
    gp = [(torch.zeros if x.numel() == 0 else torch.empty)(fused, dtype=x.dtype, device=x.device) for _ in range(2)]
    ws = torch.empty(fused * N * T * H * W, dtype=_acc_dtype(x), device=x.device)
    tri.backward(grad, x, wt, wh, ww, gamma, beta, mean, var, eps, 2, hardswish, fused, gx, gw, gp, ws)
    return (gx, *gw, *gp)


_BN_FWD = {"cpu": _bn_fwd_cpu, "cuda": _bn_fwd_cuda, "triton": _bn_fwd_triton, "reference": _bn_fwd_ref}
_BN_BWD = {"cpu": _bn_bwd_cpu, "cuda": lambda *a: _bn_bwd_composite(*a, backend="cuda"),
           "triton": _bn_bwd_triton, "reference": lambda *a: _bn_bwd_composite(*a, backend="reference")}
# The Triton kernels are GPU candidates until a GPU run verifies them (pyvision_fast._backend).
for _op_name in ("multi_view_fusion", "multi_view_fusion_backward", "multi_view_fusion_batchnorm",
                 "multi_view_fusion_batchnorm_backward"):
    _backend.prefer(_op_name, "triton")  # H200-verified 2026-12-04 (gpu-runs.md)


def _channel_args(gamma, beta, mean=None, var=None):
    return tuple(None if t is None else t.contiguous() for t in (gamma, beta, mean, var))


def _mvf_bn_impl(x: Tensor, weight_t: Tensor, weight_h: Tensor, weight_w: Tensor, bn_weight: Tensor,
                 bn_bias: Tensor, eps: float, hardswish: bool, fused_channels: int) -> tuple[Tensor, Tensor, Tensor]:
    impl = dispatch("multi_view_fusion_batchnorm", x.device, _BN_FWD)
    gamma, beta, _, _ = _channel_args(bn_weight, bn_bias)
    return impl(_w_contiguous(x), weight_t.contiguous(), weight_h.contiguous(), weight_w.contiguous(), gamma, beta,
                eps, hardswish, fused_channels)


_mvf_bn_op = torch.library.custom_op("pvf::multi_view_fusion_batchnorm", mutates_args=())(_mvf_bn_impl)


@_mvf_bn_op.register_fake
def _(x, weight_t, weight_h, weight_w, bn_weight, bn_bias, eps, hardswish, fused_channels):
    return _output_like(x), x.new_empty(fused_channels), x.new_empty(fused_channels)


def _mvf_bn_backward_impl(grad: Tensor, x: Tensor, weight_t: Tensor, weight_h: Tensor, weight_w: Tensor,
                          bn_weight: Tensor, bn_bias: Tensor, mean: Tensor, var: Tensor, eps: float, hardswish: bool,
                          fused_channels: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of x, the three kernels, bn_weight and bn_bias from the forward's batch mean and variance."""
    impl = dispatch("multi_view_fusion_batchnorm_backward", x.device, _BN_BWD)
    gamma, beta, mean, var = _channel_args(bn_weight, bn_bias, mean, var)
    return tuple(impl(_w_contiguous(grad), _w_contiguous(x), weight_t.contiguous(), weight_h.contiguous(),
                      weight_w.contiguous(), gamma, beta, mean, var, eps, hardswish, fused_channels))


_mvf_bn_backward_op = torch.library.custom_op("pvf::multi_view_fusion_batchnorm_backward",
                                              mutates_args=())(_mvf_bn_backward_impl)


@_mvf_bn_backward_op.register_fake
def _(grad, x, weight_t, weight_h, weight_w, bn_weight, bn_bias, mean, var, eps, hardswish, fused_channels):
    return (_output_like(x), torch.empty_like(weight_t), torch.empty_like(weight_h), torch.empty_like(weight_w),
            torch.empty_like(bn_weight), torch.empty_like(bn_bias))


def _bn_setup(ctx, inputs, output):
    x, wt, wh, ww, gamma, beta, eps, hardswish, fused = inputs
    _, mean, var = output
    ctx.save_for_backward(x, wt, wh, ww, gamma, beta, mean, var)
    ctx.eps, ctx.hardswish, ctx.fused = eps, hardswish, fused
    ctx.mark_non_differentiable(mean, var)
    ctx.set_materialize_grads(False)  # mean and var have no gradient: no zero tensors for them per step


def _bn_backward_with(backward_op):
    def backward(ctx, grad, grad_mean, grad_var):
        if grad is None:  # no gradient reached out (gradients are not materialised: see _bn_setup)
            return (None,) * 9
        x, wt, wh, ww, gamma, beta, mean, var = ctx.saved_tensors
        grads = backward_op(grad, x, wt, wh, ww, gamma, beta, mean, var, ctx.eps, ctx.hardswish, ctx.fused)
        return (*grads, None, None, None)

    return backward


_mvf_bn_op.register_autograd(_bn_backward_with(_mvf_bn_backward_op), setup_context=_bn_setup)
_MVFBatchNormFunction = eager_function("_MVFBatchNormFunction", _mvf_bn_impl, _bn_setup,
                                       _bn_backward_with(_mvf_bn_backward_impl))


def multi_view_fusion_batchnorm(x: Tensor, weight_t: Tensor, weight_h: Tensor, weight_w: Tensor, bn_weight: Tensor,
                                bn_bias: Tensor, eps: float = 1e-5, hardswish: bool = True,
                                fused_channels: Optional[int] = None) -> tuple[Tensor, Tensor, Tensor]:
    """MVFNet's training-time fusion: the views' sum on the first F channels, BatchNorm with the batch's
    statistics (over N, T, H, W), optional HardSwish; channels F..C-1 copied.

    Args:
        x, weight_t, weight_h, weight_w, fused_channels: as in ``multi_view_fusion``.
        bn_weight, bn_bias: (F,) BatchNorm affine parameters (pass ones / zeros for a non-affine BatchNorm).
        eps: BatchNorm's epsilon (> 0).

    Returns ``(out, mean, var)``: out like ``multi_view_fusion``'s; mean and the biased variance (F,) of the
    views, for the caller's running statistics (not differentiable). out is differentiable in x, the kernels,
    bn_weight and bn_bias. On the CPU one kernel computes the views, the statistics and the normalisation
    channel by channel, and the backward recomputes the views instead of keeping them. On GPUs the Triton
    candidate (``pyvision_fast.use_candidates("multi_view_fusion_batchnorm")``) does the same in one launch per
    direction, with the pass-through copy in that launch.
    """
    if not isinstance(x, Tensor) or x.dim() != 5:
        raise ValueError(f"multi_view_fusion_batchnorm: x must be (N, C, T, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    fused = x.shape[1] if fused_channels is None else as_int(fused_channels, "fused_channels")
    for name, t in (("bn_weight", bn_weight), ("bn_bias", bn_bias)):
        if not isinstance(t, Tensor):
            raise TypeError(f"multi_view_fusion_batchnorm: {name} must be a tensor")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"multi_view_fusion_batchnorm: eps must be a positive number, got {eps!r}")
    args = (x, *_kernels(weight_t, weight_h, weight_w), bn_weight, bn_bias, float(eps), bool(hardswish), fused)
    _check_args("multi_view_fusion_batchnorm", x, args[1:4], bn_weight, bn_bias, fused, _BN_PAIR, True)
    if not eager(*args[:6]):
        return _mvf_bn_op(*args)
    return _MVFBatchNormFunction.apply(*args) if torch.is_grad_enabled() else _mvf_bn_impl(*args)
