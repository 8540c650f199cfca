"""deform_conv2d and the DeformConv2d layers against torchvision.ops.deform_conv2d (values and every gradient)."""
import math

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from op_harness import DEVICES, BadInput, assert_close, check_compiled, check_onnx, float_dtypes, gradcheck, opcheck
from op_harness import on_implementation
from op_harness import ops_dispatched, run_bad_input
from pyvision_fast import ops, use_backend
from pyvision_fast.nn import DeformConv2d, DeformConv2dPack, ModulatedDeformConv2dPack


def _case(g, B, C_per, Cout_per, groups, og, kh, kw, H, W, stride, padding, dilation, use_mask, spread):
    C = C_per * groups * og // math.gcd(groups, og)
    Cout = Cout_per * groups
    Ho = (H + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    Wo = (W + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    x = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    # offsets large enough that many samples fall outside the image and on its border
    offset = torch.randn(B, 2 * og * kh * kw, Ho, Wo, generator=g, dtype=torch.float64) * spread
    weight = torch.randn(Cout, C // groups, kh, kw, generator=g, dtype=torch.float64)
    bias = torch.randn(Cout, generator=g, dtype=torch.float64)
    mask = torch.rand(B, og * kh * kw, Ho, Wo, generator=g, dtype=torch.float64) if use_mask else None
    return x, offset, weight, bias, mask


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=30, deadline=None)
@given(B=st.integers(0, 3), C_per=st.integers(1, 3), Cout_per=st.integers(1, 3), groups=st.sampled_from([1, 2]),
       og=st.sampled_from([1, 2, 3]), kh=st.integers(1, 3), kw=st.integers(1, 3), H=st.integers(1, 7),
       W=st.integers(1, 8), stride=st.tuples(st.integers(1, 2), st.integers(1, 2)),
       padding=st.tuples(st.integers(0, 2), st.integers(0, 2)), dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
       use_mask=st.booleans(), use_bias=st.booleans(), spread=st.sampled_from([0.5, 3.0]), seed=st.integers(0, 2**16))
def test_matches_torchvision(device, B, C_per, Cout_per, groups, og, kh, kw, H, W, stride, padding, dilation,
                             use_mask, use_bias, spread, seed):
    if H + 2 * padding[0] < dilation[0] * (kh - 1) + 1 or W + 2 * padding[1] < dilation[1] * (kw - 1) + 1:
        return  # empty output: covered by the bad-input table
    g = torch.Generator().manual_seed(seed)
    x, offset, weight, bias, mask = _case(g, B, C_per, Cout_per, groups, og, kh, kw, H, W, stride, padding, dilation,
                                          use_mask, spread)
    bias = bias if use_bias else None
    inputs = [t for t in (x, offset, weight, bias, mask) if t is not None]
    go = None
    for dtype in float_dtypes(device):
        # torchvision in float64 on the inputs as this dtype holds them: an offset rounded to half precision can
        # move a sample across a pixel edge, where the offset gradient jumps
        ref_in = [t.to(dtype).double().requires_grad_() for t in inputs]
        it = iter(ref_in)
        rx, roff, rw = next(it), next(it), next(it)
        rb = next(it) if use_bias else None
        rm = next(it) if use_mask else None
        expected = torchvision.ops.deform_conv2d(rx, roff, rw, rb, stride, padding, dilation, rm)
        if go is None:
            go = torch.randn(expected.shape, generator=g, dtype=torch.float64)
        want = torch.autograd.grad(expected, ref_in, go) if expected.numel() else [torch.zeros_like(t) for t in ref_in]
        ins = [t.detach().to(device, dtype).requires_grad_() for t in ref_in]
        it = iter(ins)
        tx, toff, tw = next(it), next(it), next(it)
        tb = next(it) if use_bias else None
        tm = next(it) if use_mask else None
        out = ops.deform_conv2d(tx, toff, tw, tb, stride, padding, dilation, tm)
        assert out.shape == expected.shape and out.dtype == dtype
        assert_close(out, expected, dtype)
        got = torch.autograd.grad(out, ins, go.to(device, dtype), allow_unused=True)
        tol = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {}  # sums over batch and positions
        for a, b in zip(got, want):
            assert_close(torch.zeros_like(b) if a is None else a, b, dtype, **tol)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_all_inputs(device):
    g = torch.Generator().manual_seed(0)
    x, offset, weight, bias, mask = _case(g, 2, 1, 2, 2, 2, 2, 3, 5, 6, (1, 2), (1, 0), (1, 2), True, 1.5)
    ins = [t.to(device).requires_grad_() for t in (x, offset, weight, bias, mask)]
    gradcheck(lambda a, o, w, b, m: ops.deform_conv2d(a, o, w, b, (1, 2), (1, 0), (1, 2), m), ins)


def test_reference_backend_agrees_with_cpu():
    g = torch.Generator().manual_seed(1)
    ins = [t.requires_grad_() for t in _case(g, 3, 2, 2, 2, 1, 3, 3, 6, 7, (2, 1), (1, 1), (1, 1), True, 2.0)]
    results = []
    for backend in ("cpu", "reference"):
        with use_backend(backend):
            out = ops.deform_conv2d(ins[0], ins[1], ins[2], ins[3], (2, 1), 1, 1, ins[4])
            results.append((out, *torch.autograd.grad(out, ins, torch.ones_like(out))))
    for a, b in zip(*results):
        assert_close(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_batches_that_span_several_chunks(monkeypatch, device):
    import pyvision_fast.ops.deform_conv as dc

    g = torch.Generator().manual_seed(2)
    ins = [t.to(device).requires_grad_()
           for t in _case(g, 7, 2, 2, 1, 1, 3, 3, 5, 5, (1, 1), (1, 1), (1, 1), True, 1.0)]
    expected = torchvision.ops.deform_conv2d(ins[0], ins[1], ins[2], ins[3], 1, 1, 1, ins[4])
    want = torch.autograd.grad(expected, ins, torch.ones_like(expected))
    per_image = 2 * 9 * 25 * 8
    monkeypatch.setattr(dc, "COLUMN_BUDGET_BYTES", 3 * per_image)  # chunks of 3, 3 and 1 images
    monkeypatch.setattr(dc, "CUDA_COLUMN_BUDGET_BYTES", 3 * per_image)
    out = ops.deform_conv2d(ins[0], ins[1], ins[2], ins[3], 1, 1, 1, ins[4])
    assert_close(out, expected)
    for a, b in zip(torch.autograd.grad(out, ins, torch.ones_like(out)), want):
        assert_close(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_and_compile(device):
    g = torch.Generator().manual_seed(3)
    x, offset, weight, bias, mask = _case(g, 2, 2, 2, 1, 2, 3, 3, 6, 6, (1, 1), (1, 1), (1, 1), True, 1.0)
    x, offset, weight, bias, mask = (t.to(device, torch.float32).requires_grad_()
                                     for t in (x, offset, weight, bias, mask))
    opcheck(torch.ops.pvf.deform_conv2d.default, (x, weight, offset, mask, bias, [1, 1], [1, 1], [1, 1]))
    opcheck(torch.ops.pvf.deform_conv2d.default, (x, weight, offset, None, None, [1, 1], [1, 1], [1, 1]))
    check_compiled(lambda a, o, w, b, m: ops.deform_conv2d(a, o, w, b, 1, 1, 1, m), x, offset, weight, bias, mask)


def test_bad_inputs():
    x = torch.randn(2, 4, 6, 6)
    w = torch.randn(6, 4, 3, 3)
    off = torch.randn(2, 18, 6, 6)
    cases = [
        BadInput("input rank", lambda: ops.deform_conv2d(x[0], off, w, padding=1), ValueError, "input must have 4"),
        BadInput("weight channels", lambda: ops.deform_conv2d(x, off, torch.randn(6, 3, 3, 3), padding=1), ValueError,
                 "multiple of weight.shape"),
        BadInput("groups vs out", lambda: ops.deform_conv2d(x, off, torch.randn(5, 2, 3, 3), padding=1), ValueError,
                 "divisible by groups"),
        BadInput("offset channels", lambda: ops.deform_conv2d(x, off[:, :17], w, padding=1), ValueError,
                 "multiple of 2 \\* kh \\* kw"),
        BadInput("offset groups", lambda: ops.deform_conv2d(x, torch.randn(2, 54, 6, 6), w, padding=1), ValueError,
                 "divisible by offset groups"),
        BadInput("offset size", lambda: ops.deform_conv2d(x, off, w), ValueError, "offset"),
        BadInput("mask shape", lambda: ops.deform_conv2d(x, off, w, padding=1, mask=torch.rand(2, 8, 6, 6)),
                 ValueError, "mask"),
        BadInput("bias shape", lambda: ops.deform_conv2d(x, off, w, torch.zeros(5), padding=1), ValueError, "bias"),
        BadInput("dtype", lambda: ops.deform_conv2d(x, off.double(), w, padding=1), TypeError, "same dtype"),
        BadInput("int input", lambda: ops.deform_conv2d(x.int(), off.int(), w.int(), padding=1), TypeError,
                 "float32 or float64"),
        BadInput("stride 0", lambda: ops.deform_conv2d(x, off, w, stride=0, padding=1), ValueError, "stride"),
        BadInput("negative padding", lambda: ops.deform_conv2d(x, off, w, padding=-1), ValueError, "padding"),
        BadInput("stride type", lambda: ops.deform_conv2d(x, off, w, stride=1.5), TypeError, "stride"),
        BadInput("empty output", lambda: ops.deform_conv2d(x[:, :, :1, :1], off[:, :, :1, :1], w), ValueError,
                 "empty"),
        BadInput("batch", lambda: ops.deform_conv2d(x, off[:1], w, padding=1), ValueError, "offset"),
        # a larger batch than the input's was accepted when the kernels saw batch chunks of the offset
        BadInput("offset batch larger", lambda: ops.deform_conv2d(x, torch.cat([off, off[:1]]), w, padding=1),
                 ValueError, "offset has batch size 3, input 2"),
        BadInput("mask batch larger", lambda: ops.deform_conv2d(x, off, w, padding=1, mask=torch.rand(3, 9, 6, 6)),
                 ValueError, "mask has batch size 3, input 2"),
        BadInput("offset height", lambda: ops.deform_conv2d(x, off[:, :, :5], w, padding=1), ValueError,
                 r"offset must have shape \(2, 18, 6, 6\), got \(2, 18, 5, 6\)"),
        BadInput("offset width vs stride", lambda: ops.deform_conv2d(x, off, w, stride=(1, 2), padding=1),
                 ValueError, r"offset must have shape \(2, 18, 6, 3\)"),
        BadInput("offset vs dilation", lambda: ops.deform_conv2d(x, off, w, padding=1, dilation=2), ValueError,
                 r"offset must have shape \(2, 18, 4, 4\)"),
        BadInput("mask groups", lambda: ops.deform_conv2d(x, off, w, padding=1, mask=torch.rand(2, 18, 6, 6)),
                 ValueError, r"mask must be .* shape \(2, 9, 6, 6\)"),
        BadInput("mask size", lambda: ops.deform_conv2d(x, off, w, padding=1, mask=torch.rand(2, 9, 6, 5)),
                 ValueError, r"mask must be .* shape \(2, 9, 6, 6\)"),
        BadInput("offset vs weight taps", lambda: ops.deform_conv2d(x, off, torch.randn(6, 4, 2, 2), padding=1),
                 ValueError, "multiple of 2 \\* kh \\* kw = 8"),
        BadInput("dilation 0", lambda: ops.deform_conv2d(x, off, w, padding=1, dilation=(1, 0)), ValueError,
                 "dilation"),
        BadInput("empty input height", lambda: ops.deform_conv2d(x[:, :, :0], off[:, :, :0], w), ValueError,
                 "empty"),
    ]
    # every backend refuses them before it runs: the compiled kernels (which check in C++ too) and the reference
    for backend in ("cpu", "reference"):
        with use_backend(backend):
            for case in cases:
                run_bad_input(case)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_an_input_one_tap_short_with_stride_two_gives_one_output(backend):
    """Ho = (H + 2 ph - dh (kh - 1) - 1) / sh + 1 in C++ integer division (torchvision's): 2 rows, 3 taps, stride
    2 give (2 - 3) / 2 + 1 = 1 output row on every backend (Python's floor division would give 0)."""
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(1, 2, 2, 5, generator=g, dtype=torch.float64), torch.randn(3, 2, 3, 3, generator=g,
                                                                                  dtype=torch.float64)
    off = torch.randn(1, 18, 1, 2, generator=g, dtype=torch.float64)
    with use_backend(backend):
        out = ops.deform_conv2d(x, off, w, stride=2)
    assert out.shape == (1, 3, 1, 2)
    assert_close(out, torchvision.ops.deform_conv2d(x, off, w, stride=2))


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_an_empty_plane_that_still_has_an_output_gives_the_bias(backend):
    """H = 0 with stride 2: (0 - 1) / 2 + 1 = 1 output row (C++ division, torchvision's), sampled from nothing:
    the bias alone, on the kernels and on the reference (which the kernels' empty planes must not outgrow)."""
    x, w = torch.randn(2, 3, 0, 4, dtype=torch.float64), torch.randn(5, 3, 1, 3, dtype=torch.float64)
    b, off = torch.randn(5, dtype=torch.float64), torch.randn(2, 6, 1, 2, dtype=torch.float64)
    with use_backend(backend):
        out = ops.deform_conv2d(x, off, w, b, stride=(2, 1))
    assert_close(out, torchvision.ops.deform_conv2d(x, off, w, b, stride=(2, 1)))
    assert_close(out, b.view(1, 5, 1, 1).expand(2, 5, 1, 2))


@pytest.mark.triton
def test_bad_inputs_reach_no_triton_kernel():
    """The Triton kernels index with the sizes they are given: the public table above on the Triton backend, and
    the custom op called directly (past the public function's checks), raise before any launch."""
    x, w, off = torch.randn(2, 4, 6, 6), torch.randn(6, 4, 3, 3), torch.randn(2, 18, 6, 6)
    direct = torch.ops.pvf.deform_conv2d
    cases = [
        BadInput("offset batch", lambda: direct(x, w, off[:1], None, None, [1, 1], [1, 1], [1, 1]), ValueError,
                 "offset must have shape"),
        BadInput("offset size", lambda: direct(x, w, off, None, None, [1, 1], [0, 0], [1, 1]), ValueError,
                 "offset must have shape"),
        BadInput("mask shape", lambda: direct(x, w, off, torch.rand(2, 9, 5, 6), None, [1, 1], [1, 1], [1, 1]),
                 ValueError, "mask must be"),
        BadInput("bias shape", lambda: direct(x, w, off, None, torch.zeros(5), [1, 1], [1, 1], [1, 1]), ValueError,
                 "bias must be"),
        BadInput("stride 0", lambda: direct(x, w, off, None, None, [0, 1], [1, 1], [1, 1]), ValueError, "stride"),
        BadInput("weight vs input", lambda: direct(x, torch.randn(6, 3, 3, 3), off, None, None, [1, 1], [1, 1],
                                                   [1, 1]), ValueError, "does not fit 4 input channels"),
        BadInput("backward grad", lambda: torch.ops.pvf.deform_conv2d_backward(
            torch.randn(2, 6, 5, 6), x, w, off, None, None, [1, 1], [1, 1], [1, 1]), ValueError, "grad must be"),
    ]
    with use_backend("triton"):
        for case in cases:
            run_bad_input(case)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    x = torch.randn(0, 4, 6, 6, device=device, requires_grad=True)
    w = torch.randn(6, 4, 3, 3, device=device, requires_grad=True)
    out = ops.deform_conv2d(x, torch.randn(0, 18, 6, 6, device=device), w, torch.zeros(6, device=device), padding=1)
    assert out.shape == (0, 6, 6, 6)
    out.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w))


def test_module_matches_torchvision_and_loads_its_state_dict():
    torch.manual_seed(4)
    tv = torchvision.ops.DeformConv2d(4, 6, 3, stride=1, padding=1, dilation=1, groups=2)
    ours = DeformConv2d(4, 6, 3, stride=1, padding=1, dilation=1, groups=2)
    assert set(ours.state_dict()) == set(tv.state_dict())
    ours.load_state_dict(tv.state_dict())
    x, off, m = torch.randn(2, 4, 7, 7), torch.randn(2, 18, 7, 7), torch.rand(2, 9, 7, 7)
    assert_close(ours(x, off, m), tv(x, off, m))


def test_pack_layers_start_as_plain_convolutions():
    torch.manual_seed(5)
    x = torch.randn(2, 4, 9, 9)
    pack = DeformConv2dPack(4, 6, 3, padding=1, deform_groups=2)
    assert set(pack.state_dict()) == {"weight", "conv_offset.weight", "conv_offset.bias"}
    assert pack.conv_offset.out_channels == 2 * 2 * 9
    assert_close(pack(x), torch.nn.functional.conv2d(x, pack.weight, None, 1, 1))
    mod = ModulatedDeformConv2dPack(4, 6, 3, padding=1, deform_groups=1)
    assert set(mod.state_dict()) == {"weight", "bias", "conv_offset.weight", "conv_offset.bias"}
    assert mod.conv_offset.out_channels == 3 * 9
    torch.nn.init.normal_(mod.bias)
    # zero offsets, mask sigmoid(0) = 0.5
    assert_close(mod(x), 0.5 * torch.nn.functional.conv2d(x, mod.weight, None, 1, 1) + mod.bias.view(1, -1, 1, 1))


def test_modulated_pack_splits_offsets_and_mask_like_mmcv():
    torch.manual_seed(6)
    mod = ModulatedDeformConv2dPack(3, 4, 3, padding=1)
    torch.nn.init.normal_(mod.conv_offset.weight, 0, 0.3)
    x = torch.randn(1, 3, 6, 6)
    out = mod.conv_offset(x)
    o1, o2, m = out[:, :9], out[:, 9:18], out[:, 18:]
    expected = torchvision.ops.deform_conv2d(x, torch.cat([o1, o2], 1), mod.weight, mod.bias, 1, 1, 1, m.sigmoid())
    assert_close(mod(x), expected)
    mod(x).sum().backward()
    assert mod.conv_offset.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("cls,kwargs", [
    (DeformConv2dPack, dict(deform_groups=2, groups=2, stride=2, padding=1)),
    (ModulatedDeformConv2dPack, dict(padding=2, dilation=2)),
])
def test_onnx_export(cls, kwargs, tmp_path):
    torch.manual_seed(7)
    layer = cls(4, 6, 3, **kwargs).eval()
    torch.nn.init.normal_(layer.conv_offset.weight, 0, 0.5)  # offsets that move samples across the border
    report = check_onnx(layer, (torch.randn(2, 4, 9, 11),), tmp_path, atol=1e-4)
    assert "GridSample" in report.op_types and "MatMul" in report.op_types


@pytest.mark.parametrize("backend", ["cpu", "reference", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_samples_outside_the_image_never_read_it(backend):
    """Outside samples are zeros, as in torchvision, even when the image holds inf at the corner they index."""
    device = "cuda" if backend == "cuda" else "cpu"
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, device=device)
    x[0, :, 0, 0] = float("inf")
    offset = torch.full((1, 18, 5, 5), -40.0, dtype=torch.float64, device=device, requires_grad=True)  # far outside
    weight = torch.randn(3, 2, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    mask = torch.rand(1, 9, 5, 5, dtype=torch.float64, device=device, requires_grad=True)
    expected = torchvision.ops.deform_conv2d(x, offset, weight, None, 1, 1, 1, mask)
    with use_backend(backend):
        out = ops.deform_conv2d(x, offset, weight, None, 1, 1, 1, mask)
        grads = torch.autograd.grad(out.sum(), [offset, weight, mask])
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
    assert_close(out, expected)


@pytest.mark.parametrize("device", DEVICES)
def test_gpu_budget_takes_a_typical_batch_in_one_chunk(device):
    """The benchmark's shape (B=8, 64 channels, 56x56, 3x3) is one chunk on a GPU, several on a CPU."""
    import pyvision_fast.ops.deform_conv as dc

    x = torch.empty(8, 64, 56, 56, device=device)
    offset = torch.empty(8, 18, 56, 56, device=device)
    chunks = dc._chunks(x, offset, [3, 3, 1, 1, 1, 1, 1, 1])
    assert (len(chunks) == 1) == (device == "cuda")


def _both_ops():
    g = torch.Generator().manual_seed(8)
    ins = [t.requires_grad_() for t in _case(g, 2, 2, 2, 2, 2, 3, 3, 5, 6, (1, 2), (1, 0), (1, 2), True, 1.5)]
    x, offset, weight, bias, mask = ins
    return (ins, lambda: ops.deform_conv2d(x, offset, weight, bias, (1, 2), (1, 0), (1, 2), mask),
            lambda: torch.ops.pvf.deform_conv2d(x, weight, offset, mask, bias, [1, 2], [1, 0], [1, 2]))


def test_eager_calls_skip_the_custom_op_and_agree_with_it():
    ins, eager, custom = _both_ops()
    results = []
    for call, backward_name in ((eager, "_DeformConv2d"), (custom, "pvf_deform_conv2d")):
        out = call()
        assert backward_name in type(out.grad_fn).__name__
        results.append((out, *torch.autograd.grad(out, ins, torch.ones_like(out))))
    for a, b in zip(*results):  # the same kernels on the same inputs: bit-identical
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_eager_calls_have_no_double_backward_and_modes_see_the_custom_op():
    ins, eager, _ = _both_ops()
    out = eager()
    (gx,) = torch.autograd.grad(out, ins[0], torch.ones_like(out, requires_grad=True), create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        gx.sum().backward()
    seen = ops_dispatched(eager)
    assert "pvf.deform_conv2d.default" in seen


# The Triton candidate (pyvision_fast.triton.deform_conv): Triton's interpreter on CPU (small shapes), native on
# GPUs; float64 runs the Triton kernels only under the interpreter (GPUs route it to the CUDA kernels).

TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TRITON_DTYPES = [torch.float64, torch.float32, torch.float16] + ([torch.bfloat16] if TRITON_DEVICE == "cuda" else [])
# Relative tolerances against float64 torchvision on the same (rounded) inputs.
TRITON_TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def _close(actual, expected, dtype, scale=1.0):
    tol = TRITON_TOL[dtype] * scale
    atol = tol * max(1.0, float(expected.detach().abs().max())) if expected.numel() else tol
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), rtol=tol, atol=atol)


def _against_torchvision(x, offset, weight, bias, mask, stride, padding, dilation, backend="triton", seed=0):
    """Our op under ``backend`` against torchvision in float64 (CPU) on the same values: output and the
    gradients of every tensor input."""
    dtype = x.dtype
    ins = [t for t in (x, offset, weight, bias, mask) if t is not None]
    ins = [t.detach().requires_grad_() for t in ins]
    it = iter(ins)
    tx, toff, tw = next(it), next(it), next(it)
    tb = next(it) if bias is not None else None
    tm = next(it) if mask is not None else None
    refs = [t.detach().double().cpu().requires_grad_() for t in ins]
    it = iter(refs)
    rx, roff, rw = next(it), next(it), next(it)
    rb = next(it) if bias is not None else None
    rm = next(it) if mask is not None else None
    expected = torchvision.ops.deform_conv2d(rx, roff, rw, rb, stride, padding, dilation, rm)
    go = torch.randn(expected.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    with use_backend(backend):
        out = ops.deform_conv2d(tx, toff, tw, tb, stride, padding, dilation, tm)
        got = torch.autograd.grad(out, ins, go.to(out.device, dtype)) if out.numel() else [torch.zeros_like(t)
                                                                                            for t in ins]
    assert out.shape == expected.shape and out.dtype == dtype
    _close(out, expected, dtype)
    want = torch.autograd.grad(expected, refs, go.to(expected.dtype)) if expected.numel() else \
        [torch.zeros_like(t) for t in refs]
    for a, e in zip(got, want):
        _close(a, e, dtype, scale=4.0)


_TRITON_CASES = {
    # B, C, C_out, groups, offset groups, (kh, kw), H, W, stride, padding, dilation, mask, bias
    "3x3": (2, 16, 16, 1, 1, (3, 3), 6, 7, (1, 1), (1, 1), (1, 1), True, True),
    "groups_offset_groups": (1, 6, 4, 2, 3, (2, 3), 5, 6, (2, 1), (1, 0), (1, 2), False, False),
    "groups_mask": (2, 4, 6, 2, 1, (3, 3), 5, 5, (1, 1), (0, 0), (1, 1), True, True),
    "offset_groups_split_groups": (1, 8, 8, 2, 4, (1, 1), 4, 5, (1, 1), (0, 0), (1, 1), True, False),
    "wide_output": (1, 3, 130, 1, 1, (3, 3), 4, 5, (1, 1), (1, 1), (1, 1), True, True),
    "many_channels": (1, 40, 24, 1, 2, (3, 3), 4, 4, (1, 1), (1, 1), (1, 1), True, True),
}


def _triton_inputs(case, dtype, seed=0, spread=2.0):
    B, C, Cout, groups, og, (kh, kw), H, W, stride, padding, dilation, use_mask, use_bias = case
    g = torch.Generator().manual_seed(seed)
    Ho = (H + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    Wo = (W + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    t = dict(x=torch.randn(B, C, H, W, generator=g), offset=torch.randn(B, 2 * og * kh * kw, Ho, Wo, generator=g) * spread,
             weight=torch.randn(Cout, C // groups, kh, kw, generator=g) / (C * kh * kw) ** 0.5,
             bias=torch.randn(Cout, generator=g) if use_bias else None,
             mask=torch.rand(B, og * kh * kw, Ho, Wo, generator=g) if use_mask else None)
    t = {k: None if v is None else v.to(TRITON_DEVICE, dtype) for k, v in t.items()}
    # no offset exactly on an integer: there (y or x = -1 exactly) the CUDA and CPU kernels' offset gradient is 0
    # where torchvision's is one-sided (see test_triton_samples_on_the_border_follow_torchvision_exactly)
    t["offset"] = torch.where(t["offset"] == t["offset"].round(), t["offset"] + 0.25, t["offset"])
    return t, (stride, padding, dilation)


@pytest.mark.triton
@pytest.mark.parametrize("dtype", TRITON_DTYPES, ids=str)
@pytest.mark.parametrize("case", list(_TRITON_CASES), ids=str)
def test_triton_matches_torchvision(case, dtype):
    t, conv = _triton_inputs(_TRITON_CASES[case], dtype)
    _against_torchvision(t["x"], t["offset"], t["weight"], t["bias"], t["mask"], *conv)


@pytest.mark.triton
def test_triton_non_contiguous_inputs_and_empty_batch():
    t, conv = _triton_inputs(_TRITON_CASES["3x3"], torch.float32, seed=1)
    x = t["x"].contiguous(memory_format=torch.channels_last)  # channels last: read in place
    offset = torch.cat([t["offset"], t["offset"]], dim=1)[:, ::2]  # a strided view
    mask = t["mask"].transpose(2, 3).contiguous().transpose(2, 3)
    _against_torchvision(x, offset, t["weight"], t["bias"], mask, *conv)
    _against_torchvision(t["x"][:0], t["offset"][:0], t["weight"], t["bias"], t["mask"][:0], *conv)


@pytest.mark.triton
def test_triton_samples_on_the_border_follow_torchvision_exactly():
    """Samples exactly on y = -1, x = -1, y = H - 1, x = W - 1, integer and far outside: values and gradients
    as torchvision's (whose offset gradient at exactly -1 is the one-sided derivative, nonzero)."""
    B, C, H, W = 1, 16, 4, 5
    g = torch.Generator().manual_seed(3)
    x = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    choices = torch.tensor([-1.0, -2.0, 0.0, 1.0, 0.5, 3.0, -40.0, 40.0, -0.5, 2.0], dtype=torch.float64)
    offset = choices[torch.randint(0, len(choices), (B, 18, H, W), generator=g)]
    weight = torch.randn(8, C, 3, 3, generator=g, dtype=torch.float64)
    mask = torch.rand(B, 9, H, W, generator=g, dtype=torch.float64)
    # on GPUs float64 runs the CUDA column kernels (tl.dot has no float64 there), whose offset gradient at exactly
    # -1 is 0, not torchvision's one-sided derivative: the Triton kernels only
    for dtype in (torch.float64, torch.float32) if TRITON_DEVICE == "cpu" else (torch.float32,):
        dev = [t.to(TRITON_DEVICE, dtype) for t in (x, offset, weight, mask)]
        _against_torchvision(dev[0], dev[1], dev[2], None, dev[3], (1, 1), (1, 1), (1, 1))


@pytest.mark.triton
def test_triton_gradcheck():
    """float64 gradcheck of the Triton path (under the interpreter; GPUs route float64 to the CUDA kernels)."""
    t, conv = _triton_inputs(_TRITON_CASES["groups_mask"], torch.float64, seed=2, spread=1.5)
    ins = [v.requires_grad_() for v in (t["x"], t["offset"], t["weight"], t["bias"], t["mask"])]
    with use_backend("triton"):
        gradcheck(lambda a, o, w, b, m: ops.deform_conv2d(a, o, w, b, *conv, m), ins, fast_mode=True)


def test_triton_is_the_gpu_default_and_cpus_keep_their_kernels(monkeypatch):
    """The Triton implicit GEMMs became the GPU default after the H200 run of 2026-12-04 (forward and backward);
    CPUs keep the C++ column kernels."""
    from pyvision_fast import _backend
    from pyvision_fast.ops import deform_conv as dc

    assert _backend.select("deform_conv2d", torch.device("cpu"), dc._FORWARD)[0] == "cpu"
    monkeypatch.setattr(_backend, "available", lambda name, device: True)
    gpu = torch.device("cuda")
    assert _backend.select("deform_conv2d", gpu, dc._FORWARD)[0] == "triton"
    assert _backend.select("deform_conv2d_backward", gpu, dc._BACKWARD)[0] == "triton"
    with use_backend("cuda"):
        assert _backend.select("deform_conv2d", gpu, dc._FORWARD)[0] == "cuda"


# GPU: the current CUDA path and the Triton candidate, each against torchvision and without host syncs.

CANDIDATE = [pytest.param(None, id="current"), pytest.param("deform_conv2d", id="candidate")]


@pytest.mark.cuda
@pytest.mark.parametrize("candidate", CANDIDATE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("case", ["3x3", "groups_offset_groups", "wide_output", "many_channels"])
def test_gpu_paths_match_torchvision(case, dtype, candidate):
    t, conv = _triton_inputs(_TRITON_CASES[case], dtype, seed=4)
    with on_implementation(candidate):
        _against_torchvision(t["x"], t["offset"], t["weight"], t["bias"], t["mask"], *conv, backend=None)


@pytest.mark.cuda
@pytest.mark.parametrize("candidate", CANDIDATE)
@pytest.mark.parametrize("tf32", [False, True])
def test_gpu_benchmark_shape_and_tf32(candidate, tf32):
    """The benchmark's shape (B=8, 64 -> 64, 56x56, 3x3, mask) in float32, IEEE and tf32 dots."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(8, 64, 56, 56, generator=g)
    offset = torch.randn(8, 18, 56, 56, generator=g) * 2
    mask = torch.rand(8, 9, 56, 56, generator=g)
    weight = torch.randn(64, 64, 3, 3, generator=g) * 0.05
    bias = torch.randn(64, generator=g)
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        ins = [t.cuda() for t in (x, offset, weight, bias, mask)]
        ref = [t.cuda().double().requires_grad_() for t in (x, offset, weight, bias, mask)]
        expected = torchvision.ops.deform_conv2d(ref[0], ref[1], ref[2], ref[3], 1, 1, 1, ref[4])
        go = torch.randn(expected.shape, generator=g).cuda()
        want = torch.autograd.grad(expected, ref, go.double())
        ins = [t.requires_grad_() for t in ins]
        with on_implementation(candidate):
            out = ops.deform_conv2d(ins[0], ins[1], ins[2], ins[3], 1, 1, 1, ins[4])
            got = torch.autograd.grad(out, ins, go)
        tol = 5e-3 if tf32 else 1e-4
        _close_rel = lambda a, e: torch.testing.assert_close(  # noqa: E731
            a.double(), e, rtol=tol, atol=tol * float(e.detach().abs().max()))
        _close_rel(out, expected)
        for a, e in zip(got, want):
            _close_rel(a, e)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.cuda
@pytest.mark.parametrize("candidate", CANDIDATE)
def test_gpu_steady_state_never_synchronises(candidate):
    t, conv = _triton_inputs(_TRITON_CASES["many_channels"], torch.float32, seed=6)
    ins = [t[k].requires_grad_() for k in ("x", "offset", "weight", "bias", "mask")]

    def step():
        out = ops.deform_conv2d(ins[0], ins[1], ins[2], ins[3], *conv, ins[4])
        torch.autograd.grad(out, ins, torch.ones_like(out))

    with on_implementation(candidate):
        step()  # first call: compilation and autotuning may synchronise
        torch.cuda.set_sync_debug_mode("error")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode(0)


def test_backward_runs_the_forwards_implementation_on_any_thread(monkeypatch):
    """The autograd setup records the forward's implementation: a backward on another thread (CUDA's autograd
    device thread does not see the caller's use_backend / use_candidates context) runs the same one."""
    import threading

    from pyvision_fast.ops import deform_conv as dc

    ran = []
    monkeypatch.setitem(dc._BACKWARD, "reference", lambda *a: (ran.append("reference"), dc._backward(
        dc._KERNELS["reference"], *a))[1])
    ins, eager, custom = _both_ops()
    for call in (eager, custom):
        with use_backend("reference"):
            out = call()
        worker = threading.Thread(target=lambda: torch.autograd.grad(out, ins, torch.ones_like(out)))
        worker.start()
        worker.join()
    assert ran == ["reference", "reference"]


@pytest.mark.parametrize("backend", ["cpu", "reference", pytest.param("cuda", marks=pytest.mark.cuda),
                                     pytest.param("triton", marks=pytest.mark.triton)])
def test_nan_offset_samples_nan_like_torchvision(backend):
    """torchvision's bilinear weights at a NaN coordinate are NaN, so the output at that location is NaN in every
    output channel (its CPU kernel can crash on it here, so the expectation is written out); an infinite offset
    lies outside the image and samples 0; every other location equals torchvision. The input gradient treats the
    NaN tap as outside (finite); the weight gradient of that tap meets the NaN sample, as torchvision's would."""
    device = "cuda" if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()) else "cpu"
    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, device=device, requires_grad=True)
    weight = torch.randn(3, 4, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    offset = torch.randn(2, 18, 6, 6, dtype=torch.float64, device=device)
    mask = torch.rand(2, 9, 6, 6, dtype=torch.float64, device=device)
    clean = torchvision.ops.deform_conv2d(x, offset, weight, None, 1, 1, 1, mask).detach()
    offset[1, 4, 2, 3] = float("nan")  # tap 2's y at output (2, 3) of image 1
    offset[0, 7, 4, 1] = float("inf")  # tap 3's x at output (4, 1) of image 0: outside
    far = offset.clone()
    far[0, 7, 4, 1] = 1e6
    with use_backend(backend):
        out = ops.deform_conv2d(x, offset, weight, None, 1, 1, 1, mask)
        grad_input, grad_weight = torch.autograd.grad(out.nan_to_num().sum(), [x, weight])
    out = out.detach()
    nan_at = torch.zeros_like(out, dtype=torch.bool)
    nan_at[1, :, 2, 3] = True
    assert torch.equal(torch.isnan(out), nan_at)
    expected = torchvision.ops.deform_conv2d(x, far.nan_to_num(), weight, None, 1, 1, 1, mask).detach()
    assert_close(out[~nan_at], expected[~nan_at])
    assert not torch.equal(out[0, :, 4, 1], clean[0, :, 4, 1])  # the inf tap really changed that location
    assert torch.isfinite(grad_input).all()
    tap_2 = torch.zeros_like(grad_weight, dtype=torch.bool)
    tap_2[:, :, 0, 2] = True  # tap k = 2 is kernel row 0, column 2
    assert torch.equal(torch.isnan(grad_weight), tap_2)


def test_argument_errors_are_caught_as_torchvision_s_runtime_errors():
    """Code written for torchvision catches RuntimeError; ours are ValueError/TypeError and RuntimeError."""
    x, w = torch.randn(2, 4, 6, 6), torch.randn(3, 4, 3, 3)
    bad_offset = torch.randn(2, 17, 4, 4)  # 17 channels is not 2 * kh * kw * offset_groups
    for fn in (torchvision.ops.deform_conv2d, ops.deform_conv2d):
        with pytest.raises(RuntimeError):
            fn(x, bad_offset, w)
    with pytest.raises(ValueError) as info:
        ops.deform_conv2d(x, bad_offset, w)
    assert isinstance(info.value, RuntimeError) and "deform_conv2d" in str(info.value)
    with pytest.raises(RuntimeError) as info:
        ops.deform_conv2d(x, torch.randn(2, 18, 4, 4, dtype=torch.float64), w)
    assert isinstance(info.value, TypeError) and "dtype" in str(info.value)
