"""VQA v2 readers (``data.vqa``) on tiny fixtures written in the real formats: the question/annotation JSONs,
``trainval_ans2label.json``, the CIB repo's per-image HDF5 region features, a BERT vocab.txt; soft targets,
dropped out-of-vocabulary answers, box normalisation, tokenisation as LXMERT's, the robustness sets, and bad
input."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pyvision_fast.data.vqa import (RegionFeatures, VQADataset, answer_targets, encode_question,
                                    load_ans2label, load_annotations, load_bert_tokenizer, load_questions,
                                    load_vqa_ce, rephrasing_groups, vqa_files)

COLOURS = ["red", "blue", "green"]
ANSWERS = ["red", "blue", "green", "yes", "no"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "colour", "color", "is", "the", "ball", "?",
         "there", "a", "which", "hue", "has", "it", "tell", "me", "##s", "blue", "red", "green"]
FEAT_DIM, BOXES = 16, 36


def write_vocab(path: Path) -> Path:
    path.write_text("\n".join(VOCAB) + "\n")
    return path


def _answers(main: str, n_main: int, other: str) -> list[dict]:
    texts = [main] * n_main + [other] * (10 - n_main)
    return [{"answer": t, "answer_confidence": "yes", "answer_id": i + 1} for i, t in enumerate(texts)]


def write_features(path: Path, images: dict[int, int], seed: int, boxes_per_image: int = BOXES) -> None:
    """One group per image: region features carrying the image's colour class in dims 0..2, pixel boxes."""
    BOXES = boxes_per_image
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for image_id, colour in images.items():
            g = f.create_group(str(image_id))
            h, w = 480, 640
            g.create_dataset("img_hw", data=np.array([h, w], dtype=np.int32))
            x1 = rng.uniform(0, w / 2, BOXES)
            y1 = rng.uniform(0, h / 2, BOXES)
            x2, y2 = x1 + rng.uniform(1, w / 2, BOXES), y1 + rng.uniform(1, h / 2, BOXES)
            boxes = np.stack([x1, y1, x2, y2], 1)
            feats = rng.normal(0, 0.3, (BOXES, FEAT_DIM)).astype(np.float32)
            feats[:, colour] += 2.0
            g.create_dataset("boxes", data=boxes.astype(np.float32))
            g.create_dataset("features", data=feats)
            g.create_dataset("objects_id", data=rng.integers(0, 1600, BOXES).astype(np.int64))
            g.create_dataset("objects_conf", data=rng.uniform(0, 1, BOXES).astype(np.float32))
            g.create_dataset("attrs_id", data=rng.integers(0, 400, BOXES).astype(np.int64))
            g.create_dataset("attrs_conf", data=rng.uniform(0, 1, BOXES).astype(np.float32))


def write_split(root: Path, split: str, images: dict[int, int], qid_base: int) -> list[dict]:
    """Two questions per image: 'what colour is the ball?' (8 of 10 humans give the colour, 2 a word outside
    the vocabulary) and 'is there a ball?' (yes x 10)."""
    questions, annotations = [], []
    for k, (image_id, colour) in enumerate(images.items()):
        asked = (("What colour is the ball?", _answers(COLOURS[colour], 8, "maroon")),
                 ("Is there a ball?", _answers("Yes", 10, "yes")))
        for j, (text, answers) in enumerate(asked):
            qid = qid_base + 10 * k + j
            questions.append({"question_id": qid, "image_id": image_id, "question": text})
            annotations.append({"question_id": qid, "image_id": image_id, "answers": answers,
                                "multiple_choice_answer": answers[0]["answer"], "answer_type": "other",
                                "question_type": "what color is the"})
    qfile, afile = vqa_files(root, split)
    qfile.write_text(json.dumps({"info": {}, "task_type": "Open-Ended", "data_type": "mscoco",
                                 "data_subtype": split, "questions": questions, "license": {}}))
    afile.write_text(json.dumps({"info": {}, "data_subtype": split, "annotations": annotations}))
    return questions


