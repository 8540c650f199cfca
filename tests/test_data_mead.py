"""The MEAD reader (``data.mead``) on a tiny dataset written in exactly its layout (MP4 videos rendered from
the synthetic face with PyAV, (T, 257) coefficient and (T, 68, 2) landmark files): clip discovery, pairs and
intensities, the training windows and their time-aligned targets, linear resampling, and every bad folder or
file as an error naming it. ``write_mead`` is the fixture the recipe and CLI tests use too."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pyvision_fast.data.mead import (EXP_SLICE, MEAD_EMOTIONS, MEADEditPairs, MEADFormatError, latent_shape,
                                     load_coeffs, load_landmarks, load_latents, mead_pairs, resample_sequence,
                                     scan_mead, split_actors, window_starts)

FRAME = 64


def emotion_offset(emotion: str, scale: float = 0.6) -> torch.Tensor:
    """(64,) the expression offset of ``emotion`` in the fixture at full intensity: a fixed random direction
    (seeded by the emotion's index), with a smile for happy."""
    g = torch.Generator().manual_seed(100 + MEAD_EMOTIONS.index(emotion))
    d = torch.randn(64, generator=g) * scale * 0.5
    if emotion == "happy":
        d[1] += scale
    return d


def fixture_latents(coeffs: torch.Tensor, actor_index: int, shape=(4, 16)) -> torch.Tensor:
    """(T, L, D) texture latents of the fixture: a fixed linear map of the expression coefficients plus a
    per-actor constant, so an emotion's latent offset is the map of its expression offset (learnable)."""
    L, D = shape
    g = torch.Generator().manual_seed(7)
    proj = torch.randn(64, L * D, generator=g) * 0.5
    bias = 0.3 * torch.randn(L * D, generator=torch.Generator().manual_seed(50 + actor_index))
    return (coeffs[:, EXP_SLICE] @ proj + bias).view(-1, L, D)


def write_mead(root: Path, actors=("M001", "W002"), emotions=("happy", "sad"), levels=(1, 3),
               clips=("001", "002"), frames: int = 12, videos: bool = True, landmarks: bool = True,
               latents=None) -> Path:
    """Writes ``root/<actor>/{video,coeffs,landmarks}/front/<emotion>/level_<k>/<clip>.*``. Neutral clips hold
    a synthetic talking sequence of ``frames`` frames; the clip of emotion e at level k is that sequence time-
    stretched to ``frames + 2 k`` frames with ``k / 3 * emotion_offset(e)`` added to its expression. Videos
    and landmarks are the synthetic face rendered at 64x64 from the coefficients. ``latents`` (L, D): also
    ``latents/`` files (:func:`fixture_latents`, float16)."""
    from pyvision_fast.data.video import write_video
    from pyvision_fast.face3d.synthetic import synthetic_face_basis, synthetic_talking_sequence
    from pyvision_fast.models import create_model

    basis = synthetic_face_basis(24)
    face = create_model("bfm", basis=basis, image_size=FRAME)
    for a, actor in enumerate(actors):
        for c, clip in enumerate(clips):
            neutral = synthetic_talking_sequence(basis, frames, seed=10 * a + c)
            items = [("neutral", 1, neutral)]
            for emotion in emotions:
                for k in levels:
                    seq = resample_sequence(neutral, frames + 2 * k).clone()
                    seq[:, EXP_SLICE] += k / 3 * emotion_offset(emotion)
                    items.append((emotion, k, seq))
            for emotion, k, coeffs in items:
                rel = Path("front") / emotion / f"level_{k}"
                (root / actor / "coeffs" / rel).mkdir(parents=True, exist_ok=True)
                np.save(root / actor / "coeffs" / rel / f"{clip}.npy", coeffs.numpy())
                if latents is not None:
                    (root / actor / "latents" / rel).mkdir(parents=True, exist_ok=True)
                    np.save(root / actor / "latents" / rel / f"{clip}.npy",
                            fixture_latents(coeffs, a, latents).numpy().astype(np.float16))
                if videos or landmarks:
                    with torch.no_grad():
                        out = face(coeffs) if videos else face.geometry(coeffs)
                if landmarks:
                    (root / actor / "landmarks" / rel).mkdir(parents=True, exist_ok=True)
                    np.save(root / actor / "landmarks" / rel / f"{clip}.npy", out["landmarks"].numpy())
                if videos:
                    img = out["image"] * out["mask"] + 0.3 * (1 - out["mask"])
                    frames_u8 = (img.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1)
                    write_video(root / actor / "video" / rel / f"{clip}.mp4", frames_u8)
    return root


@pytest.fixture(scope="module")
def mead(tmp_path_factory):
    return write_mead(tmp_path_factory.mktemp("mead"), frames=10, videos=False)


def test_scan_and_pairs(mead):
    clips = scan_mead(mead, require=("coeffs", "landmarks"))
    assert len(clips) == 2 * 2 * (1 + 2 * 2)
    assert [str(c) for c in clips[:3]] == ["M001/front/happy/level_1/001", "M001/front/happy/level_1/002",
                                          "M001/front/happy/level_3/001"]
    c = clips[2]
    assert c.coeffs == mead / "M001/coeffs/front/happy/level_3/001.npy" and c.coeffs.is_file()
    assert c.video == mead / "M001/video/front/happy/level_3/001.mp4"
    assert c.label == 4 and c.intensity == 1.0
    pairs = mead_pairs(clips)
    assert len(pairs) == 2 * 2 * 4
    for n, e in pairs:
        assert n.emotion == "neutral" and (n.actor, n.view, n.clip) == (e.actor, e.view, e.clip)
    assert len(scan_mead(mead, actors=["W002"], emotions=("neutral", "sad"))) == 2 * 3
    assert split_actors(["W002", "M001"], None) == (["M001"], ["W002"])
    assert split_actors(["W002", "M001", "M003"], ["M001"]) == (["M003", "W002"], ["M001"])
    assert load_coeffs(c.coeffs).shape == (16, 257) and load_landmarks(c.landmarks).shape == (16, 68, 2)


def test_resample_and_windows():
    t = torch.arange(5.0)[:, None] * torch.tensor([[1.0, -2.0]])    # linear in time
    up = resample_sequence(t, 9)
    assert torch.allclose(up, torch.arange(9.0)[:, None] / 2 * torch.tensor([[1.0, -2.0]]))
    assert torch.allclose(resample_sequence(up, 5), t)
    assert resample_sequence(t, 5) is t
    assert torch.equal(resample_sequence(t[:1], 3), t[:1].expand(3, 2))
    with pytest.raises(ValueError, match="length"):
        resample_sequence(t, 0)
    assert window_starts(10, 4) == [0, 4, 6] and window_starts(8, 4) == [0, 4] and window_starts(3, 4) == []


def test_edit_pairs_items(mead):
    ds = MEADEditPairs(mead, actors=["M001"], seq_len=4)
    assert len(ds.pairs) == 2 * 4 and len(ds) == 8 * 3 and ds.skipped == 0   # windows 0, 4, 6 of 10 frames
    source, target, emotion, intensity, meta = ds[2]
    n, e = ds.pairs[0]
    assert meta == {"actor": "M001", "view": "front", "clip": "001", "emotion": "happy", "level": 1,
                    "start": 6}
    assert source.shape == (4, 257) and target.shape == (4, 64) and source.dtype == torch.float32
    assert emotion.item() == MEAD_EMOTIONS.index("happy") and intensity.item() == pytest.approx(1 / 3)
    assert torch.equal(source, load_coeffs(n.coeffs)[6:10])
    # the target is the emotional clip resampled back to the neutral clip's length: the fixture's offset
    neutral = load_coeffs(n.coeffs)
    stretched_back = resample_sequence(resample_sequence(neutral, 12), 10)   # the fixture's stretch, undone
    expected = stretched_back[6:10, EXP_SLICE] + emotion_offset("happy") / 3
    assert torch.allclose(target, expected, atol=1e-5)
    assert len(MEADEditPairs(mead, seq_len=10)) == 16 and MEADEditPairs(mead, seq_len=10, levels=(3,)).pairs
    with pytest.raises(ValueError, match="shorter than seq_len"):
        MEADEditPairs(mead, seq_len=11)


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_errors_name_the_folder_or_file(mead, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        scan_mead(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="no clip"):
        scan_mead(mead, views=("left_30",))
    with pytest.raises(FileNotFoundError, match="video file"):
        scan_mead(mead, require=("coeffs", "video"))
    with pytest.raises(FileNotFoundError, match="M999"):
        scan_mead(mead, actors=["M999"])
    with pytest.raises(ValueError, match="M999"):
        split_actors(["M001"], ["M999"])

    root = _copy(mead, tmp_path / "a")
    (root / "M001/coeffs/front/joyful/level_1").mkdir(parents=True)
    with pytest.raises(MEADFormatError, match="joyful: unknown emotion"):
        scan_mead(root)
    root = _copy(mead, tmp_path / "b")
    (root / "M001/coeffs/front/happy/level_1").rename(root / "M001/coeffs/front/happy/level_4")
    with pytest.raises(MEADFormatError, match="level_4"):
        scan_mead(root)
    root = _copy(mead, tmp_path / "c")
    (root / "M001/coeffs/front/neutral/level_1").rename(root / "M001/coeffs/front/neutral/level_2")
    with pytest.raises(MEADFormatError, match="neutral clips have level_1 only"):
        scan_mead(root)
    root = _copy(mead, tmp_path / "d")
    bad = root / "W002/coeffs/front/sad/level_3/002.npy"
    np.save(bad, np.zeros((10, 256), np.float32))
    with pytest.raises(MEADFormatError, match=f"{bad}.*257"):
        scan_mead(root)
    bad.write_bytes(b"not numpy")
    with pytest.raises(MEADFormatError, match=str(bad)):
        scan_mead(root)
    root = _copy(mead, tmp_path / "e")
    lm = root / "M001/landmarks/front/sad/level_1/001.npy"
    np.save(lm, np.zeros((3, 68, 2), np.float32))
    with pytest.raises(MEADFormatError, match=f"{lm}: 3 frames"):
        scan_mead(root, require=("coeffs", "landmarks"))
    scan_mead(root)                                                  # landmarks not required: not read
    (root / "M001/landmarks/front/sad/level_1/001.npy").unlink()
    with pytest.raises(FileNotFoundError, match="landmarks file .*001.npy"):
        scan_mead(root, require=("coeffs", "landmarks"))
    root = _copy(mead, tmp_path / "f")
    nan = root / "M001/coeffs/front/happy/level_1/001.npy"
    arr = np.load(nan)
    arr[3, 7] = np.nan
    np.save(nan, arr)
    with pytest.raises(MEADFormatError, match=f"{nan}: non-finite coefficient at frame 3, index 7"):
        load_coeffs(nan)
    with pytest.raises(MEADFormatError, match=str(nan)):
        MEADEditPairs(root, actors=["M001"], seq_len=4)[0]


def test_videos_in_the_layout(tmp_path):
    pytest.importorskip("av")
    from pyvision_fast.data.video import probe_video

    root = write_mead(tmp_path / "mead", actors=("M001",), emotions=("happy",), levels=(2,), clips=("001",),
                      frames=6)
    clips = scan_mead(root, source="video", require=("video", "coeffs", "landmarks"))
    assert [str(c) for c in clips] == ["M001/front/happy/level_2/001", "M001/front/neutral/level_1/001"]
    info = probe_video(clips[0].video)
    assert (info.num_frames, info.height, info.width) == (10, 64, 64)
    assert load_coeffs(clips[0].coeffs).shape[0] == info.num_frames


def test_texture_latents(tmp_path):
    root = write_mead(tmp_path / "mead", actors=("M001",), emotions=("happy",), levels=(3,), clips=("001",),
                      frames=8, videos=False, landmarks=False, latents=(4, 16))
    clip = scan_mead(root, require=("coeffs", "latents"))[0]
    assert latent_shape(clip.latents) == (14, 4, 16)
    lat = load_latents(clip.latents)
    assert lat.shape == (14, 4, 16) and lat.dtype == torch.float32
    ds = MEADEditPairs(root, seq_len=4, latents=True)
    assert ds.latent_shape == (4, 16) and len(ds) == 2
    item = ds[1]
    assert len(item) == 7
    source, _, _, _, meta, src_lat, tgt_lat = item
    n, e = ds.pairs[0]
    assert meta["start"] == 4 and src_lat.shape == (4, 4, 16) and tgt_lat.shape == (4, 4, 16)
    assert torch.equal(src_lat, load_latents(n.latents)[4:8])
    # the emotional clip's latents resampled back to the neutral length: the fixture's latent map of the
    # time-aligned target expression (float16 storage: 1e-2)
    expected = fixture_latents(resample_sequence(load_coeffs(e.coeffs), 8), 0)[4:8]
    torch.testing.assert_close(tgt_lat, expected, atol=2e-2, rtol=1e-2)
    assert len(MEADEditPairs(root, seq_len=4)[0]) == 5          # without latents=True: the 5-tuple

    bad = root / "M001/latents/front/happy/level_3/001.npy"
    np.save(bad, np.zeros((13, 4, 16), np.float16))
    with pytest.raises(MEADFormatError, match=f"{bad}: 13 frames of latents"):
        MEADEditPairs(root, seq_len=4, latents=True)
    np.save(bad, np.zeros((14, 4, 8), np.float16))
    with pytest.raises(MEADFormatError, match="one texture generator"):
        scan_mead(root, require=("coeffs", "latents"))
    np.save(bad, np.zeros((14, 64), np.float32))
    with pytest.raises(MEADFormatError, match=f"{bad}: texture latents must be"):
        scan_mead(root, require=("coeffs", "latents"))
    arr = np.zeros((14, 4, 16), np.float32)
    arr[2, 0, 0] = np.inf
    np.save(bad, arr)
    with pytest.raises(MEADFormatError, match=f"{bad}: non-finite latent at frame 2"):
        load_latents(bad)
    bad.unlink()
    with pytest.raises(FileNotFoundError, match="latents file"):
        MEADEditPairs(root, seq_len=4, latents=True)
