"""The ``scan`` recipe and the ArcFace head: the margin against a direct computation, the face data (identity
folders of real JPEGs made from scikit-image's LFW faces, an LFW-format pairs.txt), a tiny SCAN-IR that
learns, the fused evaluation with its blur report, and ``pvf train`` / ``pvf eval`` end to end."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from pyvision_fast.losses.margin import MarginHead, arcface_logits
from pyvision_fast.models.scan import ScanConv2d
from pyvision_fast.train.recipe import ENGINE_DEFAULTS, Config, StepContext
from pyvision_fast.train.recipes import get_recipe, list_recipes
from pyvision_fast.train.recipes.scan import RECIPE, blur

TINY = dict(widths=(8, 16, 16, 32), num_features=16)
SIZE = 32


# --- the margin head ---------------------------------------------------------------------------------------

def _direct_arcface(cos: np.ndarray, labels: np.ndarray, s: float, m: float, easy: bool) -> np.ndarray:
    """s * cos, the target column replaced by s * cos(theta + m) from theta = arccos(cos) itself; beyond the
    range where cos(theta + m) decreases in theta: cos(theta) (easy margin, cos <= 0) or cos(theta) - m sin(m)
    (theta + m > pi)."""
    out = cos.astype(np.float64).copy()
    for i, y in enumerate(labels):
        c = float(cos[i, y])
        theta = math.acos(c)
        if easy:
            out[i, y] = math.cos(theta + m) if c > 0 else c
        else:
            out[i, y] = math.cos(theta + m) if theta + m < math.pi else c - m * math.sin(m)
    return s * out


def test_arcface_logits_against_direct_computation():
    cos = torch.tensor([[0.9, 0.1, -0.2], [0.3, 0.5, 0.0], [-0.5, 0.2, 0.7], [0.4, -0.95, 0.1]],
                       dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1])  # targets 0.9, 0.3, -0.5 and -0.95 (theta + 0.5 > pi)
    for easy in (False, True):
        got = arcface_logits(cos, labels, 64.0, 0.5, easy_margin=easy)
        np.testing.assert_allclose(got.numpy(), _direct_arcface(cos.numpy(), labels.numpy(), 64, 0.5, easy),
                                   rtol=1e-12, atol=1e-12)
    # m = 0 is the normalised softmax: s * cos everywhere
    torch.testing.assert_close(arcface_logits(cos, labels, 30.0, 0.0), 30 * cos)
    with pytest.raises(ValueError, match="margin m"):
        arcface_logits(cos, labels, 64.0, 2.0)
    with pytest.raises(ValueError, match=r"cos must be \(B, N\)"):
        arcface_logits(cos, labels[:2])


def test_margin_head_module():
    torch.manual_seed(0)
    head = MarginHead(8, 5)
    emb, y = torch.randn(4, 8) * 3, torch.tensor([0, 4, 2, 2])
    cos = torch.nn.functional.normalize(emb, dim=1) @ torch.nn.functional.normalize(head.weight, dim=1).T
    expected = _direct_arcface(cos.double().detach().numpy(), y.numpy(), 64, 0.5, False)
    np.testing.assert_allclose(head(emb, y).detach().numpy(), expected, rtol=1e-4, atol=1e-4)
    loss = head.loss(emb, y)
    loss.backward()
    assert head.weight.grad.abs().sum() > 0
    assert float(head.weight.detach().std()) == pytest.approx(0.01, rel=0.3)  # insightface's N(0, 0.01)
    soft = MarginHead(8, 5, kind="softmax")
    torch.testing.assert_close(soft(emb, y), emb @ soft.weight.T + soft.bias)
    with pytest.raises(ValueError, match="kind must be"):
        MarginHead(8, 5, kind="cosface")
    with pytest.raises(ValueError, match=r"embeddings must be \(B, 8\)"):
        head(torch.randn(4, 7), y)


# --- data ---------------------------------------------------------------------------------------------------

def _face_variant(face: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A 32 x 32 RGB JPEG-able stand-in photo of a 25 x 25 grey LFW face: shifted, re-lit, tinted, noisy."""
    img = np.asarray(Image.fromarray((face * 255).astype(np.uint8)).resize((SIZE, SIZE), Image.BILINEAR),
                     np.float64) / 255
    img = np.roll(img, tuple(rng.integers(-2, 3, size=2)), axis=(0, 1)) * rng.uniform(0.8, 1.2)
    rgb = img[..., None] * rng.uniform(0.85, 1.0, size=3) + rng.normal(0, 0.03, size=(SIZE, SIZE, 3))
    return Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8))


