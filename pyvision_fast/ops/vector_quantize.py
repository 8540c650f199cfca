"""Vector quantisation: the nearest codebook row of every vector (taming-transformers' ``VectorQuantizer``,
the quantiser of VQ-VAE / VQGAN), as one fused distance + argmin kernel that never forms the (N, K) distance
matrix.

``vector_quantize(z, codebook)`` -> ``(z_q, indices)``:

* Layout: ``z`` holds channels-last vectors ``(..., D)`` (a VQGAN flattens its (B, C, H, W) latents to (B*H*W,
  C) first; any leading shape is kept); ``codebook`` is (K, D), K >= 1. ``indices`` has z's shape without its
  last dimension, int64; ``z_q`` has z's shape and holds exact copies of codebook rows.
* Distance: the squared Euclidean distance summed from the differences, ``sum_d (z_d - e_d)^2``, accumulated
  in the input dtype (float32 for float16/bfloat16 on GPUs). Taming computes ``||z||^2 + ||e||^2 - 2 z.e``
  instead, which loses the small differences between nearby codes when ||z|| is large (float32 cancellation);
  the direct form has no cancellation. The two agree except where two codes are nearly equidistant, where the
  direct form is the more accurate one.
* Ties: equal distances resolve to the lowest index (torch.argmin's rule). A NaN distance is never selected (a
  row whose distances are all NaN gets index 0; torch.argmin would return the first NaN's index).
* Gradients: ``z_q`` is piecewise constant in ``z`` (its gradient there is zero: returned as None); its
  gradient with respect to ``codebook`` is the scatter-add of ``grad_z_q`` into the chosen rows
  (``index_add``), so the op serves VQ-VAE training: the codebook loss ``||sg[z] - z_q||^2`` reaches the
  codebook through it. With ``straight_through=True`` the first output is ``z + (z_q - z).detach()`` (taming's
  straight-through estimator): its value is z_q up to rounding, its gradient reaches ``z`` unchanged and
  nothing reaches the codebook through it (compute the codebook / commitment losses from a plain call, or from
  ``codebook[indices]``).

Backends: ``cpu`` (C++, OpenMP over vectors, the codebook scanned in L1-sized blocks with SIMD argmins),
``reference`` (plain PyTorch: taming's formula with a matmul, in row chunks), and on GPUs the CUDA kernel as
the candidate ``"cuda:next"`` (opt-in through ``PVF_CANDIDATES=vector_quantize`` or ``use_candidates`` until a
GPU run shows it correct and faster); until then GPUs run the chunked PyTorch computation (``"cuda"`` entry).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _backend, _ext
from ..reference import vector_quantize as ref
from ._registry import dispatch, eager, eager_function


def _outputs(z: Tensor) -> tuple[Tensor, Tensor]:
    z_q = torch.empty_like(z, memory_format=torch.contiguous_format)
    indices = torch.empty(z.shape[:-1] if z.dim() else (), dtype=torch.int64, device=z.device)
    return z_q, indices


def _vq_cpu(z: Tensor, codebook: Tensor) -> tuple[Tensor, Tensor]:
    z_q, indices = _outputs(z)
    mod = _ext.cpu_module()
    K, D = _ext.dims(codebook, 2)
    # the workspace is sized from the codebook as given; a wrong one gets an empty workspace and the C++
    # checks report what is wrong with the codebook itself
    ws = torch.empty(mod.vector_quantize_workspace(K, D) if K >= 1 and D >= 1 else 0, dtype=z.dtype)
    mod.vector_quantize(_ext.arg(z), _ext.arg(codebook), _ext.arg(z_q), _ext.arg(indices), _ext.arg(ws))
    return z_q, indices


def _vq_cuda(z: Tensor, codebook: Tensor) -> tuple[Tensor, Tensor]:
    z_q, indices = _outputs(z)
    _ext.cuda_module().vector_quantize(_ext.arg(z), _ext.arg(codebook), _ext.arg(z_q), _ext.arg(indices),
                                       _ext.stream(z.device))
    return z_q, indices


# "cuda" is the plain-PyTorch computation (what GPUs run until the kernel is verified), "cuda:next" the
# kernel.
_IMPLS = {"cpu": _vq_cpu, "cuda": ref.vector_quantize, "cuda:next": _vq_cuda,
          "reference": ref.vector_quantize}
_backend.register_candidate("vector_quantize", "cuda:next")


def _vq_impl(z: Tensor, codebook: Tensor) -> tuple[Tensor, Tensor]:
    impl = dispatch("vector_quantize", z.device, _IMPLS)
    if impl is ref.vector_quantize:  # the compiled backends check their arguments in C++, the reference not
        _check_reference_args(z, codebook)
    return impl(z.contiguous(), codebook.contiguous())


def _check_reference_args(z: Tensor, codebook: Tensor) -> None:
    """The C++ checks, for the plain-PyTorch paths (same errors, same messages)."""
    if z.dim() < 1:
        raise ValueError(f"vector_quantize: argument 'z' must have at least 1 dimension (..., D), got shape "
                         f"{tuple(z.shape)}")
    if codebook.dim() != 2:
        raise ValueError(f"vector_quantize: argument 'codebook' must have 2 dimensions (K, D), got shape "
                         f"{tuple(codebook.shape)}")
    if not z.is_floating_point():
        raise TypeError(f"vector_quantize: argument 'z' must be a floating-point tensor, got {z.dtype}")
    if z.dtype != codebook.dtype:
        raise TypeError(f"vector_quantize: arguments 'z' ({z.dtype}) and 'codebook' ({codebook.dtype}) must "
                        f"have the same dtype")
    if z.device != codebook.device:
        raise TypeError(f"vector_quantize: argument 'codebook' is on {codebook.device} but 'z' is on "
                        f"{z.device}")
    if codebook.shape[1] != z.shape[-1]:
        raise ValueError(f"vector_quantize: the last dimension of 'z' (D = {z.shape[-1]}) must equal the "
                         f"code size of 'codebook' ({codebook.shape[1]})")
    if z.shape[-1] < 1:
        raise ValueError(f"vector_quantize: the vectors of argument 'z' must have at least one channel (D >= 1), "
                         f"got shape {tuple(z.shape)}")
    if codebook.shape[0] < 1:
        raise ValueError("vector_quantize: argument 'codebook' is empty (K = 0): there is no code to choose")


_vq_op = torch.library.custom_op("pvf::vector_quantize", mutates_args=())(_vq_impl)


@_vq_op.register_fake
def _(z, codebook):
    z_q = torch.empty_like(z, memory_format=torch.contiguous_format)
    return z_q, z.new_empty(z.shape[:-1], dtype=torch.int64)


def _vq_setup(ctx, inputs, output):
    _, codebook = inputs
    ctx.save_for_backward(output[1])
    ctx.codebook_shape = codebook.shape


def _vq_backward(ctx, grad_z_q: Optional[Tensor], grad_indices):
    """z_q = codebook[indices]: no gradient to z, the scatter-add of grad_z_q to the chosen codebook rows."""
    (indices,) = ctx.saved_tensors
    grad_codebook = None
    if ctx.needs_input_grad[1] and grad_z_q is not None:
        K, D = ctx.codebook_shape
        grad_codebook = grad_z_q.new_zeros((K, D)).index_add_(0, indices.reshape(-1), grad_z_q.reshape(-1, D))
    return None, grad_codebook


_vq_op.register_autograd(_vq_backward, setup_context=_vq_setup)
_VQFunction = eager_function("_VQFunction", _vq_impl, _vq_setup, _vq_backward)


def vector_quantize(z: Tensor, codebook: Tensor, straight_through: bool = False) -> tuple[Tensor, Tensor]:
    """Nearest codebook rows of the channels-last vectors ``z`` (see the module docstring).

    Args:
        z: (..., D) float tensor (float32/float64; float16/bfloat16 on GPUs), any strides.
        codebook: (K, D) tensor of z's dtype and device, K >= 1.
        straight_through: return ``z + (z_q - z).detach()`` as the first output (gradient to z unchanged).

    Returns: (z_q (..., D) = codebook[indices], indices (...) int64): indices[i] = argmin_k sum_d (z[i, d] -
    e[k, d])^2, ties to the lowest index.
    """
    if not isinstance(z, Tensor) or not isinstance(codebook, Tensor):
        raise TypeError(f"vector_quantize: z and codebook must be tensors, got {type(z).__name__} and "
                        f"{type(codebook).__name__}")
    if not isinstance(straight_through, bool):
        raise TypeError(f"vector_quantize: straight_through must be a bool, got "
                        f"{type(straight_through).__name__}")
    if eager(z, codebook):
        z_q, indices = _VQFunction.apply(z, codebook)
    else:
        z_q, indices = _vq_op(z, codebook)
    if straight_through:
        z_q = z + (z_q - z).detach()
    return z_q, indices
