"""``pvf edit-video`` and ``face3d.edit_video`` on a tiny synthetic talking video (the synthetic face basis
saved as a BFM front-model .mat, rendered over a background with PyAV): intensity 0 reproduces the video, an
edit changes the face and nothing else, the edit is smoothed over the window, per-frame coefficient folders
(.npy and Deep3DFaceRecon .mat) read like one (T, 257) file, every error is one line with status 2; aligned
crops (a wider video filmed by a scaled camera) are pasted back with the background untouched, and the texture
edit renders the generated texture of the edited latents (given or inverted from the frames)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.io
import torch

pytest.importorskip("av")

from pyvision_fast.cli import main  # noqa: E402
from pyvision_fast.data.video import probe_video, read_video, write_video  # noqa: E402
from pyvision_fast.face3d.basis import COEFF_SLICES, save_bfm_mat  # noqa: E402
from pyvision_fast.face3d.edit_video import edit_coefficients, load_coeff_sequence, load_editor  # noqa: E402
from pyvision_fast.face3d.synthetic import synthetic_face_basis, synthetic_talking_sequence  # noqa: E402
from pyvision_fast.models import create_model  # noqa: E402
from pyvision_fast.models.expression_editor import temporal_smooth  # noqa: E402
from pyvision_fast.train.checkpoint import save_model  # noqa: E402
from pyvision_fast.train.recipe import Config  # noqa: E402

T, SIZE = 8, 64
EDITOR_ARGS = {"latent_dim": 0, "hidden": 32, "depth": 2}


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """(folder, face model): basis.mat, coeffs.npy (T, 257), video.mp4 (the face over a textured background),
    editor.safetensors (random weights, with pvf train metadata)."""
    root = tmp_path_factory.mktemp("edit")
    basis = synthetic_face_basis(24)
    save_bfm_mat(root / "basis.mat", basis)
    face = create_model("bfm", basis_path=root / "basis.mat", image_size=SIZE)
    coeffs = synthetic_talking_sequence(basis, T, seed=3)
    np.save(root / "coeffs.npy", coeffs.numpy())
    yy, xx = torch.meshgrid(torch.linspace(0, 1, SIZE), torch.linspace(0, 1, SIZE), indexing="ij")
    background = torch.stack([xx, yy, 0.5 * torch.ones_like(xx)])
    with torch.no_grad():
        out = face(coeffs)
    frames = out["image"].clamp(0, 1) * out["mask"] + background * (1 - out["mask"])
    write_video(root / "video.mp4", (frames * 255).round().byte().permute(0, 2, 3, 1))
    torch.manual_seed(0)
    editor = create_model("expression_editor", **EDITOR_ARGS)
    with torch.no_grad():
        for p in editor.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
        # the edit: open the mouth (the synthetic face's expression 0) by 1.5 at intensity 1, nothing else
        editor.exp_net.out.weight.zero_()
        editor.exp_net.out.bias.zero_()
        editor.exp_net.out.bias[0] = 1.5
    save_model(editor, root / "editor.safetensors", Config(model="expression_editor", model_args=EDITOR_ARGS,
                                                           num_classes=None, img_size=224))
    return root, face, editor


LOSSLESS = ["--codec", "libx264", "--codec-option", "crf=0"]


def run(root, capsys, *extra, emotion="happy", intensity="0.8", output="out.mp4"):
    rc = main(["edit-video", "--input", str(root / "video.mp4"), "--coeffs", str(root / "coeffs.npy"),
               "--emotion", emotion, "--intensity", intensity, "--output", str(root / output), "--bfm",
               str(root / "basis.mat"), "--checkpoint", str(root / "editor.safetensors"), "--no-progress",
               *extra])
    return rc, capsys.readouterr()


def test_edit_coefficients(clip):
    root, _, editor = clip
    coeffs = load_coeff_sequence(root / "coeffs.npy")
    assert torch.equal(edit_coefficients(editor, coeffs, "happy", 0.0, window=5), coeffs)
    raw = edit_coefficients(editor, coeffs, "sad", 0.7, window=1)
    exp = COEFF_SLICES["exp"]
    with torch.no_grad():
        assert torch.allclose(raw[:, exp], editor(coeffs[:, exp], "sad", 0.7), atol=1e-6)
    assert torch.equal(raw[:, :80], coeffs[:, :80]) and torch.equal(raw[:, 144:], coeffs[:, 144:])
    smooth = edit_coefficients(editor, coeffs, "sad", 0.7, window=3)
    # the edit (offset from the original), not the coefficients, is averaged over the window
    expected = coeffs[:, exp] + temporal_smooth(raw[:, exp] - coeffs[:, exp], 3)
    assert torch.allclose(smooth[:, exp], expected, atol=1e-6)


def test_coefficient_folders(clip, tmp_path):
    root, _, _ = clip
    coeffs = load_coeff_sequence(root / "coeffs.npy")
    (tmp_path / "npy").mkdir()
    (tmp_path / "mat").mkdir()
    for i, c in enumerate(coeffs.numpy()):
        np.save(tmp_path / "npy" / f"{i:05d}.npy", c[None])
        scipy.io.savemat(tmp_path / "mat" / f"{i:05d}.mat",
                         {k: c[None, s] for k, s in COEFF_SLICES.items()} | {"lm68": np.zeros((1, 68, 2))})
    assert torch.equal(load_coeff_sequence(tmp_path / "npy"), coeffs)
    assert torch.equal(load_coeff_sequence(tmp_path / "mat"), coeffs)
    np.save(tmp_path / "npy" / "00003.npy", np.zeros(256))
    with pytest.raises(ValueError, match="00003.npy.*257"):
        load_coeff_sequence(tmp_path / "npy")
    scipy.io.savemat(tmp_path / "mat" / "00002.mat", {"exp": np.zeros((1, 64))})
    with pytest.raises(ValueError, match="00002.mat: lacks"):
        load_coeff_sequence(tmp_path / "mat")


def test_pvf_edit_video(clip, capsys):
    root, face, _ = clip
    original = read_video(root / "video.mp4").float()
    rc, out = run(root, capsys, *LOSSLESS, intensity="0", output="same.mp4")
    assert rc == 0, out.err
    summary = json.loads(out.out.strip().splitlines()[-1])
    assert summary["frames"] == T and (summary["height"], summary["width"]) == (SIZE, SIZE)
    same = read_video(root / "same.mp4").float()
    assert same.shape == original.shape
    assert (same - original).abs().mean() < 3.5     # the face re-rendered over itself: codec noise only
    rc, out = run(root, capsys, *LOSSLESS, "--window", "3", "--chunk", "3")
    assert rc == 0, out.err
    edited = read_video(root / "out.mp4").float()
    # the mouth (a box around landmarks 48-67 of every frame) changes; the background far from the face not
    with torch.no_grad():
        ref = face(load_coeff_sequence(root / "coeffs.npy"))
    lm = ref["landmarks"][:, 48:68]
    x0, y0 = lm.amin((0, 1)).floor().long() - 2
    x1, y1 = lm.amax((0, 1)).ceil().long() + 6
    mouth = (edited - same)[:, y0:y1, x0:x1].abs().mean()
    far = ~torch.nn.functional.max_pool2d(ref["mask"], 9, 1, 4)[:, 0].bool()     # 4 px beyond the face
    background = (edited - same).abs().mean(-1)[far].mean()
    assert mouth > 4 and background < 0.5, (mouth, background)   # measured: 7.0 and 0.0
    assert probe_video(root / "out.mp4").num_frames == T
    rc, out = run(root, capsys, output="mpeg4.mp4")          # the default codec
    assert rc == 0 and probe_video(root / "mpeg4.mp4").num_frames == T, out.err
    assert not list(root.glob("*.partial*"))


@pytest.mark.parametrize("change, message", [
    ({"emotion": "joyful"}, "unknown emotion 'joyful'"),
    ({"intensity": "1.5"}, "--intensity must lie in [0, 1]"),
    ({"extra": ["--window", "4"]}, "--window must be an odd"),
    ({"extra": ["--checkpoint", "/nonexistent/e.safetensors"]}, "does not exist"),
    ({"extra": ["--model-arg", "hidden=16"]}, "does not fit"),
    ({"extra": ["--bfm", "/nonexistent/BFM_model_front.mat"]}, "not found"),
    ({"extra": ["--input", "/nonexistent/v.mp4"]}, "video file not found"),
    ({"extra": ["--coeffs", "SHORT"]}, "has 8 frames but"),
    ({"extra": ["--codec", "nocodec"]}, "video codec 'nocodec' is not available"),
])
def test_errors_one_line(clip, capsys, tmp_path, change, message):
    root, _, _ = clip
    np.save(tmp_path / "short.npy", np.zeros((5, 257), np.float32))
    extra = [str(tmp_path / "short.npy") if e == "SHORT" else e for e in change.get("extra", [])]
    kwargs = {k: v for k, v in change.items() if k != "extra"}
    rc, out = run(root, capsys, *extra, output="bad.mp4", **kwargs)
    assert rc == 2 and message in out.err and len(out.err.strip().splitlines()) == 1, out.err
    assert not (root / "bad.mp4").exists()


def test_missing_weights_are_one_line(clip, capsys):
    root, _, _ = clip
    rc = main(["edit-video", "--input", str(root / "video.mp4"), "--coeffs", str(root / "coeffs.npy"),
               "--emotion", "happy", "--intensity", "0.5", "--output", str(root / "x.mp4")])
    err = capsys.readouterr().err
    assert rc == 2 and "--checkpoint is required" in err and len(err.strip().splitlines()) == 1
    editor = load_editor(root / "editor.safetensors")
    assert editor.exp_dim == 64 and editor.latent_net is None


# ------------------------------------------------------------------------------------- aligned crops
FRAME_H, FRAME_W, SCALE, SHIFT = 96, 128, 1.25, (30.0, 12.0)


@pytest.fixture(scope="module")
def wide_clip(clip):
    """The clip's face filmed wider: a 128x96 video whose face is the crop-space face (64x64) scaled by 1.25
    and shifted by (30, 12) px, rendered directly by a BFM whose camera makes exactly that projection (focal
    and principal point scaled; nothing of face3d.align involved); its landmarks are that camera's."""
    root, face, editor = clip
    basis = synthetic_face_basis(24)
    f, (cx, cy) = face.focal, face.center
    tx, ty = SHIFT
    # crop pixel p -> frame pixel SCALE p + SHIFT: x = s (f X / Z + cx) + tx, y_down = s y_down + ty
    wide = create_model("bfm", basis=basis, image_size=(FRAME_H, FRAME_W), focal=SCALE * f,
                        center=(SCALE * cx + tx, FRAME_H - SCALE * SIZE + SCALE * cy - ty))
    coeffs = load_coeff_sequence(root / "coeffs.npy")
    with torch.no_grad():
        out = wide(coeffs)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, FRAME_H), torch.linspace(0, 1, FRAME_W), indexing="ij")
    background = torch.stack([xx, yy, 0.5 * torch.ones_like(xx)])
    frames = out["image"].clamp(0, 1) * out["mask"] + background * (1 - out["mask"])
    write_video(root / "wide.mp4", (frames * 255).round().byte().permute(0, 2, 3, 1), codec="libx264")
    np.save(root / "wide_lm.npy", out["landmarks"].numpy())
    return root, face, editor, out


