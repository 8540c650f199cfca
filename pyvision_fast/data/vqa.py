"""VQA v2 readers for CIB-LXMERT (shared/papers.md section 8): the official question and annotation JSONs, the
answer vocabulary, LXMERT's Faster R-CNN region features in the CIB repo's HDF5 layout, BERT tokenisation, and
the robustness sets (VQA-Rephrasings, VQA-CE) over the same formats.

Files (names as the datasets ship them):

* ``v2_OpenEnded_mscoco_{split}_questions.json``: ``{"questions": [{"question_id": int, "image_id": int,
  "question": str}, ...], ...}`` (VQA-Rephrasings' ``v2_OpenEnded_mscoco_valrep2014_humans_og_questions.json``
  adds ``"rephrasing_of": <original question_id>`` to each rephrasing).
* ``v2_mscoco_{split}_annotations.json``: ``{"annotations": [{"question_id", "image_id", "answers":
  [{"answer": str, "answer_confidence": str, "answer_id": int} x 10], "multiple_choice_answer", "answer_type",
  "question_type"}, ...]}`` (VQA-Rephrasings: ``v2_mscoco_valrep2014_humans_og_annotations.json``).
* ``trainval_ans2label.json``: ``{answer: label}`` over the 3129 normalised answers, labels 0..A-1.
* Region features: one HDF5 file per image split (the CIB repo's ``data/process_lib/tsv2h5.py`` writes
  ``imgfeat/{train,val,test2015}_obj36.h5`` from LXMERT's ``*_obj36.tsv``): a group per image named by its
  integer COCO id (``"458752"``) holding the datasets ``img_hw`` (2,) int32 (height, width), ``boxes`` (36, 4)
  float32 (x1, y1, x2, y2 in pixels), ``features`` (36, 2048) float32, ``objects_id`` / ``attrs_id`` (36,)
  int64, ``objects_conf`` / ``attrs_conf`` (36,) float32. Boxes are divided by the image width/height on
  reading, as the official loader does, and must then lie in [0, 1].
* VQA-CE (Dancette et al. 2021, github.com/cdancette/detect-shortcuts): ``counterexamples.json`` and
  ``hard.json``, JSON lists of VQA v2 val question ids; every other val question is "easy" (the CIB repo's
  ``preprocess_vqa_ce.py``).

Targets: each question's 10 human answers are normalised (``metrics.vqa.normalize_answer``) and counted; an
answer in the vocabulary gets its soft score (0.3 / 0.6 / 0.9 / 1 for 1 / 2 / 3 / >= 4 humans). Answers
outside the vocabulary are dropped and counted (``stats``); a question left with no vocabulary answer stays,
with an all-zero target (it scores 0 for every prediction, as on the evaluation server), as the official
preprocessing does. Questions whose image has no features are an error naming them
(``missing_features="error"``) or are dropped and counted (``"drop"``, what the official loader does
silently).
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..metrics.vqa import normalize_answer, soft_score

__all__ = ["RegionFeatures", "VQADataset", "answer_targets", "encode_question", "load_annotations",
           "load_ans2label", "load_bert_tokenizer", "load_questions", "load_vqa_ce", "read_json",
           "rephrasing_groups", "vqa_files"]

PathLike = Union[str, os.PathLike]


def vqa_files(root: PathLike, split: str) -> tuple[Path, Path]:
    """(questions, annotations) paths of VQA v2 ``split`` (train2014, val2014, test2015,
    valrep2014_humans_og)."""
    root = Path(os.fspath(root))
    return (root / f"v2_OpenEnded_mscoco_{split}_questions.json",
            root / f"v2_mscoco_{split}_annotations.json")


def read_json(path: PathLike, what: str) -> Any:
    """Parsed JSON of ``path``; a missing file or bad JSON is an error naming the file (and line/column)."""
    path = Path(os.fspath(path))
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc})") from exc


def _int_field(item: dict, key: str, path: Path, index: int, where: str) -> int:
    value = item.get(key) if isinstance(item, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{path}: {where}[{index}] has no integer {key!r} (got {value!r})")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{path}: {where}[{index}] {key} {value!r} is not an integer") from None


def load_questions(path: PathLike) -> list[dict]:
    """The ``questions`` of a VQA questions file as dicts {question_id, image_id, question[, rephrasing_of]}
    (ints and a str); a malformed item is an error naming the file, index and question id."""
    path = Path(os.fspath(path))
    data = read_json(path, "VQA questions file")
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise ValueError(f"{path}: expected an object with a 'questions' list (VQA v2 questions format)")
    out, seen = [], set()
    for i, item in enumerate(data["questions"]):
        qid = _int_field(item, "question_id", path, i, "questions")
        image = _int_field(item, "image_id", path, i, "questions")
        text = item.get("question")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{path}: questions[{i}] (question_id {qid}) has no question text")
        if qid in seen:
            raise ValueError(f"{path}: question_id {qid} appears twice (questions[{i}])")
        seen.add(qid)
        q = {"question_id": qid, "image_id": image, "question": text}
        if "rephrasing_of" in item:
            q["rephrasing_of"] = _int_field(item, "rephrasing_of", path, i, "questions")
        out.append(q)
    return out


def load_annotations(path: PathLike) -> dict[int, dict]:
    """question_id -> {image_id, answers: [str, ...], answer_type, question_type} of a VQA annotations
    file."""
    path = Path(os.fspath(path))
    data = read_json(path, "VQA annotations file")
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise ValueError(f"{path}: expected an object with an 'annotations' list (VQA v2 annotations format)")
    out = {}
    for i, item in enumerate(data["annotations"]):
        qid = _int_field(item, "question_id", path, i, "annotations")
        answers = item.get("answers")
        if not isinstance(answers, list) or not answers:
            raise ValueError(f"{path}: annotations[{i}] (question_id {qid}) has no 'answers' list")
        texts = []
        for j, a in enumerate(answers):
            text = a.get("answer") if isinstance(a, dict) else None
            if not isinstance(text, str):
                raise ValueError(f"{path}: annotations[{i}] (question_id {qid}) answers[{j}] has no 'answer' "
                                 f"string (got {a!r})")
            texts.append(text)
        out[qid] = {"image_id": _int_field(item, "image_id", path, i, "annotations"), "answers": texts,
                    "answer_type": item.get("answer_type"), "question_type": item.get("question_type")}
    return out


def load_ans2label(path: PathLike) -> dict[str, int]:
    """``trainval_ans2label.json``: {answer: label} with labels exactly 0..A-1."""
    path = Path(os.fspath(path))
    data = read_json(path, "answer vocabulary")
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a non-empty {{answer: label}} object (trainval_ans2label.json)")
    bad = [(a, l) for a, l in data.items() if isinstance(l, bool) or not isinstance(l, int)]
    if bad:
        raise ValueError(f"{path}: label of answer {bad[0][0]!r} is {bad[0][1]!r}, not an integer")
    labels = sorted(data.values())
    if labels != list(range(len(data))):
        dup = [l for l, c in Counter(labels).items() if c > 1]
        raise ValueError(f"{path}: labels must be 0..{len(data) - 1}, each once"
                         f"{f' (label {dup[0]} repeats)' if dup else ''}")
    return dict(data)


def answer_targets(answers: list[str], ans2label: dict[str, int]) -> tuple[dict[int, float], int]:
    """({label: soft score} of the normalised human answers in the vocabulary, number of human answers outside
    it)."""
    counts = Counter(normalize_answer(a) for a in answers)
    scores, outside = {}, 0
    for answer, c in counts.items():
        if answer in ans2label:
            scores[ans2label[answer]] = soft_score(c, len(answers))
        else:
            outside += c
    return scores, outside


class RegionFeatures:
    """Reader of one ``*_obj36.h5`` file (layout in the module docstring). ``image_ids``: the set of int ids
    held; ``get(image_id) -> (features (N, D) float32, boxes (N, 4) float32 normalised to [0, 1])``. Every
    image must hold ``num_boxes`` regions (36) of ``feat_dim`` features when given. The HDF5 handle is opened
    lazily in each process (DataLoader workers get their own)."""

    def __init__(self, path: PathLike, num_boxes: Optional[int] = 36, feat_dim: Optional[int] = None):
        import h5py

        self.path = Path(os.fspath(path))
        self.num_boxes, self.feat_dim = num_boxes, feat_dim
        if not self.path.is_file():
            raise FileNotFoundError(f"region features {str(self.path)!r} do not exist (the CIB repo's "
                                    f"tsv2h5.py writes imgfeat/<split>_obj36.h5)")
        try:
            with h5py.File(self.path, "r") as f:
                names = list(f.keys())
        except OSError as exc:
            raise ValueError(f"{self.path}: not a readable HDF5 file ({exc})") from exc
        ids = set()
        for name in names:
            try:
                ids.add(int(name))
            except ValueError:
                raise ValueError(f"{self.path}: group {name!r} is not an integer COCO image id") from None
        self.image_ids = ids
        self._file, self._pid = None, None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, None
        return state

    def _handle(self):
        import h5py

        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._file

    def get(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        if image_id not in self.image_ids:
            raise KeyError(f"{self.path}: no features for image {image_id}")
        group = self._handle()[str(image_id)]
        where = f"{self.path} image {image_id}"
        for key in ("features", "boxes", "img_hw"):
            if key not in group:
                raise ValueError(f"{where}: dataset {key!r} is missing (has {sorted(group.keys())})")
        feats = np.asarray(group["features"][()], dtype=np.float32)
        boxes = np.array(group["boxes"][()], dtype=np.float32)
        hw = np.asarray(group["img_hw"][()]).reshape(-1)
        if feats.ndim != 2 or boxes.shape != (feats.shape[0], 4):
            raise ValueError(f"{where}: features {feats.shape} and boxes {boxes.shape} must be (N, D) and "
                             f"(N, 4)")
        if self.num_boxes is not None and feats.shape[0] != self.num_boxes:
            raise ValueError(f"{where}: {feats.shape[0]} regions, expected {self.num_boxes}")
        if self.feat_dim is not None and feats.shape[1] != self.feat_dim:
            raise ValueError(f"{where}: {feats.shape[1]}-d features, expected {self.feat_dim}")
        if hw.shape != (2,) or hw.min() <= 0:
            raise ValueError(f"{where}: img_hw must be (height, width) > 0, got {hw.tolist()}")
        h, w = float(hw[0]), float(hw[1])
        boxes[:, (0, 2)] /= w
        boxes[:, (1, 3)] /= h
        if boxes.size and (boxes.min() < -1e-5 or boxes.max() > 1 + 1e-5 or not np.isfinite(boxes).all()):
            raise ValueError(f"{where}: boxes reach outside the {int(w)}x{int(h)} image "
                             f"(normalised range [{boxes.min():.3f}, {boxes.max():.3f}])")
        if not np.isfinite(feats).all():
            raise ValueError(f"{where}: features hold NaN or inf")
        return feats, boxes


def load_bert_tokenizer(vocab: PathLike):
    """BERT's uncased word-piece tokenizer from a ``vocab.txt`` (``bert-base-uncased``'s 30522 entries), or
    from a folder holding one; nothing is downloaded."""
    try:
        from transformers import BertTokenizer
    except ImportError as exc:
        raise ImportError(f"LXMERT's BERT tokenizer comes from transformers: pip install "
                          f"'pyvision_fast[vqa]' ({exc})") from exc
    path = Path(os.fspath(vocab))
    if path.is_dir():
        path = path / "vocab.txt"
    if not path.is_file():
        raise FileNotFoundError(f"BERT vocabulary {str(path)!r} does not exist; LXMERT questions need "
                                f"bert-base-uncased's vocab.txt (give its path, nothing is downloaded)")
    vocab_map: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            token = line.rstrip("\n")
            if token in vocab_map:
                raise ValueError(f"{path}:{i + 1}: token {token!r} repeats line {vocab_map[token] + 1}")
            vocab_map[token] = i
    missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]") if t not in vocab_map]
    if missing:
        raise ValueError(f"{path}: BERT vocabulary lacks {missing}")
    # transformers 5's BertTokenizer takes the vocabulary as ``vocab`` (a ``vocab_file=`` keyword is ignored)
    return BertTokenizer(vocab=vocab_map, do_lower_case=True)


def encode_question(tokenizer, text: str, max_length: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """LXMERT's ``convert_sents_to_features``: word pieces of the stripped question cut to ``max_length - 2``,
    [CLS] + pieces + [SEP], zero-padded. Returns input_ids (max_length,) int64 and attention_mask
    (max_length,) int64."""
    if max_length < 3:
        raise ValueError(f"max_length must be >= 3 ([CLS], a word piece, [SEP]), got {max_length}")
    pieces = tokenizer.tokenize(text.strip())[:max_length - 2]
    ids = tokenizer.convert_tokens_to_ids(["[CLS]", *pieces, "[SEP]"])
    out = torch.zeros(max_length, dtype=torch.long)
    mask = torch.zeros(max_length, dtype=torch.long)
    out[:len(ids)] = torch.tensor(ids, dtype=torch.long)
    mask[:len(ids)] = 1
    return out, mask


class VQADataset(Dataset):
    """VQA questions with their soft targets and region features. Items: (input_ids (L,) int64, attention_mask
    (L,) int64, features (N, D) float32, boxes (N, 4) float32, target (A,) float32 soft scores, question_id ()
    int64). ``annotations`` may be None (test splits: zero targets). ``stats`` counts questions, dropped ones,
    human answers outside the vocabulary and questions with no vocabulary answer. ``classes`` lists the
    answers by label."""

    def __init__(self, questions: PathLike, annotations: Optional[PathLike],
                 features: Union[RegionFeatures, PathLike], ans2label: Union[dict, PathLike], tokenizer,
                 max_length: int = 20, missing_features: str = "error"):
        if missing_features not in ("error", "drop"):
            raise ValueError(f"missing_features must be 'error' or 'drop', got {missing_features!r}")
        self.ans2label = ans2label if isinstance(ans2label, dict) else load_ans2label(ans2label)
        self.classes = [a for a, _ in sorted(self.ans2label.items(), key=lambda kv: kv[1])]
        self.features = features if isinstance(features, RegionFeatures) else RegionFeatures(features)
        self.tokenizer, self.max_length = tokenizer, max_length
        qpath = Path(os.fspath(questions))
        items = load_questions(qpath)
        anns = load_annotations(annotations) if annotations is not None else None
        self.stats = Counter(questions=len(items))
        self.items: list[dict] = []
        for q in items:
            if q["image_id"] not in self.features.image_ids:
                if missing_features == "error":
                    raise ValueError(f"{qpath}: question {q['question_id']} asks about image "
                                     f"{q['image_id']}, which has no features in {self.features.path} "
                                     f"(missing_features='drop' skips such questions)")
                self.stats["dropped_no_features"] += 1
                continue
            if anns is not None:
                ann = anns.get(q["question_id"])
                if ann is None:
                    raise ValueError(f"{annotations}: no annotation for question {q['question_id']} of "
                                     f"{qpath}")
                if ann["image_id"] != q["image_id"]:
                    raise ValueError(f"{annotations}: question {q['question_id']} is about image "
                                     f"{ann['image_id']} there but image {q['image_id']} in {qpath}")
                scores, outside = answer_targets(ann["answers"], self.ans2label)
                self.stats["answers_outside_vocabulary"] += outside
                self.stats["questions_without_vocabulary_answer"] += not scores
                q = {**q, "scores": scores, "answers": ann["answers"]}
            self.items.append(q)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def question_ids(self) -> list[int]:
        return [q["question_id"] for q in self.items]

    def __getitem__(self, index: int):
        q = self.items[index]
        ids, mask = encode_question(self.tokenizer, q["question"], self.max_length)
        feats, boxes = self.features.get(q["image_id"])
        target = torch.zeros(len(self.classes), dtype=torch.float32)
        for label, score in q.get("scores", {}).items():
            target[label] = score
        return (ids, mask, torch.from_numpy(feats), torch.from_numpy(boxes), target,
                torch.tensor(q["question_id"], dtype=torch.long))


def rephrasing_groups(questions: list[dict]) -> dict[int, list[int]]:
    """VQA-Rephrasings groups: original question id -> ids of its rephrasings (``rephrasing_of``), originals
    without rephrasings included with an empty list. A ``rephrasing_of`` naming no question is an error."""
    ids = {q["question_id"] for q in questions}
    groups: dict[int, list[int]] = {q["question_id"]: [] for q in questions if "rephrasing_of" not in q}
    for q in questions:
        if "rephrasing_of" in q:
            if q["rephrasing_of"] not in ids or q["rephrasing_of"] not in groups:
                raise ValueError(f"question {q['question_id']} is a rephrasing of {q['rephrasing_of']}, "
                                 f"which is not an original question of the file")
            groups[q["rephrasing_of"]].append(q["question_id"])
    return groups


def load_vqa_ce(folder: PathLike, question_ids: list[int]) -> dict[str, set[int]]:
    """VQA-CE subsets of the evaluated ``question_ids``: ``counterexample`` (``counterexamples.json``),
    ``hard`` (``hard.json``, minus counterexamples) and ``easy`` (the rest), as the CIB repo's preprocessing
    splits them."""
    folder = Path(os.fspath(folder))
    sets = {}
    for name, file in (("counterexample", "counterexamples.json"), ("hard", "hard.json")):
        data = read_json(folder / file, "VQA-CE question-id list")
        ints = isinstance(data, list) and all(isinstance(q, int) and not isinstance(q, bool) for q in data)
        if not ints:
            raise ValueError(f"{folder / file}: expected a JSON list of integer question ids")
        sets[name] = set(data)
    evaluated = set(question_ids)
    counter = sets["counterexample"] & evaluated
    hard = (sets["hard"] - sets["counterexample"]) & evaluated
    return {"counterexample": counter, "hard": hard, "easy": evaluated - counter - hard}
