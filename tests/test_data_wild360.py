"""data.wild360: tiny Wild360 folders in the real layout (list files, ERP MP4 videos written with PyAV,
per-frame .npy GT maps, feature files in the extraction's format) read back as videos and as feature clips;
every bad input is an error naming the file (and the list line)."""
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("av")

from pyvision_fast.data.video import write_video  # noqa: E402
from pyvision_fast.data.wild360 import (GT_DIR, Wild360Features, Wild360FormatError,  # noqa: E402
                                        Wild360Videos, clip_spans, gt_cache_path, read_video_list,
                                        save_atomic, scan_wild360, write_gt_cache)


def blob(h: int, w: int, cy: float, cx: float, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))


def erp_frames(t: int, h: int, seed: int) -> np.ndarray:
    """(t, h, 2h, 3) uint8: a dark noisy panorama with a bright blob moving right by 2 px per frame."""
    rng = np.random.default_rng(seed)
    w = 2 * h
    out = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        spot = blob(h, w, h / 2, (w / 4 + 2 * i) % w, h / 8)
        img = 40 + 200 * spot[..., None] * np.array([1.0, 0.9, 0.6]) + rng.normal(0, 4, (h, w, 3))
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def write_wild360(root: Path, train: dict, test: dict, h: int = 24, gt_h: int = 16, seed: int = 0) -> Path:
    """A Wild360 folder: ``train``/``test`` map video ids to frame counts; every test video gets one GT map
    per frame (a Gaussian on the moving blob, (gt_h, 2 gt_h) float32)."""
    for split, videos in (("train", train), ("test", test)):
        (root / f"{split}.txt").parent.mkdir(parents=True, exist_ok=True)
        (root / f"{split}.txt").write_text("".join(f"{vid}\n" for vid in videos))
        for k, (vid, t) in enumerate(videos.items()):
            write_video(root / "data" / split / f"{vid}.mp4", erp_frames(t, h, seed + k))
            if split == "test":
                gt_dir = root / GT_DIR / f"{vid}.mp4"
                gt_dir.mkdir(parents=True, exist_ok=True)
                for i in range(t):
                    g = blob(gt_h, 2 * gt_h, gt_h / 2, (gt_h / 2 + 2 * i * gt_h / h) % (2 * gt_h), gt_h / 8)
                    np.save(gt_dir / f"{i:05d}.npy", g.astype(np.float32))
    return root


def write_features(folder: Path, vid: str, t: int, n: int = 8, d: int = 4, seed: int = 0) -> None:
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    frame = torch.arange(t, dtype=torch.float32)[:, None, None] + 0.01 * torch.randn(t, n, d, generator=g)
    save_file({"frame": frame.half(), "cls": -frame[:, 0].half()}, str(folder / f"{vid}.safetensors"))


@pytest.fixture(scope="module")
def wild(tmp_path_factory):
    root = tmp_path_factory.mktemp("wild360")
    return write_wild360(root, train={"tr_a": 26, "tr_b": 25}, test={"te_a": 27})


def test_list_files(tmp_path):
    f = tmp_path / "train.txt"
    f.write_text("# Wild360 train\nvidA\n\n  vidB.mp4 \n")
    assert read_video_list(f) == [("vidA", 2), ("vidB", 4)]
    f.write_text("vidA\nvid B\n")
    with pytest.raises(Wild360FormatError, match=r"train.txt:2: expected one video id"):
        read_video_list(f)
    f.write_text("vidA\nvidC\nvidA\n")
    with pytest.raises(Wild360FormatError, match=r"train.txt:3: video 'vidA' is already listed on line 1"):
        read_video_list(f)
    f.write_text("\n# nothing\n")
    with pytest.raises(Wild360FormatError, match="holds no video id"):
        read_video_list(f)
    with pytest.raises(FileNotFoundError, match="list file not found"):
        read_video_list(tmp_path / "test.txt")


