"""VQA metrics: the VQA v2 answer normalisation and accuracy, the soft scores training targets use, a
distributed ``VQAAccuracy`` over (logits, soft targets), and the robustness reports CIB is evaluated on:
VQA-Rephrasings consistency (Shah et al. 2019's CS(k)) and VQA-CE subset accuracies (Dancette et al. 2021).

Accuracy of a predicted answer a for a question with n human answers (n = 10 in VQA v2): the mean over the n
leave-one-out subsets of ``min(#humans in the subset who said a / 3, 1)``, on normalised answers. With c of
the 10 humans saying a this is 0, 0.3, 0.6, 0.9, 1 for c = 0, 1, 2, 3, >= 4: the soft score of the training
targets.

Normalisation (the VQA evaluation's ``processPunctuation`` + ``processDigitArticle``, as the official
preprocessing applies them to answers): punctuation ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is removed
when it touches a space or the text has a digit-comma-digit, else replaced by a space; a period not followed
by a digit is removed; then lower-case, number words zero..ten (and 'none') become digits, the articles
a/an/the are dropped, apostrophe-less contractions get their apostrophes ('dont' -> "don't"), and remaining
commas go.
"""
from __future__ import annotations

import itertools
import re
from typing import Iterable, Mapping, Optional, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = ["VQAAccuracy", "VQAScores", "consistency_scores", "normalize_answer", "soft_score",
           "subset_accuracies", "vqa_accuracy"]

_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?",
          "!"]
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_DIGITS = re.compile(r"(\d)(,)(\d)")
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_CONTRACTED = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't "
    "haven't he'd he'd've he's how'd how'll how's i'd've i'm i've isn't it'd it'd've it'll let's ma'am "
    "mightn't mightn't've might've mustn't must've needn't not've o'clock oughtn't shan't she'd've she's "
    "should've shouldn't shouldn't've somebody'd've somebody'll somebody's someone'd someone'd've "
    "someone'll someone's something'd something'd've something'll that's there'd there'd've there're "
    "there's they'd they'd've they'll they're they've 'twas wasn't we'd've we've weren't what'll what're "
    "what's what've when's where'd where's where've who'd who'd've who'll who's who've why'll why're "
    "why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're "
    "you've"
).split()


def _contraction_map() -> dict[str, str]:
    """Each contraction keyed by its apostrophe-less spelling, and (for double contractions) by the spellings
    that keep one of the two apostrophes ("couldnt've", "couldn'tve")."""
    table: dict[str, str] = {}
    for word in _CONTRACTED:
        table[word.replace("'", "")] = word
        positions = [i for i, ch in enumerate(word) if ch == "'"]
        if len(positions) == 2:
            for keep in positions:
                table["".join(ch for i, ch in enumerate(word) if ch != "'" or i == keep)] = word
    for word in ("lets", "shes"):   # the VQA table maps only the apostrophe forms of these two
        table.pop(word)
    return table


_CONTRACTIONS = _contraction_map()


def normalize_answer(text: str) -> str:
    """The VQA evaluation's normalised form of an answer string (see the module docstring)."""
    if not isinstance(text, str):
        raise TypeError(f"normalize_answer: expected a string, got {type(text).__name__} ({text!r})")
    text = text.replace("\n", " ").replace("\t", " ").strip()
    out = text
    strip_all = _COMMA_DIGITS.search(text) is not None
    for p in _PUNCT:
        if strip_all or (p + " " in text or " " + p in text):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _PERIOD.sub("", out)
    words = []
    for word in out.lower().split():
        word = _NUMBERS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words).replace(",", "")


def soft_score(count: int, num_answers: int = 10) -> float:
    """Accuracy of an answer that ``count`` of ``num_answers`` humans gave: the mean over leave-one-out
    subsets of min(matches / 3, 1) (0.3, 0.6, 0.9, 1.0 for 1, 2, 3, >= 4 of 10)."""
    if not 0 <= count <= num_answers or num_answers < 1:
        raise ValueError(f"soft_score: need 0 <= count <= num_answers and num_answers >= 1, got {count}, "
                         f"{num_answers}")
    if num_answers == 1:
        return min(count / 3, 1.0)
    return (count * min((count - 1) / 3, 1.0) + (num_answers - count) * min(count / 3, 1.0)) / num_answers


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy of ``prediction`` against the human ``answers`` (both normalised here)."""
    if not answers:
        raise ValueError("vqa_accuracy: a question needs at least one human answer")
    pred = normalize_answer(prediction)
    return soft_score(sum(normalize_answer(a) == pred for a in answers), len(answers))


class VQAAccuracy(Metric):
    """``update(logits (B, A), targets (B, A))`` adds the soft score of each question's arg-max answer;
    ``compute()`` is their mean. Questions whose human answers are all outside the vocabulary (all-zero
    targets) count with accuracy 0, as on the VQA server."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("score", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits: Tensor, targets: Tensor) -> None:
        picked = _picked_scores(logits, targets, "VQAAccuracy")
        self.score += picked.sum()
        self.total += picked.numel()

    def compute(self) -> Tensor:
        return self.score / self.total.clamp_min(1)


