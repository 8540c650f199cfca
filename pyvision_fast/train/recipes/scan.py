"""``scan``: train SCAN-CNN (``scan_ir50``, shared/papers.md section 3; any IR-ResNet of
``pyvision_fast.models.scan``) as a face-embedding network with the ArcFace margin, evaluate it on LFW-style
verification pairs, clean and blurred.

``--data`` layout:

* ``DATA/train/<identity>/<image>``: the training identities, MS1M-style aligned face crops (112 x 112; other
  sizes are resized to ``img_size``), read by ``pyvision_fast.data.ImageFolder`` (every image decoded once
  before training; a bad file is an error naming it).
* ``DATA/pairs.txt`` and ``DATA/lfw/<name>/<name>_<i:04d>.jpg``: the verification set in LFW's format
  (``pyvision_fast.metrics.verification``), aligned crops as the training images (``pairs_file`` and
  ``pairs_images`` name other places, relative to DATA). A folder with only these is enough for ``pvf eval``.

Defaults are ArcFace's (Deng et al., CVPR 2019, section 4.1 "Implementation Details"; SCAN-CNN's paper trains
with ArcFace on MS1M): SGD with momentum 0.9 and weight decay 5e-4, batch 512, lr 0.1 divided by 10 at 100K
and 160K iterations, 180K in all, on MS1MV2 (5.8M images: 11.4K iterations of 512 per epoch), i.e. 16 epochs
with the drops after epochs 9 and 14 here; s = 64, m = 0.5; horizontal flip as the only augmentation; inputs
(x - 0.5) / 0.5. ``batch_size`` is per process: on 4 GPUs pass ``--batch-size 128``. The scales and
scale-attention logits get no weight decay (``IResNet.no_weight_decay``), nor do norms and biases (the
engine's rule; insightface decays every parameter). ``head=softmax`` trains the plain softmax-CE baseline.

Evaluation uses the fused network (``IResNet.fuse()``: plain convolutions, what ``pvf export`` deploys),
embeds each image and its mirror (``flip_test``), scores pairs by cosine similarity and reports the LFW
protocol's ``accuracy`` (main metric), ``accuracy_std``, ``threshold``, ``tar@far=0.001``, and the
blur-robustness report of the paper's claim: the same with a Gaussian blur of each sigma in ``blur_sigmas``
(pixels at ``img_size``, kernel 2 ceil(3 sigma) + 1, reflected borders) applied to both images, as
``blur<sigma>_accuracy`` etc. The evaluation "loss" is the mean squared difference between the clean cosine
score and the label (1 same, 0 different), a calibration number only.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..recipe import Recipe, StepContext

__all__ = ["FaceEmbeddingModel", "RECIPE", "ScanRecipe", "blur"]


class FaceEmbeddingModel(nn.Module):
    """A backbone (images -> embeddings) with its margin head; what the engine trains and checkpoints
    (keys ``backbone.*`` and ``head.*``). forward(x (B, 3, H, W)) -> embeddings (B, D); forward(x, labels
    (B,)) -> the head's logits (B, N)."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        emb = self.backbone(x)
        return emb if labels is None else self.head(emb, labels)

    def no_weight_decay(self) -> set[str]:
        inner = self.backbone.no_weight_decay() if hasattr(self.backbone, "no_weight_decay") else set()
        return {f"backbone.{n}" for n in inner}


def blur(images: Tensor, sigma: float) -> Tensor:
    """Gaussian blur of standard deviation ``sigma`` pixels (0: unchanged) of images (..., C, H, W); kernel
    2 ceil(3 sigma) + 1 taps, reflected borders (torchvision's ``gaussian_blur``)."""
    if sigma <= 0:
        return images
    from torchvision.transforms.functional import gaussian_blur

    k = 2 * math.ceil(3 * sigma) + 1
    shape = images.shape
    return gaussian_blur(images.reshape(-1, *shape[-3:]), [k, k], [float(sigma), float(sigma)]).reshape(shape)


