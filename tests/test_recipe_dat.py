"""Recipe ``dat``: the PGD-L2 step on VQGAN reconstructions (bounds, train mode, no parameter gradients), the
two-term loss wired as DAT (clean CE + CE on VQGAN(PGD(VQGAN(x)))), the VQGAN weights' configuration, and one
epoch of ``pvf train dat`` on a tiny ImageFolder with a tiny ViT and a tiny random VQGAN."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pyvision_fast.models import create_model
from pyvision_fast.train.recipe import ENGINE_DEFAULTS, Config, StepContext
from pyvision_fast.train.recipes.dat import RECIPE, dat_l2_step

TINY_VQGAN = dict(ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=1, attn_resolutions=(4,), resolution=32, n_embed=64)
TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, drop_path_rate=0.1)


def _cfg(**over) -> Config:
    cfg = Config(ENGINE_DEFAULTS)
    cfg.update(RECIPE.defaults)
    cfg.update(model="vit_tiny_patch16_224", model_args=dict(TINY_VIT), img_size=32, vqgan_random_init=True,
               vqgan_model_args=dict(TINY_VQGAN))
    cfg.update(over)
    return cfg


def _ctx(cfg) -> StepContext:
    return StepContext(cfg=cfg, device=torch.device("cpu"))


class ModeProbe(nn.Module):
    """A small classifier on [0, 1] images that records whether it was in train mode at each call."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))
        self.modes = []

    def forward(self, x):
        self.modes.append(self.training)
        return self.net(x)


def test_defaults_are_dats_vit_b_recipe():
    d = RECIPE.defaults
    assert d["model"] == "vit_base_patch16_224" and d["model_args"]["drop_path_rate"] == 0.25
    assert d["blr"] * 128 * 8 / 256 == pytest.approx(1e-3)          # lr 1e-3 at 128 x 8 GPUs
    assert (d["epochs"], d["weight_decay"], d["opt_eps"], d["warmup_epochs"], d["warmup_lr"]) == (300, 0.05, 1e-8,
                                                                                                  5, 1e-6)
    assert (d["ema_decay"], d["aa"], d["color_jitter"], d["label_smoothing"]) == (0.99992, "rand-m9-mstd0.5-inc1",
                                                                                 0.4, 0.1)
    assert (d["reprob"], d["mixup"], d["cutmix"], d["amp"]) == (0.25, 0.8, 1.0, True)
    assert (d["dat_eps"], d["dat_step_size"], d["dat_steps"], d["dat_random_start_prob"]) == (0.1, 0.1, 1, 0.8)
    assert d["mean"] == (0.0, 0.0, 0.0) and d["std"] == (1.0, 1.0, 1.0)   # [0, 1] data, normalised in the model


@pytest.mark.parametrize("start_prob", [0.0, 1.0, 0.8])
def test_l2_step_bounds_and_train_mode(start_prob):
    torch.manual_seed(0)
    model = ModeProbe().train()
    x = torch.rand(6, 3, 8, 8)
    x[:3] = 0.25 + 0.5 * x[:3]                                          # interior: no clamping for these
    y = torch.randint(0, 5, (6,))
    x_adv = dat_l2_step(model, x, y, eps=0.1, step_size=0.1, random_start_prob=start_prob)
    norms = (x_adv - x).flatten(1).norm(dim=1)
    assert bool((norms <= 0.1 + 1e-6).all()), norms
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    if start_prob == 0.0:                                               # one step of exactly eps from x
        assert torch.allclose(norms[:3], torch.full((3,), 0.1), atol=1e-5)
    assert model.modes and all(model.modes) and model.training          # attacked in train mode, left in it
    assert all(p.grad is None for p in model.parameters())
    assert not x_adv.requires_grad


def test_l2_step_takes_soft_targets():
    torch.manual_seed(1)
    model = ModeProbe()
    x = torch.rand(4, 3, 8, 8)
    y = torch.softmax(torch.randn(4, 5), dim=1)
    x_adv = dat_l2_step(model, x, y, random_start_prob=0.0)
    assert bool(((x_adv - x).flatten(1).norm(dim=1) <= 0.1 + 1e-6).all())


def test_train_loss_has_both_terms_and_routes_through_the_vqgan():
    torch.manual_seed(0)
    cfg = _cfg(dat_random_start_prob=0.0)
    recipe = RECIPE(cfg)
    model = recipe.build_model(num_classes=4).train()
    vq = recipe.vqgan()
    vq_io, model_in = [], []
    vq.register_forward_hook(lambda m, a, out: vq_io.append((a[0].clone(), out.clone())))
    model.register_forward_pre_hook(lambda m, a: model_in.append(a[0].detach().clone()), prepend=True)
    x = torch.rand(4, 3, 32, 32)
    y = torch.softmax(torch.randn(4, 4), dim=1)                         # Mixup-style soft targets
    loss, extra = recipe.train_loss(model, (x, y), _ctx(cfg))
    assert loss.ndim == 0 and loss.requires_grad
    assert extra["loss_clean"] > 0 and extra["loss_dat"] > 0
    assert loss.item() == pytest.approx(extra["loss_clean"] + extra["loss_dat"], rel=1e-5)
    # VQGAN twice: on x, then on the attacked reconstruction; the model sees x, x_rec (attack), VQGAN(x_adv)
    assert len(vq_io) == 2
    (in1, rec), (x_adv, x_dat) = vq_io
    assert torch.equal(in1, x)
    assert float((x_adv - rec).flatten(1).norm(dim=1).max()) <= 0.1 + 1e-6
    assert not torch.equal(x_adv, rec)
    assert len(model_in) == 3
    assert torch.equal(model_in[0], x) and torch.equal(model_in[1], rec) and torch.equal(model_in[2], x_dat)
    # one backward pass reaches the classifier only
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert all(p.grad is None and not p.requires_grad for p in vq.parameters())


