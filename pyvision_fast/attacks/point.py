"""Attacks on point-cloud classifiers, as PointCAT evaluates them (shared/papers.md section 5; re-implemented
from ``shikiw/PointCAT:baselines/attack/{FGM,CW,Drop,Noise}`` and ``arguments.py``).

* ``ifgm`` / ``mifgm``: untargeted iterative fast gradient method in L2 (and its momentum variant, mu = 1):
  ``x <- x - a * g / ||g||_2`` on the C&W logit margin ``max(z_y - max_{j != y} z_j, 0)`` (batch mean), then
  projection of ``x - x0`` onto the L2 ball of radius ``budget * sqrt(3N)`` per cloud; step
  ``a = budget * sqrt(3N) / iters``. PointCAT's defaults: budget 0.08, 50 iterations. MI-FGM accumulates
  ``m <- mu m + g / ||g||_1`` and steps along ``m / ||m||_2``.
* ``cw_perturb``: the C&W perturbation attack (Xiang et al., CVPR 2019): Adam (lr 1e-2) on the cloud
  minimising ``margin + w_b ||x - x0||_2`` per cloud, 10 binary-search steps over ``w_b`` in [0, 80] from 10,
  50 iterations each; returns the closest misclassified cloud found (the clean cloud where none was).
* ``drop_points``: random point dropping (PointCAT tests with 700 of 1024 points dropped).
* ``jitter_points`` ("perturb noise"): ``x + clamp(sigma N(0, 1), -clip, clip)`` per coordinate (sigma 0.04,
  clip 0.16 in PointCAT's test).
* ``add_noise_points`` ("additive noise"): appends points drawn uniformly from each cloud's bounding box.

Deliberate differences from the official code: the gradients are taken with ``torch.autograd.grad`` w.r.t. the
cloud only (no parameter ``.grad`` is touched); I-FGM/MI-FGM/C&W start from the clean cloud instead of adding
``1e-7 N(0, 1)`` first, so the budget holds around the clean cloud exactly; the C&W bookkeeping is vectorised
in torch. The model runs in eval mode and is restored to its own modes afterwards. Clouds are (B, N, 3) float
tensors; models return logits or ``(features, logits)``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from ..losses.pointcat import cw_margin_loss
from ..ops.pointcloud import check_finite_points
from .pgd import attack_mode

__all__ = ["add_noise_points", "cw_perturb", "drop_points", "ifgm", "jitter_points", "logits_of", "mifgm"]


def logits_of(model: nn.Module, points: Tensor) -> Tensor:
    """The logits (B, K) of ``model(points)``, whether it returns logits or ``(features, logits)``."""
    out = model(points)
    return out[1] if isinstance(out, (tuple, list)) else out


def _check(points: Tensor, labels: Optional[Tensor] = None) -> None:
    if not isinstance(points, Tensor):
        raise TypeError(f"points must be a tensor, got {type(points).__name__}")
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"points must be (B, N, 3), got shape {tuple(points.shape)}")
    if not points.is_floating_point():
        raise TypeError(f"points must be a floating tensor, got {points.dtype}")
    check_finite_points(points, None, "point attack")
    if labels is not None and (labels.dim() != 1 or len(labels) != len(points)):
        raise ValueError(f"labels must be ({len(points)},), got shape {tuple(labels.shape)}")


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _margin_grad(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        loss = cw_margin_loss(logits_of(model, x), y, kappa=0.0, targeted=False, reduction="mean")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def _norm(v: Tensor, p: int = 2) -> Tensor:
    return v.flatten(1).norm(p=p, dim=1)[:, None, None]


def _project_l2(x0: Tensor, x: Tensor, radius: float) -> Tensor:
    d = x - x0
    return x0 + d * (radius / (_norm(d) + 1e-12)).clamp(max=1.0)


def _fgm_loop(model, points, labels, budget, iters, mu: Optional[float]) -> Tensor:
    _check(points, labels)
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    radius = budget * math.sqrt(points.shape[1] * 3)
    step = radius / iters
    net = _unwrap(model)
    x0 = points.detach()
    x = x0.clone()
    momentum = torch.zeros_like(x0)
    with attack_mode(net, True):
        for _ in range(iters):
            g = _margin_grad(net, x, labels)
            if mu is None:
                direction = g / (_norm(g) + 1e-9)
            else:
                momentum = mu * momentum + g / (_norm(g, 1) + 1e-9)
                direction = momentum / (_norm(momentum) + 1e-9)
            x = _project_l2(x0, x - step * direction, radius)
    return x.detach()


def ifgm(model: nn.Module, points: Tensor, labels: Tensor, budget: float = 0.08, iters: int = 50) -> Tensor:
    """Untargeted L2 I-FGM; returns adversarial clouds (B, N, 3) with ``||x_adv - x||_2 <= budget
    sqrt(3N)``."""
    return _fgm_loop(model, points, labels, budget, iters, None)


def mifgm(model: nn.Module, points: Tensor, labels: Tensor, budget: float = 0.08, iters: int = 50,
          mu: float = 1.0) -> Tensor:
    """Untargeted L2 MI-FGM (momentum ``mu``); same budget as ``ifgm``."""
    return _fgm_loop(model, points, labels, budget, iters, float(mu))


def cw_perturb(model: nn.Module, points: Tensor, labels: Tensor, lr: float = 1e-2, binary_steps: int = 10,
               iters: int = 50, init_weight: float = 10.0, max_weight: float = 80.0, kappa: float = 0.0
               ) -> tuple[Tensor, Tensor]:
    """Untargeted C&W perturbation attack with a binary search over the weight of the L2 distance.

    Each binary step restarts Adam from the clean cloud and minimises ``max(z_y - max_{j != y} z_j + kappa, 0)
    (batch mean) + mean_b w_b ||x_b - x0_b||_2``; every iterate that is misclassified and closer than the best
    so far is kept. After a step, a cloud that found a misclassified iterate in it raises its lower bound to
    w_b, otherwise its upper bound drops to w_b; w_b becomes the midpoint (the official rule).

    Returns:
        (x_adv (B, N, 3): the closest misclassified iterate, or the clean cloud where none was found;
         dist (B,): its L2 distance to the clean cloud, inf where the attack failed).
    """
    _check(points, labels)
    net = _unwrap(model)
    x0 = points.detach()
    b = len(x0)
    lower = torch.zeros(b, dtype=torch.float64, device=x0.device)
    upper = torch.full_like(lower, float(max_weight))
    weight = torch.full_like(lower, float(init_weight))
    best_dist = torch.full((b,), float("inf"), dtype=torch.float64, device=x0.device)
    best = x0.clone()
    with attack_mode(net, True):
        for _ in range(binary_steps):
            x = x0.clone().requires_grad_(True)
            opt = torch.optim.Adam([x], lr=lr, weight_decay=0.0)
            step_best = torch.full_like(best_dist, float("inf"))
            for _ in range(iters):
                with torch.enable_grad():
                    logits = logits_of(net, x)
                    dist = (x - x0).flatten(1).norm(dim=1)
                    with torch.no_grad():
                        wrong = logits.argmax(1) != labels
                        d64 = dist.detach().double()
                        step_best = torch.where(wrong & (d64 < step_best), d64, step_best)
                        better = wrong & (d64 < best_dist)
                        best_dist = torch.where(better, d64, best_dist)
                        best[better] = x.detach()[better]
                    loss = cw_margin_loss(logits, labels, kappa=kappa, targeted=False, reduction="mean") + \
                        (weight.to(dist.dtype) * dist).mean()
                    (grad,) = torch.autograd.grad(loss, x)
                x.grad = grad
                opt.step()
            found = torch.isfinite(step_best) & (step_best <= best_dist)
            lower = torch.where(found, torch.maximum(lower, weight), lower)
            upper = torch.where(found, upper, torch.minimum(upper, weight))
            weight = (lower + upper) / 2
    return best.detach(), best_dist.to(points.dtype)


def drop_points(points: Tensor, num_drop: int = 700, generator: Optional[torch.Generator] = None) -> Tensor:
    """Random point dropping: each cloud keeps ``N - num_drop`` of its points, drawn without replacement in
    random order. (B, N, 3) -> (B, N - num_drop, 3)."""
    _check(points)
    n = points.shape[1]
    if not 0 <= num_drop < n:
        raise ValueError(f"num_drop must be in [0, {n}) for clouds of {n} points, got {num_drop}")
    keys = torch.rand(points.shape[:2], generator=generator, device="cpu").to(points.device)
    idx = keys.argsort(dim=1)[:, : n - num_drop]
    return points.gather(1, idx[..., None].expand(-1, -1, 3))


def jitter_points(points: Tensor, sigma: float = 0.04, clip: float = 0.16,
                  generator: Optional[torch.Generator] = None) -> Tensor:
    """Gaussian "perturb" noise: ``x + clamp(sigma * N(0, 1), -clip, clip)`` per coordinate."""
    _check(points)
    if sigma < 0 or clip <= 0:
        raise ValueError(f"sigma must be >= 0 and clip > 0, got sigma={sigma}, clip={clip}")
    noise = torch.randn(points.shape, generator=generator, dtype=points.dtype, device="cpu").to(points.device)
    return points + (sigma * noise).clamp(-clip, clip)


def add_noise_points(points: Tensor, num_add: int = 100,
                     generator: Optional[torch.Generator] = None) -> Tensor:
    """Additive noise points: appends ``num_add`` points drawn uniformly from each cloud's axis-aligned
    bounding box. (B, N, 3) -> (B, N + num_add, 3); the original points come first, unchanged."""
    _check(points)
    if num_add < 0:
        raise ValueError(f"num_add must be >= 0, got {num_add}")
    lo, hi = points.amin(1, keepdim=True), points.amax(1, keepdim=True)
    u = torch.rand((len(points), num_add, 3), generator=generator, dtype=points.dtype, device="cpu")
    return torch.cat([points, lo + (hi - lo) * u.to(points.device)], 1)
