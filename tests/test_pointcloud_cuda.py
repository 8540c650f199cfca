"""Edge cases of the point-cloud ops on every path: CPU, the current CUDA kernels ("cuda"), the CUDA candidates
("cuda-candidate") and, without a GPU, the candidate kernels on the SIMT emulation ("cpu-emulated-candidate",
tests/simt). Sizes across the kernels' tiles and plans, ragged and empty clouds, K beyond a cloud, D != 3, all
dtypes, exact ties; the candidates' documented differences (no host-side validation); no host synchronisation
and CUDA-graph capture on the GPU."""
import sys
from pathlib import Path

import pytest
import torch

from op_harness import DEVICES_AND_CANDIDATES, assert_close, candidate_switch  # noqa: F401 - autouse fixture
from pyvision_fast import _backend, _ext, ops
from pyvision_fast.reference import pointcloud as ref

sys.path.insert(0, str(Path(__file__).parent / "simt"))
import emulated as E  # noqa: E402

EMULATED = pytest.param("cpu", id="cpu-emulated-candidate",
                        marks=[pytest.mark.slow,
                               pytest.mark.skipif(E.compiler() is None, reason="needs a host C++ compiler")])
PATHS = DEVICES_AND_CANDIDATES + [EMULATED]


@pytest.fixture(autouse=True)
def _emulated_candidates(request, monkeypatch):
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and "cpu-emulated-candidate" in callspec.id:
        fake = E.EmulatedCudaModule()
        monkeypatch.setattr(_ext, "cuda_module", lambda: fake)
        monkeypatch.setattr(_ext, "stream", lambda device: 0)
        real_select = _backend.select
        monkeypatch.setattr(_backend, "select", lambda op, device, impls: (
            ("cuda:next", impls["cuda:next"]) if "cuda:next" in impls else real_select(op, device, impls)))
    yield


@pytest.fixture
def candidate(request):
    """Whether the test runs the candidate kernels (on the GPU or on the emulation)."""
    return any(s in request.node.callspec.id for s in ("cuda-candidate", "cpu-emulated-candidate"))


def _dtypes(device):
    return [torch.float32, torch.float64] + ([torch.float16, torch.bfloat16] if device == "cuda" else [])


def _lattice(*shape, g, device, dtype):
    """Small integer coordinates: every distance exact in every dtype, many exact ties."""
    return torch.randint(0, 4, shape, generator=g).to(device, dtype)


def _skip_slow_emulation(device, candidate, work):
    # The SIMT emulation runs one host thread per CUDA thread: past about a million point pairs a case takes
    # minutes. Those shapes run on the GPU variants ("cuda", "cuda-candidate"); the emulated kernels are covered
    # at every launch plan by the smaller cases and by tests/test_pointcloud_simt.py.
    if device == "cpu" and candidate and work > 1_000_000:
        pytest.skip("too slow on the emulation")


# ------------------------------------------------------------------ kNN

@pytest.mark.parametrize("device", PATHS)
@pytest.mark.parametrize("K", [1, 2, 3, 4, 5, 8, 16, 20, 32, 40])
def test_knn_exact_ties_lengths_and_padding(device, candidate, K):
    g = torch.Generator().manual_seed(K)
    l1, l2 = torch.tensor([300, 257, 0]), torch.tensor([530, 9, 530])
    for dtype in _dtypes(device):
        p1, p2 = _lattice(3, 300, 3, g=g, device=device, dtype=dtype), _lattice(3, 530, 3, g=g, device=device,
                                                                                 dtype=dtype)
        d, i, _ = ops.knn_points(p1, p2, l1.to(device), l2.to(device), K=K)
        rd, ri = ref.knn_points_idx(p1.double().cpu(), p2.double().cpu(), l1, l2, K)
        assert torch.equal(i.cpu(), ri), dtype
        assert torch.equal(d.double().cpu(), rd), dtype


