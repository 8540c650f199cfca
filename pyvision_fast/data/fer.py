"""Facial-expression-recognition datasets in their real, official formats: RAF-DB (basic), AffectNet and FERPlus.

Every reader parses the dataset's own annotation file (no converted list files), checks it completely when it is
constructed — before any training starts — and fails with the file and line that is wrong:

* a missing annotation file or image folder: ``FileNotFoundError`` naming the path it looked for;
* a malformed line, a bad header or a label outside the dataset's range: ``FERFormatError`` (a ``ValueError``)
  whose message starts with ``<file>:<line>:``;
* a listed image that does not exist: ``FileNotFoundError`` naming the image and the ``<file>:<line>`` that lists it;
* images that exist but do not decode (unreadable or truncated): ``ValueError`` naming them (the first ten), their
  lines and what PIL said. Every image is decoded once when the dataset is built (a thread pool), so this happens
  before training, not at the batch that meets the file — the choice of the library's ImageFolder
  (``data/image_folder.py``). ``bad_images="skip"`` leaves missing and undecodable images out instead, with a
  ``UserWarning``; they are listed in ``dataset.skipped``. ``check_images=False`` decodes nothing up front (only
  existence is checked); a bad file then raises ``OSError`` with its path when loaded. PIL's
  ``LOAD_TRUNCATED_IMAGES`` is never switched on.

Items are ``(image, target)``: ``image`` is an RGB ``PIL.Image`` (grey FERPlus faces are converted to 3 channels),
or whatever ``transform`` returns (a float tensor (3, H, W) with the transforms of :mod:`.transforms`); ``target``
is an ``int`` class index in ``[0, len(classes))`` (or ``target_transform(target)``). Each dataset has ``classes``
(the names, index = label), ``samples`` (``[(path, target)]``) and ``targets`` (``[int]``), as torchvision's
ImageFolder has, so the class-balanced weights of :mod:`.samplers` apply to all of them.

Label orders (shared/papers.md section 1, from ``MSA-LMC/MAE-SFER:data/dataset.py``):

* RAF-DB: the file's labels 1..7 = Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral, stored minus one.
* AffectNet: 0 Neutral, 1 Happiness, 2 Sadness, 3 Surprise, 4 Fear, 5 Disgust, 6 Anger, 7 Contempt (8 None,
  9 Uncertain, 10 No-Face are dropped; 7 Contempt too for the 7-class task).
* FERPlus: 0 neutral, 1 happiness, 2 surprise, 3 sadness, 4 anger, 5 disgust, 6 fear, 7 contempt (the column order
  of ``fer2013new.csv``).
"""
from __future__ import annotations

import csv
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from PIL import Image
from torch.utils.data import Dataset

from .image_folder import image_decode_problem

__all__ = [
    "FERFormatError", "FERDataset", "RAFDB", "AffectNet", "FERPlus", "build_fer_dataset", "FER_DATASETS",
    "RAFDB_CLASSES", "AFFECTNET_CLASSES", "FERPLUS_CLASSES", "ferplus_label", "load_rgb",
]

PathLike = Union[str, os.PathLike]

RAFDB_CLASSES = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]
AFFECTNET_CLASSES = ["Neutral", "Happiness", "Sadness", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]
FERPLUS_CLASSES = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]


class FERFormatError(ValueError):
    """An annotation file that does not follow its dataset's format; the message starts with ``<file>:<line>:``."""


def _err(path: PathLike, line: int, msg: str) -> FERFormatError:
    return FERFormatError(f"{path}:{line}: {msg}")


