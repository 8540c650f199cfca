"""PointCAT's losses against hand-computed values and straightforward loop implementations written here."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pyvision_fast.losses.pointcat import centralizing_loss, cw_margin_loss, generator_loss, supcon_loss


def _cos(a, b):
    return float(torch.dot(a, b) / (a.norm() * b.norm()))


def _supcon_loop(z_a, z_b, labels, tau, cosine=True):
    """The SupCon formula, one anchor and one positive at a time."""
    z = torch.cat([z_a, z_b])
    y = labels.repeat(2).tolist()
    n = len(z)
    sim = (lambda i, j: _cos(z[i], z[j])) if cosine else (lambda i, j: float(torch.dot(z[i], z[j])))
    total = 0.0
    for i in range(n):
        denom = sum(math.exp(sim(i, a) / tau) for a in range(n) if a != i)
        pos = [p for p in range(n) if p != i and y[p] == y[i]]
        total += sum(sim(i, p) / tau - math.log(denom) for p in pos) / len(pos)
    return -total / n


def _nt_xent(z_a, z_b, tau):
    """SimCLR's NT-Xent: anchor i's positive is its other view; every other row is a negative."""
    z = F.normalize(torch.cat([z_a, z_b]), dim=1)
    b = len(z_a)
    losses = []
    for i in range(2 * b):
        j = (i + b) % (2 * b)
        others = [k for k in range(2 * b) if k != i]
        logits = torch.stack([z[i] @ z[k] for k in others]) / tau
        losses.append(-(z[i] @ z[j] / tau - torch.logsumexp(logits, 0)))
    return float(torch.stack(losses).mean())


def test_supcon_hand_values():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    z = torch.stack([e1, e2]).double()
    # different labels: each anchor's only positive is its twin (similarity 1), the rest have similarity 0
    got = supcon_loss(z, z.clone(), torch.tensor([0, 1]), temperature=1.0)
    assert float(got) == pytest.approx(math.log(2 + math.e) - 1, abs=1e-12)
    # one label: three positives per anchor with similarities 0, 1, 0
    got = supcon_loss(z, z.clone(), torch.tensor([0, 0]), temperature=1.0)
    assert float(got) == pytest.approx(math.log(2 + math.e) - 1 / 3, abs=1e-12)


def test_supcon_with_one_positive_per_anchor_is_nt_xent():
    g = torch.Generator().manual_seed(0)
    z_a = torch.randn(6, 8, generator=g, dtype=torch.float64)
    z_b = torch.randn(6, 8, generator=g, dtype=torch.float64)
    got = supcon_loss(z_a, z_b, torch.arange(6), temperature=0.1)
    assert float(got) == pytest.approx(_nt_xent(z_a, z_b, 0.1), rel=1e-10)


@pytest.mark.parametrize("cosine", [True, False])
def test_supcon_matches_the_loop_with_repeated_labels(cosine):
    g = torch.Generator().manual_seed(1)
    z_a = torch.randn(7, 5, generator=g, dtype=torch.float64) * (1 if cosine else 0.3)
    z_b = torch.randn(7, 5, generator=g, dtype=torch.float64) * (1 if cosine else 0.3)
    labels = torch.tensor([0, 1, 1, 2, 0, 2, 2])
    got = supcon_loss(z_a, z_b, labels, temperature=0.1, cosine=cosine)
    assert float(got) == pytest.approx(_supcon_loop(z_a, z_b, labels, 0.1, cosine), rel=1e-10)


def test_centralizing_hand_value_and_loop():
    rep = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    protos = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]], dtype=torch.float64)
    # cosine similarities 1, 0, -1 at τ = 1; the positive is class 0
    got = centralizing_loss(rep, protos, torch.tensor([0]), temperature=1.0)
    assert float(got) == pytest.approx(-math.log(math.e / (math.e + 1 + math.exp(-1))), abs=1e-12)

    g = torch.Generator().manual_seed(2)
    rep = torch.randn(5, 4, generator=g, dtype=torch.float64)
    protos = torch.randn(3, 4, generator=g, dtype=torch.float64)
    labels = torch.tensor([2, 0, 1, 1, 2])
    want = 0.0
    for i in range(5):
        logits = [_cos(rep[i], protos[k]) / 0.25 for k in range(3)]
        want += -(logits[int(labels[i])] - math.log(sum(math.exp(v) for v in logits)))
    got = centralizing_loss(rep, protos, labels, temperature=0.25)
    assert float(got) == pytest.approx(want / 5, rel=1e-10)


def test_generator_loss_hand_values():
    ori, proto = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    # adv orthogonal to ori (s = 0) and parallel to the prototype (s = 1): -exp(0) - 0.5 exp(-10)
    loss, l1, l2 = generator_loss(ori, torch.tensor([[0.0, 5.0]]), proto, temperature=0.1, beta=0.5)
    assert float(loss) == pytest.approx(-1 - 0.5 * math.exp(-10), rel=1e-6)
    assert float(l1) == pytest.approx(0.0, abs=1e-7) and float(l2) == pytest.approx(10.0, rel=1e-6)
    # a batch of two: the mean of the per-sample values
    ori2 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    adv2 = torch.tensor([[0.0, 5.0], [-1.0, 0.0]])
    proto2 = torch.tensor([[0.0, 2.0], [1.0, 0.0]])
    want = ((-1 - 0.5 * math.exp(-10)) + (-math.exp(10) - 0.5 * math.exp(10))) / 2
    assert float(generator_loss(ori2, adv2, proto2, 0.1, 0.5)[0]) == pytest.approx(want, rel=1e-6)


def test_cw_margin_hand_values():
    logits = torch.tensor([[1.0, 4.0, 2.0], [3.0, 0.0, -1.0]])
    target = torch.tensor([0, 0])
    # targeted: max(other - real, kappa) = max(4 - 1, -100), max(0 - 3, -100)
    got = cw_margin_loss(logits, target, kappa=-100.0, targeted=True, reduction="none")
    assert got.tolist() == [3.0, -3.0]
    assert cw_margin_loss(logits, target, kappa=-2.0, targeted=True, reduction="none").tolist() == [3.0, -2.0]
    # untargeted: max(real - other + kappa, 0)
    assert cw_margin_loss(logits, target, targeted=False, reduction="none").tolist() == [0.0, 3.0]
    assert float(cw_margin_loss(logits, target, targeted=False)) == 3.0


def test_bad_inputs_raise_clear_errors():
    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match="labels must be"):
        supcon_loss(z, z, torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="integer"):
        supcon_loss(z, z, torch.tensor([0.0, 1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="same shape"):
        supcon_loss(z, torch.randn(4, 2), torch.arange(4))
    with pytest.raises(ValueError, match=r"lie in \[0, 3\)"):
        centralizing_loss(z, torch.randn(3, 3), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="differ in width"):
        centralizing_loss(z, torch.randn(3, 5), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="one shape"):
        generator_loss(z, z, torch.randn(3, 3))
    with pytest.raises(ValueError, match="temperature"):
        supcon_loss(z, z, torch.arange(4), temperature=0.0)
