"""Point-cloud feature gathers (mmcv / PointNet++): ``gather_points``, ``grouping_operation`` and
``three_interpolate``, with their gradients. Re-exported by ``ops.pointcloud``.

Index inputs may be int32 or int64 and must lie in [0, N). On CPU tensors an index outside it raises
ValueError. On CUDA the current kernels also raise (after a device-to-host check that synchronises every
call); the candidate kernels (``"cuda:next"``) do not check, and skip such an index instead (see
``_pointcloud_cuda``).

float16 / bfloat16 features on CPU are computed in float32 and returned in their own dtype.

This module also holds the argument checks that every point-cloud op runs in Python before any backend
(kernel or reference) sees its arguments: ranks, every relation between the arguments' sizes, dtypes and
devices always. Values (lengths, index ranges) of CPU tensors are read outside tracing by whichever
implementation runs: the C++ bindings, the references' wrappers (``_*_reference``), or the Python entry of
the ops that are torch compositions. On CUDA they are the kernels' business (see above), so that no call
synchronises only to check.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _backend, _ext, _memory
from ..reference import pointcloud as ref
from . import _pointcloud_cuda as cu
from ._registry import dispatch, eager, eager_function

# ============================================================== argument checks shared by the point-cloud ops

_HALF = (torch.float16, torch.bfloat16)


def tracing() -> bool:
    """Whether values cannot be read now (torch.compile / torch.export tracing, fake tensors, opcheck)."""
    return torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() != 0


def check_tensor(op: str, t, name: str, ndim: Optional[int] = None, layout: str = "") -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: argument '{name}' must be a tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{op}: argument '{name}' must have {ndim} dimensions {layout}, got shape {tuple(t.shape)}")
    return t


def check_size(op: str, t: Tensor, name: str, dim: int, expected: int, what: str) -> None:
    if t.shape[dim] != expected:
        raise ValueError(f"{op}: argument '{name}' has size {t.shape[dim]} in dimension {dim} but {what} is "
                         f"{expected}")


def check_float(op: str, t: Tensor, name: str, half_on_cpu: bool = False) -> None:
    """float32/float64 everywhere; float16/bfloat16 on CUDA, and on CPU where ``half_on_cpu``."""
    allowed = (torch.float32, torch.float64) + (_HALF if t.is_cuda or half_on_cpu else ())
    if t.dtype not in allowed:
        names = " or ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"{op}: argument '{name}' must be {names}, got {str(t.dtype).replace('torch.', '')}")


def check_like(op: str, t: Tensor, name: str, ref: Tensor, ref_name: str, dtype: bool = True) -> None:
    """t on ref's device (and with its dtype)."""
    if t.device != ref.device:
        raise TypeError(f"{op}: argument '{name}' is on {t.device} but this call runs on {ref.device} (the device "
                        f"of '{ref_name}')")
    if dtype and t.dtype != ref.dtype:
        raise TypeError(f"{op}: arguments '{name}' ({str(t.dtype).replace('torch.', '')}) and '{ref_name}' "
                        f"({str(ref.dtype).replace('torch.', '')}) must have the same dtype")


def check_index(op: str, t, name: str, ndim: Optional[int] = None, layout: str = "") -> Tensor:
    """An int32/int64 index tensor of rank ``ndim``, returned as int64."""
    check_tensor(op, t, name, ndim, layout)
    if t.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{op}: {name} must be an int32 or int64 tensor, got {t.dtype}")
    return t.to(torch.int64)


def values_checked(t: Tensor, values: bool = True) -> bool:
    """Whether ``t``'s values are read to check them: where ``values`` (False: the implementation that runs
    checks them itself: the C++ bindings, the references' wrappers; the CUDA candidates clamp / skip by design),
    for CPU tensors, outside tracing."""
    return values and not t.is_cuda and not tracing() and t.numel() > 0


