"""``nddr``: NDDR-CNN (shared/papers.md section 10) on NYUv2, semantic segmentation (40 classes) + surface
normals with ``nddr_vgg16``, as the official ``train_multiple_tasks.py`` / ``experiments/VGG16/NDDR.sh``.

``--data`` is the NYUv2 root of the official release (``datasets/nyu_v2``:
``list/{training,testing}_seg.txt``, ``list/{training,testing}_normal_mask.txt`` and the files they name;
:class:`pyvision_fast.data.nyuv2.NYUv2`). Training uses the training lists with random scale 0.5-1.5, mirror
and a ``img_size`` (321) crop; evaluation the full-size test images, batched (NYUv2's are all 640x480;
a test set of mixed sizes needs ``--batch-size 1`` for ``pvf eval``).

Optimisation (official defaults): momentum SGD 0.9, lr 1e-3 with DeepLab's poly decay ``(1 - t/T)^0.9`` per
update (the engine's ``sched="poly"``, ``min_lr=0``), batch 10, 250 epochs = 20,000 updates of the 795 NYUv2
training images (80 per epoch; the official 20,001 steps count from 0 to the step whose lr is 0). Parameter
groups (``param_groups``, multipliers as the groups' ``lr_scale``): the NDDR layers (1x1 weights and their
BatchNorm) at lr x ``nddr_lr_mult`` (100), the fc8 heads' weights x ``head_weight_lr_mult`` (10) and biases x
``head_bias_lr_mult`` (20), the rest x 1. Weight decay ``weight_decay`` (5e-4) on every convolution weight
(NDDR's included), none on biases and BatchNorm, as the official L2 on the "weights" variables. Note: the
official loss adds ``0.5 * sum(wd * ||w||^2 / 2)``, an SGD decay of ``wd / 2``: ``--set weight_decay=2.5e-4``
reproduces its gradients exactly.

Loss: ``seg_loss_weight`` (1) x softmax cross-entropy over labelled pixels (255 ignored) +
``normal_loss_weight`` (20) x the cosine distance ``1 - cos`` between the L2-normalised prediction and ground
truth, averaged over valid normal pixels. ``loss_resolution="output"`` (default, official) compares the
1/8-resolution outputs with nearest-downsampled labels; ``"input"`` compares the bilinearly upsampled outputs
with the full labels.

``pretrained``: a torchvision VGG-16 state_dict (both branches start from it; ``nddr_vgg16.adapt_state_dict``)
or an ``nddr_vgg16`` checkpoint. The paper starts both branches from single-task fine-tuned DeepLab-VGG16
models (converted from Caffe), which are not available here.

Metrics (``pyvision_fast.metrics.dense``, summed across processes): ``miou`` (the main metric), ``pixel_acc``,
``iou_per_class``, ``normal_mean``, ``normal_median``, ``normal_rmse``,
``normal_within_11.25``/``22.5``/``30``.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..recipe import Recipe, StepContext

__all__ = ["NDDRRecipe", "RECIPE", "nddr_losses"]

IGNORE_INDEX = 255


def nddr_losses(out: dict[str, Tensor], label: Tensor, normal: Tensor,
                valid: Tensor) -> tuple[Tensor, Tensor]:
    """(segmentation CE, normal cosine distance) of outputs ``out`` ({"seg": (B, K, h, w), "normal": (B, 3, h,
    w)}) against label (B, H, W) int64 (255 ignored), normal (B, 3, H, W) and valid (B, H, W) bool. When (h,
    w) differs from (H, W) the targets are nearest-downsampled to (h, w), as the official ``prepare_label``. A
    batch without valid pixels for a task gives that task a loss of 0 (with a gradient path)."""
    seg, pred_n = out["seg"], out["normal"]
    size = seg.shape[-2:]
    if label.shape[-2:] != size:
        label = F.interpolate(label[:, None].float(), size=size, mode="nearest")[:, 0].long()
        normal = F.interpolate(normal, size=size, mode="nearest")
        valid = F.interpolate(valid[:, None].float(), size=size, mode="nearest")[:, 0] > 0.5
    labelled = label != IGNORE_INDEX
    if labelled.any():
        seg_loss = F.cross_entropy(seg.float(), label, ignore_index=IGNORE_INDEX)
    else:
        seg_loss = seg.sum() * 0.0
    cos = (F.normalize(pred_n.float(), dim=1) * F.normalize(normal.float(), dim=1)).sum(1)
    normal_loss = (1.0 - cos)[valid].mean() if valid.any() else pred_n.sum() * 0.0
    return seg_loss, normal_loss


class NDDRRecipe(Recipe):
    name = "nddr"
    main_metric = "miou"
    main_mode = "max"
    defaults = dict(
        model="nddr_vgg16",
        num_classes=40,
        nddr_init=(0.9, 0.1),        # NDDR initialisation (alpha own, beta others) or "xavier"
        img_size=321,                # training crop
        scale_range=(0.5, 1.5),
        mirror=True,
        flip_normal_x=True,          # mirroring negates the normal's x (False: as the official code)
        opt="sgd",
        momentum=0.9,
        lr=1e-3,
        sched="poly",
        poly_power=0.9,
        min_lr=0.0,
        warmup_epochs=0,
        weight_decay=5e-4,
        batch_size=10,
        epochs=250,
        nddr_lr_mult=100.0,
        head_weight_lr_mult=10.0,
        head_bias_lr_mult=20.0,
        seg_loss_weight=1.0,
        normal_loss_weight=20.0,
        loss_resolution="output",    # output (official: 1/8-resolution outputs vs downsampled labels) | input
        check_data=True,             # open every file and check sizes and label values before training
        mixup=0.0, cutmix=0.0, label_smoothing=0.0,
    )

    def build_datasets(self, data_dir: str):
        from ...data.nyuv2 import NYUv2

        c = self.cfg
        if c.loss_resolution not in ("output", "input"):
            raise ValueError(f"nddr: loss_resolution must be 'output' or 'input', got {c.loss_resolution!r}")
        if c.pretrained and not os.path.isfile(c.pretrained):
            raise FileNotFoundError(f"pretrained weights {str(c.pretrained)!r} do not exist")
        nc = c.num_classes or 40
        common = dict(num_classes=nc, check=c.check_data)
        train = NYUv2(data_dir, "train", crop_size=c.img_size, scale_range=tuple(c.scale_range),
                      mirror=c.mirror, flip_normal_x=c.flip_normal_x, **common)
        val = NYUv2(data_dir, "test", train=False, **common)
        return train, val

    def build_model(self, num_classes: Optional[int]) -> nn.Module:
        from ...models import create_model

        kwargs = dict(self.cfg.model_args)
        kwargs.setdefault("num_classes", num_classes or self.cfg.num_classes)
        kwargs.setdefault("nddr_init", self.cfg.nddr_init)
        return create_model(self.cfg.model, **kwargs)

    def param_groups(self, model: nn.Module) -> list[dict]:
        """NDDR x ``nddr_lr_mult``, heads (``*.fc8.*``) x 10 weights / x 20 biases, the rest x 1
        (``lr_scale``); weight decay on tensors of 2 or more dimensions only."""
        c = self.cfg
        groups: dict[tuple[str, bool], dict] = {}
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            decay = p.ndim > 1
            if name.startswith("nddr.") or ".nddr." in name:
                kind, scale = "nddr", c.nddr_lr_mult
            elif ".fc8." in name:
                if decay:
                    kind, scale = "head_weight", c.head_weight_lr_mult
                else:
                    kind, scale = "head_bias", c.head_bias_lr_mult
            else:
                kind, scale = "base", 1.0
            group = groups.setdefault((kind, decay), dict(params=[], lr_scale=float(scale), name=kind,
                                                          weight_decay=c.weight_decay if decay else 0.0))
            group["params"].append(p)
        return list(groups.values())

    def _outputs(self, model: nn.Module, image: Tensor) -> dict[str, Tensor]:
        return model(image, upsample=self.cfg.loss_resolution == "input")

    def train_loss(self, model: nn.Module, batch, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        """``batch``: image (B, 3, H, W), label (B, H, W), normal (B, 3, H, W), valid (B, H, W). Returns the
        weighted sum of the two task losses and both of them for the logs."""
        image, label, normal, valid = batch
        seg_loss, normal_loss = nddr_losses(self._outputs(model, image), label, normal, valid)
        loss = self.cfg.seg_loss_weight * seg_loss + self.cfg.normal_loss_weight * normal_loss
        return loss, {"seg_loss": seg_loss.item(), "normal_loss": normal_loss.item()}

    def build_metrics(self, num_classes: Optional[int]):
        from torchmetrics import MetricCollection

        from ...metrics.dense import NormalMetrics, SegmentationMetrics

        return MetricCollection({"seg": SegmentationMetrics(num_classes or self.cfg.num_classes,
                                                            ignore_index=IGNORE_INDEX),
                                 "normal": NormalMetrics()})

    def eval_update(self, model: nn.Module, batch, metrics, ctx: StepContext) -> Tensor:
        """Full-resolution outputs of the test images update the metrics; returns the batch's weighted loss
        (at full resolution)."""
        image, label, normal, valid = batch
        with torch.no_grad():
            out = model(image)
        metrics["seg"].update(out["seg"], label)
        metrics["normal"].update(out["normal"], normal, valid)
        seg_loss, normal_loss = nddr_losses(out, label, normal, valid)
        return self.cfg.seg_loss_weight * seg_loss + self.cfg.normal_loss_weight * normal_loss


RECIPE = NDDRRecipe
