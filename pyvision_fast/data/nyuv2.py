"""NYUv2 for joint semantic segmentation (40 classes) and surface normals in the NDDR-CNN release's layout.

Layout (``ethanygao/NDDR-CNN``, ``util/img_encoder_mt.py``, ``util/input_arguments.py``): a data root (the
official ``datasets/nyu_v2``) holding ``list/{training,testing}_seg.txt`` and
``list/{training,testing}_normal_mask.txt``. Each line of a list is ``<image> <target>`` separated by one
space, both paths relative to the root (the official reader concatenates root and path, so the lists' paths
start with ``/``; a leading ``/`` is accepted and dropped here). ``_seg`` lines name the label PNG,
``_normal_mask`` lines the normal PNG; both lists must name the same images in the same order. A third column
on a ``_normal_mask`` line, when present, names a separate mask PNG (non-zero = valid normal); the official
files have none.

Decoding:
* image: any format PIL reads, as RGB; normalised with ``mean``/``std`` (ImageNet's, for torchvision's VGG-16
  weights; the official Caffe-converted weights took BGR minus the Caffe means instead).
* label: single-channel PNG of class indices ``0 .. num_classes-1``, 255 = ignore. Any other value is an
  error.
* normal: RGB PNG, ``n = value / 255 * 2 - 1`` per channel (x, y, z). A pixel is valid where any channel
  differs from 255 (the official ``tf.not_equal(gt, 255)`` over channels: pure white marks missing normals)
  and, with a mask column, where the mask is non-zero.

Training augmentation (``train=True``), jointly on image and targets as the official reader: random scale in
``scale_range`` (0.5-1.5; image bilinear, targets nearest), random horizontal mirror, zero-padding (image
after normalisation, i.e. the mean colour; label 255; normal invalid) to at least ``crop_size`` and a random
``crop_size`` crop (321x321). Mirroring negates the normal's x component (``flip_normal_x=True``, the
geometric choice; the official code mirrors the normal map without negating, ``flip_normal_x=False``
reproduces that). Evaluation images are full size, unaugmented.

Items: ``(image (3, H, W) float32, label (H, W) int64, normal (3, H, W) float32, valid (H, W) bool)``. With
``check=True`` (default) the constructor opens every file of the lists, compares the image, label, normal and
mask sizes and decodes every label to check its values, so that a bad dataset fails before training with the
list file and line at fault.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from .transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["NYUv2", "NYU40_CLASSES", "read_list", "decode_normal", "IGNORE_INDEX", "LIST_FILES"]

IGNORE_INDEX = 255
LIST_FILES = {"train": ("list/training_seg.txt", "list/training_normal_mask.txt"),
              "test": ("list/testing_seg.txt", "list/testing_normal_mask.txt")}
# The 40 classes of Gupta et al.'s NYUv2 40-class mapping, label 0 = wall (void is 255).
NYU40_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
    "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat", "clothes",
    "ceiling", "books", "refrigerator", "television", "paper", "towel", "shower curtain", "box", "whiteboard",
    "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure", "otherfurniture",
    "otherprop")


def read_list(list_path: Union[str, Path], root: Union[str, Path], columns: Sequence[int] = (2,)) -> list:
    """Entries of one list file: tuples of absolute paths, one per line (blank lines skipped). A line must
    have one of ``columns`` space-separated fields; every path must exist. Errors name ``list_path:line``."""
    list_path, root = Path(list_path), Path(root)
    if not list_path.is_file():
        raise FileNotFoundError(f"NYUv2 list file {list_path} does not exist")
    entries = []
    with open(list_path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) not in columns:
                expected = " or ".join(map(str, columns))
                raise ValueError(f"{list_path}:{n}: expected {expected} space-separated "
                                 f"paths, got {len(fields)}: {line.strip()!r}")
            paths = tuple(root / p.lstrip("/") for p in fields)
            for p in paths:
                if not p.is_file():
                    raise FileNotFoundError(f"{list_path}:{n}: {p} does not exist")
            entries.append((n, paths))
    if not entries:
        raise ValueError(f"{list_path}: the list is empty")
    return entries


def decode_normal(rgb: np.ndarray, mask: Optional[np.ndarray] = None) -> tuple[Tensor, Tensor]:
    """Normal PNG pixels (H, W, 3) uint8 -> (normal (3, H, W) float32 = value / 255 * 2 - 1, valid (H, W)
    bool: some channel != 255, and ``mask`` != 0 when given)."""
    valid = (rgb != IGNORE_INDEX).any(axis=-1)
    if mask is not None:
        valid &= mask != 0
    normal = torch.from_numpy(rgb.astype(np.float32) / 255.0 * 2.0 - 1.0).permute(2, 0, 1).contiguous()
    return normal, torch.from_numpy(valid)


class NYUv2(Dataset):
    """NYUv2 segmentation + surface normals from the official list files (module docstring).

    ``root``: the data root holding ``list/``; ``split``: ``"train"`` or ``"test"`` (which lists); ``train``:
    augment (defaults to ``split == "train"``)."""

    def __init__(self, root: Union[str, Path], split: str = "train", train: Optional[bool] = None,
                 crop_size: int = 321, scale_range: tuple[float, float] = (0.5, 1.5), mirror: bool = True,
                 flip_normal_x: bool = True, num_classes: int = 40, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, check: bool = True):
        if split not in LIST_FILES:
            raise ValueError(f"NYUv2 split must be one of {sorted(LIST_FILES)}, got {split!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"NYUv2 root {self.root} does not exist")
        self.split, self.train = split, (split == "train") if train is None else train
        self.crop_size, self.scale_range, self.mirror = int(crop_size), tuple(scale_range), mirror
        self.flip_normal_x, self.num_classes = flip_normal_x, num_classes
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.classes = NYU40_CLASSES if num_classes == 40 else tuple(f"class_{i}" for i in range(num_classes))
        seg_list, normal_list = (self.root / p for p in LIST_FILES[split])
        seg = read_list(seg_list, self.root, (2,))
        normal = read_list(normal_list, self.root, (2, 3))
        if len(seg) != len(normal):
            raise ValueError(f"{seg_list} lists {len(seg)} images, {normal_list} lists {len(normal)}; "
                             "the two lists must name the same images in the same order")
        self.samples = []
        for (n1, (img, label)), (n2, (img2, *normal_paths)) in zip(seg, normal):
            if img != img2:
                raise ValueError(f"{normal_list}:{n2}: image {img2} differs from {seg_list}:{n1}'s {img}; "
                                 "the two lists must name the same images in the same order")
            mask = normal_paths[1] if len(normal_paths) == 2 else None
            self.samples.append(dict(image=img, label=label, normal=normal_paths[0], mask=mask,
                                     where=f"{seg_list}:{n1} / {normal_list}:{n2}"))
        if check:
            for s in self.samples:
                self._check(s)

    def __len__(self) -> int:
        return len(self.samples)

    def _check(self, s: dict) -> None:
        sizes = {}
        for key in ("image", "label", "normal", "mask"):
            if s[key] is not None:
                try:
                    with Image.open(s[key]) as im:
                        sizes[key] = im.size
                except OSError as exc:
                    raise ValueError(f"{s['where']}: cannot read {s[key]}: {exc}") from None
        if len(set(sizes.values())) != 1:
            raise ValueError(f"{s['where']}: size mismatch (width x height): " +
                             ", ".join(f"{k} {w}x{h}" for k, (w, h) in sizes.items()))
        self._read_label(s)

    def _read_label(self, s: dict) -> np.ndarray:
        with Image.open(s["label"]) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise ValueError(f"{s['where']}: label {s['label']} must be a single-channel PNG, "
                                 f"got mode {im.mode}")
            label = np.asarray(im).astype(np.int64)
        bad = np.unique(label[(label != IGNORE_INDEX) & ((label < 0) | (label >= self.num_classes))])
        if bad.size:
            raise ValueError(f"{s['where']}: label {s['label']} has values {bad[:8].tolist()} outside "
                             f"[0, {self.num_classes}) that are not the ignore label {IGNORE_INDEX}")
        return label

    def load(self, index: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The unaugmented item ``index``: (image (3, H, W) in [0, 1], label, normal, valid)."""
        s = self.samples[index]
        with Image.open(s["image"]) as im:
            image = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
        label = torch.from_numpy(self._read_label(s))
        with Image.open(s["normal"]) as im:
            rgb = np.asarray(im.convert("RGB"))
        mask = None
        if s["mask"] is not None:
            with Image.open(s["mask"]) as im:
                mask = np.asarray(im.convert("L"))
        normal, valid = decode_normal(rgb, mask)
        if not (image.shape[1:] == label.shape == valid.shape):
            raise ValueError(f"{s['where']}: size mismatch: image {tuple(image.shape[1:])}, label "
                             f"{tuple(label.shape)}, normal {tuple(valid.shape)}")
        return image.contiguous(), label, normal, valid

    def __getitem__(self, index: int):
        image, label, normal, valid = self.load(index)
        if self.train:
            image, label, normal, valid = self._augment(image, label, normal, valid)
        return (image - self.mean) / self.std, label, normal, valid

    def _augment(self, image, label, normal, valid):
        h, w = image.shape[1:]
        scale = random.uniform(*self.scale_range)
        nh, nw = max(1, int(h * scale)), max(1, int(w * scale))
        image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
        targets = torch.cat([label[None].float(), normal, valid[None].float()])
        targets = F.interpolate(targets[None], size=(nh, nw), mode="nearest")[0]
        if self.mirror and random.random() < 0.5:
            image, targets = image.flip(-1), targets.flip(-1)
            if self.flip_normal_x:
                targets[1] = -targets[1]
        c = self.crop_size
        ph, pw = max(c - nh, 0), max(c - nw, 0)
        if ph or pw:  # the image is padded with its mean colour (0 after normalisation), targets as ignored
            image = F.pad(image - self.mean, (0, pw, 0, ph)) + self.mean
            fill = torch.tensor([IGNORE_INDEX, 0, 0, 0, 0], dtype=torch.float32).view(5, 1, 1)
            targets = F.pad(targets - fill, (0, pw, 0, ph)) + fill
        y0 = random.randint(0, image.shape[1] - c)
        x0 = random.randint(0, image.shape[2] - c)
        image = image[:, y0:y0 + c, x0:x0 + c].contiguous()
        targets = targets[:, y0:y0 + c, x0:x0 + c]
        return image, targets[0].long(), targets[1:4].contiguous(), targets[4] > 0.5
