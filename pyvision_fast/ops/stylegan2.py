"""StyleGAN2's resampling and fused bias + activation (NVlabs stylegan2-ada-pytorch's ``upfirdn2d`` and
``bias_act`` plugins, which compile at import time), as custom ops with C++ kernels.

``upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1)`` on x (N, C, H, W), per channel:

1. upsample by zero insertion: ``up - 1`` zeros after every sample along each axis;
2. pad by (x0, x1, y0, y1) (a negative pad crops);
3. convolve with the FIR filter f: (fh, fw), or (f,) applied separably along W then H. ``flip_filter=False``
   is a true convolution (the filter flipped relative to cross-correlation), ``True`` a cross-correlation. The
   filter is scaled by ``gain ** (f.ndim / 2)`` (so the result is scaled by gain either way);
4. downsample by keeping every ``down``-th sample (the first kept).

Output size per axis: ``(in * up + pad0 + pad1 - f + down) // down``; it must be at least 1 (that is,
``in * up + pad0 + pad1 >= f``). ``up`` / ``down`` are an int or (x, y); ``padding`` an int, (x, y) or
(x0, x1, y0, y1), as NVlabs' parsers. ``f=None`` is the identity filter [[1]]. The filter is a constant: it
gets no gradient (NVlabs' op requires ``not f.requires_grad``; here a filter that requires grad is a
ValueError). The gradient with respect to x is itself an upfirdn2d (the filter flipped, up and down swapped,
the padding adjusted).

``bias_act(x, b=None, dim=1, act='linear', alpha=None, gain=None, clamp=None)``: ``y = clamp(act(x + b) *
gain, -clamp, clamp)``, b (x.shape[dim],) broadcast along ``dim``. Activations (default alpha, default gain):
linear (0, 1), relu (0, sqrt 2), lrelu (0.2, sqrt 2), tanh (0, 1), sigmoid (0, 1), elu (0, 1), selu (0, 1),
softplus (0, 1; torch's threshold 20), swish (0, sqrt 2) -- NVlabs' table; alpha matters only for lrelu.
``clamp=None`` clamps nothing; a clamp must be >= 0. Gradients reach x and b; the clamp passes gradient only
strictly inside (-clamp, clamp) (NVlabs' rule). Second-order gradients (NVlabs' op has them for the smooth
activations) are not supported: differentiating a gradient raises.

Backends: ``cpu`` (C++: polyphase along W so no inserted zero or padding is multiplied, contiguous
multiply-add loops the compiler vectorises, a 1-D filter as two 1-D passes, OpenMP over planes or rows;
bias_act's linear/relu/lrelu in C++, its transcendental activations as torch's vectorised elementwise ops),
``reference`` (the plain-PyTorch composition, ``pyvision_fast.reference.stylegan2``); on GPUs the CUDA kernels
are the candidate ``"cuda:next"`` (``PVF_CANDIDATES=upfirdn2d,bias_act`` or ``use_candidates``) until a GPU
run shows them correct and faster; until then GPUs run the plain-PyTorch composition.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from .. import _backend, _ext
from .. import _memory
from ..reference import stylegan2 as ref
from ._registry import dispatch, eager, eager_function

ACTIVATIONS = ref.ACTIVATIONS


# ------------------------------------------------------------------------------------------- argument parsing

def _int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"upfirdn2d: {name} must be an int, got {type(value).__name__}")
    return int(value)


def parse_scaling(value, name: str = "up") -> tuple[int, int]:
    """An int or (x, y) -> (x, y), each >= 1."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"upfirdn2d: {name} must be an int or (x, y), got {len(value)} values")
        sx, sy = (_int(v, name) for v in value)
    else:
        sx = sy = _int(value, name)
    if sx < 1 or sy < 1:
        raise ValueError(f"upfirdn2d: {name} must be >= 1, got {value!r}")
    return sx, sy


def parse_padding(value) -> tuple[int, int, int, int]:
    """An int, (x, y) or (x0, x1, y0, y1) -> (x0, x1, y0, y1)."""
    if isinstance(value, (list, tuple)):
        pads = [_int(v, "padding") for v in value]
        if len(pads) == 2:
            return pads[0], pads[0], pads[1], pads[1]
        if len(pads) == 4:
            return tuple(pads)
        raise ValueError(f"upfirdn2d: padding must be an int, (x, y) or (x0, x1, y0, y1), got {len(pads)} "
                         "values")
    p = _int(value, "padding")
    return p, p, p, p


