"""Differentiable triangle rasterization and attribute interpolation (nvdiffrast's ``rasterize`` /
``interpolate`` convention, without antialiasing), for face-model fitting and mesh rendering.

``rasterize_triangles(verts_clip, faces, image_size, cull_backfaces=False)`` -> ``rast`` (B, H, W, 4):

* Inputs: ``verts_clip`` (B, V, 4) float32/float64 clip-space (x, y, z, w) (after the projection matrix);
  ``faces`` (F, 3) int32/int64 vertex indices in [0, V), shared by the batch; ``image_size`` = (H, W) >= 1.
* Pixels: pixel (i, j) of row i, column j has its centre at NDC x = (2j + 1) / W - 1, y = (2i + 1) / H - 1.
  **Row 0 is NDC y = -1** (OpenGL's bottom row, as in nvdiffrast): flip the rows (``rast.flip(1)``) to view
  the image with +y up. Screen coordinates are ``sx = (x / w + 1) W / 2``, ``sy = (y / w + 1) H / 2``.
* Coverage: a triangle covers a pixel when the pixel centre is inside it in screen space. A centre exactly on
  an edge belongs to the triangle for which that edge, taken in the triangle's counter-clockwise order, runs
  toward +y (or toward -x when horizontal): two triangles sharing an edge never both cover nor both miss a
  centre on it (the edge functions are evaluated from a canonical endpoint, so they are exactly opposite).
* Culling: triangles with a vertex of ``w <= 0`` are dropped whole (**no clipping** against the near plane:
  keep meshes in front of the camera), as are triangles with a non-finite coordinate and degenerate (zero
  screen area) ones. Front faces are counter-clockwise in screen space with y up (positive
  ``(x1-x0)(y2-y0) - (y1-y0)(x2-x0)``, OpenGL's default); back faces are dropped only with
  ``cull_backfaces=True``, otherwise rasterized like front faces.
* Z-buffer: depth is z/w interpolated at the pixel (perspective-correct: z/w is affine in screen space); the
  smallest depth wins; equal depths go to the lower triangle id (deterministic). No depth-range clipping.
* Output channels: (u, v, z/w, triangle_id + 1), (0, 0, 0, 0) where no triangle covers the pixel. (u, v) are
  the perspective-correct barycentrics of vertices 1 and 2 of ``faces[id]`` (vertex 0 has 1 - u - v). The id
  channel is exact for F < 2**24 faces in float32.
* Gradients: coverage is piecewise constant and gets none (as nvdiffrast without antialiasing); (u, v, z/w) of
  the covered pixels are differentiated analytically with respect to ``verts_clip`` (the backward takes
  d loss / d (u, v, depth) per pixel); the id channel has no gradient.

``interpolate_attributes(attr, rast, faces)`` -> (B, H, W, C) = ``(1 - u - v) a0 + u a1 + v a2`` of the
pixel's triangle, zero where no triangle: differentiable in ``attr`` (a scatter-add) and, through (u, v), in
the vertex positions. ``texture_sample(tex, uv)`` looks a texture up at interpolated UVs through
``F.grid_sample``.

Backends: ``cpu`` (C++, OpenMP over (image, band of rows), bitwise equal to the reference), ``reference``
(plain PyTorch: vectorised over (triangle, bounding-box pixel) pairs with a ``scatter_reduce`` z-buffer), and
on GPUs the CUDA kernel as the candidate ``"cuda:next"`` (opt-in through
``PVF_CANDIDATES=rasterize_triangles`` or ``use_candidates``; not yet run on a GPU); GPUs run the reference
until then. ONNX export is not provided
for this family (the issue asks ONNX only for the renderer-free parts).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _backend, _ext
from .. import _memory
from ..reference import mesh_raster as ref
from ._registry import dispatch, eager, eager_function

_OP = "rasterize_triangles"


def _rast_cpu(verts: Tensor, faces: Tensor, H: int, W: int, cull_backfaces: bool) -> Tensor:
    B, V = verts.shape[0], verts.shape[1]
    rast = _memory.empty((B, H, W, 4), verts.dtype, verts.device)
    mod = _ext.cpu_module()
    ws = verts.new_empty((mod.mesh_raster_workspace(B, V),))
    mod.rasterize_triangles(_ext.arg(verts), _ext.arg(faces), H, W, cull_backfaces, _ext.arg(rast),
                            _ext.arg(ws))
    return rast


def _rast_cuda(verts: Tensor, faces: Tensor, H: int, W: int, cull_backfaces: bool) -> Tensor:
    B, V = verts.shape[0], verts.shape[1]
    rast = verts.new_empty((B, H, W, 4))
    ws = verts.new_empty((B * V * 4,))
    keys = torch.empty((2 * B * H * W,), dtype=torch.int64, device=verts.device)
    _ext.cuda_module().rasterize_triangles(_ext.arg(verts), _ext.arg(faces), H, W, cull_backfaces,
                                           _ext.arg(rast), _ext.arg(ws), _ext.arg(keys),
                                           _ext.stream(verts.device))
    return rast


def _rast_ref(verts: Tensor, faces: Tensor, H: int, W: int, cull_backfaces: bool) -> Tensor:
    return ref.rasterize_triangles(verts, faces, (H, W), cull_backfaces)


# "cuda" is the plain-PyTorch computation (what GPUs run until the kernel is verified), "cuda:next" the
# kernel.
_IMPLS = {"cpu": _rast_cpu, "cuda": _rast_ref, "cuda:next": _rast_cuda, "reference": _rast_ref}
_backend.register_candidate(_OP, "cuda:next")


def _rast_impl(verts_clip: Tensor, faces: Tensor, H: int, W: int, cull_backfaces: bool) -> Tensor:
    impl = dispatch(_OP, verts_clip.device, _IMPLS)
    if impl is not _rast_cpu:  # the C++ CPU binding checks the indices itself
        _check_face_range(_OP, faces, verts_clip.shape[1])
    return impl(verts_clip.contiguous(), faces.contiguous(), H, W, cull_backfaces)


_rast_op = torch.library.custom_op("pvf::rasterize_triangles", mutates_args=())(_rast_impl)


@_rast_op.register_fake
def _(verts_clip, faces, H, W, cull_backfaces):
    return verts_clip.new_empty((verts_clip.shape[0], H, W, 4))


def rasterize_backward(verts_clip: Tensor, faces: Tensor, rast: Tensor, grad_rast: Tensor) -> Tensor:
    """d loss / d verts_clip (B, V, 4) from d loss / d rast (B, H, W, 4) (channels u, v, depth; the id channel
    is ignored), analytically: per covered pixel, with edge functions e_k (edge k opposite vertex k) in
    screen space, r_k = e_k / w_k, u = r1 / sum r, v = r2 / sum r, depth = sum e_k z_k/w_k / area (area =
    sum e_k), the chain rule through e_k(sx, sy), 1/w, z/w and sx = (x/w + 1) W/2, sy = (y/w + 1) H/2; summed
    per vertex."""
    B, H, W, _ = rast.shape
    V = verts_clip.shape[1]
    grad = verts_clip.new_zeros((B * V, 4))
    tid = rast[..., 3].round().long() - 1
    bi, ii, jj = torch.nonzero(tid >= 0, as_tuple=True)
    if bi.numel() == 0:
        return grad.view(B, V, 4)
    g = grad_rast[bi, ii, jj].to(verts_clip.dtype)
    gu, gv, gd = g[:, 0], g[:, 1], g[:, 2]
    corner = faces.long()[tid[bi, ii, jj]]  # (N, 3)
    x, y, z, w = verts_clip[bi.unsqueeze(1), corner].unbind(-1)  # (N, 3) each
    sx, sy = (x / w + 1) * (W * 0.5), (y / w + 1) * (H * 0.5)
    iw, zw = 1 / w, z / w
    px = (jj.to(x.dtype) + 0.5).unsqueeze(1)
    py = (ii.to(x.dtype) + 0.5).unsqueeze(1)
    a_, b_ = [1, 2, 0], [2, 0, 1]  # edge k runs from vertex a_[k] to vertex b_[k]
    ax, ay, bx, by = sx[:, a_], sy[:, a_], sx[:, b_], sy[:, b_]
    e = (bx - ax) * (py - ay) - (by - ay) * (px - ax)  # (N, 3)
    area = e.sum(1)
    r = e * iw
    s = r.sum(1)
    u, v = r[:, 1] / s, r[:, 2] / s
    depth = (e * zw).sum(1) / area
    delta1 = torch.tensor([0.0, 1.0, 0.0], dtype=x.dtype, device=x.device)
    delta2 = torch.tensor([0.0, 0.0, 1.0], dtype=x.dtype, device=x.device)
    gr = (gu.unsqueeze(1) * (delta1 - u.unsqueeze(1)) + gv.unsqueeze(1) * (delta2 - v.unsqueeze(1)))
    gr = gr / s.unsqueeze(1)
    g_area = -gd * depth / area
    ge = gr * iw + (gd / area).unsqueeze(1) * zw + g_area.unsqueeze(1)
    g_iw = gr * e
    g_zw = (gd / area).unsqueeze(1) * e
    # d e_k / d(a, b): da_x = by - py, da_y = px - bx, db_x = py - ay, db_y = ax - px
    g_sx = torch.zeros_like(sx)
    g_sy = torch.zeros_like(sy)
    g_sx.index_add_(1, torch.tensor(a_, device=x.device), ge * (by - py))
    g_sy.index_add_(1, torch.tensor(a_, device=x.device), ge * (px - bx))
    g_sx.index_add_(1, torch.tensor(b_, device=x.device), ge * (py - ay))
    g_sy.index_add_(1, torch.tensor(b_, device=x.device), ge * (ax - px))
    hw, hh = W * 0.5, H * 0.5
    w2 = w * w
    gx = g_sx * hw / w
    gy = g_sy * hh / w
    gz = g_zw / w
    gw = -(g_sx * hw * x + g_sy * hh * y + g_iw + g_zw * z) / w2
    rows = (bi.unsqueeze(1) * V + corner).reshape(-1)
    grad.index_add_(0, rows, torch.stack([gx, gy, gz, gw], -1).reshape(-1, 4))
    return grad.view(B, V, 4)


# The backward is its own custom op: its per-pixel gathers have data-dependent sizes, which tracing
# (torch.compile, AOT autograd) must not look into.
@torch.library.custom_op("pvf::rasterize_triangles_backward", mutates_args=())
def _rast_backward_op(verts_clip: Tensor, faces: Tensor, rast: Tensor, grad_rast: Tensor) -> Tensor:
    return rasterize_backward(verts_clip, faces, rast, grad_rast.contiguous())


@_rast_backward_op.register_fake
def _(verts_clip, faces, rast, grad_rast):
    return torch.empty_like(verts_clip, memory_format=torch.contiguous_format)


def _rast_setup(ctx, inputs, output):
    verts_clip, faces = inputs[0], inputs[1]
    ctx.save_for_backward(verts_clip, faces, output)


def _rast_backward(ctx, grad_rast: Optional[Tensor]):
    verts_clip, faces, rast = ctx.saved_tensors
    grad_verts = None
    if ctx.needs_input_grad[0] and grad_rast is not None:
        grad_verts = _rast_backward_op(verts_clip, faces, rast, grad_rast)
    return grad_verts, None, None, None, None


_rast_op.register_autograd(_rast_backward, setup_context=_rast_setup)
_RastFunction = eager_function("_RastFunction", _rast_impl, _rast_setup, _rast_backward)


def _image_size(image_size) -> tuple[int, int]:
    if (not isinstance(image_size, Sequence) or len(image_size) != 2
            or any(isinstance(s, bool) or not isinstance(s, int) for s in image_size)):
        raise TypeError(f"{_OP}: argument 'image_size' must be a pair of ints (H, W), got {image_size!r}")
    H, W = image_size
    if H < 1 or W < 1:
        raise ValueError(f"{_OP}: argument 'image_size' must be positive (H, W), got ({H}, {W})")
    return H, W


def _check_faces(op: str, faces, V: int, device: torch.device, values: bool = True) -> Tensor:
    if not isinstance(faces, Tensor):
        raise TypeError(f"{op}: argument 'faces' must be a tensor, got {type(faces).__name__}")
    if faces.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{op}: argument 'faces' must be an int32 or int64 tensor, got {faces.dtype}")
    if faces.dim() != 2 or faces.shape[1] != 3:
        raise ValueError(f"{op}: argument 'faces' must have shape (F, 3), got {tuple(faces.shape)}")
    if faces.device != device:
        raise TypeError(f"{op}: argument 'faces' is on {faces.device} but the vertex data is on {device}")
    # values: a traced graph cannot branch on them (the op body checks then); rasterize_triangles checks them
    # in its implementation (the C++ binding on CPUs), without a parallel torch reduction before its kernel
    if values and not torch.compiler.is_compiling():
        _check_face_range(op, faces, V)
    return faces.to(torch.int64)


def _check_face_range(op: str, faces: Tensor, V: int) -> None:
    outside = (faces < 0) | (faces >= V)
    if faces.numel() and bool(outside.any()):
        k = int(torch.nonzero(outside.reshape(-1))[0])
        raise ValueError(f"{op}: argument 'faces' has index {int(faces.reshape(-1)[k])} at face {k // 3} "
                         f"outside [0, V) = [0, {V})")


def _check_float(op: str, name: str, t) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: argument '{name}' must be a tensor, got {type(t).__name__}")
    if t.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{op}: argument '{name}' must be float32 or float64, got {t.dtype}")


def rasterize_triangles(verts_clip: Tensor, faces: Tensor, image_size: tuple[int, int],
                        cull_backfaces: bool = False) -> Tensor:
    """Rasterizes the triangles ``faces`` of the clip-space meshes ``verts_clip`` (see the module docstring).

    Args:
        verts_clip: (B, V, 4) float32/float64 clip-space (x, y, z, w).
        faces: (F, 3) int32/int64 vertex indices in [0, V), shared by the batch (F may be 0).
        image_size: (H, W), both >= 1.
        cull_backfaces: drop clockwise (back-facing) triangles.

    Returns: rast (B, H, W, 4) of verts_clip's dtype: (u, v, z/w, triangle_id + 1); zeros where no triangle.
    Differentiable in verts_clip through (u, v, z/w).
    """
    _check_float(_OP, "verts_clip", verts_clip)
    if verts_clip.dim() != 3 or verts_clip.shape[2] != 4:
        raise ValueError(f"{_OP}: argument 'verts_clip' must have shape (B, V, 4) (clip-space x, y, z, w), "
                         f"got {tuple(verts_clip.shape)}")
    faces = _check_faces(_OP, faces, verts_clip.shape[1], verts_clip.device, values=False)
    H, W = _image_size(image_size)
    if not isinstance(cull_backfaces, bool):
        raise TypeError(f"{_OP}: argument 'cull_backfaces' must be a bool, got "
                        f"{type(cull_backfaces).__name__}")
    if eager(verts_clip, faces):
        return _RastFunction.apply(verts_clip, faces, H, W, cull_backfaces)
    return _rast_op(verts_clip, faces, H, W, cull_backfaces)


def interpolate_attributes(attr: Tensor, rast: Tensor, faces: Tensor) -> Tensor:
    """Per-pixel attributes: ``(1 - u - v) attr[f0] + u attr[f1] + v attr[f2]`` of each pixel's triangle.

    Args:
        attr: (B, V, C) float32/float64 per-vertex attributes (colours, normals, UVs, ...).
        rast: (B, H, W, 4) output of ``rasterize_triangles``, of attr's dtype, rasterized with these faces.
        faces: (F, 3) int32/int64 vertex indices in [0, V).

    Returns: (B, H, W, C) of attr's dtype, zero where no triangle. Differentiable in attr and in rast's (u, v)
    (hence, through ``rasterize_triangles``, in the vertex positions).
    """
    op = "interpolate_attributes"
    _check_float(op, "attr", attr)
    _check_float(op, "rast", rast)
    if attr.dim() != 3:
        raise ValueError(f"{op}: argument 'attr' must have shape (B, V, C), got {tuple(attr.shape)}")
    B, V, C = attr.shape
    if rast.dim() != 4 or rast.shape[3] != 4 or rast.shape[0] != B:
        raise ValueError(f"{op}: argument 'rast' must have shape (B, H, W, 4) with B = {B} (attr's batch), "
                         f"got {tuple(rast.shape)}")
    if rast.device != attr.device:
        raise TypeError(f"{op}: argument 'rast' is on {rast.device} but 'attr' is on {attr.device}")
    if rast.dtype != attr.dtype:
        raise TypeError(f"{op}: arguments 'attr' ({attr.dtype}) and 'rast' ({rast.dtype}) must have the same "
                        f"dtype")
    faces = _check_faces(op, faces, V, attr.device)
    Fn = faces.shape[0]
    if rast.numel() and not torch.compiler.is_compiling():
        ids = rast[..., 3].detach()
        top = int(ids.max())
        if float(ids.min()) < 0 or top > Fn or not torch.equal(ids, ids.round()):
            raise ValueError(f"{op}: argument 'rast' has triangle ids (channel 3) that are not integers in "
                             f"[0, F] = [0, {Fn}] (was it rasterized with these faces?)")
    if Fn == 0 or V == 0:
        return attr.new_zeros((B, rast.shape[1], rast.shape[2], C)) + 0 * rast[..., :1].to(attr.dtype)
    return ref.interpolate_attributes(attr, rast, faces)


def texture_sample(tex: Tensor, uv: Tensor, padding_mode: str = "border") -> Tensor:
    """Bilinear texture lookup: tex (B, C, Ht, Wt), uv (B, H, W, 2) of tex's dtype and device -> (B, H, W, C),
    differentiable in both.

    UV convention: u runs along the texture's width (u = 0 the left edge of column 0, u = 1 the right edge of
    column Wt - 1), v along its rows (v = 0 the outer edge of row 0, v = 1 that of row Ht - 1): texel centres
    are at ((j + 0.5) / Wt, (i + 0.5) / Ht) (``grid_sample`` with ``align_corners=False`` on ``2 uv - 1``).
    Outside [0, 1]: ``padding_mode`` of ``grid_sample`` ("border", "zeros" or "reflection").
    """
    op = "texture_sample"
    _check_float(op, "tex", tex)
    _check_float(op, "uv", uv)
    if tex.dim() != 4:
        raise ValueError(f"{op}: argument 'tex' must have shape (B, C, Ht, Wt), got {tuple(tex.shape)}")
    if uv.dim() != 4 or uv.shape[3] != 2 or uv.shape[0] != tex.shape[0]:
        raise ValueError(f"{op}: argument 'uv' must have shape (B, H, W, 2) with B = {tex.shape[0]}, got "
                         f"{tuple(uv.shape)}")
    if uv.dtype != tex.dtype:
        raise TypeError(f"{op}: arguments 'tex' ({tex.dtype}) and 'uv' ({uv.dtype}) must have the same dtype")
    if uv.device != tex.device:
        raise TypeError(f"{op}: argument 'uv' is on {uv.device} but 'tex' is on {tex.device}")
    if padding_mode not in ("border", "zeros", "reflection"):
        raise ValueError(f"{op}: padding_mode must be 'border', 'zeros' or 'reflection', got "
                         f"{padding_mode!r}")
    out = F.grid_sample(tex, uv * 2 - 1, mode="bilinear", padding_mode=padding_mode,
                        align_corners=False)
    return out.permute(0, 2, 3, 1)
