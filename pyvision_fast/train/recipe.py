"""The recipe contract: what a paper's training recipe supplies to the one engine (``train/engine.py``).

A recipe is a module in ``pyvision_fast/train/recipes/`` that defines one ``Recipe`` subclass named ``RECIPE``.
It says *what* to train (model, data, loss, metrics, the paper's hyper-parameters); the engine owns *how* (loop,
DDP, AMP, accumulation, clipping, schedules, EMA, checkpoints, resume, logs, progress).

Config: the engine resolves one flat ``Config`` = ``ENGINE_DEFAULTS`` <- ``Recipe.defaults`` <- CLI flags
(``--epochs`` ...) <- ``--set key=value``. Every key is documented where it is defined; unknown ``--set`` keys are
an error. ``config.json`` in ``--output`` is this resolved dict.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn


class Config(dict):
    """A dict whose keys read as attributes (``cfg.lr``); unknown attributes raise ``AttributeError``."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"config has no key {key!r}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value


# Settings every recipe has; a recipe's ``defaults`` override them and may add its own keys.
ENGINE_DEFAULTS: dict[str, Any] = dict(
    model=None,                 # registry name (pyvision_fast.models.create_model)
    model_args={},              # extra create_model kwargs (--model-arg K=V)
    pretrained=None,            # path of weights to start from (safetensors or .pth), or None
    num_classes=None,           # None: taken from the training data
    img_size=224,
    epochs=10,                  # length of the lr schedule
    cooldown_epochs=0,          # extra epochs at the schedule's final lr after it (timm's cooldown_epochs)
    batch_size=64,              # per process
    eval_batch_size=None,       # per process, for evaluation; None: batch_size
    accum_steps=1,              # gradient accumulation: optimizer step every accum_steps batches
    opt="adamw",                # adamw | sgd | adam
    lr=None,                    # absolute lr; None: blr * batch_size * world_size * accum_steps / 256
    blr=1e-3,
    min_lr=1e-6,
    weight_decay=0.05,
    opt_betas=(0.9, 0.999),
    opt_eps=1e-8,
    momentum=0.9,
    nesterov=False,
    layer_decay=None,           # e.g. 0.65: timm.optim.param_groups_layer_decay
    sched="cosine",             # cosine | poly | step | multistep | none, per optimizer update, timm's schedulers
    poly_power=0.9,             # poly schedule: lr (1 - t/T)^poly_power
    warmup_epochs=0,
    warmup_lr=1e-6,
    decay_epochs=30,            # step schedule period
    decay_milestones=(),        # multistep schedule epochs
    decay_rate=0.1,
    clip_grad=None,             # max global grad norm, or None
    ema_decay=None,             # e.g. 0.9999: timm.utils.ModelEmaV3
    amp=False,                  # torch.amp autocast (CUDA only; ignored with a note on CPU)
    amp_dtype="bfloat16",       # bfloat16 | float16 (float16 adds a GradScaler)
    label_smoothing=0.0,
    mixup=0.0, cutmix=0.0, mixup_prob=1.0, mixup_switch_prob=0.5, mixup_mode="batch",
    workers=4,
    seed=0,
    deterministic=True,
    device="auto",              # auto | cpu | cuda
    eval_every=1,               # epochs between evaluations
    progress=True,              # tqdm on rank 0 when stdout is a TTY
    shuffle=True,               # shuffle the training set each epoch (False: file order, e.g. for DDP checks)
    drop_last=False,            # drop the last incomplete training batch
    eval_samples=None,          # slow evaluations (AutoAttack) use the first N validation images (--eval-samples)
)


@dataclass
class StepContext:
    """What the engine passes to a recipe's steps."""

    cfg: Config
    device: torch.device
    epoch: int = 0
    step: int = 0               # optimizer steps taken so far
    rank: int = 0
    world_size: int = 1
    autocast: Callable[[], Any] = field(default=lambda: torch.autocast("cpu", enabled=False))
    mixup_fn: Optional[Callable] = None     # timm Mixup when mixup/cutmix > 0, built by the engine
    # set by the engine for training: "resuming" (bool) and "optimizer" (the engine's optimizer, for a recipe
    # that schedules its lr itself under sched="none"); recipes may keep their own entries here
    extra: dict = field(default_factory=dict)


