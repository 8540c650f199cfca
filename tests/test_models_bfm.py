"""models.bfm: the registry model (coefficients -> mesh, landmarks, colours, image, mask), its input checks,
texture rendering and gradients."""
import pytest
import torch

from pyvision_fast.face3d import (COEFF_SLICES, load_bfm, save_bfm_mat, synthetic_face_basis,
                                  synthetic_talking_sequence)
from pyvision_fast.face3d.basis import FaceBasis
from pyvision_fast.models import create_model, list_models
from pyvision_fast.models.bfm import BFM, cylindrical_uv


@pytest.fixture(scope="module")
def basis():
    return synthetic_face_basis(24, seed=0)


@pytest.fixture(scope="module")
def model(basis):
    return create_model("bfm", basis=basis, image_size=48)


def test_registry_and_construction(tmp_path, basis):
    assert "bfm" in list_models()
    with pytest.raises(FileNotFoundError, match="BFM_model_front.mat.*01_MorphableModel.mat"):
        create_model("bfm")
    with pytest.raises(FileNotFoundError, match="missing.mat"):
        create_model("bfm", basis_path=tmp_path / "missing.mat")
    with pytest.raises(ValueError, match="synthetic"):
        create_model("bfm", basis="bfm09")
    with pytest.raises(ValueError, match="not both"):
        create_model("bfm", basis_path="x.mat", basis=basis)
    m = create_model("bfm", basis="synthetic", synthetic_rows=24)
    assert m.image_size == (224, 224) and m.focal == 1015.0 and m.center == (112.0, 112.0)
    assert m.camera_distance == 10.0 and m.init_lit.tolist()[0] == pytest.approx(0.8)
    save_bfm_mat(tmp_path / "b.mat", basis)
    m2 = create_model("bfm", basis_path=tmp_path / "b.mat", image_size=(40, 60))
    assert m2.focal == pytest.approx(1015 * 60 / 224) and m2.center == (30.0, 20.0)
    torch.testing.assert_close(m2.mean_shape, load_bfm(tmp_path / "b.mat").mean_shape)
    assert {"faces", "mouth_idx", "landmark_idx", "uv", "mean_shape"} <= dict(m2.named_buffers()).keys()
    assert not list(m2.parameters())
    with pytest.raises(ValueError, match="image_size"):
        BFM(basis, image_size=0)
    with pytest.raises(ValueError, match="focal"):
        BFM(basis, focal=-1.0)
    with pytest.raises(ValueError, match="znear"):
        BFM(basis, znear=20.0)
    with pytest.raises(ValueError, match="init_lit"):
        BFM(basis, init_lit=(0.8, 0.0))
    with pytest.raises(TypeError, match="basis"):
        BFM("synthetic")


def test_forward_outputs(model, basis):
    c = synthetic_talking_sequence(basis, 3, seed=0)
    out = model(c)
    N = basis.n_verts
    shapes = {"verts": (3, N, 3), "verts_clip": (3, N, 4), "landmarks": (3, 68, 2),
              "vertex_colors": (3, N, 3), "image": (3, 3, 48, 48), "mask": (3, 1, 48, 48)}
    for k, s in shapes.items():
        assert out[k].shape == s and out[k].dtype == torch.float32, k
    assert ((out["mask"] == 0) | (out["mask"] == 1)).all() and 0.2 < out["mask"].mean() < 0.8
    assert (out["image"] * (1 - out["mask"]) == 0).all()
    assert 0 <= out["vertex_colors"].min() and out["vertex_colors"].max() <= 1  # the sequence's light
    # landmarks are the landmark vertices projected; landmarks() computes the same from 68 vertices
    torch.testing.assert_close(model.landmarks(c), out["landmarks"])
    assert out["verts"][..., 2].min() > 8  # in front of the camera at distance 10
    # shape(): identity + expression only, pose-free
    c2 = c.clone()
    c2[:, COEFF_SLICES["angle"]] += 0.3
    c2[:, COEFF_SLICES["trans"]] += 0.2
    torch.testing.assert_close(model.shape(c2), model.shape(c))
    zero = torch.zeros(1, 257)
    torch.testing.assert_close(model.shape(zero)[0], basis.mean_shape)
    # float64 goes through in float64
    out64 = model(c.double())
    assert out64["image"].dtype == torch.float64
    torch.testing.assert_close(out64["landmarks"].float(), out["landmarks"], atol=1e-3, rtol=0)


