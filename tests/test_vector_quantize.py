"""vector_quantize against the plain-PyTorch reference, taming's semantics (nearest code, lowest index on
ties), gradients, opcheck / torch.compile, bad inputs and ONNX export.

Index equality is asserted where the codes are well separated (z = a code + small noise); on arbitrary random
inputs two codes may be nearly equidistant and the kernels' direct sum of squared differences may then choose
differently from the reference's expanded ||z||^2 + ||e||^2 - 2 z.e, so there the distances of the chosen
codes are compared (in float64) instead of the indices."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from op_harness import DEVICES_AND_CANDIDATES, candidate_switch  # noqa: F401 - autouse fixture
from op_harness import BadInput, check_compiled, check_onnx, float_dtypes, gradcheck, opcheck, run_bad_input
from pyvision_fast import ops, use_backend
from pyvision_fast.reference import vector_quantize as ref

# Tolerance on the chosen code's squared distance, relative to the scale of the distances (|z|^2 + |e|^2).
DIST_RTOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 5e-2}


def _separated(lead, K, D, g, dtype=torch.float64, noise=0.05):
    """A codebook of K codes ~2 apart (a shuffled integer grid scaled by 2) and z = a code + noise."""
    side = max(2, int(round(K ** (1.0 / D))) + 1)
    grid = torch.stack(torch.meshgrid(*[torch.arange(side, dtype=torch.float64)] * D, indexing="ij"), -1)
    grid = grid.reshape(-1, D)[torch.randperm(side ** D, generator=g)[:K]] * 2.0
    pick = torch.randint(0, K, lead, generator=g)
    z = grid[pick] + noise * (torch.rand(*lead, D, generator=g, dtype=torch.float64) * 2 - 1)
    return z.to(dtype), grid.to(dtype), pick


def _check_nearest(z, codebook, z_q, idx, dtype):
    """idx's codes are as near as the float64 nearest codes (within the dtype's tolerance); z_q those rows."""
    assert idx.dtype == torch.int64 and idx.shape == z.shape[:-1] and z_q.shape == z.shape
    assert z_q.dtype == z.dtype
    assert torch.equal(z_q, codebook[idx])  # exact copies of codebook rows
    zc, cc = z.cpu().double(), codebook.cpu().double()
    _, best = ref.vector_quantize_direct(zc, cc)
    mine = ref.squared_distances(zc, cc, idx.cpu())
    nearest = ref.squared_distances(zc, cc, best)
    scale = (zc * zc).sum(-1) + (cc * cc).sum(-1).max() + 1
    assert (mine - nearest <= DIST_RTOL[dtype] * scale).all()


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
@settings(max_examples=25, deadline=None)
@given(lead=st.lists(st.integers(0, 9), min_size=1, max_size=3), D=st.sampled_from([1, 2, 3, 4, 5, 8, 9]),
       K=st.integers(1, 70), seed=st.integers(0, 2**16))
def test_random_inputs_choose_nearest_codes(device, lead, D, K, seed):
    g = torch.Generator().manual_seed(seed)
    for dtype in float_dtypes(device):
        z = torch.randn(*lead, D, generator=g, dtype=torch.float64).to(device, dtype)
        codebook = torch.randn(K, D, generator=g, dtype=torch.float64).to(device, dtype)
        z_q, idx = ops.vector_quantize(z, codebook)
        _check_nearest(z, codebook, z_q, idx, dtype)


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
@settings(max_examples=20, deadline=None)
@given(lead=st.lists(st.integers(0, 12), min_size=1, max_size=3), D=st.sampled_from([1, 2, 3, 4, 6, 8]),
       K=st.integers(1, 300), seed=st.integers(0, 2**16))
def test_separated_codes_equal_reference_indices(device, lead, D, K, seed):
    g = torch.Generator().manual_seed(seed)
    K = min(K, 3 ** D * 2)
    for dtype in float_dtypes(device):
        z, codebook, pick = _separated(lead, K, D, g, dtype)
        z, codebook = z.to(device), codebook.to(device)
        z_q, idx = ops.vector_quantize(z, codebook)
        assert torch.equal(idx.cpu(), pick)
        rq, ri = ref.vector_quantize(z, codebook)  # taming's formula
        assert torch.equal(idx, ri) and torch.equal(z_q, rq)


def test_dat_shape_slice():
    """The DAT layout: (B, 4, 32, 32) latents flattened channels-last against a 16384 x 4 codebook (half an
    image)."""
    g = torch.Generator().manual_seed(0)
    codebook = torch.randn(16384, 4, generator=g)
    latents = torch.randn(1, 4, 32, 32, generator=g)[:, :, :16]
    flat = latents.permute(0, 2, 3, 1).reshape(-1, 4)
    z_q, idx = ops.vector_quantize(flat, codebook)
    assert idx.shape == (512,)
    _check_nearest(flat, codebook, z_q, idx, torch.float32)
    rq, ri = ref.vector_quantize(flat, codebook)
    assert (idx == ri).float().mean() > 0.99  # float32 near-ties aside (taming's expanded form)


def test_direct_form_is_exact_where_the_expanded_form_cancels():
    """Codes 1e-2 apart at distance ~1e3 from the origin: float32 ||z||^2 + ||e||^2 - 2 z.e cannot tell them
    apart, the kernels' sum of squared differences can."""
    offsets = torch.arange(64, dtype=torch.float64)[:, None] * 1e-2
    codebook = 1000.0 + torch.cat([offsets, offsets.flip(0)], 1)  # (64, 2) distinct codes
    z = codebook[torch.tensor([3, 40, 17, 63])] + 2e-3
    _, exact = ref.vector_quantize_direct(z, codebook)
    _, idx = ops.vector_quantize(z.float(), codebook.float())
    assert torch.equal(idx, exact)
    _, taming = ref.vector_quantize(z.float(), codebook.float())
    assert not torch.equal(taming, exact)  # why the kernels sum the differences


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
def test_ties_go_to_the_lowest_index(device):
    codebook = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [1.0, 0.0]], device=device)
    _, idx = ops.vector_quantize(torch.zeros(3, 2, device=device), codebook)
    assert idx.tolist() == [0, 0, 0]
    _, idx = ops.vector_quantize(torch.tensor([[2.0, 0.0], [0.0, -3.0]], device=device), codebook)
    assert idx.tolist() == [0, 3]
    # many equal codes (the CPU kernel pads the codebook by repeating the last code: those never win)
    _, idx = ops.vector_quantize(torch.rand(40, 3, device=device), torch.zeros(37, 3, device=device))
    assert (idx == 0).all()


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
def test_nan_and_inf_rows(device):
    codebook = torch.rand(20, 3, device=device)
    z = torch.tensor([[float("nan"), 0.0, 0.0], [float("inf"), 0.0, 0.0], [0.5, 0.5, 0.5]], device=device)
    z_q, idx = ops.vector_quantize(z, codebook)
    assert idx[:2].tolist() == [0, 0]  # every distance NaN / +inf: index 0
    assert torch.equal(z_q, codebook[idx])


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
def test_non_contiguous_inputs(device):
    g = torch.Generator().manual_seed(3)
    latents = torch.randn(2, 4, 6, 5, generator=g).to(device)  # (B, C, H, W)
    z = latents.permute(0, 2, 3, 1)  # channels-last view, not contiguous
    codebook = torch.randn(4, 30, generator=g).to(device).t()  # (30, 4), transposed view
    z_q, idx = ops.vector_quantize(z, codebook)
    rq, ri = ops.vector_quantize(z.contiguous(), codebook.contiguous())
    assert torch.equal(idx, ri) and torch.equal(z_q, rq) and z_q.shape == (2, 6, 5, 4)


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
def test_small_and_empty_sizes(device):
    codebook = torch.randn(5, 3, device=device)
    z_q, idx = ops.vector_quantize(torch.randn(0, 3, device=device), codebook)  # N = 0
    assert z_q.shape == (0, 3) and idx.shape == (0,)
    z_q, idx = ops.vector_quantize(torch.randn(2, 0, 3, device=device), codebook)
    assert z_q.shape == (2, 0, 3) and idx.shape == (2, 0)
    z_q, idx = ops.vector_quantize(torch.randn(7, 3, device=device), codebook[:1])  # K = 1
    assert (idx == 0).all() and torch.equal(z_q, codebook[:1].expand(7, 3))
    z = torch.randn(9, 1, device=device)  # D = 1
    cb = torch.randn(11, 1, device=device)
    _, idx = ops.vector_quantize(z, cb)
    assert torch.equal(idx, (z - cb[:, 0]).abs().argmin(1))
    z_q, idx = ops.vector_quantize(torch.randn(3, device=device), codebook)  # one vector, rank 1
    assert idx.shape == () and z_q.shape == (3,)


