"""Plain-PyTorch triangle rasterization, written for clarity: the oracle of the tests and the fallback
backend.

The semantics are those of ``pyvision_fast.ops.mesh_raster`` (read its module docstring first). The
computation, vectorised over (image, triangle, pixel of the triangle's bounding box) triples in chunks:

1. per vertex: screen coordinates ``sx = (x / w + 1) * (W / 2)``, ``sy = (y / w + 1) * (H / 2)`` (pixel
   centres at ``(j + 0.5, i + 0.5)``), ``1 / w`` and ``z / w``;
2. per triangle: culling (a vertex with ``w <= 0``, a non-finite coordinate, zero area, a back face when
   asked), the pixel-centre bounding box;
3. per (triangle, pixel) pair: the three edge functions, each computed from the edge's endpoints in a
   canonical (lexicographic) order so that two triangles sharing an edge get exactly opposite values, the
   coverage test with the ownership rule for centres exactly on an edge, depth and perspective-correct
   barycentrics;
4. the z-buffer: the smallest depth per pixel (``scatter_reduce`` amin), then among the covering pairs at that
   depth the lowest triangle id.

Every floating-point operation is written in the order the C++ kernel performs it, so that the two agree
bitwise (coverage, ties) and not only to a tolerance. No argument validation (the op checks): meant for
correct inputs.
"""
from __future__ import annotations

import torch
from torch import Tensor

# (triangle, pixel) pairs per chunk: a few hundred MiB of temporaries at most.
MAX_PAIRS = 1 << 21


