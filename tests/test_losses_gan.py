"""``pyvision_fast.losses.gan``: the non-saturating losses against their closed forms, R1 and the path length
against analytic gradients (and R1's parameter gradient through the StyleGAN2 discriminator against finite
differences in float64), the official EMA rule, bad input."""
from __future__ import annotations

import pytest
import torch

from pyvision_fast.losses.gan import (d_nonsaturating_loss, ema_beta, g_nonsaturating_loss,
                                      path_length_penalty,
                                      r1_penalty)


def test_nonsaturating_losses_equal_log_sigmoid():
    real = torch.tensor([2.0, -1.0, 0.5])
    fake = torch.tensor([[0.3], [-2.0], [1.0]])
    want_g = -torch.log(torch.sigmoid(fake)).mean()
    want_d = -torch.log(1 - torch.sigmoid(fake)).mean() - torch.log(torch.sigmoid(real)).mean()
    torch.testing.assert_close(g_nonsaturating_loss(fake), want_g)
    torch.testing.assert_close(d_nonsaturating_loss(real, fake), want_d)
    # large logits stay finite (softplus, not log(sigmoid))
    assert torch.isfinite(d_nonsaturating_loss(torch.tensor([-200.0]), torch.tensor([200.0])))
    # a discriminator that separates well has a lower loss than one that does not
    assert d_nonsaturating_loss(real + 5, fake - 5) < d_nonsaturating_loss(real - 5, fake + 5)


def test_r1_penalty_is_the_squared_input_gradient():
    torch.manual_seed(0)
    a = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    logits = (x * a).flatten(1).sum(1) + (x ** 2).flatten(1).sum(1)
    r1 = r1_penalty(logits, x)
    want = (a + 2 * x).square().flatten(1).sum(1)
    torch.testing.assert_close(r1, want)
    # differentiable in the parameters: d/da sum_n |a + 2 x_n|^2 = sum_n 2 (a + 2 x_n)
    (ga,) = torch.autograd.grad(r1.sum(), a)
    torch.testing.assert_close(ga, (2 * (a + 2 * x)).sum(0))


def _central_difference(fn, p, idx, eps: float = 1e-6) -> float:
    """(fn(p + eps e_idx) - fn(p - eps e_idx)) / 2 eps, leaving p as it was."""
    with torch.no_grad():
        p[idx] += eps
    up = fn().item()
    with torch.no_grad():
        p[idx] -= 2 * eps
    down = fn().item()
    with torch.no_grad():
        p[idx] += eps
    return (up - down) / (2 * eps)


def test_r1_through_the_discriminator_matches_finite_differences():
    """The parameter gradient of R1 through ``StyleGAN2Discriminator`` (float64; the fused ops' double backward) against
    central differences of the penalty: the double backward of the whole network is right."""
    from pyvision_fast.models.stylegan2_disc import StyleGAN2Discriminator

    torch.manual_seed(0)
    d = StyleGAN2Discriminator(img_resolution=8, channel_base=64, channel_max=8, mbstd_group_size=2,
                               conv_clamp=None).double()
    x0 = torch.randn(2, 3, 8, 8, dtype=torch.float64)

    def penalty():
        x = x0.clone().requires_grad_(True)
        return r1_penalty(d(x), x).sum()

    p = d.b8.conv0.weight
    (grad,) = torch.autograd.grad(penalty(), p)
    for idx in [(0, 0, 1, 1), (3, 2, 0, 2), (7, 5, 2, 0)]:
        assert grad[idx].item() == pytest.approx(_central_difference(penalty, p, idx), rel=1e-5, abs=1e-9)


