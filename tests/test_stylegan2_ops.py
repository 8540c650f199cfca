"""upfirdn2d and bias_act (StyleGAN2's ops) against the plain-PyTorch compositions (pad + conv with the
flipped FIR filter, the activation table), hand-computed cases, gradients, opcheck / torch.compile, bad inputs
and ONNX export."""
import contextlib
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from op_harness import DEVICES_AND_CANDIDATES, candidate_switch  # noqa: F401 - autouse fixture
from op_harness import BadInput, assert_close, check_compiled, check_onnx, float_dtypes, gradcheck, opcheck
from op_harness import run_bad_input
from pyvision_fast import ops, use_backend
from pyvision_fast.ops import stylegan2 as sg
from pyvision_fast.reference import stylegan2 as ref


def _ref_upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1):
    return ref.upfirdn2d(x, f, sg.parse_scaling(up), sg.parse_scaling(down, "down"),
                         sg.parse_padding(padding), flip_filter, gain)


# (filter shape, up, down, padding): up/down/pads of StyleGAN2's upsample2d / downsample2d / conv layers and
# odd ones (3x up, crops larger than the filter, different x/y factors, one-sided pads)
COMBOS = [
    ((4, 4), 2, 1, (2, 1)), ((4, 4), 1, 2, 1), ((4,), 2, 1, (2, 1)), ((4,), 1, 2, (1, 1)), ((3, 3), 1, 1, 1),
    ((5, 3), 3, 1, (1, 2, 0, 3)), ((2, 5), 1, 3, (-1, 2, 3, -2)), ((4, 4), (2, 1), (1, 2), (1, -1, 2, 0)),
    ((1, 1), 1, 1, 0), ((7,), 1, 1, (3, 3)), ((4, 4), 2, 2, (1, 1, 1, 1)), ((3,), 3, 2, (-2, 1, 0, -1)),
    ((6, 2), 1, 1, (0, 1, 5, 0)), ((12,), 2, 1, (6, 5)), ((4, 4), 4, 3, (0, 0, -3, 2)),
]


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
@pytest.mark.parametrize("fshape,up,down,padding", COMBOS)
@pytest.mark.parametrize("flip_filter", [False, True])
def test_upfirdn2d_matches_composition(device, fshape, up, down, padding, flip_filter):
    g = torch.Generator().manual_seed(sum(fshape) + 7 * len(fshape))
    for dtype in float_dtypes(device):
        x = torch.randn(2, 3, 9, 8, generator=g, dtype=torch.float64)
        f = torch.randn(*fshape, generator=g, dtype=torch.float64)
        expected = _ref_upfirdn2d(x, f, up, down, padding, flip_filter, 1.7)
        y = ops.upfirdn2d(x.to(device, dtype), f.to(device), up, down, padding, flip_filter, 1.7)
        assert y.shape == expected.shape and y.dtype == dtype
        assert_close(y, expected, dtype=dtype)


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
@settings(max_examples=30, deadline=None)
@given(N=st.integers(0, 2), C=st.integers(1, 3), H=st.integers(1, 12), W=st.integers(1, 12),
       fh=st.integers(1, 6), fw=st.integers(1, 6), separable=st.booleans(),
       up=st.tuples(*[st.integers(1, 3)] * 2),
       down=st.tuples(*[st.integers(1, 3)] * 2), pads=st.tuples(*[st.integers(-3, 4)] * 4),
       flip=st.booleans(), seed=st.integers(0, 2**16))
def test_upfirdn2d_random_geometry(device, N, C, H, W, fh, fw, separable, up, down, pads, flip, seed):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(fw if separable else (fh, fw), generator=g, dtype=torch.float64)
    fh = fw if separable else fh
    if W * up[0] + pads[0] + pads[1] < fw or H * up[1] + pads[2] + pads[3] < fh:
        return  # no output: the bad-input table covers it
    x = torch.randn(N, C, H, W, generator=g, dtype=torch.float64)
    expected = _ref_upfirdn2d(x, f, up, down, pads, flip, 0.8)
    y = ops.upfirdn2d(x.to(device), f.to(device), up, down, pads, flip, 0.8)
    assert y.shape == expected.shape
    assert_close(y, expected)


