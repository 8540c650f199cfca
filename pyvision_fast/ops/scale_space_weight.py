"""ScaleSpaceConv2d's weight as one op: the (C_out, C_in, k, k) Conv2d weight from the layer's coefficients
(C_out, C_in, n_basis) and log-scales (S,), forward and backward (d/dcoeff and d/dlog_sigma).

Implementations: ``reference`` (the layer's original code: a basis per scale, one matrix product per scale group,
about 130 small torch ops per training step with its autograd); ``cpu`` / ``cuda`` (the same math in about 20
batched torch ops each way, the gradients written out); ``triton`` (one kernel forward, one kernel and a sum
backward: pyvision_fast/triton/scale_space.py), the GPU candidate.
"""
from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from .. import _backend
from ..reference import scale_space as ref
from ._registry import as_int, dispatch, eager, eager_function

OP = "scale_space_weight"


def _pair_index(order: int, device: torch.device) -> Tensor:
    """Index of each basis filter (i, j) in the (order + 1)^2 outer products of the 1-D factors; cached per
    device in eager calls (a pageable copy, never waited for), made afresh under tracing."""
    if eager():
        return _cached_pair_index(order, device)
    return _make_pair_index(order, device)


def _make_pair_index(order: int, device: torch.device) -> Tensor:
    index = torch.tensor([i * (order + 1) + j for i, j in ref.basis_orders(order)], dtype=torch.int64)
    return index.to(device, non_blocking=True)


_cached_pair_index = functools.lru_cache(maxsize=32)(_make_pair_index)


def _runs(O: int, S: int) -> list[tuple[int, int, int, int]]:
    """The scale groups as runs of equal size: (first channel, first scale, number of scales, group size)."""
    q, rem = divmod(O, S)
    runs = [(0, 0, rem, q + 1), (rem * (q + 1), rem, S - rem, q)]
    return [run for run in runs if run[2] > 0 and run[3] > 0]


def _tables(log_sigma: Tensor, k: int, order: int, lo: float, hi: float, derivative: bool):
    """The 1-D factors f_n (S, order + 1, k) of the basis (and, with derivative, their log-sigma derivatives)."""
    sigma = log_sigma.clamp(lo, hi).exp()
    if derivative:
        return ref.derivative_tables(sigma, k, order)
    # f_n = (-1)^n He_n(u) g with g normalised: f_0 = g, f_1 = -u g, f_{n+1} = -u f_n - n f_{n-1} (the Hermite
    # recurrence with the sign folded in): about half the launches of building He_n and g apart.
    neg_pos = torch.arange(k, dtype=sigma.dtype, device=sigma.device).mul_(-1).add_((k - 1) / 2)
    nu = neg_pos / sigma[:, None]  # -u
    g = torch.exp((nu * nu).mul_(-0.5))
    g = g / g.sum(dim=1, keepdim=True)
    f = [g]
    if order >= 1:
        f.append(nu * g)
    for n in range(1, order):
        f.append(torch.addcmul(f[n - 1] * -n, nu, f[n]))
    return torch.stack(f, dim=1), None


def _outer(a: Tensor, b: Tensor, order: int) -> Tensor:
    """(S, n_basis, k * k): a_i(y) b_j(x) for the basis orders (i, j), from 1-D tables (S, order + 1, k)."""
    S, n1, k = a.shape
    outer = (a[:, :, None, :, None] * b[:, None, :, None, :]).reshape(S, n1 * n1, k * k)
    return outer.index_select(1, _pair_index(order, a.device))


def _bmm(a: Tensor, b: Tensor) -> Tensor:
    """torch.bmm, but one mm per matrix on CPUs: torch's CPU bmm splits these few small products across threads,
    and on a loaded machine each split waits for a descheduled thread (tens of ms); single mm calls do not."""
    if a.device.type != "cpu":
        return torch.bmm(a, b)
    return torch.stack([a[i] @ b[i] for i in range(a.shape[0])])


