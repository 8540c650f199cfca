"""``vit_at``: adversarial training of ViTs with the light recipe (Debenedetti, Sehwag, Mittal, "A Light Recipe to
Train Robust Vision Transformers", SaTML 2023; shared/papers.md section 7; config
``dedeswim/vits-robustness-torch:configs/xcit-adv-training.yaml``).

Training step (``train_loss``): PGD-L∞ with the model in **eval** mode (every module's mode restored), ε from the
per-epoch warm-up (``eps_schedule`` linear, ``eps_schedule_period`` 10, ``zero_eps_epochs`` 0: ε = 0 in epoch 0,
ε/2 in epoch 5, the final ε from epoch 10), ``attack_steps`` 1, step ``1.5·ε_final/steps``, random start; then, in
train mode, the loss is cross-entropy with label smoothing 0.1 on **x_adv only** (no clean term). The clean logits
of the official code are only logged; here they are computed only with ``train_log_clean=True`` (an extra forward).
``--set loss=trades`` uses TRADES instead (``trades_beta`` 6.0; ``attacks.trades_loss``).

Inputs are [0, 1] images: the data pipeline does not normalise (``no_normalize: true``) and the model normalises
inside (``attacks.add_input_normalization``: a forward pre-hook with non-persistent mean/std buffers, so the
model's ``state_dict`` keys stay the registry's = timm's, and ``checkpoint-*.safetensors`` load into a plain
registry model, which then expects normalised inputs).

Hyper-parameters (ImageNet, XCiT-S12 in the paper; the registry's ViT-S/16 here): AdamW lr 5e-4 at the global
batch 512 (64 per TPU core × 8; here ``blr`` 2.5e-4 × global batch / 256, which gives 5e-4 at 512), weight decay
0.5, cosine, 100 epochs, 10 warm-up epochs from 1e-6, min lr 1e-5, drop-path 0.05, label smoothing 0.1;
RandomResizedCrop scale (0.08, 1) bicubic, hflip 0.5, color jitter 0.4 (timm's default, kept by the official
config); **no RandAugment, Mixup, CutMix or random erasing**; then 10 cool-down epochs at min lr (timm's
``cooldown_epochs``, as the official run).

Evaluation: ``accuracy`` (clean), ``robust_accuracy`` (PGD-``eval_attack_steps`` L∞ at the final ε, step
``eval_attack_step_size`` or 2.5·ε/steps, random start; the main metric, the official ``robust_top1``) and, with
``--eval-samples N``, ``autoattack_accuracy``: torchattacks' AutoAttack (standard: APGD-CE, APGD-T, FAB-T,
Square 5000 queries; L∞, ε) on the first N validation images. torchattacks targets all ``n_classes - 1`` other
classes in APGD-T and FAB-T; the original AutoAttack's standard version targets the top 9, which is restored here
(1000 classes would otherwise run 999 targeted attacks). APGD-T's targeted DLR loss needs at least 4 classes; with
fewer it is left out (with a warning).

ε is given in input units: ``--set attack_eps=8/255`` (a ``a/b`` string is accepted) — not the official config's
/255 units; a value above 1 is refused as a likely unit mix-up.
"""
from __future__ import annotations

import warnings
from fractions import Fraction
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...attacks import (add_input_normalization, attack_mode, default_step_size, eps_at_epoch, pgd,
                        trades_loss)
from ...data.image_folder import image_folder_splits
from ..recipe import Recipe, StepContext


