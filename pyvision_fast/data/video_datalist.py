"""Video datasets listed in a datalist file (the mmaction format of MVFNet, TSN, TSM): frame folders or raw
videos, with dense or TSN segment sampling and the multi-view test of video recognition papers.

Datalist: one video per line, fields separated by whitespace, paths relative to ``root``:

* frame folders: ``video_dir num_frames label`` (``datalist/sthv1/train_rgb.txt``: ``100218 42 134``); frames
  are ``video_dir/<filename_tmpl.format(i)>`` for ``i = start_index .. start_index + num_frames - 1``
  (``img_{:05d}.jpg`` from 1 by default, as K400 extracted by the official scripts; ``{:06d}.jpg`` for SSv2,
  ``{:05d}.jpg`` for SSv1);
* raw videos (``video=True``): ``path label`` (the official ``VideoDataset``; frames counted by decoding once)
  or ``path num_frames label``; frames decoded with PyAV (``pyvision_fast.data.video.read_video``).

Blank lines and lines starting with ``#`` are skipped. Checked when the dataset is built, before any training,
each as a ``DatalistError`` (a ``ValueError``) whose message starts with ``<datalist>:<line>:``: a wrong
number of fields, a frame count or label that is not an integer, a frame count < 1, a label outside ``[0,
num_classes)``, a frame folder or video that does not exist, and (frame folders, ``check_frames=True``) a
folder without its first or last declared frame ("fewer frames than declared"). A frame that cannot be read
later, or a video with fewer frames than its line declares, raises the same error when the item is loaded.

Sampling (frame indices are 0-based positions among the video's ``n`` frames):

* ``dense`` (MVFNet's ``SampleFrames``): a clip is ``clip_len`` frames ``frame_interval`` apart. Training: one
  clip at a random offset in ``[0, n - clip_len * frame_interval]``; test: ``num_clips`` clips with evenly
  spaced offsets (``int(tick / 2 + tick * k)``, ``tick = (n - span + 1) / num_clips``).
* ``segment`` (TSN): the video is cut into ``clip_len`` equal segments and one frame is taken from each.
  Training: a random frame of each segment; test: clip ``c`` of ``num_clips`` takes position
  ``(c + 0.5) / num_clips`` inside each segment (the segment centres for one clip).

A video shorter than a clip needs (``out_of_bound``): ``"clamp"`` (default, the official MVFNet code: indices
past the end repeat the last frame), ``"loop"`` (mmaction2: indices wrap around to the start) or ``"error"``.

Transforms (:func:`video_train_transform`, :func:`video_test_transform`): training RandomResizedCrop 224
(scale 0.08-1, ratio 3/4-4/3, one crop for all frames of a clip) + horizontal flip 0.5; test: resize the short
side to 256, then three 256x256 crops along the long side (``ThreeCrop``, ``crops=3``) or one centre 224 crop
(``crops=1``, the official validation pipeline); both normalise with the ImageNet mean and std.

Items: training ``(clip, label)`` with ``clip`` (3, T, H, W) float32; test ``(views, label)`` with ``views``
(num_clips * crops, 3, T, H, W) float32, clip-major (the crops of clip 0 first). Datasets expose ``samples``
(``[("<datalist>:<line> <path>", label)]``), ``targets`` and ``classes`` (``range(num_classes)``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["DatalistError", "VideoRecord", "read_datalist", "dense_indices", "segment_indices",
           "video_train_transform", "video_test_transform", "ThreeCrop", "VideoDatalist"]

PathLike = Union[str, os.PathLike]


class DatalistError(ValueError):
    """A datalist line that is wrong; the message starts with ``<datalist>:<line>:``."""


@dataclass(frozen=True)
class VideoRecord:
    path: str            # as written in the datalist (relative to the dataset root)
    num_frames: Optional[int]   # None: a video line without a frame count (counted when first read)
    label: int
    line: int            # 1-based line number in the datalist


def read_datalist(list_file: PathLike, video: bool = False,
                  num_classes: Optional[int] = None) -> list[VideoRecord]:
    """The records of ``list_file`` (see the module docstring for the formats and the checks)."""
    list_file = Path(list_file)
    if not list_file.is_file():
        raise FileNotFoundError(f"datalist {str(list_file)!r} does not exist")
    records = []
    with open(list_file, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            text = raw.strip()
            if not text or text.startswith("#"):
                continue
            fields = text.split()
            where = f"{list_file}:{n}:"
            allowed = (2, 3) if video else (3,)
            if len(fields) not in allowed:
                form = "'path label' or 'path num_frames label'" if video else "'video_dir num_frames label'"
                raise DatalistError(f"{where} expected {form}, got {len(fields)} fields: {text!r}")
            frames = None
            try:
                label = int(fields[-1])
                if len(fields) == 3:
                    frames = int(fields[1])
            except ValueError:
                raise DatalistError(f"{where} frame count and label must be integers, got {text!r}") from None
            if frames is not None and frames < 1:
                raise DatalistError(f"{where} frame count must be >= 1, got {frames}")
            if label < 0 or (num_classes is not None and label >= num_classes):
                bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
                raise DatalistError(f"{where} label {label} is outside {bound}")
            records.append(VideoRecord(fields[0], frames, label, n))
    if not records:
        raise DatalistError(f"{list_file}: holds no video")
    return records


def _resolve(n: int, idx: np.ndarray, out_of_bound: str, what: str) -> np.ndarray:
    """Indices past the last frame (of a video with ``n`` frames) clamped, wrapped or refused."""
    if out_of_bound == "clamp":
        return np.minimum(idx, n - 1)
    if out_of_bound == "loop":
        return idx % n
    if out_of_bound == "error":
        if idx.max(initial=0) >= n:
            raise ValueError(f"{what} needs frame {int(idx.max())} but the video has {n} frames "
                             f"(out_of_bound='error')")
        return idx
    raise ValueError(f"out_of_bound must be 'clamp', 'loop' or 'error', got {out_of_bound!r}")


def dense_indices(n: int, clip_len: int, frame_interval: int, num_clips: int, train: bool,
                  rng: Optional[np.random.Generator] = None, out_of_bound: str = "clamp") -> np.ndarray:
    """Frame positions (num_clips * clip_len,) int64 of dense sampling in a video of ``n`` frames: clips of
    ``clip_len`` frames ``frame_interval`` apart; training: random offsets (MVFNet's ``_sample_clips``: one
    random offset per equal share of the valid range); test: evenly spaced offsets."""
    span = clip_len * frame_interval
    if train:
        rng = rng if rng is not None else np.random.default_rng()
        share = (n - span + 1) // num_clips
        if share > 0:
            offsets = np.arange(num_clips) * share + rng.integers(0, share, num_clips)
        else:
            offsets = np.zeros(num_clips, dtype=np.int64)
    else:
        tick = (n - span + 1) / num_clips
        offsets = (np.array([int(tick / 2 + tick * k) for k in range(num_clips)], dtype=np.int64) if tick > 0
                   else np.zeros(num_clips, dtype=np.int64))
    idx = (offsets[:, None] + np.arange(clip_len)[None, :] * frame_interval).reshape(-1)
    return _resolve(n, idx.astype(np.int64), out_of_bound, f"a clip of {clip_len} x {frame_interval} frames")


def segment_indices(n: int, num_segments: int, num_clips: int, train: bool,
                    rng: Optional[np.random.Generator] = None, out_of_bound: str = "clamp") -> np.ndarray:
    """Frame positions (num_clips * num_segments,) int64 of TSN segment sampling in a video of ``n`` frames.
    A video with fewer frames than segments repeats frames (``out_of_bound`` applies only to "error")."""
    if out_of_bound == "error" and n < num_segments:
        raise ValueError(f"{num_segments} segments need {num_segments} frames but the video has {n} "
                         f"(out_of_bound='error')")
    seg = n / num_segments
    if train:
        rng = rng if rng is not None else np.random.default_rng()
        starts = np.floor(np.arange(num_segments) * seg)
        lengths = np.maximum(np.floor(np.arange(1, num_segments + 1) * seg) - starts, 1)
        idx = np.concatenate([starts + np.floor(rng.random(num_segments) * lengths)
                              for _ in range(num_clips)])
    else:
        idx = np.concatenate([np.floor((np.arange(num_segments) + (c + 0.5) / num_clips) * seg)
                              for c in range(num_clips)])
    return np.minimum(idx.astype(np.int64), n - 1)


class ThreeCrop(torch.nn.Module):
    """Three ``size`` x ``size`` crops of frames (..., H, W): along the longer side at its start, its centre
    and its end (the other side must equal ``size`` or be larger, then it is cut at its centre). Returns (3,
    ..., size, size), the order start, centre, end."""

    def __init__(self, size: int):
        super().__init__()
        self.size = int(size)

    def forward(self, frames: Tensor) -> Tensor:
        H, W = frames.shape[-2:]
        s = self.size
        if H < s or W < s:
            raise ValueError(f"ThreeCrop: frames {H}x{W} are smaller than the crop {s}")
        if W >= H:
            top = (H - s) // 2
            positions = [(top, x) for x in (0, (W - s) // 2, W - s)]
        else:
            left = (W - s) // 2
            positions = [(y, left) for y in (0, (H - s) // 2, H - s)]
        return torch.stack([frames[..., y:y + s, x:x + s] for y, x in positions])


def _normalize(mean: Sequence[float], std: Sequence[float]):
    from torchvision.transforms import v2

    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])


def video_train_transform(size: int = 224, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip: float = 0.5,
                          mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Callable[[Tensor], Tensor]:
    """Frames (T, 3, H, W) uint8 -> (T, 3, size, size) float32: one RandomResizedCrop and one flip decision
    for the whole clip (torchvision ``v2`` on a ``tv_tensors.Video``), then ImageNet normalisation."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    steps = [v2.RandomResizedCrop(size, scale=scale, ratio=ratio, antialias=True)]
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    pipeline = v2.Compose([*steps, _normalize(mean, std)])
    return lambda frames: pipeline(tv_tensors.Video(frames)).as_subclass(Tensor)


