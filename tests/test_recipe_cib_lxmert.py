"""The ``cib_lxmert`` recipe: train.sh's defaults, the data it reads (tiny VQA v2 JSON + HDF5 + vocab fixtures
of ``test_data_vqa``), a tiny LXMERT whose BCE + beta * CIB loss falls, the estimators' 100x lr group through
the engine's optimizer and scheduler, and ``pvf train`` / ``pvf eval`` end to end with VQA accuracy,
VQA-Rephrasings consistency and VQA-CE subsets."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from pyvision_fast.train.recipe import ENGINE_DEFAULTS, Config, StepContext
from pyvision_fast.train.recipes import get_recipe, list_recipes
from pyvision_fast.train.recipes.cib_lxmert import RECIPE

from test_data_vqa import write_vqa

TINY = dict(hidden_size=64, num_attention_heads=2, intermediate_size=128, l_layers=1, x_layers=1, r_layers=1,
            vocab_size=40, visual_feat_dim=16)
BOXES = 8      # regions per image in the fixtures (LXMERT's 36 make the all-pairs critic 4x slower)


@pytest.fixture(scope="module")
def vqa(tmp_path_factory):
    return write_vqa(tmp_path_factory.mktemp("vqa"), boxes=BOXES)


def make_recipe(for_eval=False, model_args=None, **overrides):
    cfg = Config(ENGINE_DEFAULTS)
    cfg.update(RECIPE.defaults)
    cfg.update(num_boxes=BOXES)
    cfg.update(model_args={**RECIPE.defaults["model_args"], **TINY, **(model_args or {})}, **overrides)
    return RECIPE(cfg, for_eval=for_eval)


def test_registered_with_train_sh_defaults():
    assert "cib_lxmert" in list_recipes() and get_recipe("cib_lxmert") is RECIPE
    d = RECIPE.defaults
    assert (d["model"], d["opt"], d["lr"], d["batch_size"], d["epochs"], d["warmup_ratio"], d["sched"],
            d["clip_grad"], d["beta"], d["mi_lr_scale"], d["max_seq_length"], d["weight_decay"]) == (
        "cib_lxmert", "adamw", 2e-5, 64, 10, 0.1, "cosine", 5.0, 5e-5, 100.0, 20, 0.0)
    assert d["model_args"] == {"cib": True, "mi_lb": "InfoNCE", "club": "free"}
    assert make_recipe().cfg.warmup_epochs == pytest.approx(1.0)          # 10 % of 10 epochs
    assert make_recipe(epochs=3).cfg.warmup_epochs == pytest.approx(0.3)
    assert RECIPE.main_metric == "accuracy" and RECIPE.main_mode == "max"


def test_datasets_and_their_errors(vqa, tmp_path):
    train, val = make_recipe().build_datasets(str(vqa))
    assert len(train) == 24 and len(val) == 8 and train.classes == ["red", "blue", "green", "yes", "no"]
    ids, mask, feats, boxes, target, qid = train[0]
    assert ids.shape == (20,) and feats.shape == (BOXES, 16) and target.shape == (5,)
    # pvf eval needs only the validation files
    only = tmp_path / "val_only"
    only.mkdir()
    for name in ("v2_OpenEnded_mscoco_val2014_questions.json", "v2_mscoco_val2014_annotations.json",
                 "trainval_ans2label.json", "vocab.txt"):
        shutil.copy(vqa / name, only / name)
    (only / "imgfeat").mkdir()
    shutil.copy(vqa / "imgfeat" / "val_obj36.h5", only / "imgfeat" / "val_obj36.h5")
    train, val = make_recipe(for_eval=True).build_datasets(str(only))
    assert train is None and len(val) == 8
    with pytest.raises(FileNotFoundError, match="training needs .*train2014_questions.json"):
        make_recipe().build_datasets(str(only))
    with pytest.raises(FileNotFoundError, match="--data .*nowhere"):
        make_recipe().build_datasets(str(tmp_path / "nowhere"))
    (only / "vocab.txt").unlink()
    with pytest.raises(FileNotFoundError, match="bert-base-uncased's vocab.txt"):
        make_recipe(for_eval=True).build_datasets(str(only))
    with pytest.raises(ValueError, match="missing_features must be"):
        make_recipe(missing_features="skip").build_datasets(str(vqa))
    with pytest.raises(FileNotFoundError, match="lxmert-base-uncased"):
        make_recipe(lxmert_weights=str(tmp_path / "model_LXRT.pth")).build_model(5)


def test_tiny_cib_lxmert_loss_falls(vqa):
    torch.manual_seed(0)
    recipe = make_recipe()
    train, _ = recipe.build_datasets(str(vqa))
    model = recipe.build_model(len(train.classes))
    groups = recipe.param_groups(model)
    assert len(groups) == 2 and groups[1]["lr_scale"] == 100.0
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in model.parameters())
    batch = torch.utils.data.default_collate([train[i] for i in range(len(train))])
    for g in groups:
        g["lr"] = 3e-3 * g.get("lr_scale", 1.0) / 10      # the estimators 10x here (100x of 3e-3 diverges)
    opt = torch.optim.AdamW(groups, lr=3e-3, weight_decay=0.0)
    ctx = StepContext(cfg=recipe.cfg, device=torch.device("cpu"))
    model.train()
    losses, extras = [], []
    for _ in range(12):
        loss, extra = recipe.train_loss(model, batch, ctx)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        losses.append(float(loss.detach()))
        extras.append(extra)
    assert all(math.isfinite(v) for v in losses)
    assert set(extras[0]) == {"bce", "cib", "upper_bound_l", "upper_bound_v", "lower_bound_lv", "skl"}
    # 3.40 at the start (5 answers x BCE of random logits); answering with the answers' marginals would give
    # 2.05, which the slow test below gets well under
    assert np.mean(losses[-3:]) < 0.85 * np.mean(losses[:3]), losses
    # the loss is BCE * num_answers + beta * CIB
    torch.manual_seed(1)
    loss, extra = recipe.train_loss(model, batch, ctx)
    assert float(loss.detach()) == pytest.approx(extra["bce"] + 5e-5 * extra["cib"], rel=1e-5)


def test_estimator_lr_through_the_engine_schedule():
    from pyvision_fast.train.engine import build_optimizer, build_scheduler

    recipe = make_recipe(epochs=10)
    model = recipe.build_model(5)
    opt = build_optimizer(model, recipe, recipe.cfg)
    sched = build_scheduler(opt, recipe.cfg, updates_per_epoch=10)      # 100 updates, 10 of warm-up
    lrs = []
    for step in (0, 5, 10, 55, 100):
        sched.step_update(step)
        lrs.append([g["lr"] for g in opt.param_groups])
    assert lrs[0] == [0.0, 0.0]
    assert lrs[1][0] == pytest.approx(1e-5) and lrs[1][1] == pytest.approx(1e-3)
    assert lrs[2][0] == pytest.approx(2e-5) and lrs[2][1] == pytest.approx(2e-3)
    assert lrs[3][0] == pytest.approx(1e-5, rel=1e-3) and lrs[4][0] == pytest.approx(0.0, abs=1e-12)
    assert all(g["weight_decay"] == 0.0 for g in opt.param_groups)
    plain = make_recipe(model_args={"cib": False})
    assert len(plain.param_groups(plain.build_model(5))) == 1


def _tiny_args():
    return ["--model-arg", *[f"{k}={v}" for k, v in TINY.items()], "--batch-size", "8", "--workers", "0",
            "--no-progress", "--set", f"num_boxes={BOXES}"]


def test_pvf_train_and_eval_end_to_end(vqa, tmp_path, capsys):
    from pyvision_fast.cli import main

    out = tmp_path / "run"
    rc = main(["train", "cib_lxmert", "--data", str(vqa), "--output", str(out), "--epochs", "2", "--lr",
               "1e-3", *_tiny_args()])
    assert rc in (0, None)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["beta"] == 5e-5 and cfg["num_classes"] == 5 and cfg["warmup_epochs"] == pytest.approx(0.2)
    header, *rows = (out / "metrics.csv").read_text().splitlines()
    assert "cib" in header and "accuracy" in header
    ckpt = out / "checkpoint-last.safetensors"
    assert ckpt.is_file()
    capsys.readouterr()
    main(["eval", "cib_lxmert", "--data", str(vqa), "--checkpoint", str(ckpt), "--workers", "0",
          "--no-progress", "--set", f"num_boxes={BOXES}", "rephrasings=valrep2014_humans_og",
          "vqa_ce=vqa_ce"])
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("accuracy", "consistency@1", "consistency@2", "consistency@3", "original_accuracy",
                "rephrasing_accuracy", "counterexample_accuracy", "hard_accuracy", "easy_accuracy"):
        assert key in results and (math.isnan(results[key]) or 0 <= results[key] <= 1), key
    assert math.isnan(results["consistency@4"])               # groups of 3 questions have no 4-subsets
    assert results["consistency@1"] >= results["consistency@2"] >= results["consistency@3"]
    # the plain validation split
    main(["eval", "cib_lxmert", "--data", str(vqa), "--checkpoint", str(ckpt), "--workers", "0",
          "--no-progress", "--set", f"num_boxes={BOXES}"])
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= results["accuracy"] <= 1 and "consistency@1" not in results


@pytest.mark.slow
def test_tiny_cib_lxmert_learns_the_colours(vqa, tmp_path, capsys):
    """Longer run: the validation colours (unseen images of the same three classes) are answered."""
    from pyvision_fast.cli import main

    out = tmp_path / "run"
    main(["train", "cib_lxmert", "--data", str(vqa), "--output", str(out), "--epochs", "30", "--lr", "1e-3",
          *_tiny_args()])
    capsys.readouterr()
    main(["eval", "cib_lxmert", "--data", str(vqa), "--checkpoint", str(out / "checkpoint-last.safetensors"),
          "--workers", "0", "--no-progress", "--set", f"num_boxes={BOXES}"])
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert results["accuracy"] > 0.7, results


DDP_SCRIPT = """
import sys, torch
from pyvision_fast import cli
from pyvision_fast.train.recipes.cib_lxmert import CibLxmertRecipe

def on_epoch_end(self, epoch, model, ctx):
    torch.save(model.state_dict(), f"{sys.argv[1]}/rank{ctx.rank}.pt")

CibLxmertRecipe.on_epoch_end = on_epoch_end
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_torchrun_keeps_model_and_estimators_identical_on_every_rank(vqa, tmp_path):
    """torchrun with 2 CPU processes (gloo): each rank draws its own permutations and samples for the CIB
    terms, and DDP's averaged gradients keep LXMERT, the head and the InfoNCE critic equal."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          str(port), str(script), str(tmp_path), "train", "cib_lxmert", "--debug", "--data", str(vqa),
                          "--output", str(tmp_path / "ddp"), "--epochs", "1", "--lr", "1e-3", "--device", "cpu",
                          *_tiny_args()],
                         cwd=root, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert set(r0) == set(r1) and any(k.startswith("mi_lb_estimator.") for k in r0)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    assert '"world_size": 2' in (tmp_path / "ddp" / "config.json").read_text()
