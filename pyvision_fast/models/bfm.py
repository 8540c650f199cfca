"""``bfm``: the parametric 3D face model of the talking-face pipeline (docs/talking_face.md): 257 coefficients
(Deep3DFaceRecon layout, ``face3d.basis.COEFF_SLICES``) -> mesh -> camera projection -> rendered image and 68
landmarks, differentiable end to end. Camera, lighting and pixel conventions: ``pyvision_fast.face3d.render``.

The basis is the Basel Face Model front model in Deep3DFaceRecon's ``BFM_model_front.mat`` layout
(``create_model("bfm", basis_path=...)``), any ``FaceBasis`` (``basis=...``), or the synthetic test face
(``basis="synthetic"``). No parameters are learned: the basis and index tables are buffers.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..face3d.basis import BFM_SOURCE, COEFF_SLICES, N_COEFFS, FaceBasis, load_bfm, mouth_vertex_indices
from ..face3d.render import (DEFAULT_INIT_LIT, camera_to_clip, euler_rotation, project, rasterize_mesh,
                             sh_shading, to_camera, vertex_normals)
from ..ops import texture_sample
from ._registry import register_model

__all__ = ["BFM", "bfm", "cylindrical_uv"]


def cylindrical_uv(mean_shape: Tensor) -> Tensor:
    """(N, 3) mean shape -> (N, 2) UVs *(ours, for bases without UVs such as the BFM front model)*: a vertical
    cylinder (axis along y) whose radius is the mesh's width (x extent), placed behind the face so that the
    frontmost vertex lies on it (axis at x = mean x, z = max z - width); u = the angle about the axis,
    atan2(x - x_axis, z - z_axis), mapped linearly so the mesh spans [0, 1] left to right; v = (y_max - y) /
    (y_max - y_min) (v = 0 at the top row of the texture, ``ops.texture_sample``'s convention). A face is
    about as deep as it is wide, so the angles stay within about +-1 rad: u grows monotonically with x."""
    p = mean_shape.double()
    width = (p[:, 0].max() - p[:, 0].min()).clamp_min(1e-12)
    theta = torch.atan2(p[:, 0] - p[:, 0].mean(), p[:, 2] - (p[:, 2].max() - width))
    u = (theta - theta.min()) / (theta.max() - theta.min()).clamp_min(1e-12)
    v = (p[:, 1].max() - p[:, 1]) / (p[:, 1].max() - p[:, 1].min()).clamp_min(1e-12)
    return torch.stack([u, v], 1).to(mean_shape.dtype)


class BFM(nn.Module):
    """Linear 3D face model with Deep3DFaceRecon's camera and SH lighting, rendered by
    ``ops.rasterize_triangles``.

    Args:
        basis: a ``FaceBasis``.
        image_size: rendered (H, W) or one int (default 224).
        focal: focal length in pixels (default 1015 * W / 224: Deep3DFaceRecon's 1015 at 224, scaled with W).
        center: principal point (cx, cy) in y-up pixels, or one number (default the image centre, 112 at 224).
        camera_distance: the camera's z (default 10); camera space Z = camera_distance - z.
        init_lit: 9 SH values added to each colour's gamma (default 0.8 ambient on band 0).
        znear, zfar: depth range of the clip-space mapping (default 5, 15; only orders depths).
        mouth_radius: ``face3d.basis.mouth_vertex_indices``'s radius (x mouth width) for ``mouth_idx``.

    Buffers: ``mean_shape`` (N, 3), ``id_base`` (N, 3, 80), ``exp_base`` (N, 3, 64), ``mean_tex`` (N, 3),
    ``tex_base`` (N, 3, 80), ``faces`` (F, 3) int64, ``point_buf`` (N, P) int64, ``landmark_idx`` (68,) int64,
    ``mouth_idx`` (M,) int64, ``uv`` (N, 2) (the basis's, else ``cylindrical_uv`` of the mean shape).
    """

    def __init__(self, basis: FaceBasis, image_size: Union[int, Sequence[int]] = 224,
                 focal: Optional[float] = None, center: Union[None, float, Sequence[float]] = None,
                 camera_distance: float = 10.0, init_lit: Sequence[float] = DEFAULT_INIT_LIT,
                 znear: float = 5.0, zfar: float = 15.0, mouth_radius: float = 0.25):
        super().__init__()
        if not isinstance(basis, FaceBasis):
            raise TypeError(f"BFM: argument 'basis' must be a FaceBasis, got {type(basis).__name__}")
        if isinstance(image_size, int) and not isinstance(image_size, bool):
            image_size = (image_size, image_size)
        if (not isinstance(image_size, Sequence) or len(image_size) != 2
                or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in image_size)):
            raise ValueError(f"BFM: argument 'image_size' must be a positive int or (H, W), got "
                             f"{image_size!r}")
        self.image_size = (int(image_size[0]), int(image_size[1]))
        H, W = self.image_size
        self.focal = float(focal) if focal is not None else 1015.0 * W / 224.0
        if not math.isfinite(self.focal) or self.focal <= 0:
            raise ValueError(f"BFM: argument 'focal' must be positive, got {focal}")
        if center is None:
            center = (W / 2, H / 2)
        elif isinstance(center, (int, float)):
            center = (float(center), float(center))
        self.center = (float(center[0]), float(center[1]))
        if camera_distance <= 0:
            raise ValueError(f"BFM: argument 'camera_distance' must be positive, got {camera_distance}")
        self.camera_distance = float(camera_distance)
        if not 0 < znear < zfar:
            raise ValueError(f"BFM: arguments 'znear' and 'zfar' must satisfy 0 < znear < zfar, got {znear}, "
                             f"{zfar}")
        self.znear, self.zfar = float(znear), float(zfar)
        init_lit = torch.as_tensor(init_lit, dtype=torch.float32)
        if init_lit.shape != (9,):
            raise ValueError(f"BFM: argument 'init_lit' must have 9 values, got shape "
                             f"{tuple(init_lit.shape)}")
        self.register_buffer("init_lit", init_lit)
        for name in ("mean_shape", "id_base", "exp_base", "mean_tex", "tex_base", "faces", "point_buf",
                     "landmark_idx"):
            self.register_buffer(name, getattr(basis, name).clone())
        uv = basis.uv if basis.uv is not None else cylindrical_uv(basis.mean_shape)
        self.register_buffer("uv", uv.float().clone())
        self.register_buffer("mouth_idx", mouth_vertex_indices(basis, mouth_radius))

    # -- pieces ------------------------------------------------------------------------------------------
    def _check(self, coeffs) -> None:
        if not isinstance(coeffs, Tensor):
            raise TypeError(f"BFM: argument 'coeffs' must be a tensor, got {type(coeffs).__name__}")
        if not coeffs.is_floating_point():
            raise TypeError(f"BFM: argument 'coeffs' must be a floating tensor, got {coeffs.dtype}")
        if coeffs.dim() != 2 or coeffs.shape[1] != N_COEFFS:
            raise ValueError(f"BFM: argument 'coeffs' must have shape (B, {N_COEFFS}), got "
                             f"{tuple(coeffs.shape)}")

    def shape(self, coeffs: Tensor) -> Tensor:
        """(B, 257) -> (B, N, 3) model-space vertices mean + identity + expression (no pose: what the mouth
        loss compares)."""
        self._check(coeffs)
        dt = coeffs.dtype
        idc, exc = coeffs[:, COEFF_SLICES["id"]], coeffs[:, COEFF_SLICES["exp"]]
        return (self.mean_shape.to(dt) + torch.einsum("nck,bk->bnc", self.id_base.to(dt), idc)
                + torch.einsum("nck,bk->bnc", self.exp_base.to(dt), exc))

    def albedo(self, coeffs: Tensor) -> Tensor:
        """(B, 257) -> (B, N, 3) albedo in [0, 1] units (not clamped)."""
        self._check(coeffs)
        dt = coeffs.dtype
        return self.mean_tex.to(dt) + torch.einsum("nck,bk->bnc", self.tex_base.to(dt),
                                                   coeffs[:, COEFF_SLICES["tex"]])

    def rotation(self, coeffs: Tensor) -> Tensor:
        """(B, 257) -> (B, 3, 3) R = Rz Ry Rx of the angles (column vectors)."""
        return euler_rotation(coeffs[:, COEFF_SLICES["angle"]])

    def landmarks(self, coeffs: Tensor) -> Tensor:
        """(B, 257) -> (B, 68, 2) landmark pixels (x right, y down), computing only the 68 landmark vertices
        (what landmark fitting evaluates many times); equal to ``geometry(coeffs)["landmarks"]``."""
        self._check(coeffs)
        dt, k = coeffs.dtype, self.landmark_idx
        shape = (self.mean_shape[k].to(dt)
                 + torch.einsum("nck,bk->bnc", self.id_base[k].to(dt), coeffs[:, COEFF_SLICES["id"]])
                 + torch.einsum("nck,bk->bnc", self.exp_base[k].to(dt), coeffs[:, COEFF_SLICES["exp"]]))
        world = shape @ self.rotation(coeffs).transpose(1, 2) + coeffs[:, None, COEFF_SLICES["trans"]]
        return project(to_camera(world, self.camera_distance), self.focal, self.image_size, self.center)

    def geometry(self, coeffs: Tensor) -> dict[str, Tensor]:
        """Everything but the raster: ``shape`` (B, N, 3) model space, ``verts`` (B, N, 3) camera space,
        ``verts_clip`` (B, N, 4), ``landmarks`` (B, 68, 2) pixels (x right, y down), ``normals`` (B, N, 3)
        rotated unit normals, ``vertex_colors`` (B, N, 3) lit albedo, ``albedo`` (B, N, 3)."""
        self._check(coeffs)
        shape = self.shape(coeffs)
        rot = self.rotation(coeffs)
        world = shape @ rot.transpose(1, 2) + coeffs[:, None, COEFF_SLICES["trans"]]
        verts = to_camera(world, self.camera_distance)
        pix = project(verts, self.focal, self.image_size, self.center)
        clip = camera_to_clip(verts, self.focal, self.image_size, self.center, self.znear, self.zfar)
        normals = vertex_normals(shape, self.faces, self.point_buf) @ rot.transpose(1, 2)
        albedo = self.albedo(coeffs)
        colors = sh_shading(albedo, normals, coeffs[:, COEFF_SLICES["gamma"]], self.init_lit.to(coeffs.dtype))
        return {"shape": shape, "verts": verts, "verts_clip": clip, "landmarks": pix[:, self.landmark_idx],
                "normals": normals, "vertex_colors": colors, "albedo": albedo}

    # -- rendering -----------------------------------------------------------------------------------------
    def render(self, coeffs: Tensor, texture: Optional[Tensor] = None,
               shade: bool = False) -> dict[str, Tensor]:
        """``geometry(coeffs)`` plus ``image`` (B, 3, H, W) and ``mask`` (B, 1, H, W) (1 on the face, image 0
        outside). Without ``texture`` the image interpolates the lit vertex colours; with ``texture`` (B, 3,
        Ht, Wt) it samples that UV map (``ops.texture_sample`` at the interpolated ``uv``), unlit unless
        ``shade=True`` (then times the interpolated SH irradiance, i.e. the texture replaces the albedo)."""
        out = self.geometry(coeffs)
        if texture is None:
            img, mask, rast = rasterize_mesh(out["verts_clip"], self.faces, out["vertex_colors"],
                                             self.image_size)
        else:
            if not isinstance(texture, Tensor) or not texture.is_floating_point():
                raise TypeError("BFM.render: argument 'texture' must be a floating tensor (B, 3, Ht, Wt)")
            B = coeffs.shape[0]
            if texture.dim() != 4 or texture.shape[0] != B or texture.shape[1] != 3:
                raise ValueError(f"BFM.render: argument 'texture' must have shape ({B}, 3, Ht, Wt), got "
                                 f"{tuple(texture.shape)}")
            uv = self.uv.to(coeffs.dtype).expand(B, -1, -1)
            attrs = uv
            if shade:
                gamma = coeffs[:, COEFF_SLICES["gamma"]]
                irr = sh_shading(torch.ones_like(out["albedo"]), out["normals"], gamma,
                                 self.init_lit.to(coeffs.dtype))
                attrs = torch.cat([uv, irr], -1)
            feat, mask, rast = rasterize_mesh(out["verts_clip"], self.faces, attrs, self.image_size)
            tex = texture_sample(texture.to(coeffs.dtype), feat[:, :2].permute(0, 2, 3, 1).contiguous())
            img = tex.permute(0, 3, 1, 2) * mask
            if shade:
                img = img * feat[:, 2:]
        out.update(image=img, mask=mask, rast=rast)
        return out

    def forward(self, coeffs: Tensor) -> dict[str, Tensor]:
        """(B, 257) coefficients -> dict: ``verts`` (B, N, 3) camera space, ``verts_clip`` (B, N, 4),
        ``landmarks`` (B, 68, 2) pixels, ``vertex_colors`` (B, N, 3) lit albedo, ``image`` (B, 3, H, W),
        ``mask`` (B, 1, H, W), and ``shape``, ``normals``, ``albedo``, ``rast`` (see ``geometry`` and
        ``render``)."""
        return self.render(coeffs)

    def extra_repr(self) -> str:
        return (f"verts={self.mean_shape.shape[0]}, faces={self.faces.shape[0]}, "
                f"image_size={self.image_size}, focal={self.focal:g}, center={self.center}, "
                f"camera_distance={self.camera_distance:g}")


@register_model
def bfm(basis_path: Union[str, Path, None] = None, basis: Union[FaceBasis, str, None] = None,
        recenter: bool = True, synthetic_rows: int = 32, seed: int = 0, **kwargs) -> BFM:
    """The 3DMM face model. ``basis_path``: a BFM front model ``.mat`` (Deep3DFaceRecon's
    ``BFM_model_front.mat``; ``recenter`` as ``face3d.load_bfm``); or ``basis``: a ``FaceBasis`` or
    ``"synthetic"`` (``face3d.synthetic_face_basis(synthetic_rows, seed)``). Other keywords go to ``BFM``
    (image_size, focal, center, camera_distance, init_lit, znear, zfar, mouth_radius)."""
    if basis_path is not None and basis is not None:
        raise ValueError("bfm: give either 'basis_path' or 'basis', not both")
    if basis_path is not None:
        basis = load_bfm(basis_path, recenter=recenter)
    elif isinstance(basis, str):
        if basis != "synthetic":
            raise ValueError(f"bfm: argument 'basis' must be a FaceBasis or 'synthetic', got {basis!r} "
                             f"(a file goes in 'basis_path')")
        from ..face3d.synthetic import synthetic_face_basis
        basis = synthetic_face_basis(synthetic_rows, seed)
    elif basis is None:
        raise FileNotFoundError(f"bfm: no basis given: pass basis_path= the file BFM_model_front.mat, "
                                f"which is {BFM_SOURCE}; or basis='synthetic' for the synthetic test face")
    return BFM(basis, **kwargs)
