"""Per-epoch ε schedules of adversarial training (the ε warm-up of the light recipe for robust ViTs).

Re-implemented from the behaviour of ``dedeswim/vits-robustness-torch:src/attacks.py``
(``make_linear_schedule``/``make_sine_schedule``/``"constant"``), boundary handling included:

* ``linear``: ``0`` if ``e < zero_eps_epochs``; ``(e - zero_eps_epochs) / period * eps`` if ``e < period``;
  else ``eps``.
* ``sine``: ``0`` if ``e < zero_eps_epochs``; ``0.5 * eps * (1 + sin(pi * ((e - zero_eps_epochs) / period - 0.5)))``
  if ``e < period``; else ``eps``.
* ``constant``: ``eps`` at every epoch.

Facts of the official code kept on purpose (documented, tested):

* ``epoch`` is the 0-based epoch index (timm's loop), so with ``linear`` and ``zero_eps_epochs=0`` the first epoch
  trains with ε = 0 and ε reaches its final value at epoch ``period``.
* The ramp divides by ``period``, not ``period - zero_eps_epochs``: with ``zero_eps_epochs > 0`` the ramp does not
  reach ``eps`` before epoch ``period`` and then jumps to ``eps`` (e.g. zero 2, period 10: epoch 9 → 0.7·ε,
  epoch 10 → ε). ``period`` counts from epoch 0, not from the end of the zero phase.
* ``period <= zero_eps_epochs`` gives 0 for ``e < zero_eps_epochs`` and ``eps`` afterwards; ``period = 0``
  (with no zero phase) is the constant schedule.
* The step size of the attack is derived from the *final* ε (``default_step_size``), not the scheduled one.
"""
from __future__ import annotations

import math
from typing import Callable

__all__ = ["EPS_SCHEDULES", "default_step_size", "eps_at_epoch", "make_eps_schedule"]

EPS_SCHEDULES = ("linear", "sine", "constant")


def _check(name: str, eps: float, period: int, zero_eps_epochs: int) -> None:
    if name not in EPS_SCHEDULES:
        raise ValueError(f"eps schedule must be one of {EPS_SCHEDULES}, got {name!r}")
    if not (isinstance(eps, (int, float)) and eps >= 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if int(period) != period or period < 0:
        raise ValueError(f"period must be an integer number of epochs >= 0, got {period!r}")
    if int(zero_eps_epochs) != zero_eps_epochs or zero_eps_epochs < 0:
        raise ValueError(f"zero_eps_epochs must be an integer >= 0, got {zero_eps_epochs!r}")


def eps_at_epoch(epoch: int, eps: float, schedule: str = "linear", period: int = 10,
                 zero_eps_epochs: int = 0) -> float:
    """ε used during (0-based) ``epoch``; see the module docstring for the formulas.

    Args:
        epoch: 0-based epoch index (must be >= 0).
        eps: the final ε (in the input's units, e.g. ``4 / 255`` for [0, 1] images).
        schedule: ``"linear"``, ``"sine"`` or ``"constant"``.
        period: warm-up length in epochs, counted from epoch 0.
        zero_eps_epochs: epochs at the start trained with ε = 0.
    Returns:
        a Python float in ``[0, eps]``.
    """
    _check(schedule, eps, period, zero_eps_epochs)
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    eps = float(eps)
    if schedule == "constant":
        return eps
    if epoch < zero_eps_epochs:
        return 0.0
    if epoch < period:
        t = (epoch - zero_eps_epochs) / period
        if schedule == "linear":
            return t * eps
        return 0.5 * eps * (1.0 + math.sin(math.pi * (t - 0.5)))
    return eps


def make_eps_schedule(schedule: str, eps: float, period: int = 10, zero_eps_epochs: int = 0) -> Callable[[int], float]:
    """The schedule as a function ``epoch -> ε`` (arguments checked once, here)."""
    _check(schedule, eps, period, zero_eps_epochs)

    def fn(epoch: int) -> float:
        return eps_at_epoch(epoch, eps, schedule, period, zero_eps_epochs)

    return fn


def default_step_size(eps: float, steps: int) -> float:
    """The light recipe's PGD step size ``1.5 * eps / steps`` (``eps`` = the final ε, ``steps`` >= 1)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return 1.5 * float(eps) / steps