def write_vqa(root: Path, n_train: int = 12, n_val: int = 4, boxes: int = BOXES) -> Path:
    """DATA/ with train2014 and val2014 question/annotation JSONs, imgfeat/{train,val}_obj36.h5,
    trainval_ans2label.json, vocab.txt (``boxes`` regions per image: LXMERT's 36, fewer for fast training
    tests), the VQA-Rephrasings split valrep2014_humans_og (each val colour
    question with two rephrasings) and vqa_ce/{counterexamples,hard}.json."""
    root.mkdir(parents=True, exist_ok=True)
    train_images = {1000 + i: i % 3 for i in range(n_train)}
    val_images = {2000 + i: (i + 1) % 3 for i in range(n_val)}
    write_split(root, "train2014", train_images, 100000)
    val_q = write_split(root, "val2014", val_images, 200000)
    write_features(root / "imgfeat" / "train_obj36.h5", train_images, 0, boxes)
    write_features(root / "imgfeat" / "val_obj36.h5", val_images, 1, boxes)
    (root / "trainval_ans2label.json").write_text(json.dumps({a: i for i, a in enumerate(ANSWERS)}))
    write_vocab(root / "vocab.txt")
    # VQA-Rephrasings: originals are val questions, rephrasings point to them with rephrasing_of
    anns = {a["question_id"]: a for a in json.loads(vqa_files(root, "val2014")[1].read_text())["annotations"]}
    rq, ra = [], []
    for q in val_q:
        if "colour" not in q["question"]:
            continue
        rq.append(q)
        ra.append(anns[q["question_id"]])
        for r, text in enumerate(("Which hue has the ball?", "Tell me the ball's colour?")):
            qid = q["question_id"] + 5 + r
            rq.append({"question_id": qid, "image_id": q["image_id"], "question": text,
                       "rephrasing_of": q["question_id"]})
            ra.append({**anns[q["question_id"]], "question_id": qid})
    qfile, afile = vqa_files(root, "valrep2014_humans_og")
    qfile.write_text(json.dumps({"questions": rq}))
    afile.write_text(json.dumps({"annotations": ra}))
    (root / "vqa_ce").mkdir()
    (root / "vqa_ce" / "counterexamples.json").write_text(json.dumps([200000, 200011, 999]))
    (root / "vqa_ce" / "hard.json").write_text(json.dumps([200001, 200000]))
    return root


@pytest.fixture(scope="module")
def vqa(tmp_path_factory):
    return write_vqa(tmp_path_factory.mktemp("vqa"))


def _dataset(root, split="train2014", feats="train", **kw):
    q, a = vqa_files(root, split)
    return VQADataset(q, a, RegionFeatures(root / "imgfeat" / f"{feats}_obj36.h5", feat_dim=FEAT_DIM),
                      root / "trainval_ans2label.json", load_bert_tokenizer(root / "vocab.txt"), **kw)


def test_dataset_items_targets_and_stats(vqa):
    ds = _dataset(vqa)
    assert len(ds) == 24 and ds.classes == ANSWERS
    ids, mask, feats, boxes, target, qid = ds[0]
    assert ids.shape == mask.shape == (20,) and ids.dtype == mask.dtype == torch.long
    assert feats.shape == (36, FEAT_DIM) and feats.dtype == torch.float32 and boxes.shape == (36, 4)
    assert int(qid) == 100000
    # 8 x 'red' -> soft score 1.0; 'maroon' (x2) is outside the vocabulary
    assert target.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert ds[1][4].tolist() == [0.0, 0.0, 0.0, 1.0, 0.0]              # 'Yes' normalises to 'yes'
    assert ds.stats["answers_outside_vocabulary"] == 12 * 2
    assert ds.stats["questions_without_vocabulary_answer"] == 0
    # boxes are divided by the image width / height of img_hw
    with h5py.File(vqa / "imgfeat" / "train_obj36.h5", "r") as f:
        raw = f["1000"]["boxes"][()]
    np.testing.assert_allclose(boxes.numpy(), raw / np.array([640, 480, 640, 480], np.float32), rtol=1e-6)
    assert 0 <= float(boxes.min()) and float(boxes.max()) <= 1


