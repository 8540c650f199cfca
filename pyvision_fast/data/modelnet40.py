"""ModelNet40 readers in the two released formats, and the point-cloud augmentations of the PointNet++ code.

* ``ModelNet40Normal``: ``modelnet40_normal_resampled`` (the PointNet++ / PointCAT format). ``ROOT`` holds
  ``modelnet40_shape_names.txt`` (one class per line; ``modelnet10_*`` for ModelNet10),
  ``modelnet40_train.txt`` and ``modelnet40_test.txt`` (one shape id per line, ``<class>_<4 digits>``, the
  class being the id without its last ``_`` part) and ``<class>/<shape id>.txt``: one point per line,
  ``x,y,z,nx,ny,nz`` (10,000 lines in the release). As yanx27/Pointnet_Pointnet2_pytorch
  ``data_utils/ModelNetDataLoader.py``: the first ``num_points`` lines (or, with ``uniform=True``, farthest
  point sampling over all of them, here started at the first point rather than a random one), then the
  coordinates centred and scaled into the unit sphere (``pc_normalize``); normals kept only with
  ``use_normals=True``.
* ``ModelNet40H5``: ``modelnet40_ply_hdf5_2048`` (the PointNet / DGCNN format):
  ``ply_data_{train,test}<i>.h5`` with datasets ``data`` (B, 2048, 3) float32 and ``label`` (B, 1) integer,
  listed in ``{train,test}_files.txt`` (their paths are resolved by file name inside ``ROOT``; without a list,
  ``ply_data_<split>*.h5`` in name order), and ``shape_names.txt``. The first ``num_points`` points of each
  shape; no normalisation unless asked (the clouds are already in the unit sphere), as the DGCNN loader.

Items are ``(points (num_points, 3 or 6) float32 tensor, label int64 scalar tensor)``. Readers expose
``classes``, ``targets`` and ``samples`` ((file or file[item], label) per item). Malformed data fails with a
ValueError naming the file and line (text) or file and item (HDF5): a missing file, a line without six
numbers, NaN/Inf, fewer points than requested, a shape id of an unknown class, a label outside the class list.

Augmentations (``utils/provider.py`` of the PointNet++ code, applied per cloud to a (N, C) tensor with torch's
RNG, coordinates only): ``RandomPointDropout`` (drops a U(0, 0.875) fraction of the points, replaced by the
first point), ``RandomScale`` (U(0.8, 1.25)), ``RandomShift`` (U(-0.1, 0.1) per axis), ``Jitter`` (clipped
Gaussian noise, sigma 0.01, clip 0.05).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["ModelNet40Normal", "ModelNet40H5", "RandomPointDropout", "RandomScale", "RandomShift", "Jitter",
           "Compose", "pc_normalize", "read_points_txt", "detect_modelnet40_format", "modelnet40_splits",
           "pointnet2_train_transform"]

PathLike = Union[str, Path]


def pc_normalize(xyz: np.ndarray) -> np.ndarray:
    """(N, 3) -> centred on the mean and divided by the largest distance to it (PointNet++'s
    ``pc_normalize``). A cloud whose points all coincide is only centred."""
    xyz = xyz - xyz.mean(axis=0)
    m = np.sqrt((xyz ** 2).sum(axis=1)).max() if len(xyz) else 0.0
    return xyz / m if m > 0 else xyz


def read_points_txt(path: PathLike, max_rows: Optional[int] = None, columns: int = 6) -> np.ndarray:
    """One ``x,y,z,nx,ny,nz`` text file -> (rows, columns) float32 (the first ``max_rows`` lines when given).
    Raises ValueError with ``path:line`` for a line that is not ``columns`` comma-separated numbers, or holds
    NaN/Inf; FileNotFoundError naming the path."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"ModelNet40: point file {path} does not exist") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if max_rows is not None:
        lines = lines[:max_rows]
    if not lines:
        return np.zeros((0, columns), np.float32)
    values = None
    if all(line.count(",") == columns - 1 for line in lines):
        try:
            values = np.array(",".join(lines).split(","), dtype=np.float64)
        except ValueError:
            pass
    if values is None:
        for i, line in enumerate(lines):
            fields = line.split(",")
            try:
                ok = len(fields) == columns and len([float(f) for f in fields]) == columns
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(f"{path}:{i + 1}: expected {columns} comma-separated numbers "
                                 f"(x,y,z,nx,ny,nz), got {line.strip()[:80]!r}")
    points = values.reshape(len(lines), columns)
    bad = ~np.isfinite(points).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{path}:{i + 1}: NaN or Inf in {lines[i].strip()[:80]!r}")
    return points.astype(np.float32)


