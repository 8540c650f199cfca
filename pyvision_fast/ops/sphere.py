"""Spherical convolution with a fixed sampling table (``pyvision_fast.geometry.equirect``), channels last.

The columns are gathered through a batch-invariant table of four source pixels and bilinear weights per (output
location, tap) from the channels-last image, so every table entry serves all channels at once, and each chunk of
output rows is one GEMM with the weight as (kh kw C_in, C_out); the output comes out channels last (an
``(B, C_out, Ho, Wo)`` tensor in ``torch.channels_last`` layout). Gradients for the input, the weight and the bias;
the table is fixed geometry (no gradient). Tables are validated once (``equirect.validate``), never per call.

Candidate (``triton``, opt-in until a GPU run verifies it, see ``pyvision_fast._backend``): implicit GEMMs that
gather the sampled tile in registers and never write columns (``pyvision_fast.triton.sphere``); its backward
gathers the input gradient through the table's transpose, without atomics.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _backend, _ext
from ..geometry import equirect
from ..geometry.equirect import SamplingTable
from ._registry import backward_impl, dispatch, eager, eager_function, forward_choice

# Columns of one chunk of output rows stay below this many bytes (one buffer, rewritten for every chunk): large
# enough that each chunk is one efficient GEMM, small next to the activations. GPUs take far larger chunks.
COLUMN_BUDGET_BYTES = 32 << 20
CUDA_COLUMN_BUDGET_BYTES = 512 << 20


def _im2col_cpu(image, index, weight, r0, r1, out):
    _ext.cpu_module().sphere_im2col(_ext.arg(image), _ext.arg(index), _ext.arg(weight), r0, r1, _ext.arg(out))


def _col2im_cpu(grad_columns, index, weight, r0, r1, grad_image):
    _ext.cpu_module().sphere_col2im(_ext.arg(grad_columns), _ext.arg(index), _ext.arg(weight), r0, r1,
                                    _ext.arg(grad_image))


def _im2col_cuda(image, index, weight, r0, r1, out):
    _ext.cuda_module().sphere_im2col(_ext.arg(image), _ext.arg(index), _ext.arg(weight), r0, r1, _ext.arg(out),
                                     _ext.stream(image.device))


def _col2im_cuda(grad_columns, index, weight, r0, r1, grad_image):
    _ext.cuda_module().sphere_col2im(_ext.arg(grad_columns), _ext.arg(index), _ext.arg(weight), r0, r1,
                                     _ext.arg(grad_image), _ext.stream(grad_columns.device))


def _rows(P: int, r0: int, r1: int, device) -> tuple[Tensor, Tensor]:
    r = torch.arange(r0, r1, device=device)
    return r // P, r % P


def _im2col_ref(image, index, weight, r0, r1, out):
    B, H, W, C = image.shape
    b, p = _rows(index.shape[0], r0, r1, image.device)
    flat = image.reshape(B, H * W, C)
    corners = flat[b[:, None, None], index[p].long()]  # (n, K, 4, C)
    out.copy_((corners * weight[p][..., None]).sum(2))


def _col2im_ref(grad_columns, index, weight, r0, r1, grad_image):
    B, H, W, C = grad_image.shape
    b, p = _rows(index.shape[0], r0, r1, grad_columns.device)
    contrib = grad_columns[:, :, None, :] * weight[p][..., None]  # (n, K, 4, C)
    target = (b[:, None, None] * (H * W) + index[p].long()).reshape(-1)
    grad_image.view(B * H * W, C).index_add_(0, target, contrib.reshape(-1, C).to(grad_image.dtype))


_IMPLS = {"cpu": (_im2col_cpu, _col2im_cpu), "cuda": (_im2col_cuda, _col2im_cuda),
          "reference": (_im2col_ref, _col2im_ref)}


def _pixels_channels(x: Tensor) -> Tensor:
    """(B, C, H, W) -> a (B, H, W, C) view the kernels read directly (channels_last: contiguous channels; the plain
    layout: strided channels); other layouts are copied to channels_last."""
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        x = x.contiguous(memory_format=torch.channels_last)
    return x.permute(0, 2, 3, 1)


def _chunk_rows(K: int, C: int, x: Tensor) -> int:
    budget = CUDA_COLUMN_BUDGET_BYTES if x.is_cuda else COLUMN_BUDGET_BYTES
    return max(1, budget // max(K * C * x.element_size(), 1))


def _weight_rows(weight: Tensor) -> Tensor:
    """(C_out, C_in, kh, kw) -> (kh kw C_in, C_out): the column layout's row order (tap-major, channel-minor)."""
    Cout, C, kh, kw = weight.shape
    return weight.permute(2, 3, 1, 0).reshape(kh * kw * C, Cout)  # explicit sizes: C_out may be 0


