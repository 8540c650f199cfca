"""gaussian_scale_space: the Gaussian filter bank of csrc/scale_space against per-scale separable convolutions."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from op_harness import DEVICES, BadInput, assert_close, check_compiled, check_onnx, float_dtypes, gradcheck, opcheck
from op_harness import run_bad_input
from pyvision_fast import ops, use_backend
from pyvision_fast.reference import scale_space as ref

MODES = ["reflect", "replicate", "zeros"]


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=30, deadline=None)
@given(B=st.integers(0, 2), C=st.integers(1, 3), H=st.integers(1, 9), W=st.integers(1, 11), S=st.integers(1, 3),
       mode=st.sampled_from(MODES), seed=st.integers(0, 2**16))
def test_matches_reference(device, B, C, H, W, S, mode, seed):
    g = torch.Generator().manual_seed(seed)
    limit = (min(H, W) - 0.5) / 3 if mode == "reflect" else 3.0  # reflect needs every radius below the size
    sigma = (0.2 + torch.rand(S, generator=g, dtype=torch.float64) * 2.0).clamp(max=max(limit, 0.1))
    if mode == "reflect" and any(ref.radius_for(float(s), 3.0) >= min(H, W) for s in sigma):
        return  # covered by the bad-input table
    for dtype in float_dtypes(device):
        x = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
        x32 = x.to(device, dtype).requires_grad_()
        sig = sigma.to(device, dtype).requires_grad_()
        out = ops.gaussian_scale_space(x32, sig, padding_mode=mode)
        x64, sig64 = x.requires_grad_(), sigma.clone().requires_grad_()
        expected = ref.gaussian_scale_space(x64, sig64, padding_mode=mode)
        assert out.shape == (B, S, C, H, W) and out.dtype == dtype
        assert_close(out, expected, dtype)
        go = torch.randn(out.shape, generator=g, dtype=torch.float64)
        got = torch.autograd.grad(out, [x32, sig], go.to(device, dtype))
        want = torch.autograd.grad(expected, [x64, sig64], go) if B else (torch.zeros_like(x64),
                                                                           torch.zeros_like(sig64))
        loose = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {}  # sigma's gradient sums B*C*H*W terms
        assert_close(got[0], want[0], dtype, **loose)
        assert_close(got[1], want[1], dtype, **loose)


@pytest.mark.parametrize("mode", MODES)
def test_impulse_response_is_the_sampled_gaussian(mode):
    sigma = [0.8, 1.7]
    x = torch.zeros(1, 1, 21, 23, dtype=torch.float64)
    x[0, 0, 10, 11] = 1.0
    out = ops.gaussian_scale_space(x, sigma, truncate=4.0, padding_mode=mode)
    for s, sg in enumerate(sigma):
        r = int(4.0 * sg + 0.5)
        i = torch.arange(-r, r + 1, dtype=torch.float64)
        k = torch.exp(-i**2 / (2 * sg**2))
        k = k / k.sum()
        expected = torch.zeros(21, 23, dtype=torch.float64)
        expected[10 - r:10 + r + 1, 11 - r:11 + r + 1] = k[:, None] * k[None, :]
        assert_close(out[0, s, 0], expected)


@pytest.mark.parametrize("mode", ["reflect", "replicate"])
def test_constant_image_is_preserved(mode):
    x = torch.full((2, 3, 6, 7), 2.5, dtype=torch.float64)
    out = ops.gaussian_scale_space(x, torch.tensor([0.5, 1.0, 1.8], dtype=torch.float64), padding_mode=mode)
    assert_close(out, torch.full((2, 3, 3, 6, 7), 2.5, dtype=torch.float64))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_in_x_and_sigma(mode, device):
    torch.manual_seed(0)
    x = torch.randn(2, 2, 6, 7, dtype=torch.float64).to(device).requires_grad_()
    sigma = torch.tensor([0.6, 1.2], dtype=torch.float64, device=device, requires_grad=True)
    # a fixed radius: the kernels' support must not change under the finite-difference perturbation of sigma
    gradcheck(lambda a, s: ops.gaussian_scale_space(a, s, padding_mode=mode, radius=[2, 4]), (x, sigma))


def test_reference_backend_agrees_with_cpu():
    torch.manual_seed(1)
    results = []
    for backend in ("cpu", "reference"):
        x = torch.randn(2, 3, 8, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(1),
                        requires_grad=True)
        sigma = torch.tensor([0.7, 1.4, 2.2], dtype=torch.float64, requires_grad=True)
        with use_backend(backend):
            for mode in MODES:
                out = ops.gaussian_scale_space(x, sigma, padding_mode=mode)
                go = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view(out.shape)
                results.append((out, *torch.autograd.grad(out, [x, sigma], go)))
    half = len(results) // 2
    for native, reference in zip(results[:half], results[half:]):
        for a, b in zip(native, reference):
            assert_close(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_and_compile(device):
    x = torch.randn(2, 3, 7, 8, device=device, requires_grad=True)
    kernels = ref.gaussian_kernels(torch.tensor([0.5, 1.0, 1.5], device=device), [1, 3, 4])
    for boundary in (0, 1, 2):
        opcheck(torch.ops.pvf.filter_bank.default, (x, kernels.requires_grad_(), [1, 3, 4], boundary))
    sigma = torch.tensor([0.8, 1.6], device=device, requires_grad=True)
    check_compiled(lambda a, s: ops.gaussian_scale_space(a, s, radius=[2, 5]), x, sigma)


def test_bad_inputs():
    x = torch.randn(2, 3, 8, 8)
    k = ref.gaussian_kernels(torch.tensor([1.0]), [3])
    cases = [
        BadInput("rank", lambda: ops.gaussian_scale_space(x[0], [1.0]), ValueError, r"\(B, C, H, W\)"),
        BadInput("int input", lambda: ops.gaussian_scale_space(x.int(), [1.0]), TypeError, "float32 or float64"),
        BadInput("half on cpu", lambda: ops.gaussian_scale_space(x.half(), [1.0]), TypeError, "float32 or float64"),
        BadInput("sigma <= 0", lambda: ops.gaussian_scale_space(x, [1.0, 0.0]), ValueError, "positive"),
        BadInput("sigma nan", lambda: ops.gaussian_scale_space(x, [float("nan")]), ValueError, "positive"),
        BadInput("sigma 2-D", lambda: ops.gaussian_scale_space(x, torch.ones(2, 2)), ValueError, r"\(S,\)"),
        BadInput("truncate", lambda: ops.gaussian_scale_space(x, [1.0], truncate=-1.0), ValueError, "truncate"),
        BadInput("padding mode", lambda: ops.gaussian_scale_space(x, [1.0], padding_mode="circular"), ValueError,
                 "padding_mode"),
        BadInput("reflect too wide", lambda: ops.gaussian_scale_space(x, [3.0]), ValueError,
                 "below the image size"),
        BadInput("radius count", lambda: ops.gaussian_scale_space(x, [1.0, 2.0], radius=[1]), ValueError, "radius"),
        BadInput("radius type", lambda: ops.gaussian_scale_space(x, [1.0], radius=1.5), TypeError, "radius"),
        BadInput("even taps", lambda: torch.ops.pvf.filter_bank(x, torch.ones(1, 4), [1], 0), ValueError, "odd"),
        BadInput("radius beyond taps", lambda: torch.ops.pvf.filter_bank(x, k, [4], 0), ValueError, "outside"),
        BadInput("radii vs scales", lambda: torch.ops.pvf.filter_bank(x, k, [1, 1], 0), ValueError, "radii"),
        BadInput("boundary code", lambda: torch.ops.pvf.filter_bank(x, k, [3], 7), ValueError, "boundary"),
        BadInput("kernel dtype", lambda: torch.ops.pvf.filter_bank(x, k.double(), [3], 0), TypeError, "same dtype"),
    ]
    for case in cases:
        run_bad_input(case)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_and_replicate_beyond_the_image(device):
    out = ops.gaussian_scale_space(torch.randn(0, 3, 5, 5, device=device), [1.0, 2.0])
    assert out.shape == (0, 2, 3, 5, 5)
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64).to(device)  # radius 9 > size: fine with replicate and zeros
    for mode in ("replicate", "zeros"):
        assert_close(ops.gaussian_scale_space(x, [3.0], padding_mode=mode),
                     ref.gaussian_scale_space(x, torch.tensor([3.0], dtype=torch.float64, device=device),
                                              padding_mode=mode))


class _Blur(torch.nn.Module):
    def __init__(self, mode):
        super().__init__()
        self.sigma = torch.nn.Parameter(torch.tensor([0.7, 1.3, 2.0]))
        self.mode = mode

    def forward(self, x):
        return ops.gaussian_scale_space(x, self.sigma, padding_mode=self.mode, radius=[2, 4, 6])


@pytest.mark.parametrize("mode", MODES)
def test_onnx_export(mode, tmp_path):
    torch.manual_seed(2)
    report = check_onnx(_Blur(mode).eval(), (torch.randn(2, 3, 12, 13),), tmp_path, atol=1e-5)
    assert {"Pad", "Conv"} <= set(report.op_types)
