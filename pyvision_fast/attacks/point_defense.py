"""Pre-processing defences of point-cloud classifiers, as PointCAT evaluates them (re-implemented from
``shikiw/PointCAT:baselines/defense/drop_points/{SOR,SRS}.py``).

* ``sor_mask`` / ``sor``: statistical outlier removal (DUP-Net, ICCV 2019): a point's score is the mean
  squared distance to its ``k`` nearest neighbours (``pyvision_fast.ops.knn_points``, itself excluded); points
  scoring above ``mean + alpha * std`` of their cloud (unbiased std) are removed; k 2, alpha 1.1. ``sor``
  returns a batch again by refilling each cloud to ``num_points``: whole copies of the kept points, then a
  random subset of them (the official ``process_data``); more kept points than ``num_points`` are subsampled
  at random.
* ``srs``: simple random sampling: each cloud keeps ``N - num_drop`` random points (500 dropped by default).
* ``evaluate_point_robustness``: PointCAT's robustness table, the accuracy under every attack of
  ``attacks.point`` (clean, I-FGM, MI-FGM, C&W, drop, added points, jitter) times every defence here (none,
  SOR, SRS), each attack computed once against the undefended model; ``format_robustness_table`` prints it.

Clouds are (B, N, 3) float tensors.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .point import _check

__all__ = ["ATTACKS", "DEFENCES", "ROBUSTNESS_DEFAULTS", "attack_points", "defend_points",
           "evaluate_point_robustness", "format_robustness_table", "sor", "sor_mask", "srs"]


def sor_mask(points: Tensor, k: int = 2, alpha: float = 1.1) -> Tensor:
    """(B, N, 3) -> bool (B, N): True for the points SOR keeps (score <= mean + alpha * std, computed in
    float64)."""
    from ..ops import knn_points

    _check(points)
    n = points.shape[1]
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, {n}) for clouds of {n} points, got {k}")
    p = points.detach().double()
    dists = knn_points(p, p, K=k + 1).dists[..., 1:]      # the nearest is the point itself (distance 0)
    score = dists.mean(-1)
    threshold = score.mean(-1, keepdim=True) + alpha * score.std(-1, keepdim=True)
    return score <= threshold


def _refill(cloud: Tensor, num_points: int, generator: Optional[torch.Generator]) -> Tensor:
    m = len(cloud)
    if m >= num_points:
        idx = torch.randperm(m, generator=generator)[:num_points]
    else:
        extra = torch.randperm(m, generator=generator)[: num_points % m]
        idx = torch.cat([torch.arange(m).repeat(num_points // m), extra])
    return cloud[idx.to(cloud.device)]


def sor(points: Tensor, k: int = 2, alpha: float = 1.1, num_points: Optional[int] = None,
        generator: Optional[torch.Generator] = None) -> Tensor:
    """SOR as a batch defence: (B, N, 3) -> (B, num_points (default N), 3), each cloud's kept points refilled
    to ``num_points``."""
    keep = sor_mask(points, k, alpha)
    num_points = points.shape[1] if num_points is None else int(num_points)
    return torch.stack([_refill(points[i][keep[i]], num_points, generator) for i in range(len(points))])


def srs(points: Tensor, num_drop: int = 500, generator: Optional[torch.Generator] = None) -> Tensor:
    """Simple random sampling: (B, N, 3) -> (B, N - num_drop, 3), the kept points drawn at random per cloud.
    A ``num_drop`` of N or more keeps one point."""
    from .point import drop_points

    _check(points)
    return drop_points(points, min(int(num_drop), points.shape[1] - 1), generator)


# --- the robustness table ---------------------------------------------------------------------------------

ATTACKS = ("clean", "ifgm", "mifgm", "cw", "drop", "add", "jitter")
DEFENCES = ("none", "sor", "srs")
ROBUSTNESS_DEFAULTS: dict = dict(
    attacks=ATTACKS, defences=DEFENCES,
    attack_budget=0.08, attack_iters=50, attack_mu=1.0,        # I-FGM / MI-FGM (L2 budget 0.08 sqrt(3N))
    cw_lr=1e-2, cw_binary_steps=10, cw_iters=50,               # C&W perturbation
    drop_num=700, add_num=100, jitter_sigma=0.04, jitter_clip=0.16,
    sor_k=2, sor_alpha=1.1, srs_drop=500,
    batch_size=64, seed=0,
)


def _names(value, known: tuple, what: str) -> tuple:
    names = tuple(v.strip() for v in value.split(",")) if isinstance(value, str) else tuple(value)
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(f"unknown {what} {unknown or names}; known: {', '.join(known)}")
    return names


def attack_points(name: str, model, points: Tensor, labels: Tensor, s: dict,
                  generator: Optional[torch.Generator] = None) -> Tensor:
    """The clouds of attack ``name`` (one of ``ATTACKS``) on (points (B, N, 3), labels (B,)) with settings
    ``s`` (``ROBUSTNESS_DEFAULTS``'s keys)."""
    from . import point as P

    if name == "clean":
        return points
    if name == "ifgm":
        return P.ifgm(model, points, labels, s["attack_budget"], int(s["attack_iters"]))
    if name == "mifgm":
        return P.mifgm(model, points, labels, s["attack_budget"], int(s["attack_iters"]), s["attack_mu"])
    if name == "cw":
        return P.cw_perturb(model, points, labels, lr=s["cw_lr"], binary_steps=int(s["cw_binary_steps"]),
                            iters=int(s["cw_iters"]))[0]
    if name == "drop":
        return P.drop_points(points, int(s["drop_num"]), generator)
    if name == "add":
        return P.add_noise_points(points, int(s["add_num"]), generator)
    if name == "jitter":
        return P.jitter_points(points, s["jitter_sigma"], s["jitter_clip"], generator)
    raise ValueError(f"unknown attack {name!r}; known: {', '.join(ATTACKS)}")


def defend_points(name: str, points: Tensor, s: dict, num_points: int,
                  generator: Optional[torch.Generator] = None) -> Tensor:
    """Pre-processing defence ``name`` (one of ``DEFENCES``) of clouds (B, M, 3)."""
    if name == "none":
        return points
    if name == "sor":
        return sor(points, int(s["sor_k"]), s["sor_alpha"], num_points, generator)
    if name == "srs":
        return srs(points, int(s["srs_drop"]), generator)
    raise ValueError(f"unknown defence {name!r}; known: {', '.join(DEFENCES)}")


def evaluate_point_robustness(model, dataset, device, samples: Optional[int] = None, **settings) -> dict:
    """Accuracy of ``model`` on the first ``samples`` items (all when None) of ``dataset`` (items
    ``(points (N, 3), label)``) under every attack x pre-processing defence of ``settings``
    (``ROBUSTNESS_DEFAULTS`` overridden by the keyword arguments; ``attacks`` / ``defences`` as names or a
    comma-separated string).

    Each attack runs once per batch against the undefended model (eval mode); each defence then pre-processes
    its clouds before classification. Random attacks and defences draw from a generator seeded with ``seed``
    plus the process rank. Under torch.distributed each process takes items ``rank, rank + world, ...`` and
    the counts are summed. Returns ``{"robust/<attack>/<defence>": accuracy, "robust_samples": count}``.
    """
    unknown = set(settings) - set(ROBUSTNESS_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown robustness settings {sorted(unknown)}; "
                         f"known: {sorted(ROBUSTNESS_DEFAULTS)}")
    s = {**ROBUSTNESS_DEFAULTS, **settings}
    attacks = _names(s["attacks"], ATTACKS, "attacks")
    defences = _names(s["defences"], DEFENCES, "defences")
    dist = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if dist else (0, 1)
    n = len(dataset) if samples is None else min(int(samples), len(dataset))
    subset = torch.utils.data.Subset(dataset, list(range(rank, n, world)))
    loader = torch.utils.data.DataLoader(subset, batch_size=int(s["batch_size"]), shuffle=False)
    gen = torch.Generator().manual_seed(int(s["seed"]) + rank)
    min_points = getattr(model, "min_points", 1)
    correct = torch.zeros(len(attacks), len(defences), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        for points, labels in loader:
            points, labels = points.to(device), labels.to(device).long()
            num_points = points.shape[1]
            if "drop" in attacks and num_points - int(s["drop_num"]) < min_points:
                left = num_points - int(s["drop_num"])
                raise ValueError(f"drop_num={s['drop_num']} leaves {left} points, fewer than the "
                                 f"{min_points} the model needs; lower drop_num (--set drop_num=...)")
            for i, attack in enumerate(attacks):
                adv = attack_points(attack, model, points, labels, s, gen)
                for j, defence in enumerate(defences):
                    with torch.no_grad():
                        out = model(defend_points(defence, adv, s, num_points, gen))
                    logits = out[1] if isinstance(out, (tuple, list)) else out
                    correct[i, j] += (logits.argmax(1) == labels).sum()
            count += len(labels)
    finally:
        for m, training in flags:
            m.training = training
    if dist:
        torch.distributed.all_reduce(correct)
        torch.distributed.all_reduce(count)
    acc = (correct / count.clamp_min(1)).tolist()
    results = {f"robust/{a}/{d}": acc[i][j] for i, a in enumerate(attacks) for j, d in enumerate(defences)}
    results["robust_samples"] = int(count)
    return results


def format_robustness_table(results: dict) -> str:
    """The ``robust/<attack>/<defence>`` accuracies of ``evaluate_point_robustness`` as a text table (one row
    per attack, one column per defence, percentages); an empty string when there are none."""
    cells = {tuple(k.split("/")[1:]): v for k, v in results.items()
             if k.startswith("robust/") and k.count("/") == 2}
    if not cells:
        return ""
    attacks = list(dict.fromkeys(a for a, _ in cells))
    defences = list(dict.fromkeys(d for _, d in cells))
    width = max(len(a) for a in attacks + ["attack"])
    lines = [f"{'attack':<{width}}  " + "  ".join(f"{d:>7}" for d in defences)]
    for a in attacks:
        lines.append(f"{a:<{width}}  " + "  ".join(
            f"{100 * cells[(a, d)]:>6.2f}%" if (a, d) in cells else f"{'-':>7}" for d in defences))
    if "robust_samples" in results:
        lines.append(f"({results['robust_samples']} samples; accuracy under attack x pre-processing defence)")
    return "\n".join(lines)
