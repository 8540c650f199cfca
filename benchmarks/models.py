"""Model cases: a ViT-S/16 training step (forward, backward, AdamW step) and inference at 224x224, the
library's ViT (FusedAttention: our fused kernels on GPU, torch's fused attention on CPU) beside timm's own
``vit_small_patch16_224`` with the same weights, batch and dtype. Reported with samples/s.

The ``vector_quantize`` family holds the DAT quantiser case (B=128, 32x32 codes, 16384 x 4 codebook).

Each paper's model cases live in their own ``benchmarks/models_<paper>.py`` (a ``cases(device, quick)`` like this
one); the ``models`` family runs the ViT cases here and then every such module, in name order."""
from __future__ import annotations

import importlib.util
from typing import Callable

import torch
import torch.nn.functional as F

from pyvision_fast.models import create_model

from .harness import Case, Impl


def _vit_macs(img: int, patch: int, dim: int, depth: int) -> float:
    """Multiply-accumulates of one ViT forward: patch projection, then per block qkv + proj + MLP (12 N C^2)
    and the two attention products (2 N^2 C)."""
    n = (img // patch) ** 2 + 1
    return (n - 1) * 3 * patch * patch * dim + depth * (12 * n * dim * dim + 2 * n * n * dim)


def _train_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def _inference(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    def run():
        with torch.no_grad():
            return model(x)
    return run


def cases(device: str, quick: bool) -> list[Case]:
    out = _vit_cases(device, quick)
    for module in _paper_modules():
        out.extend(module.cases(device, quick))
    return out


def _paper_modules() -> list:
    """The ``benchmarks/models_*.py`` modules, imported, in name order."""
    import importlib
    import pkgutil
    from pathlib import Path

    names = sorted(i.name for i in pkgutil.iter_modules([str(Path(__file__).parent)]) if i.name.startswith("models_"))
    return [importlib.import_module(f"{__package__}.{name}") for name in names]


def _vit_cases(device: str, quick: bool) -> list[Case]:
    if importlib.util.find_spec("timm") is None:
        print("models: timm is not installed; the ViT cases need it as the peer")
        return []
    import timm

    gpu = device == "cuda"
    img = 64 if quick else 224
    train_batch = 32 if not quick else 2
    infer_batch = (256 if gpu else 32) if not quick else 2
    dtype = torch.bfloat16 if gpu else torch.float32
    torch.manual_seed(0)
    macs = _vit_macs(img, 16, 384, 12)
    out = []
    for mode, batch in (("train step", train_batch), ("inference", infer_batch)):
        ours = create_model("vit_small_patch16_224", img_size=img).to(device)
        peer = timm.create_model("vit_small_patch16_224", img_size=img).to(device)
        peer.load_state_dict(ours.state_dict())
        x = torch.randn(batch, 3, img, img, device=device)
        y = torch.randint(0, 1000, (batch,), device=device)
        if mode == "train step":
            # bf16 autocast on GPU as a mixed-precision training run; float32 on CPU
            def wrap(fn):
                if not gpu:
                    return fn

                def run():
                    with torch.autocast("cuda", dtype=dtype):
                        fn()
                return run
            impls = [Impl("pvf ViT-S/16 (FusedAttention)", wrap(_train_step(ours.train(), x, y)), "ours"),
                     Impl("timm vit_small_patch16_224", wrap(_train_step(peer.train(), x, y)), "peer")]
            flops = 3 * 2 * macs * batch
        else:
            ours, peer, x = ours.eval().to(dtype), peer.eval().to(dtype), x.to(dtype)
            impls = [Impl("pvf ViT-S/16 (FusedAttention)", _inference(ours, x), "ours"),
                     Impl("timm vit_small_patch16_224", _inference(peer, x), "peer")]
            flops = 2 * macs * batch
        out.append(Case("models", f"ViT-S/16 {img} {mode}", {"batch": batch, "img": img, "dtype": str(dtype)[6:]},
                        impls, flops=flops, samples=batch,
                        # on a CPU both run the same aten kernels (torch's fused CPU attention): parity, no goal
                        goal=("timm vit_small_patch16_224", 1.0) if gpu else None,
                        note="train step = forward + cross-entropy + backward + AdamW step" if mode == "train step"
                        else ""))
    return out