def check_lengths(op: str, lengths, name: str, B: int, P: int, device: torch.device,
                  values: bool = True) -> Optional[Tensor]:
    """lengths None or (B,) int32/int64 on ``device`` with values in [0, P] (values read where
    ``values_checked``) -> int64."""
    if lengths is None:
        return None
    lengths = check_index(op, lengths, name, 1, "(B,)")
    check_size(op, lengths, name, 0, B, "the batch size")
    if lengths.device != device:
        raise TypeError(f"{op}: argument '{name}' is on {lengths.device} but this call runs on {device}")
    if values_checked(lengths, values):
        bad = (lengths < 0) | (lengths > P)
        if bool(bad.any()):
            b = int(bad.nonzero()[0, 0])
            raise ValueError(f"{op}: argument '{name}' has a length {int(lengths[b])} outside [0, {P}] (cloud {b})")
    return lengths


def check_index_range(op: str, idx: Tensor, hi: int, what: str, lo: int = 0, values: bool = True) -> None:
    """Every idx value in [lo, hi) (read where ``values_checked``)."""
    if not values_checked(idx, values):
        return
    bad = (idx < lo) | (idx >= hi)
    if bool(bad.any()):
        pos = int(bad.reshape(-1).nonzero()[0, 0])
        raise ValueError(f"{op}: idx[{pos}] = {int(idx.reshape(-1)[pos])} is out of range for {what} ({hi})")


def check_count(op: str, value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value}")
    return value


def _features(op: str, features, name: str = "features") -> Tensor:
    check_tensor(op, features, name, 3, "(B, C, N)")
    check_float(op, features, name, half_on_cpu=True)
    return features


def _float32_on_cpu(fn, features: Tensor, *rest: Tensor) -> Tensor:
    """fn on float32 copies of CPU half/bfloat16 inputs, cast back (autograd follows the casts)."""
    if features.dtype in _HALF and not features.is_cuda:
        return fn(features.float(), *(t.float() if t.is_floating_point() else t for t in rest)).to(features.dtype)
    return fn(features, *rest)


# ============================================================== gather_points / grouping_operation


def _gather_cpu(features, idx):
    B, C, _ = _ext.dims(features, 3)
    out = _memory.empty((B, C, _ext.dims(idx, 2)[1]), features.dtype)
    _ext.cpu_module().gather_columns(_ext.arg(features), _ext.arg(idx), _ext.arg(out))
    return out


def _gather_backward_cpu(grad_out, idx, N):
    B, C, _ = _ext.dims(grad_out, 3)
    grad = _memory.empty((B, C, N), grad_out.dtype)
    _ext.cpu_module().gather_columns_backward(_ext.arg(grad_out), _ext.arg(idx), _ext.arg(grad))
    return grad


def _gather_backward_ref(grad_out, idx, N):
    B, C, M = grad_out.shape
    return grad_out.new_zeros(B, C, N).scatter_add_(2, idx[:, None, :].expand(B, C, M), grad_out)


def _gather_reference(features, idx):
    """The reference behind the same checks as the C++ binding (the custom op may be called directly)."""
    return ref.gather_columns(features, _check_gather("gather_points", features, idx, 2, "(B, M)"))


_GATHER = {"cpu": _gather_cpu, "cuda": cu.gather, "cuda:next": cu.gather_next, "reference": _gather_reference}
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


def _check_gather(op: str, features, idx, ndim: int, layout: str, values: bool = True) -> Tensor:
    _features(op, features)
    idx = check_index(op, idx, "idx", ndim, layout)
    check_like(op, idx, "idx", features, "features", dtype=False)
    check_size(op, idx, "idx", 0, features.shape[0], "the batch size of features")
    N = features.shape[2]
    if N == 0 and idx.numel() and features.shape[1]:
        raise ValueError(f"{op}: cannot gather from features with N = 0 points")
    check_index_range(op, idx, N, "the number of points N", values=values)
    return idx


