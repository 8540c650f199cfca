"""``dat``: Discrete Adversarial Training (Mao et al., NeurIPS 2022; ``alibaba/easyrobust``, shared/papers.md section 6).

Each training batch (images in [0, 1], Mixup/CutMix already applied by the engine) costs one backward pass of

    loss  = CE(model(x), y)                                    clean term
    x_rec = VQGAN(x)                                           no grad: the image as discrete "visual words"
    x_adv = one PGD-L2 step on x_rec                           eps 0.1, step 0.1, random start with prob 0.8,
                                                               gradient in pixel space, model in *train* mode,
                                                               soft-target CE for mixup targets
    x_dat = VQGAN(x_adv)                                       no grad: re-discretised
    loss += CE(model(x_dat), y)                                adversarial term

``VQGAN`` is the frozen ``vqgan_f8_16384`` (taming's VQGAN OpenImages f=8, 16384 codes) mapping [0, 1] images to
[0, 1] reconstructions. Its weights come from ``--set vqgan_checkpoint=PATH`` (taming's
``vqgan_openimages_f8_16384.ckpt``, or a ``.safetensors`` from ``models.vqgan.convert_taming_checkpoint``);
``--set vqgan_random_init=True`` runs with a randomly initialised VQGAN (tests and smoke runs only: the
adversarial term is then meaningless, and the log says so).

Inputs stay in [0, 1] through the whole step: the data pipeline uses mean 0 / std 1 and the classifier normalises
by the ImageNet mean/std inside its forward (DAT's ``nn.Sequential(NormalizeByChannelMeanStd, model)``; here the
library's ``attacks.add_input_normalization``, which keeps the registry model's state_dict keys, so checkpoints
load into ``vit_base_patch16_224`` as they are and layer decay / EMA see the plain model).

Defaults: DAT's ViT-B/16 recipe (easyrobust README): 300 epochs, AdamW lr 1e-3 for the global batch of
128 x 8 GPUs = 1024 (``blr`` 2.5e-4 per 256; the engine scales by the actual global batch), wd 0.05, eps 1e-8,
cosine with 5 warm-up epochs from 1e-6, drop-path 0.25, EMA 0.99992, RandAugment ``rand-m9-mstd0.5-inc1``,
colour jitter 0.4, label smoothing 0.1, random erasing 0.25, Mixup 0.8, CutMix 1.0, AMP. ``min_lr`` 1e-5 is
timm/DeiT's default (not stated in the DAT sources read). Data: ImageFolder (``DATA/train/<class>/*``,
``DATA/val/<class>/*``), as ``classify``; evaluation reports ``classify``'s clean metrics.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...attacks import IMAGENET_MEAN, IMAGENET_STD, add_input_normalization, ce_attack_loss, pgd
from ..recipe import StepContext
from .classify import ClassifyRecipe

VQGAN_NAME = "vqgan_f8_16384"
VQGAN_FILE = "vqgan_openimages_f8_16384.ckpt"


def soft_target_ce(logits: Tensor, y: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy of (B, C) logits against (B,) int64 labels (with ``label_smoothing``) or (B, C) soft
    targets (Mixup/CutMix output, smoothing already inside; timm's ``SoftTargetCrossEntropy``). float32 result."""
    if y.ndim == 2:
        return torch.sum(-y * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
    return F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)


def dat_l2_step(model: nn.Module, x: Tensor, y: Tensor, *, eps: float = 0.1, step_size: float = 0.1,
                steps: int = 1, random_start_prob: float = 0.8) -> Tensor:
    """DAT's attack on a VQGAN reconstruction: PGD-L2 (``steps`` steps of ``x + step_size * g / ||g||_2`` per
    sample, projection ``renorm(p=2, maxnorm=eps)`` then clamp to [0, 1]) from a random point of the eps-sphere
    with probability ``random_start_prob`` (one coin per batch, as easyrobust), the model kept in its current
    (train) mode, the loss cross-entropy with soft targets allowed. ``pyvision_fast.attacks.pgd`` does the work.

    x: (B, 3, H, W) float in [0, 1]; y: (B,) int64 or (B, C) float soft targets. Returns x_adv detached, same
    shape/dtype, with ``||x_adv - x||_2 <= eps`` per sample and inside [0, 1]. No parameter ``.grad`` is written.
    """
    return pgd(model, x, y, eps=eps, steps=steps, step_size=step_size, norm="l2", random_start=random_start_prob,
               loss_fn=ce_attack_loss, eval_mode=False, clamp=(0.0, 1.0))