def test_answer_targets_soft_scores():
    ans2label = {"2": 0, "yes": 1, "dog": 2}
    scores, outside = answer_targets(["two", "2", "2 ", "Yes", "the dog", "cat", "cats", "cat", "2.", "3"],
                                     ans2label)
    # '2' x4 ('two', '2', '2 ', '2.'), yes x1, dog x1; cat x2, cats x1, 3 x1 outside
    assert scores == {0: 1.0, 1: pytest.approx(0.3), 2: pytest.approx(0.3)} and outside == 4
    scores, outside = answer_targets(["a"] * 10, ans2label)
    assert scores == {} and outside == 10


def test_tokenisation_matches_lxmert(vqa):
    tok = load_bert_tokenizer(vqa)                      # a folder holding vocab.txt works too
    ids, mask = encode_question(tok, "  What colour is the ball? ", 10)
    expected = [VOCAB.index(t) for t in ("[CLS]", "what", "colour", "is", "the", "ball", "?", "[SEP]")]
    assert ids.tolist() == expected + [0, 0] and mask.tolist() == [1] * 8 + [0, 0]
    ids, mask = encode_question(tok, "what colour is the ball?", 5)   # cut to max_length - 2 pieces
    assert ids.tolist() == [VOCAB.index(t) for t in ("[CLS]", "what", "colour", "is", "[SEP]")]
    ids, _ = encode_question(tok, "Balls", 6)          # word pieces, unknown words -> [UNK]
    assert ids.tolist()[:4] == [2, VOCAB.index("ball"), VOCAB.index("##s"), 3]
    assert encode_question(tok, "zebra", 4)[0].tolist() == [2, 1, 3, 0]


def test_robustness_sets(vqa):
    qs = load_questions(vqa_files(vqa, "valrep2014_humans_og")[0])
    groups = rephrasing_groups(qs)
    assert groups == {200000: [200005, 200006], 200010: [200015, 200016], 200020: [200025, 200026],
                      200030: [200035, 200036]}
    ds = _dataset(vqa, "valrep2014_humans_og", "val")
    assert len(ds) == 12
    ce = load_vqa_ce(vqa / "vqa_ce", _dataset(vqa, "val2014", "val").question_ids)
    assert ce["counterexample"] == {200000, 200011} and ce["hard"] == {200001}
    assert len(ce["easy"]) == 8 - 3 and 999 not in ce["counterexample"]


def test_missing_features_error_or_drop(vqa, tmp_path):
    q, a = vqa_files(vqa, "val2014")
    with pytest.raises(ValueError, match=r"question 200000 asks about image 2000, which has no features in "
                                         r".*train_obj36.h5"):
        _dataset(vqa, "val2014", "train")
    ds = _dataset(vqa, "val2014", "train", missing_features="drop")
    assert len(ds) == 0 and ds.stats["dropped_no_features"] == 8


