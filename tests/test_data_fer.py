"""FER readers (RAF-DB basic, AffectNet, FERPlus) on tiny fixtures written in the datasets' real formats (real JPEG
and PNG files drawn with PIL, the official annotation files), the class-balanced sampler weights and the
MAE-SFER / timm transforms."""
from __future__ import annotations

import csv
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from pyvision_fast.data.fer import (AFFECTNET_CLASSES, FERPLUS_CLASSES, RAFDB_CLASSES, AffectNet, FERFormatError,
                                    FERPlus, RAFDB, build_fer_dataset, ferplus_label, load_rgb)
from pyvision_fast.data.samplers import DistributedWeightedSampler, class_balanced_weights, weighted_sampler
from pyvision_fast.data.transforms import rafdb_eval_transform, rafdb_train_transform, timm_transform


def face(label: int, size: int = 40, mode: str = "RGB") -> Image.Image:
    """A synthetic 'face' whose mouth height encodes the label (content only matters for being a real image)."""
    img = Image.new(mode, (size, size), color=(90, 60, 40) if mode == "RGB" else 100)
    d = ImageDraw.Draw(img)
    fill = (240, 220, 200) if mode == "RGB" else 230
    d.ellipse((4, 4, size - 4, size - 4), fill=fill)
    d.rectangle((size // 3, size // 2, 2 * size // 3, size // 2 + 2 + 2 * label), fill=0 if mode == "L" else (0, 0, 0))
    return img


# ---------------------------------------------------------------------------------------------------------------
# fixtures in the official layouts
# ---------------------------------------------------------------------------------------------------------------
def write_rafdb(root: Path, train_labels=(1, 2, 3, 4, 5, 6, 7, 4, 4, 7), test_labels=(1, 4, 7)) -> Path:
    """RAF-DB basic: EmoLabel/list_patition_label.txt + Image/aligned/<stem>_aligned.jpg."""
    (root / "EmoLabel").mkdir(parents=True)
    (root / "Image" / "aligned").mkdir(parents=True)
    lines = []
    for i, lab in enumerate(train_labels, 1):
        lines.append(f"train_{i:05d}.jpg {lab}")
        face(lab).save(root / "Image" / "aligned" / f"train_{i:05d}_aligned.jpg", quality=90)
    for i, lab in enumerate(test_labels, 1):
        lines.append(f"test_{i:04d}.jpg {lab}")
        face(lab).save(root / "Image" / "aligned" / f"test_{i:04d}_aligned.jpg", quality=90)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    return root


AFFECTNET_HEADER = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
                    "expression", "valence", "arousal"]


def write_affectnet(root: Path, train_expr=(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1, 1),
                    val_expr=(0, 1, 2, 3, 4, 5, 6, 7, 9), header=True) -> Path:
    """AffectNet: Manually_Annotated_file_lists/{training,validation}.csv, Manually_Annotated_Images/<sub>/<f>.jpg."""
    lists = root / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True)
    for fname, exprs in (("training.csv", train_expr), ("validation.csv", val_expr)):
        with open(lists / fname, "w", newline="") as f:
            w = csv.writer(f)
            if header:
                w.writerow(AFFECTNET_HEADER)
            for i, e in enumerate(exprs):
                sub = str(100 + i % 3)
                rel = f"{sub}/{fname[:2]}{i:03d}abcdef0123456789.jpg"
                (root / "Manually_Annotated_Images" / sub).mkdir(parents=True, exist_ok=True)
                face(min(e, 7), size=48).save(root / "Manually_Annotated_Images" / rel)
                landmarks = ";".join(f"{v:.2f}" for v in range(10, 146))  # 68 (x, y) points
                w.writerow([rel, 4, 6, 36, 38, landmarks, e, "0.25", "-0.5"])
    return root


