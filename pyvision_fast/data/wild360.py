"""Wild360 (360° video saliency; PAVER, shared/papers.md section 2) in its real layout, as raw videos for
feature extraction and as cached per-video features cut into clips for training and evaluation.

Layout of the dataset folder ``root`` (``HS-YN/PAVER:code/data/wild360.py``)::

    train.txt, test.txt                      one video id per line (the MP4's name without ``.mp4``)
    data/{train,test}/{vid}.mp4              equirectangular (ERP) videos, width = 2 x height
    Wild360_GT_29/{vid}.mp4/{i:05d}.npy      test videos: the GT saliency map of frame i (0-based), a
                                             2-D float map (960x1920 in the real set), one file per frame

Choices where the official code is silent or implicit, checked when a dataset is built (before any training):

* List files: blank lines and ``#`` comments are skipped; a line with spaces, a repeated id or a list without
  any id is a ``Wild360FormatError`` (``ValueError``) starting ``<file>:<line>:``. A listed video without its
  MP4, or a test video without its GT folder, is a ``FileNotFoundError`` naming the path and the
  ``<file>:<line>``.
* Frames: every decoded frame is used (PAVER does not resample the frame rate), resized to
  :data:`FRAME_SIZE` = 224x448 by :func:`pyvision_fast.data.video.read_video` (bilinear; PAVER's ffmpeg
  ``scale`` filter is bicubic by default). A video whose width is not twice its height is an error naming it.
* GT: test videos need files ``00000.npy`` .. ``{n-1:05d}.npy`` for exactly the video's ``n`` decoded frames
  (frame i ↔ GT i, PAVER's indexing); a gap, an extra or missing file, or a map that is not 2-D with width =
  2 x height is an error naming the file. Maps are resized to :data:`GT_SIZE` = 120x240 (PAVER's ``eval_res``)
  with :func:`pyvision_fast.metrics.saliency.resize_map` (Lanczos) when loaded.
* Clips: each video is cut into consecutive clips of ``clip_length`` (25) frames; the last clip keeps the
  frames left (PAVER zero-pads it to 25 and masks the padding; an unpadded clip is the same for per-frame
  metrics and keeps padding out of the loss). A video shorter than ``clip_length`` is an error (Wild360's
  videos are far longer, so such a file is truncated); ``min_frames`` lowers the limit.

Items: :class:`Wild360Videos` (extraction) gives ``(frames (T, 224, 448, 3) uint8 RGB, meta)`` per video;
:class:`Wild360Features` gives ``(features (T, 1 + N, D) float32, gt (T, 120, 240) float32 or None, meta)``
per clip, ``features[:, 0]`` the ``cls`` token; ``meta = {"video", "video_index", "clip", "start"}``.

Feature files (written by ``pvf extract paver``, :mod:`pyvision_fast.train.extract`):
``{features}/{vid}.safetensors`` holding ``frame`` (T, N, D) and ``cls`` (T, D), float16 by default (float32
on request), with the extraction's settings in the file's metadata; for test videos also
``{features}/gt/{vid}.safetensors`` holding ``gt`` (T, 120, 240) float32, the GT maps already resized (reading
Wild360's 960x1920 ``.npy`` maps and resizing them costs about 0.1 s a frame, at every evaluation otherwise).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from .video import probe_video, read_video

__all__ = [
    "CLIP_LENGTH", "FRAME_SIZE", "GT_SIZE", "GT_DIR", "SPLITS", "Wild360FormatError", "Wild360Video",
    "read_video_list", "clip_spans", "scan_wild360", "gt_path", "load_gt", "Wild360Videos", "Wild360Features",
    "feature_path", "read_feature_header", "gt_cache_path", "gt_cache_frames", "write_gt_cache",
    "save_atomic",
]

PathLike = Union[str, os.PathLike]

CLIP_LENGTH = 25
FRAME_SIZE = (224, 448)   # (H, W) of the frames the encoder sees
GT_SIZE = (120, 240)      # (H, W) of the evaluation maps
GT_DIR = "Wild360_GT_29"
SPLITS = ("train", "test")


class Wild360FormatError(ValueError):
    """A list file that does not follow the format; the message starts with ``<file>:<line>:``."""


@dataclass(frozen=True)
class Wild360Video:
    """One listed video: its id, split, MP4 path, the list line naming it, and (when scanned) its frame count
    and original size, and its GT folder (test split) or None."""

    vid: str
    split: str
    path: Path
    where: str                       # "<list file>:<line>"
    num_frames: Optional[int] = None
    height: Optional[int] = None
    width: Optional[int] = None
    gt_dir: Optional[Path] = None


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"Wild360 split must be one of {SPLITS}, got {split!r}")


def read_video_list(path: PathLike) -> list[tuple[str, int]]:
    """``[(video id, line number)]`` of a ``train.txt``/``test.txt`` (module docstring for the format)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Wild360 list file not found: {path}")
    out, seen = [], {}
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        vid = line.strip()
        if not vid or vid.startswith("#"):
            continue
        if any(c.isspace() for c in vid):
            raise Wild360FormatError(f"{path}:{n}: expected one video id, got {line!r}")
        if vid.endswith(".mp4"):
            vid = vid[:-4]
        if vid in seen:
            raise Wild360FormatError(f"{path}:{n}: video {vid!r} is already listed on line {seen[vid]}")
        seen[vid] = n
        out.append((vid, n))
    if not out:
        raise Wild360FormatError(f"{path}:1: the list holds no video id")
    return out


