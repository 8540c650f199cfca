"""face3d.fit: the 68-point landmark file reader and fit_3dmm on a synthetic talking face (frames rendered by
our rasterizer from known coefficients).

What is asserted, and why these bounds. The frames and landmarks are exact renders of the model, so what
limits the recovery is (1) what the data cannot tell apart and (2) the regularisation's bias:

* the identity is shared by the frames, so the sequence mean of the expression trades against it: expression
  coefficients and mouth geometry are compared as deviations from their sequence mean (what the mouth loss
  and the editor see change from frame to frame);
* the camera distance trades against the face's size (the identity's smooth fields can scale it): the depth
  translation is not compared, the image-plane translation is;
* 59 of the 64 expression components are small random fields that move vertices by < 0.1 px at 64 px: they
  are not compared one by one; their joint effect is in the mouth-region geometry error.

Bounds (measured worst over sequences seeded 1-5 in brackets; the bounds leave about 2x):

* landmark residual <= 0.1 px mean [0.04]: the optimum reproduces the landmarks far below a pixel;
* the stage-1 objective at the fit <= its value at the true coefficients: L-BFGS reached the optimum (the
  truth is one feasible point, so a converged fit can only be at or below it);
* mouth-region motion error <= 25 % of the mean mouth-region motion [14 %]: the mouth-shape loss compares this
  geometry; a fit ignoring the mouth would score 100 %;
* mouth opening (expression 0) deviation error <= 0.05 [0.015], 5 % of its 0..1 range;
* rotation angles <= 0.04 rad [0.02] (pitch trades a little against the face's vertical profile);
  image-plane translation <= 0.03 units [0.012] (~1 px);
* after the appearance stage, mean absolute RGB error inside the face <= 0.02 [0.01] (0.14 before it).
"""
import pytest
import torch

from pyvision_fast.face3d import COEFF_SLICES, synthetic_face_basis, synthetic_talking_sequence
from pyvision_fast.face3d.fit import (fit_3dmm, fit_losses, fit_video, read_landmark_sequence, read_landmarks,
                                      write_landmarks)
from pyvision_fast.models import create_model


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # the fit runs many small ops: on a shared 2-core machine, torch's intra-op threads spin against other
    # processes (10x slower); one thread is what a batch job per video would use anyway
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------ landmark files
def test_read_landmarks(tmp_path):
    pts = torch.arange(136, dtype=torch.float32).view(68, 2) * 1.5
    lines = [f"{x} {y}" for x, y in pts.tolist()]
    lines[3] = f"{pts[3, 0]},{pts[3, 1]}"  # comma-separated accepted
    lines[10] = f"  {pts[10, 0]}\t{pts[10, 1]}  "
    text = "# 68 points\n" + "\n".join(lines[:30]) + "\n\n" + "\n".join(lines[30:]) + "\n"
    (tmp_path / "a.txt").write_text(text)
    lm = read_landmarks(tmp_path / "a.txt")
    assert lm.shape == (68, 2) and lm.dtype == torch.float32
    torch.testing.assert_close(lm, pts)
    write_landmarks(tmp_path / "b.txt", pts + 0.25)
    torch.testing.assert_close(read_landmarks(tmp_path / "b.txt"), pts + 0.25)


def test_read_landmarks_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_landmarks(tmp_path / "nope.txt")
    good = ["1 2"] * 68
    bad = list(good)
    bad[4] = "1 2 3"
    (tmp_path / "three.txt").write_text("\n".join(bad))
    with pytest.raises(ValueError, match=r"three.txt, line 5: expected two numbers"):
        read_landmarks(tmp_path / "three.txt")
    bad = list(good)
    bad[6] = "12 abc"
    (tmp_path / "word.txt").write_text("# header\n" + "\n".join(bad))
    with pytest.raises(ValueError, match=r"word.txt, line 8: not numbers"):
        read_landmarks(tmp_path / "word.txt")
    bad = list(good)
    bad[0] = "nan 3"
    (tmp_path / "nan.txt").write_text("\n".join(bad))
    with pytest.raises(ValueError, match=r"nan.txt, line 1: non-finite"):
        read_landmarks(tmp_path / "nan.txt")
    (tmp_path / "short.txt").write_text("\n".join(good[:67]))
    with pytest.raises(ValueError, match=r"short.txt has 67 points, expected 68"):
        read_landmarks(tmp_path / "short.txt")
    with pytest.raises(ValueError, match="landmarks"):
        write_landmarks(tmp_path / "c.txt", torch.zeros(68, 3))