def test_backends_agree():
    g = torch.Generator().manual_seed(5)
    z, codebook, pick = _separated((6, 50), 200, 4, g, torch.float32)
    with use_backend("reference"):
        rq, ri = ops.vector_quantize(z, codebook)
    with use_backend("cpu"):
        z_q, idx = ops.vector_quantize(z, codebook)
    assert torch.equal(idx, ri) and torch.equal(z_q, rq) and torch.equal(idx, pick)


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
def test_codebook_gradient(device):
    """grad codebook = index_add of grad_z_q over the chosen rows; no gradient reaches z."""
    g = torch.Generator().manual_seed(7)
    z, codebook, _ = _separated((5, 8), 30, 4, g)
    z, codebook = z.to(device).requires_grad_(), codebook.to(device).requires_grad_()
    w = torch.randn(5, 8, 4, generator=g, dtype=torch.float64).to(device)
    z_q, idx = ops.vector_quantize(z, codebook)
    (z_q * w).sum().backward()
    expected = torch.zeros_like(codebook).index_add_(0, idx.reshape(-1), w.reshape(-1, 4))
    torch.testing.assert_close(codebook.grad, expected)
    assert z.grad is None
    # the same as differentiating the gather codebook[idx]
    cb2 = codebook.detach().clone().requires_grad_()
    (cb2[idx] * w).sum().backward()
    torch.testing.assert_close(codebook.grad, cb2.grad)


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
def test_gradcheck_codebook(device):
    g = torch.Generator().manual_seed(8)
    z, codebook, _ = _separated((3, 7), 20, 4, g)  # codes ~2 apart, z within 0.05: eps never changes a choice
    z, codebook = z.to(device), codebook.to(device).requires_grad_()
    gradcheck(lambda cb: ops.vector_quantize(z, cb)[0], (codebook,))


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
def test_straight_through(device):
    """z + (z_q - z).detach(): the value of z_q (up to rounding), the gradient of the identity to z, none to
    the codebook. (Not a gradcheck: the estimator is biased by design; numerically the output does not move
    with z.)"""
    g = torch.Generator().manual_seed(9)
    z, codebook, _ = _separated((4, 6), 25, 3, g)
    z, codebook = z.to(device).requires_grad_(), codebook.to(device).requires_grad_()
    out, idx = ops.vector_quantize(z, codebook, straight_through=True)
    torch.testing.assert_close(out, codebook[idx].detach(), rtol=0, atol=1e-12)
    w = torch.randn(4, 6, 3, generator=g, dtype=torch.float64).to(device)
    (out * w).sum().backward()
    torch.testing.assert_close(z.grad, w)
    assert codebook.grad is None


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
def test_opcheck(device):
    g = torch.Generator().manual_seed(10)
    z = torch.randn(3, 5, 4, generator=g).to(device)
    codebook = torch.randn(17, 4, generator=g).to(device).requires_grad_()
    opcheck(torch.ops.pvf.vector_quantize.default, (z, codebook))
    opcheck(torch.ops.pvf.vector_quantize.default, (z.double().requires_grad_(), codebook.detach().double()))