def test_upfirdn2d_hand_computed():
    row = torch.tensor([[[[1.0, 2.0, 3.0]]]])
    # true convolution with [1, 2]: y[i] = 2 x[i] + x[i+1]; correlation: x[i] + 2 x[i+1]
    assert ops.upfirdn2d(row, torch.tensor([[1.0, 2.0]])).flatten().tolist() == [4.0, 7.0]
    assert ops.upfirdn2d(row, torch.tensor([[1.0, 2.0]]), flip_filter=True).flatten().tolist() == [5.0, 8.0]
    # up 2 along x: [1, 0, 2, 0] padded by one zero after, [1, 1] box: [1, 2, 2, 0]
    y = ops.upfirdn2d(torch.tensor([[[[1.0, 2.0]]]]), torch.tensor([[1.0, 1.0]]), up=(2, 1),
                      padding=(0, 1, 0, 0))
    assert y.flatten().tolist() == [1.0, 2.0, 2.0, 0.0]
    # down 2 keeps samples 0, 2, 4; negative pads crop
    five = torch.arange(1.0, 6.0).reshape(1, 1, 1, 5)
    assert ops.upfirdn2d(five, None, down=(2, 1)).flatten().tolist() == [1.0, 3.0, 5.0]
    assert ops.upfirdn2d(five, None, padding=(-1, -2, 0, 0)).flatten().tolist() == [2.0, 3.0]
    # a 1-D filter runs along both axes, each pass scaled by sqrt(gain)
    y = ops.upfirdn2d(five, torch.tensor([1.0]), gain=4.0)
    assert y.flatten().tolist() == [4.0, 8.0, 12.0, 16.0, 20.0]
    # a 2-D filter is applied in 2-D: [[1, 2], [3, 4]] flipped = [[4, 3], [2, 1]] on a 2x2 image
    sq = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    assert ops.upfirdn2d(sq, torch.tensor([[1.0, 2.0], [3.0, 4.0]])).item() == 4 + 6 + 6 + 4


def test_upfirdn2d_stylegan2_upsample_keeps_constant_images():
    """NVlabs' upsample2d: the normalised [1, 3, 3, 1] filter, gain up**2, padding ((f + up - 1) // 2,
    (f - up) // 2) doubles the size and keeps a constant image constant away from the border."""
    f1 = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float64)
    f2 = torch.outer(f1, f1) / torch.outer(f1, f1).sum()
    x = torch.full((1, 2, 6, 5), 3.0, dtype=torch.float64)
    for f in (f2, f1 / f1.sum()):
        y = ops.upfirdn2d(x, f, up=2, padding=(2, 1, 2, 1), gain=4)
        assert y.shape == (1, 2, 12, 10)
        torch.testing.assert_close(y[:, :, 2:-2, 2:-2], torch.full_like(y[:, :, 2:-2, 2:-2], 3.0))
        # downsample2d: the same filter, down 2, padding (f - down + 1) // 2, (f - down) // 2
        z = ops.upfirdn2d(y, f, down=2, padding=1)
        assert z.shape == (1, 2, 6, 5)


