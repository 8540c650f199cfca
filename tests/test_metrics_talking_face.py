"""Talking-face editing metrics (``metrics.talking_face``) on hand-computable inputs: LMD (identical landmarks
-> 0, a known mouth shift -> that distance, other landmarks ignored), FER class mapping, probabilities and
accuracy of a hand-built classifier, intensity monotonicity (monotone, reversed, mixed and constant series
against hand counts and scipy), the PNG grid, the accumulator, and bad inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pyvision_fast.metrics.talking_face import (TalkingFaceEditMetrics, emotion_accuracy,
                                                emotion_probabilities, fer_class_indices,
                                                intensity_monotonicity, mouth_lmd,
                                                save_intensity_grid)


def test_mouth_lmd():
    torch.manual_seed(0)
    lm = torch.rand(4, 68, 2) * 224
    assert mouth_lmd(lm, lm).item() == 0.0
    shifted = lm.clone()
    shifted[:, 48:68] += torch.tensor([3.0, 4.0])            # every mouth landmark 5 px away
    assert mouth_lmd(shifted, lm).item() == pytest.approx(5.0, abs=1e-4)
    moved = lm.clone()
    moved[:, :48] += 50.0                                      # the rest of the face does not count
    assert mouth_lmd(moved, lm).item() == 0.0
    half = lm.clone()
    half[:2, 48:68, 0] += 2.0                                  # 2 of 4 frames moved 2 px
    per_frame = mouth_lmd(half, lm, reduction="none")
    assert torch.allclose(per_frame, torch.tensor([2.0, 2.0, 0.0, 0.0]), atol=1e-4)
    assert mouth_lmd(half, lm).item() == pytest.approx(1.0, abs=1e-4)
    assert mouth_lmd(shifted.double()[None], lm.double()[None]).dtype == torch.float64
    for args, error in (((lm, lm[:3]), ValueError), ((lm[..., :1], lm[..., :1]), ValueError),
                        ((lm.long(), lm.long()), TypeError), ((lm, lm), ValueError)):
        with pytest.raises(error):
            mouth_lmd(*args, reduction="sum" if args[0] is args[1] else "mean")


def test_fer_class_indices():
    affectnet = ["Neutral", "Happiness", "Sadness", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]
    assert fer_class_indices(affectnet) == [6, 7, 5, 4, 1, 0, 2, 3]
    rafdb = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]
    assert fer_class_indices(rafdb) == [5, -1, 2, 1, 3, 6, 4, 0]    # no contempt in RAF-DB


class _ColourClassifier(nn.Module):
    """Logits = 10 x the mean of each channel (after undoing the normalisation): red image -> class 0."""

    def forward(self, x):
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        return 10 * (x * std + mean).mean((2, 3))


def test_probabilities_and_accuracy():
    images = torch.zeros(3, 3, 40, 30)
    images[0, 0] = 1.0
    images[1, 1] = 1.0
    images[2, 2] = 1.0
    probs = emotion_probabilities(_ColourClassifier(), images, size=32, chunk=2)
    assert probs.shape == (3, 3) and torch.allclose(probs.sum(-1), torch.ones(3))
    expected = torch.softmax(torch.eye(3) * 10, -1)          # resizing a flat image keeps it flat
    assert torch.allclose(probs, expected, atol=1e-5)
    assert emotion_accuracy(probs, torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)
    assert emotion_accuracy(probs, 2) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="images"):
        emotion_probabilities(_ColourClassifier(), torch.zeros(2, 1, 8, 8))
    with pytest.raises(TypeError, match="classifier"):
        emotion_probabilities(lambda x: x, images)
    with pytest.raises(ValueError, match="scores"):
        emotion_accuracy(torch.zeros(0, 3), 0)


def test_intensity_monotonicity():
    from scipy.stats import spearmanr

    up = intensity_monotonicity([0.1, 0.2, 0.4, 0.9])
    assert up == {"monotonic_fraction": 1.0, "spearman_rho": pytest.approx(1.0), "series": 1}
    down = intensity_monotonicity(torch.tensor([0.9, 0.5, 0.2]))
    assert down["monotonic_fraction"] == 0.0 and down["spearman_rho"] == pytest.approx(-1.0)
    mixed = [0.1, 0.3, 0.2, 0.5, 0.4]                        # up, down, up, down: 2 of 4 steps increase
    got = intensity_monotonicity(mixed)
    assert got["monotonic_fraction"] == 0.5
    assert got["spearman_rho"] == pytest.approx(spearmanr(np.arange(5), mixed).statistic)
    assert got["spearman_rho"] == pytest.approx(1 - 6 * (0 + 1 + 1 + 1 + 1) / (5 * 24))   # 1 - 6Σd²/(n(n²-1))
    # several series: fractions pooled over every step, rho averaged over the series where it is defined
    both = intensity_monotonicity([[0.1, 0.2, 0.3], [0.5, 0.5, 0.5]])
    assert both["monotonic_fraction"] == 0.5 and both["spearman_rho"] == pytest.approx(1.0)
    assert np.isnan(intensity_monotonicity([0.2, 0.2])["spearman_rho"])
    assert intensity_monotonicity([0.3, 0.1, 0.2], intensities=[0.0, 0.5, 1.0])["monotonic_fraction"] == 0.5
    for bad in ([0.5], [[0.1, float("nan")]], np.zeros((2, 2, 2))):
        with pytest.raises(ValueError):
            intensity_monotonicity(bad)
    with pytest.raises(ValueError, match="increase"):
        intensity_monotonicity([0.1, 0.2], intensities=[1.0, 0.0])


def test_intensity_grid_png(tmp_path):
    images = torch.zeros(3, 4, 3, 16, 12)
    for r in range(3):
        images[r, :, 0] = r / 2                              # red grows down the rows
    path = save_intensity_grid(images, tmp_path / "fig" / "grid.png", intensities=[0, 0.5, 1], title="happy")
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape == (14 + 3 * 18 + 2, 44 + 4 * 14 + 2, 3)
    # the top-left pixel of cell (r, c) holds that cell's colour
    for r in range(3):
        for c in range(4):
            y, x = 14 + 2 + r * 18, 44 + 2 + c * 14
            assert tuple(img[y, x]) == (round(r / 2 * 255), 0, 0)
    save_intensity_grid(torch.zeros(2, 1, 3, 8, 8, dtype=torch.uint8), tmp_path / "u8.png")
    with pytest.raises(ValueError, match="rows"):
        save_intensity_grid(images, tmp_path / "x.png", intensities=[0, 1])
    with pytest.raises(ValueError, match="images"):
        save_intensity_grid(images[0], tmp_path / "x.png")


def test_accumulator():
    m = TalkingFaceEditMetrics()
    m.update(lmd=torch.tensor([1.0, 3.0]), l1=0.5)
    m.update(lmd=torch.tensor([5.0]), spearman_rho=torch.tensor([float("nan"), 0.5]))
    assert m.compute() == {"l1": 0.5, "lmd": 3.0, "spearman_rho": 0.5}
    with pytest.raises(ValueError, match="unknown"):
        m.update(psnr=1.0)
