"""A PointNet++-style point-cloud classifier built from pyvision_fast's point-cloud ops and layers, trained on
point clouds of simple shapes that the script generates.

    python examples/pointnet2_classifier.py             # 1024 points per cloud, 300 steps
    python examples/pointnet2_classifier.py --small     # 128 points, 60 steps (seconds on a CPU)

The first set-abstraction level is written out from the ops, the way one would add a custom grouping to an
existing model: ``ops.sample_farthest_points`` picks the centres, ``ops.ball_query(..., fill="first")`` finds up
to ``nsample`` neighbours of each centre and fills the missing slots with the first neighbour found (the centre
itself), as PointNet++ groups, and ``ops.grouping_operation`` gathers the neighbours' coordinates and features.
The second level and the global level are ``pyvision_fast.nn.PointNetSetAbstraction``.

Data: spheres, cubes, cylinders and cones (surface points, random size, rotation about the vertical axis and
noise), four classes.
Prints the training loss as it goes and, at the end, ``test accuracy: A`` on clouds not seen in training (chance
is 0.25).
"""
from __future__ import annotations

import argparse
import math
import os

import torch
from torch import Tensor, nn

from pyvision_fast import ops
from pyvision_fast.nn import PointNetSetAbstraction

CLASSES = ("sphere", "cube", "cylinder", "cone")


# --- data -----------------------------------------------------------------------------------------------------

def _random_rotation(g: torch.Generator) -> Tensor:
    """A rotation about the z axis (the shapes stay upright, as ModelNet's aligned models do)."""
    a = 2 * math.pi * torch.rand(1, generator=g).item()
    return torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])


def _surface(shape: int, n: int, g: torch.Generator) -> Tensor:
    """n points on the surface of shape ``CLASSES[shape]``, roughly within the unit ball."""
    u = torch.rand(n, generator=g)
    v = torch.rand(n, generator=g)
    if shape == 0:  # sphere
        d = torch.randn(n, 3, generator=g)
        return d / d.norm(dim=1, keepdim=True)
    if shape == 1:  # cube: a random face, a uniform point on it
        p = torch.rand(n, 3, generator=g) * 2 - 1
        axis = torch.randint(0, 3, (n,), generator=g)
        sign = torch.randint(0, 2, (n,), generator=g).float() * 2 - 1
        p[torch.arange(n), axis] = sign
        return p / math.sqrt(3)
    angle = 2 * math.pi * u
    if shape == 2:  # cylinder side, radius 0.6, height 1.6
        return torch.stack([0.6 * angle.cos(), 0.6 * angle.sin(), 1.6 * v - 0.8], dim=1)
    r = v.sqrt()  # cone side: apex at z = 0.8, base radius 0.7 at z = -0.8
    return torch.stack([0.7 * r * angle.cos(), 0.7 * r * angle.sin(), 0.8 - 1.6 * r], dim=1)


def make_dataset(count: int, points: int, seed: int) -> tuple[Tensor, Tensor]:
    """(clouds (count, points, 3), labels (count,)) with the classes in turn."""
    g = torch.Generator().manual_seed(seed)
    clouds, labels = [], []
    for i in range(count):
        label = i % len(CLASSES)
        p = _surface(label, points, g) @ _random_rotation(g).T
        p = p * (0.7 + 0.3 * torch.rand(1, generator=g)) + 0.01 * torch.randn(points, 3, generator=g)
        clouds.append(p)
        labels.append(label)
    return torch.stack(clouds), torch.tensor(labels)


# --- model ----------------------------------------------------------------------------------------------------

