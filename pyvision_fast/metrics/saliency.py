"""Saliency-map metrics of the MIT saliency benchmark as PAVER evaluates Wild360 (shared/papers.md section
2.2, ``HS-YN/PAVER:code/metrics/wild360.py``): AUC-Borji, AUC-Judd, CC, SIM, NSS and KLD, on one 2-D map pair,
and :class:`SaliencyMetrics`, a ``torchmetrics.Metric`` that accumulates them per frame and averages them as
PAVER does.

Every function takes a predicted map ``pred`` and a ground-truth density map ``gt``: 2-D, any float or integer
dtype, NumPy arrays or torch tensors (any device; computed in float64 NumPy), not necessarily of the same
size. Both are first resized to ``size = (H, W)`` = (120, 240) (PAVER's ``eval_res``, i.e. 240x120 W x H) with
PIL's filter ``resample`` (default ``"lanczos"``: PIL's Lanczos-3, which low-passes when it shrinks). PAVER
calls ``cv2.resize(m, (240, 120), cv2.INTER_LANCZOS4)``, which passes the flag as OpenCV's ``dst`` argument,
so its maps were in fact resized bilinearly without anti-aliasing; ``resample="bilinear"`` comes closer to
that, but only OpenCV itself reproduces it exactly. A map already of ``size`` is not resampled.

Wild360 has density maps, not fixation points, so the "fixations" are the pixels where the resized GT exceeds
its ``mean + 2 std`` (:func:`fixation_mask`), as in PAVER.

Definitions (the MIT benchmark's, ``cvzoya/saliency``), with the choices where PAVER's port differs:

* AUC-Judd: ROC of the fixated pixels (positives) against all other pixels (negatives), one threshold per
  distinct saliency value at a fixation, curve closed at (0, 0) and (1, 1), trapezoidal area. ``jitter`` adds
  N(0, 1e-7²) noise first (the benchmark's tie breaking; seeded by ``rng``). The MIT code counts with 1-based
  ``i``; PAVER's 0-based port lags the true-positive rate by one fixation, which is not reproduced. Ties that
  remain (``jitter=False``) are counted exactly, so a constant map scores 0.5.
* AUC-Borji: per split, as many pixels as fixations drawn uniformly (with replacement) from the whole map —
  the benchmark's and PAVER's sampling, which may hit fixated pixels — as negatives; thresholds
  ``0, step, 2 step, ... < max`` over the min-max-normalised map; area averaged over ``n_splits`` splits.
  ``clip_top=True`` reproduces PAVER's extra step of setting the map's values above ``mean + 2 std`` to 1
  first.
* CC: Pearson correlation of the two maps. NSS: mean of the standardised prediction (population std) at the
  fixations. SIM: sum of the element-wise minimum of the two maps, each min-max normalised then divided by its
  sum. KLD: ``sum g log(eps + g / (p + eps))`` of the sum-normalised maps (GT ``g`` against prediction ``p``;
  eps is float64's machine epsilon, the benchmark's Matlab ``eps``); the resized maps are clipped at 0 first
  (Lanczos rings slightly below 0 next to sharp peaks).

Degenerate maps (documented choices, so that a model emitting blank frames is penalised rather than dropped):
a constant prediction has CC = 0 and NSS = 0, is the uniform distribution for SIM and KLD, and scores 0.5 in
both AUCs. A constant or all-zero GT has no fixation: AUC-Judd, AUC-Borji, NSS and CC are NaN for that frame
(and SIM, KLD use the uniform distribution); :class:`SaliencyMetrics` leaves NaN frames out of the averages
(``nanmean``) and counts them in ``undefined_frames``. A non-finite value in a map is a ``ValueError``.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = [
    "EVAL_SIZE", "METRIC_NAMES", "resize_map", "fixation_mask", "auc_judd", "auc_borji", "cc", "sim", "nss",
    "kld", "saliency_scores", "SaliencyMetrics",
]

EVAL_SIZE = (120, 240)  # (H, W): PAVER's eval_res 120, maps of 240x120
METRIC_NAMES = ("auc_borji", "auc_judd", "cc", "sim", "nss", "kld")
_EPS = float(np.finfo(np.float64).eps)
_RESAMPLE = {"lanczos": Image.Resampling.LANCZOS, "bilinear": Image.Resampling.BILINEAR,
             "bicubic": Image.Resampling.BICUBIC, "box": Image.Resampling.BOX,
             "nearest": Image.Resampling.NEAREST}
MapLike = Union[np.ndarray, Tensor]


def _as_array(m: MapLike, name: str) -> np.ndarray:
    if isinstance(m, Tensor):
        m = m.detach().to("cpu", torch.float64).numpy()
    m = np.asarray(m, dtype=np.float64)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"{name} must be a non-empty 2-D map, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError(f"{name} holds {int((~np.isfinite(m)).sum())} non-finite values")
    return m


def resize_map(m: MapLike, size: tuple[int, int] = EVAL_SIZE, resample: str = "lanczos") -> np.ndarray:
    """``m`` (2-D) as a float64 array of ``size = (H, W)``, resampled by PIL's ``resample`` filter
    (``lanczos``, ``bilinear``, ``bicubic``, ``box`` or ``nearest``) in 32-bit float; returned as is when
    already that size."""
    m = _as_array(m, "map")
    if m.shape == tuple(size):
        return m
    if resample not in _RESAMPLE:
        raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, got {resample!r}")
    image = Image.fromarray(m.astype(np.float32), mode="F")
    return np.asarray(image.resize((int(size[1]), int(size[0])), _RESAMPLE[resample]), dtype=np.float64)


def fixation_mask(gt: np.ndarray) -> np.ndarray:
    """Boolean map of the "fixated" pixels of a density map: ``gt > mean(gt) + 2 std(gt)`` (PAVER's rule)."""
    return gt > gt.mean() + 2 * gt.std()


def _minmax(m: np.ndarray) -> np.ndarray:
    lo, hi = m.min(), m.max()
    return np.zeros_like(m) if hi <= lo else (m - lo) / (hi - lo)


def _distribution(m: np.ndarray) -> np.ndarray:
    total = m.sum()
    return np.full_like(m, 1.0 / m.size) if total <= 0 else m / total


def _pair(pred: MapLike, gt: MapLike, size, resample) -> tuple[np.ndarray, np.ndarray]:
    return (resize_map(_as_array(pred, "pred"), size, resample),
            resize_map(_as_array(gt, "gt"), size, resample))


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _roc_area(pos: np.ndarray, neg: np.ndarray, thresholds: np.ndarray) -> float:
    """Trapezoidal area of the ROC through (0, 0), (P(pos >= t), P(neg >= t)) for descending ``thresholds``,
    and (1, 1); ``pos``/``neg`` need not be sorted."""
    pos, neg = np.sort(pos), np.sort(neg)
    tp = (pos.size - np.searchsorted(pos, thresholds, side="left")) / pos.size
    fp = (neg.size - np.searchsorted(neg, thresholds, side="left")) / neg.size
    tp = np.concatenate(([0.0], tp, [1.0]))
    fp = np.concatenate(([0.0], fp, [1.0]))
    return float(np.trapezoid(tp, fp))


def auc_judd(pred: MapLike, gt: MapLike, *, size=EVAL_SIZE, resample: str = "lanczos", jitter: bool = True,
             rng=None) -> float:
    """AUC-Judd of ``pred`` against the fixations of ``gt`` (module docstring); in [0, 1], NaN without
    fixations. ``rng``: a ``numpy.random.Generator`` or seed for the jitter (None: fresh entropy)."""
    s, g = _pair(pred, gt, size, resample)
    fix = fixation_mask(g)
    if not fix.any() or fix.all():
        return float("nan")
    if jitter:
        s = s + _rng(rng).standard_normal(s.shape) / 1e7
    s = _minmax(s)
    pos = s[fix]
    return _roc_area(pos, s[~fix], np.unique(pos)[::-1])


def auc_borji(pred: MapLike, gt: MapLike, *, size=EVAL_SIZE, resample: str = "lanczos", n_splits: int = 100,
              step: float = 0.01, clip_top: bool = False, rng=None) -> float:
    """AUC-Borji (negatives sampled uniformly from the map, not shuffled; module docstring): mean over
    ``n_splits`` random splits, thresholds every ``step``; NaN without fixations. ``rng``: a Generator or seed
    for the sampling."""
    if n_splits < 1 or not 0 < step < 1:
        raise ValueError(f"need n_splits >= 1 and 0 < step < 1, got {n_splits}, {step}")
    s, g = _pair(pred, gt, size, resample)
    fix = fixation_mask(g)
    if not fix.any():
        return float("nan")
    if clip_top:
        s = s.copy()
        s[s > s.mean() + 2 * s.std()] = 1.0
    s = _minmax(s).ravel()
    pos = s[fix.ravel()]
    samples = s[_rng(rng).integers(0, s.size, size=(pos.size, n_splits))]
    areas = []
    for k in range(n_splits):
        neg = samples[:, k]
        thresholds = np.arange(0.0, max(pos.max(), neg.max()), step)[::-1]
        areas.append(_roc_area(pos, neg, thresholds))
    return float(np.mean(areas))


def cc(pred: MapLike, gt: MapLike, *, size=EVAL_SIZE, resample: str = "lanczos") -> float:
    """Pearson correlation coefficient of the two maps, in [-1, 1]; 0 for a constant ``pred``, NaN for a
    constant ``gt``."""
    s, g = _pair(pred, gt, size, resample)
    if np.ptp(g) == 0:
        return float("nan")
    if np.ptp(s) == 0:
        return 0.0
    s, g = s - s.mean(), g - g.mean()
    return float((s * g).sum() / np.sqrt((s * s).sum() * (g * g).sum()))


def nss(pred: MapLike, gt: MapLike, *, size=EVAL_SIZE, resample: str = "lanczos") -> float:
    """Normalised scanpath saliency: mean of ``(pred - mean) / std`` at the fixations of ``gt``; 0 for a
    constant ``pred``, NaN without fixations."""
    s, g = _pair(pred, gt, size, resample)
    fix = fixation_mask(g)
    if not fix.any():
        return float("nan")
    if np.ptp(s) == 0:
        return 0.0
    return float(((s - s.mean()) / s.std())[fix].mean())


def sim(pred: MapLike, gt: MapLike, *, size=EVAL_SIZE, resample: str = "lanczos") -> float:
    """Similarity (histogram intersection) of the min-max- then sum-normalised maps, in [0, 1]."""
    s, g = _pair(pred, gt, size, resample)
    return float(np.minimum(_distribution(_minmax(s)), _distribution(_minmax(g))).sum())


def kld(pred: MapLike, gt: MapLike, *, size=EVAL_SIZE, resample: str = "lanczos") -> float:
    """Kullback-Leibler divergence of the prediction from the GT distribution (lower is better, 0 when
    equal)."""
    s, g = _pair(pred, gt, size, resample)
    p = _distribution(np.clip(s, 0, None))
    q = _distribution(np.clip(g, 0, None))
    return float((q * np.log(_EPS + q / (p + _EPS))).sum())


def saliency_scores(pred: MapLike, gt: MapLike, *, size=EVAL_SIZE, resample: str = "lanczos",
                    n_splits: int = 100, step: float = 0.01, jitter: bool = True, clip_top: bool = False,
                    rng=None) -> dict[str, float]:
    """The six metrics of one frame, keyed by :data:`METRIC_NAMES`; both maps are resized once. ``rng`` (a
    Generator or seed) drives AUC-Judd's jitter and AUC-Borji's sampling."""
    s, g = _pair(pred, gt, size, resample)
    rng = _rng(rng)
    kw = dict(size=size, resample=resample)
    return {
        "auc_borji": auc_borji(s, g, n_splits=n_splits, step=step, clip_top=clip_top, rng=rng, **kw),
        "auc_judd": auc_judd(s, g, jitter=jitter, rng=rng, **kw),
        "cc": cc(s, g, **kw), "sim": sim(s, g, **kw), "nss": nss(s, g, **kw), "kld": kld(s, g, **kw),
    }


class SaliencyMetrics(Metric):
    """The six saliency metrics accumulated frame by frame, synchronised across processes.

    ``update(pred, gt, video, frames=None)``: ``pred`` and ``gt`` are ``(T, H, W)`` (or one ``(H, W)`` map) of
    any float dtype, on any device, of possibly different sizes; ``video`` an int (or ``(T,)`` ints) naming
    the video each frame belongs to; ``frames`` the frames' indices in their video (default ``0..T-1``), used
    with ``seed`` and ``video`` to seed each frame's random draws, so the result does not depend on the order,
    the batching or the number of processes.

    ``compute()`` returns ``{name: 0-d float64 tensor}`` for :data:`METRIC_NAMES` plus ``frames`` (frames
    scored) and ``undefined_frames`` (frames without fixations, left out of the averages). ``average="video"``
    (PAVER's ``train.py``): the mean over each video's frames, then the mean over videos; ``"frame"``: the
    mean over all frames. The state holds a row (video id, scores) per frame, concatenated across processes.
    """

    full_state_update = False
    higher_is_better = None
    is_differentiable = False

    def __init__(self, size: Sequence[int] = EVAL_SIZE, resample: str = "lanczos", n_splits: int = 100,
                 step: float = 0.01, jitter: bool = True, clip_top: bool = False, seed: int = 0,
                 average: str = "video", **kwargs) -> None:
        super().__init__(**kwargs)
        if average not in ("video", "frame"):
            raise ValueError(f"average must be 'video' or 'frame', got {average!r}")
        if resample not in _RESAMPLE:
            raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, got {resample!r}")
        self.options = dict(size=tuple(int(v) for v in size), resample=resample, n_splits=n_splits, step=step,
                            jitter=jitter, clip_top=clip_top)
        self.seed, self.average = int(seed), average
        # One flat float64 state, 7 numbers per frame (video id, then the scores): a process that saw no frame
        # contributes torchmetrics' empty 1-D tensor of the metric's dtype, which concatenates with it.
        self.add_state("rows", default=[], dist_reduce_fx="cat")
        self.set_dtype(torch.float64)

    def update(self, pred: Tensor, gt: Tensor, video: Union[int, Tensor],
               frames: Optional[Tensor] = None) -> None:
        pred, gt = torch.as_tensor(pred), torch.as_tensor(gt)
        if pred.dim() == 2 and gt.dim() == 2:  # one frame
            pred, gt = pred[None], gt[None]
        if pred.dim() != 3 or gt.dim() != 3 or pred.shape[0] != gt.shape[0]:
            raise ValueError(f"pred and gt must be (T, H, W) with the same T, got {tuple(pred.shape)} and "
                             f"{tuple(gt.shape)}")
        t = pred.shape[0]
        videos = torch.as_tensor(video, dtype=torch.int64).reshape(-1).cpu()
        videos = videos.expand(t) if videos.numel() == 1 else videos
        if frames is None:
            frames = torch.arange(t)
        frames = torch.as_tensor(frames, dtype=torch.int64).reshape(-1).cpu()
        if videos.numel() != t or frames.numel() != t:
            raise ValueError(f"video and frames need one entry per frame ({t}), got {videos.numel()} and "
                             f"{frames.numel()}")
        pred_np = pred.detach().to("cpu", torch.float64).numpy()
        gt_np = gt.detach().to("cpu", torch.float64).numpy()
        rows = []
        for i in range(t):
            rng = np.random.default_rng([self.seed, int(videos[i]) & 0x7FFFFFFF, int(frames[i]) & 0x7FFFFFFF])
            scores = saliency_scores(pred_np[i], gt_np[i], rng=rng, **self.options)
            rows.append([scores[name] for name in METRIC_NAMES])
        table = torch.cat([videos[:, None].double(), torch.tensor(rows, dtype=torch.float64)], 1)
        self.rows.append(table.reshape(-1).to(self.device))

    def compute(self) -> dict[str, Tensor]:
        flat = dim_zero_cat(self.rows) if len(self.rows) else torch.zeros(0, dtype=torch.float64)
        table = flat.reshape(-1, 1 + len(METRIC_NAMES)).cpu()
        videos, scores = table[:, 0].long(), table[:, 1:]
        if self.average == "video" and scores.shape[0]:
            ids = torch.unique(videos)
            per_video = torch.stack([scores[videos == v].nanmean(0) for v in ids])
            means = per_video.nanmean(0)
        else:
            means = scores.nanmean(0)
        out = {name: means[i] for i, name in enumerate(METRIC_NAMES)}
        out["frames"] = torch.tensor(scores.shape[0], dtype=torch.float64)
        out["undefined_frames"] = torch.isnan(scores).any(1).sum().to(torch.float64)
        return out