def test_dispatch_goes_through_the_custom_op_under_modes():
    from op_harness import ops_dispatched

    z, codebook = torch.randn(4, 3), torch.randn(6, 3)
    assert "pvf.vector_quantize.default" in ops_dispatched(lambda: ops.vector_quantize(z, codebook))


@pytest.mark.parametrize("device", DEVICES_AND_CANDIDATES)
def test_torch_compile(device):
    g = torch.Generator().manual_seed(11)
    z, codebook, _ = _separated((2, 8), 40, 4, g, torch.float32)
    z, codebook = z.to(device).requires_grad_(), codebook.to(device).requires_grad_()

    def fn(a, cb):
        z_q, idx = ops.vector_quantize(a, cb)
        st, _ = ops.vector_quantize(a, cb, straight_through=True)
        return (z_q * z_q).sum() + (st * 2).sum(), idx

    check_compiled(fn, z, codebook)


def test_onnx_export(tmp_path):
    g = torch.Generator().manual_seed(12)
    z, codebook, _ = _separated((2, 6, 6), 64, 4, g, torch.float32)

    class Quantizer(torch.nn.Module):  # a VQGAN's quantiser: (B, C, H, W) latents, channels-last vectors
        def __init__(self):
            super().__init__()
            self.codebook = torch.nn.Parameter(codebook)

        def forward(self, latents):
            z_q, idx = ops.vector_quantize(latents.permute(0, 2, 3, 1), self.codebook)
            return z_q.permute(0, 3, 1, 2), idx

    latents = z.permute(0, 3, 1, 2).contiguous()
    report = check_onnx(Quantizer(), (latents,), tmp_path, atol=0, exact_outputs=(0, 1))
    assert {"MatMul", "ArgMin", "Gather", "ReduceSum"} <= set(report.op_types)