def write_face_data(root, n_ids: int = 4, per_id: int = 6, seed: int = 0):
    """``root/train/id<k>/<i>.jpg`` (identities: LFW faces 0..n_ids-1) and an LFW-format verification set of 2
    folds x (2 same + 2 different) pairs over 6 other people (faces 20..25), ``root/pairs.txt`` +
    ``root/lfw/<name>/<name>_<i:04d>.jpg``."""
    from skimage.data import lfw_subset

    faces = lfw_subset()[:100]
    rng = np.random.default_rng(seed)
    for k in range(n_ids):
        folder = root / "train" / f"id{k}"
        folder.mkdir(parents=True)
        for i in range(per_id):
            _face_variant(faces[k], rng).save(folder / f"{i}.jpg", quality=95)
    names = [f"Person_{c}" for c in "ABCDEF"]
    for j, name in enumerate(names):
        (root / "lfw" / name).mkdir(parents=True)
        for i in (1, 2):
            _face_variant(faces[20 + j], rng).save(root / "lfw" / name / f"{name}_{i:04d}.jpg", quality=95)
    a, b, c, d, e, f = names
    (root / "pairs.txt").write_text("\n".join([
        "2 2", f"{a} 1 2", f"{b} 1 2", f"{a} 1 {b} 2", f"{c} 2 {d} 1",
        f"{c} 1 2", f"{e} 1 2", f"{d} 2 {e} 1", f"{f} 1 {a} 2"]) + "\n")
    return root


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    return write_face_data(tmp_path_factory.mktemp("faces"))


def make_recipe(**overrides):
    cfg = Config(ENGINE_DEFAULTS)
    cfg.update(RECIPE.defaults)
    cfg.update(model="scan_ir18", model_args=dict(TINY), img_size=SIZE, **overrides)
    return RECIPE(cfg)


def test_registered_with_arcface_defaults():
    assert "scan" in list_recipes() and get_recipe("scan") is RECIPE
    d = RECIPE.defaults
    assert (d["model"], d["opt"], d["lr"], d["momentum"], d["weight_decay"], d["batch_size"], d["epochs"],
            d["sched"], tuple(d["decay_milestones"]), d["decay_rate"], d["margin_s"], d["margin_m"],
            d["img_size"]) == ("scan_ir50", "sgd", 0.1, 0.9, 5e-4, 512, 16, "multistep", (9, 14), 0.1, 64.0,
                               0.5, 112)
    assert RECIPE.main_metric == "accuracy" and RECIPE.main_mode == "max"


def test_datasets_and_their_errors(faces, tmp_path):
    train, val = make_recipe().build_datasets(str(faces))
    assert len(train) == 24 and train.classes == ["id0", "id1", "id2", "id3"]
    x, y = train[0]
    assert x.shape == (3, SIZE, SIZE) and x.dtype == torch.float32
    assert -1.0 <= float(x.min()) < float(x.max()) <= 1
    assert len(val) == 8 and val.targets == [1, 1, 0, 0] * 2 and val.folds == [0] * 4 + [1] * 4
    pairs, label, index, fold = val[6]
    assert pairs.shape == (2, 3, SIZE, SIZE) and (label, index, fold) == (0, 6, 1)
    with pytest.raises(FileNotFoundError, match="--data .*nowhere"):
        make_recipe().build_datasets(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither train/"):
        make_recipe().build_datasets(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="head must be"):
        make_recipe(head="cosface").build_datasets(str(faces))
    # a pairs-only folder: evaluation works, training says what is missing
    only = tmp_path / "lfw_only"
    shutil.copytree(faces / "lfw", only / "lfw")
    shutil.copy(faces / "pairs.txt", only / "pairs.txt")
    recipe = make_recipe()
    recipe.for_eval = True  # as pvf eval builds it: the training split is left out
    train, val = recipe.build_datasets(str(only))
    assert train is None and len(val) == 8
    with pytest.raises(FileNotFoundError, match="training needs DATA/train/<identity>/<image>"):
        make_recipe().build_datasets(str(only))
    # a bad line is reported with its file and line before anything is built
    text = (only / "pairs.txt").read_text().splitlines()
    text[3] = "Person_A 1 Person_B"
    (only / "pairs.txt").write_text("\n".join(text) + "\n")
    with pytest.raises(ValueError, match=r"pairs.txt:4: image number 'Person_B'"):
        recipe.build_datasets(str(only))


def test_tiny_scan_learns_the_identities(faces):
    torch.manual_seed(0)
    recipe = make_recipe()
    train, _ = recipe.build_datasets(str(faces))
    model = recipe.build_model(4)
    assert isinstance(model.backbone.conv1, ScanConv2d) and model.head.num_classes == 4
    assert "backbone.conv1.log_sigma" in model.no_weight_decay()
    x = torch.stack([train[i][0] for i in range(len(train))])
    y = torch.tensor(train.targets)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    ctx = StepContext(cfg=recipe.cfg, device=torch.device("cpu"))
    sigma0 = model.backbone.conv1.sigma().detach().clone()
    model.train()
    losses = []
    for _ in range(10):
        loss, extra = recipe.train_loss(model, (x, y), ctx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert extra == {} and all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3]), losses
    assert not torch.equal(model.backbone.conv1.sigma(), sigma0)  # the scales are learned


