"""face3d.basis (BFM front model .mat reading / writing, FaceBasis, coefficient layout, mouth region) and
face3d.synthetic (synthetic face basis and talking sequence)."""
import numpy as np
import pytest
import scipy.io
import torch

from pyvision_fast.face3d import (COEFF_SLICES, N_COEFFS, FaceBasis, load_bfm, mouth_vertex_indices,
                                  save_bfm_mat, split_coeffs, synthetic_face_basis,
                                  synthetic_talking_sequence, vertex_face_table)
from pyvision_fast.face3d.synthetic import landmark_template


def _grid_mesh(n=6):
    r, c = np.meshgrid(np.arange(n - 1), np.arange(n - 1), indexing="ij")
    tl = (r * n + c).ravel()
    tri = np.concatenate([np.stack([tl, tl + n, tl + n + 1], 1), np.stack([tl, tl + n + 1, tl + 1], 1)])
    return tri, n * n


def _write_random_bfm(path, rng, column_vectors=False, **override):
    """A small random basis in Deep3DFaceRecon's BFM_model_front.mat layout, written with scipy directly
    (1-based indices, 0..255 albedo, point_buf padded with F + 1)."""
    tri0, N = _grid_mesh(10)
    F = tri0.shape[0]
    table = vertex_face_table(torch.from_numpy(tri0), N, width=8).numpy()
    d = {
        "meanshape": rng.normal(size=(1, 3 * N)).astype(np.float32) + 1.5,
        "idBase": rng.normal(size=(3 * N, 80)).astype(np.float32),
        "exBase": rng.normal(size=(3 * N, 64)).astype(np.float32),
        "meantex": rng.uniform(0, 255, size=(1, 3 * N)).astype(np.float32),
        "texBase": rng.normal(size=(3 * N, 80)).astype(np.float32) * 10,
        "tri": (tri0 + 1).astype(np.float64),
        "point_buf": (table + 1).astype(np.float64),
        "keypoints": (rng.permutation(N)[:68] + 1).astype(np.float64).reshape(1, 68),
    }
    assert table.max() == F  # padding present
    if column_vectors:
        d["meanshape"] = d["meanshape"].reshape(-1, 1)
        d["meantex"] = d["meantex"].reshape(-1, 1)
        d["keypoints"] = d["keypoints"].reshape(-1, 1)
    d.update(override)
    scipy.io.savemat(str(path), d)
    return d


@pytest.mark.parametrize("column_vectors", [False, True])
def test_load_bfm_layout(tmp_path, column_vectors):
    rng = np.random.default_rng(0)
    d = _write_random_bfm(tmp_path / "bfm.mat", rng, column_vectors)
    b = load_bfm(tmp_path / "bfm.mat", recenter=False)
    N = d["meanshape"].size // 3
    assert b.mean_shape.shape == (N, 3) and b.mean_shape.dtype == torch.float32
    assert b.id_base.shape == (N, 3, 80) and b.exp_base.shape == (N, 3, 64) and b.tex_base.shape == (N, 3, 80)
    assert b.faces.dtype == torch.int64 and b.faces.min() == 0
    # vertex-major rows: vertex n, coordinate c is row 3n + c
    np.testing.assert_allclose(b.mean_shape[5].numpy(), d["meanshape"].reshape(-1)[15:18], rtol=1e-6)
    np.testing.assert_allclose(b.id_base[5, 2].numpy(), d["idBase"][17], rtol=1e-6)
    np.testing.assert_allclose(b.mean_tex.numpy() * 255, d["meantex"].reshape(N, 3), rtol=1e-5)
    np.testing.assert_allclose(b.tex_base.numpy() * 255, d["texBase"].reshape(N, 3, 80), rtol=1e-5)
    np.testing.assert_array_equal(b.faces.numpy(), d["tri"] - 1)
    np.testing.assert_array_equal(b.landmark_idx.numpy(), d["keypoints"].reshape(-1) - 1)
    np.testing.assert_array_equal(b.point_buf.numpy(), d["point_buf"] - 1)
    assert b.uv is None
    # recentering (Deep3DFaceRecon's default) subtracts the mean vertex of the mean shape, bases unchanged
    c = load_bfm(tmp_path / "bfm.mat")
    torch.testing.assert_close(c.mean_shape, b.mean_shape - b.mean_shape.mean(0), atol=1e-5, rtol=0)
    assert torch.equal(c.id_base, b.id_base)


