"""mesh_raster: rasterize_triangles against the plain-PyTorch reference (bitwise on CPU) on random meshes with
off-screen, degenerate, edge-on, w <= 0, duplicated and back-facing triangles; hand-computed coverage and
barycentrics; the shared-edge ownership rule; depth ties; interpolation against a loop; gradcheck of the
analytic rasterizer backward and of the interpolation; opcheck; texture lookup; bad inputs."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from op_harness import DEVICES_AND_CANDIDATES, candidate_switch  # noqa: F401 - autouse fixture
from op_harness import BadInput, check_compiled, gradcheck, opcheck, run_bad_input
from pyvision_fast import ops, use_backend
from pyvision_fast.ops import mesh_raster as mr
from pyvision_fast.reference import mesh_raster as ref


def _clip(screen_xy, H, W, z=None, w=None, dtype=torch.float64):
    """Clip-space vertices (1, N, 4) whose screen positions are screen_xy (N, 2) (x along columns, y along
    rows), with per-vertex z/w values z and w values w (defaults 0.5 and 1)."""
    s = torch.as_tensor(screen_xy, dtype=torch.float64)
    n = s.shape[0]
    w = torch.ones(n, dtype=torch.float64) if w is None else torch.as_tensor(w, dtype=torch.float64)
    zw = torch.full((n,), 0.5, dtype=torch.float64) if z is None else torch.as_tensor(z, dtype=torch.float64)
    ndc_x = s[:, 0] / (W * 0.5) - 1
    ndc_y = s[:, 1] / (H * 0.5) - 1
    return torch.stack([ndc_x * w, ndc_y * w, zw * w, w], -1).unsqueeze(0).to(dtype)


def _random_mesh(g, B, V, F, dtype, spread=1.5):
    """Random clip-space vertices (some off-screen, some with w <= 0) and faces, with degenerate (repeated
    index), edge-on (collinear), duplicated (equal depth) and reversed (back-facing) triangles mixed in."""
    xyz = (torch.rand(B, V, 3, generator=g, dtype=torch.float64) * 2 - 1) * spread
    w = torch.rand(B, V, generator=g, dtype=torch.float64) * 1.5 + 0.5
    w[torch.rand(B, V, generator=g) < 0.05] *= -1
    if V >= 3:  # an edge-on triangle: vertex 2 on the line through vertices 0 and 1 (in NDC)
        xyz[:, 2, :2] = 0.3 * xyz[:, 0, :2] + 0.7 * xyz[:, 1, :2]
        w[:, :3] = 1.0
    verts = torch.cat([xyz * w.unsqueeze(-1), w.unsqueeze(-1)], -1)
    faces = torch.randint(0, V, (F, 3), generator=g)
    extra = [torch.tensor([[0, 1, 2]])]  # edge-on
    if F:
        # a back face, duplicates, a degenerate one
        extra += [faces[:1].flip(1), faces[:2], torch.tensor([[1, 1, 0]])]
    faces = torch.cat([faces] + extra) if V >= 3 else faces
    return verts.to(dtype), faces


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
@settings(max_examples=30, deadline=None)
@given(B=st.integers(1, 3), V=st.integers(3, 40), F=st.integers(0, 60), H=st.integers(1, 23),
       W=st.integers(1, 23), cull=st.booleans(), spread=st.sampled_from([0.8, 1.5, 4.0]),
       seed=st.integers(0, 2**16))
def test_matches_reference_on_random_meshes(device, B, V, F, H, W, cull, spread, seed):
    g = torch.Generator().manual_seed(seed)
    for dtype in (torch.float32, torch.float64):
        verts, faces = _random_mesh(g, B, V, F, dtype, spread)
        expected = ref.rasterize_triangles(verts, faces, (H, W), cull)
        got = ops.rasterize_triangles(verts.to(device), faces.to(device), (H, W), cull_backfaces=cull)
        assert got.shape == (B, H, W, 4) and got.dtype == dtype
        # the same floating-point operations in the same order: bitwise equal, ties and edge pixels included
        assert torch.equal(got.cpu(), expected)


def test_random_meshes_cover_pixels():
    """The random-mesh cases are not vacuous: they cover pixels, with many triangles competing."""
    g = torch.Generator().manual_seed(3)
    verts, faces = _random_mesh(g, 2, 30, 60, torch.float32, 1.0)
    rast = ops.rasterize_triangles(verts, faces, (16, 16))
    assert (rast[..., 3] > 0).float().mean() > 0.3
    assert len(torch.unique(rast[..., 3])) > 10


def test_one_triangle_hand_computed():
    """Screen triangle (0, 0), (4, 0), (0, 4) on a 4x4 image: centres with i + j < 3 inside, i + j == 3 on the
    hypotenuse (1 -> 2 runs toward +y: owned); perspective-correct barycentrics with w = (1, 2, 1)."""
    H = W = 4
    verts = _clip([[0, 0], [4, 0], [0, 4]], H, W, z=[0.1, 0.2, 0.3], w=[1.0, 2.0, 1.0])
    faces = torch.tensor([[0, 1, 2]])
    rast = ops.rasterize_triangles(verts, faces, (H, W))
    for i in range(H):
        for j in range(W):
            px = rast[0, i, j]
            if i + j > 3:
                assert px.tolist() == [0, 0, 0, 0]
                continue
            b1, b2 = (j + 0.5) / 4, (i + 0.5) / 4  # screen-space barycentrics of vertices 1 and 2
            b0 = 1 - b1 - b2
            r0, r1, r2 = b0 / 1.0, b1 / 2.0, b2 / 1.0
            assert px[3] == 1
            torch.testing.assert_close(px[0], torch.tensor(r1 / (r0 + r1 + r2), dtype=torch.float64))
            torch.testing.assert_close(px[1], torch.tensor(r2 / (r0 + r1 + r2), dtype=torch.float64))
            depth = torch.tensor(0.1 * b0 + 0.2 * b1 + 0.3 * b2, dtype=torch.float64)
            torch.testing.assert_close(px[2], depth)
    assert rast[0, 0, 0, :3].tolist() == pytest.approx([1 / 15, 2 / 15, 0.1375])
    assert int((rast[..., 3] > 0).sum()) == 10


def test_row_zero_is_ndc_bottom():
    """A triangle in the lower half of NDC (y < 0) covers the low rows only; x < 0 the low columns."""
    verts = torch.tensor([[[-1.0, -1.0, 0, 1], [-0.1, -1.0, 0, 1], [-1.0, -0.1, 0, 1]]])
    rast = ops.rasterize_triangles(verts, torch.tensor([[0, 1, 2]]), (8, 8))
    cov = rast[0, :, :, 3] > 0
    assert cov[:4, :4].any() and not cov[4:].any() and not cov[:, 4:].any()


def _coverage_count(verts, faces, H, W, cull=False):
    """How many triangles cover each pixel, rasterizing each triangle alone."""
    count = torch.zeros(H, W, dtype=torch.long)
    for f in range(faces.shape[0]):
        count += (ops.rasterize_triangles(verts, faces[f:f + 1], (H, W), cull)[0, :, :, 3] > 0).long()
    return count


@pytest.mark.parametrize("flip", [False, True], ids=["front", "back"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shared_edges_cover_each_pixel_once(flip, dtype):
    """A fan of 8 triangles around a vertex at a pixel centre tiling the image; its edges pass exactly through
    pixel centres (diagonals and axis-parallel lines): every pixel is covered by exactly one triangle. With
    flip, all triangles are clockwise (back faces, not culled)."""
    H = W = 9
    pts = [[4.5, 4.5], [0, 0], [4.5, 0], [9, 0], [9, 4.5], [9, 9], [4.5, 9], [0, 9], [0, 4.5]]
    faces = torch.tensor([[0, 1 + k, 1 + (k + 1) % 8] for k in range(8)])
    if flip:
        faces = faces.flip(1)
    verts = _clip(pts, H, W, dtype=dtype)
    assert (_coverage_count(verts, faces, H, W) == 1).all()
    # the same in a skewed perspective: w varies, screen positions do not
    verts_w = _clip(pts, H, W, w=torch.linspace(0.5, 3.0, 9), dtype=dtype)
    assert (_coverage_count(verts_w, faces, H, W) == 1).all()


def test_shared_edge_random_quads():
    """Random convex quads split along a diagonal: the two halves never both cover a pixel, and together they
    cover what the quad split the other way covers."""
    g = torch.Generator().manual_seed(1)
    H = W = 12
    for _ in range(20):
        ang = torch.sort(torch.rand(4, generator=g) * 2 * torch.pi).values
        pts = torch.stack([6 + 5 * torch.cos(ang), 6 + 5 * torch.sin(ang)], -1)
        verts = _clip(pts, H, W)
        a = _coverage_count(verts, torch.tensor([[0, 1, 2], [0, 2, 3]]), H, W)
        b = _coverage_count(verts, torch.tensor([[0, 1, 3], [1, 2, 3]]), H, W)
        assert a.max() <= 1 and b.max() <= 1
        # interior pixels (away from the quad's outline) agree; the outline is shared by both splits
        assert (a == b).float().mean() > 0.97


def test_depth_nearest_wins_and_ties_go_to_lower_id():
    H = W = 6
    tri = [[0, 0], [6, 0], [0, 6]]
    near = _clip(tri, H, W, z=[0.2] * 3)
    far = _clip(tri, H, W, z=[0.7] * 3)
    verts = torch.cat([far, near], 1)  # vertices 0-2 far, 3-5 near
    for faces, want in [([[0, 1, 2], [3, 4, 5]], 2), ([[3, 4, 5], [0, 1, 2]], 1)]:
        rast = ops.rasterize_triangles(verts, torch.tensor(faces), (H, W))
        assert (rast[0, 0, 0, 3] == want) and rast[0, 0, 0, 2] == pytest.approx(0.2)
    # equal depth: duplicated vertex positions give bitwise-equal depths; the lower id wins in either order
    verts = torch.cat([near, near], 1)
    for faces in ([[0, 1, 2], [3, 4, 5]], [[3, 4, 5], [0, 1, 2]]):
        for backend in ("cpu", "reference"):
            with use_backend(backend):
                rast = ops.rasterize_triangles(verts, torch.tensor(faces * 2), (H, W))
            covered = rast[0, :, :, 3] > 0
            assert covered.sum() > 0 and (rast[0, :, :, 3][covered] == 1).all()


def test_culling():
    H = W = 6
    ccw = [[0, 0], [6, 0], [0, 6]]
    verts = _clip(ccw, H, W)
    front, back = torch.tensor([[0, 1, 2]]), torch.tensor([[0, 2, 1]])
    n = int((ops.rasterize_triangles(verts, front, (H, W))[..., 3] > 0).sum())
    assert n > 0
    assert int((ops.rasterize_triangles(verts, back, (H, W))[..., 3] > 0).sum()) == n
    assert int((ops.rasterize_triangles(verts, front, (H, W), cull_backfaces=True)[..., 3] > 0).sum()) == n
    assert not ops.rasterize_triangles(verts, back, (H, W), cull_backfaces=True).any()
    # one vertex behind the camera (w <= 0) drops the whole triangle (no clipping)
    for wv in (0.0, -1.0):
        vb = verts.clone()
        vb[0, 1, 3] = wv
        assert not ops.rasterize_triangles(vb, front, (H, W)).any()
    # degenerate: a repeated vertex, and three collinear vertices through pixel centres
    assert not ops.rasterize_triangles(verts, torch.tensor([[0, 1, 1]]), (H, W)).any()
    line = _clip([[0.5, 0.5], [2.5, 2.5], [5.5, 5.5]], H, W)
    assert not ops.rasterize_triangles(line, front, (H, W)).any()


def test_empty_and_tiny():
    verts = torch.randn(2, 5, 4)
    empty = ops.rasterize_triangles(verts, torch.zeros(0, 3, dtype=torch.int64), (3, 4))
    assert empty.shape == (2, 3, 4, 4) and not empty.any()
    one = _clip([[0, 0], [1, 0], [0, 1]], 1, 1, dtype=torch.float32)
    rast = ops.rasterize_triangles(one, torch.tensor([[0, 1, 2]], dtype=torch.int32), (1, 1))
    assert rast[0, 0, 0, 3] == 1  # centre (0.5, 0.5) on the hypotenuse, which the triangle owns
    no_image = ops.rasterize_triangles(torch.zeros(0, 5, 4), torch.tensor([[0, 1, 2]]), (2, 2))
    assert no_image.shape == (0, 2, 2, 4)


def _dense_mesh(g, B, n, jitter, dtype):
    """A dense lattice mesh (n x n vertices over most of the image, two triangles per cell, every cell's faces
    also duplicated later in the list: exact depth ties) with jittered vertices, a few w <= 0 and a few
    reversed (back-facing) faces: most faces hold zero, one or a few pixel centres at the sizes used."""
    t = torch.linspace(-0.9, 0.9, n, dtype=torch.float64)
    Y, X = torch.meshgrid(t, t, indexing="ij")
    xy = torch.stack([X, Y], -1).reshape(1, -1, 2).expand(B, -1, -1)
    xy = xy + jitter * (torch.rand(B, n * n, 2, generator=g, dtype=torch.float64) - 0.5) / n
    w = torch.rand(B, n * n, generator=g, dtype=torch.float64) + 1.0
    w[torch.rand(B, n * n, generator=g) < 0.01] *= -1
    z = torch.rand(B, n * n, generator=g, dtype=torch.float64) * 0.5
    verts = torch.cat([xy * w[..., None], (z * w)[..., None], w[..., None]], -1)
    idx = torch.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    faces = torch.cat([torch.stack([a, b, d], -1).reshape(-1, 3), torch.stack([a, d, c], -1).reshape(-1, 3)])
    flip = torch.rand(len(faces), generator=g) < 0.05
    faces[flip] = faces[flip].flip(1)
    faces = torch.cat([faces, faces[torch.randperm(len(faces), generator=g)[: len(faces) // 3]]])
    return verts.to(dtype), faces


@pytest.mark.parametrize("size", [(13, 17), (40, 40), (90, 70)])
@pytest.mark.parametrize("cull", [False, True])
def test_dense_small_triangles_match_reference(size, cull):
    """Sub-pixel to few-pixel triangles (the CPU kernel's vector path: boxes of up to 3 x 3 centres are scanned
    16 faces at a time, larger ones in scalar code) are bitwise the reference's, ties and shared edges
    included."""
    g = torch.Generator().manual_seed(sum(size) + cull)
    for n, jitter in ((30, 0.0), (30, 0.8), (61, 0.5)):
        verts, faces = _dense_mesh(g, 2, n, jitter, torch.float32)
        expected = ref.rasterize_triangles(verts, faces, size, cull)
        got = ops.rasterize_triangles(verts, faces, size, cull_backfaces=cull)
        assert torch.equal(got, expected)
        assert (got[..., 3] > 0).float().mean() > 0.3


def test_thread_count_does_not_change_the_result():
    g = torch.Generator().manual_seed(5)
    verts, faces = _random_mesh(g, 3, 50, 200, torch.float32, 1.2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.rasterize_triangles(verts, faces, (37, 29))
        torch.set_num_threads(max(2, threads))
        many = ops.rasterize_triangles(verts, faces, (37, 29))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


def test_interpolation_equals_loop():
    g = torch.Generator().manual_seed(2)
    verts, faces = _random_mesh(g, 2, 20, 30, torch.float64, 1.0)
    attr = torch.randn(2, 20, 3, generator=g, dtype=torch.float64)
    rast = ops.rasterize_triangles(verts, faces, (7, 9))
    out = ops.interpolate_attributes(attr, rast, faces)
    assert out.shape == (2, 7, 9, 3)
    for b in range(2):
        for i in range(7):
            for j in range(9):
                u, v, _, t = rast[b, i, j].tolist()
                if t == 0:
                    assert (out[b, i, j] == 0).all()
                    continue
                f0, f1, f2 = faces[int(t) - 1].tolist()
                want = (1 - u - v) * attr[b, f0] + u * attr[b, f1] + v * attr[b, f2]
                torch.testing.assert_close(out[b, i, j], want)


def _stable_mesh(seed, B=2, H=7, W=8):
    """A mesh no pixel centre lies near an edge of (coverage unchanged by moving any vertex by 1e-4)."""
    for s in range(seed, seed + 200):
        g = torch.Generator().manual_seed(s)
        V = 6
        verts = torch.rand(B, V, 4, generator=g, dtype=torch.float64) * 1.6 - 0.8
        verts[..., 2] = torch.rand(B, V, generator=g, dtype=torch.float64)
        verts[..., 3] = torch.rand(B, V, generator=g, dtype=torch.float64) + 0.7
        verts[..., :3] *= verts[..., 3:]
        faces = torch.tensor([[0, 1, 2], [3, 4, 5], [1, 3, 5]])
        base = ref.rasterize_triangles(verts, faces, (H, W))[..., 3]
        if (base > 0).sum() < 8:
            continue
        ok = all(torch.equal(ref.rasterize_triangles(verts + d * torch.randn(verts.shape, generator=g,
                                                                              dtype=torch.float64),
                                                     faces, (H, W))[..., 3], base)
                 for d in (1e-4, 1e-4, 1e-4, -1e-4))
        if ok:
            return verts, faces
    raise AssertionError("no stable mesh found")


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_gradcheck_rasterize_wrt_verts(backend):
    verts, faces = _stable_mesh(0)
    verts.requires_grad_(True)
    with use_backend(backend):
        gradcheck(lambda v: ops.rasterize_triangles(v, faces, (7, 8))[..., :3], [verts])


def test_gradcheck_interpolate_wrt_attr_and_verts():
    verts, faces = _stable_mesh(50)
    attr = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
    verts.requires_grad_(True)

    def render(a, v):
        return ops.interpolate_attributes(a, ops.rasterize_triangles(v, faces, (7, 8)), faces)

    gradcheck(render, [attr, verts])


def test_backward_matches_autograd_of_a_direct_formula():
    """The analytic backward against autograd through an independent formulation (screen-space barycentrics
    from 2x2 solves, then perspective correction), at the covered pixels with the triangles held fixed."""
    verts, faces = _stable_mesh(100)
    H, W = 7, 8
    rast = ops.rasterize_triangles(verts, faces, (H, W))
    gout = torch.randn(rast.shape, dtype=torch.float64)
    bi, ii, jj = torch.nonzero(rast[..., 3] > 0, as_tuple=True)
    fid = rast[bi, ii, jj, 3].long() - 1
    v = verts.clone().requires_grad_(True)
    c = v[bi.unsqueeze(1), faces[fid]]  # (N, 3, 4)
    sx = (c[..., 0] / c[..., 3] + 1) * W / 2
    sy = (c[..., 1] / c[..., 3] + 1) * H / 2
    p = torch.stack([jj + 0.5, ii + 0.5], -1).double()
    m = torch.stack([torch.stack([sx[:, 1] - sx[:, 0], sx[:, 2] - sx[:, 0]], -1),
                     torch.stack([sy[:, 1] - sy[:, 0], sy[:, 2] - sy[:, 0]], -1)], -2)
    b12 = torch.linalg.solve(m, p - torch.stack([sx[:, 0], sy[:, 0]], -1))
    b = torch.cat([1 - b12.sum(-1, keepdim=True), b12], -1)
    q = b / c[..., 3]
    uv = q[:, 1:] / q.sum(-1, keepdim=True)
    depth = (b * c[..., 2] / c[..., 3]).sum(-1)
    torch.testing.assert_close(torch.cat([uv, depth[:, None]], -1), rast[bi, ii, jj, :3])
    loss = (torch.cat([uv, depth[:, None]], -1) * gout[bi, ii, jj, :3]).sum()
    (want,) = torch.autograd.grad(loss, v)
    got = mr.rasterize_backward(verts, faces, rast, gout)
    torch.testing.assert_close(got, want)


def test_opcheck_and_compile():
    verts, faces = _stable_mesh(7)
    opcheck(torch.ops.pvf.rasterize_triangles.default, (verts.float(), faces, 7, 8, False))
    opcheck(torch.ops.pvf.rasterize_triangles.default, (verts.requires_grad_(True), faces, 5, 3, True))
    check_compiled(lambda v: ops.rasterize_triangles(v, faces, (7, 8)), verts.detach().float())


def test_texture_sample():
    tex = torch.arange(2 * 3 * 4 * 5, dtype=torch.float64).reshape(2, 3, 4, 5)
    i, j = torch.meshgrid(torch.arange(4), torch.arange(5), indexing="ij")
    uv = torch.stack([(j + 0.5) / 5, (i + 0.5) / 4], -1).double().expand(2, 4, 5, 2)
    out = ops.texture_sample(tex, uv)  # texel centres return the texels
    torch.testing.assert_close(out, tex.permute(0, 2, 3, 1))
    mid = ops.texture_sample(tex, torch.tensor([[[[0.2, 0.125]]], [[[0.2, 0.125]]]], dtype=torch.float64))
    # halfway between columns 0 and 1 of row 0
    torch.testing.assert_close(mid[:, 0, 0], (tex[:, :, 0, 0] + tex[:, :, 0, 1]) / 2)


def _bad_cases():
    v = torch.cat([_clip([[0, 0], [4, 0], [0, 3], [4, 3], [2, 1]], 3, 4, dtype=torch.float32)] * 2)
    f = torch.tensor([[0, 1, 2], [2, 3, 4]])
    rast = ops.rasterize_triangles(v, f, (3, 4))
    assert (rast[..., 3] == 2).any()
    attr = torch.randn(2, 5, 3)
    R = ops.rasterize_triangles
    I = ops.interpolate_attributes
    return [
        BadInput("verts rank 2", lambda: R(v[0], f, (3, 4)), ValueError,
                 r"'verts_clip' must have shape \(B, V, 4\)"),
        BadInput("verts last dim 3", lambda: R(v[..., :3], f, (3, 4)), ValueError,
                 "'verts_clip' must have shape"),
        BadInput("verts integer", lambda: R(v.long(), f, (3, 4)), TypeError, "'verts_clip' must be float32"),
        BadInput("verts not a tensor", lambda: R(v.tolist(), f, (3, 4)), TypeError,
                 "'verts_clip' must be a tensor"),
        BadInput("faces float", lambda: R(v, f.float(), (3, 4)), TypeError,
                 "'faces' must be an int32 or int64"),
        BadInput("faces rank 1", lambda: R(v, f[0], (3, 4)), ValueError, r"'faces' must have shape \(F, 3\)"),
        BadInput("faces (F, 4)", lambda: R(v, torch.zeros(2, 4, dtype=torch.long), (3, 4)), ValueError,
                 r"'faces' must have shape \(F, 3\)"),
        BadInput("faces too large", lambda: R(v, f + 1, (3, 4)), ValueError,
                 r"index 5 at face 1 outside \[0, V\)"),
        BadInput("faces negative", lambda: R(v, f - 1, (3, 4)), ValueError,
                 r"index -1 at face 0 outside \[0, V\)"),
        BadInput("image_size zero", lambda: R(v, f, (0, 4)), ValueError, "'image_size' must be positive"),
        BadInput("image_size negative", lambda: R(v, f, (3, -1)), ValueError,
                 "'image_size' must be positive"),
        BadInput("image_size one int", lambda: R(v, f, 3), TypeError, "'image_size' must be a pair of ints"),
        BadInput("image_size float", lambda: R(v, f, (3.0, 4)), TypeError, "'image_size' must be a pair"),
        BadInput("cull not bool", lambda: R(v, f, (3, 4), cull_backfaces=1), TypeError, "'cull_backfaces'"),
        BadInput("meta faces", lambda: R(v, f.to("meta"), (3, 4)), TypeError, "'faces' is on meta"),
        BadInput("attr V mismatch", lambda: I(attr[:, :4], rast, f), ValueError,
                 r"index 4 at face 1 outside \[0, V\)"),
        BadInput("attr B mismatch", lambda: I(attr[:1], rast, f), ValueError,
                 r"'rast' must have shape .* B = 1"),
        BadInput("attr rank 2", lambda: I(attr[0], rast, f), ValueError,
                 r"'attr' must have shape \(B, V, C\)"),
        BadInput("rast last dim", lambda: I(attr, rast[..., :3], f), ValueError, "'rast' must have shape"),
        BadInput("rast rank 3", lambda: I(attr, rast[0], f), ValueError, "'rast' must have shape"),
        BadInput("rast ids beyond faces", lambda: I(attr, rast, f[:1]), ValueError, "triangle ids"),
        BadInput("attr integer", lambda: I(attr.long(), rast, f), TypeError, "'attr' must be float32"),
        BadInput("rast dtype", lambda: I(attr, rast.double(), f), TypeError,
                 "'attr' .* 'rast' .* same dtype"),
        BadInput("rast dtype, empty batch", lambda: I(attr[:0], rast[:0].double(), f), TypeError,
                 "same dtype"),
        BadInput("uv dtype",
                 lambda: ops.texture_sample(torch.zeros(2, 1, 4, 4), torch.zeros(2, 3, 3, 2).double()),
                 TypeError, "'tex' .* 'uv' .* same dtype"),
        BadInput("tex rank 3", lambda: ops.texture_sample(attr, torch.zeros(2, 3, 3, 2)), ValueError,
                 "'tex'"),
        BadInput("uv last dim", lambda: ops.texture_sample(torch.zeros(2, 1, 4, 4), torch.zeros(2, 3, 3, 3)),
                 ValueError, "'uv' must have shape"),
    ]


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("case", _bad_cases(), ids=str)
def test_bad_inputs(case, backend):
    with use_backend(backend):
        run_bad_input(case)


# The CUDA candidate's per-item bodies (mesh_raster_math.h: depth pass, id pass, resolve), built for the host
# and run item by item in a given order, with a plain minimum in place of atomicMin: the kernel's logic (depth
# keys, the two passes, ties, the resolve) checked without a GPU. Contraction off, like the CUDA _rn
# intrinsics.
_EMULATOR_SOURCE = r"""
#include <algorithm>
#include <cstdint>
#include <vector>

