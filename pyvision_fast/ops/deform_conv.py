"""Deformable convolution v1/v2 with torchvision's semantics (``torchvision.ops.deform_conv2d``).

The compiled kernels (csrc/deform_conv) build the bilinear sampling columns (B, C*kh*kw, Ho*Wo) and their
transposes (gradients of input, offset and mask); the matrix products with the weight run in torch (MKL /
cuBLAS), over chunks of the batch whose columns fit a budget (cache-sized on CPUs; on GPUs large enough that a
typical batch is one chunk: one im2col and one batched GEMM).

Candidate (``triton``, opt-in until a GPU run verifies it, see ``pyvision_fast._backend``): implicit GEMMs on the
channels-last input that sample into registers and never write columns (``pyvision_fast.triton.deform_conv``).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Union

import torch
from torch import Tensor

from .. import _backend, _ext
from .. import _memory
from ..reference import deform_conv as ref
from ._registry import backward_impl, dispatch, eager, eager_function, forward_choice

# Columns of one chunk stay below this many bytes. CPU: large enough for efficient GEMMs, small enough to stay in
# the last-level cache share of a core group rather than streaming through memory. GPU: every chunk costs an
# im2col and a GEMM launch (and the backward two more of each), so a batch is split only when its columns would
# take a large share of the device's memory.
COLUMN_BUDGET_BYTES = 8 << 20
CUDA_COLUMN_BUDGET_BYTES = 512 << 20


class _Kernels(NamedTuple):
    im2col: Callable
    col2im: Callable


def _im2col_cpu(input, offset, mask, conv):
    B, C, H, W = input.shape
    cols = _memory.empty((B, C * conv[0] * conv[1], offset.shape[2] * offset.shape[3]), input.dtype, input.device)
    _ext.cpu_module().deform_im2col(_ext.arg(input), _ext.arg(offset), _ext.opt(mask), tuple(conv), _ext.arg(cols))
    return cols


def _col2im_cpu(input, offset, mask, conv, grad_columns):
    gi, go = _memory.empty_like(input), torch.empty_like(offset)
    gm = None if mask is None else torch.empty_like(mask)
    _ext.cpu_module().deform_col2im(_ext.arg(input), _ext.arg(offset), _ext.opt(mask), tuple(conv),
                                    _ext.arg(grad_columns), _ext.arg(gi), _ext.arg(go), _ext.opt(gm))
    return gi, go, gm


def _im2col_cuda(input, offset, mask, conv):
    B, C, H, W = input.shape
    cols = input.new_empty(B, C * conv[0] * conv[1], offset.shape[2] * offset.shape[3])
    _ext.cuda_module().deform_im2col(_ext.arg(input), _ext.arg(offset), _ext.opt(mask), tuple(conv),
                                     _ext.arg(cols), _ext.stream(input.device))
    return cols


def _col2im_cuda(input, offset, mask, conv, grad_columns):
    acc = torch.float32 if input.dtype in (torch.float16, torch.bfloat16) else input.dtype
    gi = torch.empty(input.shape, dtype=acc, device=input.device)
    go = torch.empty_like(offset)
    gm = None if mask is None else torch.empty_like(mask)
    _ext.cuda_module().deform_col2im(_ext.arg(input), _ext.arg(offset), _ext.opt(mask), tuple(conv),
                                     _ext.arg(grad_columns), _ext.arg(gi), _ext.arg(go), _ext.opt(gm),
                                     _ext.stream(input.device))
    return gi.to(input.dtype), go, gm


_KERNELS = {"cpu": _Kernels(_im2col_cpu, _col2im_cpu), "cuda": _Kernels(_im2col_cuda, _col2im_cuda),
            "reference": _Kernels(ref.im2col, ref.col2im)}


def _chunks(input: Tensor, offset: Tensor, conv) -> range:
    B, C = input.shape[:2]
    per_image = C * conv[0] * conv[1] * offset.shape[2] * offset.shape[3] * input.element_size()
    budget = CUDA_COLUMN_BUDGET_BYTES if input.is_cuda else COLUMN_BUDGET_BYTES
    step = max(1, min(B, budget // max(per_image, 1)))
    return range(0, B, step) if B else range(0)


def _forward(k: _Kernels, input, weight, offset, mask, bias, conv):
    B, C = input.shape[:2]
    Cout, Cg = weight.shape[:2]
    groups = C // Cg
    Ho, Wo = offset.shape[2:]
    Kc = Cg * conv[0] * conv[1]
    w = weight.reshape(groups, Cout // groups, Kc)
    out = _memory.empty((B, Cout, Ho, Wo), input.dtype, input.device)
    chunks = _chunks(input, offset, conv)
    for b0 in chunks:
        sl = slice(b0, b0 + chunks.step)
        cols = k.im2col(input[sl], offset[sl], None if mask is None else mask[sl], conv)
        n = cols.shape[0]
        out[sl] = torch.matmul(w, cols.view(n, groups, Kc, Ho * Wo)).view(n, Cout, Ho, Wo)
    if bias is not None:
        out += bias.view(1, Cout, 1, 1)
    return out


def _backward(k: _Kernels, grad, input, weight, offset, mask, bias, conv):
    B, C = input.shape[:2]
    Cout, Cg = weight.shape[:2]
    groups = C // Cg
    Ho, Wo = offset.shape[2:]
    P, Kc = Ho * Wo, Cg * conv[0] * conv[1]
    w = weight.reshape(groups, Cout // groups, Kc)
    grad_input, grad_offset = _memory.empty_like(input), torch.empty_like(offset)
    grad_mask = None if mask is None else torch.empty_like(mask)
    grad_weight = torch.zeros_like(w)
    chunks = _chunks(input, offset, conv)
    for b0 in chunks:
        sl = slice(b0, b0 + chunks.step)
        m = None if mask is None else mask[sl]
        g = grad[sl].reshape(-1, groups, Cout // groups, P)
        n = g.shape[0]
        grad_cols = torch.matmul(w.transpose(1, 2), g).view(n, C * Kc // Cg, P)
        gi, go, gm = k.col2im(input[sl], offset[sl], m, conv, grad_cols)
        grad_input[sl], grad_offset[sl] = gi, go
        if gm is not None:
            grad_mask[sl] = gm
        cols = k.im2col(input[sl], offset[sl], m, conv).view(n, groups, Kc, P)
        grad_weight += torch.matmul(g, cols.transpose(-1, -2)).sum(0)
    grad_bias = None if bias is None else grad.sum(dim=(0, 2, 3))
    return grad_input, grad_weight.view(weight.shape), grad_offset, grad_mask, grad_bias


def _contiguous(*tensors):
    return [None if t is None else t.contiguous() for t in tensors]


def _conv(stride, padding, dilation, weight) -> list[int]:
    return [weight.shape[2], weight.shape[3], *stride, *padding, *dilation]


_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _out_size(n: int, k: int, s: int, p: int, d: int) -> int:
    """Output size along one axis as the C++ bindings (and torchvision) compute it: C++ integer division, which
    truncates toward zero (an input one tap short of the kernel with stride >= 2 still gives one output)."""
    span = n + 2 * p - (d * (k - 1) + 1)
    return (span // s if span >= 0 else -(-span // s)) + 1


def _check_args(input, weight, offset, mask, bias, conv) -> None:
    """Every relation between the arguments' sizes that the C++ bindings check before the column kernels
    (csrc/bindings/deform_conv_args.h, same messages), for every backend: the public function runs it before
    dispatch, and the Triton and reference implementations run it when the custom op is called directly (the
    Triton kernels index with these sizes unchecked, the reference would broadcast or fail inside torch)."""
    kh, kw, sh, sw, ph, pw, dh, dw = conv
    op = "deform_conv2d"
    if min(sh, sw) < 1:
        raise ValueError(f"{op}: stride must be >= 1, got ({sh}, {sw})")
    if min(dh, dw) < 1:
        raise ValueError(f"{op}: dilation must be >= 1, got ({dh}, {dw})")
    if min(ph, pw) < 0:
        raise ValueError(f"{op}: padding must be >= 0, got ({ph}, {pw})")
    for name, t in (("input", input), ("offset", offset), ("weight", weight)):
        if t.dim() != 4:
            raise ValueError(f"{op}: {name} must have 4 dimensions, got shape {tuple(t.shape)}")
        if t.dtype != input.dtype or t.device != input.device:
            raise TypeError(f"{op}: {name} ({t.dtype}, {t.device}) must match input ({input.dtype}, {input.device})")
    if input.dtype not in _FLOATS:
        raise TypeError(f"{op}: input must be float32 or float64 (or float16/bfloat16), got {input.dtype}")
    B, C, H, W = input.shape
    Cout, Cg = weight.shape[:2]
    if min(kh, kw) < 1 or Cg == 0 or C % Cg or Cout % (C // Cg):
        raise ValueError(f"{op}: weight {tuple(weight.shape)} does not fit {C} input channels")
    Ho, Wo = _out_size(H, kh, sh, ph, dh), _out_size(W, kw, sw, pw, dw)
    if Ho < 1 or Wo < 1:
        raise ValueError(f"{op}: the output would be empty ({Ho}x{Wo}) for a {H}x{W} input")
    K = kh * kw
    if offset.shape[1] == 0 or offset.shape[1] % (2 * K):
        raise ValueError(f"{op}: offset has {offset.shape[1]} channels, expected a positive multiple of "
                         f"2 * kh * kw = {2 * K}")
    og = offset.shape[1] // (2 * K)
    if C % og:
        raise ValueError(f"{op}: input channels ({C}) must be divisible by offset groups ({og})")
    if tuple(offset.shape) != (B, 2 * og * K, Ho, Wo):
        raise ValueError(f"{op}: offset must have shape {(B, 2 * og * K, Ho, Wo)}, got {tuple(offset.shape)}")
    for name, t, shape in (("mask", mask, (B, og * K, Ho, Wo)), ("bias", bias, (Cout,))):
        if t is not None and (tuple(t.shape) != shape or t.dtype != input.dtype or t.device != input.device):
            raise ValueError(f"{op}: {name} must be a {input.dtype} tensor of shape {shape} on {input.device}, got "
                             f"{t.dtype} {tuple(t.shape)} on {t.device}")


def _check_grad(grad, input, weight, offset) -> None:
    B, Cout = input.shape[0], weight.shape[0]
    if tuple(grad.shape) != (B, Cout, *offset.shape[2:]) or grad.dtype != input.dtype:
        raise ValueError(f"deform_conv2d_backward: grad must be a {input.dtype} tensor of shape "
                         f"{(B, Cout, *offset.shape[2:])}, got {grad.dtype} {tuple(grad.shape)}")


def _triton_forward(input, weight, offset, mask, bias, conv):
    from ..triton import deform_conv as tri  # noqa: PLC0415 - optional dependency

    _check_args(input, weight, offset, mask, bias, conv)
    if not tri.supported(input, weight, offset):  # float64 on a GPU, sizes past 32-bit indexing
        return _forward(_KERNELS["cuda" if input.is_cuda else "cpu"], input, weight, offset, mask, bias, conv)
    return tri.forward(input, weight, offset, mask, bias, conv)


def _triton_backward(grad, input, weight, offset, mask, bias, conv):
    from ..triton import deform_conv as tri  # noqa: PLC0415 - optional dependency

    _check_args(input, weight, offset, mask, bias, conv)
    _check_grad(grad, input, weight, offset)
    if not tri.supported(input, weight, offset):
        return _backward(_KERNELS["cuda" if input.is_cuda else "cpu"], grad, input, weight, offset, mask, bias, conv)
    return tri.backward(grad, input, weight, offset, mask, bias, conv)


def _columns(kind: str):
    k = _KERNELS[kind]
    return (lambda *a: _forward(k, *a)), (lambda *a: _backward(k, *a))


_FORWARD = {kind: _columns(kind)[0] for kind in _KERNELS}
_BACKWARD = {kind: _columns(kind)[1] for kind in _KERNELS}
_FORWARD["triton"], _BACKWARD["triton"] = _triton_forward, _triton_backward


def _checked_reference_forward(input, weight, offset, mask, bias, conv):
    _check_args(input, weight, offset, mask, bias, conv)
    return _forward(_KERNELS["reference"], input, weight, offset, mask, bias, conv)


def _checked_reference_backward(grad, input, weight, offset, mask, bias, conv):
    _check_args(input, weight, offset, mask, bias, conv)
    _check_grad(grad, input, weight, offset)
    return _backward(_KERNELS["reference"], grad, input, weight, offset, mask, bias, conv)


_FORWARD["reference"], _BACKWARD["reference"] = _checked_reference_forward, _checked_reference_backward
_backend.prefer("deform_conv2d", "triton")  # H200-verified 2026-12-04 (gpu-runs.md)


def _deform_conv2d_impl(input: Tensor, weight: Tensor, offset: Tensor, mask: Optional[Tensor], bias: Optional[Tensor],
                        stride: list[int], padding: list[int], dilation: list[int]) -> Tensor:
    impl = dispatch("deform_conv2d", input.device, _FORWARD)
    return impl(*_contiguous(input, weight, offset, mask, bias), _conv(stride, padding, dilation, weight))


_deform_conv2d_op = torch.library.custom_op("pvf::deform_conv2d", mutates_args=())(_deform_conv2d_impl)


@_deform_conv2d_op.register_fake
def _(input, weight, offset, mask, bias, stride, padding, dilation):
    return input.new_empty(input.shape[0], weight.shape[0], offset.shape[2], offset.shape[3])


def _deform_conv2d_backward_impl(grad: Tensor, input: Tensor, weight: Tensor, offset: Tensor, mask: Optional[Tensor],
                                 bias: Optional[Tensor], stride: list[int], padding: list[int], dilation: list[int],
                                 backend: str = "") -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of input, weight, offset, mask and bias (empty tensors for an absent mask or bias). ``backend``:
    the implementation the forward ran (the autograd setup records it), "" for the automatic choice."""
    impl = backward_impl("deform_conv2d_backward", backend, input.device, _BACKWARD)
    gi, gw, go, gm, gb = impl(*_contiguous(grad, input, weight, offset, mask, bias),
                              _conv(stride, padding, dilation, weight))
    return gi, gw, go, input.new_empty(0) if gm is None else gm, input.new_empty(0) if gb is None else gb