def test_load_bfm_zero_padded_point_buf(tmp_path):
    # a short point_buf row may be padded with 0 instead of F + 1 (both index the zero normal in
    # Deep3DFaceRecon's code): both load as F
    rng = np.random.default_rng(2)
    d = _write_random_bfm(tmp_path / "a.mat", rng)
    F = d["tri"].shape[0]
    pb = d["point_buf"].copy()
    pb[pb == F + 1] = 0
    _write_random_bfm(tmp_path / "b.mat", np.random.default_rng(2), point_buf=pb)
    a, b = load_bfm(tmp_path / "a.mat"), load_bfm(tmp_path / "b.mat")
    assert (pb == 0).any() and torch.equal(a.point_buf, b.point_buf) and int(b.point_buf.max()) == F


def test_save_load_round_trip(tmp_path):
    b = synthetic_face_basis(24, seed=3)
    save_bfm_mat(tmp_path / "syn.mat", b)
    c = load_bfm(tmp_path / "syn.mat", recenter=False)
    for f in ("mean_shape", "id_base", "exp_base", "mean_tex", "tex_base", "uv"):
        torch.testing.assert_close(getattr(c, f), getattr(b, f), atol=1e-6, rtol=1e-5)
    for f in ("faces", "landmark_idx", "point_buf"):
        assert torch.equal(getattr(c, f), getattr(b, f)), f
    raw = scipy.io.loadmat(str(tmp_path / "syn.mat"))
    assert raw["tri"].min() == 1 and raw["keypoints"].min() >= 1  # 1-based on disk


