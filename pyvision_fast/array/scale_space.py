"""Gaussian scale space on NumPy / CuPy arrays: ``pyvision_fast.ops.gaussian_scale_space`` without torch (same
arguments, checks and results; no gradients).

The sampled Gaussian kernels are built in float64 on the host exactly as the torch op builds the kernels of a
sigma given as numbers, then cast to x's dtype; the filtering runs on the compiled filter bank (CPU kernel for
NumPy arrays, the CUDA kernel the torch op uses on GPUs for CuPy arrays, on CuPy's current stream).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np

from . import _core

PADDING_MODES = {"zeros": 0, "reflect": 1, "replicate": 2}


def radius_for(sigma: float, truncate: float) -> int:
    """Half-width of the sampled Gaussian of standard deviation sigma cut at truncate * sigma (scipy's
    rule)."""
    return int(truncate * sigma + 0.5)


def gaussian_kernels(sigma: Sequence[float], radii: Sequence[int]) -> np.ndarray:
    """Sampled Gaussians normalised to unit sum, float64: sigma (S,), radii (S,) -> (S, 2 R + 1) with
    R = max(radii), row s centred on tap R and zero beyond radii[s]."""
    sigma = np.asarray(sigma, dtype=np.float64)
    R = max(radii) if len(radii) else 0
    pos = np.arange(-R, R + 1, dtype=np.float64)
    inside = np.abs(pos)[None, :] <= np.asarray(list(radii), dtype=np.float64)[:, None]
    g = np.exp(-0.5 * (pos[None, :] / sigma[:, None]) ** 2) * inside
    return g / g.sum(axis=1, keepdims=True)


def _acc(dtype) -> np.dtype:
    return np.dtype(np.float32) if dtype == np.float16 else np.dtype(dtype)


def filter_bank(x, kernels, radii: Sequence[int], boundary: int):
    """The filter bank under ``gaussian_scale_space``: x (B, C, H, W), kernels (S, 2R + 1) of x's dtype
    centred on tap R, radii (S,) ints <= R, boundary 0 zeros / 1 reflect / 2 replicate -> (B, S, C, H, W)."""
    op = "gaussian_scale_space"
    a = _core.arrays(op, x=x, kernels=kernels)
    x, kernels = _core.contiguous(a["x"]), _core.contiguous(a["kernels"])
    radii = [int(r) for r in radii]
    B, C, H, W = _core.dims(x, 4)
    out = _core.empty(x, (B, kernels.shape[0] if kernels.ndim == 2 else 0, C, H, W), x.dtype)
    if _core.is_cuda(x):
        mod = _core.cuda_module()
        d = _core.describe
        with _core.device_of(x):
            n = mod.filter_bank_next_workspace(d(x, op, "x"), d(kernels, op, "kernels"), radii, boundary,
                                               False)
            ws = _core.empty(x, (n,), _acc(x.dtype))
            mod.filter_bank_forward_next(d(x, op, "x"), d(kernels, op, "kernels"), radii, boundary,
                                         d(out, op, "out"), d(ws, op, "workspace"), _core.stream())
    else:
        _core.cpu_module().filter_bank_forward(x, kernels, radii, boundary, out)
    return out


def gaussian_scale_space(x, sigma: Union[Sequence[float], float, "np.ndarray"], truncate: float = 3.0,
                         padding_mode: str = "reflect", radius: Optional[Union[int, Sequence[int]]] = None):
    """Gaussian smoothing of x at S scales in one call (separable: along W, then H).

    Args:
        x: (B, C, H, W) float array (float32/float64; float16 too on CuPy, accumulated in float32).
        sigma: (S,) standard deviations in pixels, all > 0: numbers, or a 1-D float array whose values are
            read (a CuPy array is read to the host).
        truncate: the kernels are cut at radius round(truncate * sigma) (scipy.ndimage's rule), renormalised
            to unit sum.
        padding_mode: "reflect" (mirror without repeating the edge: scipy's "mirror"), "replicate" or "zeros".
        radius: the half-width of every scale (an int or S ints) instead of round(truncate * sigma).

    Returns (B, S, C, H, W) in x's dtype: the values of ``pyvision_fast.ops.gaussian_scale_space`` called with
    sigma as numbers.
    """
    op = "gaussian_scale_space"
    x = _core.as_array(x, op, "x")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"gaussian_scale_space: padding_mode must be one of {sorted(PADDING_MODES)}, "
                         f"got {padding_mode!r}")
    if isinstance(sigma, (int, float, np.integer, np.floating)) and not isinstance(sigma, bool):
        values = [sigma]
    elif hasattr(sigma, "shape") or hasattr(sigma, "__dlpack__"):
        s = _core.as_array(sigma, op, "sigma")
        if s.ndim != 1:
            raise ValueError(f"gaussian_scale_space: sigma must be (S,), got shape {tuple(s.shape)}")
        if s.dtype.kind != "f":
            raise TypeError(f"gaussian_scale_space: sigma must be a float array, got {s.dtype}")
        values = s.tolist()
    else:
        values = list(sigma) if isinstance(sigma, (list, tuple)) else [sigma]
    numbers = (int, float, np.integer, np.floating)
    if not all(isinstance(v, numbers) and not isinstance(v, bool) for v in values):
        raise TypeError(f"gaussian_scale_space: sigma must be an array or numbers, got {sigma!r}")
    values = [float(v) for v in values]
    S = len(values)
    if radius is None:
        if not all(math.isfinite(v) and v > 0 for v in values):
            raise ValueError(f"gaussian_scale_space: every sigma must be a positive number, got {values}")
        if not (isinstance(truncate, (int, float)) and math.isfinite(truncate) and truncate > 0):
            raise ValueError(f"gaussian_scale_space: truncate must be a positive number, got {truncate!r}")
        radii = [radius_for(v, truncate) for v in values]
    else:
        if isinstance(radius, (int, float)):
            radii = [_core.as_int(radius, "radius")] * S
        else:
            radii = [_core.as_int(r, "radius") for r in radius]
        if len(radii) != S or any(r < 0 for r in radii):
            raise ValueError(f"gaussian_scale_space: radius must be one int >= 0 or S = {S} of them, got "
                             f"{radius!r}")
    kernel_dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float32)
    if S == 0:
        kernels = np.zeros((0, 1), dtype=x.dtype)
    else:
        if not all(math.isfinite(v) and v > 0 for v in values):
            raise ValueError(f"gaussian_scale_space: every sigma must be a positive number, got {values}")
        kernels = gaussian_kernels(values, radii).astype(kernel_dtype).astype(x.dtype)
    if _core.is_cuda(x):
        with _core.device_of(x):
            kernels = _core.namespace(x).asarray(kernels)
    return filter_bank(x, kernels, radii, PADDING_MODES[padding_mode])
