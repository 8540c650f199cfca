"""The papers' evaluation metrics, as plain functions and torchmetrics ``Metric`` accumulators (synchronised
across processes under DDP):

- ``saliency``: AUC-Borji, AUC-Judd, CC, SIM, NSS, KLD on 240x120 maps (PAVER, Wild360) and ``SaliencyMetrics``;
- ``verification``: LFW ``pairs.txt``, 10-fold accuracy, TAR@FAR, ``VerificationMetric`` (SCAN-CNN);
- ``dense``: mIoU / pixel accuracy and surface-normal angle errors, ``SegmentationMetrics``, ``NormalMetrics``
  (NDDR-CNN).
"""
from .dense import NormalMetrics, SegmentationMetrics, normal_angles
from .saliency import SaliencyMetrics, auc_borji, auc_judd, cc, kld, nss, saliency_scores, sim
from .verification import VerificationMetric, kfold_accuracy, read_pairs, tar_at_far

__all__ = [
    "NormalMetrics", "SaliencyMetrics", "SegmentationMetrics", "VerificationMetric", "auc_borji", "auc_judd", "cc",
    "kfold_accuracy", "kld", "normal_angles", "nss", "read_pairs", "saliency_scores", "sim", "tar_at_far",
]
