"""Shared plumbing for the op modules: backend dispatch of a custom op's implementation table."""
from __future__ import annotations

from typing import Callable, Mapping

import torch

from .. import _backend


def dispatch(op: str, device: torch.device, implemented: Mapping[str, Callable]) -> Callable:
    """The implementation of ``op`` to run on ``device`` (see ``pyvision_fast._backend``)."""
    return _backend.select(op, device, implemented)[1]


def as_index(t: torch.Tensor, name: str) -> torch.Tensor:
    """Accept int32 or int64 indices (mmcv returns int32); the kernels take int64."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    if t.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name} must be an int32 or int64 tensor, got {t.dtype}")
    return t.to(torch.int64)


def as_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return value
