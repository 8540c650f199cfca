"""The ``texture_gan`` recipe: its image-folder reader, a learning test on real textures (16x16 crops of
scikit-image's astronaut, coffee and chelsea photographs: the generated textures' pixel Frechet distance to
the data falls several-fold, their per-channel mean/std move to the data's, the discriminator separates real
from fake), ``pvf train`` / ``pvf eval`` / ``pvf export`` through the engine, exact resume (the
discriminator, its optimizer, the regularisation counters and pl_mean included), bad input, and DDP keeping
both networks identical on every rank (slow)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pyvision_fast.train import checkpoint as ckpt
from pyvision_fast.train.recipe import ENGINE_DEFAULTS, Config, StepContext
from pyvision_fast.train.recipes.texture_gan import TextureFolder, TextureGANRecipe, frechet_distance

TINY = dict(resolution=16, z_dim=32, w_dim=32, mapping_layers=2, channel_base=256, channel_max=32,
            mbstd_group_size=4, workers=0)
TINY_ARGS = [f"{k}={v}" for k, v in TINY.items() if k != "workers"]


def write_textures(root, per_image: int = 40, size: int = 48, seed: int = 0):
    """``root/<photo>/crops/<i>.png``: random size x size crops of three scikit-image photographs."""
    from skimage import data

    rng = np.random.default_rng(seed)
    for name in ("astronaut", "coffee", "chelsea"):
        img = getattr(data, name)()
        folder = root / name / "crops"
        folder.mkdir(parents=True)
        for i in range(per_image):
            y, x = rng.integers(0, img.shape[0] - size), rng.integers(0, img.shape[1] - size)
            Image.fromarray(img[y:y + size, x:x + size]).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _recipe(**overrides):
    cfg = Config({**ENGINE_DEFAULTS, **TextureGANRecipe.defaults})
    cfg.update({**TINY, "ema_kimg": None, **overrides})
    return TextureGANRecipe(cfg)


def test_texture_folder_reads_any_depth(tmp_path):
    write_textures(tmp_path, per_image=3, size=20)
    (tmp_path / "notes.txt").write_text("not an image")
    ds = TextureFolder(tmp_path, resolution=16, workers=1)
    assert len(ds) == 9
    x, label = ds[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and label == 0
    assert -1 <= x.min() and x.max() <= 1
    grey = TextureFolder(tmp_path, resolution=8, channels=1, workers=1)[4][0]
    assert grey.shape == (1, 8, 8)
    bad = tmp_path / "coffee" / "crops" / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="broken.png"):
        TextureFolder(tmp_path, resolution=16, workers=1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        TextureFolder(tmp_path / "empty", resolution=16)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextureFolder(tmp_path / "missing", resolution=16)


def test_frechet_distance_of_gaussians():
    mu, cov = np.zeros(2), np.eye(2)
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0, abs=1e-9)
    # different means: |mu1 - mu2|^2; scaled covariance: tr(I + 4I - 2 * 2I) = 2
    assert frechet_distance(mu, cov, mu + 1, cov) == pytest.approx(2)
    assert frechet_distance(mu, cov, mu, 4 * cov) == pytest.approx(2)


def _learn(tmp_path, steps: int, resolution: int, check_every: int):
    """The engine's part done by hand: train_loss, backward, an Adam step of the generator."""
    torch.manual_seed(0)
    write_textures(tmp_path)
    r = _recipe(resolution=resolution)
    train, _ = r.build_datasets(str(tmp_path))
    data = torch.stack([train[i][0] for i in range(len(train))])
    g = r.build_model(None)
    ctx = StepContext(cfg=r.cfg, device=torch.device("cpu"))
    r.on_train_start(g, ctx)
    opt = torch.optim.Adam(g.parameters(), lr=r.cfg.lr, betas=r.cfg.opt_betas, eps=r.cfg.opt_eps)

    def evaluate():
        metrics = r.build_metrics(None)
        g.eval()
        for chunk in data.split(40):
            r.eval_update(g, (chunk,), metrics, ctx)
        g.train()
        return metrics.compute()

    history = [evaluate()]
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(data), (16,))
        loss, logs = r.train_loss(g, (data[idx],), ctx)
        assert torch.isfinite(loss) and set(logs) >= {"loss_d", "loss_g", "d_real", "d_fake"}
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % check_every == 0:
            history.append(evaluate())
    return history