class DATRecipe(ClassifyRecipe):
    name = "dat"
    main_metric = "accuracy"
    main_mode = "max"
    defaults = dict(
        ClassifyRecipe.defaults,
        model="vit_base_patch16_224",
        model_args={"drop_path_rate": 0.25},
        epochs=300,
        batch_size=128,                  # per process; DAT: 128 x 8 GPUs
        blr=2.5e-4,                      # lr = 1e-3 at the global batch 1024 (= 2.5e-4 * 1024 / 256)
        opt="adamw",
        opt_eps=1e-8,
        weight_decay=0.05,
        sched="cosine",
        warmup_epochs=5,
        warmup_lr=1e-6,
        min_lr=1e-5,
        ema_decay=0.99992,
        amp=True,
        label_smoothing=0.1,
        mixup=0.8,
        cutmix=1.0,
        aa="rand-m9-mstd0.5-inc1",
        color_jitter=0.4,
        reprob=0.25,
        mean=(0.0, 0.0, 0.0),            # the data pipeline yields [0, 1] images ...
        std=(1.0, 1.0, 1.0),
        norm_mean=IMAGENET_MEAN,         # ... and the model normalises inside its forward
        norm_std=IMAGENET_STD,
        dat_eps=0.1,                     # L2 radius of the pixel-space step on the VQGAN reconstruction
        dat_step_size=0.1,
        dat_steps=1,
        dat_random_start_prob=0.8,
        vqgan_checkpoint=None,           # path of vqgan_openimages_f8_16384.ckpt (or a converted .safetensors)
        vqgan_random_init=False,         # True: a random VQGAN (tests/smoke runs only)
        vqgan_model_args={},             # create_model kwargs of the VQGAN (a reduced one for tests)
        vqgan_autocast=False,            # False: the VQGAN runs in float32 even under AMP (code choice stays exact)
    )

    def __init__(self, cfg, for_eval: bool = False):
        super().__init__(cfg, for_eval)
        self._vqgan: Optional[nn.Module] = None

    # --- model ----------------------------------------------------------------------------------------------
    def build_model(self, num_classes: Optional[int]) -> nn.Module:
        """The registry classifier taking [0, 1] images: ``(x - norm_mean) / norm_std`` runs inside its forward
        (same keys as the plain registry model)."""
        model = super().build_model(num_classes)
        return add_input_normalization(model, self.cfg.norm_mean, self.cfg.norm_std)

    def vqgan(self, device: Optional[torch.device] = None) -> nn.Module:
        """The frozen VQGAN (built on first use, on ``device``): from ``vqgan_checkpoint``, or random with
        ``vqgan_random_init``; otherwise a ``FileNotFoundError`` naming the checkpoint it needs."""
        if self._vqgan is None:
            self._vqgan = build_vqgan(self.cfg)
        if device is not None and next(self._vqgan.parameters()).device != device:
            self._vqgan.to(device)
        return self._vqgan

    def on_epoch_start(self, epoch: int, model: nn.Module, ctx: StepContext) -> None:
        # builds (and checks) the VQGAN before the first training batch
        self.vqgan(ctx.device)

    # --- step -----------------------------------------------------------------------------------------------
    def reconstruct(self, x: Tensor, ctx: StepContext) -> Tensor:
        """VQGAN(x) without gradient: (B, 3, H, W) in [0, 1] -> same shape/dtype in [0, 1]; float32 unless
        ``vqgan_autocast``."""
        vq = self.vqgan(x.device)
        amp_off = (contextlib.nullcontext() if self.cfg.vqgan_autocast
                   else torch.autocast(x.device.type, enabled=False))
        with torch.no_grad(), amp_off:
            inp = x if self.cfg.vqgan_autocast else x.float()
            return vq(inp).to(x.dtype)

    def train_loss(self, model: nn.Module, batch, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        """``batch``: images (B, 3, H, W) in [0, 1] and targets (B,) int64 or (B, C) soft targets (Mixup/CutMix).
        Returns the clean + discrete-adversarial loss (float32 scalar) and both terms for the log."""
        c = self.cfg
        x, y = batch[0], batch[1]
        clean = soft_target_ce(model(x), y, c.label_smoothing)
        x_rec = self.reconstruct(x, ctx)
        x_adv = dat_l2_step(model, x_rec, y, eps=c.dat_eps, step_size=c.dat_step_size, steps=c.dat_steps,
                            random_start_prob=c.dat_random_start_prob)
        x_dat = self.reconstruct(x_adv, ctx)
        adv = soft_target_ce(model(x_dat), y, c.label_smoothing)
        return clean + adv, {"loss_clean": float(clean.detach()), "loss_dat": float(adv.detach())}


def build_vqgan(cfg) -> nn.Module:
    """``vqgan_f8_16384`` for a DAT config: weights from ``cfg.vqgan_checkpoint`` (strict), or random when
    ``cfg.vqgan_random_init`` (with a warning on stderr); frozen, eval mode, float32."""
    from ...models import create_model
    from ...models.vqgan import load_vqgan

    kwargs = dict(cfg.get("vqgan_model_args") or {})
    path = cfg.get("vqgan_checkpoint")
    if path:
        return load_vqgan(path, **kwargs)
    if not cfg.get("vqgan_random_init"):
        raise FileNotFoundError(
            f"recipe 'dat' needs the frozen VQGAN's weights: pass --set vqgan_checkpoint=PATH to {VQGAN_FILE} "
            f"(taming-transformers' VQGAN OpenImages f=8, 16384 codes; nothing is downloaded), or "
            f"--set vqgan_random_init=True for a smoke run with a random VQGAN")
    print("WARNING: recipe 'dat' runs with a RANDOMLY INITIALISED VQGAN (vqgan_random_init=True): the "
          "discrete adversarial term is meaningless; use it for tests and smoke runs only", file=sys.stderr,
          flush=True)
    return create_model(VQGAN_NAME, **kwargs)


RECIPE = DATRecipe