def filter_size(f: Optional[Tensor]) -> tuple[int, int]:
    """(fw, fh) of a filter (a 1-D filter is applied along both axes)."""
    if f is None:
        return 1, 1
    return int(f.shape[-1]), int(f.shape[0])


def _out_size(n: int, up: int, down: int, p0: int, p1: int, f: int) -> int:
    return (n * up + p0 + p1 - f + down) // down


def _check_upfirdn2d(x, f, up, down, padding, gain) -> tuple[int, int]:
    """The checks of the C++ bindings, for every backend; returns (out_h, out_w)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"upfirdn2d: x must be a tensor, got {type(x).__name__}")
    if not isinstance(f, Tensor):
        raise TypeError(f"upfirdn2d: f must be a tensor or None, got {type(f).__name__}")
    if x.dim() != 4:
        raise ValueError(f"upfirdn2d: argument 'x' must have 4 dimensions (N, C, H, W), got shape "
                         f"{tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"upfirdn2d: argument 'x' must be float32 or float64, got {x.dtype}")
    if not f.is_floating_point():
        raise TypeError(f"upfirdn2d: argument 'f' must be a floating-point tensor, got {f.dtype}")
    if f.device != x.device:
        raise TypeError(f"upfirdn2d: argument 'f' is on {f.device} but 'x' is on {x.device}")
    if f.dim() not in (1, 2):
        raise ValueError(f"upfirdn2d: argument 'f' must have 1 dimension (separable) or 2 (fh, fw), got "
                         f"shape {tuple(f.shape)}")
    if f.numel() == 0:
        raise ValueError(f"upfirdn2d: argument 'f' must not be empty, got shape {tuple(f.shape)}")
    if f.requires_grad and torch.is_grad_enabled():
        raise ValueError("upfirdn2d: argument 'f' must not require grad: the FIR filter is a constant and "
                         "gets no gradient (pass f.detach())")
    if not isinstance(gain, numbers.Real) or isinstance(gain, bool) or not math.isfinite(gain):
        raise ValueError(f"upfirdn2d: gain must be a finite number, got {gain!r}")
    fw, fh = filter_size(f)
    H, W = int(x.shape[2]), int(x.shape[3])
    for axis, n, u, d, p0, p1, k in (("x (width)", W, up[0], down[0], padding[0], padding[1], fw),
                                     ("y (height)", H, up[1], down[1], padding[2], padding[3], fh)):
        if n * u + p0 + p1 < k:
            raise ValueError(f"upfirdn2d: argument 'padding' leaves no output along {axis}: in * up + pad0 + "
                             f"pad1 = {n} * {u} + {p0} + {p1} = {n * u + p0 + p1} is smaller than the filter "
                             f"size {k}")
    return _out_size(H, up[1], down[1], padding[2], padding[3], fh), _out_size(W, up[0], down[0], padding[0],
                                                                                 padding[1], fw)


# -------------------------------------------------------------------------------------------------- upfirdn2d

def _geometry(x: Tensor, f: Tensor, up, down, padding) -> tuple[int, int]:
    fw, fh = filter_size(f)
    return (_out_size(x.shape[2], up[1], down[1], padding[2], padding[3], fh),
            _out_size(x.shape[3], up[0], down[0], padding[0], padding[1], fw))


def _upfirdn2d_cpu(x, f, up, down, padding, flip_filter, gain):
    taps = ref.filter_taps(f, x.dtype, flip_filter, gain).contiguous()
    oh, ow = _geometry(x, f, up, down, padding)
    out = _memory.empty((x.shape[0], x.shape[1], max(oh, 0), max(ow, 0)), x.dtype)
    mod = _ext.cpu_module()
    slot = mod.upfirdn2d_workspace(x.shape[2], x.shape[3], max(ow, 0), up[0], down[0], f.dim() == 1)
    ws = torch.empty(slot * torch.get_num_threads(), dtype=x.dtype)
    mod.upfirdn2d(_ext.arg(x), _ext.arg(taps), list(up), list(down), list(padding), _ext.arg(out),
                  _ext.arg(ws))
    return out


def _upfirdn2d_cuda(x, f, up, down, padding, flip_filter, gain):
    half = x.dtype in (torch.float16, torch.bfloat16)
    acc = torch.float32 if half else x.dtype
    taps = ref.filter_taps(f, acc, flip_filter, gain).contiguous()
    oh, ow = _geometry(x, f, up, down, padding)
    out = torch.empty((x.shape[0], x.shape[1], oh, ow), dtype=x.dtype, device=x.device)
    planes = x.shape[0] * x.shape[1]
    ws = torch.empty(planes * x.shape[2] * ow if f.dim() == 1 else 0, dtype=acc, device=x.device)
    _ext.cuda_module().upfirdn2d(_ext.arg(x), _ext.arg(taps), list(up), list(down), list(padding),
                                 _ext.arg(out), _ext.arg(ws), _ext.stream(x.device))
    return out


_UPFIRDN2D_IMPLS = {"cpu": _upfirdn2d_cpu, "cuda": ref.upfirdn2d, "cuda:next": _upfirdn2d_cuda,
                    "reference": ref.upfirdn2d}
_backend.register_candidate("upfirdn2d", "cuda:next")


def _upfirdn2d_impl(x: Tensor, f: Tensor, up: list[int], down: list[int], padding: list[int],
                    flip_filter: bool, gain: float) -> Tensor:
    impl = dispatch("upfirdn2d", x.device, _UPFIRDN2D_IMPLS)
    return impl(x.contiguous(), f.contiguous(), tuple(up), tuple(down), tuple(padding), flip_filter, gain)


_upfirdn2d_op = torch.library.custom_op("pvf::upfirdn2d", mutates_args=())(_upfirdn2d_impl)


@_upfirdn2d_op.register_fake
def _(x, f, up, down, padding, flip_filter, gain):
    oh, ow = _geometry(x, f, up, down, padding)
    return x.new_empty((x.shape[0], x.shape[1], oh, ow))


def _upfirdn2d_setup(ctx, inputs, output):
    x, f, up, down, padding, flip_filter, gain = inputs
    ctx.save_for_backward(f)
    ctx.args = (tuple(x.shape[2:]), tuple(output.shape[2:]), tuple(up), tuple(down), tuple(padding),
                flip_filter, gain)


def backward_padding(in_hw, out_hw, f_wh, up, down, padding) -> list[int]:
    """The padding of the upfirdn2d that maps grad_out back to grad_x (up and down swapped, the filter
    flipped): per axis pad0' = f - pad0 - 1 and pad1' = in * up - out * down + pad0 - up + 1, so that grad_x
    has the input's size."""
    (H, W), (oh, ow), (fw, fh) = in_hw, out_hw, f_wh
    return [fw - padding[0] - 1, W * up[0] - ow * down[0] + padding[0] - up[0] + 1,
            fh - padding[2] - 1, H * up[1] - oh * down[1] + padding[2] - up[1] + 1]


