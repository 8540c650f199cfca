"""A small 360-degree model on equirectangular frames with pyvision_fast's sphere layers.

    python examples/sphere_360_model.py                  # a 256 x 512 frame
    python examples/sphere_360_model.py --small          # a 64 x 128 frame (seconds on a CPU)

An equirectangular (ERP) frame maps longitude to columns and latitude to rows, so a whole panorama is twice as
wide as it is high (2:1). A plain 3 x 3 convolution on it sees a stretched neighbourhood near the poles and
stops at the left and right edges, which are the same meridian. ``SphereConv2d`` lays its k x k kernel on the
plane tangent to the sphere at each output location, wrapping across that seam and over the poles;
``SpherePatchEmbed`` does the same for a ViT's patch embedding (timm's ``PatchEmbed`` keys).

The model has a dense branch (two stride-2 ``SphereConv2d`` and a 1 x 1 conv: a coarse saliency map) and a
token branch (``SpherePatchEmbed`` with ``layout="natural"``, a transformer encoder layer, mean pooling: scene
logits). The input is scikit-image's astronaut photograph resized to 2:1 (a stand-in for a real panorama).

Turning the camera about the vertical axis rolls an ERP frame's columns. Both layers follow such a turn: rolling
the input by a multiple of the model's stride rolls the saliency map by the same angle and leaves the pooled
logits unchanged, also across the seam. The script prints the output shapes and the largest deviation from
that, ``roll equivariance max diff: ...``, which is float rounding only.
"""
from __future__ import annotations

import argparse
import os

import torch
from torch import Tensor, nn

from pyvision_fast.nn import SphereConv2d, SpherePatchEmbed


class Sphere360Net(nn.Module):
    """forward(x (B, 3, H, 2H)) -> (saliency logits (B, 1, H/4, W/4), class logits (B, num_classes))."""

    def __init__(self, height: int, num_classes: int = 10, width: int = 32, patch_size: int = 16):
        super().__init__()
        self.dense = nn.Sequential(SphereConv2d(3, width, 3, stride=2), nn.ReLU(),
                                   SphereConv2d(width, width, 3, stride=2), nn.ReLU(),
                                   nn.Conv2d(width, 1, 1))
        self.embed = SpherePatchEmbed((height, 2 * height), patch_size, 3, 2 * width, layout="natural")
        self.encoder = nn.TransformerEncoderLayer(2 * width, nhead=4, dim_feedforward=4 * width, dropout=0.0,
                                                  batch_first=True)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        tokens = self.encoder(self.embed(x))                     # (B, N, 2 * width), no position embedding
        return self.dense(x), self.head(tokens.mean(dim=1))


def astronaut_frame(height: int) -> Tensor:
    """scikit-image's astronaut as a (1, 3, height, 2 * height) float tensor in [0, 1]."""
    from skimage import data, transform

    image = transform.resize(data.astronaut(), (height, 2 * height), anti_aliasing=True)  # float64 in [0, 1]
    return torch.from_numpy(image).permute(2, 0, 1)[None].float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", default=os.environ.get("PVF_EXAMPLES_SMALL") == "1",
                        help="a 64 x 128 frame, for a quick check (also PVF_EXAMPLES_SMALL=1)")
    args = parser.parse_args()
    torch.manual_seed(0)
    height = 64 if args.small else 256
    device = "cuda" if torch.cuda.is_available() else "cpu"

    model = Sphere360Net(height).eval().to(device)
    x = astronaut_frame(height).to(device)
    with torch.no_grad():
        saliency, logits = model(x)
        # turn the camera by 45 degrees: roll the frame by an eighth of its width (a multiple of the stride 4
        # and of the patch size 16)
        shift = 2 * height // 8
        saliency_turned, logits_turned = model(torch.roll(x, shifts=shift, dims=3))
    print(f"input {tuple(x.shape)} -> saliency {tuple(saliency.shape)}, logits {tuple(logits.shape)}")
    diff_map = (saliency_turned - torch.roll(saliency, shifts=shift // 4, dims=3)).abs().max().item()
    diff_logits = (logits_turned - logits).abs().max().item()
    print(f"roll equivariance max diff: saliency {diff_map:.3g}, logits {diff_logits:.3g}")


if __name__ == "__main__":
    main()