def clip_spans(num_frames: int, clip_length: int = CLIP_LENGTH) -> list[tuple[int, int]]:
    """``[(start, stop)]`` of the consecutive clips of a video; the last one is shorter when the length does
    not divide ``num_frames``."""
    if clip_length < 1:
        raise ValueError(f"clip_length must be >= 1, got {clip_length}")
    return [(s, min(s + clip_length, num_frames)) for s in range(0, num_frames, clip_length)]


def gt_path(gt_dir: Path, frame: int) -> Path:
    return gt_dir / f"{frame:05d}.npy"


def _check_gt(video: Wild360Video, num_frames: int) -> None:
    """The GT folder of ``video`` holds exactly frames 0..num_frames-1, each a 2-D 2:1 map."""
    names = sorted(p.name for p in video.gt_dir.glob("*.npy"))
    expected = [gt_path(video.gt_dir, i).name for i in range(num_frames)]
    if names != expected:
        missing = sorted(set(expected) - set(names))
        extra = sorted(set(names) - set(expected))
        what = f"missing {video.gt_dir / missing[0]}" if missing else f"unexpected {video.gt_dir / extra[0]}"
        raise ValueError(f"{video.gt_dir}: {len(names)} GT maps for the {num_frames} frames of video "
                         f"{video.vid!r} ({video.where}); {what}")
    for i in range(num_frames):
        file = gt_path(video.gt_dir, i)
        try:
            shape = np.load(file, mmap_mode="r").shape
        except (ValueError, OSError) as exc:
            raise ValueError(f"{file}: not a readable .npy map ({exc})") from exc
        if len(shape) != 2 or shape[1] != 2 * shape[0]:
            raise ValueError(f"{file}: a GT map must be 2-D with width = 2 x height, got shape {shape}")


def scan_wild360(root: PathLike, split: str, *, need_gt: Optional[bool] = None, probe: bool = True,
                 clip_length: int = CLIP_LENGTH, min_frames: Optional[int] = None) -> list[Wild360Video]:
    """The videos of ``split`` listed in ``root/{split}.txt``, each checked (module docstring). ``probe``
    decodes every video once to count its frames and check its ERP aspect and length; ``need_gt`` (default:
    the test split) checks the GT folders against those counts (it needs ``probe``)."""
    _check_split(split)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Wild360 folder not found: {root}")
    need_gt = split == "test" if need_gt is None else need_gt
    min_frames = clip_length if min_frames is None else min_frames
    list_file = root / f"{split}.txt"
    videos = []
    for vid, line in read_video_list(list_file):
        where = f"{list_file}:{line}"
        path = root / "data" / split / f"{vid}.mp4"
        if not path.is_file():
            raise FileNotFoundError(f"{where}: video {vid!r} is listed but {path} does not exist")
        gt_dir = None
        if need_gt:
            gt_dir = root / GT_DIR / f"{vid}.mp4"
            if not gt_dir.is_dir():
                raise FileNotFoundError(f"{where}: test video {vid!r} has no GT folder {gt_dir}")
        video = Wild360Video(vid, split, path, where, gt_dir=gt_dir)
        if probe:
            info = probe_video(path)
            if info.width != 2 * info.height:
                raise ValueError(f"{path}: {info.width}x{info.height} is not an equirectangular video "
                                 f"(width must be 2 x height)")
            if info.num_frames < min_frames:
                raise ValueError(f"{path}: {info.num_frames} frames, fewer than the clip length {min_frames}")
            video = Wild360Video(vid, split, path, where, info.num_frames, info.height, info.width, gt_dir)
            if need_gt:
                _check_gt(video, info.num_frames)
        videos.append(video)
    return videos


