"""Projected gradient descent (PGD) in L∞ and L2, as used for adversarial training and evaluation.

Re-implemented from the behaviour of two official codes (shared/papers.md sections 6 and 7):

* the light recipe for robust ViTs (``dedeswim/vits-robustness-torch:src/attacks.py``): L∞ random start
  ``x + U(-ε, ε)`` then projection, step ``α·sign(∇)``, projection ``clamp(x_adv - x, -ε, ε)`` then clamp to the
  box; attack criterion ``NLLLoss(reduction="sum")`` on ``log_softmax`` (= summed cross-entropy); the attack runs
  with the model in **eval** mode and training continues in train mode.
* DAT (``alibaba/easyrobust:easyrobust/attacks/pgd.py``): L2 step ``x + α·g/(‖g‖₂ + 1e-10)`` per sample,
  projection ``(x_adv - x).renorm(p=2, dim=0, maxnorm=ε)`` then clamp; random start ``x + ε·n/‖n‖₂``,
  ``n ~ N(0, I)``, taken with probability ``random_start_prob`` (0.8 in DAT) **once per batch**
  (``random.random() < p`` — the whole batch starts randomly or none of it); soft-target CE for mixup targets;
  the attack in **train** mode (``eval_mode=False``).

Deliberate differences from those codes (none changes the attack's threat model):

* The gradient is taken with ``torch.autograd.grad`` w.r.t. the input only, so no parameter ``.grad`` is
  touched (easyrobust calls ``.backward()``, which accumulates parameter gradients into the next optimizer step
  unless they are zeroed).
* The light recipe adds ``+1e-5`` to the L∞ random start and draws its L2 start as ``N(-ε, ε)`` noise; we use the
  plain ``U(-ε, ε)`` start and easyrobust's ε-sphere start for L2.
* The per-batch coin of ``random_start=p`` is drawn from torch's generator (``generator`` or the global one), not
  Python's ``random``, so the engine's seed governs it; ``random_start_per_sample=True`` draws one coin per sample.
* The loss is summed over the batch (the light recipe) rather than averaged (easyrobust); both L∞ (sign) and L2
  (per-sample normalised) steps are invariant to that scale.
* ε = 0 returns the (box-clamped) input without running the model (the official codes run the steps and project
  back onto x; the result is the same).
* A ``DistributedDataParallel`` model is attacked through its ``.module`` (same parameters, no reducer hooks).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["NORMS", "attack_mode", "ce_attack_loss", "pgd", "project", "random_start_delta"]

NORMS = ("linf", "l2")
LossFn = Callable[[Tensor, Tensor], Tensor]


def ce_attack_loss(logits: Tensor, y: Tensor) -> Tensor:
    """The default attack objective: cross-entropy **summed** over the batch, computed in float32.

    Args:
        logits: (B, C) any float dtype (e.g. bfloat16 under autocast).
        y: (B,) int64 class indices, or (B, C) float soft targets (mixup/cutmix/label smoothing, rows sum to 1).
    Returns:
        a float32 scalar: ``-Σ_b log p_b[y_b]`` or ``-Σ_b Σ_c y_bc log p_bc``.
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    if y.is_floating_point():
        if y.shape != logp.shape:
            raise ValueError(f"soft targets must have the logits' shape {tuple(logp.shape)}, got {tuple(y.shape)}")
        return -(y.to(logp.dtype) * logp).sum()
    return F.nll_loss(logp, y, reduction="sum")


@contextlib.contextmanager
def attack_mode(model: nn.Module, eval_mode: bool) -> Iterator[nn.Module]:
    """Puts ``model`` in eval mode when ``eval_mode`` (leaves it as it is otherwise) and restores every
    submodule's own ``training`` flag on exit (not just the root's: frozen submodules stay in eval)."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        if eval_mode:
            model.eval()
        yield model
    finally:
        for m, training in flags:
            m.training = training


def _per_sample(v: Tensor, x: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) broadcastable against x."""
    return v.view(-1, *([1] * (x.dim() - 1)))


def project(x: Tensor, x_adv: Tensor, eps: float, norm: str = "linf",
            clamp: Optional[Sequence[float]] = (0.0, 1.0)) -> Tensor:
    """Projects ``x_adv`` onto the ε-ball around ``x`` (per sample), then onto the box ``clamp``.

    L∞: ``δ = clamp(x_adv - x, -ε, ε)``; L2: ``δ = (x_adv - x).renorm(p=2, dim=0, maxnorm=ε)`` (each sample's
    whole δ[b] scaled down to norm ε when larger). Then ``clamp(x + δ, lo, hi)`` (which only shrinks δ).
    Shapes (B, ...), same dtype; returns a new tensor.
    """
    d = x_adv - x
    if norm == "linf":
        d = d.clamp(-eps, eps)
    elif norm == "l2":
        d = d.renorm(p=2, dim=0, maxnorm=eps) if d.dim() > 1 else d.clamp(-eps, eps)
    else:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    out = x + d
    if clamp is not None:
        out = out.clamp(clamp[0], clamp[1])
    return out


