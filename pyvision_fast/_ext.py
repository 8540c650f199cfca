"""Loading of the compiled modules, what is available, and tensor -> kernel-argument conversion.

The compiled modules (``_C`` for CPU, ``_C_cuda`` for CUDA) take array descriptions rather than torch
tensors, so they link against nothing of torch and one build serves every torch version.
"""
from __future__ import annotations

import importlib
from typing import Optional

import torch

from . import _cpu_isa

_DTYPE_CODES = {
    torch.float32: 0,
    torch.float64: 1,
    torch.float16: 2,
    torch.bfloat16: 3,
    torch.int32: 4,
    torch.int64: 5,
    torch.bool: 6,
    torch.uint8: 7,
}

_modules: dict[str, object] = {}
_errors: dict[str, str] = {}


def _load(name: str):
    if name not in _modules and name not in _errors:
        try:
            # "_C" is the CPU module of the best instruction set this CPU runs (_cpu_isa)
            _modules[name] = _cpu_isa.load() if name == "_C" else importlib.import_module(f"pyvision_fast.{name}")
        except ImportError as exc:  # not built, or built for another Python
            _errors[name] = str(exc)
    return _modules.get(name)


def load_error(name: str) -> Optional[str]:
    """Why ``_C`` / ``_C_cuda`` failed to import (None if it loaded or was not tried)."""
    _load(name)
    return _errors.get(name)


def cpu_module():
    """The ``_C`` module with its thread count synchronised to ``torch.get_num_threads()``, or None."""
    mod = _load("_C")
    if mod is not None:
        n = torch.get_num_threads()
        if mod.get_num_threads() != n:  # asked each call: pyvision_fast.array may have set it in between
            mod.set_num_threads(n)
    return mod


def cuda_module():
    """The ``_C_cuda`` module, or None when it was not built."""
    return _load("_C_cuda")


def cuda_device_status() -> tuple[int, str]:
    """(device count, message) as the static CUDA runtime inside ``_C_cuda`` sees it."""
    mod = cuda_module()
    if mod is None:
        return 0, "_C_cuda not built"
    return tuple(mod.device_status())


def cuda_usable() -> bool:
    return cuda_module() is not None and torch.cuda.is_available() and cuda_device_status()[0] > 0


def arg(t: torch.Tensor) -> tuple:
    """Describe a tensor for the kernels: (data_ptr, dtype code, device type, device index, sizes, strides)."""
    code = _DTYPE_CODES.get(t.dtype)
    if code is None:
        raise TypeError(f"unsupported dtype {t.dtype}")
    if t.is_cpu:  # the properties, not t.device: this runs for every tensor of every kernel call
        dev, index = 0, 0
    elif t.is_cuda:
        dev, index = 1, t.get_device()
    else:
        raise TypeError(f"unsupported device {t.device}")
    return (t.data_ptr(), code, dev, index, t.shape, t.stride())  # torch.Size is a tuple


def opt(t: Optional[torch.Tensor]):
    return None if t is None else arg(t)


def stream(device: torch.device) -> int:
    """The current CUDA stream of ``device`` as an integer handle."""
    return torch.cuda.current_stream(device).cuda_stream


def dims(t: torch.Tensor, ndim: int) -> tuple[int, ...]:
    """``t.shape`` when it has ``ndim`` dimensions, else ``ndim`` zeros.

    Outputs are allocated before the kernel call; with a wrongly shaped input this lets the allocation
    succeed so that the C++ argument checks raise their precise error (naming the argument) instead of a
    Python unpacking error.
    """
    return tuple(t.shape) if t.dim() == ndim else (0,) * ndim
