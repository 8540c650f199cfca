"""The papers' evaluation metrics, as plain functions and torchmetrics ``Metric`` accumulators (synchronised
across processes under DDP):

- ``saliency``: AUC-Borji, AUC-Judd, CC, SIM, NSS, KLD on 240x120 maps (PAVER, Wild360) and ``SaliencyMetrics``;
- ``verification``: LFW ``pairs.txt``, 10-fold accuracy, TAR@FAR, ``VerificationMetric`` (SCAN-CNN);
- ``dense``: mIoU / pixel accuracy and surface-normal angle errors, ``SegmentationMetrics``, ``NormalMetrics``
  (NDDR-CNN);
- ``multilabel``: C-P/C-R/C-F1, O-P/O-R/O-F1, mAP, ``MultiLabelMetrics`` (Order-Free RNN);
- ``vqa``: VQA accuracy, VQA-Rephrasings consistency, VQA-CE subsets (CIB).
"""
from .dense import NormalMetrics, SegmentationMetrics, normal_angles
from .multilabel import MultiLabelMetrics, multilabel_map, multilabel_prf
from .saliency import SaliencyMetrics, auc_borji, auc_judd, cc, kld, nss, saliency_scores, sim
from .verification import VerificationMetric, kfold_accuracy, read_pairs, tar_at_far
from .vqa import (VQAAccuracy, VQAScores, consistency_scores, normalize_answer, soft_score, subset_accuracies,
                  vqa_accuracy)
from .talking_face import (TalkingFaceEditMetrics, emotion_accuracy, emotion_probabilities, fer_class_indices,
                           intensity_monotonicity, mouth_lmd, save_intensity_grid)

__all__ = [
    "NormalMetrics", "SaliencyMetrics", "SegmentationMetrics", "VerificationMetric", "auc_borji", "auc_judd", "cc",
    "kfold_accuracy", "kld", "normal_angles", "nss", "read_pairs", "saliency_scores", "sim", "tar_at_far",
    "MultiLabelMetrics", "multilabel_map", "multilabel_prf", "VQAAccuracy", "VQAScores", "consistency_scores",
    "normalize_answer", "soft_score", "subset_accuracies", "vqa_accuracy", "TalkingFaceEditMetrics", "emotion_accuracy", "emotion_probabilities", "fer_class_indices", "intensity_monotonicity", "mouth_lmd", "save_intensity_grid"]