def _upfirdn2d_backward(ctx, grad):
    """grad_x is upfirdn2d of grad (up and down swapped, the filter flipped): the op itself, so under
    ``create_graph`` the backward is differentiable again (R1 and path-length regularisation need it)."""
    (f,) = ctx.saved_tensors
    in_hw, out_hw, up, down, padding, flip_filter, gain = ctx.args
    grad_x = None
    if ctx.needs_input_grad[0]:
        pad = backward_padding(in_hw, out_hw, filter_size(f), up, down, padding)
        args = (grad, f, list(down), list(up), pad, not flip_filter, gain)
        if not torch.is_grad_enabled():
            grad_x = _upfirdn2d_impl(*args) if eager(grad, f) else _upfirdn2d_op(*args)
        else:
            grad_x = _Upfirdn2dFunction.apply(*args) if eager(grad, f) else _upfirdn2d_op(*args)
    return grad_x, None, None, None, None, None, None


_upfirdn2d_op.register_autograd(_upfirdn2d_backward, setup_context=_upfirdn2d_setup)
_Upfirdn2dFunction = eager_function("_Upfirdn2dFunction", _upfirdn2d_impl, _upfirdn2d_setup,
                                    _upfirdn2d_backward, double_backward=True)


def upfirdn2d(x: Tensor, f: Optional[Tensor], up: Union[int, Sequence[int]] = 1,
              down: Union[int, Sequence[int]] = 1, padding: Union[int, Sequence[int]] = 0,
              flip_filter: bool = False, gain: float = 1) -> Tensor:
    """Upsample, pad, FIR-filter and downsample every channel of ``x`` (see the module docstring).

    Args:
        x: (N, C, H, W) float tensor (float32/float64; float16/bfloat16 on GPUs), any strides.
        f: FIR filter (fh, fw), or (f,) applied separably along W then H, or None (identity); float, on x's
            device, not requiring grad (cast to x's dtype).
        up: upsampling factor, int or (x, y), >= 1.
        down: downsampling factor, int or (x, y), >= 1.
        padding: int, (x, y) or (x0, x1, y0, y1); negative values crop.
        flip_filter: False (default) convolves, True correlates.
        gain: overall scaling (the filter is multiplied by gain ** (f.ndim / 2)).

    Returns: (N, C, out_h, out_w) of x's dtype, out = (in * up + pad0 + pad1 - f + down) // down per axis.
    """
    upt, downt, pad = parse_scaling(up, "up"), parse_scaling(down, "down"), parse_padding(padding)
    if f is None and isinstance(x, Tensor):
        f = torch.ones((1, 1), dtype=torch.float32, device=x.device)
    if not isinstance(flip_filter, bool):
        raise TypeError(f"upfirdn2d: flip_filter must be a bool, got {type(flip_filter).__name__}")
    _check_upfirdn2d(x, f, upt, downt, pad, gain)
    args = (x, f, list(upt), list(downt), list(pad), flip_filter, float(gain))
    if eager(x, f):
        return _Upfirdn2dFunction.apply(*args)
    return _upfirdn2d_op(*args)


