"""Multi-label metrics (``metrics.multilabel``): C-P/C-R/C-F1, O-P/O-R/O-F1 and mAP against values computed by
hand on a small example, torchmetrics' macro/micro precision and recall as a second reference, accumulation
over batches, and bad input."""
from __future__ import annotations

import pytest
import torch
from torchmetrics.functional.classification import multilabel_precision, multilabel_recall

from pyvision_fast.metrics.multilabel import MultiLabelMetrics, label_counts, multilabel_map, multilabel_prf

TARGETS = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0]])
PREDS = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 1, 0]], dtype=torch.bool)
SCORES = torch.tensor([[0.9, 0.2, 0.5, 0.3], [0.8, 0.7, 0.6, 0.1], [0.3, 0.6, 0.1, 0.2],
                       [0.1, 0.4, 0.9, 0.4]])

# By hand. Class 0: TP 2 FP 0 FN 0 (P 1, R 1); class 1: TP 1 FP 0 FN 1 (P 1, R 1/2); class 2: TP 1 FP 1 FN 1
# (P 1/2, R 1/2); class 3: never predicted, never present (P 0, R 0).
HAND = {
    "C-P": (1 + 1 + 0.5 + 0) / 4,
    "C-R": (1 + 0.5 + 0.5 + 0) / 4,
    "O-P": 4 / 5,          # TP 4 of 5 predicted labels
    "O-R": 4 / 6,          # TP 4 of 6 true labels
}
HAND["C-F1"] = 2 * HAND["C-P"] * HAND["C-R"] / (HAND["C-P"] + HAND["C-R"])   # 2 * 0.625 * 0.5 / 1.125 = 5/9
HAND["O-F1"] = 2 * 0.8 * (2 / 3) / (0.8 + 2 / 3)                               # 8 / 11
# AP by hand (ranking by score, precision at each positive): class 0 scores of positives 0.9, 0.3 and
# negatives 0.8, 0.1: ranks 1 and 3 -> (1/1 + 2/3) / 2 = 5/6; class 1 positives 0.7, 0.6 over 0.4, 0.2 -> 1;
# class 2 positives 0.5, 0.9, negatives 0.6, 0.1: ranks 1 and 3 -> 5/6; class 3 has no positive: left out.
HAND_MAP = (5 / 6 + 1 + 5 / 6) / 3


def test_against_hand_values():
    assert [t.tolist() for t in label_counts(PREDS, TARGETS)] == [[2, 1, 1, 0], [0, 0, 1, 0], [0, 1, 1, 0]]
    got = multilabel_prf(PREDS, TARGETS)
    for k, v in HAND.items():
        assert float(got[k]) == pytest.approx(v, abs=1e-12), k
    assert float(got["C-F1"]) == pytest.approx(5 / 9, abs=1e-12)
    assert float(got["O-F1"]) == pytest.approx(8 / 11, abs=1e-12)
    assert float(multilabel_map(SCORES, TARGETS)) == pytest.approx(8 / 9, abs=1e-6) == HAND_MAP


def test_torchmetrics_macro_and_micro_agree():
    got = multilabel_prf(PREDS, TARGETS)
    p, t = PREDS.long(), TARGETS
    assert float(got["C-P"]) == pytest.approx(float(multilabel_precision(p, t, 4, average="macro")), abs=1e-6)
    assert float(got["C-R"]) == pytest.approx(float(multilabel_recall(p, t, 4, average="macro")), abs=1e-6)
    assert float(got["O-P"]) == pytest.approx(float(multilabel_precision(p, t, 4, average="micro")), abs=1e-6)
    assert float(got["O-R"]) == pytest.approx(float(multilabel_recall(p, t, 4, average="micro")), abs=1e-6)


def test_metric_accumulates_over_batches():
    m = MultiLabelMetrics(4, prefix="x_")
    m.update(PREDS[:3], TARGETS[:3], SCORES[:3])
    m.update(PREDS[3:], TARGETS[3:], SCORES[3:])
    out = m.compute()
    for k, v in HAND.items():
        assert float(out[f"x_{k}"]) == pytest.approx(v, abs=1e-12), k
    assert float(out["x_mAP"]) == pytest.approx(HAND_MAP, abs=1e-6)
    m.reset()
    m.update(PREDS, TARGETS)             # without scores: no mAP
    assert "x_mAP" not in m.compute() and float(m.compute()["x_O-P"]) == pytest.approx(0.8)


def test_edge_cases():
    # nothing predicted: precision 0 (not NaN), recall 0
    got = multilabel_prf(torch.zeros(2, 3, dtype=torch.bool), torch.tensor([[1, 0, 0], [0, 1, 0]]))
    assert all(float(v) == 0.0 for v in got.values())
    # perfect predictions on the classes that occur; a class never present nor predicted counts 0 in C-P/C-R
    t = torch.tensor([[1, 0, 1], [0, 1, 0]])
    got = multilabel_prf(t.bool(), t)
    assert float(got["O-F1"]) == 1.0 and float(got["C-P"]) == 1.0
    assert torch.isnan(multilabel_map(torch.rand(2, 3), torch.zeros(2, 3)))


def test_bad_input():
    with pytest.raises(ValueError, match=r"must both be \(N, C\)"):
        multilabel_prf(PREDS[:, :3], TARGETS)
    with pytest.raises(ValueError, match="targets must be 0/1"):
        multilabel_prf(PREDS, TARGETS * 2)
    with pytest.raises(ValueError, match="label sets"):
        multilabel_prf(SCORES, TARGETS)
    with pytest.raises(ValueError, match=r"preds must be \(N, 5\)"):
        MultiLabelMetrics(5).update(PREDS, TARGETS)
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        MultiLabelMetrics(0)