def test_model_normalises_inside_and_keeps_registry_keys():
    cfg = _cfg()
    model = RECIPE(cfg).build_model(num_classes=4).eval()
    plain = create_model("vit_tiny_patch16_224", num_classes=4, **TINY_VIT).eval()
    plain.load_state_dict(model.state_dict())                            # same keys, strict
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(model(x), plain((x - mean) / std), atol=1e-5)


def test_vqgan_weights_are_required(tmp_path, capsys):
    recipe = RECIPE(_cfg(vqgan_random_init=False))
    with pytest.raises(FileNotFoundError, match="vqgan_openimages_f8_16384.ckpt"):
        recipe.vqgan()
    RECIPE(_cfg()).vqgan()
    assert "RANDOMLY INITIALISED VQGAN" in capsys.readouterr().err
    # a Lightning-style checkpoint given with vqgan_checkpoint loads strictly (loss.* dropped)
    src = create_model("vqgan_f8_16384", **TINY_VQGAN)
    state = {k: torch.randn_like(v) * 0.05 for k, v in src.state_dict().items()}
    src.load_state_dict(state)
    path = tmp_path / "vqgan_openimages_f8_16384.ckpt"
    torch.save({"state_dict": {**state, "loss.logvar": torch.zeros(())}, "global_step": 1}, path)
    vq = RECIPE(_cfg(vqgan_random_init=False, vqgan_checkpoint=str(path))).vqgan()
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(vq(x), src(x)) and not vq.training


def _write_image_folder(root: Path, classes=2, per_class=(4, 2), size=32):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val"), per_class):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 80, (size, size, 3), dtype=np.uint8) + np.uint8(170 * c)
                Image.fromarray(img).save(folder / f"{i}.png")


def test_pvf_train_dat_one_epoch(tmp_path):
    data, out = tmp_path / "data", tmp_path / "run"
    _write_image_folder(data)
    vq_args = json.dumps(TINY_VQGAN).replace(" ", "")
    cmd = [sys.executable, "-m", "pyvision_fast.train", "dat", "--data", str(data), "--output", str(out),
           "--model", "vit_tiny_patch16_224", "--model-arg", "img_size=32", "patch_size=8", "embed_dim=32",
           "depth=1", "num_heads=2", "--img-size", "32", "--epochs", "1", "--batch-size", "4", "--workers", "0",
           "--device", "cpu", "--no-progress",
           "--set", "vqgan_random_init=True", f"vqgan_model_args={vq_args}", "warmup_epochs=0", "aa=None"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RANDOMLY INITIALISED VQGAN" in proc.stderr
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["recipe"] == "dat" and cfg["dat_eps"] == 0.1 and cfg["vqgan_random_init"] is True
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert {r["split"] for r in rows} >= {"train", "val"}
    train_row = [r for r in rows if r["split"] == "train"][-1]  # the recipe's two terms, logged by the engine
    assert float(train_row["loss"]) == pytest.approx(float(train_row["loss_clean"]) + float(train_row["loss_dat"]),
                                                     rel=1e-4)
    assert (out / "checkpoint-last.safetensors").is_file()
    # pvf eval dat rebuilds the classifier (normalisation inside) and reproduces the last validation loss
    ev = subprocess.run([sys.executable, "-m", "pyvision_fast", "eval", "dat", "--data", str(data), "--checkpoint",
                         str(out / "checkpoint-last.safetensors"), "--img-size", "32", "--batch-size", "4",
                         "--workers", "0", "--device", "cpu"], capture_output=True, text=True, timeout=240, env=env)
    assert ev.returncode == 0, ev.stderr[-3000:]
    result = json.loads(ev.stdout.strip().splitlines()[-1])
    last_val = [r for r in rows if r["split"] == "val"][-1]
    assert result["loss"] == pytest.approx(float(last_val["loss"]), rel=1e-5)
    # the saved classifier loads into the plain registry model (normalisation is not part of its state_dict)
    model = create_model("vit_tiny_patch16_224", num_classes=2, img_size=32, patch_size=8, embed_dim=32, depth=1,
                         num_heads=2, checkpoint_path=out / "checkpoint-last.safetensors")
    assert model.head.out_features == 2