def test_learns_real_texture_statistics(tmp_path, one_thread):
    """100 steps at 16^2 (~10 s on an idle core): fd_pixel falls below a quarter of its start (289 -> 35 after
    50 steps, ~20 after 100, measured), the largest per-channel mean / std gaps fall below 0.3 / 0.2 (from
    1.37 / 0.77), the discriminator scores the real textures above the generated ones."""
    history = _learn(tmp_path, steps=100, resolution=16, check_every=50)
    first, last = history[0], history[-1]
    assert first["fd_pixel"] > 100 and first["mean_gap"] > 0.8, first
    best = min(h["fd_pixel"] for h in history[1:])
    assert best < 0.25 * first["fd_pixel"], history
    assert min(h["mean_gap"] for h in history[1:]) < 0.3, history
    assert min(h["std_gap"] for h in history[1:]) < 0.2, history
    assert max(h["d_gap"] for h in history[1:]) > 0.2, history


@pytest.mark.slow
def test_learns_real_texture_statistics_longer(tmp_path, one_thread):
    """600 steps at 32^2 (~80 s): fd_pixel below a tenth of its start (350 -> 15 measured) and the largest
    per-channel mean gap below 0.2 (from 1.46) at some check after the first."""
    history = _learn(tmp_path, steps=600, resolution=32, check_every=100)
    assert min(h["fd_pixel"] for h in history[2:]) < 0.1 * history[0]["fd_pixel"], history
    assert min(h["mean_gap"] for h in history[2:]) < 0.2, history


def _train_args(data, out, epochs, *extra):
    from pyvision_fast.train.config import build_parser

    return build_parser("train").parse_args(
        ["texture_gan", "--data", str(data), "--output", str(out), "--epochs", str(epochs),
         "--batch-size", "8",
         "--workers", "0", "--no-progress", "--device", "cpu", "--set", *TINY_ARGS, "resolution=8",
         "channel_base=64", "channel_max=16", "d_reg_interval=2", "g_reg_interval=2", "ema_kimg=0.05",
         "mirror=True", *extra])


def test_pvf_train_resume_eval_and_export(tmp_path, one_thread):
    """2 epochs straight == 1 epoch then --resume (G, its EMA, the engine's optimizer, the discriminator and
    its optimizer, the counters, pl_mean); pvf eval rebuilds the generator from the checkpoint's metadata;
    pvf export turns the checkpoint into ONNX."""
    from pyvision_fast.cli import main
    from pyvision_fast.train import engine

    data = write_textures(tmp_path / "data", per_image=6, size=20)
    straight, split = tmp_path / "straight", tmp_path / "split"
    results = engine.train(_train_args(data, straight, 2))
    assert {"fd_pixel", "mean_gap", "std_gap", "d_gap"} <= set(results)
    engine.train(_train_args(data, split, 1))
    engine.train(_train_args(data, split, 2, "--resume", str(split)))
    for name in (ckpt.MODEL_LAST, ckpt.EMA_LAST):
        a, b = ckpt.read_state_dict(straight / name), ckpt.read_state_dict(split / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    sa = torch.load(straight / ckpt.TRAIN_STATE, weights_only=True)
    sb = torch.load(split / ckpt.TRAIN_STATE, weights_only=True)
    ra, rb = sa["recipe_state"], sb["recipe_state"]
    assert ra["d_steps"] == rb["d_steps"] == 4 and ra["g_batches"] == rb["g_batches"] == 4
    assert torch.equal(ra["pl_mean"], rb["pl_mean"]) and float(ra["pl_mean"]) > 0
    assert all(torch.equal(v, rb["discriminator"][k]) for k, v in ra["discriminator"].items())
    for sd_a, sd_b in ((ra["discriminator_opt"], rb["discriminator_opt"]),
                       (sa["optimizer"], sb["optimizer"])):
        for k, st in sd_a["state"].items():
            for n, v in st.items():
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(sd_b["state"][k][n]))
    # the lazy R1 step uses the official Adam settings: lr and betas ** (interval / (interval + 1))
    group = ra["discriminator_opt"]["param_groups"][0]
    assert group["lr"] == pytest.approx(0.0025 * 2 / 3)
    assert group["betas"][1] == pytest.approx(0.99 ** (2 / 3))

    from pyvision_fast.train.config import build_parser

    ev = engine.evaluate_checkpoint(build_parser("eval").parse_args(
        ["texture_gan", "--data", str(data), "--checkpoint", str(straight / ckpt.MODEL_LAST),
         "--workers", "0",
         "--batch-size", "8", "--device", "cpu", "--set", "mbstd_group_size=4"]))
    assert ev["fd_pixel"] > 0 and "d_gap" not in ev
    onnx_path = tmp_path / "g.onnx"
    assert main(["export", "stylegan2_texture", "--checkpoint", str(straight / ckpt.EMA_LAST),
                 "-o", str(onnx_path)]) == 0
    assert onnx_path.exists()


