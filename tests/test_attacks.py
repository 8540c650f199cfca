"""pyvision_fast.attacks: ε schedules (the light recipe's formulas), PGD L∞/L2 bounds and box, attack strength,
model-mode restoration, no parameter gradients, random start, autocast, TRADES, input normalisation."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyvision_fast import attacks as A

EPS = 4 / 255


# ---------------------------------------------------------------- schedules
def test_linear_schedule_epochs_0_5_10():
    vals = [A.eps_at_epoch(e, EPS, "linear", period=10) for e in (0, 5, 10, 11, 99)]
    assert vals[0] == 0.0
    assert vals[1] == pytest.approx(EPS / 2)
    assert vals[2:] == [EPS, EPS, EPS]
    assert A.eps_at_epoch(3, EPS, "linear", 10) == pytest.approx(0.3 * EPS)


def test_sine_schedule_values():
    f = A.make_eps_schedule("sine", EPS, period=10)
    assert f(0) == pytest.approx(0.0, abs=1e-12)
    assert f(5) == pytest.approx(EPS / 2)
    assert f(10) == EPS and f(50) == EPS
    # 0.5·ε·(1 + sin(π(0.2 − 0.5)))
    assert f(2) == pytest.approx(0.5 * EPS * (1 - math.sin(0.3 * math.pi)))
    seq = [f(e) for e in range(11)]
    assert all(a < b for a, b in zip(seq, seq[1:]))
    # sine is below linear in the first half, above it in the second
    assert f(2) < A.eps_at_epoch(2, EPS, "linear", 10) and f(8) > A.eps_at_epoch(8, EPS, "linear", 10)


@pytest.mark.parametrize("name", ["linear", "sine"])
def test_zero_eps_epochs_official_boundaries(name):
    f = A.make_eps_schedule(name, EPS, period=10, zero_eps_epochs=2)
    assert f(0) == 0.0 and f(1) == 0.0
    assert f(2) == pytest.approx(0.0, abs=1e-12)  # the ramp starts from 0 at e = zero
    if name == "linear":
        # (e − zero)/period, not /(period − zero): 0.7·ε at epoch 9, then the jump to ε at epoch 10
        assert f(6) == pytest.approx(0.4 * EPS)
        assert f(9) == pytest.approx(0.7 * EPS)
    assert f(10) == EPS


def test_constant_and_degenerate_schedules():
    assert A.eps_at_epoch(0, EPS, "constant", 10) == EPS
    assert A.eps_at_epoch(0, EPS, "linear", period=0) == EPS
    assert A.eps_at_epoch(4, EPS, "linear", period=3, zero_eps_epochs=5) == 0.0
    assert A.eps_at_epoch(5, EPS, "linear", period=3, zero_eps_epochs=5) == EPS
    assert A.default_step_size(EPS, 1) == pytest.approx(1.5 * EPS)
    assert A.default_step_size(EPS, 3) == pytest.approx(0.5 * EPS)


@pytest.mark.parametrize("kwargs", [dict(schedule="cosine"), dict(eps=-1.0), dict(period=-1), dict(period=2.5),
                                    dict(zero_eps_epochs=-1), dict(epoch=-1)])
def test_schedule_bad_arguments(kwargs):
    args = dict(epoch=0, eps=EPS, schedule="linear", period=10, zero_eps_epochs=0)
    args.update(kwargs)
    with pytest.raises(ValueError):
        A.eps_at_epoch(**args)


# ---------------------------------------------------------------- models
class ModeProbe(nn.Module):
    """Linear classifier on (B, 3, 8, 8) that records its training flag at each forward."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, num_classes)
        self.frozen = nn.Dropout(0.0)
        self.seen = []

    def forward(self, x):
        self.seen.append(self.training)
        return self.fc(self.frozen(x.flatten(1)))


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    pattern = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(99)).sign() * 0.15  # same for all sets
    x = (0.5 + (2 * y.float() - 1).view(-1, 1, 1, 1) * pattern + 0.05 * torch.randn(n, 3, 8, 8, generator=g))
    return x.clamp(0, 1), y


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 32), nn.ReLU(), nn.Linear(32, 2))
    x, y = _data(256)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    xt, yt = _data(64, seed=1)
    assert (model(xt).argmax(1) == yt).float().mean() > 0.95
    return model, xt, yt


