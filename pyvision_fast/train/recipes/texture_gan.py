"""``texture_gan``: StyleGAN2 training of the UV-texture generator ``stylegan2_texture`` (paper 4,
``docs/talking_face.md``), following NVlabs stylegan2-ada-pytorch's ``StyleGAN2Loss`` and training loop
(without ADA augmentation).

Data: ``--data`` is a folder of images at any depth (``TextureFolder``; every image decoded once when the run
starts, a bad file is an error naming it). Each image is resized (shorter side, Lanczos) and centre-cropped to
``resolution`` and scaled to [-1, 1]; ``mirror`` adds random horizontal flips. When ``--data`` holds
``train/`` (and optionally ``val/``) sub-folders those are the splits; otherwise the whole folder trains and
is also the evaluation set (GAN metrics compare with the training distribution, as the official FID does).

Training, per batch of reals (the engine owns the loop, the generator's optimizer, EMA, checkpoints, resume):

1. discriminator (``StyleGAN2Discriminator``, resnet, minibatch std; owned by the recipe with its own Adam)
   one step on ``d_nonsaturating_loss`` of the reals and as many fakes; every ``d_reg_interval`` (16) steps a
   separate R1 step, ``r1_gamma / 2 * r1 * interval``, with the official lazy-regularisation Adam settings
   (lr and betas ** (16 / 17) scaled by 16 / 17);
2. generator: the loss returned to the engine is ``g_nonsaturating_loss`` of fresh fakes (the discriminator
   frozen); with ``pl_weight > 0`` every ``g_reg_interval`` (4) batches the path-length penalty of a half
   batch is added, times ``pl_weight * interval`` *(ours: in the same optimizer step, where the official loop
   takes a separate one)*.

Fakes use style mixing with probability ``style_mixing_prob`` (0.9) and random noise. R1 and the path length
differentiate through the fused ops (which have a double backward). EMA of G: the engine's
``timm.utils.ModelEmaV3`` with the official ``ema_kimg`` rule's constant decay 0.5 ** (batch * world_size /
(ema_kimg * 1000)) (no ramp-up, as paper256), unless ``ema_decay`` is set; it saves
``checkpoint-ema-last.safetensors``. Defaults: paper256 (Adam lr 0.0025, betas (0, 0.99), eps 1e-8, constant
lr, batch 64 (the official total over GPUs; per process here), R1 gamma 1, mbstd group 8, EMA 20 kimg, 8
mapping layers, channel_base 16384, 256^2, pl_weight 2). The discriminator, its optimizer, the step counters
and ``pl_mean`` are the recipe's state in ``train-state-last.pt`` (``--resume`` continues exactly); the
discriminator is initialised from ``seed`` alone.

The generator's architecture keys (``resolution``, ``img_channels``, ``z_dim``, ``w_dim``, ``mapping_layers``,
``channel_base``, ``channel_max``, ``conv_clamp``) are folded into ``model_args`` (``--model-arg`` wins), so
the checkpoints record them and ``pvf eval`` / ``pvf export stylegan2_texture --checkpoint`` rebuild the same
network; the discriminator mirrors them.

Evaluation (``main_metric`` ``fd_pixel``, lower is better): as many generated textures as evaluation images
(noise "const", seeded z) against the evaluation images: ``fd_pixel``, the Frechet distance between Gaussians
fitted to 8x8 average-pooled images (192 features; a small FID without Inception weights), ``mean_gap`` /
``std_gap``, the largest per-channel gap of pixel mean / std, and, when the discriminator exists (training),
``d_gap`` = mean D(real) - mean D(fake).
"""
from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from ...losses.gan import (d_nonsaturating_loss, ema_beta, g_nonsaturating_loss, path_length_penalty,
                           r1_penalty)
from ...models.stylegan2_disc import StyleGAN2Discriminator
from ..distributed import unwrap
from ..recipe import Recipe, StepContext

__all__ = ["TextureFolder", "TextureGANRecipe", "RECIPE", "FEATURE_POOL"]

FEATURE_POOL = 8   # evaluation features: images average-pooled to 8 x 8


