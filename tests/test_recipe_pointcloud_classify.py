"""The ``pointcloud_classify`` recipe: its defaults against the official PointNet++ script, the loss, ``pvf
train`` / ``pvf eval`` end to end on ModelNet40 fixtures of simple solids in both formats, and (slow)
PointNet++ SSG learning to tell sphere, cube, cylinder and cone apart."""
from __future__ import annotations

import csv
import json
import re

import pytest
import torch

from pointcloud_fixtures import SOLIDS, write_modelnet40_h5, write_modelnet40_normal
from pyvision_fast.cli import main
from pyvision_fast.train.recipe import ENGINE_DEFAULTS, Config, StepContext
from pyvision_fast.train.recipes import get_recipe, list_recipes
from pyvision_fast.train.recipes.pointcloud_classify import RECIPE


def _cfg(**over):
    return Config({**ENGINE_DEFAULTS, **RECIPE.defaults, **over})


def test_registered_with_the_official_defaults():
    assert "pointcloud_classify" in list_recipes() and get_recipe("pointcloud_classify") is RECIPE
    c = _cfg()
    # yanx27/Pointnet_Pointnet2_pytorch train_classification.py: Adam lr 0.001, decay_rate 1e-4, batch 24,
    # StepLR(step_size=20, gamma=0.7), 200 epochs, 1024 points, no normals, drop_last
    assert (c.opt, c.lr, c.weight_decay, c.batch_size) == ("adam", 1e-3, 1e-4, 24)
    assert (c.sched, c.decay_epochs, c.decay_rate, c.epochs, c.warmup_epochs) == ("step", 20, 0.7, 200, 0)
    assert (c.num_points, c.use_normals, c.uniform, c.augment, c.drop_last) == (1024, False, False, True, True)
    assert c.label_smoothing == 0.0


def test_loss_weight_decay_groups_and_pointnet_regulariser():
    torch.manual_seed(0)
    recipe = RECIPE(_cfg(model="pointnet"))
    model = recipe.build_model(3)
    groups = recipe.param_groups(model)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 1e-4
    assert sum(p.numel() for p in groups[0]["params"]) == sum(p.numel() for p in model.parameters())
    x, y = torch.rand(4, 64, 3), torch.tensor([0, 1, 2, 1])
    ctx = StepContext(cfg=recipe.cfg, device=torch.device("cpu"))
    torch.manual_seed(1)
    loss, logged = recipe.train_loss(model, (x, y), ctx)
    torch.manual_seed(1)  # the same dropout mask; train-mode BN on the same batch: the same logits
    _, logits = model(x)
    reg = 0.001 * torch.linalg.matrix_norm(model._trans_feat @ model._trans_feat.transpose(1, 2)
                                           - torch.eye(64)).mean()
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, y) + reg)
    assert logged["regularization"] == pytest.approx(float(reg.detach()), rel=1e-5)
    # PointNet++ has no extra term
    ssg = RECIPE(_cfg(model="pointnet2_ssg"))
    loss, logged = ssg.train_loss(ssg.build_model(3), (torch.rand(2, 512, 3), torch.tensor([0, 2])), ctx)
    assert logged == {} and loss.ndim == 0


def _small_ssg(num_classes):
    """PointNet++ SSG's classifier with narrower, sparser set abstractions (the same code path as
    ``pointnet2_ssg``, a tenth of its work) for the short default-run test."""
    from pyvision_fast.models.pointnet import PointNet2Classifier
    from pyvision_fast.nn.pointnet2 import PointNetSetAbstraction

    sa1 = PointNetSetAbstraction(64, 0.3, 16, 0, (32, 32, 64), layout="official")
    sa2 = PointNetSetAbstraction(16, 0.6, 16, 64, (64, 64, 128), layout="official")
    sa3 = PointNetSetAbstraction(None, None, None, 128, (128, 256, 1024), group_all=True, layout="official")
    return PointNet2Classifier(sa1, sa2, sa3, num_classes, 3, drop2=0.4)


