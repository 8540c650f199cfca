"""The ``fer_finetune`` recipe: its steps on a tiny ViT and a tiny RAF-DB fixture in the official format, MAE
checkpoints as ``pretrained``, the metrics, and ``pvf train`` / ``pvf eval`` end to end (1 epoch, tiny model)."""
from __future__ import annotations

import argparse
import csv
import json

import pytest
import torch
from sklearn.metrics import f1_score, recall_score

from pyvision_fast.models import create_model, load_weights, save_safetensors
from pyvision_fast.train.recipe import ENGINE_DEFAULTS, Config, StepContext
from pyvision_fast.train.recipes import get_recipe, list_recipes
from pyvision_fast.train.recipes.fer_finetune import RECIPE, convert_mae_checkpoint
from test_data_fer import write_affectnet, write_ferplus, write_rafdb

TINY = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2)
TRAIN_LABELS = (1, 2, 3, 4, 5, 6, 7) * 2 + (4, 4)   # 16 images, every class
TEST_LABELS = (1, 2, 3, 4, 5, 6, 7, 7)


def make_recipe(**overrides):
    cfg = Config(ENGINE_DEFAULTS)
    cfg.update(RECIPE.defaults)
    cfg.update(model="vit_tiny_patch16_224", model_args=dict(TINY), img_size=32, **overrides)
    return RECIPE(cfg)


@pytest.fixture
def rafdb(tmp_path):
    return write_rafdb(tmp_path / "basic", TRAIN_LABELS, TEST_LABELS)


def test_registered_with_paper_defaults():
    assert "fer_finetune" in list_recipes() and get_recipe("fer_finetune") is RECIPE
    d = RECIPE.defaults
    assert (d["model"], d["layer_decay"], d["drop_path"], d["mixup"], d["cutmix"], d["reprob"], d["blr"],
            d["weight_decay"], d["epochs"], d["warmup_epochs"], d["global_pool"], d["label_smoothing"]) == \
        ("vit_base_patch16_224", 0.65, 0.1, 0.8, 1.0, 0.25, 5e-4, 0.05, 100, 5, "avg", 0.1)
    assert RECIPE.main_metric == "accuracy" and RECIPE.main_mode == "max"


def test_datasets_model_and_steps(rafdb):
    torch.manual_seed(0)
    recipe = make_recipe()
    train, val = recipe.build_datasets(str(rafdb))
    assert len(train) == 16 and len(val) == 8 and len(train.classes) == 7
    x, y = train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 0
    model = recipe.build_model(7)
    assert model.global_pool == "avg" and model.head.out_features == 7
    assert model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)  # linear to drop_path at the last block
    assert recipe.train_sample_weights(train) is None
    ctx = StepContext(cfg=recipe.cfg, device=torch.device("cpu"))
    xb = torch.stack([train[i][0] for i in range(4)])
    yb = torch.tensor([train[i][1] for i in range(4)])
    model.train()
    loss, extra = recipe.train_loss(model, (xb, yb), ctx)
    assert loss.ndim == 0 and torch.isfinite(loss) and extra == {}
    loss.backward()
    assert model.patch_embed.proj.weight.grad is not None
    # label smoothing 0.1 on hard targets equals the soft-target loss of the smoothed one-hot targets
    model.eval()
    hard, _ = recipe.train_loss(model, (xb, yb), ctx)
    soft_t = torch.full((4, 7), 0.1 / 7).scatter_(1, yb[:, None], 0.9 + 0.1 / 7)
    soft, _ = recipe.train_loss(model, (xb, soft_t), ctx)
    assert torch.allclose(hard, soft, atol=1e-6)
    metrics = recipe.build_metrics(7)
    vx = torch.stack([val[i][0] for i in range(8)])
    vy = torch.tensor(val.targets)
    eval_loss = recipe.eval_update(model, (vx, vy), metrics, ctx)
    assert eval_loss.ndim == 0
    out = metrics.compute()
    assert out["confusion_matrix"].shape == (7, 7) and int(out["confusion_matrix"].sum()) == 8
    assert set(out) == {"accuracy", "mean_class_accuracy", "f1_macro", "confusion_matrix"}


def test_metrics_match_sklearn():
    recipe = make_recipe()
    metrics = recipe.build_metrics(3)
    y = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    p = torch.tensor([0, 0, 1, 2, 1, 1, 2, 2, 0, 2])
    metrics.update(torch.nn.functional.one_hot(p, 3).float(), y)
    out = metrics.compute()
    assert float(out["accuracy"]) == pytest.approx(0.7)
    assert float(out["mean_class_accuracy"]) == pytest.approx(recall_score(y, p, average="macro"))
    assert float(out["f1_macro"]) == pytest.approx(f1_score(y, p, average="macro"))
    assert out["confusion_matrix"].tolist() == [[2, 1, 1], [0, 2, 0], [1, 0, 3]]


