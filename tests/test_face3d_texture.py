"""face3d.texture: UV rasterization, unwrapping rendered frames back into the UV texture (round trip against a
known texture), visibility (turned-away side, occlusion by a nearer surface), delighting, filling, gradients
and argument errors. Everything on the synthetic 3DMM at 64 x 64 (or a hand-built two-plane mesh)."""
import math

import pytest
import torch

from pyvision_fast.face3d import FaceBasis, synthetic_face_basis, vertex_face_table
from pyvision_fast.face3d.texture import fill_invisible, unwrap_texture, uv_raster
from pyvision_fast.models.bfm import BFM, cylindrical_uv

S = 64
FAST = False  # full Jacobians (~3 s); fast_mode=True checks random projections only


@pytest.fixture(scope="module")
def basis():
    return synthetic_face_basis(32, 0)


@pytest.fixture(scope="module")
def model(basis):
    return BFM(basis, image_size=64)  # = create_model("bfm", basis="synthetic", image_size=64)


def _known_texture(size: int = S, dtype=torch.float32) -> torch.Tensor:
    """(1, 3, size, size) smooth colours: sinusoids over u and v (one period or less across the map)."""
    t = (torch.arange(size, dtype=dtype) + 0.5) / size
    v, u = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([0.5 + 0.3 * torch.sin(2 * math.pi * u + 0.3),
                        0.5 + 0.3 * torch.sin(2 * math.pi * v + 1.0),
                        0.5 + 0.3 * torch.sin(1.5 * math.pi * (u + v))])[None]


def _pose(yaw: float, n: int = 1, dtype=torch.float32) -> torch.Tensor:
    c = torch.zeros(n, 257, dtype=dtype)
    c[:, 225] = yaw  # angle about y: positive turns the face's front toward +x, its +x side away
    return c


# -- uv_raster ---------------------------------------------------------------------------------------------


def _uv_area(uv: torch.Tensor, faces: torch.Tensor) -> float:
    a, b, c = uv[faces[:, 0]].double(), uv[faces[:, 1]].double(), uv[faces[:, 2]].double()
    cross = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    return float(cross.abs().sum() / 2)


def test_uv_raster_footprint_and_barycentrics(model):
    t = (torch.arange(S, dtype=torch.float64) + 0.5) / S
    centres = torch.stack(torch.meshgrid(t, t, indexing="ij")[::-1], -1)  # (S, S, 2) texel centres (u, v)
    # the synthetic face's UVs tile the unit square; a cylindrical layout and a disc-warped one do not
    uv_sq = model.uv.double()
    s = uv_sq * 2 - 1
    disc = torch.stack([s[:, 0] * torch.sqrt(1 - s[:, 1] ** 2 / 2),
                        s[:, 1] * torch.sqrt(1 - s[:, 0] ** 2 / 2)], 1) * 0.45 + 0.5
    cyl = cylindrical_uv(model.mean_shape.double()) * 0.8 + 0.1
    for uv, area in ((uv_sq, 1.0), (disc, None), (cyl, None)):
        area = _uv_area(uv, model.faces) if area is None else area
        rast = uv_raster(uv, model.faces, S)
        assert rast.shape == (1, S, S, 4) and rast.dtype == torch.float64
        inside = rast[0, ..., 3] > 0
        assert abs(float(inside.double().mean()) - area) < 0.03 * area
        # barycentrics reproduce each covered texel centre's UV (row i <-> v = (i + 0.5) / S)
        tri = model.faces[rast[0, ..., 3][inside].long() - 1]
        b1, b2 = rast[0, ..., 0][inside], rast[0, ..., 1][inside]
        p = (1 - b1 - b2)[:, None] * uv[tri[:, 0]] + b1[:, None] * uv[tri[:, 1]] + b2[:, None] * uv[tri[:, 2]]
        torch.testing.assert_close(p, centres[inside], atol=1e-9, rtol=0)
    assert _uv_area(disc, model.faces) < 0.7  # the disc really leaves texels uncovered
    # from the model: its own uv and faces, float32
    r = uv_raster(model, size=16)
    assert r.dtype == torch.float32 and bool((r[0, ..., 3] > 0).all())
    # overlapping UV triangles: the lower triangle id owns the texels
    uv2 = torch.tensor([[0.1, 0.1], [0.9, 0.1], [0.1, 0.9]])
    f2 = torch.tensor([[0, 1, 2], [0, 2, 1]])
    ids = uv_raster(uv2, f2, 8)[0, ..., 3]
    assert set(ids.unique().tolist()) == {0.0, 1.0}


# -- round trip ---------------------------------------------------------------------------------------------