# ---------------------------------------------------------------- bounds
@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("random_start", [True, False])
def test_linf_projection_bound_and_box(trained, steps, random_start):
    model, x, y = trained
    x = x.clone()
    x[:, 0, 0, :] = 0.0  # pixels on the box edges
    x[:, 1, 0, :] = 1.0
    eps = 0.03
    xa = A.pgd(model, x, y, eps=eps, steps=steps, step_size=0.05, random_start=random_start)
    d = xa - x
    assert d.abs().max() <= eps + 1e-7
    assert xa.min() >= 0 and xa.max() <= 1
    assert d.abs().max() > 0.9 * eps  # the attack moves
    assert xa.dtype == x.dtype and xa.shape == x.shape and not xa.requires_grad


@pytest.mark.parametrize("random_start", [True, False])
def test_l2_projection_bound_per_sample(trained, random_start):
    model, x, y = trained
    eps = 0.5
    xa = A.pgd(model, x, y, eps=eps, steps=4, step_size=0.4, norm="l2", random_start=random_start)
    norms = (xa - x).flatten(1).norm(dim=1)
    assert (norms <= eps * (1 + 1e-5)).all()
    assert norms.min() > 0.5 * eps  # moved towards the sphere (x is away from the box edges)
    assert xa.min() >= 0 and xa.max() <= 1


def test_project_alone():
    x = torch.full((2, 3, 4, 4), 0.5)
    far = x + torch.randn(2, 3, 4, 4)
    p = A.project(x, far, 0.2, "l2", clamp=None)
    assert torch.allclose((p - x).flatten(1).norm(dim=1), torch.full((2,), 0.2), atol=1e-5)
    p = A.project(x, far, 0.2, "linf", clamp=(0.4, 0.6))
    assert (p - x).abs().max() <= 0.1 + 1e-7
    with pytest.raises(ValueError):
        A.project(x, far, 0.2, "l1")


# ---------------------------------------------------------------- strength
@pytest.mark.parametrize("norm,eps", [("linf", 0.2), ("l2", 3.0)])
def test_attack_beats_random_noise_of_same_norm(trained, norm, eps):
    model, x, y = trained
    g = torch.Generator().manual_seed(3)
    xa = A.pgd(model, x, y, eps=eps, steps=5, step_size=eps / 2, norm=norm, random_start=False)
    if norm == "linf":
        noise = x + eps * torch.randint(0, 2, x.shape, generator=g).float().mul(2).sub(1)
    else:
        n = torch.randn(x.shape, generator=g)
        noise = x + eps * n / n.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    noise = noise.clamp(0, 1)
    with torch.no_grad():
        l_clean = F.cross_entropy(model(x), y)
        l_adv = F.cross_entropy(model(xa), y)
        l_noise = F.cross_entropy(model(noise), y)
        acc_adv = (model(xa).argmax(1) == y).float().mean()
        acc_noise = (model(noise).argmax(1) == y).float().mean()
    assert l_adv > 2 * l_noise and l_adv > 2 * l_clean
    assert acc_adv < 0.5 and acc_noise > 0.9


def test_targeted_lowers_target_loss(trained):
    model, x, y = trained
    t = 1 - y
    xa = A.pgd(model, x, t, eps=0.08, steps=5, step_size=0.04, targeted=True, random_start=False)
    with torch.no_grad():
        assert F.cross_entropy(model(xa), t) < F.cross_entropy(model(x), t)


