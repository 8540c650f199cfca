"""Swap the attention blocks of a timm ViT for pyvision_fast's fused attention and check the outputs match.

    python examples/timm_vit_fused_attention.py            # ViT-S/16 at 224 x 224, batch 8
    python examples/timm_vit_fused_attention.py --small    # a 2-block ViT at 32 x 32 (seconds on a CPU)

``pyvision_fast.nn.patch_timm(model)`` replaces, in place, every plain ``timm`` ``Attention`` block with
``FusedAttention`` carrying the same weights (same state_dict keys), so a checkpoint saved before or after the
patch loads into either. On a GPU the fused blocks run pyvision_fast's Triton kernels or PyTorch's SDPA, whichever
measured faster for the shape; on a CPU they run PyTorch's fused SDPA. The numbers are the same model's.

Prints the number of swapped blocks and the largest absolute difference between the patched and the unpatched
model's logits, then ``outputs equal: True`` when they agree within float32 rounding.
"""
from __future__ import annotations

import argparse
import copy
import os

import timm
import torch

from pyvision_fast.nn import FusedAttention, patch_timm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", default=os.environ.get("PVF_EXAMPLES_SMALL") == "1",
                        help="a tiny ViT, for a quick check (also PVF_EXAMPLES_SMALL=1)")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    if args.small:
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                                  num_classes=10)
        x = torch.randn(2, 3, 32, 32)
    else:
        # pretrained=True would download timm's weights; random weights show the same equivalence offline
        model = timm.create_model("vit_small_patch16_224", pretrained=False)
        x = torch.randn(8, 3, 224, 224)
    model = model.eval().to(device)
    x = x.to(device)

    patched = copy.deepcopy(model)
    swapped = patch_timm(patched)
    assert all(not isinstance(m, FusedAttention) for m in model.modules())  # the original is untouched
    print(f"swapped attention blocks: {swapped}")

    with torch.no_grad():
        expected = model(x)
        actual = patched(x)
    diff = (actual - expected).abs().max().item()
    print(f"logits {tuple(actual.shape)}, max |patched - timm| = {diff:.3g}")
    # the patched model has timm's state_dict keys: weights move between the two without conversion
    patched.load_state_dict(model.state_dict())
    print(f"outputs equal: {torch.allclose(actual, expected, rtol=1e-4, atol=1e-4)}")


if __name__ == "__main__":
    main()
