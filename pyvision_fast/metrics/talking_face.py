"""Metrics of emotional talking-face editing (paper 4, Sun et al., TAFFC 2023): lip-sync kept, emotion
reached, intensity controlled.

* :func:`mouth_lmd`: mouth landmark distance (LMD), the mean Euclidean distance of the 20 mouth landmarks
  (iBUG 48-67) between edited and original frames, in pixels. Lower keeps the lip-sync better.
* :func:`emotion_probabilities` / :func:`emotion_accuracy`: a facial-expression classifier (any ``nn.Module``
  mapping (B, 3, S, S) normalised images to (B, K) logits; the library's fine-tuned ViT from the
  ``fer_finetune`` recipe in practice) scores rendered edited frames; the accuracy is the fraction whose
  arg-max class is the target emotion. :func:`fer_class_indices` maps the MEAD emotions onto the classifier's
  class names (AffectNet's / FERPlus's / RAF-DB's spellings).
* :func:`intensity_monotonicity`: for series of the target emotion's probability at increasing intensity
  controls, the fraction of consecutive steps where it increases, and Spearman's rho (``scipy.stats``) between
  intensity and probability, each averaged over series.
* :func:`save_intensity_grid`: a PNG grid, rows = intensities (0 at the top), columns = frames.
* :class:`TalkingFaceEditMetrics`: a torchmetrics accumulator of per-sample values (means synchronised across
  processes), used by the ``talking_face_edit`` recipe.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric

from ..models.expression_editor import MEAD_EMOTIONS

__all__ = ["MOUTH_LANDMARKS", "FER_SYNONYMS", "mouth_lmd", "fer_class_indices", "emotion_probabilities",
           "emotion_accuracy", "intensity_monotonicity", "save_intensity_grid", "TalkingFaceEditMetrics"]

MOUTH_LANDMARKS = slice(48, 68)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# MEAD emotion -> the spellings FER datasets use for it (lower case)
FER_SYNONYMS = {
    "angry": ("angry", "anger"), "contempt": ("contempt",), "disgusted": ("disgusted", "disgust"),
    "fear": ("fear", "fearful", "afraid"), "happy": ("happy", "happiness", "joy"),
    "neutral": ("neutral",), "sad": ("sad", "sadness"), "surprised": ("surprised", "surprise"),
}


def mouth_lmd(edited: Tensor, original: Tensor, reduction: str = "mean") -> Tensor:
    """Mouth landmark distance between (..., 68, 2) landmark sets (pixels): the Euclidean distance of each of
    landmarks 48-67, averaged over them (``reduction="none"``: one value per leading index, shape (...)) and
    over everything (``"mean"``: a scalar). float64 accumulation; returns the inputs' dtype."""
    for name, t in (("edited", edited), ("original", original)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise TypeError(f"mouth_lmd: argument '{name}' must be a floating tensor, got "
                            f"{getattr(t, 'dtype', type(t).__name__)}")
        if t.dim() < 2 or tuple(t.shape[-2:]) != (68, 2):
            raise ValueError(f"mouth_lmd: argument '{name}' must have shape (..., 68, 2), got "
                             f"{tuple(t.shape)}")
    if edited.shape != original.shape:
        raise ValueError(f"mouth_lmd: 'edited' {tuple(edited.shape)} and 'original' {tuple(original.shape)} "
                         f"differ in shape")
    d = (edited[..., MOUTH_LANDMARKS, :].double() - original[..., MOUTH_LANDMARKS, :].double()).norm(dim=-1)
    if reduction == "none":
        return d.mean(-1).to(edited.dtype)
    if reduction == "mean":
        return d.mean().to(edited.dtype)
    raise ValueError(f"mouth_lmd: argument 'reduction' must be 'mean' or 'none', got {reduction!r}")


def fer_class_indices(classes: Sequence[str], emotions: Sequence[str] = MEAD_EMOTIONS) -> list[int]:
    """For each MEAD emotion, the index of its class among the classifier's ``classes`` (names matched case-
    insensitively through :data:`FER_SYNONYMS`), -1 where the classifier has no such class (e.g. contempt for
    a 7-class RAF-DB model)."""
    names = [str(c).strip().lower() for c in classes]
    out = []
    for e in emotions:
        hits = [names.index(s) for s in FER_SYNONYMS.get(e, (e,)) if s in names]
        out.append(hits[0] if hits else -1)
    return out


def emotion_probabilities(classifier: nn.Module, images: Tensor, size: int = 224,
                          mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                          chunk: int = 64) -> Tensor:
    """Softmax probabilities (B, K) float32 of ``classifier`` on ``images`` (B, 3, H, W) floating in [0, 1]:
    resized to ``size`` x ``size`` (bilinear, antialiased), normalised with ``mean``/``std``, run ``chunk``
    images at a time without gradients, on the classifier's device."""
    if not isinstance(classifier, nn.Module):
        raise TypeError(f"emotion_probabilities: argument 'classifier' must be an nn.Module, got "
                        f"{type(classifier).__name__}")
    if not isinstance(images, Tensor) or not images.is_floating_point():
        raise TypeError(f"emotion_probabilities: argument 'images' must be a floating tensor in [0, 1], got "
                        f"{getattr(images, 'dtype', type(images).__name__)}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"emotion_probabilities: argument 'images' must have shape (B, 3, H, W), got "
                         f"{tuple(images.shape)}")
    param = next(iter(classifier.parameters()), None)
    device = param.device if param is not None else images.device
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    m = torch.tensor(mean, dtype=dtype, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=dtype, device=device).view(1, 3, 1, 1)
    out = []
    with torch.no_grad():
        for i in range(0, images.shape[0], chunk):
            x = images[i:i + chunk].to(device, dtype)
            if tuple(x.shape[-2:]) != (size, size):
                x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            logits = classifier((x - m) / s)
            if not isinstance(logits, Tensor) or logits.dim() != 2:
                raise ValueError(f"emotion_probabilities: the classifier must return (B, K) logits, got "
                                 f"{getattr(logits, 'shape', type(logits).__name__)}")
            out.append(logits.float().softmax(-1))
    return torch.cat(out) if out else torch.empty(0, 0)


def emotion_accuracy(scores: Tensor, target: Union[Tensor, int]) -> float:
    """Fraction of rows of ``scores`` (N, K) (probabilities or logits) whose arg-max is ``target`` (an int, or
    (N,) ints, in the classifier's class indices)."""
    if not isinstance(scores, Tensor) or scores.dim() != 2 or scores.shape[0] == 0:
        raise ValueError(f"emotion_accuracy: argument 'scores' must be a non-empty (N, K) tensor, got "
                         f"{getattr(scores, 'shape', type(scores).__name__)}")
    target = torch.as_tensor(target, device=scores.device).expand(scores.shape[0])
    return float((scores.argmax(-1) == target).double().mean())


def intensity_monotonicity(values, intensities: Optional[Sequence[float]] = None) -> dict[str, float]:
    """How well a classifier's target-emotion probability follows the intensity control.

    Args:
        values: (N,) one series or (S, N) series: the probability at N increasing intensities.
        intensities: the N controls (default 0..1 evenly), for Spearman's rho.

    Returns:
        ``monotonic_fraction``: fraction of the S (N - 1) consecutive steps where the value increases
        strictly; ``spearman_rho``: Spearman's rank correlation of intensity and value
        (``scipy.stats.spearmanr``), averaged over the series where it is defined (NaN when none is: every
        series constant); ``series``: S.
    """
    from scipy.stats import spearmanr

    v = np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values, dtype=np.float64)
    if v.ndim == 1:
        v = v[None]
    if v.ndim != 2 or v.shape[1] < 2 or v.shape[0] < 1:
        raise ValueError(f"intensity_monotonicity: argument 'values' must be (N,) or (S, N) with N >= 2, got "
                         f"shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError("intensity_monotonicity: argument 'values' holds non-finite numbers")
    if intensities is None:
        x = np.linspace(0.0, 1.0, v.shape[1])
    else:
        x = np.asarray(intensities, dtype=np.float64)
    if x.shape != (v.shape[1],):
        raise ValueError(f"intensity_monotonicity: {x.size} intensities for series of {v.shape[1]} values")
    if (np.diff(x) <= 0).any():
        raise ValueError("intensity_monotonicity: intensities must increase strictly")
    rhos = [spearmanr(x, row).statistic for row in v if np.ptp(row) > 0]
    return {"monotonic_fraction": float((np.diff(v, axis=1) > 0).mean()),
            "spearman_rho": float(np.mean(rhos)) if rhos else float("nan"), "series": int(v.shape[0])}


def _to_uint8(images) -> np.ndarray:
    a = images.detach().cpu() if isinstance(images, Tensor) else torch.as_tensor(np.asarray(images))
    if a.dim() != 5 or a.shape[2] != 3:
        raise ValueError(f"save_intensity_grid: argument 'images' must have shape (R, C, 3, H, W), got "
                         f"{tuple(a.shape)}")
    if a.is_floating_point():
        a = (a.clamp(0, 1) * 255).round().to(torch.uint8)
    elif a.dtype != torch.uint8:
        raise TypeError(f"save_intensity_grid: images must be floating in [0, 1] or uint8, got {a.dtype}")
    return a.permute(0, 1, 3, 4, 2).numpy()


def save_intensity_grid(images, path: Union[str, os.PathLike], intensities: Optional[Sequence[float]] = None,
                        title: Optional[str] = None, pad: int = 2, label_width: int = 44) -> Path:
    """Writes a PNG grid of ``images`` (R, C, 3, H, W) (floating in [0, 1] or uint8): row r = intensity
    ``intensities[r]`` (labelled on the left; default 0..1 evenly), column c = frame c; ``title`` on top.
    Returns the path."""
    from PIL import Image, ImageDraw

    a = _to_uint8(images)
    R, C, H, W, _ = a.shape
    if R == 0 or C == 0:
        raise ValueError("save_intensity_grid: no image to draw")
    values = list(np.linspace(0.0, 1.0, R)) if intensities is None else [float(i) for i in intensities]
    if len(values) != R:
        raise ValueError(f"save_intensity_grid: {len(values)} intensities for {R} rows")
    top = 14 if title else 0
    canvas = Image.new("RGB", (label_width + C * (W + pad) + pad, top + R * (H + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((2, 1), title, fill="black")
    for r in range(R):
        y = top + pad + r * (H + pad)
        draw.text((2, y + H // 2 - 5), f"{values[r]:.2f}", fill="black")
        for c in range(C):
            canvas.paste(Image.fromarray(a[r, c]), (label_width + pad + c * (W + pad), y))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG")
    return path


class TalkingFaceEditMetrics(Metric):
    """Means of per-sample values accumulated over batches: ``update(l1=..., lmd=..., ...)`` with tensors of
    per-sample values (or floats) under the names of ``keys``; ``compute()`` returns ``{name: mean}`` for the
    names that received values (sums and counts are summed across processes)."""

    full_state_update = False

    def __init__(self, keys: Sequence[str] = ("l1", "mouth", "lmd", "emotion_accuracy", "monotonic_fraction",
                                              "spearman_rho"), **kwargs) -> None:
        super().__init__(**kwargs)
        self.keys = tuple(keys)
        for state in ("sums", "counts"):
            self.add_state(state, default=torch.zeros(len(self.keys), dtype=torch.float64),
                           dist_reduce_fx="sum")

    def update(self, **values) -> None:
        for name, v in values.items():
            if name not in self.keys:
                raise ValueError(f"TalkingFaceEditMetrics: unknown value {name!r}; keys are {self.keys}")
            t = torch.as_tensor(v, dtype=torch.float64).reshape(-1).to(self.sums.device)
            t = t[torch.isfinite(t)]  # an undefined value (a constant series' rho) is left out of the mean
            i = self.keys.index(name)
            self.sums[i] += t.sum()
            self.counts[i] += t.numel()

    def compute(self) -> dict[str, float]:
        return {k: float(self.sums[i] / self.counts[i]) for i, k in enumerate(self.keys)
                if self.counts[i] > 0}
