"""gaussian_scale_space: the Gaussian filter bank of csrc/scale_space against per-scale separable convolutions."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from op_harness import DEVICES, BadInput, assert_close, check_compiled, check_onnx, float_dtypes, gradcheck, opcheck
from op_harness import on_implementation
from op_harness import ops_dispatched, run_bad_input
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
        BadInput("kernels rank", lambda: torch.ops.pvf.filter_bank(x, k[0], [3], 0), ValueError,
                 r"'kernels' must have 2 dimensions \(S, 2R \+ 1\)"),
        BadInput("negative radius", lambda: torch.ops.pvf.filter_bank(x, k, [-1], 0), ValueError,
                 r"radius -1 is outside \[0, 3\]"),
        BadInput("reflect radius vs width", lambda: torch.ops.pvf.filter_bank(x[..., :3], k, [3], 1), ValueError,
                 "radius 3 for 8x3"),
        BadInput("sigma count vs radius", lambda: ops.gaussian_scale_space(x, torch.ones(2), radius=[1, 1, 1]),
                 ValueError, "S = 2"),
    ]
    # every backend refuses them before it runs: the compiled kernels (which check in C++ too) and the reference
    # (float16 on CPUs is the compiled kernels' dtype rule: the reference computes it)
    for backend in ("cpu", "reference"):
        with use_backend(backend):
            for case in cases:
                if not (backend == "reference" and case.name == "half on cpu"):
                    run_bad_input(case)


@pytest.mark.parametrize("backend", ["cpu", "reference", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(0, 3, 5, 5), (2, 0, 5, 5), (2, 3, 0, 5), (2, 3, 5, 0)], ids=str)
def test_empty_planes(shape, mode, backend):
    """Any of B, C, H, W zero: an empty output and a zero sigma gradient on every backend. (A zero W with H > 0
    crashed the CPU kernel under reflect / replicate: the boundary rule mapped taps onto an empty row.)"""
    device = "cuda" if backend == "cuda" else "cpu"
    x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    sigma = torch.tensor([0.8, 1.5], dtype=torch.float64, device=device, requires_grad=True)
    with use_backend(backend):
        out = ops.gaussian_scale_space(x, sigma, padding_mode=mode, radius=[2, 4])
        assert out.shape == (shape[0], 2, *shape[1:])
        gx, gs = torch.autograd.grad(out.sum(), [x, sigma])
    assert gx.shape == x.shape and torch.equal(gs, torch.zeros_like(gs))


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


# The tiled CUDA kernels ("cuda:next"), run here by the host emulator ------------------------------------------

import ctypes  # noqa: E402
import hashlib  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import pyvision_fast  # noqa: E402

_ROOT = Path(__file__).resolve().parent.parent
_EMULATOR = _ROOT / "tests" / "cuda_emulation" / "filter_bank_tiled_host.cpp"
_KERNELS = _ROOT / "csrc" / "scale_space" / "filter_bank_tiled.h"


@pytest.fixture(scope="module")
def emulator():
    """The tiled kernels' block bodies built for the host (tests/cuda_emulation), loaded with ctypes."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:  # the kernels themselves are still tested on GPUs (test_gpu_paths_*)
        pytest.skip("no host C++ compiler")
    sources = [_EMULATOR, _KERNELS, _ROOT / "csrc" / "scale_space" / "scale_space.h"]
    digest = hashlib.sha1(b"".join(p.read_bytes() for p in sources)).hexdigest()[:16]
    lib = Path(tempfile.gettempdir()) / f"pvf_filter_bank_tiled_{digest}.so"
    if not lib.exists():
        tmp = lib.with_suffix(f".{digest}.tmp")
        out = subprocess.run([cxx, "-std=c++20", "-O2", "-pthread", "-shared", "-fPIC", f"-I{_ROOT / 'csrc'}",
                              str(_EMULATOR), "-o", str(tmp)], capture_output=True, text=True)
        if out.returncode != 0:
            pytest.skip(f"the emulator does not build here (needs C++20 <barrier>): {out.stderr[-500:]}")
        tmp.replace(lib)
    return ctypes.CDLL(str(lib))


