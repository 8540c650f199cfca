"""ONNX translation of multi-view fusion: the three 3-tap views become one depthwise 3x3x3 Conv whose kernel
is zero off the three axes (built from the taps with Reshape + Pad), then the folded BatchNorm (Mul, Add),
HardSwish, and a Concat with the pass-through channels. Standard operators that TensorRT runs natively."""
from __future__ import annotations

import torch
from onnxscript import opset18 as op


def _axis_kernel(w, shape, pads):
    return op.Pad(op.Reshape(w, op.Constant(value_ints=shape)), op.Constant(value_ints=pads))


def multi_view_fusion(x, weight_t, weight_h, weight_w, bn_scale, bn_shift, hardswish: bool, fused_channels: int):
    Fc = fused_channels
    C = x.shape[1] if isinstance(x.shape[1], int) else None
    kernel = op.Add(op.Add(_axis_kernel(weight_t, [Fc, 1, 3, 1, 1], [0, 0, 0, 1, 1, 0, 0, 0, 1, 1]),
                           _axis_kernel(weight_h, [Fc, 1, 1, 3, 1], [0, 0, 1, 0, 1, 0, 0, 1, 0, 1])),
                    _axis_kernel(weight_w, [Fc, 1, 1, 1, 3], [0, 0, 1, 1, 0, 0, 0, 1, 1, 0]))
    passthrough = C is None or Fc < C
    xf = op.Slice(x, op.Constant(value_ints=[0]), op.Constant(value_ints=[Fc]), op.Constant(value_ints=[1])) \
        if passthrough else x
    y = op.Conv(xf, kernel, group=Fc, pads=[1, 1, 1, 1, 1, 1], kernel_shape=[3, 3, 3])
    if bn_scale is not None:
        y = op.Add(op.Mul(y, op.Reshape(bn_scale, op.Constant(value_ints=[1, Fc, 1, 1, 1]))),
                   op.Reshape(bn_shift, op.Constant(value_ints=[1, Fc, 1, 1, 1])))
    if hardswish:
        y = op.HardSwish(y)
    if passthrough:
        rest = op.Slice(x, op.Constant(value_ints=[Fc]), op.Constant(value_ints=[2**62]), op.Constant(value_ints=[1]))
        y = op.Concat(y, rest, axis=1)
    return y


def translations() -> dict:
    return {torch.ops.pvf.multi_view_fusion.default: multi_view_fusion}
