"""Mutual-information bounds and the Correlation Information Bottleneck (CIB) term of Jiang et al.'s robust
VQA fine-tuning (shared/papers.md section 8; official code jingjing12110/CIB-VQA,
``module/mi_lib/upper_bound.py``, ``module/ib_lib/mi.py``, ``vqa_model.py: CIBVQAModelV2.compute_cib_v2``).

Every function takes samples as rows: ``x`` (N, Dx), ``y`` (N, Dy) float tensors, row i of ``x`` paired with
row i of ``y`` (a draw of the joint p(x, y)); results are scalar tensors in nats. The modules keep the
official state_dict names (``F_func`` / ``T_func`` / ``net`` critics under ``mi_estimator``), so official CIB
checkpoints load.

Upper bounds
  * ``club_upper_bound``: the parameter-free CLUB the official code actually uses: ``mean_i sum_d (y_i -
    y_perm(i))^2 / 2`` over a random permutation; ``x`` is not used (its expectation over permutations is the
    summed population variance of ``y``, not a calibrated MI bound).
  * ``CLUB(learned=True)``: Cheng et al.'s CLUB with a Gaussian q(y|x) (mean and tanh log-variance MLPs, as in
    the official code's commented-out networks), all-pairs negatives; q is trained by ``CLUB.learning_loss``
    (its negative log-likelihood on detached samples) and the bound's gradient does not reach q's parameters.

Lower bounds (critic T(x, y) = MLP of the concatenation; ``pairwise`` scores all N^2 pairs from the first
layer split into its x and y halves, so no (N, N, Dx + Dy) concatenation is built)
  * InfoNCE: ``mean_i T(x_i, y_i) - mean_i logsumexp_j T(x_j, y_i) + log N`` (<= log N); critic ends in
    Softplus.
  * NWJ: ``mean_i T(x_i, y_i) - mean_i mean_j exp(T(x_j, y_i) - 1)``.
  * MINE (Donsker-Varadhan): ``mean_i T(x_i, y_i) - log mean_i exp T(x_i, y_perm(i))``.
  * JSD: the training objective ``-softplus(-T(x_i, y_i)) - softplus(T(x_{i-1}, y_i))`` (means), whose critic
    is read out by the NWJ-form estimate ``mean T(x_i, y_i) - mean exp T(x_{i-1}, y_i) + 1`` (a valid MI lower
    bound).

The CIB term (``cib_terms``): ``UB_l + UB_v - LB_lv + SKL``, with the two upper bounds between the input-layer
and last-layer tokens of each modality, and the lower bound and symmetrised KL between the Gaussians that the
matched language/visual token pairs parameterise (``MVMIEstimator``).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Independent, Normal

__all__ = ["CLUB", "ConcatCritic", "InfoNCE", "JSD", "LOWER_BOUNDS", "MINE", "MVMIEstimator", "NWJ",
           "cib_terms", "club_upper_bound", "gaussian_split", "infonce_lower_bound", "jsd_lower_bound",
           "match_tokens", "mine_lower_bound", "nwj_lower_bound", "symmetric_kl"]


def _check_pairs(x: Tensor, y: Tensor, name: str) -> None:
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise TypeError(f"{name}: x and y must be tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.ndim != 2 or y.ndim != 2:
        raise ValueError(f"{name}: x and y must be (N, D) sample matrices, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{name}: x and y must hold the same number of samples, got {x.shape[0]} and "
                         f"{y.shape[0]}")
    if x.shape[0] < 2:
        raise ValueError(f"{name}: needs at least 2 samples (negatives come from other rows), got "
                         f"{x.shape[0]}")
    if not (x.is_floating_point() and y.is_floating_point()):
        raise TypeError(f"{name}: x and y must be floating point, got {x.dtype} and {y.dtype}")


def _permutation(n: int, perm: Optional[Tensor], device, name: str) -> Tensor:
    if perm is None:
        return torch.randperm(n, device=device)
    perm = torch.as_tensor(perm, device=device).long()
    if perm.shape != (n,) or not torch.equal(perm.sort().values.cpu(), torch.arange(n)):
        raise ValueError(f"{name}: perm must be a permutation of range({n}), got {perm.tolist()}")
    return perm


# --- upper bounds -------------------------------------------------------------------------------------------

def club_upper_bound(x: Tensor, y: Tensor, perm: Optional[Tensor] = None) -> Tensor:
    """The official CIB code's parameter-free CLUB: ``mean_i sum_d (y_i - y_perm(i))^2 / 2`` (the positive
    term is 0 and the negative is ``-(y_i - y_perm(i))^2 / 2``). ``x`` (N, Dx) is only checked, never used;
    ``perm`` (N,) int64, default ``torch.randperm(N)``. Returns a scalar."""
    _check_pairs(x, y, "club_upper_bound")
    perm = _permutation(y.shape[0], perm, y.device, "club_upper_bound")
    return ((y - y[perm]) ** 2 / 2).sum(dim=-1).mean()


class CLUB(nn.Module):
    """Contrastive log-ratio upper bound of I(x; y). ``learned=False`` (default, what the official code runs):
    ``club_upper_bound``, no parameters. ``learned=True``: q(y|x) = N(mu(x), exp(logvar(x))) with ``p_mu`` =
    Linear(Dx, H/2)-ReLU-Linear(H/2, Dy) and ``p_logvar`` = the same + Tanh; the bound is ``mean_i sum_d
    [-(mu_i - y_i)^2 + mean_j (mu_i - y_j)^2] / (2 exp(logvar_i))`` with q's parameters held fixed (train q
    with ``learning_loss``)."""

    def __init__(self, x_dim: int = 768, y_dim: int = 768, hidden_size: int = 768, learned: bool = False):
        super().__init__()
        self.learned = bool(learned)
        if self.learned:
            h = max(hidden_size // 2, 1)
            self.p_mu = nn.Sequential(nn.Linear(x_dim, h), nn.ReLU(), nn.Linear(h, y_dim))
            self.p_logvar = nn.Sequential(nn.Linear(x_dim, h), nn.ReLU(), nn.Linear(h, y_dim), nn.Tanh())

    def _q(self, x: Tensor, frozen: bool) -> tuple[Tensor, Tensor]:
        if not frozen:
            return self.p_mu(x), self.p_logvar(x)
        from torch.func import functional_call

        def frozen_call(net: nn.Module) -> Tensor:
            return functional_call(net, {k: v.detach() for k, v in net.named_parameters()}, (x,))

        mu, logvar = frozen_call(self.p_mu), frozen_call(self.p_logvar)
        return mu, logvar

    def forward(self, x: Tensor, y: Tensor, perm: Optional[Tensor] = None) -> Tensor:
        """x (N, Dx), y (N, Dy) -> scalar upper bound (``perm`` only for the parameter-free form)."""
        if not self.learned:
            return club_upper_bound(x, y, perm)
        _check_pairs(x, y, "CLUB")
        mu, logvar = self._q(x, frozen=True)
        inv_var = torch.exp(-logvar)
        positive = -((mu - y) ** 2) * inv_var / 2
        # mean_j (mu_i - y_j)^2 = mu_i^2 - 2 mu_i mean(y) + mean(y^2), per dimension: no (N, N, D) tensor
        all_pairs = mu ** 2 - 2 * mu * y.mean(0) + (y ** 2).mean(0)
        negative = -all_pairs * inv_var / 2
        return (positive.sum(-1) - negative.sum(-1)).mean()

    def log_likelihood(self, x: Tensor, y: Tensor) -> Tensor:
        """CLUB's q fit: ``mean_i sum_d [-(mu_i - y_i)^2 / exp(logvar_i) - logvar_i]`` (twice the Gaussian
        log-likelihood up to a constant)."""
        _check_pairs(x, y, "CLUB.log_likelihood")
        mu, logvar = self._q(x, frozen=False)
        return (-((mu - y) ** 2) / logvar.exp() - logvar).sum(-1).mean()

    def learning_loss(self, x: Tensor, y: Tensor) -> Tensor:
        """What trains q: ``-log_likelihood`` on detached samples (0 for the parameter-free form)."""
        if not self.learned:
            return y.new_zeros(())
        return -self.log_likelihood(x.detach(), y.detach())


# --- critics and lower bounds -------------------------------------------------------------------------------

class ConcatCritic(nn.Sequential):
    """T(x, y) = MLP([x, y]): Linear(Dx + Dy, h_1)-ReLU-...-Linear(h_k, 1) (+ Softplus when ``softplus``).
    ``forward(x (N, Dx), y (N, Dy)) -> (N,)`` scores of the aligned pairs; ``pairwise(x (Nx, Dx), y (Ny, Dy))
    -> (Ny, Nx)`` with entry [i, j] = T(x_j, y_i), from the first layer split into its x and y halves. Above
    ``dense_limit`` hidden activations a one-hidden-layer critic is evaluated in row chunks whose backward
    recomputes them (memory O(Ny Nx) instead of O(Ny Nx H): 2 x 14 GB less at the official batch, ~3000 pairs
    of 384-d halves with 384 hidden units)."""

    # all-pairs activations above this many elements go in chunks (O(N^2) memory, ~1.5x the CPU time)
    dense_limit: int = 1 << 26

    def __init__(self, x_dim: int, y_dim: int, hidden: tuple[int, ...] = (300,), softplus: bool = False):
        layers: list[nn.Module] = []
        width = x_dim + y_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        if softplus:
            layers.append(nn.Softplus())
        super().__init__(*layers)
        self.x_dim, self.y_dim = x_dim, y_dim

    def _check(self, x: Tensor, y: Tensor) -> None:
        if x.shape[-1] != self.x_dim or y.shape[-1] != self.y_dim:
            raise ValueError(f"critic expects x (..., {self.x_dim}) and y (..., {self.y_dim}), got "
                             f"{tuple(x.shape)} and {tuple(y.shape)}")

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        self._check(x, y)
        return super().forward(torch.cat([x, y], dim=-1)).squeeze(-1)

    def pairwise(self, x: Tensor, y: Tensor) -> Tensor:
        self._check(x, y)
        first = self[0]
        a = x @ first.weight[:, :self.x_dim].T                     # (Nx, H)
        b = y @ first.weight[:, self.x_dim:].T + first.bias         # (Ny, H)
        rest = list(self)[1:]
        large = b.shape[0] * a.shape[0] * a.shape[1] > self.dense_limit
        if large and len(rest) in (2, 3) and isinstance(rest[0], nn.ReLU) and isinstance(rest[1], nn.Linear):
            # one hidden layer: (Ny, Nx) scores in row chunks, never holding the (Ny, Nx, H) activations
            w2, b2 = rest[1].weight.reshape(-1), rest[1].bias
            scores = _PairwiseReluLinear.apply(a, b, w2, _chunk_rows(a)) + b2
            return rest[2](scores) if len(rest) == 3 else scores
        h = b.unsqueeze(1) + a.unsqueeze(0)                         # (Ny, Nx, H)
        for layer in rest:
            h = layer(h)
        return h.squeeze(-1)


def _chunk_rows(a: Tensor, budget: int = 1 << 24) -> int:
    """Rows of y per chunk so that one (rows, Nx, H) block holds about ``budget`` elements."""
    return max(1, budget // max(a.shape[0] * a.shape[1], 1))


class _PairwiseReluLinear(torch.autograd.Function):
    """S[i, j] = sum_k w[k] relu(b[i, k] + a[j, k]) for a (Nx, H), b (Ny, H), w (H,): the all-pairs scores of
    a one-hidden-layer concat critic. Forward and backward run over chunks of rows of b and recompute the
    activations, so memory is O(Ny Nx) instead of the O(Ny Nx H) an autograd graph of the broadcast keeps (the
    official code tiles (N, N, Dx + Dy) inputs: 2 x 30 GB at N = 3000, D = 768)."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, w: Tensor, chunk: int) -> Tensor:
        out = a.new_empty(b.shape[0], a.shape[0])
        for s in range(0, b.shape[0], chunk):
            out[s:s + chunk] = (b[s:s + chunk, None, :] + a[None]).clamp_min_(0) @ w
        ctx.save_for_backward(a, b, w)
        ctx.chunk = chunk
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        a, b, w = ctx.saved_tensors
        ga, gb, gw = torch.zeros_like(a), torch.empty_like(b), torch.zeros_like(w)
        for s in range(0, b.shape[0], ctx.chunk):
            pre = b[s:s + ctx.chunk, None, :] + a[None]                  # (r, Nx, H)
            g = grad[s:s + ctx.chunk]                                     # (r, Nx)
            gw += (g.reshape(1, -1) @ pre.clamp_min(0).reshape(-1, a.shape[1])).reshape(-1)
            gpre = (pre > 0).to(a.dtype).mul_(g.unsqueeze(-1)).mul_(w)    # d S / d pre
            ga += gpre.sum(0)
            gb[s:s + ctx.chunk] = gpre.sum(1)
        return ga, gb, gw, None


