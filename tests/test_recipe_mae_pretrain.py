"""The ``mae_pretrain`` recipe: unlabeled image folders (both layouts, bad files), MAE's optimizer groups, fixed
validation masks, the loss falling on real image content (scikit-learn's digits), and ``pvf train`` end to end."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pyvision_fast.train.recipe import ENGINE_DEFAULTS, Config, StepContext
from pyvision_fast.train.recipes.mae_pretrain import RECIPE, UnlabeledImages, eval_noise

TINY = dict(patch_size=8, embed_dim=64, depth=2, num_heads=4, decoder_embed_dim=64, decoder_depth=1,
            decoder_num_heads=4)


def make_cfg(**over) -> Config:
    cfg = Config(ENGINE_DEFAULTS)
    cfg.update(RECIPE.defaults)
    cfg.update(img_size=32, model_args=dict(TINY), workers=0)
    cfg.update(over)
    return cfg


def digits(n: int, size: int = 32) -> list[Image.Image]:
    """scikit-learn's 8x8 digits (0..16) as RGB images upscaled to size x size (bilinear)."""
    from sklearn.datasets import load_digits

    data = load_digits().images[:n]
    return [Image.fromarray((d / 16 * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR).convert("RGB")
            for d in data]


def write_images(folder, images, ext=".png"):
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        im.save(folder / f"{i:03d}{ext}")


@pytest.fixture(scope="module")
def digit_tensors():
    cfg = make_cfg()
    t = RECIPE(cfg).transforms(training=False)
    return torch.stack([t(im) for im in digits(96)])


def test_datasets_both_layouts_and_errors(tmp_path):
    imgs = digits(6)
    # flat/deep folder of images: all of them, any depth, no validation split
    write_images(tmp_path / "flat" / "a", imgs[:2])
    write_images(tmp_path / "flat" / "b" / "c", imgs[2:4], ".jpg")
    (tmp_path / "flat" / "notes.txt").write_text("not an image")
    write_images(tmp_path / "flat" / ".hidden", imgs[:1])
    recipe = RECIPE(make_cfg())
    train, val = recipe.build_datasets(str(tmp_path / "flat"))
    assert len(train) == 4 and val is None
    x, idx = train[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and idx == 3
    # train/ (class folders ignored) and val/
    write_images(tmp_path / "split" / "train" / "cls0", imgs[:3])
    write_images(tmp_path / "split" / "train" / "cls1", imgs[3:5])
    write_images(tmp_path / "split" / "val", imgs[5:])
    train, val = recipe.build_datasets(str(tmp_path / "split"))
    assert len(train) == 5 and len(val) == 1
    # errors before training
    with pytest.raises(FileNotFoundError, match="does not exist"):
        recipe.build_datasets(str(tmp_path / "missing"))
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ValueError, match="no image"):
        recipe.build_datasets(str(tmp_path / "empty"))
    bad = tmp_path / "flat" / "a" / "zz_truncated.png"
    bad.write_bytes((tmp_path / "flat" / "a" / "000.png").read_bytes()[:60])
    with pytest.raises(ValueError, match="zz_truncated.png"):
        recipe.build_datasets(str(tmp_path / "flat"))
    with pytest.warns(UserWarning, match="skipped 1"):
        ds = UnlabeledImages(tmp_path / "flat", bad_images="skip")
    assert len(ds) == 4 and ds.skipped[0][0] == str(bad)


def test_defaults_are_mae_pretraining():
    d = RECIPE.defaults
    assert d["model"] == "mae_vit_base_patch16" and d["mask_ratio"] == 0.75 and d["norm_pix_loss"]
    assert d["blr"] == 1.5e-4 and d["weight_decay"] == 0.05 and d["warmup_epochs"] == 40
    assert tuple(d["opt_betas"]) == (0.9, 0.95) and d["sched"] == "cosine" and d["epochs"] == 300
    assert d["scale"] == (0.2, 1.0) and d["interpolation"] == "bicubic"
    assert RECIPE.main_metric == "recon_loss" and RECIPE.main_mode == "min"
    t = RECIPE(make_cfg()).transforms(True)
    names = [type(s).__name__ for s in t.transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    assert t.transforms[0].scale == (0.2, 1.0) and t.transforms[0].interpolation.value == "bicubic"


def test_build_model_and_param_groups():
    recipe = RECIPE(make_cfg(mask_ratio=0.5, norm_pix_loss=False))
    model = recipe.build_model(None)
    assert model.mask_ratio == 0.5 and not model.norm_pix_loss and model.num_patches == 16
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay, decay = recipe.param_groups(model)
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05
    nd = {names[id(p)] for p in no_decay["params"]}
    dd = {names[id(p)] for p in decay["params"]}
    assert "pos_embed" not in nd | dd and "decoder_pos_embed" not in nd | dd  # frozen
    assert {"blocks.0.norm1.weight", "decoder_pred.bias", "norm.bias"} <= nd
    assert {"blocks.0.attn.qkv.weight", "decoder_embed.weight", "patch_embed.proj.weight"} <= dd
    assert {"cls_token", "mask_token"} <= dd  # official MAE decays them
    nd2 = {names[id(p)] for p in RECIPE(make_cfg(wd_tokens=False)).param_groups(model)[0]["params"]}
    assert {"cls_token", "mask_token"} <= nd2
    assert len(nd | dd) == sum(1 for p in model.parameters() if p.requires_grad)


def test_eval_noise_fixed_per_image():
    idx = torch.tensor([0, 1, 2, 7])
    a, b = eval_noise(idx, 16, 0), eval_noise(idx, 16, 0)
    assert torch.equal(a, b) and a.shape == (4, 16) and a.min() >= 0 and a.max() < 1
    assert torch.equal(eval_noise(idx[2:], 16, 0), a[2:])  # depends on the index, not the batch
    assert not torch.equal(eval_noise(idx, 16, 1), a)
    assert len({tuple(torch.argsort(r).tolist()) for r in a}) == 4


def test_recipe_loss_decreases_on_digits(digit_tensors):
    torch.manual_seed(0)
    cfg = make_cfg()
    recipe = RECIPE(cfg)
    model = recipe.build_model(None)
    opt = torch.optim.AdamW(recipe.param_groups(model), lr=2e-3, betas=tuple(cfg.opt_betas))
    ctx = StepContext(cfg=cfg, device=torch.device("cpu"))
    train_x, val_x = digit_tensors[:64], digit_tensors[64:]
    val_batch = (val_x, torch.arange(len(val_x)))

    def val_loss():
        metrics = recipe.build_metrics(None)
        model.eval()
        loss = recipe.eval_update(model, val_batch, metrics, ctx)
        assert float(metrics.compute()["recon_loss"]) == pytest.approx(float(loss))
        return float(loss)

    before = val_loss()
    assert before == val_loss()  # fixed validation masks
    losses = []
    for step in range(25):
        model.train()
        batch = (train_x[(step * 16) % 64:(step * 16) % 64 + 16], torch.zeros(16))
        loss, _ = recipe.train_loss(model, batch, ctx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    after = val_loss()
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:4])
    assert after < 0.8 * before, (before, after)
    # below predicting the patch mean everywhere (pred 0 on normalised pixels): it reconstructs image content
    with torch.no_grad():
        _, pred, mask = model(val_x, noise=eval_noise(torch.arange(len(val_x)), model.num_patches, cfg.seed))
        zero = float(model.forward_loss(val_x, torch.zeros_like(pred), mask))
    assert after < 0.85 * zero, (after, zero)


def test_pvf_train_and_eval_end_to_end(tmp_path, capsys):
    """``pvf train mae_pretrain`` for one epoch on a train/ + val/ folder, ``pvf eval`` on its checkpoint, then the
    encoder into a ViT."""
    pytest.importorskip("pyvision_fast.train.engine")
    from pyvision_fast.cli import main

    imgs = digits(24)
    write_images(tmp_path / "data" / "train" / "any", imgs[:16])
    write_images(tmp_path / "data" / "val", imgs[16:])
    args = ["mae_pretrain", "--data", str(tmp_path / "data"), "--img-size", "32", "--batch-size", "8",
            "--workers", "0", "--no-progress", *[a for k, v in TINY.items() for a in ("--model-arg", f"{k}={v}")]]
    out = tmp_path / "run"
    rc = main(["train", *args, "--output", str(out), "--epochs", "1", "--set", "accum_steps=1",
               "--set", "warmup_epochs=0"])
    assert rc in (0, None)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["mask_ratio"] == 0.75 and cfg["opt_betas"] == [0.9, 0.95]
    assert cfg["lr"] == pytest.approx(1.5e-4 * 8 / 256)
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    val = [r for r in rows if r["split"] == "val"]
    assert len(val) == 1 and float(val[0]["recon_loss"]) > 0
    for name in ("checkpoint-last.safetensors", "checkpoint-best.safetensors", "train-state-last.pt"):
        assert (out / name).is_file(), name
    capsys.readouterr()
    assert main(["eval", *args, "--checkpoint", str(out / "checkpoint-last.safetensors")]) in (0, None)
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert results["recon_loss"] == pytest.approx(float(val[0]["recon_loss"]), rel=1e-5)  # fixed val masks
    # the pre-trained encoder starts a ViT (MAE fine-tuning: average pooling)
    from pyvision_fast.models import create_model

    vit = create_model("vit_base_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
                       global_pool="avg", num_classes=3, checkpoint_path=out / "checkpoint-last.safetensors")
    assert vit(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_pvf_train_flat_folder_without_val(tmp_path):
    pytest.importorskip("pyvision_fast.train.engine")
    from pyvision_fast.cli import main

    write_images(tmp_path / "faces" / "0001", digits(8))
    out = tmp_path / "run"
    rc = main(["train", "mae_pretrain", "--data", str(tmp_path / "faces"), "--output", str(out), "--epochs", "1",
               "--img-size", "32", "--batch-size", "4", "--workers", "0", "--no-progress",
               *[a for k, v in TINY.items() for a in ("--model-arg", f"{k}={v}")], "--set", "accum_steps=1"])
    assert rc in (0, None)
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["split"] for r in rows] == ["train"] and float(rows[0]["loss"]) > 0
    assert (out / "checkpoint-last.safetensors").is_file()
