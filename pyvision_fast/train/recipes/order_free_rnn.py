"""``order_free_rnn``: train the Order-Free RNN with visual attention (``order_free_rnn_resnet101``,
shared/papers.md section 11, ``pyvision_fast.models.order_free_rnn``) for multi-label classification on
MS-COCO 2014 or NUS-WIDE, and evaluate its decoded label sets.

``--data`` layout (``dataset=coco``, default): ``DATA/annotations/instances_train2014.json`` +
``DATA/train2014/`` and ``DATA/annotations/instances_val2014.json`` + ``DATA/val2014/`` (``train_split`` /
``val_split`` name others); ``pvf eval`` needs only the validation pair. ``dataset=nuswide``: the NUS-WIDE
release's layout (``pyvision_fast.data.multilabel``: ``ImageList/``, ``Groundtruth/TrainTestLabels/``,
``Concepts81.txt``, ``Flickr/``); train = its Train list, validation = its Test list. Images without labels
are dropped.

Training, in two stages as the paper (the CNN is trained first, then the RNN on it): the first ``cnn_epochs``
epochs train the backbone and its preliminary classifier alone with the binary cross-entropy of ``v_prob``;
after them the loss is the order-free RNN loss plus ``cnn_loss_weight`` x that BCE, and the CNN keeps
training with the RNN (stated choice: the paper does not say whether the CNN is frozen in the second stage; a
frozen CNN under DDP would leave parameters without gradients). Defaults not in the paper (stated choices):
Adam, lr 1e-4 absolute (Show-Attend-Tell's encoder lr), no weight decay, cosine schedule, batch 32 per
process, 30 epochs of which 10 are the CNN stage, gradient clipping at 5 (Show-Attend-Tell's), 224 x 224
inputs resized without cropping (a crop can remove labelled objects) with a random horizontal flip, the
backbone's own normalisation (ImageNet's for torchvision's ResNets, timm's pretrained config for
``timm/<name>``). Start from ImageNet weights with ``--pretrained`` (a torchvision ResNet-101 state_dict; the
classifier, resized, is left at its initialisation) when they are at hand.

Evaluation: the decoder's label sets from beam search (``beam_size`` 3, ``threshold`` 1e-3 on the path
probability, the end signal) give ``C-P, C-R, C-F1, O-P, O-R, O-F1`` (main metric ``O-F1``); ``mAP`` ranks
each label by its highest step probability along the decoded path; ``cnn_*`` are the same metrics of the
preliminary classifier (``v_prob >= 0.5``; its mAP from ``v_prob``). The evaluation loss is the order-free
RNN loss (the BCE in the CNN stage).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..recipe import Recipe, StepContext

__all__ = ["OrderFreeRNNRecipe", "RECIPE"]


class OrderFreeRNNRecipe(Recipe):
    name = "order_free_rnn"
    main_metric = "O-F1"
    main_mode = "max"
    defaults = dict(
        model="order_free_rnn_resnet101",
        img_size=224,
        opt="adam",
        lr=1e-4,                        # absolute; not scaled with the batch
        weight_decay=0.0,
        batch_size=32,                  # per process
        epochs=30,
        sched="cosine",
        min_lr=1e-6,
        clip_grad=5.0,
        dataset="coco",                 # coco | nuswide
        train_split="train2014",        # coco: annotations/instances_<split>.json + <split>/
        val_split="val2014",
        cnn_epochs=10,                  # stage 1: CNN + preliminary classifier alone (BCE)
        cnn_loss_weight=1.0,            # stage 2: RNN loss + this x BCE
        beam_size=3,
        threshold=1e-3,                 # path-probability stop of the decoder
        max_steps=None,                 # decoder steps (None: num_classes + 1)
        cnn_threshold=0.5,              # v_prob >= this: the preliminary classifier's label set
        hflip=0.5,
        check_images=True,              # every listed image must exist before training
    )

    def __init__(self, cfg, for_eval: bool = False):
        super().__init__(cfg, for_eval)
        self._stage = "joint"

    # --- data -----------------------------------------------------------------------------------------------
    def _data_config(self) -> dict:
        from ...models.order_free_rnn import data_config

        args = dict(self.cfg.model_args)
        backbone = args.get("backbone", "resnet101")
        return data_config(backbone)

    def transforms(self, training: bool):
        from torchvision import transforms as T

        c = self.cfg
        norm = self._data_config()
        steps = [T.Resize((c.img_size, c.img_size))]
        if training and c.hflip > 0:
            steps.append(T.RandomHorizontalFlip(c.hflip))
        steps += [T.ToTensor(), T.Normalize(norm["mean"], norm["std"])]
        return T.Compose(steps)

    def build_datasets(self, data_dir: str):
        from ...data.multilabel import CocoMultiLabel, NusWide

        c = self.cfg
        root = Path(os.fspath(data_dir))
        if not root.is_dir():
            raise FileNotFoundError(f"--data {str(root)!r} does not exist")
        if c.dataset == "nuswide":
            train = None if self.for_eval else NusWide(root, "train", self.transforms(True),
                                                       check_files=c.check_images)
            return train, NusWide(root, "test", self.transforms(False), check_files=c.check_images)
        if c.dataset != "coco":
            raise ValueError(f"order_free_rnn: dataset must be 'coco' or 'nuswide', got {c.dataset!r}")

        def coco(split: str, training: bool):
            ann = root / "annotations" / f"instances_{split}.json"
            if not ann.is_file():
                raise FileNotFoundError(f"order_free_rnn: {str(ann)!r} does not exist (COCO layout: "
                                        f"DATA/annotations/instances_<split>.json and DATA/<split>/)")
            return CocoMultiLabel(ann, root / split, self.transforms(training), check_files=c.check_images)

        train = None if self.for_eval else coco(c.train_split, True)
        val = coco(c.val_split, False)
        if train is not None and train.classes != val.classes:
            raise ValueError(f"order_free_rnn: the categories of {c.train_split} and {c.val_split} differ")
        return train, val

    # --- model ----------------------------------------------------------------------------------------------
    def build_model(self, num_classes: Optional[int]) -> nn.Module:
        from ...models import create_model

        if not num_classes:
            raise ValueError("order_free_rnn: num_classes is needed (taken from the training data)")
        kwargs = dict(self.cfg.model_args)
        kwargs.setdefault("num_classes", num_classes)
        kwargs.setdefault("threshold", self.cfg.threshold)
        if self.cfg.max_steps is not None:
            kwargs.setdefault("max_steps", self.cfg.max_steps)
        return create_model(self.cfg.model, **kwargs)

    # --- steps ----------------------------------------------------------------------------------------------
    def stage(self, epoch: int) -> str:
        """'cnn' during the first ``cnn_epochs`` epochs, 'joint' after them."""
        return "cnn" if epoch < self.cfg.cnn_epochs else "joint"

    def on_epoch_start(self, epoch: int, model: nn.Module, ctx: StepContext) -> None:
        self._stage = self.stage(epoch)

    def train_loss(self, model: nn.Module, batch, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        """``batch``: images (B, 3, H, W) float, targets (B, C) float multi-hot. Stage 'cnn': BCE of the
        preliminary logits; stage 'joint': order-free RNN loss + ``cnn_loss_weight`` x BCE."""
        x, y = batch[0], batch[1]
        stage = self.stage(ctx.epoch)
        out = model(x, y, stage=stage)
        bce = F.binary_cross_entropy_with_logits(out["cnn_logits"].float(), y.float())
        if stage == "cnn":
            return bce + out["rnn_nll"], {"bce": float(bce.detach())}
        rnn = out["rnn_nll"]
        logs = {"bce": float(bce.detach()), "rnn_nll": float(rnn.detach())}
        return rnn + self.cfg.cnn_loss_weight * bce, logs

    def build_metrics(self, num_classes: Optional[int]):
        from torchmetrics import MetricCollection

        from ...metrics.multilabel import MultiLabelMetrics

        return MetricCollection({"rnn": MultiLabelMetrics(num_classes),
                                 "cnn": MultiLabelMetrics(num_classes, prefix="cnn_")})

    def eval_update(self, model: nn.Module, batch, metrics, ctx: StepContext) -> Tensor:
        x, y = batch[0], batch[1]
        c = self.cfg
        stage = self.stage(ctx.epoch) if not self.for_eval else "joint"
        with torch.no_grad():
            out = model(x, y, stage=stage, decode=True, beam_size=c.beam_size, threshold=c.threshold,
                        max_steps=c.max_steps)
            probs = torch.sigmoid(out["cnn_logits"].float())
            metrics["rnn"].update(out["labels"], y, out["scores"])
            metrics["cnn"].update(probs >= c.cnn_threshold, y, probs)
            bce = F.binary_cross_entropy_with_logits(out["cnn_logits"].float(), y.float())
        return bce if stage == "cnn" else out["rnn_nll"]


RECIPE = OrderFreeRNNRecipe
