"""``cib_lxmert``: CIB fine-tuning of LXMERT on VQA v2 (shared/papers.md section 8; ``models.cib``,
``losses.mutual_info``, ``data.vqa``, ``metrics.vqa``), evaluated by VQA accuracy, and on VQA-Rephrasings
(consistency CS(k)) or VQA-CE (subset accuracies) when asked.

``--data`` layout (file names as the datasets ship them; ``data.vqa`` documents the formats):

* ``v2_OpenEnded_mscoco_{train2014,val2014}_questions.json``,
  ``v2_mscoco_{train2014,val2014}_annotations.json`` (``train_split`` / ``val_split`` name other splits);
* ``imgfeat/train_obj36.h5``, ``imgfeat/val_obj36.h5``: LXMERT's 36 x 2048 Faster R-CNN features in the CIB
  repo's HDF5 layout (``train_features`` / ``val_features``);
* ``trainval_ans2label.json`` (``ans2label``), and ``vocab.txt``, bert-base-uncased's word pieces (``vocab``:
  a path relative to DATA or absolute; nothing is downloaded);
* optional: ``--set rephrasings=valrep2014_humans_og`` evaluates on VQA-Rephrasings
  (``v2_OpenEnded_mscoco_valrep2014_humans_og_questions.json`` +
  ``v2_mscoco_valrep2014_humans_og_annotations.json``, val features) and adds ``consistency@1..4``,
  ``original_accuracy``, ``rephrasing_accuracy``; ``--set vqa_ce=vqa_ce`` (a folder with
  ``counterexamples.json`` and ``hard.json``) adds ``counterexample_accuracy``, ``hard_accuracy``,
  ``easy_accuracy`` on the validation split.

Pre-trained LXMERT: ``--set lxmert_weights=/path/snap/pretrained/model_LXRT.pth`` (or a Hugging Face
``unc-nlp/lxmert-base-uncased`` folder) loads the encoder before training
(``models.cib.load_lxmert_pretrained``); without it LXMERT starts from random initialisation (what the offline
tests do). The official run starts from LXMERT's pre-trained ``snap/pretrained/model``.

Defaults are the official ``train.sh``: AdamW lr 2e-5 (no weight decay: the official CIB parameter groups set
none and transformers' AdamW defaults to 0), batch 64, 10 epochs, linear warm-up over the first 10 % of
updates from 0 then cosine to 0, gradient clipping at 5, beta 5e-5, questions cut to 20 word pieces. The loss
is ``BCEWithLogits(logits, soft targets) * num_answers + beta * CIB`` (+ the learned CLUB's own fit when
``--model-arg club=learned``); the MI estimators train at ``mi_lr_scale`` = 100 x the lr (their own parameter
group; timm's scheduler applies ``lr_scale``). The estimator choice is a model argument (``--model-arg
mi_lb=JSD``, ``club=learned``, ``cib=False`` for plain LXMERT fine-tuning) so that checkpoints record it.
Per-step logs: ``bce``, ``cib``, ``upper_bound_l``, ``upper_bound_v``, ``lower_bound_lv``, ``skl``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..recipe import Recipe, StepContext

__all__ = ["CibLxmertRecipe", "RECIPE"]


class CibLxmertRecipe(Recipe):
    name = "cib_lxmert"
    main_metric = "accuracy"
    main_mode = "max"
    defaults = dict(
        model="cib_lxmert",
        model_args=dict(cib=True, mi_lb="InfoNCE", club="free"),
        opt="adamw",
        lr=2e-5,
        weight_decay=0.0,
        opt_eps=1e-8,
        batch_size=64,                   # per process
        epochs=10,
        sched="cosine",
        warmup_ratio=0.1,                # of all updates; sets warmup_epochs = warmup_ratio * epochs
        warmup_lr=0.0,
        min_lr=0.0,
        clip_grad=5.0,
        beta=5e-5,                       # weight of the CIB term (train.sh; param.py's default is 5e-2)
        mi_lr_scale=100.0,               # the MI estimators' lr multiple
        lxmert_weights=None,             # model_LXRT.pth or an HF unc-nlp/lxmert-base-uncased folder
        train_split="train2014",
        val_split="val2014",
        train_features="imgfeat/train_obj36.h5",
        val_features="imgfeat/val_obj36.h5",
        ans2label="trainval_ans2label.json",
        vocab="vocab.txt",
        max_seq_length=20,
        num_boxes=36,
        missing_features="error",        # error | drop (questions whose image has no features)
        rephrasings=None,                # e.g. "valrep2014_humans_og": evaluate VQA-Rephrasings + consistency
        consistency_ks=(1, 2, 3, 4),
        vqa_ce=None,                     # folder with counterexamples.json and hard.json
    )

    def __init__(self, cfg, for_eval: bool = False):
        super().__init__(cfg, for_eval)
        if cfg.get("warmup_ratio") is not None:
            if not 0 <= float(cfg.warmup_ratio) < 1:
                raise ValueError(f"cib_lxmert: warmup_ratio must be in [0, 1), got {cfg.warmup_ratio}")
            cfg.warmup_epochs = float(cfg.warmup_ratio) * cfg.epochs
        self.num_answers: Optional[int] = None
        self.groups: dict[int, list[int]] = {}
        self.subsets: dict[str, set[int]] = {}

    # --- data -----------------------------------------------------------------------------------------------
    def _path(self, root: Path, value) -> Path:
        p = Path(os.fspath(value))
        return p if p.is_absolute() else root / p

    def build_datasets(self, data_dir: str):
        from ...data.vqa import (RegionFeatures, VQADataset, load_ans2label, load_bert_tokenizer,
                                 load_questions, load_vqa_ce, rephrasing_groups, vqa_files)

        c = self.cfg
        root = Path(os.fspath(data_dir))
        if not root.is_dir():
            raise FileNotFoundError(f"--data {str(root)!r} does not exist (expected VQA v2 JSONs, "
                                    f"imgfeat/*.h5, {c.ans2label}, {c.vocab})")
        if c.missing_features not in ("error", "drop"):
            raise ValueError(f"cib_lxmert: missing_features must be 'error' or 'drop', got "
                             f"{c.missing_features!r}")
        ans2label = load_ans2label(self._path(root, c.ans2label))
        self.num_answers = len(ans2label)
        tokenizer = load_bert_tokenizer(self._path(root, c.vocab))

        def dataset(split: str, features: str):
            q, a = vqa_files(root, split)
            feats = RegionFeatures(self._path(root, features), num_boxes=c.num_boxes)
            return VQADataset(q, a if a.is_file() else None, feats, ans2label, tokenizer,
                              max_length=c.max_seq_length, missing_features=c.missing_features)

        train = None
        if not self.for_eval:
            q, _ = vqa_files(root, c.train_split)
            if not q.is_file():
                raise FileNotFoundError(f"cib_lxmert: training needs {q} (and its annotations, "
                                        f"{c.train_features}); pvf eval needs only the validation files")
            train = dataset(c.train_split, c.train_features)
            self._report("train", c.train_split, train)
        val_split = c.rephrasings or c.val_split
        q, a = vqa_files(root, val_split)
        val = None
        if q.is_file():
            if not a.is_file():
                raise FileNotFoundError(f"cib_lxmert: evaluation on {val_split} needs its annotations {a}")
            val = dataset(val_split, c.val_features)
            self._report("val", val_split, val)
            if c.rephrasings:
                self.groups = rephrasing_groups(load_questions(q))
            if c.vqa_ce:
                self.subsets = load_vqa_ce(self._path(root, c.vqa_ce), val.question_ids)
        elif c.rephrasings or c.vqa_ce or self.for_eval:
            raise FileNotFoundError(f"cib_lxmert: evaluation needs {q} and {a}")
        return train, val

    def _report(self, which: str, split: str, ds) -> None:
        if os.environ.get("RANK", "0") != "0":
            return
        s = ds.stats
        dropped = f", {s['dropped_no_features']} dropped (no features)" if s["dropped_no_features"] else ""
        print(f"cib_lxmert {which} ({split}): {len(ds)} of {s['questions']} questions{dropped}; "
              f"{s['answers_outside_vocabulary']} human answers outside the {len(ds.classes)}-answer "
              f"vocabulary dropped, {s['questions_without_vocabulary_answer']} questions left with none",
              file=sys.stderr)

    # --- model and optimisation -----------------------------------------------------------------------------
    def build_model(self, num_classes: Optional[int]) -> nn.Module:
        """``cfg.model`` (``cib_lxmert``; ``--model-arg`` overrides the LXMERT config and the estimators) for
        ``num_classes`` answers (the vocabulary's size), with ``lxmert_weights`` loaded when training."""
        from ...models import create_model
        from ...models.cib import load_lxmert_pretrained

        c = self.cfg
        n = num_classes or self.num_answers
        if not n:
            raise ValueError("cib_lxmert: the answer head needs the vocabulary size (read by build_datasets)")
        model = create_model(c.model, num_classes=n, **dict(c.model_args))
        if c.lxmert_weights and not self.for_eval:
            load_lxmert_pretrained(model, c.lxmert_weights)
        return model

    def param_groups(self, model: nn.Module) -> list[dict]:
        """Two groups as the official ``create_optimizer_and_scheduler``: the model, and the MI estimators at
        ``mi_lr_scale`` x the lr (``lr_scale`` for timm's scheduler; an explicit lr without a schedule)."""
        c = self.cfg
        estimators = list(model.estimator_parameters()) if hasattr(model, "estimator_parameters") else []
        ids = {id(p) for p in estimators}
        base = [p for p in model.parameters() if id(p) not in ids and p.requires_grad]
        groups = [{"params": base, "weight_decay": c.weight_decay}]
        if estimators:
            group = {"params": estimators, "weight_decay": c.weight_decay, "lr_scale": float(c.mi_lr_scale)}
            if c.sched == "none":
                group["lr"] = float(c.lr) * float(c.mi_lr_scale)
            groups.append(group)
        return groups

    # --- steps ----------------------------------------------------------------------------------------------
    def train_loss(self, model: nn.Module, batch, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        """``batch``: input_ids (B, L), attention_mask (B, L), features (B, 36, 2048), boxes (B, 36, 4), soft
        targets (B, A), question ids (B,). Loss: BCE * A + beta * CIB (+ the learned CLUB's fit)."""
        ids, mask, feats, boxes, target = batch[:5]
        cib = getattr(_unwrap(model), "cib", False)
        out = model(ids, mask, feats, boxes, compute_cib=cib)
        logit = out["logit"] if cib else out
        bce = F.binary_cross_entropy_with_logits(logit, target) * target.shape[1]
        if not cib:
            return bce, {"bce": float(bce.detach())}
        loss = bce + self.cfg.beta * out["cib"] + out["club_loss"]
        logs = {k: float(out[k].detach()) for k in ("cib", "upper_bound_l", "upper_bound_v", "lower_bound_lv",
                                                   "skl")}
        return loss, {"bce": float(bce.detach()), **logs}

    def build_metrics(self, num_classes: Optional[int]):
        from ...metrics.vqa import VQAScores

        return VQAScores(groups=self.groups, subsets=self.subsets, ks=tuple(self.cfg.consistency_ks))

    def eval_update(self, model: nn.Module, batch, metrics, ctx: StepContext) -> Tensor:
        ids, mask, feats, boxes, target, qid = batch
        with torch.no_grad():
            logit = model(ids, mask, feats, boxes)
        metrics.update(logit, target, qid)
        return F.binary_cross_entropy_with_logits(logit, target) * target.shape[1]


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


RECIPE = CibLxmertRecipe