def gather_points(features: Tensor, idx: Tensor) -> Tensor:
    """mmcv ``gather_points``: features (B, C, N) float, idx (B, M) int32/int64 in [0, N) -> (B, C, M) in the
    features' dtype (float16/bfloat16 on CPU: computed in float32). Differentiable in features."""
    idx = _check_gather("gather_points", features, idx, 2, "(B, M)", values=False)  # the backends check values
    return _float32_on_cpu(_gather, features, idx)


def grouping_operation(features: Tensor, idx: Tensor, features_batch_cnt: Optional[Tensor] = None,
                       indices_batch_cnt: Optional[Tensor] = None) -> Tensor:
    """mmcv ``grouping_operation``: features (B, C, N) float, idx (B, M, S) int32/int64 in [0, N) ->
    (B, C, M, S) in the features' dtype (float16/bfloat16 on CPU: computed in float32). Differentiable in
    features.

    With ``features_batch_cnt`` and ``indices_batch_cnt`` it is mmcv's stacked form
    (``stacked_grouping_operation``): features (N1 + N2 + ..., C), idx (M1 + M2 + ..., S) -> (M1 + ..., C, S).
    """
    if features_batch_cnt is not None or indices_batch_cnt is not None:
        return stacked_grouping_operation(features, idx, features_batch_cnt, indices_batch_cnt)
    idx = _check_gather("grouping_operation", features, idx, 3, "(B, M, S)", values=False)
    B, M, S = idx.shape
    out = _float32_on_cpu(_gather, features, idx.reshape(B, M * S))
    return out.view(out.shape[0], out.shape[1], M, S)


def check_batch_cnt(op: str, cnt, name: str, B: Optional[int], total: int, total_name: str,
                    device: torch.device) -> tuple[Tensor, list[int]]:
    """A stacked batch's counts (B,) int32/int64, non-negative, summing to ``total`` -> (int64 tensor, values).
    Reads the counts (on a GPU this synchronises)."""
    if cnt is None:
        raise ValueError(f"{op}: argument '{name}' is required for stacked inputs")
    cnt = check_index(op, cnt, name, 1, "(B,)")
    if B is not None:
        check_size(op, cnt, name, 0, B, "the number of clouds in the other batch count")
    if cnt.device != device:
        raise TypeError(f"{op}: argument '{name}' is on {cnt.device} but this call runs on {device}")
    if tracing():
        raise ValueError(f"{op}: stacked inputs read their batch counts, which cannot be traced")
    values = cnt.tolist()
    if any(v < 0 for v in values):
        raise ValueError(f"{op}: argument '{name}' has a negative count: {values}")
    if sum(values) != total:
        raise ValueError(f"{op}: argument '{name}' sums to {sum(values)} but {total_name} is {total}")
    return cnt, values


