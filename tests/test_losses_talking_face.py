"""The mouth-shape preservation loss (``losses.talking_face``): zero for identical meshes (value and a finite,
zero gradient), a known rigid shift of the mouth gives that distance, only mouth vertices count, it grows with
the mouth change, it trades against an expression target under a weight λ (a small optimisation), and bad
inputs raise errors naming the argument."""
from __future__ import annotations

import pytest
import torch

from pyvision_fast.losses.talking_face import mouth_shape_loss, mouth_vertex_distance


def test_zero_for_identical_meshes_with_finite_gradient():
    torch.manual_seed(0)
    v = torch.randn(2, 50, 3, dtype=torch.float64)
    mouth = torch.tensor([3, 7, 11, 20])
    edited = v.clone().requires_grad_(True)
    loss = mouth_shape_loss(edited, v, mouth)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(edited.grad).all() and edited.grad.abs().max() == 0
    assert mouth_shape_loss(v, v).item() == 0.0


def test_known_shift_and_only_the_mouth_counts():
    torch.manual_seed(0)
    v = torch.randn(3, 40, 3, dtype=torch.float64)
    mouth = torch.arange(10, 20)
    shifted = v.clone()
    shifted[:, mouth] += torch.tensor([0.3, 0.0, 0.4], dtype=torch.float64)   # |(0.3, 0, 0.4)| = 0.5
    assert mouth_shape_loss(shifted, v, mouth).item() == pytest.approx(0.5, abs=1e-9)
    assert mouth_shape_loss(shifted, v, mouth, reduction="sum").item() == pytest.approx(0.5 * 30, abs=1e-8)
    assert torch.allclose(mouth_shape_loss(shifted, v, mouth, reduction="none"), torch.full((3,), 0.5,
                                                                                         dtype=torch.float64))
    far = v.clone()
    far[:, :10] += 5.0                                       # moving other vertices costs nothing
    assert mouth_shape_loss(far, v, mouth).item() == 0.0
    d = mouth_vertex_distance(shifted, v, mouth)
    assert d.shape == (3, 10) and torch.allclose(d, torch.full_like(d, 0.5))


def test_grows_with_mouth_change():
    torch.manual_seed(0)
    v = torch.randn(1, 30, 3)
    mouth = torch.arange(5, 15)
    direction = torch.randn(1, 30, 3)
    values = [mouth_shape_loss(v + s * direction, v, mouth).item() for s in (0.0, 0.1, 0.2, 0.5, 1.0)]
    assert values[0] == 0 and all(b > a for a, b in zip(values, values[1:]))
    assert values[4] == pytest.approx(2 * values[3], rel=1e-5)   # linear in a scaled change


def test_lambda_trades_expressiveness_for_mouth():
    """Minimise |x - target|^2 (summed) + λ mouth(x, original) (summed) over the mouth vertices: each vertex
    stops short of its target by λ / 2 (the closed-form optimum), so a larger λ keeps the mouth closer."""
    torch.manual_seed(0)
    v = torch.randn(1, 20, 3, dtype=torch.float64)
    mouth = torch.arange(0, 8)
    target = v.clone()
    target[:, mouth] += 0.4                                  # each mouth vertex 0.4 * sqrt(3) away
    moved = []
    for lam in (0.0, 0.5, 1.0):
        x = v.clone().requires_grad_(True)
        opt = torch.optim.SGD([x], lr=0.1)
        for _ in range(200):
            loss = (x - target).square().sum() + lam * mouth_shape_loss(x, v, mouth, reduction="sum")
            opt.zero_grad()
            loss.backward()
            opt.step()
        moved.append(mouth_shape_loss(x.detach(), v, mouth).item())
    expected = [0.4 * 3 ** 0.5 - lam / 2 for lam in (0.0, 0.5, 1.0)]
    assert moved == pytest.approx(expected, abs=1e-6)


def test_bad_inputs():
    v = torch.randn(2, 10, 3)
    for args, kwargs, error, word in [
        ((v, v[:, :9]), {}, ValueError, "same shape"),
        ((v[..., :2], v[..., :2]), {}, ValueError, "edited"),
        ((v.numpy(), v), {}, TypeError, "edited"),
        ((v, v.long()), {}, TypeError, "original"),
        ((v, v.double()), {}, TypeError, "original"),
        ((v, v, torch.tensor([0, 10])), {}, ValueError, "mouth_idx"),
        ((v, v, torch.tensor([0.0, 1.0])), {}, TypeError, "mouth_idx"),
        ((v, v, torch.tensor([], dtype=torch.int64)), {}, ValueError, "mouth_idx"),
        ((v, v), {"reduction": "max"}, ValueError, "reduction"),
    ]:
        with pytest.raises(error, match=word):
            mouth_shape_loss(*args, **kwargs)