def infonce_lower_bound(critic: ConcatCritic, x: Tensor, y: Tensor) -> Tensor:
    """``mean_i T(x_i, y_i) - (mean_i logsumexp_j T(x_j, y_i) - log N)``; never above log N. (The official
    code permutes y before the all-pairs term, which leaves this value unchanged.)"""
    _check_pairs(x, y, "infonce_lower_bound")
    n = x.shape[0]
    return critic(x, y).mean() - (torch.logsumexp(critic.pairwise(x, y), dim=1).mean() - math.log(n))


def nwj_lower_bound(critic: ConcatCritic, x: Tensor, y: Tensor) -> Tensor:
    """``mean_i T(x_i, y_i) - mean_i exp(logsumexp_j (T(x_j, y_i) - 1) - log N)``
    (Nguyen-Wainwright-Jordan)."""
    _check_pairs(x, y, "nwj_lower_bound")
    n = x.shape[0]
    scores = critic.pairwise(x, y) - 1.0
    return critic(x, y).mean() - torch.exp(torch.logsumexp(scores, dim=1) - math.log(n)).mean()


def mine_lower_bound(critic: ConcatCritic, x: Tensor, y: Tensor, perm: Optional[Tensor] = None) -> Tensor:
    """``mean_i T(x_i, y_i) - log mean_i exp T(x_i, y_perm(i))`` (Donsker-Varadhan, MINE without its moving
    average, as the official code)."""
    _check_pairs(x, y, "mine_lower_bound")
    n = x.shape[0]
    perm = _permutation(n, perm, y.device, "mine_lower_bound")
    return critic(x, y).mean() - (torch.logsumexp(critic(x, y[perm]), dim=0) - math.log(n))


