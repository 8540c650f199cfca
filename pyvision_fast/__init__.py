"""pyvision_fast: fast, exportable kernels and layers for computer-vision research.

    from pyvision_fast import ops
    dists, idx, _ = ops.knn_points(p1, p2, K=16)

Compiled modules load lazily; importing needs no GPU and no driver. ``python -m pyvision_fast info`` says
what was built and which backends are usable.
"""
from ._backend import BACKENDS, forced_backend, use_backend, use_candidates, use_previous

__version__ = "0.1.0"

from . import ops  # noqa: E402  (registers the pvf:: custom ops)

__all__ = ["BACKENDS", "__version__", "forced_backend", "ops", "use_backend", "use_candidates", "use_previous"]
