"""scale_attention / nn.ScaleAttention (our reconstruction of SCAN-CNN's scale attention) against the reference."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from op_harness import DEVICES, BadInput, assert_close, check_compiled, check_onnx, float_dtypes, gradcheck, opcheck
from op_harness import run_bad_input
from pyvision_fast import ops, use_backend
from pyvision_fast.nn import ScaleAttention, ScaleSpaceConv2d
from pyvision_fast.reference import scale_space as ref


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=25, deadline=None)
@given(B=st.integers(0, 3), S=st.integers(1, 5), P=st.integers(0, 300), seed=st.integers(0, 2**16))
def test_matches_reference(device, B, S, P, seed):
    g = torch.Generator().manual_seed(seed)
    for dtype in float_dtypes(device):
        y = torch.randn(B, S, P, generator=g, dtype=torch.float64)
        gain = torch.randn(S, generator=g, dtype=torch.float64) * 2
        y1, g1 = y.to(device, dtype).requires_grad_(), gain.to(device, dtype).requires_grad_()
        out = ops.scale_attention(y1, g1)
        # the reference takes the values the op got (rounded to dtype): a half type's rounding of 300 inputs
        # would otherwise dominate the gain gradient, a sum over all of them
        y64, g64 = y1.detach().cpu().double().requires_grad_(), g1.detach().cpu().double().requires_grad_()
        expected = ref.scale_attention(y64, g64)
        assert_close(out, expected, dtype)
        go = torch.randn(out.shape, generator=g, dtype=torch.float64).to(dtype).double()
        got = torch.autograd.grad(out, [y1, g1], go.to(device, dtype))
        want = torch.autograd.grad(expected, [y64, g64], go, allow_unused=True)
        want = [torch.zeros_like(t) if w is None else w for w, t in zip(want, [y64, g64])]
        assert_close(got[0], want[0], dtype)
        assert_close(got[1], want[1], dtype, **({"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {}))


def test_weights_are_a_softmax_over_scales_and_zero_gain_is_identity():
    torch.manual_seed(0)
    y = torch.randn(2, 4, 3, 5, 5, dtype=torch.float64)
    assert_close(ops.scale_attention(y, torch.zeros(4, dtype=torch.float64)), y)
    gain = torch.tensor([0.5, 1.0, 2.0, -1.0], dtype=torch.float64)
    w = ops.scale_attention(y, gain) / (4 * y)
    assert_close(w.sum(dim=1), torch.ones(2, 3, 5, 5, dtype=torch.float64))
    assert (w > 0).all()
    # the largest weight goes to the scale with the largest gain * |y|
    assert torch.equal(w.argmax(dim=1), (gain.view(1, 4, 1, 1, 1) * y.abs()).argmax(dim=1))


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_and_reference_backend(device):
    torch.manual_seed(1)
    y = torch.randn(2, 3, 7, dtype=torch.float64).to(device).requires_grad_()
    gain = torch.randn(3, dtype=torch.float64).to(device).requires_grad_()
    gradcheck(ops.scale_attention, (y, gain))
    go = torch.randn(2, 3, 7, dtype=torch.float64).to(device)
    native = torch.autograd.grad(ops.scale_attention(y, gain), [y, gain], go)
    with use_backend("reference"):
        reference = torch.autograd.grad(ops.scale_attention(y, gain), [y, gain], go)
    for a, b in zip(native, reference):
        assert_close(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_and_compile(device):
    y = torch.randn(2, 3, 10, device=device, requires_grad=True)
    gain = torch.randn(3, device=device, requires_grad=True)
    opcheck(torch.ops.pvf.scale_attention.default, (y, gain))
    check_compiled(ops.scale_attention, y, gain)
    layer = ScaleAttention(3, init_gain=0.5).to(device)
    check_compiled(layer, torch.randn(2, 6, 4, 4, device=device))


def test_bad_inputs():
    y = torch.randn(2, 3, 10)
    cases = [
        BadInput("rank", lambda: ops.scale_attention(y[0, 0], torch.ones(3)), ValueError, r"\(B, S, \.\.\.\)"),
        BadInput("gain shape", lambda: ops.scale_attention(y, torch.ones(4)), ValueError, "gain"),
        BadInput("gain dtype", lambda: ops.scale_attention(y, torch.ones(3, dtype=torch.float64)), TypeError,
                 "same dtype"),
        BadInput("int input", lambda: ops.scale_attention(y.int(), torch.ones(3)), TypeError, "float32 or float64"),
        BadInput("not a tensor", lambda: ops.scale_attention(y, [1.0, 1.0, 1.0]), TypeError, "tensors"),
        BadInput("module groups", lambda: ScaleAttention(4)(torch.randn(2, 6, 3, 3)), ValueError, "4 equal"),
        BadInput("module scales", lambda: ScaleAttention(0), ValueError, "num_scales"),
        BadInput("no scale", lambda: ops.scale_attention(torch.randn(2, 0, 10), torch.ones(0)), ValueError,
                 "number of scales"),
        BadInput("gain rank", lambda: ops.scale_attention(y, torch.ones(1, 3)), ValueError,
                 r"'gain' must have shape \(3\), got \(1, 3\)"),
        BadInput("gain vs trailing dims", lambda: ops.scale_attention(torch.randn(2, 3, 4, 5), torch.ones(4)),
                 ValueError, r"'gain' must have shape \(3\)"),
    ]
    # every backend refuses them before it runs: the compiled kernels (which check in C++ too) and the reference
    for backend in ("cpu", "reference"):
        with use_backend(backend):
            for case in cases:
                run_bad_input(case)


def test_hierarchical_stack_trains_and_exports(tmp_path):
    """Two ScaleSpaceConv2d + ScaleAttention stages: gains receive gradients; ONNX Runtime matches."""
    torch.manual_seed(3)
    net = torch.nn.Sequential(ScaleSpaceConv2d(3, 8, 3, num_scales=4, padding=1), ScaleAttention(4, 0.3),
                              torch.nn.ReLU(), ScaleSpaceConv2d(8, 8, 5, num_scales=2, padding=2),
                              ScaleAttention(2, 0.3))
    x = torch.randn(2, 3, 12, 12)
    net(x).square().mean().backward()
    assert net[1].gain.grad.abs().sum() > 0 and net[4].gain.grad.abs().sum() > 0
    report = check_onnx(net.eval(), (x,), tmp_path, atol=1e-5)
    assert "Softmax" in report.op_types