def _forward(impl, input, weight, bias, index, tweight, out_h, out_w):
    B, C = input.shape[:2]
    Cout, P, K = weight.shape[0], index.shape[0], index.shape[1]
    image = _pixels_channels(input)
    w = _weight_rows(weight)
    out = input.new_empty(B, out_h, out_w, Cout)
    rows = out.view(B * P, Cout)
    step = _chunk_rows(K, C, input)
    cols = input.new_empty(min(step, B * P), K, C)
    for r0 in range(0, B * P, step):
        r1 = min(B * P, r0 + step)
        impl[0](image, index, tweight, r0, r1, cols[:r1 - r0])
        if bias is None:
            torch.mm(cols[:r1 - r0].view(r1 - r0, K * C), w, out=rows[r0:r1])
        else:
            torch.addmm(bias, cols[:r1 - r0].view(r1 - r0, K * C), w, out=rows[r0:r1])
    return out.permute(0, 3, 1, 2)


def _backward(impl, grad, input, weight, index, tweight, has_bias):
    B, C, H, W = input.shape
    Cout, P, K = weight.shape[0], index.shape[0], index.shape[1]
    image = _pixels_channels(input)
    w = _weight_rows(weight)
    g = grad.permute(0, 2, 3, 1).contiguous().view(B * P, Cout)
    half = input.is_cuda and input.dtype in (torch.float16, torch.bfloat16)
    grad_image = torch.zeros(B, H, W, C, dtype=torch.float32 if half else input.dtype, device=input.device)
    grad_w = torch.zeros_like(w)
    step = _chunk_rows(K, C, input)
    cols = input.new_empty(min(step, B * P), K, C)
    for r0 in range(0, B * P, step):
        r1 = min(B * P, r0 + step)
        gc = torch.matmul(g[r0:r1], w.t()).view(r1 - r0, K, C)
        impl[1](gc, index, tweight, r0, r1, grad_image)
        impl[0](image, index, tweight, r0, r1, cols[:r1 - r0])
        grad_w.addmm_(cols[:r1 - r0].view(r1 - r0, K * C).t(), g[r0:r1])
    kh_kw = weight.shape[2:]
    grad_weight = grad_w.view(*kh_kw, C, Cout).permute(3, 2, 0, 1).contiguous()
    grad_bias = g.sum(0) if has_bias else input.new_empty(0)
    return grad_image.to(input.dtype).permute(0, 3, 1, 2), grad_weight, grad_bias


def _channels_last_empty(B: int, C: int, H: int, W: int, like: Tensor) -> Tensor:
    return like.new_empty(B, H, W, C).permute(0, 3, 1, 2)


def _native(device: torch.device) -> str:
    return "cuda" if device.type == "cuda" else "cpu"


def _columns_forward(kind: str):
    return lambda *args: _forward(_IMPLS[kind], *args)


def _columns_backward(kind: str):
    return lambda *args: _backward(_IMPLS[kind], *args)


def _check_args(input, weight, bias, index, tweight, rows=None) -> None:
    """What the C++ bindings check before the column kernels (csrc/bindings/sphere_args.h), for the Triton kernels,
    which index with these sizes unchecked (table entries they clamp into the image), and the reference, which
    would fail inside torch. Reached through the public function and through the custom op called directly."""
    op = "sphere_conv2d"
    if input.dim() != 4 or input.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise ValueError(f"{op}: input must be a floating (B, C, H, W) tensor, got {input.dtype} {tuple(input.shape)}")
    if index.dtype != torch.int32 or index.dim() != 3 or index.shape[2] != 4:
        raise ValueError(f"{op}: table_index must be an int32 (P, K, 4) tensor, got {index.dtype} "
                         f"{tuple(index.shape)}")
    if tweight.shape != index.shape or tweight.dtype != input.dtype:
        raise ValueError(f"{op}: table_weight must be a {input.dtype} tensor of shape {tuple(index.shape)}, got "
                         f"{tweight.dtype} {tuple(tweight.shape)}")
    P, K = index.shape[:2]
    if rows is not None and rows != P:
        raise ValueError(f"{op}: the table has {P} output locations, the output {rows}")
    if (weight.dim() != 4 or weight.shape[1] != input.shape[1] or weight.shape[2] * weight.shape[3] != K
            or weight.dtype != input.dtype):
        raise ValueError(f"{op}: weight must be a {input.dtype} (C_out, {input.shape[1]}, kh, kw) tensor with "
                         f"kh * kw = {K}, got {weight.dtype} {tuple(weight.shape)}")
    if bias is not None and (tuple(bias.shape) != (weight.shape[0],) or bias.dtype != input.dtype):
        raise ValueError(f"{op}: bias must be a {input.dtype} tensor of shape ({weight.shape[0]},), got "
                         f"{bias.dtype} {tuple(bias.shape)}")


