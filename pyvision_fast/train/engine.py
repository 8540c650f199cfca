"""The one training engine: every recipe runs through ``train`` and ``evaluate_checkpoint``.

The recipe says what to train (``train/recipe.py``); this module owns the loop: torch.distributed DDP when torchrun
starts the processes (gloo on CPU, NCCL on CUDA), a sharding sampler (``distributed.ShardSampler``, also in one
process, so the sample order depends only on (seed, epoch)), torch.amp autocast with a GradScaler for float16,
gradient accumulation and clipping, weight-decay/layer-decay parameter groups, timm's warm-up + cosine/step
schedules stepped per optimizer update, timm's Mixup/CutMix and ModelEmaV3, torchmetrics evaluation, and the run
folder (``config.json``, ``metrics.csv``, TensorBoard events, checkpoints). Checkpoints are written at the end of
each epoch; ``--resume`` restores model, EMA, optimizer, scheduler, scaler and RNG states, so a resumed run equals
an uninterrupted one.
"""
from __future__ import annotations

import json
import math
import os
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader

from . import checkpoint as ckpt
from .config import resolve_config
from .distributed import (DistInfo, ShardSampler, all_reduce_sum, barrier, cleanup_distributed, init_distributed,
                          seed_everything, seed_worker)
from .recipe import Config, Recipe, StepContext
from .recipes import get_recipe


def _log(info: DistInfo, *parts, err: bool = False) -> None:
    if info.is_main:
        print(*parts, file=sys.stderr if err else sys.stdout, flush=True)


def _to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def check_labels(dataset, num_classes: int, split: str) -> None:
    """Every target of ``dataset.targets`` (when the reader exposes it) must lie in ``[0, num_classes)``."""
    targets = getattr(dataset, "targets", None)
    if targets is None or len(targets) == 0:
        return
    t = torch.as_tensor(targets)
    bad = ((t < 0) | (t >= num_classes)).nonzero().flatten()
    if len(bad):
        i = int(bad[0])
        where = getattr(dataset, "samples", None)
        name = f" ({where[i][0]})" if where else ""
        raise ValueError(f"{split} label {int(t[i])} of sample {i}{name} is outside the class range "
                         f"[0, {num_classes}) ({len(bad)} such labels); check num_classes and the data")


