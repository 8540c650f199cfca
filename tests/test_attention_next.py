"""The second-generation Triton attention kernels (``triton.flash``, the "triton:next" candidate): head-dim
chunking, the one-tile kernels for L, S <= 16, tile tails, both launch paths (eager autograd.Function and
custom op), no host synchronisation, and the layers' per-shape dispatch between our kernels and SDPA."""
import math

import pytest
import torch
from op_harness import ops_dispatched

from pyvision_fast.ops.attention import kernel_family
from pyvision_fast import _backend, ops, use_backend
from pyvision_fast.reference import attention as ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ATOL = {torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 6e-2}
# The interpreter's tl.dot cannot multiply bfloat16 (NumPy has none); the one-tile kernels use no dot.
TILED_DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])


def _inputs(B, H, L, S, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, n, D, generator=g).to(DEVICE, dtype).requires_grad_() for n in (L, S, S)]


def _check(q, k, v, mask=None, causal=False, scale=None, dropout_p=0.0, keep=None):
    """The candidate against the float64 reference: output and the three gradients."""
    with use_backend("triton"), kernel_family("flash"):
        out = ops.attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale, dropout_p=dropout_p)
    go = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), go)
    q64, k64, v64 = [t.detach().double().requires_grad_() for t in (q, k, v)]
    m64 = mask.double() if mask is not None and mask.dtype != torch.bool else mask
    want = ref.attention(q64, k64, v64, m64, dropout_p, causal, scale, dropout_mask=keep)
    wgrads = torch.autograd.grad(want, (q64, k64, v64), go.double())
    tol = ATOL[q.dtype] * max(1.0, math.sqrt(q.shape[-1] / 32))
    torch.testing.assert_close(out.double(), want, atol=tol, rtol=tol)
    for got, exp in zip(grads, wgrads):
        torch.testing.assert_close(got.double(), exp, atol=4 * tol, rtol=4 * tol)


@pytest.fixture
def d_mode():
    """Sets how head dims that are a sum of two powers of two run (0 autotuned, 1 split, 2 one padded tile)."""
    from pyvision_fast.triton import flash_fwd

    def set_mode(value):
        flash_fwd.D_MODE = value
    yield set_mode
    flash_fwd.D_MODE = 0


@pytest.mark.triton
@pytest.mark.parametrize("D,mode", [(16, 0), (32, 0), (64, 0), (80, 1), (80, 2), (96, 1), (48, 1), (128, 0),
                                    (40, 0)])
def test_head_dims_split_and_padded(D, mode, d_mode):
    d_mode(mode)
    _check(*_inputs(1, 2, 37, 41, D, torch.float32, seed=D), scale=0.2)


@pytest.mark.triton
@pytest.mark.parametrize("L,S", [(17, 17), (33, 47), (47, 33), (64, 80), (81, 16), (16, 81)])
@pytest.mark.parametrize("dtype", TILED_DTYPES, ids=str)
def test_tiles_and_tails(L, S, dtype):
    """Lengths on and off the tile sizes (the interpreter's tiles are 16: full tiles, then 16-wide tails)."""
    _check(*_inputs(2, 2, L, S, 32, dtype, seed=L * 100 + S))


@pytest.mark.triton
@pytest.mark.parametrize("L,S", [(17, 17), (40, 23), (23, 40), (48, 48)])
def test_causal_tiles(L, S):
    _check(*_inputs(1, 2, L, S, 32, torch.float32, seed=L + S), causal=True)


def _mask(kind, B, H, L, S, seed=1):
    g = torch.Generator().manual_seed(seed)
    if kind == "key_padding":
        m = torch.rand(B, 1, 1, S, generator=g) > 0.3
        m[..., 0] = True
        return m.to(DEVICE)
    if kind == "bool_full":
        return (torch.rand(B, H, L, S, generator=g) > 0.5).to(DEVICE)
    if kind == "empty_rows":  # some rows attend nothing: zeros, finite gradients
        m = torch.rand(B, H, L, S, generator=g) > 0.5
        m[:, :, 1] = False
        return m.to(DEVICE)
    if kind == "additive":
        return torch.randn(1, H, L, S, generator=g).to(DEVICE)
    return torch.randn(L, S, generator=g).to(DEVICE)  # additive_2d


