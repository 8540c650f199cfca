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

Huge pages make each fault cheaper, but a fresh mapping is still zeroed by the kernel (about 5 ms for 51 MB
here), and a plain process pays that for every large output of every step. So the ops also reuse memory:
``empty_strided`` serves CPU buffers of at least ``MIN_BYTES`` from a cache of the blocks of earlier outputs that
died (a block returns to the cache when the last tensor or view on it is gone: the tensor's storage holds a
``memoryview`` of the block, and a ``weakref.finalize`` on that view gives the block back), as PyTorch's CUDA
caching allocator does on GPUs. The kernels that take these buffers write every element, so a reused block's old
contents never show. The cache keeps at most ``PVF_CPU_CACHE_MB`` MiB (default 2048) of free blocks, each rounded
up to 2 MiB; ``PVF_CPU_CACHE_MB=0`` turns it off, ``empty_cache()`` releases the free blocks and
``cache_info()`` reports them.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import sys
import threading
import weakref
from typing import Optional, Sequence

import torch
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


# ------------------------------------------------------------------ the cache of freed output blocks


class _BlockCache:
    """Free anonymous mappings by size class (a multiple of 2 MiB), most recently freed first."""

    def __init__(self):
        self.lock = threading.RLock()  # reentrant: a finalizer may run inside a garbage collection started here
        self.free: dict[int, list[tuple[mmap.mmap, int]]] = {}  # (mapping, offset of its 2 MiB-aligned start)
        self.free_bytes = 0
        self.hits = self.misses = 0
        self.limit: Optional[int] = None

    def limit_bytes(self) -> int:
        if self.limit is None:
            raw = os.environ.get("PVF_CPU_CACHE_MB", "2048").strip()
            try:
                self.limit = max(0, int(float(raw) * (1 << 20)))
            except ValueError:
                raise ValueError(f"PVF_CPU_CACHE_MB must be a number of MiB, got {raw!r}") from None
        return self.limit

    def take(self, size: int) -> Optional[tuple[mmap.mmap, int]]:
        with self.lock:
            blocks = self.free.get(size)
            if blocks:
                self.free_bytes -= size
                self.hits += 1
                return blocks.pop()
            self.misses += 1
            return None

    def give(self, size: int, block: tuple[mmap.mmap, int]) -> None:
        with self.lock:
            if self.free_bytes + size > self.limit_bytes():
                return  # over the limit: dropped, unmapped once the dying view has released it
            self.free.setdefault(size, []).append(block)
            self.free_bytes += size

    def clear(self) -> None:
        with self.lock:  # dropped blocks are unmapped as they are deallocated
            self.free.clear()
            self.free_bytes = 0


_cache = _BlockCache()


def empty_cache() -> None:
    """Returns the free blocks of the CPU output cache to the system (blocks in use return when their tensors
    die)."""
    _cache.clear()


def cache_info() -> dict:
    """``{"free_bytes", "free_blocks", "hits", "misses", "limit_bytes"}`` of the CPU output cache."""
    with _cache.lock:
        return {"free_bytes": _cache.free_bytes, "free_blocks": sum(len(b) for b in _cache.free.values()),
                "hits": _cache.hits, "misses": _cache.misses, "limit_bytes": _cache.limit_bytes()}


def _extent(size: Sequence[int], stride: Sequence[int]) -> int:
    """Elements from the first to one past the last that a (size, stride) layout addresses."""
    if any(n == 0 for n in size):
        return 0
    return 1 + sum((n - 1) * st for n, st in zip(size, stride))


def empty_strided(size: Sequence[int], stride: Sequence[int], dtype: torch.dtype,
                  device: torch.device | str = "cpu") -> Tensor:
    """``torch.empty_strided(size, stride)`` for an op's output or workspace that its kernel writes in full.

    A CPU buffer of at least ``MIN_BYTES`` comes from the cache of freed blocks (module docstring), 2 MiB-aligned
    with huge pages advised; anything else is ``torch.empty_strided`` (huge pages advised where large). The tensor
    is no view: in-place operations and autograd treat it like any other. Its contents are undefined.
    """
    device = torch.device(device)
    nbytes = _extent(size, stride) * dtype.itemsize
    if device.type != "cpu" or nbytes < MIN_BYTES or _cache.limit_bytes() == 0:
        return advise_huge_pages(torch.empty_strided(size, stride, dtype=dtype, device=device))
    block_size = (nbytes + _HUGE - 1) & ~(_HUGE - 1)
    block = _cache.take(block_size)
    if block is None:  # a fresh mapping, with room to start on a 2 MiB boundary, advised once
        mapping = mmap.mmap(-1, block_size + _HUGE)
        address = ctypes.addressof(ctypes.c_char.from_buffer(mapping))
        block = (mapping, -address % _HUGE)
        if _load():
            _madvise(address + block[1], block_size, _MADV_HUGEPAGE)
    mapping, offset = block
    view = memoryview(mapping)
    weakref.finalize(view, _cache.give, block_size, block).atexit = False
    raw = torch.frombuffer(view, dtype=torch.uint8, count=nbytes, offset=offset)
    del view  # from here on only the storage holds the view: its death returns the block
    return torch.empty(0, dtype=dtype).set_(raw.untyped_storage(), 0, size, stride)


def empty(size: Sequence[int], dtype: torch.dtype, device: torch.device | str = "cpu") -> Tensor:
    """A contiguous ``empty_strided``."""
    stride, acc = [], 1
    for n in reversed(size):
        stride.append(acc)
        acc *= max(int(n), 1)
    return empty_strided(tuple(size), tuple(reversed(stride)), dtype, device)


def empty_like(x: Tensor) -> Tensor:
    """``empty_strided`` with x's sizes, and x's strides where they are dense and non-overlapping (as
    ``torch.empty_like``), else contiguous."""
    if x.is_contiguous() or _dense_non_overlapping(x):
        return empty_strided(tuple(x.shape), tuple(x.stride()), x.dtype, x.device)
    return empty(tuple(x.shape), x.dtype, x.device)


def _dense_non_overlapping(x: Tensor) -> bool:
    dims = sorted((st, n) for n, st in zip(x.shape, x.stride()) if n != 1)
    expected = 1
    for st, n in dims:
        if st != expected:
            return False
        expected *= n
    return True
