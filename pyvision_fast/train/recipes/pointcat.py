"""``pointcat``: PointCAT's contrastive adversarial training of a point-cloud classifier (shared/papers.md
section 5; the training loop re-implemented from ``shikiw/PointCAT:trainer.py`` and ``solver.py``), and its
robustness table.

Data: ModelNet40 in either real format, read by ``pyvision_fast.data.modelnet40``
(``modelnet40_normal_resampled``: ``modelnet40_shape_names.txt``, ``modelnet40_{train,test}.txt``,
``<class>/<class>_0001.txt``; or ``modelnet40_ply_hdf5_2048``: ``ply_data_*.h5`` with ``train_files.txt`` /
``test_files.txt``), ``num_points`` points per cloud (1024), xyz only, normalised to the unit sphere.

Model: any classifier of ``pyvision_fast.models.pointnet`` (``pointnet`` by default, or ``pointnet2_ssg``,
``pointnet2_msg``, ``dgcnn``): ``forward(points) -> (feature, logits)``,
``get_classifier``/``set_classifier``, ``num_features``. PointCAT fine-tunes a classifier trained normally
first (``pvf train pointcloud_classify --model pointnet``): pass its checkpoint with ``--set
pretrained=PATH`` (the official code loads ``classifier_noAT.pth``); without it the classifier starts from its
initialisation. The checkpoints written here load in ``pvf eval pointcloud_classify`` and back.

Training (per mini-batch, as ``solver.run_train``; the engine owns the loop, DDP and checkpoints):

1. the classifier in eval mode, the noise generator (``models.pointcat.PointCATNoiseGenerator``) in train
   mode: ``inner_steps`` (4) generator updates minimising ``losses.pointcat.generator_loss`` (τ 0.1, β 0.5) of
   the projections of the clean cloud, the adversarial cloud ``clamp(x + eps sqrt(3N) g(x)/||g(x)||, -1, 1)``
   (eps 0.04) and the projected prototype of each sample's class; under DDP its gradients are averaged over
   the processes and its BatchNorm buffers broadcast from rank 0 afterwards (what DDP does for the
   classifier);
2. the classifier in train mode, the generator in eval mode: the loss returned to the engine (whose optimizer
   updates the classifier and the projection head) is ``supcon(z_adv, z_ori) + alpha (cent(z_ori) +
   cent(z_adv))`` (τ 0.1 and 0.25, alpha 8) against the projections of all class prototypes;
3. with the original last layer back in place, the prototypes are updated by ``update_search_iters`` (10) Adam
   steps (lr 0.001) warm-started from the previous clouds (``models.pointcat.search_feature_peaks``, all
   classes in one batch). This step follows the engine's optimizer step, so it runs at the start of the next
   batch (and at the end of the epoch for the last batch): the same sequence as the official loop.

At the start the prototypes are searched for 500 steps (lr 0.005) from ``U(-1, 1)`` clouds, then the last
layer is replaced by a ``ProjectionHead`` (Linear-BN-ReLU-Linear, ``num_features`` wide). After each epoch the
original last layer is put back and fine-tuned alone with cross-entropy on the clean (augmented) training set,
one Adam step (lr 0.1, weight decay 1e-4) per batch, features from the frozen classifier in eval mode
(``run_finetune``); the model is evaluated and checkpointed with that layer, so ``checkpoint-*.safetensors``
are plain classifiers (same keys as ``pointcloud_classify``'s). Augmentation (official ``utils/provider.py``):
random point dropout (ratio up to 0.875, dropped points replaced by the first one), a random scale in [0.8,
1.25] and a shift in [-0.1, 0.1] per cloud (``data.modelnet40.pointnet2_train_transform``).

Defaults are the official ones (``arguments.py``, README command): Adam (L2 weight decay 1e-4 on every
parameter) lr 1e-3 for classifier and generator, batch 64, 200 epochs, ``CosineAnnealingWarmRestarts(T_0=5,
T_mult=2)`` stepped once per epoch for the classifier, the generator and the fine-tuned layer. The engine's
schedules (timm, per update) have no warm restarts, so this recipe sets ``sched="none"`` and applies that
per-epoch schedule itself (``lr_restart_epochs`` 5, ``lr_restart_mult`` 2; lr at epoch e = ``lr (1 + cos(pi t
/ T)) / 2``, t the epoch within its cycle of T epochs) at the start of every epoch to its own optimizers and
to the engine's (``ctx.extra["optimizer"]``). ``--set
lr_restart_epochs=0 sched=cosine`` hands the classifier's schedule back to the engine.

The recipe's state (generator and its optimizer, projection head, prototypes and their clouds, the fine-tune
optimizer) is saved in ``train-state-last.pt``; ``--resume`` continues exactly. The generator, its first
prototype clouds and the projection head are drawn from ``seed`` alone (the same on every rank).

Deliberate differences from the official loop: the frozen
classifier's clean projections and the projected prototypes of the generator steps are computed once per batch
(eval mode makes them the same in each of the 4 steps); prototype searches run exactly ``iters`` Adam steps
(official: ``iters - 1``) and take the feature of the clamped cloud (official: unclamped); the classifier's
loss needs two DDP forwards, the first under ``no_sync``. With ``--amp`` the generator steps and the searches
run under the same autocast; bfloat16 is the safe choice (float16's GradScaler scales only the classifier's
loss).

Evaluation: ``accuracy`` (overall, main metric) and ``class_accuracy`` (mean per class) on the test split, and
the robustness table (``attacks.point_defense.evaluate_point_robustness``): accuracy under each attack of
``attacks`` (clean, I-FGM and MI-FGM with budget 0.08 sqrt(3N) in L2 over 50 iterations, mu 1, C&W with 10
binary steps of 50 Adam iterations at lr 1e-2, random drop of 700 points, 100 added uniform points, Gaussian
jitter sigma 0.04 clipped at 0.16) times each pre-processing defence of ``defences`` (none, SOR k 2 alpha 1.1,
SRS dropping 500 points), keys ``robust/<attack>/<defence>``. It runs under ``pvf eval`` on the first
``eval_samples`` test clouds (all when None) and after training epochs only when ``eval_samples`` is set.
"""
from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...losses.pointcat import centralizing_loss, generator_loss, supcon_loss
from ...models.pointcat import PointCATNoiseGenerator, ProjectionHead, perturb_points, search_feature_peaks
from ..distributed import ShardSampler, unwrap
from ..recipe import Recipe, StepContext

