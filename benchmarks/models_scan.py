"""SCAN-CNN cases (``models.scan``): inference of the fused SCAN-IR50 (what ``pvf export`` deploys) beside the
plain insightface IR-50 (goal: the same cost, ratio ~1.0; 0.95 is required to leave room for timing noise) and
the unfused SCAN-IR50 (kernels rebuilt from their scale-space basis at every call); and one ArcFace training
step (forward, ArcFace margin head over 1000 identities, cross-entropy, backward, SGD step) of SCAN-IR50
beside the plain IR-50, whose ratio is SCAN's training overhead. 112x112 inputs; samples/s and peak memory.

Measured on the 2-core development CPU (2026-12-05, load average ~13, so wall times were noise: the harness's
medians put the fused SCAN 2.2x *ahead* of the identical plain network): peak memory 392 MB for all three at
inference batch 32, 1136 MB (SCAN) vs 1003 MB (plain) for the training step at batch 16. Process CPU time on
one thread, batch 8, medians of 5 interleaved runs: inference fused SCAN 774 ms, plain 794 ms (ratio 1.03),
unfused SCAN 843 ms; training step SCAN 3172 ms, plain 3084 ms (+3%)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from pyvision_fast.losses.margin import MarginHead
from pyvision_fast.models import create_model

from .harness import Case, Impl

PLAIN = "plain IR-50 (insightface iresnet50)"


def _inference(model: nn.Module, x: Tensor) -> Callable[[], Tensor]:
    def run():
        with torch.no_grad():
            return model(x)
    return run


def _train_step(model: nn.Module, head: MarginHead, x: Tensor, y: Tensor) -> Callable[[], None]:
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.SGD([p for p in params if p.requires_grad], lr=0.1, momentum=0.9, weight_decay=5e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(head(model(x), y), y).backward()
        opt.step()
    return step


def _forward_flops(model: nn.Module, x: Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def cases(device: str, quick: bool) -> list[Case]:
    """Quick: IR-18 at 32x32 with widths (8, 16, 16, 32), batch 2 (shapes only); full: IR-50 at 112x112,
    inference batch 32 on CPU / 256 on GPU, training batch 16 on CPU / 128 on GPU (one GPU's share of
    ArcFace's 512)."""
    gpu = device == "cuda"
    if quick:
        names, kwargs, img = ("scan_ir18", "iresnet18"), dict(widths=(8, 16, 16, 32), img_size=32), 32
        infer_batch = train_batch = 2
    else:
        names, kwargs, img = ("scan_ir50", "iresnet50"), {}, 112
        infer_batch, train_batch = (256, 128) if gpu else (32, 16)
    depth = names[0][-2:]
    torch.manual_seed(0)
    scan = create_model(names[0], **kwargs)
    plain = create_model(names[1], **kwargs)
    flops = _forward_flops(plain.eval(), torch.randn(1, 3, img, img))
    scan, plain = scan.to(device), plain.to(device)
    out = []

    x = torch.randn(infer_batch, 3, img, img, device=device)
    fused = scan.eval().fuse()
    impls = [Impl(f"SCAN-IR{depth} fused (plain convs)", _inference(fused, x), "ours"),
             Impl(PLAIN if depth == "50" else "plain IR-18", _inference(plain.eval(), x), "peer"),
             Impl(f"SCAN-IR{depth} unfused", _inference(scan.eval(), x), "reference")]
    out.append(Case("models", f"SCAN-IR{depth} {img} inference", {"batch": infer_batch, "img": img}, impls,
                    flops=flops * infer_batch, samples=infer_batch, measure_memory=True,
                    goal=(impls[1].name, 0.95),
                    note="fused SCAN = the plain network's structure and FLOPs: the ratio should be ~1.0"))

    x = torch.randn(train_batch, 3, img, img, device=device)
    y = torch.randint(0, 1000, (train_batch,), device=device)
    emb = scan.num_features
    head_s = MarginHead(emb, 1000).to(device)
    head_p = MarginHead(emb, 1000).to(device)
    head_p.load_state_dict(head_s.state_dict())
    impls = [Impl(f"SCAN-IR{depth} train step", _train_step(scan.train(), head_s, x, y), "ours"),
             Impl(f"{PLAIN if depth == '50' else 'plain IR-18'} train step",
                  _train_step(plain.train(), head_p, x, y), "peer")]
    out.append(Case("models", f"SCAN-IR{depth} {img} ArcFace train step", {"batch": train_batch, "img": img},
                    impls, flops=3 * flops * train_batch, samples=train_batch, measure_memory=True,
                    note="train step = forward + ArcFace head (1000 ids) + CE + backward + SGD; 'x ours' of "
                         "the plain network is SCAN's training overhead"))
    return out
