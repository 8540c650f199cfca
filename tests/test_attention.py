"""ops.attention: the Triton kernels (interpreter on CPU, native on GPU) and the CPU path against a float64
reference and against F.scaled_dot_product_attention. Every Triton test runs both kernel families: "current"
(the previous kernels, ``kernel_family("previous")``) and "next" (the default flash family)."""
import math

import pytest
import torch
import torch.nn.functional as F

from op_harness import BadInput, run_bad_input

from pyvision_fast.nn import FusedAttention
from pyvision_fast.ops.attention import kernel_family
from pyvision_fast import ops, use_backend
from pyvision_fast.reference import attention as ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Tolerances against the float64 reference, per input dtype.
ATOL = {torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 6e-2}
# Under the interpreter bfloat16 is not available (NumPy has no bfloat16).
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])


@pytest.fixture(params=["current", "next"])
def family(request):
    """The Triton kernel family a test runs: the previous kernels ("current") or the default flash family."""
    with kernel_family("flash" if request.param == "next" else "previous"):
        yield request.param


def _inputs(B, H, L, S, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, n, D, generator=g).to(DEVICE, dtype).requires_grad_() for n in (L, S, S)]


def _mask(kind, B, H, L, S):
    g = torch.Generator().manual_seed(1)
    if kind == "key_padding":  # (B, 1, 1, S) bool, every row keeps at least one key
        m = torch.rand(B, 1, 1, S, generator=g) > 0.3
        m[..., 0] = True
        return m.to(DEVICE)
    if kind == "bool_full":
        return (torch.rand(B, H, L, S, generator=g) > 0.5).to(DEVICE)
    if kind == "additive":
        return torch.randn(1, H, L, S, generator=g).to(DEVICE)
    if kind == "additive_2d":
        return torch.randn(L, S, generator=g).to(DEVICE)
    return None


def _check_against_reference(q, k, v, mask=None, causal=False, scale=None, dropout_p=0.0, keep=None):
    dtype = q.dtype
    with use_backend("triton"):
        out = ops.attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale, dropout_p=dropout_p)
    go = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), go)
    q64, k64, v64 = [t.detach().double().requires_grad_() for t in (q, k, v)]
    m64 = mask.double() if mask is not None and mask.dtype != torch.bool else mask
    expected = ref.attention(q64, k64, v64, m64, dropout_p, causal, scale, dropout_mask=keep)
    rgrads = torch.autograd.grad(expected, (q64, k64, v64), go.double())
    tol = ATOL[dtype] * max(1.0, math.sqrt(q.shape[-1] / 32))
    torch.testing.assert_close(out.double(), expected, atol=tol, rtol=tol)
    for got, want in zip(grads, rgrads):
        torch.testing.assert_close(got.double(), want, atol=4 * tol, rtol=4 * tol)


@pytest.mark.triton
@pytest.mark.parametrize("D", [32, 64, 80, 96, 128])
def test_head_dims_odd_lengths(D, family):
    _check_against_reference(*_inputs(1, 2, 37, 37, D, torch.float32))


