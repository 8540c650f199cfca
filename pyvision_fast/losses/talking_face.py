"""The mouth-shape preservation loss of emotional talking-face editing (paper 4, Sun et al., TAFFC 2023).

The paper's loss keeps the edited face's mouth close to the original's so that editing the expression does not
break lip-sync; its weight λ trades lip-sync accuracy against how far the expression may be exaggerated. It
compares the mouth region of the edited and the original 3DMM meshes *(the exact distance is not published;
ours: the mean Euclidean distance of the mouth vertices)*::

    L_mouth = mean over batch and mouth vertices i of || V_edited[i] - V_original[i] ||_2

Meshes come from ``pyvision_fast.models.bfm.BFM.shape(coeffs)`` (identity + expression, before pose: the loss
sees the mouth's shape, not the head's motion); the mouth vertices from its ``mouth_idx`` buffer
(``pyvision_fast.face3d.basis.mouth_vertex_indices``). The loss is 0 for identical meshes, grows linearly with
a rigid shift of the mouth, and has finite gradients everywhere (``torch.linalg.vector_norm`` takes the zero
subgradient where a vertex has not moved).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["mouth_shape_loss", "mouth_vertex_distance"]


def _check_mesh(name: str, v) -> None:
    if not isinstance(v, Tensor) or not v.is_floating_point():
        raise TypeError(f"mouth_shape_loss: argument '{name}' must be a floating tensor of shape (B, N, 3), "
                        f"got {getattr(v, 'dtype', type(v).__name__)}")
    if v.dim() != 3 or v.shape[-1] != 3:
        raise ValueError(f"mouth_shape_loss: argument '{name}' must have shape (B, N, 3), got "
                         f"{tuple(v.shape)}")


def mouth_vertex_distance(edited: Tensor, original: Tensor, mouth_idx: Optional[Tensor] = None) -> Tensor:
    """Per-vertex Euclidean distances (B, M) between the mouth vertices of ``edited`` and ``original`` meshes
    (B, N, 3) (all N vertices when ``mouth_idx`` is None), in the mesh's units; exactly 0 where the vertices
    coincide, with a zero (finite) gradient there."""
    _check_mesh("edited", edited)
    _check_mesh("original", original)
    if edited.shape != original.shape:
        raise ValueError(f"mouth_shape_loss: 'edited' {tuple(edited.shape)} and 'original' "
                         f"{tuple(original.shape)} must have the same shape")
    if edited.dtype != original.dtype:
        raise TypeError(f"mouth_shape_loss: 'edited' is {edited.dtype}, 'original' {original.dtype}")
    if mouth_idx is not None:
        if not isinstance(mouth_idx, Tensor) or mouth_idx.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"mouth_shape_loss: argument 'mouth_idx' must be an int64 tensor, got "
                            f"{getattr(mouth_idx, 'dtype', type(mouth_idx).__name__)}")
        if mouth_idx.dim() != 1 or mouth_idx.numel() == 0:
            raise ValueError(f"mouth_shape_loss: argument 'mouth_idx' must be a non-empty 1-D index tensor, "
                             f"got shape {tuple(mouth_idx.shape)}")
        n = edited.shape[1]
        if int(mouth_idx.min()) < 0 or int(mouth_idx.max()) >= n:
            raise ValueError(f"mouth_shape_loss: 'mouth_idx' holds vertex indices outside [0, {n})")
        mouth_idx = mouth_idx.to(edited.device, torch.int64)
        edited, original = edited[:, mouth_idx], original[:, mouth_idx]
    return torch.linalg.vector_norm(edited - original, dim=-1)


def mouth_shape_loss(edited: Tensor, original: Tensor, mouth_idx: Optional[Tensor] = None,
                     reduction: str = "mean") -> Tensor:
    """The mouth-shape preservation loss (module docstring).

    Args:
        edited, original: (B, N, 3) floating meshes of the same shape and dtype (e.g. ``BFM.shape``).
        mouth_idx: (M,) int64 mouth vertices; None uses every vertex.
        reduction: ``"mean"`` (a scalar), ``"sum"`` or ``"none"`` ((B,) per-mesh means).

    Returns:
        The loss in the mesh's units, of the meshes' dtype; multiply by λ (``mouth_weight``) in the total
        loss.
    """
    d = mouth_vertex_distance(edited, original, mouth_idx)
    if reduction == "mean":
        return d.mean()
    if reduction == "sum":
        return d.sum()
    if reduction == "none":
        return d.mean(-1)
    raise ValueError(f"mouth_shape_loss: argument 'reduction' must be 'mean', 'sum' or 'none', got "
                     f"{reduction!r}")