def load_rgb(path: PathLike) -> Image.Image:
    """Decodes an image file completely and returns it as RGB. An unreadable or truncated file raises ``OSError``
    naming ``path`` (the pixels are decoded here, not lazily, so a truncated JPEG cannot pass unnoticed)."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"image {str(path)!r} does not exist") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise OSError(f"image {str(path)!r} is unreadable or truncated ({type(exc).__name__}: {exc})") from exc


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    return path


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    return path


class FERDataset(Dataset):
    """A list of ``(image path, class index)`` with class names; the base of the readers below.

    Args:
        samples: ``[(path, target)]``, targets in ``[0, len(classes))``.
        classes: class names, index = label.
        transform: applied to the RGB ``PIL.Image``.
        target_transform: applied to the ``int`` target.
        loader: ``path -> image``; :func:`load_rgb` by default.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], classes: Sequence[str],
                 transform: Optional[Callable] = None, target_transform: Optional[Callable] = None,
                 loader: Callable[[str], Any] = load_rgb):
        self.samples = list(samples)
        self.classes = list(classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.targets = [t for _, t in self.samples]
        self.transform, self.target_transform, self.loader = transform, target_transform, loader

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, index: int):
        """The untransformed image of sample ``index`` (``loader(path)``)."""
        return self.loader(self.samples[index][0])

    def __getitem__(self, index: int):
        image, target = self.load_image(index), self.samples[index][1]
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target

    def class_counts(self) -> list[int]:
        """Number of samples of each class, ``len(classes)`` ints (zeros included)."""
        counts = Counter(self.targets)
        return [counts.get(i, 0) for i in range(len(self.classes))]

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(samples={len(self)}, classes={len(self.classes)}"
                f"{', ' + self.extra_repr() if self.extra_repr() else ''})")


def _validate_images(owner: str, samples: list[tuple[str, int]], sources: list[str], check_images: bool,
                     bad_images: str, workers: int) -> tuple[list[int], list[tuple[str, str]]]:
    """Checks the listed images before training, as the library's ImageFolder does: every file must exist and,
    with ``check_images``, decode completely (thread pool of ``workers``). ``bad_images="error"`` raises
    (``FileNotFoundError`` for a missing file, ``ValueError`` for files that do not decode; both name the files
    and the annotation lines that list them); ``"skip"`` leaves them out with a ``UserWarning``.
    Returns (indices of the kept samples, [(path, reason)] of the skipped ones)."""
    if bad_images not in ("error", "skip"):
        raise ValueError(f"{owner}: bad_images must be 'error' or 'skip', got {bad_images!r}")
    paths = [p for p, _ in samples]
    if check_images:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            problems = list(pool.map(image_decode_problem, paths))
    else:
        problems = [None if os.path.isfile(p) else "missing" for p in paths]
    bad = [i for i, why in enumerate(problems) if why is not None]
    if bad and bad_images == "error":
        missing = [i for i in bad if problems[i] == "missing"]
        if missing:
            i = missing[0]
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise FileNotFoundError(f"{owner}: image {paths[i]!r} listed at {sources[i]} does not exist{more}")
        listing = "; ".join(f"{paths[i]} listed at {sources[i]} ({problems[i]})" for i in bad[:10])
        raise ValueError(f"{owner}: {len(bad)} image(s) cannot be decoded: {listing}"
                         f"{' ...' if len(bad) > 10 else ''} (bad_images='skip' leaves them out)")
    if bad:
        listing = "; ".join(f"{paths[i]} ({problems[i]})" for i in bad[:10])
        warnings.warn(f"{owner}: skipped {len(bad)} missing or undecodable image(s): {listing}"
                      f"{' ...' if len(bad) > 10 else ''}", stacklevel=3)
    bad_set = set(bad)
    return [i for i in range(len(samples)) if i not in bad_set], [(paths[i], problems[i]) for i in bad]


def _check_nonempty(samples: list, what: str) -> None:
    if not samples:
        raise FERFormatError(f"{what}: no samples")