def test_class_balance_and_other_datasets(tmp_path):
    root = write_affectnet(tmp_path / "affectnet")
    recipe = make_recipe(dataset="affectnet8", class_balance=True)
    train, val = recipe.build_datasets(str(root))
    assert len(train.classes) == 8 and val.targets == list(range(8))
    w = recipe.train_sample_weights(train)
    assert w.shape == (len(train),) and float(w.max()) == 3.0 and float(w.min()) == 1.0
    train7, _ = make_recipe(dataset="affectnet7").build_datasets(str(root))
    assert len(train7.classes) == 7
    froot = write_ferplus(tmp_path / "ferplus")
    train, val = make_recipe(dataset="ferplus").build_datasets(str(froot))
    assert train.targets == [0, 1, 2, 7] and val.targets == [4, 5]  # the PrivateTest split
    _, val = make_recipe(dataset="ferplus", eval_split="val").build_datasets(str(froot))
    assert val.targets == [3]
    train, _ = make_recipe(dataset="ferplus", ferplus_vote="argmax", transforms="timm").build_datasets(str(froot))
    assert len(train) == 5 and train[0][0].shape == (3, 32, 32)
    with pytest.raises(ValueError, match="dataset must be one of"):
        make_recipe(dataset="fer2013").build_datasets(str(froot))
    with pytest.raises(ValueError, match="transforms must be"):
        make_recipe(transforms="kornia").build_datasets(str(froot))
    with pytest.raises(FileNotFoundError, match="--data .*nowhere"):
        make_recipe().build_datasets(str(tmp_path / "nowhere"))


def _tiny_mae(seed=0):
    from pyvision_fast.models.mae import MaskedAutoencoderViT

    torch.manual_seed(seed)
    return MaskedAutoencoderViT(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16,
                                decoder_depth=1, decoder_num_heads=2)


def test_pretrained_mae_checkpoint(tmp_path, rafdb):
    mae = _tiny_mae()
    path = save_safetensors(mae.state_dict(), tmp_path / "mae.safetensors")
    recipe = make_recipe(pretrained=str(path))
    model = recipe.build_model(7)
    with torch.no_grad():  # MAE's head init: trunc_normal(std 2e-5), zero bias
        assert float(model.head.weight.std()) < 1e-4 and float(model.head.bias.abs().max()) == 0
    fc_norm = model.fc_norm.weight.detach().clone()
    load_weights(model, path)  # what the engine does with cfg.pretrained
    sd = mae.state_dict()
    for k in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.1.mlp.fc2.weight"):
        assert torch.equal(model.state_dict()[k], sd[k]), k
    assert torch.equal(model.fc_norm.weight, fc_norm)
    # an MAE training checkpoint (args Namespace) loads as it is, and converts to safetensors
    pth = tmp_path / "checkpoint-299.pth"
    torch.save({"model": sd, "epoch": 299, "args": argparse.Namespace(blr=1.5e-4, mask_ratio=0.75)}, pth)
    direct = load_weights(create_model("vit_tiny_patch16_224", img_size=32, global_pool="avg", **TINY), pth)
    assert torch.equal(direct.blocks[0].attn.qkv.weight, sd["blocks.0.attn.qkv.weight"])
    out = convert_mae_checkpoint(pth, tmp_path / "encoder.safetensors")
    model2 = make_recipe(pretrained=str(out)).build_model(7)
    load_weights(model2, out)
    assert torch.equal(model2.blocks[0].attn.qkv.weight, sd["blocks.0.attn.qkv.weight"])
    with pytest.raises(ValueError, match="no ViT encoder"):
        save_safetensors({"w": torch.zeros(2)}, tmp_path / "other.safetensors")
        convert_mae_checkpoint(tmp_path / "other.safetensors", tmp_path / "x.safetensors")
    # a missing file is named before any image is decoded
    with pytest.raises(FileNotFoundError, match="pretrained MAE checkpoint .*missing.safetensors"):
        make_recipe(pretrained=str(tmp_path / "missing.safetensors")).build_datasets(str(rafdb))
    with pytest.raises(FileNotFoundError, match="pretrained MAE checkpoint"):
        make_recipe(pretrained=str(tmp_path / "missing.safetensors")).build_model(7)


TINY_ARGS = ["--model", "vit_tiny_patch16_224", "--model-arg", "patch_size=8", "--model-arg", "embed_dim=32",
             "--model-arg", "depth=2", "--model-arg", "num_heads=2", "--img-size", "32", "--batch-size", "4",
             "--workers", "0", "--no-progress"]


def test_pvf_train_and_eval_end_to_end(tmp_path, rafdb, capsys):
    pytest.importorskip("pyvision_fast.train.engine")
    from pyvision_fast.cli import main

    mae_path = save_safetensors(_tiny_mae().state_dict(), tmp_path / "mae.safetensors")
    out = tmp_path / "run"
    rc = main(["train", "fer_finetune", "--data", str(rafdb), "--output", str(out), "--epochs", "1", *TINY_ARGS,
               "--set", "accum_steps=1", "--set", "warmup_epochs=0", "--set", "class_balance=True",
               "--set", f"pretrained={mae_path}"])
    assert rc in (0, None)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dataset"] == "rafdb" and cfg["layer_decay"] == 0.65 and cfg["mixup"] == 0.8
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    val = [r for r in rows if r["split"] == "val"]
    assert len(val) == 1 and {"accuracy", "mean_class_accuracy", "f1_macro"} <= set(val[0])
    assert 0.0 <= float(val[0]["accuracy"]) <= 1.0
    for name in ("checkpoint-last.safetensors", "checkpoint-best.safetensors", "train-state-last.pt"):
        assert (out / name).is_file(), name
    capsys.readouterr()
    main(["eval", "fer_finetune", "--data", str(rafdb), "--checkpoint", str(out / "checkpoint-last.safetensors"),
          *TINY_ARGS])
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    cm = results["confusion_matrix"]
    assert isinstance(cm, list) and len(cm) == 7 and all(len(r) == 7 for r in cm) and sum(map(sum, cm)) == 8
    assert results["accuracy"] == pytest.approx(sum(cm[i][i] for i in range(7)) / 8)