def load_gt(gt_dir: Path, frames: range, size: tuple[int, int] = GT_SIZE) -> torch.Tensor:
    """GT maps of ``frames`` from ``gt_dir``, resized to ``size`` (Lanczos): a ``(T, H, W)`` float32
    tensor."""
    from ..metrics.saliency import resize_map

    maps = []
    for i in frames:
        file = gt_path(gt_dir, i)
        try:
            m = np.load(file)
        except (ValueError, OSError) as exc:
            raise ValueError(f"{file}: not a readable .npy map ({exc})") from exc
        try:
            maps.append(resize_map(m, size))
        except ValueError as exc:
            raise ValueError(f"{file}: {exc}") from exc
    return torch.from_numpy(np.stack(maps).astype(np.float32))


class Wild360Videos(Dataset):
    """The videos of one split (or of ``("train", "test")``), for feature extraction: item ``i`` is
    ``(frames (T, H, W, 3) uint8, meta)`` with every decoded frame resized to ``size``; ``meta`` = ``{"video",
    "split", "num_frames"}``. Built with :func:`scan_wild360` (probing every video, GT not checked unless
    ``need_gt``)."""

    def __init__(self, root: PathLike, splits=("train", "test"), size: tuple[int, int] = FRAME_SIZE,
                 clip_length: int = CLIP_LENGTH, need_gt: Optional[bool] = None) -> None:
        splits = (splits,) if isinstance(splits, str) else tuple(splits)
        self.root, self.size = Path(root), tuple(size)
        self.videos = [v for s in splits
                       for v in scan_wild360(root, s, need_gt=need_gt, clip_length=clip_length)]

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int):
        v = self.videos[i]
        frames = read_video(v.path, size=self.size)
        if frames.shape[0] != v.num_frames:
            raise ValueError(f"{v.path}: decoded {frames.shape[0]} frames, {v.num_frames} when probed")
        return frames, {"video": v.vid, "split": v.split, "num_frames": v.num_frames}


def feature_path(features: PathLike, vid: str) -> Path:
    return Path(features) / f"{vid}.safetensors"


def gt_cache_path(features: PathLike, vid: str) -> Path:
    """Where ``pvf extract paver`` caches a test video's GT maps at :data:`GT_SIZE`:
    ``{features}/gt/{vid}``."""
    return Path(features) / "gt" / f"{vid}.safetensors"


def save_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Writes a safetensors file (its folder created) through a temporary file and a rename, so no partial file is
    ever seen (``models.save_safetensors``)."""
    from ..models.weights import save_safetensors

    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(tensors, path, metadata=metadata)


def write_gt_cache(video: Wild360Video, features: PathLike, size: tuple[int, int] = GT_SIZE) -> Path:
    """Caches the GT maps of a scanned test ``video`` (all its frames, resized to ``size`` with Lanczos) as
    ``gt`` (T, H, W) float32 in :func:`gt_cache_path`, so that evaluations read 115 KB per frame instead of
    Wild360's 7.4 MB ``.npy`` maps."""
    if video.gt_dir is None or video.num_frames is None:
        raise ValueError(f"video {video.vid!r} was scanned without its GT")
    path = gt_cache_path(features, video.vid)
    maps = load_gt(video.gt_dir, range(video.num_frames), size)
    save_atomic({"gt": maps}, path, {"video": video.vid, "gt_size": f"{size[0]}x{size[1]}",
                                     "resample": "lanczos", "num_frames": str(video.num_frames)})
    return path


def gt_cache_frames(path: Path, size: tuple[int, int]) -> int:
    """The frame count of a GT cache file whose maps are of ``size``; an error naming the file otherwise."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            shape = tuple(f.get_slice("gt").get_shape())
    except Exception as exc:  # safetensors' SafetensorError is no OSError/ValueError
        raise ValueError(f"{path}: not a readable GT cache ({exc}); delete it to rebuild") from exc
    if len(shape) != 3 or shape[1:] != tuple(size):
        raise ValueError(f"{path}: GT cache of shape {shape}, expected (T, {size[0]}, {size[1]}); delete it "
                         "to rebuild")
    return shape[0]


def read_feature_header(path: Path) -> tuple[tuple[int, ...], tuple[int, ...], dict]:
    """Shapes of ``frame`` and ``cls`` in a feature file and its metadata, without reading the tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = sorted(f.keys())
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors' SafetensorError (a bad header) is no OSError/ValueError
        raise ValueError(f"{path}: not a readable safetensors feature file ({exc})") from exc
    if keys != ["cls", "frame"]:
        raise ValueError(f"{path}: a feature file holds 'frame' and 'cls', found {keys}")
    frame, cls = shapes["frame"], shapes["cls"]
    if len(frame) != 3 or len(cls) != 2 or frame[0] != cls[0] or frame[2] != cls[1]:
        raise ValueError(f"{path}: expected frame (T, N, D) and cls (T, D), got {frame} and {cls}")
    return frame, cls, meta