def test_soft_targets_match_hard_labels(trained):
    model, x, y = trained
    logits = model(x)
    soft = F.one_hot(y, 2).float()
    assert torch.allclose(A.ce_attack_loss(logits, soft), A.ce_attack_loss(logits, y), rtol=1e-5)
    assert torch.allclose(A.ce_attack_loss(logits, y), F.cross_entropy(logits, y, reduction="sum"), rtol=1e-5)
    xa_soft = A.pgd(model, x, soft, eps=0.05, steps=2, random_start=False)
    xa_hard = A.pgd(model, x, y, eps=0.05, steps=2, random_start=False)
    assert torch.allclose(xa_soft, xa_hard)
    with pytest.raises(ValueError):
        A.ce_attack_loss(logits, torch.rand(len(y), 5))


# ---------------------------------------------------------------- side effects
@pytest.mark.parametrize("eval_mode", [True, False])
@pytest.mark.parametrize("start_training", [True, False])
def test_model_mode_restored(eval_mode, start_training):
    model = ModeProbe()
    model.train(start_training)
    model.frozen.eval()  # a submodule deliberately in eval stays so
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    A.pgd(model, x, y, eps=0.1, steps=2, eval_mode=eval_mode)
    assert model.seen == [start_training and not eval_mode] * 2
    assert model.training == start_training and model.fc.training == start_training
    assert model.frozen.training is False


def test_mode_restored_on_error():
    model = ModeProbe().train()
    with pytest.raises((IndexError, RuntimeError)):
        A.pgd(model, torch.rand(2, 3, 8, 8), torch.tensor([0, 9]), eps=0.1, steps=1, eval_mode=True)
    assert model.training


def test_no_parameter_gradients(trained):
    model, x, y = trained
    A.pgd(model, x, y, eps=0.05, steps=2)
    assert all(p.grad is None for p in model.parameters())
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    A.pgd(model, x, y, eps=0.05, steps=2, norm="l2")
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in model.parameters())
    model.zero_grad(set_to_none=True)


def test_input_untouched_and_works_without_grad(trained):
    model, x, y = trained
    x0 = x.clone()
    with torch.no_grad():
        a = A.pgd(model, x, y, eps=0.05, steps=2, random_start=False)
    with torch.inference_mode():
        xi, yi = x.clone(), y.clone()
        b = A.pgd(model, xi, yi, eps=0.05, steps=2, random_start=False)
    assert torch.equal(x, x0)
    assert torch.allclose(a, b) and (a - x).abs().max() > 0


# ---------------------------------------------------------------- random start
def test_random_start_prob_zero_is_deterministic(trained):
    model, x, y = trained
    a = A.pgd(model, x, y, eps=0.05, steps=2, random_start=0.0)
    torch.manual_seed(123)
    b = A.pgd(model, x, y, eps=0.05, steps=2, random_start=0.0)
    assert torch.equal(a, b)
    assert torch.equal(A.pgd(model, x, y, eps=0.05, steps=0, random_start=False), x)
    moved = A.pgd(model, x, y, eps=0.05, steps=0, random_start=True)
    assert (moved - x).abs().max() > 0.04


def test_random_start_generator_reproducible(trained):
    model, x, y = trained
    a = A.pgd(model, x, y, eps=0.05, steps=1, generator=torch.Generator().manual_seed(1))
    b = A.pgd(model, x, y, eps=0.05, steps=1, generator=torch.Generator().manual_seed(1))
    c = A.pgd(model, x, y, eps=0.05, steps=1, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_probability_per_batch_and_per_sample(norm):
    x = torch.full((16, 3, 4, 4), 0.5)
    y = torch.zeros(16, dtype=torch.long)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 2))
    g = torch.Generator().manual_seed(0)
    batch_moved, sample_fracs = [], []
    for _ in range(40):
        xa = A.pgd(model, x, y, eps=0.1, steps=0, norm=norm, random_start=0.8, generator=g)
        moved = (xa - x).flatten(1).abs().amax(1) > 0
        assert moved.all() or not moved.any()  # easyrobust: one coin per batch
        batch_moved.append(bool(moved.all()))
        xs = A.pgd(model, x, y, eps=0.1, steps=0, norm=norm, random_start=0.8, random_start_per_sample=True,
                   generator=g)
        sample_fracs.append(((xs - x).flatten(1).abs().amax(1) > 0).float().mean().item())
    assert 0.55 < sum(batch_moved) / 40 < 0.98
    assert 0.65 < sum(sample_fracs) / 40 < 0.92 and any(0 < f < 1 for f in sample_fracs)
    if norm == "l2":  # the L2 start lies on the ε-sphere (x = 0.5 is far from the box)
        assert torch.allclose((xa - x).flatten(1).norm(dim=1)[moved], torch.tensor(0.1), atol=1e-5)


