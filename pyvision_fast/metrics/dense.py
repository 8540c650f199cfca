"""Dense-prediction metrics as torchmetrics ``Metric`` s (states summed across processes, so DDP evaluation
counts every pixel once): semantic segmentation (mIoU, pixel accuracy) and surface normals (angle errors), as
NDDR-CNN's evaluation (``ethanygao/NDDR-CNN``, ``ops/errors.py``, ``eval_multiple_tasks.py``) reports them.

:class:`SegmentationMetrics` keeps a (C, C) confusion matrix over the pixels whose label is not
``ignore_index`` (and lies in ``[0, C)``, as the official ``seg_error``). ``miou``: the mean over classes of
TP / (TP + FP + FN), over the classes that occur in the labels or the predictions (TF's ``streaming_mean_iou``
leaves out classes whose denominator is 0); ``pixel_acc``: correct / valid pixels.

:class:`NormalMetrics` measures the angle between the L2-normalised prediction and ground truth at the valid
pixels: ``normal_mean``, ``normal_rmse`` (exact sums in float64), ``normal_within_11.25``/``22.5``/``30`` (the
percentage of pixels with angle <= t, exact counts) and ``normal_median``. The median would need every error
(about 180M values for the NYUv2 test set), so it comes from a histogram of ``bin_width`` (0.01 degree) bins
over [0, 180] interpolated linearly within the bin that holds the N/2-th error: it lies within one bin width
of the ceil(N/2)-th smallest error (the median for odd N; for even N ``np.median`` averages it with the next
one, a difference that vanishes at NYUv2's millions of pixels)."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

__all__ = ["SegmentationMetrics", "NormalMetrics", "normal_angles"]


class SegmentationMetrics(Metric):
    """``update(preds, target)``: preds (B, C, H, W) scores or (B, H, W) class indices, target (B, H, W) int
    labels (``ignore_index`` skipped). ``compute()`` -> ``{"miou", "pixel_acc", "iou_per_class" (C,)}``
    (classes absent from labels and predictions have IoU NaN)."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_classes: int, ignore_index: int = 255, **kwargs):
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"SegmentationMetrics: num_classes must be >= 1, got {num_classes}")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.add_state("confmat", torch.zeros(num_classes, num_classes, dtype=torch.int64),
                       dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        if preds.ndim == target.ndim + 1:
            if preds.shape[1] != self.num_classes:
                raise ValueError(f"SegmentationMetrics: scores have {preds.shape[1]} channels, expected "
                                 f"{self.num_classes}")
            preds = preds.argmax(1)
        if preds.shape != target.shape:
            raise ValueError(f"SegmentationMetrics: predictions {tuple(preds.shape)} and labels "
                             f"{tuple(target.shape)} differ in shape")
        target = target.long()
        keep = (target != self.ignore_index) & (target >= 0) & (target < self.num_classes)
        idx = target[keep] * self.num_classes + preds[keep].long().clamp(0, self.num_classes - 1)
        self.confmat += torch.bincount(idx, minlength=self.num_classes ** 2).view(self.num_classes, -1)

    def compute(self) -> dict[str, Tensor]:
        cm = self.confmat.double()
        tp = cm.diag()
        union = cm.sum(0) + cm.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
        present = union > 0
        miou = iou[present].mean() if present.any() else torch.tensor(float("nan"), dtype=torch.float64)
        total = cm.sum()
        acc = tp.sum() / total if total > 0 else torch.tensor(float("nan"), dtype=torch.float64)
        return {"miou": miou, "pixel_acc": acc, "iou_per_class": iou}


def normal_angles(pred: Tensor, target: Tensor, valid: Optional[Tensor] = None) -> Tensor:
    """Angles in degrees (N,) float32 between pred and target normals (B, 3, H, W; both L2-normalised here) at
    the ``valid`` (B, H, W) pixels (all when None)."""
    if pred.shape != target.shape or pred.ndim != 4 or pred.shape[1] != 3:
        raise ValueError(f"normal_angles: pred {tuple(pred.shape)} and target {tuple(target.shape)} must "
                         "both be (B, 3, H, W)")
    cos = (F.normalize(pred.float(), dim=1) * F.normalize(target.float(), dim=1)).sum(1).clamp(-1.0, 1.0)
    if valid is not None:
        if valid.shape != cos.shape:
            raise ValueError(f"normal_angles: valid {tuple(valid.shape)} must be {tuple(cos.shape)}")
        cos = cos[valid.bool()]
    return torch.rad2deg(torch.acos(cos.flatten()))


class NormalMetrics(Metric):
    """``update(pred, target, valid)``: pred and target (B, 3, H, W) normals, valid (B, H, W) bool.
    ``compute()`` -> ``{"normal_mean", "normal_median", "normal_rmse", "normal_within_<t>" for t in
    thresholds}`` in degrees / percent (module docstring for the median's histogram)."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, thresholds: Sequence[float] = (11.25, 22.5, 30.0), bin_width: float = 0.01, **kwargs):
        super().__init__(**kwargs)
        self.thresholds, self.bin_width = tuple(float(t) for t in thresholds), float(bin_width)
        self.num_bins = int(math.ceil(180.0 / self.bin_width))
        self.add_state("hist", torch.zeros(self.num_bins, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("within", torch.zeros(len(self.thresholds), dtype=torch.int64), dist_reduce_fx="sum")
        # sum and sum of squares of the angles
        self.add_state("sums", torch.zeros(2, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor, valid: Optional[Tensor] = None) -> None:
        angles = normal_angles(pred, target, valid)
        bins = (angles / self.bin_width).long().clamp(0, self.num_bins - 1)
        self.hist += torch.bincount(bins, minlength=self.num_bins)
        for i, t in enumerate(self.thresholds):
            self.within[i] += (angles <= t).sum()
        a = angles.double()
        self.sums += torch.stack([a.sum(), (a * a).sum()])

    def compute(self) -> dict[str, Tensor]:
        n = self.hist.sum()
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=self.hist.device)
        if n == 0:
            return {"normal_mean": nan, "normal_median": nan, "normal_rmse": nan,
                    **{f"normal_within_{t:g}": nan for t in self.thresholds}}
        cum = self.hist.cumsum(0)
        half = n.double() / 2
        k = int(torch.searchsorted(cum.double(), half))  # first bin whose cumulative count reaches N/2
        before = cum[k - 1].double() if k > 0 else torch.zeros((), dtype=torch.float64, device=cum.device)
        median = (k + (half - before) / self.hist[k].double()) * self.bin_width
        out = {"normal_mean": self.sums[0] / n, "normal_median": median,
               "normal_rmse": (self.sums[1] / n).sqrt()}
        for i, t in enumerate(self.thresholds):
            out[f"normal_within_{t:g}"] = self.within[i].double() / n * 100.0
        return out
