"""Vector quantisation cases: DAT's VQGAN f8 16384 quantiser (taming's VectorQuantizer), latents of
(B, 4, 32, 32) for 256x256 images flattened channels-last to (B*32*32, 4) vectors, against a 16384 x 4
codebook.

Peers: ``torch.cdist + argmin`` (the idiom the op replaces; it materialises the (N, K) distance matrix, 8 GiB
in float32 for the full DAT batch) and the plain-PyTorch reference (taming's ||z||^2 + ||e||^2 - 2 z.e with a
matmul, in chunks of 1024 rows). Every implementation returns the quantised vectors and the indices. The full
DAT batch (B = 128) is the workload; B = 8 runs in seconds on a small CPU."""
from __future__ import annotations

import torch

from pyvision_fast import ops
from pyvision_fast.reference import vector_quantize as ref

from .harness import Case, Impl, candidate_impl

CODES, DIM, SIDE = 16384, 4, 32  # VQGAN f8 16384: 16384 codes of 4 channels, 32 x 32 latents at 256 x 256


def _cdist_argmin(z, codebook):
    idx = torch.cdist(z, codebook).argmin(1)
    return codebook[idx], idx


def _dat_case(device: str, quick: bool, batch: int, g: torch.Generator) -> Case:
    B = 2 if quick else batch
    N = B * SIDE * SIDE
    codebook = torch.randn(CODES, DIM, generator=g).to(device)
    latents = torch.randn(B, DIM, SIDE, SIDE, generator=g).to(device)
    z = latents.permute(0, 2, 3, 1).reshape(N, DIM)  # what the VQGAN passes: contiguous channels-last vectors
    impls = [Impl("pvf.vector_quantize", lambda: ops.vector_quantize(z, codebook), "ours"),
             # GPUs run the chunked PyTorch path until the CUDA kernel (the candidate) is verified
             candidate_impl("pvf.vector_quantize (candidate)", ["vector_quantize"],
                            lambda: ops.vector_quantize(z, codebook)) if device == "cuda" else None,
             Impl("torch.cdist + argmin", lambda: _cdist_argmin(z, codebook)),
             Impl("reference (taming formula, chunked)", lambda: ref.vector_quantize(z, codebook),
                  "reference")]
    return Case("vector_quantize", f"vector_quantize DAT B={batch}", dict(B=B, N=N, K=CODES, D=DIM), impls,
                flops=3.0 * N * CODES * DIM, bound="compute", measure_memory=True,
                goals=[("torch.cdist + argmin", 5.0)] if device == "cpu" else [],
                note="FLOPs: a subtract, multiply and add per code, channel and vector (3 N K D); the CPU "
                     "goal (>= 5x cdist + argmin, peak memory <= 1/10 of it) is issue 14's.")


def cases(device: str, quick: bool) -> list[Case]:
    g = torch.Generator().manual_seed(0)
    return [_dat_case(device, quick, batch, g) for batch in (128, 8)]
