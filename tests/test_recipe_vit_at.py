"""The vit_at recipe (light recipe for robust ViTs): defaults from the official config, [0, 1] data with
normalisation inside the model, the adversarial-only training loss, the ε schedule through ctx.epoch, TRADES,
clean/PGD/AutoAttack evaluation, and `pvf train vit_at` / `pvf eval vit_at` end to end on a tiny ImageFolder."""
import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyvision_fast import attacks as A
from pyvision_fast.models import create_model
from pyvision_fast.train.recipe import ENGINE_DEFAULTS, Config, StepContext
from pyvision_fast.train.recipes.vit_at import RECIPE

TINY = dict(patch_size=8, depth=2, embed_dim=32, num_heads=2)


def make_cfg(**over):
    cfg = Config(ENGINE_DEFAULTS)
    cfg.update(RECIPE.defaults)
    cfg.update(model="vit_tiny_patch16_224", model_args=dict(TINY), img_size=32, num_classes=4)
    cfg.update(over)
    return cfg


def ctx_for(cfg, epoch=10):
    return StepContext(cfg=cfg, device=torch.device("cpu"), epoch=epoch)


def batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g), torch.arange(n) % 4


def test_defaults_follow_the_official_config():
    cfg = make_cfg()
    r = RECIPE(cfg)
    assert cfg.weight_decay == 0.5 and cfg.label_smoothing == 0.1
    assert cfg.epochs == 100 and cfg.cooldown_epochs == 10  # + 10 cool-down epochs at min_lr
    assert cfg.warmup_epochs == 10 and cfg.warmup_lr == 1e-6 and cfg.min_lr == 1e-5 and cfg.sched == "cosine"
    assert cfg.blr * 512 / 256 == pytest.approx(5e-4)  # lr 5e-4 at the global batch 512
    assert cfg.mixup == 0 and cfg.cutmix == 0 and cfg.drop_path == 0.05
    assert r.eps == pytest.approx(4 / 255) and cfg.attack_steps == 1
    assert r.step_size == pytest.approx(1.5 * 4 / 255)
    assert (cfg.eps_schedule, cfg.eps_schedule_period, cfg.zero_eps_epochs) == ("linear", 10, 0)
    assert cfg.eval_attack_steps == 10 and RECIPE.main_metric == "robust_accuracy"


def test_eps_strings_and_bad_values():
    assert RECIPE(make_cfg(attack_eps="8/255")).eps == pytest.approx(8 / 255)
    with pytest.raises(ValueError, match="/255"):
        RECIPE(make_cfg(attack_eps=4))
    for bad in (dict(loss="mart"), dict(attack_norm="l1"), dict(eps_schedule="cosine"), dict(attack_eps="x")):
        with pytest.raises(ValueError):
            RECIPE(make_cfg(**bad))


def test_transforms_give_unnormalised_images_without_heavy_augmentation():
    from PIL import Image

    r = RECIPE(make_cfg())
    img = Image.fromarray((torch.rand(40, 48, 3) * 255).byte().numpy())
    for training in (True, False):
        t = r.transforms(training)
        names = repr(t)
        for heavy in ("RandAugment", "RandomErasing", "AutoAugment", "AugMix"):
            assert heavy not in names
        out = t(img)
        assert out.shape == (3, 32, 32) and out.min() >= 0 and out.max() <= 1
    assert "RandomResizedCrop" in repr(r.transforms(True)) and "bicubic" in repr(r.transforms(True)).lower()


