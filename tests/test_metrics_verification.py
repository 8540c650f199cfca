"""Face verification (``pyvision_fast.metrics.verification``): pairs.txt parsing and its errors, the 10-fold
protocol, TAR@FAR and flip fusion on hand-made inputs whose answers are worked out in the comments."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pyvision_fast.metrics.verification import (PairsDataset, VerificationMetric, flip_fused_embeddings,
                                                kfold_accuracy, read_pairs, tar_at_far)


def write_pairs(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_read_pairs_lfw_format(tmp_path):
    p = write_pairs(tmp_path / "pairs.txt", ["2 1", "Abel_Pacheco 1 4", "Abel_Pacheco 1 Ana_Palacio 2",
                                             "Zico 2 3", "Aaron_Peirsol 1 Zico 3"])
    pairs, folds, n = read_pairs(p)
    assert (folds, n, len(pairs)) == (2, 1, 4)
    assert pairs[0].first == ("Abel_Pacheco", 1) and pairs[0].second == ("Abel_Pacheco", 4) and pairs[0].same
    assert pairs[1].second == ("Ana_Palacio", 2) and not pairs[1].same
    assert [p.fold for p in pairs] == [0, 0, 1, 1] and [p.line for p in pairs] == [2, 3, 4, 5]


@pytest.mark.parametrize("lines, message", [
    (["10"], r"pairs.txt:1: the first line must be 'F N'"),
    (["1 x", "a 1 2", "a 1 b 2"], r"pairs.txt:1: the first line"),
    (["1 2", "a 1 2", "a 1 b 2"], r"announces 4 pair lines, the file has 2"),
    (["1 1", "a 1 2", "a 1 b"], r"pairs.txt:3: image number 'b'"),
    (["1 1", "a 1 2", "a 1 b 2 c"], r"pairs.txt:3: expected 'name i j' \(same person\) or 'name1 i name2 j'"),
    (["1 1", "a 1 0", "a 1 b 2"], r"pairs.txt:2: image number '0' is not a positive integer"),
    (["1 1", "a one 2", "a 1 b 2"], r"pairs.txt:2: image number 'one'"),
])
def test_read_pairs_errors_name_file_and_line(tmp_path, lines, message):
    with pytest.raises(ValueError, match=message):
        read_pairs(write_pairs(tmp_path / "pairs.txt", lines))


def test_read_pairs_missing_or_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        read_pairs(tmp_path / "nowhere.txt")
    with pytest.raises(ValueError, match="empty file"):
        read_pairs(write_pairs(tmp_path / "pairs.txt", [""]))


def test_pairs_dataset_items_and_missing_image(tmp_path):
    for name, idx in (("Ann", 1), ("Ann", 2), ("Bob", 1)):
        (tmp_path / "lfw" / name).mkdir(parents=True, exist_ok=True)
        path = tmp_path / "lfw" / name / f"{name}_{idx:04d}.jpg"
        Image.fromarray(np.full((8, 8, 3), 40 * idx, np.uint8)).save(path)
    p = write_pairs(tmp_path / "pairs.txt", ["1 1", "Ann 1 2", "Ann 2 Bob 1"])
    import torchvision.transforms as T

    ds = PairsDataset(p, tmp_path / "lfw", T.PILToTensor())
    assert len(ds) == 2 and ds.targets == [1, 0] and ds.folds == [0, 0]
    images, label, index, fold = ds[1]
    assert images.shape == (2, 3, 8, 8) and (label, index, fold) == (0, 1, 0)
    assert abs(int(images[0].float().mean()) - 80) <= 2 and abs(int(images[1].float().mean()) - 40) <= 2
    p2 = write_pairs(tmp_path / "pairs2.txt", ["1 1", "Ann 1 2", "Ann 2 Cy 7"])
    with pytest.raises(ValueError, match=r"pairs2.txt:3: image .*Cy_0007.jpg.*missing"):
        PairsDataset(p2, tmp_path / "lfw", T.PILToTensor())
    (tmp_path / "lfw" / "Bob" / "Bob_0001.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"pairs.txt:3: image .*Bob_0001.jpg"):
        PairsDataset(p, tmp_path / "lfw", T.PILToTensor())


def test_kfold_accuracy_known_answer():
    # every fold: positives 0.9, 0.8, 0.3 and negatives 0.1, 0.2, 0.85. On any 9 folds a threshold in
    # (0.2, 0.3) gets 5 of 6 right (all but the 0.85 negative), one in (0.3, 0.8) or (0.85, 0.9) only 4: the
    # chosen threshold is the midpoint 0.25 and each held-out fold scores 5/6.
    scores = np.tile([0.9, 0.8, 0.3, 0.1, 0.2, 0.85], 10)
    labels = np.tile([1, 1, 1, 0, 0, 0], 10)
    folds = np.repeat(np.arange(10), 6)
    out = kfold_accuracy(scores, labels, folds)
    assert out["accuracy"] == pytest.approx(5 / 6) and out["accuracy_std"] == pytest.approx(0)
    assert out["threshold"] == pytest.approx(0.25)


def test_kfold_threshold_comes_from_the_other_folds():
    # fold 0: positive 0.7, negative 0.5; fold 1: positive 0.45, negative 0.3. Trained on fold 1 the threshold
    # is 0.375, which accepts fold 0's negative (1/2 right); trained on fold 0 it is 0.6, which rejects fold
    # 1's positive (1/2 right). One threshold for all pairs (0.475) would get 3 of 4: held-out is what is
    # measured.
    out = kfold_accuracy([0.7, 0.5, 0.45, 0.3], [1, 0, 1, 0], [0, 0, 1, 1])
    assert out["accuracy"] == pytest.approx(0.5) and out["threshold"] == pytest.approx((0.375 + 0.6) / 2)
    # perfectly separated folds: every held-out fold is right
    out = kfold_accuracy([0.9, 0.1, 0.8, 0.2, 0.7, 0.3], [1, 0, 1, 0, 1, 0], [0, 0, 1, 1, 2, 2])
    assert out["accuracy"] == 1.0


def test_kfold_bad_inputs():
    with pytest.raises(ValueError, match="one length"):
        kfold_accuracy([0.1, 0.2], [0, 1], [0])
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        kfold_accuracy([0.1, 0.2], [0, 2], [0, 1])
    with pytest.raises(ValueError, match="at least 2 folds"):
        kfold_accuracy([0.1, 0.2], [0, 1], [0, 0])


def test_tar_at_far_known_answer():
    # 1000 negatives at 0.000, 0.001, ..., 0.999; positives below. FAR <= 1e-3 allows one false accept (the
    # negative at 0.999): the threshold can go down to 0.9985, accepting 5 positives -> TAR 0.5. With no false
    # accept (FAR < 1e-3) the threshold stays above 0.999: 4 positives -> 0.4.
    neg = np.arange(1000) / 1000
    pos = np.array([1.2, 1.1, 0.9995, 0.9991, 0.9985, 0.5, 0.4, 0.3, 0.2, 0.1])
    scores = np.concatenate([pos, neg])
    labels = np.concatenate([np.ones(10), np.zeros(1000)])
    assert tar_at_far(scores, labels, 1e-3) == pytest.approx(0.5)
    assert tar_at_far(scores, labels, 5e-4) == pytest.approx(0.4)
    # interpolated: the upper ROC goes (0, 0.4) -> (0.001, 0.5) -> (0.002, 0.5); at 5e-4 halfway: 0.45
    assert tar_at_far(scores, labels, 5e-4, interpolate=True) == pytest.approx(0.45)
    assert tar_at_far(scores, labels, 1e-3, interpolate=True) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="far must be in"):
        tar_at_far(scores, labels, 0.0)
    with pytest.raises(ValueError, match="needs same-person"):
        tar_at_far(pos, np.ones(10))


def test_flip_fused_embeddings():
    # a "model" that returns the first image row of the first channel: with flip, row + mirrored row
    model = lambda x: x[:, 0, 0, :]  # noqa: E731
    images = torch.tensor([[3.0, 0.0, 1.0, 0.0]]).view(1, 1, 1, 4)
    np.testing.assert_allclose(flip_fused_embeddings(model, images, flip=False).numpy(),
                               [[3 / 10 ** 0.5, 0, 1 / 10 ** 0.5, 0]], rtol=1e-6)
    # [3, 0, 1, 0] + [0, 1, 0, 3] = [3, 1, 1, 3], norm sqrt(20)
    np.testing.assert_allclose(flip_fused_embeddings(model, images).numpy(),
                               [np.array([3, 1, 1, 3]) / 20 ** 0.5], rtol=1e-6)


def test_verification_metric_restores_file_order():
    scores = np.tile([0.9, 0.8, 0.3, 0.1, 0.2, 0.85], 10)
    labels = np.tile([1, 1, 1, 0, 0, 0], 10)
    folds = np.repeat(np.arange(10), 6)
    metric = VerificationMetric(fars=(1e-3, 0.1))
    perm = np.random.default_rng(0).permutation(60)
    for chunk in np.array_split(perm, 7):  # batches in another order, as DDP shards deliver them
        metric.update(*(torch.from_numpy(a) for a in (chunk, scores[chunk], labels[chunk], folds[chunk])))
    out = metric.compute()
    assert out["accuracy"] == pytest.approx(5 / 6) and out["threshold"] == pytest.approx(0.25)
    # 30 negatives: FAR 0.1 allows 3 false accepts, the top three negatives are all 0.85 (10 of them): none is
    # allowed without the other nine, so the threshold stays above 0.85: positives 0.9 -> TAR 10/30
    assert out["tar@far=0.1"] == pytest.approx(1 / 3) and out["tar@far=0.001"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="no pairs"), pytest.warns(UserWarning, match="before the"):
        VerificationMetric().compute()
