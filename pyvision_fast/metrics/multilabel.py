"""Multi-label classification metrics of the CNN-RNN literature (Order-Free RNN, shared/papers.md section 11).

From predicted label sets ``preds`` (N, C) and ground truth ``targets`` (N, C) (bool or 0/1), with per-class
counts TP_c, FP_c, FN_c:

* per-class: ``C-P`` = mean_c TP_c / (TP_c + FP_c), ``C-R`` = mean_c TP_c / (TP_c + FN_c) (a class that is
  never predicted, or never present, contributes 0: torchmetrics' ``zero_division=0``, which is what
  ``MultilabelPrecision/Recall(average="macro")`` compute), and ``C-F1 = 2 C-P C-R / (C-P + C-R)`` (the F1 of
  the averages, as the CNN-RNN papers report it; not the mean of per-class F1s);
* overall: ``O-P = sum TP / sum (TP + FP)``, ``O-R = sum TP / sum (TP + FN)``, ``O-F1`` their harmonic mean
  (torchmetrics' ``average="micro"``);
* ``mAP``: from per-label scores (N, C), the mean over the classes that have at least one positive of the
  average precision (area under the precision-recall curve at every score threshold; ties are one threshold,
  as torchmetrics' ``multilabel_average_precision``, which computes it).

``MultiLabelMetrics`` accumulates these over batches (torchmetrics ``Metric``: its states are summed or
concatenated across processes under DDP).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["MultiLabelMetrics", "multilabel_prf", "multilabel_map", "label_counts"]


def _check(preds: Tensor, targets: Tensor, what: str = "preds") -> None:
    if preds.ndim != 2 or preds.shape != targets.shape:
        raise ValueError(f"multilabel metrics: {what} and targets must both be (N, C), got "
                         f"{tuple(preds.shape)} and {tuple(targets.shape)}")
    if not targets.dtype == torch.bool and bool(((targets != 0) & (targets != 1)).any()):
        raise ValueError("multilabel metrics: targets must be 0/1 (multi-hot)")


def label_counts(preds: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-class (TP, FP, FN) int64 (C,) of label sets ``preds`` and ``targets`` (N, C), bool or 0/1."""
    _check(preds, targets)
    if preds.dtype != torch.bool and bool(((preds != 0) & (preds != 1)).any()):
        raise ValueError("multilabel metrics: preds must be label sets (bool or 0/1), not scores")
    p, t = preds.bool(), targets.bool()
    return (p & t).sum(0), (p & ~t).sum(0), (~p & t).sum(0)


def _div(a: Tensor, b: Tensor) -> Tensor:
    return torch.where(b > 0, a / b.clamp_min(1), torch.zeros_like(a))


def _f1(p: Tensor, r: Tensor) -> Tensor:
    return torch.where(p + r > 0, 2 * p * r / (p + r).clamp_min(1e-30), torch.zeros_like(p))


def prf_from_counts(tp: Tensor, fp: Tensor, fn: Tensor) -> dict[str, Tensor]:
    tp, fp, fn = tp.double(), fp.double(), fn.double()
    cp, cr = _div(tp, tp + fp).mean(), _div(tp, tp + fn).mean()
    op, orr = _div(tp.sum(), (tp + fp).sum()), _div(tp.sum(), (tp + fn).sum())
    return {"C-P": cp, "C-R": cr, "C-F1": _f1(cp, cr), "O-P": op, "O-R": orr, "O-F1": _f1(op, orr)}


def multilabel_prf(preds: Tensor, targets: Tensor) -> dict[str, Tensor]:
    """``C-P, C-R, C-F1, O-P, O-R, O-F1`` (float64 scalars in [0, 1]) of label sets ``preds`` (N, C)."""
    return prf_from_counts(*label_counts(preds, targets))


def multilabel_map(scores: Tensor, targets: Tensor) -> Tensor:
    """Mean average precision (float64 scalar) of ``scores`` (N, C) float over the classes with a positive
    in ``targets`` (N, C); NaN when no class has one."""
    from torchmetrics.functional.classification import multilabel_average_precision

    _check(scores, targets, "scores")
    t = targets.long()
    keep = t.sum(0) > 0
    if not bool(keep.any()):
        return torch.tensor(float("nan"), dtype=torch.float64)
    ap = multilabel_average_precision(scores[:, keep].float(), t[:, keep], num_labels=int(keep.sum()),
                                      average="none")
    return ap.double().mean()


class MultiLabelMetrics(Metric):
    """Accumulates ``C-P ... O-F1`` of label sets and ``mAP`` of scores. ``update(preds (N, C) bool,
    targets (N, C), scores (N, C) float or None)``; ``compute()`` -> {``prefix + name``: float64 scalar}, mAP
    only when scores were given."""

    full_state_update = False

    def __init__(self, num_classes: int, prefix: str = "", **kwargs):
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"MultiLabelMetrics: num_classes must be >= 1, got {num_classes}")
        self.num_classes, self.prefix = int(num_classes), prefix
        for name in ("tp", "fp", "fn"):
            self.add_state(name, torch.zeros(self.num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("scores", [], dist_reduce_fx="cat")
        self.add_state("targets", [], dist_reduce_fx="cat")

    def update(self, preds: Tensor, targets: Tensor, scores: Optional[Tensor] = None) -> None:
        if preds.ndim != 2 or preds.shape[1] != self.num_classes:
            raise ValueError(f"MultiLabelMetrics: preds must be (N, {self.num_classes}), got "
                             f"{tuple(preds.shape)}")
        tp, fp, fn = label_counts(preds, targets)
        self.tp += tp
        self.fp += fp
        self.fn += fn
        if scores is not None:
            _check(scores, targets, "scores")
            self.scores.append(scores.detach().float())
            self.targets.append(targets.detach().bool())

    def compute(self) -> dict[str, Tensor]:
        out = prf_from_counts(self.tp, self.fp, self.fn)
        scores = self.scores
        if isinstance(scores, list) and scores:
            scores, targets = torch.cat(scores), torch.cat(self.targets)
        elif isinstance(scores, Tensor) and scores.numel():
            targets = self.targets
        else:
            scores = None
        if scores is not None:
            out["mAP"] = multilabel_map(scores, targets)
        return {f"{self.prefix}{k}": v for k, v in out.items()}
