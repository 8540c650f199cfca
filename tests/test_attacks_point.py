"""Point-cloud attacks (I-FGM, MI-FGM, C&W, drop, jitter, added points), the SOR/SRS defences and the
robustness table, on a tiny classifier trained here to tell solids apart."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from pointcloud_fixtures import sample_solid
from pyvision_fast.attacks.point import add_noise_points, cw_perturb, drop_points, ifgm, jitter_points, mifgm
from pyvision_fast.attacks.point_defense import (evaluate_point_robustness, format_robustness_table, sor,
                                                 sor_mask, srs)

N = 128
SHAPES = ("sphere", "cube", "cylinder", "cone")


class TinyNet(nn.Module):
    num_features = 32

    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(3, 64), nn.ReLU(), nn.Linear(64, 32))
        self.bn = nn.BatchNorm1d(32)
        self.fc3 = nn.Linear(32, num_classes)

    def forward(self, points):
        feature = torch.relu(self.bn(self.mlp(points).amax(1)))
        return feature, self.fc3(feature)


def _clouds(per_class: int, seed: int):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(SHAPES)), per_class)
    pts = np.stack([sample_solid(SHAPES[k], N, rng)[:, :3] for k in labels])
    pts /= np.abs(pts).max()
    return torch.from_numpy(pts), torch.from_numpy(labels)


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    x, y = _clouds(16, 0)
    model = TinyNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(80):
        loss = nn.functional.cross_entropy(model(x)[1], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    model.eval()
    xt, yt = _clouds(8, 1)
    return model, xt, yt


def _acc(model, x, y):
    with torch.no_grad():
        return float((model(x)[1].argmax(1) == y).float().mean())


def test_the_tiny_model_learned(trained):
    model, x, y = trained
    assert _acc(model, x, y) >= 0.9


@pytest.mark.parametrize("attack", [ifgm, mifgm])
def test_fgm_attacks_stay_in_budget_and_reduce_accuracy(trained, attack):
    model, x, y = trained
    model.train()
    adv = attack(model, x, y, budget=0.08, iters=10)
    assert model.training and model.bn.training  # the attack ran in eval mode and restored the flags
    model.eval()
    radius = 0.08 * math.sqrt(3 * N)
    dist = (adv - x).flatten(1).norm(dim=1)
    assert (dist <= radius * (1 + 1e-5)).all()
    assert _acc(model, adv, y) < _acc(model, x, y) - 0.3
    assert all(p.grad is None for p in model.parameters())


def test_smaller_budget_is_respected_too(trained):
    model, x, y = trained
    adv = ifgm(model, x, y, budget=0.005, iters=5)
    assert ((adv - x).flatten(1).norm(dim=1) <= 0.005 * math.sqrt(3 * N) * (1 + 1e-5)).all()


def test_cw_finds_close_misclassified_clouds(trained):
    model, x, y = trained
    adv, dist = cw_perturb(model, x, y, binary_steps=3, iters=30, lr=1e-2)
    found = torch.isfinite(dist)
    assert found.float().mean() >= 0.5
    with torch.no_grad():
        pred = model(adv)[1].argmax(1)
    assert (pred[found] != y[found]).all()
    torch.testing.assert_close(dist[found], (adv - x).flatten(1).norm(dim=1)[found], rtol=1e-5, atol=1e-6)
    assert torch.equal(adv[~found], x[~found])
    assert _acc(model, adv, y) < _acc(model, x, y) - 0.3


def test_random_attacks_shapes_and_bounds():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 50, 3)
    dropped = drop_points(x, 20, generator=g)
    assert dropped.shape == (3, 30, 3)
    for b in range(3):  # every kept point is one of the cloud's own, none twice
        match = (dropped[b][:, None] == x[b][None]).all(-1)
        assert (match.sum(1) == 1).all() and (match.sum(0) <= 1).all()
    jit = jitter_points(x, sigma=0.5, clip=0.1, generator=g)
    assert (jit - x).abs().max() <= 0.1 + 1e-7 and (jit - x).abs().max() > 0.05
    added = add_noise_points(x, 7, generator=g)
    assert added.shape == (3, 57, 3) and torch.equal(added[:, :50], x)
    lo, hi = x.amin(1, keepdim=True), x.amax(1, keepdim=True)
    assert ((added[:, 50:] >= lo) & (added[:, 50:] <= hi)).all()
    with pytest.raises(ValueError, match="num_drop"):
        drop_points(x, 50)
    with pytest.raises(ValueError, match="NaN"):
        drop_points(torch.full((1, 4, 3), float("nan")), 1)


def _sor_reference(cloud: np.ndarray, k: int, alpha: float) -> np.ndarray:
    d = ((cloud[:, None] - cloud[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    score = np.sort(d, axis=1)[:, :k].mean(1)
    return score <= score.mean() + alpha * score.std(ddof=1)


def test_sor_removes_planted_outliers_and_matches_a_brute_force_reference():
    rng = np.random.default_rng(0)
    cloud = sample_solid("sphere", 300, rng)[:, :3]
    outliers = np.array([[3.0, 0, 0], [0, -3.0, 0], [2.0, 2.0, 2.0], [0, 0, 4.0], [-2.5, 2.5, 0]], np.float32)
    planted = np.concatenate([cloud, outliers])
    x = torch.from_numpy(planted[None])
    mask = sor_mask(x, k=2, alpha=1.1)[0]
    assert not mask[300:].any()
    assert mask[:300].float().mean() > 0.8
    assert np.array_equal(mask.numpy(), _sor_reference(planted.astype(np.float64), 2, 1.1))
    cleaned = sor(x, generator=torch.Generator().manual_seed(0))
    assert cleaned.shape == (1, 305, 3)
    assert (cleaned[0].norm(dim=1) < 1.5).all()  # only sphere points, some repeated to refill
    assert sor(x, num_points=64).shape == (1, 64, 3)


def test_srs_drops_random_points():
    x = torch.rand(2, 40, 3)
    out = srs(x, num_drop=15, generator=torch.Generator().manual_seed(1))
    assert out.shape == (2, 25, 3)
    assert ((out[0][:, None] == x[0][None]).all(-1).sum(1) == 1).all()


def test_robustness_table_on_the_tiny_model(trained):
    model, x, y = trained
    dataset = torch.utils.data.TensorDataset(x, y)
    res = evaluate_point_robustness(model, dataset, torch.device("cpu"), samples=16, batch_size=8,
                                    attack_iters=5, cw_binary_steps=2, cw_iters=10, drop_num=64, add_num=10,
                                    srs_drop=32)
    assert res["robust_samples"] == 16
    assert res["robust/clean/none"] == pytest.approx(_acc(model, x[:16], y[:16]))
    attacks = ("clean", "ifgm", "mifgm", "cw", "drop", "add", "jitter")
    cells = {f"robust/{a}/{d}" for a in attacks for d in ("none", "sor", "srs")}
    assert set(res) == cells | {"robust_samples"}
    assert all(0.0 <= v <= 1.0 for k, v in res.items() if k.startswith("robust/"))
    assert res["robust/ifgm/none"] < res["robust/clean/none"]
    table = format_robustness_table(res)
    lines = table.splitlines()
    assert lines[0].split() == ["attack", "none", "sor", "srs"]
    assert [ln.split()[0] for ln in lines[1:8]] == list(attacks)
    assert f"{100 * res['robust/ifgm/sor']:.2f}%" in lines[2]
    with pytest.raises(ValueError, match="unknown attacks"):
        evaluate_point_robustness(model, dataset, torch.device("cpu"), attacks="ifgm,pgd")
