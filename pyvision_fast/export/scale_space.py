"""ONNX translation of the scale-space ops.

filter_bank: the (B, C, H, W) input becomes (B*C, 1, H, W), is padded once by the largest radius R (Pad with
mode reflect / edge / constant), filtered along W by one Conv with S output channels (the kernel rows, zero
beyond each scale's radius, so the extra padding is never read), then along H by one grouped Conv; a Reshape
and Transpose give (B, S, C, H, W). scale_attention: Abs, Mul, Softmax over the scale axis, Mul.
"""
from __future__ import annotations

import torch
from onnxscript import opset18 as op

_PAD_MODES = {0: "constant", 1: "reflect", 2: "edge"}


def filter_bank(x, kernels, radii: list[int], boundary: int):
    S = len(radii)
    L = 2 * max(radii) + 1 if S else 1
    R = (L - 1) // 2
    planes = op.Reshape(x, op.Constant(value_ints=[-1, 1, 0, 0]))  # (B*C, 1, H, W)
    padded = op.Pad(planes, op.Constant(value_ints=[0, 0, R, R, 0, 0, R, R]), mode=_PAD_MODES[boundary])
    k = op.Slice(kernels, op.Constant(value_ints=[0]), op.Constant(value_ints=[L]), op.Constant(value_ints=[1]))
    rows = op.Conv(padded, op.Reshape(k, op.Constant(value_ints=[S, 1, 1, L])), kernel_shape=[1, L])
    cols = op.Conv(rows, op.Reshape(k, op.Constant(value_ints=[S, 1, L, 1])), kernel_shape=[L, 1], group=S)
    bc = op.Shape(x, start=0, end=2)
    hw = op.Shape(x, start=2, end=4)
    out = op.Reshape(cols, op.Concat(bc, op.Constant(value_ints=[S]), hw, axis=0))  # (B, C, S, H, W)
    return op.Transpose(out, perm=[0, 2, 1, 3, 4])


def scale_attention(y, gain):
    S = op.CastLike(op.Shape(gain), y)
    logits = op.Mul(op.Abs(y), op.Reshape(gain, op.Constant(value_ints=[1, -1, 1])))
    return op.Mul(op.Mul(op.Softmax(logits, axis=1), y), S)


def translations() -> dict:
    return {torch.ops.pvf.filter_bank.default: filter_bank,
            torch.ops.pvf.scale_attention.default: scale_attention}
