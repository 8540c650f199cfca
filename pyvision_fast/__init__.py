"""pyvision_fast: fast, exportable kernels and layers for computer-vision research.

    from pyvision_fast import ops
    dists, idx, _ = ops.knn_points(p1, p2, K=16)

Compiled modules load lazily; importing needs no GPU and no driver. ``python -m pyvision_fast info`` says
what was built and which backends are usable. ``pyvision_fast.array`` runs the same kernels on NumPy and CuPy
arrays without importing torch.

Importing this package imports torch only when torch is already imported: then ``ops`` is imported at once
(registering the ``torch.ops.pvf`` custom ops); otherwise ``ops`` and the backend controls (``use_backend``,
...) are imported on first access, and before any of the torch-based subpackages (``nn``, ``models``,
``export``, ...), which rely on the registered ops.
"""
import importlib
import importlib.abc
import sys

__version__ = "0.1.0"

_FROM_BACKEND = ("BACKENDS", "forced_backend", "use_backend", "use_candidates", "use_previous")

__all__ = ["BACKENDS", "__version__", "forced_backend", "ops", "use_backend", "use_candidates",
           "use_previous"]


_SUBPACKAGES = frozenset(("array", "attacks", "data", "export", "geometry", "losses", "metrics", "models",
                          "nn", "reference", "train"))


def __getattr__(name: str):
    """PEP 562: ``ops``, the backend controls and the subpackages (``pvf.nn``, ``pvf.array``, ...), imported
    on first access (all but ``array`` import torch)."""
    if name in _FROM_BACKEND:
        value = getattr(importlib.import_module("._backend", __name__), name)
        globals()[name] = value
        return value
    if name == "ops" or name in _SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


# Subpackages that use torch and may reach torch.ops.pvf without importing ops themselves. (Not those that ops
# itself imports -- _backend, _ext, reference, geometry -- nor the torch-free array, _C, _C_cuda.)
_AFTER_OPS = frozenset(f"{__name__}.{name}" for name in (
    "attacks", "cli", "data", "export", "losses", "metrics", "models", "nn", "train", "triton"))


class _OpsFirst(importlib.abc.MetaPathFinder):
    """Imports ``ops`` (registering the custom ops) before the first of the ``_AFTER_OPS`` subpackages; finds
    nothing itself (the regular finders load every module)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in _AFTER_OPS and f"{__name__}.ops" not in sys.modules:
            importlib.import_module(".ops", __name__)
        return None


if not any(isinstance(f, _OpsFirst) for f in sys.meta_path):
    sys.meta_path.insert(0, _OpsFirst())

if "torch" in sys.modules:
    from ._backend import BACKENDS, forced_backend, use_backend, use_candidates, use_previous  # noqa: F401
    from . import ops  # noqa: F401, E402  (registers the pvf:: custom ops)