def _read_names(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"ModelNet40: {what} {path} does not exist")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _check_num_points(num_points: int) -> int:
    if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 1:
        raise ValueError(f"ModelNet40: num_points must be a positive int, got {num_points!r}")
    return num_points


class _PointCloudDataset(Dataset):
    classes: list[str]
    targets: list[int]
    samples: list[tuple[str, int]]
    transform: Optional[Callable[[Tensor], Tensor]]

    def __len__(self) -> int:
        return len(self.targets)

    def _item(self, points: np.ndarray, label: int) -> tuple[Tensor, Tensor]:
        x = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))
        if self.transform is not None:
            x = self.transform(x)
        return x, torch.tensor(label, dtype=torch.int64)


class ModelNet40Normal(_PointCloudDataset):
    """``modelnet40_normal_resampled`` reader (see the module docstring).

    Args:
        root: the folder with ``modelnet{40,10}_shape_names.txt``, the split lists and the class folders.
        split: ``"train"`` or ``"test"``.
        num_points: points per cloud (1024 in PointNet++/PointCAT).
        use_normals: items are (num_points, 6) ``x,y,z,nx,ny,nz`` instead of (num_points, 3).
        uniform: farthest point sampling over the whole file instead of its first lines.
        num_category: 40 or 10 (which ``modelnet<k>_*.txt`` files to read).
        transform: applied to each (num_points, C) float32 tensor (training augmentation).
        cache: keep parsed clouds in memory (per process) after their first read.
    """

    def __init__(self, root: PathLike, split: str = "train", num_points: int = 1024, use_normals: bool = False,
                 uniform: bool = False, num_category: int = 40, transform: Optional[Callable] = None,
                 cache: bool = True):
        if split not in ("train", "test"):
            raise ValueError(f"ModelNet40Normal: split must be 'train' or 'test', got {split!r}")
        if num_category not in (10, 40):
            raise ValueError(f"ModelNet40Normal: num_category must be 10 or 40, got {num_category!r}")
        self.root, self.split = Path(root), split
        self.num_points, self.use_normals, self.uniform = _check_num_points(num_points), use_normals, uniform
        self.transform, self.cache = transform, cache
        self.classes = _read_names(self.root / f"modelnet{num_category}_shape_names.txt", "class list")
        index = {c: i for i, c in enumerate(self.classes)}
        list_file = self.root / f"modelnet{num_category}_{split}.txt"
        if not list_file.is_file():
            raise FileNotFoundError(f"ModelNet40: split list {list_file} does not exist")
        self.samples, self.targets = [], []
        for lineno, line in enumerate(list_file.read_text().splitlines(), 1):
            shape_id = line.strip()
            if not shape_id:
                continue
            cls = "_".join(shape_id.split("_")[:-1])
            if cls not in index:
                raise ValueError(f"{list_file}:{lineno}: shape {shape_id!r} names class {cls!r}, which is not in "
                                 f"{self.root / f'modelnet{num_category}_shape_names.txt'}")
            path = self.root / cls / f"{shape_id}.txt"
            if not path.is_file():
                raise FileNotFoundError(f"{list_file}:{lineno}: point file {path} does not exist")
            self.samples.append((str(path), index[cls]))
            self.targets.append(index[cls])
        self._cache: dict[int, np.ndarray] = {}

    def load(self, i: int) -> np.ndarray:
        """The i-th cloud after sampling and normalisation, before ``transform``: (num_points, 3 or 6) float32."""
        if i in self._cache:
            return self._cache[i]
        path = self.samples[i][0]
        points = read_points_txt(path, None if self.uniform else self.num_points)
        if len(points) < self.num_points:
            raise ValueError(f"{path}: has {len(points)} points, fewer than the {self.num_points} requested")
        if self.uniform:
            from ..ops import sample_farthest_points

            _, idx = sample_farthest_points(torch.from_numpy(points[None, :, :3]).contiguous(), K=self.num_points)
            points = points[idx[0].numpy()]
        points = points.copy()
        points[:, :3] = pc_normalize(points[:, :3])
        if not self.use_normals:
            points = np.ascontiguousarray(points[:, :3])
        if self.cache:
            self._cache[i] = points
        return points

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self._item(self.load(i), self.targets[i])