def _emulate(lib, x, kernels, radii, boundary, grad, threads):
    B, C, H, W = x.shape
    S, R = kernels.shape[0], (kernels.shape[1] - 1) // 2
    dt = 1 if x.dtype == torch.float64 else 0
    rad = (ctypes.c_int64 * max(S, 1))(*radii)
    dims = [ctypes.c_int64(v) for v in (B, C, H, W, S, R)]
    ptr = lambda t: ctypes.c_void_p(t.data_ptr())  # noqa: E731
    out = torch.empty(B, S, C, H, W, dtype=x.dtype)
    lib.pvf_emul_forward(dt, *dims, rad, boundary, ptr(x), ptr(kernels), ptr(out), threads)
    gx, gk = torch.empty_like(x), torch.empty_like(kernels)
    lib.pvf_emul_backward(dt, *dims, rad, boundary, ptr(x), ptr(grad), ptr(kernels), ptr(gx), ptr(gk), threads)
    return out, gx, gk


# (B, C, H, W, radii, R): one tile and several, ragged edges, radius 0, R above every radius, radii beyond a
# small image (replicate / zeros), images thinner than a tile in one direction, a halo wider than the tile
EMULATED = [
    (1, 1, 5, 7, [1], None), (1, 2, 37, 41, [3, 1], None), (2, 1, 33, 70, [2, 5, 0], None), (1, 1, 3, 4, [2], 6),
    (1, 1, 66, 9, [6, 3], None), (1, 1, 12, 13, [9, 3], None), (2, 2, 64, 64, [12, 9, 6, 3], None),
    (1, 1, 1, 40, [0, 0], 2), (1, 1, 45, 90, [40, 7], None),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", EMULATED, ids=str)
def test_tiled_kernels_emulated_match_reference(emulator, case, mode, dtype):
    B, C, H, W, radii, R = case
    boundary = ref.PADDING_MODES[mode]
    if boundary == 1 and max(radii) >= min(H, W):
        # the bindings refuse these before any kernel (the bad-input case "reflect too wide")
        pytest.skip("reflect needs every radius below the image size")
    R = max(radii) if R is None else R
    g = torch.Generator().manual_seed(sum(radii) + H * W)
    x = torch.randn(B, C, H, W, generator=g, dtype=dtype)
    kernels = torch.randn(len(radii), 2 * R + 1, generator=g, dtype=dtype)  # any taps, beyond-radius ones too
    grad = torch.randn(B, len(radii), C, H, W, generator=g, dtype=dtype)
    got = _emulate(emulator, x, kernels, radii, boundary, grad, threads=64)
    want = (ref.filter_bank(x.double(), kernels.double(), radii, boundary),
            *ref.filter_bank_backward(grad.double(), x.double(), kernels.double(), radii, boundary))
    loose = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 1e-9, "rtol": 1e-9}
    for a, b in zip(got, want):
        assert_close(a, b, dtype, **loose)


def test_tiled_kernels_emulated_with_the_gpu_block_size(emulator):
    """256 threads per block, as launched on the GPU (the other tests use 64 to run faster)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 1, 40, 45, generator=g, dtype=torch.float64)
    kernels = ref.gaussian_kernels(torch.tensor([1.0, 1.7], dtype=torch.float64), [3, 5])
    grad = torch.randn(1, 2, 1, 40, 45, generator=g, dtype=torch.float64)
    got = _emulate(emulator, x, kernels, [3, 5], 1, grad, threads=256)
    want = (ref.filter_bank(x, kernels, [3, 5], 1), *ref.filter_bank_backward(grad, x, kernels, [3, 5], 1))
    for a, b in zip(got, want):
        assert_close(a, b)


# Eager path and custom op --------------------------------------------------------------------------------

def test_kernel_and_gain_gradients_are_the_same_bits_on_every_call():
    """Their per-chunk partial sums are added in chunk order, not in the order the threads finish."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(4, 16, 12, 13, generator=g, dtype=torch.float64)
    kernels = ref.gaussian_kernels(torch.tensor([0.8, 1.6, 2.4], dtype=torch.float64), [2, 4, 6]).requires_grad_()
    y = torch.randn(3, 4, 2000, generator=g, dtype=torch.float64)
    gain = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    for call, param in ((lambda: torch.ops.pvf.filter_bank(x, kernels, [2, 4, 6], 1), kernels),
                        (lambda: torch.ops.pvf.scale_attention(y, gain), gain)):
        out = call()
        grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64)
        first = torch.autograd.grad(out, param, grad_out)[0]
        for _ in range(20):
            assert torch.equal(torch.autograd.grad(call(), param, grad_out)[0], first)


