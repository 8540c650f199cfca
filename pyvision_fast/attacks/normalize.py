"""Input normalisation inside a model, so that attacks work on [0, 1] images.

The light recipe trains with ``no_normalize: true`` (the data pipeline yields [0, 1] tensors) and DAT wraps the model
as ``nn.Sequential(NormalizeByChannelMeanStd(mean, std), timm_model)``. A Sequential wrapper renames every key
(``0.mean``, ``1.blocks.0...``) so timm/registry checkpoints no longer load as they are. Here the normalisation is a
**forward pre-hook on the model itself** with non-persistent buffers: the model object, its class, its
``state_dict`` keys (exactly the registry model's / timm's), ``group_matcher``/``no_weight_decay`` (layer decay,
weight-decay exclusion) are unchanged; ``.to(device)`` moves mean/std along; ``copy.deepcopy`` (EMA) keeps the hook.
``has_input_normalization(model)`` tells whether it is installed.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "add_input_normalization", "has_input_normalization"]



def _normalize_pre_hook(module: nn.Module, args):
    x = args[0]
    mean = module.pvf_input_mean.to(x.dtype)
    std = module.pvf_input_std.to(x.dtype)
    return ((x - mean) / std,) + tuple(args[1:])


def add_input_normalization(model: nn.Module, mean: Sequence[float] = IMAGENET_MEAN,
                            std: Sequence[float] = IMAGENET_STD) -> nn.Module:
    """Makes ``model`` take (B, C, H, W) inputs in [0, 1]: its forward first computes ``(x - mean) / std`` per
    channel (C = len(mean)). Returns the same object (modified in place); calling it twice raises."""
    if has_input_normalization(model):
        raise ValueError("model already normalises its inputs")
    if len(mean) != len(std) or any(s <= 0 for s in std):
        raise ValueError(f"mean and std need the same length and std > 0, got {mean}, {std}")
    ref = next(iter(model.parameters()), torch.empty(0))
    shape = (1, len(mean), 1, 1)
    model.register_buffer("pvf_input_mean", torch.tensor(mean, dtype=torch.float32, device=ref.device).view(shape),
                          persistent=False)
    model.register_buffer("pvf_input_std", torch.tensor(std, dtype=torch.float32, device=ref.device).view(shape),
                          persistent=False)
    model.register_forward_pre_hook(_normalize_pre_hook)
    return model


def has_input_normalization(model: nn.Module) -> bool:
    return hasattr(model, "pvf_input_mean") and any(h is _normalize_pre_hook for h in model._forward_pre_hooks.values())