class ModelNet40H5(_PointCloudDataset):
    """``modelnet40_ply_hdf5_2048`` reader (see the module docstring); loads the split into memory.

    Args:
        root: the folder with ``ply_data_*.h5``, ``shape_names.txt`` and ``{train,test}_files.txt``.
        split: ``"train"`` or ``"test"``.
        num_points: the first ``num_points`` of each stored cloud (<= the stored count, 2048).
        normalize: apply ``pc_normalize`` to each cloud (off by default, as DGCNN).
        transform: applied to each (num_points, 3) float32 tensor.
    """

    def __init__(self, root: PathLike, split: str = "train", num_points: int = 1024, normalize: bool = False,
                 transform: Optional[Callable] = None):
        import h5py

        if split not in ("train", "test"):
            raise ValueError(f"ModelNet40H5: split must be 'train' or 'test', got {split!r}")
        self.root, self.split, self.num_points = Path(root), split, _check_num_points(num_points)
        self.normalize, self.transform = normalize, transform
        self.classes = _read_names(self.root / "shape_names.txt", "class list")
        files = self._files()
        datas, self.targets, self.samples = [], [], []
        for path in files:
            try:
                f = h5py.File(path, "r")
            except OSError as exc:
                raise ValueError(f"{path}: not a readable HDF5 file ({exc})") from None
            with f:
                for key in ("data", "label"):
                    if key not in f:
                        raise ValueError(f"{path}: has no {key!r} dataset (found {sorted(f.keys())})")
                data = np.asarray(f["data"], dtype=np.float32)
                label = np.asarray(f["label"])
            if data.ndim != 3 or data.shape[2] != 3:
                raise ValueError(f"{path}: 'data' must have shape (B, P, 3), got {data.shape}")
            if label.reshape(len(label), -1).shape != (len(data), 1):
                raise ValueError(f"{path}: 'label' must have shape (B, 1) with B = {len(data)}, got {label.shape}")
            if not np.issubdtype(label.dtype, np.integer):
                raise ValueError(f"{path}: 'label' must hold integers, got {label.dtype}")
            if data.shape[1] < num_points:
                raise ValueError(f"{path}: holds {data.shape[1]} points per shape, fewer than the {num_points} "
                                 "requested")
            data = data[:, :num_points]
            label = label.reshape(-1).astype(np.int64)
            bad = ~np.isfinite(data).all(axis=(1, 2))
            if bad.any():
                raise ValueError(f"{path}: item {int(np.flatnonzero(bad)[0])} holds NaN or Inf coordinates")
            out = (label < 0) | (label >= len(self.classes))
            if out.any():
                i = int(np.flatnonzero(out)[0])
                raise ValueError(f"{path}: item {i} has label {int(label[i])}, outside the {len(self.classes)} "
                                 f"classes of {self.root / 'shape_names.txt'}")
            datas.append(data)
            self.targets += label.tolist()
            self.samples += [(f"{path}[{i}]", int(v)) for i, v in enumerate(label)]
        self.data = np.concatenate(datas) if datas else np.zeros((0, num_points, 3), np.float32)

    def _files(self) -> list[Path]:
        listing = self.root / f"{self.split}_files.txt"
        if listing.is_file():
            files = []
            for lineno, line in enumerate(listing.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                path = self.root / Path(line.strip()).name
                if not path.is_file():
                    raise FileNotFoundError(f"{listing}:{lineno}: {line.strip()!r} is not in {self.root}")
                files.append(path)
        else:
            files = sorted(self.root.glob(f"ply_data_{self.split}*.h5"))
        if not files:
            raise FileNotFoundError(f"ModelNet40H5: no {self.split} files in {self.root} (expected "
                                    f"{self.split}_files.txt or ply_data_{self.split}*.h5)")
        return files

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        points = self.data[i]
        if self.normalize:
            points = pc_normalize(points).astype(np.float32)
        return self._item(points, self.targets[i])


# ------------------------------------------------------------------------ augmentations

class RandomPointDropout:
    """Drops a U(0, max_dropout_ratio) fraction of the points (each independently), replacing them by the
    first point, so the cloud keeps its size (PointNet++'s ``random_point_dropout``). (N, C) -> (N, C)."""

    def __init__(self, max_dropout_ratio: float = 0.875):
        self.max_dropout_ratio = max_dropout_ratio

    def __call__(self, points: Tensor) -> Tensor:
        ratio = float(torch.rand(())) * self.max_dropout_ratio
        drop = torch.rand(points.shape[0]) <= ratio
        return torch.where(drop[:, None], points[:1], points)


class RandomScale:
    """Multiplies the coordinates (first 3 columns) by one U(low, high) factor. (N, C) -> (N, C)."""

    def __init__(self, low: float = 0.8, high: float = 1.25):
        self.low, self.high = low, high

    def __call__(self, points: Tensor) -> Tensor:
        s = self.low + float(torch.rand(())) * (self.high - self.low)
        return torch.cat([points[:, :3] * s, points[:, 3:]], dim=1)


class RandomShift:
    """Adds one U(-shift_range, shift_range) offset per axis to the coordinates. (N, C) -> (N, C)."""

    def __init__(self, shift_range: float = 0.1):
        self.shift_range = shift_range

    def __call__(self, points: Tensor) -> Tensor:
        shift = (torch.rand(3) * 2 - 1) * self.shift_range
        return torch.cat([points[:, :3] + shift.to(points.dtype), points[:, 3:]], dim=1)


class Jitter:
    """Adds Gaussian noise (sigma) clipped to [-clip, clip] to every coordinate. (N, C) -> (N, C)."""

    def __init__(self, sigma: float = 0.01, clip: float = 0.05):
        if clip <= 0:
            raise ValueError(f"Jitter: clip must be > 0, got {clip}")
        self.sigma, self.clip = sigma, clip

    def __call__(self, points: Tensor) -> Tensor:
        noise = (torch.randn(points.shape[0], 3) * self.sigma).clamp(-self.clip, self.clip).to(points.dtype)
        return torch.cat([points[:, :3] + noise, points[:, 3:]], dim=1)


class Compose:
    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, points: Tensor) -> Tensor:
        for t in self.transforms:
            points = t(points)
        return points

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def pointnet2_train_transform(dropout: bool = True, scale: bool = True, shift: bool = True,
                              jitter: bool = False) -> Optional[Compose]:
    """The training augmentation of the PointNet++ ModelNet40 script (dropout, scale, shift; jitter off)."""
    parts = ([RandomPointDropout()] if dropout else []) + ([RandomScale()] if scale else []) + \
        ([RandomShift()] if shift else []) + ([Jitter()] if jitter else [])
    return Compose(parts) if parts else None