def _triton_forward(input, weight, bias, index, tweight, out_h, out_w):
    from ..triton import sphere as tri  # noqa: PLC0415 - optional dependency

    _check_args(input, weight, bias, index, tweight, out_h * out_w)
    if not tri.supported(input, weight, index):
        return _forward(_IMPLS[_native(input.device)], input, weight, bias, index, tweight, out_h, out_w)
    return tri.forward(input, weight, bias, index, tweight, out_h, out_w)


def _triton_backward(grad, input, weight, index, tweight, has_bias):
    from ..triton import sphere as tri  # noqa: PLC0415 - optional dependency

    _check_args(input, weight, None, index, tweight)
    want = (input.shape[0], weight.shape[0], index.shape[0])
    if grad.dim() != 4 or (grad.shape[0], grad.shape[1], grad.shape[2] * grad.shape[3]) != want:
        raise ValueError(f"sphere_conv2d_backward: grad must be (B, C_out, H_out, W_out) with B, C_out, "
                         f"H_out * W_out = {want}, got {tuple(grad.shape)}")
    transposed = None
    if tri.supported(input, weight, index):
        transposed = equirect.transposed_table(index, input.shape[2], input.shape[3])
    if transposed is None:  # float64 on a GPU, small channel counts, strided tables: the column kernels
        return _backward(_IMPLS[_native(input.device)], grad, input, weight, index, tweight, has_bias)
    return tri.backward(grad, input, weight, index, tweight, transposed, has_bias)


def _reference_forward(input, weight, bias, index, tweight, out_h, out_w):
    _check_args(input, weight, bias, index, tweight, out_h * out_w)
    return _forward(_IMPLS["reference"], input, weight, bias, index, tweight, out_h, out_w)


_FORWARD = {"cpu": _columns_forward("cpu"), "cuda": _columns_forward("cuda"),
            "reference": _reference_forward, "triton": _triton_forward}
_BACKWARD = {"cpu": _columns_backward("cpu"), "cuda": _columns_backward("cuda"),
             "reference": _columns_backward("reference"), "triton": _triton_backward}
_backend.prefer("sphere_conv2d", "triton")  # H200-verified 2026-12-04 (gpu-runs.md)


def _sphere_conv2d_impl(input: Tensor, weight: Tensor, bias: Optional[Tensor], table_index: Tensor,
                        table_weight: Tensor, out_h: int, out_w: int) -> Tensor:
    impl = dispatch("sphere_conv2d", input.device, _FORWARD)
    return impl(input, weight, bias, table_index.contiguous(), table_weight.contiguous(), out_h, out_w)


_sphere_conv2d_op = torch.library.custom_op("pvf::sphere_conv2d", mutates_args=())(_sphere_conv2d_impl)


@_sphere_conv2d_op.register_fake
def _(input, weight, bias, table_index, table_weight, out_h, out_w):
    return _channels_last_empty(input.shape[0], weight.shape[0], out_h, out_w, input)