#include "mesh_raster/mesh_raster_math.h"

using namespace pvf::mesh_raster;

namespace {
struct HostMin {
  void operator()(uint64_t* p, uint64_t v) const { *p = std::min(*p, v); }
};

template <typename T>
void run(const T* verts, const int64_t* faces, int64_t B, int64_t V, int64_t F, int64_t H, int64_t W,
         int cull, int reverse, T* rast) {
  const int64_t npix = B * H * W;
  std::vector<T> ws(B * V * 4);
  std::vector<uint64_t> keys(2 * npix, kEmptyKey);
  for (int64_t k = 0; k < B * V; ++k) screen_vertex(verts + k * 4, H, W, ws.data() + k * 4);
  for (int pass = 0; pass < 2; ++pass)
    for (int64_t n = 0; n < B * F; ++n) {
      const int64_t item = reverse ? B * F - 1 - n : n;
      if (pass == 0)
        key_pass_item<0>(ws.data(), faces, item / F, item % F, V, H, W, cull, keys.data(), keys.data() + npix,
                         HostMin{});
      else
        key_pass_item<1>(ws.data(), faces, item / F, item % F, V, H, W, cull, keys.data(), keys.data() + npix,
                         HostMin{});
    }
  for (int64_t p = 0; p < npix; ++p)
    resolve_item(ws.data(), faces, p, V, H, W, cull, keys.data() + npix, rast);
}
}  // namespace