def _number(value: Any, key: str) -> float:
    """A config number that may be written as ``"4/255"``."""
    if isinstance(value, str):
        try:
            value = float(Fraction(value.strip()))
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"config {key}={value!r} is not a number (e.g. 0.0157 or 4/255)") from None
    return float(value)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class ViTATRecipe(Recipe):
    name = "vit_at"
    main_metric = "robust_accuracy"
    main_mode = "max"
    defaults = dict(
        model="vit_small_patch16_224",
        drop_path=0.05,                  # drop_path_rate of the model (a --model-arg drop_path_rate wins)
        lr=None,
        blr=2.5e-4,                      # lr 5e-4 at global batch 512
        batch_size=64,
        weight_decay=0.5,
        opt="adamw",
        sched="cosine",
        epochs=100,
        cooldown_epochs=10,
        warmup_epochs=10,
        warmup_lr=1e-6,
        min_lr=1e-5,
        label_smoothing=0.1,
        mixup=0.0,
        cutmix=0.0,
        # data: [0, 1] inputs, normalisation inside the model
        scale=(0.08, 1.0),
        ratio=(3 / 4, 4 / 3),
        hflip=0.5,
        color_jitter=0.4,
        interpolation="bicubic",
        crop_pct=0.875,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        bad_images="error",
        # training attack
        loss="adv",                      # adv (CE on x_adv only) | trades
        trades_beta=6.0,
        attack_norm="linf",
        attack_eps=4 / 255,              # final ε in input units ("4/255" accepted)
        attack_steps=1,
        attack_step_size=None,           # None: 1.5 * attack_eps / attack_steps
        attack_random_start=True,        # bool or probability (per batch)
        attack_eval_mode=True,           # attack with the model in eval mode (the light recipe)
        eps_schedule="linear",           # linear | sine | constant
        eps_schedule_period=10,
        zero_eps_epochs=0,
        train_log_clean=False,           # log the clean training accuracy (one more forward per step)
        # evaluation
        eval_attack_steps=10,
        eval_attack_step_size=None,      # None: 2.5 * attack_eps / eval_attack_steps
        eval_samples=None,               # AutoAttack on the first N validation images; None: no AutoAttack
        autoattack_version="standard",
    )

    def __init__(self, cfg, for_eval: bool = False):
        super().__init__(cfg, for_eval)
        self.eps = _number(cfg.attack_eps, "attack_eps")
        if not 0 <= self.eps <= 1:
            raise ValueError(f"attack_eps={cfg.attack_eps!r} is outside [0, 1]: ε is in input units for [0, 1] "
                             f"images (e.g. 4/255), not the official config's /255 units")
        if cfg.attack_norm not in ("linf", "l2"):
            raise ValueError(f"attack_norm must be 'linf' or 'l2', got {cfg.attack_norm!r}")
        if cfg.loss not in ("adv", "trades"):
            raise ValueError(f"loss must be 'adv' or 'trades', got {cfg.loss!r}")
        eps_at_epoch(0, self.eps, cfg.eps_schedule, cfg.eps_schedule_period, cfg.zero_eps_epochs)  # checks
        self.step_size = (_number(cfg.attack_step_size, "attack_step_size") if cfg.attack_step_size is not None
                          else default_step_size(self.eps, cfg.attack_steps))
        steps = int(cfg.eval_attack_steps)
        self.eval_step_size = (_number(cfg.eval_attack_step_size, "eval_attack_step_size")
                               if cfg.eval_attack_step_size is not None else 2.5 * self.eps / max(steps, 1))
        self._eval_gen: Optional[torch.Generator] = None

    # --- data -------------------------------------------------------------------------------------
    def transforms(self, training: bool):
        """timm's ImageNet transforms without normalisation: PIL RGB -> float32 (3, img_size, img_size) in [0, 1]."""
        from timm.data import create_transform

        c = self.cfg
        zero, one = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        if not training:
            return create_transform(c.img_size, is_training=False, interpolation=c.interpolation, mean=zero, std=one,
                                    crop_pct=c.crop_pct)
        return create_transform(c.img_size, is_training=True, scale=c.scale, ratio=c.ratio, hflip=c.hflip,
                                color_jitter=c.color_jitter, auto_augment=None, interpolation=c.interpolation,
                                re_prob=0.0, mean=zero, std=one)

    def build_datasets(self, data_dir: str):
        return image_folder_splits(data_dir, self.transforms(True), self.transforms(False), self.cfg.bad_images)

    # --- model --------------------------------------------------------------------------------------
    def build_model(self, num_classes: Optional[int]) -> nn.Module:
        """The registry model (``drop_path_rate`` = ``drop_path``, ``img_size`` = the config's unless a model arg
        says otherwise) taking [0, 1] images (normalisation inside)."""
        from ...models import create_model

        kwargs = dict(self.cfg.model_args)
        kwargs.setdefault("drop_path_rate", self.cfg.drop_path)
        if num_classes is not None:
            kwargs.setdefault("num_classes", num_classes)
        try:  # the input size the data pipeline produces (ViTs fix it at construction)
            model = create_model(self.cfg.model, **{"img_size": self.cfg.img_size, **kwargs})
        except TypeError:  # a model without an img_size argument
            model = create_model(self.cfg.model, **kwargs)
        return add_input_normalization(model, self.cfg.mean, self.cfg.std)

    # --- training -----------------------------------------------------------------------------------
    def epoch_eps(self, epoch: int) -> float:
        """ε of the training attack in (0-based) ``epoch``."""
        c = self.cfg
        return eps_at_epoch(epoch, self.eps, c.eps_schedule, c.eps_schedule_period, c.zero_eps_epochs)

    def on_epoch_start(self, epoch: int, model: nn.Module, ctx: StepContext) -> None:
        ctx.extra["attack_eps"] = self.epoch_eps(epoch)

    def _natural_loss(self, logits: Tensor, y: Tensor) -> Tensor:
        if y.ndim == 2:  # mixup/cutmix soft targets (smoothing already inside)
            return torch.sum(-y * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        return F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.label_smoothing)

    def train_loss(self, model: nn.Module, batch, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        """``batch``: images (B, 3, H, W) float in [0, 1], targets (B,) int64 (or (B, C) soft). The attack runs
        at ε = ``epoch_eps(ctx.epoch)``; returns (loss on x_adv, {"attack_eps", "adv_accuracy"[, "clean_accuracy"]})."""
        c = self.cfg
        x, y = batch[0], batch[1]
        eps = self.epoch_eps(ctx.epoch)
        common = dict(eps=eps, steps=c.attack_steps, step_size=self.step_size, norm=c.attack_norm,
                      random_start=c.attack_random_start, eval_mode=c.attack_eval_mode)
        if c.loss == "trades":
            loss, logits, logits_adv = trades_loss(model, x, y, beta=c.trades_beta,
                                                   natural_loss_fn=self._natural_loss, **common)
        else:
            x_adv = pgd(model, x, y, **common)
            logits_adv = model(x_adv)
            loss = self._natural_loss(logits_adv, y)
            logits = None
            if c.train_log_clean:
                with torch.no_grad():
                    logits = _unwrap(model)(x)
        labels = y.argmax(-1) if y.ndim == 2 else y
        extra = {"attack_eps": eps,
                 "adv_accuracy": (logits_adv.detach().argmax(-1) == labels).float().mean().item()}
        if logits is not None:
            extra["clean_accuracy"] = (logits.detach().argmax(-1) == labels).float().mean().item()
        return loss, extra

    # --- evaluation ---------------------------------------------------------------------------------
    def build_metrics(self, num_classes: Optional[int]):
        """``accuracy`` (clean top-1) and ``robust_accuracy`` (PGD top-1), each updated with its own logits."""
        from torchmetrics import MetricCollection
        from torchmetrics.classification import MulticlassAccuracy

        return MetricCollection({"accuracy": MulticlassAccuracy(num_classes, average="micro"),
                                 "robust_accuracy": MulticlassAccuracy(num_classes, average="micro")},
                                compute_groups=False)

    def _generator(self, device: torch.device) -> torch.Generator:
        if self._eval_gen is None or self._eval_gen.device != device:
            self._eval_gen = torch.Generator(device=device)
            self._eval_gen.manual_seed(int(self.cfg.seed) + 1)
        return self._eval_gen

    def eval_update(self, model: nn.Module, batch, metrics, ctx: StepContext) -> Tensor:
        """Clean and PGD logits of one batch ([0, 1] images (B, 3, H, W), labels (B,)); returns the clean CE.
        The PGD random start comes from a generator seeded with ``seed + 1`` at each evaluation's start, so
        evaluations of the same weights agree."""
        x, y = batch[0], batch[1]
        net = _unwrap(model)
        with torch.no_grad():
            logits = net(x)
        x_adv = pgd(net, x, y, eps=self.eps, steps=self.cfg.eval_attack_steps, step_size=self.eval_step_size,
                    norm=self.cfg.attack_norm, random_start=True, eval_mode=True, generator=self._generator(x.device))
        with torch.no_grad():
            logits_adv = net(x_adv)
        metrics["accuracy"].update(logits.float(), y)
        metrics["robust_accuracy"].update(logits_adv.float(), y)
        return F.cross_entropy(logits.float(), y)

    def build_autoattack(self, model: nn.Module, num_classes: int):
        """torchattacks' AutoAttack (``autoattack_version``, the recipe's norm and ε, seed = ``seed``) with the
        original AutoAttack's 9 target classes in APGD-T/FAB-T (see the module docstring)."""
        import torchattacks

        norm = {"linf": "Linf", "l2": "L2"}[self.cfg.attack_norm]
        aa = torchattacks.AutoAttack(model, norm=norm, eps=self.eps, version=self.cfg.autoattack_version,
                                     n_classes=num_classes, seed=int(self.cfg.seed))
        subs = aa._autoattack.attacks
        for a in subs:
            if hasattr(a, "n_target_classes"):
                a.n_target_classes = min(9, num_classes - 1)
        if num_classes < 4:
            kept = [a for a in subs if type(a).__name__ != "APGDT"]
            if len(kept) != len(subs):
                warnings.warn(f"AutoAttack: APGD-T left out ({num_classes} classes; its targeted DLR loss needs 4)",
                              stacklevel=2)
                subs[:] = kept
        return aa

    def evaluate_extra(self, model: nn.Module, loader, ctx: StepContext) -> dict[str, Any]:
        """AutoAttack accuracy on the first ``eval_samples`` validation images (split across processes, counts
        all-reduced); nothing when ``eval_samples`` is None or 0. Resets the PGD generator for the next evaluation."""
        self._eval_gen = None
        n = self.cfg.eval_samples
        if not n:
            return {}
        dataset = loader.dataset
        n = min(int(n), len(dataset))
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if dist else (0, 1)
        subset = torch.utils.data.Subset(dataset, list(range(rank, n, world)))
        sub_loader = torch.utils.data.DataLoader(subset, batch_size=loader.batch_size or 64, shuffle=False,
                                                 num_workers=loader.num_workers)
        net = _unwrap(model)
        num_classes = self.cfg.num_classes or net.num_classes
        counts = torch.zeros(2, dtype=torch.float64, device=ctx.device)
        with attack_mode(net, True):
            aa = self.build_autoattack(net, num_classes)
            for xb, yb in sub_loader:
                xb, yb = xb.to(ctx.device), yb.to(ctx.device)
                x_adv = aa(xb, yb)
                with torch.no_grad():
                    counts[0] += (net(x_adv).argmax(-1) == yb).sum()
                counts[1] += len(yb)
        if dist:
            torch.distributed.all_reduce(counts)
        return {"autoattack_accuracy": float(counts[0] / counts[1].clamp_min(1)),
                "autoattack_samples": int(counts[1])}


RECIPE = ViTATRecipe