def _sphere_conv2d_backward_impl(grad: Tensor, input: Tensor, weight: Tensor, table_index: Tensor,
                                 table_weight: Tensor, has_bias: bool, backend: str = "") -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of input, weight and bias (empty without bias); ``backend``: the implementation the forward ran
    (the autograd setup records it), "" for the automatic choice."""
    impl = backward_impl("sphere_conv2d_backward", backend, input.device, _BACKWARD)
    return impl(grad, input, weight.contiguous(), table_index.contiguous(), table_weight.contiguous(), has_bias)


_sphere_conv2d_backward_op = torch.library.custom_op("pvf::sphere_conv2d_backward",
                                                     mutates_args=())(_sphere_conv2d_backward_impl)


@_sphere_conv2d_backward_op.register_fake
def _(grad, input, weight, table_index, table_weight, has_bias, backend=""):
    return (_channels_last_empty(*input.shape, like=input), torch.empty_like(weight, memory_format=torch.contiguous_format),
            input.new_empty(weight.shape[0] if has_bias else 0))


def _setup(ctx, inputs, output):
    input, weight, bias, table_index, table_weight, _, _ = inputs
    ctx.save_for_backward(input, weight, table_index, table_weight)
    ctx.has_bias = bias is not None
    ctx.backend = forward_choice("sphere_conv2d", input.device, _FORWARD)


def _backward_with(backward_op):
    def backward(ctx, grad):
        input, weight, table_index, table_weight = ctx.saved_tensors
        gi, gw, gb = backward_op(grad, input, weight, table_index, table_weight, ctx.has_bias, ctx.backend)
        return gi, gw, gb if ctx.has_bias else None, None, None, None, None

    return backward


_sphere_conv2d_op.register_autograd(_backward_with(_sphere_conv2d_backward_op), setup_context=_setup)
_SphereConv2dFunction = eager_function("_SphereConv2dFunction", _sphere_conv2d_impl, _setup,
                                       _backward_with(_sphere_conv2d_backward_impl))


def _check_table(table: SamplingTable, input: Tensor) -> None:
    """A table whose parts agree: index (Ho * Wo, kh * kw, 4) int32 for its out_size and kernel_size, weight of
    index's shape, both on input's device (a SamplingTable built by hand may disagree with itself)."""
    (Ho, Wo), (kh, kw) = table.out_size, table.kernel_size
    index, tweight = table.index, table.weight
    if not isinstance(index, Tensor) or not isinstance(tweight, Tensor):
        raise TypeError("sphere_conv2d: table.index and table.weight must be tensors")
    if index.dtype != torch.int32:
        raise TypeError(f"sphere_conv2d: table.index must be int32, got {index.dtype}")
    if index.device != input.device:
        raise TypeError(f"sphere_conv2d: table.index is on {index.device} but input is on {input.device}")
    if tuple(index.shape) != (Ho * Wo, kh * kw, 4):
        raise ValueError(f"sphere_conv2d: table.index must have shape (Ho * Wo, kh * kw, 4) = "
                         f"{(Ho * Wo, kh * kw, 4)} for out_size {(Ho, Wo)} and kernel_size {(kh, kw)}, got "
                         f"{tuple(index.shape)}")
    if tweight.shape != index.shape:
        raise ValueError(f"sphere_conv2d: table.weight must have table.index's shape {tuple(index.shape)}, got "
                         f"{tuple(tweight.shape)}")


def sphere_conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor], table: SamplingTable) -> Tensor:
    """Convolution of an ERP image whose taps are read through ``table`` (see
    ``pyvision_fast.geometry.equirect.sampling_table``).

    Args:
        input: (B, C_in, H, W) with (H, W) = table.in_size (channels_last layout avoids a copy).
        weight: (C_out, C_in, kh, kw) with (kh, kw) = table.kernel_size.
        bias: (C_out,) or None.
        table: a SamplingTable on input's device, its weights in input's dtype. Its index is validated on first
            use (tables from ``sampling_table`` are valid by construction) and remembered, not read again.

    Returns (B, C_out, Ho, Wo) in channels_last layout, (Ho, Wo) = table.out_size; differentiable in input,
    weight and bias. float32/float64 on CPU; also float16/bfloat16 on CUDA.
    """
    if not isinstance(input, Tensor) or input.dim() != 4:
        raise ValueError(f"sphere_conv2d: input must be (B, C, H, W), got "
                         f"{tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__}")
    if not isinstance(table, SamplingTable):
        raise TypeError(f"sphere_conv2d: table must be a SamplingTable, got {type(table).__name__}")
    if tuple(input.shape[2:]) != tuple(table.in_size):
        raise ValueError(f"sphere_conv2d: the table was built for {table.in_size[0]}x{table.in_size[1]} images, "
                         f"got {input.shape[2]}x{input.shape[3]}")
    kh, kw = table.kernel_size
    if not isinstance(weight, Tensor) or tuple(weight.shape[1:]) != (input.shape[1], kh, kw):
        raise ValueError(f"sphere_conv2d: weight must be (C_out, {input.shape[1]}, {kh}, {kw}), got "
                         f"{tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__}")
    for name, t in (("weight", weight), ("bias", bias), ("table.weight", table.weight)):
        if t is not None and (t.dtype != input.dtype or t.device != input.device):
            raise TypeError(f"sphere_conv2d: {name} ({t.dtype}, {t.device}) must match input ({input.dtype}, "
                            f"{input.device})")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"sphere_conv2d: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    _check_table(table, input)
    equirect.validate(table)
    Ho, Wo = table.out_size
    args = (input, weight, bias, table.index, table.weight, Ho, Wo)
    return _SphereConv2dFunction.apply(*args) if eager(*args[:5]) else _sphere_conv2d_op(*args)