extern "C" void emulate_f32(const float* v, const int64_t* f, int64_t B, int64_t V, int64_t F, int64_t H,
                            int64_t W, int cull, int reverse, float* rast) {
  run(v, f, B, V, F, H, W, cull, reverse, rast);
}
extern "C" void emulate_f64(const double* v, const int64_t* f, int64_t B, int64_t V, int64_t F, int64_t H,
                            int64_t W, int cull, int reverse, double* rast) {
  run(v, f, B, V, F, H, W, cull, reverse, rast);
}
"""


@pytest.fixture(scope="module")
def cuda_emulator(tmp_path_factory):
    import ctypes
    import os
    import pathlib
    import shutil
    import subprocess

    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("no host C++ compiler")
    root = pathlib.Path(__file__).resolve().parents[1]
    tmp = tmp_path_factory.mktemp("mesh_raster_emulator")
    src, lib = tmp / "emulator.cpp", tmp / "emulator.so"
    src.write_text(_EMULATOR_SOURCE)
    out = subprocess.run([cxx, "-std=c++17", "-O2", "-ffp-contract=off", "-shared", "-fPIC",
                          f"-I{root / 'csrc'}", str(src), "-o", str(lib)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return ctypes.CDLL(str(lib))


def _emulate(lib, verts, faces, H, W, cull, reverse):
    import ctypes

    verts, faces = verts.contiguous(), faces.long().contiguous()
    B, V = verts.shape[:2]
    rast = torch.empty(B, H, W, 4, dtype=verts.dtype)
    fn = lib.emulate_f32 if verts.dtype == torch.float32 else lib.emulate_f64
    ptr = lambda t: ctypes.c_void_p(t.data_ptr())  # noqa: E731
    fn(ptr(verts), ptr(faces), *[ctypes.c_int64(n) for n in (B, V, faces.shape[0], H, W)], ctypes.c_int(cull),
       ctypes.c_int(reverse), ptr(rast))
    return rast


@settings(max_examples=15, deadline=None)
@given(B=st.integers(1, 2), V=st.integers(3, 30), F=st.integers(0, 40), H=st.integers(1, 17),
       W=st.integers(1, 17), cull=st.booleans(), seed=st.integers(0, 2**16))
def test_cuda_kernel_bodies_emulated_on_the_host_match_cpu(cuda_emulator, B, V, F, H, W, cull, seed):
    """In either order of the (image, face) items (the atomics' order on a GPU is arbitrary), the emulated
    CUDA passes give the CPU kernel's result bitwise: ties, -0/+0 depths and shared edges included."""
    g = torch.Generator().manual_seed(seed)
    for dtype in (torch.float32, torch.float64):
        verts, faces = _random_mesh(g, B, V, F, dtype, 1.5)
        want = ops.rasterize_triangles(verts, faces, (H, W), cull_backfaces=cull)
        for reverse in (0, 1):
            assert torch.equal(_emulate(cuda_emulator, verts, faces, H, W, cull, reverse), want)


def test_cuda_kernel_bodies_emulated_shared_edges_and_ties(cuda_emulator):
    H = W = 9
    pts = [[4.5, 4.5], [0, 0], [4.5, 0], [9, 0], [9, 4.5], [9, 9], [4.5, 9], [0, 9], [0, 4.5]]
    fan = torch.tensor([[0, 1 + k, 1 + (k + 1) % 8] for k in range(8)])
    # the same fan twice, at depth +0 (ids 0..7) and at depth -0 (ids 8..15): they tie, the lower ids win
    verts = torch.cat([_clip(pts, H, W, z=[0.0] * 9), _clip(pts, H, W, z=[-0.0] * 9)], 1)
    faces = torch.cat([fan, fan + 9])
    for reverse in (0, 1):
        got = _emulate(cuda_emulator, verts, faces, H, W, False, reverse)
        assert torch.equal(got, ops.rasterize_triangles(verts, faces, (H, W)))
        assert ((got[0, :, :, 3] >= 1) & (got[0, :, :, 3] <= 8)).all()


def _cpp_call(verts=None, faces=None, H=3, W=4, rast=None, ws=None):
    from pyvision_fast import _ext

    verts = torch.randn(2, 5, 4) if verts is None else verts
    faces = torch.tensor([[0, 1, 2]]) if faces is None else faces
    rast = torch.empty(2, H, W, 4) if rast is None else rast
    ws = torch.empty(2 * 5 * 4) if ws is None else ws
    _ext.cpu_module().rasterize_triangles(_ext.arg(verts), _ext.arg(faces), H, W, False, _ext.arg(rast),
                                          _ext.arg(ws))


@pytest.mark.parametrize("case", [
    BadInput("faces out of range", lambda: _cpp_call(faces=torch.tensor([[0, 1, 5]])), ValueError,
             r"'faces' has index 5 at face 0 outside \[0, V\)"),
    BadInput("faces int32", lambda: _cpp_call(faces=torch.tensor([[0, 1, 2]], dtype=torch.int32)), TypeError,
             "'faces' must be int64"),
    BadInput("verts (B, V, 3)", lambda: _cpp_call(verts=torch.randn(2, 5, 3)), ValueError, "'verts_clip'"),
    BadInput("H zero", lambda: _cpp_call(H=0), ValueError, "'image_size' must be positive"),
    BadInput("rast shape", lambda: _cpp_call(rast=torch.empty(2, 3, 5, 4)), ValueError,
             "'rast' must have shape"),
    BadInput("rast dtype", lambda: _cpp_call(rast=torch.empty(2, 3, 4, 4, dtype=torch.float64)), TypeError,
             "same dtype"),
    BadInput("workspace small", lambda: _cpp_call(ws=torch.empty(3)), ValueError, "workspace has 3 elements"),
    BadInput("verts non-contiguous", lambda: _cpp_call(verts=torch.randn(2, 4, 5).transpose(1, 2)),
             ValueError, "'verts_clip' must be contiguous"),
], ids=str)
def test_bad_inputs_cpp(case):
    run_bad_input(case)