def random_start_delta(x: Tensor, eps: float, norm: str = "linf", generator: Optional[torch.Generator] = None) -> Tensor:
    """A random start δ of x's shape/dtype: L∞ ``U(-ε, ε)`` per element; L2 ``ε·n/‖n‖₂`` per sample,
    ``n ~ N(0, I)`` (a uniform direction on the ε-sphere)."""
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (2.0 * u - 1.0) * eps
    if norm == "l2":
        n = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        nrm = _per_sample(n.flatten(1).norm(dim=1), n)
        return eps * n / (nrm + 1e-10)
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def _start_mask(x: Tensor, prob: float, per_sample: bool, generator: Optional[torch.Generator]) -> Optional[Tensor]:
    """None (no random start), True-everywhere (all samples) or a (B, 1, ..) float mask."""
    if prob <= 0.0:
        return None
    if prob >= 1.0:
        return torch.ones((), device=x.device, dtype=x.dtype)
    if per_sample:
        coin = torch.rand((x.shape[0],), generator=generator, device=x.device) < prob
        return _per_sample(coin.to(x.dtype), x)
    coin = torch.rand((), generator=generator, device=x.device) < prob
    return None if not bool(coin) else torch.ones((), device=x.device, dtype=x.dtype)


def pgd(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, steps: int, step_size: Optional[float] = None,
        norm: str = "linf", random_start: Union[bool, float] = True, random_start_per_sample: bool = False,
        loss_fn: Optional[LossFn] = None, eval_mode: bool = True, clamp: Optional[Sequence[float]] = (0.0, 1.0),
        targeted: bool = False, generator: Optional[torch.Generator] = None) -> Tensor:
    """PGD adversarial examples (untargeted: maximise ``loss_fn(model(x_adv), y)``).

    Args:
        model: maps (B, ...) inputs in the box ``clamp`` (e.g. [0, 1] images, normalisation inside the model) to
            (B, C) logits. A DDP wrapper is unwrapped.
        x: (B, ...) float inputs (not modified; need not require grad).
        y: (B,) int64 labels, (B, C) float soft targets, or whatever ``loss_fn`` takes (targets when ``targeted``).
        eps: radius of the threat model (L∞: per element; L2: per sample), in the input's units (4/255 ...).
        steps: number of gradient steps (0: random start only).
        step_size: α; default ``1.5 * eps / steps`` (the light recipe; it passes α from the *final* ε).
        norm: ``"linf"`` (step ``α·sign(g)``) or ``"l2"`` (step ``α·g/‖g‖₂`` per sample).
        random_start: True/False, or a probability p in [0, 1] (DAT: 0.8) of starting from a random point of the
            ball instead of x; p is drawn per batch (easyrobust) or per sample (``random_start_per_sample``).
        loss_fn: ``(logits, y) -> scalar`` to maximise; default ``ce_attack_loss`` (summed CE, soft targets ok).
        eval_mode: attack with the model in eval mode (light recipe) and restore every module's mode afterwards;
            False keeps the current mode (DAT attacks in train mode).
        clamp: (lo, hi) box of valid inputs, or None for no box.
        targeted: minimise the loss instead (y = the target classes).
        generator: torch generator on x's device for the random start (default: the global RNG).
    Returns:
        x_adv: (B, ...) detached, x's dtype, with ``‖x_adv - x‖ ≤ eps`` per sample and inside ``clamp``.

    Works under ``torch.no_grad``/``inference_mode`` (grad is re-enabled locally; inference tensors are cloned)
    and under autocast (the loss is computed in float32; the gradient is w.r.t. the float input). Parameter
    ``.grad`` fields are never written.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if not (eps >= 0):
        raise ValueError(f"eps must be >= 0, got {eps}")
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps}")
    prob = float(random_start)
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"random_start must be a bool or a probability in [0, 1], got {random_start}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating tensor, got {x.dtype}")
    if step_size is None:
        step_size = 1.5 * eps / steps if steps > 0 else 0.0
    loss_fn = ce_attack_loss if loss_fn is None else loss_fn
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module

    with torch.inference_mode(False):
        x0 = x.detach().clone()
        y = y.detach().clone() if isinstance(y, Tensor) else y
        if eps == 0:
            return x0.clamp(clamp[0], clamp[1]) if clamp is not None else x0
        mask = _start_mask(x0, prob, random_start_per_sample, generator)
        x_adv = x0 if mask is None else project(x0, x0 + mask * random_start_delta(x0, eps, norm, generator),
                                                eps, norm, clamp)
        if mask is None and clamp is not None:
            x_adv = x_adv.clamp(clamp[0], clamp[1])
        with attack_mode(model, eval_mode), torch.enable_grad():
            for _ in range(steps):
                x_adv = x_adv.detach().requires_grad_(True)
                loss = loss_fn(model(x_adv), y)
                (grad,) = torch.autograd.grad(loss, x_adv)
                if targeted:
                    grad = -grad
                if norm == "linf":
                    direction = grad.sign()
                else:
                    gn = _per_sample(grad.flatten(1).norm(dim=1), grad)
                    direction = grad / (gn + 1e-10)
                x_adv = project(x0, x_adv.detach() + step_size * direction, eps, norm, clamp)
        return x_adv.detach()
