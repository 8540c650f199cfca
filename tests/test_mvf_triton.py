"""The Triton candidate of multi-view fusion (pyvision_fast.triton.mvf) against the official formulation in
float64 on the CPU: on CPU tensors under TRITON_INTERPRET=1, and on the GPU both the current CUDA path and the
candidate (so one GPU run verifies both)."""
import contextlib

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from op_harness import BadInput, assert_close, check_compiled, float_dtypes, gradcheck, opcheck, run_bad_input
from pyvision_fast import _backend, ops, use_backend, use_candidates, use_previous
from pyvision_fast import triton as pvf_triton
from pyvision_fast.nn import MVF
from pyvision_fast.reference import mvf as ref

OPS = ["multi_view_fusion", "multi_view_fusion_batchnorm"]
ON_GPU = torch.cuda.is_available()
EXAMPLES = 20 if ON_GPU else 5  # the interpreter runs each program in Python

PATHS = [pytest.param("cpu", "candidate", id="cpu-triton", marks=pytest.mark.triton),
         pytest.param("cuda", "current", id="cuda-current", marks=pytest.mark.cuda),
         pytest.param("cuda", "candidate", id="cuda-candidate", marks=[pytest.mark.cuda, pytest.mark.triton])]


@contextlib.contextmanager
def on_path(device: str, path: str):
    """Run the block on the current implementation or the Triton candidate, and check that the candidate (not
    a fallback) is what runs."""
    if path == "current":  # the CUDA C++ kernels the Triton ones replaced (still their fallback)
        with use_previous():
            yield
        return
    if not pvf_triton.available(torch.device(device)):
        pytest.skip("Triton cannot run on this device here (CPU tensors need TRITON_INTERPRET=1)")
    with use_backend("triton") if device == "cpu" else use_candidates(OPS):
        from pyvision_fast.ops import mvf as mvf_ops

        for op, table in (("multi_view_fusion", mvf_ops._FWD), ("multi_view_fusion_batchnorm", mvf_ops._BN_FWD),
                          ("multi_view_fusion_batchnorm_backward", mvf_ops._BN_BWD)):
            assert _backend.select(op, torch.device(device), table)[0] == "triton"
        yield


def _cpu64(t, grad=True):
    t = t.detach().cpu().double()
    return t.requires_grad_() if grad else t


def _volume(g, shape, frames, device, dtype):
    """(N, C, T, H, W) values, contiguous or in the (N*T, C, H, W) frame layout."""
    N, C, T, H, W = shape
    x = torch.randn((N, T, C, H, W) if frames else shape, generator=g, dtype=torch.float64)
    return (x.transpose(1, 2) if frames else x).to(device, dtype).requires_grad_()