def test_camera_of_the_wide_fixture(wide_clip):
    root, face, _, out = wide_clip
    with torch.no_grad():
        crop_lm = face.landmarks(load_coeff_sequence(root / "coeffs.npy"))
    torch.testing.assert_close(out["landmarks"], SCALE * crop_lm + torch.tensor(SHIFT), atol=1e-3, rtol=0)


def test_aligned_edit_pastes_back_into_the_frame(wide_clip, capsys):
    from pyvision_fast.face3d.align import alignment_template, estimate_alignment, five_points, transform_points

    root, face, _, out = wide_clip
    lm = torch.from_numpy(np.load(root / "wide_lm.npy"))
    A = estimate_alignment(lm.double(), alignment_template(face, torch.float64))
    # the crop maps the five points onto the template as well as a scale + translation can (the face moves)
    fitted = transform_points(A, five_points(lm.double()))
    assert (fitted - alignment_template(face, torch.float64)).norm(dim=-1).mean() < 3.0

    common = ["--input", str(root / "wide.mp4"), "--landmarks", str(root / "wide_lm.npy"), "--fit-size", "64x64",
              *LOSSLESS]
    original = read_video(root / "wide.mp4").float()
    rc, res = run(root, capsys, *common, intensity="0", output="wide_same.mp4")
    assert rc == 0, res.err
    summary = json.loads(res.out.strip().splitlines()[-1])
    assert summary["aligned"] and (summary["height"], summary["width"]) == (FRAME_H, FRAME_W)
    same = read_video(root / "wide_same.mp4").float()
    face_px = out["mask"][:, 0].bool()
    # the face re-rendered at the crop's 64 px and pasted back at 1.25x over the 80 px face: resampling blur
    err = (same - original).abs().mean(-1)[face_px].mean()
    assert err < 12, err
    rc, res = run(root, capsys, *common, output="wide_edit.mp4")
    assert rc == 0, res.err
    edited = read_video(root / "wide_edit.mp4").float()
    mouth = out["landmarks"][:, 48:68]
    x0, y0 = mouth.amin((0, 1)).floor().long() - 2
    x1, y1 = mouth.amax((0, 1)).ceil().long() + 6
    assert (edited - same)[:, y0:y1, x0:x1].abs().mean() > 4
    far = ~torch.nn.functional.max_pool2d(out["mask"], 21, 1, 10)[:, 0].bool()     # 10 px beyond the face
    assert torch.equal(edited[far], same[far])             # both outputs pass the same RGB -> YUV conversion
    assert (same[far] - original[far]).abs().mean() < 1.5


