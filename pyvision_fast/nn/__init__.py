"""Drop-in ``nn.Module`` layers built on ``pyvision_fast.ops``."""
from .attention import FusedAttention, MultiheadAttention, patch_timm
from .deform_conv import DeformConv2d, DeformConv2dPack, ModulatedDeformConv2dPack
from .mvf import MVF, insert_mvf
from .nddr import NDDR, NDDRConcat
from .patch_embed import DropPath, PatchEmbed
from .pointnet2 import PointNetFeaturePropagation, PointNetSetAbstraction, PointNetSetAbstractionMsg
from .scale_space import ScaleAttention, ScaleSpaceConv2d, gaussian_derivative_basis
from .sphere import SphereConv2d, SpherePatchEmbed

__all__ = [
    "MVF",
    "DeformConv2d",
    "DeformConv2dPack",
    "DropPath",
    "FusedAttention",
    "ModulatedDeformConv2dPack",
    "MultiheadAttention",
    "NDDR",
    "NDDRConcat",
    "PatchEmbed",
    "PointNetFeaturePropagation",
    "PointNetSetAbstraction",
    "PointNetSetAbstractionMsg",
    "ScaleAttention",
    "ScaleSpaceConv2d",
    "SphereConv2d",
    "SpherePatchEmbed",
    "gaussian_derivative_basis",
    "insert_mvf",
    "patch_timm",
]
