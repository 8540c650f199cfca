"""Dense metrics on hand-computable cases: mIoU / pixel accuracy with ignored pixels and absent classes,
normal angle errors at known angles (mean, median within a bin, thresholds, RMSE), split updates equal one
update."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pyvision_fast.metrics.dense import NormalMetrics, SegmentationMetrics, normal_angles


def test_segmentation_by_hand():
    m = SegmentationMetrics(3)
    target = torch.tensor([[[0, 0, 1, 1, 255]]])
    preds = torch.tensor([[[0, 1, 1, 1, 0]]])
    m.update(preds, target)
    out = m.compute()
    # class 0: TP 1, FN 1 -> 1/2; class 1: TP 2, FP 1 -> 2/3; class 2 absent everywhere: left out
    assert out["pixel_acc"].item() == pytest.approx(3 / 4)
    assert out["miou"].item() == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert math.isnan(out["iou_per_class"][2].item())
    # scores are reduced by argmax; a second batch accumulates
    scores = torch.zeros(1, 3, 1, 2)
    scores[0, 2, 0, 0] = 1.0   # predicts 2 where the label is 2
    scores[0, 0, 0, 1] = 1.0   # predicts 0 where the label is 2
    m.update(scores, torch.tensor([[[2, 2]]]))
    out = m.compute()
    assert out["pixel_acc"].item() == pytest.approx(4 / 6)
    # class 0: TP 1, FP 1, FN 1 -> 1/3; class 1: 2/3; class 2: TP 1, FN 1 -> 1/2
    assert out["miou"].item() == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)


def test_segmentation_split_updates_equal_one():
    torch.manual_seed(0)
    target = torch.randint(0, 5, (4, 6, 7))
    target[target == 4] = 255
    preds = torch.randn(4, 4, 6, 7)
    whole, parts = SegmentationMetrics(4), SegmentationMetrics(4)
    whole.update(preds, target)
    parts.update(preds[:1], target[:1])
    parts.update(preds[1:], target[1:])
    for k, v in whole.compute().items():
        torch.testing.assert_close(parts.compute()[k], v, equal_nan=True)
    with pytest.raises(ValueError, match="channels"):
        whole.update(torch.randn(1, 3, 6, 7), target[:1])
    with pytest.raises(ValueError, match="differ in shape"):
        whole.update(torch.zeros(1, 6, 6, dtype=torch.long), target[:1])


def _rotated(angles_deg):
    """Normals at the given angles from (0, 0, 1), rotated about x, as (1, 3, 1, N), and the target."""
    a = torch.deg2rad(torch.tensor(angles_deg, dtype=torch.float64))
    pred = torch.stack([torch.zeros_like(a), torch.sin(a), torch.cos(a)])[None, :, None].float()
    target = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).expand_as(pred).contiguous()
    return pred, target


def test_normal_angles_by_hand():
    pred, target = _rotated([0, 10, 20, 40, 50, 170])
    pred = pred * 3.0  # scale does not matter: both sides are normalised
    valid = torch.tensor([[[True, True, True, True, True, False]]])
    m = NormalMetrics()
    m.update(pred, target * 0.5, valid)
    out = m.compute()
    assert out["normal_mean"].item() == pytest.approx(24.0, abs=1e-3)
    assert out["normal_median"].item() == pytest.approx(20.0, abs=0.01)
    assert out["normal_rmse"].item() == pytest.approx(math.sqrt((100 + 400 + 1600 + 2500) / 5), abs=1e-3)
    assert out["normal_within_11.25"].item() == pytest.approx(40.0)
    assert out["normal_within_22.5"].item() == pytest.approx(60.0)
    assert out["normal_within_30"].item() == pytest.approx(60.0)
    torch.testing.assert_close(normal_angles(pred, target)[-1], torch.tensor(170.0), atol=1e-3, rtol=0)


def test_normal_median_within_a_bin_of_numpy():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 3, 9, 11), torch.randn(2, 3, 9, 11)
    valid = torch.rand(2, 9, 11) > 0.3
    m = NormalMetrics()
    m.update(pred[:1], target[:1], valid[:1])
    m.update(pred[1:], target[1:], valid[1:])
    p = pred.permute(0, 2, 3, 1)[valid].double().numpy()
    t = target.permute(0, 2, 3, 1)[valid].double().numpy()
    cos = (p * t).sum(1) / np.linalg.norm(p, axis=1) / np.linalg.norm(t, axis=1)
    angles = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    out = m.compute()
    lower_median = np.sort(angles)[math.ceil(len(angles) / 2) - 1]  # np.median for odd N
    assert out["normal_median"].item() == pytest.approx(lower_median, abs=0.011)
    assert out["normal_mean"].item() == pytest.approx(angles.mean(), abs=1e-3)
    assert out["normal_within_30"].item() == pytest.approx((angles <= 30).mean() * 100)


def test_normal_metrics_empty_and_bad_shapes():
    out = NormalMetrics().compute()
    assert all(math.isnan(v.item()) for v in out.values())
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        normal_angles(torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3))
    with pytest.raises(ValueError, match="valid"):
        normal_angles(torch.randn(1, 3, 3, 3), torch.randn(1, 3, 3, 3), torch.ones(1, 3, 4, dtype=torch.bool))
