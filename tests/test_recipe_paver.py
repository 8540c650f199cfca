"""The paver recipe end to end on a tiny Wild360 folder in the real layout (MP4 videos, list files, .npy GT):
``pvf extract paver`` (features equal the encoder's on the decoded frames; resumable; settings are not mixed),
``pvf train paver`` (the self-supervised loss falls; only the decoder learns) and ``pvf eval paver`` (the six
saliency metrics as one JSON object); PAVER's windows; every bad input is an error before training."""
import csv
import json

import numpy as np
import pytest
import torch

pytest.importorskip("av")

from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from pyvision_fast.cli import main  # noqa: E402
from pyvision_fast.data.video import read_video  # noqa: E402
from pyvision_fast.models import create_model  # noqa: E402
from pyvision_fast.train.recipe import ENGINE_DEFAULTS, Config  # noqa: E402
from pyvision_fast.train.recipes.paver import RECIPE, clip_heatmap, window_spans  # noqa: E402
from test_data_wild360 import write_wild360  # noqa: E402

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, decoder_heads=2)
TINY_ARGS = ["--model-arg", *(f"{k}={v}" for k, v in TINY.items())]


@pytest.fixture(scope="module")
def wild(tmp_path_factory):
    """Wild360 with 32x64 videos (train 30 + 25 frames, test 27 frames) and the weights of a tiny encoder;
    returns (root, encoder weights path)."""
    root = write_wild360(tmp_path_factory.mktemp("wild360"), train={"tr_a": 30, "tr_b": 25},
                         test={"te_a": 27}, h=32, gt_h=16)
    torch.manual_seed(1)
    encoder = create_model("paver", **TINY).encoder
    weights = root.parent / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(weights))
    return root, weights


def extract(root, weights, capsys, *extra):
    rc = main(["extract", "paver", "--data", str(root), "--output", str(root / "features"), "--checkpoint",
               str(weights), "--device", "cpu", "--no-progress", *TINY_ARGS, *extra])
    captured = capsys.readouterr()
    return rc, captured


def test_window_spans_and_clip_heatmap():
    assert window_spans(0, 25, 5) == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 25)]
    assert window_spans(25, 32, 5) == [(25, 30), (27, 32)]    # the last window moves back
    assert window_spans(50, 53, 5) == []                      # a clip shorter than a window is dropped
    torch.manual_seed(0)
    model = create_model("paver", **TINY).eval()
    feats = torch.randn(1, 13, 33, 32)
    with torch.no_grad():
        got = clip_heatmap(model, feats, 5)
        assert got.shape == (1, 13, 32, 64)
        assert torch.allclose(got[:, :5], model(feats[:, :5]), atol=1e-6)
        assert torch.allclose(got[:, 5:10], model(feats[:, 5:10]), atol=1e-6)
        assert torch.allclose(got[:, 10:], model(feats[:, 8:13])[:, 2:], atol=1e-6)