def test_model_normalises_inside_and_keeps_registry_keys():
    cfg = make_cfg(drop_path=0.0)
    torch.manual_seed(0)
    model = RECIPE(cfg).build_model(4).eval()
    torch.manual_seed(0)
    plain = create_model("vit_tiny_patch16_224", img_size=32, num_classes=4, **TINY).eval()
    assert list(model.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(model.state_dict())
    x, _ = batch()
    mean, std = torch.tensor(cfg.mean).view(1, 3, 1, 1), torch.tensor(cfg.std).view(1, 3, 1, 1)
    assert torch.allclose(model(x), plain((x - mean) / std), atol=1e-5)
    dp = RECIPE(make_cfg()).build_model(4)
    assert dp.blocks[-1].drop_path1.drop_prob == pytest.approx(0.05)


class Recorder:
    """Forward pre-hook recording (training flag, input) of each call."""

    def __init__(self, model):
        self.calls = []
        model.register_forward_pre_hook(lambda m, args: self.calls.append((m.training, args[0].detach().clone())),
                                        prepend=True)  # before the normalisation hook: the [0, 1] input


def test_train_loss_is_the_adversarial_loss_only():
    cfg = make_cfg(drop_path=0.0, attack_random_start=False)
    r = RECIPE(cfg)
    torch.manual_seed(0)
    model = r.build_model(4).train()
    rec = Recorder(model)
    x, y = batch()
    loss, extra = r.train_loss(model, (x, y), ctx_for(cfg, epoch=10))
    assert extra["attack_eps"] == pytest.approx(4 / 255)
    # one attack forward in eval mode, then one training forward on x_adv in train mode
    assert [c[0] for c in rec.calls] == [False, True] and model.training
    x_adv = rec.calls[-1][1]
    assert (x_adv - x).abs().max() == pytest.approx(4 / 255, rel=1e-4)
    expected_adv = A.pgd(model, x, y, eps=4 / 255, steps=1, step_size=1.5 * 4 / 255, random_start=False)
    assert torch.allclose(x_adv, expected_adv)
    assert torch.allclose(loss, F.cross_entropy(model(x_adv), y, label_smoothing=0.1), atol=1e-6)
    assert not torch.allclose(loss, F.cross_entropy(model(x), y, label_smoothing=0.1), atol=1e-4)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_train_loss_follows_the_eps_schedule():
    cfg = make_cfg(drop_path=0.0)
    r = RECIPE(cfg)
    model = r.build_model(4).train()
    x, y = batch()
    for epoch, eps in ((0, 0.0), (5, 2 / 255), (12, 4 / 255)):
        rec = Recorder(model)
        _, extra = r.train_loss(model, (x, y), ctx_for(cfg, epoch))
        assert extra["attack_eps"] == pytest.approx(eps)
        assert (rec.calls[-1][1] - x).abs().max() <= eps + 1e-6
        model._forward_pre_hooks.pop(next(iter(model._forward_pre_hooks)))  # the recorder (prepended)
    # epoch 0: ε = 0, so the step trains on the clean images and the model is not even run by the attack
    rec = Recorder(model)
    loss, _ = r.train_loss(model, (x, y), ctx_for(cfg, 0))
    assert len(rec.calls) == 1 and torch.equal(rec.calls[0][1], x)
    assert torch.allclose(loss, F.cross_entropy(model(x), y, label_smoothing=0.1), atol=1e-6)


def test_trades_option():
    cfg = make_cfg(drop_path=0.0, loss="trades", attack_random_start=False, label_smoothing=0.0)
    r = RECIPE(cfg)
    model = r.build_model(4).train()
    x, y = batch()
    loss, _ = r.train_loss(model, (x, y), ctx_for(cfg))
    ref, _, _ = A.trades_loss(model, x, y, eps=4 / 255, steps=1, step_size=1.5 * 4 / 255, beta=6.0,
                              random_start=False)
    assert torch.allclose(loss, ref, atol=1e-6) and model.training


@pytest.fixture
def fast_square(monkeypatch):
    """AutoAttack's Square stage makes 5000 queries per robust image: ~85 s for 4 images of a linear model on the
    shared 2-core CPU. Tests that can reach it lower it to 50 queries: they check the wiring (which attacks, the
    count, the keys), not Square's strength. Everything else stays the standard version."""
    build = RECIPE.build_autoattack

    def patched(self, model, num_classes):
        aa = build(self, model, num_classes)
        for a in aa._autoattack.attacks:
            if type(a).__name__ == "Square":
                a.n_queries = 50
        return aa

    monkeypatch.setattr(RECIPE, "build_autoattack", patched)


def test_eval_reports_clean_pgd_and_autoattack(fast_square):
    cfg = make_cfg(eval_samples=4, drop_path=0.0, attack_eps="64/255")
    r = RECIPE(cfg)
    torch.manual_seed(0)
    model = r.build_model(4).eval()
    x, y = batch(6)
    with torch.no_grad():  # make 4 of the 6 labels the model's own predictions so the attacks have work to do
        y = model(x).argmax(-1)
        y[4:] = (y[4:] + 1) % 4
    metrics = r.build_metrics(4)
    ctx = ctx_for(cfg)
    loss = r.eval_update(model, (x, y), metrics, ctx)
    res = {k: float(v) for k, v in metrics.compute().items()}
    assert res["accuracy"] == pytest.approx(4 / 6) and 0 <= res["robust_accuracy"] <= res["accuracy"]
    assert torch.isfinite(loss)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    extra = r.evaluate_extra(model, loader, ctx)
    assert extra["autoattack_samples"] == 4 and extra["autoattack_accuracy"] == 0.0  # ε = 64/255 breaks all
    assert not model.training
    # repeated evaluations of the same weights agree (the PGD start is re-seeded)
    metrics.reset()
    r.eval_update(model, (x, y), metrics, ctx)
    assert float(metrics.compute()["robust_accuracy"]) == res["robust_accuracy"]
    assert RECIPE(make_cfg(eval_samples=None)).evaluate_extra(model, loader, ctx) == {}


class Linear(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.num_classes = w.shape[0]
        self.fc = nn.Linear(w.shape[1], w.shape[0], bias=False)
        self.fc.weight.data.copy_(w)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_autoattack_extremes_on_a_known_model(fast_square):
    """A linear model on 4-class data whose margin is known: with ε far below the margin AutoAttack leaves every
    image correct; with ε far above it, none."""
    torch.manual_seed(0)
    d = 3 * 4 * 4
    w = torch.zeros(4, d)
    for k in range(4):
        w[k, k * 12:(k + 1) * 12] = 1.0
    y = torch.arange(4)
    x = torch.full((4, 3, 4, 4), 0.3)
    xf = x.view(4, -1)
    for k in range(4):
        xf[k, k * 12:(k + 1) * 12] = 0.7  # margin: 12 · 0.4 = 4.8 logit units; L∞ ε needed ≈ 0.2
    model = Linear(w)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    for eps, expected in (("1/255", 1.0), (0.35, 0.0)):
        cfg = make_cfg(eval_samples=4, attack_eps=eps, num_classes=4)
        out = RECIPE(cfg).evaluate_extra(model, loader, ctx_for(cfg))
        assert out == {"autoattack_accuracy": expected, "autoattack_samples": 4}


def test_autoattack_target_classes():
    model = Linear(torch.randn(1000, 12))
    aa = RECIPE(make_cfg(num_classes=1000)).build_autoattack(model, 1000)
    subs = {type(a).__name__: a for a in aa._autoattack.attacks}
    assert set(subs) == {"APGD", "APGDT", "FAB", "Square"}
    assert subs["APGDT"].n_target_classes == 9 and subs["FAB"].n_target_classes == 9
    with pytest.warns(UserWarning, match="APGD-T"):
        aa3 = RECIPE(make_cfg(num_classes=3)).build_autoattack(Linear(torch.randn(3, 12)), 3)
    assert "APGDT" not in {type(a).__name__ for a in aa3._autoattack.attacks}


# ---------------------------------------------------------------- end to end
def _image_folder(root, n_classes=4, n_train=4, n_val=2):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for k in range(n_classes):
            folder = root / split / f"class{k}"
            folder.mkdir(parents=True)
            for i in range(n):
                img = np.full((36, 36, 3), 40 * k, np.uint8) + rng.integers(0, 30, (36, 36, 3), dtype=np.uint8)
                Image.fromarray(img).save(folder / f"{i}.png")
    return root


def test_pvf_train_and_eval_vit_at_end_to_end(tmp_path, fast_square):
    engine = pytest.importorskip("pyvision_fast.train.engine")
    from pyvision_fast.train.config import build_parser

    data = _image_folder(tmp_path / "data")
    out = tmp_path / "run"
    model_args = ["--model-arg"] + [f"{k}={v}" for k, v in TINY.items()]
    common = ["--data", str(data), "--model", "vit_tiny_patch16_224", *model_args, "--img-size", "32",
              "--batch-size", "8", "--workers", "0", "--no-progress", "--device", "cpu"]
    results = engine.train(build_parser("train").parse_args(
        ["vit_at", *common, "--output", str(out), "--epochs", "1",
         "--set", "eps_schedule=constant", "eval_attack_steps=2", "warmup_epochs=0",
         "cooldown_epochs=0"]))
    assert {"accuracy", "robust_accuracy"} <= set(results)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["weight_decay"] == 0.5 and cfg["attack_steps"] == 1 and cfg["mixup"] == 0
    assert (out / "checkpoint-last.safetensors").exists() and "robust_accuracy" in (out / "metrics.csv").read_text()
    ev = engine.evaluate_checkpoint(build_parser("eval").parse_args(
        ["vit_at", *common, "--checkpoint", str(out / "checkpoint-last.safetensors"), "--eval-samples", "4",
         "--set", "eval_attack_steps=2"]))
    assert {"accuracy", "robust_accuracy", "autoattack_accuracy"} <= set(ev) and ev["autoattack_samples"] == 4
    assert ev["autoattack_accuracy"] <= ev["accuracy"] + 1e-9 or ev["accuracy"] == 0