def test_round_trip_frontal_and_turned(model):
    tex = _known_texture()
    coeffs = torch.cat([_pose(0.0), _pose(0.5)])
    images = model.render(coeffs, texture=tex.expand(2, -1, -1, -1).contiguous())["image"]
    out = unwrap_texture(model, coeffs, images, size=S)
    T, vis = out["texture"], out["visibility"]
    assert T.shape == (2, 3, S, S) and vis.shape == (2, 1, S, S)
    assert float(vis.min()) >= 0 and float(vis.max()) <= 1
    assert bool((T[vis.expand_as(T) == 0] == 0).all())
    # The image samples the texture bilinearly at the pixels' UVs and the unwrap samples the image bilinearly
    # at the texels' pixels: on texels whose whole 2 x 2 pixel footprint shows them the error is the
    # bilinear-interpolation error h^2/8 |g''| of the texture seen in pixel coordinates (amplitude 0.3,
    # 2 pi / unit u, the unit square ~46 px wide: ~1e-3 where the surface faces the camera, up to
    # 1/cos^2 ~ 25x larger at the grazing texels near min_facing = 0.2), plus the kinks of the bilinear
    # texture and of the piecewise-linear mesh (measured: median 1e-3, 99% 0.005 / 0.012, max 0.011 / 0.046
    # frontal / turned). Texels at silhouettes (fractional visibility) take their nearest pixels' colours, an
    # error up to |grad| x 1 px there (measured max 0.09), hence the visibility-weighted mean.
    for b in range(2):
        v = vis[b, 0]
        err = (T[b] - tex[0]).abs().amax(0)
        full = err[v == 1]
        assert full.numel() > 0.75 * S * S
        assert float(full.median()) < 2e-3
        assert float(torch.quantile(full, 0.99)) < 0.02
        assert float(full.max()) < 0.06
        assert float((err * v).sum() / v.sum()) < 4e-3
        assert float(err[v > 0].max()) < 0.12
    seen0, seen1 = vis[0, 0] > 0, vis[1, 0] > 0
    assert float(seen0.double().mean()) > 0.95  # frontal: all but the rim's grazing texels
    assert float(seen1.double().mean()) < float(seen0.double().mean()) - 0.08
    # turned by +0.5 rad about y: the face's +x side (u near 1) turns away, its -x side (u near 0) toward us
    assert float(seen1[:, -6:].double().mean()) < 0.2 and float(seen1[:, :6].double().mean()) == 1.0
    assert not bool(seen1[:, -3:].any())
    # batching: each frame unwraps as it does alone
    one = unwrap_texture(model, coeffs[1:], images[1:], size=S)
    torch.testing.assert_close(one["texture"], T[1:])
    torch.testing.assert_close(one["visibility"], vis[1:])


def test_strong_turn_hides_the_far_cheek(model):
    # at 0.9 rad the nose hides a strip of the far cheek that still faces the camera: a texel taken from the
    # nose there would be off by the texture's change across the strip (~0.2); the weighted error stays small
    tex = _known_texture()
    c = _pose(0.9)
    img = model.render(c, texture=tex)["image"]
    out = unwrap_texture(model, c, img, size=S)
    v = out["visibility"][0, 0]
    err = (out["texture"][0] - tex[0]).abs().amax(0)
    assert float((err * v).sum() / v.sum()) < 6e-3
    assert float(torch.quantile(err[v == 1], 0.98)) < 0.03


def _two_planes(m: int = 9) -> FaceBasis:
    """A big square (x, y in [-0.8, 0.8], z = 0) behind a small one (x, y in [-0.3, 0.3], z = 0.6), both
    facing +z, each an m x m grid; UVs: the big one in u [0.02, 0.48], the small one in u [0.52, 0.98]."""
    g = torch.linspace(-1, 1, m, dtype=torch.float64)
    yy, xx = torch.meshgrid(g.flip(0), g, indexing="ij")  # row 0 at the top (y = +1)
    xx, yy = xx.reshape(-1), yy.reshape(-1)
    back = torch.stack([0.8 * xx, 0.8 * yy, torch.zeros_like(xx)], 1)
    front = torch.stack([0.3 * xx, 0.3 * yy, torch.full_like(xx, 0.6)], 1)
    uvu, uvv = (xx + 1) / 2 * 0.46, (1 - yy) / 2 * 0.96 + 0.02
    uv = torch.cat([torch.stack([uvu + 0.02, uvv], 1), torch.stack([uvu + 0.52, uvv], 1)])
    r, c = torch.meshgrid(torch.arange(m - 1), torch.arange(m - 1), indexing="ij")
    tl, tr = (r * m + c).reshape(-1), (r * m + c + 1).reshape(-1)
    bl, br = tl + m, tr + m
    quad = torch.cat([torch.stack([tl, bl, br], 1), torch.stack([tl, br, tr], 1)])  # counter-clockwise, +z
    faces = torch.cat([quad, quad + m * m])
    N = 2 * m * m
    z = lambda *s: torch.zeros(*s)  # noqa: E731
    return FaceBasis(mean_shape=torch.cat([back, front]).float(), id_base=z(N, 3, 80), exp_base=z(N, 3, 64),
                     mean_tex=torch.full((N, 3), 0.5), tex_base=z(N, 3, 80), faces=faces,
                     landmark_idx=torch.arange(68) % N, point_buf=vertex_face_table(faces, N), uv=uv.float())