def test_upfirdn2d_row_mode_and_threads():
    """Fewer planes than threads: the threads split each plane's rows (a 1 x 1 x 200 x 180 image)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 1, 200, 180, generator=g, dtype=torch.float64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        for f, up, down, pad in ((torch.randn(4, 4, generator=g, dtype=torch.float64), 1, 2, 1),
                                 (torch.randn(4, generator=g, dtype=torch.float64), 2, 1, (2, 1)),
                                 (torch.randn(3, 5, generator=g, dtype=torch.float64), (2, 1), (1, 2), 1)):
            assert_close(ops.upfirdn2d(x, f, up, down, pad), _ref_upfirdn2d(x, f, up, down, pad))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
def test_upfirdn2d_non_contiguous_and_empty(device):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 7, 6, 3, generator=g).to(device).permute(0, 3, 1, 2)  # (2, 3, 7, 6), channels-last
    f = torch.randn(4, 3, generator=g).to(device).t()  # (3, 4), transposed
    assert_close(ops.upfirdn2d(x, f, 2, 1, 1), _ref_upfirdn2d(x.cpu(), f.cpu(), 2, 1, 1))
    y = ops.upfirdn2d(torch.randn(0, 3, 5, 5, device=device), f, 1, 2, 1)
    assert y.shape == (0, 3, 3, 2)  # f is (3, 4): (5 + 2 - 3 + 2) // 2, (5 + 2 - 4 + 2) // 2
    y = ops.upfirdn2d(torch.randn(1, 2, 0, 4, device=device), torch.ones(1, 1, device=device),
                      padding=(0, 0, 1, 1))
    assert y.shape == (1, 2, 2, 4) and (y == 0).all()


def _grad_configs():
    return [((4, 4), 2, 1, (2, 1)), ((4,), 1, 2, 1), ((3, 2), (3, 1), (1, 2), (1, -1, 2, 0)),
            ((5,), 2, 3, (-1, 3))]


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
@pytest.mark.parametrize("fshape,up,down,padding", _grad_configs())
def test_upfirdn2d_gradcheck(device, fshape, up, down, padding):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 2, 5, 6, generator=g, dtype=torch.float64).to(device).requires_grad_()
    f = torch.randn(*fshape, generator=g, dtype=torch.float64).to(device)
    for flip in (False, True):
        gradcheck(lambda t: ops.upfirdn2d(t, f, up, down, padding, flip, 1.3), (x,))


@pytest.mark.parametrize("fshape,up,down,padding", _grad_configs())
def test_upfirdn2d_gradient_is_the_compositions(fshape, up, down, padding):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    f = torch.randn(*fshape, generator=g, dtype=torch.float64)
    y = ops.upfirdn2d(x, f, up, down, padding, gain=0.9)
    w = torch.randn(y.shape, generator=g, dtype=torch.float64)
    (gx,) = torch.autograd.grad((y * w).sum(), x)
    xr = x.detach().clone().requires_grad_()
    (gr,) = torch.autograd.grad((_ref_upfirdn2d(xr, f, up, down, padding, gain=0.9) * w).sum(), xr)
    assert_close(gx, gr)


def test_upfirdn2d_backward_padding_formula():
    """grad_x of up 2 / pad (2, 1) / 4 taps (8 -> 16) is upfirdn2d(grad, f, up 1, down 2, flipped) with pads
    (4 - 2 - 1, 8 * 2 - 16 + 2 - 2 + 1) = (1, 1): (16 + 1 + 1 - 4 + 2) // 2 = 8 samples, the input's size."""
    assert sg.backward_padding((8, 8), (16, 16), (4, 4), (2, 2), (1, 1), (2, 1, 2, 1)) == [1, 1, 1, 1]
    g = torch.Generator().manual_seed(16)
    f = torch.randn(4, 4, generator=g, dtype=torch.float64)
    x = torch.randn(1, 1, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(1, 1, 16, 16, generator=g, dtype=torch.float64)
    (gx,) = torch.autograd.grad(_ref_upfirdn2d(x, f, 2, 1, (2, 1, 2, 1)), x, dy)
    assert_close(ops.upfirdn2d(dy, f, 1, 2, 1, flip_filter=True), gx)


def _bias_act_cases():
    return [(act, dim, with_b, clamp) for act in ref.ACTIVATIONS for dim, with_b, clamp in
            ((1, True, None), (1, True, 0.7), (2, True, None), (0, False, 2.0))]


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
@pytest.mark.parametrize("act,dim,with_b,clamp", _bias_act_cases())
def test_bias_act_matches_composition(device, act, dim, with_b, clamp):
    g = torch.Generator().manual_seed(len(act) + dim)
    _, def_alpha, def_gain = ref.ACTIVATIONS[act]
    for dtype in float_dtypes(device):
        x = torch.randn(3, 4, 5, generator=g, dtype=torch.float64) * 3
        x[0, 0, 0] = 25.0  # softplus above its threshold
        b = torch.randn(x.shape[dim], generator=g, dtype=torch.float64) if with_b else None
        expected = ref.bias_act(x, b, dim, act, def_alpha, def_gain, clamp)
        bd = None if b is None else b.to(device, dtype)
        y = ops.bias_act(x.to(device, dtype), bd, dim, act, clamp=clamp)
        assert_close(y, expected, dtype=dtype)


@pytest.mark.parametrize("act", list(ref.ACTIVATIONS))
def test_bias_act_cpu_kernel_every_activation(act):
    """The C++ kernel implements the whole table (the CPU backend routes the transcendental ones to torch's
    vectorised ops; the CUDA kernel shares this math): forward and backward against the reference, float64 and
    float32, with and without clamp, the bias along a middle dimension."""
    from pyvision_fast import _ext

    mod = _ext.cpu_module()
    code, alpha, gain = ref.ACTIVATIONS[act]
    g = torch.Generator().manual_seed(code)
    for dtype in (torch.float64, torch.float32):
        x = (torch.randn(2, 3, 5, generator=g, dtype=torch.float64) * 4).to(dtype)
        x[0, 0, :2] = torch.tensor([25.0, float("nan")])
        b = torch.randn(3, generator=g, dtype=torch.float64).to(dtype)
        dy = torch.randn(2, 3, 5, generator=g, dtype=torch.float64).to(dtype)
        for clamp in (None, 0.6):
            y, dx = torch.empty_like(x), torch.empty_like(x)
            c = -1.0 if clamp is None else clamp
            mod.bias_act(_ext.arg(x), _ext.arg(b), 1, code, alpha, gain, c, _ext.arg(y))
            mod.bias_act_backward(_ext.arg(dy), _ext.arg(x), _ext.arg(b), 1, code, alpha, gain, c,
                                  _ext.arg(dx))
            assert_close(y, ref.bias_act(x, b, 1, act, alpha, gain, clamp), equal_nan=True)
            assert_close(dx, ref.bias_act_grad(dy, x, b, 1, act, alpha, gain, clamp), equal_nan=True)


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
@settings(max_examples=30, deadline=None)
@given(shape=st.lists(st.integers(0, 5), min_size=1, max_size=4), data=st.data(),
       act=st.sampled_from(sorted(ref.ACTIVATIONS)), with_b=st.booleans(),
       clamp=st.one_of(st.none(), st.floats(0.0, 3.0)), gain=st.one_of(st.none(), st.floats(-2.0, 2.0)),
       seed=st.integers(0, 2**16))
def test_bias_act_random_shapes(device, shape, data, act, with_b, clamp, gain, seed):
    """Any rank and bias dimension (negative dims included), forward and the gradients of x and b."""
    g = torch.Generator().manual_seed(seed)
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = (torch.randn(*shape, generator=g, dtype=torch.float64) * 2).to(device).requires_grad_()
    b = None
    if with_b:
        b = torch.randn(shape[dim], generator=g, dtype=torch.float64).to(device).requires_grad_()
    _, alpha, def_gain = ref.ACTIVATIONS[act]
    y = ops.bias_act(x, b, dim, act, gain=gain, clamp=clamp)
    expected = ref.bias_act(x, b, dim % len(shape), act, alpha, def_gain if gain is None else gain, clamp)
    assert_close(y, expected)
    w = torch.randn(shape, generator=g, dtype=torch.float64).to(device)
    inputs = (x,) if b is None else (x, b)
    got = torch.autograd.grad((y * w).sum(), inputs, allow_unused=True)
    gx = ref.bias_act_grad(w, x.detach(), None if b is None else b.detach(), dim % len(shape), act, alpha,
                           def_gain if gain is None else gain, clamp)
    assert_close(got[0], gx)
    if b is not None:
        others = [d for d in range(len(shape)) if d != dim % len(shape)]
        assert_close(got[1], gx.sum(others) if others else gx)  # (sum over [] would sum everything)


def test_bias_act_hand_computed():
    x = torch.tensor([[-1.0, 2.0], [0.5, -3.0]])
    b = torch.tensor([0.5, -1.0])  # along dim 1
    r2 = math.sqrt(2)
    torch.testing.assert_close(ops.bias_act(x, b), x + b)
    torch.testing.assert_close(ops.bias_act(x, b, act="relu"), torch.tensor([[0.0, r2], [r2, 0.0]]))
    torch.testing.assert_close(ops.bias_act(x, b, act="lrelu"),
                               torch.tensor([[-0.5 * 0.2 * r2, r2], [r2, -4 * 0.2 * r2]]))
    torch.testing.assert_close(ops.bias_act(x, b, act="lrelu", alpha=0.5, gain=1, clamp=1.5),
                               torch.tensor([[-0.25, 1.0], [1.0, -1.5]]))
    torch.testing.assert_close(ops.bias_act(x, b, dim=0, act="linear"), x + b[:, None])
    torch.testing.assert_close(ops.bias_act(x, b, dim=-1), x + b)
    torch.testing.assert_close(ops.bias_act(torch.tensor(-2.0), act="swish"),
                               torch.tensor(-2.0 * r2 / (1 + math.exp(2.0))))


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
@pytest.mark.parametrize("act", list(ref.ACTIVATIONS))
def test_bias_act_gradcheck(device, act):
    g = torch.Generator().manual_seed(9)
    x = (torch.randn(2, 3, 4, generator=g, dtype=torch.float64) * 2).to(device)
    x = torch.where(x.abs() < 1e-3, x + 0.01, x).requires_grad_()  # away from the kinks of relu / lrelu / elu
    b = torch.randn(3, generator=g, dtype=torch.float64).to(device).requires_grad_()
    gradcheck(lambda t, c: ops.bias_act(t, c, 1, act, gain=0.8), (x, b))
    # the clamp: values clearly inside or outside (-1, 1) (none within eps of the boundary)
    gradcheck(lambda t, c: ops.bias_act(t, c, 1, act, gain=0.8, clamp=1.0), (x, b))


def test_bias_act_gradient_is_the_compositions():
    g = torch.Generator().manual_seed(10)
    for act in ref.ACTIVATIONS:
        x = torch.randn(4, 6, 3, generator=g, dtype=torch.float64, requires_grad=True)
        b = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
        w = torch.randn(4, 6, 3, generator=g, dtype=torch.float64)
        gx, gb = torch.autograd.grad((ops.bias_act(x, b, act=act, clamp=0.9) * w).sum(), (x, b))
        _, alpha, gain = ref.ACTIVATIONS[act]
        rx, rb = torch.autograd.grad((ref.bias_act(x, b, 1, act, alpha, gain, 0.9) * w).sum(), (x, b))
        assert_close(gx, rx)
        assert_close(gb, rb)


def test_bias_act_second_derivative_of_tanh():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(ops.bias_act(x, act="tanh").sum(), x, create_graph=True)
    g.sum().backward()
    t = torch.tanh(x.detach())
    assert torch.allclose(x.grad, -2 * t * (1 - t * t), rtol=1e-12, atol=1e-12)


def test_backends_agree():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 4, 10, 9, generator=g)
    f = torch.randn(4, 4, generator=g)
    b = torch.randn(4, generator=g)
    with use_backend("reference"):
        r1, r2 = ops.upfirdn2d(x, f, 2, 1, (2, 1)), ops.bias_act(x, b, act="lrelu", clamp=256)
    with use_backend("cpu"):
        c1, c2 = ops.upfirdn2d(x, f, 2, 1, (2, 1)), ops.bias_act(x, b, act="lrelu", clamp=256)
    assert_close(c1, r1)
    assert_close(c2, r2)


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
def test_opcheck(device):
    g = torch.Generator().manual_seed(12)
    x = torch.randn(2, 3, 6, 5, generator=g, dtype=torch.float64).to(device)
    f = torch.randn(4, 4, generator=g, dtype=torch.float64).to(device)
    op = torch.ops.pvf.upfirdn2d.default
    opcheck(op, (x.requires_grad_(), f, [2, 2], [1, 1], [2, 1, 2, 1], False, 2.0))
    opcheck(op, (x.detach().float(), f[0].float(), [1, 2], [2, 1], [1, 0, -1, 2], True, 1.0))
    b = torch.randn(3, generator=g, dtype=torch.float64).to(device).requires_grad_()
    opcheck(torch.ops.pvf.bias_act.default, (x, b, 1, 2, 0.2, 1.4, 0.5))
    opcheck(torch.ops.pvf.bias_act.default, (x.detach().float(), None, 0, 8, 0.0, 1.0, -1.0))
    opcheck(torch.ops.pvf.bias_act_backward.default,
            (torch.randn_like(x), x.detach(), b.detach(), 1, 3, 0.0, 1.0, -1.0))