__all__ = ["PointCATRecipe", "RECIPE", "warm_restart_lr"]


def warm_restart_lr(base_lr: float, epoch: int, t0: int = 5, t_mult: int = 2, eta_min: float = 0.0) -> float:
    """``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts``'s lr after ``epoch`` steps (one per epoch)."""
    if t_mult == 1:
        t_cur, t_i = epoch % t0, t0
    else:
        n = int(math.log(epoch / t0 * (t_mult - 1) + 1, t_mult))
        t_cur, t_i = epoch - t0 * (t_mult ** n - 1) / (t_mult - 1), t0 * t_mult ** n
        if t_cur >= t_i:       # float rounding of the log at a cycle boundary
            t_cur, t_i = t_cur - t_i, t_i * t_mult
    return eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2


def _world() -> tuple[bool, int]:
    dist = torch.distributed.is_available() and torch.distributed.is_initialized()
    return dist, (torch.distributed.get_world_size() if dist else 1)


def _own_step(loss: Tensor, params: list[Tensor], optimizer: torch.optim.Optimizer) -> None:
    """One update of a model the recipe trains itself (the generator, the fine-tuned last layer): gradients of
    ``loss`` for ``params`` only (the engine's model keeps its own), averaged over the processes, a step."""
    for p, g in zip(params, torch.autograd.grad(loss, params)):
        p.grad = g
    _average_gradients(params)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _average_gradients(params: list[Tensor]) -> None:
    """All-reduce mean of the ``.grad`` of ``params`` over the processes (one flat buffer); nothing alone."""
    dist, world = _world()
    if not dist or world == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def _broadcast_buffers(module: nn.Module) -> None:
    dist, world = _world()
    if dist and world > 1:
        for buf in module.buffers():
            torch.distributed.broadcast(buf, 0)


