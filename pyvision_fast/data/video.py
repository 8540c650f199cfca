"""Video files through PyAV (FFmpeg): the frames of an MP4/AVI/WebM as a uint8 tensor, optionally resized, and
the writer the tests use to make real MP4 fixtures.

    info = probe_video("clip.mp4")                       # VideoInfo(num_frames=..., fps=..., height=..., width=...)
    frames = read_video("clip.mp4", indices=[0, 8, 16], size=(224, 448))   # (3, 224, 448, 3) uint8, RGB

Frames are decoded in presentation order and counted by decoding (a container's declared frame count is often
missing or wrong); ``indices`` may repeat and come in any order. A missing file is ``FileNotFoundError``; a file
FFmpeg cannot open or that holds no video stream or no frame, or an index past the last frame, is ``ValueError``
naming the file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

PathLike = Union[str, os.PathLike]

__all__ = ["VideoInfo", "probe_video", "read_video", "write_video"]


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    height: int
    width: int


def _av():
    try:
        import av
    except ImportError as exc:  # pragma: no cover - av is a pinned dependency of the [train] extra
        raise ImportError("reading videos needs PyAV: pip install av (or pyvision_fast[train])") from exc
    return av


def _open(path: PathLike):
    av = _av()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    try:
        container = av.open(str(path))
    except av.FFmpegError as exc:
        raise ValueError(f"{path}: not a readable video ({exc})") from exc
    if not container.streams.video:
        container.close()
        raise ValueError(f"{path}: holds no video stream")
    return container


def _decoded_frames(path: PathLike, container=None):
    """The decoded frames of the first video stream of ``path`` (of ``container`` when given, which the
    generator then closes)."""
    av = _av()
    container = container if container is not None else _open(path)
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    try:
        yield from container.decode(stream)
    except av.FFmpegError as exc:
        raise ValueError(f"{path}: decoding failed ({exc})") from exc
    finally:
        container.close()


def probe_video(path: PathLike) -> VideoInfo:
    """Frame count (by decoding), frame rate and frame size of the first video stream of ``path``."""
    container = _open(path)
    stream = container.streams.video[0]
    fps = float(stream.average_rate or stream.guessed_rate or 0.0)
    height, width = stream.codec_context.height, stream.codec_context.width
    count = sum(1 for _ in _decoded_frames(path, container))
    if count == 0:
        raise ValueError(f"{path}: the video stream holds no frame")
    return VideoInfo(num_frames=count, fps=fps, height=height, width=width)


def read_video(path: PathLike, indices: Optional[Sequence[int]] = None,
               size: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """Frames of ``path`` as a ``(T, H, W, 3)`` uint8 RGB tensor: all of them, or those at ``indices`` (0-based,
    in the order given), each resized to ``size = (H, W)`` with bilinear interpolation when given."""
    wanted = None if indices is None else [int(i) for i in indices]
    if wanted is not None and any(i < 0 for i in wanted):
        raise ValueError(f"{path}: frame indices must be >= 0, got {min(wanted)}")
    needed = None if wanted is None else set(wanted)
    last = None if wanted is None else max(wanted, default=-1)
    kept: dict[int, np.ndarray] = {}
    frames: list[np.ndarray] = []
    count = 0
    for i, frame in enumerate(_decoded_frames(path)):
        count = i + 1
        if needed is None or i in needed:
            if size is not None:
                array = frame.to_ndarray(format="rgb24", width=int(size[1]), height=int(size[0]),
                                         interpolation="BILINEAR")
            else:
                array = frame.to_ndarray(format="rgb24")
            if needed is None:
                frames.append(array)
            else:
                kept[i] = array
        if last is not None and i >= last:
            break
    if count == 0:
        raise ValueError(f"{path}: the video stream holds no frame")
    if wanted is not None:
        missing = [i for i in wanted if i not in kept]
        if missing:
            raise ValueError(f"{path}: frame {missing[0]} requested but the video has {count} frames")
        frames = [kept[i] for i in wanted]
    if not frames:
        return torch.empty(0, *(size or (0, 0)), 3, dtype=torch.uint8)
    return torch.from_numpy(np.stack(frames))


def write_video(path: PathLike, frames, fps: int = 25, codec: str = "mpeg4", bit_rate: int = 20_000_000) -> Path:
    """Writes ``frames`` ((T, H, W, 3) uint8 RGB, tensor or array; H and W even) to ``path`` (MP4 with
    ``codec``: ``mpeg4`` is always in PyAV's FFmpeg, ``libx264`` usually is) at ``bit_rate`` bits/s (the high
    default keeps small test frames close to what was written). Returns ``path``."""
    av = _av()
    frames = np.asarray(frames.cpu() if isinstance(frames, torch.Tensor) else frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"write_video: frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    if frames.shape[0] == 0 or frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"write_video: need at least one frame and even H, W, got {frames.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = bit_rate
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
