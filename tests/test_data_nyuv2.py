"""NYUv2 reader (NDDR-CNN's list files): decoding, joint augmentation, and every bad input named by file and
line. ``write_nyuv2`` writes a tiny learnable set in the official layout, shared with the recipe tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pyvision_fast.data.nyuv2 import NYUv2, decode_normal

# class k of the fixtures: its colour and its surface normal as PNG values (value / 255 * 2 - 1 decodes it)
COLOURS = np.array([(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40)], dtype=np.uint8)
NORMALS = np.array([(128, 128, 255), (255, 128, 128), (128, 255, 128), (0, 128, 128)], dtype=np.uint8)


def _sample(rng: np.random.Generator, h: int, w: int, n_classes: int):
    """Image, label and normal PNG arrays: vertical bands of random classes, each in its colour with noise and
    its normal; a few pixels are unlabelled (255) and a few have no normal (white)."""
    cuts = np.sort(rng.choice(np.arange(2, w - 2), size=2, replace=False))
    classes = rng.integers(0, n_classes, size=3)
    label = np.zeros((h, w), np.uint8)
    for i, (a, b) in enumerate(zip([0, *cuts], [*cuts, w])):
        label[:, a:b] = classes[i]
    image = np.clip(COLOURS[label].astype(np.int16) + rng.integers(-20, 21, size=(h, w, 3)), 0, 255)
    normal = NORMALS[label].copy()
    holes = rng.random((h, w)) < 0.05
    normal[rng.random((h, w)) < 0.05] = 255
    label = np.where(holes, 255, label).astype(np.uint8)
    return image.astype(np.uint8), label, normal


def write_nyuv2(root: Path, n_train: int = 8, n_test: int = 4, h: int = 24, w: int = 32, n_classes: int = 4,
                seed: int = 0) -> Path:
    """``root/list/{training,testing}_{seg,normal_mask}.txt`` with paths like the official ones
    (``/``-prefixed, relative to ``root``), images (every other one a JPEG), 8-bit label PNGs with 255 holes,
    normal PNGs with white (invalid) pixels; returns ``root``."""
    rng = np.random.default_rng(seed)
    (root / "list").mkdir(parents=True, exist_ok=True)
    for split, n, name in (("train", n_train, "training"), ("test", n_test, "testing")):
        seg_lines, normal_lines = [], []
        for i in range(n):
            for sub in ("image", "label40", "normal"):
                (root / "nyu_train_val" / sub).mkdir(parents=True, exist_ok=True)
            image, label, normal = _sample(rng, h, w, n_classes)
            img = f"/nyu_train_val/image/{split}_{i:04d}.{'jpg' if i % 2 else 'png'}"
            Image.fromarray(image).save(root / img.lstrip("/"), quality=95)
            Image.fromarray(label).save(root / f"nyu_train_val/label40/{split}_{i:04d}.png")
            Image.fromarray(normal).save(root / f"nyu_train_val/normal/{split}_{i:04d}.png")
            seg_lines.append(f"{img} /nyu_train_val/label40/{split}_{i:04d}.png")
            normal_lines.append(f"{img} /nyu_train_val/normal/{split}_{i:04d}.png")
        (root / f"list/{name}_seg.txt").write_text("\n".join(seg_lines) + "\n")
        (root / f"list/{name}_normal_mask.txt").write_text("\n".join(normal_lines) + "\n")
    return root


@pytest.fixture
def nyu(tmp_path):
    return write_nyuv2(tmp_path / "nyu_v2")


def test_decode_normal_by_hand():
    rgb = np.array([[[255, 255, 255], [0, 128, 255]], [[255, 255, 254], [51, 204, 0]]], dtype=np.uint8)
    normal, valid = decode_normal(rgb)
    assert normal.shape == (3, 2, 2) and valid.tolist() == [[False, True], [True, True]]
    torch.testing.assert_close(normal[:, 0, 1], torch.tensor([-1.0, 128 / 255 * 2 - 1, 1.0]))
    torch.testing.assert_close(normal[:, 1, 1], torch.tensor([-0.6, 0.6, -1.0]))
    _, masked = decode_normal(rgb, np.array([[1, 0], [1, 1]], dtype=np.uint8))
    assert masked.tolist() == [[False, False], [True, True]]


def test_reads_the_official_layout(nyu):
    test = NYUv2(nyu, "test")
    assert len(test) == 4 and not test.train and test.classes[0] == "wall" and len(test.classes) == 40
    image, label, normal, valid = test[0]
    assert image.shape == (3, 24, 32) and image.dtype == torch.float32
    assert label.shape == (24, 32) and label.dtype == torch.int64
    assert normal.shape == (3, 24, 32) and valid.dtype == torch.bool
    raw_label = np.asarray(Image.open(nyu / "nyu_train_val/label40/test_0000.png"))
    assert torch.equal(label, torch.from_numpy(raw_label.astype(np.int64)))
    assert (label == 255).any() and set(label.unique().tolist()) <= {0, 1, 2, 3, 255}
    raw_normal = np.asarray(Image.open(nyu / "nyu_train_val/normal/test_0000.png"))
    assert torch.equal(valid, torch.from_numpy((raw_normal != 255).any(-1)))
    # ImageNet normalisation of the PNG's pixels
    raw = torch.from_numpy(np.array(Image.open(nyu / "nyu_train_val/image/test_0000.png"))).permute(2, 0, 1)
    expected = (raw / 255.0 - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / \
        torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    torch.testing.assert_close(image, expected)


def test_training_augmentation_is_joint(nyu):
    ds = NYUv2(nyu, "train", crop_size=24, scale_range=(1.0, 1.0))  # crop = height: only x moves
    ref_image, ref_label, ref_normal, ref_valid = ds.load(0)
    ref_image = (ref_image - ds.mean) / ds.std
    flips = set()
    torch.manual_seed(0)
    import random
    random.seed(3)
    for _ in range(12):
        image, label, normal, valid = ds[0]
        assert image.shape == (3, 24, 24) and label.shape == (24, 24) and normal.shape == (3, 24, 24)
        found = False
        for flip in (False, True):
            img_r, lab_r, nor_r, val_r = ref_image, ref_label, ref_normal.clone(), ref_valid
            if flip:
                img_r, lab_r, nor_r, val_r = img_r.flip(-1), lab_r.flip(-1), nor_r.flip(-1), val_r.flip(-1)
                nor_r[0] = -nor_r[0]
            for x0 in range(32 - 24 + 1):
                if torch.allclose(image, img_r[:, :, x0:x0 + 24], atol=1e-5):
                    assert torch.equal(label, lab_r[:, x0:x0 + 24])
                    assert torch.equal(valid, val_r[:, x0:x0 + 24])
                    torch.testing.assert_close(normal, nor_r[:, :, x0:x0 + 24])
                    found = True
                    flips.add(flip)
        assert found
    assert flips == {False, True}


def test_padding_when_the_crop_is_larger(nyu):
    ds = NYUv2(nyu, "train", crop_size=40, scale_range=(1.0, 1.0), mirror=False)
    image, label, normal, valid = ds[1]
    assert image.shape == (3, 40, 40)
    # 24 x 32 content somewhere in 40 x 40: the rest is ignore / invalid / mean colour (0 after normalising)
    assert int((label != 255).sum()) <= 24 * 32 and int((label == 255).sum()) >= 40 * 40 - 24 * 32
    padded = (image.abs().sum(0) == 0)
    assert int(padded.sum()) >= 40 * 40 - 24 * 32 and not valid[padded].any() and (label[padded] == 255).all()


def test_scaling_changes_the_size_before_the_crop(nyu):
    ds = NYUv2(nyu, "train", crop_size=8, scale_range=(0.5, 0.5), mirror=False)
    image, label, _, _ = ds[0]
    assert image.shape == (3, 8, 8) and label.shape == (8, 8)
    assert set(label.unique().tolist()) <= {0, 1, 2, 3, 255}  # nearest resampling keeps labels whole


def _rewrite(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new, 1))


def test_separate_mask_column(nyu):
    Image.fromarray(np.zeros((24, 32), np.uint8)).save(nyu / "mask.png")
    lst = nyu / "list/testing_normal_mask.txt"
    lines = lst.read_text().splitlines()
    lines[0] += " /mask.png"
    lst.write_text("\n".join(lines) + "\n")
    _, _, _, valid = NYUv2(nyu, "test")[0]
    assert not valid.any()


@pytest.mark.parametrize("case, match", [
    ("missing", r"testing_seg.txt:2: .*label40/test_0001.png does not exist"),
    ("columns", r"testing_seg.txt:1: expected 2 space-separated paths, got 1"),
    ("label_value", r"testing_seg.txt:3 .*values \[41\] outside \[0, 40\)"),
    ("size", r"testing_seg.txt:1 .*size mismatch .*image 32x24, label 16x24"),
    ("order", r"testing_normal_mask.txt:1: image .* differs"),
    ("count", r"lists 4 images, .* lists 3"),
    ("no_list", r"training_seg.txt does not exist"),
    ("bad_png", r"testing_seg.txt:4 .*cannot read"),
])
def test_bad_inputs_name_file_and_line(nyu, case, match):
    seg, normal = nyu / "list/testing_seg.txt", nyu / "list/testing_normal_mask.txt"
    split = "test"
    if case == "missing":
        (nyu / "nyu_train_val/label40/test_0001.png").unlink()
    elif case == "columns":
        _rewrite(seg, " /nyu_train_val/label40/test_0000.png", "")
    elif case == "label_value":
        label = np.asarray(Image.open(nyu / "nyu_train_val/label40/test_0002.png")).copy()
        label[3, 3] = 41
        Image.fromarray(label).save(nyu / "nyu_train_val/label40/test_0002.png")
    elif case == "size":
        Image.fromarray(np.zeros((24, 16), np.uint8)).save(nyu / "nyu_train_val/label40/test_0000.png")
    elif case == "order":
        _rewrite(normal, "test_0000.png /", "test_0002.png /")
    elif case == "count":
        normal.write_text("\n".join(normal.read_text().splitlines()[:3]) + "\n")
    elif case == "no_list":
        (nyu / "list/training_seg.txt").unlink()
        split = "train"
    elif case == "bad_png":
        (nyu / "nyu_train_val/normal/test_0003.png").write_bytes(b"not a png")
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        NYUv2(nyu, split)


def test_bad_arguments(tmp_path, nyu):
    with pytest.raises(ValueError, match="split must be one of"):
        NYUv2(nyu, "val")
    with pytest.raises(FileNotFoundError, match="root .* does not exist"):
        NYUv2(tmp_path / "nowhere")
