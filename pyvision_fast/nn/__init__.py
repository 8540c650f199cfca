"""Drop-in ``nn.Module`` layers built on ``pyvision_fast.ops``."""
from .attention import FusedAttention, MultiheadAttention, patch_timm
from .pointnet2 import PointNetFeaturePropagation, PointNetSetAbstraction

__all__ = ["FusedAttention", "MultiheadAttention", "PointNetFeaturePropagation", "PointNetSetAbstraction",
           "patch_timm"]
