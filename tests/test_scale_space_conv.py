"""ScaleSpaceConv2d (our reconstruction of SCAN-CNN's scale-space convolution)."""
import math

import pytest
import torch
import torch.nn.functional as F

from op_harness import assert_close, check_onnx, gradcheck, ops_dispatched, on_implementation
from pyvision_fast.nn import ScaleSpaceConv2d, gaussian_derivative_basis


def test_basis_is_the_sampled_scale_normalised_gaussian_derivatives():
    sigma = torch.tensor([0.7, 1.3, 2.0], dtype=torch.float64)
    k = 7
    basis = gaussian_derivative_basis(sigma, k, order=2)
    assert basis.shape == (3, 6, k, k)
    x = torch.arange(k, dtype=torch.float64) - 3
    for s, sg in enumerate(sigma):
        g = torch.exp(-x**2 / (2 * sg**2))
        g = g / g.sum()
        gx = -(x / sg) * g  # sigma * d/dx
        gxx = ((x / sg) ** 2 - 1) * g  # sigma^2 * d2/dx2
        expected = [g[:, None] * g[None], g[:, None] * gx[None], gx[:, None] * g[None], g[:, None] * gxx[None],
                    gx[:, None] * gx[None], gxx[:, None] * g[None]]
        # order of the basis: (0,0), (1,0)=d/dy, (0,1)=d/dx, (2,0), (1,1), (0,2)
        order = [0, 2, 1, 5, 4, 3]
        for b, e in enumerate(order):
            assert_close(basis[s, b], expected[e])
        assert abs(float(basis[s, 0].sum()) - 1) < 1e-12
        assert abs(float(basis[s, 2].sum())) < 1e-12  # odd filters sum to 0


def test_forward_equals_conv_with_materialised_kernels_and_fuse_is_plain_conv():
    torch.manual_seed(0)
    layer = ScaleSpaceConv2d(5, 12, 5, num_scales=4, order=2, stride=2, padding=2).double()
    x = torch.randn(3, 5, 17, 19, dtype=torch.float64)
    out = layer(x)
    assert_close(out, F.conv2d(x, layer.weight(), layer.bias, 2, 2))
    fused = layer.fuse()
    assert type(fused) is torch.nn.Conv2d and fused.weight.shape == (12, 5, 5, 5)
    assert_close(fused(x), out)


