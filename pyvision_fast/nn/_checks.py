"""Input checks shared by the layers of ``pyvision_fast.nn``: the rank and the sizes a layer fixes, checked in
forward before any op runs, with a message that names the layer, the argument, the expected and the got shape.

The checks read only ``x.dim()`` and ``x.shape`` (Python ints, or symbolic sizes that become guards), never
data, so they trace under ``torch.compile``, ``torch.export`` and ``torch.onnx.export``.
"""
from __future__ import annotations

from typing import Sequence, Type, Union

from torch import Tensor

Dim = Union[int, str]


def _layout(dims: Sequence[Dim]) -> str:
    return "(" + ", ".join(str(d) for d in dims) + ")"


def check_input(module: str, arg: str, x, dims: Sequence[Dim], error: Type[ValueError] = ValueError) -> None:
    """Raise ``error`` unless ``x`` is a tensor of rank ``len(dims)`` whose sizes equal every int in ``dims``
    (a str is a free size and names it in the message), e.g. ``dims=("B", 64, "H", "W")``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{module}: {arg} must be a tensor of shape {_layout(dims)}, got {type(x).__name__}")
    if x.dim() != len(dims):
        raise error(f"{module}: expected {arg} of shape {_layout(dims)} ({len(dims)} dimensions), got "
                    f"{tuple(x.shape)}")
    for i, want in enumerate(dims):
        if isinstance(want, int) and x.shape[i] != want:
            raise error(f"{module}: expected {arg} of shape {_layout(dims)}, got {tuple(x.shape)} (size {want} "
                        f"expected in dimension {i}, got {x.shape[i]})")


def check_same(module: str, arg: str, x: Tensor, dim: int, other: str, size: int) -> None:
    """Raise ValueError unless ``x.shape[dim] == size``, a size ``x`` shares with the argument ``other``."""
    if x.shape[dim] != size:
        raise ValueError(f"{module}: {arg} has size {x.shape[dim]} in dimension {dim}, expected {size} as "
                         f"{other}; got shape {tuple(x.shape)}")
