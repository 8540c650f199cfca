"""Backend selection: ``cuda`` (CUDA C++), ``triton``, ``cpu`` (C++) and ``reference`` (plain PyTorch).

The choice is automatic by device and availability. ``PVF_BACKEND=<name>`` in the environment, or the
``use_backend(name)`` context manager, forces one for every op that implements it. A missing compiled
module, or a forced backend an op does not implement, falls back with one warning per op and backend.

Candidates: a new GPU implementation of an op that has not yet run correct and faster on a GPU is registered
with ``register_candidate(op, key)`` under an implementation key of its own (``"triton"``, or a variant of a
backend such as ``"cuda:next"``). The automatic choice takes it only where candidates are enabled for that op:
``PVF_CANDIDATES=all`` or ``PVF_CANDIDATES=op1,op2`` in the environment, or ``use_candidates()``. The GPU
check runs the tests and benchmarks with and without them; a candidate that wins there becomes the op's
default (``prefer``) in the change that records that run. ``use_previous()`` runs, inside its block, the
implementations that preferred ones replaced (they remain the fallback where a preferred one does not apply).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import threading
import warnings
from typing import Callable, Mapping, Optional

import torch

from . import _ext

BACKENDS = ("cuda", "triton", "cpu", "reference")

# The blocks (use_backend, use_candidates) apply to the context that entered them. A thread with no block of its
# own follows the innermost block active in any thread: the autograd engine runs CUDA backward functions on its
# own worker threads, which inherit nothing of the caller's context, and `with use_candidates(): loss.backward()`
# must run the candidates' backward too.
_UNSET = object()
_forced: contextvars.ContextVar = contextvars.ContextVar("pvf_backend", default=_UNSET)
_candidates_on: contextvars.ContextVar = contextvars.ContextVar("pvf_candidates", default=_UNSET)
_previous_on: contextvars.ContextVar = contextvars.ContextVar("pvf_previous", default=_UNSET)
_active_blocks: dict[str, list] = {"backend": [], "candidates": [], "previous": []}  # (token, value), innermost last
_blocks_lock = threading.Lock()
_warned: set[tuple[str, str]] = set()
_CANDIDATES: dict[str, str] = {}  # op -> implementation key of its unverified GPU candidate
_PREFERRED: dict[str, str] = {}  # op -> implementation key chosen first on GPUs (a verified former candidate)


def _check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")
    return name


def _block_value(var: contextvars.ContextVar, kind: str):
    """This context's block value, else the innermost block active in any thread, else _UNSET."""
    value = var.get()
    if value is _UNSET:
        stack = _active_blocks[kind]
        if stack:
            value = stack[-1][1]
    return value


@contextlib.contextmanager
def _block(var: contextvars.ContextVar, kind: str, value):
    token = var.set(value)
    entry = (object(), value)
    with _blocks_lock:
        _active_blocks[kind].append(entry)
    try:
        yield
    finally:
        with _blocks_lock:
            _active_blocks[kind].remove(entry)
        var.reset(token)


def forced_backend() -> Optional[str]:
    """The backend forced by ``use_backend`` or ``PVF_BACKEND``, or None for automatic choice."""
    name = _block_value(_forced, "backend")
    if name is _UNSET or name is None:
        env = os.environ.get("PVF_BACKEND", "").strip()
        name = env or None
    return None if name is None else _check_name(name)


def use_backend(name: Optional[str]):
    """Force ``name`` (or automatic choice with None) for the ops called inside the block (a context manager)."""
    return _block(_forced, "backend", None if name is None else _check_name(name))


def register_candidate(op: str, key: str) -> None:
    """Declare ``key`` of ``op``'s implementation table a GPU candidate: chosen automatically only where
    candidates are enabled (see the module docstring)."""
    base_backend(key)
    _CANDIDATES[op] = key


def prefer(op: str, key: str) -> None:
    """Make ``key`` the first automatic choice for ``op`` on GPUs (a candidate a GPU run verified)."""
    base_backend(key)
    _CANDIDATES.pop(op, None)
    _PREFERRED[op] = key


def candidates() -> dict[str, str]:
    """The registered candidates, op -> implementation key."""
    return dict(_CANDIDATES)