def test_pose_moves_landmarks(model):
    c = torch.zeros(2, 257)
    c[1, COEFF_SLICES["trans"].start] = 0.1  # +x translation: right by focal * 0.1 / Z pixels
    lm = model.landmarks(c)
    Z = model(c)["verts"][0, model.landmark_idx, 2]
    torch.testing.assert_close(lm[1, :, 0] - lm[0, :, 0], model.focal * 0.1 / Z, atol=1e-4, rtol=0)
    torch.testing.assert_close(lm[1, :, 1], lm[0, :, 1])
    c[1] = 0
    c[1, COEFF_SLICES["exp"].start] = 1.0  # mouth opening: the lower inner lip (66) moves down the image
    lm = model.landmarks(c)
    assert lm[1, 66, 1] - lm[0, 66, 1] > 1.0 and abs(float(lm[1, 62, 1] - lm[0, 62, 1])) < 0.5


def test_bad_inputs(model):
    with pytest.raises(ValueError, match="coeffs.*257"):
        model(torch.zeros(2, 256))
    with pytest.raises(ValueError, match="coeffs"):
        model(torch.zeros(257))
    with pytest.raises(TypeError, match="coeffs"):
        model(torch.zeros(2, 257, dtype=torch.int64))
    with pytest.raises(TypeError, match="coeffs"):
        model([0.0] * 257)
    with pytest.raises(ValueError, match="texture"):
        model.render(torch.zeros(2, 257), texture=torch.rand(1, 3, 8, 8))
    with pytest.raises(TypeError, match="texture"):
        model.render(torch.zeros(1, 257), texture=torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


def test_texture_render(model, basis):
    c = synthetic_talking_sequence(basis, 2, seed=1)
    flat = torch.full((2, 3, 16, 16), 0.25)
    out = model.render(c, texture=flat)
    m = out["mask"]
    torch.testing.assert_close(out["image"], 0.25 * m.expand_as(out["image"]))
    # a left/right split texture: u grows to the image's right on the synthetic face
    tex = torch.zeros(2, 3, 16, 16)
    tex[..., 8:] = 1
    img = model.render(torch.zeros(2, 257), texture=tex)["image"][0, 0]
    assert img[:, :20].sum() < img[:, 28:].sum()
    # shade=True multiplies by the irradiance: a white texture gives the lit white face
    white = model.render(c, texture=torch.ones(2, 3, 16, 16), shade=True)["image"]
    ref = model.render(c)
    irr = ref["vertex_colors"] / ref["albedo"]
    assert white.max() <= irr.max() + 1e-4 and white[m.expand_as(white) > 0].min() >= irr.min() - 1e-4
    # gradient reaches the texture and the coefficients
    tex = torch.rand(2, 3, 16, 16, requires_grad=True)
    cc = c.clone().requires_grad_(True)
    model.render(cc, texture=tex)["image"].square().sum().backward()
    assert tex.grad.abs().sum() > 0 and cc.grad[:, COEFF_SLICES["angle"]].abs().sum() > 0


def test_cylindrical_uv_without_basis_uv(basis):
    fields = {f: getattr(basis, f) for f in ("mean_shape", "id_base", "exp_base", "mean_tex", "tex_base",
                                             "faces", "landmark_idx", "point_buf")}
    m = BFM(FaceBasis(**fields), image_size=32)
    uv = m.uv
    assert uv.min() >= 0 and uv.max() <= 1
    torch.testing.assert_close(uv, cylindrical_uv(basis.mean_shape))
    x, y = basis.mean_shape[:, 0], basis.mean_shape[:, 1]
    assert torch.corrcoef(torch.stack([uv[:, 0], x]))[0, 1] > 0.95  # u left to right
    assert torch.corrcoef(torch.stack([uv[:, 1], y]))[0, 1] < -0.95  # v top (0) to bottom
    out = m.render(torch.zeros(1, 257), texture=torch.rand(1, 3, 8, 8))
    assert out["image"].shape == (1, 3, 32, 32)


def test_gradients_reach_every_coefficient_group(model, basis):
    c = synthetic_talking_sequence(basis, 2, seed=3).requires_grad_(True)
    out = model(c)
    target = torch.rand_like(out["image"])
    ((out["image"] - target).square().sum() + out["landmarks"].square().mean()).backward()
    for k, s in COEFF_SLICES.items():
        assert torch.isfinite(c.grad[:, s]).all() and c.grad[:, s].abs().sum() > 0, k


def test_mouth_idx_buffer(model, basis):
    from pyvision_fast.face3d import mouth_vertex_indices
    assert torch.equal(model.mouth_idx, mouth_vertex_indices(basis))
    # the mouth opening moves the mouth region far more than the rest of the face
    c = torch.zeros(2, 257)
    c[1, COEFF_SLICES["exp"].start] = 1.0
    d = (model.shape(c)[1] - model.shape(c)[0]).norm(dim=-1)
    rest = torch.ones(basis.n_verts, dtype=torch.bool)
    rest[model.mouth_idx] = False
    assert d[model.mouth_idx].mean() > 2 * d[rest].mean()
