"""data.video: real MP4 files written with PyAV read back frame by frame, selected and resized; bad files are
errors naming them."""
import numpy as np
import pytest
import torch

pytest.importorskip("av")

from pyvision_fast.data.video import probe_video, read_video, write_video  # noqa: E402


def _frames(t=10, h=32, w=64):
    """Frame i: red = 20 i (the frame's identity), a horizontal green ramp, blue 128."""
    fr = np.zeros((t, h, w, 3), np.uint8)
    fr[..., 0] = (20 * np.arange(t))[:, None, None]
    fr[..., 1] = np.linspace(0, 255, w).astype(np.uint8)[None, None, :]
    fr[..., 2] = 128
    return fr


def test_round_trip_and_selection(tmp_path):
    frames = _frames()
    path = write_video(tmp_path / "clip.mp4", frames, fps=25)
    info = probe_video(path)
    assert (info.num_frames, info.height, info.width) == (10, 32, 64) and info.fps == pytest.approx(25)
    video = read_video(path)
    assert video.shape == (10, 32, 64, 3) and video.dtype == torch.uint8
    assert np.abs(video.numpy().astype(int) - frames).mean() < 4  # lossy codec, high bit rate
    picked = read_video(path, indices=[7, 2, 7])
    assert torch.equal(picked[0], video[7]) and torch.equal(picked[1], video[2]) and torch.equal(picked[2], video[7])
    small = read_video(path, indices=[3], size=(16, 32))
    assert small.shape == (1, 16, 32, 3)
    assert abs(small[0, ..., 0].float().mean().item() - 60) < 6  # still frame 3 (red 60)
    assert read_video(path, indices=[]).shape[0] == 0


def test_bad_files_and_indices(tmp_path):
    path = write_video(tmp_path / "clip.mp4", _frames(t=4))
    with pytest.raises(ValueError, match="frame 4 requested but the video has 4 frames"):
        read_video(path, indices=[0, 4])
    with pytest.raises(ValueError, match=">= 0"):
        read_video(path, indices=[-1])
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        read_video(tmp_path / "missing.mp4")
    (tmp_path / "bad.mp4").write_bytes(b"not a video" * 20)
    with pytest.raises(ValueError, match="bad.mp4"):
        probe_video(tmp_path / "bad.mp4")
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="cut.mp4"):
        read_video(truncated)
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "x.mp4", np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "x.mp4", np.zeros((2, 7, 8, 3), np.uint8))
