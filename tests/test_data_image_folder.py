"""ImageFolder: classes and labels from the folder layout, real PNG/JPEG files, and the errors of bad folders."""
import numpy as np
import pytest
import torch
from PIL import Image
from train_fixtures import CLASSES, write_image_folder

from pyvision_fast.data import ImageFolder


@pytest.fixture
def data(tmp_path):
    return write_image_folder(tmp_path / "data", n_train=3, n_val=2, size=16)


def test_reads_classes_labels_and_both_formats(data):
    ds = ImageFolder(data / "train")
    assert ds.classes == sorted(CLASSES) and len(ds) == 4 * 3
    assert ds.targets == [ds.class_to_idx[c] for c in sorted(CLASSES) for _ in range(3)]
    assert {p.rsplit(".", 1)[1] for p, _ in ds.samples} == {"png", "jpg"}
    image, label = ds[4]
    assert image.mode == "RGB" and image.size == (16, 16) and label == 1
    to_tensor = ImageFolder(data / "val", transform=lambda im: torch.from_numpy(np.array(im)), classes=ds.classes)
    x, _ = to_tensor[0]
    assert x.shape == (16, 16, 3) and x.dtype == torch.uint8


def test_validation_split_uses_training_classes(data):
    (data / "val" / sorted(CLASSES)[0]).rename(data / "val" / "zz_unseen")
    with pytest.raises(ValueError, match=r"zz_unseen.*outside the range \[0, 4\)"):
        ImageFolder(data / "val", classes=ImageFolder(data / "train").classes)


def test_missing_and_empty_folders(data, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolder(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no class sub-folders"):
        ImageFolder(data / "train" / "flat")
    empty = data / "train" / "empty_class"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="without images.*empty_class"):
        ImageFolder(data / "train")


def test_truncated_image_is_an_error_or_skipped_and_counted(data):
    victim = sorted((data / "train" / "checker").glob("*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[:200])  # a JPEG cut short: opens, fails to decode
    (data / "train" / "checker" / "zz_garbage.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=r"2 image\(s\).*cannot be decoded.*" + victim.name):
        ImageFolder(data / "train")
    with pytest.warns(UserWarning, match=r"skipped 2 image\(s\)"):
        ds = ImageFolder(data / "train", bad_images="skip")
    assert len(ds) == 4 * 3 - 1 and len(ds.skipped) == 2
    assert str(victim) not in [p for p, _ in ds.samples]
    with pytest.raises(ValueError, match="bad_images"):
        ImageFolder(data / "train", bad_images="ignore")