@pytest.mark.triton
@pytest.mark.parametrize("L,S", [(1, 1), (50, 50), (19, 45), (45, 19), (33, 1)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_lengths_and_dtypes(L, S, dtype, family):
    _check_against_reference(*_inputs(2, 2, L, S, 32, dtype, seed=L * 100 + S))


@pytest.mark.triton
@pytest.mark.parametrize("kind", ["key_padding", "bool_full", "additive", "additive_2d"])
def test_masks(kind, family):
    q, k, v = _inputs(2, 2, 21, 27, 32, torch.float32, seed=3)
    _check_against_reference(q, k, v, mask=_mask(kind, 2, 2, 21, 27))


@pytest.mark.triton
@pytest.mark.parametrize("L,S", [(24, 24), (17, 40), (40, 17)])
def test_causal_and_scale(L, S, family):
    _check_against_reference(*_inputs(1, 2, L, S, 64, torch.float32, seed=L + S), causal=True, scale=0.3)


@pytest.mark.triton
def test_fully_masked_rows_give_zeros_like_sdpa(family):
    q, k, v = _inputs(1, 1, 5, 6, 32, torch.float32)
    mask = torch.ones(5, 6, dtype=torch.bool, device=DEVICE)
    mask[2] = False
    with use_backend("triton"):
        out = ops.attention(q, k, v, attn_mask=mask)
    assert (out[0, 0, 2] == 0).all()
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=2e-5, rtol=2e-5)
    out.sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()


@pytest.mark.triton
def test_dropout_is_reproducible_and_matches_its_mask(family):
    from pyvision_fast.triton import attention as tri

    q, k, v = _inputs(2, 2, 23, 29, 32, torch.float32, seed=4)
    p = 0.25
    torch.manual_seed(11)
    seed = int(torch.randint(0, 2**30, (1,)).item())
    keep = tri.dropout_mask(seed, p, 2, 2, 23, 29, DEVICE)
    assert 0.6 < keep.float().mean() < 0.9
    torch.manual_seed(11)
    _check_against_reference(q, k, v, dropout_p=p, keep=keep)
    with use_backend("triton"):
        torch.manual_seed(11)
        a = ops.attention(q, k, v, dropout_p=p)
        torch.manual_seed(11)
        b = ops.attention(q, k, v, dropout_p=p)
        c = ops.attention(q, k, v, dropout_p=p)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.triton
def test_non_contiguous_inputs(family):
    """(B, L, H, D) projections viewed as (B, H, L, D) are used in place, with their strides."""
    g = torch.Generator().manual_seed(5)
    q, k, v = [torch.randn(2, 30, 4, 32, generator=g).to(DEVICE).transpose(1, 2).requires_grad_() for _ in range(3)]
    assert not q.is_contiguous()
    _check_against_reference(q, k, v)


def test_cpu_path_is_sdpa():
    q, k, v = [torch.randn(2, 3, 17, 40) for _ in range(3)]
    mask = torch.rand(2, 1, 1, 17) > 0.2
    mask[..., 0] = True
    torch.testing.assert_close(ops.attention(q, k, v, attn_mask=mask),
                               F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=0, rtol=0)


def test_reference_matches_sdpa():
    q, k, v = [torch.randn(2, 3, 11, 16, dtype=torch.float64) for _ in range(3)]
    for causal in (False, True):
        torch.testing.assert_close(ref.attention(q, k, v, is_causal=causal),
                                   F.scaled_dot_product_attention(q, k, v, is_causal=causal))


def test_gradcheck_cpu_path():
    q, k, v = [torch.randn(1, 2, 5, 8, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    assert torch.autograd.gradcheck(lambda a, b, c: ops.attention(a, b, c, is_causal=True), (q, k, v))


def _bad_cases():
    q = torch.randn(1, 2, 5, 8)
    return [
        BadInput("rank", lambda: ops.attention(q[0], q, q), ValueError, r"must be \(B, H, L, D\)"),
        BadInput("dtype mix", lambda: ops.attention(q, q.double(), q), TypeError, "share a dtype"),
        BadInput("int", lambda: ops.attention(q.long(), q.long(), q.long()), TypeError, "floating-point"),
        BadInput("head dim", lambda: ops.attention(q, torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)), ValueError,
                 "head dims differ"),
        BadInput("kv length", lambda: ops.attention(q, q, torch.randn(1, 2, 6, 8)), ValueError, "mismatch"),
        BadInput("mask shape", lambda: ops.attention(q, q, q, attn_mask=torch.ones(3, 5, dtype=torch.bool)),
                 ValueError, "does not broadcast"),
        BadInput("mask dtype", lambda: ops.attention(q, q, q, attn_mask=torch.ones(5, 5, dtype=torch.long)),
                 TypeError, "bool or floating point"),
        BadInput("dropout", lambda: ops.attention(q, q, q, dropout_p=1.0), ValueError, "dropout_p"),
        BadInput("head dim 0", lambda: ops.attention(q[..., :0], q[..., :0], q), ValueError, "head dim D >= 1"),
        BadInput("batch", lambda: ops.attention(q, torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)), ValueError,
                 "mismatch"),
        BadInput("heads", lambda: ops.attention(q, torch.randn(1, 3, 5, 8), torch.randn(1, 3, 5, 8)), ValueError,
                 "mismatch"),
        BadInput("mask rank 5", lambda: ops.attention(q, q, q, attn_mask=torch.zeros(3, 1, 1, 5, 5)), ValueError,
                 "does not broadcast"),
        BadInput("mask larger batch", lambda: ops.attention(q, q, q, attn_mask=torch.zeros(2, 1, 5, 5)), ValueError,
                 "does not broadcast"),
        BadInput("mask float dtype", lambda: ops.attention(q, q, q, attn_mask=torch.zeros(5, 5, dtype=torch.float64)),
                 TypeError, "attn_mask must have q's dtype"),
        BadInput("mask and causal", lambda: ops.attention(q, q, q, attn_mask=torch.ones(5, 5, dtype=torch.bool),
                                                          is_causal=True), ValueError, "attn_mask or is_causal"),
        BadInput("scale type", lambda: ops.attention(q, q, q, scale="1"), TypeError, "scale must be a number"),
        BadInput("dropout type", lambda: ops.attention(q, q, q, dropout_p="0.1"), TypeError,
                 "dropout_p must be a number"),
        BadInput("module channels", lambda: FusedAttention(64, num_heads=4)(torch.randn(2, 5, 32)), ValueError,
                 r"expected x of shape \(B, N, 64\), got \(2, 5, 32\)"),
        BadInput("module rank", lambda: FusedAttention(64, num_heads=4)(torch.randn(5, 64)), ValueError,
                 r"\(B, N, 64\), got \(5, 64\)"),
    ]


@pytest.mark.parametrize("backend", [None, "reference"])
@pytest.mark.parametrize("case", _bad_cases(), ids=str)
def test_bad_inputs(case, backend):
    with use_backend(backend):  # checked before any backend runs (the automatic CPU choice is SDPA)
        run_bad_input(case)


def test_onnx_export_with_key_padding_mask(tmp_path):
    from op_harness import check_onnx
    from pyvision_fast.nn import FusedAttention

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = FusedAttention(64, num_heads=4)

        def forward(self, x, keep):  # keep: (B, N) bool, True = token present
            return self.attn(x, attn_mask=keep[:, None, None, :])

    torch.manual_seed(0)
    keep = torch.ones(2, 13, dtype=torch.bool)
    keep[1, 9:] = False
    report = check_onnx(Block().eval(), (torch.randn(2, 13, 64), keep), tmp_path)
    assert {"MatMul", "Softmax"} <= set(report.op_types)


@pytest.mark.triton
def test_export_under_forced_triton_backend_records_sdpa(tmp_path):
    from pyvision_fast.export import to_onnx
    from pyvision_fast.nn import FusedAttention

    with use_backend("triton"):
        report = to_onnx(FusedAttention(32, num_heads=2).eval(), (torch.randn(2, 9, 32),), tmp_path / "a.onnx")
    assert report.max_abs_diff < 1e-4 and report.tensorrt_compatible


@pytest.mark.cuda
@pytest.mark.parametrize("causal", [True, False])
def test_triton_op_opcheck_and_compile_on_gpu(family, causal):
    from pyvision_fast.triton import flash  # noqa: F401 - registers pvf::flash_next_fwd

    q, k, v = [torch.randn(2, 3, 50, 64, device="cuda", dtype=torch.float16, requires_grad=True) for _ in range(3)]
    op = torch.ops.pvf.flash_next_fwd if family == "next" else torch.ops.pvf.flash_attention_fwd
    results = torch.library.opcheck(op.default, (q, k, v, None, causal, 0.125, 0.0, 0))
    assert all(v == "SUCCESS" for v in results.values()), results
    torch._dynamo.reset()
    with use_backend("triton"):
        compiled = torch.compile(lambda a, b, c: ops.attention(a, b, c, is_causal=causal), fullgraph=True)
        torch.testing.assert_close(compiled(q, k, v), ops.attention(q, k, v, is_causal=causal), atol=2e-3,
                                   rtol=2e-3)
        compiled(q, k, v).sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


@pytest.mark.cuda
def test_gpu_default_backend_is_triton():
    import importlib

    from pyvision_fast import _backend

    att = importlib.import_module("pyvision_fast.ops.attention")  # the module, not the function ops.attention
    name, _ = _backend.select("attention", torch.device("cuda"), att._IMPLS)
    assert name == "triton" and att.current_family() == "flash"


@pytest.mark.cuda
def test_more_heads_than_a_grid_dimension_holds(family):
    """B * H = 72000 > 65535 (PAVER's temporal attention over 5 frames has 301824): forward and backward on the
    Triton path against the math of SDPA in float32."""
    torch.manual_seed(0)
    q, k, v = [torch.randn(6000, 12, 5, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3)]
    with use_backend("triton"):
        out = ops.attention(q, k, v)
    grads = torch.autograd.grad(out, [q, k, v], torch.ones_like(out))
    q32, k32, v32 = [t.detach().float().requires_grad_() for t in (q, k, v)]
    want = ref.attention(q32, k32, v32)
    wgrads = torch.autograd.grad(want, [q32, k32, v32], torch.ones_like(want))
    torch.testing.assert_close(out.float(), want, atol=2e-2, rtol=2e-2)
    for a, b in zip(grads, wgrads):
        torch.testing.assert_close(a.float(), b, atol=5e-2, rtol=5e-2)
