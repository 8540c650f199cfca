"""Shared host-side helpers of the Triton kernels (configurations, dot precision, index limits)."""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Index math in the kernels is 32-bit: every tensor they address must hold fewer elements than this.
INDEX_LIMIT = 2**31


def configs(tuned: list[tuple[int, ...]], names: tuple[str, ...], default: tuple[int, ...],
            interpret: tuple[int, ...]) -> list:
    """Autotune configurations from (block sizes..., num_warps, num_stages) tuples: the interpreter gets one small
    configuration, ``PVF_TRITON_AUTOTUNE=0`` (tests) one default, GPUs the tuned list."""
    def make(t):
        return triton.Config(dict(zip(names, t[:len(names)])), num_warps=t[len(names)], num_stages=t[len(names) + 1])

    if INTERPRET:
        return [make(interpret)]
    if os.environ.get("PVF_TRITON_AUTOTUNE") == "0":
        return [make(default)]
    return [make(t) for t in tuned]


def precision(dtype: torch.dtype) -> str:
    """tl.dot's input precision: tf32 tensor cores for float32 where torch allows them for matrix products
    (``torch.backends.cuda.matmul.allow_tf32``), IEEE float32 otherwise; ignored for the other dtypes."""
    return "tf32" if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"


def tuned_pair(dtype: torch.dtype) -> str:
    """Which configuration list a dot of this dtype tunes over: "fma" (IEEE float32: FMA loops, which hold the
    reduction slice in registers and want narrow chunks) or "mma" (tensor cores: tf32, float16, bfloat16; and
    float64 under the interpreter)."""
    return "fma" if precision(dtype) == "ieee" and dtype == torch.float32 else "mma"


def accumulator(dtype: torch.dtype):
    """The kernels' accumulation and sampling type: float64 for float64 (the interpreter's gradient checks), float32
    otherwise (float16 and bfloat16 accumulate in float32)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def target_programs(device: torch.device) -> int:
    """How many programs a split-reduction grid aims for: a few waves of the GPU's SMs (4 under the interpreter)."""
    if device.type != "cuda":
        return 4
    return 4 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def fits(*tensors_or_sizes) -> bool:
    """Whether every tensor (or element count) is addressable with 32-bit index math."""
    return all((t.numel() if isinstance(t, torch.Tensor) else int(t)) < INDEX_LIMIT for t in tensors_or_sizes)