class Wild360Features(Dataset):
    """Cached encoder features of one split cut into clips: item = ``(features (T, 1 + N, D) float32, gt
    (T, 120, 240) float32 or None, meta)`` (module docstring). Every listed video needs
    ``{features}/{vid}.safetensors`` (a missing one is a ``FileNotFoundError`` saying to run ``pvf extract
    paver``); all files must agree on N and D. With ``with_gt`` (default: the test split) the GT maps come
    from the extraction's cache (:func:`gt_cache_path`) when there is one, else from the GT folders, which are
    then checked against the feature files' frame counts when the dataset is built; either must cover every
    frame."""

    def __init__(self, root: PathLike, features: PathLike, split: str, clip_length: int = CLIP_LENGTH,
                 with_gt: Optional[bool] = None, gt_size: tuple[int, int] = GT_SIZE) -> None:
        _check_split(split)
        self.with_gt = split == "test" if with_gt is None else with_gt
        self.root, self.features, self.split = Path(root), Path(features), split
        self.clip_length, self.gt_size = clip_length, tuple(gt_size)
        self.videos = scan_wild360(root, split, need_gt=False, probe=False)
        self.clips: list[tuple[int, int, int, int]] = []   # (video index, clip, start, stop)
        self.num_frames: list[int] = []
        shape = None
        for index, v in enumerate(self.videos):
            path = feature_path(features, v.vid)
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found (video {v.vid!r}, {v.where}): run `pvf extract "
                                        f"paver --data {root} --output {features}` first")
            frame, _, _ = read_feature_header(path)
            if shape is None:
                shape, first = frame[1:], path
            elif frame[1:] != shape:
                raise ValueError(f"{path}: features of (N, D) = {frame[1:]}, but {first} has {shape}")
            if frame[0] < 1:
                raise ValueError(f"{path}: holds no frame")
            cache = gt_cache_path(features, v.vid)
            if self.with_gt and cache.is_file():
                if gt_cache_frames(cache, self.gt_size) != frame[0]:
                    raise ValueError(f"{cache}: GT of {gt_cache_frames(cache, self.gt_size)} frames for the "
                                     f"{frame[0]} of {path}; delete it to rebuild")
                self.videos[index] = Wild360Video(v.vid, v.split, v.path, v.where, frame[0])
            elif self.with_gt:
                gt_dir = self.root / GT_DIR / f"{v.vid}.mp4"
                if not gt_dir.is_dir():
                    raise FileNotFoundError(f"{v.where}: test video {v.vid!r} has no GT folder {gt_dir}")
                v = Wild360Video(v.vid, v.split, v.path, v.where, frame[0], gt_dir=gt_dir)
                self.videos[index] = v
                _check_gt(v, frame[0])
            self.num_frames.append(frame[0])
            for k, (start, stop) in enumerate(clip_spans(frame[0], clip_length)):
                self.clips.append((index, k, start, stop))
        self.num_tokens, self.dim = shape

    def __len__(self) -> int:
        return len(self.clips)

    def load(self, video_index: int, start: int, stop: int, with_gt: Optional[bool] = None):
        """Frames ``start:stop`` of video ``video_index``: ``(features (T, 1 + N, D) float32, gt (T, 120, 240)
        float32 or None)``; ``with_gt`` defaults to the dataset's."""
        from safetensors import safe_open

        v = self.videos[video_index]
        with safe_open(str(feature_path(self.features, v.vid)), framework="pt") as f:
            frame = f.get_slice("frame")[start:stop]
            cls = f.get_slice("cls")[start:stop]
        features = torch.cat([cls[:, None], frame], dim=1).float()
        gt = None
        if self.with_gt if with_gt is None else with_gt:
            if v.gt_dir is None:  # the extraction's cache
                with safe_open(str(gt_cache_path(self.features, v.vid)), framework="pt") as f:
                    gt = f.get_slice("gt")[start:stop].float()
            else:
                gt = load_gt(v.gt_dir, range(start, stop), self.gt_size)
        return features, gt

    def __getitem__(self, i: int):
        index, k, start, stop = self.clips[i]
        features, gt = self.load(index, start, stop)
        meta = {"video": self.videos[index].vid, "video_index": index, "clip": k, "start": start}
        return features, gt, meta
