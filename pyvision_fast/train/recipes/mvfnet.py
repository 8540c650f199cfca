"""``mvfnet``: MVFNet video action recognition (Wu et al., AAAI 2021; shared/papers.md section 9) on datalists
of frame folders or raw videos (``pyvision_fast.data.video_datalist``).

``--data DIR`` holds the datalists ``train_list`` and ``val_list`` (default ``train.txt``, ``val.txt``) whose
paths are relative to ``DIR/train_root`` and ``DIR/val_root`` (default ``DIR`` itself; absolute roots work
too). Frame folders by default (``filename_tmpl`` ``img_{:05d}.jpg`` from ``start_index`` 1, K400's), raw
videos with ``--set video=True``. ``num_classes`` None takes ``1 + the largest training label``; set it for a
real dataset (``--set num_classes=400``) so that a label outside the range is an error naming its line.

Defaults are the official K400 R50 8x8 config (``configs/MVFNet/K400/mvf_kinetics400_2d_rgb_r50_dense.py``):
``mvfnet_r50`` with ``num_segments = clip_len`` 8, dense sampling with ``frame_interval`` 8, RandomResizedCrop
224 + flip, SGD (momentum 0.9, nesterov, weight decay 1e-4 on every parameter as mmcv's default optimizer
does: ``--set decay_norm_bias=False`` exempts norms and biases), gradient clipping at norm 40, 150 epochs with
the lr divided by 10 at epochs 90 and 130, linear warm-up from ``warmup_ratio`` 0.01 of the lr over 10 epochs
(the official 25,070 iterations are 10 epochs of K400 at 96 videos per iteration), 12 videos per process.

Learning rate: the official 0.015 is for 8 GPUs x 12 videos = 96; the default ``blr`` 0.04 gives
``lr = 0.04 * global_batch / 256 = 0.015 * global_batch / 96`` (linear scaling; ``--lr`` sets it directly).

Evaluation: ``pvf eval mvfnet`` runs the official test, ``test_clips`` 10 clips x ``test_crops`` 3 crops
(ThreeCrop at 256 after resizing the short side to 256) per video, the views' logits averaged
(``average_views="score"``) or their softmax probabilities (``"prob"``); validation during ``pvf train``
(every ``eval_every`` 10 epochs and at the end, as the official ``eval_interval``) runs the official
validation, ``val_clips`` 1 clip x ``val_crops`` 1 centre crop 224, 30x cheaper (``--set val_clips=10
val_crops=3`` validates with the test views). ``--eval-batch-size`` sets the evaluation batch apart from
the training one. Views run through the model ``eval_chunk``
clips at a time. Metrics (torchmetrics, synchronised across processes): ``top1`` (main), ``top5`` and
``mean_class_accuracy`` (the mean of per-class recalls).

``pretrained``: torchvision ImageNet ResNet weights (``resnet50-11ad3fa6.pth``, the paper's start; ``fc`` is
skipped, the MVF modules and the classifier keep their initialisation) or an official MVFNet checkpoint; both
convert through ``MVFNet.adapt_state_dict``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...data.video_datalist import VideoDatalist, video_test_transform, video_train_transform
from ..recipe import Recipe, StepContext

__all__ = ["MVFNetRecipe", "RECIPE"]


class MVFNetRecipe(Recipe):
    name = "mvfnet"
    main_metric = "top1"
    main_mode = "max"
    defaults = dict(
        model="mvfnet_r50",
        train_list="train.txt",
        val_list="val.txt",
        train_root="",               # folder the train datalist's paths are relative to ("" = --data)
        val_root="",
        video=False,                 # raw videos (PyAV) instead of frame folders
        filename_tmpl="img_{:05d}.jpg",
        start_index=1,
        clip_len=8,                  # T: frames per clip = the model's num_segments
        frame_interval=8,
        sampling="dense",            # dense (MVFNet) | segment (TSN)
        out_of_bound="clamp",        # videos shorter than a clip: clamp (official) | loop (mmaction2) | error
        check_frames=True,           # frame folders: first and last declared frame exist (checked up front)
        scale=(0.08, 1.0),           # RandomResizedCrop area range
        hflip=0.5,
        test_clips=10,               # pvf eval: the official test, 10 clips x 3 crops
        test_crops=3,                # 3: ThreeCrop at test_short_side | 1: centre crop img_size
        val_clips=1,                 # validation during pvf train: the official val, 1 clip, centre crop
        val_crops=1,
        test_short_side=256,
        average_views="score",       # score (mean logits) | prob (mean softmax)
        eval_chunk=30,               # clips per model call at evaluation
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        dropout=0.5,
        alpha=0.125,
        batch_size=12,
        opt="sgd",
        blr=0.04,                    # lr = blr * global batch / 256 (0.015 at 96)
        momentum=0.9,
        nesterov=True,
        weight_decay=1e-4,
        decay_norm_bias=True,        # official: weight decay on every parameter
        clip_grad=40.0,
        sched="multistep",
        decay_milestones=(90, 130),
        decay_rate=0.1,
        epochs=150,
        warmup_epochs=10,
        warmup_ratio=0.01,           # warm-up starts at warmup_ratio * lr (mmcv's linear warm-up)
        warmup_lr=None,              # None: warmup_ratio * lr
        eval_every=10,
        label_smoothing=0.0,
        mixup=0.0,
        cutmix=0.0,
    )

    # --- data -----------------------------------------------------------------------------------------------
    def _common(self) -> dict:
        c = self.cfg
        return dict(clip_len=c.clip_len, frame_interval=c.frame_interval, sampling=c.sampling, video=c.video,
                    filename_tmpl=c.filename_tmpl, start_index=c.start_index, num_classes=c.num_classes,
                    out_of_bound=c.out_of_bound, check_frames=c.check_frames)

    def build_datasets(self, data_dir: str):
        c = self.cfg
        root = Path(os.fspath(data_dir))
        if not root.is_dir():
            raise FileNotFoundError(f"--data {str(root)!r} does not exist (the folder of {c.train_list} and "
                                    f"{c.val_list})")
        clips, crops, names = ((c.test_clips, c.test_crops, "test") if self.for_eval
                               else (c.val_clips, c.val_crops, "val"))
        if crops not in (1, 3):
            raise ValueError(f"mvfnet: {names}_crops must be 1 or 3, got {crops}")
        if not isinstance(clips, int) or clips < 1:
            raise ValueError(f"mvfnet: {names}_clips must be a positive integer, got {clips!r}")
        if c.average_views not in ("score", "prob"):
            raise ValueError(f"mvfnet: average_views must be 'score' or 'prob', got {c.average_views!r}")
        if c.pretrained and not Path(c.pretrained).is_file():
            raise FileNotFoundError(f"pretrained weights {str(c.pretrained)!r} do not exist")
        train_tf = video_train_transform(c.img_size, scale=tuple(c.scale), hflip=c.hflip, mean=c.mean,
                                         std=c.std)
        test_tf = video_test_transform(c.test_short_side, crops, None if crops == 3 else c.img_size, mean=c.mean,
                                       std=c.std)
        train = VideoDatalist(root / c.train_list, root / c.train_root, train=True, transform=train_tf,
                              **self._common())
        val = None
        if (root / c.val_list).is_file():
            val = VideoDatalist(root / c.val_list, root / c.val_root, train=False, num_clips=clips,
                                transform=test_tf, **self._common())
        if c.num_classes is None and val is not None and len(val.classes) > len(train.classes):
            train.classes = val.classes  # the engine takes num_classes from the training set
        return train, val

    # --- model and optimisation -----------------------------------------------------------------------------
    def build_model(self, num_classes: Optional[int]) -> nn.Module:
        """``cfg.model`` with ``num_segments = clip_len``, ``dropout``, ``alpha`` (``--model-arg`` wins)."""
        from ...models import create_model

        c = self.cfg
        kwargs = dict(c.model_args)
        kwargs.setdefault("num_segments", c.clip_len)
        kwargs.setdefault("dropout", c.dropout)
        kwargs.setdefault("alpha", c.alpha)
        if num_classes is not None:
            kwargs.setdefault("num_classes", num_classes)
        model = create_model(c.model, **kwargs)
        if getattr(model, "num_segments", c.clip_len) != c.clip_len:
            raise ValueError(f"mvfnet: the model's num_segments {model.num_segments} differs from clip_len "
                             f"{c.clip_len}")
        return model

    def param_groups(self, model: nn.Module) -> Optional[list[dict]]:
        """Sets the warm-up start (``warmup_ratio * lr`` unless ``warmup_lr`` is given; the engine has
        resolved ``lr`` when it asks for the groups) and returns one group decaying every parameter
        (official), or None (the engine's groups: no decay on norms and biases) with
        ``decay_norm_bias=False``."""
        c = self.cfg
        if c.warmup_lr is None:
            c.warmup_lr = c.warmup_ratio * c.lr
        if not c.decay_norm_bias:
            return None
        params = [p for p in model.parameters() if p.requires_grad]
        return [{"params": params, "weight_decay": c.weight_decay}]

    # --- steps ----------------------------------------------------------------------------------------------
    def train_loss(self, model: nn.Module, batch, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        """``batch``: clips (B, 3, T, H, W) float32 and labels (B,) int64 (or (B, K) soft targets after
        Mixup). Returns the mean cross-entropy."""
        x, y = batch[0], batch[1]
        logits = model(x).float()
        if y.ndim == 2:
            return torch.sum(-y * F.log_softmax(logits, dim=-1), dim=-1).mean(), {}
        return F.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing), {}

    def build_metrics(self, num_classes: Optional[int]):
        from torchmetrics import MetricCollection
        from torchmetrics.classification import MulticlassAccuracy

        if not num_classes:
            raise ValueError("mvfnet: metrics need num_classes")
        return MetricCollection({
            "top1": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
            "top5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
            "mean_class_accuracy": MulticlassAccuracy(num_classes, average="macro"),
        })

    def video_scores(self, model: nn.Module, views: Tensor) -> Tensor:
        """Views (B, V, 3, T, H, W) -> (B, K) float32: logits of every view (``eval_chunk`` clips per call)
        averaged over V, as logits (``score``) or as log of the mean softmax (``prob``)."""
        B, V = views.shape[:2]
        flat = views.flatten(0, 1)
        chunk = max(int(self.cfg.eval_chunk), 1)
        with torch.no_grad():
            logits = torch.cat([model(flat[i:i + chunk]).float() for i in range(0, len(flat), chunk)])
        logits = logits.view(B, V, -1)
        if self.cfg.average_views == "prob":
            return logits.softmax(-1).mean(1).clamp_min(1e-12).log()
        return logits.mean(1)

    def eval_update(self, model: nn.Module, batch, metrics, ctx: StepContext) -> Tensor:
        """``batch``: views (B, V, 3, T, H, W) (or one clip per video, (B, 3, T, H, W)) and labels (B,).
        Updates ``metrics`` with the multi-view scores; returns their mean cross-entropy."""
        x, y = batch[0], batch[1]
        scores = self.video_scores(model, x if x.ndim == 6 else x[:, None])
        metrics.update(scores, y)
        return F.cross_entropy(scores, y)


RECIPE = MVFNetRecipe
