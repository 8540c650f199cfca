"""Image transforms of the papers' recipes, built from torchvision and timm.

* :func:`rafdb_train_transform` / :func:`rafdb_eval_transform`: the RAF-DB transforms of MAE-SFER
  (``MSA-LMC/MAE-SFER:main_rafdb.py``, shared/papers.md section 1), with ``torchvision.transforms``.
* :func:`timm_transform`: ``timm.data.create_transform`` driven by a recipe config (RandAugment, random erasing,
  timm's eval resize + centre crop), the pipeline of the generic recipes (MAE/DeiT fine-tuning).

All return a callable ``PIL.Image (RGB) -> float32 tensor (3, img_size, img_size)``, normalised with ``mean``/``std``.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence, Union

from torchvision import transforms as T

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "rafdb_train_transform", "rafdb_eval_transform", "timm_transform"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Size = Union[int, tuple[int, int]]


def _size2(img_size: Size) -> tuple[int, int]:
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"img_size must be a positive int or (H, W), got {img_size!r}")
    return size


def rafdb_train_transform(img_size: Size = 224, reprob: float = 0.5, mean: Sequence[float] = IMAGENET_MEAN,
                          std: Sequence[float] = IMAGENET_STD) -> T.Compose:
    """MAE-SFER's RAF-DB training transform::

        RandomHorizontalFlip(0.5)
        RandomApply([ColorJitter(0.25, 0.25, 0.25, 0.25),
                     RandomAffine(0, translate=(0.1, 0.1), scale=(1, 1.25), bilinear)], p=0.5)
        Resize((img_size, img_size)); ToTensor(); Normalize(mean, std)
        RandomErasing(p=reprob, scale=(0.02, 0.25))

    ``reprob`` is torchvision's default 0.5 in MAE-SFER's script; the ``fer_finetune`` recipe passes its
    ``reprob`` setting (0.25, the MAE fine-tuning value). Output: float32 (3, H, W).
    """
    return T.Compose([
        T.RandomHorizontalFlip(0.5),
        T.RandomApply([
            T.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.25, hue=0.25),
            T.RandomAffine(degrees=0, translate=(0.1, 0.1), scale=(1.0, 1.25),
                           interpolation=T.InterpolationMode.BILINEAR),
        ], p=0.5),
        T.Resize(_size2(img_size)),
        T.ToTensor(),
        T.Normalize(mean, std),
        T.RandomErasing(p=reprob, scale=(0.02, 0.25)),
    ])


def rafdb_eval_transform(img_size: Size = 224, mean: Sequence[float] = IMAGENET_MEAN,
                         std: Sequence[float] = IMAGENET_STD) -> T.Compose:
    """MAE-SFER's RAF-DB test transform: ``Resize((img_size, img_size)); ToTensor(); Normalize(mean, std)``.
    Output: float32 (3, H, W)."""
    return T.Compose([T.Resize(_size2(img_size)), T.ToTensor(), T.Normalize(mean, std)])


def timm_transform(cfg: Mapping[str, Any], is_training: bool):
    """``timm.data.create_transform`` for a recipe config. Keys read (defaults of MAE's ``main_finetune``):

    ``img_size`` (224), ``aa`` (auto-augment policy, ``"rand-m9-mstd0.5-inc1"``; ``None``/``"none"`` for none),
    ``reprob`` (random-erasing probability, 0.25), ``remode`` (``"pixel"``), ``recount`` (1), ``color_jitter``
    (``None``: off, as MAE; a float enables it), ``interpolation`` (``"bicubic"``), ``crop_pct`` (eval: resize to
    ``img_size / crop_pct`` then centre-crop; ``None`` = timm's 0.875), ``mean``/``std`` (ImageNet).

    Training: RandomResizedCrop, flip, RandAugment, ToTensor, Normalize, RandomErasing. Eval: resize, centre crop,
    ToTensor, Normalize. Output: float32 (3, img_size, img_size).
    """
    from timm.data import create_transform

    aa = cfg.get("aa", "rand-m9-mstd0.5-inc1")
    if isinstance(aa, str) and aa.lower() in ("", "none"):
        aa = None
    color_jitter = cfg.get("color_jitter", None)
    kwargs = dict(input_size=cfg.get("img_size", 224), is_training=is_training,
                  interpolation=cfg.get("interpolation", "bicubic"),
                  mean=tuple(cfg.get("mean", IMAGENET_MEAN)), std=tuple(cfg.get("std", IMAGENET_STD)))
    if is_training:
        kwargs.update(auto_augment=aa, re_prob=float(cfg.get("reprob", 0.25)), re_mode=cfg.get("remode", "pixel"),
                      re_count=int(cfg.get("recount", 1)),
                      color_jitter=color_jitter)
    else:
        kwargs.update(crop_pct=cfg.get("crop_pct", None))
    return create_transform(**kwargs)
