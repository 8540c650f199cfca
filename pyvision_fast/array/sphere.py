"""Sphere sampling tables in NumPy: where a kernel on the sphere samples an H x W equirectangular panorama.

The geometry of ``pyvision_fast.geometry.equirect`` (same names, arguments, conventions and checks; see that
module for the geometry), computed with NumPy in float64: ``tangent_sampling``, ``paver_positions``,
``paver_offsets``, ``patch_positions``, ``table_from_positions`` and ``sampling_table``. This module is the one
implementation: ``geometry.equirect`` returns its arrays as tensors, so both give the same numbers bit for bit.
``sampling_table(..., device="cuda")`` returns the table as CuPy arrays.
"""
from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import NamedTuple, Optional, Union

import numpy as np

from . import _core

_Pair = Union[int, tuple[int, int]]
FULL_SPHERE = (360.0, 180.0)


def _pair(v: _Pair, name: str) -> tuple[int, int]:
    p = (v, v) if isinstance(v, int) else tuple(v)
    if len(p) != 2 or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 1 for i in p):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {v!r}")
    return p


def check_fov(height: int, width: int, fov: Optional[tuple[float, float]]) -> tuple[float, float]:
    """The (horizontal, vertical) field of view in degrees an H x W frame covers: ``None`` is a whole 2:1
    panorama (360 x 180; any other frame size is a ValueError), a stated ``fov`` is checked and taken as given
    (``pyvision_fast.geometry.equirect.check_fov``)."""
    if fov is None:
        if width != 2 * height:
            raise ValueError(f"a {height}x{width} frame is not an equirectangular 360x180 degree panorama "
                             f"(those are 2:1, e.g. {height}x{2 * height}); resize it to 2:1, or pass "
                             "fov=(horizontal, vertical) in degrees if it covers less of the sphere")
        return FULL_SPHERE
    try:
        fh, fv = (float(v) for v in fov)
    except (TypeError, ValueError):
        raise ValueError(f"fov must be (horizontal, vertical) degrees, got {fov!r}") from None
    if not (0 < fh <= 360 and 0 < fv <= 180):
        raise ValueError(f"fov must be (0, 360] x (0, 180] degrees, got {fov!r}")
    return fh, fv


def _directions_to_pixels(d: np.ndarray, height: int, width: int, fov: tuple[float, float]) -> np.ndarray:
    fh, fv = math.radians(fov[0]), math.radians(fov[1])
    lat = np.arcsin(np.clip(d[..., 2], -1, 1))
    lon = np.arctan2(d[..., 1], d[..., 0])
    h = (fv / 2 - lat) * (height / fv)
    if fov[0] == 360.0:
        w = np.remainder(lon * (width / fh), width)
    else:  # longitudes past the right edge by more than half the gap are left of the left edge
        lon = np.remainder(lon, 2 * math.pi)
        lon = np.where(lon > fh + (2 * math.pi - fh) / 2, lon - 2 * math.pi, lon)
        w = lon * (width / fh)
    return np.stack([h, w], axis=-1)


def _norm(v: np.ndarray) -> np.ndarray:
    return np.sqrt((v * v).sum(axis=-1, keepdims=True))