def test_occluded_surface_is_invisible():
    model = BFM(_two_planes(), image_size=64)
    coeffs = torch.zeros(1, 257)
    tex = _known_texture()
    img = model.render(coeffs, texture=tex)["image"]
    out = unwrap_texture(model, coeffs, img, size=S)
    v = out["visibility"][0, 0]
    t = (torch.arange(S, dtype=torch.float64) + 0.5) / S
    tv, tu = torch.meshgrid(t, t, indexing="ij")
    # the back plane's texels (u in [0.02, 0.48]) at model (x, y); its points at depth 10 hide behind the
    # front square (depth 9.4, half-width 0.3) where max(|x|, |y|) < 0.3 * 10 / 9.4 = 0.319
    on_back = (tu > 0.02) & (tu < 0.48) & (tv > 0.02) & (tv < 0.98)
    x, y = ((tu - 0.02) / 0.46 * 2 - 1) * 0.8, (1 - (tv - 0.02) / 0.96 * 2) * 0.8
    d = torch.maximum(x.abs(), y.abs())
    pix = 0.8 / 23.2  # the back plane is 2 x 0.8 x 290 / 10 = 46.4 px wide: one pixel = 0.0345 units
    hidden = on_back & (d < 0.319 - 2 * pix)
    clear = on_back & (d > 0.319 + 2 * pix) & (d < 0.8 - 2 * pix)
    assert int(hidden.sum()) > 50 and int(clear.sum()) > 300
    # hidden texels project inside the image (onto the front square) and face the camera, yet are invisible
    assert bool((v[hidden] == 0).all())
    assert bool((v[clear] == 1).all())
    torch.testing.assert_close(out["texture"][0][:, clear], tex[0][:, clear], atol=2e-3, rtol=0)
    # the front square is seen whole, its interior with full footprints
    xf, yf = ((tu - 0.52) / 0.46 * 2 - 1) * 0.3, (1 - (tv - 0.02) / 0.96 * 2) * 0.3
    front_in = (tu > 0.52) & (torch.maximum(xf.abs(), yf.abs()) < 0.3 - 2 * 9.4 / 290)  # 2 px from its edge
    assert int(front_in.sum()) > 400
    assert bool((v[front_in] == 1).all())
    # with the depth test disabled (huge tolerance) the hidden texels would take the front square's colours
    loose = unwrap_texture(model, coeffs, img, size=S, depth_tol=1e3)
    assert bool((loose["visibility"][0, 0][hidden] > 0).all())
    assert float((loose["texture"][0][:, hidden] - tex[0][:, hidden]).abs().mean()) > 0.05


# -- delighting -------------------------------------------------------------------------------------------


def test_delight_recovers_constant_albedo(model):
    coeffs = _pose(0.3)
    gamma = coeffs[0, 227:254].view(3, 9)  # channel-major (R, G, B) x 9 bands
    gamma[:, 0] = torch.tensor([0.2, -0.1, 0.05])  # tinted ambient
    gamma[:, 1:4] = torch.tensor([[0.15, 0.25, -0.2], [0.1, 0.3, -0.15], [0.05, 0.2, -0.1]])  # directional
    gamma[:, 4:] = 0.05 * torch.randn(3, 5, generator=torch.Generator().manual_seed(3))
    albedo = torch.tensor([0.7, 0.5, 0.35])
    tex = albedo.reshape(1, 3, 1, 1).expand(1, 3, 8, 8).contiguous()
    img = model.render(coeffs, texture=tex, shade=True)["image"]
    lit = unwrap_texture(model, coeffs, img, size=S)
    out = unwrap_texture(model, coeffs, img, size=S, delight=True)
    v = out["visibility"][0, 0]
    full = v == 1
    assert int(full.sum()) > 0.6 * S * S
    rec = out["texture"][0][:, full]  # (3, n)
    # the shading varies across the face (irradiance ~0.6..1.5, so the test is not trivial) and delighting
    # removes it: the image carries albedo x the interpolated vertex irradiance, the unwrap divides by the
    # same interpolated irradiance at the texel, leaving the bilinear resampling error of the irradiance field
    # relative to its value (largest around the nose, where the per-vertex shading changes fastest)
    irr = lit["texture"][0][:, full] / albedo[:, None]
    assert float(irr.std(1).min()) > 0.05 and float(irr.max() - irr.min()) > 0.5
    err = (rec - albedo[:, None]).abs().amax(0)
    assert float(err.median()) < 2e-3 and float(torch.quantile(err, 0.99)) < 0.02
    assert float(err.max()) < 0.06
    e_all = (out["texture"][0] - albedo[:, None, None]).abs().amax(0)
    assert float((e_all * v).sum() / v.sum()) < 4e-3