def test_bad_files_are_named(vqa, tmp_path):
    bad = tmp_path / "v2_OpenEnded_mscoco_bad_questions.json"
    bad.write_text('{"questions": [{"question_id": 1, "image_id": 2, "question": "x?"},\n {"question_id": 3,')
    with pytest.raises(ValueError, match=r"bad_questions.json:2:\d+: not valid JSON"):
        load_questions(bad)
    bad.write_text(json.dumps({"questions": [{"question_id": 1, "image_id": 2, "question": "x?"},
                                             {"question_id": 3, "question": "y?"}]}))
    with pytest.raises(ValueError, match=r"questions\[1\] has no integer 'image_id'"):
        load_questions(bad)
    bad.write_text(json.dumps({"questions": [{"question_id": 1, "image_id": 2, "question": "  "}]}))
    with pytest.raises(ValueError, match=r"questions\[0\] \(question_id 1\) has no question text"):
        load_questions(bad)
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="'questions' list"):
        load_questions(bad)
    ann = tmp_path / "v2_mscoco_bad_annotations.json"
    ann.write_text(json.dumps({"annotations": [{"question_id": 1, "image_id": 2,
                                                "answers": [{"answer": 3}]}]}))
    with pytest.raises(ValueError, match=r"annotations\[0\] \(question_id 1\) answers\[0\] has no 'answer'"):
        load_annotations(ann)
    with pytest.raises(FileNotFoundError, match="VQA annotations file .*nowhere.json"):
        load_annotations(tmp_path / "nowhere.json")
    vocab = tmp_path / "trainval_ans2label.json"
    vocab.write_text(json.dumps({"yes": 0, "no": 2}))
    with pytest.raises(ValueError, match=r"labels must be 0..1"):
        load_ans2label(vocab)
    with pytest.raises(FileNotFoundError, match="bert-base-uncased's vocab.txt"):
        load_bert_tokenizer(tmp_path / "vocab.txt")
    # an annotation that disagrees with its question
    q, a = vqa_files(vqa, "val2014")
    data = json.loads(a.read_text())
    data["annotations"][3]["image_id"] = 2001 if data["annotations"][3]["image_id"] != 2001 else 2002
    a2 = tmp_path / "v2_mscoco_val2014_annotations.json"
    a2.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="question 200011 is about image"):
        VQADataset(q, a2, vqa / "imgfeat" / "val_obj36.h5", vqa / "trainval_ans2label.json",
                   load_bert_tokenizer(vqa / "vocab.txt"))
    with pytest.raises(ValueError, match="rephrasing of 7, which is not an original"):
        rephrasing_groups([{"question_id": 1, "image_id": 1, "question": "a"},
                           {"question_id": 2, "image_id": 1, "question": "b", "rephrasing_of": 7}])


def test_bad_features_are_named(tmp_path):
    path = tmp_path / "val_obj36.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("5")
        g.create_dataset("img_hw", data=np.array([10, 20], np.int32))
        g.create_dataset("boxes", data=np.array([[0, 0, 30, 5]] * 36, np.float32))   # x2 = 30 > width 20
        g.create_dataset("features", data=np.zeros((36, FEAT_DIM), np.float32))
        g = f.create_group("6")
        g.create_dataset("img_hw", data=np.array([10, 20], np.int32))
        g.create_dataset("boxes", data=np.zeros((10, 4), np.float32))
        g.create_dataset("features", data=np.zeros((10, FEAT_DIM), np.float32))
        f.create_group("7").create_dataset("img_hw", data=np.array([10, 20], np.int32))
    feats = RegionFeatures(path)
    assert feats.image_ids == {5, 6, 7}
    with pytest.raises(ValueError, match=r"val_obj36.h5 image 5: boxes reach outside the 20x10 image"):
        feats.get(5)
    with pytest.raises(ValueError, match="image 6: 10 regions, expected 36"):
        feats.get(6)
    with pytest.raises(ValueError, match="image 7: dataset 'features' is missing"):
        feats.get(7)
    with pytest.raises(KeyError, match="no features for image 8"):
        feats.get(8)
    with pytest.raises(FileNotFoundError, match="tsv2h5.py"):
        RegionFeatures(tmp_path / "train_obj36.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        RegionFeatures(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "named.h5", "w") as f:
        f.create_group("COCO_val2014_000000000005")
    with pytest.raises(ValueError, match="is not an integer COCO image id"):
        RegionFeatures(tmp_path / "named.h5")