def test_bad_configuration_and_batches():
    with pytest.raises(ValueError, match="mbstd_group_size"):
        _recipe(batch_size=6, mbstd_group_size=4)
    with pytest.raises(ValueError, match="r1_gamma"):
        _recipe(r1_gamma=-1.0)
    with pytest.raises(ValueError, match="resolution"):
        _recipe(resolution=0)
    r = _recipe()
    g = r.build_model(None)
    r.on_train_start(g, StepContext(cfg=r.cfg, device=torch.device("cpu")))
    with pytest.raises(ValueError, match=r"\(N, 3, 16, 16\)"):
        r.train_loss(g, (torch.zeros(4, 3, 8, 8),), StepContext(cfg=r.cfg, device=torch.device("cpu")))
    with pytest.raises(ValueError, match="NaN"):
        r.train_loss(g, (torch.full((4, 3, 16, 16), float("nan")),),
                     StepContext(cfg=r.cfg, device=torch.device("cpu")))
    # the architecture is recorded in model_args (checkpoints rebuild it); model_args win over the keys
    r = _recipe(model_args={"img_resolution": 32})
    assert r.cfg.resolution == 32 and r.cfg.model_args["z_dim"] == 32


DDP_SCRIPT = """
import sys, torch
from pyvision_fast import cli
from pyvision_fast.train.recipes.texture_gan import TextureGANRecipe

original = TextureGANRecipe.on_epoch_end

def on_epoch_end(self, epoch, model, ctx):
    original(self, epoch, model, ctx)
    torch.save({"D": self.D.state_dict(), "G": dict(model.named_parameters())},
               f"{sys.argv[1]}/rank{ctx.rank}.pt")

TextureGANRecipe.on_epoch_end = on_epoch_end
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_ddp_keeps_generator_and_discriminator_identical_on_every_rank(tmp_path):
    """torchrun, 2 processes (gloo): each rank draws its own latents and reads its own reals, so only the
    averaged gradients (the engine's DDP for G, the recipe's all-reduce for D and its R1 steps) keep both
    networks equal. (w_avg and pl_mean are per process, as in the official code.)"""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    data = write_textures(tmp_path / "data", per_image=6, size=20)
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    flags = ["train", "texture_gan", "--data", str(data), "--output", str(tmp_path / "ddp"), "--epochs", "1",
             "--batch-size", "4", "--workers", "0", "--device", "cpu", "--no-progress", "--set", *TINY_ARGS,
             "resolution=8", "channel_base=64", "channel_max=16", "d_reg_interval=2", "g_reg_interval=2"]
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", str(port), str(script), str(tmp_path), *flags],
                         cwd=Path(__file__).resolve().parents[1], env={**os.environ, "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for part in ("D", "G"):
        for k in r0[part]:
            assert torch.equal(r0[part][k], r1[part][k]), (part, k)
    init = _recipe(resolution=8, channel_base=64, channel_max=16).build_discriminator("cpu").state_dict()
    assert not torch.equal(r0["D"]["b8.conv0.weight"], init["b8.conv0.weight"])  # it trained
    assert '"world_size": 2' in (tmp_path / "ddp" / "config.json").read_text()
