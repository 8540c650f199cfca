"""PointCAT's losses (shared/papers.md section 5; re-implemented from ``shikiw/PointCAT:loss/*.py`` and
``solver.py``).

* ``supcon_loss``: supervised contrastive loss over the 2B projections ``[z_a; z_b]`` (τ 0.1). With one
  positive per anchor (every label distinct) it is NT-Xent (SimCLR).
* ``centralizing_loss``: cross-entropy of each projection against all class prototypes, the own class being
  the positive (τ 0.25).
* ``generator_loss``: the noise generator's ``mean(-exp(-s(ori, adv)/τ) - β exp(-s(fp_y, adv)/τ))`` (τ 0.1,
  β 0.5): minimising it pushes the adversarial projection away from the clean one and from its class
  prototype.
* ``cw_margin_loss``: the C&W logit margin (targeted or not, with margin κ), used by the prototype search and
  the point attacks.

Similarities are cosine by default (the official README trains with ``--use_cosine_similarity``);
``cosine=False`` uses dot products. The official code evaluates the symmetric similarities "in both
directions" and averages over 2B rows; both directions are equal, so the means here over B rows are the same
numbers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["centralizing_loss", "cw_margin_loss", "generator_loss", "pairwise_similarity", "supcon_loss"]


def _check_features(name: str, z: Tensor) -> None:
    if not isinstance(z, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(z).__name__}")
    if z.dim() != 2:
        raise ValueError(f"{name} must be (B, D), got shape {tuple(z.shape)}")
    if not z.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {z.dtype}")


def _check_labels(labels: Tensor, batch: int, num_classes: int | None = None, name: str = "labels") -> Tensor:
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(labels).__name__}")
    if labels.dim() != 1 or labels.numel() != batch:
        raise ValueError(f"{name} must be ({batch},), got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {labels.dtype}")
    if num_classes is not None and batch and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"{name} must lie in [0, {num_classes}), got range [{int(labels.min())}, "
                         f"{int(labels.max())}]")
    return labels.long()


def pairwise_similarity(a: Tensor, b: Tensor, cosine: bool = True) -> Tensor:
    """(N, D) x (M, D) -> (N, M): cosine similarities (each row normalised, norms clamped at 1e-8 as
    ``F.cosine_similarity`` does) or dot products."""
    if cosine:
        a = a / a.norm(dim=1, keepdim=True).clamp_min(1e-8)
        b = b / b.norm(dim=1, keepdim=True).clamp_min(1e-8)
    return a @ b.t()


def supcon_loss(z_a: Tensor, z_b: Tensor, labels: Tensor, temperature: float = 0.1,
                cosine: bool = True) -> Tensor:
    """Supervised contrastive loss (Khosla et al.; PointCAT's ``SupConLoss``) of two views.

    Args:
        z_a, z_b: (B, D) projections of the two views (PointCAT: adversarial and clean), float.
        labels: (B,) integer class of each sample (shared by its two views).
    Returns:
        scalar: ``-mean_i sum_{p in P(i)} log(exp(s_ip/τ) / sum_{a != i} exp(s_ia/τ)) / |P(i)|`` over the 2B
        rows of ``z = [z_a; z_b]``, P(i) = the other rows of the same label (at least the other view of sample
        i).
    """
    _check_features("z_a", z_a)
    _check_features("z_b", z_b)
    if z_a.shape != z_b.shape:
        raise ValueError(f"z_a and z_b must have the same shape, got {tuple(z_a.shape)} and "
                         f"{tuple(z_b.shape)}")
    labels = _check_labels(labels, z_a.shape[0])
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = torch.cat([z_a, z_b], 0)
    y = labels.repeat(2)
    n = z.shape[0]
    logits = pairwise_similarity(z, z, cosine) / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    log_prob = logits - torch.logsumexp(logits.masked_fill(self_mask, float("-inf")), dim=1, keepdim=True)
    pos = (y[:, None] == y[None, :]) & ~self_mask
    mean_log_prob_pos = (log_prob * pos).sum(1) / pos.sum(1)
    return -mean_log_prob_pos.mean()


def centralizing_loss(rep: Tensor, prototypes: Tensor, labels: Tensor, temperature: float = 0.25,
                      cosine: bool = True) -> Tensor:
    """PointCAT's ``NTCentLoss``: ``mean_i -log softmax_k(s(rep_i, fp_k)/τ)[y_i]``.

    Args:
        rep: (B, D) projections; prototypes: (M, D) projected class prototypes; labels: (B,) in [0, M).
    Returns:
        scalar cross-entropy of the similarity logits, the own class's prototype being the positive.
    """
    _check_features("rep", rep)
    _check_features("prototypes", prototypes)
    if rep.shape[1] != prototypes.shape[1]:
        raise ValueError(f"rep (B, {rep.shape[1]}) and prototypes (M, {prototypes.shape[1]}) differ in width")
    labels = _check_labels(labels, rep.shape[0], prototypes.shape[0])
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return F.cross_entropy(pairwise_similarity(rep, prototypes, cosine) / temperature, labels)


def generator_loss(ori: Tensor, adv: Tensor, proto: Tensor, temperature: float = 0.1, beta: float = 0.5,
                   cosine: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """PointCAT's ``NTAdvLoss`` (the noise generator minimises it).

    Args:
        ori, adv: (B, D) projections of the clean and the adversarial clouds; proto: (B, D) the projected
            prototype of each sample's class.
    Returns:
        (loss, l1, l2): ``mean(-exp(-l1) - β exp(-l2))`` with ``l1 = s(ori, adv)/τ``, ``l2 = s(proto, adv)/τ``
        per sample, and the batch means of l1 and l2 (for logging).
    """
    for name, z in (("ori", ori), ("adv", adv), ("proto", proto)):
        _check_features(name, z)
    if not (ori.shape == adv.shape == proto.shape):
        raise ValueError(f"ori, adv and proto must have one shape, got {tuple(ori.shape)}, "
                         f"{tuple(adv.shape)}, {tuple(proto.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if cosine:
        l1 = F.cosine_similarity(ori, adv, dim=1) / temperature
        l2 = F.cosine_similarity(proto, adv, dim=1) / temperature
    else:
        l1 = (ori * adv).sum(1) / temperature
        l2 = (proto * adv).sum(1) / temperature
    loss = (-torch.exp(-l1) - beta * torch.exp(-l2)).mean()
    return loss, l1.mean(), l2.mean()


def cw_margin_loss(logits: Tensor, target: Tensor, kappa: float = 0.0, targeted: bool = True,
                   reduction: str = "sum") -> Tensor:
    """C&W logit margin (Carlini & Wagner), per sample.

    targeted: ``max(max_{j != t} z_j - z_t, kappa)`` (PointCAT's ``CWLoss(tar=True)``; its prototype search
    uses kappa = -100, i.e. pushes the target logit up until it leads the others by 100); untargeted:
    ``max(z_y - max_{j != y} z_j + kappa, 0)`` (the point attacks' ``LogitsAdvLoss(mode="untargeted")``, kappa
    0), which the attacks descend.

    Args:
        logits: (B, K); target: (B,) class in [0, K).
        reduction: "sum" | "mean" | "none".
    """
    _check_features("logits", logits)
    target = _check_labels(target, logits.shape[0], logits.shape[1], "target")
    real = logits.gather(1, target[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(target, logits.shape[1]).bool(), float("-inf")).amax(1)
    if targeted:
        loss = torch.clamp(other - real, min=kappa)
    else:
        loss = torch.clamp(real - other + kappa, min=0.0)
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be sum, mean or none, got {reduction!r}")
