"""Array plumbing of ``pyvision_fast.array``: which arrays a call takes, where they live, how the compiled
modules are loaded and called. Nothing here imports torch.

Accepted inputs: NumPy arrays (CPU kernels), CuPy arrays (CUDA kernels), and any object with
``__array_interface__`` (viewed as NumPy), ``__cuda_array_interface__`` (viewed as CuPy) or ``__dlpack__``
(converted with ``numpy.from_dlpack`` / ``cupy.from_dlpack`` by the device it reports). The arrays of one call
must all live on the CPU or all on one GPU.
"""
from __future__ import annotations

import importlib
import os
from typing import Optional

import numpy as np

from .. import _cpu_isa

_modules: dict[str, object] = {}
_errors: dict[str, str] = {}
_threads: Optional[int] = None

# DLPack device types (dlpack.h): kDLCPU, kDLCUDA, kDLCUDAHost, kDLCUDAManaged.
_DLPACK_CPU = (1, 3)
_DLPACK_CUDA = (2, 13)

# The kernels' dtype codes (csrc/common/tensor_view.h, the order of pyvision_fast._ext).
_DTYPE_CODES = {np.dtype(np.float32): 0, np.dtype(np.float64): 1, np.dtype(np.float16): 2,
                np.dtype(np.int32): 4, np.dtype(np.int64): 5, np.dtype(np.bool_): 6, np.dtype(np.uint8): 7}


def _cupy():
    """The cupy module, or None when it is not installed (imported on first use only)."""
    try:
        import cupy  # noqa: PLC0415 - optional dependency
    except ImportError:
        return None
    return cupy


def _load(name: str):
    if name not in _modules and name not in _errors:
        try:
            # "_C" is the CPU module of the best instruction set this CPU runs (_cpu_isa)
            _modules[name] = _cpu_isa.load() if name == "_C" else importlib.import_module(f"pyvision_fast.{name}")
        except ImportError as exc:
            _errors[name] = str(exc)
    mod = _modules.get(name)
    if mod is None:
        raise ImportError(f"pyvision_fast.array needs the compiled module pyvision_fast.{name}, which did "
                          f"not load: {_errors[name]} (build it with `make build` or `pip install -e .`)")
    return mod