class TextureFolder(torch.utils.data.Dataset):
    """Every image under ``root`` (any depth, sorted paths), as (C, R, R) float32 in [-1, 1] and label 0:
    resized (shorter side to ``resolution``, Lanczos), centre-cropped, RGB (``channels`` 3) or grey (1);
    ``mirror``: a random horizontal flip (torch's RNG)."""

    def __init__(self, root, resolution: int, channels: int = 3, mirror: bool = False,
                 bad_images: str = "error",
                 workers: int = 4):
        from ...data.image_folder import IMG_EXTENSIONS, drop_undecodable

        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"TextureFolder: folder {str(self.root)!r} does not exist")
        if channels not in (1, 3):
            raise ValueError(f"TextureFolder: channels must be 1 or 3, got {channels}")
        paths = sorted(str(p) for p in self.root.rglob("*")
                       if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
        if not paths:
            raise FileNotFoundError(f"TextureFolder: no images ({', '.join(IMG_EXTENSIONS)}) under "
                                    f"{str(self.root)!r}")
        kept, self.skipped = drop_undecodable(paths, "TextureFolder", self.root, bad_images, workers)
        self.paths = [paths[i] for i in kept]
        self.resolution, self.channels, self.mirror = int(resolution), channels, bool(mirror)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from PIL import Image

        with Image.open(self.paths[index]) as im:
            im = im.convert("RGB" if self.channels == 3 else "L")
            r = self.resolution
            s = r / min(im.size)
            w, h = max(r, round(im.size[0] * s)), max(r, round(im.size[1] * s))
            if (w, h) != im.size:
                im = im.resize((w, h), Image.LANCZOS)
            left, top = (w - r) // 2, (h - r) // 2
            a = np.asarray(im.crop((left, top, left + r, top + r)), dtype=np.float32)
        x = torch.from_numpy(a.reshape(r, r, -1).transpose(2, 0, 1).copy()) / 127.5 - 1
        if self.mirror and torch.rand(()) < 0.5:
            x = x.flip(2)
        return x, 0


def pooled_features(img: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, C * 64) float64: the image average-pooled to 8 x 8."""
    return torch.nn.functional.adaptive_avg_pool2d(img.double(), FEATURE_POOL).flatten(1)


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """||mu1 - mu2||^2 + Tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2)) (scipy's sqrtm, real part)."""
    from scipy import linalg

    mu1, mu2, cov1, cov2 = (np.asarray(t, dtype=np.float64) for t in (mu1, mu2, cov1, cov2))
    covmean = linalg.sqrtm(cov1 @ cov2)
    covmean = np.real(covmean)
    return float(np.square(mu1 - mu2).sum() + np.trace(cov1 + cov2 - 2 * covmean))


def _make_metric(channels: int):
    from torchmetrics import Metric

    class TextureStats(Metric):
        """Sums of the real and generated images' pooled features (first and second moments), per-channel
        pixel moments and the discriminator's logits; ``compute`` gives the evaluation's metrics."""

        full_state_update = False

        def __init__(self):
            super().__init__()
            d = channels * FEATURE_POOL ** 2
            for side in ("real", "fake"):
                self.add_state(f"{side}_n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
                self.add_state(f"{side}_sum", torch.zeros(d, dtype=torch.float64), dist_reduce_fx="sum")
                self.add_state(f"{side}_outer", torch.zeros(d, d, dtype=torch.float64), dist_reduce_fx="sum")
                self.add_state(f"{side}_px", torch.zeros(2, channels, dtype=torch.float64),
                               dist_reduce_fx="sum")
                self.add_state(f"{side}_pxn", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
                self.add_state(f"{side}_logit", torch.zeros(2, dtype=torch.float64), dist_reduce_fx="sum")
            self.batches = 0

        def reset(self):
            super().reset()
            self.batches = 0

        def update(self, real: Tensor, fake: Tensor, real_logits: Optional[Tensor] = None,
                   fake_logits: Optional[Tensor] = None) -> None:
            for side, img, logits in (("real", real, real_logits), ("fake", fake, fake_logits)):
                f = pooled_features(img)
                setattr(self, f"{side}_n", getattr(self, f"{side}_n") + len(f))
                setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + f.sum(0))
                setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + f.T @ f)
                x = img.double().transpose(0, 1).flatten(1)
                px = torch.stack([x.sum(1), x.square().sum(1)])
                setattr(self, f"{side}_px", getattr(self, f"{side}_px") + px)
                setattr(self, f"{side}_pxn", getattr(self, f"{side}_pxn") + x.shape[1])
                if logits is not None:
                    count = torch.tensor(float(len(logits)), dtype=torch.float64, device=logits.device)
                    lg = torch.stack([logits.double().sum(), count])
                    setattr(self, f"{side}_logit", getattr(self, f"{side}_logit") + lg)
            self.batches += 1

        def compute(self) -> dict[str, Any]:
            out = {}
            moments = {}
            for side in ("real", "fake"):
                n = getattr(self, f"{side}_n").clamp_min(2)
                mu = getattr(self, f"{side}_sum") / n
                cov = (getattr(self, f"{side}_outer") - n * torch.outer(mu, mu)) / (n - 1)
                px = getattr(self, f"{side}_px") / getattr(self, f"{side}_pxn").clamp_min(1)
                std = (px[1] - px[0] ** 2).clamp_min(0).sqrt()
                moments[side] = (mu.cpu().numpy(), cov.cpu().numpy(), px[0], std)
            (mr, cr, pmr, psr), (mf, cf, pmf, psf) = moments["real"], moments["fake"]
            out["fd_pixel"] = frechet_distance(mr, cr, mf, cf)
            out["mean_gap"] = float((pmr - pmf).abs().max())
            out["std_gap"] = float((psr - psf).abs().max())
            rl, fl = self.real_logit, self.fake_logit
            if float(rl[1]) > 0 and float(fl[1]) > 0:
                out["d_gap"] = float(rl[0] / rl[1] - fl[0] / fl[1])
            return out

    return TextureStats()


def _world() -> tuple[bool, int]:
    dist = torch.distributed.is_available() and torch.distributed.is_initialized()
    return dist, (torch.distributed.get_world_size() if dist else 1)


def _own_step(loss: Tensor, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """One update of the discriminator: gradients of ``loss`` for its parameters (those it reaches), averaged
    over the processes."""
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)  # R1 does not reach the last bias
    params, grads = zip(*[(p, g) for p, g in zip(params, grads) if g is not None])  # Adam skips the rest
    dist, world = _world()
    if dist and world > 1:
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= world
        grads = torch.split(flat, [g.numel() for g in grads])
    for p, g in zip(params, grads):
        p.grad = g.reshape(p.shape)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


# recipe config key -> the generator's keyword
_ARCH_KEYS = dict(resolution="img_resolution", img_channels="img_channels", z_dim="z_dim", w_dim="w_dim",
                  mapping_layers="mapping_layers", channel_base="channel_base", channel_max="channel_max",
                  conv_clamp="conv_clamp")


class TextureGANRecipe(Recipe):
    name = "texture_gan"
    main_metric = "fd_pixel"
    main_mode = "min"
    defaults = dict(
        model="stylegan2_texture",
        resolution=256,                 # texture size (the generator's img_resolution)
        img_channels=3,
        z_dim=512,
        w_dim=512,
        mapping_layers=8,
        channel_base=16384,             # paper256: 0.5 * 32768
        channel_max=512,
        batch_size=64,
        epochs=100,
        opt="adam",
        lr=0.0025,                      # generator and discriminator
        opt_betas=(0.0, 0.99),
        opt_eps=1e-8,
        weight_decay=0.0,
        sched="none",                   # constant lr, as the official loop
        ema_kimg=20.0,                  # G EMA half-life in thousands of images (ema_decay None: from this)
        r1_gamma=1.0,
        d_reg_interval=16,
        pl_weight=2.0,                  # 0 disables the path-length penalty
        g_reg_interval=4,
        pl_batch_shrink=2,
        pl_decay=0.01,
        style_mixing_prob=0.9,
        mbstd_group_size=8,
        d_architecture="resnet",
        conv_clamp=256,
        mirror=False,                   # random horizontal flips of the training textures
        workers=4,
        drop_last=True,                 # minibatch std needs the batch divisible by its group
    )

    def __init__(self, cfg, for_eval: bool = False):
        super().__init__(cfg, for_eval)
        # the generator's architecture lives in model_args (recorded in the checkpoints, so pvf eval / pvf
        # export rebuild it); model_args win over the config keys, which then mirror them for the
        # discriminator and the data
        arch = {m: cfg[k] for k, m in _ARCH_KEYS.items()}
        cfg.model_args = {**arch, **dict(cfg.model_args)}
        for k, m in _ARCH_KEYS.items():
            cfg[k] = cfg.model_args[m]
        for key in ("resolution", "batch_size", "d_reg_interval", "g_reg_interval", "pl_batch_shrink"):
            v = cfg[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"texture_gan: {key} must be a positive int, got {v!r}")
        for key in ("r1_gamma", "pl_weight", "style_mixing_prob"):
            if not isinstance(cfg[key], (int, float)) or cfg[key] < 0:
                raise ValueError(f"texture_gan: {key} must be a number >= 0, got {cfg[key]!r}")
        group = cfg.mbstd_group_size
        if group is not None and cfg.batch_size % min(group, cfg.batch_size):
            raise ValueError(f"texture_gan: batch_size {cfg.batch_size} must be divisible by "
                             f"mbstd_group_size "
                             f"{group} (minibatch standard deviation groups)")
        if cfg.ema_decay is None and cfg.ema_kimg:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            cfg.ema_decay = ema_beta(cfg.batch_size * world, cfg.ema_kimg)
        self.D: Optional[StyleGAN2Discriminator] = None
        self.d_opt = None
        self.d_steps = 0
        self.g_batches = 0
        self.pl_mean = torch.zeros(())

    # --- data ---------------------------------------------------------------------------------------
    def build_datasets(self, data_dir: str):
        c = self.cfg
        root = Path(data_dir)
        common = dict(resolution=c.resolution, channels=c.img_channels, workers=max(int(c.workers), 1))
        train_dir, val_dir = (root / "train", root / "val") if (root / "train").is_dir() else (root, root)
        train = None if self.for_eval else TextureFolder(train_dir, mirror=c.mirror, **common)
        val = TextureFolder(val_dir, **common) if val_dir.is_dir() else None
        return train, val

    # --- model and optimisation ---------------------------------------------------------------------
    def build_model(self, num_classes: Optional[int]) -> nn.Module:
        from ...models import create_model

        return create_model(self.cfg.model, **self.cfg.model_args)

    def param_groups(self, model: nn.Module) -> list[dict]:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": 0.0}]

    @contextmanager
    def _fixed_seed(self, offset: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.cfg.seed) + offset)
            yield

    def build_discriminator(self, device) -> StyleGAN2Discriminator:
        c = self.cfg
        with self._fixed_seed(1):
            return StyleGAN2Discriminator(img_resolution=c.resolution, img_channels=c.img_channels,
                                          architecture=c.d_architecture, channel_base=c.channel_base,
                                          channel_max=c.channel_max, conv_clamp=c.conv_clamp,
                                          mbstd_group_size=c.mbstd_group_size).to(device)

    def on_train_start(self, model: nn.Module, ctx: StepContext) -> None:
        c = self.cfg
        self.D = self.build_discriminator(ctx.device)
        ratio = c.d_reg_interval / (c.d_reg_interval + 1) if c.r1_gamma > 0 else 1.0
        betas = tuple(b ** ratio for b in c.opt_betas)
        self.d_opt = torch.optim.Adam(self.D.parameters(), lr=c.lr * ratio, betas=betas, eps=c.opt_eps)
        self.pl_mean = torch.zeros((), device=ctx.device)

    def state_dict(self) -> dict[str, Any]:
        return {"discriminator": self.D.state_dict(), "discriminator_opt": self.d_opt.state_dict(),
                "d_steps": self.d_steps, "g_batches": self.g_batches, "pl_mean": self.pl_mean}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        keys = {"discriminator", "discriminator_opt", "d_steps", "g_batches", "pl_mean"}
        missing = keys - set(state)
        if missing:
            raise ValueError(f"texture_gan resume: the training state lacks {sorted(missing)}")
        self.D.load_state_dict(state["discriminator"])
        self.d_opt.load_state_dict(state["discriminator_opt"])
        self.d_steps, self.g_batches = int(state["d_steps"]), int(state["g_batches"])
        self.pl_mean = state["pl_mean"].to(self.pl_mean.device)

    # --- steps --------------------------------------------------------------------------------------
    def _check_batch(self, real: Tensor) -> None:
        c = self.cfg
        shape = (c.img_channels, c.resolution, c.resolution)
        if real.dim() != 4 or tuple(real.shape[1:]) != shape:
            raise ValueError(f"texture_gan: training images must be (N, {', '.join(map(str, shape))}), got "
                             f"{tuple(real.shape)}")
        if not torch.isfinite(real).all():
            raise ValueError("texture_gan: the training batch contains NaN or Inf")

    def _fake(self, g, n: int, device, return_ws: bool = False):
        """Generated images of n fresh latents, style mixing with probability style_mixing_prob."""
        net = unwrap(g)
        z = torch.randn(n, net.z_dim, device=device)
        mix = {}
        if self.cfg.style_mixing_prob > 0 and net.num_ws > 1:
            cutoff = int(torch.randint(1, net.num_ws, ()))
            if float(torch.rand(())) >= self.cfg.style_mixing_prob:
                cutoff = net.num_ws
            mix = dict(mix_z=torch.randn_like(z), mix_cutoff=cutoff)
        return g(z, **mix, return_ws=return_ws)

    def train_loss(self, model: nn.Module, batch, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        c = self.cfg
        real = batch[0].float()
        self._check_batch(real)
        n = len(real)
        net = unwrap(model)
        logs: dict[str, float] = {}

        # 1. discriminator: non-saturating loss on reals and fakes, then the lazy R1 step
        with torch.no_grad():
            fake = self._fake(net, n, real.device)
        real_logits = self.D(real)
        fake_logits = self.D(fake)
        loss_d = d_nonsaturating_loss(real_logits, fake_logits)
        _own_step(loss_d, self.D, self.d_opt)
        logs.update(loss_d=loss_d.item(), d_real=real_logits.mean().item(), d_fake=fake_logits.mean().item())
        if c.r1_gamma > 0 and self.d_steps % c.d_reg_interval == 0:
            x = real.detach().requires_grad_(True)
            r1 = r1_penalty(self.D(x), x)
            _own_step((r1 * (c.r1_gamma / 2)).mean() * c.d_reg_interval, self.D, self.d_opt)
            logs["r1"] = r1.mean().item()
        self.d_steps += 1

        # 2. generator (the engine does backward and the step); the discriminator frozen
        self.D.requires_grad_(False)
        try:
            pl_due = c.pl_weight > 0 and self.g_batches % c.g_reg_interval == 0
            first = (model.no_sync() if pl_due and isinstance(model, nn.parallel.DistributedDataParallel)
                     else nullcontext())
            with first:
                loss_g = g_nonsaturating_loss(self.D(self._fake(model, n, real.device)))
            loss = loss_g
            if pl_due:
                img, ws = self._fake(model, max(n // c.pl_batch_shrink, 1), real.device, return_ws=True)
                penalty, self.pl_mean = path_length_penalty(img, ws, self.pl_mean, c.pl_decay)
                loss = loss + penalty.mean() * (c.pl_weight * c.g_reg_interval) + img[:, 0, 0, 0].sum() * 0
                logs["pl_penalty"] = penalty.mean().item()
        finally:
            self.D.requires_grad_(True)
        self.g_batches += 1
        logs["loss_g"] = loss_g.item()
        return loss, logs

    # --- evaluation ---------------------------------------------------------------------------------
    def build_metrics(self, num_classes: Optional[int]):
        return _make_metric(int(self.cfg.img_channels))

    def eval_update(self, model: nn.Module, batch, metrics, ctx: StepContext) -> Tensor:
        real = batch[0].float()
        g = unwrap(model)
        gen = torch.Generator().manual_seed(int(self.cfg.seed) * 100003 + ctx.rank * 7919 + metrics.batches)
        z = torch.randn(len(real), g.z_dim, generator=gen).to(real.device)
        with torch.no_grad():
            fake = g(z, noise_mode="const")
            real_logits = fake_logits = None
            loss = torch.zeros((), device=real.device)
            if self.D is not None:
                group = self.cfg.mbstd_group_size or len(real)   # a last batch of any size
                real_logits = torch.cat([self.D(x) for x in real.split(group)]).flatten()
                fake_logits = torch.cat([self.D(x) for x in fake.split(group)]).flatten()
                loss = g_nonsaturating_loss(fake_logits)
        metrics.update(real, fake, real_logits, fake_logits)
        return loss


RECIPE = TextureGANRecipe