class ScanRecipe(Recipe):
    name = "scan"
    main_metric = "accuracy"
    main_mode = "max"
    defaults = dict(
        model="scan_ir50",
        img_size=112,
        opt="sgd",
        lr=0.1,                          # absolute (ArcFace); not scaled with the batch
        momentum=0.9,
        weight_decay=5e-4,
        batch_size=512,                  # per process
        epochs=16,
        sched="multistep",
        decay_milestones=(9, 14),        # ArcFace's 100K / 160K of 180K iterations at batch 512 on MS1MV2
        decay_rate=0.1,
        warmup_epochs=0,
        min_lr=0.0,
        head="arcface",                  # arcface | softmax
        margin_s=64.0,
        margin_m=0.5,
        easy_margin=False,
        hflip=0.5,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        pairs_file="pairs.txt",          # relative to --data
        pairs_images="lfw",              # relative to --data
        flip_test=True,                  # embedding of image + mirror at evaluation
        blur_sigmas=(1.0, 2.0, 4.0),     # the blur-robustness report (sigma 0 is the clean evaluation)
        fars=(1e-3,),
        check_images=True,
        bad_images="error",              # error | skip (training images, as data.ImageFolder)
    )

    # --- data ---------------------------------------------------------------------------------------------
    def transforms(self, training: bool):
        from torchvision import transforms as T

        c = self.cfg
        steps = [T.Resize((c.img_size, c.img_size))]
        if training and c.hflip > 0:
            steps.append(T.RandomHorizontalFlip(c.hflip))
        steps += [T.ToTensor(), T.Normalize(c.mean, c.std)]
        return T.Compose(steps)

    def build_datasets(self, data_dir: str):
        from ...data import ImageFolder
        from ...metrics.verification import PairsDataset

        c = self.cfg
        if c.head not in ("arcface", "softmax"):
            raise ValueError(f"scan: head must be 'arcface' or 'softmax', got {c.head!r}")
        if any(float(s) < 0 for s in c.blur_sigmas):
            raise ValueError(f"scan: blur_sigmas must be >= 0, got {tuple(c.blur_sigmas)}")
        root = Path(os.fspath(data_dir))
        if not root.is_dir():
            raise FileNotFoundError(f"--data {str(root)!r} does not exist (expected train/ and/or "
                                    f"pairs.txt + lfw/)")
        pairs = root / c.pairs_file
        train_dir = root / "train"
        if not train_dir.is_dir() and not pairs.is_file():
            raise FileNotFoundError(f"--data {str(root)!r} has neither train/ (identity folders) nor "
                                    f"{c.pairs_file} (verification pairs)")
        if self.for_eval:  # pvf eval reads only the pairs
            train = None
        elif train_dir.is_dir():
            train = ImageFolder(train_dir, self.transforms(True), check_images=c.check_images,
                                bad_images=c.bad_images)
        else:
            raise FileNotFoundError(f"scan: {str(train_dir)!r} does not exist; training needs "
                                    f"DATA/train/<identity>/<image> (evaluation needs only {c.pairs_file} and "
                                    f"{c.pairs_images}/)")
        val = (PairsDataset(pairs, root / c.pairs_images, self.transforms(False), check_images=c.check_images)
               if pairs.is_file() else None)
        return train, val

    # --- model --------------------------------------------------------------------------------------------
    def build_model(self, num_classes: Optional[int]) -> nn.Module:
        """``cfg.model`` (at ``img_size``; ``--model-arg`` adds arguments) with a ``MarginHead`` of
        ``num_classes`` identities."""
        from ...losses.margin import MarginHead
        from ...models import create_model

        c = self.cfg
        if not num_classes:
            raise ValueError("scan: the margin head needs num_classes (the training identities)")
        kwargs = dict(c.model_args)
        kwargs.setdefault("img_size", c.img_size)
        backbone = create_model(c.model, **kwargs)
        head = MarginHead(backbone.num_features, num_classes, kind=c.head, s=c.margin_s, m=c.margin_m,
                          easy_margin=c.easy_margin)
        return FaceEmbeddingModel(backbone, head)

    # --- steps --------------------------------------------------------------------------------------------
    def train_loss(self, model: nn.Module, batch, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        """``batch``: images (B, 3, H, W) float, identities (B,) int64. Returns the cross-entropy of the
        head's logits (ArcFace margin or plain softmax)."""
        x, y = batch[0], batch[1]
        return F.cross_entropy(model(x, y), y), {}

    def build_metrics(self, num_classes: Optional[int]):
        from torchmetrics import MetricCollection

        from ...metrics.verification import VerificationMetric

        fars = tuple(self.cfg.fars)
        metrics = {"clean": VerificationMetric(fars)}
        for s in self.cfg.blur_sigmas:
            if float(s) > 0:
                metrics[f"blur{float(s):g}"] = VerificationMetric(fars, prefix=f"blur{float(s):g}_")
        return MetricCollection(metrics)

    def _inference_backbone(self, model: nn.Module, ctx: StepContext) -> nn.Module:
        """The fused backbone, made again whenever the weights may have changed (another module, or an
        in-place update of a parameter or buffer: their version counters), so once per evaluation in
        practice."""
        backbone = getattr(model, "backbone", model)
        tensors = [*backbone.parameters(), *backbone.buffers()]
        key = (id(backbone), tuple(t._version for t in tensors))
        if getattr(self, "_fused_key", None) != key:
            fused = backbone.fuse() if hasattr(backbone, "fuse") else backbone
            self._fused, self._fused_key = fused.eval(), key
        return self._fused

    def eval_update(self, model: nn.Module, batch, metrics, ctx: StepContext) -> Tensor:
        """``batch``: pairs (B, 2, 3, H, W), labels (B,), pair indices (B,), folds (B,) (``PairsDataset``)."""
        pairs, labels, index, folds = batch
        net = self._inference_backbone(model, ctx)
        clean = None
        with torch.no_grad():
            for name, metric in metrics.items():
                sigma = float(name[4:]) if name.startswith("blur") else 0.0
                emb = self._embed(net, blur(pairs, sigma))
                scores = (emb[:, 0] * emb[:, 1]).sum(dim=1)
                metric.update(index, scores, labels, folds)
                if sigma == 0:
                    clean = scores
        return ((clean - labels.float()) ** 2).mean()

    def _embed(self, net: nn.Module, pairs: Tensor) -> Tensor:
        from ...metrics.verification import flip_fused_embeddings

        B = pairs.shape[0]
        emb = flip_fused_embeddings(net, pairs.flatten(0, 1), flip=self.cfg.flip_test)
        return emb.view(B, 2, -1)


RECIPE = ScanRecipe