_deform_conv2d_backward_op = torch.library.custom_op("pvf::deform_conv2d_backward",
                                                     mutates_args=())(_deform_conv2d_backward_impl)


@_deform_conv2d_backward_op.register_fake
def _(grad, input, weight, offset, mask, bias, stride, padding, dilation, backend=""):
    return (torch.empty_like(input), torch.empty_like(weight), torch.empty_like(offset),
            input.new_empty(0) if mask is None else torch.empty_like(mask),
            input.new_empty(0) if bias is None else torch.empty_like(bias))


def _setup(ctx, inputs, output):
    input, weight, offset, mask, bias, stride, padding, dilation = inputs
    ctx.save_for_backward(input, weight, offset, mask, bias)
    ctx.conv = (stride, padding, dilation)
    ctx.backend = forward_choice("deform_conv2d", input.device, _FORWARD)


def _backward_with(backward_op):
    def backward(ctx, grad):
        input, weight, offset, mask, bias = ctx.saved_tensors
        gi, gw, go, gm, gb = backward_op(grad, input, weight, offset, mask, bias, *ctx.conv, ctx.backend)
        return gi, gw, go, None if mask is None else gm, None if bias is None else gb, None, None, None

    return backward


_deform_conv2d_op.register_autograd(_backward_with(_deform_conv2d_backward_op), setup_context=_setup)
_DeformConv2dFunction = eager_function("_DeformConv2dFunction", _deform_conv2d_impl, _setup,
                                       _backward_with(_deform_conv2d_backward_impl))