class PointCATRecipe(Recipe):
    name = "pointcat"
    main_metric = "accuracy"
    main_mode = "max"
    defaults = dict(
        model="pointnet",
        num_points=1024,               # points per cloud (the generator is built for this many)
        batch_size=64,
        epochs=200,
        opt="adam",
        lr=1e-3,                       # classifier and projection head (official lr_c)
        weight_decay=1e-4,             # Adam's L2 decay on every parameter (official decay_rate)
        sched="none",                  # the recipe's own per-epoch warm restarts (lr_restart_*)
        lr_restart_epochs=5,           # CosineAnnealingWarmRestarts T_0; 0: the engine's sched instead
        lr_restart_mult=2,             # T_mult
        lr_generator=1e-3,             # official lr_ng
        eps=0.04,                      # perturbation: L2 norm eps * sqrt(3N) per cloud
        inner_steps=4,                 # generator updates per classifier update
        alpha=8.0,                     # centralising loss weight (README command; arguments.py default 1)
        beta=0.5,                      # weight of the prototype term in the generator loss
        tau_supcon=0.1,
        tau_cent=0.25,
        tau_adv=0.1,
        cosine_similarity=True,        # README command: --use_cosine_similarity
        peak_init_iters=500,
        peak_init_lr=0.005,
        peak_update_iters=10,
        peak_update_lr=1e-3,           # official lr_fp
        peak_weight_decay=1e-4,
        finetune=True,                 # per-epoch fine-tune of the last layer (official run_finetune)
        finetune_lr=0.1,
        augment=True,                  # training clouds: random point dropout, scale, shift
        workers=4,
        # robustness table (evaluate_extra); sizes of the official test
        attacks=("clean", "ifgm", "mifgm", "cw", "drop", "add", "jitter"),
        defences=("none", "sor", "srs"),
        attack_budget=0.08,            # I-FGM / MI-FGM: L2 budget attack_budget * sqrt(3N)
        attack_iters=50,
        attack_mu=1.0,
        cw_lr=1e-2,
        cw_binary_steps=10,
        cw_iters=50,
        drop_num=700,
        add_num=100,
        jitter_sigma=0.04,
        jitter_clip=0.16,
        sor_k=2,
        sor_alpha=1.1,
        srs_drop=500,
        eval_samples=None,             # robustness table on the first N test clouds (pvf eval: all when None)
    )

    def __init__(self, cfg, for_eval: bool = False):
        super().__init__(cfg, for_eval)
        if cfg.lr_restart_epochs and cfg.sched != "none":
            raise ValueError(f"pointcat applies its own warm-restart schedule (lr_restart_epochs="
                             f"{cfg.lr_restart_epochs}); with sched={cfg.sched!r} set lr_restart_epochs=0 "
                             f"too")
        self.train_set = None
        self.generator: Optional[PointCATNoiseGenerator] = None
        self.proj_head: Optional[ProjectionHead] = None
        self.fc: Optional[nn.Module] = None
        self.gen_opt = self.fc_opt = None
        self.peak_inputs = self.peak_features = None
        self._peaks_stale = False
        self.model_opt = None      # the engine's optimizer (ctx.extra), whose lr the warm restarts set

    # --- data ---------------------------------------------------------------------------------------
    def build_datasets(self, data_dir: str):
        from ...data.modelnet40 import modelnet40_splits, pointnet2_train_transform

        transform = pointnet2_train_transform() if self.cfg.augment else None
        train, test = modelnet40_splits(data_dir, num_points=int(self.cfg.num_points),
                                        train_transform=transform, with_train=not self.for_eval)
        self.train_set = train
        return train, test

    # --- model and optimisation ---------------------------------------------------------------------
    @contextmanager
    def _fixed_seed(self, offset: int):
        """Torch's CPU generator seeded from ``seed + offset`` alone inside the block and restored after it:
        the same draws on every rank, and none taken from the run's RNG (so resuming draws what a straight run
        does)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.cfg.seed) + offset)
            yield

    def param_groups(self, model: nn.Module) -> list[dict]:
        """Every classifier parameter but the last layer's (fine-tuned apart), then the projection head that
        CAT trains in its place (built here, so that the engine's optimizer holds it); weight decay on all."""
        device = next(model.parameters()).device
        fc_params = {id(p) for p in model.get_classifier().parameters()}
        with self._fixed_seed(1):
            self.proj_head = ProjectionHead(model.num_features).to(device)
        wd = self.cfg.weight_decay
        body = [p for p in model.parameters() if id(p) not in fc_params and p.requires_grad]
        return [{"params": body, "weight_decay": wd},
                {"params": list(self.proj_head.parameters()), "weight_decay": wd}]

    def _lr_factor(self, epoch: int) -> float:
        c = self.cfg
        if not c.lr_restart_epochs:
            return 1.0
        return warm_restart_lr(1.0, epoch, int(c.lr_restart_epochs), int(c.lr_restart_mult))

    def on_train_start(self, model: nn.Module, ctx: StepContext) -> None:
        c = self.cfg
        if not hasattr(model, "set_classifier") or not hasattr(model, "num_features"):
            raise TypeError(f"pointcat needs a classifier with get_classifier/set_classifier/num_features "
                            f"(pyvision_fast.models.pointnet), got {type(model).__name__}")
        num_classes = c.num_classes or model.num_classes
        with self._fixed_seed(2):
            self.generator = PointCATNoiseGenerator(int(c.num_points)).to(ctx.device)
            start = torch.rand(num_classes, int(c.num_points), 3) * 2 - 1
        self.gen_opt = torch.optim.Adam(self.generator.parameters(), lr=c.lr_generator, betas=(0.9, 0.999),
                                        eps=1e-8, weight_decay=c.weight_decay)
        self.fc = model.get_classifier()
        self.fc_opt = torch.optim.Adam(self.fc.parameters(), lr=c.finetune_lr, betas=(0.9, 0.999), eps=1e-8,
                                       weight_decay=c.weight_decay)
        if ctx.extra.get("resuming"):
            self.peak_inputs = start.to(ctx.device)      # replaced by load_state_dict
            self.peak_features = torch.zeros(num_classes, model.num_features, device=ctx.device)
        else:
            self.peak_inputs, self.peak_features = search_feature_peaks(
                model, start.to(ctx.device), iters=int(c.peak_init_iters), lr=c.peak_init_lr,
                weight_decay=c.peak_weight_decay)
        model.set_classifier(self.proj_head)
        self.model_opt = ctx.extra.get("optimizer")

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.state_dict(), "generator_opt": self.gen_opt.state_dict(),
                "proj_head": self.proj_head.state_dict(), "fc_opt": self.fc_opt.state_dict(),
                "peak_inputs": self.peak_inputs, "peak_features": self.peak_features}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        keys = {"generator", "generator_opt", "proj_head", "fc_opt", "peak_inputs", "peak_features"}
        missing = keys - set(state)
        if missing:
            raise ValueError(f"pointcat resume: the training state lacks {sorted(missing)}")
        self.generator.load_state_dict(state["generator"])
        self.gen_opt.load_state_dict(state["generator_opt"])
        self.proj_head.load_state_dict(state["proj_head"])
        self.fc_opt.load_state_dict(state["fc_opt"])
        device = self.peak_inputs.device
        self.peak_inputs = state["peak_inputs"].to(device)
        self.peak_features = state["peak_features"].to(device)

    def on_epoch_start(self, epoch: int, model: nn.Module, ctx: StepContext) -> None:
        factor = self._lr_factor(epoch)
        for group in self.gen_opt.param_groups:
            group["lr"] = self.cfg.lr_generator * factor
        for group in self.fc_opt.param_groups:
            group["lr"] = self.cfg.finetune_lr * factor
        if self.model_opt is not None and self.cfg.lr_restart_epochs:
            for group in self.model_opt.param_groups:
                group["lr"] = self.cfg.lr * factor
        if model.get_classifier() is not self.proj_head:
            model.set_classifier(self.proj_head)

    # --- steps --------------------------------------------------------------------------------------
    def _check_batch(self, points: Tensor, labels: Tensor) -> None:
        if points.dim() != 3 or points.shape[1:] != (self.cfg.num_points, 3):
            raise ValueError(f"pointcat: training clouds must be (B, {self.cfg.num_points}, 3), got "
                             f"{tuple(points.shape)}")
        if not torch.isfinite(points).all():
            b = int((~torch.isfinite(points)).flatten(1).any(1).nonzero()[0])
            raise ValueError(f"pointcat: training batch cloud {b} contains NaN or Inf coordinates")
        m = len(self.peak_features)
        if labels.dim() != 1 or len(labels) != len(points):
            raise ValueError(f"pointcat: labels must be ({len(points)},), got {tuple(labels.shape)}")
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= m):
            raise ValueError(f"pointcat: labels must lie in [0, {m}), got range [{int(labels.min())}, "
                             f"{int(labels.max())}]")

    def _update_peaks(self, net: nn.Module) -> None:
        """Warm-started prototype update with the original last layer in place (then the head back). Under DDP
        the BatchNorm buffers (classifier and head) are first taken from rank 0, as DDP's next forward would,
        so that every rank finds the same prototypes."""
        _broadcast_buffers(net)
        head = net.set_classifier(self.fc)
        try:
            self.peak_inputs, self.peak_features = search_feature_peaks(
                net, self.peak_inputs, iters=int(self.cfg.peak_update_iters), lr=self.cfg.peak_update_lr,
                weight_decay=self.cfg.peak_weight_decay)
        finally:
            net.set_classifier(head)
        self._peaks_stale = False

    def _adversarial(self, points: Tensor) -> Tensor:
        return perturb_points(points, self.generator(points), self.cfg.eps)

    def train_loss(self, model: nn.Module, batch, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        c = self.cfg
        points, labels = batch[0], batch[1].long()
        self._check_batch(points, labels)
        net = unwrap(model)
        if self._peaks_stale:
            self._update_peaks(net)
        sim = dict(cosine=bool(c.cosine_similarity))
        gen_params = [p for p in self.generator.parameters() if p.requires_grad]

        # 1. noise generator: classifier (with the projection head) frozen in eval mode
        net_training = net.training
        net.eval()
        self.generator.train()
        with torch.no_grad():   # the frozen classifier's clean projections and prototypes (eval mode: fixed)
            _, z_ori = net(points)
            z_fp = self.proj_head(self.peak_features[labels])
        for _ in range(int(c.inner_steps)):
            _, z_adv = net(self._adversarial(points))
            loss_ng, l1, l2 = generator_loss(z_ori, z_adv, z_fp, c.tau_adv, c.beta, **sim)
            _own_step(loss_ng, gen_params, self.gen_opt)
        _broadcast_buffers(self.generator)

        # 2. classifier and projection head (the engine does backward and its optimizer step)
        net.train(net_training)
        self.generator.eval()
        with torch.no_grad():
            adv = self._adversarial(points)
        # two forwards as the official code (BatchNorm statistics per view); DDP allows one synchronised
        # forward per backward, so the first runs without it (its gradients still join the same backward).
        first = model.no_sync() if isinstance(model, nn.parallel.DistributedDataParallel) else nullcontext()
        with first:
            _, z_ori = model(points)
        _, z_adv = model(adv)
        z_fp = self.proj_head(self.peak_features)
        cent = centralizing_loss(z_ori, z_fp, labels, c.tau_cent, **sim) + \
            centralizing_loss(z_adv, z_fp, labels, c.tau_cent, **sim)
        con = supcon_loss(z_adv, z_ori, labels, c.tau_supcon, **sim)
        self._peaks_stale = True
        return con + c.alpha * cent, {"loss_supcon": con.item(), "loss_cent": cent.item(),
                                      "loss_generator": loss_ng.item()}

    def _finetune(self, net: nn.Module, epoch: int, ctx: StepContext) -> float:
        """One pass over the training set fitting the last layer alone (features from the frozen classifier in
        eval mode, as ``run_finetune``); returns the mean loss."""
        c = self.cfg
        from ..distributed import seed_worker

        rank, world = ctx.rank, ctx.world_size
        sampler = ShardSampler(len(self.train_set), rank, world, shuffle=bool(c.shuffle),
                               seed=int(c.seed) + 7919, pad=True)
        sampler.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(self.train_set, batch_size=int(c.batch_size), sampler=sampler,
                                             num_workers=int(c.workers), worker_init_fn=seed_worker)
        params = [p for p in self.fc.parameters() if p.requires_grad]
        flags = [(m, m.training) for m in net.modules()]
        net.eval()
        self.fc.train()
        total, count = 0.0, 0
        try:
            for points, labels in loader:
                points, labels = points.to(ctx.device), labels.to(ctx.device).long()
                with torch.no_grad():
                    feats, _ = net(points)
                loss = F.cross_entropy(self.fc(feats), labels)
                _own_step(loss, params, self.fc_opt)
                total += loss.item() * len(labels)
                count += len(labels)
        finally:
            for m, training in flags:
                m.training = training
        return total / max(count, 1)

    def on_epoch_end(self, epoch: int, model: nn.Module, ctx: StepContext) -> None:
        if self._peaks_stale:
            self._update_peaks(model)
        else:
            _broadcast_buffers(model)
        model.set_classifier(self.fc)
        if self.cfg.finetune and self.train_set is not None:
            self._finetune(model, epoch, ctx)

    # --- evaluation ---------------------------------------------------------------------------------
    def build_metrics(self, num_classes: Optional[int]):
        from torchmetrics import MetricCollection
        from torchmetrics.classification import MulticlassAccuracy

        return MetricCollection({"accuracy": MulticlassAccuracy(num_classes, average="micro"),
                                 "class_accuracy": MulticlassAccuracy(num_classes, average="macro")})

    def eval_update(self, model: nn.Module, batch, metrics, ctx: StepContext) -> Tensor:
        points, labels = batch[0], batch[1].long()
        with torch.no_grad():
            _, logits = model(points)
        metrics.update(logits, labels)
        return F.cross_entropy(logits, labels)

    def evaluate_extra(self, model: nn.Module, loader, ctx: StepContext) -> dict[str, Any]:
        from ...attacks.point_defense import ROBUSTNESS_DEFAULTS, evaluate_point_robustness

        n = self.cfg.eval_samples
        if not self.for_eval and not n:
            return {}
        settings = {k: self.cfg[k] for k in ROBUSTNESS_DEFAULTS if k in self.cfg}
        settings.update(batch_size=int(self.cfg.batch_size), seed=int(self.cfg.seed))
        return evaluate_point_robustness(unwrap(model), loader.dataset, ctx.device,
                                         samples=None if not n else int(n), **settings)


RECIPE = PointCATRecipe
