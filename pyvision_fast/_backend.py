"""Backend selection: ``cuda`` (CUDA C++), ``triton``, ``cpu`` (C++) and ``reference`` (plain PyTorch).

The choice is automatic by device and availability. ``PVF_BACKEND=<name>`` in the environment, or the
``use_backend(name)`` context manager, forces one for every op that implements it. A missing compiled
module, or a forced backend an op does not implement, falls back with one warning per op and backend.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import warnings
from typing import Callable, Mapping, Optional

import torch

from . import _ext

BACKENDS = ("cuda", "triton", "cpu", "reference")

_forced: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("pvf_backend", default=None)
_warned: set[tuple[str, str]] = set()


def _check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")
    return name


def forced_backend() -> Optional[str]:
    """The backend forced by ``use_backend`` or ``PVF_BACKEND``, or None for automatic choice."""
    name = _forced.get()
    if name is None:
        env = os.environ.get("PVF_BACKEND", "").strip()
        name = env or None
    return None if name is None else _check_name(name)


@contextlib.contextmanager
def use_backend(name: Optional[str]):
    """Force ``name`` (or automatic choice with None) for the ops called inside the block."""
    token = _forced.set(None if name is None else _check_name(name))
    try:
        yield
    finally:
        _forced.reset(token)


def _warn_once(op: str, key: str, message: str) -> None:
    if (op, key) not in _warned:
        _warned.add((op, key))
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def available(name: str, device: torch.device) -> bool:
    """Whether backend ``name`` can run on ``device`` in this process."""
    if name == "reference":
        return True
    if name == "cpu":
        return device.type == "cpu" and _ext.cpu_module() is not None
    if name == "cuda":
        return device.type == "cuda" and _ext.cuda_module() is not None
    if name == "triton":
        from . import triton as _triton  # noqa: PLC0415 - optional dependency, imported on demand

        return _triton.available(device)
    return False


def automatic(device: torch.device, implemented: Mapping[str, Callable]) -> str:
    """The backend chosen without forcing: the compiled one for the device, else Triton on GPU, else reference."""
    native = "cuda" if device.type == "cuda" else "cpu"
    if native in implemented and available(native, device):
        return native
    if device.type == "cuda" and "triton" in implemented and available("triton", device):
        return "triton"
    return "reference"


def select(op: str, device: torch.device, implemented: Mapping[str, Callable]) -> tuple[str, Callable]:
    """Pick the implementation of ``op`` for tensors on ``device``; returns (backend name, function)."""
    forced = forced_backend()
    if forced is not None:
        if forced in implemented and available(forced, device):
            return forced, implemented[forced]
        choice = automatic(device, implemented)
        _warn_once(op, f"forced:{forced}", f"pyvision_fast: {op} has no usable '{forced}' backend on {device.type}; "
                   f"using '{choice}'")
        return choice, implemented[choice]
    choice = automatic(device, implemented)
    if choice == "reference":
        native = "cuda" if device.type == "cuda" else "cpu"
        module = "_C_cuda" if native == "cuda" else "_C"
        _warn_once(op, "fallback", f"pyvision_fast: {op} falls back to the plain-PyTorch reference on {device.type} "
                   f"({module} unavailable: {_ext.load_error(module) or 'not built'})")
    return choice, implemented[choice]