def test_dispatch_goes_through_the_custom_ops_under_modes():
    from op_harness import ops_dispatched

    x, f = torch.randn(1, 2, 5, 5), torch.ones(3, 3)
    seen = ops_dispatched(lambda: ops.bias_act(ops.upfirdn2d(x, f, padding=1), torch.zeros(2), act="relu"))
    assert "pvf.upfirdn2d.default" in seen and "pvf.bias_act.default" in seen


def test_torch_compile():
    g = torch.Generator().manual_seed(13)
    x = torch.randn(2, 3, 8, 8, generator=g, requires_grad=True)
    b = torch.randn(3, generator=g, requires_grad=True)
    f = torch.tensor([1.0, 3.0, 3.0, 1.0]) / 8

    def fn(x, b):
        y = ops.upfirdn2d(x, f, up=2, padding=(2, 1, 2, 1), gain=4)
        y = ops.bias_act(y, b, act="lrelu", clamp=256)
        return ops.upfirdn2d(y, torch.outer(f, f), down=2, padding=1).square().sum()

    check_compiled(fn, x, b)
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)
    gx, gb = torch.autograd.grad(compiled(x, b), (x, b))
    ex, eb = torch.autograd.grad(fn(x, b), (x, b))
    torch.testing.assert_close(gx, ex)
    torch.testing.assert_close(gb, eb)


