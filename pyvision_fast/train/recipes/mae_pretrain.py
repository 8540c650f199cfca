"""``mae_pretrain``: masked-autoencoder pre-training (He et al. 2022) of a ``mae_vit_*`` model on unlabeled images,
as MAE-SFER pre-trains its ViTs on 270K AffectNet faces (shared/papers.md section 1).

Data (``--data DIR``), no labels needed:

* ``DIR/train/`` exists: the training images are every image under ``DIR/train/`` (any depth, so an ImageNet-style
  ``train/<class>/*`` tree works and its class folders are ignored), the validation images every image under
  ``DIR/val/`` when that folder exists.
* otherwise: every image under ``DIR`` (any depth; e.g. AffectNet's ``Manually_Annotated_Images/<n>/*.jpg``, as
  MAE-SFER passes it), and no validation split.

Images are files ending in ``data.IMG_EXTENSIONS`` (case-insensitive), hidden files and folders skipped, sorted by
path. Each is decoded once when the dataset is built (``check_images=False`` skips that); a file that does not decode
is an error naming it, or with ``--set bad_images=skip`` is left out with a warning. Items are ``(image, index)``:
the index fixes the validation masks (below).

Defaults are MAE's pre-training recipe (``facebookresearch/mae``: ``main_pretrain.py``, PRETRAIN.md) with
MAE-SFER's command (``--model mae_vit_base_patch16 --batch_size 32 --accum_iter 4 --mask_ratio 0.75 --blr 1.5e-4
--epochs 300 --warmup_epochs 40 --weight_decay 0.05``; MAE's ImageNet runs use 800 epochs and batch 4096):
AdamW with betas (0.9, 0.95), lr = blr x effective batch / 256 (the engine's rule), weight decay 0.05 except on 1-D
parameters (norms) and biases, the fixed position embeddings not trained, linear warm-up from 0 for 40 epochs then
half-cycle cosine to 0, per optimizer update; mask ratio 0.75 and the normalised-pixel loss (``mask_ratio``,
``norm_pix_loss``, passed to the model). Official MAE decays ``cls_token`` and ``mask_token`` (timm 0.3.2's
``add_weight_decay`` without a skip list); ``--set wd_tokens=False`` exempts them as timm's ``no_weight_decay``
convention would. Transforms (MAE's): ``RandomResizedCrop(img_size, scale=(0.2, 1.0), bicubic)``,
``RandomHorizontalFlip``, ``ToTensor``, ``Normalize`` (ImageNet mean/std); validation: bicubic resize to
``img_size / crop_pct`` and centre crop.

Metric: ``recon_loss``, a torchmetrics ``MeanMetric`` (synchronised across processes) of the masked-patch loss on
the validation images, the main metric (lower is better). Validation masks are a fixed function of (``seed``, image
index), so the value moves only with the model. Without a validation split the engine logs the training loss
only and writes ``checkpoint-last`` (MAE keeps its last checkpoint too), no ``checkpoint-best``.

The encoder of the result loads into ``vit_*`` for fine-tuning (``--set pretrained=<run>/checkpoint-last.safetensors``
in ``fer_finetune``/``classify``; see ``models.mae.mae_to_vit_state_dict``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ...data import IMG_EXTENSIONS
from ...data.image_folder import drop_undecodable
from ..recipe import Recipe, StepContext

__all__ = ["MAEPretrainRecipe", "RECIPE", "UnlabeledImages", "eval_noise"]


def find_images(root: Path) -> list[str]:
    """Sorted paths of the image files under ``root`` at any depth (symbolic links followed once; hidden entries
    skipped)."""
    exts = tuple(e.lower() for e in IMG_EXTENSIONS)
    found, seen = [], set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [os.path.join(folder, f) for f in files if f.lower().endswith(exts) and not f.startswith(".")]
    return sorted(found)


class UnlabeledImages(Dataset):
    """The images under ``root`` (any depth), without labels.

    Items: ``(transform(RGB PIL image), index)``; ``index`` (int) is the item's position, sorted by path.
    ``bad_images``: ``"error"`` (default) raises ``ValueError`` naming the files that do not decode (the first ten);
    ``"skip"`` leaves them out with a ``UserWarning`` (``self.skipped`` lists them). ``check_images=False`` skips
    the decode check.
    """

    def __init__(self, root, transform: Optional[Callable] = None, check_images: bool = True,
                 bad_images: str = "error", workers: int = 8):
        if bad_images not in ("error", "skip"):
            raise ValueError(f"UnlabeledImages: bad_images must be 'error' or 'skip', got {bad_images!r}")
        self.root, self.transform = Path(root), transform
        if not self.root.is_dir():
            raise FileNotFoundError(f"UnlabeledImages: folder {str(self.root)!r} does not exist")
        files = find_images(self.root)
        if not files:
            raise ValueError(f"UnlabeledImages: no image ({', '.join(IMG_EXTENSIONS)}) under {str(self.root)!r}")
        self.skipped: list[tuple[str, str]] = []
        if check_images:
            kept, self.skipped = drop_undecodable(files, "UnlabeledImages", self.root, bad_images, workers,
                                                  skip_hint="--set bad_images=skip")
            files = [files[i] for i in kept]
            if not files:
                raise ValueError(f"UnlabeledImages: no image under {str(self.root)!r} decodes")
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        from PIL import Image

        with Image.open(self.files[index]) as im:
            image = im.convert("RGB")
        return (self.transform(image) if self.transform is not None else image), index

    def __repr__(self) -> str:
        return f"UnlabeledImages({str(self.root)!r}, {len(self)} images)"


def eval_noise(indices: Tensor, num_patches: int, seed: int = 0) -> Tensor:
    """Masking noise (N, L) float64 in [0, 1) that depends only on (``seed``, image index, patch): an integer hash
    (31-bit, exact on every device), so validation masks do not change between evaluations or runs."""
    idx = indices.to(torch.int64).reshape(-1, 1)
    x = idx * num_patches + torch.arange(num_patches, device=idx.device) + (seed + 1) * 1_000_003
    mask31 = 0x7FFFFFFF
    x = x & mask31
    for _ in range(3):
        x = (((x >> 16) ^ x) * 0x45D9F3B) & mask31
    x = (x >> 16) ^ x
    return x.to(torch.float64) / 2.0 ** 31


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class MAEPretrainRecipe(Recipe):
    name = "mae_pretrain"
    main_metric = "recon_loss"
    main_mode = "min"
    defaults = dict(
        model="mae_vit_base_patch16",
        mask_ratio=0.75,                 # share of patches removed (create_model's mask_ratio)
        norm_pix_loss=True,              # per-patch normalised pixel targets (create_model's norm_pix_loss)
        epochs=300,                      # MAE-SFER; MAE's ImageNet runs: 800 (1600 for the best numbers)
        batch_size=32,                   # per process; MAE-SFER: 32 x accum 4 on one GPU (MAE: 4096 in all)
        accum_steps=4,
        blr=1.5e-4,                      # lr = blr * batch_size * world_size * accum_steps / 256
        min_lr=0.0,
        weight_decay=0.05,
        wd_tokens=True,                  # decay cls_token/mask_token as official MAE; False: exempt them
        opt="adamw",
        opt_betas=(0.9, 0.95),
        sched="cosine",
        warmup_epochs=40,
        warmup_lr=0.0,                   # MAE's warm-up starts from 0
        scale=(0.2, 1.0),                # RandomResizedCrop area range
        interpolation="bicubic",
        crop_pct=0.875,                  # validation: resize to img_size / crop_pct, centre crop
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        check_images=True,               # decode every image once when the dataset is built
        bad_images="error",              # error | skip
    )

    # --- data ---------------------------------------------------------------------------------------------------
    def transforms(self, training: bool):
        """MAE's pre-training transform (training) or resize + centre crop (validation): RGB PIL image ->
        float32 (3, img_size, img_size), normalised."""
        from torchvision import transforms as T

        c = self.cfg
        interp = T.InterpolationMode(c.interpolation)
        tail = [T.ToTensor(), T.Normalize(c.mean, c.std)]
        if training:
            return T.Compose([T.RandomResizedCrop(c.img_size, scale=tuple(c.scale), interpolation=interp),
                              T.RandomHorizontalFlip(), *tail])
        return T.Compose([T.Resize(int(round(c.img_size / c.crop_pct)), interpolation=interp),
                          T.CenterCrop(c.img_size), *tail])

    def build_datasets(self, data_dir: str):
        root = Path(os.fspath(data_dir))
        if not root.is_dir():
            raise FileNotFoundError(f"--data {str(root)!r} does not exist (expected a folder of images, or "
                                    f"{root}/train/ and optionally {root}/val/)")
        c = self.cfg
        kw = dict(check_images=c.check_images, bad_images=c.bad_images)
        if (root / "train").is_dir():
            train = UnlabeledImages(root / "train", self.transforms(True), **kw)
            val = UnlabeledImages(root / "val", self.transforms(False), **kw) if (root / "val").is_dir() else None
            return train, val
        return UnlabeledImages(root, self.transforms(True), **kw), None

    # --- model and optimisation -------------------------------------------------------------------------------
    def build_model(self, num_classes: Optional[int]) -> nn.Module:
        """``create_model(cfg.model, img_size=, mask_ratio=, norm_pix_loss=, **model_args)`` (model_args win)."""
        from ...models import create_model

        c = self.cfg
        kwargs = dict(img_size=c.img_size, mask_ratio=c.mask_ratio, norm_pix_loss=c.norm_pix_loss)
        kwargs.update(c.model_args)
        return create_model(c.model, **kwargs)

    def param_groups(self, model: nn.Module) -> list[dict]:
        """MAE's groups: no weight decay on 1-D parameters and biases (and on the tokens when ``wd_tokens`` is
        False); frozen parameters (the sin-cos position embeddings) left out."""
        skip = {"cls_token", "mask_token"} if not self.cfg.wd_tokens else set()
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 or name.endswith(".bias") or name in skip else decay).append(p)
        return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": self.cfg.weight_decay}]

    # --- steps ------------------------------------------------------------------------------------------------
    def train_loss(self, model: nn.Module, batch, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        """``batch``: images (B, 3, H, W) float and their indices (unused); random masks from the global RNG."""
        loss, _, _ = model(batch[0])
        return loss, {}

    def build_metrics(self, num_classes: Optional[int]):
        from torchmetrics import MeanMetric, MetricCollection

        return MetricCollection({"recon_loss": MeanMetric()})

    def eval_update(self, model: nn.Module, batch, metrics, ctx: StepContext) -> Tensor:
        """The masked-patch loss of one validation batch under masks fixed by (seed, image index)."""
        x, idx = batch[0], batch[1]
        noise = eval_noise(idx, _unwrap(model).num_patches, int(self.cfg.seed)).to(x.device)
        with torch.no_grad():
            loss, _, _ = model(x, noise=noise)
        loss = loss.float()
        metrics["recon_loss"].update(loss, weight=x.shape[0])
        return loss


RECIPE = MAEPretrainRecipe