# ------------------------------------------------------------------------------------- texture edit
G_ARGS = dict(z_dim=16, w_dim=16, img_resolution=16, channel_base=256, channel_max=32, mapping_layers=2)


@pytest.fixture(scope="module")
def texture_setup(clip):
    from pyvision_fast.models.stylegan2 import StyleGAN2Generator

    root, face, _ = clip
    torch.manual_seed(1)
    G = StyleGAN2Generator(**G_ARGS).eval()
    with torch.no_grad():
        G.mapping.w_avg.copy_(G.mapping(torch.randn(256, 16))[:, 0].mean(0))
    args = dict(EDITOR_ARGS, latent_dim=16, latent_layers=G.num_ws, latent_hidden=16, latent_depth=2)
    torch.manual_seed(0)
    editor = create_model("expression_editor", **args)
    with torch.no_grad():
        editor.exp_net.out.bias[0] = 1.5
        editor.latent_net.out.bias.fill_(0.8)       # a visible texture change at intensity 1
    save_model(editor, root / "tex_editor.safetensors",
               Config(model="expression_editor", model_args=args, num_classes=None, img_size=224))
    save_model(G, root / "G.safetensors", Config(model="stylegan2_texture", model_args=G_ARGS, num_classes=None,
                                                 img_size=16))
    return root, face, editor, G