FERPLUS_HEADER = ["Usage", "Image name", *FERPLUS_CLASSES, "unknown", "NF"]
# votes: neutral happiness surprise sadness anger disgust fear contempt unknown NF
FERPLUS_ROWS = [
    ("Training", "fer0000000.png", [4, 0, 0, 1, 3, 2, 0, 0, 0, 0]),   # ferplus: 4 of 9 kept votes -> dropped; argmax: 0
    ("Training", "fer0000001.png", [6, 0, 1, 1, 0, 0, 0, 0, 2, 0]),   # 6 of 8 -> neutral
    ("Training", "fer0000002.png", [0, 10, 0, 0, 0, 0, 0, 0, 0, 0]),  # happiness
    ("Training", "fer0000003.png", [0, 0, 6, 0, 0, 0, 4, 0, 0, 0]),   # surprise
    ("Training", "", [0, 0, 0, 0, 0, 0, 0, 0, 0, 10]),                # removed image: no name
    ("Training", "fer0000005.png", [0, 0, 0, 0, 0, 0, 0, 0, 2, 8]),   # NF -> dropped
    ("Training", "fer0000006.png", [4, 0, 0, 4, 2, 0, 0, 0, 0, 0]),   # tie neutral/sadness
    ("Training", "fer0000007.png", [0, 0, 0, 0, 0, 0, 0, 7, 1, 2]),   # contempt
    ("PublicTest", "fer0000008.png", [1, 0, 0, 9, 0, 0, 0, 0, 0, 0]),  # sadness
    ("PrivateTest", "fer0000009.png", [0, 0, 0, 0, 8, 1, 1, 0, 0, 0]),  # anger
    ("PrivateTest", "fer0000010.png", [0, 0, 0, 0, 0, 9, 1, 0, 0, 0]),  # disgust
]


def write_ferplus(root: Path, rows=FERPLUS_ROWS) -> Path:
    """FERPlus: fer2013new.csv + FER2013{Train,Valid,Test}/ferNNNNNNN.png (48x48 grey)."""
    folders = {"Training": "FER2013Train", "PublicTest": "FER2013Valid", "PrivateTest": "FER2013Test"}
    root.mkdir(parents=True, exist_ok=True)
    for f in folders.values():
        (root / f).mkdir()
    with open(root / "fer2013new.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FERPLUS_HEADER)
        for usage, name, votes in rows:
            w.writerow([usage, name, *votes])
            if name:
                face(votes.index(max(votes)) % 8, size=48, mode="L").save(root / folders[usage] / name)
    return root


# ---------------------------------------------------------------------------------------------------------------
# RAF-DB
# ---------------------------------------------------------------------------------------------------------------
def test_rafdb_reads_back(tmp_path):
    root = write_rafdb(tmp_path / "basic")
    train, test = RAFDB(root, "train"), RAFDB(root, "test")
    assert train.classes == RAFDB_CLASSES == ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger",
                                              "Neutral"]
    assert train.targets == [0, 1, 2, 3, 4, 5, 6, 3, 3, 6]  # file labels minus one
    assert test.targets == [0, 3, 6] and len(test) == 3
    assert train.samples[0][0].endswith("Image/aligned/train_00001_aligned.jpg")
    assert train.class_counts() == [1, 1, 1, 3, 1, 1, 2]
    img, target = train[3]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (40, 40) and target == 3
    # "val" is the test split; a folder holding basic/ is accepted
    assert RAFDB(tmp_path, "val").targets == test.targets
    t = RAFDB(root, "train", transform=rafdb_eval_transform(32), target_transform=lambda y: y + 100)
    x, y = t[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 100


@pytest.mark.parametrize("line, message", [
    ("train_00001.jpg", r"list_patition_label.txt:2: expected '<name>.jpg <label 1..7>'"),
    ("train_00001.jpg 4 extra", r":2: expected"),
    ("val_00001.jpg 4", r":2: image name 'val_00001.jpg' is not"),
    ("train_00001.png 4", r":2: image name"),
    ("train_00001.jpg four", r":2: label 'four' is not an integer"),
    ("train_00001.jpg 0", r":2: label 0 outside 1..7"),
    ("train_00001.jpg 8", r":2: label 8 outside 1..7"),
    ("test_0001.jpg 3", r":2: 'test_0001.jpg' repeats line 1"),
])
def test_rafdb_bad_lines(tmp_path, line, message):
    root = tmp_path / "basic"
    (root / "EmoLabel").mkdir(parents=True)
    (root / "Image" / "aligned").mkdir(parents=True)
    face(1).save(root / "Image" / "aligned" / "test_0001_aligned.jpg")
    (root / "EmoLabel" / "list_patition_label.txt").write_text(f"test_0001.jpg 3\n{line}\n")
    with pytest.raises(FERFormatError, match=message):
        RAFDB(root, "test")


def test_rafdb_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"RAF-DB label file .*EmoLabel/list_patition_label.txt"):
        RAFDB(tmp_path, "train")
    root = write_rafdb(tmp_path / "basic")
    (root / "Image" / "aligned" / "train_00002_aligned.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"train_00002_aligned.jpg' listed at .*list_patition_label.txt:2 "
                                                r"does not exist"):
        RAFDB(root, "train")
    assert len(RAFDB(root, "test")) == 3  # the other split is unaffected
    with pytest.warns(UserWarning, match="skipped 1"):
        ds = RAFDB(root, "train", bad_images="skip")
    assert len(ds) == 9 and ds.skipped[0][1] == "missing"
    with pytest.raises(ValueError, match="split must be"):
        RAFDB(root, "validation")