# ---------------------------------------------------------------------------------------------- fitting
@pytest.fixture(scope="module")
def scene():
    basis = synthetic_face_basis(32, seed=0)
    model = create_model("bfm", basis=basis, image_size=64)
    truth = synthetic_talking_sequence(basis, 6, seed=1)
    with torch.no_grad():
        out = model(truth)
    return model, truth, out["image"], out["landmarks"], out["mask"]


def test_fit_input_checks(scene):
    model, truth, frames, lm, _ = scene
    with pytest.raises(ValueError, match="frames.*\\(T, 3, 64, 64\\)"):
        fit_3dmm(model, frames[:, :, :32], lm)
    with pytest.raises(TypeError, match="frames"):
        fit_3dmm(model, (frames * 255).byte(), lm)
    with pytest.raises(ValueError, match="landmarks.*\\(6, 68, 2\\)"):
        fit_3dmm(model, frames, lm[:3])
    bad = lm.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="landmarks.*non-finite"):
        fit_3dmm(model, frames, bad)
    with pytest.raises(TypeError, match="w_bogus"):
        fit_3dmm(model, frames, lm, w_bogus=1.0)
    with pytest.raises(ValueError, match="w_exp"):
        fit_3dmm(model, frames, lm, w_exp=-1.0)
    with pytest.raises(ValueError, match="landmark_iterations"):
        fit_3dmm(model, frames, lm, landmark_iterations=-1)
    with pytest.raises(ValueError, match="landmark_weights"):
        fit_3dmm(model, frames, lm, landmark_weights=torch.zeros(68))
    with pytest.raises(ValueError, match="init"):
        fit_3dmm(model, frames, lm, init=torch.zeros(5, 257))
    with pytest.raises(TypeError, match="model"):
        fit_3dmm(torch.nn.Linear(2, 2), frames, lm)


def _stage1_objective(model, coeffs, frames, lm):
    """fit_3dmm's stage-1 objective with its default weights (landmarks, identity / expression priors,
    smoothness of expression, angles and translation)."""
    t = fit_losses(model, coeffs, frames, lm, photometric=False)
    dyn = torch.cat([coeffs[:, COEFF_SLICES[k]] for k in ("exp", "angle", "trans")], 1)
    smooth = (dyn[1:] - dyn[:-1]).pow(2).sum(-1).mean()
    return float(100 * t["landmark"] + 1e-4 * (t["id"] + t["exp"]) + 1e-3 * smooth)


def _geometry_errors(model, fit, truth):
    mot = lambda s: s - s.mean(0)  # noqa: E731
    mi = model.mouth_idx
    st, sf = model.shape(truth)[:, mi], model.shape(fit)[:, mi]
    e = 80  # expression 0: mouth opening
    return {
        "lm": float((model.landmarks(fit) - model.landmarks(truth)).norm(dim=-1).mean()),
        "motion_rel": float((mot(sf) - mot(st)).norm(dim=-1).mean() / mot(st).norm(dim=-1).mean()),
        "mouth_open": float((mot(fit[:, e]) - mot(truth[:, e])).abs().max()),
        "angle": float((fit[:, COEFF_SLICES["angle"]] - truth[:, COEFF_SLICES["angle"]]).abs().max()),
        "trans_xy": float((fit[:, 254:256] - truth[:, 254:256]).abs().max()),
    }


def _check_geometry(err, lm_bound):
    assert err["lm"] <= lm_bound, err
    assert err["motion_rel"] <= 0.25, err
    assert err["mouth_open"] <= 0.05, err
    assert err["angle"] <= 0.04, err
    assert err["trans_xy"] <= 0.03, err