# --------------------------------------------------------------------------------------------------------------
# RAF-DB basic
# --------------------------------------------------------------------------------------------------------------
class RAFDB(FERDataset):
    """RAF-DB basic emotions (7 classes, :data:`RAFDB_CLASSES`), read from the official layout::

        root/EmoLabel/list_patition_label.txt     lines "train_00001.jpg 5", "test_0001.jpg 3" (labels 1..7)
        root/Image/aligned/train_00001_aligned.jpg (the 100x100 aligned faces)

    ``root`` is the ``basic`` folder (a folder that contains ``basic/`` is accepted too). The split is given by the
    ``train_``/``test_`` prefix of each name; labels are stored minus one. Blank lines are ignored; a line with
    other than two fields, a name without the prefix or the ``.jpg`` suffix, a repeated name, or a label outside
    1..7 is an error naming the line.

    Args:
        root: the dataset folder.
        split: ``"train"`` (12,271 images in the full set) or ``"test"`` (3,068); ``"val"`` means ``"test"``
            (RAF-DB has no separate validation split; papers report the test split).
        image_dir: the image folder relative to ``root`` (``Image/aligned``; ``Image/original`` uses names without
            the ``_aligned`` suffix).
        check_images, bad_images, workers: every listed image must exist; with ``check_images`` (default) each
            is also decoded once at construction (``workers`` threads). ``bad_images``: ``"error"`` (default)
            or ``"skip"`` (left out with a warning, listed in ``skipped``), as the library's ImageFolder.
    """

    LABEL_FILE = "EmoLabel/list_patition_label.txt"
    classes_all = RAFDB_CLASSES

    def __init__(self, root: PathLike, split: str = "train", transform: Optional[Callable] = None,
                 target_transform: Optional[Callable] = None, image_dir: str = "Image/aligned",
                 check_images: bool = True, bad_images: str = "error", workers: int = 8,
                 loader: Callable = load_rgb):
        root = Path(root)
        if not (root / self.LABEL_FILE).exists() and (root / "basic" / self.LABEL_FILE).exists():
            root = root / "basic"
        split = {"val": "test"}.get(split, split)
        if split not in ("train", "test"):
            raise ValueError(f"RAFDB: split must be 'train' or 'test' ('val' = 'test'), got {split!r}")
        self.root, self.split = root, split
        label_file = _require_file(root / self.LABEL_FILE, "RAF-DB label file")
        images = _require_dir(root / image_dir, "RAF-DB image folder")
        suffix = "_aligned" if Path(image_dir).name == "aligned" else ""
        samples, sources, seen = [], [], {}
        with open(label_file, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) != 2:
                    raise _err(label_file, lineno, f"expected '<name>.jpg <label 1..7>', got {line.strip()!r}")
                name, label = fields
                prefix = name.split("_", 1)[0]
                if prefix not in ("train", "test") or not name.endswith(".jpg"):
                    raise _err(label_file, lineno, f"image name {name!r} is not 'train_*.jpg' or 'test_*.jpg'")
                try:
                    label_int = int(label)
                except ValueError:
                    raise _err(label_file, lineno, f"label {label!r} is not an integer") from None
                if not 1 <= label_int <= 7:
                    raise _err(label_file, lineno, f"label {label_int} outside 1..7")
                if name in seen:
                    raise _err(label_file, lineno, f"{name!r} repeats line {seen[name]}")
                seen[name] = lineno
                if prefix != split:
                    continue
                samples.append((str(images / f"{name[:-4]}{suffix}.jpg"), label_int - 1))
                sources.append(f"{label_file}:{lineno}")
        _check_nonempty(samples, f"{label_file} (split {split!r})")
        keep, self.skipped = _validate_images("RAFDB", samples, sources, check_images, bad_images, workers)
        samples = [samples[i] for i in keep]
        _check_nonempty(samples, f"{label_file} (split {split!r}, after skipping bad images)")
        super().__init__(samples, RAFDB_CLASSES, transform, target_transform, loader)

    def extra_repr(self) -> str:
        return f"split={self.split!r}, root={str(self.root)!r}"


# --------------------------------------------------------------------------------------------------------------
# AffectNet
# --------------------------------------------------------------------------------------------------------------
AFFECTNET_COLUMNS = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
                     "expression", "valence", "arousal"]