def test_rafdb_empty_split(tmp_path):
    root = write_rafdb(tmp_path / "basic", test_labels=())
    with pytest.raises(FERFormatError, match=r"split 'test'.*no samples"):
        RAFDB(root, "test")


def test_truncated_and_unreadable_images(tmp_path):
    """Decoded once at construction, like ImageFolder: error (default) or skip-and-list."""
    root = write_rafdb(tmp_path / "basic")
    path = root / "Image" / "aligned" / "train_00003_aligned.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated JPEG
    (root / "Image" / "aligned" / "train_00005_aligned.jpg").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match=r"2 image\(s\) cannot be decoded: .*train_00003_aligned.jpg listed at "
                                         r".*list_patition_label.txt:3 \(OSError: image file is truncated"):
        RAFDB(root, "train")
    with pytest.warns(UserWarning, match="skipped 2"):
        ds = RAFDB(root, "train", bad_images="skip")
    assert len(ds) == 8 and sorted(Path(p).name for p, _ in ds.skipped) == ["train_00003_aligned.jpg",
                                                                           "train_00005_aligned.jpg"]
    # without the up-front check, loading the bad file names it
    ds = RAFDB(root, "train", check_images=False)
    assert len(ds) == 10
    with pytest.raises(OSError, match=r"train_00003_aligned.jpg' is unreadable or truncated"):
        ds[2]
    with pytest.raises(OSError, match="unreadable"):
        load_rgb(root / "Image" / "aligned" / "train_00005_aligned.jpg")
    with pytest.raises(ValueError, match="bad_images must be"):
        RAFDB(root, "test", bad_images="ignore")


# ---------------------------------------------------------------------------------------------------------------
# AffectNet
# ---------------------------------------------------------------------------------------------------------------
def test_affectnet_reads_back(tmp_path):
    root = write_affectnet(tmp_path / "AffectNet")
    t7, t8 = AffectNet(root, "train", num_classes=7), AffectNet(root, "train", num_classes=8)
    assert t7.classes == AFFECTNET_CLASSES[:7] and t8.classes == AFFECTNET_CLASSES
    assert AFFECTNET_CLASSES == ["Neutral", "Happiness", "Sadness", "Surprise", "Fear", "Disgust", "Anger",
                                 "Contempt"]
    assert t7.targets == [0, 1, 2, 3, 4, 5, 6, 1, 1]
    assert t8.targets == [0, 1, 2, 3, 4, 5, 6, 7, 1, 1]
    assert t7.dropped == {7: 1, 8: 1, 9: 1, 10: 1} and t8.dropped == {8: 1, 9: 1, 10: 1}
    v8 = AffectNet(root, "val", num_classes=8)
    assert v8.targets == list(range(8)) and v8.dropped == {9: 1}
    assert AffectNet(root, "test", num_classes=8).targets == v8.targets
    img, y = t8[7]
    assert img.size == (48, 48) and y == 7
    assert t8.samples[0][0].endswith("Manually_Annotated_Images/100/tr000abcdef0123456789.jpg")
    cropped = AffectNet(root, "train", num_classes=8, crop_face=True)
    img, y = cropped[7]
    assert img.size == (36, 38) and y == 7  # the face box (x 4, y 6, w 36, h 38)
    assert build_fer_dataset("affectnet7", root, "eval").targets == AffectNet(root, "val").targets


def test_affectnet_headerless_validation(tmp_path):
    root = write_affectnet(tmp_path / "a", header=False)
    assert AffectNet(root, "val", num_classes=8).targets == list(range(8))


def _affectnet_with_row(tmp_path, row, header=AFFECTNET_HEADER):
    root = write_affectnet(tmp_path / "a")
    path = root / "Manually_Annotated_file_lists" / "training.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerow(["100/tr000abcdef0123456789.jpg", 4, 6, 36, 38, "1;2", 1, 0, 0])
        w.writerow(row)
    return root


