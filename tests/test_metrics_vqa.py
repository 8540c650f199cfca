"""VQA metrics (``metrics.vqa``): answer normalisation, the leave-one-out accuracy against a direct
enumeration, ``VQAAccuracy`` / ``VQAScores`` on hand-made logits and soft targets, VQA-Rephrasings consistency
and VQA-CE subset accuracies by hand."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from pyvision_fast.metrics.vqa import (VQAAccuracy, VQAScores, consistency_scores, normalize_answer,
                                       soft_score, subset_accuracies, vqa_accuracy)


@pytest.mark.parametrize("raw, expected", [
    ("Two", "2"), ("the dog.", "dog"), ("dont know", "don't know"), ("Yes!", "yes"), ("1,000", "1000"),
    ("red, white", "red white"), ("A cat", "cat"), ("couldnt've", "couldn't've"), ("T-shirt", "t shirt"),
    ("3.5", "3.5"), ("  none\t", "0"), ("an apple and the pear", "apple and pear"), ("wont", "won't"),
    ("left/right", "left right"), ("no ?", "no"),
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def _direct_accuracy(pred: str, answers: list[str]) -> float:
    """Enumerate the leave-one-out subsets explicitly (the VQA evaluation's loop)."""
    accs = []
    for i in range(len(answers)):
        others = answers[:i] + answers[i + 1:]
        accs.append(min(sum(a == pred for a in others) / 3, 1.0))
    return sum(accs) / len(accs)


def test_soft_scores_and_accuracy():
    assert [round(soft_score(c), 10) for c in range(6)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0]
    answers = ["2", "two", "2", "3", "2 ", "three", "3", "3", "two", "4"]    # '2' x5 after normalising
    normalised = [normalize_answer(a) for a in answers]
    for pred in ("2", "3", "4", "5", "Two"):
        expected = _direct_accuracy(normalize_answer(pred), normalised)
        assert vqa_accuracy(pred, answers) == pytest.approx(expected)
    assert vqa_accuracy("2", answers) == 1.0 and vqa_accuracy("4", answers) == pytest.approx(0.3)
    assert vqa_accuracy("three", answers) == 1.0 and vqa_accuracy("5", answers) == 0.0
    with pytest.raises(ValueError, match="at least one human answer"):
        vqa_accuracy("yes", [])
    with pytest.raises(TypeError, match="expected a string"):
        normalize_answer(3)


def test_vqa_accuracy_metric():
    m = VQAAccuracy()
    logits = torch.tensor([[0.1, 2.0, 0.3], [5.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    targets = torch.tensor([[0.0, 0.9, 0.3], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    m.update(logits, targets)
    m.update(logits[:1], torch.tensor([[0.0, 0.6, 1.0]]))
    assert float(m.compute()) == pytest.approx((0.9 + 0 + 0 + 0.6) / 4)
    with pytest.raises(ValueError, match=r"\(B, A\)"):
        m.update(logits, targets[:, :2])


def test_consistency_by_hand():
    scores = {1: 1.0, 11: 0.3, 12: 0.0, 13: 1.0, 2: 0.0, 21: 0.6, 22: 0.6, 23: 0.6}
    groups = {1: [11, 12, 13], 2: [21, 22, 23]}
    out = consistency_scores(scores, groups, ks=(1, 2, 3, 4))
    # group 1: correct = [1, 1, 0, 1] -> CS1 3/4, CS2 3/6, CS3 1/4, CS4 0; group 2: [0, 1, 1, 1] -> the same
    assert out["consistency@1"] == pytest.approx(0.75) and out["consistency@2"] == pytest.approx(0.5)
    assert out["consistency@3"] == pytest.approx(0.25) and out["consistency@4"] == 0.0
    assert out["original_accuracy"] == pytest.approx(0.5)
    assert out["rephrasing_accuracy"] == pytest.approx((0.3 + 0 + 1 + 0.6 * 3) / 6)
    # the same by the official formula written out: all(score > 0) over itertools.combinations
    for k in (1, 2, 3, 4):
        ref = []
        for o, reps in groups.items():
            accs = [scores[o]] + [scores[q] for q in reps]
            combos = list(itertools.combinations(accs, k))
            ref.append(sum(all(s > 0 for s in c) for c in combos) / len(combos))
        assert out[f"consistency@{k}"] == pytest.approx(sum(ref) / len(ref))
    assert math.isnan(consistency_scores({1: 1.0, 11: 1.0}, {1: [11]}, ks=(3,))["consistency@3"])
    with pytest.raises(ValueError, match="have no score"):
        consistency_scores({1: 1.0}, {1: [11]})


def test_vqa_scores_metric_with_groups_and_subsets():
    m = VQAScores(groups={10: [11, 12]}, subsets={"counterexample": [10, 12], "easy": [11, 99]}, ks=(1, 2))
    logits = torch.eye(3)
    targets = torch.tensor([[1.0, 0, 0], [0, 0.3, 0], [0, 0.9, 0.0]])
    m.update(logits, targets, torch.tensor([10, 11, 12]))
    out = m.compute()
    assert float(out["accuracy"]) == pytest.approx(1.3 / 3)
    assert float(out["consistency@1"]) == pytest.approx(2 / 3)
    assert float(out["consistency@2"]) == pytest.approx(1 / 3)
    assert float(out["counterexample_accuracy"]) == pytest.approx(0.5)
    assert float(out["easy_accuracy"]) == pytest.approx(0.3)
    assert math.isnan(subset_accuracies({1: 1.0}, {"hard": [2]})["hard_accuracy"])


def test_vqa_scores_after_ddp_synchronisation():
    """After torchmetrics' all-gather a ``cat`` state is one tensor instead of a list of batches."""
    m = VQAScores(groups={1: [2]}, ks=(1, 2))
    m.update(torch.eye(2), torch.eye(2), torch.tensor([7, 8]))
    m.ids, m.scores = torch.tensor([1, 2, 3]), torch.tensor([1.0, 0.0, 0.6], dtype=torch.float64)
    out = m.compute()
    assert float(out["accuracy"]) == pytest.approx(1.6 / 3) and float(out["consistency@2"]) == 0.0
    with pytest.warns(UserWarning, match="before the ``update``"):
        empty = VQAScores().compute()
    assert float(empty["accuracy"]) == 0.0