# --------------------------------------------------------------------------------------------------- bias_act

# The activations the C++ CPU kernel runs: StyleGAN2's (linear, relu, lrelu), whose loops vectorise. The
# others (tanh, sigmoid, elu, selu, softplus, swish) call scalar libm there, ~15x slower than torch's
# vectorised elementwise ops, so the CPU backend runs them as the plain-PyTorch composition (the kernel still
# implements them, as the CUDA kernel does; the tests call it directly).
_CPU_KERNEL_ACTS = (0, 1, 2)


def _bias_act_cpu(x, b, dim, act, alpha, gain, clamp):
    if act not in _CPU_KERNEL_ACTS:
        return _bias_act_ref(x, b, dim, act, alpha, gain, clamp)
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    _ext.cpu_module().bias_act(_ext.arg(x), _ext.opt(b), dim, act, alpha, gain, clamp, _ext.arg(y))
    return y


def _bias_act_cuda(x, b, dim, act, alpha, gain, clamp):
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    _ext.cuda_module().bias_act(_ext.arg(x), _ext.opt(b), dim, act, alpha, gain, clamp, _ext.arg(y),
                                _ext.stream(x.device))
    return y


def _bias_act_ref(x, b, dim, act, alpha, gain, clamp):
    return ref.bias_act(x, b, dim, ref.ACT_NAMES[act], alpha, gain, None if clamp < 0 else clamp)


_BIAS_ACT_IMPLS = {"cpu": _bias_act_cpu, "cuda": _bias_act_ref, "cuda:next": _bias_act_cuda,
                   "reference": _bias_act_ref}
_backend.register_candidate("bias_act", "cuda:next")


def _bias_act_impl(x: Tensor, b: Optional[Tensor], dim: int, act: int, alpha: float, gain: float,
                   clamp: float) -> Tensor:
    impl = dispatch("bias_act", x.device, _BIAS_ACT_IMPLS)
    return impl(x.contiguous(), None if b is None else b.contiguous(), dim, act, alpha, gain, clamp)


_bias_act_op = torch.library.custom_op("pvf::bias_act", mutates_args=())(_bias_act_impl)


