"""Triton kernels. On CPU tensors they run only under ``TRITON_INTERPRET=1`` (the CI path)."""
from __future__ import annotations

import functools
import os

import torch


@functools.lru_cache(maxsize=None)  # asked on every dispatch that considers Triton
def installed() -> bool:
    try:
        import triton  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def available(device: torch.device) -> bool:
    """Triton kernels can run on ``device``: a CUDA GPU, or the CPU under the interpreter."""
    if not installed():
        return False
    if device.type == "cuda":
        return torch.cuda.is_available()
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"