def build_optimizer(model: nn.Module, recipe: Recipe, cfg: Config) -> torch.optim.Optimizer:
    """The recipe's parameter groups, or: no weight decay for 1-D parameters (norms, biases) and the model's
    ``no_weight_decay()`` names; timm's layer-wise decay (an ``lr_scale`` per group) when ``layer_decay`` is set."""
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    groups = recipe.param_groups(model)
    if groups is None:
        skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
        if cfg.layer_decay is not None:
            groups = param_groups_layer_decay(model, cfg.weight_decay, skip, layer_decay=cfg.layer_decay)
        else:
            groups = param_groups_weight_decay(model, cfg.weight_decay, no_weight_decay_list=skip)
    if cfg.opt == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.opt_betas), eps=cfg.opt_eps,
                                 weight_decay=cfg.weight_decay)
    if cfg.opt == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.opt_betas), eps=cfg.opt_eps)
    if cfg.opt == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    raise ValueError(f"opt must be adamw, adam or sgd, got {cfg.opt!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Config, updates_per_epoch: int):
    """timm's scheduler of ``cfg.sched`` in optimizer-update units (``step_update(num_updates)``), or None.
    Warm-up is linear from ``warmup_lr`` over ``warmup_epochs`` (prefix: the cosine then spans the remaining
    updates down to ``min_lr``); step schedules count ``decay_epochs`` / ``decay_milestones`` from the start.
    The schedule spans ``epochs``; the ``cooldown_epochs`` after it train at the schedule's final lr (``min_lr``
    for cosine), as timm's ``train.py`` does."""
    from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler, PolyLRScheduler, StepLRScheduler

    total = cfg.epochs * updates_per_epoch
    warmup = min(int(cfg.warmup_epochs * updates_per_epoch), total - 1)  # a warm-up longer than the run is cut
    common = dict(warmup_t=warmup, warmup_lr_init=cfg.warmup_lr, t_in_epochs=False)
    if cfg.sched == "cosine":
        total = max(total - warmup, 1)
        return CosineLRScheduler(optimizer, t_initial=total, lr_min=cfg.min_lr, warmup_prefix=True, **common)
    if cfg.sched == "poly":  # DeepLab's (1 - t/T)^power, per update
        total = max(total - warmup, 1)
        return PolyLRScheduler(optimizer, t_initial=total, power=cfg.poly_power, lr_min=cfg.min_lr,
                               warmup_prefix=True, **common)
    if cfg.sched == "step":
        return StepLRScheduler(optimizer, decay_t=cfg.decay_epochs * updates_per_epoch, decay_rate=cfg.decay_rate,
                               **common)
    if cfg.sched == "multistep":
        return MultiStepLRScheduler(optimizer, decay_t=[m * updates_per_epoch for m in cfg.decay_milestones],
                                    decay_rate=cfg.decay_rate, **common)
    if cfg.sched == "none":
        return None
    raise ValueError(f"sched must be cosine, poly, step, multistep or none, got {cfg.sched!r}")


def _autocast_factory(cfg: Config, device: torch.device, info: DistInfo):
    if cfg.amp and device.type != "cuda":
        _log(info, "note: --amp is ignored on CPU (autocast and GradScaler are used on CUDA only)", err=True)
    if not (cfg.amp and device.type == "cuda"):
        return (lambda: nullcontext()), False
    if cfg.amp_dtype not in ("bfloat16", "float16"):
        raise ValueError(f"amp_dtype must be bfloat16 or float16, got {cfg.amp_dtype!r}")
    dtype = getattr(torch, cfg.amp_dtype)
    return (lambda: torch.autocast("cuda", dtype=dtype)), dtype == torch.float16


def _loader(dataset, cfg: Config, info: DistInfo, train: bool, sample_weights=None) -> DataLoader:
    """Training: this rank's shard of the epoch's order (shuffled or class-weighted, from ``(seed, epoch)``);
    evaluation: this rank's shard of the dataset order, nothing padded or repeated (training pads the order so
    that every rank takes the same number of steps)."""
    sampler = ShardSampler(len(dataset), info.rank, info.world_size, shuffle=train and cfg.shuffle, seed=cfg.seed,
                           weights=sample_weights if train else None, pad=train)
    drop_last = train and (cfg.drop_last or cfg.mixup > 0 or cfg.cutmix > 0)
    batch_size = cfg.batch_size if train or cfg.get("eval_batch_size") is None else cfg.eval_batch_size
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"{'batch_size' if train else 'eval_batch_size'} must be a positive integer, got "
                         f"{batch_size!r}")
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=cfg.workers,
                      drop_last=drop_last, worker_init_fn=seed_worker, pin_memory=torch.cuda.is_available(),
                      persistent_workers=False)


def evaluate(recipe: Recipe, model: nn.Module, loader: DataLoader, metrics, ctx: StepContext) -> dict[str, Any]:
    """Runs ``recipe.eval_update`` over ``loader`` in eval mode (no ``no_grad``: attacks need gradients) and
    returns ``{"loss": mean loss, **metrics.compute(), **recipe.evaluate_extra(...)}`` as plain Python values
    (tensors become numbers or nested lists). Under DDP each rank sees its own shard; the loss is summed over ranks
    here and torchmetrics synchronises its states in ``compute()``, so every image counts once. ``model`` is the
    plain module, not its DDP wrapper: the ranks' shards may differ by one batch, and no step here is collective."""
    model.eval()
    metrics.reset()
    total = torch.zeros(2, dtype=torch.float64, device=ctx.device)
    for batch in loader:
        batch = _to_device(batch, ctx.device)
        with ctx.autocast():
            loss = recipe.eval_update(model, batch, metrics, ctx)
        n = len(batch[0])
        total += torch.tensor([float(loss) * n, n], dtype=torch.float64, device=ctx.device)
    total = all_reduce_sum(total)
    results = {"loss": float(total[0] / total[1].clamp_min(1))}
    results.update(_jsonable(metrics.compute()))
    results.update(_jsonable(recipe.evaluate_extra(model, loader, ctx)))
    return results