def test_ssg_loss_falls_on_solids(tmp_path):
    """The short default-run version of the slow accuracy test: 10 Adam steps of the recipe's loss on one
    batch of four solids."""
    torch.manual_seed(0)
    write_modelnet40_normal(tmp_path, classes=SOLIDS[:4], train_per_class=2, test_per_class=0, num_points=300)
    recipe = RECIPE(_cfg(num_points=256, augment=False))
    train, _ = recipe.build_datasets(str(tmp_path))
    x = torch.stack([train[i][0] for i in range(len(train))])
    y = torch.stack([train[i][1] for i in range(len(train))])
    model = _small_ssg(4)
    opt = torch.optim.Adam(recipe.param_groups(model), lr=1e-3)
    ctx = StepContext(cfg=recipe.cfg, device=torch.device("cpu"))
    losses = []
    for _ in range(10):
        loss, _ = recipe.train_loss(model, (x, y), ctx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[0] > 1.0 and losses[-1] < 0.5 * losses[0], losses


def _metrics(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_pvf_train_and_eval_text_format(tmp_path, capsys):
    data = write_modelnet40_normal(tmp_path / "modelnet", classes=SOLIDS[:3], train_per_class=3, test_per_class=2,
                                   num_points=300)
    out = tmp_path / "run"
    args = ["--model", "pointnet", "--batch-size", "3", "--workers", "0", "--device", "cpu", "--no-progress"]
    rc = main(["train", "pointcloud_classify", "--data", str(data), "--output", str(out), "--epochs", "2", *args,
               "--set", "num_points=256"])
    assert rc in (0, None)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_classes"] == 3 and cfg["opt"] == "adam" and cfg["num_points"] == 256
    assert cfg["updates_per_epoch"] == 3  # 9 training shapes, batch 3
    rows = _metrics(out / "metrics.csv")
    assert [(r["epoch"], r["split"]) for r in rows] == [("0", "train"), ("0", "val"), ("1", "train"), ("1", "val")]
    assert float(rows[0]["regularization"]) > 0 and 0 <= float(rows[1]["accuracy"]) <= 1
    assert (out / "checkpoint-last.safetensors").is_file()
    capsys.readouterr()
    # pvf eval reads only the test split
    (data / "modelnet40_train.txt").unlink()
    main(["eval", "pointcloud_classify", "--data", str(data), "--checkpoint",
          str(out / "checkpoint-last.safetensors"), *args, "--set", "num_points=256"])
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= results["accuracy"] <= 1 and 0 <= results["class_accuracy"] <= 1


def test_pvf_train_hdf5_format_with_dgcnn(tmp_path):
    data = write_modelnet40_h5(tmp_path / "h5", classes=SOLIDS[:2], train_per_class=3, test_per_class=1,
                               num_points=128)
    out = tmp_path / "run"
    rc = main(["train", "pointcloud_classify", "--data", str(data), "--output", str(out), "--epochs", "1",
               "--model", "dgcnn", "--batch-size", "3", "--workers", "0", "--device", "cpu", "--no-progress",
               "--set", "num_points=64", "label_smoothing=0.2"])
    assert rc in (0, None)
    assert json.loads((out / "config.json").read_text())["num_classes"] == 2
    assert [r["split"] for r in _metrics(out / "metrics.csv")] == ["train", "val"]


def test_bad_data_fails_before_training(tmp_path, capsys):
    import h5py

    data = write_modelnet40_h5(tmp_path / "h5", classes=SOLIDS[:2], train_per_class=2, test_per_class=1,
                               num_points=64)
    with h5py.File(data / "ply_data_train0.h5", "r+") as f:
        f["label"][1, 0] = 7
    cases = [
        (data, ["--model", "pointnet", "--set", "num_points=32"],
         r"ply_data_train0.h5: item 1 has label 7, outside the 2 classes"),
        (tmp_path, [], "holds neither modelnet40_normal_resampled"),
        (tmp_path / "h5", [], "fewer than the 1024 requested"),
    ]
    for folder, extra, message in cases:
        rc = main(["train", "pointcloud_classify", "--data", str(folder), "--output", str(tmp_path / "run"),
                   "--device", "cpu", *extra])
        err = capsys.readouterr().err
        assert rc == 2 and re.search(message, err), (rc, err)
        assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_pointnet2_ssg_learns_solids(tmp_path, capsys):
    """PointNet++ SSG with the recipe's defaults except the length (10 epochs, lr x 0.7 every 4) and the batch
    (4) reaches >= 90% test accuracy on sphere / cube / cylinder / cone (10 train, 6 test shapes each,
    randomly scaled and turned about the vertical axis; 1024 points). With so few updates the eval-mode
    BatchNorm statistics are what lags (train-mode predictions are right after ~4 epochs): the small batch
    gives the running averages more updates."""
    data = write_modelnet40_normal(tmp_path / "solids", classes=SOLIDS[:4], train_per_class=10, test_per_class=6,
                                   num_points=1100, seed=1)
    out = tmp_path / "run"
    main(["train", "pointcloud_classify", "--data", str(data), "--output", str(out), "--epochs", "10",
          "--model", "pointnet2_ssg", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--no-progress",
          "--set", "decay_epochs=4"])
    rows = _metrics(out / "metrics.csv")
    val = [r for r in rows if r["split"] == "val"]
    train = [r for r in rows if r["split"] == "train"]
    final = float(val[-1]["accuracy"])
    print(f"SSG solids: test accuracy by epoch {[round(float(r['accuracy']), 3) for r in val]}; train loss "
          f"{float(train[0]['loss']):.3f} -> {float(train[-1]['loss']):.3f}")
    assert final >= 0.9, val
