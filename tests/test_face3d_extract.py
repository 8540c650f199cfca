"""``pvf extract talking_face`` (``face3d.extract``): texture latents of every MEAD clip written beside the
coefficients in the reader's layout, whole frames or aligned crops, resumable, read back by the
talking_face_edit recipe; errors one line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("av")

from pyvision_fast.cli import main  # noqa: E402
from pyvision_fast.data.mead import MEADEditPairs, load_latents, scan_mead  # noqa: E402
from pyvision_fast.face3d.basis import save_bfm_mat  # noqa: E402
from pyvision_fast.face3d.synthetic import synthetic_face_basis  # noqa: E402
from pyvision_fast.models.stylegan2 import StyleGAN2Generator  # noqa: E402
from pyvision_fast.train.checkpoint import save_model  # noqa: E402
from pyvision_fast.train.recipe import Config  # noqa: E402
from test_data_mead import write_mead  # noqa: E402

G_ARGS = dict(z_dim=16, w_dim=16, img_resolution=16, channel_base=256, channel_max=32, mapping_layers=2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract")
    mead = write_mead(root / "mead", actors=("M001", "W002"), emotions=("happy",), levels=(3,), clips=("001",),
                      frames=6)
    save_bfm_mat(root / "basis.mat", synthetic_face_basis(24))       # the fixture's face
    torch.manual_seed(0)
    G = StyleGAN2Generator(**G_ARGS).eval()
    save_model(G, root / "G.safetensors", Config(model="stylegan2_texture", model_args=G_ARGS, num_classes=None,
                                                 img_size=16))
    return root, mead


def extract(root, mead, capsys, *extra):
    rc = main(["extract", "talking_face", "--data", str(mead), "--checkpoint", str(root / "G.safetensors"),
               "--bfm", str(root / "basis.mat"), "--invert-steps", "3", "--device", "cpu", "--no-progress",
               *extra])
    out = capsys.readouterr()
    return rc, out


def test_extract_writes_resumes_and_feeds_the_recipe(setup, capsys):
    root, mead = setup
    rc, out = extract(root, mead, capsys)
    assert rc == 0, out.err
    summary = json.loads(out.out.strip().splitlines()[-1])
    assert summary == {"clips": 4, "written": 4, "skipped": 0, "frames": 6 + 12 + 6 + 12, "shape": [6, 16]}
    for clip in scan_mead(mead, require=("coeffs", "latents")):
        arr = np.load(clip.latents)
        assert arr.dtype == np.float16 and arr.shape[1:] == (6, 16) and np.isfinite(arr).all()
    assert not list(mead.rglob("*.tmp.npy"))
    rc, out = extract(root, mead, capsys)                            # resumable: nothing left to do
    assert rc == 0 and json.loads(out.out.strip().splitlines()[-1])["skipped"] == 4, out.err
    ds = MEADEditPairs(mead, seq_len=4, latents=True)
    assert ds.latent_shape == (6, 16) and len(ds[0]) == 7


def test_extract_on_aligned_crops(setup, capsys, tmp_path):
    import shutil

    root, mead = setup
    copy = shutil.copytree(mead, tmp_path / "mead")
    for p in copy.rglob("latents"):
        shutil.rmtree(p)
    rc, out = extract(root, copy, capsys, "--align", "--fit-size", "64", "64", "--dtype", "float32")
    assert rc == 0, out.err
    clip = scan_mead(copy, require=("coeffs", "latents"))[0]
    lat = load_latents(clip.latents)
    assert lat.shape == (6 if clip.emotion == "neutral" else 12, 6, 16)
    assert np.load(clip.latents).dtype == np.float32


@pytest.mark.parametrize("drop, add, message", [
    ("--checkpoint", [], "needs --checkpoint"),
    ("--bfm", [], "needs --bfm"),
    (None, ["--bfm", "/nonexistent/b.mat"], "does not exist"),
    (None, ["--view", "left_30"], "no clip"),
])
def test_errors_one_line(setup, capsys, drop, add, message):
    root, mead = setup
    args = ["extract", "talking_face", "--data", str(mead), "--checkpoint", str(root / "G.safetensors"), "--bfm",
            str(root / "basis.mat"), "--device", "cpu", "--no-progress"]
    if drop:
        i = args.index(drop)
        del args[i:i + 2]
    rc = main(args + add)
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_paver_still_needs_output(setup, capsys):
    root, mead = setup
    rc = main(["extract", "paver", "--data", str(mead)])
    err = capsys.readouterr().err
    assert rc == 2 and "needs --output" in err, err


def test_extract_train_edit_chain(setup, capsys, tmp_path):
    """The whole texture path through the CLI: extracted latents -> pvf train talking_face_edit (the editor
    gets its per-layer latent branch from the files) -> pvf edit-video with the generator."""
    root, mead = setup
    rc, out = extract(root, mead, capsys)
    assert rc == 0, out.err
    run = tmp_path / "run"
    rc = main(["train", "talking_face_edit", "--data", str(mead), "--output", str(run), "--device", "cpu",
               "--no-progress", "--workers", "0", "--batch-size", "2", "--epochs", "2", "--model-arg", "hidden=16",
               "depth=2", "latent_hidden=16", "latent_depth=2", "--set", f"bfm={root / 'basis.mat'}",
               "bfm_args={'image_size': 64}", "seq_len=4", "warmup_epochs=0"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    config = json.loads((run / "config.json").read_text())
    assert config["model_args"]["latent_dim"] == 16 and config["model_args"]["latent_layers"] == 6
    clip = [c for c in scan_mead(mead, require=("video", "coeffs")) if c.emotion == "neutral"][0]
    rc = main(["edit-video", "--input", str(clip.video), "--coeffs", str(clip.coeffs), "--emotion", "happy",
               "--intensity", "0.7", "--output", str(tmp_path / "edit.mp4"), "--bfm", str(root / "basis.mat"),
               "--checkpoint", str(run / "checkpoint-last.safetensors"), "--texture-gan",
               str(root / "G.safetensors"), "--latents", str(clip.latents), "--no-progress"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    summary = json.loads(out.out.strip().splitlines()[-1])
    assert summary["texture"] and summary["frames"] == 6
