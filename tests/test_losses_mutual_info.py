"""Mutual-information bounds of the CIB term (``losses.mutual_info``): the parameter-free CLUB ignores x and
has a closed-form mean, the symmetrised KL is 0 for identical Gaussians and matches the closed form otherwise,
InfoNCE stays below log N, each bound trained on correlated Gaussians (I = -1/2 log(1 - rho^2) per dimension)
lands below (lower bounds) or above (CLUB) the truth, token matching and the CIB composition by hand."""
from __future__ import annotations

import math

import pytest
import torch

from pyvision_fast.losses.mutual_info import (CLUB, JSD, MINE, NWJ, ConcatCritic, InfoNCE,
                                              MVMIEstimator, cib_terms, club_upper_bound, gaussian_split,
                                              infonce_lower_bound, jsd_lower_bound, match_tokens,
                                              mine_lower_bound, nwj_lower_bound, symmetric_kl)

RHO, DIM = 0.8, 2
TRUE_MI = -0.5 * math.log(1 - RHO ** 2) * DIM       # 1.0217 nats


def correlated(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x ~ N(0, I), y = rho x + sqrt(1 - rho^2) e: unit-variance pairs with per-dimension correlation rho."""
    x = torch.randn(n, DIM, generator=gen)
    y = RHO * x + math.sqrt(1 - RHO ** 2) * torch.randn(n, DIM, generator=gen)
    return x, y


# --- CLUB ---------------------------------------------------------------------------------------------------

def test_parameter_free_club_ignores_x_and_matches_hand_values():
    y = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.0, 0.0]])
    perm = torch.tensor([1, 2, 0])
    # rows: (1-3)^2+(2+1)^2 = 13, (3-0)^2+(-1-0)^2 = 10, (0-1)^2+(0-2)^2 = 5 -> mean of halves = 28 / 6
    assert float(club_upper_bound(torch.randn(3, 5), y, perm)) == pytest.approx(28 / 6)
    assert float(club_upper_bound(torch.zeros(3, 5), y, perm)) == pytest.approx(28 / 6)
    assert float(club_upper_bound(torch.randn(3, 5), y, torch.arange(3))) == 0.0
    assert len(list(CLUB().parameters())) == 0
    torch.manual_seed(0)
    a = CLUB()(torch.randn(3, 7), y)
    torch.manual_seed(0)
    b = CLUB()(torch.randn(3, 7) * 100, y)
    assert torch.equal(a, b)
    # the mean over random permutations is the summed population variance of y
    gen = torch.Generator().manual_seed(1)
    y = torch.randn(6, 4, generator=gen) * torch.tensor([1.0, 2.0, 0.5, 3.0])
    torch.manual_seed(2)
    mean = sum(float(club_upper_bound(y, y)) for _ in range(4000)) / 4000
    assert mean == pytest.approx(float(y.var(0, unbiased=False).sum()), rel=0.03)


def test_learned_club_is_above_the_true_mi():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    club = CLUB(DIM, DIM, hidden_size=64, learned=True)
    opt = torch.optim.Adam(club.parameters(), lr=5e-3)
    for _ in range(300):
        x, y = correlated(256, gen)
        loss = club.learning_loss(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = correlated(20000, gen)
    with torch.no_grad():
        ub = float(club(x, y))
    # with q = the true conditional, CLUB = sum_d rho^2 / (1 - rho^2) = 3.56 here
    assert TRUE_MI < ub < 4.5, ub
    # the bound's gradient does not reach q: only learning_loss trains it
    x.requires_grad_(True)
    club.zero_grad()
    club(x, y).backward()
    assert all(p.grad is None for p in club.parameters()) and x.grad is not None


# --- critics and lower bounds -------------------------------------------------------------------------------

def test_pairwise_scores_equal_explicit_concatenation():
    torch.manual_seed(0)
    critic = ConcatCritic(3, 5, (7, 4), softplus=True).double()
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    got = critic.pairwise(x, y)
    assert got.shape == (6, 4)
    for i in range(6):
        for j in range(4):
            ref = critic(x[j:j + 1], y[i:i + 1])
            torch.testing.assert_close(got[i, j], ref[0])


def test_infonce_never_exceeds_log_n():
    torch.manual_seed(0)
    n = 16
    x = torch.eye(n)
    est = InfoNCE(n, n, 32)
    opt = torch.optim.Adam(est.parameters(), lr=1e-2)
    values = []
    for _ in range(200):
        lb = est(x, x)
        opt.zero_grad()
        (-lb).backward()
        opt.step()
        values.append(float(lb.detach()))
    assert max(values) <= math.log(n) + 1e-6
    assert values[-1] > 0.8 * math.log(n)          # the perfectly identifiable case approaches log N
    for _ in range(5):                              # and any critic on any data stays below
        x, y = torch.randn(n, 3) * 5, torch.randn(n, 3) * 5
        with torch.no_grad():
            critic = ConcatCritic(3, 3, (8,), softplus=True)
            assert float(infonce_lower_bound(critic, x, y)) <= math.log(n) + 1e-6


def _train(bound, gen, steps=150, batch=64, lr=1e-2):
    opt = torch.optim.Adam(bound.parameters(), lr=lr)
    for _ in range(steps):
        x, y = correlated(batch, gen)
        loss = -bound(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("kind", ["InfoNCE", "NWJ", "MINE", "JSD"])
def test_trained_lower_bounds_are_below_the_true_mi(kind):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    bound = {"InfoNCE": lambda: InfoNCE(DIM, DIM, 32), "NWJ": lambda: NWJ(DIM, DIM, 32),
             "MINE": lambda: MINE(DIM, DIM, 32), "JSD": lambda: JSD(DIM, DIM, 32)}[kind]()
    _train(bound, gen)
    with torch.no_grad():
        if kind in ("InfoNCE", "NWJ"):   # all-pairs bounds: average over batches of 256
            est = sum(float(bound(*correlated(256, gen))) for _ in range(5)) / 5
        elif kind == "MINE":
            est = float(bound(*correlated(20000, gen)))
        else:
            est = float(bound.estimate(*correlated(20000, gen)))
    assert 0.5 * TRUE_MI < est < TRUE_MI + 0.05, (kind, est, TRUE_MI)


def test_bounds_reject_bad_input():
    critic = ConcatCritic(2, 2, (4,))
    with pytest.raises(ValueError, match="same number of samples"):
        infonce_lower_bound(critic, torch.randn(4, 2), torch.randn(5, 2))
    with pytest.raises(ValueError, match=r"\(N, D\) sample matrices"):
        nwj_lower_bound(critic, torch.randn(4), torch.randn(4))
    with pytest.raises(ValueError, match="at least 2 samples"):
        club_upper_bound(torch.randn(1, 2), torch.randn(1, 2))
    with pytest.raises(ValueError, match="critic expects"):
        jsd_lower_bound(critic, torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="permutation"):
        mine_lower_bound(critic, torch.randn(3, 2), torch.randn(3, 2), perm=torch.tensor([0, 0, 1]))
    with pytest.raises(TypeError, match="floating point"):
        club_upper_bound(torch.ones(3, 2, dtype=torch.long), torch.ones(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="lb must be one of"):
        MVMIEstimator(8, lb="CPC")
    with pytest.raises(ValueError, match="even last dimension"):
        gaussian_split(torch.randn(3, 5))


# --- Gaussians and the symmetrised KL -----------------------------------------------------------------------

def test_symmetric_kl_of_identical_gaussians_is_zero():
    torch.manual_seed(0)
    h = torch.randn(10, 8)
    p1, p2 = gaussian_split(h), gaussian_split(h.clone())
    assert float(symmetric_kl(p1, p2)) == 0.0
    est = MVMIEstimator(8, "InfoNCE")
    _, skl = est(h, h.clone())
    assert float(skl) == 0.0


def test_gaussian_split_and_symmetric_kl_against_closed_form():
    h = torch.tensor([[0.5, -1.0, 0.3, 2.0]])
    p = gaussian_split(h)
    torch.testing.assert_close(p.base_dist.loc, torch.tensor([[0.5, -1.0]]))
    sigma = torch.log1p(torch.exp(torch.tensor([0.3, 2.0]))) + 1e-7
    torch.testing.assert_close(p.base_dist.scale, sigma.unsqueeze(0))
    # KL(N(m1, s1) || N(m2, s2)) = log(s2/s1) + (s1^2 + (m1 - m2)^2) / (2 s2^2) - 1/2, per dimension
    m1, s1 = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.5])
    m2, s2 = torch.tensor([0.5, -1.0]), torch.tensor([2.0, 0.7])

    def kl(ma, sa, mb, sb):
        return float((torch.log(sb / sa) + (sa ** 2 + (ma - mb) ** 2) / (2 * sb ** 2) - 0.5).sum())

    n = 200000
    q1 = torch.distributions.Independent(torch.distributions.Normal(m1.expand(n, 2), s1.expand(n, 2)), 1)
    q2 = torch.distributions.Independent(torch.distributions.Normal(m2.expand(n, 2), s2.expand(n, 2)), 1)
    torch.manual_seed(0)
    expected = (kl(m1, s1, m2, s2) + kl(m2, s2, m1, s1)) / 2
    assert float(symmetric_kl(q1, q2)) == pytest.approx(expected, rel=0.02)


# --- token matching and the CIB term ------------------------------------------------------------------------

def test_match_tokens_by_hand():
    lang = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]],
                         [[-1.0, 0.1], [5.0, 5.0], [0.0, 0.0]]])
    vis = torch.tensor([[[0.0, 2.0], [3.0, 0.1]],
                        [[1.0, 1.0], [-2.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    l_pairs, v_pairs = match_tokens(lang, vis, mask)
    # L side: (1,0)->(3,0.1); (0,1)->(0,2); (-1,0.1)->(-2,0); (5,5)->(1,1)
    # V side: (0,2)->(0,1); (3,0.1)->(1,0); (1,1)->(5,5); (-2,0)->(-1,0.1); the padded (9,9) never chosen
    expected_l = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.1], [5.0, 5.0],
                               [0.0, 1.0], [1.0, 0.0], [5.0, 5.0], [-1.0, 0.1]])
    expected_v = torch.tensor([[3.0, 0.1], [0.0, 2.0], [-2.0, 0.0], [1.0, 1.0],
                               [0.0, 2.0], [3.0, 0.1], [1.0, 1.0], [-2.0, 0.0]])
    torch.testing.assert_close(l_pairs, expected_l)
    torch.testing.assert_close(v_pairs, expected_v)
    with pytest.raises(ValueError, match="at least one valid language token"):
        match_tokens(lang, vis, torch.tensor([[1, 0, 0], [0, 0, 0]]))


def test_cib_terms_compose_the_official_sum():
    torch.manual_seed(0)
    B, L, V, D = 2, 4, 3, 8
    l0, l1, v0, v1 = (torch.randn(B, n, D) for n in (L, L, V, V))
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    mvmi = MVMIEstimator(D, "InfoNCE")
    torch.manual_seed(1)
    out = cib_terms(l0, l1, v0, v1, mask, CLUB(), mvmi)
    torch.manual_seed(1)
    ub_l = club_upper_bound(l0[mask > 0], l1[mask > 0])
    ub_v = club_upper_bound(v0.flatten(0, 1), v1.flatten(0, 1))
    lp, vp = match_tokens(l1, v1, mask)
    lb, skl = mvmi(lp, vp)
    assert lp.shape[0] == 5 + 6
    for key, value in (("upper_bound_l", ub_l), ("upper_bound_v", ub_v), ("lower_bound_lv", lb),
                       ("skl", skl / 11)):
        torch.testing.assert_close(out[key], value)
    torch.testing.assert_close(out["cib"], ub_l + ub_v - lb + skl / 11)
    # gradients reach the tokens and the critic
    l1.requires_grad_(True)
    out = cib_terms(l0, l1, v0, v1, mask, CLUB(), mvmi)
    out["cib"].backward()
    assert l1.grad.abs().sum() > 0
    assert all(p.grad is not None for p in mvmi.parameters())


def test_state_dict_names_follow_the_official_estimators():
    assert set(MVMIEstimator(768, "InfoNCE").state_dict()) == {
        "mi_estimator.F_func.0.weight", "mi_estimator.F_func.0.bias",
        "mi_estimator.F_func.2.weight", "mi_estimator.F_func.2.bias"}
    sd = MVMIEstimator(768, "InfoNCE").state_dict()
    assert sd["mi_estimator.F_func.0.weight"].shape == (384, 768)   # hidden 384 = the official hidden_size
    assert "mi_estimator.T_func.0.weight" in MVMIEstimator(768, "MINE").state_dict()
    jsd = MVMIEstimator(768, "JSD").state_dict()
    assert jsd["mi_estimator.net.2.weight"].shape == (1024, 1024) and "mi_estimator.net.4.bias" in jsd


def test_chunked_pairwise_equals_the_dense_graph(monkeypatch):
    from pyvision_fast.losses.mutual_info import _PairwiseReluLinear

    torch.manual_seed(0)
    critic = ConcatCritic(5, 4, (6,), softplus=True).double()
    x = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)

    def explicit(x, y):   # the official tiling: (Ny, Nx, Dx + Dy) concatenations through the MLP
        cat = torch.cat([x[None].expand(9, -1, -1), y[:, None].expand(-1, 7, -1)], -1)
        return critic(cat[..., :5], cat[..., 5:])

    monkeypatch.setattr(ConcatCritic, "dense_limit", 0)          # force the chunked path at this size
    chunked = critic.pairwise(x, y)
    reference = explicit(x, y)
    torch.testing.assert_close(chunked, reference, rtol=0, atol=1e-12)
    g = torch.randn_like(chunked)
    params = [x, y, *critic.parameters()]
    grads = torch.autograd.grad((chunked * g).sum(), params)
    for u, v in zip(grads, torch.autograd.grad((reference * g).sum(), params)):
        torch.testing.assert_close(u, v, rtol=0, atol=1e-12)
    a, b, w = (torch.randn(n, 6, dtype=torch.float64, requires_grad=True) for n in (7, 9, 1))
    assert torch.autograd.gradcheck(lambda a, b, w: _PairwiseReluLinear.apply(a, b, w.reshape(-1), 2),
                                    (a, b, w))
