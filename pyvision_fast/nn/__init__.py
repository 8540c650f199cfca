"""Drop-in ``nn.Module`` layers built on ``pyvision_fast.ops``."""
from .attention import FusedAttention, MultiheadAttention, patch_timm
from .deform_conv import DeformConv2d, DeformConv2dPack, ModulatedDeformConv2dPack
from .mvf import MVF, insert_mvf
from .nddr import NDDR, NDDRConcat
from .patch_embed import DropPath, PatchEmbed
from .pointnet2 import PointNetFeaturePropagation, PointNetSetAbstraction, PointNetSetAbstractionMsg
from .scale_space import ScaleAttention, ScaleSpaceConv2d, gaussian_derivative_basis
from .sphere import SphereConv2d, SpherePatchEmbed
from .stylegan2 import Blur, Downsample2d, FusedBiasAct, ModulatedConv2d, Upsample2d

__all__ = [
    "Blur",
    "MVF",
    "DeformConv2d",
    "DeformConv2dPack",
    "Downsample2d",
    "DropPath",
    "FusedAttention",
    "FusedBiasAct",
    "ModulatedConv2d",
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
    "Upsample2d",
    "gaussian_derivative_basis",
    "insert_mvf",
    "patch_timm",
]
