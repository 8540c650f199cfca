"""Point-cloud feature gathers (mmcv / PointNet++): ``gather_points``, ``grouping_operation`` and
``three_interpolate``, with their gradients. Re-exported by ``ops.pointcloud``.

Index inputs may be int32 or int64 and must lie in [0, N). On CPU tensors an index outside it raises
ValueError. On CUDA the current kernels also raise (after a device-to-host check that synchronises every
call); the candidate kernels (``"cuda:next"``) do not check, and skip such an index instead (see
``_pointcloud_cuda``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import _backend, _ext
from ..reference import pointcloud as ref
from . import _pointcloud_cuda as cu
from ._registry import as_index, dispatch, eager, eager_function

# ============================================================== gather_points / grouping_operation


def _gather_cpu(features, idx):
    B, C, _ = _ext.dims(features, 3)
    out = torch.empty(B, C, _ext.dims(idx, 2)[1], dtype=features.dtype)
    _ext.cpu_module().gather_columns(_ext.arg(features), _ext.arg(idx), _ext.arg(out))
    return out


def _gather_backward_cpu(grad_out, idx, N):
    B, C, _ = _ext.dims(grad_out, 3)
    grad = torch.empty(B, C, N, dtype=grad_out.dtype)
    _ext.cpu_module().gather_columns_backward(_ext.arg(grad_out), _ext.arg(idx), _ext.arg(grad))
    return grad


def _gather_backward_ref(grad_out, idx, N):
    B, C, M = grad_out.shape
    return grad_out.new_zeros(B, C, N).scatter_add_(2, idx[:, None, :].expand(B, C, M), grad_out)


_GATHER = {"cpu": _gather_cpu, "cuda": cu.gather, "cuda:next": cu.gather_next, "reference": ref.gather_columns}
_GATHER_BWD = {"cpu": _gather_backward_cpu, "cuda": cu.gather_backward, "cuda:next": cu.gather_backward_next,
               "reference": _gather_backward_ref}
_backend.prefer("gather_points", "cuda:next")  # H200-verified 2026-12-04 (gpu-runs.md)
_backend.prefer("gather_points_backward", "cuda:next")  # H200-verified 2026-12-04 (gpu-runs.md)


def _gather_impl(features: Tensor, idx: Tensor) -> Tensor:
    """features (B, C, N), idx (B, M) int64 -> (B, C, M)."""
    return dispatch("gather_points", features.device, _GATHER)(features.contiguous(), idx.contiguous())


_gather_op = torch.library.custom_op("pvf::gather_points", mutates_args=())(_gather_impl)


@_gather_op.register_fake
def _(features, idx):
    return features.new_empty((features.shape[0], features.shape[1], idx.shape[1]))


def _gather_backward_impl(grad_out: Tensor, idx: Tensor, N: int) -> Tensor:
    impl = dispatch("gather_points_backward", grad_out.device, _GATHER_BWD)
    return impl(grad_out.contiguous(), idx.contiguous(), N)


_gather_backward_op = torch.library.custom_op("pvf::gather_points_backward", mutates_args=())(_gather_backward_impl)


@_gather_backward_op.register_fake
def _(grad_out, idx, N):
    return grad_out.new_empty((grad_out.shape[0], grad_out.shape[1], N))


def _gather_setup(ctx, inputs, output):
    features, idx = inputs
    ctx.save_for_backward(idx)
    ctx.num_points = features.shape[2]


def _gather_backward_with(backward_op):
    def backward(ctx, grad_out):
        (idx,) = ctx.saved_tensors
        return backward_op(grad_out, idx, ctx.num_points), None

    return backward


_gather_op.register_autograd(_gather_backward_with(_gather_backward_op), setup_context=_gather_setup)
_GatherFunction = eager_function("_GatherFunction", _gather_impl, _gather_setup,
                                 _gather_backward_with(_gather_backward_impl))


def _gather(features: Tensor, idx: Tensor) -> Tensor:
    return _GatherFunction.apply(features, idx) if eager(features, idx) else _gather_op(features, idx)


def gather_points(features: Tensor, idx: Tensor) -> Tensor:
    """mmcv ``gather_points``: features (B, C, N), idx (B, M) int32/int64 in [0, N) -> (B, C, M)."""
    return _gather(features, as_index(idx, "idx"))


def grouping_operation(features: Tensor, idx: Tensor) -> Tensor:
    """mmcv ``grouping_operation``: features (B, C, N), idx (B, M, S) in [0, N) -> (B, C, M, S)."""
    idx = as_index(idx, "idx")
    if idx.dim() != 3:
        raise ValueError(f"grouping_operation: idx must have shape (B, M, S), got {tuple(idx.shape)}")
    B, M, S = idx.shape
    out = _gather(features, idx.reshape(B, M * S))
    return out.view(out.shape[0], out.shape[1], M, S)


# ============================================================== three_interpolate

def _interp_cpu(features, idx, weight):
    B, C, _ = _ext.dims(features, 3)
    out = torch.empty(B, C, _ext.dims(idx, 3)[1], dtype=features.dtype)
    _ext.cpu_module().three_interpolate(_ext.arg(features), _ext.arg(idx), _ext.arg(weight), _ext.arg(out))
    return out


def _interp_backward_cpu(grad_out, features, idx, weight, need_features, need_weight):
    gf = torch.empty_like(features) if need_features else None
    gw = torch.empty_like(weight) if need_weight else None
    _ext.cpu_module().three_interpolate_backward(_ext.arg(grad_out), _ext.arg(features), _ext.arg(idx),
                                                 _ext.arg(weight), _ext.opt(gf), _ext.opt(gw))
    return gf, gw


def _interp_backward_ref(grad_out, features, idx, weight, need_features, need_weight):
    B, C, M = features.shape
    N = idx.shape[1]
    gf = gw = None
    if need_features:
        contrib = (grad_out[..., None] * weight[:, None]).reshape(B, C, N * 3)
        gf = _gather_backward_ref(contrib, idx.reshape(B, N * 3), M)
    if need_weight:
        gathered = ref.gather_columns(features, idx.reshape(B, N * 3)).view(B, C, N, 3)
        gw = (gathered * grad_out[..., None]).sum(1)
    return gf, gw


_INTERP = {"cpu": _interp_cpu, "cuda": cu.interp, "cuda:next": cu.interp_next, "reference": ref.three_interpolate}
_INTERP_BWD = {"cpu": _interp_backward_cpu, "cuda": cu.interp_backward, "cuda:next": cu.interp_backward_next,
               "reference": _interp_backward_ref}
_backend.prefer("three_interpolate", "cuda:next")  # H200-verified 2026-12-04 (gpu-runs.md)
_backend.prefer("three_interpolate_backward", "cuda:next")  # H200-verified 2026-12-04 (gpu-runs.md)


def _interp_impl(features: Tensor, idx: Tensor, weight: Tensor) -> Tensor:
    impl = dispatch("three_interpolate", features.device, _INTERP)
    return impl(features.contiguous(), idx.contiguous(), weight.contiguous())


_interp_op = torch.library.custom_op("pvf::three_interpolate", mutates_args=())(_interp_impl)


@_interp_op.register_fake
def _(features, idx, weight):
    return features.new_empty((features.shape[0], features.shape[1], idx.shape[1]))


def _interp_backward_impl(grad_out: Tensor, features: Tensor, idx: Tensor, weight: Tensor, need_features: bool,
                          need_weight: bool) -> tuple[Tensor, Tensor]:
    impl = dispatch("three_interpolate_backward", features.device, _INTERP_BWD)
    gf, gw = impl(grad_out.contiguous(), features.contiguous(), idx.contiguous(), weight.contiguous(),
                  need_features, need_weight)
    # custom ops return tensors, not None: an unrequested gradient comes back empty.
    return (gf if gf is not None else features.new_empty(0)), (gw if gw is not None else weight.new_empty(0))


_interp_backward_op = torch.library.custom_op("pvf::three_interpolate_backward",
                                              mutates_args=())(_interp_backward_impl)


@_interp_backward_op.register_fake
def _(grad_out, features, idx, weight, need_features, need_weight):
    return (features.new_empty(features.shape if need_features else (0,)),
            weight.new_empty(weight.shape if need_weight else (0,)))


def _interp_setup(ctx, inputs, output):
    features, idx, weight = inputs
    ctx.save_for_backward(features, idx, weight)


def _interp_backward_with(backward_op):
    def backward(ctx, grad_out):
        features, idx, weight = ctx.saved_tensors
        need_f, _, need_w = ctx.needs_input_grad
        gf, gw = backward_op(grad_out, features, idx, weight, need_f, need_w)
        return (gf if need_f else None), None, (gw if need_w else None)

    return backward


_interp_op.register_autograd(_interp_backward_with(_interp_backward_op), setup_context=_interp_setup)
_InterpFunction = eager_function("_InterpFunction", _interp_impl, _interp_setup,
                                 _interp_backward_with(_interp_backward_impl))


def three_interpolate(features: Tensor, idx: Tensor, weight: Tensor) -> Tensor:
    """mmcv ``three_interpolate``: features (B, C, m), idx (B, n, 3) in [0, m), weight (B, n, 3) -> (B, C, n).
    Differentiable in features and weight."""
    idx = as_index(idx, "idx")
    if eager(features, idx, weight):
        return _InterpFunction.apply(features, idx, weight)
    return _interp_op(features, idx, weight)