def _pair(v: Union[int, tuple, list], name: str) -> list[int]:
    if isinstance(v, bool) or not isinstance(v, (int, tuple, list)):
        raise TypeError(f"deform_conv2d: {name} must be an int or a pair of ints, got {type(v).__name__}")
    pair = [v, v] if isinstance(v, int) else list(v)
    if len(pair) != 2 or not all(isinstance(p, int) and not isinstance(p, bool) for p in pair):
        raise TypeError(f"deform_conv2d: {name} must be an int or a pair of ints, got {v!r}")
    return pair


class DeformConvValueError(ValueError, RuntimeError):
    """A bad argument of ``deform_conv2d``: a ValueError, and a RuntimeError as torchvision raises, so code
    written for either catches it."""


class DeformConvTypeError(TypeError, RuntimeError):
    """A wrongly typed argument of ``deform_conv2d`` (dtype, device, not a tensor): a TypeError and, as in
    torchvision, a RuntimeError."""


def deform_conv2d(input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                  stride: Union[int, tuple[int, int]] = 1, padding: Union[int, tuple[int, int]] = 0,
                  dilation: Union[int, tuple[int, int]] = 1, mask: Optional[Tensor] = None) -> Tensor:
    """Deformable convolution (DCNv1, and DCNv2 with ``mask``), a drop-in for ``torchvision.ops.deform_conv2d``.

    Args:
        input: (B, C_in, H, W).
        offset: (B, 2 * offset_groups * kh * kw, Ho, Wo); channel 2 (g kh kw + k) is the y offset and the next
            one the x offset of tap k = i * kw + j of offset group g (channels are split into offset_groups
            consecutive groups).
        weight: (C_out, C_in / groups, kh, kw); groups = C_in / weight.shape[1].
        bias: (C_out,) or None.
        stride, padding, dilation: ints or pairs (padding is zero padding: samples outside the image read 0).
        mask: (B, offset_groups * kh * kw, Ho, Wo) modulation (DCNv2) or None.

    Returns (B, C_out, Ho, Wo), Ho = (H + 2 ph - dh (kh - 1) - 1) // sh + 1 (likewise Wo). Differentiable in
    input, offset, weight, mask and bias. float32/float64 on CPU; also float16/bfloat16 on CUDA (sampling in
    float32). A NaN offset samples NaN (torchvision's value); its gradients treat the tap as outside the image.
    Bad arguments raise ``DeformConvValueError`` / ``DeformConvTypeError``, which are also RuntimeErrors (what
    torchvision raises).
    """
    try:
        return _deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask)
    except (ValueError, TypeError) as exc:
        if isinstance(exc, RuntimeError):
            raise
        cls = DeformConvValueError if isinstance(exc, ValueError) else DeformConvTypeError
        raise cls(str(exc)).with_traceback(exc.__traceback__) from None


