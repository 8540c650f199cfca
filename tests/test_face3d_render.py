"""face3d.render: Deep3DFaceRecon's camera, rotation and SH lighting conventions, pixel/raster agreement, and
gradchecks of the small pieces in float64."""
import math

import pytest
import torch

from pyvision_fast.face3d.render import (SH_A, SH_C, camera_to_clip, euler_rotation, project, rasterize_mesh,
                                         sh_basis, sh_shading, to_camera, vertex_normals)
from pyvision_fast.face3d import vertex_face_table
from pyvision_fast.ops import interpolate_attributes, rasterize_triangles


def _rot(axis, t):
    c, s = math.cos(t), math.sin(t)
    m = {"x": [[1, 0, 0], [0, c, -s], [0, s, c]], "y": [[c, 0, s], [0, 1, 0], [-s, 0, c]],
         "z": [[c, -s, 0], [s, c, 0], [0, 0, 1]]}[axis]
    return torch.tensor(m, dtype=torch.float64)


def test_euler_rotation_order():
    a = torch.tensor([[0.3, -0.5, 0.7]], dtype=torch.float64)
    R = euler_rotation(a)[0]
    torch.testing.assert_close(R, _rot("z", 0.7) @ _rot("y", -0.5) @ _rot("x", 0.3))
    torch.testing.assert_close(R @ R.T, torch.eye(3, dtype=torch.float64))
    # a positive y angle turns the face's front (+z) toward +x (the image's right)
    front = euler_rotation(torch.tensor([[0.0, 0.4, 0.0]]))[0] @ torch.tensor([0.0, 0.0, 1.0])
    assert front[0] > 0.3


def test_sh_constants_and_ambient():
    # Deep3DFaceRecon: a = (pi, 2pi/sqrt3, 2pi/sqrt8), c = (1/sqrt(4pi), sqrt3/sqrt(4pi), 3 sqrt5/sqrt(12pi))
    assert SH_A[0] * SH_C[0] == pytest.approx(math.sqrt(math.pi) / 2)
    n = torch.tensor([[[0.0, 0.0, 1.0]]])
    Y = sh_basis(n)[0, 0]
    assert Y[1] == 0 and Y[2] == pytest.approx(SH_A[1] * SH_C[1]) and Y[6] == pytest.approx(
        0.5 * SH_A[2] * SH_C[2] / math.sqrt(3) * 2)
    # gamma = 0: only the +0.8 ambient offset on band 0 of every channel
    albedo = torch.tensor([[[0.5, 0.25, 1.0]]])
    col = sh_shading(albedo, n, torch.zeros(1, 27))
    torch.testing.assert_close(col, albedo * 0.8 * math.sqrt(math.pi) / 2)
    # gamma is channel-major: band 2 (n_z) of the green channel brightens green only, for a normal facing +z
    g = torch.zeros(1, 27)
    g[0, 9 + 2] = 0.5
    col2 = sh_shading(albedo, n, g)
    assert col2[0, 0, 1] > col[0, 0, 1] and col2[0, 0, 0] == col[0, 0, 0] and col2[0, 0, 2] == col[0, 0, 2]


def test_projection_conventions():
    H, W, f = 60, 80, 300.0
    # the model origin with zero pose sits at the principal point: x = cx, y = H - cy
    p = to_camera(torch.zeros(1, 1, 3), 10.0)
    assert p[0, 0, 2] == 10
    torch.testing.assert_close(project(p, f, (H, W)), torch.tensor([[[40.0, 30.0]]]))
    torch.testing.assert_close(project(p, f, (H, W), center=(30.0, 20.0)), torch.tensor([[[30.0, 40.0]]]))
    # +X goes right, +Y goes up (smaller row), nearer (larger model z) magnifies
    q = to_camera(torch.tensor([[[1.0, 1.0, 0.0], [1.0, 1.0, 2.0]]]), 10.0)
    xy = project(q, f, (H, W))
    assert xy[0, 0, 0] == pytest.approx(40 + f / 10) and xy[0, 0, 1] == pytest.approx(30 - f / 10)
    assert xy[0, 1, 0] == pytest.approx(40 + f / 8)
    # clip space: x/w, y/w are the NDC of the pixel coordinates (row 0 = top = NDC -1), depth grows with Z
    clip = camera_to_clip(q, f, (H, W))
    ndc = clip[..., :2] / clip[..., 3:]
    torch.testing.assert_close(ndc[..., 0], 2 * xy[..., 0] / W - 1)
    torch.testing.assert_close(ndc[..., 1], 2 * xy[..., 1] / H - 1)
    zn = clip[..., 2] / clip[..., 3]
    assert zn[0, 0] > zn[0, 1]  # the nearer point (Z = 8) has the smaller depth
    torch.testing.assert_close(camera_to_clip(torch.tensor([[[0.0, 0.0, 5.0]]]), f, (H, W))[0, 0, 2] / 5,
                               torch.tensor(-1.0))


