"""GAN losses of StyleGAN2 (NVlabs stylegan2-ada-pytorch, ``training/loss.py``), as plain functions.

* ``g_nonsaturating_loss(fake_logits)`` = mean softplus(-D(G(z))) = -log sigmoid(D(G(z))).
* ``d_nonsaturating_loss(real_logits, fake_logits)`` = mean softplus(D(G(z))) + mean softplus(-D(x)).
* ``r1_penalty(real_logits, real_img)``: per sample ||d D(x) / d x||^2 (N,), differentiable (create_graph),
  for the R1 term ``gamma / 2 * r1`` (lazy: every 16 discriminator steps, weighted by the interval).
* ``path_length_penalty(img, ws, pl_mean, decay)``: per sample (|J_w^T y| - a)^2 with y ~ N(0, 1) / sqrt(H W)
  and a the running mean of the lengths (``pl_mean``, updated with ``decay`` 0.01); returns (penalty (N,), the
  new pl_mean).
* ``ema_beta(batch_size, ema_kimg, cur_nimg=None, rampup=None)``: the official EMA decay of G, 0.5 ** (batch /
  ema_nimg) (half-life ``ema_kimg`` thousand images, optionally ramped up with the images seen).

Logits are (N,) or (N, 1) float tensors. R1 and the path length differentiate gradients: the networks must
be differentiable twice (the StyleGAN2 models are: their fused ops have a double backward).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["g_nonsaturating_loss", "d_nonsaturating_loss", "r1_penalty", "path_length_penalty", "ema_beta"]


def _logits(x, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a float tensor, got {x.dtype}")
    if x.dim() not in (1, 2) or (x.dim() == 2 and x.shape[1] != 1):
        raise ValueError(f"{name} must be (N,) or (N, 1) logits, got shape {tuple(x.shape)}")
    return x.reshape(-1)


def g_nonsaturating_loss(fake_logits: Tensor) -> Tensor:
    """Generator loss, mean of softplus(-fake_logits): a scalar."""
    return F.softplus(-_logits(fake_logits, "fake_logits")).mean()


def d_nonsaturating_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Discriminator loss, mean softplus(fake_logits) + mean softplus(-real_logits): a scalar."""
    real, fake = _logits(real_logits, "real_logits"), _logits(fake_logits, "fake_logits")
    return F.softplus(fake).mean() + F.softplus(-real).mean()


def r1_penalty(real_logits: Tensor, real_img: Tensor) -> Tensor:
    """(N,) squared norm of the gradient of the logits' sum with respect to ``real_img`` (which must require
    grad and be the input the logits were computed from); differentiable in the discriminator's parameters."""
    _logits(real_logits, "real_logits")
    if not isinstance(real_img, Tensor) or not real_img.requires_grad:
        raise ValueError("r1_penalty: real_img must be the tensor (requiring grad) the logits were computed "
                         "from")
    (grad,) = torch.autograd.grad(real_logits.sum(), real_img, create_graph=True)
    return grad.square().flatten(1).sum(1)


def path_length_penalty(img: Tensor, ws: Tensor, pl_mean: Tensor, decay: float = 0.01,
                        noise: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """StyleGAN2's path-length regularisation. img (N, C, H, W) generated from ws (N, num_ws, w_dim)
    (requiring grad); pl_mean a scalar tensor. Returns ((lengths - a)^2 (N,), a) with a = pl_mean + decay
    (mean length - pl_mean) (detached, the caller keeps it); ``noise`` (img's shape) replaces the N(0, 1) /
    sqrt(H W) draw."""
    if not isinstance(img, Tensor) or img.dim() != 4:
        raise ValueError(f"path_length_penalty: img must be (N, C, H, W), got "
                         f"{tuple(img.shape) if isinstance(img, Tensor) else type(img).__name__}")
    if not isinstance(ws, Tensor) or ws.dim() != 3 or ws.shape[0] != img.shape[0] or not ws.requires_grad:
        raise ValueError("path_length_penalty: ws must be the (N, num_ws, w_dim) latent (requiring grad) img "
                         "was "
                         "generated from")
    if not 0 <= decay <= 1:
        raise ValueError(f"path_length_penalty: decay must be in [0, 1], got {decay}")
    if noise is None:
        noise = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
    elif noise.shape != img.shape:
        raise ValueError(f"path_length_penalty: noise must have img's shape {tuple(img.shape)}, got "
                         f"{tuple(noise.shape)}")
    (grad,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
    lengths = grad.square().sum(2).mean(1).sqrt()
    a = pl_mean.to(lengths.dtype).lerp(lengths.mean().detach(), decay)
    return (lengths - a).square(), a


def ema_beta(batch_size: int, ema_kimg: float, cur_nimg: Optional[int] = None,
             rampup: Optional[float] = None) -> float:
    """The official generator-EMA decay per step: 0.5 ** (batch_size / ema_nimg), ema_nimg = ema_kimg * 1000,
    or min(ema_nimg, cur_nimg * rampup) with a ramp-up."""
    if batch_size < 1 or ema_kimg <= 0:
        raise ValueError(f"ema_beta: batch_size must be >= 1 and ema_kimg > 0, got {batch_size}, {ema_kimg}")
    nimg = ema_kimg * 1000
    if rampup is not None:
        if cur_nimg is None:
            raise ValueError("ema_beta: a rampup needs cur_nimg (the images seen so far)")
        nimg = min(nimg, cur_nimg * rampup)
    return 0.5 ** (batch_size / max(nimg, 1e-8))