@pytest.mark.triton
@pytest.mark.parametrize("kind", ["key_padding", "bool_full", "empty_rows", "additive", "additive_2d"])
@pytest.mark.parametrize("L,S", [(21, 27), (5, 5), (3, 16)])  # tiled, and the one-tile kernels
def test_masks(kind, L, S):
    _check(*_inputs(2, 2, L, S, 32, torch.float32, seed=3), mask=_mask(kind, 2, 2, L, S))


@pytest.mark.triton
@pytest.mark.parametrize("L,S,D", [(5, 5, 64), (1, 1, 64), (16, 16, 48), (3, 16, 20), (16, 2, 80), (7, 9, 128)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_one_tile_kernels(L, S, D, dtype):
    """L, S <= 16: many heads per program (B * H = 15 is not a multiple of the head group)."""
    _check(*_inputs(3, 5, L, S, D, dtype, seed=L * 7 + S), scale=0.3)


@pytest.mark.triton
@pytest.mark.parametrize("L,S", [(5, 5), (4, 9), (9, 4)])
def test_one_tile_causal(L, S):
    _check(*_inputs(2, 3, L, S, 32, torch.float32, seed=L), causal=True)


@pytest.mark.triton
@pytest.mark.parametrize("L,S", [(23, 29), (5, 5)])
def test_dropout_matches_the_mask_of_both_families(L, S):
    """The candidate draws the dropout mask of the current kernels (``attention.dropout_mask``)."""
    from pyvision_fast.triton import attention as tri

    q, k, v = _inputs(2, 2, L, S, 32, torch.float32, seed=4)
    p = 0.25
    torch.manual_seed(11)
    seed = int(torch.randint(0, 2**30, (1,)).item())
    keep = tri.dropout_mask(seed, p, 2, 2, L, S, DEVICE)
    torch.manual_seed(11)
    _check(q, k, v, dropout_p=p, keep=keep)
    with use_backend("triton"):
        for family in ("flash", "previous"):
            torch.manual_seed(11)
            with kernel_family(family):
                out = ops.attention(q, k, v, dropout_p=p)
            torch.testing.assert_close(out, ref.attention(q, k, v, dropout_p=p, dropout_mask=keep), atol=2e-5,
                                       rtol=2e-5)


@pytest.mark.triton
@pytest.mark.parametrize("family", ["current", "next"])
@pytest.mark.parametrize("L", [20, 5])
def test_views_that_are_not_dense(family, L):
    """Heads of a (B, N, 2, H, D) buffer: q, k, v and their gradients are not dense; the kernels read the views
    in place and write the gradients into dense buffers (each with its own strides)."""
    g = torch.Generator().manual_seed(6)
    q, k, v = [torch.randn(2, L, 2, 3, 32, generator=g)[:, :, 0].permute(0, 2, 1, 3).to(DEVICE).requires_grad_()
               for _ in range(3)]
    with use_backend("triton"), kernel_family("flash" if family == "next" else "previous"):
        out = ops.attention(q, k, v)
    grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    want = ref.attention(q, k, v)
    wgrads = torch.autograd.grad(want, (q, k, v), torch.ones_like(want))
    for a, b in zip((out, *grads), (want, *wgrads)):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5)


def _both_paths(family, L):
    """ops.attention's eager call (a plain autograd.Function) and the registered custom op on the same inputs."""
    from pyvision_fast.triton import flash  # noqa: F401 - registers pvf::flash_next_fwd

    q, k, v = _inputs(1, 2, L, L + 3, 32, torch.float32, seed=9)
    op = torch.ops.pvf.flash_next_fwd if family == "next" else torch.ops.pvf.flash_attention_fwd

    def eager():
        with use_backend("triton"), kernel_family("flash" if family == "next" else "previous"):
            return ops.attention(q, k, v, scale=0.25)
    return (q, k, v), eager, lambda: op(q, k, v, None, False, 0.25, 0.0, 0)[0]


@pytest.mark.triton
@pytest.mark.parametrize("family", ["current", "next"])
@pytest.mark.parametrize("L", [20, 5])
def test_eager_path_equals_the_custom_op(family, L):
    inputs, eager, custom = _both_paths(family, L)
    grad = torch.randn(1, 2, L, 32, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    results = []
    for call, name in ((eager, "_FlashAttention_"), (custom, "pvf_flash")):
        out = call()
        assert name in type(out.grad_fn).__name__
        results.append((out, *torch.autograd.grad(out, inputs, grad)))
    for a, b in zip(*results):  # the same kernels on the same inputs: bit-identical
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.triton
@pytest.mark.parametrize("family", ["current", "next"])
def test_dispatch_modes_see_the_custom_op(family):
    _, eager, _ = _both_paths(family, 20)
    seen = ops_dispatched(eager)
    assert ("pvf.flash_next_fwd.default" if family == "next" else "pvf.flash_attention_fwd.default") in seen


def test_flash_family_is_the_default_and_the_previous_one_stays_reachable():
    import importlib

    att = importlib.import_module("pyvision_fast.ops.attention")
    assert "attention" not in _backend.candidates() and att.current_family() == "flash"
    with kernel_family("previous"):
        assert att.current_family() == "previous"
    assert att.current_family() == "flash"
    with pytest.raises(ValueError, match="kernel_family"):
        with kernel_family("fastest"):
            pass


# ------------------------------------------------------------------------------------------ GPU-only checks

@pytest.mark.cuda
@pytest.mark.parametrize("family", ["current", "next"])
@pytest.mark.parametrize("L,dropout", [(197, 0.0), (197, 0.1), (5, 0.0), (5, 0.1)])
def test_steady_state_calls_do_not_synchronise(family, L, dropout):
    q, k, v = [torch.randn(4, 6, L, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3)]
    with use_backend("triton"), kernel_family("flash" if family == "next" else "previous"):
        for _ in range(2):  # compile and autotune first
            ops.attention(q, k, v, dropout_p=dropout).sum().backward()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = ops.attention(q, k, v, dropout_p=dropout)
            out.backward(torch.ones_like(out))
        finally:
            torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()


@pytest.mark.cuda
@pytest.mark.parametrize("L,S,D", [(197, 197, 64), (257, 257, 80), (577, 577, 64), (393, 393, 64), (130, 70, 128)])
def test_candidate_bfloat16_against_float32_math(L, S, D):
    q, k, v = _inputs(2, 4, L, S, D, torch.bfloat16, seed=L)
    for mode in (1, 2):  # split and padded head dims where D allows both
        from pyvision_fast.triton import flash_fwd

        flash_fwd.D_MODE = mode
        try:
            _check(q, k, v)
        finally:
            flash_fwd.D_MODE = 0


@pytest.mark.cuda
def test_candidate_paver_temporal_head_count():
    """PAVER's temporal attention: B * H = 301824 heads of 5 frames (64-bit offsets, a 1-D grid)."""
    torch.manual_seed(0)
    q, k, v = [torch.randn(25152, 12, 5, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3)]
    with use_backend("triton"), kernel_family("flash"):
        out = ops.attention(q, k, v)
    grads = torch.autograd.grad(out, [q, k, v], torch.ones_like(out))
    sl = slice(-300, None)  # the last heads: the highest offsets
    q32, k32, v32 = [t.detach()[sl].float().requires_grad_() for t in (q, k, v)]
    want = ref.attention(q32, k32, v32)
    wgrads = torch.autograd.grad(want, [q32, k32, v32], torch.ones_like(want))
    torch.testing.assert_close(out[sl].float(), want, atol=2e-2, rtol=2e-2)
    for a, b in zip(grads, wgrads):
        torch.testing.assert_close(a[sl].float(), b, atol=5e-2, rtol=5e-2)