def video_test_transform(short_side: int = 256, crops: int = 3, crop_size: Optional[int] = None,
                         mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Callable[[Tensor], Tensor]:
    """Frames (T, 3, H, W) uint8 -> (crops, T, 3, S, S) float32: short side resized to ``short_side``, then
    ``crops=3``: :class:`ThreeCrop` of ``crop_size`` (default ``short_side``, the official 10x3 test) or
    ``crops=1``: a centre crop of ``crop_size`` (default 224, the official validation)."""
    from torchvision.transforms import v2

    if crops not in (1, 3):
        raise ValueError(f"video_test_transform: crops must be 1 or 3, got {crops}")
    resize = v2.Resize(short_side, antialias=True)
    norm = _normalize(mean, std)
    if crops == 3:
        three = ThreeCrop(crop_size or short_side)
        return lambda frames: norm(three(resize(frames)))
    center = v2.CenterCrop(crop_size or 224)
    return lambda frames: norm(center(resize(frames)))[None]


def _decode_rgb(path: Path) -> Tensor:
    """An image file as (3, H, W) uint8 RGB (PIL; grey and palette images are converted)."""
    from PIL import Image

    with Image.open(path) as img:
        array = np.asarray(img.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


class VideoDatalist(Dataset):
    """The videos of ``list_file`` under ``root`` (see the module docstring).

    Args:
        list_file, root: the datalist and the folder its paths are relative to.
        clip_len: frames per clip (dense) or segments (segment); the model's T.
        frame_interval: dense sampling stride (ignored by segment sampling).
        sampling: ``"dense"`` or ``"segment"``.
        train: one random clip and ``transform`` (default :func:`video_train_transform`); else ``num_clips``
            evenly placed clips and ``transform`` (default :func:`video_test_transform`, 3 crops).
        num_clips: clips per video at test.
        video: raw videos instead of frame folders.
        filename_tmpl, start_index: frame file names in a folder.
        num_classes: labels must lie in ``[0, num_classes)``; None: any label >= 0, ``classes`` then spans
            ``1 + max label``.
        out_of_bound: ``"clamp"``, ``"loop"`` or ``"error"`` for videos shorter than a clip.
        check_frames: frame folders: check at construction that each folder holds its first and last
            declared frame.
    """

    def __init__(self, list_file: PathLike, root: PathLike, clip_len: int = 8, frame_interval: int = 8,
                 sampling: str = "dense", train: bool = True, num_clips: int = 1, video: bool = False,
                 filename_tmpl: str = "img_{:05d}.jpg", start_index: int = 1,
                 num_classes: Optional[int] = None, transform: Optional[Callable] = None,
                 out_of_bound: str = "clamp", check_frames: bool = True):
        if sampling not in ("dense", "segment"):
            raise ValueError(f"sampling must be 'dense' or 'segment', got {sampling!r}")
        if out_of_bound not in ("clamp", "loop", "error"):
            raise ValueError(f"out_of_bound must be 'clamp', 'loop' or 'error', got {out_of_bound!r}")
        if clip_len < 1 or frame_interval < 1 or num_clips < 1:
            raise ValueError(f"clip_len, frame_interval and num_clips must be >= 1, got {clip_len}, "
                             f"{frame_interval}, {num_clips}")
        try:
            filename_tmpl.format(start_index)
        except (IndexError, KeyError, ValueError) as exc:
            raise ValueError(f"filename_tmpl {filename_tmpl!r} does not format a frame number "
                             f"({exc})") from None
        self.list_file, self.root = Path(list_file), Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset root {str(self.root)!r} does not exist")
        self.clip_len, self.frame_interval, self.sampling = clip_len, frame_interval, sampling
        self.train, self.num_clips, self.video = train, (1 if train else num_clips), video
        self.filename_tmpl, self.start_index = filename_tmpl, start_index
        self.out_of_bound = out_of_bound
        self.records = read_datalist(self.list_file, video=video, num_classes=num_classes)
        for rec in self.records:
            self._check(rec, check_frames)
        self.transform = transform if transform is not None else (
            video_train_transform() if train else video_test_transform())
        self.num_classes = num_classes if num_classes is not None else 1 + max(r.label for r in self.records)
        self.classes = list(range(self.num_classes))
        self.targets = [r.label for r in self.records]
        self.samples = [(f"{self.list_file}:{r.line} {r.path}", r.label) for r in self.records]
        # frame counts of videos listed without one, found by decoding once (per worker process), not per item
        self._frame_counts: dict[int, int] = {}

    def _where(self, rec: VideoRecord) -> str:
        return f"{self.list_file}:{rec.line}:"

    def _frame_path(self, rec: VideoRecord, i: int) -> Path:
        return self.root / rec.path / self.filename_tmpl.format(self.start_index + i)

    def _check(self, rec: VideoRecord, check_frames: bool) -> None:
        path = self.root / rec.path
        if self.video:
            if not path.is_file():
                raise DatalistError(f"{self._where(rec)} video {str(path)!r} does not exist")
            return
        if not path.is_dir():
            raise DatalistError(f"{self._where(rec)} frame folder {str(path)!r} does not exist")
        if check_frames:
            for i in (0, rec.num_frames - 1):
                if not self._frame_path(rec, i).is_file():
                    name = self._frame_path(rec, i).name
                    raise DatalistError(f"{self._where(rec)} {str(path)!r} has no frame {name} (the line "
                                        f"declares {rec.num_frames} frames named {self.filename_tmpl!r} from "
                                        f"{self.start_index})")

    def __len__(self) -> int:
        return len(self.records)

    @staticmethod
    def _rng() -> np.random.Generator:
        """A generator seeded from torch's RNG (the DataLoader seeds it per worker, the engine per run)."""
        return np.random.default_rng(int(torch.randint(0, 2**62, ())))

    def indices(self, index: int, num_frames: int) -> np.ndarray:
        """Frame positions (num_clips * clip_len,) of item ``index`` in a video of ``num_frames`` frames."""
        rec = self.records[index]
        rng = self._rng() if self.train else None
        try:
            if self.sampling == "dense":
                return dense_indices(num_frames, self.clip_len, self.frame_interval, self.num_clips,
                                     self.train, rng, self.out_of_bound)
            return segment_indices(num_frames, self.clip_len, self.num_clips, self.train, rng,
                                   self.out_of_bound)
        except ValueError as exc:
            raise DatalistError(f"{self._where(rec)} {rec.path}: {exc}") from None

    def load_frames(self, index: int) -> Tensor:
        """The sampled frames of item ``index``: (num_clips * clip_len, 3, H, W) uint8."""
        rec = self.records[index]
        if self.video:
            return self._load_video(rec, index)
        idx = self.indices(index, rec.num_frames)
        frames = {}
        for i in sorted(set(idx.tolist())):
            path = self._frame_path(rec, i)
            try:
                frames[i] = _decode_rgb(path)
            except (OSError, RuntimeError) as exc:
                raise DatalistError(f"{self._where(rec)} frame {str(path)!r} cannot be read "
                                    f"({type(exc).__name__}: {exc})") from None
        shapes = {tuple(f.shape) for f in frames.values()}
        if len(shapes) > 1:
            raise DatalistError(f"{self._where(rec)} frames of {rec.path} differ in size: {sorted(shapes)}")
        return torch.stack([frames[i] for i in idx.tolist()])

    def _load_video(self, rec: VideoRecord, index: int) -> Tensor:
        from .video import probe_video, read_video

        path = self.root / rec.path
        try:
            n = rec.num_frames
            if n is None:
                if index not in self._frame_counts:
                    self._frame_counts[index] = probe_video(path).num_frames
                n = self._frame_counts[index]
            idx = self.indices(index, n)
            frames = read_video(path, indices=idx.tolist())
        except (ValueError, FileNotFoundError) as exc:
            if isinstance(exc, DatalistError):
                raise
            raise DatalistError(f"{self._where(rec)} {exc}") from None
        return frames.permute(0, 3, 1, 2)

    def __getitem__(self, index: int):
        rec = self.records[index]
        frames = self.load_frames(index)            # (clips * T, 3, H, W) uint8
        T = self.clip_len
        if self.train:
            clip = self.transform(frames)          # (T, 3, h, w)
            return clip.transpose(0, 1).contiguous(), rec.label
        views = []
        for c in range(self.num_clips):
            crops = self.transform(frames[c * T:(c + 1) * T])     # (crops, T, 3, h, w)
            views.append(crops.transpose(1, 2))
        return torch.cat(views).contiguous(), rec.label
