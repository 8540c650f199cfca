"""The candidate CUDA point-cloud kernels (csrc/pointcloud/pointcloud_next_*.cuh) run on the SIMT emulation of
simt_emulation.h: built with the host C++ compiler into a shared library and called through ctypes on CPU
tensors (float32 / float64). Each function returns the outputs the CUDA entry point would write, or None where
the launcher declined the sizes."""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import torch

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "tests/simt/simt_emulation.h", ROOT / "tests/simt/pointcloud_next_driver.cpp",
           ROOT / "csrc/pointcloud/pointcloud_next_common.cuh", ROOT / "csrc/pointcloud/pointcloud_next_search.cuh",
           ROOT / "csrc/pointcloud/pointcloud_next_gather.cuh"]

_lib = None


def compiler() -> Optional[str]:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")


def library():
    """Builds (once per source version) and loads the emulated kernels."""
    global _lib
    if _lib is None:
        digest = hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES)).hexdigest()[:16]
        path = Path(tempfile.gettempdir()) / f"pvf-simt-{digest}.so"
        if not path.exists():
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            subprocess.run([compiler(), "-std=c++20", "-O1", "-pthread", "-shared", "-fPIC", "-Wall",
                            "-Wno-unknown-pragmas", "-Wno-unused-parameter", "-Wno-unused-variable",
                            f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'tests/simt'}", "-DPVF_SIMT_EMULATION=1",
                            str(ROOT / "tests/simt/pointcloud_next_driver.cpp"), "-o", str(tmp)], check=True)
            os.replace(tmp, path)
        _lib = ctypes.CDLL(str(path))
    return _lib


def _ptr(t: Optional[torch.Tensor]):
    if t is None:
        return ctypes.c_void_p(None)
    assert t.is_contiguous() and t.device.type == "cpu"
    return ctypes.c_void_p(t.data_ptr())


def _code(dtype: torch.dtype) -> int:
    return {torch.float32: 0, torch.float64: 1}[dtype]


def _i64(*values):
    return [ctypes.c_int64(int(v)) for v in values]


def set_max_dynamic_smem(nbytes: int) -> None:
    library().emu_set_max_dynamic_smem(ctypes.c_int(nbytes))


def fps_plan(N: int, D: int, wide: bool) -> tuple[int, int]:
    threads = ctypes.c_int(0)
    ppt = library().emu_fps_plan(*_i64(N, D), ctypes.c_int(int(wide)), ctypes.byref(threads))
    return ppt, threads.value


def sample_farthest_points(points, lengths, start, K):
    B, N, D = points.shape
    idx = torch.full((B, K), -7, dtype=torch.int64)
    ws = torch.full((B * N,), float("nan"), dtype=points.dtype)
    ok = library().emu_fps(_code(points.dtype), _ptr(points), *_i64(B, N, D), _ptr(lengths), _ptr(start),
                           *_i64(K), _ptr(idx), _ptr(ws))
    return idx if ok else None


def knn_points(p1, p2, lengths1, lengths2, K):
    B, P1, D = p1.shape
    dists = torch.full((B, P1, K), float("nan"), dtype=p1.dtype)
    idx = torch.full((B, P1, K), -7, dtype=torch.int64)
    ok = library().emu_knn(_code(p1.dtype), _ptr(p1), _ptr(p2), *_i64(B, P1, p2.shape[1], D), _ptr(lengths1),
                           _ptr(lengths2), *_i64(K), _ptr(dists), _ptr(idx))
    return (dists, idx) if ok else None


def ball_query(p1, p2, lengths1, lengths2, K, radius):
    B, P1, D = p1.shape
    dists = torch.full((B, P1, K), float("nan"), dtype=p1.dtype)
    idx = torch.full((B, P1, K), -7, dtype=torch.int64)
    ok = library().emu_ball_query(_code(p1.dtype), _ptr(p1), _ptr(p2), *_i64(B, P1, p2.shape[1], D), _ptr(lengths1),
                                  _ptr(lengths2), *_i64(K), ctypes.c_double(radius), _ptr(dists), _ptr(idx))
    return (dists, idx) if ok else None


def gather_columns(features, idx):
    B, C, N = features.shape
    M = idx.shape[1]
    out = torch.full((B, C, M), float("nan"), dtype=features.dtype)
    ok = library().emu_gather(_code(features.dtype), _ptr(features), *_i64(B, C, N), _ptr(idx), *_i64(M), _ptr(out))
    return out if ok else None


def gather_columns_backward(grad, idx, N):
    B, C, M = grad.shape
    gf = torch.full((B, C, N), float("nan"), dtype=grad.dtype)
    ok = library().emu_scatter(_code(grad.dtype), _ptr(grad), *_i64(B, C, N), _ptr(idx), *_i64(M), _ptr(gf))
    return gf if ok else None