@_bias_act_op.register_fake
def _(x, b, dim, act, alpha, gain, clamp):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _bias_act_backward_cpu(dy, x, b, dim, act, alpha, gain, clamp):
    if act not in _CPU_KERNEL_ACTS:
        return _bias_act_backward_ref(dy, x, b, dim, act, alpha, gain, clamp)
    dx = torch.empty_like(x, memory_format=torch.contiguous_format)
    _ext.cpu_module().bias_act_backward(_ext.arg(dy), _ext.arg(x), _ext.opt(b), dim, act, alpha, gain, clamp,
                                        _ext.arg(dx))
    return dx


def _bias_act_backward_cuda(dy, x, b, dim, act, alpha, gain, clamp):
    dx = torch.empty_like(x, memory_format=torch.contiguous_format)
    _ext.cuda_module().bias_act_backward(_ext.arg(dy), _ext.arg(x), _ext.opt(b), dim, act, alpha, gain, clamp,
                                         _ext.arg(dx), _ext.stream(x.device))
    return dx


def _bias_act_backward_ref(dy, x, b, dim, act, alpha, gain, clamp):
    return ref.bias_act_grad(dy, x, b, dim, ref.ACT_NAMES[act], alpha, gain, None if clamp < 0 else clamp)


_BIAS_ACT_BACKWARD_IMPLS = {"cpu": _bias_act_backward_cpu, "cuda": _bias_act_backward_ref,
                            "cuda:next": _bias_act_backward_cuda, "reference": _bias_act_backward_ref}


def _bias_act_backward_impl(dy: Tensor, x: Tensor, b: Optional[Tensor], dim: int, act: int, alpha: float,
                            gain: float, clamp: float) -> Tensor:
    impl = dispatch("bias_act_backward", x.device, _BIAS_ACT_BACKWARD_IMPLS)
    return impl(dy.contiguous(), x.contiguous(), None if b is None else b.contiguous(), dim, act, alpha, gain,
                clamp)


_bias_act_backward_op = torch.library.custom_op("pvf::bias_act_backward",
                                                mutates_args=())(_bias_act_backward_impl)


@_bias_act_backward_op.register_fake
def _(dy, x, b, dim, act, alpha, gain, clamp):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


# Activations whose derivative is piecewise constant (clamping included): their second derivative is zero
# almost everywhere, so the backward's own gradient is the backward op applied to the incoming gradient.
_PIECEWISE_LINEAR_ACTS = (0, 1, 2)


def _bias_act_grad_x(dy, x, b, dim, act, alpha, gain, clamp) -> Tensor:
    """dx of bias_act given dy. Under ``create_graph`` it is differentiable again: in dy through the backward
    op's own autograd (piecewise-linear activations), in everything through the plain-PyTorch composition for
    the smooth activations (whose second derivative is not zero)."""
    args = (dy, x, b, dim, act, alpha, gain, clamp)
    plain = eager(dy, x, b)
    if not torch.is_grad_enabled():
        return _bias_act_backward_impl(*args) if plain else _bias_act_backward_op(*args)
    if act not in _PIECEWISE_LINEAR_ACTS:
        return _bias_act_backward_ref(*args)
    return _BiasActGradFunction.apply(*args) if plain else _bias_act_backward_op(*args)


def _bias_act_grad_setup(ctx, inputs, output):
    dy, x, b, dim, act, alpha, gain, clamp = inputs
    ctx.save_for_backward(x, b)
    ctx.args = (dim, act, alpha, gain, clamp)


def _bias_act_grad_backward(ctx, g):
    """Gradient of dx (linear in dy, piecewise constant in x and b) for a piecewise-linear activation."""
    x, b = ctx.saved_tensors
    ddy = _bias_act_grad_x(g, x, b, *ctx.args) if ctx.needs_input_grad[0] else None
    return ddy, None, None, None, None, None, None, None


_bias_act_backward_op.register_autograd(_bias_act_grad_backward, setup_context=_bias_act_grad_setup)
_BiasActGradFunction = eager_function("_BiasActGradFunction", _bias_act_backward_impl, _bias_act_grad_setup,
                                      _bias_act_grad_backward, double_backward=True)


