"""``classify``: supervised image classification of any registry model on an ImageFolder, DeiT's recipe.

Data: ``DATA/train/<class>/<image>`` and (optional) ``DATA/val/<class>/<image>``; the validation folder uses the
training folder's class list. Defaults follow DeiT (Touvron et al. 2021, Table 9): AdamW, lr 5e-4 x batch/512
(``blr`` 2.5e-4 per 256), weight decay 0.05, cosine schedule with 5 warm-up epochs, label smoothing 0.1, Mixup 0.8 /
CutMix 1.0, RandAugment ``rand-m9-mstd0.5-inc1``, random erasing 0.25 (pixel mode), bicubic resizing, all through
timm. ``--set aa=None mixup=0 cutmix=0 reprob=0`` turns the augmentation off; the random-resized crop, flip and
colour jitter (which timm applies only without RandAugment) stay unless ``scale=(1,1) ratio=(1,1) hflip=0
color_jitter=None`` remove them too.

Metrics (torchmetrics, synchronised across processes): ``accuracy`` (top-1), ``top5`` (with at least 5 classes),
``f1_macro`` and ``confusion_matrix`` (rows: true class, columns: prediction).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from timm.data import create_transform
from torch import Tensor, nn

from ...data.image_folder import image_folder_splits
from ..recipe import Recipe, StepContext


class ClassifyRecipe(Recipe):
    name = "classify"
    main_metric = "accuracy"
    main_mode = "max"
    defaults = dict(
        model="vit_small_patch16_224",   # DeiT-S
        blr=2.5e-4,                      # lr = 5e-4 * global batch / 512
        weight_decay=0.05,
        sched="cosine",
        warmup_epochs=5,
        min_lr=1e-5,
        warmup_lr=1e-6,
        epochs=300,
        label_smoothing=0.1,
        mixup=0.8,
        cutmix=1.0,
        aa="rand-m9-mstd0.5-inc1",      # timm auto-augment string; None: none
        reprob=0.25,                     # random erasing probability
        remode="pixel",
        color_jitter=0.3,
        scale=(0.08, 1.0),               # random-resized-crop area range
        ratio=(3 / 4, 4 / 3),            # random-resized-crop aspect range
        hflip=0.5,
        interpolation="bicubic",
        crop_pct=0.875,                  # evaluation: resize to img_size / crop_pct, centre crop
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        bad_images="error",              # error | skip: a file that does not decode (see data.ImageFolder)
    )

    def transforms(self, training: bool):
        c = self.cfg
        if not training:
            return create_transform(c.img_size, is_training=False, interpolation=c.interpolation, mean=c.mean,
                                    std=c.std, crop_pct=c.crop_pct)
        return create_transform(c.img_size, is_training=True, scale=c.scale, ratio=c.ratio, hflip=c.hflip,
                                color_jitter=c.color_jitter, auto_augment=c.aa, interpolation=c.interpolation,
                                re_prob=c.reprob, re_mode=c.remode, mean=c.mean, std=c.std)

    def build_datasets(self, data_dir: str):
        return image_folder_splits(data_dir, self.transforms(True), self.transforms(False), self.cfg.bad_images)

    def build_model(self, num_classes: Optional[int]) -> nn.Module:
        """``create_model(cfg.model, num_classes=..., img_size=cfg.img_size, **cfg.model_args)`` (``model_args``
        win), as timm's training script builds its model for ``--img-size``."""
        from ...models import create_model

        kwargs = {"img_size": self.cfg.img_size, **self.cfg.model_args}
        if num_classes is not None:
            kwargs.setdefault("num_classes", num_classes)
        return create_model(self.cfg.model, **kwargs)

    def train_loss(self, model: nn.Module, batch, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        """``batch``: images (B, 3, H, W) float and targets (B,) int64, or (B, num_classes) soft targets after
        Mixup/CutMix (which already include the label smoothing)."""
        x, y = batch[0], batch[1]
        logits = model(x)
        if y.ndim == 2:
            loss = torch.sum(-y * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        else:
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.label_smoothing)
        return loss, {}

    def build_metrics(self, num_classes: Optional[int]):
        from torchmetrics import MetricCollection
        from torchmetrics.classification import (MulticlassAccuracy, MulticlassConfusionMatrix,
                                                 MulticlassF1Score)

        metrics = {"accuracy": MulticlassAccuracy(num_classes, average="micro"),
                   "f1_macro": MulticlassF1Score(num_classes, average="macro"),
                   "confusion_matrix": MulticlassConfusionMatrix(num_classes)}
        if num_classes >= 5:
            metrics["top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
        return MetricCollection(metrics)

    def eval_update(self, model: nn.Module, batch, metrics, ctx: StepContext) -> Tensor:
        x, y = batch[0], batch[1]
        with torch.no_grad():
            logits = model(x)
        metrics.update(logits.float(), y)
        return F.cross_entropy(logits.float(), y)


RECIPE = ClassifyRecipe