def test_clip_spans():
    assert clip_spans(51, 25) == [(0, 25), (25, 50), (50, 51)]
    assert clip_spans(25, 25) == [(0, 25)]
    with pytest.raises(ValueError):
        clip_spans(10, 0)


def test_scan_and_videos(wild):
    train = scan_wild360(wild, "train")
    assert [(v.vid, v.num_frames, v.height, v.width, v.gt_dir) for v in train] == [
        ("tr_a", 26, 24, 48, None), ("tr_b", 25, 24, 48, None)]
    test = scan_wild360(wild, "test")
    assert test[0].gt_dir == wild / GT_DIR / "te_a.mp4" and test[0].where.endswith("test.txt:1")
    videos = Wild360Videos(wild, ("train", "test"), size=(32, 64))
    assert len(videos) == 3
    frames, meta = videos[2]
    assert frames.shape == (27, 32, 64, 3) and frames.dtype == torch.uint8
    assert meta == {"video": "te_a", "split": "test", "num_frames": 27}
    # the blob moves right 2 px per frame (x 4/3 after resizing): columns 16 (frame 0) and 43 (frame 10)
    col = frames.float().mean((1, 3)).argmax(1)
    assert abs(col[0] - 16) <= 2 and abs(col[10] - 43) <= 2


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_bad_layouts(wild, tmp_path):
    root = _copy(wild, tmp_path / "w1")
    (root / "data" / "train" / "tr_b.mp4").unlink()
    with pytest.raises(FileNotFoundError, match=r"train.txt:2: video 'tr_b' is listed but .*tr_b.mp4"):
        scan_wild360(root, "train")
    root = _copy(wild, tmp_path / "w2")
    (root / "test.txt").unlink()
    with pytest.raises(FileNotFoundError, match="test.txt"):
        scan_wild360(root, "test")
    root = _copy(wild, tmp_path / "w3")
    import shutil

    shutil.rmtree(root / GT_DIR / "te_a.mp4")
    with pytest.raises(FileNotFoundError, match=r"test.txt:1: test video 'te_a' has no GT folder"):
        scan_wild360(root, "test")
    assert len(scan_wild360(root, "test", need_gt=False)) == 1
    root = _copy(wild, tmp_path / "w4")
    (root / GT_DIR / "te_a.mp4" / "00013.npy").unlink()
    with pytest.raises(ValueError, match=r"26 GT maps for the 27 frames of video 'te_a'.*missing .*00013"):
        scan_wild360(root, "test")
    root = _copy(wild, tmp_path / "w5")
    np.save(root / GT_DIR / "te_a.mp4" / "00027.npy", np.zeros((16, 32), np.float32))
    with pytest.raises(ValueError, match=r"unexpected .*00027.npy"):
        scan_wild360(root, "test")
    root = _copy(wild, tmp_path / "w6")
    np.save(root / GT_DIR / "te_a.mp4" / "00004.npy", np.zeros((16, 16), np.float32))
    with pytest.raises(ValueError, match=r"00004.npy: a GT map must be 2-D with width = 2 x height"):
        scan_wild360(root, "test")
    (root / GT_DIR / "te_a.mp4" / "00004.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match=r"00004.npy: not a readable .npy"):
        scan_wild360(root, "test")
    with pytest.raises(ValueError, match="split must be one of"):
        scan_wild360(wild, "val")


def test_bad_videos(tmp_path):
    root = write_wild360(tmp_path / "short", train={"tiny": 12}, test={})
    with pytest.raises(ValueError, match=r"tiny.mp4: 12 frames, fewer than the clip length 25"):
        scan_wild360(root, "train")
    assert scan_wild360(root, "train", min_frames=10)[0].num_frames == 12
    root = tmp_path / "square"
    (root / "train.txt").parent.mkdir(parents=True)
    (root / "train.txt").write_text("sq\n")
    write_video(root / "data" / "train" / "sq.mp4", np.zeros((25, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=r"sq.mp4: 32x32 is not an equirectangular video"):
        scan_wild360(root, "train")
    (root / "data" / "train" / "sq.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="sq.mp4"):
        scan_wild360(root, "train")


def test_feature_clips(wild, tmp_path):
    feats = tmp_path / "features"
    for k, (vid, t) in enumerate({"tr_a": 26, "tr_b": 25, "te_a": 27}.items()):
        write_features(feats, vid, t, seed=k)
    train = Wild360Features(wild, feats, "train")
    assert [c for c in train.clips] == [(0, 0, 0, 25), (0, 1, 25, 26), (1, 0, 0, 25)]
    assert (train.num_tokens, train.dim) == (8, 4)
    x, gt, meta = train[1]
    assert x.shape == (1, 9, 4) and x.dtype == torch.float32 and gt is None
    assert meta == {"video": "tr_a", "video_index": 0, "clip": 1, "start": 25}
    # cls first, then the frame's tokens, of frame 25
    assert x[0, 0, 0].item() == pytest.approx(-25, abs=0.05)
    assert x[0, 1:].mean().item() == pytest.approx(25, abs=0.05)
    test = Wild360Features(wild, feats, "test")
    x, gt, meta = test[0]
    assert x.shape == (25, 9, 4) and gt.shape == (25, 120, 240) and gt.dtype == torch.float32
    # GT of frame 10 resized from 16x32 to 120x240 (x7.5): the blob's centre (8, 8 + 10 * 2 * 16 / 24) scaled
    peak = divmod(int(gt[10].argmax()), 240)
    assert abs(peak[0] - (8.5 * 7.5 - 0.5)) <= 4 and abs(peak[1] - ((8.5 + 20 * 16 / 24) * 7.5 - 0.5)) <= 4
    x, gt, meta = test[1]
    assert x.shape == (2, 9, 4) and gt.shape == (2, 120, 240) and meta["start"] == 25
    # the extraction's GT cache gives the same maps without reading the .npy files
    from_npy = torch.cat([test[0][1], test[1][1]])
    write_gt_cache(scan_wild360(wild, "test")[0], feats)
    cached = Wild360Features(wild, feats, "test")
    assert cached.videos[0].gt_dir is None
    assert torch.equal(torch.cat([cached[0][1], cached[1][1]]), from_npy)
    save_atomic({"gt": torch.zeros(26, 120, 240)}, gt_cache_path(feats, "te_a"), {})
    with pytest.raises(ValueError, match=r"gt/te_a.safetensors: GT of 26 frames for the 27"):
        Wild360Features(wild, feats, "test")
    save_atomic({"gt": torch.zeros(27, 60, 120)}, gt_cache_path(feats, "te_a"), {})
    with pytest.raises(ValueError, match=r"GT cache of shape \(27, 60, 120\), expected \(T, 120, 240\)"):
        Wild360Features(wild, feats, "test")
    gt_cache_path(feats, "te_a").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable GT cache"):
        Wild360Features(wild, feats, "test")


def test_feature_errors(wild, tmp_path):
    feats = tmp_path / "features"
    write_features(feats, "tr_a", 26)
    with pytest.raises(FileNotFoundError, match=r"tr_b.safetensors not found .*train.txt:2.*pvf extract"):
        Wild360Features(wild, feats, "train")
    write_features(feats, "tr_b", 25, n=6)
    with pytest.raises(ValueError, match=r"tr_b.safetensors: features of \(N, D\) = \(6, 4\)"):
        Wild360Features(wild, feats, "train")
    (feats / "tr_b.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="tr_b.safetensors: not a readable safetensors"):
        Wild360Features(wild, feats, "train")
    write_features(feats, "te_a", 20)
    with pytest.raises(ValueError, match=r"27 GT maps for the 20 frames of video 'te_a'"):
        Wild360Features(wild, feats, "test")
