"""Public functional API. Every op dispatches to the best available backend (see ``pyvision_fast.use_backend``)."""
from .attention import attention
from .deform_conv import deform_conv2d
from .mvf import multi_view_fusion, multi_view_fusion_batchnorm
from .scale_space import gaussian_scale_space, scale_attention
from .scale_space_weight import scale_space_weight
from .sphere import sphere_conv2d
from .vector_quantize import vector_quantize
from .pointcloud import (
    KNN,
    ball_query,
    chamfer_distance,
    furthest_point_sample,
    gather_points,
    grouping_operation,
    knn_gather,
    knn_points,
    masked_gather,
    sample_farthest_points,
    three_interpolate,
    three_nn,
)

__all__ = [
    "attention",
    "KNN",
    "ball_query",
    "chamfer_distance",
    "deform_conv2d",
    "gaussian_scale_space",
    "furthest_point_sample",
    "gather_points",
    "grouping_operation",
    "knn_gather",
    "knn_points",
    "masked_gather",
    "multi_view_fusion",
    "multi_view_fusion_batchnorm",
    "sample_farthest_points",
    "scale_attention",
    "scale_space_weight",
    "sphere_conv2d",
    "three_interpolate",
    "three_nn",
    "vector_quantize",
]