# -- fill_invisible ---------------------------------------------------------------------------------------


def test_fill_invisible():
    g = torch.Generator().manual_seed(0)
    vis = (torch.rand(2, 1, 16, 16, generator=g) > 0.6).float()
    vis[:, :, 0, 0] = 1
    const = torch.full((2, 3, 16, 16), 0.7)
    filled = fill_invisible(const * vis, vis, iterations=16)
    torch.testing.assert_close(filled, const)  # every hole is reachable and a mean of 0.7s
    # known texels are kept; a hole far from every known texel stays 0 after too few iterations
    tex = torch.rand(1, 3, 16, 16, generator=g)
    v1 = torch.zeros(1, 1, 16, 16)
    v1[..., :4, :4] = 1
    f1 = fill_invisible(tex * v1, v1, iterations=2)
    torch.testing.assert_close(f1[..., :4, :4], tex[..., :4, :4])
    assert bool((f1[..., :6, :6] != 0).all()) and bool((f1[..., 7:, :] == 0).all())
    # a filled texel's value lies within its known neighbours' range
    assert float(f1[..., 4, 4].sub(tex[..., 3, 3]).abs().max()) < 1e-6  # its only known neighbour


# -- gradients and errors ---------------------------------------------------------------------------------


def test_gradients_float64(basis):
    model = BFM(basis, image_size=16).double()
    coeffs = _pose(0.2, dtype=torch.float64)
    coeffs[0, 227] = 0.1
    base = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    uvr = uv_raster(model, size=8)

    def from_patch(patch):
        img = base.clone()
        img[:, :, 5:9, 6:10] = patch
        o = unwrap_texture(model, coeffs, img, size=8, uv_rast=uvr, delight=True)
        return o["texture"], o["visibility"]

    patch = base[:, :, 5:9, 6:10].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(from_patch, (patch,), eps=1e-6, atol=1e-7, fast_mode=FAST)

    sub = torch.tensor([225, 227, 254])  # yaw, red ambient, x translation

    def from_coeffs(x):
        c = coeffs.index_put((torch.zeros(3, dtype=torch.long), sub), x)
        o = unwrap_texture(model, c, base, size=8, uv_rast=uvr, delight=True)
        return o["texture"], o["visibility"]

    x = coeffs[0, sub].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(from_coeffs, (x,), eps=1e-7, atol=1e-5, fast_mode=FAST)
    # and the gradients are not trivially zero
    t, v = from_patch(patch)
    assert float(torch.autograd.grad(t.sum(), patch)[0].abs().sum()) > 0.1
    t, v = from_coeffs(x)
    gx = torch.autograd.grad(t.sum() + v.sum(), x)[0]
    assert bool((gx.abs() > 1e-3).all())


def test_bad_inputs(model):
    c = torch.zeros(1, 257)
    img = torch.zeros(1, 3, 64, 64)
    with pytest.raises(ValueError, match="'images'.*image_size"):
        unwrap_texture(model, c, torch.zeros(1, 3, 32, 64))
    with pytest.raises(ValueError, match="'images'.*batch"):
        unwrap_texture(model, c, torch.zeros(2, 3, 64, 64))
    with pytest.raises(ValueError, match="'images'"):
        unwrap_texture(model, c, torch.zeros(1, 4, 64, 64))
    with pytest.raises(TypeError, match="'images'"):
        unwrap_texture(model, c, img.to(torch.uint8))
    with pytest.raises(TypeError, match="'coeffs'"):
        unwrap_texture(model, c.long(), img)
    with pytest.raises(ValueError, match="'coeffs'"):
        unwrap_texture(model, torch.zeros(1, 256), img)
    with pytest.raises(ValueError, match="'size'"):
        unwrap_texture(model, c, img, size=1)
    with pytest.raises(ValueError, match="'uv_rast'"):
        unwrap_texture(model, c, img, size=16, uv_rast=uv_raster(model, size=8))
    with pytest.raises(ValueError, match="'min_facing'"):
        unwrap_texture(model, c, img, size=8, min_facing=2.0)
    with pytest.raises(ValueError, match="'size'"):
        uv_raster(model, size=1)
    with pytest.raises(TypeError, match="'faces'"):
        uv_raster(model.uv, None, 8)
    with pytest.raises(TypeError, match="'model_or_uv'"):
        uv_raster(model.uv.long(), model.faces, 8)
    with pytest.raises(ValueError, match="'visibility'"):
        fill_invisible(torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="'iterations'"):
        fill_invisible(torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, 8, 8), iterations=-1)
