"""The ``order_free_rnn`` recipe: its defaults, the COCO / NUS-WIDE data it reads (fixtures in the real
formats: instances JSON + JPEGs of coloured shapes whose content is their labels), a tiny Order-Free RNN whose
losses fall in both stages, the evaluation's metrics, and ``pvf train`` / ``pvf eval`` end to end."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from test_data_multilabel import write_coco, write_nuswide

from pyvision_fast.train.recipe import ENGINE_DEFAULTS, Config, StepContext
from pyvision_fast.train.recipes import get_recipe, list_recipes
from pyvision_fast.train.recipes.order_free_rnn import RECIPE

TINY = dict(backbone="timm/test_resnet", grid=3, attention_dim=32, hidden_dim=32, fc_dim=32, dropout=0.0)
SIZE = 48


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    write_coco(root, "train2014", n=24, size=SIZE, seed=0, empty=1)
    write_coco(root, "val2014", n=8, size=SIZE, seed=1, empty=1)
    return root


def make_recipe(**overrides):
    cfg = Config(ENGINE_DEFAULTS)
    cfg.update(RECIPE.defaults)
    cfg.update(model="order_free_rnn", model_args=dict(TINY), img_size=SIZE, **overrides)
    return RECIPE(cfg)


def test_registered_with_stated_defaults():
    assert "order_free_rnn" in list_recipes() and get_recipe("order_free_rnn") is RECIPE
    d = RECIPE.defaults
    assert (d["model"], d["opt"], d["lr"], d["batch_size"], d["epochs"], d["cnn_epochs"], d["beam_size"],
            d["threshold"], d["img_size"], d["dataset"]) == (
        "order_free_rnn_resnet101", "adam", 1e-4, 32, 30, 10, 3, 1e-3, 224, "coco")
    assert RECIPE.main_metric == "O-F1" and RECIPE.main_mode == "max"


def test_datasets_and_their_errors(coco, tmp_path):
    recipe = make_recipe()
    train, val = recipe.build_datasets(str(coco))
    assert len(train) == 24 and len(val) == 8 and train.classes == val.classes and len(train.classes) == 4
    x, y = train[0]
    assert x.shape == (3, SIZE, SIZE) and x.dtype == torch.float32 and y.shape == (4,)
    # timm test_resnet's normalisation (mean 0.5, std 0.5): pixels in [-1, 1]
    assert -1.0 <= float(x.min()) < float(x.max()) <= 1.0
    with pytest.raises(FileNotFoundError, match="--data .*nowhere"):
        make_recipe().build_datasets(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="dataset must be 'coco' or 'nuswide'"):
        make_recipe(dataset="voc").build_datasets(str(coco))
    # evaluation needs only the validation pair; training says what is missing
    only = tmp_path / "val_only"
    (only / "annotations").mkdir(parents=True)
    shutil.copy(coco / "annotations" / "instances_val2014.json", only / "annotations")
    shutil.copytree(coco / "val2014", only / "val2014")
    ev = make_recipe()
    ev.for_eval = True
    train, val = ev.build_datasets(str(only))
    assert train is None and len(val) == 8
    with pytest.raises(FileNotFoundError, match="instances_train2014.json' does not exist"):
        make_recipe().build_datasets(str(only))
    # NUS-WIDE: train = Train list, val = Test list
    nus = tmp_path / "nus"
    write_nuswide(nus)
    train, val = make_recipe(dataset="nuswide").build_datasets(str(nus))
    assert (len(train), len(val), train.classes) == (4, 2, ["animal", "beach", "clouds"])


def _batch(ds):
    return torch.utils.data.default_collate([ds[i] for i in range(len(ds))])


def test_tiny_model_learns_in_both_stages(coco):
    torch.manual_seed(0)
    recipe = make_recipe(cnn_epochs=1, hflip=0.0)
    train, val = recipe.build_datasets(str(coco))
    model = recipe.build_model(len(train.classes)).train()
    x, y = _batch(train)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx = StepContext(cfg=recipe.cfg, device=torch.device("cpu"))
    logs = {"cnn": [], "joint": []}
    for epoch, steps in ((0, 12), (1, 25)):   # epoch 0: CNN stage (BCE); epoch 1: RNN + BCE
        ctx.epoch = epoch
        for _ in range(steps):
            loss, extra = recipe.train_loss(model, (x, y), ctx)
            opt.zero_grad()
            loss.backward()
            opt.step()
            logs[recipe.stage(epoch)].append((float(loss.detach()), extra))
    cnn = [v for v, _ in logs["cnn"]]
    rnn = [e["rnn_nll"] for _, e in logs["joint"]]
    assert set(logs["cnn"][0][1]) == {"bce"} and set(logs["joint"][0][1]) == {"bce", "rnn_nll"}
    assert all(math.isfinite(v) for v in cnn + rnn)
    assert np.mean(cnn[-3:]) < 0.7 * np.mean(cnn[:3]), cnn
    assert np.mean(rnn[-3:]) < 0.7 * np.mean(rnn[:3]), rnn


def test_evaluation_metrics(coco):
    torch.manual_seed(0)
    recipe = make_recipe(beam_size=2)
    _, val = recipe.build_datasets(str(coco))
    model = recipe.build_model(4).eval()
    metrics = recipe.build_metrics(4)
    ctx = StepContext(cfg=recipe.cfg, device=torch.device("cpu"), epoch=20)
    batch = _batch(val)
    loss = recipe.eval_update(model, batch, metrics, ctx)
    out = metrics.compute()
    assert loss.ndim == 0 and math.isfinite(float(loss))
    for key in ("C-P", "C-R", "C-F1", "O-P", "O-R", "O-F1", "mAP"):
        assert 0 <= float(out[key]) <= 1 and 0 <= float(out[f"cnn_{key}"]) <= 1, key
    # the RNN's O-P is that of the decoder's label sets, computed here by hand
    with torch.no_grad():
        pred = model.predict(batch[0], beam_size=2, threshold=recipe.cfg.threshold)["labels"]
    tp = int((pred & batch[1].bool()).sum())
    assert float(out["O-P"]) == pytest.approx(tp / max(int(pred.sum()), 1))
    assert float(out["O-R"]) == pytest.approx(tp / int(batch[1].sum()))


TINY_ARGS = ["--model", "order_free_rnn", "--model-arg", "backbone=timm/test_resnet", "--model-arg", "grid=3",
             "--model-arg", "attention_dim=16", "--model-arg", "hidden_dim=16", "--model-arg", "fc_dim=16",
             "--img-size", str(SIZE), "--batch-size", "8", "--workers", "0", "--no-progress"]


def test_pvf_train_and_eval_end_to_end(coco, tmp_path, capsys):
    from pyvision_fast.cli import main

    out = tmp_path / "run"
    rc = main(["train", "order_free_rnn", "--data", str(coco), "--output", str(out), "--epochs", "2",
               "--set", "cnn_epochs=1", "--set", "beam_size=2", *TINY_ARGS])
    assert rc in (0, None)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_classes"] == 4 and cfg["opt"] == "adam" and cfg["cnn_epochs"] == 1
    rows = (out / "metrics.csv").read_text()
    assert "rnn_nll" in rows and "O-F1" in rows and "cnn_mAP" in rows
    capsys.readouterr()
    only = tmp_path / "val_only"
    (only / "annotations").mkdir(parents=True)
    shutil.copy(coco / "annotations" / "instances_val2014.json", only / "annotations")
    shutil.copytree(coco / "val2014", only / "val2014")
    main(["eval", "order_free_rnn", "--data", str(only), "--checkpoint",
          str(out / "checkpoint-last.safetensors"), *TINY_ARGS])
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("C-F1", "O-F1", "mAP", "cnn_O-F1"):
        assert 0 <= results[key] <= 1, key


@pytest.mark.slow
def test_learns_held_out_label_sets(tmp_path):
    """Longer training (96 images, 2 CNN epochs then 18 joint epochs of batches of 32): the decoder's label
    sets of 32 held-out images are nearly right, greedy and with beam 3 (measured: O-F1 0.986 for both)."""
    from pyvision_fast.metrics.multilabel import multilabel_map, multilabel_prf

    write_coco(tmp_path, "train2014", n=96, size=SIZE, seed=0, empty=0)
    write_coco(tmp_path, "val2014", n=32, size=SIZE, seed=1, empty=0)
    torch.manual_seed(0)
    recipe = make_recipe(cnn_epochs=2)
    train, val = recipe.build_datasets(str(tmp_path))
    model = recipe.build_model(4).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx = StepContext(cfg=recipe.cfg, device=torch.device("cpu"))
    loader = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True)
    for epoch in range(20):
        ctx.epoch = epoch
        for x, y in loader:
            loss, _ = recipe.train_loss(model, (x, y), ctx)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    xv, yv = _batch(val)
    for k in (1, 3):
        out = model.predict(xv, beam_size=k)
        got = multilabel_prf(out["labels"], yv)
        assert float(got["O-F1"]) >= 0.9 and float(got["C-F1"]) >= 0.85, (k, got)
        assert float(multilabel_map(out["scores"], yv)) >= 0.9


@pytest.mark.slow
def test_torchrun_two_processes_both_stages(coco, tmp_path):
    """DDP (gloo, 2 processes) through both stages: the CNN stage leaves no decoder parameter without a gradient
    (DDP would fail at the next step), and the evaluation gathers the metrics of both ranks."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          str(port), "-m", "pyvision_fast.train", "order_free_rnn", "--data", str(coco),
                          "--output", str(tmp_path / "ddp"), "--epochs", "2", "--set", "cnn_epochs=1",
                          "--set", "beam_size=2", "--device", "cpu", *TINY_ARGS[:-5], "--batch-size", "4",
                          "--workers", "0", "--no-progress"],
                         cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert '"world_size": 2' in (tmp_path / "ddp" / "config.json").read_text()
    rows = (tmp_path / "ddp" / "metrics.csv").read_text()
    assert "rnn_nll" in rows and "O-F1" in rows
