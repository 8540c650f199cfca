"""Face verification: LFW's ``pairs.txt`` protocol, 10-fold accuracy at the best threshold, TAR at a fixed
FAR, flipped-image embedding fusion.

**pairs.txt** (LFW, Huang et al. 2007; also the layout of the CALFW/CPLFW/AgeDB pair lists written in it): a
first line ``F N`` (``10 300``: F folds of N same-person and N different-person pairs), then F * 2N lines,
fold after fold: same-person lines ``name i j`` and different-person lines ``name1 i name2 j``; image ``i`` of
``name`` is ``<images>/<name>/<name>_<i as 4 digits>.jpg``. :func:`read_pairs` checks all of it and names the
file and line of what is wrong; :class:`PairsDataset` also checks that every image exists (and decodes) before
use.

**Accuracy** (:func:`kfold_accuracy`): pair f belongs to fold f // (2N) in file order; for each fold the
threshold is the one that maximises accuracy on the other F - 1 folds, and the accuracy is measured on the
held-out fold; the result is the mean (and standard deviation) over folds. Thresholds are searched exactly:
every midpoint between consecutive distinct training scores (and one below/above all of them) is a candidate;
among equally good candidates the smallest is taken (insightface's scan over a grid also takes the first
best). A pair is "same" when its score (cosine similarity) is strictly above the threshold.

**TAR@FAR** (:func:`tar_at_far`): the ROC of all pairs (scikit-learn's ``roc_curve``, a pair accepted when
score >= threshold); by default the largest TAR among ROC points with FAR <= the target (no interpolation: the
operating point exists), with ``interpolate=True`` the TAR linearly interpolated at exactly the target FAR
between the ROC's upper points (the largest TAR at each FAR).
With 3000 different-person pairs (LFW) FAR 1e-3 means at most 3 false accepts.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

__all__ = ["Pair", "PairsDataset", "VerificationMetric", "flip_fused_embeddings", "kfold_accuracy",
           "read_pairs", "tar_at_far"]


@dataclass(frozen=True)
class Pair:
    """One line of pairs.txt: the two images' (name, index), whether they show the same person, its fold and
    line number (1-based)."""
    first: tuple[str, int]
    second: tuple[str, int]
    same: bool
    fold: int
    line: int


def _index(token: str, path, lineno: int) -> int:
    if not token.isdigit() or int(token) < 1:
        raise ValueError(f"{path}:{lineno}: image number {token!r} is not a positive integer")
    return int(token)


def read_pairs(path: Union[str, Path]) -> tuple[list[Pair], int, int]:
    """Parses LFW's pairs.txt: returns (pairs in file order, folds F, pairs per kind and fold N)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pairs file {str(path)!r} does not exist")
    lines = [(i + 1, ln.split()) for i, ln in enumerate(path.read_text().splitlines())]
    lines = [(i, t) for i, t in lines if t]  # blank lines (a trailing newline) carry nothing
    if not lines:
        raise ValueError(f"{path}: empty file (expected a first line 'F N', e.g. '10 300')")
    head_line, head = lines[0]
    if len(head) != 2 or not all(t.isdigit() and int(t) > 0 for t in head):
        raise ValueError(f"{path}:{head_line}: the first line must be 'F N' (folds, pairs per kind and "
                         f"fold), e.g. '10 300'; got {' '.join(head)!r}")
    folds, n = int(head[0]), int(head[1])
    body = lines[1:]
    if len(body) != 2 * folds * n:
        raise ValueError(f"{path}: the header '{folds} {n}' announces {2 * folds * n} pair lines, the file "
                         f"has {len(body)}")
    pairs = []
    for k, (lineno, t) in enumerate(body):
        fold = k // (2 * n)
        if len(t) == 3:
            pairs.append(Pair((t[0], _index(t[1], path, lineno)), (t[0], _index(t[2], path, lineno)), True,
                              fold, lineno))
        elif len(t) == 4:
            pairs.append(Pair((t[0], _index(t[1], path, lineno)), (t[2], _index(t[3], path, lineno)), False,
                              fold, lineno))
        else:
            raise ValueError(f"{path}:{lineno}: expected 'name i j' (same person) or 'name1 i name2 j' "
                             f"(different persons), got {len(t)} fields: {' '.join(t)!r}")
    return pairs, folds, n


def image_path(images: Union[str, Path], name: str, index: int) -> Path:
    """LFW's file name of image ``index`` of ``name``: ``images/name/name_0001.jpg``."""
    return Path(images) / name / f"{name}_{index:04d}.jpg"


