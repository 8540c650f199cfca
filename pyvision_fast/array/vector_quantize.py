"""Vector quantisation on NumPy / CuPy arrays: ``pyvision_fast.ops.vector_quantize`` without torch (same
arguments, checks and results; no gradients). The nearest codebook row of every channels-last vector, by the
squared Euclidean distance summed from the differences, ties to the lowest index, a NaN distance never
selected (see ``pyvision_fast.ops.vector_quantize``). NumPy arrays run the CPU kernel; CuPy arrays the CUDA
kernel on CuPy's current stream (the torch op keeps that kernel opt-in until a GPU run verifies it).
"""
from __future__ import annotations

import numpy as np

from . import _core


def vector_quantize(z, codebook, straight_through: bool = False):
    """Nearest codebook rows of the channels-last vectors ``z``.

    Args:
        z: (..., D) float array (float32/float64; float16 too on CuPy), any strides (copied when not
            contiguous).
        codebook: (K, D) array of z's dtype and device, K >= 1.
        straight_through: return ``z + (z_q - z)`` as the first output, the value of the torch op's
            straight-through output (arrays carry no gradient; the argument keeps the signature).

    Returns: (z_q (..., D) = codebook[indices], indices (...) int64): indices[i] = argmin_k sum_d (z[i, d] -
    e[k, d])^2, ties to the lowest index.
    """
    op = "vector_quantize"
    if not isinstance(straight_through, bool):
        raise TypeError(f"vector_quantize: straight_through must be a bool, got "
                        f"{type(straight_through).__name__}")
    a = _core.arrays(op, z=z, codebook=codebook)
    z, codebook = _core.contiguous(a["z"]), _core.contiguous(a["codebook"])
    z_q = _core.empty(z, z.shape, z.dtype)
    indices = _core.empty(z, z.shape[:-1] if z.ndim else (), np.int64)
    if _core.is_cuda(z):
        d = _core.describe
        with _core.device_of(z):
            _core.cuda_module().vector_quantize(d(z, op, "z"), d(codebook, op, "codebook"), d(z_q, op, "z_q"),
                                                d(indices, op, "indices"), _core.stream())
    else:
        mod = _core.cpu_module()
        K, D = _core.dims(codebook, 2)
        ws = np.empty(mod.vector_quantize_workspace(K, D) if K >= 1 and D >= 1 else 0, dtype=z.dtype)
        mod.vector_quantize(z, codebook, z_q, indices, ws)
    if straight_through:
        z_q = z + (z_q - z)
    return z_q, indices