def _scalars(results: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in results.items() if isinstance(v, (int, float))}


def _setup(args, for_eval: bool, identity: Optional[dict] = None):
    """Recipe, resolved config, process group, device and datasets, with every check that can fail on the inputs
    (unknown recipe/key/model, missing or bad data, labels outside the class range, an --output holding a run)
    done here, before anything is written or trained. Every rank runs the same checks on the same inputs, so an
    error stops all of them."""
    from ..models import is_model, list_models

    recipe_cls = get_recipe(args.recipe)
    cfg = resolve_config(recipe_cls, args, base=identity)
    if not is_model(cfg.model):
        raise ValueError(f"unknown model {cfg.model!r}; registered models: {', '.join(list_models())}")
    info, device = init_distributed(cfg.device)
    if not for_eval:
        ckpt.check_output_dir(Path(args.output), resume=bool(args.resume), overwrite=args.overwrite)
    seed_everything(cfg.seed)  # the same model initialisation on every rank (DDP also broadcasts rank 0's)
    if cfg.deterministic:
        # cuBLAS needs a fixed workspace for deterministic matmuls; it is read when the first handle is made.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)  # ops without a deterministic kernel warn
        torch.backends.cudnn.benchmark = False
    recipe = recipe_cls(cfg, for_eval=for_eval)
    train_set, val_set = recipe.build_datasets(args.data)
    if for_eval and val_set is None:
        raise ValueError(f"--data {args.data!r} has no validation split for recipe {args.recipe!r}")
    if not for_eval and train_set is None:
        raise ValueError(f"--data {args.data!r} has no training split for recipe {args.recipe!r}")
    if cfg.num_classes is None:
        classes = getattr(train_set, "classes", None)
        cfg.num_classes = len(classes) if classes is not None else None
    if cfg.num_classes is not None:
        for split, data in (("train", train_set), ("val", val_set)):
            if data is not None:
                check_labels(data, cfg.num_classes, split)
    return recipe, cfg, info, device, train_set, val_set


def train(args) -> dict[str, Any]:
    """Runs ``pvf train`` (``args`` from ``config.build_parser("train")``); returns the last evaluation."""
    output = Path(args.output)
    resume_files = ckpt.resolve_resume(args.resume) if args.resume else None
    try:
        recipe, cfg, info, device, train_set, val_set = _setup(args, for_eval=False)
        barrier()  # every rank has checked --output before rank 0 writes to it
        return _train(args, recipe, cfg, info, device, train_set, val_set, output, resume_files)
    finally:
        cleanup_distributed()


