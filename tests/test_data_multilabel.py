"""Multi-label readers (``data.multilabel``): MS-COCO instances JSON (non-contiguous category ids ->
multi-hot, unlabelled images dropped) and NUS-WIDE's image lists and per-concept label files, written as tiny
fixtures in those formats with real JPEGs whose content is their labels (coloured shapes); every bad input
named."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from pyvision_fast.data.multilabel import CocoMultiLabel, NusWide, read_coco_instances

# COCO-style categories with gaps in the ids (COCO's 80 run 1..90)
CATEGORIES = [{"id": 1, "name": "red square", "supercategory": "shape"},
              {"id": 3, "name": "green disc", "supercategory": "shape"},
              {"id": 7, "name": "blue bar", "supercategory": "shape"},
              {"id": 12, "name": "yellow cross", "supercategory": "shape"}]
COLOURS = [(230, 30, 30), (30, 200, 30), (40, 40, 230), (230, 220, 30)]


def draw_shapes(labels, size: int, rng: np.random.Generator) -> Image.Image:
    """An RGB image (size x size) on a grey, noisy background with one shape per label index (0: red square,
    1: green disc, 2: blue bar, 3: yellow cross) at a random place."""
    bg = np.clip(rng.normal(120, 15, size=(size, size, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(bg)
    d = ImageDraw.Draw(img)
    s = size // 3
    for k in labels:
        x, y = (int(v) for v in rng.integers(0, size - s, size=2))
        c = COLOURS[k]
        if k == 0:
            d.rectangle([x, y, x + s, y + s], fill=c)
        elif k == 1:
            d.ellipse([x, y, x + s, y + s], fill=c)
        elif k == 2:
            d.rectangle([x, y + s // 3, x + s, y + 2 * s // 3], fill=c)
        else:
            d.rectangle([x + s // 3, y, x + 2 * s // 3, y + s], fill=c)
            d.rectangle([x, y + s // 3, x + s, y + 2 * s // 3], fill=c)
    return img


def write_coco(root, split: str = "train2014", n: int = 12, size: int = 48, seed: int = 0, empty: int = 1):
    """``root/annotations/instances_<split>.json`` + ``root/<split>/COCO_<split>_<id:012d>.jpg``: ``n`` images
    with 1-3 random shapes each (one COCO annotation per shape, with bbox/area/iscrowd) and ``empty`` more
    images without any annotation. Returns the (n + empty, 4) bool label matrix in file order."""
    rng = np.random.default_rng(seed)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / split).mkdir(parents=True, exist_ok=True)
    images, anns, labels = [], [], []
    for i in range(n + empty):
        image_id = 1000 + 7 * i
        present = sorted(rng.choice(4, size=int(rng.integers(1, 4)), replace=False).tolist()) if i < n else []
        name = f"COCO_{split}_{image_id:012d}.jpg"
        draw_shapes(present, size, rng).save(root / split / name, quality=95)
        images.append({"id": image_id, "file_name": name, "width": size, "height": size})
        for k in present:
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": CATEGORIES[k]["id"],
                         "bbox": [0, 0, 8, 8], "area": 64.0, "iscrowd": 0, "segmentation": []})
        labels.append([k in present for k in range(4)])
    data = {"info": {"description": "fixture"}, "images": images, "annotations": anns,
            "categories": CATEGORIES[::-1]}  # out of id order on purpose
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return np.array(labels, dtype=bool)


CONCEPTS = ["animal", "beach", "clouds"]


def write_nuswide(root, n_train: int = 5, n_test: int = 3, seed: int = 0):
    """The NUS-WIDE release layout with 3 concepts: ``Concepts81.txt``,
    ``ImageList/{Train,Test}Imagelist.txt`` (Windows paths),
    ``Groundtruth/TrainTestLabels/Labels_<c>_{Train,Test}.txt``, ``Flickr/<folder>/<n>.jpg``. The first image
    of each split has no concept. Returns {split: labels (n, 3) bool}."""
    rng = np.random.default_rng(seed)
    (root / "ImageList").mkdir(parents=True)
    (root / "Groundtruth" / "TrainTestLabels").mkdir(parents=True)
    (root / "Concepts81.txt").write_text("\n".join(CONCEPTS) + "\n")
    out = {}
    for split, n in (("Train", n_train), ("Test", n_test)):
        labels = rng.random((n, 3)) < 0.5
        labels[0] = False
        labels[1:, 0] |= ~labels[1:].any(1)
        names = []
        for i in range(n):
            folder = ["actor", "zebra"][i % 2]
            name = f"{i:04d}_{2124494179 + i}.jpg"
            (root / "Flickr" / folder).mkdir(parents=True, exist_ok=True)
            draw_shapes(np.flatnonzero(labels[i]).tolist(), 32, rng).save(root / "Flickr" / folder / name)
            names.append(f"{folder}\\{name}")
        (root / "ImageList" / f"{split}Imagelist.txt").write_text("\r\n".join(names) + "\r\n")
        for k, c in enumerate(CONCEPTS):
            (root / "Groundtruth" / "TrainTestLabels" / f"Labels_{c}_{split}.txt").write_text(
                "".join(f"{int(v)}\n" for v in labels[:, k]))
        out[split.lower()] = labels
    return out


def test_coco_reader(tmp_path):
    labels = write_coco(tmp_path, n=6, empty=2)
    ds = CocoMultiLabel(tmp_path / "annotations" / "instances_train2014.json", tmp_path / "train2014")
    assert ds.classes == ["red square", "green disc", "blue bar", "yellow cross"]  # ascending ids
    assert ds.category_ids == [1, 3, 7, 12]
    assert len(ds) == 6 and ds.image_ids == [1000 + 7 * i for i in range(6)]      # unlabelled dropped
    assert torch.equal(ds.labels, torch.from_numpy(labels[:6]))
    x, y = ds[2]
    assert x.shape == (3, 48, 48) and x.dtype == torch.float32 and 0 <= float(x.min()) <= float(x.max()) <= 1
    assert y.dtype == torch.float32 and y.tolist() == labels[2].astype(float).tolist()
    # the image shows its labels: a red-dominated pixel exists iff "red square" is a label
    red = ((x[0] > 0.7) & (x[1] < 0.3) & (x[2] < 0.3)).any()
    assert bool(red) == bool(labels[2, 0])
    keep_all = CocoMultiLabel(tmp_path / "annotations" / "instances_train2014.json", tmp_path / "train2014",
                              drop_empty=False)
    assert len(keep_all) == 8 and not keep_all.labels[6:].any()


def test_coco_bad_input(tmp_path):
    write_coco(tmp_path, n=3, empty=0)
    ann = tmp_path / "annotations" / "instances_train2014.json"
    data = json.loads(ann.read_text())

    def bad(change, match):
        d = json.loads(json.dumps(data))
        change(d)
        f = tmp_path / "bad.json"
        f.write_text(json.dumps(d))
        with pytest.raises(ValueError, match=match):
            CocoMultiLabel(f, tmp_path / "train2014")

    for key in ("annotations", "categories", "images"):
        bad(lambda d, key=key: d.pop(key), rf"bad.json: no '{key}' list")
    bad(lambda d: d["annotations"][1].update(category_id=2),
        r"annotations\[1\] \(id 2\) has category_id 2, which is not in 'categories'")
    bad(lambda d: d["annotations"][0].update(image_id=5), r"annotations\[0\] .* image_id 5, which is not in")
    bad(lambda d: d["images"][0].pop("file_name"), r"images\[0\] needs 'id' and 'file_name'")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ValueError, match="junk.json: not valid JSON"):
        read_coco_instances(tmp_path / "junk.json")
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        read_coco_instances(tmp_path / "nowhere.json")
    # an image listed but missing on disk
    missing = data["images"][1]["file_name"]
    (tmp_path / "train2014" / missing).unlink()
    with pytest.raises(ValueError, match=f"image file .*{missing}' does not exist"):
        CocoMultiLabel(ann, tmp_path / "train2014")
    # an unreadable image (checked when read)
    ds = CocoMultiLabel(ann, tmp_path / "train2014", check_files=False)
    (tmp_path / "train2014" / data["images"][0]["file_name"]).write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="cannot read image .*COCO_train2014_000000001000.jpg"):
        ds[0]


def test_nuswide_reader(tmp_path):
    labels = write_nuswide(tmp_path)
    train = NusWide(tmp_path, "train")
    test = NusWide(tmp_path, "test")
    assert train.classes == CONCEPTS
    assert len(train) == 4 and len(test) == 2          # the first image of each split has no concept
    assert torch.equal(train.labels, torch.from_numpy(labels["train"][1:]))
    assert train.samples[0].endswith("Flickr/zebra/0001_2124494180.jpg")
    x, y = train[0]
    assert x.shape == (3, 32, 32) and y.tolist() == labels["train"][1].astype(float).tolist()
    assert len(NusWide(tmp_path, "train", drop_empty=False)) == 5
    # ConceptsList/Concepts81.txt is accepted too
    (tmp_path / "ConceptsList").mkdir()
    shutil.move(tmp_path / "Concepts81.txt", tmp_path / "ConceptsList" / "Concepts81.txt")
    assert NusWide(tmp_path, "test").classes == CONCEPTS


def test_nuswide_bad_input(tmp_path):
    write_nuswide(tmp_path)
    lab = tmp_path / "Groundtruth" / "TrainTestLabels" / "Labels_beach_Train.txt"
    good = lab.read_text()
    lab.write_text(good.replace("0\n", "2\n", 1) if "0\n" in good else "2\n" + good[2:])
    with pytest.raises(ValueError, match=r"Labels_beach_Train.txt:\d+: label '2' is not 0 or 1"):
        NusWide(tmp_path, "train")
    lab.write_text(good + "1\n")
    with pytest.raises(ValueError, match="Labels_beach_Train.txt: 6 labels for the 5 images"):
        NusWide(tmp_path, "train")
    lab.write_text(good)
    (tmp_path / "Groundtruth" / "TrainTestLabels" / "Labels_clouds_Test.txt").unlink()
    with pytest.raises(FileNotFoundError, match="Labels_clouds_Test.txt"):
        NusWide(tmp_path, "test")
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        NusWide(tmp_path, "val")
    img = tmp_path / "Flickr" / "zebra" / "0003_2124494182.jpg"
    img.unlink()
    with pytest.raises(ValueError, match="0003_2124494182.jpg' does not exist"):
        NusWide(tmp_path, "train", drop_empty=False)