def test_load_bfm_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.mat.*01_MorphableModel.mat.*Exp_Pca.bin"):
        load_bfm(tmp_path / "nope.mat")
    (tmp_path / "junk.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(ValueError, match="junk.mat"):
        load_bfm(tmp_path / "junk.mat")
    rng = np.random.default_rng(1)
    scipy.io.savemat(str(tmp_path / "partial.mat"), {"meanshape": np.zeros((1, 30))})
    with pytest.raises(ValueError, match="lacks the key.*idBase"):
        load_bfm(tmp_path / "partial.mat")
    _write_random_bfm(tmp_path / "b1.mat", rng, exBase=np.zeros((300, 32), np.float32))
    with pytest.raises(ValueError, match="'exBase'.*\\(300, 64\\)"):
        load_bfm(tmp_path / "b1.mat")
    _write_random_bfm(tmp_path / "b2.mat", rng, tri=np.zeros((4, 3)))
    with pytest.raises(ValueError, match="'tri'.*1-based"):
        load_bfm(tmp_path / "b2.mat")
    _write_random_bfm(tmp_path / "b3.mat", rng, keypoints=np.arange(1, 60, dtype=np.float64))
    with pytest.raises(ValueError, match="'keypoints'.*68 values"):
        load_bfm(tmp_path / "b3.mat")
    _write_random_bfm(tmp_path / "b4.mat", rng, meanshape=np.zeros((1, 301), np.float32))
    with pytest.raises(ValueError, match="meanshape"):
        load_bfm(tmp_path / "b4.mat")
    with pytest.raises(TypeError, match="basis"):
        save_bfm_mat(tmp_path / "x.mat", {"a": 1})


def test_face_basis_validation():
    b = synthetic_face_basis(24)
    fields = {f: getattr(b, f) for f in ("mean_shape", "id_base", "exp_base", "mean_tex", "tex_base", "faces",
                                         "landmark_idx", "point_buf", "uv")}
    with pytest.raises(ValueError, match="'id_base'"):
        FaceBasis(**dict(fields, id_base=b.id_base[:, :, :10]))
    with pytest.raises(TypeError, match="'faces'"):
        FaceBasis(**dict(fields, faces=b.faces.int()))
    with pytest.raises(ValueError, match="'faces'.*outside"):
        FaceBasis(**dict(fields, faces=b.faces + 1000))
    with pytest.raises(ValueError, match="'landmark_idx'"):
        FaceBasis(**dict(fields, landmark_idx=b.landmark_idx[:10]))
    with pytest.raises(ValueError, match="'uv'"):
        FaceBasis(**dict(fields, uv=b.uv[:5]))
    d = b.to(torch.float64)
    assert d.mean_shape.dtype == torch.float64 and d.faces.dtype == torch.int64


def test_coeff_layout():
    assert N_COEFFS == 257
    sizes = {k: s.stop - s.start for k, s in COEFF_SLICES.items()}
    assert sizes == {"id": 80, "exp": 64, "tex": 80, "angle": 3, "gamma": 27, "trans": 3}
    stops = sorted((s.start, s.stop) for s in COEFF_SLICES.values())
    assert stops[0][0] == 0 and stops[-1][1] == 257
    assert all(a[1] == b[0] for a, b in zip(stops, stops[1:]))  # contiguous, no gaps
    x = torch.arange(2 * 257.0).view(2, 257)
    parts = split_coeffs(x)
    assert parts["trans"].shape == (2, 3) and parts["exp"][0, 0] == 80
    with pytest.raises(ValueError, match="coeffs"):
        split_coeffs(torch.zeros(2, 256))
    with pytest.raises(TypeError, match="coeffs"):
        split_coeffs(np.zeros((2, 257)))


def test_vertex_face_table_brute_force():
    tri, N = _grid_mesh(5)
    faces = torch.from_numpy(tri)
    table = vertex_face_table(faces, N)
    F = faces.shape[0]
    for v in range(N):
        expect = sorted(int(f) for f in torch.nonzero((faces == v).any(1)).squeeze(1))
        row = [int(t) for t in table[v] if t != F]
        assert row == expect
    assert table.shape[1] == 6  # grid valence


def test_synthetic_basis():
    b = synthetic_face_basis(32, seed=0)
    assert b.n_verts == 1024 and b.n_faces == 2 * 31 * 31
    assert b.landmark_idx.unique().numel() == 68  # distinct landmark vertices
    torch.testing.assert_close(b.mean_shape.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    # the landmarks sit near their template positions (grid spacing ~0.065)
    err = (b.mean_shape[b.landmark_idx, :2].double() - landmark_template()).norm(dim=1)
    assert err.max() < 0.06
    # deterministic; the seed changes the random bases but not the geometry
    c = synthetic_face_basis(32, seed=0)
    assert torch.equal(b.id_base, c.id_base) and torch.equal(b.exp_base, c.exp_base)
    d = synthetic_face_basis(32, seed=1)
    assert torch.equal(b.mean_shape, d.mean_shape) and not torch.equal(b.exp_base, d.exp_base)
    # expression 0 opens the mouth: the lower inner lip (landmark 66) goes down, the upper one (62) not
    lm = b.landmark_idx
    assert b.exp_base[lm[66], 1, 0] < -0.08 and abs(float(b.exp_base[lm[62], 1, 0])) < 0.03
    # faces are counter-clockwise seen from +z (the camera side)
    v = b.mean_shape[b.faces]
    nz = torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1)[:, 2]
    assert (nz > 0).all()
    with pytest.raises(ValueError, match="n_rows"):
        synthetic_face_basis(10)
    with pytest.raises(TypeError, match="n_rows"):
        synthetic_face_basis(32.0)


def test_mouth_vertex_indices():
    b = synthetic_face_basis(32)
    idx = mouth_vertex_indices(b)
    assert idx.dtype == torch.int64 and 30 < idx.numel() < 200
    assert set(b.landmark_idx[48:68].tolist()) <= set(idx.tolist())
    assert not set(b.landmark_idx[36:48].tolist()) & set(idx.tolist())  # not the eyes
    y = b.mean_shape[idx, 1]
    assert y.max() < b.mean_shape[b.landmark_idx[33], 1]  # below the nose
    # scale-free: scaling the face keeps the selection
    fields = {f: getattr(b, f) for f in ("mean_shape", "id_base", "exp_base", "mean_tex", "tex_base", "faces",
                                         "landmark_idx", "point_buf")}
    big = FaceBasis(**dict(fields, mean_shape=b.mean_shape * 7))
    assert torch.equal(mouth_vertex_indices(big), idx)
    assert mouth_vertex_indices(b, radius=0.5).numel() > idx.numel()
    with pytest.raises(ValueError, match="radius"):
        mouth_vertex_indices(b, radius=0)


def test_synthetic_talking_sequence():
    b = synthetic_face_basis(24)
    c = synthetic_talking_sequence(b, 50, seed=2)
    assert c.shape == (50, 257) and c.dtype == torch.float32
    assert torch.equal(c, synthetic_talking_sequence(b, 50, seed=2))
    s = COEFF_SLICES
    # one identity / albedo, a mouth that opens and closes several times
    assert (c[:, s["id"]] == c[:1, s["id"]]).all() and (c[:, s["tex"]] == c[:1, s["tex"]]).all()
    mouth = c[:, s["exp"].start]
    assert mouth.min() < 0.1 and mouth.max() > 0.9
    crossings = ((mouth[1:] - 0.5).sign() != (mouth[:-1] - 0.5).sign()).sum()
    assert crossings >= 8
    assert c[:, s["angle"]].abs().max() < 0.2
    with pytest.raises(ValueError, match="'T'"):
        synthetic_talking_sequence(b, 0)
    with pytest.raises(TypeError, match="basis"):
        synthetic_talking_sequence("bfm", 4)