@pytest.mark.parametrize("device", PATHS)
@pytest.mark.parametrize("D", [1, 2, 5])
@pytest.mark.parametrize("K", [1, 4, 16, 40])
def test_knn_other_dimensions(device, candidate, D, K):
    g = torch.Generator().manual_seed(D * K)
    for dtype in _dtypes(device):
        p1, p2 = _lattice(2, 40, D, g=g, device=device, dtype=dtype), _lattice(2, 270, D, g=g, device=device,
                                                                                dtype=dtype)
        d, i, _ = ops.knn_points(p1, p2, K=K)
        rd, ri = ref.knn_points_idx(p1.double().cpu(), p2.double().cpu(), None, None, K)
        assert torch.equal(i.cpu(), ri) and torch.equal(d.double().cpu(), rd), dtype


@pytest.mark.parametrize("device", PATHS)
@pytest.mark.parametrize("K", [1, 16, 33])
def test_knn_uniform(device, candidate, K):
    g = torch.Generator().manual_seed(K)
    p1 = torch.rand(2, 260, 3, generator=g, dtype=torch.float64)
    p2 = torch.rand(2, 700, 3, generator=g, dtype=torch.float64)
    rd, ri = ref.knn_points_idx(p1, p2, None, None, K)
    for dtype in _dtypes(device):
        d, i, _ = ops.knn_points(p1.to(device, dtype), p2.to(device, dtype), K=K)
        if dtype == torch.float64:
            assert torch.equal(i.cpu(), ri)
        # whatever the order of near-ties, the distances are the reference's, and they are those of idx
        assert_close(d.cpu(), rd, dtype)
        true_d = ((p1[:, :, None] - torch.gather(p2, 1, i.cpu().reshape(2, -1, 1).expand(-1, -1, 3)).view(
            2, 260, K, 3)) ** 2).sum(-1)
        assert_close(d.cpu(), true_d, dtype)


@pytest.mark.parametrize("device", PATHS)
def test_knn_empty_and_small_clouds(device, candidate):
    assert ops.knn_points(torch.rand(0, 5, 3, device=device), torch.rand(0, 7, 3, device=device), K=2)[0].shape == (
        0, 5, 2)
    assert ops.knn_points(torch.rand(2, 0, 3, device=device), torch.rand(2, 7, 3, device=device), K=2)[0].shape == (
        2, 0, 2)
    d, i, _ = ops.knn_points(torch.rand(2, 4, 3, device=device), torch.rand(2, 0, 3, device=device), K=3)
    assert torch.isinf(d).all() and (i == -1).all()  # an empty cloud names no neighbour
    p1, p2 = torch.rand(2, 4, 3, device=device), torch.rand(2, 3, 3, device=device)
    d, i, _ = ops.knn_points(p1, p2, K=20)  # K beyond the cloud: 0 padding
    rd, ri = ref.knn_points_idx(p1.cpu(), p2.cpu(), None, None, 20)
    assert torch.equal(i.cpu(), ri) and (d[..., 3:] == 0).all()


# ------------------------------------------------------------------ farthest point sampling

