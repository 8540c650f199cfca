"""Equirectangular (ERP) geometry: where a kernel on the sphere samples an H x W panorama.

Pixel convention (PAVER's): pixel row h is at polar angle phi = h * pi / H (0 at the north pole), pixel column w
at longitude theta = w * 2 pi / W, both measured at the pixel index itself. A kernel centred on a point of the
sphere samples the plane tangent there (gnomonic projection): tap (r, c) of a k x k kernel sits at plane
coordinates (tan((c - (k-1)/2) dtheta), -tan((r - (k-1)/2) dphi)) east and north of the centre, with dtheta = 2 pi / W
and dphi = pi / H the angular pixel size, so that at the equator the kernel's centre row and column land exactly on
the regular pixel grid. Longitudes wrap across the 360 degree seam; a row crossing a pole continues on the
opposite meridian (it is a straight line on the tangent plane).

``paver_offsets`` reproduces the deformable-convolution offsets of PAVER (Yun et al., ECCV 2022, geometry of its
public code) for its patch embedding, including its patch order.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.weak import WeakTensorKeyDictionary

from ..array import sphere as _np_geometry
from ..array.sphere import FULL_SPHERE, check_fov  # noqa: F401  (public here too)

_Pair = Union[int, tuple[int, int]]
_pair = _np_geometry._pair

# The geometry is computed once, in float64 NumPy (``pyvision_fast.array.sphere``, which needs no torch); the
# functions here return it as tensors, so the torch and the NumPy tables are the same numbers bit for bit.


def tangent_sampling(height: int, width: int, kernel_size: _Pair, stride: _Pair = 1,
                     fov: Optional[tuple[float, float]] = None) -> Tensor:
    """Absolute (h, w) pixel positions (Ho, Wo, kh, kw, 2), float64, of every tap of a kernel laid on the tangent
    plane at each output location. Output (i, j) is centred at pixel (i * sh + (sh - 1) / 2, j * sw + (sw - 1) / 2)
    (the centre of its stride cell: with stride = kernel size, the centre of patch (i, j)); Ho = ceil(H / sh),
    Wo = ceil(W / sw). w is wrapped into [0, W); h lies in [0, H]. ``fov``: see ``check_fov`` (a frame that is
    not 2:1 needs it); with a partial field of view, taps outside the frame land outside [0, H] x [0, W)."""
    return torch.from_numpy(_np_geometry.tangent_sampling(height, width, kernel_size, stride, fov))


def paver_positions(height: int = 224, patch_size: int = 16) -> Tensor:
    """PAVER's sampling positions (n, 2n, R, R, 2) as (h, w), float64, for an H x 2H panorama: patch row i is the
    latitude step 7 - i (for n = 14), patch column j the longitude step 2n - 1 - j (its columns run right to left);
    tap plane coordinates span [-P, P] with P = arctan(pi / 2n) (torch.linspace's values), rotated by P (2 lat - 1)
    about y and P (2 lon + 1) about z, and wrapped once into [0, H] x [0, W] as PAVER does."""
    return torch.from_numpy(_np_geometry.paver_positions(height, patch_size))


def paver_offsets(height: int = 224, patch_size: int = 16) -> Tensor:
    """PAVER's deformable patch-embedding offsets (2 R^2, n, 2n), float64, in torchvision's layout (dy, dx per tap
    r * R + c): the positions of ``paver_positions`` minus each patch's own regular pixel grid."""
    return torch.from_numpy(np.ascontiguousarray(_np_geometry.paver_offsets(height, patch_size)))


def patch_positions(height: int, width: int, patch_size: int, layout: str = "natural") -> Tensor:
    """Sampling positions (Ho, Wo, R, R, 2) of a spherical patch embedding: ``layout="paver"`` (PAVER's, H x 2H
    only) or ``"natural"`` (``tangent_sampling`` with kernel = stride = patch_size: patch column j centred at the
    longitude of pixel column j R + (R - 1) / 2)."""
    return torch.from_numpy(_np_geometry.patch_positions(height, width, patch_size, layout))


class SamplingTable(NamedTuple):
    """For each output location p (row-major over (Ho, Wo)) and tap k (row-major over (kh, kw)): four source pixel
    indices (h * W + w, int32) and four bilinear weights. Rows clamp to [0, H - 1] (the poles), columns wrap around
    the seam. Batch-invariant: one table serves every image."""

    index: Tensor  # (Ho * Wo, K, 4) int32
    weight: Tensor  # (Ho * Wo, K, 4)
    in_size: tuple[int, int]
    out_size: tuple[int, int]
    kernel_size: tuple[int, int]


def table_from_positions(positions: Tensor, height: int, width: int, discrete: bool = False,
                         dtype: torch.dtype = torch.float32, device: Union[str, torch.device] = "cpu",
                         wrap: bool = True) -> SamplingTable:
    """Bilinear sampling table of absolute positions (Ho, Wo, kh, kw, 2); ``discrete`` takes the integer part of
    each position (PAVER's ``is_discrete``) instead of interpolating. Columns wrap around the seam (``wrap``, a
    360 degree frame) or clamp to the frame's edges (a partial field of view), as rows always do. Built in
    float64 on the host (``pyvision_fast.array.sphere.table_from_positions``), then moved to ``device``."""
    positions = torch.as_tensor(positions).detach().to("cpu", torch.float64).numpy()
    return _as_tensors(_np_geometry.table_from_positions(positions, height, width, discrete, np.float64, "cpu", wrap),
                       dtype, device)


def _as_tensors(table: "_np_geometry.SamplingTable", dtype: torch.dtype,
                device: Union[str, torch.device]) -> SamplingTable:
    """A float64 NumPy table as tensors on ``device``, the weights in ``dtype`` (copies: NumPy's cached tables
    are read-only)."""
    index = torch.tensor(table.index, device=device)
    mark_valid(index, *table.in_size)  # in range by construction
    weight = torch.tensor(table.weight).to(device=device, dtype=dtype)
    return SamplingTable(index, weight, table.in_size, table.out_size, table.kernel_size)


def sampling_table(height: int, width: int, kernel_size: _Pair, stride: _Pair = 1, layout: str = "natural",
                   dtype: torch.dtype = torch.float32, device: Union[str, torch.device] = "cpu",
                   discrete: bool = False, fov: Optional[tuple[float, float]] = None) -> SamplingTable:
    """The cached table of a spherical convolution (``layout="natural"``: ``tangent_sampling``) or of a spherical
    patch embedding (``layout="paver"``, kernel = stride = patch size). One table per (H, W, kernel, stride, layout,
    dtype, device, discrete, fov), shared by every batch; built from real tensors even while torch.export traces.
    A frame that is not 2:1 needs its field of view ``fov`` (see ``check_fov``; ``layout="paver"`` takes 2:1
    panoramas only)."""
    kernel_size = _pair(kernel_size, "kernel_size")
    stride = _pair(stride, "stride")
    fov = check_fov(height, width, fov) if layout == "natural" else None
    # Under torch.export the table must be a constant, not traced arithmetic: build it outside the tracing modes.
    from torch._subclasses.fake_tensor import unset_fake_temporarily
    from torch.fx.experimental.proxy_tensor import disable_proxy_modes_tracing

    with unset_fake_temporarily(), disable_proxy_modes_tracing():
        return _cached_table(height, width, kernel_size, stride, layout, dtype, str(torch.device(device)), discrete,
                             fov)


@functools.lru_cache(maxsize=64)
def _cached_table(height: int, width: int, kernel_size: tuple[int, int], stride: tuple[int, int], layout: str,
                  dtype: torch.dtype, device: str, discrete: bool,
                  fov: Optional[tuple[float, float]]) -> SamplingTable:
    table = _np_geometry.sampling_table(height, width, kernel_size, stride, layout, np.float64, "cpu", discrete, fov)
    return _as_tensors(table, dtype, torch.device(device))


# Facts about table index tensors, remembered per tensor (identity and in-place version) so that no kernel call
# reads a table on the host: whether its indices are in range, and its transposed table.

class _Facts:
    __slots__ = ("version", "pixels", "transposed")

    def __init__(self, version: int, pixels: int):
        self.version, self.pixels = version, pixels
        self.transposed = _UNKNOWN


_UNKNOWN = object()
_FACTS = WeakTensorKeyDictionary()


def _facts(index: Tensor, pixels: int) -> Optional[_Facts]:
    f = _FACTS.get(index)
    return f if f is not None and f.version == index._version and f.pixels == pixels else None


def mark_valid(index: Tensor, height: int, width: int) -> None:
    """Record that ``index`` (a table index tensor this package built, or a copy of one) holds only pixels of an
    H x W image, so ``validate`` need not read it. A later in-place change of the tensor forgets this."""
    if _facts(index, height * width) is None:
        _FACTS[index] = _Facts(index._version, height * width)


def validate(table: SamplingTable) -> None:
    """Raise ValueError if ``table.index`` holds a pixel outside its ``in_size`` image (``validate_index``)."""
    validate_index(table.index, *table.in_size)


def validate_index(index: Tensor, height: int, width: int) -> None:
    """Raise ValueError if the table index tensor ``index`` holds a pixel outside an H x W image. Each index tensor
    is read at most once (one host synchronisation for a CUDA tensor), then remembered until it is changed in
    place; tables built by this module are valid by construction and never read. Skipped while tracing
    (torch.compile, fake tensors): the kernels clamp indices, so a bad table there gives wrong values, never a bad
    memory access."""
    if type(index) is not torch.Tensor or torch.compiler.is_compiling():
        return
    if _facts(index, height * width) is not None:
        return
    if index.numel():
        flat = index.reshape(-1)
        bad = ((flat < 0) | (flat >= height * width)).nonzero()
        if bad.numel():
            at = int(bad[0, 0])
            raise ValueError(f"table_index holds {int(flat[at])} at flat position {at}, outside the {height}x{width} "
                             f"image (the table was built for another size)")
    mark_valid(index, height, width)


class TransposedTable(NamedTuple):
    """Which table entries read each input pixel, per tap: for pixel q and tap k, ``count[k, q]`` entries
    ``entry[k, j, q]`` (j < count), each the flat position ((p K + k) 4 + i) of an entry of the (P, K, 4) table
    whose index is q (its output location is p = entry // (4 K), its weight ``table.weight.view(-1)[entry]``);
    the rest of the J columns hold 0. Ordered by entry, so sums over them are deterministic."""

    entry: Tensor  # (K, J, H * W) int32
    count: Tensor  # (K, H * W) int32


# A transposed table is kept only when it is at most this many times the size of the table itself: stride-1
# convolutions (each pixel read ~4 times per tap) qualify; strided ones (most pixels never read by a given tap)
# do not.
TRANSPOSED_SIZE_LIMIT = 4


def transposed_table(index: Tensor, height: int, width: int) -> Optional[TransposedTable]:
    """The ``TransposedTable`` of the table index tensor ``index`` (P, K, 4) for an H x W image, built on its
    device on first use (validating it first if needed; one host synchronisation, for the largest fan-in J) and
    remembered with it; None when it would be more than ``TRANSPOSED_SIZE_LIMIT`` times the table's size."""
    validate_index(index, height, width)
    f = _facts(index, height * width)
    if f is None:  # tracing: nothing to remember
        return _transpose(index, height * width)
    if f.transposed is _UNKNOWN:
        f.transposed = _transpose(index, height * width)
    return f.transposed


def _transpose(index: Tensor, pixels: int) -> Optional[TransposedTable]:
    P, K, corners = index.shape
    n = P * K * corners
    if n >= 2**31 or K * pixels >= 2**31:
        return None
    k = torch.arange(K, device=index.device, dtype=torch.int64).view(1, K, 1)
    key = (k * pixels + index.long()).reshape(-1)  # (k, q) of every entry, in entry order
    order = torch.argsort(key, stable=True)
    skey = key[order]
    count = torch.bincount(skey, minlength=K * pixels)
    J = int(count.max()) if n else 0
    if J * pixels > TRANSPOSED_SIZE_LIMIT * corners * P:
        return None
    rank = torch.arange(n, device=index.device) - (torch.cumsum(count, 0) - count)[skey]
    entry = torch.zeros(K * J * pixels, dtype=torch.int32, device=index.device)
    entry[(skey // pixels) * (J * pixels) + rank * pixels + skey % pixels] = order.to(torch.int32)
    return TransposedTable(entry.view(K, J, pixels), count.to(torch.int32).view(K, pixels))
