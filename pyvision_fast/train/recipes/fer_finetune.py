"""``fer_finetune``: fine-tune a ViT from an MAE encoder for facial expression recognition (MAE-SFER, shared/papers.md
section 1) on RAF-DB, AffectNet-7/8 or FERPlus in their official formats (``pyvision_fast.data.fer``).

``--set dataset=rafdb|affectnet7|affectnet8|ferplus``; ``--data`` is the dataset's own folder: RAF-DB's ``basic``
(``EmoLabel/``, ``Image/aligned/``), AffectNet's root (``Manually_Annotated_file_lists/``,
``Manually_Annotated_Images/``), FERPlus's folder (``fer2013new.csv``, ``FER2013Train/``, ``FER2013Valid/``,
``FER2013Test/``). Training uses the training split; evaluation the split the papers report (RAF-DB test, AffectNet
validation, FERPlus PrivateTest; ``eval_split`` overrides).

Defaults are the paper's MAE fine-tuning command (``--blr 5e-4 --layer_decay 0.65 --weight_decay 0.05 --drop_path
0.1 --reprob 0.25 --mixup 0.8 --cutmix 1.0 --epochs 100``, batch 16 with 2 accumulation steps, MAE's
``main_finetune``: AdamW, 5 warm-up epochs then half-cycle cosine to 1e-6, label smoothing 0.1, average pooling with
``fc_norm``), model ``vit_base_patch16_224``. Transforms (``transforms``): ``"sfer"`` (default) is MAE-SFER's
RAF-DB pipeline (:func:`pyvision_fast.data.transforms.rafdb_train_transform`) with random erasing at ``reprob``
(MAE-SFER's script used torchvision's default 0.5: ``--set reprob=0.5``); ``"timm"`` is MAE ``main_finetune``'s
RandAugment pipeline through ``timm.data.create_transform``. ``--set class_balance=True`` samples with MAE-SFER's
capped class-balanced weights (``min(max_count/count, 3)``; usual for AffectNet, whose training set is imbalanced
while its validation set has 500 images per class).

``pretrained`` is the path of an MAE checkpoint: a ``mae_vit_*`` state_dict (``pyvision_fast.models.mae`` or
facebookresearch/mae keys, plain or under ``model``, ``.safetensors`` or ``.pth``) or an encoder-only one (MAE's
``mae_pretrain_vit_*.pth``). The engine loads it with ``models.load_weights``; the ViT's ``adapt_state_dict``
converts MAE checkpoints as MAE's fine-tuning does (``models.mae.mae_to_vit_state_dict``: decoder and
``mask_token`` dropped, the encoder's final ``norm`` dropped under average pooling, ``fc_norm`` and ``head`` new,
``pos_embed`` resized to the model's grid), and this recipe starts the new head from a truncated normal of std 2e-5
as MAE does. A missing file is an error naming it before anything is built; a checkpoint that does not fit is an
error naming the file and the keys. MAE's own training checkpoints (``checkpoint-*.pth`` with their ``args``) load
directly (``models.read_state_dict`` stands inert objects in for the training metadata);
:func:`convert_mae_checkpoint` writes their encoder to a ``.safetensors`` file to keep.

Metrics (torchmetrics, synchronised across processes): ``accuracy`` (the main metric), ``mean_class_accuracy``
(macro recall), ``f1_macro`` and ``confusion_matrix`` (rows: true class, columns: prediction; a list of lists in the
results).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...data.fer import FER_DATASETS, build_fer_dataset
from ...data.samplers import class_balanced_weights
from ...data.transforms import rafdb_eval_transform, rafdb_train_transform, timm_transform
from ..recipe import Recipe, StepContext

__all__ = ["FERFinetuneRecipe", "RECIPE", "convert_mae_checkpoint"]


def convert_mae_checkpoint(src: Union[str, Path], dst: Union[str, Path]) -> Path:
    """Writes the encoder of an MAE checkpoint ``src`` (a ``checkpoint-*.pth`` of facebookresearch/mae or MAE-SFER
    with its ``args``, or any MAE state_dict) to the ``.safetensors`` file ``dst``, for ``--set pretrained=dst``."""
    from ...models import read_state_dict, save_safetensors
    from ...models.mae import mae_to_vit_state_dict

    state = read_state_dict(src)
    if "blocks.0.norm1.weight" not in state:
        raise ValueError(f"{src}: no ViT encoder in the checkpoint (no 'blocks.0.norm1.weight'; keys start with "
                         f"{sorted({k.split('.')[0] for k in state})[:8]})")
    return save_safetensors(mae_to_vit_state_dict(state), dst)


class FERFinetuneRecipe(Recipe):
    name = "fer_finetune"
    main_metric = "accuracy"
    main_mode = "max"
    defaults = dict(
        model="vit_base_patch16_224",
        dataset="rafdb",                 # rafdb | affectnet7 | affectnet8 | ferplus
        eval_split=None,                 # None: the split papers report (rafdb test, affectnet val, ferplus test)
        global_pool="avg",               # MAE fine-tuning: mean of patch tokens + fc_norm (--model-arg overrides)
        drop_path=0.1,                   # stochastic depth rate (--model-arg drop_path_rate= overrides)
        head_init_std=2e-5,              # MAE: the new head starts at trunc_normal(std 2e-5) when pretrained
        blr=5e-4,                        # lr = blr * global batch / 256
        batch_size=16,
        accum_steps=2,
        weight_decay=0.05,
        layer_decay=0.65,
        opt="adamw",
        sched="cosine",
        warmup_epochs=5,
        warmup_lr=0.0,
        min_lr=1e-6,
        epochs=100,
        label_smoothing=0.1,
        mixup=0.8,
        cutmix=1.0,
        transforms="sfer",               # sfer (MAE-SFER RAF-DB pipeline) | timm (RandAugment, create_transform)
        reprob=0.25,                     # random-erasing probability (both pipelines)
        aa="rand-m9-mstd0.5-inc1",       # timm pipeline only
        remode="pixel",                  # timm pipeline only
        crop_pct=None,                   # timm pipeline, evaluation (None: timm's 0.875)
        interpolation="bicubic",         # timm pipeline only
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        class_balance=False,             # MAE-SFER's capped class-balanced sampling
        balance_max_ratio=3.0,           # the cap of class_balanced_weights
        ferplus_vote="ferplus",          # ferplus (the authors' majority) | argmax (plurality)
        ferplus_ties="drop",             # argmax vote: drop | first
        affectnet_crop_face=False,       # crop AffectNet images to their annotated face box
        check_images=True,               # decode every image once before training
        bad_images="error",              # error | skip (as data.ImageFolder)
    )

    # --- data -------------------------------------------------------------------------------------------------
    def transforms(self, training: bool):
        c = self.cfg
        if c.transforms == "sfer":
            if training:
                return rafdb_train_transform(c.img_size, reprob=c.reprob, mean=c.mean, std=c.std)
            return rafdb_eval_transform(c.img_size, mean=c.mean, std=c.std)
        if c.transforms == "timm":
            return timm_transform(c, training)
        raise ValueError(f"fer_finetune: transforms must be 'sfer' or 'timm', got {c.transforms!r}")

    def _dataset_kwargs(self) -> dict:
        c = self.cfg
        kwargs = dict(check_images=c.check_images, bad_images=c.bad_images)
        if c.dataset.startswith("affectnet"):
            kwargs["crop_face"] = c.affectnet_crop_face
        elif c.dataset == "ferplus":
            kwargs.update(vote=c.ferplus_vote, ties=c.ferplus_ties)
        return kwargs

    def build_datasets(self, data_dir: str):
        c = self.cfg
        if c.dataset not in FER_DATASETS:
            raise ValueError(f"fer_finetune: dataset must be one of {sorted(FER_DATASETS)}, got {c.dataset!r}")
        if c.pretrained and not Path(c.pretrained).is_file():  # fail before the images are decoded
            raise FileNotFoundError(f"pretrained MAE checkpoint {str(c.pretrained)!r} does not exist")
        root = os.fspath(data_dir)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"--data {root!r} does not exist (the {c.dataset} dataset folder)")
        train_tf, eval_tf = self.transforms(True), self.transforms(False)
        kwargs = self._dataset_kwargs()
        train = build_fer_dataset(c.dataset, root, "train", train_tf, **kwargs)
        val = build_fer_dataset(c.dataset, root, c.eval_split or "eval", eval_tf, **kwargs)
        return train, val

    def train_sample_weights(self, train_set) -> Optional[Tensor]:
        if not self.cfg.class_balance:
            return None
        return class_balanced_weights(train_set.targets, self.cfg.balance_max_ratio)

    # --- model --------------------------------------------------------------------------------------------------
    def build_model(self, num_classes: Optional[int]) -> nn.Module:
        """``cfg.model`` with ``img_size``, ``global_pool``, ``drop_path_rate`` (``--model-arg`` wins) and
        ``num_classes``. With ``pretrained`` the file must exist and the head is re-initialised (trunc_normal, std
        ``head_init_std``, zero bias; a head the checkpoint carries at this size replaces it); the engine then
        loads the file."""
        from ...models import create_model

        c = self.cfg
        kwargs = dict(c.model_args)
        kwargs.setdefault("img_size", c.img_size)
        kwargs.setdefault("global_pool", c.global_pool)
        kwargs.setdefault("drop_path_rate", c.drop_path)
        if num_classes is not None:
            kwargs.setdefault("num_classes", num_classes)
        model = create_model(c.model, **kwargs)
        if c.pretrained:
            if not Path(c.pretrained).is_file():
                raise FileNotFoundError(f"pretrained MAE checkpoint {str(c.pretrained)!r} does not exist")
            head = getattr(model, "head", None)
            if isinstance(head, nn.Linear) and c.head_init_std:
                nn.init.trunc_normal_(head.weight, std=c.head_init_std)
                nn.init.zeros_(head.bias)
        return model

    # --- steps --------------------------------------------------------------------------------------------------
    def train_loss(self, model: nn.Module, batch, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        """``batch``: images (B, 3, H, W) float and targets (B,) int64, or (B, num_classes) float soft targets
        after Mixup/CutMix (label smoothing already inside them). Returns the mean cross-entropy."""
        x, y = batch[0], batch[1]
        logits = model(x).float()
        if y.ndim == 2:
            loss = torch.sum(-y * F.log_softmax(logits, dim=-1), dim=-1).mean()
        else:
            loss = F.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing)
        return loss, {}

    def build_metrics(self, num_classes: Optional[int]):
        from torchmetrics import MetricCollection
        from torchmetrics.classification import (MulticlassAccuracy, MulticlassConfusionMatrix,
                                                 MulticlassF1Score)

        if not num_classes:
            raise ValueError("fer_finetune: metrics need num_classes")
        return MetricCollection({
            "accuracy": MulticlassAccuracy(num_classes, average="micro"),
            "mean_class_accuracy": MulticlassAccuracy(num_classes, average="macro"),
            "f1_macro": MulticlassF1Score(num_classes, average="macro"),
            "confusion_matrix": MulticlassConfusionMatrix(num_classes),
        })

    def eval_update(self, model: nn.Module, batch, metrics, ctx: StepContext) -> Tensor:
        """Logits of ``batch`` (images (B, 3, H, W), targets (B,) int64) update ``metrics``; returns the mean
        (unsmoothed) cross-entropy."""
        x, y = batch[0], batch[1]
        with torch.no_grad():
            logits = model(x).float()
        metrics.update(logits, y)
        return F.cross_entropy(logits, y)


RECIPE = FERFinetuneRecipe