def test_fit_recovers_talking_face(scene):
    model, truth, frames, lm, mask = scene
    # stage 1 alone: landmarks -> shape and pose
    fit1 = fit_3dmm(model, frames, lm, landmark_iterations=600, appearance_iterations=0, iterations=0)
    assert fit1.shape == (6, 257) and fit1.dtype == torch.float32 and not fit1.requires_grad
    assert _stage1_objective(model, fit1, frames, lm) <= _stage1_objective(model, truth, frames, lm)
    _check_geometry(_geometry_errors(model, fit1, truth), 0.1)
    # one identity / albedo for the sequence
    assert (fit1[:, COEFF_SLICES["id"]] == fit1[:1, COEFF_SLICES["id"]]).all()

    def face_err(c):
        with torch.no_grad():
            img = model(c)["image"]
        return float(((img - frames).abs() * mask).sum() / mask.sum() / 3)

    before = face_err(fit1)
    assert before > 0.05  # albedo and light still unknown
    # stages 2 and 3 from there: albedo and light on the fixed raster, then a short joint refinement
    fit3, hist = fit_3dmm(model, frames, lm, init=fit1, landmark_iterations=0, appearance_iterations=30,
                          iterations=10, return_history=True)
    assert face_err(fit3) <= 0.02
    assert hist[-1]["photo"] < 0.2 * hist[0]["photo"]
    _check_geometry(_geometry_errors(model, fit3, truth), 0.15)


def test_fit_per_frame_identity_and_float64(scene):
    model, truth, frames, lm, _ = scene
    fit = fit_3dmm(model, frames[:2].double(), lm[:2].double(), landmark_iterations=50,
                   appearance_iterations=5, iterations=2, share_identity=False)
    assert fit.dtype == torch.float64 and torch.isfinite(fit).all()
    assert not torch.equal(fit[0, COEFF_SLICES["id"]], fit[1, COEFF_SLICES["id"]])
    err = (model.landmarks(fit) - lm[:2].double()).norm(dim=-1).mean()
    assert err < 0.5
    one = fit_3dmm(model, frames[:1], lm[:1], landmark_iterations=20, appearance_iterations=2, iterations=1)
    assert one.shape == (1, 257) and torch.isfinite(one).all()  # a single frame: no smoothness term


@pytest.mark.slow
def test_fit_noisy_landmarks_longer_sequence():
    """16 frames at 128 px with landmarks perturbed by N(0, 0.3 px) noise, default stages and iterations,
    stronger smoothing (w_smooth 1e-2). Bounds: mouth-region motion within 40 % of the motion (measured 27 %
    without the photometric stages), mouth opening within 0.1, angles within 0.05 rad."""
    basis = synthetic_face_basis(32, seed=0)
    model = create_model("bfm", basis=basis, image_size=128)
    truth = synthetic_talking_sequence(basis, 16, seed=1)
    with torch.no_grad():
        out = model(truth)
    gen = torch.Generator().manual_seed(9)
    noisy = out["landmarks"] + 0.3 * torch.randn(out["landmarks"].shape, generator=gen)
    fit = fit_3dmm(model, out["image"], noisy, w_smooth=1e-2)
    err = _geometry_errors(model, fit, truth)
    assert err["motion_rel"] <= 0.4, err
    assert err["mouth_open"] <= 0.1, err
    assert err["angle"] <= 0.05, err


def test_landmark_sequence_and_fit_video(tmp_path, scene):
    from pyvision_fast.data.video import write_video

    model, truth, frames, lm, _ = scene
    # the video at twice the model's size: landmarks in the video's pixels, scaled back by fit_video
    big = torch.nn.functional.interpolate(frames[:3], scale_factor=2, mode="bilinear", align_corners=False)
    video = write_video(tmp_path / "talk.mp4", (big.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1))
    folder = tmp_path / "lms"
    folder.mkdir()
    for t in range(3):
        write_landmarks(folder / f"{t:06d}.txt", lm[t] * 2)
    seq = read_landmark_sequence(folder)
    assert seq.shape == (3, 68, 2)
    torch.testing.assert_close(seq, lm[:3] * 2, atol=1e-3, rtol=0)
    files = sorted(folder.glob("*.txt"))
    torch.testing.assert_close(read_landmark_sequence(files), seq)
    fit = fit_video(model, video, folder, landmark_iterations=200, appearance_iterations=10, iterations=0)
    assert fit.shape == (3, 257)
    assert (model.landmarks(fit) - lm[:3]).norm(dim=-1).mean() < 0.2
    with pytest.raises(ValueError, match="3 frames but 2 landmark"):
        fit_video(model, video, files[:2])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_landmark_sequence(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no \\*.txt"):
        read_landmark_sequence(tmp_path / "empty")
    with pytest.raises(ValueError, match="empty list"):
        read_landmark_sequence([])
