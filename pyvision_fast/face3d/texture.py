"""Unwrapping video frames into the face's UV texture map (the target of the talking-face pipeline's StyleGAN
texture inversion, docs/talking_face.md), differentiable in the frames and, where meaningful, in the 3DMM
coefficients.

Conventions (those of ``ops.texture_sample`` and ``face3d.render``):

* UV map: (S, S) texels, texel (row i, column j) centred at (u, v) = ((j + 0.5) / S, (i + 0.5) / S), v = 0 at
  row 0: the map ``unwrap_texture`` returns is a texture that ``BFM.render(coeffs, texture)`` reads back at
  the same places.
* ``uv_raster`` rasterizes the mesh in UV space (vertex k at clip (2 u_k - 1, 2 v_k - 1, 0, 1)) with
  ``ops.rasterize_triangles``: per texel centre, its triangle and (affine) barycentrics. It depends only on
  the UVs and faces: compute it once per (model, S) and pass it as ``uv_rast``.
* A texel's surface point is the barycentric combination of its triangle's camera-space vertices; it is
  projected exactly (its clip coordinates interpolated, then divided by w), so its pixel position and depth
  are those of ``BFM.geometry`` / ``project`` (pixel centres at (j + 0.5, i + 0.5), y down).
* Sampling: bilinear over the 4 pixel centres around the projected point (``F.grid_sample`` with
  ``align_corners=False``: the same weights), each neighbour kept only when the frame shows *this* surface
  there: the neighbour pixel is covered by the face in the z-buffer of ``ops.rasterize_triangles`` on the
  same coefficients and its depth agrees with the texel's depth within a tolerance. The colour is the kept
  neighbours' weighted mean (exactly the bilinear sample where all 4 are kept), so silhouettes and
  occlusion edges do not bleed the background or the occluder into the texture.
* Visibility = [texel inside a UV triangle] x [surface facing the camera: cos(normal, direction to the
  camera) >= ``min_facing``, interpolated normals of ``BFM.geometry``] x (sum of the kept neighbours'
  bilinear weights): 1 where the whole bilinear footprint shows the surface, fractional at silhouettes and
  occlusion edges, 0 where the surface point is hidden (behind another part of the mesh), turned away, or
  outside the image. Texels with visibility 0 have texture 0.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops import rasterize_triangles
from .basis import COEFF_SLICES
from .render import sh_shading

__all__ = ["uv_raster", "unwrap_texture", "fill_invisible"]


def _check_size(op: str, size) -> int:
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"{op}: argument 'size' must be an int, got {type(size).__name__}")
    if size < 2:
        raise ValueError(f"{op}: argument 'size' must be >= 2, got {size}")
    return size


def uv_raster(model_or_uv: Union[Tensor, torch.nn.Module], faces: Optional[Tensor] = None,
              size: int = 256) -> Tensor:
    """Rasterizes the mesh in UV space: which triangle, at which barycentrics, lies under each texel centre.

    Args:
        model_or_uv: a ``BFM`` (its ``uv`` (N, 2) and, when ``faces`` is None, its ``faces``) or a (N, 2)
            float32/float64 UV tensor in [0, 1] (``ops.texture_sample``'s convention, v = 0 at row 0).
        faces: (F, 3) int64/int32 vertex indices (required with a UV tensor).
        size: S >= 2, the texture's side.

    Returns: rast (1, S, S, 4) of the UVs' dtype and device, ``ops.rasterize_triangles``'s layout: (b1, b2, 0,
    triangle_id + 1) per texel, zeros where no triangle covers the texel centre; (b1, b2) are the affine
    barycentrics of the triangle's vertices 1 and 2 in UV space (vertex 0 has 1 - b1 - b2). No gradient.

    The UV layout must be injective (no fold-over): where UV triangles overlap, the rasterizer's z-buffer
    (all depths equal here) gives the texel to the lowest triangle id, and the other triangles' surface is
    never unwrapped there (the renderer would read the same texel for both surfaces). Triangles with zero UV
    area are dropped; both UV orientations (clockwise or not) are rasterized.
    """
    op = "uv_raster"
    if isinstance(model_or_uv, Tensor):
        uv = model_or_uv
        if faces is None:
            raise TypeError(f"{op}: argument 'faces' is required when 'model_or_uv' is a UV tensor")
    else:
        uv = getattr(model_or_uv, "uv", None)
        if not isinstance(uv, Tensor):
            raise TypeError(f"{op}: argument 'model_or_uv' must be a (N, 2) UV tensor or a model with a 'uv' "
                            f"buffer, got {type(model_or_uv).__name__}")
        if faces is None:
            faces = model_or_uv.faces
    if uv.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{op}: argument 'model_or_uv' must hold float32/float64 UVs, got {uv.dtype}")
    if uv.dim() != 2 or uv.shape[1] != 2:
        raise ValueError(f"{op}: argument 'model_or_uv' must hold UVs of shape (N, 2), got {tuple(uv.shape)}")
    if not isinstance(faces, Tensor):
        raise TypeError(f"{op}: argument 'faces' must be a tensor, got {type(faces).__name__}")
    S = _check_size(op, size)
    uv = uv.detach()
    clip = torch.cat([uv * 2 - 1, torch.zeros_like(uv[:, :1]), torch.ones_like(uv[:, :1])], 1)
    with torch.no_grad():
        return rasterize_triangles(clip.unsqueeze(0).contiguous(), faces.to(uv.device), (S, S))


def _check_float(op: str, name: str, t) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: argument '{name}' must be a tensor, got {type(t).__name__}")
    if t.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{op}: argument '{name}' must be float32 or float64, got {t.dtype}")


def unwrap_texture(model, coeffs: Tensor, images: Tensor, size: int = 256, uv_rast: Optional[Tensor] = None,
                   delight: bool = False, min_facing: float = 0.2, depth_tol: float = 0.05,
                   min_irradiance: float = 0.05) -> dict[str, Tensor]:
    """Unwraps frames into the face's UV texture map (module docstring for the conventions).

    Args:
        model: a ``BFM`` (``create_model("bfm", ...)``).
        coeffs: (B, 257) float32/float64 coefficients of the frames (pose, shape, lighting).
        images: (B, 3, H, W) float32/float64 frames at the model's ``image_size`` (H, W), on its device.
        size: S >= 2, the texture's side.
        uv_rast: optional ``uv_raster(model, size=S)`` (1, S, S, 4), reused across calls.
        delight: divide the colours by the SH irradiance of the frame's lighting (``sh_shading`` of a unit
            albedo with the coefficients' gamma and the model's ``init_lit``, interpolated from the vertices
            as ``BFM.render(shade=True)`` does), giving an albedo; texels whose irradiance is below
            ``min_irradiance`` in some channel are marked invisible (their albedo is not recoverable) and the
            division uses the irradiance clamped to at least ``min_irradiance``.
        min_facing: a texel is seen only where the cosine between its (interpolated, normalised) normal and
            the direction from its surface point to the camera is >= this.
        depth_tol: base depth tolerance (model units, Z of camera space) of the z-buffer test; the test allows
            in addition 1.5 pixel footprints times the surface's slope tan(angle to the view ray), so grazing
            surfaces are not rejected by their own depth change between pixel centres.
        min_irradiance: see ``delight``.

    Returns: dict of the promoted dtype of coeffs and images: ``texture`` (B, 3, S, S) (0 where not visible),
    ``visibility`` (B, 1, S, S) in [0, 1] (0 outside the UV triangles, for hidden or turned-away surface, or
    outside the image; 1 where the texel's whole bilinear footprint shows its surface). Differentiable in
    ``images`` and in ``coeffs`` through the projected positions (bilinear weights), the lighting (with
    ``delight``) and the soft visibility weights; the discrete decisions (coverage, depth and facing tests)
    have no gradient.
    """
    op = "unwrap_texture"
    _check_float(op, "coeffs", coeffs)
    _check_float(op, "images", images)
    if coeffs.dim() != 2 or coeffs.shape[1] != 257:
        raise ValueError(f"{op}: argument 'coeffs' must have shape (B, 257), got {tuple(coeffs.shape)}")
    B = coeffs.shape[0]
    H, W = model.image_size
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"{op}: argument 'images' must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if images.shape[0] != B:
        raise ValueError(f"{op}: argument 'images' has batch {images.shape[0]} but 'coeffs' has batch {B}")
    if tuple(images.shape[2:]) != (H, W):
        raise ValueError(f"{op}: argument 'images' must be at the model's image_size {(H, W)}, got "
                         f"{tuple(images.shape[2:])}")
    device = model.faces.device
    if images.device != device or coeffs.device != device:
        raise TypeError(f"{op}: arguments 'images' ({images.device}) and 'coeffs' ({coeffs.device}) must be "
                        f"on the model's device {device}")
    S = _check_size(op, size)
    if not -1.0 <= float(min_facing) <= 1.0:
        raise ValueError(f"{op}: argument 'min_facing' must be a cosine in [-1, 1], got {min_facing}")
    if not float(depth_tol) >= 0:
        raise ValueError(f"{op}: argument 'depth_tol' must be >= 0, got {depth_tol}")
    if not float(min_irradiance) > 0:
        raise ValueError(f"{op}: argument 'min_irradiance' must be positive, got {min_irradiance}")
    if uv_rast is None:
        uv_rast = uv_raster(model, None, S)
    else:
        _check_float(op, "uv_rast", uv_rast)
        if tuple(uv_rast.shape) != (1, S, S, 4):
            raise ValueError(f"{op}: argument 'uv_rast' must have shape (1, {S}, {S}, 4) (uv_raster of this "
                             f"size), got {tuple(uv_rast.shape)}")
        if uv_rast.device != device:
            raise TypeError(f"{op}: argument 'uv_rast' is on {uv_rast.device}, the model on {device}")

    dtype = torch.promote_types(coeffs.dtype, images.dtype)
    coeffs, images = coeffs.to(dtype), images.to(dtype)
    geo = model.geometry(coeffs)
    faces = model.faces

    # texels covered by a UV triangle, their triangles' vertices and barycentrics
    ur = uv_rast[0].detach().reshape(S * S, 4)
    tid = ur[:, 3].round().long() - 1
    sel = torch.nonzero(tid >= 0).squeeze(1)  # (K,)
    K = sel.numel()
    texture = images.new_zeros(B, S * S, 3)
    visibility = images.new_zeros(B, S * S)
    if K == 0:
        return {"texture": texture.reshape(B, S, S, 3).permute(0, 3, 1, 2),
                "visibility": visibility.reshape(B, 1, S, S)}
    b1, b2 = ur[sel, 0].to(dtype), ur[sel, 1].to(dtype)
    bary = torch.stack([1 - b1 - b2, b1, b2], 1)  # (K, 3)
    corner = faces[tid[sel]]  # (K, 3)

    attrs = [geo["verts_clip"], geo["verts"], geo["normals"]]
    init_lit = model.init_lit.to(dtype)
    if delight:
        gamma = coeffs[:, COEFF_SLICES["gamma"]]
        attrs.append(sh_shading(torch.ones_like(geo["normals"]), geo["normals"], gamma, init_lit))
    attr = torch.cat(attrs, -1)  # (B, N, C)
    pt = (attr[:, corner] * bary[None, :, :, None]).sum(2)  # (B, K, C): the texels' surface points
    clip, cam, nrm = pt[..., :4], pt[..., 4:7], F.normalize(pt[..., 7:10], dim=-1)

    # projection: clip -> NDC (= grid_sample's align_corners=False coordinates) -> pixels (centres at +0.5)
    w = clip[..., 3]
    front = w.detach() > 1e-6
    w_safe = torch.where(front, w, torch.ones_like(w))
    px = (clip[..., 0] / w_safe + 1) * (W * 0.5)
    py = (clip[..., 1] / w_safe + 1) * (H * 0.5)

    # facing: the normal (world axes: x right, y up, z toward the camera) against the direction to the camera
    # (-X, -Y, -Z in camera space, whose Z axis points away from the camera: world direction (-X, -Y, +Z))
    to_cam = F.normalize(torch.stack([-cam[..., 0], -cam[..., 1], cam[..., 2]], -1), dim=-1)
    cos = (nrm * to_cam).sum(-1)

    # z-buffer of the frame's mesh, as camera depth Z (inverting camera_to_clip's z/w)
    with torch.no_grad():
        rast = rasterize_triangles(geo["verts_clip"].detach(), faces, (H, W))
        n_, f_ = model.znear, model.zfar
        a_, b_ = (f_ + n_) / (f_ - n_), 2 * f_ * n_ / (f_ - n_)
        covered = rast[..., 3] > 0
        zbuf = torch.where(covered, b_ / (a_ - rast[..., 2]).clamp_min(1e-12), torch.zeros_like(rast[..., 2]))
        zbuf, covered = zbuf.reshape(B, H * W), covered.reshape(B, H * W)
        zt = w.detach()
        c = cos.detach().clamp(0.05, 1.0)
        tol = depth_tol + 1.5 * zt / model.focal * torch.sqrt(1 - c * c) / c  # (B, K)

    # masked bilinear sampling over the 4 pixel centres around (px, py)
    fx, fy = px - 0.5, py - 0.5
    j0, i0 = fx.detach().floor(), fy.detach().floor()
    ax, ay = fx - j0, fy - i0
    j0, i0 = j0.clamp(-2, W + 1).long(), i0.clamp(-2, H + 1).long()
    img = images.reshape(B, 3, H * W)
    num = images.new_zeros(B, 3, K)
    den = images.new_zeros(B, K)
    lost = images.new_zeros(B, K)  # weight of the dropped neighbours (visibility 1 - lost: exactly 1 if none)
    for di, dj in ((0, 0), (0, 1), (1, 0), (1, 1)):
        ii, jj = i0 + di, j0 + dj
        wk = (ay if di else 1 - ay) * (ax if dj else 1 - ax)  # (B, K)
        inside = (ii >= 0) & (ii < H) & (jj >= 0) & (jj < W) & front
        idx = (ii.clamp(0, H - 1) * W + jj.clamp(0, W - 1))
        with torch.no_grad():
            keep = inside & covered.gather(1, idx) & ((zbuf.gather(1, idx) - zt).abs() <= tol)
        keepf = keep.to(dtype)
        lost = lost + wk * (1 - keepf)
        wk = wk * keepf
        num = num + wk.unsqueeze(1) * img.gather(2, idx.unsqueeze(1).expand(B, 3, K))
        den = den + wk
    seen = (den.detach() > 0) & (cos.detach() >= min_facing)
    colour = num / den.clamp_min(1e-12).unsqueeze(1)  # (B, 3, K)
    if delight:
        irr = pt[..., 10:13].transpose(1, 2)  # (B, 3, K)
        seen = seen & (irr.detach() >= min_irradiance).all(1)
        colour = colour / irr.clamp_min(min_irradiance)
    seenf = seen.to(dtype)
    colour = colour * seenf.unsqueeze(1)
    vis = (1 - lost).clamp(0, 1) * seenf

    texture = texture.index_copy(1, sel, colour.transpose(1, 2))
    visibility = visibility.index_copy(1, sel, vis)
    return {"texture": texture.reshape(B, S, S, 3).permute(0, 3, 1, 2),
            "visibility": visibility.reshape(B, 1, S, S)}


def fill_invisible(texture: Tensor, visibility: Tensor, iterations: int = 8) -> Tensor:
    """Fills invisible texels from visible neighbours, so an inversion target has no black holes.

    Args:
        texture: (B, C, S, S) float32/float64 (e.g. ``unwrap_texture``'s).
        visibility: (B, 1, S, S) float; texels with visibility > 0 are known and kept unchanged.
        iterations: number of growth steps (>= 0): each step gives every unknown texel with a known texel
            among its 8 neighbours the mean of those known neighbours (3 x 3 masked average pooling) and makes
            it known; texels farther than ``iterations`` texels (Chebyshev distance) from any known one
            stay 0.

    Returns: (B, C, S, S) filled texture, differentiable in ``texture``.
    """
    op = "fill_invisible"
    _check_float(op, "texture", texture)
    _check_float(op, "visibility", visibility)
    if texture.dim() != 4:
        raise ValueError(f"{op}: argument 'texture' must have shape (B, C, S, S), got {tuple(texture.shape)}")
    B, _, Hs, Ws = texture.shape
    if tuple(visibility.shape) != (B, 1, Hs, Ws):
        raise ValueError(f"{op}: argument 'visibility' must have shape {(B, 1, Hs, Ws)}, got "
                         f"{tuple(visibility.shape)}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"{op}: argument 'iterations' must be an int >= 0, got {iterations!r}")
    known = (visibility.detach() > 0).to(texture.dtype)
    out = texture * known
    for _ in range(iterations):
        if bool(known.min() > 0):
            break
        s = F.avg_pool2d(out, 3, stride=1, padding=1, count_include_pad=False)
        m = F.avg_pool2d(known, 3, stride=1, padding=1, count_include_pad=False)
        grow = (m > 0).to(texture.dtype) * (1 - known)
        out = out + grow * s / m.clamp_min(1e-12)
        known = known + grow
    return out