@pytest.mark.parametrize("row, message", [
    (["100/tr000abcdef0123456789.jpg", 4, 6, 36, 38, "1;2", 11, 0, 0], r"training.csv:3: expression 11 outside 0..10"),
    (["100/tr000abcdef0123456789.jpg", 4, 6, 36, 38, "1;2", -1, 0, 0], r"training.csv:3: expression -1 outside"),
    (["100/tr000abcdef0123456789.jpg", 4, 6, 36, 38, "1;2", "happy", 0, 0], r":3: expression 'happy' is not an int"),
    (["", 4, 6, 36, 38, "1;2", 1, 0, 0], r":3: empty subDirectory_filePath"),
    (["100/tr000abcdef0123456789.jpg", 4, 6], r":3: 3 fields, the header has 9"),
])
def test_affectnet_bad_rows(tmp_path, row, message):
    root = _affectnet_with_row(tmp_path, row)
    with pytest.raises(FERFormatError, match=message):
        AffectNet(root, "train")


def test_affectnet_bad_header_and_files(tmp_path):
    root = _affectnet_with_row(tmp_path, ["100/x.jpg", 1, 1, 1, 1, "", 1, 0, 0],
                               header=["subDirectory_filePath", "face_x", "emotion"])
    with pytest.raises(FERFormatError, match=r"training.csv:1: header lacks column\(s\) \['expression'\]"):
        AffectNet(root, "train")
    root = write_affectnet(tmp_path / "b")
    (root / "Manually_Annotated_file_lists" / "training.csv").write_text("a,b,c\n1,2,3\n")
    with pytest.raises(FERFormatError, match=r"training.csv:1: expected the header subDirectory_filePath"):
        AffectNet(root, "train")
    (root / "Manually_Annotated_file_lists" / "training.csv").write_text("")
    with pytest.raises(FERFormatError, match=r"training.csv:1: empty file"):
        AffectNet(root, "train")
    (root / "Manually_Annotated_file_lists" / "validation.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"AffectNet list file .*validation.csv"):
        AffectNet(root, "val")
    with pytest.raises(FileNotFoundError, match=r"AffectNet image folder .*elsewhere"):
        AffectNet(root, "train", image_dir="elsewhere")
    with pytest.raises(ValueError, match="num_classes must be 7 or 8"):
        AffectNet(root, "train", num_classes=11)
    root = _affectnet_with_row(tmp_path / "c", ["100/gone.jpg", 4, 6, 36, 38, "1;2", 3, 0, 0])
    with pytest.raises(FileNotFoundError, match=r"100/gone.jpg' listed at .*training.csv:3 does not exist"):
        AffectNet(root, "train")
    # a dropped class's missing image is not an error (the row is not used)
    root = _affectnet_with_row(tmp_path / "d", ["100/gone.jpg", 4, 6, 36, 38, "1;2", 9, 0, 0])
    assert AffectNet(root, "train").targets == [1]


# ---------------------------------------------------------------------------------------------------------------
# FERPlus
# ---------------------------------------------------------------------------------------------------------------
def test_ferplus_label_rules():
    # the FERPlus authors' majority: single votes removed, winner needs > half of the remaining votes
    assert ferplus_label([4, 0, 0, 1, 3, 2, 0, 0, 0, 0]) is None       # 4 of 9
    assert ferplus_label([6, 0, 1, 1, 0, 0, 0, 0, 2, 0]) == 0          # 6 of 8 (single votes dropped)
    assert ferplus_label([5, 0, 0, 0, 0, 0, 0, 0, 5, 0]) is None       # 5 of 10 is not a majority
    assert ferplus_label([0, 0, 0, 0, 0, 0, 0, 0, 7, 3]) is None       # unknown wins -> dropped
    assert ferplus_label([0, 0, 0, 0, 0, 0, 0, 0, 0, 10]) is None      # NF
    assert ferplus_label([0] * 10) is None
    # plain plurality
    assert ferplus_label([4, 0, 0, 1, 3, 2, 0, 0, 0, 0], "argmax") == 0
    assert ferplus_label([4, 0, 0, 4, 2, 0, 0, 0, 0, 0], "argmax") is None              # tie dropped
    assert ferplus_label([4, 0, 0, 4, 2, 0, 0, 0, 0, 0], "argmax", ties="first") == 0  # or first in column order
    assert ferplus_label([3, 0, 0, 0, 0, 0, 0, 0, 3, 0], "argmax", ties="first") is None  # ties with unknown drop
    assert ferplus_label([0, 0, 0, 0, 0, 0, 0, 2, 1, 1], "argmax") == 7
    with pytest.raises(ValueError, match="vote must be"):
        ferplus_label([0] * 10, "mean")
    with pytest.raises(ValueError, match="ties must be"):
        ferplus_label([0] * 10, "argmax", ties="last")
    with pytest.raises(ValueError, match="10 vote counts"):
        ferplus_label([1, 2])


def test_ferplus_reads_back(tmp_path):
    root = write_ferplus(tmp_path / "ferplus")
    train = FERPlus(root, "train")
    assert train.classes == FERPLUS_CLASSES == ["neutral", "happiness", "surprise", "sadness", "anger", "disgust",
                                                "fear", "contempt"]
    assert train.targets == [0, 1, 2, 7]
    assert train.dropped == {"no_image": 1, "no_majority": 3}
    assert Path(train.samples[1][0]).relative_to(root).as_posix() == "FER2013Train/fer0000002.png"
    img, y = train[1]
    assert img.mode == "RGB" and img.size == (48, 48) and y == 1  # grey PNG -> 3 channels
    assert FERPlus(root, "val").targets == [3]
    assert FERPlus(root, "test").targets == [4, 5]
    assert build_fer_dataset("ferplus", root, "eval").targets == [4, 5]
    assert FERPlus(root, "train", vote="argmax").targets == [0, 0, 1, 2, 7]
    assert FERPlus(root, "train", vote="argmax", ties="first").targets == [0, 0, 1, 2, 0, 7]


@pytest.mark.parametrize("row, message", [
    (["Training", "fer0000001.png", 1, 2, 3], r"fer2013new.csv:3: 5 fields, expected 12"),
    (["Train", "fer0000001.png", 9, 0, 0, 0, 0, 0, 0, 0, 1, 0], r"fer2013new.csv:3: Usage 'Train' is not one of"),
    (["Training", "fer0000001.png", 9, "x", 0, 0, 0, 0, 0, 0, 1, 0], r":3: vote counts .* are not all numbers"),
    (["Training", "fer0000001.png", 9, -1, 0, 0, 0, 0, 0, 0, 1, 0], r":3: negative or NaN vote count"),
])
def test_ferplus_bad_rows(tmp_path, row, message):
    root = write_ferplus(tmp_path / "f", rows=FERPLUS_ROWS[1:2])
    with open(root / "fer2013new.csv", "a", newline="") as f:
        csv.writer(f).writerow(row)
    with pytest.raises(FERFormatError, match=message):
        FERPlus(root, "train")


def test_ferplus_bad_header_and_files(tmp_path):
    root = write_ferplus(tmp_path / "f")
    text = (root / "fer2013new.csv").read_text().splitlines()
    (root / "fer2013new.csv").write_text("\n".join(["Usage,Image name,neutral,happy"] + text[1:]) + "\n")
    with pytest.raises(FERFormatError, match=r"fer2013new.csv:1: expected the header Usage,Image name,neutral"):
        FERPlus(root, "train")
    (root / "fer2013new.csv").write_text("\n".join(text) + "\n")
    (root / "FER2013Test" / "fer0000010.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"fer0000010.png' listed at .*fer2013new.csv:12 does not exist"):
        FERPlus(root, "test")
    (root / "fer2013new.csv").write_text("\n".join(text[:2]) + "\n")  # only a row that has no majority
    with pytest.raises(FERFormatError, match=r"Usage Training.*no samples"):
        FERPlus(root, "train")
    with pytest.raises(FileNotFoundError, match=r"FERPlus image folder .*FER2013Valid"):
        (root / "FER2013Valid" / "fer0000008.png").unlink()
        (root / "FER2013Valid").rmdir()
        FERPlus(root, "val")
    with pytest.raises(FileNotFoundError, match=r"FERPlus label file .*fer2013new.csv"):
        FERPlus(tmp_path, "train")
    with pytest.raises(ValueError, match="vote must be"):
        FERPlus(root, "train", vote="soft")
    with pytest.raises(ValueError, match="unknown FER dataset 'fer2013'"):
        build_fer_dataset("fer2013", root)


# ---------------------------------------------------------------------------------------------------------------
# sampler
# ---------------------------------------------------------------------------------------------------------------
def test_class_balanced_weights():
    targets = [0] * 12 + [1] * 6 + [2] * 2 + [3] * 1
    w = class_balanced_weights(targets)
    assert w.dtype == torch.float64 and w.shape == (21,)
    per_class = {t: float(w[i]) for i, t in enumerate(targets)}
    assert per_class == {0: 1.0, 1: 2.0, 2: 3.0, 3: 3.0}  # min(12/count, 3)
    uncapped = class_balanced_weights(torch.tensor(targets), max_ratio=None)
    assert float(uncapped[-1]) == 12.0 and float(uncapped[-3]) == 6.0
    # a dataset's targets list, with classes absent
    class DS:
        targets = [5, 5, 5, 2]
    assert class_balanced_weights(DS()).tolist() == [1.0, 1.0, 1.0, 3.0]
    for bad, msg in (([], "no targets"), ([0.5, 1.0], "integer class indices"), ([[0, 1]], "1-D"),
                     ([-1, 0], "negative class index")):
        with pytest.raises(ValueError, match=msg):
            class_balanced_weights(bad)
    with pytest.raises(ValueError, match="max_ratio"):
        class_balanced_weights([0, 1], max_ratio=0.5)


def test_weighted_samplers_balance_and_ddp_split():
    targets = [0] * 90 + [1] * 10
    w = class_balanced_weights(targets)  # class 1 weighted 3x (capped, not 9x)
    s = weighted_sampler(w, seed=1)
    assert isinstance(s, torch.utils.data.WeightedRandomSampler) and len(s) == 100
    draws = [targets[i] for _ in range(20) for i in s]
    share = Counter(draws)[1] / len(draws)
    assert abs(share - 30 / 120) < 0.04  # 10*3 / (90 + 30)
    # DDP: the ranks' indices interleave into one global draw, same length on every rank, new draw per epoch
    ranks = [DistributedWeightedSampler(w, num_replicas=3, rank=r, seed=7) for r in range(3)]
    single = DistributedWeightedSampler(w, num_replicas=1, rank=0, seed=7, num_samples=102)
    parts = [list(r) for r in ranks]
    assert [len(p) for p in parts] == [34, 34, 34] and all(len(r) == 34 for r in ranks)
    merged = [parts[i % 3][i // 3] for i in range(102)]
    assert merged == list(single)
    for r in ranks:
        r.set_epoch(1)
    assert [list(r) for r in ranks] != parts
    assert isinstance(weighted_sampler(w, num_replicas=2, rank=1), DistributedWeightedSampler)
    with pytest.raises(ValueError, match="rank"):
        DistributedWeightedSampler(w, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="non-negative"):
        DistributedWeightedSampler(torch.tensor([1.0, -1.0]), num_replicas=1, rank=0)


# ---------------------------------------------------------------------------------------------------------------
# transforms
# ---------------------------------------------------------------------------------------------------------------
def test_transform_shapes():
    torch.manual_seed(0)
    img = face(3, size=100)
    train, test = rafdb_train_transform(64, reprob=1.0), rafdb_eval_transform(64)
    for _ in range(4):
        x = train(img)
        assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    y = test(img)
    assert y.shape == (3, 64, 64) and torch.equal(y, test(img))  # deterministic
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    assert float((y * std + mean).min()) >= -1e-6 and float((y * std + mean).max()) <= 1 + 1e-6
    assert rafdb_train_transform((48, 32))(img).shape == (3, 48, 32)
    names = [type(t).__name__ for t in rafdb_train_transform().transforms]
    assert names == ["RandomHorizontalFlip", "RandomApply", "Resize", "ToTensor", "Normalize", "RandomErasing"]
    erasing = rafdb_train_transform(reprob=0.25).transforms[-1]
    assert erasing.p == 0.25 and erasing.scale == (0.02, 0.25)
    with pytest.raises(ValueError, match="img_size"):
        rafdb_eval_transform(0)


def test_timm_transform():
    img = face(2, size=100)
    cfg = {"img_size": 32, "reprob": 0.25, "aa": "rand-m9-mstd0.5-inc1"}
    tr, ev = timm_transform(cfg, True), timm_transform(cfg, False)
    assert tr(img).shape == (3, 32, 32) and ev(img).shape == (3, 32, 32)
    text = repr(tr)
    assert "RandAugment" in text and "RandomErasing" in text
    assert "RandAugment" not in repr(timm_transform({"img_size": 32, "aa": "none"}, True))