def test_texture_edit(texture_setup, capsys):
    from pyvision_fast.face3d.edit_video import edit_latents, edit_video
    from pyvision_fast.face3d.latents import synthesize_textures

    root, face, editor, G = texture_setup
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        ws = G.mapping(torch.randn(T, 16, generator=gen))
    assert torch.equal(edit_latents(editor, ws, "happy", 0.0), ws)
    moved = edit_latents(editor, ws, "happy", 0.5, window=1)
    torch.testing.assert_close(moved, ws + 0.4, atol=1e-6, rtol=0)       # the bias edit, half intensity
    np.save(root / "ws.npy", ws.numpy())
    base = ["--checkpoint", str(root / "tex_editor.safetensors"), "--texture-gan", str(root / "G.safetensors"),
            *LOSSLESS]
    rc, res = run(root, capsys, *base, "--latents", str(root / "ws.npy"), "--window", "1", output="tex.mp4")
    assert rc == 0, res.err
    assert json.loads(res.out.strip().splitlines()[-1])["texture"]
    got = read_video(root / "tex.mp4").float()
    # the face is the generated texture of the edited latents on the edited geometry, over the frames
    coeffs = load_coeff_sequence(root / "coeffs.npy")
    edited = coeffs.clone()
    with torch.no_grad():
        edited[:, COEFF_SLICES["exp"]] = editor(coeffs[:, COEFF_SLICES["exp"]], "happy", 0.8)
        r = face.render(edited, texture=synthesize_textures(G, edit_latents(editor, ws, "happy", 0.8, window=1)))
    frames = read_video(root / "video.mp4").float()
    expected = (r["image"].clamp(0, 1).permute(0, 2, 3, 1) * 255 * r["mask"].permute(0, 2, 3, 1)
                + frames * (1 - r["mask"].permute(0, 2, 3, 1)))
    with torch.no_grad():
        plain = face.render(edited)                   # the same edit without the texture: the lit albedo
    wrong = (plain["image"].clamp(0, 1).permute(0, 2, 3, 1) * 255 * plain["mask"].permute(0, 2, 3, 1)
             + frames * (1 - plain["mask"].permute(0, 2, 3, 1)))
    inside = r["mask"][:, 0].bool()
    err, err_wrong = (got - expected).abs()[inside].mean(), (got - wrong).abs()[inside].mean()
    # the 16-px random texture has detail at the pixel scale: 4:2:0 chroma subsampling costs a few levels
    # (measured inside the face: 5.8 against the texture render, 90.5 against the albedo render)
    assert err < 10 and err < 0.1 * err_wrong, (err, err_wrong)

    # without --latents the frames are inverted first (a few steps here); the output has every frame
    rc, res = run(root, capsys, *base, "--invert-steps", "4", "--chunk", "5", output="tex_inv.mp4")
    assert rc == 0, res.err
    assert probe_video(root / "tex_inv.mp4").num_frames == T

    with pytest.raises(ValueError, match="no latent editor"):
        edit_video(root / "video.mp4", root / "coeffs.npy", root / "x.mp4", editor=load_editor(root / "editor.safetensors"),
                   bfm=face, emotion="happy", intensity=0.5, texture=G)
    np.save(root / "ws_bad.npy", ws[:5].numpy())
    rc, res = run(root, capsys, *base, "--latents", str(root / "ws_bad.npy"), output="bad.mp4")
    assert rc == 2 and "ws_bad.npy have shape (5, 6, 16)" in res.err and not (root / "bad.mp4").exists(), res.err
    rc, res = run(root, capsys, "--latents", str(root / "ws.npy"), output="bad.mp4")
    assert rc == 2 and "--latents needs --texture-gan" in res.err, res.err