def _weight_torch(coeff, log_sigma, kernel_size, order, sigma_min, sigma_max):
    O, I, nb = coeff.shape
    k = kernel_size
    f, _ = _tables(log_sigma, k, order, math.log(sigma_min), math.log(sigma_max), False)
    basis = _outer(f, f, order).to(coeff.dtype)  # (S, nb, k*k)
    parts = [_bmm(coeff[c0:c0 + n * g].reshape(n, g * I, nb), basis[s0:s0 + n]).view(n * g, I, k, k)
             for c0, s0, n, g in _runs(O, log_sigma.shape[0])]
    if not parts:  # C_out = 0: no scale group has a channel
        return coeff.new_zeros(O, I, k, k)
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _weight_backward_torch(grad, coeff, log_sigma, kernel_size, order, sigma_min, sigma_max):
    O, I, nb = coeff.shape
    k = kernel_size
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    f, df = _tables(log_sigma, k, order, lo, hi, True)
    basis = _outer(f, f, order).to(coeff.dtype)
    dbasis = _outer(df, f, order) + _outer(f, df, order)
    g_coeff, g_basis = [], []
    for c0, s0, n, g in _runs(O, log_sigma.shape[0]):
        gw = grad[c0:c0 + n * g].reshape(n, g * I, k * k)
        c = coeff[c0:c0 + n * g].reshape(n, g * I, nb)
        g_coeff.append(_bmm(gw, basis[s0:s0 + n].transpose(1, 2)).view(n * g, I, nb))
        g_basis.append(_bmm(c.transpose(1, 2), gw))
    if not g_coeff:  # C_out = 0: nothing reaches coeff or log_sigma
        return torch.zeros_like(coeff), torch.zeros_like(log_sigma)
    g_coeff = g_coeff[0] if len(g_coeff) == 1 else torch.cat(g_coeff)
    g_basis = g_basis[0] if len(g_basis) == 1 else torch.cat(g_basis)
    g_log_sigma = (g_basis.to(dbasis.dtype) * dbasis).sum(dim=(1, 2))
    return g_coeff, g_log_sigma * ref.clamp_passes(log_sigma, lo, hi)


def _weight_triton(coeff, log_sigma, kernel_size, order, sigma_min, sigma_max):
    from ..triton import scale_space as tri

    return tri.scale_space_weight(coeff, log_sigma, kernel_size, order, sigma_min, sigma_max)


def _weight_backward_triton(grad, coeff, log_sigma, kernel_size, order, sigma_min, sigma_max):
    from ..triton import scale_space as tri

    return tri.scale_space_weight_backward(grad, coeff, log_sigma, kernel_size, order, sigma_min, sigma_max)


_FWD = {"cpu": _weight_torch, "cuda": _weight_torch, "triton": _weight_triton,
        "reference": ref.scale_space_weight}
_BWD = {"cpu": _weight_backward_torch, "cuda": _weight_backward_torch, "triton": _weight_backward_triton,
        "reference": ref.scale_space_weight_backward}
_backend.prefer(OP, "triton")  # H200-verified 2026-12-04 (gpu-runs.md)


def _weight_impl(coeff: Tensor, log_sigma: Tensor, kernel_size: int, order: int, sigma_min: float,
                 sigma_max: float) -> Tensor:
    impl = dispatch(OP, coeff.device, _FWD)
    return impl(coeff.contiguous(), log_sigma.contiguous(), kernel_size, order, sigma_min, sigma_max)


def _weight_backward_impl(grad: Tensor, coeff: Tensor, log_sigma: Tensor, kernel_size: int, order: int,
                          sigma_min: float, sigma_max: float) -> tuple[Tensor, Tensor]:
    impl = dispatch(OP + "_backward", coeff.device, _BWD)
    g_coeff, g_log_sigma = impl(grad.contiguous(), coeff.contiguous(), log_sigma.contiguous(), kernel_size, order,
                                sigma_min, sigma_max)
    return g_coeff, g_log_sigma


_weight_op = torch.library.custom_op("pvf::scale_space_weight", mutates_args=())(_weight_impl)
_weight_backward_op = torch.library.custom_op("pvf::scale_space_weight_backward",
                                              mutates_args=())(_weight_backward_impl)


@_weight_op.register_fake
def _(coeff, log_sigma, kernel_size, order, sigma_min, sigma_max):
    return coeff.new_empty(coeff.shape[0], coeff.shape[1], kernel_size, kernel_size)


@_weight_backward_op.register_fake
def _(grad, coeff, log_sigma, kernel_size, order, sigma_min, sigma_max):
    return torch.empty_like(coeff), torch.empty_like(log_sigma)