class Recipe:
    """Base class of every recipe. Override what the paper changes; the defaults are supervised
    classification (cross-entropy with label smoothing or mixup's soft targets, accuracy metrics)."""

    name: str = ""
    defaults: dict[str, Any] = {}
    main_metric: str = "accuracy"          # the key of evaluate()'s dict that picks checkpoint-best
    main_mode: str = "max"                 # max | min

    def __init__(self, cfg: Config, for_eval: bool = False):
        self.cfg = cfg
        # True when built for ``pvf eval``: build_datasets may then leave the training split out (None)
        self.for_eval = for_eval

    # --- data -------------------------------------------------------------------------------------
    def build_datasets(self, data_dir: str) -> tuple[torch.utils.data.Dataset, Optional[torch.utils.data.Dataset]]:
        """(train, val) datasets read from ``data_dir`` in the dataset's real format; items are (input, target).
        Must fail before training with an error naming the missing/bad file. Under ``pvf eval``
        (``self.for_eval``) the training split may be None, and is then never read."""
        raise NotImplementedError

    def train_sample_weights(self, train_set) -> Optional[Tensor]:
        """Per-sample weights for a weighted sampler (class balance), or None for plain shuffling."""
        return None

    # --- model and optimisation ---------------------------------------------------------------------
    def build_model(self, num_classes: Optional[int]) -> nn.Module:
        from ..models import create_model

        kwargs = dict(self.cfg.model_args)
        if num_classes is not None:
            kwargs.setdefault("num_classes", num_classes)
        return create_model(self.cfg.model, **kwargs)

    def param_groups(self, model: nn.Module) -> list[dict]:
        """Optimizer parameter groups; the engine's default (weight decay off for norms/biases/``no_weight_decay``,
        timm's layer decay when ``layer_decay`` is set) is used when this returns None."""
        return None

    # --- steps --------------------------------------------------------------------------------------
    def on_train_start(self, model: nn.Module, ctx: StepContext) -> None:
        """Called once before the first epoch, with the model on ``ctx.device`` (not yet DDP-wrapped): builds what
        the recipe trains beside the model (a noise generator and its optimizer, class prototypes). On a resumed
        run ``ctx.extra["resuming"]`` is True and ``load_state_dict`` follows, so skip expensive initialisation."""

    def state_dict(self) -> dict[str, Any]:
        """The recipe's own training state (extra modules, optimizers, buffers), saved with every checkpoint in
        ``train-state-last.pt`` so that ``--resume`` restores it exactly; plain tensors/containers only."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores ``state_dict()``'s output on ``--resume`` (after ``on_train_start``)."""

    def on_epoch_start(self, epoch: int, model: nn.Module, ctx: StepContext) -> None:
        """Per-epoch schedules that are not the lr (the ε warm-up of adversarial training)."""

    def on_epoch_end(self, epoch: int, model: nn.Module, ctx: StepContext) -> None:
        """After an epoch's last optimizer step, before evaluation (PointCAT fine-tunes its last layer here)."""

    def training_module(self, model: nn.Module) -> nn.Module:
        """The module the engine wraps in DistributedDataParallel (when distributed) and hands to
        ``train_loss``; by default the model itself. DDP synchronises gradients only for what runs through its
        ``forward``: a recipe whose loss is another method of the model returns ``MethodAsForward(model,
        "loss")`` and calls that module in ``train_loss``. Checkpoints, EMA and the other hooks keep the model."""
        return model

    def train_loss(self, model: nn.Module, batch, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        """Forward pass and loss of one training batch (already on ``ctx.device``, mixup already applied to the
        batch by the engine when configured); returns (scalar loss, {name: float} of values to log, whose
        sample-weighted epoch means go beside the loss into metrics.csv and TensorBoard). The engine calls it
        inside ``ctx.autocast()`` and does backward, AMP scaling, accumulation, clipping and the
        optimizer/scheduler/EMA steps."""
        raise NotImplementedError

    def build_metrics(self, num_classes: Optional[int]):
        """A torchmetrics ``MetricCollection`` (distributed-aware) updated by ``eval_update``."""
        raise NotImplementedError

    def eval_update(self, model: nn.Module, batch, metrics, ctx: StepContext) -> Tensor:
        """Runs the model on one evaluation batch, updates ``metrics``; returns the batch's mean loss."""
        raise NotImplementedError

    def evaluate_extra(self, model: nn.Module, loader, ctx: StepContext) -> dict[str, Any]:
        """Metrics outside the per-batch loop (AutoAttack on the first N images, ...); merged into the results."""
        return {}


class MethodAsForward(nn.Module):
    """A module whose ``forward`` is ``module.<method>``, so DistributedDataParallel (which arms its gradient
    synchronisation only in ``forward``) can wrap a model whose training loss is another method. Its
    parameters and state_dict are the wrapped module's, under ``module.``."""

    def __init__(self, module: nn.Module, method: str):
        super().__init__()
        if not callable(getattr(module, method, None)):
            raise ValueError(f"MethodAsForward: {type(module).__name__} has no method {method!r}")
        self.module, self.method = module, method

    def forward(self, *args, **kwargs):
        return getattr(self.module, self.method)(*args, **kwargs)