def test_fused_evaluation_with_blur_report(faces):
    torch.manual_seed(0)
    recipe = make_recipe(blur_sigmas=(0.0, 1.0, 4.0))
    _, val = recipe.build_datasets(str(faces))
    model = recipe.build_model(4).eval()
    metrics = recipe.build_metrics(4)
    ctx = StepContext(cfg=recipe.cfg, device=torch.device("cpu"))
    batch = torch.utils.data.default_collate([val[i] for i in range(len(val))])
    loss = recipe.eval_update(model, batch, metrics, ctx)
    assert loss.ndim == 0 and 0 <= float(loss) <= 4
    assert not any(isinstance(m, ScanConv2d) for m in recipe._fused.modules())  # the fused network ran
    out = metrics.compute()
    for prefix in ("", "blur1_", "blur4_"):
        for key in ("accuracy", "accuracy_std", "threshold", "tar@far=0.001"):
            assert f"{prefix}{key}" in out, (prefix, key)
        assert 0 <= out[f"{prefix}accuracy"] <= 1
    assert "blur0_accuracy" not in out
    # blurring changes the scores: the clean and sigma-4 metrics saw different inputs
    clean = metrics["clean"].scores[0]
    blurred = metrics["blur4"].scores[0]
    assert (clean - blurred).abs().max() > 1e-3
    # the clean scores are those of the unfused model with flip fusion
    with torch.no_grad():
        flat = batch[0].flatten(0, 1)
        e = model.backbone(flat) + model.backbone(flat.flip(3))
        e = torch.nn.functional.normalize(e, dim=1).view(8, 2, -1)
    torch.testing.assert_close(clean, (e[:, 0] * e[:, 1]).sum(1).double(), rtol=1e-4, atol=1e-4)


def test_blur_is_a_normalised_gaussian():
    x = torch.zeros(1, 1, 1, 41, 41)
    x[..., 20, 20] = 1.0
    y = blur(x, 2.0)[0, 0, 0]
    assert float(y.sum()) == pytest.approx(1.0, abs=1e-5)
    # second moment along a row through the centre of a separable Gaussian: sigma^2
    row = y[20] / y[20].sum()
    pos = torch.arange(41.0) - 20
    assert float((row * pos ** 2).sum()) == pytest.approx(4.0, rel=0.05)
    assert torch.equal(blur(x, 0.0), x)


TINY_ARGS = ["--model", "scan_ir18", "--model-arg", "widths=(8, 16, 16, 32)", "--model-arg",
             "num_features=16",
             "--img-size", str(SIZE), "--batch-size", "8", "--workers", "0", "--no-progress"]


def test_pvf_train_and_eval_end_to_end(faces, tmp_path, capsys):
    from pyvision_fast.cli import main

    out = tmp_path / "run"
    rc = main(["train", "scan", "--data", str(faces), "--output", str(out), "--epochs", "1", *TINY_ARGS,
               "--set", "decay_milestones=()"])
    assert rc in (0, None)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["opt"] == "sgd" and cfg["margin_s"] == 64.0 and cfg["num_classes"] == 4
    assert (out / "checkpoint-last.safetensors").is_file()
    capsys.readouterr()
    only = tmp_path / "lfw_only"
    shutil.copytree(faces / "lfw", only / "lfw")
    shutil.copy(faces / "pairs.txt", only / "pairs.txt")
    main(["eval", "scan", "--data", str(only), "--checkpoint", str(out / "checkpoint-last.safetensors"),
          *TINY_ARGS])
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("accuracy", "tar@far=0.001", "blur1_accuracy", "blur2_accuracy", "blur4_accuracy"):
        assert 0 <= results[key] <= 1, key


def test_fused_backbone_follows_the_weights():
    recipe = make_recipe()
    model = recipe.build_model(4).eval()
    ctx = StepContext(cfg=recipe.cfg, device=torch.device("cpu"))
    first = recipe._inference_backbone(model, ctx)
    assert recipe._inference_backbone(model, ctx) is first  # unchanged weights: fused once
    with torch.no_grad():
        model.backbone.conv1.scale_logits[:, 0].add_(1.0)  # an optimizer step changes parameters in place
    second = recipe._inference_backbone(model, ctx)
    assert second is not first and not torch.allclose(second.conv1.weight, first.conv1.weight)
    torch.testing.assert_close(second.conv1.weight, model.backbone.conv1.weight())