def _train(args, recipe, cfg, info, device, train_set, val_set, output, resume_files) -> dict[str, Any]:
    from timm.data import Mixup
    from timm.utils import ModelEmaV3
    from tqdm import tqdm

    state = ckpt.load_train_state(resume_files[0], cfg) if resume_files else None
    model = recipe.build_model(cfg.num_classes)
    if state is not None:
        ckpt.load_model_weights(model, resume_files[1])
    elif cfg.pretrained:
        from ..models import load_weights

        load_weights(model, cfg.pretrained)
    model.to(device)
    seed_everything(cfg.seed + info.rank)  # from here on each rank draws its own augmentation and dropout
    mixing = cfg.mixup > 0 or cfg.cutmix > 0
    if mixing and cfg.batch_size % 2:
        raise ValueError(f"mixup/cutmix need an even batch size, got {cfg.batch_size}")
    if cfg.lr is None:
        cfg.lr = cfg.blr * cfg.batch_size * info.world_size * cfg.accum_steps / 256
    train_loader = _loader(train_set, cfg, info, True, recipe.train_sample_weights(train_set))
    val_loader = _loader(val_set, cfg, info, False) if val_set is not None else None
    if len(train_loader) == 0:
        raise ValueError(f"the training set ({len(train_set)} samples) gives no full batch of {cfg.batch_size}")
    updates_per_epoch = math.ceil(len(train_loader) / cfg.accum_steps)
    optimizer = build_optimizer(model, recipe, cfg)
    scheduler = build_scheduler(optimizer, cfg, updates_per_epoch)
    autocast, fp16 = _autocast_factory(cfg, device, info)
    scaler = torch.amp.GradScaler(device.type, enabled=fp16)
    ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema_decay else None
    start_epoch, step, best = 0, 0, None
    mixup_fn = (Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                      switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode, label_smoothing=cfg.label_smoothing,
                      num_classes=cfg.num_classes) if mixing else None)
    ctx = StepContext(cfg=cfg, device=device, rank=info.rank, world_size=info.world_size, autocast=autocast,
                      mixup_fn=mixup_fn, extra={"resuming": state is not None, "optimizer": optimizer})
    # before the RNG state of a resumed run is restored, so a resumed run draws what an uninterrupted one does
    recipe.on_train_start(model, ctx)
    if state is not None:
        recipe.load_state_dict(state.get("recipe_state", {}))
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ckpt.load_model_weights(ema.module, Path(resume_files[1]).with_name(ckpt.EMA_LAST))
        start_epoch, step, best = state["epoch"], state["step"], state["best_metric"]
        ckpt.set_rng_state(state["rng"])
    ctx.epoch, ctx.step = start_epoch, step
    train_module = recipe.training_module(model)
    ddp_model = (nn.parallel.DistributedDataParallel(train_module, device_ids=[device.index]
                                                     if device.type == "cuda" else None)
                 if info.enabled else train_module)
    metrics = recipe.build_metrics(cfg.num_classes).to(device) if val_loader is not None else None

    writer = log = None
    if info.is_main:
        output.mkdir(parents=True, exist_ok=True)
        if args.overwrite and state is None:
            ckpt.clear_run(output)
        resolved = {"recipe": args.recipe, "data": str(args.data), "output": str(output),
                    "world_size": info.world_size, "amp_active": bool(cfg.amp and device.type == "cuda"),
                    "updates_per_epoch": updates_per_epoch, "resumed_from": str(args.resume) if args.resume else None,
                    **cfg}
        ckpt.atomic_write_bytes(output / "config.json", json.dumps(resolved, indent=2, default=str).encode())
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(output))
        log = ckpt.MetricsLog(output / "metrics.csv", start_epoch)
    show_bar = info.is_main and cfg.progress and sys.stdout.isatty()
    results: dict[str, Any] = {}
    last_epoch = cfg.epochs + cfg.cooldown_epochs
    for epoch in range(start_epoch, last_epoch):
        ctx.epoch = epoch
        train_loader.sampler.set_epoch(epoch)
        recipe.on_epoch_start(epoch, model, ctx)
        ddp_model.train()
        total = torch.zeros(2, dtype=torch.float64, device=device)
        extra_sums: dict[str, list[float]] = {}  # the recipe's logged values: name -> [sum over samples, samples]
        n_batches = len(train_loader)
        optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(tqdm(train_loader, desc=f"epoch {epoch}", disable=not show_bar, leave=False)):
            batch = _to_device(batch, device)
            if mixup_fn is not None:
                batch = (*mixup_fn(batch[0], batch[1]), *batch[2:])
            group_start = i - i % cfg.accum_steps
            group_size = min(cfg.accum_steps, n_batches - group_start)
            update_now = i == group_start + group_size - 1
            sync = nullcontext() if update_now or not info.enabled else ddp_model.no_sync()
            with sync:
                with autocast():
                    loss, extra = recipe.train_loss(ddp_model, batch, ctx)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite training loss {loss.item()} at epoch {epoch}, batch {i}")
                scaler.scale(loss / group_size).backward()
            n = len(batch[0])
            total += torch.tensor([loss.item() * n, n], dtype=torch.float64, device=device)
            for key, value in extra.items():
                acc = extra_sums.setdefault(key, [0.0, 0.0])
                acc[0] += float(value) * n
                acc[1] += n
            if update_now:
                if cfg.clip_grad is not None:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(ddp_model.parameters(), cfg.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                ctx.step = step
                if scheduler is not None:
                    scheduler.step_update(step)
                if ema is not None:
                    ema.update(model, step=step)
                if writer is not None:  # per update: this rank's batch loss and the largest group lr
                    writer.add_scalar("step/loss", loss.item(), step)
                    writer.add_scalar("step/lr", max(g["lr"] for g in optimizer.param_groups), step)
        recipe.on_epoch_end(epoch, model, ctx)
        total = all_reduce_sum(total)
        train_stats = {"loss": float(total[0] / total[1]), "lr": max(g["lr"] for g in optimizer.param_groups)}
        if extra_sums:  # every rank logs the same names (the recipe's), so one all-reduce in sorted order
            names = sorted(extra_sums)
            sums = all_reduce_sum(torch.tensor([extra_sums[k] for k in names], dtype=torch.float64, device=device))
            train_stats.update({k: float(v[0] / v[1]) for k, v in zip(names, sums)})
        evaluated = val_loader is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == last_epoch)
        if evaluated:
            results = evaluate(recipe, model, val_loader, metrics, ctx)
            ema_results = evaluate(recipe, ema.module, val_loader, metrics, ctx) if ema is not None else None
        if info.is_main:
            log.add(epoch, "train", train_stats)
            rows = [("train", train_stats)]
            if evaluated:
                rows.append(("val", _scalars(results)))
                if ema_results is not None:
                    rows.append(("val_ema", _scalars(ema_results)))
            for split, values in rows[1:]:
                log.add(epoch, split, values)
            for split, values in rows:
                for k, v in values.items():
                    writer.add_scalar(f"{split}/{k}", v, epoch)
            writer.flush()
            _log(info, f"epoch {epoch}: " + "  ".join(
                f"{split} " + " ".join(f"{k}={v:.4g}" for k, v in values.items()) for split, values in rows))
            improved = False
            if evaluated and recipe.main_metric in results:
                value = float(results[recipe.main_metric])
                improved = best is None or (value > best if recipe.main_mode == "max" else value < best)
                best = value if improved else best
            ckpt.save_model(model, output / ckpt.MODEL_LAST, cfg, {"epoch": str(epoch)})
            if ema is not None:
                ckpt.save_model(ema.module, output / ckpt.EMA_LAST, cfg, {"epoch": str(epoch)})
            if improved:
                ckpt.save_model(model, output / ckpt.MODEL_BEST, cfg,
                                {"epoch": str(epoch), recipe.main_metric: str(best)})
            ckpt.save_train_state(output / ckpt.TRAIN_STATE, {
                "epoch": epoch + 1, "step": step, "best_metric": best, "recipe": args.recipe,
                "model_identity": ckpt.model_identity(cfg), "world_size": info.world_size,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else {},
                "scaler": scaler.state_dict(), "recipe_state": recipe.state_dict(), "rng": ckpt.rng_state()})
        barrier()
    if writer is not None:
        writer.close()
    return results


def evaluate_checkpoint(args) -> dict[str, Any]:
    """Runs ``pvf eval``: the recipe's validation metrics of the weights in ``args.checkpoint``. The model name,
    arguments and class count come from the checkpoint's metadata when the engine wrote it (flags override)."""
    identity = ckpt.read_model_identity(args.checkpoint)
    try:
        recipe, cfg, info, device, _, val_set = _setup(args, for_eval=True, identity=identity)
        model = recipe.build_model(cfg.num_classes)
        try:
            ckpt.load_model_weights(model, Path(args.checkpoint))
        except RuntimeError as exc:
            raise ValueError(f"--checkpoint {args.checkpoint} does not fit model {cfg.model!r}: {exc}") from exc
        model.to(device)
        autocast, _ = _autocast_factory(cfg, device, info)
        ctx = StepContext(cfg=cfg, device=device, rank=info.rank, world_size=info.world_size, autocast=autocast)
        metrics = recipe.build_metrics(cfg.num_classes).to(device)
        return evaluate(recipe, model, _loader(val_set, cfg, info, False), metrics, ctx)
    finally:
        cleanup_distributed()