def test_eager_calls_equal_the_custom_op_and_modes_see_it():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 8, 9, generator=g, dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor([0.7, 1.4], dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 3, 10, generator=g, dtype=torch.float64, requires_grad=True)
    gain = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    kernels = ref.gaussian_kernels(sigma, [2, 4])
    calls = [
        ((lambda: ops.gaussian_scale_space(x, sigma, radius=[2, 4])), "_FilterBank",
         (lambda: torch.ops.pvf.filter_bank(x, kernels, [2, 4], 1)), "pvf_filter_bank", [x, sigma]),
        ((lambda: ops.scale_attention(y, gain)), "_ScaleAttention",
         (lambda: torch.ops.pvf.scale_attention(y, gain)), "pvf_scale_attention", [y, gain]),
    ]
    for eager_call, eager_name, op_call, op_name, inputs in calls:
        results = []
        for call, name in ((eager_call, eager_name), (op_call, op_name)):
            out = call()
            assert any(name in type(n).__name__ for n in _graph(out.grad_fn)), (name, type(out.grad_fn).__name__)
            results.append((out, *torch.autograd.grad(out, inputs, torch.ones_like(out), retain_graph=True)))
        for a, b in zip(*results):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    seen = ops_dispatched(lambda: (ops.gaussian_scale_space(x, sigma, radius=[2, 4]), ops.scale_attention(y, gain)))
    assert "pvf.filter_bank.default" in seen and "pvf.scale_attention.default" in seen


def _graph(node, depth=3):
    """The autograd nodes within a few steps of node (the op's node may sit under a view)."""
    found, frontier = [], [node]
    for _ in range(depth):
        found += [n for n in frontier if n is not None]
        frontier = [f for n in frontier if n is not None for f, _ in n.next_functions]
    return found


def test_sigma_numbers_and_cpu_tensors_build_the_same_kernels():
    x = torch.randn(1, 2, 9, 10, dtype=torch.float64)
    a = ops.gaussian_scale_space(x, [0.8, 1.5])
    b = ops.gaussian_scale_space(x, torch.tensor([0.8, 1.5], dtype=torch.float64))
    assert_close(a, b)
    assert_close(a, ref.gaussian_scale_space(x, torch.tensor([0.8, 1.5], dtype=torch.float64)))


# GPU: the current kernels and the candidate ----------------------------------------------------------------

IMPLS = [pytest.param(None, id="current"), pytest.param("gaussian_scale_space", id="candidate")]


