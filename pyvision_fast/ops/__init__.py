"""Public functional API. Every op dispatches to the best available backend (see ``pyvision_fast.use_backend``)."""
from .attention import attention
from .deform_conv import deform_conv2d
from .mesh_raster import interpolate_attributes, rasterize_triangles, texture_sample
from .mvf import multi_view_fusion, multi_view_fusion_batchnorm
from .scale_space import gaussian_scale_space, scale_attention
from .scale_space_weight import scale_space_weight
from .sphere import sphere_conv2d
from .stylegan2 import bias_act, upfirdn2d
from .vector_quantize import vector_quantize
from .pointcloud import (
    KNN,
    ball_query,
    ball_query_mmcv,
    chamfer_distance,
    furthest_point_sample,
    furthest_point_sample_with_dist,
    gather_points,
    grouping_operation,
    knn_gather,
    knn_points,
    masked_gather,
    sample_farthest_points,
    stacked_ball_query,
    stacked_grouping_operation,
    three_interpolate,
    three_nn,
)

__all__ = [
    "attention",
    "bias_act",
    "KNN",
    "ball_query",
    "ball_query_mmcv",
    "chamfer_distance",
    "deform_conv2d",
    "gaussian_scale_space",
    "furthest_point_sample",
    "furthest_point_sample_with_dist",
    "gather_points",
    "grouping_operation",
    "interpolate_attributes",
    "knn_gather",
    "knn_points",
    "masked_gather",
    "multi_view_fusion",
    "multi_view_fusion_batchnorm",
    "rasterize_triangles",
    "sample_farthest_points",
    "stacked_ball_query",
    "stacked_grouping_operation",
    "scale_attention",
    "scale_space_weight",
    "sphere_conv2d",
    "texture_sample",
    "three_interpolate",
    "three_nn",
    "upfirdn2d",
    "vector_quantize",
]


def _takes_tensors(fn):
    """Wraps a public op so that a NumPy/CuPy array (or any non-tensor array) argument is one clear TypeError
    instead of the dispatcher's page that prints the whole array."""
    import functools
    import inspect

    import torch

    signature = inspect.signature(fn)

    def foreign(value) -> bool:
        return (not isinstance(value, torch.Tensor) and getattr(value, "ndim", 0) > 0
                and any(hasattr(value, a) for a in ("__array_interface__", "__cuda_array_interface__", "__dlpack__")))

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        for value in (*args, *kwargs.values()):
            if foreign(value):
                bound = signature.bind_partial(*args, **kwargs).arguments
                name = next(k for k, v in bound.items() if v is value)
                kind = f"{type(value).__module__.split('.')[0]}.{type(value).__name__}"
                from .. import array

                native = (f", or call pyvision_fast.array.{fn.__name__} on the arrays themselves"
                          if hasattr(array, fn.__name__) else "")
                raise TypeError(f"pyvision_fast.ops.{fn.__name__}: argument {name!r} is a {kind}; ops take torch "
                                "tensors: convert with torch.from_numpy(a) (CuPy and others: torch.from_dlpack(a)), "
                                f"which shares the memory{native}")
        return fn(*args, **kwargs)

    return wrapper


for _name in __all__:
    if _name != "KNN":
        globals()[_name] = _takes_tensors(globals()[_name])
del _name