def test_extract_train_eval(wild, tmp_path, capsys):
    root, weights = wild
    rc, out = extract(root, weights, capsys)
    assert rc == 0, out.err
    summary = json.loads(out.out.strip().splitlines()[-1])
    assert sorted(summary["written"]) == ["te_a", "tr_a", "tr_b"] and summary["skipped"] == []
    assert summary["gt_written"] == ["te_a"]
    with safe_open(str(root / "features" / "gt" / "te_a.safetensors"), framework="pt") as f:
        assert tuple(f.get_slice("gt").get_shape()) == (27, 120, 240)
    # the features are the frozen encoder's on the decoded, resized frames (float16 by default)
    model = create_model("paver", **TINY, encoder_checkpoint=str(weights)).eval()
    frames = read_video(root / "data" / "test" / "te_a.mp4", indices=[0, 26], size=(32, 64))
    expected = model.encode(model.preprocess(frames)[None])[0]
    stored = load_file(str(root / "features" / "te_a.safetensors"))
    assert stored["frame"].shape == (27, 32, 32) and stored["cls"].shape == (27, 32)
    assert stored["frame"].dtype == torch.float16
    got = torch.cat([stored["cls"][[0, 26], None], stored["frame"][[0, 26]]], 1).float()
    assert torch.allclose(got, expected, atol=2e-2, rtol=1e-2)
    # resumable: a second run skips every video; other settings are refused, not mixed in
    rc, out = extract(root, weights, capsys)
    assert rc == 0
    again = json.loads(out.out.strip().splitlines()[-1])
    assert sorted(again["skipped"]) == ["te_a", "tr_a", "tr_b"] and again["gt_written"] == []
    rc, out = extract(root, weights, capsys, "--dtype", "float32")
    assert rc == 2 and "extracted with other settings" in out.err

    run = tmp_path / "run"
    args = ["paver", "--data", str(root), *TINY_ARGS, "--workers", "0", "--device", "cpu", "--no-progress"]
    rc = main(["train", *args, "--output", str(run), "--epochs", "3", "--set", "lr=3e-3"])
    captured = capsys.readouterr()
    assert rc in (0, None), captured.err
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    losses = [float(r["loss"]) for r in rows if r["split"] == "train"]
    assert len(losses) == 3 and losses[2] < 0.8 * losses[0], losses
    config = json.loads((run / "config.json").read_text())
    assert config["opt"] == "adam" and config["sched"] == "none" and config["batch_size"] == 1
    assert config["model_args"] == {**TINY, "num_frame": 5}  # what pvf eval rebuilds the model with
    assert config["updates_per_epoch"] == 11  # windows: 5 + 1 (frames 25..30) of tr_a, 5 of tr_b
    # the checkpoint holds the decoder alone (paver_decoder), which learned; behind the encoder
    # (create_model("paver", decoder_checkpoint=...)) it decodes features as it did in training
    trained = load_file(str(run / "checkpoint-last.safetensors"))
    torch.manual_seed(0)
    initial = create_model("paver", **TINY).decoder.state_dict()
    assert trained.keys() == initial.keys()
    assert any(not torch.equal(trained[k], initial[k]) for k in trained)
    full = create_model("paver", **TINY, encoder_checkpoint=str(weights),
                        decoder_checkpoint=str(run / "checkpoint-last.safetensors")).eval()
    decoder = create_model("paver_decoder", **{k: v for k, v in TINY.items() if k not in ("depth", "num_heads")})
    decoder.load_state_dict(trained)
    feats = torch.randn(1, 5, 33, 32)
    with torch.no_grad():
        assert torch.equal(full(feats), decoder.eval()(feats))

    # PAVER's own settings (lr 2e-7) for one epoch leave the decoder as initialised, whose relative relations
    # single out the moving blob the GT follows: pvf eval scores it far above chance on every metric
    paper = tmp_path / "paper"
    rc = main(["train", *args, "--output", str(paper), "--epochs", "1"])
    assert rc in (0, None), capsys.readouterr().err
    capsys.readouterr()
    rc = main(["eval", "paver", "--data", str(root), "--workers", "0", "--device", "cpu", "--checkpoint",
               str(paper / "checkpoint-last.safetensors")])
    captured = capsys.readouterr()
    assert rc in (0, None), captured.err
    results = json.loads(captured.out.strip().splitlines()[-1])
    assert set(results) == {"loss", "auc_borji", "auc_judd", "cc", "sim", "nss", "kld", "frames",
                            "undefined_frames"}
    assert results["frames"] == 27 and results["undefined_frames"] == 0
    assert results["auc_judd"] > 0.9 and results["auc_borji"] > 0.85 and results["cc"] > 0.4
    assert results["nss"] > 1.5 and results["sim"] > 0.25 and 0 < results["kld"] < 2
    val = [r for r in csv.DictReader(open(paper / "metrics.csv")) if r["split"] == "val"][-1]
    assert float(val["cc"]) == pytest.approx(results["cc"], abs=1e-6)
    # pvf eval reads only the test split's features: it runs with the training videos' features gone
    moved = {root / "features" / f"{vid}.safetensors": tmp_path / f"{vid}.safetensors" for vid in ("tr_a", "tr_b")}
    for src, dst in moved.items():
        src.rename(dst)
    try:
        rc = main(["eval", "paver", "--data", str(root), "--workers", "0", "--device", "cpu", "--checkpoint",
                   str(paper / "checkpoint-last.safetensors")])
    finally:  # the folder is shared with the other tests of this module
        for src, dst in moved.items():
            dst.rename(src)
    captured = capsys.readouterr()
    assert rc in (0, None), captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["cc"] == pytest.approx(results["cc"], abs=1e-6)


def make_cfg(**over) -> Config:
    cfg = Config(ENGINE_DEFAULTS)
    cfg.update(RECIPE.defaults)
    cfg.update(model_args=dict(TINY), workers=0)
    cfg.update(over)
    return cfg


