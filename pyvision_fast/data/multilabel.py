"""Multi-label image sets in their official formats (Order-Free RNN, shared/papers.md section 11).

**MS-COCO 2014** (``CocoMultiLabel``): an instances file (``annotations/instances_{train,val}2014.json``) and
its image folder (``train2014/``, ``val2014/``). The JSON must hold ``images`` (``id``, ``file_name``),
``annotations`` (``image_id``, ``category_id``) and ``categories`` (``id``, ``name``). The 80 category ids run
1..90 with gaps; class index = position of the category in ascending id order. An image's target is the
multi-hot of the categories of all its annotations (crowd ones included). Images without annotations are
dropped (``drop_empty=True``, the paper's 82,081 / 40,137 images of train2014's 82,783 / val2014's 40,504).

**NUS-WIDE** (``NusWide``): the release's layout under one root:

* ``Concepts81.txt`` (or ``ConceptsList/Concepts81.txt``): the 81 concept names, one a line, in label order;
* ``ImageList/TrainImagelist.txt`` / ``ImageList/TestImagelist.txt``: one image a line, a Windows path
  relative to the image folder (``actor\\0001_2124494179.jpg``; backslashes are read as folder separators);
* ``Groundtruth/TrainTestLabels/Labels_<concept>_{Train,Test}.txt``: one ``0`` or ``1`` a line, the same lines
  as the image list;
* images under ``Flickr/`` (``image_dir`` names another folder).

Images without any of the 81 concepts are dropped (``drop_empty=True``; the usual ~150K / ~100K split).

Both read every annotation file when built and fail with a ``ValueError`` naming the file (and line or item)
that is wrong: a missing key, an annotation of an unknown image or category, a label that is not 0/1, lists of
different lengths; with ``check_files=True`` (default) a listed image that is not on disk is an error naming
it. Items are ``(image, target)``: the image as PIL RGB passed through ``transform`` (the model's own
transforms; without one, a float32 (3, H, W) tensor in [0, 1]), target (C,) float32 multi-hot. ``classes``
(names), ``samples`` (image paths) and ``labels`` ((N, C) bool) describe the set.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

__all__ = ["CocoMultiLabel", "NusWide", "MultiLabelImages", "read_coco_instances", "read_nuswide"]

PathLike = Union[str, os.PathLike]


class MultiLabelImages(Dataset):
    """Images with multi-hot targets: ``samples`` (paths), ``labels`` (N, C) bool, ``classes`` (names)."""

    def __init__(self, samples: list[str], labels: np.ndarray, classes: list[str],
                 transform: Optional[Callable] = None, check_files: bool = True):
        self.samples, self.classes, self.transform = list(samples), list(classes), transform
        self.labels = torch.as_tensor(np.asarray(labels, dtype=bool))
        if self.labels.shape != (len(self.samples), len(self.classes)):
            raise ValueError(f"labels must be (N, C) = {(len(self.samples), len(self.classes))}, "
                             f"got {tuple(self.labels.shape)}")
        if check_files:
            missing = [p for p in self.samples if not os.path.isfile(p)]
            if missing:
                raise ValueError(f"image file {missing[0]!r} does not exist ({len(missing)} of "
                                 f"{len(self.samples)} listed images are missing)")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path = self.samples[index]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read image {path!r}: {exc}") from exc
        if self.transform is not None:
            img = self.transform(img)
        else:
            img = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
        return img, self.labels[index].float()


def read_coco_instances(annotation_file: PathLike) -> tuple[list[dict], list[int], list[str], np.ndarray]:
    """Parses a COCO instances JSON: (images in file order, category ids ascending, category names, labels
    (n_images, n_categories) bool)."""
    path = Path(annotation_file)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file {str(path)!r} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"{path}: no {key!r} list (a COCO instances file has images, annotations and "
                             f"categories; image_info files without annotations cannot give labels)")
        if not isinstance(data[key], list):
            raise ValueError(f"{path}: {key!r} must be a list, got {type(data[key]).__name__}")
    cats = data["categories"]
    if not cats:
        raise ValueError(f"{path}: 'categories' is empty")
    for i, c in enumerate(cats):
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise ValueError(f"{path}: categories[{i}] needs 'id' and 'name', got {c!r}")
    cats = sorted(cats, key=lambda c: int(c["id"]))
    cat_ids = [int(c["id"]) for c in cats]
    if len(set(cat_ids)) != len(cat_ids):
        raise ValueError(f"{path}: duplicate category ids in 'categories'")
    cat_index = {cid: k for k, cid in enumerate(cat_ids)}
    images = data["images"]
    image_index: dict[int, int] = {}
    for i, im in enumerate(images):
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            raise ValueError(f"{path}: images[{i}] needs 'id' and 'file_name', got {im!r}")
        if int(im["id"]) in image_index:
            raise ValueError(f"{path}: images[{i}] repeats image id {im['id']}")
        image_index[int(im["id"])] = i
    labels = np.zeros((len(images), len(cat_ids)), dtype=bool)
    for j, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or "category_id" not in ann:
            raise ValueError(f"{path}: annotations[{j}] needs 'image_id' and 'category_id', got {ann!r}")
        name = f"annotations[{j}] (id {ann.get('id', '?')})"
        k = cat_index.get(int(ann["category_id"]))
        if k is None:
            raise ValueError(f"{path}: {name} has category_id {ann['category_id']}, which is not in "
                             f"'categories' (ids {cat_ids[0]}..{cat_ids[-1]}, {len(cat_ids)} of them)")
        i = image_index.get(int(ann["image_id"]))
        if i is None:
            raise ValueError(f"{path}: {name} refers to image_id {ann['image_id']}, which is not in 'images'")
        labels[i, k] = True
    return images, cat_ids, [str(c["name"]) for c in cats], labels


class CocoMultiLabel(MultiLabelImages):
    """MS-COCO as multi-label classification: ``annotation_file`` (instances JSON), ``image_dir`` (its
    images). ``category_ids``: the COCO id of each class index."""

    def __init__(self, annotation_file: PathLike, image_dir: PathLike, transform: Optional[Callable] = None,
                 drop_empty: bool = True, check_files: bool = True):
        images, self.category_ids, names, labels = read_coco_instances(annotation_file)
        root = Path(image_dir)
        if not root.is_dir():
            raise FileNotFoundError(f"COCO image folder {str(root)!r} does not exist")
        keep = labels.any(axis=1) if drop_empty else np.ones(len(images), dtype=bool)
        self.image_ids = [int(im["id"]) for im, k in zip(images, keep) if k]
        samples = [str(root / im["file_name"]) for im, k in zip(images, keep) if k]
        super().__init__(samples, labels[keep], names, transform, check_files)


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"NUS-WIDE file {str(path)!r} does not exist")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_nuswide(root: PathLike, split: str) -> tuple[list[str], list[str], np.ndarray]:
    """(relative image paths with '/' separators, concept names, labels (N, 81) bool) of ``split`` ('train'
    or 'test') of the NUS-WIDE release under ``root``."""
    root = Path(root)
    if split not in ("train", "test"):
        raise ValueError(f"NUS-WIDE split must be 'train' or 'test', got {split!r}")
    concepts_file = root / "Concepts81.txt"
    if not concepts_file.is_file() and (root / "ConceptsList" / "Concepts81.txt").is_file():
        concepts_file = root / "ConceptsList" / "Concepts81.txt"
    concepts = _read_lines(concepts_file)
    if len(set(concepts)) != len(concepts):
        raise ValueError(f"{concepts_file}: repeated concept names")
    Split = split.capitalize()
    list_file = root / "ImageList" / f"{Split}Imagelist.txt"
    images = [line.replace("\\", "/") for line in _read_lines(list_file)]
    labels = np.zeros((len(images), len(concepts)), dtype=bool)
    for k, concept in enumerate(concepts):
        f = root / "Groundtruth" / "TrainTestLabels" / f"Labels_{concept}_{Split}.txt"
        values = _read_lines(f)
        if len(values) != len(images):
            raise ValueError(f"{f}: {len(values)} labels for the {len(images)} images of {list_file}")
        for n, value in enumerate(values):
            if value not in ("0", "1"):
                raise ValueError(f"{f}:{n + 1}: label {value!r} is not 0 or 1")
        labels[:, k] = np.array(values) == "1"
    return images, concepts, labels


class NusWide(MultiLabelImages):
    """NUS-WIDE's 81-concept multi-label split ``split`` ('train' | 'test') under ``root``; images under
    ``image_dir`` (default ``root/Flickr``)."""

    def __init__(self, root: PathLike, split: str = "train", transform: Optional[Callable] = None,
                 image_dir: Optional[PathLike] = None, drop_empty: bool = True, check_files: bool = True):
        root = Path(root)
        images, concepts, labels = read_nuswide(root, split)
        folder = Path(image_dir) if image_dir is not None else root / "Flickr"
        if not folder.is_dir():
            raise FileNotFoundError(f"NUS-WIDE image folder {str(folder)!r} does not exist")
        keep = labels.any(axis=1) if drop_empty else np.ones(len(images), dtype=bool)
        samples = [str(folder / p) for p, k in zip(images, keep) if k]
        super().__init__(samples, labels[keep], concepts, transform, check_files)
