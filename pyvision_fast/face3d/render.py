"""Camera, spherical-harmonics lighting and rasterized rendering of a 3D face, in Deep3DFaceRecon's
conventions (``models/bfm.py`` and ``util/nvdiffrast.py`` of sicxu/Deep3DFaceRecon_pytorch), all
differentiable in float32 and float64.

* Rotation: ``angles`` (x, y, z) in radians, R = Rz(z) Ry(y) Rx(x) applied to column vectors (x first);
  model-space vertices v become ``R v + trans``.
* Camera: at distance ``camera_distance`` (10) on the +z axis, looking toward -z. Camera space (what the model
  returns as ``verts``) is X right, Y up, Z = camera_distance - z (depth, positive in front of the camera).
* Projection: pinhole, ``x = focal X / Z + cx``, ``y_up = focal Y / Z + cy`` (Deep3DFaceRecon: focal 1015,
  principal point 112 for 224 x 224 images). Our pixel coordinates are y-down: ``y = H - y_up``, continuous,
  with pixel (row i, column j) covering [j, j + 1) x [i, i + 1) (its centre at (j + 0.5, i + 0.5)); this is
  where ``ops.rasterize_triangles`` samples, so landmarks and rendered images agree to the sub-pixel.
* Clip space for the rasterizer: w = Z, x_ndc = 2 x / W - 1, y_ndc = 2 y / H - 1 (row 0 of the image is the
  top), z_ndc = ((f + n) Z - 2 f n) / ((f - n) Z) with near n = 5 and far f = 15 (Deep3DFaceRecon's
  ``z_near`` / ``z_far``; they only order depths, nothing is clipped).
* Lighting: 9-band (order 2) spherical harmonics per colour channel, gamma (B, 27) = (R's 9, G's 9, B's 9),
  ``init_lit`` (default 0.8 on band 0, 0 elsewhere) added to every channel's 9 values; the basis is

      Y = (a0 c0, -a1 c1 n_y, a1 c1 n_z, -a1 c1 n_x, a2 c2 n_x n_y, -a2 c2 n_y n_z,
           a2 c2 (3 n_z^2 - 1) / (2 sqrt 3), -a2 c2 n_x n_z, a2 c2 (n_x^2 - n_y^2) / 2),
      a = (pi, 2 pi / sqrt 3, 2 pi / sqrt 8),
      c = (1 / sqrt(4 pi), sqrt 3 / sqrt(4 pi), 3 sqrt 5 / sqrt(12 pi));

  colour = albedo * (Y . gamma) with the rotated normals. Nothing clamps the colour (Deep3DFaceRecon
  neither).
* Vertex normals: per-triangle normals (v0 - v1) x (v1 - v2), normalised, summed over each vertex's triangles
  (``point_buf``) and normalised.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops import interpolate_attributes, rasterize_triangles

__all__ = ["euler_rotation", "vertex_normals", "sh_basis", "sh_shading", "to_camera", "project",
           "camera_to_clip", "rasterize_mesh", "SH_A", "SH_C", "DEFAULT_INIT_LIT"]

SH_A = (math.pi, 2 * math.pi / math.sqrt(3.0), 2 * math.pi / math.sqrt(8.0))
SH_C = (1 / math.sqrt(4 * math.pi), math.sqrt(3.0) / math.sqrt(4 * math.pi),
        3 * math.sqrt(5.0) / math.sqrt(12 * math.pi))
DEFAULT_INIT_LIT = (0.8, 0, 0, 0, 0, 0, 0, 0, 0)


def euler_rotation(angles: Tensor) -> Tensor:
    """(B, 3) angles (x, y, z) in radians -> (B, 3, 3) rotation matrices R = Rz Ry Rx (column-vector
    convention: ``v_rotated = R @ v``; Deep3DFaceRecon stores R^T and right-multiplies row vectors)."""
    x, y, z = angles.unbind(-1)
    cx, sx, cy, sy, cz, sz = x.cos(), x.sin(), y.cos(), y.sin(), z.cos(), z.sin()
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], -1).unflatten(-1, (3, 3))
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).unflatten(-1, (3, 3))
    rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], -1).unflatten(-1, (3, 3))
    return rz @ ry @ rx


def vertex_normals(verts: Tensor, faces: Tensor, point_buf: Tensor) -> Tensor:
    """(B, N, 3) vertices, (F, 3) int64 faces, (N, P) int64 ``point_buf`` (triangles around each vertex, F
    pads) -> (B, N, 3) unit vertex normals (the sum of the unit normals of the vertex's triangles,
    normalised; a vertex without triangles gets 0)."""
    v0, v1, v2 = verts[:, faces[:, 0]], verts[:, faces[:, 1]], verts[:, faces[:, 2]]
    fn = F.normalize(torch.linalg.cross(v0 - v1, v1 - v2, dim=-1), dim=-1)
    fn = torch.cat([fn, fn.new_zeros(fn.shape[0], 1, 3)], 1)
    return F.normalize(fn[:, point_buf].sum(2), dim=-1)


def sh_basis(normals: Tensor) -> Tensor:
    """(..., 3) unit normals -> (..., 9) the SH basis values with Deep3DFaceRecon's constants and signs
    (module docstring)."""
    a, c = SH_A, SH_C
    nx, ny, nz = normals.unbind(-1)
    return torch.stack([
        torch.full_like(nx, a[0] * c[0]),
        -a[1] * c[1] * ny,
        a[1] * c[1] * nz,
        -a[1] * c[1] * nx,
        a[2] * c[2] * nx * ny,
        -a[2] * c[2] * ny * nz,
        0.5 * a[2] * c[2] / math.sqrt(3.0) * (3 * nz * nz - 1),
        -a[2] * c[2] * nx * nz,
        0.5 * a[2] * c[2] * (nx * nx - ny * ny),
    ], -1)


def sh_shading(albedo: Tensor, normals: Tensor, gamma: Tensor,
               init_lit: Union[Sequence[float], Tensor] = DEFAULT_INIT_LIT) -> Tensor:
    """Lit colours (B, N, 3) = albedo (B, N, 3) * irradiance, irradiance_c = sh_basis(normals) . (gamma_c +
    init_lit) for channel c. ``gamma`` (B, 27) channel-major (R's 9 bands, then G's, then B's); ``init_lit``
    (9 values, default Deep3DFaceRecon's 0.8 ambient on band 0) is added to each channel's bands."""
    B = gamma.shape[0]
    lit = torch.as_tensor(init_lit, dtype=gamma.dtype, device=gamma.device).reshape(1, 1, 9)
    g = gamma.reshape(B, 3, 9) + lit  # (B, 3, 9)
    irr = torch.einsum("bnk,bck->bnc", sh_basis(normals), g)
    return albedo * irr


def to_camera(verts: Tensor, camera_distance: float = 10.0) -> Tensor:
    """World (model after pose) -> camera space: X, Y kept, Z = camera_distance - z."""
    return torch.cat([verts[..., :2], camera_distance - verts[..., 2:]], -1)


def _center(center, image_size) -> tuple[float, float]:
    H, W = image_size
    if center is None:
        return W / 2, H / 2
    if isinstance(center, (int, float)):
        return float(center), float(center)
    cx, cy = center
    return float(cx), float(cy)


def project(verts_cam: Tensor, focal: float, image_size: tuple[int, int],
            center: Union[None, float, tuple[float, float]] = None) -> Tensor:
    """(B, N, 3) camera-space points -> (B, N, 2) pixel coordinates (x right, y down; module docstring):
    x = focal X / Z + cx, y = H - (focal Y / Z + cy). ``center`` is the principal point (cx, cy) in
    Deep3DFaceRecon's y-up image coordinates (one number for both; default the image centre)."""
    H, W = image_size
    cx, cy = _center(center, image_size)
    X, Y, Z = verts_cam.unbind(-1)
    return torch.stack([focal * X / Z + cx, H - (focal * Y / Z + cy)], -1)


def camera_to_clip(verts_cam: Tensor, focal: float, image_size: tuple[int, int],
                   center: Union[None, float, tuple[float, float]] = None, znear: float = 5.0,
                   zfar: float = 15.0) -> Tensor:
    """(B, N, 3) camera-space points -> (B, N, 4) clip-space (x, y, z, w) for ``ops.rasterize_triangles``:
    w = Z and (x / w, y / w) the NDC of ``project``'s pixel coordinates (row 0 = top), z / w increasing with
    depth (OpenGL's mapping of [znear, zfar] to [-1, 1])."""
    H, W = image_size
    cx, cy = _center(center, image_size)
    X, Y, Z = verts_cam.unbind(-1)
    x = (2 * focal / W) * X + (2 * cx / W - 1) * Z
    y = -(2 * focal / H) * Y + (1 - 2 * cy / H) * Z
    z = (zfar + znear) / (zfar - znear) * Z - 2 * zfar * znear / (zfar - znear)
    return torch.stack([x, y, z, Z], -1)


def rasterize_mesh(verts_clip: Tensor, faces: Tensor, attrs: Tensor, image_size: tuple[int, int],
                   rast: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    """Rasterizes (B, N, 4) clip-space vertices and interpolates (B, N, C) vertex attributes: returns
    (image (B, C, H, W), zero outside the face; mask (B, 1, H, W) float, 1 where a triangle covers the pixel;
    rast (B, H, W, 4)). Differentiable in ``attrs`` and, through the barycentrics inside the face, in the
    vertex positions (the silhouette itself has no gradient: no antialiasing, as Deep3DFaceRecon)."""
    if rast is None:
        rast = rasterize_triangles(verts_clip, faces, tuple(image_size))
    feat = interpolate_attributes(attrs.to(rast.dtype), rast, faces)
    mask = (rast[..., 3:] > 0).to(attrs.dtype)
    return (feat * mask).permute(0, 3, 1, 2), mask.permute(0, 3, 1, 2), rast
