"""multi_view_fusion and the MVF module against the official three-Conv3d formulation."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from op_harness import DEVICES, BadInput, assert_close, check_compiled, check_onnx, float_dtypes, gradcheck, opcheck
from op_harness import on_implementation
from op_harness import ops_dispatched, run_bad_input
from pyvision_fast import ops, use_backend
from pyvision_fast.nn import MVF, insert_mvf
from pyvision_fast.reference import mvf as ref


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=25, deadline=None)
@given(N=st.integers(1, 2), C=st.integers(1, 6), T=st.integers(1, 5), H=st.integers(1, 6), W=st.integers(1, 7),
       frames=st.booleans(), epilogue=st.sampled_from(["none", "bn", "bn+hs", "hs"]), seed=st.integers(0, 2**16))
def test_matches_reference(device, N, C, T, H, W, frames, epilogue, seed):
    g = torch.Generator().manual_seed(seed)
    Fc = int(torch.randint(0, C + 1, (1,), generator=g))
    for dtype in float_dtypes(device):
        if frames:  # the (N*T, C, H, W) frame layout viewed as (N, C, T, H, W)
            x = torch.randn(N, T, C, H, W, generator=g, dtype=torch.float64).transpose(1, 2)
        else:
            x = torch.randn(N, C, T, H, W, generator=g, dtype=torch.float64)
        x = x.to(device, dtype).requires_grad_()
        w = [torch.randn(Fc, 3, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_() for _ in range(3)]
        scale = shift = None
        if "bn" in epilogue:
            scale = (torch.rand(Fc, generator=g, dtype=torch.float64) + 0.5).to(device, dtype)
            shift = torch.randn(Fc, generator=g, dtype=torch.float64).to(device, dtype)
        hs = "hs" in epilogue
        out = ops.multi_view_fusion(x, *w, scale, shift, hardswish=hs, fused_channels=Fc)
        # The reference runs on the CPU in float64 (torch's CUDA HardSwish scales by 1/6 rounded to float32).
        x64, w64 = _cpu64(x), [_cpu64(t) for t in w]
        expected = ref.multi_view_fusion(x64, *w64, None if scale is None else _cpu64(scale, False),
                                         None if shift is None else _cpu64(shift, False), hs, Fc)
        assert out.shape == x.shape
        assert_close(out, expected, dtype)
        go = torch.randn(out.shape, generator=g, dtype=torch.float64)
        grads = torch.autograd.grad(out, [x, *w], go.to(device, dtype))
        rgrads = torch.autograd.grad(expected, [x64, *w64], go, allow_unused=True)
        rgrads = [torch.zeros_like(t) if r is None else r for r, t in zip(rgrads, [x64, *w64])]
        loose = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {}  # kernel sums over N*T*H*W
        for a, b in zip(grads, rgrads):
            assert_close(a, b, dtype, **loose)


def _cpu64(t: torch.Tensor, grad: bool = True) -> torch.Tensor:
    """t's values as a float64 CPU leaf (the reference side of a comparison)."""
    t = t.detach().cpu().double()
    return t.requires_grad_() if grad else t


