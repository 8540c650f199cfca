"""ONNX translations of upfirdn2d and bias_act, made of standard ONNX operators only (opset 18).

upfirdn2d (x (N, C, H, W); C, H, W fixed at export, N dynamic):

    up     = Reshape(x, [-1, C, H, 1, W, 1]) -> Pad(zeros after) -> Reshape([-1, C, H*up_y, W*up_x])
    padded = Pad(positive pads) -> Slice(crop the negative pads)
    taps   = Slice(f, steps -1 on every axis) unless flip_filter, * gain ** (f.ndim / 2), CastLike x
    out    = Conv(Reshape(padded, [-1, 1, Hp, Wp]), taps as (1, 1, fh, fw), strides (down_y, down_x))
             (a 1-D filter: two Convs, (1, 1, 1, f) along W then (1, 1, f, 1) along H with the strides)
             -> Reshape([-1, C, out_h, out_w])

One single-channel Conv over the N*C planes instead of a depthwise Conv with C groups; the strided Conv is the
convolution followed by keeping every down-th sample.

bias_act: Add(x, Reshape(b, broadcast along dim)), the activation (Relu, LeakyRelu, Tanh, Sigmoid, Elu, Selu,
Softplus, x * Sigmoid(x) for swish), Mul(gain), Clip(-clamp, clamp). ONNX's Softplus has no threshold: above
20 it computes log(exp(x) + 1), equal to x within float rounding.
"""
from __future__ import annotations

import torch
from onnxscript import opset18 as op

_INT64_MIN = -(2 ** 63)


def _ints(values):
    return op.Constant(value_ints=[int(v) for v in values])


def upfirdn2d(x, f, up: list[int], down: list[int], padding: list[int], flip_filter: bool, gain: float):
    C, H, W = int(x.shape[1]), int(x.shape[2]), int(x.shape[3])
    upx, upy = up
    downx, downy = down
    px0, px1, py0, py1 = padding
    nd = len(f.shape)
    fw, fh = int(f.shape[-1]), int(f.shape[0])
    if upx > 1 or upy > 1:
        x = op.Reshape(x, _ints([-1, C, H, 1, W, 1]))
        x = op.Pad(x, _ints([0, 0, 0, 0, 0, 0, 0, 0, 0, upy - 1, 0, upx - 1]))
        H, W = H * upy, W * upx
    x = op.Reshape(x, _ints([-1, 1, H, W]))
    if max(px0, 0) or max(px1, 0) or max(py0, 0) or max(py1, 0):
        x = op.Pad(x, _ints([0, 0, max(py0, 0), max(px0, 0), 0, 0, max(py1, 0), max(px1, 0)]))
    Hp, Wp = H + max(py0, 0) + max(py1, 0), W + max(px0, 0) + max(px1, 0)
    if min(px0, px1, py0, py1) < 0:
        x = op.Slice(x, _ints([max(-py0, 0), max(-px0, 0)]), _ints([Hp - max(-py1, 0), Wp - max(-px1, 0)]),
                     _ints([2, 3]))
    taps = f
    if not flip_filter:
        taps = op.Slice(taps, _ints([-1] * nd), _ints([_INT64_MIN] * nd), _ints(range(nd)), _ints([-1] * nd))
    scale = op.CastLike(op.Constant(value_float=gain ** (nd / 2)), x)
    taps = op.Mul(op.CastLike(taps, x), scale)
    if nd == 2:
        y = op.Conv(x, op.Reshape(taps, _ints([1, 1, fh, fw])), strides=[downy, downx])
    else:
        y = op.Conv(x, op.Reshape(taps, _ints([1, 1, 1, fw])), strides=[1, downx])
        y = op.Conv(y, op.Reshape(taps, _ints([1, 1, fw, 1])), strides=[downy, 1])
    oh = (H + py0 + py1 - fh + downy) // downy
    ow = (W + px0 + px1 - fw + downx) // downx
    return op.Reshape(y, _ints([-1, C, oh, ow]))


def bias_act(x, b, dim: int, act: int, alpha: float, gain: float, clamp: float):
    if b is not None:
        rank = len(x.shape)
        x = op.Add(x, op.Reshape(b, _ints([-1 if i == dim else 1 for i in range(rank)])))
    if act == 1:
        x = op.Relu(x)
    elif act == 2:
        x = op.LeakyRelu(x, alpha=alpha)
    elif act == 3:
        x = op.Tanh(x)
    elif act == 4:
        x = op.Sigmoid(x)
    elif act == 5:
        x = op.Elu(x, alpha=1.0)
    elif act == 6:
        x = op.Selu(x)
    elif act == 7:
        x = op.Softplus(x)
    elif act == 8:
        x = op.Mul(x, op.Sigmoid(x))
    if gain != 1:
        x = op.Mul(x, op.CastLike(op.Constant(value_float=gain), x))
    if clamp >= 0:
        lo = op.CastLike(op.Constant(value_float=-clamp), x)
        x = op.Clip(x, lo, op.CastLike(op.Constant(value_float=clamp), x))
    return x


def translations() -> dict:
    return {torch.ops.pvf.upfirdn2d.default: upfirdn2d, torch.ops.pvf.bias_act.default: bias_act}
