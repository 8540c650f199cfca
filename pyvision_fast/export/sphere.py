"""ONNX translation of the sampling-table convolution: the table is a pair of constants; Gather of the flattened
image at the table's indices, Mul by its bilinear weights, ReduceSum over the four corners, then MatMul with the
weight (as (C kh kw, C_out)) and the bias (Add)."""
from __future__ import annotations

import torch
from onnxscript import opset18 as op


def sphere_conv2d(input, weight, bias, table_index, table_weight, out_h: int, out_w: int):
    Cout, C = int(weight.shape[0]), int(weight.shape[1])
    P, K = int(table_index.shape[0]), int(table_index.shape[1])
    flat = op.Reshape(input, op.Constant(value_ints=[0, 0, -1]))  # (B, C, H*W)
    corners = op.Gather(flat, table_index, axis=2)  # (B, C, P, K, 4)
    cols = op.ReduceSum(op.Mul(corners, table_weight), op.Constant(value_ints=[-1]), keepdims=0)  # (B, C, P, K)
    cols = op.Reshape(op.Transpose(cols, perm=[0, 2, 1, 3]), op.Constant(value_ints=[0, P, C * K]))
    w = op.Transpose(op.Reshape(weight, op.Constant(value_ints=[Cout, C * K])), perm=[1, 0])  # (C*K, Cout)
    out = op.Transpose(op.MatMul(cols, w), perm=[0, 2, 1])  # (B, Cout, P)
    out = op.Reshape(out, op.Constant(value_ints=[0, Cout, out_h, out_w]))
    if bias is not None:
        out = op.Add(out, op.Reshape(bias, op.Constant(value_ints=[1, Cout, 1, 1])))
    return out


def translations() -> dict:
    return {torch.ops.pvf.sphere_conv2d.default: sphere_conv2d}