def preferred() -> dict[str, str]:
    """The GPU preferences (verified former candidates), op -> implementation key."""
    return dict(_PREFERRED)


def base_backend(key: str) -> str:
    """The backend an implementation key runs on: ``"cuda:next"`` -> ``"cuda"``."""
    return _check_name(key.split(":", 1)[0])


@functools.lru_cache(maxsize=8)
def _env_names(value: str) -> frozenset:
    return frozenset(n.strip() for n in value.split(",") if n.strip())


def _op_names(ops) -> frozenset:
    return frozenset() if ops is None else frozenset([ops] if isinstance(ops, str) else ops)


def _names_cover(names: frozenset, op: str) -> bool:
    """Whether a set of op names (or "all") covers op; a backward op is covered by its forward's name."""
    return "all" in names or op in names or op.removesuffix("_backward") in names


def candidates_enabled(op: str) -> bool:
    """Whether ``op``'s candidate may be chosen: ``use_candidates`` or ``PVF_CANDIDATES`` (all, or op names)."""
    names = _block_value(_candidates_on, "candidates")
    if names is _UNSET:
        names = _env_names(os.environ.get("PVF_CANDIDATES", ""))
    return _names_cover(names, op)


def use_candidates(ops="all"):
    """Enable the candidates of ``ops`` (an op name, a list of them, or "all"; None disables every one) for
    the calls inside the block (a context manager), backward passes run by autograd's threads included."""
    return _block(_candidates_on, "candidates", _op_names(ops))


def use_previous(ops="all"):
    """Inside the block (a context manager), ``ops`` (an op name, a list, or "all") ignore their GPU preference
    and run the implementation it replaced, which stays the fallback where the preferred one does not apply:
    for tests of that fallback and for comparisons."""
    return _block(_previous_on, "previous", _op_names(ops))


def _gpu_variants(op: str) -> tuple[Optional[str], Optional[str]]:
    """(the op's candidate where enabled, its preferred implementation unless use_previous covers it)."""
    candidate = _own_or_forward(_CANDIDATES, op)
    if candidate is not None and not candidates_enabled(op):
        candidate = None
    chosen = _own_or_forward(_PREFERRED, op)
    if chosen is not None:
        previous = _block_value(_previous_on, "previous")
        if previous is not _UNSET and _names_cover(previous, op):
            chosen = None
    return candidate, chosen


def _warn_once(op: str, key: str, message: str) -> None:
    if (op, key) not in _warned:
        _warned.add((op, key))
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def available(name: str, device: torch.device) -> bool:
    """Whether backend (or implementation key) ``name`` can run on ``device`` in this process."""
    name = base_backend(name)
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


def _own_or_forward(table: dict, op: str) -> Optional[str]:
    """op's entry, or for ``<op>_backward`` without one its forward's (a backward follows its forward's switch)."""
    key = table.get(op)
    if key is None and op.endswith("_backward"):
        key = table.get(op.removesuffix("_backward"))
    return key


def automatic(device: torch.device, implemented: Mapping[str, Callable], op: str = "") -> str:
    """The implementation chosen without forcing: on GPUs an enabled candidate, then a preferred key; else the
    compiled backend of the device, else Triton on GPU, else the reference."""
    if device.type == "cuda":
        for key in _gpu_variants(op):
            if key is not None and key in implemented and available(key, device):
                return key
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
        # the best implementation of the forced backend: its enabled candidate, its preferred variant, itself
        for key in (*_gpu_variants(op), forced):
            if key is not None and base_backend(key) == forced and key in implemented and available(key, device):
                return key, implemented[key]
        choice = automatic(device, implemented, op)
        _warn_once(op, f"forced:{forced}", f"pyvision_fast: {op} has no usable '{forced}' backend on {device.type}; "
                   f"using '{choice}'")
        return choice, implemented[choice]
    choice = automatic(device, implemented, op)
    if choice == "reference":
        native = "cuda" if device.type == "cuda" else "cpu"
        module = "_C_cuda" if native == "cuda" else "_C"
        _warn_once(op, "fallback", f"pyvision_fast: {op} falls back to the plain-PyTorch reference on {device.type} "
                   f"({module} unavailable: {_ext.load_error(module) or 'not built'})")
    return choice, implemented[choice]