def test_onnx_export(tmp_path):
    g = torch.Generator().manual_seed(14)

    class Block(torch.nn.Module):  # StyleGAN2's upsample -> bias + lrelu -> blur + downsample, one 1-D filter
        def __init__(self):
            super().__init__()
            f = torch.tensor([1.0, 3.0, 3.0, 1.0])
            self.register_buffer("f1", f / f.sum())
            self.register_buffer("f2", torch.outer(f, f) / torch.outer(f, f).sum())
            self.bias = torch.nn.Parameter(torch.randn(3, generator=g))

        def forward(self, x):
            y = ops.upfirdn2d(x, self.f2, up=2, padding=(2, 1, 2, 1), gain=4)
            y = ops.bias_act(y, self.bias, act="lrelu", clamp=1.0)
            z = ops.upfirdn2d(y, self.f1, down=2, padding=(1, -1, 2, 0), flip_filter=True)
            return z, ops.bias_act(z, act="swish"), ops.bias_act(z, self.bias, act="softplus", gain=0.5)

    x = torch.randn(2, 3, 7, 6, generator=g)
    report = check_onnx(Block(), (x,), tmp_path, atol=1e-5)
    assert {"Conv", "Pad", "Slice", "LeakyRelu", "Clip"} <= set(report.op_types)