class PairsDataset(torch.utils.data.Dataset):
    """The pairs of a pairs.txt with their images.

    Args:
        pairs_file: LFW-format pairs.txt.
        images: the folder of ``<name>/<name>_<i:04d>.jpg`` (LFW's ``lfw/``).
        transform: applied to each RGB ``PIL.Image``; must return a tensor (C, H, W).
        check_images: decode every image once when built (a missing file is always an error).

    Items: ``(images (2, C, H, W), label, index, fold)``: ``label`` 1 for the same person, 0 otherwise, the
    pair's position in the file and its fold (what :class:`VerificationMetric` needs); ``targets`` lists the
    labels, ``folds`` the folds.
    """

    def __init__(self, pairs_file: Union[str, Path], images: Union[str, Path], transform: Callable,
                 check_images: bool = True):
        from ..data.image_folder import image_decode_problem

        self.pairs, self.num_folds, self.per_fold = read_pairs(pairs_file)
        self.transform = transform
        self.paths = [(image_path(images, *p.first), image_path(images, *p.second)) for p in self.pairs]
        checked: dict[Path, Optional[str]] = {}
        for pair, paths in zip(self.pairs, self.paths):
            for p in paths:
                if p not in checked:
                    checked[p] = (image_decode_problem(os.fspath(p)) if check_images
                                  else (None if p.is_file() else "missing"))
                if checked[p] is not None:
                    raise ValueError(f"{pairs_file}:{pair.line}: image {str(p)!r}: {checked[p]}")
        self.targets = [int(p.same) for p in self.pairs]
        self.folds = [p.fold for p in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        from PIL import Image

        out = []
        for p in self.paths[index]:
            with Image.open(p) as im:
                out.append(self.transform(im.convert("RGB")))
        return torch.stack(out), self.targets[index], index, self.folds[index]


def _best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The smallest threshold t maximising the accuracy of (score > t) == label, over the midpoints between
    consecutive distinct scores and one value below / above all of them."""
    values = np.unique(scores)
    candidates = np.concatenate([[values[0] - 1.0], (values[:-1] + values[1:]) / 2, [values[-1] + 1.0]])
    # correct(t) = #negatives with score <= t + #positives with score > t, from sorted counts
    neg_le = np.searchsorted(np.sort(scores[labels == 0]), candidates, side="right")
    pos_le = np.searchsorted(np.sort(scores[labels == 1]), candidates, side="right")
    correct = neg_le + (int(labels.sum()) - pos_le)
    return float(candidates[int(np.argmax(correct))])


def kfold_accuracy(scores, labels, folds) -> dict[str, float]:
    """Verification accuracy of the LFW protocol.

    scores (P,) float (higher: more likely the same person), labels (P,) {0, 1}, folds (P,) int fold of each
    pair. Returns ``accuracy`` (mean over folds), ``accuracy_std`` (population std over folds, as insightface
    reports), ``threshold`` (mean of the folds' thresholds)."""
    s, y, f = (np.asarray(a).reshape(-1) for a in (scores, labels, folds))
    if not (len(s) == len(y) == len(f)) or len(s) == 0:
        raise ValueError(f"kfold_accuracy: scores, labels and folds must be non-empty and of one length, got "
                         f"{len(s)}, {len(y)}, {len(f)}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("kfold_accuracy: labels must be 0 or 1")
    fold_ids = np.unique(f)
    if len(fold_ids) < 2:
        raise ValueError(f"kfold_accuracy: needs at least 2 folds, got {len(fold_ids)}")
    y = y.astype(np.int64)
    accs, thresholds = [], []
    for k in fold_ids:
        test = f == k
        t = _best_threshold(s[~test], y[~test])
        accs.append(float(((s[test] > t) == (y[test] == 1)).mean()))
        thresholds.append(t)
    return {"accuracy": float(np.mean(accs)), "accuracy_std": float(np.std(accs)),
            "threshold": float(np.mean(thresholds))}


def tar_at_far(scores, labels, far: float = 1e-3, interpolate: bool = False) -> float:
    """True-accept rate at false-accept rate ``far`` (see the module docstring for the two readings).
    scores (P,), labels (P,) {0, 1} with both kinds present."""
    from sklearn.metrics import roc_curve

    s, y = np.asarray(scores).reshape(-1), np.asarray(labels).reshape(-1)
    if not (0 < far < 1):
        raise ValueError(f"tar_at_far: far must be in (0, 1), got {far}")
    if not ((y == 1).any() and (y == 0).any()):
        raise ValueError("tar_at_far: needs same-person (1) and different-person (0) pairs")
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    if interpolate:  # through the upper ROC: the largest TPR at each FPR
        xs, first = np.unique(fpr, return_index=True)
        ys = np.maximum.reduceat(tpr, first)
        return float(np.interp(far, xs, ys))
    return float(tpr[fpr <= far + 1e-12].max())


def flip_fused_embeddings(model: Callable[[Tensor], Tensor], images: Tensor, flip: bool = True) -> Tensor:
    """L2-normalised embeddings (B, D) of images (B, C, H, W); with ``flip`` the embedding is the sum of those
    of the image and its horizontal mirror (insightface's test-time flip), normalised."""
    emb = model(images).float()
    if flip:
        emb = emb + model(torch.flip(images, dims=[3])).float()
    return F.normalize(emb, dim=1)




class VerificationMetric(Metric):
    """Accumulates (pair index, score, label, fold) over evaluation batches (synchronised across processes;
    the pair index restores file order) and computes ``accuracy``, ``accuracy_std``, ``threshold`` and
    ``tar@far=<far>`` for each FAR in ``fars``. update(index (B,) int64, scores (B,) float, labels (B,) int,
    folds (B,) int)."""

    full_state_update = False

    def __init__(self, fars=(1e-3,), prefix: str = "", **kwargs):
        super().__init__(**kwargs)
        self.fars, self.prefix = tuple(fars), prefix
        for name in ("index", "scores", "labels", "folds"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, index: Tensor, scores: Tensor, labels: Tensor, folds: Tensor) -> None:
        self.index.append(index.reshape(-1).long())
        self.scores.append(scores.reshape(-1).double())
        self.labels.append(labels.reshape(-1).long())
        self.folds.append(folds.reshape(-1).long())

    def compute(self) -> dict[str, float]:
        from torchmetrics.utilities import dim_zero_cat

        if not self.scores:
            raise ValueError("VerificationMetric: no pairs were evaluated")
        index, scores, labels, folds = (dim_zero_cat(getattr(self, n)).cpu().numpy()
                                        for n in ("index", "scores", "labels", "folds"))
        order = np.argsort(index, kind="stable")
        scores, labels, folds = scores[order], labels[order], folds[order]
        out = {f"{self.prefix}{k}": v for k, v in kfold_accuracy(scores, labels, folds).items()}
        for far in self.fars:
            out[f"{self.prefix}tar@far={far:g}"] = tar_at_far(scores, labels, far)
        return out

