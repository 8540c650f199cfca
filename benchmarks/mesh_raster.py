"""Triangle rasterization cases: a face mesh of the size of the Basel Face Model's front model (about 35.7k
vertices and 70.8k faces; here a height-field ellipsoid cap on a 189 x 189 grid: 35,721 vertices, 70,688
faces) seen by a perspective camera, B = 8 views turned by a few degrees each, rasterized at 224 x 224
(3DMM fitting, Deep3DFaceRecon) and 512 x 512.

Implementations: ours (``ops.rasterize_triangles``), the plain-PyTorch reference (vectorised over (triangle,
bounding-box pixel) pairs with a ``scatter_reduce`` z-buffer; the oracle of the tests) and PyTorch3D's
``rasterize_meshes`` where it is installed (NDC input x/w, y/w, z/w; its screen convention mirrors x, its
barycentrics are screen-space with ``perspective_correct=False``; one face per pixel). Every implementation
returns the per-pixel nearest face and its barycentrics. The CPU goal (>= 20x the reference) is issue 17's."""
from __future__ import annotations

import math

import torch

from pyvision_fast import ops
from pyvision_fast.reference import mesh_raster as ref

from .harness import Case, Impl, candidate_impl, peer

GRID = 189  # 189 x 189 vertices ~ the BFM front model's 35,709
_P3D_INSTALL = "pip install pytorch3d (or build it from source against this torch)"


def face_mesh(batch: int, grid: int = GRID, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """A face-like mesh: an ellipsoid cap height field on a grid x grid lattice, (batch, V, 4) clip-space
    vertices (views turned by 3 degrees each about the vertical axis, camera 4 units away, ~80% of the image
    height) and (F, 3) int64 faces (two counter-clockwise triangles per lattice cell)."""
    t = torch.linspace(-1.0, 1.0, grid, dtype=torch.float64)
    Y, X = torch.meshgrid(t, t, indexing="ij")
    X, Y = X * 0.75, Y
    h = 0.6 * torch.sqrt(torch.clamp(1 - (X / 0.75) ** 2 - Y ** 2, min=0.0))
    h = h + 0.05 * torch.cos(6 * X) * (Y > 0)  # a little relief
    views = []
    for b in range(batch):
        a = math.radians(3.0 * (b - batch / 2))
        x = X * math.cos(a) + h * math.sin(a)
        z = -X * math.sin(a) + h * math.cos(a)
        w = 4.0 - z
        clip = [3.2 * x, 3.2 * Y, 2 * w - 7.5, w]
        views.append(torch.stack([c.flatten() for c in clip], -1))
    verts = torch.stack(views).to(dtype)
    idx = torch.arange(grid * grid).reshape(grid, grid)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    faces = torch.cat([torch.stack([a, b, d], -1).reshape(-1, 3), torch.stack([a, d, c], -1).reshape(-1, 3)])
    return verts, faces


def _p3d_rows(verts: torch.Tensor, faces: torch.Tensor, size: int):
    def build(mod):
        from pytorch3d.structures import Meshes

        ndc = verts[..., :3] / verts[..., 3:]
        meshes = Meshes(verts=list(ndc), faces=[faces] * verts.shape[0])
        return Impl("pytorch3d.rasterize_meshes",
                    lambda: mod.rasterize_meshes(meshes, image_size=size, blur_radius=0.0, faces_per_pixel=1),
                    semantics="NDC input (no w: screen-space barycentrics), x mirrored, one face per pixel")
    return build


def _case(device: str, quick: bool, size: int) -> Case:
    B = 2 if quick else 8
    grid = 60 if quick else GRID
    verts, faces = face_mesh(B, grid)
    verts, faces = verts.to(device), faces.to(device)
    skipped: list = []
    impls = [Impl("pvf.rasterize_triangles", lambda: ops.rasterize_triangles(verts, faces, (size, size)),
                  "ours"),
             candidate_impl("pvf.rasterize_triangles (candidate)", ["rasterize_triangles"],
                            lambda: ops.rasterize_triangles(verts, faces, (size, size)))
             if device == "cuda" else None,
             Impl("reference (PyTorch, pairs + scatter_reduce)",
                  lambda: ref.rasterize_triangles(verts, faces, (size, size)), "reference")]
    impls += peer(skipped, "pytorch3d.rasterize_meshes", "pytorch3d.renderer.mesh.rasterize_meshes",
                  _p3d_rows(verts, faces, size), install=_P3D_INSTALL)
    V, F = verts.shape[1], faces.shape[0]
    return Case("mesh_raster", f"rasterize_triangles BFM-size {size}x{size} B={B}",
                dict(B=B, V=V, F=F, H=size, W=size), [i for i in impls if i is not None],
                goals=[("reference (PyTorch, pairs + scatter_reduce)", 20.0)] if device == "cpu" else [],
                samples=B, skipped=skipped,
                note="mesh: an ellipsoid cap on a 189 x 189 grid (35,721 vertices, 70,688 faces), the size "
                     "of the BFM front model (35,709 / 70,789); the CPU goal (>= 20x the reference) is issue "
                     "17's.")


def cases(device: str, quick: bool) -> list[Case]:
    return [_case(device, quick, size) for size in (224, 512)]