def _deform_conv2d(input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                   stride: Union[int, tuple[int, int]] = 1, padding: Union[int, tuple[int, int]] = 0,
                   dilation: Union[int, tuple[int, int]] = 1, mask: Optional[Tensor] = None) -> Tensor:
    """``deform_conv2d`` without the error translation."""
    for name, t in (("input", input), ("offset", offset), ("weight", weight)):
        if not isinstance(t, Tensor):
            raise TypeError(f"deform_conv2d: {name} must be a tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"deform_conv2d: {name} must have 4 dimensions, got shape {tuple(t.shape)}")
    stride, padding, dilation = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    C, Cout, Cg = input.shape[1], weight.shape[0], weight.shape[1]
    if Cg == 0 or C % Cg:
        raise ValueError(f"deform_conv2d: input channels ({C}) must be a multiple of weight.shape[1] ({Cg})")
    groups = C // Cg
    if Cout % groups:
        raise ValueError(f"deform_conv2d: output channels ({Cout}) must be divisible by groups ({groups})")
    for name, t in (("offset", offset), ("weight", weight), ("bias", bias), ("mask", mask)):
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"deform_conv2d: {name} must be a tensor, got {type(t).__name__}")
        if t.dtype != input.dtype:
            raise TypeError(f"deform_conv2d: {name} ({t.dtype}) and input ({input.dtype}) must have the same dtype")
        if t.device != input.device:
            raise TypeError(f"deform_conv2d: {name} is on {t.device} but input is on {input.device}")
    if bias is not None and tuple(bias.shape) != (Cout,):
        raise ValueError(f"deform_conv2d: bias must have shape ({Cout},), got {tuple(bias.shape)}")
    for name, t in (("offset", offset), ("mask", mask)):  # the kernels may see batch chunks: check it here
        if t is not None and (t.dim() < 1 or t.shape[0] != input.shape[0]):
            raise ValueError(f"deform_conv2d: {name} has batch size {t.shape[0] if t.dim() else None}, input "
                             f"{input.shape[0]}; they must be equal (got {name} {tuple(t.shape)}, input "
                             f"{tuple(input.shape)})")
    _check_args(input, weight, offset, mask, bias, _conv(stride, padding, dilation, weight))
    args = (input, weight, offset, mask, bias, stride, padding, dilation)
    return _DeformConv2dFunction.apply(*args) if eager(*args[:5]) else _deform_conv2d_op(*args)


