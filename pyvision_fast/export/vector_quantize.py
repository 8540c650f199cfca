"""ONNX translation of vector_quantize, made of standard ONNX operators only (opset 18):

    flat   = Reshape(z, [-1, D])                                  (N, D)
    dots   = MatMul(flat, Transpose(codebook))                    (N, K)
    scores = ReduceSum(e * e, axis 1) - (dots + dots)             (N, K) = ||e||^2 - 2 z.e
    idx    = ArgMin(scores, axis 1, select_last_index=0)          first index of the minimum, as the kernels
    z_q    = Gather(codebook, idx, axis 0)                        exact codebook rows
    reshaped back to z's shape / z's shape without its last dimension.

||z||^2 is left out: it is the same for every code of a row, so it cannot change the argmin, and leaving it
out removes one rounding and one (N, K) pass. Doubling (dots + dots) is exact. This is the expanded form (one
MatMul, what TensorRT runs fastest), not the kernels' sum of squared differences: the two can differ only
where two codes are nearly equidistant. The (N, K) score matrix exists in the graph: fine for inference
batches (DAT's 128 x 32 x 32 codes against 16384 codes is 8 GiB in float32: export and run such batches in
slices).
"""
from __future__ import annotations

import torch
from onnxscript import opset18 as op


def vector_quantize(z, codebook):
    D = op.Shape(codebook, start=1, end=2)
    flat = op.Reshape(z, op.Concat(op.Constant(value_ints=[-1]), D, axis=0))
    e_sq = op.ReduceSum(op.Mul(codebook, codebook), [1], keepdims=0)  # (K,)
    dots = op.MatMul(flat, op.Transpose(codebook, perm=[1, 0]))  # (N, K)
    scores = op.Sub(e_sq, op.Add(dots, dots))
    idx = op.ArgMin(scores, axis=1, keepdims=0, select_last_index=0)  # (N,) int64
    z_q = op.Reshape(op.Gather(codebook, idx, axis=0), op.Shape(z))
    return z_q, op.Reshape(idx, op.Shape(z, start=0, end=-1))


def translations() -> dict:
    return {torch.ops.pvf.vector_quantize.default: vector_quantize}