def default_num_threads() -> int:
    """The CPU kernels' default thread count: ``OMP_NUM_THREADS`` when set to a positive int, else the number
    of CPUs this process may run on."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def set_num_threads(n: int) -> None:
    """Threads the CPU kernels of ``pyvision_fast.array`` use (default: ``default_num_threads()``). In a
    data-loader worker process, 1 keeps the workers from competing for the cores."""
    global _threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads: n must be an int >= 1, got {n!r}")
    _threads = n
    _load("_C").set_num_threads(n)


def get_num_threads() -> int:
    """The thread count the CPU kernels of ``pyvision_fast.array`` use."""
    return _threads if _threads is not None else default_num_threads()


def cpu_module():
    """``pyvision_fast._C`` with this package's thread count set (the torch ops set torch's on their
    calls)."""
    mod = _load("_C")
    n = get_num_threads()
    if mod.get_num_threads() != n:
        mod.set_num_threads(n)
    return mod


def cuda_module():
    return _load("_C_cuda")


def _kind(x) -> str:
    return f"{type(x).__module__.split('.')[0]}.{type(x).__name__}"


def as_array(x, op: str, name: str):
    """``x`` as a NumPy or CuPy array (no copy where the memory can be shared); TypeError naming ``name``
    for anything that is not an array."""
    if isinstance(x, np.ndarray):
        return x
    cp = _cupy() if type(x).__module__.startswith("cupy") or hasattr(x, "__cuda_array_interface__") else None
    if cp is not None and isinstance(x, cp.ndarray):
        return x
    if hasattr(x, "__cuda_array_interface__"):
        if cp is None:
            raise TypeError(f"{op}: argument {name!r} is a CUDA array ({_kind(x)}); CUDA arrays need CuPy, "
                            "which is not installed")
        return cp.asarray(x)
    if hasattr(x, "__array_interface__"):
        return np.asarray(x)
    if hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__"):
        try:
            device_type = int(x.__dlpack_device__()[0])
        except Exception as exc:  # noqa: BLE001 - a foreign object's failure becomes our TypeError
            raise TypeError(f"{op}: argument {name!r} ({_kind(x)}) did not report its DLPack device: "
                            f"{exc}") from exc
        try:
            if device_type in _DLPACK_CPU:
                return np.from_dlpack(x)
            if device_type in _DLPACK_CUDA:
                cp = _cupy()
                if cp is None:
                    raise TypeError(f"{op}: argument {name!r} ({_kind(x)}) is on a GPU; CUDA arrays need "
                                    "CuPy, which is not installed")
                return cp.from_dlpack(x)
        except (BufferError, RuntimeError, ValueError) as exc:
            raise TypeError(f"{op}: argument {name!r} ({_kind(x)}) could not be read through DLPack: "
                            f"{exc}") from exc
        raise TypeError(f"{op}: argument {name!r} ({_kind(x)}) is on DLPack device type {device_type}; "
                        "pyvision_fast.array runs on CPU (NumPy) and CUDA (CuPy) arrays")
    raise TypeError(f"{op}: argument {name!r} must be an array (NumPy, CuPy, or an object with "
                    f"__array_interface__, __cuda_array_interface__ or __dlpack__), got {type(x).__name__}")


def is_cuda(a) -> bool:
    return not isinstance(a, np.ndarray)


def namespace(a):
    """numpy or cupy, the module of array ``a``."""
    return np if isinstance(a, np.ndarray) else _cupy()


def where_of(a) -> str:
    return "cpu" if isinstance(a, np.ndarray) else f"cuda:{a.device.id}"


def arrays(op: str, **named) -> dict:
    """Every non-None argument as an array (see ``as_array``), all on one device; TypeError naming the
    argument that is elsewhere."""
    out: dict = {}
    first: Optional[tuple[str, str]] = None
    for name, value in named.items():
        if value is None:
            out[name] = None
            continue
        a = as_array(value, op, name)
        where = where_of(a)
        if first is None:
            first = (name, where)
        elif where != first[1]:
            raise TypeError(f"{op}: argument {name!r} is on {where} but {first[0]!r} is on {first[1]}; all "
                            "arrays of a call must be on one device")
        out[name] = a
    return out


def as_index(a, op: str, name: str):
    """int32 or int64 index arrays (mmcv returns int32) as int64; TypeError for any other dtype. (The torch
    ops' ``as_index``.)"""
    if a.dtype not in (np.int32, np.int64):
        raise TypeError(f"{op}: {name} must be an int32 or int64 array, got {a.dtype}")
    return a.astype(np.int64, copy=False)


def as_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return int(value)


def contiguous(a):
    """C-contiguous ``a``: the array itself, or a copy (a strided or negative-stride view is copied, as the
    torch ops call ``.contiguous()``)."""
    return a if a.flags.c_contiguous else namespace(a).ascontiguousarray(a)


def dims(a, ndim: int) -> tuple:
    """``a.shape`` when ``a`` has ``ndim`` dimensions, else ``ndim`` zeros: outputs of a wrongly shaped input
    are still allocated so that the C++ checks report the precise error (naming the argument)."""
    return tuple(a.shape) if a.ndim == ndim else (0,) * ndim


def describe(a, op: str, name: str):
    """The kernels' argument for ``a``: a NumPy array itself (read through ``__array_interface__``), a CuPy
    array as the description tuple (pointer, dtype code, device type, device index, sizes, strides), which
    carries its device index."""
    if a is None or isinstance(a, np.ndarray):
        return a
    code = _DTYPE_CODES.get(a.dtype)
    if code is None:
        raise TypeError(f"{op}: argument {name!r} has unsupported dtype {a.dtype}")
    item = a.dtype.itemsize
    return (int(a.data.ptr), code, 1, int(a.device.id), tuple(a.shape), tuple(s // item for s in a.strides))


def stream():
    """CuPy's current stream of the current device, as an integer handle."""
    return _cupy().cuda.get_current_stream().ptr


def empty(like, shape, dtype):
    """An uninitialised array beside ``like`` (same library, same device)."""
    if isinstance(like, np.ndarray):
        return np.empty(shape, dtype=dtype)
    cp = _cupy()
    with cp.cuda.Device(like.device.id):
        return cp.empty(shape, dtype=dtype)


def device_of(a):
    """A context manager that makes ``a``'s device current (a no-op for NumPy arrays)."""
    if isinstance(a, np.ndarray):
        import contextlib  # noqa: PLC0415

        return contextlib.nullcontext()
    return _cupy().cuda.Device(a.device.id)


# Argument checks: the Python-side checks of the torch point-cloud ops (ops.pointcloud_gather.check_*), with
# the same error classes and messages naming the argument. Values (lengths, index ranges) are read on NumPy
# arrays only: on CuPy arrays they are the CUDA kernels' business, as for CUDA tensors, so that no call
# synchronises only to check.

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_HALF = np.dtype(np.float16)


def check_ndim(op: str, a, name: str, ndim: int, layout: str = "") -> None:
    if a.ndim != ndim:
        raise ValueError(f"{op}: argument '{name}' must have {ndim} dimensions {layout}, got shape "
                         f"{tuple(a.shape)}")


def check_size(op: str, a, name: str, dim: int, expected: int, what: str) -> None:
    if a.shape[dim] != expected:
        raise ValueError(f"{op}: argument '{name}' has size {a.shape[dim]} in dimension {dim} but {what} is "
                         f"{expected}")


def check_float(op: str, a, name: str, half_on_cpu: bool = False) -> None:
    """float32/float64 everywhere; float16 on CuPy arrays, and on NumPy arrays where ``half_on_cpu``."""
    allowed = _FLOATS + ((_HALF,) if is_cuda(a) or half_on_cpu else ())
    if a.dtype not in allowed:
        names = " or ".join(d.name for d in allowed)
        raise TypeError(f"{op}: argument '{name}' must be {names}, got {a.dtype.name}")


def check_like(op: str, a, name: str, ref, ref_name: str, dtype: bool = True) -> None:
    if dtype and a.dtype != ref.dtype:
        raise TypeError(f"{op}: arguments '{name}' ({a.dtype.name}) and '{ref_name}' ({ref.dtype.name}) must "
                        "have the same dtype")


def check_index(op: str, a, name: str, ndim: Optional[int] = None, layout: str = ""):
    """An int32/int64 index array (of rank ``ndim``) -> int64."""
    if ndim is not None:
        check_ndim(op, a, name, ndim, layout)
    return as_index(a, op, name)


def check_count(op: str, value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value}")
    return int(value)


def check_lengths(op: str, lengths, name: str, B: int, P: int):
    """None, or (B,) int32/int64 with values in [0, P] (read on NumPy arrays) -> contiguous int64."""
    if lengths is None:
        return None
    lengths = check_index(op, lengths, name, 1, "(B,)")
    check_size(op, lengths, name, 0, B, "the batch size")
    if not is_cuda(lengths) and lengths.size:
        bad = (lengths < 0) | (lengths > P)
        if bool(bad.any()):
            b = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{op}: argument '{name}' has a length {int(lengths[b])} outside [0, {P}] "
                             f"(cloud {b})")
    return contiguous(lengths)


def check_index_range(op: str, idx, hi: int, what: str, lo: int = 0) -> None:
    """Every idx value in [lo, hi) (read on NumPy arrays)."""
    if is_cuda(idx) or idx.size == 0:
        return
    flat = idx.reshape(-1)
    bad = (flat < lo) | (flat >= hi)
    if bool(bad.any()):
        pos = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{op}: idx[{pos}] = {int(flat[pos])} is out of range for {what} ({hi})")
