"""Drop-in ``nn.Module`` layers built on ``pyvision_fast.ops``."""
from .attention import FusedAttention, MultiheadAttention, patch_timm
from .mvf import MVF, insert_mvf
from .pointnet2 import PointNetFeaturePropagation, PointNetSetAbstraction

__all__ = ["MVF", "FusedAttention", "MultiheadAttention", "PointNetFeaturePropagation", "PointNetSetAbstraction",
           "insert_mvf", "patch_timm"]
