"""TRADES (Zhang et al., 2019) as implemented by the light recipe for robust ViTs (``--set loss=trades``).

Behaviour re-implemented from ``dedeswim/vits-robustness-torch:src/attacks.py`` (``TRADESLoss``):

1. ``p = softmax(model(x))`` with the model in eval mode (no grad): the attack's fixed target.
2. ``x_adv = PGD`` maximising ``KLDivLoss(reduction="sum")(log_softmax(model(x_adv)), p)`` (same ε, steps, α
   and random start as the plain attack; eval mode).
3. In the model's own (train) mode: ``loss = natural(model(x), y) + β · KL_sum(log_softmax(model(x_adv)),
   softmax(model(x))) / B``; gradients flow through both the clean and the adversarial branch (nothing detached).

The KL term is ``nn.KLDivLoss``'s convention, i.e. ``KL(p_clean ‖ p_adv) = Σ p_clean (log p_clean − log p_adv)``,
averaged over the batch. β's default 6.0 is the TRADES paper's (the light recipe takes it from its CLI).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .pgd import attack_mode, pgd

__all__ = ["kl_attack_loss", "trades_loss"]


def kl_attack_loss(logits: Tensor, p_clean: Tensor) -> Tensor:
    """``Σ_b KL(p_clean_b ‖ softmax(logits_b))`` in float32; logits (B, C), p_clean (B, C) probabilities."""
    return F.kl_div(F.log_softmax(logits.float(), dim=-1), p_clean.float(), reduction="sum")


def trades_loss(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, steps: int, step_size: Optional[float] = None,
                beta: float = 6.0, norm: str = "linf", random_start: Union[bool, float] = True,
                eval_mode: bool = True, clamp: Optional[Sequence[float]] = (0.0, 1.0),
                natural_loss_fn: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
                generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor, Tensor]:
    """TRADES loss of one batch.

    Args:
        model: (B, ...) inputs in ``clamp`` -> (B, C) logits; called in its current mode for the loss.
        x: (B, ...) float inputs; y: (B,) int64 labels or (B, C) soft targets for ``natural_loss_fn``.
        eps, steps, step_size, norm, random_start, clamp, generator: as ``pgd``.
        beta: weight of the robust (KL) term.
        eval_mode: compute the clean target and run the attack in eval mode (mode restored afterwards).
        natural_loss_fn: ``(logits, y) -> scalar`` for the clean term; default mean cross-entropy.
    Returns:
        (loss scalar, clean logits (B, C), adversarial logits (B, C)).
    """
    with attack_mode(model, eval_mode), torch.no_grad():
        p_clean = F.softmax(model(x.detach()).float(), dim=-1)
    x_adv = pgd(model, x, p_clean, eps=eps, steps=steps, step_size=step_size, norm=norm, random_start=random_start,
                loss_fn=kl_attack_loss, eval_mode=eval_mode, clamp=clamp, generator=generator)
    logits = model(x)
    logits_adv = model(x_adv)
    if natural_loss_fn is None:
        natural = F.cross_entropy(logits.float(), y)
    else:
        natural = natural_loss_fn(logits, y)
    robust = F.kl_div(F.log_softmax(logits_adv.float(), dim=-1), F.softmax(logits.float(), dim=-1),
                      reduction="sum") / x.shape[0]
    return natural + beta * robust, logits, logits_adv
