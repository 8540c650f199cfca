"""The library's kernels on NumPy and CuPy arrays, without importing torch.

    import numpy as np
    import pyvision_fast.array as pva

    points = np.random.rand(4, 2048, 3).astype(np.float32)
    sampled, idx = pva.sample_farthest_points(points, K=512)
    dists, nbr, _ = pva.knn_points(sampled, points, K=16)

The functions have the names, arguments, defaults, checks and results (bit for bit on CPU) of the torch ops
in ``pyvision_fast.ops`` and ``pyvision_fast.geometry.equirect``, without gradients. NumPy arrays run the CPU
kernels and return NumPy arrays; CuPy arrays run the CUDA kernels on CuPy's current stream and return CuPy
arrays. Any object with ``__array_interface__``, ``__cuda_array_interface__`` or ``__dlpack__`` is accepted.
Neither importing this package nor calling it imports torch, so a data-loader worker that samples points with
NumPy does not pay torch's import. CPU kernels use ``get_num_threads()`` threads (``OMP_NUM_THREADS``, else
the CPUs this process may use); ``set_num_threads(1)`` suits data-loader workers.
"""
from ._core import get_num_threads, set_num_threads
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
from .scale_space import gaussian_scale_space
from .sphere import SamplingTable, sampling_table, tangent_sampling
from .vector_quantize import vector_quantize

__all__ = [
    "KNN",
    "SamplingTable",
    "ball_query",
    "chamfer_distance",
    "furthest_point_sample",
    "gather_points",
    "gaussian_scale_space",
    "get_num_threads",
    "grouping_operation",
    "knn_gather",
    "knn_points",
    "masked_gather",
    "sample_farthest_points",
    "sampling_table",
    "set_num_threads",
    "tangent_sampling",
    "three_interpolate",
    "three_nn",
    "vector_quantize",
]