class AffectNet(FERDataset):
    """AffectNet (manually annotated part), 7 or 8 classes (:data:`AFFECTNET_CLASSES`), read from the official
    layout::

        root/Manually_Annotated_file_lists/training.csv      header subDirectory_filePath,face_x,face_y,face_width,
        root/Manually_Annotated_file_lists/validation.csv    face_height,facial_landmarks,expression,valence,arousal
        root/Manually_Annotated_Images/<subDirectory_filePath>   e.g. 689/737db2483489...b61b84363ca.jpg

    Expressions 0..7 are kept (7 Contempt only when ``num_classes=8``); 8 None, 9 Uncertain and 10 No-Face are
    dropped (``dropped`` counts every dropped row by expression). An expression outside 0..10, a missing column or
    an empty path is an error naming the line. The header row is required to name the columns; a file whose first
    row is already data (some copies of ``validation.csv`` lost their header) is read with the official column
    order when it has exactly those 9 fields.

    Args:
        root: the folder that holds ``Manually_Annotated_file_lists`` (and by default the images).
        split: ``"train"`` (``training.csv``) or ``"val"`` (``validation.csv``, 500 images per class: the set the
            papers report; ``"test"`` means ``"val"``).
        num_classes: 7 or 8.
        image_dir: the image folder, relative to ``root`` or absolute (``Manually_Annotated_Images``).
        crop_face: crop each image to its annotated face box (``face_x, face_y, face_width, face_height``) before
            ``transform``. Off by default: the released images are face crops already, and MAE-SFER reads them
            whole.
        check_images, bad_images, workers: every listed image must exist; with ``check_images`` (default) each
            is also decoded once at construction (``workers`` threads). ``bad_images``: ``"error"`` (default)
            or ``"skip"`` (left out with a warning, listed in ``skipped``), as the library's ImageFolder.
    """

    LIST_DIR = "Manually_Annotated_file_lists"
    FILES = {"train": "training.csv", "val": "validation.csv"}

    def __init__(self, root: PathLike, split: str = "train", num_classes: int = 7,
                 transform: Optional[Callable] = None, target_transform: Optional[Callable] = None,
                 image_dir: PathLike = "Manually_Annotated_Images", crop_face: bool = False,
                 check_images: bool = True, bad_images: str = "error", workers: int = 8,
                 loader: Callable = load_rgb):
        root = Path(root)
        split = {"test": "val", "validation": "val", "training": "train"}.get(split, split)
        if split not in self.FILES:
            raise ValueError(f"AffectNet: split must be 'train' or 'val', got {split!r}")
        if num_classes not in (7, 8):
            raise ValueError(f"AffectNet: num_classes must be 7 or 8, got {num_classes!r}")
        self.root, self.split, self.crop_face = root, split, crop_face
        list_file = _require_file(root / self.LIST_DIR / self.FILES[split], "AffectNet list file")
        images = _require_dir(root / image_dir, "AffectNet image folder")
        samples, sources, boxes = [], [], []
        self.dropped: dict[int, int] = {}
        with open(list_file, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            columns = None
            for row in reader:
                lineno = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                if columns is None:
                    first = [c.strip() for c in row]
                    if "subDirectory_filePath" in first:
                        missing = [c for c in ("subDirectory_filePath", "expression") if c not in first]
                        if missing or (crop_face and any(c not in first for c in AFFECTNET_COLUMNS[1:5])):
                            need = AFFECTNET_COLUMNS if crop_face else ["subDirectory_filePath", "expression"]
                            raise _err(list_file, lineno, f"header lacks column(s) "
                                                          f"{[c for c in need if c not in first]}; expected "
                                                          f"{','.join(AFFECTNET_COLUMNS)}")
                        columns = {c: i for i, c in enumerate(first)}
                        continue
                    if len(row) != len(AFFECTNET_COLUMNS):
                        raise _err(list_file, lineno, f"expected the header {','.join(AFFECTNET_COLUMNS)} "
                                                      f"(or a data row of {len(AFFECTNET_COLUMNS)} fields), "
                                                      f"got {len(row)} fields")
                    columns = {c: i for i, c in enumerate(AFFECTNET_COLUMNS)}
                if len(row) < len(columns):
                    raise _err(list_file, lineno, f"{len(row)} fields, the header has {len(columns)}")
                rel = row[columns["subDirectory_filePath"]].strip()
                expr = row[columns["expression"]].strip()
                if not rel:
                    raise _err(list_file, lineno, "empty subDirectory_filePath")
                try:
                    label = int(expr)
                except ValueError:
                    raise _err(list_file, lineno, f"expression {expr!r} is not an integer") from None
                if not 0 <= label <= 10:
                    raise _err(list_file, lineno, f"expression {label} outside 0..10")
                if label >= num_classes:
                    self.dropped[label] = self.dropped.get(label, 0) + 1
                    continue
                box = None
                if crop_face:
                    try:
                        box = tuple(int(float(row[columns[c]])) for c in AFFECTNET_COLUMNS[1:5])
                    except ValueError:
                        raise _err(list_file, lineno, "face_x/face_y/face_width/face_height are not numbers") \
                            from None
                    if box[2] <= 0 or box[3] <= 0:
                        raise _err(list_file, lineno, f"empty face box {box}")
                samples.append((str(images / rel), label))
                sources.append(f"{list_file}:{lineno}")
                boxes.append(box)
        if columns is None:
            raise _err(list_file, 1, "empty file (expected the header " + ",".join(AFFECTNET_COLUMNS) + ")")
        _check_nonempty(samples, f"{list_file} ({num_classes} classes)")
        keep, self.skipped = _validate_images("AffectNet", samples, sources, check_images, bad_images, workers)
        samples, boxes = [samples[i] for i in keep], [boxes[i] for i in keep]
        _check_nonempty(samples, f"{list_file} ({num_classes} classes, after skipping bad images)")
        self.boxes = boxes
        super().__init__(samples, AFFECTNET_CLASSES[:num_classes], transform, target_transform, loader)

    def load_image(self, index: int):
        image = super().load_image(index)
        if not self.crop_face:
            return image
        x, y, w, h = self.boxes[index]
        return image.crop((x, y, x + w, y + h))

    def extra_repr(self) -> str:
        return f"split={self.split!r}, num_classes={len(self.classes)}, root={str(self.root)!r}"


# --------------------------------------------------------------------------------------------------------------
# FERPlus
# --------------------------------------------------------------------------------------------------------------
FERPLUS_COLUMNS = ["Usage", "Image name", *FERPLUS_CLASSES, "unknown", "NF"]
FERPLUS_SPLITS = {"train": ("Training", "FER2013Train"), "val": ("PublicTest", "FER2013Valid"),
                  "test": ("PrivateTest", "FER2013Test")}


def ferplus_label(votes: Sequence[float], vote: str = "ferplus", ties: str = "drop") -> Optional[int]:
    """The class of one ``fer2013new.csv`` row from its 10 vote counts (8 emotions, unknown, NF), or ``None`` when
    the row is dropped.

    ``vote="ferplus"`` (default) is the ``majority`` mode of the dataset's authors (microsoft/FERPlus
    ``src/ferplus.py``): counts of a single vote are zeroed as outliers; the largest remaining count wins only if it
    is more than half of all remaining votes (unknown and NF included), else the row is dropped — so there are
    no ties. ``vote="argmax"``: the plain plurality over the 10 columns; ties between emotions are dropped
    (``ties="drop"``) or go to the first in column order (``ties="first"``). In both modes a row whose winner is
    unknown or NF (for ``argmax``: a row where unknown or NF reaches the largest count) is dropped, as is a row
    without votes.
    """
    if len(votes) != 10:
        raise ValueError(f"ferplus_label: need 10 vote counts, got {len(votes)}")
    if vote not in ("ferplus", "argmax"):
        raise ValueError(f"ferplus_label: vote must be 'ferplus' or 'argmax', got {vote!r}")
    if ties not in ("drop", "first"):
        raise ValueError(f"ferplus_label: ties must be 'drop' or 'first', got {ties!r}")
    if vote == "ferplus":
        kept = [v if v > 1 else 0 for v in votes]
        total, best = sum(kept), max(kept)
        if best <= 0 or not best > 0.5 * total:
            return None
        winner = kept.index(best)
        return winner if winner < 8 else None
    best = max(votes)
    if best <= 0 or max(votes[8:]) >= best:
        return None
    winners = [i for i in range(8) if votes[i] == best]
    if len(winners) > 1 and ties == "drop":
        return None
    return winners[0]


class FERPlus(FERDataset):
    """FERPlus (8 classes, :data:`FERPLUS_CLASSES`): the FER2013 faces with the crowd-sourced labels of
    ``fer2013new.csv``, in the official layout (the folders written by microsoft/FERPlus ``generate_training_data``)::

        root/fer2013new.csv  Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF
        root/FER2013Train/fer0000000.png     (Usage Training)
        root/FER2013Valid/fer0028638.png     (Usage PublicTest)
        root/FER2013Test/fer0032220.png      (Usage PrivateTest)

    Each row's label is the majority vote of :func:`ferplus_label` (``vote``/``ties``). Rows with an empty
    ``Image name`` (FER2013 images the FERPlus authors removed) and rows without a majority emotion are dropped and
    counted in ``dropped`` (``{"no_image": n, "no_majority": n}``). A row with other than 12 fields, an unknown
    ``Usage``, or a vote that is not a non-negative number is an error naming the line.

    Args:
        root: the folder that holds ``fer2013new.csv`` and the three image folders.
        split: ``"train"`` (Training), ``"val"`` (PublicTest) or ``"test"`` (PrivateTest, the split papers report).
        vote, ties: see :func:`ferplus_label`.
        check_images, bad_images, workers: every listed image must exist; with ``check_images`` (default) each
            is also decoded once at construction (``workers`` threads). ``bad_images``: ``"error"`` (default)
            or ``"skip"`` (left out with a warning, listed in ``skipped``), as the library's ImageFolder.
    """

    LABEL_FILE = "fer2013new.csv"

    def __init__(self, root: PathLike, split: str = "train", transform: Optional[Callable] = None,
                 target_transform: Optional[Callable] = None, vote: str = "ferplus", ties: str = "drop",
                 check_images: bool = True, bad_images: str = "error", workers: int = 8,
                 loader: Callable = load_rgb):
        root = Path(root)
        split = {"valid": "val", "validation": "val"}.get(split, split)
        if split not in FERPLUS_SPLITS:
            raise ValueError(f"FERPlus: split must be 'train', 'val' or 'test', got {split!r}")
        ferplus_label([0] * 8 + [0, 0], vote, ties)  # validates vote/ties before reading
        self.root, self.split, self.vote, self.ties = root, split, vote, ties
        usage, folder = FERPLUS_SPLITS[split]
        usages = {u for u, _ in FERPLUS_SPLITS.values()}
        label_file = _require_file(root / self.LABEL_FILE, "FERPlus label file")
        images = _require_dir(root / folder, "FERPlus image folder")
        samples, sources = [], []
        self.dropped = {"no_image": 0, "no_majority": 0}
        with open(label_file, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header_seen = False
            for row in reader:
                lineno = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                if not header_seen:
                    if [c.strip() for c in row] != FERPLUS_COLUMNS:
                        raise _err(label_file, lineno, f"expected the header {','.join(FERPLUS_COLUMNS)}, "
                                                       f"got {','.join(row)}")
                    header_seen = True
                    continue
                if len(row) != len(FERPLUS_COLUMNS):
                    raise _err(label_file, lineno, f"{len(row)} fields, expected {len(FERPLUS_COLUMNS)}")
                row_usage, name = row[0].strip(), row[1].strip()
                if row_usage not in usages:
                    raise _err(label_file, lineno, f"Usage {row_usage!r} is not one of {sorted(usages)}")
                try:
                    votes = [float(v) for v in row[2:]]
                except ValueError:
                    raise _err(label_file, lineno, f"vote counts {row[2:]} are not all numbers") from None
                if any(not v >= 0 for v in votes):
                    raise _err(label_file, lineno, f"negative or NaN vote count in {row[2:]}")
                if row_usage != usage:
                    continue
                if not name:
                    self.dropped["no_image"] += 1
                    continue
                label = ferplus_label(votes, vote, ties)
                if label is None:
                    self.dropped["no_majority"] += 1
                    continue
                samples.append((str(images / name), label))
                sources.append(f"{label_file}:{lineno}")
        if not header_seen:
            raise _err(label_file, 1, "empty file (expected the header " + ",".join(FERPLUS_COLUMNS) + ")")
        _check_nonempty(samples, f"{label_file} (Usage {usage})")
        keep, self.skipped = _validate_images("FERPlus", samples, sources, check_images, bad_images, workers)
        samples = [samples[i] for i in keep]
        _check_nonempty(samples, f"{label_file} (Usage {usage}, after skipping bad images)")
        super().__init__(samples, FERPLUS_CLASSES, transform, target_transform, loader)

    def extra_repr(self) -> str:
        return f"split={self.split!r}, vote={self.vote!r}, root={str(self.root)!r}"


# --------------------------------------------------------------------------------------------------------------
# by name
# --------------------------------------------------------------------------------------------------------------
FER_DATASETS = {
    # name: (constructor, fixed kwargs, the split papers evaluate on)
    "rafdb": (RAFDB, {}, "test"),
    "affectnet7": (AffectNet, {"num_classes": 7}, "val"),
    "affectnet8": (AffectNet, {"num_classes": 8}, "val"),
    "ferplus": (FERPlus, {}, "test"),
}


def build_fer_dataset(name: str, root: PathLike, split: str = "train", transform: Optional[Callable] = None,
                      **kwargs) -> FERDataset:
    """One of :data:`FER_DATASETS` (``rafdb``, ``affectnet7``, ``affectnet8``, ``ferplus``) by name. ``split``
    ``"eval"`` picks the split the papers report (RAF-DB test, AffectNet validation, FERPlus PrivateTest)."""
    if name not in FER_DATASETS:
        raise ValueError(f"unknown FER dataset {name!r}; choose one of {sorted(FER_DATASETS)}")
    cls, fixed, eval_split = FER_DATASETS[name]
    if split == "eval":
        split = eval_split
    return cls(root, split=split, transform=transform, **fixed, **kwargs)
