"""Plain-PyTorch vector quantisation, written for clarity: the oracle of the tests and the fallback backend.

``vector_quantize`` is taming-transformers' computation (``VectorQuantizer.forward``, what DAT's VQGAN runs):
``d = ||z||^2 + ||e||^2 - 2 z.e`` with one matmul, then ``argmin`` (first index of the minimum), here in row
chunks so that at most ``chunk * K`` distances exist at a time. The library's kernels sum the squared
differences directly instead (more accurate; see ``pyvision_fast.ops.vector_quantize``): the two choose the
same code except where two codes are nearly equidistant. ``squared_distances`` is that direct form, for
checking which of two choices is the nearer.

No argument validation (the compiled backends do it): meant for correct inputs.
"""
from __future__ import annotations

import torch
from torch import Tensor

# Rows per chunk: chunk * K distances exist at a time (16384 codes: 64 MiB of float32).
CHUNK_ROWS = 1024


def vector_quantize(z: Tensor, codebook: Tensor, chunk: int = CHUNK_ROWS) -> tuple[Tensor, Tensor]:
    """z (..., D), codebook (K, D) -> (z_q = codebook[indices] (..., D), indices (...) int64).
    float16 / bfloat16 distances are computed in float32 (as the kernels accumulate them)."""
    D = codebook.shape[1]
    work = torch.float32 if codebook.dtype in (torch.float16, torch.bfloat16) else codebook.dtype
    flat = z.reshape(-1, D).to(work)
    e = codebook.to(work)
    e_sq = (e * e).sum(1)  # (K,)
    parts = []
    for rows in flat.split(chunk):
        z_sq = (rows * rows).sum(1, keepdim=True)  # (n, 1)
        d = z_sq + e_sq - 2 * (rows @ e.t())  # taming's order of operations
        parts.append(d.argmin(1))
    indices = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64, device=z.device)
    z_q = codebook.index_select(0, indices)
    return z_q.reshape(z.shape), indices.reshape(z.shape[:-1])


def squared_distances(z: Tensor, codebook: Tensor, indices: Tensor) -> Tensor:
    """sum_d (z[..., d] - codebook[indices, d])^2, summed from the differences, in float64."""
    e = codebook.double().index_select(0, indices.reshape(-1)).reshape(z.shape)
    return ((z.double() - e) ** 2).sum(-1)


def vector_quantize_direct(z: Tensor, codebook: Tensor, chunk: int = 256) -> tuple[Tensor, Tensor]:
    """The kernels' formula in plain PyTorch: argmin of sum_d (z_d - e_d)^2 (row chunks of (chunk, K, D))."""
    D = codebook.shape[1]
    work = torch.float32 if codebook.dtype in (torch.float16, torch.bfloat16) else codebook.dtype
    flat, e = z.reshape(-1, D).to(work), codebook.to(work)
    parts = [((rows[:, None, :] - e[None]) ** 2).sum(-1).argmin(1) for rows in flat.split(chunk)]
    indices = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64, device=z.device)
    return codebook.index_select(0, indices).reshape(z.shape), indices.reshape(z.shape[:-1])