def _params(g, Fc, device, dtype, n):
    return [torch.randn(Fc, 3, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_() for _ in range(n)]


def _check_batchnorm(x, w, gamma, beta, eps, hs, Fc, g):
    """Output, statistics and all six gradients against the float64 CPU reference."""
    dtype = x.dtype
    out, mean, var = ops.multi_view_fusion_batchnorm(x, *w, gamma, beta, eps, hs, Fc)
    inputs64 = [_cpu64(t) for t in (x, *w, gamma, beta)]
    expected, emean, evar = ref.multi_view_fusion_batchnorm(*inputs64, eps, hs, Fc)
    loose = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {}
    assert out.shape == x.shape and mean.shape == var.shape == (Fc,)
    assert_close(out, expected, dtype, **loose)
    assert_close(mean, emean, dtype, **loose)
    assert_close(var, evar, dtype, **loose)
    go = torch.randn(out.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad(out, [x, *w, gamma, beta], go.to(x.device, dtype))
    rgrads = torch.autograd.grad(expected, inputs64, go, allow_unused=True)
    rgrads = [torch.zeros_like(t) if r is None else r for r, t in zip(rgrads, inputs64)]
    loose = {"atol": 1e-3, "rtol": 1e-3} if dtype == torch.float32 else {}
    for a, b in zip(grads, rgrads):
        assert_close(a, b, dtype, **loose)


@pytest.mark.parametrize("device,path", PATHS)
@settings(max_examples=EXAMPLES, deadline=None)
@given(N=st.integers(1, 2), C=st.integers(1, 6), T=st.integers(1, 4), H=st.integers(1, 6), W=st.integers(1, 9),
       frames=st.booleans(), hs=st.booleans(), seed=st.integers(0, 2**16))
def test_batchnorm_matches_reference(device, path, N, C, T, H, W, frames, hs, seed):
    assume(N * T * H * W > 1)
    g = torch.Generator().manual_seed(seed)
    Fc = int(torch.randint(0, C + 1, (1,), generator=g))
    dtypes = float_dtypes(device) + ([torch.float16] if device == "cpu" else [])  # NumPy has float16
    with on_path(device, path):
        for dtype in dtypes:
            x = _volume(g, (N, C, T, H, W), frames, device, dtype)
            w = _params(g, Fc, device, dtype, 3)
            gamma = (torch.rand(Fc, generator=g, dtype=torch.float64) + 0.5).to(device, dtype).requires_grad_()
            beta = torch.randn(Fc, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_()
            _check_batchnorm(x, w, gamma, beta, 1e-3, hs, Fc, g)


@pytest.mark.parametrize("device,path", PATHS)
@settings(max_examples=EXAMPLES, deadline=None)
@given(N=st.integers(1, 2), C=st.integers(1, 6), T=st.integers(1, 5), H=st.integers(1, 6), W=st.integers(1, 7),
       frames=st.booleans(), epilogue=st.sampled_from(["none", "bn", "bn+hs", "hs"]), seed=st.integers(0, 2**16))
def test_views_match_reference(device, path, N, C, T, H, W, frames, epilogue, seed):
    g = torch.Generator().manual_seed(seed)
    Fc = int(torch.randint(0, C + 1, (1,), generator=g))
    with on_path(device, path):
        for dtype in float_dtypes(device):
            x = _volume(g, (N, C, T, H, W), frames, device, dtype)
            w = _params(g, Fc, device, dtype, 3)
            scale = shift = None
            if "bn" in epilogue:
                scale = (torch.rand(Fc, generator=g, dtype=torch.float64) + 0.5).to(device, dtype)
                shift = torch.randn(Fc, generator=g, dtype=torch.float64).to(device, dtype)
            hs = "hs" in epilogue
            out = ops.multi_view_fusion(x, *w, scale, shift, hardswish=hs, fused_channels=Fc)
            x64, w64 = _cpu64(x), [_cpu64(t) for t in w]
            expected = ref.multi_view_fusion(x64, *w64, None if scale is None else _cpu64(scale, False),
                                             None if shift is None else _cpu64(shift, False), hs, Fc)
            loose = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {}
            assert_close(out, expected, dtype, **loose)
            go = torch.randn(out.shape, generator=g, dtype=torch.float64)
            grads = torch.autograd.grad(out, [x, *w], go.to(device, dtype))
            rgrads = torch.autograd.grad(expected, [x64, *w64], go, allow_unused=True)
            for a, b, t in zip(grads, rgrads, [x64, *w64]):
                assert_close(a, torch.zeros_like(t) if b is None else b, dtype, **loose)


@pytest.mark.parametrize("device,path", PATHS)
def test_gradcheck(device, path):
    g = torch.Generator().manual_seed(1)
    x = _volume(g, (2, 4, 3, 3, 4), True, device, torch.float64)
    w = _params(g, 2, device, torch.float64, 3)
    gamma = (torch.rand(2, generator=g, dtype=torch.float64) + 0.5).to(device).requires_grad_()
    beta = torch.randn(2, generator=g, dtype=torch.float64).to(device).requires_grad_()
    scale = (torch.rand(2, generator=g, dtype=torch.float64) + 0.5).to(device)
    fast = {"fast_mode": True} if device == "cpu" else {}  # the interpreter: a few directions, not every input
    with on_path(device, path):
        for hs in (True, False):
            gradcheck(lambda *a: ops.multi_view_fusion_batchnorm(*a, 1e-5, hs, 2)[0], (x, *w, gamma, beta), **fast)
        gradcheck(lambda *a: ops.multi_view_fusion(*a, scale, beta.detach(), True, 2), (x, *w), **fast)


@pytest.mark.parametrize("device,path", PATHS)
@pytest.mark.parametrize("layout", ["rows_not_packed", "permuted", "contiguous", "frames"])
def test_layouts(device, path, layout):
    """The pass-through copy as rows (frames, contiguous) and through the caller's copy (rows of x that are not
    packed, a permuted layout), values and gradients."""
    g = torch.Generator().manual_seed(2)
    shape = (2, 5, 3, 4, 6)
    base = torch.randn(2, 5, 3, 4, 9, generator=g, dtype=torch.float64)
    if layout == "rows_not_packed":
        x = base[..., 1:7]
    elif layout == "permuted":  # (H, N, C, T, W) in memory
        x = torch.randn(4, 2, 5, 3, 6, generator=g, dtype=torch.float64).permute(1, 2, 3, 0, 4)
    else:
        x = _volume(g, shape, layout == "frames", "cpu", torch.float64).detach()
    x = x.to(device).requires_grad_()
    w = _params(g, 3, device, torch.float64, 3)
    gamma = (torch.rand(3, generator=g, dtype=torch.float64) + 0.5).to(device).requires_grad_()
    beta = torch.randn(3, generator=g, dtype=torch.float64).to(device).requires_grad_()
    with on_path(device, path):
        _check_batchnorm(x, w, gamma, beta, 1e-5, True, 3, g)
        out = ops.multi_view_fusion(x, *w, gamma.detach(), beta.detach(), True, 3)
        c = [_cpu64(t) for t in (x, *w)]
        want = ref.multi_view_fusion(*c, _cpu64(gamma, False), _cpu64(beta, False), True, 3)
        assert_close(out, want)
        go = torch.randn(shape, generator=g, dtype=torch.float64)
        for a, b in zip(torch.autograd.grad(out, [x, *w], go.to(device)), torch.autograd.grad(want, c, go)):
            assert_close(a, b)
        # no fused channel: nothing for the kernel to do when the caller copies
        assert torch.equal(ops.multi_view_fusion(x, *[t[:0] for t in w], fused_channels=0), x)


@pytest.mark.parametrize("device,path", PATHS)
@pytest.mark.parametrize("shape,Fc", [((0, 4, 3, 5, 5), 2), ((2, 4, 3, 0, 5), 2), ((2, 4, 3, 5, 5), 0),
                                      ((2, 4, 3, 5, 5), 4), ((2, 3, 1, 1, 1), 3), ((1, 3, 5, 1, 7), 1),
                                      ((2, 3, 4, 33, 40), 2)])
def test_edges(device, path, shape, Fc):
    """Empty batches (zero statistics and parameter gradients), no fused / no pass-through channels, T = H = W = 1,
    and planes wider than one plane block (33 x 40 > 1024)."""
    g = torch.Generator().manual_seed(3)
    x = _volume(g, shape, True, device, torch.float64)
    w = _params(g, Fc, device, torch.float64, 3)
    gamma = torch.ones(Fc, dtype=torch.float64, device=device, requires_grad=True)
    beta = torch.zeros(Fc, dtype=torch.float64, device=device, requires_grad=True)
    with on_path(device, path):
        if x.numel() == 0:
            out, mean, var = ops.multi_view_fusion_batchnorm(x, *w, gamma, beta, 1e-5, True, Fc)
            assert out.shape == x.shape and not mean.any() and not var.any()
            grads = torch.autograd.grad(out.sum(), [x, *w, gamma, beta])
            assert grads[0].shape == x.shape and not any(t.any() for t in grads[1:])
        elif shape[0] * shape[2] * shape[3] * shape[4] > 1:
            _check_batchnorm(x, w, gamma, beta, 1e-5, True, Fc, g)
        plain = ops.multi_view_fusion(x, *w, fused_channels=Fc)
        if x.numel():
            assert_close(plain, ref.multi_view_fusion(_cpu64(x, False), *[_cpu64(t, False) for t in w], None, None,
                                                      False, Fc))
        assert plain.shape == x.shape


@pytest.mark.cuda
@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_types_on_the_gpu(dtype):
    """Half inputs at a realistic size: statistics from float32 views, float32 sums."""
    g = torch.Generator().manual_seed(4)
    x = _volume(g, (2, 16, 8, 14, 14), True, "cuda", dtype)
    w = _params(g, 4, "cuda", dtype, 3)
    gamma = (torch.rand(4, generator=g, dtype=torch.float64) + 0.5).to("cuda", dtype).requires_grad_()
    beta = torch.randn(4, generator=g, dtype=torch.float64).to("cuda", dtype).requires_grad_()
    with on_path("cuda", "candidate"):
        _check_batchnorm(x, w, gamma, beta, 1e-5, True, 4, g)


@pytest.mark.parametrize("device,path", PATHS)
def test_module_training_and_eval_steps(device, path):
    """Two training steps of MVF (running statistics, all parameter gradients) and an eval step, against the
    official formulation on the CPU in float64."""
    from test_mvf import OfficialMVF

    torch.manual_seed(0)
    ours = MVF(torch.nn.Conv2d(16, 8, 1, bias=False), n_segment=4, in_channels=16, alpha=0.25).double()
    official = OfficialMVF(MVF(torch.nn.Conv2d(16, 8, 1, bias=False), n_segment=4, in_channels=16, alpha=0.25))
    official.m.double().load_state_dict(ours.state_dict())
    ours = ours.to(device)
    with on_path(device, path):
        for step in range(2):
            x = torch.randn(8, 16, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(step))
            x_ours, x_off = x.to(device).requires_grad_(), x.clone().requires_grad_()
            got, want = ours.train()(x_ours), official.train()(x_off)
            assert_close(got, want)
            grads = torch.autograd.grad(got.square().sum(), [x_ours, *ours.parameters()])
            rgrads = torch.autograd.grad(want.square().sum(), [x_off, *official.m.parameters()])
            for a, b in zip(grads, rgrads):
                assert_close(a, b)
        for (k, v), (_, v2) in zip(ours.state_dict().items(), official.m.state_dict().items()):
            assert_close(v.double(), v2.double()), k
        with torch.no_grad():
            assert_close(ours.eval()(x.to(device)), official.eval()(x))


@pytest.mark.cuda
@pytest.mark.triton
def test_opcheck_and_compile_on_the_gpu():
    """The custom ops with the candidate inside them: opcheck (fake tensors, autograd registration) and
    torch.compile(fullgraph=True)."""
    g = torch.Generator().manual_seed(6)
    x = _volume(g, (2, 4, 3, 4, 5), False, "cuda", torch.float32)
    w = _params(g, 2, "cuda", torch.float32, 3)
    gamma = (torch.rand(2, generator=g) + 0.5).cuda().requires_grad_()
    beta = torch.randn(2, generator=g).cuda().requires_grad_()
    with on_path("cuda", "candidate"):
        opcheck(torch.ops.pvf.multi_view_fusion_batchnorm.default, (x, *w, gamma, beta, 1e-5, True, 2))
        out, mean, var = ops.multi_view_fusion_batchnorm(x, *w, gamma, beta, 1e-5, True, 2)
        opcheck(torch.ops.pvf.multi_view_fusion_batchnorm_backward.default,
                (torch.randn_like(out), x.detach(), *(t.detach() for t in (*w, gamma, beta)), mean, var, 1e-5, True,
                 2))
        opcheck(torch.ops.pvf.multi_view_fusion.default, (x, *w, gamma.detach(), beta.detach(), True, 2))
        check_compiled(lambda *a: ops.multi_view_fusion_batchnorm(*a, 1e-5, True, 2)[0], x, *w, gamma, beta)


@pytest.mark.triton
def test_eager_call_equals_the_custom_op_bit_for_bit():
    if not pvf_triton.available(torch.device("cpu")):
        pytest.skip("needs TRITON_INTERPRET=1")
    g = torch.Generator().manual_seed(5)
    x = _volume(g, (2, 6, 3, 4, 5), True, "cpu", torch.float64)
    w = _params(g, 2, "cpu", torch.float64, 3)
    gamma = (torch.rand(2, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    beta = torch.randn(2, generator=g, dtype=torch.float64).requires_grad_()
    grad = torch.randn(x.shape, generator=g, dtype=torch.float64)
    results = []
    with use_backend("triton"):
        for call in (ops.multi_view_fusion_batchnorm, torch.ops.pvf.multi_view_fusion_batchnorm):
            out = call(x, *w, gamma, beta, 1e-5, True, 2)[0]
            results.append((out, *torch.autograd.grad(out, [x, *w, gamma, beta], grad)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _bad_cases():
    x = torch.randn(1, 4, 3, 5, 5)
    w, gamma, beta = torch.randn(4, 3), torch.ones(2), torch.zeros(2)
    bn = torch.ops.pvf.multi_view_fusion_batchnorm
    views = torch.ops.pvf.multi_view_fusion
    return [  # through the custom ops: only the implementation's own checks stand between them and the kernel
        BadInput("kernel shape", lambda: views(x, torch.randn(4, 2), w, w, None, None, False, 4), ValueError,
                 "'weight_t' must have shape"),
        BadInput("fused too many", lambda: views(x, w, w, w, None, None, False, 5), ValueError, "fused_channels"),
        BadInput("dtype", lambda: views(x, w.double(), w, w, None, None, False, 4), TypeError, "same dtype"),
        BadInput("scale without shift", lambda: views(x, w, w, w, torch.ones(4), None, False, 4), ValueError,
                 "bn_shift"),
        BadInput("integer x", lambda: views(x.int(), w, w, w, None, None, False, 4), TypeError, "float32"),
        BadInput("rank", lambda: views(x[0], w, w, w, None, None, False, 4), ValueError, "5 dimensions"),
        BadInput("bn weight shape", lambda: bn(x, w[:2], w[:2], w[:2], torch.ones(3), beta, 1e-5, True, 2),
                 ValueError, "'bn_weight' must have shape"),
        BadInput("bn eps", lambda: bn(x, w[:2], w[:2], w[:2], gamma, beta, 0.0, True, 2), ValueError, "eps"),
        BadInput("bn bias dtype", lambda: bn(x, w[:2], w[:2], w[:2], gamma, beta.double(), 1e-5, True, 2),
                 TypeError, "same dtype"),
        BadInput("backward grad shape", lambda: torch.ops.pvf.multi_view_fusion_batchnorm_backward(
            x[:, :, :2], x, w[:2], w[:2], w[:2], gamma, beta, gamma, gamma, 1e-5, True, 2), ValueError, "grad_out"),
        BadInput("backward stats shape", lambda: torch.ops.pvf.multi_view_fusion_batchnorm_backward(
            x, x, w[:2], w[:2], w[:2], gamma, beta, torch.ones(3), gamma, 1e-5, True, 2), ValueError,
            "'mean' must have shape"),
    ]


@pytest.mark.triton
@pytest.mark.parametrize("case", _bad_cases(), ids=str)
def test_bad_inputs_are_refused_before_the_kernel(case):
    if not pvf_triton.available(torch.device("cpu")):
        pytest.skip("needs TRITON_INTERPRET=1")
    with use_backend("triton"):
        run_bad_input(case)


def test_copy_plans():
    """The pass-through block as rows of one run: the frame layout, the contiguous layout, the whole block when
    F = 0; None where it is not one (rows of x not packed, permuted layouts)."""
    from pyvision_fast.triton.mvf import _copy_plan

    N, C, T, H, W, F = 2, 8, 3, 4, 5, 2
    frames = torch.empty(N, T, C, H, W).transpose(1, 2).stride()[:4]
    dense = torch.empty(N, C, T, H, W).stride()[:4]
    assert _copy_plan((N, C, T, H, W), F, frames, frames) == (N * T, (C - F) * H * W, C * H * W, C * H * W,
                                                               F * H * W, F * H * W)
    assert _copy_plan((N, C, T, H, W), F, dense, dense) == (N, (C - F) * T * H * W, C * T * H * W, C * T * H * W,
                                                             F * T * H * W, F * T * H * W)
    assert _copy_plan((N, C, T, H, W), 0, dense, dense) == (1, N * C * T * H * W, N * C * T * H * W,
                                                             N * C * T * H * W, 0, 0)
    assert _copy_plan((N, C, T, H, W), C, dense, dense)[0] == 0
    assert _copy_plan((N, C, T, H, W), F, frames, dense) is None  # the two tensors' layouts differ
    wide = torch.empty(N, C, T, H, 9)[..., :W].stride()[:4]
    assert _copy_plan((N, C, T, H, W), F, wide, dense) is None


def test_supported_sizes():
    from pyvision_fast.triton.mvf import supported

    assert supported(torch.empty(2**15, 2**15, device="meta"))
    assert not supported(torch.empty(2**16, 2**15, device="meta"))
    assert not supported(torch.empty(4, device="meta"), size=2**31)


@pytest.mark.cuda
@pytest.mark.parametrize("path", ["current", "candidate"])
def test_no_host_synchronisation(path):
    """A training step and an eval step of MVF under torch.cuda.set_sync_debug_mode('error'), after a warm-up
    (Triton compiles on the first call), with the default momentum and the cumulative average."""
    for momentum in (0.1, None):
        m = MVF(torch.nn.Identity(), n_segment=4, in_channels=64, alpha=0.125).cuda()
        m.bn.momentum = momentum
        x = torch.randn(8, 64, 7, 7, device="cuda", requires_grad=True)
        with on_path("cuda", path):
            for sync_mode in ("default", "error"):
                torch.cuda.set_sync_debug_mode(sync_mode)
                try:
                    m.train()(x).sum().backward()
                    with torch.no_grad():
                        m.eval()(x)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