def test_recipe_groups_and_bad_inputs(wild, tmp_path, capsys):
    root, weights = wild
    if not (root / "features" / "te_a.safetensors").is_file():
        assert extract(root, weights, capsys)[0] == 0
    recipe = RECIPE(make_cfg())
    train, val = recipe.build_datasets(str(root))
    assert type(recipe.build_model(None)).__name__ == "PAVERDecoder"  # the default: every parameter trains
    full = RECIPE(make_cfg(model="paver"))
    full.build_datasets(str(root))
    model = full.build_model(None)  # the full model: its frozen encoder stays out of the optimizer
    groups = full.param_groups(model)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in groups[0]["params"]} == trainable
    assert len(trainable) < len(list(model.parameters())) and groups[0]["weight_decay"] == 1e-3
    x, gt, meta = train[0]
    assert x.shape == (5, 33, 32) and gt.numel() == 0
    x, gt, meta = val[1]
    assert x.shape == (2, 33, 32) and gt.shape == (2, 120, 240) and meta["start"] == 25

    with pytest.raises(FileNotFoundError, match="run `pvf extract paver"):
        RECIPE(make_cfg(features=str(tmp_path / "nowhere"))).build_datasets(str(root))
    with pytest.raises(ValueError, match="batch_size=2"):
        RECIPE(make_cfg(batch_size=2)).build_datasets(str(root))
    other = RECIPE(make_cfg(model_args={**TINY, "embed_dim": 16}))
    other.build_datasets(str(root))
    with pytest.raises(ValueError, match="extract and train with the same"):
        other.build_model(None)
    rc = main(["train", "paver", "--data", str(root), "--output", str(tmp_path / "r"), *TINY_ARGS, "--set",
               f"features={tmp_path / 'nowhere'}"])
    assert rc == 2 and "pvf extract paver" in capsys.readouterr().err
    rc = main(["extract", "paver", "--data", str(tmp_path / "missing"), "--output", str(tmp_path / "f"),
               "--device", "cpu", *TINY_ARGS])
    assert rc == 2 and "missing" in capsys.readouterr().err
    rc, out = extract(root, tmp_path / "no_weights.safetensors", capsys)
    assert rc == 2 and "no_weights.safetensors" in out.err
    with safe_open(str(root / "features" / "tr_a.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["model_args"]) == TINY


def _ddp_worker(rank: int, folder: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = create_model("paver", **TINY)
        recipe = RECIPE(make_cfg())
        ddp = torch.nn.parallel.DistributedDataParallel(recipe.training_module(model))
        x = torch.randn(1, 5, 33, 32, generator=torch.Generator().manual_seed(rank))
        loss, _ = recipe.train_loss(ddp, (x, torch.zeros(1, 0), {}), None)
        loss.backward()
        grads = {k: p.grad for k, p in model.named_parameters() if p.requires_grad}
        torch.save(grads, f"{folder}/grad{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_train_loss_through_ddp_forward(tmp_path):
    """One process: the DDP-wrapped training module returns the model's loss; the model's forward is the
    heatmap still."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = create_model("paver", **TINY)
        recipe = RECIPE(make_cfg())
        ddp = torch.nn.parallel.DistributedDataParallel(recipe.training_module(model))
        x = torch.randn(1, 5, 33, 32)
        loss, parts = recipe.train_loss(ddp, (x, torch.zeros(1, 0), {}), None)
        assert loss.item() == pytest.approx(model.loss(x)[0].item(), rel=1e-6)
        assert set(parts) == {"loss_cls", "loss_spatial", "loss_temporal"}
        loss.backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
        assert model(x).shape == (1, 5, 32, 64)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_train_loss_synchronises_gradients_under_ddp(tmp_path):
    """``PAVER.loss`` goes through DistributedDataParallel's forward, so two processes end with the mean of
    their windows' gradients."""
    torch.multiprocessing.spawn(_ddp_worker, args=(str(tmp_path),), nprocs=2)
    grads = [torch.load(tmp_path / f"grad{r}.pt") for r in range(2)]
    expected = {}
    for rank in range(2):
        torch.manual_seed(0)
        model = create_model("paver", **TINY)
        x = torch.randn(1, 5, 33, 32, generator=torch.Generator().manual_seed(rank))
        model.loss(x)[0].backward()
        for k, p in model.named_parameters():
            if p.requires_grad:
                expected[k] = expected.get(k, 0) + p.grad / 2
    assert grads[0].keys() == expected.keys()
    for k in expected:
        assert torch.allclose(grads[0][k], grads[1][k])
        assert torch.allclose(grads[0][k], expected[k], atol=1e-6)