def test_raster_agrees_with_projection():
    """At every covered pixel, the interpolated camera-space point (perspective-correct, linear in 3D)
    projects onto that pixel's centre (j + 0.5, i + 0.5): landmarks and images share one pixel grid."""
    H, W, f = 24, 32, 40.0
    verts = torch.tensor([[[-1.2, -1.0, 0.3], [1.3, -0.8, -0.4], [0.1, 1.1, 0.5], [1.5, 1.2, 0.0]]],
                         dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [1, 3, 2]])
    cam = to_camera(verts, 10.0)
    rast = rasterize_triangles(camera_to_clip(cam, f, (H, W)), faces, (H, W))
    pts = interpolate_attributes(cam, rast, faces)
    cov = rast[..., 3] > 0
    assert cov.sum() > 50
    pix = project(pts[cov][None], f, (H, W))[0]
    ii, jj = torch.nonzero(cov[0], as_tuple=True)
    torch.testing.assert_close(pix, torch.stack([jj + 0.5, ii + 0.5], 1).double(), atol=1e-9, rtol=0)
    ones = torch.ones(1, 4, 3, dtype=torch.float64)
    img, mask, _ = rasterize_mesh(camera_to_clip(cam, f, (H, W)), faces, ones, (H, W))
    assert img.shape == (1, 3, H, W) and torch.equal(mask[0, 0] > 0, cov[0])


def test_vertex_normals_plane_and_sphere():
    n = 5
    r, c = torch.meshgrid(torch.arange(n - 1), torch.arange(n - 1), indexing="ij")
    tl = (r * n + c).reshape(-1)
    faces = torch.cat([torch.stack([tl, tl + n + 1, tl + n], 1), torch.stack([tl, tl + 1, tl + n + 1], 1)])
    y, x = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    verts = torch.stack([x, y, torch.zeros_like(x)], -1).reshape(1, -1, 3)
    # this orientation is counter-clockwise seen from +z: normals +z (Deep3DFaceRecon's (v0 - v1) x (v1 - v2))
    v = verts[0, faces]
    assert (torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1)[:, 2] > 0).all()
    nrm = vertex_normals(verts, faces, vertex_face_table(faces, n * n))
    torch.testing.assert_close(nrm, torch.tensor([0.0, 0.0, 1.0]).expand_as(nrm))


def _small_mesh():
    torch.manual_seed(0)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3], [0, 3, 1], [1, 3, 2]])
    verts = torch.randn(2, 4, 3, dtype=torch.float64)
    return verts, faces, vertex_face_table(faces, 4)


def test_gradcheck_pieces():
    torch.manual_seed(0)
    dt = torch.float64
    a = torch.randn(2, 3, dtype=dt, requires_grad=True)
    assert torch.autograd.gradcheck(euler_rotation, (a,))
    n = torch.nn.functional.normalize(torch.randn(2, 5, 3, dtype=dt), dim=-1).requires_grad_(True)
    alb = torch.rand(2, 5, 3, dtype=dt, requires_grad=True)
    g = (0.1 * torch.randn(2, 27, dtype=dt)).requires_grad_(True)
    assert torch.autograd.gradcheck(sh_shading, (alb, n, g))
    p = (torch.randn(2, 6, 3, dtype=dt) * 0.5).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: project(to_camera(x, 10.0), 1015.0, (224, 224)), (p,))
    clip = lambda x: camera_to_clip(to_camera(x, 10.0), 1015.0, (224, 200), (90, 120))  # noqa: E731
    assert torch.autograd.gradcheck(clip, (p,))
    verts, faces, pb = _small_mesh()
    verts.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: vertex_normals(v, faces, pb), (verts,))


def test_rendered_image_gradient_reaches_vertices():
    H, W, f = 20, 20, 30.0
    verts, faces, _ = _small_mesh()
    verts = (verts * 0.5).requires_grad_(True)
    colors = torch.rand(2, 4, 3, dtype=torch.float64, requires_grad=True)
    img, mask, _ = rasterize_mesh(camera_to_clip(to_camera(verts, 10.0), f, (H, W)), faces, colors, (H, W))
    (img * torch.randn_like(img)).sum().backward()
    assert verts.grad.abs().sum() > 0 and colors.grad.abs().sum() > 0
