"""Adversarial attacks for training and evaluation.

* ``pgd(model, x, y, *, eps, steps, step_size=None, norm="linf"|"l2", random_start=True|p, ...)``: PGD in L∞/L2
  with random start, projection and [0, 1] clamp; eval-mode or train-mode attack; no parameter gradients.
* ``trades_loss``: the TRADES objective (KL to the clean prediction) with its KL-maximising attack.
* ``eps_at_epoch`` / ``make_eps_schedule`` / ``default_step_size``: the light recipe's per-epoch ε warm-up.
* ``add_input_normalization``: normalisation inside a model (inputs in [0, 1]) without renaming its weights.
* point clouds (PointCAT): ``ifgm``, ``mifgm``, ``cw_perturb``, ``drop_points``, ``jitter_points``,
  ``add_noise_points``; defences ``sor`` / ``srs``; ``evaluate_point_robustness`` and its table.
"""
from .normalize import IMAGENET_MEAN, IMAGENET_STD, add_input_normalization, has_input_normalization
from .pgd import NORMS, attack_mode, ce_attack_loss, pgd, project, random_start_delta
from .schedules import EPS_SCHEDULES, default_step_size, eps_at_epoch, make_eps_schedule
from .point import add_noise_points, cw_perturb, drop_points, ifgm, jitter_points, mifgm
from .point_defense import evaluate_point_robustness, format_robustness_table, sor, sor_mask, srs
from .trades import kl_attack_loss, trades_loss

__all__ = ["EPS_SCHEDULES", "IMAGENET_MEAN", "IMAGENET_STD", "NORMS", "add_input_normalization", "attack_mode",
           "ce_attack_loss", "default_step_size", "eps_at_epoch", "has_input_normalization", "kl_attack_loss",
           "make_eps_schedule", "pgd", "project", "random_start_delta", "trades_loss", "add_noise_points",
           "cw_perturb", "drop_points", "evaluate_point_robustness", "format_robustness_table", "ifgm",
           "jitter_points", "mifgm", "sor", "sor_mask", "srs"]
