"""``pointcloud_classify``: supervised point-cloud classification on ModelNet40 with PointNet, PointNet++
(SSG, MSG) or DGCNN, as the PointNet++ code trains them (yanx27/Pointnet_Pointnet2_pytorch
``train_classification.py``, the classifiers PointCAT starts from).

    pvf train pointcloud_classify --data DIR --model pointnet2_ssg --output runs/ssg
    pvf eval pointcloud_classify --data DIR --checkpoint runs/ssg/checkpoint-best.safetensors

Data: ``DIR`` in either ModelNet40 format, detected from its files (``data.modelnet40``):
``modelnet40_normal_resampled`` (PointNet++/PointCAT; the training split is ``modelnet40_train.txt``,
evaluation uses ``modelnet40_test.txt``, as the official script, which has no separate validation split) or
``modelnet40_ply_hdf5_2048`` (PointNet/DGCNN; ``ply_data_train*.h5`` / ``ply_data_test*.h5``). A folder
holding one of them as a sub-folder of its release name works too.

Defaults (the official script): Adam, lr 1e-3, weight decay 1e-4 on every parameter (Adam's L2 term, as
``torch.optim.Adam(weight_decay=1e-4)`` over ``classifier.parameters()``), batch 24 with the last incomplete
batch dropped, lr x 0.7 every 20 epochs, 200 epochs, 1024 points (first points of each file, ``uniform=True``
for farthest point sampling), no normals (``use_normals=True`` reads them and builds the model with
``normal_channel=True``), training augmentation: random point dropout (up to 87.5%), scale U(0.8, 1.25) and
shift U(-0.1, 0.1) (``augment=False`` turns it off; ``jitter=True`` adds clipped Gaussian jitter). The loss is
cross-entropy on the logits (the official NLL of log-softmax; ``label_smoothing`` as DGCNN's 0.2 with ``--set
label_smoothing=0.2``) plus the model's ``regularization_loss()`` (PointNet's 0.001 feature-transform term).

Metrics: ``accuracy`` (instance accuracy over the test shapes, the main metric), ``class_accuracy`` (mean of
the per-class accuracies, PointNet++'s "class accuracy").
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...data.modelnet40 import modelnet40_splits, pointnet2_train_transform
from ..recipe import Recipe, StepContext

__all__ = ["PointCloudClassifyRecipe", "RECIPE"]


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class PointCloudClassifyRecipe(Recipe):
    name = "pointcloud_classify"
    main_metric = "accuracy"
    main_mode = "max"
    defaults = dict(
        model="pointnet2_ssg",
        opt="adam",
        lr=1e-3,                 # absolute, as the official script (not scaled by the batch size)
        weight_decay=1e-4,
        batch_size=24,
        drop_last=True,
        epochs=200,
        sched="step",
        decay_epochs=20,
        decay_rate=0.7,
        warmup_epochs=0,
        num_points=1024,         # points per cloud
        use_normals=False,       # x,y,z,nx,ny,nz input (normal_resampled only)
        uniform=False,           # farthest point sampling of num_points instead of the first lines
        augment=True,            # random point dropout, scale and shift on the training clouds
        jitter=False,            # also Gaussian jitter (sigma 0.01, clip 0.05)
    )

    def build_datasets(self, data_dir: str):
        c = self.cfg
        transform = pointnet2_train_transform(jitter=c.jitter) if c.augment else \
            (pointnet2_train_transform(False, False, False, True) if c.jitter else None)
        train, test = modelnet40_splits(data_dir, num_points=c.num_points, use_normals=c.use_normals,
                                        uniform=c.uniform, train_transform=transform, with_train=not self.for_eval)
        if train is None and c.num_classes is None:  # pvf eval of weights without the engine's metadata
            c.num_classes = len(test.classes)
        return train, test

    def build_model(self, num_classes: Optional[int]) -> nn.Module:
        """``create_model(cfg.model, num_classes=..., normal_channel=cfg.use_normals, **cfg.model_args)``."""
        from ...models import create_model

        kwargs = {"normal_channel": bool(self.cfg.use_normals), **self.cfg.model_args}
        if num_classes is not None:
            kwargs.setdefault("num_classes", num_classes)
        return create_model(self.cfg.model, **kwargs)

    def param_groups(self, model: nn.Module) -> list[dict]:
        """One group: the official script decays every parameter, BatchNorm and biases included."""
        return [{"params": [p for p in model.parameters() if p.requires_grad],
                 "weight_decay": self.cfg.weight_decay}]

    def train_loss(self, model: nn.Module, batch, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        """``batch``: points (B, N, 3 or 6) float32 and labels (B,) int64."""
        points, labels = batch[0], batch[1]
        _, logits = model(points)
        ce = F.cross_entropy(logits.float(), labels, label_smoothing=self.cfg.label_smoothing)
        reg = _unwrap(model).regularization_loss() if hasattr(_unwrap(model), "regularization_loss") else None
        if reg is None or not reg.requires_grad:
            return ce, {}
        return ce + reg, {"regularization": float(reg.detach())}

    def build_metrics(self, num_classes: Optional[int]):
        from torchmetrics import MetricCollection
        from torchmetrics.classification import MulticlassAccuracy

        return MetricCollection({"accuracy": MulticlassAccuracy(num_classes, average="micro"),
                                 "class_accuracy": MulticlassAccuracy(num_classes, average="macro")})

    def eval_update(self, model: nn.Module, batch, metrics, ctx: StepContext) -> Tensor:
        points, labels = batch[0], batch[1]
        with torch.no_grad():
            _, logits = model(points)
        metrics.update(logits.float(), labels)
        return F.cross_entropy(logits.float(), labels)


RECIPE = PointCloudClassifyRecipe
