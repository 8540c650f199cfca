"""Huge pages for the large CPU buffers the ops allocate.

In a plain process glibc serves every block above its mmap threshold (128 KiB, rising to at most 32 MiB) with a
fresh mapping, and PyTorch's CPU allocator does not cache: each large output is new memory that the kernel
faults in and zeroes 4 KiB at a time on first touch. For a 51 MB activation that is 12,500 page faults per
tensor, which cost more than many of the kernels that write it (MVF's training step on an 8x8-frame, 1024-channel
14x14 batch: 25,000 faults per step, about two thirds of its time in a plain process).

``advise_huge_pages(t)`` asks the kernel (``madvise(MADV_HUGEPAGE)``) to back the 2 MiB-aligned interior of
``t``'s storage with 2 MiB pages, so the first touch takes one fault per 2 MiB. It is advice: where transparent
huge pages are disabled (``/sys/kernel/mm/transparent_hugepage/enabled`` = never), on other systems, for CUDA
tensors and for buffers under ``MIN_BYTES`` it does nothing. It changes no value. ``PVF_HUGE_PAGES=0`` in the
environment turns it off. (PyTorch's own ``THP_MEM_ALLOC_ENABLE=1`` does the same for every CPU allocation of
the process, when set before its first large allocation.)
"""
from __future__ import annotations

import ctypes
import os
import sys
from typing import Optional

from torch import Tensor

MIN_BYTES = 4 << 20   # buffers holding at least one whole 2 MiB page after alignment
_HUGE = 1 << 21
_MADV_HUGEPAGE = 14   # Linux

_madvise: Optional[object] = None
_enabled: Optional[bool] = None


def _load() -> bool:
    global _madvise, _enabled
    if _enabled is None:
        _enabled = False
        if sys.platform.startswith("linux") and os.environ.get("PVF_HUGE_PAGES", "1") != "0":
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fn = libc.madvise
                fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                fn.restype = ctypes.c_int
                _madvise, _enabled = fn, True
            except (OSError, AttributeError):
                pass
    return _enabled


def advise_huge_pages(t: Tensor) -> Tensor:
    """Returns ``t`` after advising huge pages for its CPU storage (see the module docstring); call it on a
    freshly allocated buffer, before anything writes to it."""
    if t.device.type != "cpu" or not _load():
        return t
    storage = t.untyped_storage()
    n = storage.nbytes()
    if n < MIN_BYTES:
        return t
    start = storage.data_ptr()
    lo = (start + _HUGE - 1) & ~(_HUGE - 1)
    hi = (start + n) & ~(_HUGE - 1)
    if hi > lo:
        _madvise(lo, hi - lo, _MADV_HUGEPAGE)  # advice: a refusal (EINVAL without THP) changes nothing
    return t
