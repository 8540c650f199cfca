"""The training engine: sampler sharding, parameter groups, schedules, the weights_only train state, exact resume
(with EMA, accumulation and clipping on), and DDP under torchrun equal to one process with the global batch."""
import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_fixtures import NO_AUG, TINY_VIT, write_image_folder

from pyvision_fast import cli
from pyvision_fast.models import create_model, read_state_dict
from pyvision_fast.train import Config, ENGINE_DEFAULTS, get_recipe
from pyvision_fast.train import checkpoint as ckpt
from pyvision_fast.train.distributed import ShardSampler
from pyvision_fast.train.engine import build_optimizer, build_scheduler

ROOT = Path(__file__).resolve().parent.parent


def _cfg(**kw) -> Config:
    cfg = Config(ENGINE_DEFAULTS)
    cfg.update(get_recipe("classify").defaults)
    cfg.update(model="vit_tiny_patch16_224", lr=1e-3, **kw)
    return cfg


def _tiny_vit():
    return create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2,
                        num_classes=4)


@pytest.mark.parametrize("shuffle", [False, True])
def test_shard_sampler_ranks_partition_the_single_process_batches(shuffle):
    single = ShardSampler(22, shuffle=shuffle, seed=3)
    ranks = [ShardSampler(22, r, 2, shuffle=shuffle, seed=3) for r in range(2)]
    for s in (single, *ranks):
        s.set_epoch(5)
    order = list(single)
    shards = [list(s) for s in ranks]
    assert sorted(order) == list(range(22)) and [len(s) for s in ranks] == [11, 11]
    for k in range(3):  # batch k of 2*4 in one process == union of the ranks' batch k of 4
        assert sorted(order[8 * k:8 * k + 8]) == sorted(shards[0][4 * k:4 * k + 4] + shards[1][4 * k:4 * k + 4])
    assert (list(single) == list(range(22))) != shuffle
    single.set_epoch(6)
    assert (list(single) != order) == shuffle
    odd = [list(ShardSampler(5, r, 2, shuffle=False)) for r in range(2)]
    assert odd == [[0, 2, 4], [1, 3]]  # nothing padded or repeated (evaluation counts each image once)
    padded = [list(ShardSampler(5, r, 2, shuffle=False, pad=True)) for r in range(2)]
    assert padded == [[0, 2, 4], [1, 3, 0]]  # training: every rank takes as many steps
    weighted = ShardSampler(4, weights=torch.tensor([0.0, 0.0, 1.0, 0.0]))
    assert list(weighted) == [2, 2, 2, 2]


def test_param_groups_weight_decay_and_layer_decay():
    model = _tiny_vit()
    recipe = get_recipe("classify")(_cfg())
    opt = build_optimizer(model, recipe, _cfg(weight_decay=0.05))
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    undecayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert "blocks.0.attn.qkv.weight" in decayed and "head.weight" in decayed
    assert {"pos_embed", "cls_token", "blocks.0.norm1.weight", "head.bias"} <= undecayed
    assert len(decayed) + len(undecayed) == len(names)
    opt = build_optimizer(model, recipe, _cfg(layer_decay=0.5))
    scale = {names[id(p)]: g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    # depth 2: stem (layer 0), blocks 0/1 (layers 1/2), head (layer 3 = num_layers, scale 1)
    assert scale["patch_embed.proj.weight"] == pytest.approx(0.5 ** 3)
    assert scale["blocks.0.mlp.fc1.weight"] == pytest.approx(0.5 ** 2)
    assert scale["blocks.1.mlp.fc1.weight"] == pytest.approx(0.5)
    assert scale["head.weight"] == 1.0


def test_schedule_warms_up_then_cosine_per_update():
    model = _tiny_vit()
    cfg = _cfg(epochs=4, warmup_epochs=1, warmup_lr=0.0, min_lr=1e-5, layer_decay=0.5)
    opt = build_optimizer(model, get_recipe("classify")(cfg), cfg)
    sched = build_scheduler(opt, cfg, updates_per_epoch=10)
    lrs = []
    for step in range(41):
        sched.step_update(step)
        lrs.append(max(g["lr"] for g in opt.param_groups))
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(5e-4) and lrs[10] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[40] == pytest.approx(1e-5)
    assert min(g["lr"] for g in opt.param_groups) == pytest.approx(1e-5 * 0.5 ** 3)  # lr_scale applied
    step = build_scheduler(opt, _cfg(epochs=4, sched="multistep", decay_milestones=(2, 3), warmup_epochs=0),
                           updates_per_epoch=10)
    step.step_update(25)
    assert max(g["lr"] for g in opt.param_groups) == pytest.approx(1e-4)
    poly = build_scheduler(opt, _cfg(epochs=2, sched="poly", min_lr=0.0, warmup_epochs=0), updates_per_epoch=10)
    for t in (5, 19):  # DeepLab's poly: lr (1 - t/T)^0.9, times each group's lr_scale
        poly.step_update(t)
        assert max(g["lr"] for g in opt.param_groups) == pytest.approx(1e-3 * (1 - t / 20) ** 0.9)


def test_cooldown_epochs_train_at_min_lr_after_the_schedule(tmp_path):
    """--epochs 2 with cooldown_epochs=1 trains 3 epochs: the cosine spans the first 2 (4 updates) and ends at
    min_lr, where the cool-down epoch stays (timm's cooldown_epochs)."""
    data = write_image_folder(tmp_path / "data", n_train=1, n_val=1)  # 4 images: 2 updates per epoch
    out = tmp_path / "run"
    assert cli.main(["train", "classify", "--data", str(data), *TINY_VIT, *NO_AUG, "--epochs", "2",
                     "--batch-size", "2", "--workers", "0", "--lr", "1e-3", "--no-progress", "--output", str(out),
                     "--set", "warmup_epochs=0", "min_lr=1e-5", "cooldown_epochs=1"]) == 0
    rows = [r for r in csv.DictReader((out / "metrics.csv").open()) if r["split"] == "train"]
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[0] == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5)) and lrs[1] == pytest.approx(1e-5) and lrs[2] == pytest.approx(1e-5)
    assert torch.load(out / ckpt.TRAIN_STATE, weights_only=True)["step"] == 6


