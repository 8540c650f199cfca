"""PointCAT cases (``train.recipes.pointcat``, ``attacks.point_defense``): one contrastive adversarial
training step of PointNet++ SSG (4 noise-generator updates, the classifier's SupCon + centralising loss,
backward, Adam step, the 10-step prototype update over all classes) with the library's point ops (farthest
point sampling, ball query, grouping) beside the same step on the plain-PyTorch reference backend; and the SOR
defence (kNN on ``ops.knn_points``) on a batch of clouds, ours vs reference.

Quick: 512 points, batch 2, 4 classes (shapes only); full: 1024 points, 40 classes, batch 64 on GPU / 8 on
CPU.

Measured (2026-12-05, the 2-core development CPU shared by five processes, load average 6-12, one thread,
quick shapes, medians of 3): CAT step 10.6 s with the library's point ops vs 12.5 s on the reference backend
(1.17x; the step is dominated by PointNet++'s MLPs and the generator's 8.4M-weight decoder layer, not by the
point ops); SOR on 8 clouds of 512 points 4.1 ms vs 271 ms (67x: ``knn_points`` instead of the reference's
full distance matrix and sort). The full-size CPU step (40 prototypes x 10 search iterations) takes minutes;
not run here, no GPU.
"""
from __future__ import annotations

from typing import Callable

import torch

from pyvision_fast._backend import use_backend
from pyvision_fast.attacks.point_defense import sor
from pyvision_fast.models import create_model
from pyvision_fast.train.recipe import ENGINE_DEFAULTS, Config, StepContext
from pyvision_fast.train.recipes.pointcat import PointCATRecipe

from .harness import Case, Impl


def _cat_step(device: str, num_points: int, num_classes: int, batch: int, backend) -> Callable[[], None]:
    torch.manual_seed(0)
    cfg = Config({**ENGINE_DEFAULTS, **PointCATRecipe.defaults})
    cfg.update(num_points=num_points, num_classes=num_classes, peak_init_iters=1, lr_restart_epochs=0,
               workers=0)
    recipe = PointCATRecipe(cfg)
    model = create_model("pointnet2_ssg", num_classes=num_classes).to(device)
    opt = torch.optim.Adam(recipe.param_groups(model), lr=1e-3)
    ctx = StepContext(cfg=cfg, device=torch.device(device))
    with use_backend(backend):
        recipe.on_train_start(model, ctx)
    model.train()
    x = torch.rand(batch, num_points, 3, device=device) * 2 - 1
    y = torch.arange(batch, device=device) % num_classes

    def step():
        with use_backend(backend):
            loss, _ = recipe.train_loss(model, (x, y), ctx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            recipe._update_peaks(model)
    return step


def _sor(x: torch.Tensor, backend) -> Callable[[], torch.Tensor]:
    def run():
        with use_backend(backend):
            return sor(x, generator=torch.Generator().manual_seed(0))
    return run


def cases(device: str, quick: bool) -> list[Case]:
    gpu = device == "cuda"
    n, classes, batch = (512, 4, 2) if quick else (1024, 40, 64 if gpu else 8)
    impls = [Impl("CAT step, library point ops", _cat_step(device, n, classes, batch, None), "ours"),
             Impl("CAT step, reference backend", _cat_step(device, n, classes, batch, "reference"),
                  "reference")]
    out = [Case("models", f"PointCAT pointnet2_ssg {n} train step", {"batch": batch, "points": n,
                                                                    "classes": classes},
                impls, samples=batch, measure_memory=True,
                note="4 generator updates + classifier step + 10-step prototype update of all classes")]
    x = torch.rand(batch * 4, n, 3, device=device) * 2 - 1
    out.append(Case("models", f"PointCAT SOR defence {n}", {"batch": batch * 4, "points": n},
                    [Impl("SOR (ops.knn_points)", _sor(x, None), "ours"),
                     Impl("SOR (reference kNN)", _sor(x, "reference"), "reference")],
                    samples=batch * 4))
    return out