def test_groups_use_their_own_scale():
    layer = ScaleSpaceConv2d(1, 6, 7, num_scales=3, order=1).double()
    with torch.no_grad():
        layer.coeff.zero_()
        layer.coeff[:, 0, 0] = 1.0  # every output channel: the order-0 Gaussian of its group's scale
    w = layer.weight()[:, 0]
    sig = layer.sigma()
    assert layer.group_sizes == [2, 2, 2]
    for o in range(6):
        assert_close(w[o], gaussian_derivative_basis(sig, 7, 1)[o // 2, 0])


def test_gradcheck_in_coefficients_and_log_sigma():
    torch.manual_seed(1)
    layer = ScaleSpaceConv2d(2, 3, 3, num_scales=3, order=2, padding=1).double()
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    group_of_channel = torch.repeat_interleave(torch.arange(3), torch.tensor(layer.group_sizes))

    def run(coeff, log_sigma):
        layer.coeff.data, layer.log_sigma.data = coeff, log_sigma
        return F.conv2d(x, torch.einsum("oib,obyx->oiyx", coeff, gaussian_derivative_basis(
            log_sigma.exp(), 3, 2)[group_of_channel]), None, 1, 1)

    sigma = torch.tensor([0.6, 0.75, 0.9], dtype=torch.float64).log().requires_grad_()
    gradcheck(run, (layer.coeff.detach().clone().requires_grad_(), sigma))
    out = layer(x)
    out.sum().backward()
    assert layer.log_sigma.grad is not None and layer.log_sigma.grad.abs().sum() > 0


def test_sigma_stays_representable():
    layer = ScaleSpaceConv2d(1, 2, 5, num_scales=2)
    with torch.no_grad():
        layer.log_sigma.copy_(torch.tensor([-10.0, 10.0]))
    assert torch.allclose(layer.sigma(), torch.tensor([0.5, 2.0]))


def test_learns_the_scale_of_a_blur_from_data():
    """Fit a 1-scale, order-0 layer to Gaussian blur with sigma 1.5: sigma converges to it."""
    torch.manual_seed(2)
    k, target_sigma = 9, 1.5
    x = torch.randn(8, 1, 24, 24, dtype=torch.float64)
    g = torch.exp(-(torch.arange(k, dtype=torch.float64) - 4) ** 2 / (2 * target_sigma**2))
    g = g / g.sum()
    y = F.conv2d(x, (g[:, None] * g[None])[None, None], padding=4)
    layer = ScaleSpaceConv2d(1, 1, k, num_scales=1, order=0, padding=4, bias=False).double()
    with torch.no_grad():
        layer.coeff.fill_(1.0)
        layer.log_sigma.fill_(math.log(0.8))
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        F.mse_loss(layer(x), y).backward()
        opt.step()
    assert abs(float(layer.sigma().detach()) - target_sigma) < 0.05


def test_onnx_export(tmp_path):
    torch.manual_seed(3)
    layer = ScaleSpaceConv2d(4, 8, 3, num_scales=4, padding=1).eval()
    report = check_onnx(layer, (torch.randn(2, 4, 10, 10),), tmp_path, atol=1e-5)
    assert "Conv" in report.op_types
    check_onnx(layer.fuse().eval(), (torch.randn(2, 4, 10, 10),), tmp_path / "fused", atol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(kernel_size=4), "odd"),
    (dict(kernel_size=1), "odd and >= 3"),
    (dict(num_scales=0), "num_scales"),
    (dict(num_scales=9), "num_scales"),
    (dict(order=-1), "order"),
])
def test_bad_arguments(kwargs, match):
    args = dict(in_channels=2, out_channels=8, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ScaleSpaceConv2d(**args)


# The weight op (pvf::scale_space_weight) -------------------------------------------------------------------

import pyvision_fast  # noqa: E402
from op_harness import BadInput, assert_close as close, check_compiled, opcheck, run_bad_input  # noqa: E402
from pyvision_fast import ops, use_backend  # noqa: E402
from pyvision_fast.reference import scale_space as ref  # noqa: E402

# (C_out, C_in, k, order, S): uneven groups, one scale, order 0 and 3, in_channels 0
SHAPES = [(12, 5, 5, 2, 4), (7, 3, 3, 1, 3), (5, 2, 7, 3, 2), (4, 1, 3, 0, 4), (3, 0, 3, 2, 2), (1, 2, 3, 2, 1)]
CPU_BACKENDS = ["cpu", "reference", pytest.param("triton", marks=pytest.mark.triton)]


def _weight_inputs(O, I, k, order, S, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    nb = (order + 1) * (order + 2) // 2
    coeff = torch.randn(O, I, nb, generator=g, dtype=torch.float64)
    log_sigma = (torch.rand(S, generator=g, dtype=torch.float64) * 1.6 - 0.8).clamp(max=math.log((k - 1) / 2))
    # the clamp's edges: below, exactly at the bounds (gradient passes), above
    edges = [math.log(0.5) - 0.3, math.log(0.5), math.log((k - 1) / 2), math.log((k - 1) / 2) + 0.2]
    log_sigma[:min(S, 4)] = torch.tensor(edges[:min(S, 4)], dtype=torch.float64)
    return (coeff.to(device, dtype).requires_grad_(), log_sigma.to(device, dtype).requires_grad_())


def _weight_and_grads(coeff, log_sigma, k, order, grad):
    w = ops.scale_space_weight(coeff, log_sigma, k, order)
    return (w, *torch.autograd.grad(w, [coeff, log_sigma], grad))


def _reference_and_grads(coeff, log_sigma, k, order, grad):
    c, ls = coeff.detach().cpu().double().requires_grad_(), log_sigma.detach().cpu().double().requires_grad_()
    # the clamp's bounds as the op's dtype holds them: a log-sigma exactly at float32(log 0.5) is at the bound for
    # the op, and below log 0.5 for a float64 clamp (where torch 2.11 passes the gradient at a bound, the two
    # would differ)
    bounds = tuple(float(torch.tensor(math.log(b), dtype=log_sigma.dtype)) for b in (0.5, (k - 1) / 2))
    w = ref.scale_space_weight(c, ls, k, order, 0.5, (k - 1) / 2, log_bounds=bounds)  # differentiated by autograd
    return (w, *torch.autograd.grad(w, [c, ls], grad.cpu().double()))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_weight_op_matches_the_layer_code_with_autograd(backend, dtype, shape):
    O, I, k, order, S = shape
    coeff, log_sigma = _weight_inputs(O, I, k, order, S, dtype)
    grad = torch.randn(O, I, k, k, dtype=dtype, generator=torch.Generator().manual_seed(1))
    with use_backend(backend):
        got = _weight_and_grads(coeff, log_sigma, k, order, grad)
    want = _reference_and_grads(coeff, log_sigma, k, order, grad)
    assert got[0].shape == (O, I, k, k) and got[0].dtype == dtype
    for a, b in zip(got, want):
        close(a, b, dtype, **({"atol": 2e-5, "rtol": 2e-5} if dtype == torch.float32 else {}))
    assert got[2][0] == 0 and (S < 4 or got[2][3] == 0)  # the clamp holds: no gradient
    if S >= 3:  # at a bound: as this torch's clamp (which changed in 2026 from passing to not passing)
        assert (got[2][1] != 0) == ref.CLAMP_GRAD_AT_BOUNDS and (got[2][2] != 0) == ref.CLAMP_GRAD_AT_BOUNDS


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_weight_op_gradcheck_in_coeff_and_log_sigma(backend):
    coeff, _ = _weight_inputs(5, 2, 5, 2, 3, torch.float64)
    log_sigma = torch.tensor([-0.4, 0.1, 0.5], dtype=torch.float64, requires_grad=True)  # inside the clamp
    with use_backend(backend):
        gradcheck(lambda c, s: ops.scale_space_weight(c, s, 5, 2), (coeff, log_sigma))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("at_bounds", [False, True])
def test_weight_op_clamp_convention_at_the_bounds(backend, at_bounds, monkeypatch):
    """Both conventions of torch's clamp gradient at its bounds (the installed torch picks one): the op's
    log_sigma gradient at log(sigma_min) and log(sigma_max) is the unclamped one or zero."""
    monkeypatch.setattr(ref, "CLAMP_GRAD_AT_BOUNDS", at_bounds)
    coeff, log_sigma = _weight_inputs(8, 2, 5, 2, 4, torch.float64)
    grad = torch.randn(8, 2, 5, 5, dtype=torch.float64)
    with use_backend(backend):
        got = _weight_and_grads(coeff, log_sigma, 5, 2, grad)[2]
    free = ref.scale_space_weight_backward(grad, coeff.detach(), log_sigma.detach(), 5, 2, 0.4, 2.5)[1]
    want = torch.stack([free[0] * 0, free[1] * at_bounds, free[2] * at_bounds, free[3] * 0])
    close(got, want)


def test_weight_op_noncontiguous_inputs():
    coeff, log_sigma = _weight_inputs(6, 4, 3, 2, 3, torch.float64)
    c = coeff.detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()  # (O, I, nb), O-minor
    ls = torch.stack([log_sigma.detach(), log_sigma.detach()], 1)[:, 0].requires_grad_()  # stride 2
    assert not c.is_contiguous() and not ls.is_contiguous()
    grad = torch.randn(6, 4, 3, 3, dtype=torch.float64).transpose(2, 3)
    for a, b in zip(_weight_and_grads(c, ls, 3, 2, grad), _reference_and_grads(coeff, log_sigma, 3, 2, grad)):
        close(a, b)


def test_layer_weight_is_the_op_and_equals_the_original_code():
    torch.manual_seed(4)
    layer = ScaleSpaceConv2d(5, 11, 5, num_scales=3, order=2).double()
    want = ref.scale_space_weight(layer.coeff, layer.log_sigma, 5, 2, 0.5, 2.0)
    close(layer.weight(), want)
    assert "ScaleSpaceWeight" in type(layer.weight().grad_fn).__name__


def test_weight_eager_call_equals_the_custom_op_and_modes_see_it():
    coeff, log_sigma = _weight_inputs(6, 3, 5, 2, 3, torch.float64)
    grad = torch.randn(6, 3, 5, 5, dtype=torch.float64)
    results = []
    for call, name in ((lambda: ops.scale_space_weight(coeff, log_sigma, 5, 2), "ScaleSpaceWeight"),
                       (lambda: torch.ops.pvf.scale_space_weight(coeff, log_sigma, 5, 2, 0.5, 2.0),
                        "pvf_scale_space_weight")):
        w = call()
        assert name in type(w.grad_fn).__name__
        results.append((w, *torch.autograd.grad(w, [coeff, log_sigma], grad)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    seen = ops_dispatched(lambda: ops.scale_space_weight(coeff, log_sigma, 5, 2))
    assert "pvf.scale_space_weight.default" in seen


def test_weight_opcheck_and_compile():
    coeff, log_sigma = _weight_inputs(6, 3, 3, 2, 3, torch.float32)
    opcheck(torch.ops.pvf.scale_space_weight.default, (coeff, log_sigma, 3, 2, 0.5, 1.0))
    opcheck(torch.ops.pvf.scale_space_weight_backward.default,
            (torch.randn(6, 3, 3, 3), coeff.detach(), log_sigma.detach(), 3, 2, 0.5, 1.0))
    layer = ScaleSpaceConv2d(3, 6, 3, num_scales=3, padding=1)
    check_compiled(layer, torch.randn(2, 3, 7, 7))


def test_weight_bad_inputs():
    c, ls = torch.randn(4, 2, 6), torch.zeros(2)
    cases = [
        BadInput("not a tensor", lambda: ops.scale_space_weight([1.0], ls, 3, 2), TypeError, "tensors"),
        BadInput("basis count", lambda: ops.scale_space_weight(c, ls, 3, 1), ValueError, r"\(C_out, C_in, 3\)"),
        BadInput("coeff rank", lambda: ops.scale_space_weight(c[0], ls, 3, 2), ValueError, "coeff"),
        BadInput("scales > C_out", lambda: ops.scale_space_weight(c, torch.zeros(5), 3, 2), ValueError, "S <="),
        BadInput("no scale", lambda: ops.scale_space_weight(c, torch.zeros(0), 3, 2), ValueError, "log_sigma"),
        BadInput("even k", lambda: ops.scale_space_weight(c, ls, 4, 2), ValueError, "odd"),
        BadInput("k type", lambda: ops.scale_space_weight(c, ls, 3.0, 2), TypeError, "kernel_size"),
        BadInput("order", lambda: ops.scale_space_weight(c, ls, 3, -1), ValueError, "order"),
        BadInput("dtypes", lambda: ops.scale_space_weight(c, ls.double(), 3, 2), TypeError, "float32"),
        BadInput("int", lambda: ops.scale_space_weight(c.int(), ls.int(), 3, 2), TypeError, "float32"),
        BadInput("sigma_min", lambda: ops.scale_space_weight(c, ls, 3, 2, sigma_min=0.0), ValueError, "sigma_min"),
        BadInput("sigma order", lambda: ops.scale_space_weight(c, ls, 5, 2, 1.5, 1.0), ValueError, "below"),
        BadInput("log_sigma rank", lambda: ops.scale_space_weight(c, ls[None], 3, 2), ValueError,
                 r"log_sigma must be \(S,\)"),
    ]
    for backend in ("cpu", "reference"):  # checked before any backend runs
        with use_backend(backend):
            for case in cases:
                run_bad_input(case)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_weight_without_output_channels(backend):
    """C_out = 0 (one scale allowed): an empty weight and zero gradients on every backend (the batched path
    joined an empty list of scale groups)."""
    coeff, log_sigma = torch.randn(0, 2, 6, requires_grad=True), torch.zeros(1, requires_grad=True)
    with use_backend(backend):
        w = ops.scale_space_weight(coeff, log_sigma, 3, 2)
        g_coeff, g_log_sigma = torch.autograd.grad(w.sum(), [coeff, log_sigma])
    assert w.shape == (0, 2, 3, 3) and g_coeff.shape == (0, 2, 6)
    assert torch.equal(g_log_sigma, torch.zeros(1))


# GPU: the current path and the candidate, on the benchmark's layer ------------------------------------------

IMPLS = [pytest.param(None, id="current"), pytest.param("scale_space_weight", id="candidate")]


@pytest.mark.cuda
@pytest.mark.parametrize("candidates", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES + [(64, 64, 5, 2, 4), (30, 17, 9, 4, 7)], ids=str)
def test_weight_op_on_gpu(candidates, dtype, shape):
    O, I, k, order, S = shape
    coeff, log_sigma = _weight_inputs(O, I, k, order, S, dtype, "cuda")
    grad = torch.randn(O, I, k, k, dtype=dtype, generator=torch.Generator().manual_seed(1)).cuda()
    with on_implementation(candidates):
        got = _weight_and_grads(coeff, log_sigma, k, order, grad)
    want = _reference_and_grads(coeff, log_sigma, k, order, grad)
    for a, b in zip(got, want):
        close(a, b, dtype, **({"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {}))


@pytest.mark.cuda
@pytest.mark.parametrize("candidates", IMPLS)
def test_layer_train_step_on_gpu_without_host_sync(candidates):
    torch.manual_seed(5)
    layer = ScaleSpaceConv2d(8, 12, 5, num_scales=4, padding=2).cuda().double()
    x = torch.randn(2, 8, 9, 11, dtype=torch.float64, device="cuda", requires_grad=True)
    coeff, log_sigma = layer.coeff.detach().requires_grad_(), layer.log_sigma.detach().requires_grad_()
    grad = torch.randn(12, 8, 5, 5, dtype=torch.float64, device="cuda")
    with on_implementation(candidates):
        gradcheck(lambda c, s: ops.scale_space_weight(c, s, 5, 2), (coeff, log_sigma))
        layer(x).sum().backward()  # warm-up: caches, Triton compilation
        ops.scale_space_weight(coeff, log_sigma, 5, 2).backward(grad)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:  # the op alone: cuDNN's own behaviour is not this test's business
            coeff.grad = log_sigma.grad = None
            ops.scale_space_weight(coeff, log_sigma, 5, 2).backward(grad)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        layer.zero_grad(set_to_none=True)
        layer(x).square().sum().backward()
    want = ref.scale_space_weight_backward(grad, coeff.detach(), log_sigma.detach(), 5, 2, 0.5, 2.0)
    close(coeff.grad, want[0])
    close(log_sigma.grad, want[1])
    w = ref.scale_space_weight(layer.coeff, layer.log_sigma, 5, 2, 0.5, 2.0)
    g = torch.autograd.grad(F.conv2d(x, w, layer.bias, 1, 2).square().sum(), [layer.coeff, layer.log_sigma])
    close(layer.coeff.grad, g[0])
    close(layer.log_sigma.grad, g[1])


_SM90_COMPILE = """
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from pyvision_fast.triton import scale_space as tri

for dtype in ("fp32", "fp64"):
    for backward in (False, True):
        constants = dict(K=5, KK=32, ORDER=2, NB=6, BACKWARD=backward, AT_BOUNDS=False, BLOCK_R=64)
        signature = {**{n: "*" + dtype for n in ("COEFF", "LOGS", "BOUNDS", "GRAD", "OUT", "PARTIAL")},
                     "O": "i32", "I": "i32", "S": "i32", **{k: "constexpr" for k in constants}}
        try:
            src = ASTSource(fn=tri._weight_kernel, signature=signature, constexprs=constants)
        except TypeError as exc:
            print("skip: ASTSource differs in this Triton:", exc)
            sys.exit(0)
        compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        assert ".target sm_90" in compiled.asm["ptx"]
print("ok")
"""


@pytest.mark.triton
def test_weight_kernel_compiles_for_sm90():
    """The Triton weight kernels (float32/float64, forward/backward) compile to sm_90 code: Triton's own ptxas,
    no GPU needed. A separate process, because this one runs Triton's interpreter."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("triton")
    if torch.cuda.is_available():
        pytest.skip("on a GPU the kernels run (test_weight_op_on_gpu)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", _SM90_COMPILE], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    if out.stdout.startswith("skip"):
        pytest.skip(out.stdout.strip())
    assert out.stdout.strip().endswith("ok")
