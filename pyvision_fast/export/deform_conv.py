"""ONNX translation of deformable convolution with standard operators: the sampling positions (a Range grid
plus the offsets) normalised for GridSample (bilinear, zero padding, align_corners=0: exactly torchvision's
sampling with partial weights at the border), one GridSample per (image, offset group) over all taps, the mask
as a Mul, then the grouped matrix product with the weight (MatMul) and the bias (Add)."""
from __future__ import annotations

import torch
from onnxscript import FLOAT
from onnxscript import opset18 as op


def _ints(values):
    return op.Constant(value_ints=list(values))


def deform_conv2d(input, weight, offset, mask, bias, stride: list[int], padding: list[int], dilation: list[int]):
    Cout, Cg, kh, kw = (int(d) for d in weight.shape)
    C = int(input.shape[1])
    K = kh * kw
    OG = int(offset.shape[1]) // (2 * K)
    groups, Cpg = C // Cg, C // OG
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation

    ho = op.Shape(offset, start=2, end=3)
    wo = op.Shape(offset, start=3, end=4)
    zero, one = op.Constant(value_int=0), op.Constant(value_int=1)
    ys = op.Cast(op.Range(zero, op.Squeeze(ho), one), to=FLOAT.dtype) * float(sh) - float(ph)
    xs = op.Cast(op.Range(zero, op.Squeeze(wo), one), to=FLOAT.dtype) * float(sw) - float(pw)
    tap_y = op.Constant(value_floats=[float(i * dh) for i in range(kh) for _ in range(kw)])
    tap_x = op.Constant(value_floats=[float(j * dw) for _ in range(kh) for j in range(kw)])
    base_y = op.Add(op.Reshape(tap_y, _ints([K, 1, 1])), op.Reshape(ys, _ints([1, -1, 1])))  # (K, Ho, 1)
    base_x = op.Add(op.Reshape(tap_x, _ints([K, 1, 1])), op.Reshape(xs, _ints([1, 1, -1])))  # (K, 1, Wo)

    off = op.Reshape(offset, op.Concat(_ints([-1, OG, K, 2]), ho, wo, axis=0))  # (B, OG, K, 2, Ho, Wo)
    y = op.Add(base_y, op.Gather(off, op.Constant(value_int=0), axis=3))  # (B, OG, K, Ho, Wo)
    x = op.Add(base_x, op.Gather(off, op.Constant(value_int=1), axis=3))
    size = op.Cast(op.Shape(input, start=2, end=4), to=FLOAT.dtype)  # (H, W)
    h = op.Gather(size, op.Constant(value_int=0))
    w = op.Gather(size, op.Constant(value_int=1))
    gy = op.Sub(op.Div(op.Add(op.Mul(y, 2.0), 1.0), h), 1.0)
    gx = op.Sub(op.Div(op.Add(op.Mul(x, 2.0), 1.0), w), 1.0)
    k_ho = op.Mul(ho, _ints([K]))
    grid = op.Reshape(op.Concat(op.Unsqueeze(gx, _ints([-1])), op.Unsqueeze(gy, _ints([-1])), axis=-1),
                      op.Concat(_ints([-1]), k_ho, wo, _ints([2]), axis=0))  # (B*OG, K*Ho, Wo, 2)
    planes = op.Reshape(input, op.Concat(_ints([-1, Cpg]), op.Shape(input, start=2, end=4), axis=0))
    sampled = op.GridSample(op.CastLike(planes, grid), grid, align_corners=0, mode="bilinear",
                            padding_mode="zeros")  # (B*OG, Cpg, K*Ho, Wo)
    if mask is not None:
        sampled = op.Mul(sampled, op.Reshape(mask, op.Concat(_ints([-1, 1]), k_ho, wo, axis=0)))
    cols = op.Reshape(sampled, op.Concat(_ints([-1, groups, Cg * K]), op.Mul(ho, wo), axis=0))
    out = op.MatMul(op.Reshape(weight, _ints([groups, Cout // groups, Cg * K])), cols)  # (B, groups, Cout/g, P)
    out = op.Reshape(out, op.Concat(op.Shape(input, start=0, end=1), _ints([Cout]), ho, wo, axis=0))
    if bias is not None:
        out = op.Add(out, op.Reshape(bias, _ints([1, Cout, 1, 1])))
    return out


def translations() -> dict:
    return {torch.ops.pvf.deform_conv2d.default: deform_conv2d}