def tangent_sampling(height: int, width: int, kernel_size: _Pair, stride: _Pair = 1,
                     fov: Optional[tuple[float, float]] = None) -> np.ndarray:
    """Absolute (h, w) pixel positions (Ho, Wo, kh, kw, 2), float64, of every tap of a kernel laid on the
    tangent plane at each output location (``pyvision_fast.geometry.equirect.tangent_sampling``)."""
    kh, kw = _pair(kernel_size, "kernel_size")
    sh, sw = _pair(stride, "stride")
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height}x{width}")
    fov = check_fov(height, width, fov)
    Ho, Wo = -(-height // sh), -(-width // sw)
    f64 = np.float64
    dphi, dtheta = math.radians(fov[1]) / height, math.radians(fov[0]) / width
    phi_top = (math.pi - math.radians(fov[1])) / 2
    phi0 = phi_top + (np.arange(Ho, dtype=f64) * sh + (sh - 1) / 2) * dphi
    theta0 = (np.arange(Wo, dtype=f64) * sw + (sw - 1) / 2) * dtheta
    lat0 = math.pi / 2 - phi0
    east = (np.arange(kw, dtype=f64) - (kw - 1) / 2) * dtheta
    north = -(np.arange(kh, dtype=f64) - (kh - 1) / 2) * dphi
    cl, sl = np.cos(lat0)[:, None], np.sin(lat0)[:, None]
    ct, st = np.cos(theta0)[None, :], np.sin(theta0)[None, :]
    centre = np.stack(np.broadcast_arrays(cl * ct, cl * st, sl), axis=-1)  # (Ho, Wo, 3)
    e_east = np.broadcast_to(np.stack([-st, ct, np.zeros_like(ct)], axis=-1), (Ho, Wo, 3))
    e_north = np.stack(np.broadcast_arrays(-sl * ct, -sl * st, cl), axis=-1)
    d = (centre[:, :, None, None] + north[None, None, :, None, None] * e_north[:, :, None, None]
         + east[None, None, None, :, None] * e_east[:, :, None, None])  # (Ho, Wo, kh, kw, 3)
    d = d / _norm(d)
    return _directions_to_pixels(d, height, width, fov)


def _roty(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=np.float64)


def _rotz(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=np.float64)


def _linspace(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace's float64 values: the first half counted up from start, the second half down from end,
    each with one rounding (torch's kernel fuses the multiply-add)."""
    if steps == 1:
        return np.array([start], dtype=np.float64)
    step = Fraction((end - start) / (steps - 1))
    half = steps // 2
    values = [Fraction(start) + step * i if i < half else Fraction(end) - step * (steps - 1 - i)
              for i in range(steps)]
    return np.array([float(v) for v in values], dtype=np.float64)


def paver_positions(height: int = 224, patch_size: int = 16) -> np.ndarray:
    """PAVER's sampling positions (n, 2n, R, R, 2) as (h, w), float64, for an H x 2H panorama
    (``pyvision_fast.geometry.equirect.paver_positions``)."""
    if patch_size < 1 or height % patch_size or (height // patch_size) % 2:
        raise ValueError(f"height ({height}) must be an even multiple of patch_size ({patch_size})")
    n, R = height // patch_size, patch_size
    H, W = height, 2 * height
    P = math.atan(math.pi / (2 * n))
    t = _linspace(-P, P, R)
    yy, xx = np.meshgrid(-t, t, indexing="ij")
    plane = np.stack([np.ones_like(xx), xx, yy], axis=-1)  # (R, R, 3) row vectors (1, x, y)
    rad = W / (2 * math.pi)
    rows = []
    for lat in range(n // 2, -n // 2, -1):
        cols = []
        for lon in range(2 * n - 1, -1, -1):
            p = plane @ _roty(P * (2 * lat - 1)) @ _rotz(P * (2 * lon + 1))
            p = p / _norm(p)
            theta = np.arctan2(p[..., 1], p[..., 0])
            phi = np.arctan2(np.sqrt(p[..., 0] ** 2 + p[..., 1] ** 2), p[..., 2])
            h, w = rad * phi, rad * theta
            h = np.where(h > H, h - H, h)
            h = np.where(h < 0, h + H, h)
            w = np.where(w > W, w - W, w)
            w = np.where(w < 0, w + W, w)
            cols.append(np.stack([h, w], axis=-1))
        rows.append(np.stack(cols))
    return np.stack(rows)


def paver_offsets(height: int = 224, patch_size: int = 16) -> np.ndarray:
    """PAVER's deformable patch-embedding offsets (2 R^2, n, 2n), float64, in torchvision's layout
    (``pyvision_fast.geometry.equirect.paver_offsets``)."""
    pos = paver_positions(height, patch_size)
    n, n2, R = pos.shape[0], pos.shape[1], patch_size
    i = np.arange(n, dtype=np.float64)[:, None, None, None] * R + np.arange(R, dtype=np.float64)[:, None]
    j = np.arange(n2, dtype=np.float64)[None, :, None, None] * R + np.arange(R, dtype=np.float64)
    src = np.stack(np.broadcast_arrays(i, j), axis=-1)
    return (pos - src).transpose(2, 3, 4, 0, 1).reshape(2 * R * R, n, n2)


def patch_positions(height: int, width: int, patch_size: int, layout: str = "natural") -> np.ndarray:
    """Sampling positions (Ho, Wo, R, R, 2) of a spherical patch embedding, ``layout`` "paver" or "natural"
    (``pyvision_fast.geometry.equirect.patch_positions``)."""
    if layout == "paver":
        if width != 2 * height:
            raise ValueError(f"layout='paver' needs a 2:1 panorama, got {height}x{width}")
        return paver_positions(height, patch_size)
    if layout == "natural":
        return tangent_sampling(height, width, patch_size, patch_size)
    raise ValueError(f"layout must be 'paver' or 'natural', got {layout!r}")


class SamplingTable(NamedTuple):
    """For each output location p (row-major over (Ho, Wo)) and tap k (row-major over (kh, kw)): four source
    pixel indices (h * W + w, int32) and four bilinear weights
    (``pyvision_fast.geometry.equirect.SamplingTable``, with NumPy or CuPy arrays)."""

    index: object  # (Ho * Wo, K, 4) int32
    weight: object  # (Ho * Wo, K, 4)
    in_size: tuple[int, int]
    out_size: tuple[int, int]
    kernel_size: tuple[int, int]


def _on_device(a: np.ndarray, device: str):
    if device == "cpu":
        return a
    if not device.startswith("cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    cp = _core._cupy()
    if cp is None:
        raise TypeError(f"device={device!r} needs CuPy, which is not installed")
    with cp.cuda.Device(int(device.partition(":")[2] or cp.cuda.Device().id)):
        return cp.asarray(a)


def table_from_positions(positions: np.ndarray, height: int, width: int, discrete: bool = False,
                         dtype=np.float32, device: str = "cpu", wrap: bool = True) -> SamplingTable:
    """Bilinear sampling table of absolute positions (Ho, Wo, kh, kw, 2); ``discrete`` takes the integer part
    of each position instead of interpolating; columns wrap around the seam (``wrap``) or clamp to the frame's
    edges, rows always clamp (``pyvision_fast.geometry.equirect.table_from_positions``)."""
    positions = np.asarray(positions, dtype=np.float64)
    Ho, Wo, kh, kw, _ = positions.shape
    h = np.clip(positions[..., 0].reshape(Ho * Wo, kh * kw), 0, height - 1)
    w = positions[..., 1].reshape(Ho * Wo, kh * kw)
    w = np.remainder(w, width) if wrap else np.clip(w, 0, width - 1)
    if discrete:
        h, w = np.floor(h), np.floor(w)
    h0, w0 = np.floor(h), np.floor(w)
    lh, lw = h - h0, w - w0
    h0 = np.clip(h0.astype(np.int64), 0, height - 1)
    h1 = np.minimum(h0 + 1, height - 1)
    w0 = w0.astype(np.int64) % width
    w1 = (w0 + 1) % width if wrap else np.minimum(w0 + 1, width - 1)
    index = np.stack([h0 * width + w0, h0 * width + w1, h1 * width + w0, h1 * width + w1], axis=-1)
    weight = np.stack([(1 - lh) * (1 - lw), (1 - lh) * lw, lh * (1 - lw), lh * lw], axis=-1)
    return SamplingTable(_on_device(index.astype(np.int32), device), _on_device(weight.astype(dtype), device),
                         (height, width), (Ho, Wo), (kh, kw))


def sampling_table(height: int, width: int, kernel_size: _Pair, stride: _Pair = 1, layout: str = "natural",
                   dtype=np.float32, device: str = "cpu", discrete: bool = False,
                   fov: Optional[tuple[float, float]] = None) -> SamplingTable:
    """The cached table of a spherical convolution (``layout="natural"``) or of a spherical patch embedding
    (``layout="paver"``, kernel = stride = patch size): index (Ho * Wo, kh * kw, 4) int32 and weight (Ho * Wo,
    kh * kw, 4) in ``dtype`` (``pyvision_fast.geometry.equirect.sampling_table``). ``device`` "cpu" gives
    NumPy arrays, "cuda" / "cuda:N" CuPy arrays. The arrays are shared between calls: do not write to them."""
    kernel_size = _pair(kernel_size, "kernel_size")
    stride = _pair(stride, "stride")
    fov = check_fov(height, width, fov) if layout == "natural" else None
    return _cached_table(height, width, kernel_size, stride, layout, np.dtype(dtype).str, str(device),
                         discrete, fov)


@functools.lru_cache(maxsize=64)
def _cached_table(height: int, width: int, kernel_size: tuple[int, int], stride: tuple[int, int], layout: str,
                  dtype: str, device: str, discrete: bool,
                  fov: Optional[tuple[float, float]]) -> SamplingTable:
    if layout == "paver":
        if kernel_size != stride or kernel_size[0] != kernel_size[1]:
            raise ValueError("layout='paver' is PAVER's patch embedding: square kernel_size equal to stride")
        positions = patch_positions(height, width, kernel_size[0], "paver")
    else:
        if layout != "natural":
            raise ValueError(f"layout must be 'paver' or 'natural', got {layout!r}")
        positions = tangent_sampling(height, width, kernel_size, stride, fov)
    wrap = fov is None or fov[0] == 360.0
    table = table_from_positions(positions, height, width, discrete, np.dtype(dtype), device, wrap)
    if device == "cpu":
        table.index.flags.writeable = False
        table.weight.flags.writeable = False
    return table
