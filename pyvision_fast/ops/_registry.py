"""Shared plumbing for the op modules: backend dispatch of a custom op's implementation table."""
from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch.autograd.function import once_differentiable

from .. import _backend


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def eager(*tensors) -> bool:
    """Whether an op call may skip its torch.library custom op and run as a plain autograd.Function: plain
    tensors, no torch.compile / torch.export tracing, no dispatch or torch-function modes (fake tensors,
    opcheck, meta-device contexts) and no functorch transform. Those all go through the custom op, whose
    eager dispatch costs hundreds of microseconds per call on a CPU."""
    return (not torch.compiler.is_compiling() and torch._C._len_torch_dispatch_stack() == 0
            and not torch._C._is_torch_function_mode_enabled()
            and not torch._C._are_functorch_transforms_active()
            and all(t is None or type(t) in _PLAIN for t in tensors))


def eager_function(name: str, forward: Callable, setup_context: Callable, backward: Callable,
                   double_backward: bool = False) -> type:
    """An autograd.Function from a custom op's implementation, setup_context and backward (the functions its
    register_autograd takes), for ``eager`` calls. once_differentiable unless ``double_backward`` (a backward
    made of differentiable calls): like the custom op, it then has no double backward, and it raises instead
    of returning wrong second derivatives."""
    # One forward that sets up the context itself: with a separate setup_context, apply() binds the forward's
    # signature on every call.
    def forward_with_context(ctx, *inputs):
        output = forward(*inputs)
        setup_context(ctx, inputs, output)
        return output

    return type(name, (torch.autograd.Function,), {
        "forward": staticmethod(forward_with_context),
        "backward": staticmethod(backward if double_backward else once_differentiable(backward)),
    })


def dispatch(op: str, device: torch.device, implemented: Mapping[str, Callable]) -> Callable:
    """The implementation of ``op`` to run on ``device`` (see ``pyvision_fast._backend``)."""
    return _backend.select(op, device, implemented)[1]


def forward_choice(op: str, device: torch.device, implemented: Mapping[str, Callable]) -> str:
    """The implementation key ``dispatch`` picks for ``op`` here and now: an autograd setup records it, so that the
    backward runs the forward's implementation. (On CUDA the autograd engine runs backward functions on its own
    device thread, which does not see the caller's ``use_backend`` / ``use_candidates`` context.)"""
    return _backend.select(op, device, implemented)[0]


def backward_impl(op: str, backend: str, device: torch.device, implemented: Mapping[str, Callable]) -> Callable:
    """The implementation of backward op ``op``: the forward's ``backend`` when given and usable here, else the
    automatic choice (``dispatch``)."""
    if backend in implemented and _backend.available(backend, device):
        return implemented[backend]
    return dispatch(op, device, implemented)


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