# ------------------------------------------------------------------------ format detection

_NORMAL_MARKERS = ("modelnet40_shape_names.txt", "modelnet10_shape_names.txt")


def detect_modelnet40_format(root: PathLike) -> tuple[str, Path]:
    """('normal_resampled' | 'hdf5', the folder holding it): ``root`` itself, or its
    ``modelnet40_normal_resampled`` / ``modelnet40_ply_hdf5_2048`` sub-folder. Raises FileNotFoundError saying
    what was looked for."""
    root = Path(root)
    for folder in (root, root / "modelnet40_normal_resampled", root / "modelnet40_ply_hdf5_2048"):
        if any((folder / m).is_file() for m in _NORMAL_MARKERS):
            return "normal_resampled", folder
        if (folder / "shape_names.txt").is_file() or any(folder.glob("ply_data_*.h5")):
            return "hdf5", folder
    if not root.is_dir():
        raise FileNotFoundError(f"ModelNet40: data folder {root} does not exist")
    raise FileNotFoundError(f"ModelNet40: {root} holds neither modelnet40_normal_resampled (modelnet40_shape_names"
                            ".txt, modelnet40_{train,test}.txt, <class>/<id>.txt) nor modelnet40_ply_hdf5_2048 "
                            "(shape_names.txt, ply_data_{train,test}*.h5)")


def modelnet40_splits(root: PathLike, num_points: int = 1024, use_normals: bool = False, uniform: bool = False,
                      train_transform: Optional[Callable] = None, with_train: bool = True,
                      num_category: Optional[int] = None):
    """(train or None, test) readers of whichever format ``root`` holds (``detect_modelnet40_format``).
    ``num_category`` None reads ModelNet40, or ModelNet10 when only its lists are present."""
    fmt, folder = detect_modelnet40_format(root)
    if fmt == "normal_resampled":
        if num_category is None:
            num_category = 40 if (folder / "modelnet40_shape_names.txt").is_file() else 10
        make = lambda split, tf: ModelNet40Normal(folder, split, num_points, use_normals, uniform, num_category,
                                                  tf)
    else:
        if use_normals:
            raise ValueError(f"ModelNet40: {folder} is the HDF5 format, which has no normals (use_normals=True)")
        make = lambda split, tf: ModelNet40H5(folder, split, num_points, transform=tf)
    return (make("train", train_transform) if with_train else None), make("test", None)