def test_reference_backend_gradients_agree():
    from pyvision_fast import use_backend

    torch.manual_seed(4)
    x = torch.randn(2, 5, 3, 4, 6, dtype=torch.float64, requires_grad=True)
    w = [torch.randn(3, 3, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    scale, shift = torch.rand(3, dtype=torch.float64) + 0.5, torch.randn(3, dtype=torch.float64)
    grads = []
    for backend in ("cpu", "reference"):
        with use_backend(backend):
            out = ops.multi_view_fusion(x, *w, scale, shift, hardswish=True, fused_channels=3)
            grads.append(torch.autograd.grad(out.pow(2).sum(), [x, *w]))
    for a, b in zip(*grads):
        assert_close(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck(device):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, 4, 5, dtype=torch.float64).to(device).requires_grad_()
    w = [torch.randn(3, 3, dtype=torch.float64).to(device).requires_grad_() for _ in range(3)]
    scale, shift = (torch.rand(3, dtype=torch.float64) + 0.5).to(device), torch.randn(3, dtype=torch.float64).to(device)
    gradcheck(lambda a, b, c, d: ops.multi_view_fusion(a, b, c, d, fused_channels=3), (x, *w))
    gradcheck(lambda a, b, c, d: ops.multi_view_fusion(a, b, c, d, scale, shift, True, 3), (x, *w))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_and_compile(device):
    x = torch.randn(2, 4, 3, 4, 5, device=device, requires_grad=True)
    w = [torch.randn(4, 3, device=device, requires_grad=True) for _ in range(3)]
    opcheck(torch.ops.pvf.multi_view_fusion.default, (x, *w, None, None, False, 4))
    w2 = [t[:2].detach().requires_grad_() for t in w]
    opcheck(torch.ops.pvf.multi_view_fusion.default,
            (x, *w2, torch.rand(2, device=device), torch.rand(2, device=device), True, 2))
    check_compiled(lambda a, b, c, d: ops.multi_view_fusion(a, b, c, d, hardswish=True), x, *w)


def _bad_cases():
    x = torch.randn(1, 4, 3, 5, 5)
    w = torch.randn(4, 3)
    return [
        BadInput("rank", lambda: ops.multi_view_fusion(x[0], w, w, w), ValueError, r"\(N, C, T, H, W\)"),
        BadInput("kernel shape", lambda: ops.multi_view_fusion(x, torch.randn(4, 2), w, w), ValueError, "weight_t"),
        BadInput("kernel channels", lambda: ops.multi_view_fusion(x, w[:3], w[:3], w[:3]), ValueError,
                 "'weight_t' must have shape"),
        BadInput("fused too many", lambda: ops.multi_view_fusion(x, w, w, w, fused_channels=5), ValueError,
                 "fused_channels"),
        BadInput("dtype", lambda: ops.multi_view_fusion(x, w.double(), w, w), TypeError, "same dtype"),
        BadInput("half on cpu", lambda: ops.multi_view_fusion(x.half(), w.half(), w.half(), w.half()), TypeError,
                 "float32 or float64"),
        BadInput("scale without shift", lambda: ops.multi_view_fusion(x, w, w, w, torch.ones(4)), ValueError,
                 "bn_shift"),
        BadInput("fused negative", lambda: ops.multi_view_fusion(x, w, w, w, fused_channels=-1), ValueError,
                 r"fused_channels must be in \[0, 4\], got -1"),
        BadInput("kernels disagree", lambda: ops.multi_view_fusion(x, w, w, w[:3], fused_channels=4), ValueError,
                 r"'weight_w' must have shape \(4, 3\), got \(3, 3\)"),
        BadInput("kernels vs fused", lambda: ops.multi_view_fusion(x, w, w, w, fused_channels=2), ValueError,
                 r"'weight_t' must have shape \(2, 3\)"),
        BadInput("shift channels", lambda: ops.multi_view_fusion(x, w, w, w, torch.ones(4), torch.zeros(3)),
                 ValueError, r"'bn_shift' must have shape \(4\), got \(3\)"),
        BadInput("scale dtype", lambda: ops.multi_view_fusion(x, w, w, w, torch.ones(4, dtype=torch.float64),
                                                              torch.zeros(4)), TypeError, "'bn_scale'.*same dtype"),
        BadInput("int x", lambda: ops.multi_view_fusion(x.long(), w.long(), w.long(), w.long()), TypeError,
                 "argument 'x' must be float32 or float64"),
    ]


# Every relation is checked before any backend runs: the compiled kernels (C++ checks too) and the reference.
@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("case", _bad_cases(), ids=str)
def test_bad_inputs(case, backend):
    if backend == "reference" and case.name == "half on cpu":
        pytest.skip("the device's dtype rule is the compiled kernels' (the reference computes float16 on CPUs)")
    with use_backend(backend):
        run_bad_input(case)


# ------------------------------------------------------------------ training-mode BatchNorm (batch statistics)


def _bn_inputs(g, N, C, T, H, W, Fc, frames, device, dtype):
    shape = (N, T, C, H, W) if frames else (N, C, T, H, W)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    x = (x.transpose(1, 2) if frames else x).to(device, dtype).requires_grad_()
    w = [torch.randn(Fc, 3, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_() for _ in range(3)]
    gamma = (torch.rand(Fc, generator=g, dtype=torch.float64) + 0.5).to(device, dtype).requires_grad_()
    beta = torch.randn(Fc, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_()
    return x, w, gamma, beta


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=25, deadline=None)
@given(N=st.integers(1, 2), C=st.integers(1, 6), T=st.integers(1, 4), H=st.integers(1, 6), W=st.integers(1, 17),
       frames=st.booleans(), hs=st.booleans(), seed=st.integers(0, 2**16))
def test_batchnorm_matches_reference(device, N, C, T, H, W, frames, hs, seed):
    """Views, batch statistics, normalisation and HardSwish against F.batch_norm on the reference views; all six
    gradients against autograd through that reference (W up to 17 covers full vectors and tails)."""
    assume(N * T * H * W > 1)  # F.batch_norm refuses one value per channel in training
    g = torch.Generator().manual_seed(seed)
    Fc = int(torch.randint(0, C + 1, (1,), generator=g))
    for dtype in float_dtypes(device):
        x, w, gamma, beta = _bn_inputs(g, N, C, T, H, W, Fc, frames, device, dtype)
        out, mean, var = ops.multi_view_fusion_batchnorm(x, *w, gamma, beta, 1e-3, hs, Fc)
        inputs64 = [_cpu64(t) for t in (x, *w, gamma, beta)]
        expected, emean, evar = ref.multi_view_fusion_batchnorm(*inputs64, 1e-3, hs, Fc)
        assert out.shape == x.shape and mean.shape == var.shape == (Fc,)
        loose = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {}  # normalised values, sums
        assert_close(out, expected, dtype, **loose)
        assert_close(mean, emean, dtype, **loose)
        assert_close(var, evar, dtype, **loose)
        go = torch.randn(out.shape, generator=g, dtype=torch.float64)
        grads = torch.autograd.grad(out, [x, *w, gamma, beta], go.to(device, dtype))
        rgrads = torch.autograd.grad(expected, inputs64, go, allow_unused=True)
        rgrads = [torch.zeros_like(t) if r is None else r for r, t in zip(rgrads, inputs64)]
        loose = {"atol": 1e-3, "rtol": 1e-3} if dtype == torch.float32 else {}  # through 1/std of small batches
        for a, b in zip(grads, rgrads):
            assert_close(a, b, dtype, **loose)


def test_batchnorm_gradcheck_and_backends():
    from pyvision_fast import use_backend

    g = torch.Generator().manual_seed(3)
    x, w, gamma, beta = _bn_inputs(g, 2, 5, 3, 4, 9, 3, True, "cpu", torch.float64)
    for hs in (True, False):
        gradcheck(lambda *a: ops.multi_view_fusion_batchnorm(*a, 1e-5, hs, 3)[0], (x, *w, gamma, beta))
    results = []
    for backend in ("cpu", "reference"):
        with use_backend(backend):
            out, mean, var = ops.multi_view_fusion_batchnorm(x, *w, gamma, beta, 1e-5, True, 3)
            results.append((out, mean, var, *torch.autograd.grad(out.square().sum(), [x, *w, gamma, beta])))
    for a, b in zip(*results):
        assert_close(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_batchnorm_opcheck_and_compile(device):
    g = torch.Generator().manual_seed(2)
    x, w, gamma, beta = _bn_inputs(g, 2, 4, 3, 4, 5, 2, False, device, torch.float32)
    opcheck(torch.ops.pvf.multi_view_fusion_batchnorm.default, (x, *w, gamma, beta, 1e-5, True, 2))
    out, mean, var = ops.multi_view_fusion_batchnorm(x, *w, gamma, beta, 1e-5, True, 2)
    opcheck(torch.ops.pvf.multi_view_fusion_batchnorm_backward.default,
            (torch.randn_like(out), x.detach(), *(t.detach() for t in (*w, gamma, beta)), mean, var, 1e-5, True, 2))
    check_compiled(lambda *a: ops.multi_view_fusion_batchnorm(*a, 1e-5, True, 2)[0], x, *w, gamma, beta)


def _both_ops(batchnorm: bool):
    """The inputs and the two calls of one op: through ops.* (eager: an autograd.Function) and through the
    registered custom op (what torch.compile, torch.export and dispatch modes see)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 6, 3, 4, 5, dtype=torch.float64, generator=g).requires_grad_()
    w = [torch.randn(2, 3, dtype=torch.float64, generator=g).requires_grad_() for _ in range(3)]
    gamma = (torch.rand(2, dtype=torch.float64, generator=g) + 0.5).requires_grad_()
    beta = torch.randn(2, dtype=torch.float64, generator=g).requires_grad_()
    inputs = [x, *w, gamma, beta]
    if batchnorm:
        return (inputs, lambda: ops.multi_view_fusion_batchnorm(*inputs, 1e-5, True, 2)[0],
                lambda: torch.ops.pvf.multi_view_fusion_batchnorm(*inputs, 1e-5, True, 2)[0])
    return (inputs, lambda: ops.multi_view_fusion(*inputs, hardswish=True, fused_channels=2),
            lambda: torch.ops.pvf.multi_view_fusion(*inputs, True, 2))


@pytest.mark.parametrize("batchnorm", [False, True])
def test_eager_calls_skip_the_custom_op_and_agree_with_it(batchnorm):
    inputs, eager, custom = _both_ops(batchnorm)
    grad = torch.randn(2, 6, 3, 4, 5, dtype=torch.float64)
    results = []
    for call, backward_name in ((eager, "_MVF"), (custom, "pvf_multi_view_fusion")):
        out = call()
        assert backward_name in type(out.grad_fn).__name__
        results.append((out, *torch.autograd.grad(out, inputs, grad)))
    for a, b in zip(*results):  # the same kernels on the same inputs: bit-identical
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("batchnorm", [False, True])
def test_eager_calls_have_no_double_backward_and_modes_see_the_custom_op(batchnorm):
    inputs, eager, _ = _both_ops(batchnorm)
    # A second derivative is an error, never a silently wrong value: with a constant incoming gradient the
    # first derivative has no graph; with one that requires grad, its graph raises once_differentiable's error.
    (gx,) = torch.autograd.grad(eager().sum(), inputs[0], create_graph=True)
    with pytest.raises(RuntimeError, match="does not require grad"):
        gx.sum().backward()
    out = eager()
    (gx,) = torch.autograd.grad(out, inputs[0], torch.ones_like(out, requires_grad=True), create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        gx.sum().backward()

    seen = ops_dispatched(eager)
    name = "pvf.multi_view_fusion_batchnorm.default" if batchnorm else "pvf.multi_view_fusion.default"
    assert name in seen


def test_views_backward_with_a_given_fused_gradient():
    """multi_view_fusion_backward with grad_fused (what the CUDA training path hands it) against the reference."""
    from pyvision_fast.ops import mvf as mvf_ops

    g = torch.Generator().manual_seed(8)
    x, w, _, _ = _bn_inputs(g, 2, 6, 3, 5, 11, 4, True, "cpu", torch.float64)
    x, w = x.detach(), [t.detach() for t in w]
    grad = torch.randn(x.shape, generator=g, dtype=torch.float64)
    grad_fused = torch.randn(2, 4, 3, 5, 11, generator=g, dtype=torch.float64)
    got = torch.ops.pvf.multi_view_fusion_backward(grad, x, *w, None, None, False, 4, grad_fused)
    want = mvf_ops._bwd_ref(grad, x, *w, None, None, False, 4, grad_fused)
    for a, b in zip(got, want):
        assert_close(a, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("hardswish", [True, False])
def test_rows_that_are_not_packed(hardswish, device):
    """x a W-slice of a wider tensor (row stride > W): values and gradients of both ops against the reference."""
    g = torch.Generator().manual_seed(9)

    def make(*shape, leaf=True):
        t = torch.randn(*shape, generator=g, dtype=torch.float64).to(device)
        return t.requires_grad_() if leaf else t

    x = make(2, 5, 3, 6, 9, leaf=False)[..., 1:8].requires_grad_()
    w = [make(3, 3) for _ in range(3)]
    gamma = (torch.rand(3, generator=g, dtype=torch.float64) + 0.5).to(device).requires_grad_()
    beta = make(3)
    scale = (torch.rand(3, generator=g, dtype=torch.float64) + 0.5).to(device)
    shift = make(3, leaf=False)
    c = [_cpu64(t) for t in (x, *w, gamma, beta)]  # the reference's inputs, on the CPU
    pairs = [(ops.multi_view_fusion(x, *w, scale, shift, hardswish, 3),
              ref.multi_view_fusion(*c[:4], scale.cpu(), shift.cpu(), hardswish, 3), [x, *w], c[:4]),
             (ops.multi_view_fusion_batchnorm(x, *w, gamma, beta, 1e-5, hardswish, 3)[0],
              ref.multi_view_fusion_batchnorm(*c, 1e-5, hardswish, 3)[0], [x, *w, gamma, beta], c)]
    for got, want, inputs, ref_inputs in pairs:
        assert_close(got, want)
        go = torch.randn(got.shape, generator=g, dtype=torch.float64)
        for a, b in zip(torch.autograd.grad(got, inputs, go.to(device)), torch.autograd.grad(want, ref_inputs, go)):
            assert_close(a, b)


def test_large_outputs_take_the_streaming_copy():
    """A 40 MB output (above half the last-level cache of most CPUs: the pass-through copy then uses streaming
    stores, from an unaligned start): pass-through channels are copied bit for bit, forward and backward."""
    g = torch.Generator().manual_seed(10)
    x = torch.randn(1, 4, 80, 176, 176, generator=g).transpose(1, 2).requires_grad_()  # frame layout, 40 MB
    w = [torch.randn(3, 3, generator=g, requires_grad=True) for _ in range(3)]
    gamma, beta = torch.rand(3, generator=g) + 0.5, torch.randn(3, generator=g)
    out, _, _ = ops.multi_view_fusion_batchnorm(x, *w, gamma, beta, 1e-5, True, 3)
    assert torch.equal(out[:, 3:], x[:, 3:])
    expected = ref.multi_view_fusion_batchnorm(x[:, :3].detach(), *[t.detach() for t in w], gamma, beta, 1e-5, True)[0]
    assert_close(out[:, :3], expected, torch.float32, atol=1e-4, rtol=1e-4)
    grad = torch.randn(out.shape, generator=g)
    (gx,) = torch.autograd.grad(out, [x], grad)
    assert torch.equal(gx[:, 3:], grad[:, 3:])


@pytest.mark.parametrize("frames", [True, False])
def test_copy_beside_channels_and_copy_first_agree(frames, monkeypatch):
    """The training-mode kernels' two schedules (pass-through copy beside the fused channels, the default; or
    first, PVF_MVF_OVERLAP=0) give bit-identical outputs, statistics and gradients; the copy has several pieces."""
    g = torch.Generator().manual_seed(13)
    x, w, gamma, beta = _bn_inputs(g, 2, 24, 3, 40, 40, 5, frames, "cpu", torch.float32)
    grad = torch.randn(x.shape, generator=g)
    results = []
    for setting in ("1", "0"):
        monkeypatch.setenv("PVF_MVF_OVERLAP", setting)
        out, mean, var = ops.multi_view_fusion_batchnorm(x, *w, gamma, beta, 1e-5, True, 5)
        results.append((out, mean, var, *torch.autograd.grad(out, [x, *w, gamma, beta], grad)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.cuda
@pytest.mark.parametrize("candidates", [None, ["multi_view_fusion", "multi_view_fusion_batchnorm"]],
                         ids=["current", "candidate"])
def test_cuda_tensors_larger_than_one_grid(candidates):
    """More elements (148 M) than one launch has threads (the grid is capped at 65535 * 8 blocks of 256): the
    grid-stride loops of both ops, forward and backward, against the reference on the GPU. (Candidate: the
    Triton kernels, 9.2 M values per channel program.)"""
    with on_implementation(candidates):
        _check_large_tensors()


def _check_large_tensors():
    g = torch.Generator(device="cuda").manual_seed(12)
    x = torch.randn(2, 8, 16, 760, 760, device="cuda", generator=g).transpose(1, 2).requires_grad_()  # 591 MB
    w = [torch.randn(2, 3, device="cuda", generator=g, requires_grad=True) for _ in range(3)]
    gamma, beta = torch.rand(2, device="cuda", generator=g) + 0.5, torch.randn(2, device="cuda", generator=g)
    grad = torch.randn(x.shape, device="cuda", generator=g)
    for out in (ops.multi_view_fusion(x, *w, gamma, beta, True, 2),
                ops.multi_view_fusion_batchnorm(x, *w, gamma, beta, 1e-5, True, 2)[0]):
        assert torch.equal(out[:, 2:], x[:, 2:])
        gx, *gw = torch.autograd.grad(out, [x, *w], grad)
        assert torch.equal(gx[:, 2:], grad[:, 2:])
        del out
    x2 = x[:, :2].detach().double().requires_grad_()
    w2 = [t.detach().double().requires_grad_() for t in w]
    want = ref.multi_view_fusion_batchnorm(x2, *w2, gamma.double(), beta.double(), 1e-5, True)[0]
    got = ops.multi_view_fusion_batchnorm(x, *w, gamma, beta, 1e-5, True, 2)[0][:, :2]
    assert_close(got, want, torch.float32, atol=1e-4, rtol=1e-4)
    gx, *gw = torch.autograd.grad(got, [x, *w], grad[:, :2])
    rgx, *rgw = torch.autograd.grad(want, [x2, *w2], grad[:, :2].double())
    assert_close(gx[:, :2], rgx, torch.float32, atol=1e-4, rtol=1e-4)
    for a, b in zip(gw, rgw):  # sums over 9.2 M values per channel
        assert_close(a, b, torch.float32, atol=1e-2, rtol=1e-3)


@pytest.mark.parametrize("device", DEVICES + [pytest.param("reference", id="reference")])
@pytest.mark.parametrize("shape", [(0, 4, 3, 5, 5), (2, 4, 0, 5, 5), (2, 4, 3, 0, 5), (2, 4, 3, 5, 0)])
def test_empty_batches(shape, device):
    """Any of N, T, H, W zero: both ops give an empty output, zero statistics and zero parameter gradients, also
    through the expanded (stride 0) gradient of out.sum(). The reference backend (the fallback) too: conv3d
    alone refuses a zero-sized T, H or W."""
    if device == "reference":
        with use_backend("reference"):
            return test_empty_batches(shape, "cpu")
    g = torch.Generator().manual_seed(11)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(device).requires_grad_()
    w = [torch.randn(2, 3, generator=g, dtype=torch.float64).to(device).requires_grad_() for _ in range(3)]
    gamma = torch.ones(2, dtype=torch.float64, device=device, requires_grad=True)
    beta = torch.zeros(2, dtype=torch.float64, device=device, requires_grad=True)
    out, mean, var = ops.multi_view_fusion_batchnorm(x, *w, gamma, beta, 1e-5, True, 2)
    zeros = torch.zeros(2, dtype=torch.float64, device=device)
    assert out.shape == x.shape and torch.equal(mean, zeros) and torch.equal(var, zeros)
    plain = ops.multi_view_fusion(x, *w, fused_channels=2)
    assert plain.shape == x.shape
    for result, params in ((out, [*w, gamma, beta]), (plain, w)):
        grad_x, *grads = torch.autograd.grad(result.sum(), [x, *params])
        assert grad_x.shape == x.shape
        for t in grads:
            assert torch.equal(t, torch.zeros_like(t))


def _bad_batchnorm_cases():
    x = torch.randn(1, 4, 3, 5, 5)
    w, gamma, beta = torch.randn(2, 3), torch.ones(2), torch.zeros(2)
    bn = ops.multi_view_fusion_batchnorm
    return [
        BadInput("eps zero", lambda: bn(x, w, w, w, gamma, beta, 0.0, True, 2), ValueError, "eps"),
        BadInput("eps negative", lambda: bn(x, w, w, w, gamma, beta, -1e-5, True, 2), ValueError, "eps"),
        BadInput("no weight", lambda: bn(x, w, w, w, None, beta, 1e-5, True, 2), TypeError, "bn_weight"),
        BadInput("weight shape", lambda: bn(x, w, w, w, torch.ones(3), beta, 1e-5, True, 2), ValueError,
                 "'bn_weight' must have shape"),
        BadInput("bias dtype", lambda: bn(x, w, w, w, gamma, beta.double(), 1e-5, True, 2), TypeError, "same dtype"),
        BadInput("rank", lambda: bn(x[0], w, w, w, gamma, beta, 1e-5, True, 2), ValueError, r"\(N, C, T, H, W\)"),
        BadInput("bias shape", lambda: bn(x, w, w, w, gamma, torch.zeros(3), 1e-5, True, 2), ValueError,
                 r"'bn_bias' must have shape \(2\), got \(3\)"),
        BadInput("kernels vs fused", lambda: bn(x, w, w, w, gamma, beta, 1e-5, True, 3), ValueError,
                 r"'weight_t' must have shape \(3, 3\)"),
        BadInput("fused too many", lambda: bn(x, w, w, w, gamma, beta, 1e-5, True, 5), ValueError,
                 r"fused_channels must be in \[0, 4\]"),
    ]


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("case", _bad_batchnorm_cases(), ids=str)
def test_batchnorm_bad_inputs(case, backend):
    with use_backend(backend):
        run_bad_input(case)


# ------------------------------------------------------------------------------------------ module


class OfficialMVF(torch.nn.Module):
    """The official module's forward, re-expressed: three depthwise Conv3d, BN + HardSwish, concat."""

    def __init__(self, ours: MVF):
        super().__init__()
        self.m = ours

    def forward(self, x):
        m = self.m
        nt, c, h, w = x.shape
        x = x.view(nt // m.n_segment, m.n_segment, c, h, w).transpose(1, 2)
        x = list(x.split(m.split_sizes, dim=1))
        if m.mode in ("THW", "TH"):
            if m.share:
                tmp_h = m.shift_conv(x[0].transpose(2, 3)).transpose(2, 3)
            else:
                tmp_h = m.h_conv(x[0])
        if m.mode == "THW":
            tmp_w = m.shift_conv(x[0].permute(0, 1, 4, 2, 3)).permute(0, 1, 3, 4, 2) if m.share else m.w_conv(x[0])
            x[0] = m.shift_conv(x[0]) + tmp_h + tmp_w
        elif m.mode == "TH":
            x[0] = m.shift_conv(x[0]) + tmp_h
        else:
            x[0] = m.shift_conv(x[0])
        if m.use_hs:
            x[0] = F.hardswish(m.bn(x[0]))
        x = torch.cat(x, dim=1).transpose(1, 2).contiguous().view(nt, c, h, w)
        return m.net(x)


@pytest.mark.parametrize("mode", ["THW", "TH", "T"])
@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("use_hs", [True, False])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("device", DEVICES)
def test_module_matches_official_formulation(mode, share, use_hs, training, device):
    import copy

    torch.manual_seed(0)
    net = torch.nn.Conv2d(16, 8, 1, bias=False)
    ours = MVF(net, n_segment=4, in_channels=16, alpha=0.25, use_hs=use_hs, share=share, mode=mode).double()
    with torch.no_grad():  # non-trivial BN statistics for the eval path
        ours.bn.running_mean.uniform_(-0.5, 0.5)
        ours.bn.running_var.uniform_(0.5, 2.0)
        ours.bn.weight.uniform_(0.5, 1.5)
        ours.bn.bias.uniform_(-0.3, 0.3)
    # The official formulation runs on a CPU copy taken before any step (torch's CUDA HardSwish scales by 1/6
    # rounded to float32, so a float64 comparison needs the CPU's).
    official = OfficialMVF(copy.deepcopy(ours)).train(training)
    ours = ours.to(device).train(training)
    x = torch.randn(2 * 4, 16, 5, 6, dtype=torch.float64)
    x_ours, x_official = x.to(device).requires_grad_(), x.clone().requires_grad_()
    got = ours(x_ours)
    grads = torch.autograd.grad(got.sum(), [x_ours, *ours.parameters()], allow_unused=True)
    want = official(x_official)
    rgrads = torch.autograd.grad(want.sum(), [x_official, *official.m.parameters()], allow_unused=True)
    assert_close(got, want)
    for (k, v), (k2, v2) in zip(ours.state_dict().items(), official.m.state_dict().items()):
        assert k == k2  # the same running statistics (and batch count) afterwards
        assert_close(v.double(), v2.double())
    for a, b in zip(grads, rgrads):
        assert (a is None) == (b is None)
        if b is not None:
            assert_close(a, b)


def test_training_batchnorm_with_cumulative_average_and_without_running_stats():
    torch.manual_seed(5)
    for kwargs, training in [(dict(momentum=None), True), (dict(track_running_stats=False), True),
                             (dict(affine=False), True), (dict(affine=False), False),
                             (dict(track_running_stats=False), False)]:
        ours = MVF(torch.nn.Conv2d(16, 8, 1, bias=False), n_segment=2, in_channels=16, alpha=0.25).double()
        ours.bn = torch.nn.BatchNorm3d(4, **kwargs).double()
        if not training and ours.bn.track_running_stats:
            ours.bn.running_var.uniform_(0.5, 2.0)
        ours.train(training)
        official = OfficialMVF(ours)
        x = torch.randn(4, 16, 5, 6, dtype=torch.float64, requires_grad=True)
        for step in range(2):
            state = {k: v.clone() for k, v in ours.state_dict().items()}
            got = ours(x * (step + 1))
            after = {k: v.clone() for k, v in ours.state_dict().items()}
            ours.load_state_dict(state)
            want = official(x * (step + 1))
            assert_close(got, want)
            for k, v in ours.state_dict().items():
                assert_close(after[k].double(), v.double())


def test_training_batchnorm_on_empty_and_single_value_batches():
    """As nn.BatchNorm3d: an empty batch counts a step but leaves the statistics; one value per channel fails."""
    ours = MVF(torch.nn.Identity(), n_segment=2, in_channels=8, alpha=0.5).train()
    official = MVF(torch.nn.Identity(), n_segment=2, in_channels=8, alpha=0.5).train()
    official.load_state_dict(ours.state_dict())
    x = torch.randn(0, 8, 3, 3)
    assert ours(x).shape == OfficialMVF(official)(x).shape == (0, 8, 3, 3)
    for key, value in official.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    assert int(ours.bn.num_batches_tracked) == 1
    single = MVF(torch.nn.Identity(), n_segment=1, in_channels=8, alpha=0.5).train()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        single(torch.randn(1, 8, 1, 1))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        OfficialMVF(single)(torch.randn(1, 8, 1, 1))


def test_eval_folds_batchnorm_once_and_refolds_after_changes():
    """Inference reuses the folded BatchNorm while its tensors are unchanged; in-place updates, loading a state
    dict and a dtype change all refold (the output always equals the official formulation's)."""
    torch.manual_seed(2)
    ours = MVF(torch.nn.Identity(), n_segment=2, in_channels=16, alpha=0.25).eval()
    official = OfficialMVF(ours)
    x = torch.randn(4, 16, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), official(x))
        folded = ours.__dict__["_inference"]
        ours(x)
        assert ours.__dict__["_inference"] is folded
        ours.bn.running_var.mul_(3.0)
        ours.bn.weight.add_(0.5)
        torch.testing.assert_close(ours(x), official(x))
        assert ours.__dict__["_inference"] is not folded
        state = {k: v * 2 if v.is_floating_point() else v for k, v in ours.state_dict().items()}
        ours.load_state_dict(state)
        torch.testing.assert_close(ours(x), official(x))
        ours.double()
        torch.testing.assert_close(ours(x.double()), official(x.double()))
    with torch.inference_mode():
        ours.bn.running_var.add_(0.5)
        ours(x.double())
    xg = x.double().requires_grad_()
    ours.bn.weight.requires_grad_(False)
    ours.bn.bias.requires_grad_(False)
    torch.autograd.grad(ours(xg).sum(), [xg])  # not the fold made in inference mode (autograd refuses those)
    ours.bn.weight.requires_grad_(True)
    out = ours(x.double())  # grad enabled: the fold is differentiable, not cached
    (g,) = torch.autograd.grad(out.sum(), [ours.bn.weight])
    assert g.abs().sum() > 0


def test_official_state_dict_keys_and_loading():
    torch.manual_seed(1)
    ours = MVF(torch.nn.Conv2d(32, 8, 1), n_segment=8, in_channels=32)
    keys = set(ours.state_dict())
    assert {"net.weight", "net.bias", "shift_conv.weight", "h_conv.weight", "w_conv.weight", "bn.weight", "bn.bias",
            "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"} == keys
    assert ours.shift_conv.weight.shape == (4, 1, 3, 1, 1) and ours.w_conv.weight.shape == (4, 1, 1, 1, 3)
    other = MVF(torch.nn.Conv2d(32, 8, 1), n_segment=8, in_channels=32)
    other.load_state_dict(ours.state_dict())
    x = torch.randn(16, 32, 7, 7)
    torch.testing.assert_close(other.eval()(x), ours.eval()(x))


def test_alpha_zero_is_identity_wrapper_and_temporal_shift():
    net = torch.nn.Identity()
    x = torch.randn(8, 16, 3, 3)
    assert torch.equal(MVF(net, 4, 16, alpha=0.0)(x), x)
    m = MVF(net, 4, 16, alpha=0.25, mode="T", use_hs=False)
    with torch.no_grad():
        m.shift_conv.weight.zero_()
        m.shift_conv.weight[:, 0, 2] = 1.0  # [0, 0, 1]: out[t] = x[t + 1]
    out = m(x).view(2, 4, 16, 3, 3)
    xv = x.view(2, 4, 16, 3, 3)
    assert torch.equal(out[:, :3, :4], xv[:, 1:, :4]) and (out[:, 3, :4] == 0).all()
    assert torch.equal(out[:, :, 4:], xv[:, :, 4:])


def test_insert_mvf_into_resnet50():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    resnet = torchvision.models.resnet50()
    assert insert_mvf(resnet, n_segment=2) == 6 + 3  # every Bottleneck of layer3 and layer4
    assert isinstance(resnet.layer3[0].conv1, MVF) and not isinstance(resnet.layer2[0].conv1, MVF)
    resnet.eval()
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        ours = resnet(x)
        for block in list(resnet.layer3) + list(resnet.layer4):
            block.conv1 = OfficialMVF(block.conv1)
        official = resnet(x)
    torch.testing.assert_close(ours, official, atol=1e-4, rtol=1e-4)


def test_onnx_export(tmp_path):
    torch.manual_seed(0)
    block = torch.nn.Sequential(MVF(torch.nn.Conv2d(16, 8, 1), n_segment=4, in_channels=16, alpha=0.25)).eval()
    with torch.no_grad():
        block[0].bn.running_var.uniform_(0.5, 2)
    report = check_onnx(block, (torch.randn(8, 16, 6, 6),), tmp_path, atol=1e-5)
    assert "Conv" in report.op_types and "HardSwish" in report.op_types


def test_training_path_on_the_reference_backend_agrees():
    """A training step of the module (views, batch statistics, running statistics, gradients) on both backends."""
    from pyvision_fast import use_backend

    results = []
    for backend in ("cpu", "reference"):
        torch.manual_seed(6)  # the same module weights for both backends
        ours = MVF(torch.nn.Conv2d(16, 8, 1, bias=False), n_segment=2, in_channels=16, alpha=0.25).double().train()
        x = torch.randn(4, 16, 5, 6, dtype=torch.float64, requires_grad=True,
                        generator=torch.Generator().manual_seed(7))
        with use_backend(backend):
            out = ours(x)
            results.append((out, *torch.autograd.grad(out.square().sum(), [x, *ours.parameters()])))
    for a, b in zip(*results):
        assert_close(a, b)