def three_interpolate(features, idx, weight):
    B, C, M = features.shape
    N = idx.shape[1]
    out = torch.full((B, C, N), float("nan"), dtype=features.dtype)
    ok = library().emu_interpolate(_code(features.dtype), _ptr(features), *_i64(B, C, M), _ptr(idx), _ptr(weight),
                                   *_i64(N), _ptr(out))
    return out if ok else None


def three_interpolate_backward(grad, features, idx, weight):
    B, C, M = features.shape
    N = idx.shape[1]
    gf = torch.full((B, C, M), float("nan"), dtype=features.dtype)
    gw = torch.full((B, N, 3), float("nan"), dtype=features.dtype)
    ok = library().emu_interpolate_backward(_code(features.dtype), _ptr(grad), _ptr(features), *_i64(B, C, M),
                                            _ptr(idx), _ptr(weight), *_i64(N), _ptr(gf), _ptr(gw))
    return (gf, gw) if ok else None


def neighbour_dists_backward(p1, p2, lengths1, lengths2, idx, grad):
    B, P1, D = p1.shape
    K = idx.shape[2]
    g1 = torch.full_like(p1, float("nan"))
    g2 = torch.full_like(p2, float("nan"))
    ok = library().emu_neighbour_backward(_code(p1.dtype), _ptr(p1), _ptr(p2), *_i64(B, P1, p2.shape[1], D),
                                          _ptr(lengths1), _ptr(lengths2), _ptr(idx), *_i64(K), _ptr(grad), _ptr(g1),
                                          _ptr(g2))
    return (g1, g2) if ok else None


class EmulatedCudaModule:
    """Stands in for ``pyvision_fast._C_cuda``'s candidate entry points (``*_next``), with the bindings'
    signatures (tensor descriptions from ``_ext.arg``), running the emulated kernels on CPU memory: lets the
    Python side of the candidate path (wrappers, autograd, eager functions) run end to end without a GPU.
    ``calls`` lists the entry points called."""

    def __init__(self):
        self.calls = []

    def __getattribute__(self, name):
        if name.endswith("_next"):
            object.__getattribute__(self, "calls").append(name)
        return object.__getattribute__(self, name)

    @staticmethod
    def _t(desc):
        """A CPU tensor aliasing the described memory (contiguous, as the bindings require)."""
        if desc is None:
            return None
        ptr, code, _, _, shape, stride = desc
        dtype = {0: torch.float32, 1: torch.float64, 5: torch.int64}[code]
        n = 1
        for s in shape:
            n *= s
        if n == 0:
            return torch.empty(tuple(shape), dtype=dtype)
        storage = (ctypes.c_byte * (n * torch.empty((), dtype=dtype).element_size())).from_address(ptr)
        return torch.frombuffer(storage, dtype=dtype).view(tuple(shape))

    def sample_farthest_points_next(self, points, lengths, start, K, idx, workspace, stream):
        p, out = self._t(points), self._t(idx)
        r = sample_farthest_points(p, self._t(lengths), self._t(start), K)
        out.copy_(r)

    def knn_points_next(self, p1, p2, lengths1, lengths2, K, dists, idx, stream):
        d, i = knn_points(self._t(p1), self._t(p2), self._t(lengths1), self._t(lengths2), K)
        self._t(dists).copy_(d)
        self._t(idx).copy_(i)

    def ball_query_next(self, p1, p2, lengths1, lengths2, K, radius, dists, idx, stream):
        d, i = ball_query(self._t(p1), self._t(p2), self._t(lengths1), self._t(lengths2), K, radius)
        self._t(dists).copy_(d)
        self._t(idx).copy_(i)

    def gather_columns_next(self, features, idx, out, stream):
        self._t(out).copy_(gather_columns(self._t(features), self._t(idx)))

    def gather_columns_backward_next(self, grad_out, idx, grad_features, stream):
        gf = self._t(grad_features)
        gf.copy_(gather_columns_backward(self._t(grad_out), self._t(idx), gf.shape[2]))

    def three_interpolate_next(self, features, idx, weight, out, stream):
        self._t(out).copy_(three_interpolate(self._t(features), self._t(idx), self._t(weight)))

    def three_interpolate_backward_next(self, grad_out, features, idx, weight, grad_features, grad_weight, stream):
        gf, gw = three_interpolate_backward(self._t(grad_out), self._t(features), self._t(idx), self._t(weight))
        if grad_features is not None:
            self._t(grad_features).copy_(gf)
        if grad_weight is not None:
            self._t(grad_weight).copy_(gw)

    def neighbour_dists_backward_next(self, p1, p2, lengths1, lengths2, idx, grad_dists, grad_p1, grad_p2, stream):
        g1, g2 = neighbour_dists_backward(self._t(p1), self._t(p2), self._t(lengths1), self._t(lengths2),
                                          self._t(idx), self._t(grad_dists))
        self._t(grad_p1).copy_(g1)
        self._t(grad_p2).copy_(g2)