@pytest.mark.parametrize("device", PATHS)
@pytest.mark.parametrize("N,D", [(1, 3), (100, 3), (1025, 3), (4097, 3), (8192, 3), (8193, 3), (300, 2), (300, 5)])
def test_fps_exact_ties_and_lengths(device, candidate, N, D):
    """Register-path sizes (1, 2, 4 and 8 points per thread), the global path (N > 8192, float64 over 4096, D != 3),
    lattice ties (lowest index first), ragged and empty clouds, K beyond a cloud."""
    _skip_slow_emulation(device, candidate, 3 * N * 60)
    g = torch.Generator().manual_seed(N + D)
    lengths = torch.tensor([N, max(N // 3, 1), 0])
    K = min(N + 2, 60)
    for dtype in _dtypes(device):
        pts = _lattice(3, N, D, g=g, device=device, dtype=dtype)
        _, idx = ops.sample_farthest_points(pts, lengths.to(device), K=K)
        assert torch.equal(idx.cpu(), ref.sample_farthest_points_idx(pts.double().cpu(), lengths, None, K)), dtype


@pytest.mark.parametrize("device", PATHS)
def test_fps_uniform_float64(device, candidate):
    _skip_slow_emulation(device, candidate, 2 * 4 * 3000 * 100)
    g = torch.Generator().manual_seed(7)
    pts = torch.rand(4, 3000, 3, generator=g, dtype=torch.float64)
    start = torch.tensor([0, 5, 2999, 17])
    idx = ops.sample_farthest_points(pts.to(device), K=100)[1]
    assert torch.equal(idx.cpu(), ref.sample_farthest_points_idx(pts, None, None, 100))
    idx = torch.ops.pvf.sample_farthest_points(pts.to(device), None, start.to(device), 100)
    assert torch.equal(idx.cpu(), ref.sample_farthest_points_idx(pts, None, start, 100))


# ------------------------------------------------------------------ ball query

@pytest.mark.parametrize("device", PATHS)
@pytest.mark.parametrize("K,P2,D", [(1, 300, 3), (31, 300, 3), (32, 300, 3), (33, 300, 3), (100, 300, 3),
                                    (7, 31, 3), (7, 33, 3), (40, 300, 2), (5, 0, 3)])
def test_ball_query_exact(device, candidate, K, P2, D):
    g = torch.Generator().manual_seed(K + P2)
    l1, l2 = torch.tensor([50, 17, 0]), torch.tensor([P2, P2 // 2, P2])
    for dtype in _dtypes(device):
        p1, p2 = _lattice(3, 50, D, g=g, device=device, dtype=dtype), _lattice(3, P2, D, g=g, device=device,
                                                                                dtype=dtype)
        d, i, nn = ops.ball_query(p1, p2, l1.to(device), l2.to(device), K=K, radius=1.5)
        rd, ri = ref.ball_query_idx(p1.double().cpu(), p2.double().cpu(), l1, l2, K, 1.5)
        assert torch.equal(i.cpu(), ri) and torch.equal(d.double().cpu(), rd), dtype
        assert torch.equal(nn, ops.masked_gather(p2, i))


# ------------------------------------------------------------------ gathers

@pytest.mark.parametrize("device", PATHS)
@pytest.mark.parametrize("C,N,M", [(9, 50, 70), (3, 50, 70), (1, 33, 50), (2, 8192, 20000), (4, 400, 20),
                                   (2, 30000, 20000)])
def test_gather_and_scatter_paths(device, candidate, C, N, M):
    """Shared-memory gathers with 4, 2 and 1 channels per block, rows too long for shared memory, few indices
    per row (both global paths); repeated indices in the scatter-add."""
    _skip_slow_emulation(device, candidate, 2 * C * M * 4)
    g = torch.Generator().manual_seed(C * N)
    idx = torch.randint(0, N, (2, M), generator=g)
    idx[:, : M // 2] = idx[:, :1]
    for dtype in _dtypes(device):
        f = torch.randn(2, C, N, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_()
        out = ops.gather_points(f, idx.to(device))
        assert torch.equal(out, torch.gather(f, 2, idx.to(device)[:, None].expand(2, C, M))), dtype
        grad = torch.randn(2, C, M, generator=g, dtype=torch.float64)
        (gf,) = torch.autograd.grad(out, f, grad.to(device, dtype))
        want = torch.zeros(2, C, N, dtype=torch.float64).scatter_add_(2, idx[:, None].expand(2, C, M),
                                                                      grad.to(dtype).double())
        assert_close(gf.cpu(), want, dtype, **({"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {}))


@pytest.mark.parametrize("device", PATHS)
def test_out_of_range_indices(device, candidate, monkeypatch):
    """CPU and the current CUDA kernels refuse an index outside [0, N) with ValueError; the candidates cannot
    check without a host synchronisation, so they skip it (reads 0, gradient dropped) and never touch memory
    outside the tensors; PVF_CHECK_INDICES=1 makes them check (and synchronise)."""
    f = torch.randn(2, 3, 10, device=device, requires_grad=True)
    bad = torch.tensor([[0, 10, 3], [-1, 2, 9]], device=device)
    w = torch.rand(2, 3, 3, device=device, requires_grad=True)
    if not candidate:
        with pytest.raises(ValueError, match="out of range"):
            ops.gather_points(f, bad)
        with pytest.raises(ValueError, match="out of range"):
            ops.three_interpolate(f, bad.view(2, 1, 3).expand(2, 3, 3).contiguous(), w)
        return
    out = ops.gather_points(f, bad)
    assert (out[0, :, 1] == 0).all() and (out[1, :, 0] == 0).all() and torch.equal(out[0, :, 2], f[0, :, 3])
    (gf,) = torch.autograd.grad(out.sum(), f)
    assert gf.sum().item() == 2 * 3 * 2  # only the 4 valid columns, 3 channels each
    out = ops.three_interpolate(f, bad.view(2, 1, 3).expand(2, 3, 3).contiguous(), w)
    torch.testing.assert_close(out[0, :, 0], w[0, 0, 0] * f[0, :, 0] + w[0, 0, 2] * f[0, :, 3])
    monkeypatch.setenv("PVF_CHECK_INDICES", "1")
    with pytest.raises(ValueError, match="out of range"):
        ops.gather_points(f, bad)


@pytest.mark.parametrize("device", PATHS)
def test_lengths_out_of_range(device, candidate):
    """Checked where that needs no synchronisation; the candidates clamp to [0, P] instead (documented)."""
    p1, p2 = torch.rand(2, 5, 3, device=device), torch.rand(2, 6, 3, device=device)
    bad = torch.tensor([7, -1], device=device)
    if not candidate:
        with pytest.raises(ValueError, match="outside"):
            ops.knn_points(p1, p2, lengths2=bad, K=2)
        return
    d, i, _ = ops.knn_points(p1, p2, lengths2=bad, K=2)
    rd, ri, _ = ops.knn_points(p1, p2, lengths2=torch.tensor([6, 0], device=device), K=2)
    assert torch.equal(i, ri) and torch.equal(d, rd)
    _, idx = ops.sample_farthest_points(p2, torch.tensor([9, -2], device=device), K=3)
    assert torch.equal(idx.cpu(), ref.sample_farthest_points_idx(p2.cpu(), torch.tensor([6, 0]), None, 3))


# ------------------------------------------------------------------ chamfer

@pytest.mark.parametrize("device", PATHS)
def test_chamfer_forward_backward(device, candidate):
    g = torch.Generator().manual_seed(11)
    x = torch.rand(3, 70, 3, generator=g, dtype=torch.float64)
    y = torch.rand(3, 50, 3, generator=g, dtype=torch.float64)
    xl, yl = torch.tensor([70, 20, 1]), torch.tensor([50, 50, 9])

    def definition(a, b):
        total = []
        for k in range(3):
            d = ((a[k, : xl[k], None] - b[k, None, : yl[k]]) ** 2).sum(-1)
            total.append(d.min(1).values.mean() + d.min(0).values.mean())
        return torch.stack(total).mean()

    a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
    want = definition(a, b)
    want_grads = torch.autograd.grad(want, (a, b))
    a, b = x.to(device).requires_grad_(), y.to(device).requires_grad_()
    got, _ = ops.chamfer_distance(a, b, xl.to(device), yl.to(device))
    got_grads = torch.autograd.grad(got, (a, b))
    assert_close(got.cpu(), want)
    for p, q in zip(got_grads, want_grads):
        assert_close(p.cpu(), q)


# ------------------------------------------------------------------ no host synchronisation (GPU)

def _inputs(device):
    """Every op's inputs, made before the checked region (creating them copies from the host, which waits)."""
    g = torch.Generator().manual_seed(0)
    return dict(p1=torch.rand(2, 40, 3, generator=g).to(device), p2=torch.rand(2, 90, 3, generator=g).to(device),
                l1=torch.tensor([40, 13]).to(device), l2=torch.tensor([90, 30]).to(device),
                f=torch.randn(2, 8, 90, generator=g).to(device),
                idx=torch.randint(0, 90, (2, 16, 4), generator=g).to(device),
                weights=torch.rand(2, generator=g).to(device))


def _every_op(x, random_start=True):
    """Every point-cloud op, forward and backward, on the inputs of ``_inputs``; returns the gradients."""
    p1, p2, f = (x[k].detach().requires_grad_() for k in ("p1", "p2", "f"))
    l1, l2, idx = x["l1"], x["l2"], x["idx"]
    outs = [ops.knn_points(p1, p2, l1, l2, K=16, return_nn=True).dists,
            ops.knn_points(p1, p2, K=1).dists,
            ops.ball_query(p1, p2, l1, l2, K=8, radius=0.3).dists,
            ops.sample_farthest_points(p2, l2, K=12)[0],
            ops.sample_farthest_points(p2, K=5, random_start_point=random_start)[0],
            ops.furthest_point_sample(p2, 7).float(),
            ops.gather_points(f, idx[:, :, 0]),
            ops.grouping_operation(f, idx),
            ops.chamfer_distance(p1, p2, l1, l2, weights=x["weights"])[0]]
    d, i = ops.three_nn(p1, p2)
    outs.append(ops.three_interpolate(f, i, 1.0 / (d + 1e-8)))
    loss = sum(o.float().sum() for o in outs)
    return torch.autograd.grad(loss, [p1, p2, f])


@pytest.mark.cuda
@pytest.mark.parametrize("device", [p for p in DEVICES_AND_CANDIDATES if p.values[0] == "cuda"])
def test_no_host_synchronisation(device):
    """torch.cuda.set_sync_debug_mode("error") raises on any synchronising torch call. (It does not see raw CUDA
    calls inside the extension: the current kernels' bindings still copy lengths and an index flag to the host;
    the graph-capture test below covers those for the candidates.)"""
    x = _inputs(device)
    _every_op(x)  # warm-up: lazy initialisation may synchronise once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _every_op(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.cuda
@pytest.mark.parametrize("device", [p for p in DEVICES_AND_CANDIDATES if "candidate" in p.id])
def test_candidates_are_cuda_graph_capturable(device):
    """Stream capture fails on any synchronising call, including the raw CUDA ones that set_sync_debug_mode does
    not see (the current kernels' host-side checks): the candidates must capture, forward and backward."""
    x = _inputs(device)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            expected = _every_op(x, random_start=False)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = _every_op(x, random_start=False)
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(captured, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ registers

@pytest.mark.slow
@pytest.mark.skipif(__import__("shutil").which("nvcc") is None, reason="needs nvcc")
def test_candidate_kernels_compile_for_sm90_without_spills(tmp_path):
    """Every instantiation of the candidate kernels keeps its state in registers (no local-memory spills)."""
    import re
    import subprocess

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(["nvcc", "-std=c++17", "-O3", "--use_fast_math", "--expt-relaxed-constexpr",
                          f"-I{root / 'csrc'}", "-arch=sm_90", "-Xptxas", "-v", "-c",
                          str(root / "csrc/pointcloud/pointcloud_next_cuda.cu"), "-o", str(tmp_path / "x.o")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    frames = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", out.stderr)
    assert len(frames) >= 100
    assert all(f == ("0", "0", "0") for f in frames), [f for f in frames if f != ("0", "0", "0")]
