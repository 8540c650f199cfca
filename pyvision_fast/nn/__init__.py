"""Drop-in ``nn.Module`` layers built on ``pyvision_fast.ops``."""
from .pointnet2 import PointNetFeaturePropagation, PointNetSetAbstraction

__all__ = ["PointNetFeaturePropagation", "PointNetSetAbstraction"]
