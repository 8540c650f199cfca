"""The ``mvfnet`` recipe: the official hyper-parameters, datasets from JPEG-folder and MP4 datalists, a tiny
MVFNet whose loss falls, multi-view scores against views run one by one, the metrics against hand counts, and
``pvf train`` / ``pvf eval`` end to end."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from pyvision_fast.data.video_datalist import DatalistError
from pyvision_fast.train.recipe import ENGINE_DEFAULTS, Config, StepContext
from pyvision_fast.train.recipes import get_recipe, list_recipes
from pyvision_fast.train.recipes.mvfnet import RECIPE
from test_data_video_datalist import write_frame_dataset, write_video_dataset

TINY_MODEL = dict(layers=(1, 1, 1, 1), width=16, dropout=0.0)
SMALL = dict(img_size=32, clip_len=4, frame_interval=2, test_clips=2, test_crops=3, test_short_side=32,
             workers=0)
TRAIN = [(f"tr{i}", 10 + i, i % 2) for i in range(6)]
VAL = [("va0", 12, 0), ("va1", 9, 1), ("va2", 14, 1)]


def make_recipe(for_eval: bool = False, **overrides) -> RECIPE:
    cfg = Config(ENGINE_DEFAULTS)
    cfg.update(RECIPE.defaults)
    cfg.update(model_args=dict(TINY_MODEL), **SMALL)
    cfg.update(overrides)
    return RECIPE(cfg, for_eval=for_eval)


@pytest.fixture
def frames_data(tmp_path):
    root = tmp_path / "data"
    write_frame_dataset(root, TRAIN, "train.txt")
    write_frame_dataset(root, VAL, "val.txt", seed=1)
    return root


def test_registered_with_the_official_config():
    assert "mvfnet" in list_recipes() and get_recipe("mvfnet") is RECIPE
    d = RECIPE.defaults
    assert (d["model"], d["opt"], d["momentum"], d["nesterov"], d["weight_decay"], d["clip_grad"], d["sched"],
            tuple(d["decay_milestones"]), d["epochs"], d["batch_size"], d["clip_len"], d["frame_interval"],
            d["test_clips"], d["test_crops"], d["dropout"], d["alpha"], d["warmup_ratio"]) == \
        ("mvfnet_r50", "sgd", 0.9, True, 1e-4, 40.0, "multistep", (90, 130), 150, 12, 8, 8, 10, 3, 0.5, 0.125,
         0.01)
    assert d["blr"] * 8 * 12 / 256 == pytest.approx(0.015)   # the official lr at 8 GPUs x 12 videos
    assert RECIPE.main_metric == "top1" and RECIPE.main_mode == "max"


def test_datasets_model_groups_and_the_loss_falls(frames_data):
    recipe = make_recipe()
    train, val = recipe.build_datasets(str(frames_data))
    assert len(train) == 6 and len(val) == 3 and train.classes == [0, 1]
    x, y = train[0]
    assert x.shape == (3, 4, 32, 32) and y == 0
    views, _ = val[0]
    assert views.shape == (1, 3, 4, 32, 32)   # validation during training: 1 clip, centre crop
    _, test = make_recipe(for_eval=True).build_datasets(str(frames_data))
    assert test[0][0].shape == (6, 3, 4, 32, 32)   # pvf eval: test_clips 2 x test_crops 3
    torch.manual_seed(0)
    model = recipe.build_model(2)
    assert model.num_segments == 4 and model.fc.out_features == 2
    recipe.cfg.lr = 0.02
    groups = recipe.param_groups(model)
    assert recipe.cfg.warmup_lr == pytest.approx(0.02 * 0.01)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 1e-4
    assert len(groups[0]["params"]) == len(list(model.parameters()))   # BN and biases decay too (official)
    assert make_recipe(decay_norm_bias=False, lr=0.02).param_groups(model) is None
    opt = torch.optim.SGD(groups, lr=0.02, momentum=0.9, nesterov=True)
    ctx = StepContext(cfg=recipe.cfg, device=torch.device("cpu"))
    torch.manual_seed(1)
    xb = torch.stack([train[i][0] for i in range(6)])
    yb = torch.tensor(train.targets)
    model.train()
    losses = []
    for _ in range(8):
        loss, extra = recipe.train_loss(model, (xb, yb), ctx)
        assert extra == {}
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 40)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert model.get_submodule("layer3.0.conv1").shift_conv.weight.grad is not None


def test_multi_view_scores_and_metrics(frames_data):
    recipe = make_recipe(for_eval=True)   # the test views: 2 clips x 3 crops
    _, val = recipe.build_datasets(str(frames_data))
    torch.manual_seed(0)
    model = recipe.build_model(2).eval()
    views = torch.stack([val[i][0] for i in range(3)])             # (3 videos, 6 views, 3, 4, 32, 32)
    with torch.no_grad():
        per_view = torch.stack([model(views[:, v]) for v in range(6)], 1)    # each view on its own
    recipe.cfg.eval_chunk = 4   # chunks that cut across videos
    assert torch.allclose(recipe.video_scores(model, views), per_view.mean(1), atol=1e-5)
    recipe.cfg.average_views = "prob"
    assert torch.allclose(recipe.video_scores(model, views).exp(), per_view.softmax(-1).mean(1), atol=1e-5)
    metrics = recipe.build_metrics(7)
    y = torch.tensor([0, 0, 1, 1, 2, 6])
    scores = torch.zeros(6, 7)
    for row, ranked in enumerate([[0, 1], [3, 0], [1, 0], [2, 3, 4, 5, 6, 1], [2, 0], [6, 0]]):
        for rank, c in enumerate(ranked):
            scores[row, c] = 10.0 - rank
    metrics.update(scores, y)
    out = metrics.compute()
    assert float(out["top1"]) == pytest.approx(4 / 6)            # rows 0, 2, 4, 5
    assert float(out["top5"]) == pytest.approx(5 / 6)            # row 1's 0 is 2nd; row 3's 1 is 6th
    # mean recall over the classes that occur as labels or predictions (torchmetrics, and mmaction2's
    # mean_class_accuracy): 0 (1/2), 1 (1/2), 2 (1), 3 (predicted once, never right: 0), 6 (1)
    assert float(out["mean_class_accuracy"]) == pytest.approx((1 / 2 + 1 / 2 + 1 + 0 + 1) / 5)
    ctx = StepContext(cfg=recipe.cfg, device=torch.device("cpu"))
    metrics = recipe.build_metrics(2)
    loss = recipe.eval_update(model, (views, torch.tensor(val.targets)), metrics, ctx)
    assert loss.ndim == 0 and int(metrics.compute()["top1"].mul(3).round()) in range(4)


def test_mp4_datalists_and_bad_inputs(tmp_path, frames_data):
    root = tmp_path / "videos"
    write_video_dataset(root, [("a", 12, 0), ("b", 10, 1)], "train.txt")
    write_video_dataset(root, [("c", 10, 1)], "val.txt", with_counts=True)
    train, val = make_recipe(video=True).build_datasets(str(root))
    assert train[1][0].shape == (3, 4, 32, 32) and val[0][0].shape == (1, 3, 4, 32, 32)
    with pytest.raises(FileNotFoundError, match="--data .*nowhere"):
        make_recipe().build_datasets(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="test_crops must be 1 or 3"):
        make_recipe(for_eval=True, test_crops=2).build_datasets(str(frames_data))
    with pytest.raises(ValueError, match="val_crops must be 1 or 3"):
        make_recipe(val_crops=2).build_datasets(str(frames_data))
    with pytest.raises(ValueError, match="val_clips must be a positive integer"):
        make_recipe(val_clips=0).build_datasets(str(frames_data))
    with pytest.raises(ValueError, match="average_views"):
        make_recipe(average_views="max").build_datasets(str(frames_data))
    with pytest.raises(FileNotFoundError, match="pretrained weights .*r50.pth"):
        make_recipe(pretrained=str(tmp_path / "r50.pth")).build_datasets(str(frames_data))
    with pytest.raises(DatalistError, match=r"train.txt:2: label 1 is outside \[0, 1\)"):
        make_recipe(num_classes=1).build_datasets(str(frames_data))
    with pytest.raises(ValueError, match="num_segments 8 differs from clip_len 4"):
        make_recipe(model_args=dict(TINY_MODEL, num_segments=8)).build_model(2)


def test_pvf_train_and_eval_end_to_end(tmp_path, frames_data, capsys):
    from pyvision_fast.cli import main

    out = tmp_path / "run"
    common = ["--model-arg", "layers=(1,1,1,1)", "width=16", "--img-size", "32", "--workers", "0",
              "--no-progress", "--set", "clip_len=4", "frame_interval=2", "test_short_side=32"]
    rc = main(["train", "mvfnet", "--data", str(frames_data), "--output", str(out), "--epochs", "2",
               "--batch-size", "3", "--eval-batch-size", "2", *common, "--set", "warmup_epochs=1"])
    assert rc in (0, None)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_classes"] == 2 and cfg["lr"] == pytest.approx(0.04 * 3 / 256) and cfg["eval_batch_size"] == 2
    assert cfg["warmup_lr"] == pytest.approx(0.01 * cfg["lr"])
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    val = [r for r in rows if r["split"] == "val"]
    assert len(val) == 1 and {"top1", "top5", "mean_class_accuracy"} <= set(val[0])   # eval at the end
    assert (out / "checkpoint-last.safetensors").is_file()
    capsys.readouterr()
    ckpt = out / "checkpoint-last.safetensors"
    # the official 10 clips x 3 crops (the defaults)
    main(["eval", "mvfnet", "--data", str(frames_data), "--checkpoint", str(ckpt), *common])
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"loss", "top1", "top5", "mean_class_accuracy"} <= set(results)
    # the same 30 views per video scored here, one video at a time, from the checkpoint's weights
    from pyvision_fast.models import load_weights

    recipe = make_recipe(for_eval=True, test_clips=10, test_crops=3)
    _, val = recipe.build_datasets(str(frames_data))
    model = load_weights(recipe.build_model(2), out / "checkpoint-last.safetensors").eval()
    scores = torch.cat([recipe.video_scores(model, val[i][0][None]) for i in range(len(val))])
    labels = torch.tensor(val.targets)
    assert val[0][0].shape[0] == 30
    assert results["top1"] == pytest.approx(float((scores.argmax(1) == labels).float().mean()))
    want_loss = float(torch.nn.functional.cross_entropy(scores, labels))
    assert results["loss"] == pytest.approx(want_loss, rel=1e-4)