def screen_vertices(verts_clip: Tensor, H: int, W: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """verts_clip (B, V, 4) -> sx, sy, 1/w, z/w, each (B, V)."""
    x, y, z, w = verts_clip.unbind(-1)
    sx = (x / w + 1) * (W * 0.5)
    sy = (y / w + 1) * (H * 0.5)
    return sx, sy, 1 / w, z / w


def _edge(ax, ay, bx, by, px, py):
    """Edge function of a -> b at p, evaluated from the lexicographically smaller endpoint (exactly
    antisymmetric in a, b) and the ownership flag of a -> b for centres exactly on it (in the CCW
    orientation: the edge runs toward +y, or toward -x when horizontal)."""
    swap = (ax > bx) | ((ax == bx) & (ay > by))
    lx, ly = torch.where(swap, bx, ax), torch.where(swap, by, ay)
    hx, hy = torch.where(swap, ax, bx), torch.where(swap, ay, by)
    e = (hx - lx) * (py - ly) - (hy - ly) * (px - lx)
    e = torch.where(swap, -e, e)
    own = (by > ay) | ((by == ay) & (bx < ax))
    return e, own


def rasterize_triangles(verts_clip: Tensor, faces: Tensor, image_size: tuple[int, int],
                        cull_backfaces: bool = False, max_pairs: int = MAX_PAIRS) -> Tensor:
    """verts_clip (B, V, 4) float, faces (F, 3) int -> rast (B, H, W, 4) of verts_clip's dtype:
    (u, v, z/w, triangle id + 1), zeros where no triangle covers the pixel centre."""
    H, W = int(image_size[0]), int(image_size[1])
    B = verts_clip.shape[0]
    dtype, device = verts_clip.dtype, verts_clip.device
    faces = faces.long()
    F = faces.shape[0]
    rast = torch.zeros(B, H, W, 4, dtype=dtype, device=device)
    if B == 0 or F == 0 or H == 0 or W == 0:
        return rast
    sx, sy, iw, zw = screen_vertices(verts_clip, H, W)
    w = verts_clip[..., 3]
    fin = torch.isfinite(verts_clip).all(-1)
    # per (image, face): the corners' data, (B, F, 3)
    fx, fy, fiw, fzw = (t[:, faces] for t in (sx, sy, iw, zw))
    x0, x1, x2 = fx.unbind(-1)
    y0, y1, y2 = fy.unbind(-1)
    area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)
    valid = (w[:, faces] > 0).all(-1) & fin[:, faces].all(-1) & (area != 0) & torch.isfinite(area)
    front = area > 0
    if cull_backfaces:
        valid &= front
    # pixel-centre bounding box: columns j with minx <= j + 0.5 <= maxx, clamped to the image
    j0 = torch.ceil(torch.minimum(torch.minimum(x0, x1), x2) - 0.5).clamp(0, W)
    j1 = torch.floor(torch.maximum(torch.maximum(x0, x1), x2) - 0.5).clamp(-1, W - 1)
    i0 = torch.ceil(torch.minimum(torch.minimum(y0, y1), y2) - 0.5).clamp(0, H)
    i1 = torch.floor(torch.maximum(torch.maximum(y0, y1), y2) - 0.5).clamp(-1, H - 1)
    nx = (j1 - j0 + 1).clamp(min=0)
    ny = (i1 - i0 + 1).clamp(min=0)
    nx = torch.where(valid, nx, torch.zeros_like(nx)).long().reshape(-1)
    ny = torch.where(valid, ny, torch.zeros_like(ny)).long().reshape(-1)
    j0, i0 = j0.long().reshape(-1), i0.long().reshape(-1)
    counts = nx * ny
    live = torch.nonzero(counts).squeeze(1)  # flat (b * F + f) of the triangles with candidate pixels
    flat = lambda t: t.reshape(B * F, *t.shape[2:])  # noqa: E731
    fx, fy, fiw, fzw, front_f = flat(fx), flat(fy), flat(fiw), flat(fzw), front.reshape(-1)

    cand = []  # per chunk: (pixel index, depth, face id, u, v) of covering pairs
    csum = counts[live].cumsum(0)
    start = 0
    while start < live.numel():
        base = csum[start - 1] if start > 0 else csum.new_zeros(())
        stop = int(torch.searchsorted(csum, base + max_pairs, right=True))
        stop = max(stop, start + 1)
        tri = live[start:stop]
        cnt = counts[tri]
        rep = torch.repeat_interleave(torch.arange(tri.numel(), device=device), cnt)
        offs = torch.cumsum(cnt, 0) - cnt
        t = torch.arange(rep.numel(), device=device) - offs[rep]
        k = tri[rep]
        jj = j0[k] + t % nx[k]
        ii = i0[k] + torch.div(t, nx[k], rounding_mode="floor")
        px = jj.to(dtype) + 0.5
        py = ii.to(dtype) + 0.5
        cx, cy = fx[k], fy[k]
        e0, o0 = _edge(cx[:, 1], cy[:, 1], cx[:, 2], cy[:, 2], px, py)
        e1, o1 = _edge(cx[:, 2], cy[:, 2], cx[:, 0], cy[:, 0], px, py)
        e2, o2 = _edge(cx[:, 0], cy[:, 0], cx[:, 1], cy[:, 1], px, py)
        fr = front_f[k]
        # back faces (when not culled) are rasterized in the reversed orientation
        e0, e1, e2 = (torch.where(fr, e, -e) for e in (e0, e1, e2))
        o0, o1, o2 = (torch.where(fr, o, ~o) for o in (o0, o1, o2))
        inside = ((e0 > 0) | ((e0 == 0) & o0)) & ((e1 > 0) | ((e1 == 0) & o1)) & ((e2 > 0) | ((e2 == 0) & o2))
        sel = torch.nonzero(inside).squeeze(1)
        k, e0, e1, e2 = k[sel], e0[sel], e1[sel], e2[sel]
        a = area.reshape(-1)[k]
        a = torch.where(front_f[k], a, -a)
        z, q = fzw[k], fiw[k]
        depth = (e0 * z[:, 0] + e1 * z[:, 1] + e2 * z[:, 2]) / a
        r0, r1, r2 = e0 * q[:, 0], e1 * q[:, 1], e2 * q[:, 2]
        s = r0 + r1 + r2
        b = torch.div(k, F, rounding_mode="floor")
        pix = (b * H + ii[sel]) * W + jj[sel]
        cand.append((pix, depth, k - b * F, r1 / s, r2 / s))
        start = stop
    if not cand:
        return rast
    pix, depth, fid, u, v = (torch.cat(c) for c in zip(*cand))
    zmin = torch.full((B * H * W,), float("inf"), dtype=dtype, device=device)
    zmin = zmin.scatter_reduce(0, pix, depth, "amin")
    at_min = depth == zmin[pix]
    best = torch.full((B * H * W,), F, dtype=torch.long, device=device)
    best = best.scatter_reduce(0, pix[at_min], fid[at_min], "amin")
    win = at_min & (fid == best[pix])
    out = rast.view(B * H * W, 4)
    out[pix[win]] = torch.stack([u[win], v[win], depth[win], (fid[win] + 1).to(dtype)], -1)
    return rast


def interpolate_attributes(attr: Tensor, rast: Tensor, faces: Tensor) -> Tensor:
    """attr (B, V, C), rast (B, H, W, 4), faces (F, 3) -> (B, H, W, C) = (1 - u - v) a0 + u a1 + v a2 of the
    pixel's triangle, zero where rast's id channel is 0. Differentiable in attr and in rast's (u, v)."""
    B, H, W, _ = rast.shape
    C = attr.shape[-1]
    tid = rast[..., 3].detach().round().long() - 1  # (B, H, W)
    hit = tid >= 0
    corner = faces.long()[tid.clamp(min=0)]  # (B, H, W, 3)
    bidx = torch.arange(B, device=attr.device).view(B, 1, 1, 1)
    vals = attr[bidx, corner]  # (B, H, W, 3, C)
    u, v = rast[..., 0], rast[..., 1]
    wts = torch.stack([1 - u - v, u, v], -1)
    out = (wts.unsqueeze(-1) * vals).sum(-2)
    return torch.where(hit.unsqueeze(-1), out, out.new_zeros(()).expand(B, H, W, C))