def _bias_act_setup(ctx, inputs, output):
    x, b, dim, act, alpha, gain, clamp = inputs
    ctx.save_for_backward(x, b)
    ctx.args = (dim, act, alpha, gain, clamp)


def _bias_act_backward(ctx, grad):
    x, b = ctx.saved_tensors
    dim, act, alpha, gain, clamp = ctx.args
    dx = _bias_act_grad_x(grad, x, b, dim, act, alpha, gain, clamp)
    db = None
    if b is not None and ctx.needs_input_grad[1]:
        db = dx.sum([d for d in range(dx.dim()) if d != dim]) if dx.dim() > 1 else dx
    return (dx if ctx.needs_input_grad[0] else None), db, None, None, None, None, None


_bias_act_op.register_autograd(_bias_act_backward, setup_context=_bias_act_setup)
_BiasActFunction = eager_function("_BiasActFunction", _bias_act_impl, _bias_act_setup, _bias_act_backward,
                                  double_backward=True)


def _real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"bias_act: {name} must be a finite number, got {value!r}")
    return float(value)


def bias_act(x: Tensor, b: Optional[Tensor] = None, dim: int = 1, act: str = "linear",
             alpha: Optional[float] = None, gain: Optional[float] = None,
             clamp: Optional[float] = None) -> Tensor:
    """Fused bias, activation, gain and clamp (see the module docstring).

    Args:
        x: float tensor of any shape (float32/float64; float16/bfloat16 on GPUs), any strides.
        b: None or (x.shape[dim],) of x's dtype and device.
        dim: the dimension of x that b runs along (negative counts from the end).
        act: one of ``ACTIVATIONS`` (linear, relu, lrelu, tanh, sigmoid, elu, selu, softplus, swish).
        alpha: lrelu's negative slope (None: 0.2).
        gain: None for the activation's default gain (sqrt 2 for relu, lrelu and swish, else 1).
        clamp: None, or clamp the output to [-clamp, clamp] (clamp >= 0).

    Returns: y of x's shape and dtype.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"bias_act: x must be a tensor, got {type(x).__name__}")
    if b is not None and not isinstance(b, Tensor):
        raise TypeError(f"bias_act: b must be a tensor or None, got {type(b).__name__}")
    if not isinstance(act, str) or act not in ACTIVATIONS:
        raise ValueError(f"bias_act: unknown act {act!r}; expected one of {sorted(ACTIVATIONS)}")
    code, def_alpha, def_gain = ACTIVATIONS[act]
    alpha = def_alpha if alpha is None else _real(alpha, "alpha")
    gain = def_gain if gain is None else _real(gain, "gain")
    if clamp is not None:
        clamp = _real(clamp, "clamp")
        if clamp < 0:
            raise ValueError(f"bias_act: clamp must be >= 0 (or None for no clamp), got {clamp}")
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"bias_act: dim must be an int, got {type(dim).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"bias_act: argument 'x' must be float32 or float64, got {x.dtype}")
    scalar = x.dim() == 0
    if scalar:
        x = x.reshape(1)
    nd = x.dim()
    if b is not None:
        if not -nd <= dim < nd:
            raise ValueError(f"bias_act: argument 'dim' must be in [{-nd}, {nd}) for x of shape "
                             f"{tuple(x.shape)}, got {dim}")
        dim = int(dim) % nd
        if b.dim() != 1 or b.shape[0] != x.shape[dim]:
            raise ValueError(f"bias_act: argument 'b' must have shape (x.shape[dim],) = ({x.shape[dim]},), "
                             f"got {tuple(b.shape)}")
        if b.dtype != x.dtype:
            raise TypeError(f"bias_act: arguments 'b' ({b.dtype}) and 'x' ({x.dtype}) must have the same "
                            "dtype")
        if b.device != x.device:
            raise TypeError(f"bias_act: argument 'b' is on {b.device} but 'x' is on {x.device}")
    else:
        dim = 0
    args = (x, b, dim, code, alpha, gain, -1.0 if clamp is None else clamp)
    y = _BiasActFunction.apply(*args) if eager(x, b) else _bias_act_op(*args)
    return y.reshape(()) if scalar else y