def _picked_scores(logits: Tensor, targets: Tensor, name: str) -> Tensor:
    if logits.ndim != 2 or logits.shape != targets.shape:
        raise ValueError(f"{name}: logits and targets must both be (B, A), got {tuple(logits.shape)} and "
                         f"{tuple(targets.shape)}")
    return targets.gather(1, logits.argmax(dim=1, keepdim=True)).squeeze(1).double()


class VQAScores(Metric):
    """Keeps each question's accuracy: ``update(logits (B, A), targets (B, A), question_ids (B,))``;
    ``compute()`` returns ``accuracy`` and, when ``groups`` (VQA-Rephrasings: original question id -> its
    rephrasing ids) and/or ``subsets`` (VQA-CE: name -> question ids) are given, the ``consistency@k``,
    ``original_accuracy``, ``rephrasing_accuracy`` of ``consistency_scores`` and the ``<name>_accuracy`` of
    ``subset_accuracies``. A question id scored twice (DDP padding) counts once."""

    full_state_update = False

    def __init__(self, groups: Optional[Mapping[int, Sequence[int]]] = None,
                 subsets: Optional[Mapping[str, Iterable[int]]] = None, ks: Sequence[int] = (1, 2, 3, 4),
                 **kwargs):
        super().__init__(**kwargs)
        self.groups = {int(k): [int(q) for q in v] for k, v in (groups or {}).items()}
        self.subsets = {name: {int(q) for q in ids} for name, ids in (subsets or {}).items()}
        self.ks = tuple(int(k) for k in ks)
        self.add_state("ids", default=[], dist_reduce_fx="cat")
        self.add_state("scores", default=[], dist_reduce_fx="cat")

    def update(self, logits: Tensor, targets: Tensor, question_ids: Tensor) -> None:
        picked = _picked_scores(logits, targets, "VQAScores")
        if question_ids.shape != picked.shape:
            raise ValueError(f"VQAScores: question_ids must be ({picked.numel()},), got "
                             f"{tuple(question_ids.shape)}")
        self.ids.append(question_ids.long())
        self.scores.append(picked)

    def compute(self) -> dict[str, Tensor]:
        ids, scores = _cat_state(self.ids), _cat_state(self.scores)
        table = dict(zip(ids, scores))
        out = {"accuracy": sum(table.values()) / max(len(table), 1)}
        if self.groups:
            out.update(consistency_scores(table, self.groups, self.ks))
        if self.subsets:
            out.update(subset_accuracies(table, self.subsets))
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in out.items()}


def _cat_state(state) -> list:
    """A ``cat`` state as a Python list: a list of batch tensors, or one tensor after DDP synchronisation."""
    if isinstance(state, list) and not state:
        return []
    return dim_zero_cat(state).tolist()


def consistency_scores(scores: Mapping[int, float], groups: Mapping[int, Sequence[int]],
                       ks: Sequence[int] = (1, 2, 3, 4)) -> dict[str, float]:
    """Consensus scores of VQA-Rephrasings (Shah et al. 2019, the official ``calc_consistency``): a group is
    an original question and its rephrasings; CS(k) is the mean over groups of the share of k-question subsets
    of the group whose questions all have accuracy > 0. Groups with fewer than k questions do not count for
    CS(k) (the official code divides by zero there). Also the accuracy on the originals and on the
    rephrasings. ``scores``: question id -> VQA accuracy; every grouped id must be scored. Returns fractions
    in [0, 1]."""
    missing = [q for o, reps in groups.items() for q in (o, *reps) if q not in scores]
    if missing:
        raise ValueError(f"consistency_scores: {len(missing)} grouped question(s) have no score, e.g. "
                         f"{missing[:5]}")
    out: dict[str, float] = {}
    for k in ks:
        if k < 1:
            raise ValueError(f"consistency_scores: k must be >= 1, got {k}")
        values = []
        for original, reps in groups.items():
            group = [scores[original], *(scores[q] for q in reps)]
            if len(group) < k:
                continue
            subsets = list(itertools.combinations(group, k))
            values.append(sum(all(s > 0 for s in sub) for sub in subsets) / len(subsets))
        out[f"consistency@{k}"] = sum(values) / len(values) if values else float("nan")
    originals = [scores[o] for o in groups]
    reps = [scores[q] for r in groups.values() for q in r]
    out["original_accuracy"] = sum(originals) / len(originals) if originals else float("nan")
    out["rephrasing_accuracy"] = sum(reps) / len(reps) if reps else float("nan")
    return out


def subset_accuracies(scores: Mapping[int, float], subsets: Mapping[str, Iterable[int]]) -> dict[str, float]:
    """``<name>_accuracy``: the mean accuracy over each subset's scored questions (VQA-CE: counterexamples,
    hard, easy); subset ids that were not evaluated are ignored, an empty intersection gives NaN."""
    out = {}
    for name, ids in subsets.items():
        vals = [scores[q] for q in ids if q in scores]
        out[f"{name}_accuracy"] = sum(vals) / len(vals) if vals else float("nan")
    return out
