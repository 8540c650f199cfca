"""The ``pointcat`` recipe: its per-epoch warm restarts, the CAT step on a fixed batch, ``pvf train`` / ``pvf
eval`` on tiny ModelNet40 fixtures (loss falls, plain classifier checkpoints, the robustness table), exact
resume of the generator, its optimizer and the prototypes, bad input, and DDP (torchrun, gloo) keeping the
generator in step."""
from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from pointcloud_fixtures import write_modelnet40_h5, write_modelnet40_normal

from pyvision_fast.models import create_model
from pyvision_fast.models.pointcat import PointCATNoiseGenerator
from pyvision_fast.train import checkpoint as ckpt
from pyvision_fast.train.recipe import ENGINE_DEFAULTS, Config, StepContext
from pyvision_fast.train.recipes.pointcat import PointCATRecipe, warm_restart_lr

ROOT = Path(__file__).resolve().parents[1]
# 128 points (the generator needs 3N divisible by 128), short prototype searches, one thread per process.
SMALL = ["--set", "num_points=128", "peak_init_iters=5", "peak_update_iters=2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _pvf(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "pyvision_fast", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def _train_losses(run: Path) -> list[float]:
    with open(run / "metrics.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f) if r["split"] == "train"]


def test_warm_restarts_equal_torch_cosine_annealing_warm_restarts():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=5, T_mult=2)
    for epoch in range(80):
        want = opt.param_groups[0]["lr"]
        assert warm_restart_lr(1e-3, epoch, 5, 2) == pytest.approx(want, rel=1e-9, abs=1e-15)
        opt.step()
        sched.step()
    # restarts after 5, then 10 epochs
    assert warm_restart_lr(1.0, 5) == 1.0 and warm_restart_lr(1.0, 15) == 1.0
    assert warm_restart_lr(1.0, 7, 5, 1) == pytest.approx(warm_restart_lr(1.0, 2, 5, 1))


def _recipe(**overrides):
    cfg = Config({**ENGINE_DEFAULTS, **PointCATRecipe.defaults})
    cfg.update({**dict(num_points=128, peak_init_iters=5, peak_update_iters=2, augment=False, num_classes=4,
                       lr_restart_epochs=0, workers=0), **overrides})
    return PointCATRecipe(cfg)


@pytest.fixture
def one_thread():
    """Two threads on this shared 2-core machine run PointNet ~10x slower than one; restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_cat_steps_on_a_fixed_batch_lower_the_classifier_loss(tmp_path, one_thread):
    """The engine's part done by hand: train_loss, backward, an Adam step over the recipe's parameter
    groups."""
    torch.manual_seed(0)
    write_modelnet40_h5(tmp_path, train_per_class=3, test_per_class=1, num_points=128)
    recipe = _recipe(lr_restart_epochs=5)  # factor 1 at epoch 0
    train, _ = recipe.build_datasets(str(tmp_path))
    x = torch.stack([train[i][0] for i in range(len(train))])
    y = torch.stack([train[i][1] for i in range(len(train))])
    model = create_model("pointnet", num_classes=4, feature_transform=False)
    fc = model.get_classifier()
    groups = recipe.param_groups(model)
    # fc3 is fine-tuned apart
    assert not any(p is q for g in groups for p in g["params"] for q in fc.parameters())
    opt = torch.optim.Adam(groups, lr=1e-3)
    ctx = StepContext(cfg=recipe.cfg, device=torch.device("cpu"), extra={"optimizer": opt})
    recipe.on_train_start(model, ctx)
    assert model.get_classifier() is recipe.proj_head and recipe.fc is fc
    assert recipe.peak_features.shape == (4, 256) and recipe.peak_inputs.shape == (4, 128, 3)
    model.train()
    gen_before = [p.detach().clone() for p in recipe.generator.parameters()]
    losses = []
    for _ in range(4):
        loss, extra = recipe.train_loss(model, (x, y), ctx)
        assert set(extra) == {"loss_supcon", "loss_cent", "loss_generator"}
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        assert all(p.grad is None for p in recipe.generator.parameters())  # the generator steps on its own
    assert losses[-1] < losses[0], losses
    assert any(not torch.equal(a, b) for a, b in zip(gen_before, recipe.generator.parameters()))
    # the warm-restart lr reaches the engine's optimizer (ctx.extra["optimizer"]) at the epoch's start, and no
    # other optimizer
    other_param = torch.nn.Parameter(torch.zeros(2))
    other = torch.optim.SGD([other_param], lr=0.5)
    recipe.on_epoch_start(3, model, ctx)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3 * warm_restart_lr(1.0, 3)] * 2)
    assert other.param_groups[0]["lr"] == 0.5
    assert recipe.gen_opt.param_groups[0]["lr"] == pytest.approx(1e-3 * warm_restart_lr(1.0, 3))
    peaks = recipe.peak_features.clone()
    recipe.on_epoch_end(3, model, ctx)  # the last batch's prototype update, then fc3 back and fine-tuned
    assert model.get_classifier() is fc and not torch.equal(peaks, recipe.peak_features)


def test_bad_batches_raise_clear_errors():
    recipe = _recipe()
    recipe.peak_features = torch.zeros(4, 256)
    x = torch.rand(2, 128, 3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        recipe.train_loss(None, (x, torch.tensor([0, 4])), None)
    x[1, 5, 2] = float("nan")
    with pytest.raises(ValueError, match="cloud 1 contains NaN"):
        recipe.train_loss(None, (x, torch.tensor([0, 1])), None)
    with pytest.raises(ValueError, match=r"\(B, 128, 3\)"):
        recipe.train_loss(None, (torch.rand(2, 64, 3), torch.tensor([0, 1])), None)
    with pytest.raises(ValueError, match="lr_restart_epochs"):
        _recipe(lr_restart_epochs=5, sched="cosine")


def _train_and_eval(tmp_path, epochs: int):
    """``epochs`` epochs of one batch (16 clouds) on a normal_resampled fixture: the checkpoints are plain
    PointNet classifiers, the recipe state holds what resume needs, and ``pvf eval pointcat`` prints the
    robustness table."""
    data = write_modelnet40_normal(tmp_path / "data", train_per_class=4, test_per_class=1, num_points=160)
    run = tmp_path / "run"
    res = _pvf("train", "pointcat", "--data", str(data), "--output", str(run), "--epochs", str(epochs),
               "--batch-size", "16",
               "--workers", "0", "--no-progress", *SMALL, "augment=False", "lr_restart_epochs=0")
    assert res.returncode == 0, res.stderr[-3000:]
    losses = _train_losses(run)
    assert len(losses) == epochs and all(np.isfinite(losses))
    weights = ckpt.read_state_dict(run / ckpt.MODEL_LAST)
    assert weights.keys() == create_model("pointnet", num_classes=4).state_dict().keys()
    state = torch.load(run / ckpt.TRAIN_STATE, weights_only=True)["recipe_state"]
    assert set(state) == {"generator", "generator_opt", "proj_head", "fc_opt", "peak_inputs", "peak_features"}
    assert state["peak_features"].shape == (4, 256) and state["generator_opt"]["state"]

    res = _pvf("eval", "pointcat", "--data", str(data), "--checkpoint", str(run / ckpt.MODEL_LAST),
               "--workers", "0", "--set", "num_points=128", "eval_samples=4", "attack_iters=2",
               "cw_binary_steps=1", "cw_iters=2",
               "drop_num=28", "srs_drop=28")
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["robust_samples"] == 4
    for attack in ("clean", "ifgm", "mifgm", "cw", "drop", "add", "jitter"):
        for defence in ("none", "sor", "srs"):
            assert 0.0 <= out[f"robust/{attack}/{defence}"] <= 1.0
    assert 0.0 <= out["accuracy"] <= 1.0 and "class_accuracy" in out
    return losses


def test_pvf_train_and_eval_pointcat(tmp_path):
    """One epoch (the short run; the CAT loss falling on a fixed batch is checked in-process above)."""
    _train_and_eval(tmp_path, 1)


@pytest.mark.slow
def test_pvf_train_pointcat_loss_falls(tmp_path):
    losses = _train_and_eval(tmp_path, 4)
    assert losses[-1] < losses[0], losses


def test_bad_data_fails_naming_the_file(tmp_path):
    data = write_modelnet40_h5(tmp_path / "data", train_per_class=2, test_per_class=1, num_points=128)
    with h5py.File(data / "ply_data_train0.h5", "r+") as f:
        pts = f["data"][...]
        pts[1, 3, 0] = np.nan
        f["data"][...] = pts
    res = _pvf("train", "pointcat", "--data", str(data), "--output", str(tmp_path / "run"), "--epochs", "1",
               "--workers", "0", "--no-progress", *SMALL)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "ply_data_train0.h5" in res.stderr and "NaN" in res.stderr, res.stderr[-2000:]

    data = write_modelnet40_h5(tmp_path / "data2", train_per_class=2, test_per_class=1, num_points=128)
    with h5py.File(data / "ply_data_train0.h5", "r+") as f:
        labels = f["label"][...]
        labels[2, 0] = 7  # 4 classes
        f["label"][...] = labels
    res = _pvf("train", "pointcat", "--data", str(data), "--output", str(tmp_path / "run2"), "--epochs", "1",
               "--workers", "0", "--no-progress", *SMALL)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "ply_data_train0.h5" in res.stderr and "label 7" in res.stderr, res.stderr[-2000:]


@pytest.mark.slow
def test_pretrained_classifier_in_and_cat_checkpoint_out(tmp_path):
    """PointCAT starts from a ``pointcloud_classify`` checkpoint (``--set pretrained=``), and its checkpoint
    evaluates with ``pointcloud_classify``: the same plain classifier both ways."""
    data = write_modelnet40_normal(tmp_path / "data", train_per_class=2, test_per_class=1, num_points=160)
    common = ["--data", str(data), "--batch-size", "8", "--workers", "0", "--epochs", "1"]
    res = _pvf("train", "pointcloud_classify", *common, "--model", "pointnet", "--no-progress",
               "--output", str(tmp_path / "cls"), "--set", "num_points=128")
    assert res.returncode == 0, res.stderr[-3000:]
    res = _pvf("train", "pointcat", *common, "--no-progress", "--output", str(tmp_path / "cat"), *SMALL,
               f"pretrained={tmp_path / 'cls' / ckpt.MODEL_LAST}")
    assert res.returncode == 0, res.stderr[-3000:]
    res = _pvf("eval", "pointcloud_classify", "--data", str(data), "--workers", "0", "--checkpoint",
               str(tmp_path / "cat" / ckpt.MODEL_LAST), "--set", "num_points=128")
    assert res.returncode == 0, res.stderr[-3000:]
    assert 0.0 <= json.loads(res.stdout.strip().splitlines()[-1])["accuracy"] <= 1.0


@pytest.mark.slow
def test_resume_restores_generator_optimizer_and_prototypes_exactly(tmp_path):
    """2 epochs straight == 1 epoch, then --resume for the second: the same classifier, generator, generator
    optimizer, projection head, prototypes and fine-tune optimizer (augmentation and warm restarts on)."""
    data = write_modelnet40_h5(tmp_path / "data", train_per_class=3, test_per_class=1, num_points=128)
    common = ["train", "pointcat", "--data", str(data), "--batch-size", "6", "--workers", "0",
              "--no-progress",
              *SMALL, "lr_restart_epochs=2", "lr_restart_mult=1"]
    res = _pvf(*common, "--epochs", "2", "--output", str(tmp_path / "straight"))
    assert res.returncode == 0, res.stderr[-3000:]
    res = _pvf(*common, "--epochs", "1", "--output", str(tmp_path / "split"))
    assert res.returncode == 0, res.stderr[-3000:]
    split = str(tmp_path / "split")
    res = _pvf(*common, "--epochs", "2", "--output", split, "--resume", split)
    assert res.returncode == 0, res.stderr[-3000:]
    a = ckpt.read_state_dict(tmp_path / "straight" / ckpt.MODEL_LAST)
    b = ckpt.read_state_dict(tmp_path / "split" / ckpt.MODEL_LAST)
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa = torch.load(tmp_path / "straight" / ckpt.TRAIN_STATE, weights_only=True)
    sb = torch.load(tmp_path / "split" / ckpt.TRAIN_STATE, weights_only=True)

    def same(x, y, path="recipe_state"):
        if isinstance(x, dict):
            assert x.keys() == y.keys(), path
            for k in x:
                same(x[k], y[k], f"{path}.{k}")
        elif isinstance(x, (list, tuple)):
            assert len(x) == len(y), path
            for i, (u, v) in enumerate(zip(x, y)):
                same(u, v, f"{path}[{i}]")
        elif isinstance(x, torch.Tensor):
            assert torch.equal(x, y), path
        else:
            assert x == y, path

    same(sa["recipe_state"], sb["recipe_state"])
    same(sa["optimizer"], sb["optimizer"], "optimizer")
    assert sa["epoch"] == sb["epoch"] == 2
    # the engine's optimizer ran epoch 1 at the warm-restart lr: 1e-3 (1 + cos(pi / 2)) / 2
    with open(tmp_path / "split" / "metrics.csv") as f:
        lrs = [float(r["lr"]) for r in csv.DictReader(f) if r["split"] == "train"]
    assert lrs == pytest.approx([1e-3, 5e-4])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DDP_SCRIPT = """
import sys, torch
from pyvision_fast import cli
from pyvision_fast.train.recipes.pointcat import PointCATRecipe

original = PointCATRecipe.on_epoch_end

def on_epoch_end(self, epoch, model, ctx):
    original(self, epoch, model, ctx)
    torch.save({"generator": self.generator.state_dict(), "peaks": self.peak_features, "fc":
    self.fc.state_dict(),
                "proj": self.proj_head.state_dict(), "model": model.state_dict()},
                f"{sys.argv[1]}/rank{ctx.rank}.pt")

PointCATRecipe.on_epoch_end = on_epoch_end
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_ddp_keeps_the_generator_prototypes_and_last_layer_identical_on_every_rank(tmp_path):
    """Under torchrun (2 processes, gloo) each rank sees other clouds, so only averaged gradients (and
    broadcast BatchNorm buffers) keep the noise generator, the fine-tuned last layer, the classifier's buffers
    and hence the prototypes equal."""
    data = write_modelnet40_h5(tmp_path / "data", train_per_class=4, test_per_class=1, num_points=128)
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", str(_free_port()), str(script), str(tmp_path), "train", "pointcat",
                          "--data", str(data), "--output", str(tmp_path / "ddp"), "--epochs", "1",
                          "--batch-size", "4", "--workers", "0", "--device", "cpu", "--no-progress", *SMALL],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for part in ("generator", "fc", "proj", "model"):
        for k in r0[part]:
            assert torch.equal(r0[part][k], r1[part][k]), (part, k)
    assert torch.equal(r0["peaks"], r1["peaks"])
    torch.manual_seed(0 + 2)  # the recipe builds its generator from seed + 2
    init = PointCATNoiseGenerator(128).state_dict()
    assert not torch.equal(r0["generator"]["fc1.weight"], init["fc1.weight"])  # it trained
    assert '"world_size": 2' in (tmp_path / "ddp" / "config.json").read_text()