@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid", "elu", "selu"])
def test_onnx_export_activations(tmp_path, act):
    class Act(torch.nn.Module):
        def forward(self, x):
            return ops.bias_act(x, torch.linspace(-1, 1, 4), dim=1, act=act, gain=1.5, clamp=2.0)

    check_onnx(Act(), (torch.randn(2, 4, 3) * 3,), tmp_path, atol=1e-5)


def _bad_cases():
    x, f = torch.randn(1, 2, 6, 6), torch.ones(3, 3)
    return [
        BadInput("x rank 3", lambda: ops.upfirdn2d(x[0], f), ValueError, r"'x' must have 4 dimensions"),
        BadInput("integer x", lambda: ops.upfirdn2d(x.long(), f), TypeError,
                 "'x' must be float32 or float64"),
        BadInput("f rank 3", lambda: ops.upfirdn2d(x, f[None]), ValueError, "'f' must have 1 dimension"),
        BadInput("f rank 0", lambda: ops.upfirdn2d(x, f[0, 0]), ValueError, "'f' must have 1 dimension"),
        BadInput("f empty", lambda: ops.upfirdn2d(x, torch.ones(0, 3)), ValueError, "'f' must not be empty"),
        BadInput("f integer", lambda: ops.upfirdn2d(x, f.long()), TypeError, "'f' must be a floating-point"),
        BadInput("f requires grad", lambda: ops.upfirdn2d(x, f.clone().requires_grad_()), ValueError,
                 "'f' must not require grad"),
        BadInput("up 0", lambda: ops.upfirdn2d(x, f, up=0), ValueError, "up must be >= 1"),
        BadInput("down -1", lambda: ops.upfirdn2d(x, f, down=(1, -1)), ValueError, "down must be >= 1"),
        BadInput("up 3 values", lambda: ops.upfirdn2d(x, f, up=(1, 2, 3)), ValueError,
                 "up must be an int or"),
        BadInput("up float", lambda: ops.upfirdn2d(x, f, up=1.5), TypeError, "up must be an int"),
        BadInput("padding 3 values", lambda: ops.upfirdn2d(x, f, padding=(1, 2, 3)), ValueError,
                 "padding must be an int, "),
        BadInput("padding empties output", lambda: ops.upfirdn2d(x, f, padding=(-2, -2, 0, 0)), ValueError,
                 r"'padding' leaves no output along x \(width\)"),
        BadInput("padding negative output", lambda: ops.upfirdn2d(x, f, padding=(0, 0, -9, 1)), ValueError,
                 r"'padding' leaves no output along y \(height\)"),
        BadInput("filter too large", lambda: ops.upfirdn2d(x, torch.ones(7, 7)), ValueError,
                 "smaller than the filter size 7"),
        BadInput("gain nan", lambda: ops.upfirdn2d(x, f, gain=float("nan")), ValueError,
                 "gain must be a finite"),
        BadInput("flip not bool", lambda: ops.upfirdn2d(x, f, flip_filter=1), TypeError,
                 "flip_filter must be a bool"),
        BadInput("f meta", lambda: ops.upfirdn2d(x, f.to("meta")), TypeError, "'f' is on meta"),
        BadInput("b length", lambda: ops.bias_act(x, torch.zeros(3)), ValueError,
                 r"'b' must have shape \(x.shape"),
        BadInput("b rank 2", lambda: ops.bias_act(x, torch.zeros(2, 1)), ValueError, "'b' must have shape"),
        BadInput("dim out of range", lambda: ops.bias_act(x, torch.zeros(2), dim=4), ValueError,
                 r"'dim' must be in \[-4, 4\)"),
        BadInput("unknown act", lambda: ops.bias_act(x, act="gelu"), ValueError, "unknown act 'gelu'"),
        BadInput("clamp negative", lambda: ops.bias_act(x, clamp=-1.0), ValueError, "clamp must be >= 0"),
        BadInput("clamp nan", lambda: ops.bias_act(x, clamp=float("nan")), ValueError,
                 "clamp must be a finite"),
        BadInput("gain inf", lambda: ops.bias_act(x, gain=float("inf")), ValueError, "gain must be a finite"),
        BadInput("b dtype", lambda: ops.bias_act(x, torch.zeros(2, dtype=torch.float64)), TypeError,
                 "same dtype"),
        BadInput("integer x bias_act", lambda: ops.bias_act(x.long()), TypeError, "'x' must be float32 or"),
        BadInput("x not a tensor", lambda: ops.bias_act(x.tolist()), TypeError, "x must be a tensor"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=str)
def test_bad_inputs(case):
    run_bad_input(case)


@pytest.mark.parametrize("case", _bad_cases(), ids=str)
def test_bad_inputs_reference_backend(case):
    with use_backend("reference"):
        run_bad_input(case)


def test_half_on_cpu_is_refused():
    with pytest.raises(TypeError, match="float32 or float64"):
        ops.upfirdn2d(torch.randn(1, 1, 4, 4).half(), torch.ones(2, 2))
    with pytest.raises(TypeError, match="float32 or float64"):
        ops.bias_act(torch.randn(3, 2).half())


def _direct_cases():
    """The compiled entry points called with what the ops never pass: the C++ checks refuse it."""
    from pyvision_fast import _ext

    mod = _ext.cpu_module()
    x, f = torch.randn(1, 2, 6, 6), torch.ones(3, 3)

    def up(x=x, f=f, u=(1, 1), d=(1, 1), p=(0, 0, 0, 0), out=None, ws=None):
        out = torch.empty(1, 2, 4, 4) if out is None else out
        ws = torch.empty(64) if ws is None else ws
        mod.upfirdn2d(_ext.arg(x), _ext.arg(f), list(u), list(d), list(p), _ext.arg(out), _ext.arg(ws))

    def ba(x=x, b=None, dim=1, act=0, clamp=-1.0, y=None):
        y = torch.empty_like(x) if y is None else y
        mod.bias_act(_ext.arg(x), _ext.opt(b), dim, act, 0.2, 1.0, clamp, _ext.arg(y))

    def bab(dy):
        dx = torch.empty_like(x)
        mod.bias_act_backward(_ext.arg(dy), _ext.arg(x), None, 1, 0, 0.0, 1.0, -1.0, _ext.arg(dx))

    return [
        BadInput("non-contiguous x", lambda: up(x=torch.randn(1, 2, 6, 6).transpose(2, 3)), ValueError,
                 "'x' must be contiguous"),
        BadInput("out shape", lambda: up(out=torch.empty(1, 2, 4, 5)), ValueError,
                 r"'out' must have shape \(1, 2, 4, 4\)"),
        BadInput("out dtype", lambda: up(out=torch.empty(1, 2, 4, 4, dtype=torch.float64)), TypeError,
                 "same dtype"),
        BadInput("f dtype", lambda: up(f=f.double()), TypeError, "same dtype"),
        BadInput("up 0", lambda: up(u=(0, 1)), ValueError, r"'up' must be an integer in \[1, 65536\]"),
        BadInput("down huge", lambda: up(d=(1, 1 << 20)), ValueError, "'down' must be an integer"),
        BadInput("padding 2 values", lambda: up(p=(0, 0)), ValueError, "'padding' must have 4 values"),
        BadInput("padding empties output", lambda: up(p=(-3, -1, 0, 0)), ValueError,
                 "'padding' leaves no output"),
        BadInput("empty f", lambda: up(f=torch.ones(3, 0)), ValueError, "'f' must not be empty"),
        BadInput("f rank 3", lambda: up(f=torch.ones(1, 3, 3)), ValueError, "'f' must have 1 dimension"),
        BadInput("workspace small", lambda: up(u=(2, 1), out=torch.empty(1, 2, 4, 10), ws=torch.empty(2)),
                 ValueError, "workspace has 2 elements"),
        BadInput("act code", lambda: ba(act=9), ValueError, r"'act' must be an activation code in \[0, 9\)"),
        BadInput("dim range", lambda: ba(dim=4), ValueError, r"'dim' must be in \[0, 4\)"),
        BadInput("b length", lambda: ba(b=torch.zeros(3)), ValueError, "'b' has 3 elements but x.shape"),
        BadInput("y shape", lambda: ba(y=torch.empty(1, 2, 6)), ValueError, "'y' must have the shape of 'x'"),
        BadInput("clamp nan", lambda: ba(clamp=float("nan")), ValueError, "'clamp' must not be NaN"),
        BadInput("dy shape", lambda: bab(torch.empty(1, 2, 6, 5)), ValueError,
                 "'dy' must have the shape of 'x'"),
    ]


@pytest.mark.parametrize("case", _direct_cases(), ids=str)
def test_compiled_entry_checks(case):
    run_bad_input(case)


def test_composition_is_what_the_issue_describes():
    """The reference equals the textbook composition: conv_transpose2d zero insertion, F.pad, grouped F.conv2d
    with the flipped kernel, strided slicing (an independent check of the oracle)."""
    g = torch.Generator().manual_seed(15)
    x = torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64)
    f = torch.randn(3, 4, generator=g, dtype=torch.float64)
    one = torch.zeros(3, 1, 2, 2, dtype=torch.float64)
    one[:, :, 0, 0] = 1
    xu = F.conv_transpose2d(x, one, stride=2, groups=3)  # (2, 3, 10, 8): samples at even positions
    xp = F.pad(xu, [2, 1, 1, 2])
    y = F.conv2d(xp, f.flip([0, 1])[None, None].repeat(3, 1, 1, 1), groups=3)[:, :, ::2, ::1]
    assert_close(ops.upfirdn2d(x, f, up=2, down=(1, 2), padding=(2, 1, 1, 2)), y)