def test_train_state_rng_round_trip_is_weights_only(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    state = ckpt.rng_state()
    ckpt.save_train_state(tmp_path / "s.pt", {"rng": state, "epoch": 2})
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(9), random.seed(9), np.random.seed(9)
    loaded = torch.load(tmp_path / "s.pt", weights_only=True)
    ckpt.set_rng_state(loaded["rng"])
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]
    assert np.random.rand() == expected[2]
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary file was renamed, not left behind


class _Crash(BaseException):
    """A simulated process death: not an Exception, so pvf's one-line error handling lets it through."""


def test_resume_is_exact(tmp_path, monkeypatch):
    """4 epochs straight == 2 epochs, a crash, then --resume: identical weights, EMA and metrics. Everything
    random is on (shuffling, RandAugment, random erasing, Mixup/CutMix, drop-path), with EMA, gradient
    accumulation and clipping."""
    data = write_image_folder(tmp_path / "data", n_train=4, n_val=2)
    args = ["train", "classify", "--data", str(data), *TINY_VIT, "--epochs", "4", "--batch-size", "4",
            "--workers", "0", "--lr", "1e-3", "--no-progress", "--model-arg", "drop_path_rate=0.1",
            "--set", "warmup_epochs=1", "ema_decay=0.9", "accum_steps=2", "clip_grad=0.5", "mixup=0.5", "cutmix=0.5"]
    assert cli.main([*args, "--output", str(tmp_path / "straight")]) == 0

    recipe_cls = get_recipe("classify")
    original = recipe_cls.on_epoch_start

    def crash_at_epoch_2(self, epoch, model, ctx):
        if epoch == 2:
            raise _Crash
        original(self, epoch, model, ctx)

    monkeypatch.setattr(recipe_cls, "on_epoch_start", crash_at_epoch_2)
    with pytest.raises(_Crash):
        cli.main([*args, "--output", str(tmp_path / "split")])
    monkeypatch.setattr(recipe_cls, "on_epoch_start", original)
    assert torch.load(tmp_path / "split" / ckpt.TRAIN_STATE, weights_only=True)["epoch"] == 2
    assert cli.main([*args, "--output", str(tmp_path / "split"), "--resume", str(tmp_path / "split")]) == 0

    for name in (ckpt.MODEL_LAST, ckpt.EMA_LAST, ckpt.MODEL_BEST):
        a, b = read_state_dict(tmp_path / "straight" / name), read_state_dict(tmp_path / "split" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    ema = read_state_dict(tmp_path / "split" / ckpt.EMA_LAST)
    last = read_state_dict(tmp_path / "split" / ckpt.MODEL_LAST)
    assert not torch.equal(ema["head.weight"], last["head.weight"])
    assert (tmp_path / "straight" / "metrics.csv").read_text() == (tmp_path / "split" / "metrics.csv").read_text()
    st = torch.load(tmp_path / "split" / ckpt.TRAIN_STATE, weights_only=True)
    assert st["epoch"] == 4 and st["step"] == 4 * 2 and set(st["rng"]) >= {"python", "numpy", "torch"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_equal_one_process_with_the_global_batch(tmp_path):
    """SGD, not AdamW: Adam divides by the gradient's own magnitude, so on parameters whose exact gradient is 0
    (the attention's key bias: softmax ignores a constant shift) it turns the ~1e-10 rounding noise of either
    run into steps of ~lr, different in each; SGD keeps the comparison at the gradients' own rounding level."""
    data = write_image_folder(tmp_path / "data", n_train=6, n_val=1)
    common = ["classify", "--data", str(data), *TINY_VIT, *NO_AUG, "--epochs", "1", "--workers", "0",
              "--lr", "0.05", "--device", "cpu", "--no-progress", "--set", "warmup_epochs=0", "opt=sgd"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", str(_free_port()), "-m", "pyvision_fast.train", *common,
                          "--batch-size", "4", "--output", str(tmp_path / "ddp")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "pyvision_fast.train", *common, "--batch-size", "8",
                          "--output", str(tmp_path / "one")], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = read_state_dict(tmp_path / "ddp" / ckpt.MODEL_LAST), read_state_dict(tmp_path / "one" / ckpt.MODEL_LAST)
    init = _tiny_vit().state_dict()
    assert max((a[k] - init[k]).abs().max() for k in a) > 1e-4  # the weights moved
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5, msg=k)
    assert '"world_size": 2' in (tmp_path / "ddp" / "config.json").read_text()


def test_recipe_hooks_and_recipe_state_resume_exactly(tmp_path, monkeypatch):
    """on_train_start runs once before the first epoch (skipping its random initialisation when resuming),
    on_epoch_end after every epoch, and the recipe's state_dict is saved with each checkpoint and restored by
    --resume: a run split by a crash ends with the same recipe state and weights as a straight one."""
    data = write_image_folder(tmp_path / "data", n_train=2, n_val=1)
    args = ["train", "classify", "--data", str(data), *TINY_VIT, *NO_AUG, "--epochs", "3", "--batch-size", "4",
            "--workers", "0", "--lr", "1e-3", "--no-progress"]
    recipe_cls = get_recipe("classify")
    calls = []

    def on_train_start(self, model, ctx):
        calls.append(("start", ctx.extra["resuming"]))
        if not ctx.extra["resuming"]:
            self.buffer = torch.randn(3)  # draws from the global RNG, as a prototype initialisation would

    def on_epoch_end(self, epoch, model, ctx):
        calls.append(("end", epoch))
        self.buffer = self.buffer + float(model.head.weight.detach().sum()) + torch.rand(3)

    monkeypatch.setattr(recipe_cls, "on_train_start", on_train_start)
    monkeypatch.setattr(recipe_cls, "on_epoch_end", on_epoch_end)
    monkeypatch.setattr(recipe_cls, "state_dict", lambda self: {"buffer": self.buffer.clone()})
    monkeypatch.setattr(recipe_cls, "load_state_dict", lambda self, state: setattr(self, "buffer", state["buffer"]))
    assert cli.main([*args, "--output", str(tmp_path / "straight")]) == 0
    assert calls == [("start", False), ("end", 0), ("end", 1), ("end", 2)]

    original = recipe_cls.on_epoch_start

    def crash_at_epoch_1(self, epoch, model, ctx):
        if epoch == 1:
            raise _Crash

    calls.clear()
    monkeypatch.setattr(recipe_cls, "on_epoch_start", crash_at_epoch_1)
    with pytest.raises(_Crash):
        cli.main([*args, "--output", str(tmp_path / "split")])
    monkeypatch.setattr(recipe_cls, "on_epoch_start", original)
    assert cli.main([*args, "--output", str(tmp_path / "split"), "--resume", str(tmp_path / "split")]) == 0
    assert calls == [("start", False), ("end", 0), ("start", True), ("end", 1), ("end", 2)]
    straight = torch.load(tmp_path / "straight" / ckpt.TRAIN_STATE, weights_only=True)["recipe_state"]["buffer"]
    split = torch.load(tmp_path / "split" / ckpt.TRAIN_STATE, weights_only=True)["recipe_state"]["buffer"]
    assert torch.equal(straight, split)
    a, b = read_state_dict(tmp_path / "straight" / ckpt.MODEL_LAST), read_state_dict(tmp_path / "split" / ckpt.MODEL_LAST)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_eval_batch_size_sets_the_evaluation_loader_only():
    from pyvision_fast.train.distributed import DistInfo
    from pyvision_fast.train.engine import _loader

    data = torch.utils.data.TensorDataset(torch.arange(10.0))
    cfg = Config(ENGINE_DEFAULTS)
    cfg.update(batch_size=4, workers=0)
    assert [len(b[0]) for b in _loader(data, cfg, DistInfo(), False)] == [4, 4, 2]   # None: batch_size
    cfg.eval_batch_size = 3
    assert [len(b[0]) for b in _loader(data, cfg, DistInfo(), False)] == [3, 3, 3, 1]
    assert [len(b[0]) for b in _loader(data, cfg, DistInfo(), True)] == [4, 4, 2]
    cfg.eval_batch_size = 0
    with pytest.raises(ValueError, match="eval_batch_size must be a positive integer"):
        _loader(data, cfg, DistInfo(), False)
