"""ImageFolder: the class-per-folder layout of timm and torchvision (``ROOT/<class>/<image>``).

Classes are the sorted names of ROOT's sub-folders; label ``i`` is the ``i``-th class. Every image is checked
when the dataset is built (opened and fully decoded, in a thread pool) so that an unreadable or truncated file is
reported before any training starts, not at the batch that meets it. What happens then is ``bad_images``:

- ``"error"`` (default): ``ValueError`` naming the bad files (the first ten) and what PIL said.
- ``"skip"``: the files are left out, a ``UserWarning`` says how many and which; ``dataset.skipped`` lists them.

``check_images=False`` leaves the check out (large sets such as ImageNet, already known to be clean).
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from PIL import Image
from torch.utils.data import Dataset

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def image_decode_problem(path: str) -> Optional[str]:
    """None when ``path`` is a file that decodes completely, otherwise what went wrong (``"missing"`` or PIL's
    complaint)."""
    if not os.path.isfile(path):
        return "missing"
    try:
        with Image.open(path) as im:
            im.load()  # a truncated file raises here ("image file is truncated"), not at open()
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        return f"{type(exc).__name__}: {exc}"
    return None


def drop_undecodable(paths: Sequence[str], owner: str, root: Union[str, Path], bad_images: str, workers: int,
                     skip_hint: str = "bad_images='skip'") -> tuple[list[int], list[tuple[str, str]]]:
    """Decodes every file of ``paths`` (a thread pool of ``workers``). ``bad_images="error"``: ``ValueError``
    naming the bad files (the first ten) and why; ``"skip"``: a ``UserWarning`` listing them. Returns (indices of
    the good paths, [(path, reason)] of the bad ones)."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        problems = list(pool.map(image_decode_problem, paths))
    bad = [(p, why) for p, why in zip(paths, problems) if why is not None]
    if bad:
        listing = "; ".join(f"{p} ({why})" for p, why in bad[:10]) + (" ..." if len(bad) > 10 else "")
        if bad_images == "error":
            raise ValueError(f"{owner}: {len(bad)} image(s) under {str(root)!r} cannot be decoded: {listing} "
                             f"({skip_hint} leaves them out)")
        warnings.warn(f"{owner}: skipped {len(bad)} image(s) under {str(root)!r} that cannot be decoded: "
                      f"{listing}", stacklevel=3)
    return [i for i, why in enumerate(problems) if why is None], bad


def find_classes(root: Union[str, Path]) -> list[str]:
    """Sorted names of the sub-folders of ``root`` (hidden ones excluded)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ImageFolder: folder {str(root)!r} does not exist")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise FileNotFoundError(f"ImageFolder: {str(root)!r} has no class sub-folders (expected ROOT/<class>/<image>)")
    return classes


class ImageFolder(Dataset):
    """Images of ``root/<class>/*`` with integer labels.

    Args:
        root: the folder whose sub-folders are the classes.
        transform: applied to the RGB ``PIL.Image``; the item is then ``(transform(image), label)``.
        classes: the class names in label order (a validation split passes its training split's classes, so the
            labels agree); default: the sorted sub-folders of ``root``. A sub-folder of ``root`` that is not among
            ``classes`` is an error (its label would be outside the class range).
        extensions: file endings counted as images (case-insensitive); other files are ignored.
        check_images: decode every image once when built (see the module docstring).
        bad_images: ``"error"`` or ``"skip"`` for files that do not decode.
        workers: threads for the check.

    Items: ``(image, label)`` with ``label`` an ``int`` in ``[0, len(classes))``.
    """

    def __init__(self, root: Union[str, Path], transform: Optional[Callable] = None,
                 classes: Optional[Sequence[str]] = None, extensions: Sequence[str] = IMG_EXTENSIONS,
                 check_images: bool = True, bad_images: str = "error", workers: int = 8):
        if bad_images not in ("error", "skip"):
            raise ValueError(f"ImageFolder: bad_images must be 'error' or 'skip', got {bad_images!r}")
        self.root = Path(root)
        self.transform = transform
        found = find_classes(self.root)
        self.classes = list(classes) if classes is not None else found
        outside = sorted(set(found) - set(self.classes))
        if outside:
            raise ValueError(f"ImageFolder: {str(self.root)!r} has class folder(s) {outside} that are not among the "
                             f"{len(self.classes)} classes {self.classes}: their labels would be outside the range "
                             f"[0, {len(self.classes)})")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        exts = tuple(e.lower() for e in extensions)
        samples: list[tuple[str, int]] = []
        empty = []
        for name in found:
            folder = self.root / name
            files = sorted(str(folder / f) for f in os.listdir(folder)
                           if f.lower().endswith(exts) and (folder / f).is_file())
            if not files:
                empty.append(str(folder))
            samples += [(f, self.class_to_idx[name]) for f in files]
        if empty:
            raise ValueError(f"ImageFolder: class folder(s) without images ({', '.join(exts)}): {empty}")
        self.skipped: list[tuple[str, str]] = []
        if check_images:
            kept, self.skipped = drop_undecodable([p for p, _ in samples], "ImageFolder", self.root, bad_images,
                                                  workers)
            samples = [samples[i] for i in kept]
        self.samples = samples
        self.targets = [label for _, label in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        with Image.open(path) as im:
            image = im.convert("RGB")
        return (self.transform(image) if self.transform is not None else image), label

    def __repr__(self) -> str:
        return f"ImageFolder({str(self.root)!r}, {len(self)} images, {len(self.classes)} classes)"


def image_folder_splits(root: Union[str, Path], train_transform: Optional[Callable],
                        val_transform: Optional[Callable], bad_images: str = "error"):
    """(train, val) ImageFolders of ``root/train`` and ``root/val`` (None when ``root/val`` does not exist; its
    classes are the training set's), as the classification recipes read ``--data``."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"--data {root!r} does not exist (expected {root}/train/<class>/<image>)")
    train = ImageFolder(os.path.join(root, "train"), train_transform, bad_images=bad_images)
    val_dir = os.path.join(root, "val")
    val = (ImageFolder(val_dir, val_transform, classes=train.classes, bad_images=bad_images)
           if os.path.isdir(val_dir) else None)
    return train, val
