"""Video datalists: the mmaction/MVFNet datalist format over JPEG frame folders and MP4 files written in the
real formats, dense and TSN segment sampling against hand-computed positions, the train and multi-view test
transforms, and every bad input named by file and line."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pyvision_fast.data.video import write_video
from pyvision_fast.data.video_datalist import (DatalistError, ThreeCrop, VideoDatalist, dense_indices,
                                               read_datalist, segment_indices, video_test_transform,
                                               video_train_transform)

H, W = 24, 32


def frame_pixels(label: int, i: int, rng: np.random.Generator) -> np.ndarray:
    """An (H, W, 3) uint8 frame: red bright for label 0, blue bright for label 1 (class evidence), green
    6 * i + 10 (the frame's position, read back by the sampling tests), a little noise."""
    img = np.empty((H, W, 3), np.float64)
    img[..., 0] = 200 if label == 0 else 40
    img[..., 1] = 6 * i + 10
    img[..., 2] = 200 if label == 1 else 40
    img += rng.normal(0, 2, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_frame_dataset(root: Path, videos, list_name: str = "train.txt", tmpl: str = "img_{:05d}.jpg",
                        start: int = 1, seed: int = 0) -> Path:
    """Frame folders ``root/<name>/<tmpl.format(start + i)>`` (JPEG, quality 95) and the datalist
    ``root/<list_name>`` with ``name num_frames label`` lines, for ``videos`` = [(name, num_frames,
    label)]."""
    rng = np.random.default_rng(seed)
    lines = []
    for name, n, label in videos:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(frame_pixels(label, i, rng)).save(folder / tmpl.format(start + i), quality=95)
        lines.append(f"{name} {n} {label}")
    (root / list_name).write_text("\n".join(lines) + "\n")
    return root / list_name


def write_video_dataset(root: Path, videos, list_name: str = "videos.txt", with_counts: bool = False,
                        seed: int = 0) -> Path:
    """MP4 files ``root/<name>.mp4`` and a datalist of ``path label`` (or ``path num_frames label``) lines."""
    rng = np.random.default_rng(seed)
    lines = []
    for name, n, label in videos:
        write_video(root / f"{name}.mp4", np.stack([frame_pixels(label, i, rng) for i in range(n)]))
        lines.append(f"{name}.mp4 {n} {label}" if with_counts else f"{name}.mp4 {label}")
    (root / list_name).write_text("\n".join(lines) + "\n")
    return root / list_name


def positions(frames: torch.Tensor) -> list[int]:
    """The frame positions coded in the green channel of frames (N, 3, H, W) uint8."""
    return [int(round((float(f[1].float().mean()) - 10) / 6)) for f in frames]


def test_read_datalist_and_format_errors(tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text("100218 42 134\n\n# a comment\nsub/dir 7 0\n")
    recs = read_datalist(lst)
    assert [(r.path, r.num_frames, r.label, r.line) for r in recs] == [("100218", 42, 134, 1),
                                                                       ("sub/dir", 7, 0, 4)]
    cases = [("a 3\n", r"list.txt:1: expected 'video_dir num_frames label', got 2 fields"),
             ("a 3 1\nb 3 1 2\n", "list.txt:2: expected"),
             ("a three 1\n", "list.txt:1: frame count and label must be integers"),
             ("a 0 1\n", "list.txt:1: frame count must be >= 1"),
             ("a 3 -1\n", "list.txt:1: label -1 is outside >= 0"),
             ("\n# only a comment\n", "holds no video")]
    for text, message in cases:
        lst.write_text(text)
        with pytest.raises(DatalistError, match=message):
            read_datalist(lst)
    lst.write_text("a 3 1\nb 3 5\n")
    with pytest.raises(DatalistError, match=r"list.txt:2: label 5 is outside \[0, 5\)"):
        read_datalist(lst, num_classes=5)
    lst.write_text("a.mp4 2\nb.mp4 30 1\n")
    assert [(r.num_frames, r.label) for r in read_datalist(lst, video=True)] == [(None, 2), (30, 1)]
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        read_datalist(tmp_path / "nowhere.txt")


def test_dense_sampling_positions():
    # test: (50 - 32 + 1) / 2 = 9.5 frames per clip slot; offsets int(4.75) = 4 and int(14.25) = 14
    assert dense_indices(50, 4, 8, 2, train=False).tolist() == [4, 12, 20, 28, 14, 22, 30, 38]
    assert dense_indices(8, 8, 1, 1, train=False).tolist() == list(range(8))
    rng = np.random.default_rng(0)
    offsets = set()
    for _ in range(200):
        idx = dense_indices(50, 4, 8, 1, train=True, rng=rng)
        assert np.all(np.diff(idx) == 8)
        offsets.add(int(idx[0]))
    assert offsets == set(range(19))   # every offset 0 .. 50 - 32 is drawn, none beyond
    # a video shorter than the clip: clamp (official MVFNet), loop (mmaction2) or error
    assert dense_indices(10, 4, 4, 1, train=True).tolist() == [0, 4, 8, 9]
    assert dense_indices(10, 4, 4, 1, train=False, out_of_bound="loop").tolist() == [0, 4, 8, 2]
    with pytest.raises(ValueError, match="needs frame 12 but the video has 10 frames"):
        dense_indices(10, 4, 4, 1, train=False, out_of_bound="error")


def test_segment_sampling_positions():
    assert segment_indices(16, 4, 1, train=False).tolist() == [2, 6, 10, 14]
    assert segment_indices(16, 4, 2, train=False).tolist() == [1, 5, 9, 13, 3, 7, 11, 15]
    assert segment_indices(3, 4, 1, train=False).tolist() == [0, 1, 1, 2]
    rng = np.random.default_rng(1)
    seen = [set() for _ in range(4)]
    for _ in range(200):
        for k, i in enumerate(segment_indices(17, 4, 1, train=True, rng=rng).tolist()):
            seen[k].add(i)
    assert seen == [set(range(0, 4)), set(range(4, 8)), set(range(8, 12)), set(range(12, 17))]
    with pytest.raises(ValueError, match="4 segments need 4 frames"):
        segment_indices(3, 4, 1, train=True, out_of_bound="error")


def test_three_crop_and_transforms():
    frames = torch.arange(2 * 3 * 4 * 10).reshape(2, 3, 4, 10)
    crops = ThreeCrop(4)(frames)
    assert crops.shape == (3, 2, 3, 4, 4)
    assert torch.equal(crops[0], frames[..., :4]) and torch.equal(crops[1], frames[..., 3:7])
    assert torch.equal(crops[2], frames[..., 6:10])
    tall = ThreeCrop(4)(frames.transpose(-1, -2))
    assert torch.equal(tall[2], frames.transpose(-1, -2)[..., 6:10, :])
    with pytest.raises(ValueError, match="smaller than the crop"):
        ThreeCrop(5)(frames)
    video = torch.full((4, 3, 24, 32), 128, dtype=torch.uint8)
    out = video_test_transform(short_side=32)(video)
    assert out.shape == (3, 4, 3, 32, 32) and out.dtype == torch.float32
    want = (128 / 255 - 0.485) / 0.229
    assert torch.allclose(out[:, :, 0], torch.full_like(out[:, :, 0], want), atol=1e-5)
    assert video_test_transform(short_side=32, crops=1, crop_size=28)(video).shape == (1, 4, 3, 28, 28)
    # training: one crop and one flip for the whole clip: a left-right ramp stays identical across frames
    ramp = torch.arange(32, dtype=torch.uint8).mul(8).expand(4, 3, 24, 32).contiguous()
    torch.manual_seed(0)
    flips = set()
    for _ in range(12):
        clip = video_train_transform(16)(ramp)
        assert clip.shape == (4, 3, 16, 16)
        assert torch.equal(clip[0], clip[3])
        flips.add(bool(clip[0, 0, 0, 0] > clip[0, 0, 0, -1]))
    assert flips == {True, False}


def test_frame_folders_train_and_multi_view_test(tmp_path):
    lst = write_frame_dataset(tmp_path, [("v0", 40, 0), ("v1", 12, 1)])
    train = VideoDatalist(lst, tmp_path, clip_len=4, frame_interval=8, transform=video_train_transform(16))
    assert len(train) == 2 and train.targets == [0, 1] and train.classes == [0, 1]
    assert train.samples[1] == (f"{lst}:2 v1", 1)
    clip, label = train[0]
    assert clip.shape == (3, 4, 16, 16) and clip.dtype == torch.float32 and label == 0
    torch.manual_seed(0)
    for _ in range(5):
        pos = positions(train.load_frames(0))
        assert np.all(np.diff(pos) == 8) and 0 <= pos[0] <= 40 - 32
    assert positions(train.load_frames(1)) == [0, 8, 11, 11]   # 12 frames < 32: offset 0, clamped
    test = VideoDatalist(lst, tmp_path, clip_len=4, frame_interval=8, train=False, num_clips=2,
                         transform=video_test_transform(short_side=32))
    assert positions(test.load_frames(0)) == [2, 10, 18, 26, 6, 14, 22, 30]   # tick (40 - 31) / 2 = 4.5
    assert positions(test.load_frames(1)) == [0, 8, 11, 11] * 2                # clamped to the last frame
    views, label = test[1]
    assert views.shape == (6, 3, 4, 32, 32) and label == 1
    # the views of clip 0 come first; the blue channel (label 1) is bright in all of them
    assert float(views[:, 2].mean()) > 0.5 > float(views[:, 0].mean())
    seg = VideoDatalist(lst, tmp_path, clip_len=4, sampling="segment", train=False,
                        transform=video_test_transform(short_side=32, crops=1, crop_size=24))
    assert positions(seg.load_frames(0)) == [5, 15, 25, 35]
    assert seg[0][0].shape == (1, 3, 4, 24, 24)


def test_frame_name_pattern_and_start_index(tmp_path):
    lst = write_frame_dataset(tmp_path, [("clipA", 9, 0)], tmpl="{:06d}.jpg", start=0)
    assert (tmp_path / "clipA" / "000000.jpg").is_file()
    ds = VideoDatalist(lst, tmp_path, clip_len=3, frame_interval=3, train=False, filename_tmpl="{:06d}.jpg",
                       start_index=0, transform=video_test_transform(short_side=24))
    assert positions(ds.load_frames(0)) == [0, 3, 6]
    with pytest.raises(DatalistError, match=r"train.txt:1: .*has no frame img_00001.jpg \(the line "
                                            r"declares 9"):
        VideoDatalist(lst, tmp_path)
    with pytest.raises(ValueError, match="does not format a frame number"):
        VideoDatalist(lst, tmp_path, filename_tmpl="{name}.jpg")


def test_bad_datasets_name_file_and_line(tmp_path):
    lst = write_frame_dataset(tmp_path, [("v0", 6, 0), ("v1", 6, 1)])
    lst.write_text("v0 6 0\nmissing 6 1\n")
    with pytest.raises(DatalistError, match=r"train.txt:2: frame folder .*missing' does not exist"):
        VideoDatalist(lst, tmp_path)
    lst.write_text("v0 6 0\nv1 9 1\n")   # v1 holds 6 frames, the line declares 9
    with pytest.raises(DatalistError, match=r"train.txt:2: .*has no frame img_00009.jpg"):
        VideoDatalist(lst, tmp_path)
    lst.write_text("v0 6 0\nv1 6 3\n")
    with pytest.raises(DatalistError, match=r"train.txt:2: label 3 is outside \[0, 2\)"):
        VideoDatalist(lst, tmp_path, num_classes=2)
    lst.write_text("v0 6 0\nv1 6 1 extra\n")
    with pytest.raises(DatalistError, match="train.txt:2: expected 'video_dir num_frames label'"):
        VideoDatalist(lst, tmp_path)
    lst.write_text("v0 6 0\nv1 6 1\n")
    short = VideoDatalist(lst, tmp_path, clip_len=4, frame_interval=2, out_of_bound="error", train=False,
                          transform=video_test_transform(short_side=24))
    with pytest.raises(DatalistError, match="train.txt:1: v0: a clip of 4 x 2 frames needs frame 6 but the "
                                            "video has 6 frames"):
        short[0]
    (tmp_path / "v1" / "img_00003.jpg").write_bytes(b"not a jpeg")   # unreadable frame, found when loaded
    ds = VideoDatalist(lst, tmp_path, clip_len=6, frame_interval=1, train=False,
                       transform=video_test_transform(short_side=24))
    with pytest.raises(DatalistError, match=r"train.txt:2: frame .*img_00003.jpg' cannot be read"):
        ds[1]
    with pytest.raises(ValueError, match="sampling must be"):
        VideoDatalist(lst, tmp_path, sampling="uniform")
    with pytest.raises(FileNotFoundError, match="dataset root"):
        VideoDatalist(lst, tmp_path / "nowhere")


def test_mp4_datalists(tmp_path):
    lst = write_video_dataset(tmp_path, [("a", 20, 0), ("b", 10, 1)])
    ds = VideoDatalist(lst, tmp_path, video=True, clip_len=4, frame_interval=4, train=False,
                       transform=video_test_transform(short_side=24))
    assert [r.num_frames for r in ds.records] == [None, None]
    got = ds.load_frames(0)
    assert got.shape == (4, 3, H, W) and positions(got) == [2, 6, 10, 14]   # frames counted by decoding: 20
    assert positions(ds.load_frames(1)) == [0, 4, 8, 9]
    views, label = ds[1]
    assert views.shape == (3, 3, 4, 24, 24) and label == 1
    assert ds._frame_counts == {0: 20, 1: 10}  # each video decoded once to count its frames, not per item
    counted = write_video_dataset(tmp_path, [("a", 20, 0)], list_name="counted.txt", with_counts=True)
    train = VideoDatalist(counted, tmp_path, video=True, clip_len=4, frame_interval=2,
                          transform=video_train_transform(16))
    assert train[0][0].shape == (3, 4, 16, 16)
    (tmp_path / "counted.txt").write_text("a.mp4 30 0\n")   # declares more frames than the file holds
    over = VideoDatalist(counted, tmp_path, video=True, clip_len=4, frame_interval=8, train=False,
                         transform=video_test_transform(short_side=24))
    with pytest.raises(DatalistError, match=r"counted.txt:1: .*a.mp4: frame 2\d requested but the video "
                                            r"has 20"):
        over[0]
    (tmp_path / "counted.txt").write_text("a.mp4 0\nnothere.mp4 1\n")
    with pytest.raises(DatalistError, match=r"counted.txt:2: video .*nothere.mp4' does not exist"):
        VideoDatalist(counted, tmp_path, video=True)