class BallGroupingSA(nn.Module):
    """A set-abstraction level written from the ops: FPS centres, ball-query groups, shared MLP, max-pool."""

    def __init__(self, npoint: int, radius: float, nsample: int, in_channels: int, out_channels: int):
        super().__init__()
        self.npoint, self.radius, self.nsample = npoint, radius, nsample
        self.mlp = nn.Sequential(nn.Conv2d(in_channels + 3, out_channels, 1, bias=False),
                                 nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
                                 nn.Conv2d(out_channels, out_channels, 1, bias=False),
                                 nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))

    def forward(self, xyz: Tensor, features: Tensor | None = None) -> tuple[Tensor, Tensor]:
        centres, _ = ops.sample_farthest_points(xyz, K=self.npoint)                   # (B, S, 3)
        # the centres are points of xyz, so each ball holds at least the centre: fill="first" leaves no -1
        _, idx, _ = ops.ball_query(centres, xyz, K=self.nsample, radius=self.radius, return_nn=False,
                                   fill="first")                                     # (B, S, nsample)
        grouped = ops.grouping_operation(xyz.transpose(1, 2).contiguous(), idx)      # (B, 3, S, nsample)
        grouped = grouped - centres.transpose(1, 2)[..., None]                       # relative coordinates
        if features is not None:
            grouped = torch.cat([grouped, ops.grouping_operation(features.contiguous(), idx)], dim=1)
        return centres, self.mlp(grouped).amax(dim=-1)                               # (B, C_out, S)


class PointNet2Classifier(nn.Module):
    def __init__(self, num_classes: int, npoint: tuple[int, int], width: int):
        super().__init__()
        self.sa1 = BallGroupingSA(npoint[0], radius=0.3, nsample=16, in_channels=0, out_channels=width)
        self.sa2 = PointNetSetAbstraction(npoint[1], radius=0.6, nsample=16, in_channels=width,
                                          mlp=[width, 2 * width])
        # group_all: the whole cloud is one group around the origin (npoint, radius, nsample unused)
        self.sa3 = PointNetSetAbstraction(npoint=None, radius=None, nsample=None, in_channels=2 * width,
                                          mlp=[2 * width, 4 * width], group_all=True)
        self.head = nn.Sequential(nn.Linear(4 * width, 2 * width), nn.BatchNorm1d(2 * width), nn.ReLU(inplace=True),
                                  nn.Dropout(0.3), nn.Linear(2 * width, num_classes))

    def forward(self, xyz: Tensor) -> Tensor:
        xyz1, f1 = self.sa1(xyz)
        xyz2, f2 = self.sa2(xyz1, f1)
        _, f3 = self.sa3(xyz2, f2)                                                   # (B, 4 * width, 1)
        return self.head(f3.squeeze(-1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", default=os.environ.get("PVF_EXAMPLES_SMALL") == "1",
                        help="small clouds and few steps, for a quick check (also PVF_EXAMPLES_SMALL=1)")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.small:
        points, npoint, width, steps, train_count, batch = 128, (32, 8), 16, 60, 256, 32
    else:
        points, npoint, width, steps, train_count, batch = 1024, (256, 64), 64, 300, 2048, 32

    train_x, train_y = make_dataset(train_count, points, seed=1)
    test_x, test_y = make_dataset(200, points, seed=2)
    model = PointNet2Classifier(len(CLASSES), npoint, width).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)

    model.train()
    for step in range(1, steps + 1):
        pick = torch.randint(0, train_count, (batch,), generator=g)
        loss = nn.functional.cross_entropy(model(train_x[pick].to(device)), train_y[pick].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 10 == 0 or step == steps:
            print(f"step {step:4d}  loss {loss.item():.3f}")

    # after a few dozen steps BatchNorm's running statistics still lag behind the weights: recompute them from
    # the training clouds with the final weights (what SWA does) before evaluating
    torch.optim.swa_utils.update_bn([train_x[i:i + batch].to(device) for i in range(0, train_count, batch)], model)
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(test_x[i:i + 100].to(device)).argmax(1).cpu() for i in range(0, len(test_x), 100)])
    accuracy = (predicted == test_y).float().mean().item()
    print(f"test accuracy: {accuracy:.3f} (chance {1 / len(CLASSES):.2f})")


if __name__ == "__main__":
    main()