def test_path_length_of_a_linear_generator():
    """img = (ws mean over layers) @ A: the gradient is A y / L for each of the L layers, so the length (root
    of the mean over layers of the squared norms) is |A y| / L."""
    torch.manual_seed(1)
    N, L, D = 3, 4, 5
    A = torch.randn(D, 2 * 2 * 2, dtype=torch.float64)
    ws = torch.randn(N, L, D, dtype=torch.float64, requires_grad=True)
    img = (ws.mean(1) @ A).reshape(N, 2, 2, 2)
    y = torch.randn(N, 2, 2, 2, dtype=torch.float64)
    pl_mean = torch.tensor(0.3, dtype=torch.float64)
    penalty, new_mean = path_length_penalty(img, ws, pl_mean, decay=0.1, noise=y)
    lengths = (y.flatten(1) @ A.T).norm(dim=1) / L      # each layer's gradient is A y / L
    want_mean = 0.3 + 0.1 * (lengths.mean() - 0.3)
    torch.testing.assert_close(new_mean, want_mean)
    torch.testing.assert_close(penalty, (lengths - want_mean).square())
    assert not new_mean.requires_grad
    # the default noise is N(0, 1) / sqrt(H W) and the penalty is differentiable
    penalty, _ = path_length_penalty(torch.tanh(img), ws, pl_mean)
    penalty.sum().backward()
    assert ws.grad is not None and torch.isfinite(ws.grad).all()


def test_path_length_through_the_generator_matches_finite_differences():
    """The path-length penalty's parameter gradient through ``StyleGAN2Generator`` (the fused ops)
    (float64, fixed noise, decay 0 so that the running mean is a constant) against central differences."""
    from pyvision_fast.models.stylegan2 import StyleGAN2Generator

    torch.manual_seed(0)
    g = StyleGAN2Generator(z_dim=8, w_dim=8, img_resolution=8, mapping_layers=1, channel_base=64,
                           channel_max=8,
                           conv_clamp=None).double()
    z = torch.randn(2, 8, dtype=torch.float64)
    y = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    pl_mean = torch.tensor(0.05, dtype=torch.float64)

    def penalty():
        img, ws = g(z, noise_mode="const", return_ws=True)
        return path_length_penalty(img, ws, pl_mean, decay=0.0, noise=y)[0].sum()

    for name, idx in [("synthesis.b8.conv0.weight", (1, 2, 0, 1)),
                      ("synthesis.b4.conv1.affine.weight", (3, 4)),
                      ("mapping.fc0.weight", (2, 5))]:
        p = g.get_parameter(name)
        (grad,) = torch.autograd.grad(penalty(), p)
        assert grad[idx].item() == pytest.approx(_central_difference(penalty, p, idx), rel=1e-5, abs=1e-9), name


def test_ema_beta_official_rule():
    assert ema_beta(64, 20) == pytest.approx(0.5 ** (64 / 20000))
    assert ema_beta(32, 10) == pytest.approx(0.997784, abs=1e-6)
    # half-life: after ema_kimg thousand images the old weights count one half
    assert ema_beta(50, 10) ** (10000 / 50) == pytest.approx(0.5)
    # ramp-up: the first images use a shorter half-life
    assert ema_beta(64, 20, cur_nimg=6400, rampup=0.05) == pytest.approx(0.5 ** (64 / 320))
    assert ema_beta(64, 20, cur_nimg=10 ** 7, rampup=0.05) == pytest.approx(ema_beta(64, 20))


def test_bad_inputs():
    x = torch.randn(2, 3, 4, 4)
    ws = torch.randn(2, 3, 5, requires_grad=True)
    cases = [
        (lambda: g_nonsaturating_loss([0.1]), TypeError, "fake_logits"),
        (lambda: g_nonsaturating_loss(torch.zeros(2, 2)), ValueError, "fake_logits"),
        (lambda: d_nonsaturating_loss(torch.zeros(2, dtype=torch.long), torch.zeros(2)), TypeError,
         "real_logits"),
        (lambda: r1_penalty(torch.zeros(2), x), ValueError, "real_img"),
        (lambda: path_length_penalty(x, torch.randn(2, 3, 5), torch.zeros(())), ValueError, "ws"),
        (lambda: path_length_penalty(x[0], ws, torch.zeros(())), ValueError, "img"),
        (lambda: path_length_penalty(x, ws, torch.zeros(()), decay=2.0), ValueError, "decay"),
        (lambda: path_length_penalty(x, ws, torch.zeros(()), noise=torch.zeros(1)), ValueError, "noise"),
        (lambda: ema_beta(0, 10), ValueError, "batch_size"),
        (lambda: ema_beta(8, 10, rampup=0.05), ValueError, "cur_nimg"),
    ]
    for fn, error, word in cases:
        with pytest.raises(error, match=word):
            fn()