@pytest.mark.cuda
@pytest.mark.parametrize("candidates", IMPLS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(2, 3, 9, 11), (1, 2, 37, 70), (2, 1, 64, 33), (1, 1, 1, 50)], ids=str)
def test_gpu_paths_match_reference(candidates, mode, shape):
    g = torch.Generator().manual_seed(7)
    sigma = torch.tensor([0.4, 1.0, 2.3] if min(shape[2:]) > 7 or mode != "reflect" else [0.3], dtype=torch.float64)
    if mode == "reflect" and shape[2] == 1:
        sigma = torch.tensor([0.1], dtype=torch.float64)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    x64, s64 = x.clone().requires_grad_(), sigma.clone().requires_grad_()
    want = ref.gaussian_scale_space(x64, s64, padding_mode=mode)
    go = torch.randn(want.shape, generator=g, dtype=torch.float64)
    want_grads = torch.autograd.grad(want, [x64, s64], go)
    with on_implementation(candidates):
        for dtype in float_dtypes("cuda"):
            xd = x.to("cuda", dtype).requires_grad_()
            sd = sigma.to("cuda", dtype).requires_grad_()
            out = ops.gaussian_scale_space(xd, sd, padding_mode=mode)
            grads = torch.autograd.grad(out, [xd, sd], go.to("cuda", dtype))
            loose = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {}
            half = dtype in (torch.float16, torch.bfloat16)
            assert_close(out, want, dtype)
            assert_close(grads[0], want_grads[0], dtype, **loose)
            if not half:  # sigma's gradient sums every position: half inputs' rounding dominates it
                assert_close(grads[1], want_grads[1], dtype, **loose)
        if shape[2] * shape[3] > 100:
            return  # gradcheck's Jacobians: small images only
        xd = x.cuda().requires_grad_()
        sd = sigma.cuda().requires_grad_()
        radii = [ref.radius_for(float(v), 3.0) for v in sigma]
        gradcheck(lambda a, s: ops.gaussian_scale_space(a, s, padding_mode=mode, radius=radii), (xd, sd))


@pytest.mark.cuda
@pytest.mark.parametrize("candidates", IMPLS)
def test_gpu_paths_benchmark_shape_and_wide_radius(candidates):
    """A slice of the benchmark's case (sigma 1..4) and radii whose tiles exceed shared memory (the candidate
    then runs the untiled kernels)."""
    g = torch.Generator().manual_seed(8)
    for shape, sigma, mode in (((2, 8, 112, 112), [1.0, 2.0, 3.0, 4.0], "reflect"),
                               ((1, 2, 40, 300), [30.0], "replicate")):
        x = torch.randn(*shape, generator=g).cuda().requires_grad_()
        s = torch.tensor(sigma, device="cuda", requires_grad=True)
        go = torch.randn(shape[0], len(sigma), *shape[1:], generator=g).cuda()
        with on_implementation(candidates):
            out = ops.gaussian_scale_space(x, s, padding_mode=mode)
            got = (out, *torch.autograd.grad(out, [x, s], go))
        x64, s64 = x.detach().double().requires_grad_(), s.detach().double().requires_grad_()
        want = ref.gaussian_scale_space(x64, s64, padding_mode=mode)
        wants = (want, *torch.autograd.grad(want, [x64, s64], go.double()))
        for a, b, tol in zip(got, wants, (1e-5, 1e-5, 1e-3)):
            assert_close(a, b, torch.float32, atol=tol, rtol=tol)


@pytest.mark.cuda
@pytest.mark.parametrize("candidates", IMPLS)
def test_gpu_steady_state_has_no_host_sync(candidates):
    x = torch.randn(2, 3, 20, 21, device="cuda", requires_grad=True)
    sigma = torch.tensor([0.7, 1.6], device="cuda", requires_grad=True)
    y = torch.randn(2, 3, 4, 50, device="cuda", requires_grad=True)
    gain = torch.randn(3, device="cuda", requires_grad=True)

    def step():
        ops.gaussian_scale_space(x, sigma).sum().backward()  # sigma read once, then reused
        ops.gaussian_scale_space(x, sigma, radius=[2, 5]).sum().backward()
        ops.gaussian_scale_space(x, [0.5, 1.2], padding_mode="zeros").sum().backward()
        ops.scale_attention(y, gain).sum().backward()

    with on_implementation(candidates):
        step()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        with torch.no_grad():
            sigma.mul_(1.5)  # a new version: read again, with the radii of the new values
        out = ops.gaussian_scale_space(x, sigma)
    assert_close(out, ref.gaussian_scale_space(x.detach(), sigma.detach()), torch.float32)