def jsd_lower_bound(critic: ConcatCritic, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(JSD objective to maximise, MI estimate): negatives pair ``x`` rolled by one row with ``y``; objective
    ``-mean softplus(-T_pos) - mean softplus(T_neg)``, estimate ``mean T_pos - mean exp T_neg + 1``."""
    _check_pairs(x, y, "jsd_lower_bound")
    pos = critic(x, y)
    neg = critic(torch.roll(x, 1, dims=0), y)
    return -F.softplus(-pos).mean() - F.softplus(neg).mean(), pos.mean() - neg.exp().mean() + 1


class InfoNCE(nn.Module):
    """InfoNCE bound with the official critic ``F_func`` = Linear(Dx + Dy, H)-ReLU-Linear(H, 1)-Softplus."""

    def __init__(self, x_dim: int = 768, y_dim: int = 768, hidden_size: int = 300):
        super().__init__()
        self.F_func = ConcatCritic(x_dim, y_dim, (hidden_size,), softplus=True)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return infonce_lower_bound(self.F_func, x, y)


class NWJ(nn.Module):
    """NWJ bound with ``F_func`` = Linear(Dx + Dy, H)-ReLU-Linear(H, 1)."""

    def __init__(self, x_dim: int = 768, y_dim: int = 768, hidden_size: int = 768):
        super().__init__()
        self.F_func = ConcatCritic(x_dim, y_dim, (hidden_size,))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return nwj_lower_bound(self.F_func, x, y)


class MINE(nn.Module):
    """Donsker-Varadhan bound with ``T_func`` = Linear(Dx + Dy, H)-ReLU-Linear(H, 1)."""

    def __init__(self, x_dim: int = 768, y_dim: int = 768, hidden_size: int = 768):
        super().__init__()
        self.T_func = ConcatCritic(x_dim, y_dim, (hidden_size,))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return mine_lower_bound(self.T_func, x, y)


class JSD(nn.Module):
    """The official ``MIEstimator``: ``net`` = Linear(Dx + Dy, 1024)-ReLU-Linear(1024, 1024)-ReLU-Linear(1024,
    1), trained on the JSD objective (``forward``); ``estimate`` is the NWJ-form MI read-out of the same
    critic."""

    def __init__(self, x_dim: int = 768, y_dim: int = 768, hidden_size: int = 1024):
        super().__init__()
        self.net = ConcatCritic(x_dim, y_dim, (hidden_size, hidden_size))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return jsd_lower_bound(self.net, x, y)[0]

    def estimate(self, x: Tensor, y: Tensor) -> Tensor:
        return jsd_lower_bound(self.net, x, y)[1]


LOWER_BOUNDS = {"InfoNCE": InfoNCE, "NWJ": NWJ, "MINE": MINE, "JSD": JSD}


# --- the Gaussian split and the symmetrised KL --------------------------------------------------------------

def gaussian_split(h: Tensor, eps: float = 1e-7) -> Independent:
    """h (N, 2K) -> the factorised Gaussian N(mu = h[:, :K], sigma = softplus(h[:, K:]) + eps) over K dims."""
    if h.ndim != 2 or h.shape[-1] % 2:
        raise ValueError(f"gaussian_split: h must be (N, 2K) with an even last dimension, got "
                         f"{tuple(h.shape)}")
    k = h.shape[-1] // 2
    return Independent(Normal(loc=h[:, :k], scale=F.softplus(h[:, k:]) + eps), 1)


def symmetric_kl(p1: Independent, p2: Independent, z1: Optional[Tensor] = None,
                 z2: Optional[Tensor] = None) -> Tensor:
    """Single-sample symmetrised KL: ``mean[(log p1(z1) - log p2(z1) + log p2(z2) - log p1(z2)) / 2]`` with z1
    ~ p1, z2 ~ p2 (reparameterised draws unless given). Exactly 0 when p1 and p2 are the same distribution."""
    z1 = p1.rsample() if z1 is None else z1
    z2 = p2.rsample() if z2 is None else z2
    return ((p1.log_prob(z1) - p2.log_prob(z1) + p2.log_prob(z2) - p1.log_prob(z2)) / 2).mean()


class MVMIEstimator(nn.Module):
    """The official multi-view MI estimator: each (N, D) input row parameterises a Gaussian over D/2 dims
    (``gaussian_split``); z1, z2 are reparameterised draws; returns (lower bound of I(z1; z2) by ``lb``,
    symmetrised KL). The critic's inputs are D/2 wide and its hidden width is ``hidden_size`` (D/2 by default,
    as ``MVMIEstimator(hidden_size=384)`` passes it to InfoNCE/NWJ/MINE; JSD keeps its 1024). For ``lb='JSD'``
    the returned bound is the JSD objective (maximised like the others; the official code returns its
    negative, which flips the CIB's sign for JSD)."""

    def __init__(self, dim: int = 768, lb: str = "InfoNCE", hidden_size: Optional[int] = None):
        super().__init__()
        if lb not in LOWER_BOUNDS:
            raise ValueError(f"MVMIEstimator: lb must be one of {sorted(LOWER_BOUNDS)}, got {lb!r}")
        if dim % 2:
            raise ValueError(f"MVMIEstimator: dim must be even (mean and scale halves), got {dim}")
        self.dim, self.lb_name = dim, lb
        half = dim // 2
        if lb == "JSD":
            self.mi_estimator = JSD(half, half)
        else:
            self.mi_estimator = LOWER_BOUNDS[lb](half, half, hidden_size or half)

    def forward(self, h1: Tensor, h2: Tensor) -> tuple[Tensor, Tensor]:
        _check_pairs(h1, h2, "MVMIEstimator")
        if h1.shape[-1] != self.dim or h2.shape[-1] != self.dim:
            raise ValueError(f"MVMIEstimator: inputs must be (N, {self.dim}), got {tuple(h1.shape)} and "
                             f"{tuple(h2.shape)}")
        # the Gaussians' log-densities in float32 also under bfloat16/float16 autocast
        p1, p2 = gaussian_split(h1.float()), gaussian_split(h2.float())
        z1, z2 = p1.rsample(), p2.rsample()
        return self.mi_estimator(z1, z2), symmetric_kl(p1, p2, z1, z2)


# --- token matching and the CIB term ------------------------------------------------------------------------

def match_tokens(lang: Tensor, vis: Tensor, lang_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Cross-modal token pairs by cosine similarity, in both directions. lang (B, L, D), vis (B, V, D),
    lang_mask (B, L) (nonzero = a real token). Returns (l_pairs, v_pairs), each (P, D) with P = sum(valid
    tokens) + B * V: first every valid language token with its most similar visual token (sample by sample,
    token order), then every visual token with its most similar valid language token."""
    if lang.ndim != 3 or vis.ndim != 3 or lang.shape[0] != vis.shape[0] or lang.shape[2] != vis.shape[2]:
        raise ValueError(f"match_tokens: lang (B, L, D) and vis (B, V, D) expected, got {tuple(lang.shape)} "
                         f"and {tuple(vis.shape)}")
    if lang_mask.shape != lang.shape[:2]:
        raise ValueError(f"match_tokens: lang_mask must be {tuple(lang.shape[:2])}, got "
                         f"{tuple(lang_mask.shape)}")
    valid = lang_mask > 0
    if not bool(valid.any(dim=1).all()):
        raise ValueError("match_tokens: every sample needs at least one valid language token")
    sim = F.normalize(lang, dim=-1) @ F.normalize(vis, dim=-1).transpose(1, 2)       # (B, L, V)
    best_v = sim.argmax(dim=2)                                                        # (B, L)
    v_for_l = torch.gather(vis, 1, best_v.unsqueeze(-1).expand(-1, -1, vis.shape[2]))
    best_l = sim.masked_fill(~valid.unsqueeze(-1), float("-inf")).argmax(dim=1)      # (B, V)
    l_for_v = torch.gather(lang, 1, best_l.unsqueeze(-1).expand(-1, -1, lang.shape[2]))
    l_pairs = torch.cat([lang[valid], l_for_v.flatten(0, 1)], dim=0)
    v_pairs = torch.cat([v_for_l[valid], vis.flatten(0, 1)], dim=0)
    return l_pairs, v_pairs


def cib_terms(l_first: Tensor, l_last: Tensor, v_first: Tensor, v_last: Tensor, lang_mask: Tensor,
              upper: nn.Module, mvmi: MVMIEstimator) -> dict[str, Tensor]:
    """The CIB regulariser of ``compute_cib_v2``. l_first / l_last (B, L, D): the language tokens at the
    encoder input (word + position + type embeddings) and after the last layer; v_first / v_last (B, V, D):
    the visual tokens after the feature encoder and after the last layer; lang_mask (B, L). Returns scalars
    ``upper_bound_l`` = upper(valid l_first, valid l_last), ``upper_bound_v`` = upper(v_first, v_last),
    ``lower_bound_lv`` and ``skl`` of ``mvmi`` on the matched last-layer pairs (``skl`` divided by the number
    of pairs again, as the official code does), and ``cib = UB_l + UB_v - LB_lv + skl``."""
    valid = lang_mask > 0
    ub_l = upper(l_first[valid], l_last[valid])
    ub_v = upper(v_first.flatten(0, 1), v_last.flatten(0, 1))
    l_pairs, v_pairs = match_tokens(l_last, v_last, lang_mask)
    lb, skl = mvmi(l_pairs, v_pairs)
    skl = skl / l_pairs.shape[0]
    return {"upper_bound_l": ub_l, "upper_bound_v": ub_v, "lower_bound_lv": lb, "skl": skl,
            "cib": ub_l + ub_v - lb + skl}