def _setup(ctx, inputs, output):
    coeff, log_sigma, kernel_size, order, sigma_min, sigma_max = inputs
    ctx.save_for_backward(coeff, log_sigma)
    ctx.args = (kernel_size, order, sigma_min, sigma_max)


def _backward_with(backward_op):
    def backward(ctx, grad):
        coeff, log_sigma = ctx.saved_tensors
        g_coeff, g_log_sigma = backward_op(grad, coeff, log_sigma, *ctx.args)
        return g_coeff, g_log_sigma, None, None, None, None

    return backward


_weight_op.register_autograd(_backward_with(_weight_backward_op), setup_context=_setup)
_WeightFunction = eager_function("_ScaleSpaceWeightFunction", _weight_impl, _setup,
                                 _backward_with(_weight_backward_impl))


def _number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"scale_space_weight: {name} must be a positive number, got {value!r}")
    return float(value)


def scale_space_weight(coeff: Tensor, log_sigma: Tensor, kernel_size: int, order: int, sigma_min: float = 0.5,
                       sigma_max: float = None) -> Tensor:
    """The Conv2d weight of ``nn.ScaleSpaceConv2d``: learned combinations of scale-normalised Gaussian
    derivatives at learned scales.

    Args:
        coeff: (C_out, C_in, n_basis) float32/float64, n_basis = (order + 1) (order + 2) / 2 coefficients of the
            derivative filters of orders (i along y, j along x), i + j <= order, in the order (0,0), (1,0), (0,1),
            (2,0), (1,1), (0,2), ... (see ``reference.scale_space.gaussian_derivative_basis``).
        log_sigma: (S,) log-scales, same dtype and device; 1 <= S <= C_out. The output channels are split into S
            consecutive groups as evenly as possible (the first C_out % S groups one larger); group s uses
            sigma_s = exp(clamp(log_sigma_s, log(sigma_min), log(sigma_max))).
        kernel_size: k, odd; the filters are sampled at the k x k pixel centres around the middle.
        order: the highest derivative order (>= 0).
        sigma_min, sigma_max: the clamp of the scales in pixels (default sigma_max: (k - 1) / 2).

    Returns (C_out, C_in, k, k) in coeff's dtype, differentiable in coeff and log_sigma (zero gradient for a
    log_sigma the clamp holds, as autograd's clamp gives).
    """
    if not isinstance(coeff, Tensor) or not isinstance(log_sigma, Tensor):
        raise TypeError("scale_space_weight: coeff and log_sigma must be tensors")
    k, order = as_int(kernel_size, "kernel_size"), as_int(order, "order")
    if k < 1 or k % 2 == 0:
        raise ValueError(f"scale_space_weight: kernel_size must be odd and positive, got {k}")
    if order < 0:
        raise ValueError(f"scale_space_weight: order must be >= 0, got {order}")
    nb = (order + 1) * (order + 2) // 2
    if coeff.dim() != 3 or coeff.shape[2] != nb:
        raise ValueError(f"scale_space_weight: coeff must be (C_out, C_in, {nb}) for order {order}, "
                         f"got {tuple(coeff.shape)}")
    if log_sigma.dim() != 1 or not 1 <= log_sigma.shape[0] <= max(coeff.shape[0], 1):
        raise ValueError(f"scale_space_weight: log_sigma must be (S,) with 1 <= S <= C_out = {coeff.shape[0]}, "
                         f"got {tuple(log_sigma.shape)}")
    if coeff.dtype not in (torch.float32, torch.float64) or log_sigma.dtype != coeff.dtype:
        raise TypeError(f"scale_space_weight: coeff and log_sigma must both be float32 or both float64, got "
                        f"{coeff.dtype} and {log_sigma.dtype}")
    if log_sigma.device != coeff.device:
        raise ValueError(f"scale_space_weight: log_sigma is on {log_sigma.device}, coeff on {coeff.device}")
    sigma_min = _number(sigma_min, "sigma_min")
    sigma_max = _number((k - 1) / 2 if sigma_max is None else sigma_max, "sigma_max")
    if sigma_max < sigma_min:
        raise ValueError(f"scale_space_weight: sigma_max {sigma_max} is below sigma_min {sigma_min}")
    args = (coeff, log_sigma, k, order, sigma_min, sigma_max)
    return _WeightFunction.apply(*args) if eager(coeff, log_sigma) else _weight_op(*args)