def _bad_cases():
    z, cb = torch.randn(5, 4), torch.randn(8, 4)
    return [
        BadInput("z rank 0", lambda: ops.vector_quantize(torch.tensor(1.0), cb), ValueError,
                 "'z' must have at least 1 dimension"),
        BadInput("codebook rank 1", lambda: ops.vector_quantize(z, cb[0]), ValueError,
                 r"'codebook' must have 2 dimensions \(K, D\)"),
        BadInput("codebook rank 3", lambda: ops.vector_quantize(z, cb[None]), ValueError,
                 r"'codebook' must have 2 dimensions \(K, D\)"),
        BadInput("D mismatch", lambda: ops.vector_quantize(z, torch.randn(8, 3)), ValueError,
                 r"last dimension of 'z' \(D = 4"),
        BadInput("D zero", lambda: ops.vector_quantize(torch.randn(5, 0), torch.randn(8, 0)), ValueError,
                 "at least one channel"),
        BadInput("empty codebook", lambda: ops.vector_quantize(z, torch.randn(0, 4)), ValueError,
                 "'codebook' is empty"),
        BadInput("dtype mismatch", lambda: ops.vector_quantize(z, cb.double()), TypeError, "same dtype"),
        BadInput("integer z", lambda: ops.vector_quantize(z.long(), cb.long()), TypeError, "'z' must be"),
        BadInput("half on cpu", lambda: ops.vector_quantize(z.half(), cb.half()), TypeError,
                 "float32 or float64"),
        BadInput("not a tensor", lambda: ops.vector_quantize(z.tolist(), cb), TypeError, "must be tensors"),
        BadInput("straight_through not bool", lambda: ops.vector_quantize(z, cb, straight_through=1),
                 TypeError, "straight_through must be a bool"),
        BadInput("meta codebook", lambda: ops.vector_quantize(z, cb.to("meta")), TypeError,
                 "unsupported device"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=str)
def test_bad_inputs(case):
    run_bad_input(case)


@pytest.mark.parametrize("case", _bad_cases()[:8], ids=str)
def test_bad_inputs_reference_backend(case):
    """The plain-PyTorch path (GPU default until the kernel is verified) raises the same errors (it also runs
    float16 on CPUs, which the C++ kernels do not)."""
    with use_backend("reference"):
        run_bad_input(case)


@pytest.mark.cuda
@pytest.mark.parametrize("candidate", [False, True])
def test_device_mix_raises(candidate):
    from pyvision_fast import use_candidates

    z = torch.randn(5, 4, device="cuda")
    with use_candidates("vector_quantize" if candidate else None):
        with pytest.raises(TypeError, match="is on cpu"):
            ops.vector_quantize(z, torch.randn(8, 4))


def _direct_cases():
    """The compiled entry point called directly with what the op never passes: the C++ checks refuse it."""
    from pyvision_fast import _ext

    mod = _ext.cpu_module()
    z, cb = torch.randn(6, 4), torch.randn(9, 4)

    def call(z=z, cb=cb, z_q=None, idx=None, ws=None):
        z_q = torch.empty_like(z) if z_q is None else z_q
        idx = torch.empty(z.shape[:-1], dtype=torch.int64) if idx is None else idx
        ws = torch.empty(mod.vector_quantize_workspace(9, 4)) if ws is None else ws
        mod.vector_quantize(_ext.arg(z), _ext.arg(cb), _ext.arg(z_q), _ext.arg(idx), _ext.arg(ws))

    return [
        BadInput("non-contiguous z", lambda: call(z=torch.randn(4, 6).t()), ValueError,
                 "'z' must be contiguous"),
        BadInput("non-contiguous codebook", lambda: call(cb=torch.randn(4, 9).t()), ValueError,
                 "'codebook' must be contiguous"),
        BadInput("z_q shape", lambda: call(z_q=torch.empty(6, 3)), ValueError,
                 "'z_q' must have the shape of 'z'"),
        BadInput("z_q dtype", lambda: call(z_q=torch.empty(6, 4, dtype=torch.float64)), TypeError,
                 "same dtype"),
        BadInput("indices shape", lambda: call(idx=torch.empty(5, dtype=torch.int64)), ValueError,
                 "'indices' must have the shape"),
        BadInput("indices dtype", lambda: call(idx=torch.empty(6, dtype=torch.int32)), TypeError,
                 "'indices' must be int64"),
        BadInput("workspace small", lambda: call(ws=torch.empty(3)), ValueError, "workspace has 3 elements"),
        BadInput("workspace dtype", lambda: call(ws=torch.empty(64, dtype=torch.float64)), TypeError,
                 "same dtype"),
    ]


@pytest.mark.parametrize("case", _direct_cases(), ids=str)
def test_compiled_entry_checks(case):
    run_bad_input(case)