class _ThroughCustomOps(torch.overrides.TorchFunctionMode):
    """A pass-through mode: under it the ops take the torch.library custom-op path, not the eager Function."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("path", ["eager", "custom_op"])
def test_second_derivatives(path):
    """R1 and path-length regularisation differentiate gradients: both ops have a double backward (float64
    gradgradcheck), on the eager Function and on the custom-op path, for every activation, with and without
    clamping."""
    from torch.autograd import gradgradcheck

    mode = _ThroughCustomOps() if path == "custom_op" else contextlib.nullcontext()
    g = torch.Generator().manual_seed(3)
    f = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float64)
    with mode:
        for filt, up, down, pad in [(f, 2, 1, (2, 1)), (torch.outer(f, f), 1, 2, 1), (f, 2, 2, (1, 2, 0, 3))]:
            x = torch.randn(2, 3, 7, 6, dtype=torch.float64, generator=g, requires_grad=True)
            assert gradgradcheck(lambda x: ops.upfirdn2d(x, filt, up=up, down=down, padding=pad), (x,))
        for act in ["linear", "relu", "lrelu", "tanh", "sigmoid", "elu", "selu", "softplus", "swish"]:
            for clamp in (None, 0.7):
                x = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=g, requires_grad=True)
                b = torch.randn(3, dtype=torch.float64, generator=g, requires_grad=True)
                assert gradgradcheck(lambda x, b: ops.bias_act(x, b, act=act, clamp=clamp), (x, b)), act