@pytest.mark.parametrize("kwargs", [dict(norm="l1"), dict(eps=-0.1), dict(steps=-1), dict(random_start=1.5)])
def test_pgd_bad_arguments(kwargs):
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 2))
    args = dict(eps=0.1, steps=1)
    args.update(kwargs)
    with pytest.raises(ValueError):
        A.pgd(model, torch.rand(2, 3, 4, 4), torch.tensor([0, 1]), **args)
    with pytest.raises(TypeError):
        A.pgd(model, torch.zeros(2, 3, 4, 4, dtype=torch.long), torch.tensor([0, 1]), eps=0.1, steps=1)


def test_eps_zero_returns_input(trained):
    model, x, y = trained
    model[1].register_forward_hook(lambda *a: (_ for _ in ()).throw(AssertionError("model ran")))
    try:
        assert torch.equal(A.pgd(model, x, y, eps=0.0, steps=3), x)
    finally:
        model[1]._forward_hooks.clear()


def test_under_autocast_bfloat16(trained):
    model, x, y = trained
    with torch.autocast("cpu", dtype=torch.bfloat16):
        xa = A.pgd(model, x, y, eps=0.05, steps=2, random_start=False)
    assert xa.dtype == torch.float32
    assert (xa - x).abs().max() <= 0.05 + 1e-7 and (xa - x).abs().max() > 0.04
    with torch.no_grad():
        assert F.cross_entropy(model(xa), y) > F.cross_entropy(model(x), y)


# ---------------------------------------------------------------- TRADES
def test_trades_loss(trained):
    model, x, y = trained
    loss0, logits, logits_adv = A.trades_loss(model, x, y, eps=0.05, steps=2, beta=0.0)
    assert torch.allclose(loss0, F.cross_entropy(model(x), y))
    loss, logits, logits_adv = A.trades_loss(model, x, y, eps=0.05, steps=2, beta=6.0, random_start=False)
    kl = F.kl_div(F.log_softmax(logits_adv, -1), F.softmax(logits, -1), reduction="batchmean")
    assert kl > 0 and torch.allclose(loss, F.cross_entropy(logits, y) + 6.0 * kl, rtol=1e-5)
    # the attack maximises the KL: larger than for random noise of the same L∞ size
    noise = (x + 0.05 * torch.randint(0, 2, x.shape).float().mul(2).sub(1)).clamp(0, 1)
    with torch.no_grad():
        kl_noise = F.kl_div(F.log_softmax(model(noise), -1), F.softmax(model(x), -1), reduction="batchmean")
    assert kl > kl_noise
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad(set_to_none=True)


# ---------------------------------------------------------------- normalisation inside the model
def test_input_normalization_keeps_keys():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    x = torch.rand(2, 3, 8, 8)
    base(x)
    keys = list(base.state_dict())
    ref = base((x - torch.tensor(A.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(A.IMAGENET_STD).view(1, 3, 1, 1))
    model = A.add_input_normalization(base)
    assert model is base and A.has_input_normalization(model)
    assert list(model.state_dict()) == keys
    assert torch.allclose(model(x), ref, atol=1e-6)
    import copy
    assert torch.allclose(copy.deepcopy(model)(x), ref, atol=1e-6)
    with pytest.raises(ValueError):
        A.add_input_normalization(model)