def stacked_grouping_operation(features: Tensor, idx: Tensor, features_batch_cnt: Tensor,
                               indices_batch_cnt: Tensor) -> Tensor:
    """mmcv's stacked ``grouping_operation`` (PointNet++ / PV-RCNN code): the clouds of a batch stacked along
    the first dimension.

    Args:
        features: (N1 + N2 + ..., C) float features of every cloud's points, stacked.
        idx: (M1 + M2 + ..., S) int32/int64: for each query of cloud b, S indices local to cloud b, in
            [0, Nb) (a ball query's -1 marker of an empty ball must be replaced, e.g. by 0, first).
        features_batch_cnt: (B,) int32/int64 counts (N1, N2, ...), summing to the rows of features.
        indices_batch_cnt: (B,) int32/int64 counts (M1, M2, ...), summing to the rows of idx.

    Returns:
        (M1 + M2 + ..., C, S) in the features' dtype; out[i, c, s] = features[start(b) + idx[i, s], c].
        Differentiable in features. A composition of ``torch.index_select`` (fast on CPU and CUDA); it reads
        the counts and checks every index (on a GPU this synchronises once).
    """
    op = "stacked_grouping_operation"
    check_tensor(op, features, "features", 2, "(N1 + N2 + ..., C)")
    check_float(op, features, "features", half_on_cpu=True)
    idx = check_index(op, idx, "idx", 2, "(M1 + M2 + ..., S)")
    check_like(op, idx, "idx", features, "features", dtype=False)
    fcnt, fvals = check_batch_cnt(op, features_batch_cnt, "features_batch_cnt", None, features.shape[0],
                                  "the number of feature rows", features.device)
    icnt, ivals = check_batch_cnt(op, indices_batch_cnt, "indices_batch_cnt", len(fvals), idx.shape[0],
                                  "the number of idx rows", features.device)
    M, S = idx.shape
    cloud = torch.repeat_interleave(torch.arange(len(fvals), device=idx.device), icnt, output_size=M)
    n = fcnt[cloud][:, None]  # (M, 1): each row's cloud size
    bad = (idx < 0) | (idx >= n)
    if bool(bad.any()):
        i, s = (int(v) for v in bad.nonzero()[0])
        raise ValueError(f"{op}: idx[{i}, {s}] = {int(idx[i, s])} is out of range for its cloud "
                         f"{int(cloud[i])} of {int(n[i, 0])} points")
    start = torch.cumsum(fcnt, 0) - fcnt
    rows = (idx + start[cloud][:, None]).reshape(-1)
    grouped = features.index_select(0, rows).view(M, S, features.shape[1])
    return grouped.permute(0, 2, 1).contiguous()


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


def _interp_reference(features, idx, weight):
    """The reference behind the same checks as the C++ binding (the custom op may be called directly)."""
    return ref.three_interpolate(features, _check_interp(features, idx, weight), weight)


_INTERP = {"cpu": _interp_cpu, "cuda": cu.interp, "cuda:next": cu.interp_next, "reference": _interp_reference}
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


def _interp(features: Tensor, idx: Tensor, weight: Tensor) -> Tensor:
    if eager(features, idx, weight):
        return _InterpFunction.apply(features, idx, weight)
    return _interp_op(features, idx, weight)


def three_interpolate(features: Tensor, idx: Tensor, weight: Tensor) -> Tensor:
    """mmcv ``three_interpolate``: features (B, C, m) float, idx (B, n, 3) int32/int64 in [0, m), weight
    (B, n, 3) of the features' dtype -> (B, C, n) in that dtype (float16/bfloat16 on CPU: computed in float32).
    Differentiable in features and weight."""
    idx = _check_interp(features, idx, weight, values=False)  # the backends check the index values
    return _float32_on_cpu(_interp, features, idx, weight)


def _check_interp(features, idx, weight, values: bool = True) -> Tensor:
    op = "three_interpolate"
    check_tensor(op, features, "features", 3, "(B, C, M)")
    check_float(op, features, "features", half_on_cpu=True)
    idx = check_index(op, idx, "idx", 3, "(B, N, 3)")
    check_tensor(op, weight, "weight")
    check_like(op, idx, "idx", features, "features", dtype=False)
    check_size(op, idx, "idx", 0, features.shape[0], "the batch size of features")
    check_size(op, idx, "idx", 2, 3, "the number of interpolated neighbours")
    if tuple(weight.shape) != (features.shape[0], idx.shape[1], 3):
        raise ValueError(f"{op}: argument 'weight' must have shape ({features.shape[0]}, {idx.shape[1]}, 3), got "
                         f"{tuple(weight.shape)}")
    check_like(op, weight, "weight", features, "features")
    M = features.shape[2]
    if M == 0 and idx.shape[1] and features.shape[1]:
        raise ValueError(f"{op}: cannot interpolate from features with M = 0 points")
    check_index_range(op, idx, M, "the number of known points M", values=values)
    return idx
