"""pyvision_fast.array: the kernels on NumPy (and CuPy) arrays without torch. The results of the torch ops
(bit for bit on CPU, except where the torch op ends in a torch reduction: see ULPS), the same errors for the
same bad input, no torch import, any array-protocol object."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import pyvision_fast.array as pva
from pyvision_fast import ops
from pyvision_fast.array import sphere as asphere
from pyvision_fast.geometry import equirect

ROOT = Path(__file__).resolve().parent.parent
DTYPES = [np.float32, np.float64]


def run_python(code: str, timeout: int = 300, **env) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (so that nothing this test process imported is there)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env=full_env, cwd=ROOT)


def to_torch(value):
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value if value.flags.c_contiguous else value.copy())
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], np.ndarray):
        return type(value)(to_torch(v) for v in value)
    return value


# Where the torch op ends in a torch reduction of more than a few terms (chamfer_distance's sums and means
# over points, its cosine similarity of normals, the float64 normalisation of Gaussian kernels), NumPy sums in
# another order: those results agree to a few units in the last place, not bit for bit.
ULPS = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 4e-15, np.dtype(np.float16): 1e-3}


def assert_same(a, t, exact: bool = True) -> None:
    """NumPy result ``a`` equals torch result ``t``: same structure, dtypes, shapes, and values bit for bit
    (NaN where NaN, the sign of zeros), or with ``exact=False`` to a few units in the last place."""
    if t is None:
        assert a is None
        return
    if isinstance(t, tuple):
        assert isinstance(a, tuple) and len(a) == len(t)
        if hasattr(t, "_fields"):
            assert a._fields == t._fields
        for x, y in zip(a, t):
            assert_same(x, y, exact)
        return
    assert isinstance(a, np.ndarray), type(a)
    expected = t.detach().numpy()
    assert a.dtype == expected.dtype and a.shape == expected.shape
    if exact or a.dtype.kind != "f":
        assert np.array_equal(a, expected, equal_nan=True), np.abs(a.astype(np.float64) - expected).max()
        assert np.array_equal(np.signbit(a), np.signbit(expected)) if a.dtype.kind == "f" else True
    else:
        np.testing.assert_allclose(a, expected, rtol=ULPS[a.dtype], atol=ULPS[a.dtype])


def both(name: str, *args, **kwargs):
    """(array result, torch result) of op ``name`` on the same inputs."""
    out = getattr(pva, name)(*args, **kwargs)
    ref = getattr(ops, name)(*(to_torch(a) for a in args), **{k: to_torch(v) for k, v in kwargs.items()})
    return out, ref


def clouds(rng, B, N, D, dtype):
    return rng.standard_normal((B, N, D)).astype(dtype)


# ----- no torch

def test_import_and_calls_do_not_import_torch():
    code = """
import sys
import numpy as np
import pyvision_fast.array as a
assert 'torch' not in sys.modules, 'import'
rng = np.random.default_rng(0)
p = rng.random((2, 64, 3), dtype=np.float32)
s, i = a.sample_farthest_points(p, K=8, random_start_point=True)
a.furthest_point_sample(p, 8)
r = a.knn_points(s, p, K=4, return_nn=True)
a.knn_gather(p, r.idx)
b = a.ball_query(s, p, K=4, radius=0.3, fill='first')
f = a.gather_points(np.ascontiguousarray(p.transpose(0, 2, 1)), i)
a.grouping_operation(np.ascontiguousarray(p.transpose(0, 2, 1)), b.idx)
d, j = a.three_nn(p, s)
a.three_interpolate(rng.random((2, 5, 8)), j, np.full((2, 64, 3), 1 / 3))
a.chamfer_distance(s, p)
a.gaussian_scale_space(rng.random((1, 2, 16, 16)), [1.0, 2.0])
a.vector_quantize(rng.random((10, 4)), rng.random((3, 4)))
a.sampling_table(8, 16, 3)
a.set_num_threads(1)
import pyvision_fast
assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]
print('ok')
"""
    res = run_python(code)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_compiled_module_does_not_import_torch():
    res = run_python("import sys, pyvision_fast._C; assert 'torch' not in sys.modules; print('ok')")
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_package_imports_torch_parts_lazily():
    code = """
import sys
import pyvision_fast as pvf
assert 'torch' not in sys.modules
pvf.array.knn_points  # subpackages load on first access; array without torch
assert 'torch' not in sys.modules
from pyvision_fast import use_backend   # first access imports torch and the backend controls
assert 'torch' in sys.modules
assert pvf.ops.knn_points is not None and 'knn_points' in dir(pvf.ops)
assert pvf.nn.DeformConv2d is not None and pvf.models.create_model is not None
import torch
assert hasattr(torch.ops.pvf, 'knn_points')
print('ok')
"""
    res = run_python(code)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_torch_based_subpackages_register_the_ops_first():
    """A subpackage that reaches torch.ops.pvf (export's translation table) works when it is what a fresh
    process imports first, torch not yet imported."""
    code = """
import sys
import pyvision_fast.export as export
assert 'pyvision_fast.ops' in sys.modules
import torch
assert torch.ops.pvf.knn_points.default in export.translation_table()
print('ok')
"""
    res = run_python(code)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_package_imported_after_torch_registers_ops_at_once():
    code = """
import torch
import pyvision_fast
assert 'pyvision_fast.ops' in __import__('sys').modules
torch.ops.pvf.knn_points.default
print(pyvision_fast.BACKENDS)
"""
    res = run_python(code)
    assert res.returncode == 0 and "cuda" in res.stdout, res.stderr


# ----- bit for bit: FPS

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,N,D,K", [(2, 50, 3, 16), (3, 7, 2, 10), (1, 300, 5, 64), (0, 5, 3, 2)])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_sample_farthest_points_matches_torch(dtype, B, N, D, K, with_lengths):
    rng = np.random.default_rng(B * 100 + N)
    points = clouds(rng, B, N, D, dtype)
    lengths = rng.integers(0, N + 1, size=B).astype(np.int64) if with_lengths else None
    if with_lengths and B:
        lengths[0] = 0  # an empty cloud: every idx -1
    out, ref = both("sample_farthest_points", points, lengths, K=K)
    assert_same(out, ref)
    assert_same(pva.furthest_point_sample(points, K), ops.furthest_point_sample(to_torch(points), K))


def test_sample_farthest_points_random_start_follows_numpy_seed():
    points = clouds(np.random.default_rng(1), 4, 40, 3, np.float32)
    lengths = np.array([40, 3, 1, 25])
    np.random.seed(7)
    _, first = pva.sample_farthest_points(points, lengths, K=5, random_start_point=True)
    np.random.seed(7)
    _, again = pva.sample_farthest_points(points, lengths, K=5, random_start_point=True)
    assert np.array_equal(first, again)
    assert ((first[:, 0] >= 0) & (first[:, 0] < lengths)).all()
    # from that start, the order is the deterministic farthest-point order of the kernel
    for b in range(4):
        rolled = np.roll(points[b:b + 1, :lengths[b]], -first[b, 0], axis=1)
        _, idx = pva.sample_farthest_points(rolled, K=min(5, int(lengths[b])))
        back = (idx + first[b, 0]) % lengths[b]
        assert np.array_equal(back[0], first[b, :idx.shape[1]])


def test_per_cloud_k():
    points = clouds(np.random.default_rng(2), 3, 20, 3, np.float64)
    for K in (np.array([6, 6, 6]), np.array([6, 2, 0], np.int32), [1, 4, 3]):
        out, ref = both("sample_farthest_points", points, K=K)
        assert_same(out, ref)
    assert (out[1][0, 1:] == -1).all() and (out[1][1, 4:] == -1).all()


# ----- kNN / ball query

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,P1,P2,D,K", [(2, 30, 40, 3, 4), (1, 17, 5, 2, 8), (3, 9, 64, 6, 1),
                                         (2, 5, 0, 3, 2)])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_knn_points_matches_torch(dtype, B, P1, P2, D, K, with_lengths):
    rng = np.random.default_rng(P1 * P2 + K)
    p1, p2 = clouds(rng, B, P1, D, dtype), clouds(rng, B, P2, D, dtype)
    l1 = l2 = None
    if with_lengths:
        l1 = rng.integers(0, P1 + 1, size=B).astype(np.int32)  # int32 lengths are accepted
        l2 = rng.integers(0, P2 + 1, size=B).astype(np.int64)
        l2[0] = 0  # empty cloud: idx -1, dists inf
    out, ref = both("knn_points", p1, p2, l1, l2, K=K, return_nn=P2 > 0)
    assert_same(out, ref)
    if P2 == 0:  # no point to gather: zeros (as for any empty cloud)
        nn = pva.knn_points(p1, p2, l1, l2, K=K, return_nn=True).knn
        assert nn.shape == (B, P1, K, D) and not nn.any()
    # L1 distances are torch sums over D: the same order as NumPy's for D <= 3 (checked here), not beyond
    assert_same(*both("knn_points", p1, p2, l1, l2, K=K, norm=1), exact=D <= 3)
    if P2 == 0:
        l1_empty = pva.knn_points(p1, p2, l1, l2, K=K, norm=1)
        assert (l1_empty.idx == -1).all() and np.isinf(l1_empty.dists).all()
    if P2:
        assert_same(pva.knn_gather(p2, out.idx, l2), ops.knn_gather(to_torch(p2), ref.idx, to_torch(l2)))
        if with_lengths:
            assert (out.idx[0] == -1).all() and np.isinf(out.dists[0]).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fill", [None, "first"])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_ball_query_matches_torch(dtype, fill, with_lengths):
    rng = np.random.default_rng(3)
    p1, p2 = clouds(rng, 3, 20, 3, dtype), clouds(rng, 3, 50, 3, dtype)
    l1 = np.array([20, 4, 0]) if with_lengths else None
    l2 = np.array([50, 0, 7]) if with_lengths else None
    for K, radius in ((8, 0.9), (1, 0.5), (60, 2.0)):
        out, ref = both("ball_query", p1, p2, l1, l2, K=K, radius=radius, fill=fill)
        assert_same(out, ref)
    out, ref = both("ball_query", p1, p2, K=4, radius=1, return_nn=False)
    assert_same(out, ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_three_nn_interpolate_and_gathers_match_torch(dtype):
    rng = np.random.default_rng(4)
    unknown, known = clouds(rng, 2, 33, 3, dtype), clouds(rng, 2, 9, 3, dtype)
    (dist, idx), (tdist, tidx) = both("three_nn", unknown, known)
    assert_same(dist, tdist, exact=False)  # torch's CPU sqrt (SLEEF) is not always correctly rounded
    assert_same(idx, tidx)
    features = rng.standard_normal((2, 5, 9)).astype(dtype)
    weight = (1 / (dist + 1e-8)).astype(dtype)
    weight = weight / weight.sum(-1, keepdims=True)
    assert_same(*both("three_interpolate", features, idx, weight))
    assert_same(*both("three_interpolate", features, idx.astype(np.int32), weight))
    gidx = rng.integers(0, 9, size=(2, 6))
    assert_same(*both("gather_points", features, gidx))
    assert_same(*both("gather_points", features, gidx.astype(np.int32)))
    assert_same(*both("grouping_operation", features, rng.integers(0, 9, size=(2, 4, 3))))
    midx = rng.integers(-1, 9, size=(2, 4, 3))
    assert_same(*both("masked_gather", known, midx))


def test_float16_features_on_cpu_are_computed_in_float32():
    rng = np.random.default_rng(11)
    features = rng.standard_normal((2, 4, 9)).astype(np.float16)
    idx = rng.integers(0, 9, size=(2, 5, 3))
    weight = np.full((2, 5, 3), 1 / 3, np.float16)
    assert_same(*both("three_interpolate", features, idx, weight))
    assert_same(*both("gather_points", features, idx[..., 0]))
    assert_same(*both("grouping_operation", features, idx))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("point_reduction,batch_reduction", [("mean", "mean"), ("sum", "sum"), ("mean", None),
                                                             (None, None), ("max", "mean")])
@pytest.mark.parametrize("extras", ["plain", "lengths", "weights", "zero-weights", "normals", "single", "L1"])
def test_chamfer_distance_matches_torch(dtype, point_reduction, batch_reduction, extras):
    rng = np.random.default_rng(5)
    x, y = clouds(rng, 3, 40, 3, dtype), clouds(rng, 3, 25, 3, dtype)
    kw = dict(point_reduction=point_reduction, batch_reduction=batch_reduction)
    if extras == "lengths":
        kw.update(x_lengths=np.array([40, 10, 0]), y_lengths=np.array([25, 0, 3]))
    elif extras == "weights":
        kw.update(weights=np.array([0.5, 1.0, 2.0], dtype=dtype))
    elif extras == "zero-weights":
        kw.update(weights=np.zeros(3, dtype=dtype))
    elif extras == "L1":
        kw.update(norm=1, x_lengths=np.array([40, 10, 0]))
    elif extras == "normals":
        if point_reduction == "max":
            pytest.skip("no normal term with point_reduction='max'")
        kw.update(x_normals=clouds(rng, 3, 40, 3, dtype), y_normals=clouds(rng, 3, 25, 3, dtype))
    elif extras == "single":
        kw.update(single_directional=True)
    out, ref = both("chamfer_distance", x, y, **kw)
    if point_reduction is not None and batch_reduction is not None:  # torch: 0-d tensors, NumPy: 0-d arrays
        out = tuple(np.asarray(v) if v is not None else None for v in out)
    # per-point terms and maxima are exact; sums, means and the cosine of normals are torch reductions
    exact = point_reduction in (None, "max") and extras != "normals"
    assert_same(out, ref, exact=exact)


# ----- scale space, VQ

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "zeros"])
@pytest.mark.parametrize("sigma,radius", [([0.8, 1.5, 2.5], None), (1.2, None), ([1.0, 2.0], 2),
                                          ([0.5, 3.0], [1, 3]), ([], None)])
def test_gaussian_scale_space_matches_torch(dtype, padding_mode, sigma, radius):
    x = np.random.default_rng(6).standard_normal((2, 3, 12, 17)).astype(dtype)
    out, ref = both("gaussian_scale_space", x, sigma, padding_mode=padding_mode, radius=radius)
    # float64 kernels are normalised by a sum (torch's order vs NumPy's); float32 rounds that away
    assert_same(out, ref, exact=dtype == np.float32)
    if isinstance(sigma, list) and sigma:  # sigma as an array: the values it holds
        as_array = pva.gaussian_scale_space(x, np.array(sigma), padding_mode=padding_mode, radius=radius)
        assert_same(as_array, ref, exact=dtype == np.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("boundary", [0, 1, 2])
def test_filter_bank_matches_torch_bit_for_bit(dtype, boundary):
    """Given the same kernels, the filtering is the same kernel: bit for bit in float64 too."""
    from pyvision_fast.ops import scale_space as torch_scale_space

    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 3, 12, 17)).astype(dtype)
    kernels = pva.scale_space.gaussian_kernels([0.8, 1.7], [2, 4]).astype(dtype)
    out = pva.scale_space.filter_bank(x, kernels, [2, 4], boundary)
    ref = torch_scale_space.filter_bank(torch.from_numpy(x), torch.from_numpy(kernels), [2, 4], boundary)
    assert_same(out, ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,K", [((50, 8), 16), ((2, 3, 5, 4), 7), ((4,), 3), ((0, 6), 5), ((33, 1), 1)])
def test_vector_quantize_matches_torch(dtype, shape, K):
    rng = np.random.default_rng(7)
    z = rng.standard_normal(shape).astype(dtype)
    codebook = rng.standard_normal((K, shape[-1])).astype(dtype)
    assert_same(*both("vector_quantize", z, codebook))
    assert_same(*both("vector_quantize", z, codebook, straight_through=True))


def test_vector_quantize_ties_and_nan():
    codebook = np.array([[0.0, 0.0], [2.0, 0.0], [1.0, 0.0]])
    z = np.array([[1.0, 0.0], [np.nan, 0.0], [1.5, 0.0]])
    z_q, idx = pva.vector_quantize(z, codebook)
    assert idx.tolist() == [2, 0, 1]  # exact; all-NaN row: 0; tie between 1 and 2: lowest index
    assert np.array_equal(z_q, codebook[idx])


# ----- sphere tables

@pytest.mark.parametrize("args", [dict(height=8, width=16, kernel_size=3),
                                  dict(height=16, width=32, kernel_size=(3, 5), stride=2),
                                  dict(height=12, width=20, kernel_size=3, fov=(200.0, 90.0)),
                                  dict(height=32, width=64, kernel_size=8, stride=8, layout="paver"),
                                  dict(height=8, width=16, kernel_size=3, discrete=True)])
def test_sampling_table_matches_torch(args):
    """One NumPy implementation computes both (``geometry.equirect`` converts it): the arrays, their dtypes and
    shapes are the torch tables' exactly, and the CPU table is cached read-only."""
    table = pva.sampling_table(**args, dtype=np.float64)
    ref = equirect.sampling_table(**args, dtype=torch.float64)
    assert (table.in_size, table.out_size, table.kernel_size) == (ref.in_size, ref.out_size, ref.kernel_size)
    assert table.index.dtype == np.int32 and ref.index.dtype == torch.int32
    assert np.array_equal(table.index, ref.index.numpy())
    assert table.weight.dtype == np.float64 and np.array_equal(table.weight, ref.weight.numpy())
    f32 = pva.sampling_table(**args)
    assert f32.weight.dtype == np.float32 and not f32.weight.flags.writeable
    assert np.array_equal(f32.weight, equirect.sampling_table(**args).weight.numpy())
    assert f32 is pva.sampling_table(**args)  # cached


def test_sphere_positions_match_torch():
    assert np.array_equal(pva.tangent_sampling(16, 32, 3, 2), equirect.tangent_sampling(16, 32, 3, 2).numpy())
    assert np.array_equal(asphere.paver_offsets(64, 8), equirect.paver_offsets(64, 8).numpy())
    for n in (1, 7, 8, 16):
        assert np.array_equal(asphere._linspace(-0.3, 0.3, n),
                              torch.linspace(-0.3, 0.3, n, dtype=torch.float64).numpy())
    for bad, error in ((dict(height=8, width=20, kernel_size=3), ValueError),  # not 2:1, no fov
                       (dict(height=8, width=16, kernel_size=0), ValueError),
                       (dict(height=8, width=16, kernel_size=3, layout="x"), ValueError),
                       (dict(height=8, width=16, kernel_size=3, fov=(400, 90)), ValueError)):
        with pytest.raises(error):
            equirect.sampling_table(**bad)
        with pytest.raises(error):
            pva.sampling_table(**bad)


# ----- bad input

def _pts(*shape, dtype=np.float32):
    return np.random.default_rng(8).standard_normal(shape).astype(dtype)


def _nan_points():
    p = _pts(2, 5, 3)
    p[1, 2, 0] = np.nan
    return p


# (id, op, args, kwargs, pattern the array op's message must match: the argument it names)
BAD = [
    ("fps-int-points", "sample_farthest_points", (np.ones((1, 5, 3), np.int64),), dict(K=2), "points"),
    ("fps-float16-points", "sample_farthest_points", (_pts(1, 5, 3, dtype=np.float16),), dict(K=2), "points"),
    ("fps-rank", "sample_farthest_points", (_pts(5, 3),), dict(K=2), "points"),
    ("fps-nan", "sample_farthest_points", (_nan_points(),), dict(K=2), r"cloud 1, point 2"),
    ("fps-K0", "sample_farthest_points", (_pts(1, 5, 3),), dict(K=0), "K"),
    ("fps-K-float", "sample_farthest_points", (_pts(1, 5, 3),), dict(K=2.0), "K"),
    ("fps-lengths-float", "sample_farthest_points", (_pts(2, 5, 3), np.ones(2)), dict(K=2), "lengths"),
    ("fps-lengths-shape", "sample_farthest_points", (_pts(2, 5, 3), np.ones(3, np.int64)), dict(K=2),
     "lengths"),
    ("fps-lengths-range", "sample_farthest_points", (_pts(2, 5, 3), np.array([6, 1])), dict(K=2), "lengths"),
    ("knn-dtype-mismatch", "knn_points", (_pts(1, 5, 3), _pts(1, 5, 3, dtype=np.float64)), {}, "p2"),
    ("knn-D-mismatch", "knn_points", (_pts(1, 5, 3), _pts(1, 5, 2)), {}, "p2"),
    ("knn-B-mismatch", "knn_points", (_pts(1, 5, 3), _pts(2, 5, 3)), {}, "p2"),
    ("knn-rank", "knn_points", (_pts(5, 3), _pts(1, 5, 3)), {}, "p1"),
    ("knn-norm", "knn_points", (_pts(1, 5, 3), _pts(1, 5, 3)), dict(norm=3), "norm"),
    ("knn-lengths-int", "knn_points", (_pts(1, 5, 3), _pts(1, 5, 3)), dict(lengths1=[5]), "lengths1"),
    ("knn-gather-range", "knn_gather", (_pts(1, 5, 3), np.array([[[5]]])), {}, "idx"),
    ("knn-gather-rank", "knn_gather", (_pts(1, 5, 3), np.array([[5]])), {}, "idx"),
    ("masked-gather-range", "masked_gather", (_pts(1, 5, 3), np.array([[-2]])), {}, "idx"),
    ("fps-per-cloud-negative", "sample_farthest_points", (_pts(2, 5, 3),), dict(K=[2, -1]), "K"),
    ("fps-per-cloud-length", "sample_farthest_points", (_pts(2, 5, 3),), dict(K=[2, 1, 1]), "K"),
    ("fps-xyz-rank", "furthest_point_sample", (_pts(5, 3), 2), {}, "xyz"),
    ("ball-radius-zero", "ball_query", (_pts(1, 5, 3), _pts(1, 5, 3)), dict(radius=0.0), "radius"),
    ("ball-radius-inf", "ball_query", (_pts(1, 5, 3), _pts(1, 5, 3)), dict(radius=float("inf")), "radius"),
    ("chamfer-max-normals", "chamfer_distance", (_pts(2, 5, 3), _pts(2, 5, 3)),
     dict(x_normals=_pts(2, 5, 3), y_normals=_pts(2, 5, 3), point_reduction="max"), "normals"),
    ("chamfer-normals-shape", "chamfer_distance", (_pts(2, 5, 3), _pts(2, 5, 3)),
     dict(x_normals=_pts(2, 4, 3), y_normals=_pts(2, 5, 3)), "x_normals"),
    ("knn-negative-length", "knn_points", (_pts(2, 5, 3), _pts(2, 5, 3), None, np.array([-1, 2])), {},
     "lengths2"),
    ("knn-K0", "knn_points", (_pts(1, 5, 3), _pts(1, 5, 3)), dict(K=0), "K"),
    ("ball-radius-str", "ball_query", (_pts(1, 5, 3), _pts(1, 5, 3)), dict(radius="0.1"), "radius"),
    ("ball-fill", "ball_query", (_pts(1, 5, 3), _pts(1, 5, 3)), dict(fill="last"), "fill"),
    ("ball-D0", "ball_query", (_pts(1, 5, 0), _pts(1, 5, 0)), {}, "D >= 1"),
    ("gather-idx-float", "gather_points", (_pts(1, 4, 5), np.zeros((1, 3))), {}, "idx"),
    ("gather-idx-range", "gather_points", (_pts(1, 4, 5), np.array([[0, 5, 1]])), {}, "idx"),
    ("gather-idx-rank", "gather_points", (_pts(1, 4, 5), np.zeros((1, 3, 2), np.int64)), {}, "idx"),
    ("gather-empty-features", "gather_points", (_pts(1, 4, 0), np.zeros((1, 3), np.int64)), {}, "N = 0"),
    ("grouping-idx-rank", "grouping_operation", (_pts(1, 4, 5), np.zeros((1, 3), np.int64)), {}, "idx"),
    ("interp-weight-shape", "three_interpolate",
     (_pts(1, 4, 5), np.zeros((1, 6, 3), np.int64), _pts(1, 6, 2)), {}, "weight"),
    ("interp-idx-k", "three_interpolate", (_pts(1, 4, 5), np.zeros((1, 6, 2), np.int64), _pts(1, 6, 2)), {},
     "idx"),
    ("interp-idx-range", "three_interpolate", (_pts(1, 4, 5), np.full((1, 6, 3), 5), _pts(1, 6, 3)), {},
     "idx"),
    ("three-nn-few-known", "three_nn", (_pts(1, 5, 3), _pts(1, 2, 3)), {}, "known"),
    ("chamfer-rank", "chamfer_distance", (_pts(5, 3), _pts(1, 5, 3)), {}, "'x'"),
    ("chamfer-reduction", "chamfer_distance", (_pts(1, 5, 3), _pts(1, 5, 3)), dict(batch_reduction="max"),
     "batch_reduction"),
    ("chamfer-weights-negative", "chamfer_distance", (_pts(2, 5, 3), _pts(2, 5, 3)),
     dict(weights=np.array([1.0, -1.0], np.float32)), "weights"),
    ("chamfer-weights-shape", "chamfer_distance", (_pts(2, 5, 3), _pts(2, 5, 3)),
     dict(weights=np.ones(3, np.float32)), "weights"),
    ("chamfer-one-normals", "chamfer_distance", (_pts(2, 5, 3), _pts(2, 5, 3)), dict(x_normals=_pts(2, 5, 3)),
     "normals"),
    ("gss-sigma-negative", "gaussian_scale_space", (_pts(1, 1, 8, 8), [1.0, -1.0]), {}, "sigma"),
    ("gss-sigma-nan", "gaussian_scale_space", (_pts(1, 1, 8, 8), [float("nan")]), {}, "sigma"),
    ("gss-sigma-str", "gaussian_scale_space", (_pts(1, 1, 8, 8), ["1"]), {}, "sigma"),
    ("gss-padding", "gaussian_scale_space", (_pts(1, 1, 8, 8), 1.0), dict(padding_mode="circular"),
     "padding_mode"),
    ("gss-rank", "gaussian_scale_space", (_pts(1, 8, 8), 1.0), {}, "'x'"),
    ("gss-int", "gaussian_scale_space", (np.ones((1, 1, 8, 8), np.int32), 1.0), {}, "'x'"),
    ("gss-float16-cpu", "gaussian_scale_space", (_pts(1, 1, 8, 8, dtype=np.float16), 1.0), {}, "'x'"),
    ("gss-sigma-rank", "gaussian_scale_space", (_pts(1, 1, 8, 8), np.ones((1, 2))), {}, "sigma"),
    ("gss-reflect-radius", "gaussian_scale_space", (_pts(1, 1, 4, 4), 3.0), {}, "reflect padding"),
    ("gss-radius-negative", "gaussian_scale_space", (_pts(1, 1, 8, 8), [1.0, 2.0]), dict(radius=[1, -1]),
     "radius"),
    ("gss-radius-count", "gaussian_scale_space", (_pts(1, 1, 8, 8), [1.0, 2.0]), dict(radius=[1]), "radius"),
    ("gss-truncate", "gaussian_scale_space", (_pts(1, 1, 8, 8), 1.0), dict(truncate=0.0), "truncate"),
    ("vq-D-mismatch", "vector_quantize", (_pts(5, 3), _pts(4, 2)), {}, "'z'"),
    ("vq-empty-codebook", "vector_quantize", (_pts(5, 3), _pts(0, 3)), {}, "codebook"),
    ("vq-dtype", "vector_quantize", (_pts(5, 3), _pts(4, 3, dtype=np.float64)), {}, "codebook"),
    ("vq-scalar", "vector_quantize", (np.ones((), np.float32), _pts(4, 1)), {}, "'z'"),
    ("vq-codebook-rank", "vector_quantize", (_pts(5, 3), _pts(3)), {}, "codebook"),
    ("vq-straight-through", "vector_quantize", (_pts(5, 3), _pts(4, 3)), dict(straight_through=1),
     "straight_through"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_same_error_as_torch(case):
    _, name, args, kwargs, pattern = case
    with pytest.raises(Exception) as torch_error:
        getattr(ops, name)(*(to_torch(a) for a in args), **{k: to_torch(v) for k, v in kwargs.items()})
    with pytest.raises(Exception) as array_error:
        getattr(pva, name)(*args, **kwargs)
    assert array_error.type is torch_error.type, (array_error.value, torch_error.value)
    assert array_error.type in (ValueError, TypeError)
    assert re.search(pattern, str(array_error.value)), str(array_error.value)


def test_not_an_array_is_a_type_error_naming_the_argument():
    with pytest.raises(TypeError, match="'p2' must be an array"):
        pva.knn_points(_pts(1, 5, 3), [[[0.0, 0.0, 0.0]]])
    with pytest.raises(TypeError, match="lengths1 must be an int32 or int64 array"):
        pva.knn_points(_pts(1, 5, 3), _pts(1, 5, 3), lengths1=np.array([2.0]))
    with pytest.raises(TypeError, match="'x' must be an array"):
        pva.gaussian_scale_space("image", 1.0)


def test_outputs_are_not_writable_inputs_and_inputs_are_not_written():
    points = _pts(2, 30, 3)
    before = points.copy()
    points.flags.writeable = False  # read-only inputs are fine
    pva.sample_farthest_points(points, K=5)
    pva.knn_points(points, points, K=3)
    assert np.array_equal(points, before)


# ----- layouts and protocols

def test_strided_and_negative_stride_views_are_copied():
    rng = np.random.default_rng(9)
    base = clouds(rng, 2, 60, 6, np.float64)
    views = [base[:, ::2, :3], base[:, ::-1, 1:4], base[:, :, ::-2], np.asfortranarray(base)]
    for v in views:
        assert_same(pva.sample_farthest_points(v, K=7),
                    ops.sample_farthest_points(torch.from_numpy(v.copy()), K=7))
        assert_same(pva.knn_points(v[:, :10], v, K=3), ops.knn_points(torch.from_numpy(v[:, :10].copy()),
                                                                      torch.from_numpy(v.copy()), K=3))
    x = rng.standard_normal((1, 2, 10, 12))[:, :, ::-1]
    assert_same(pva.gaussian_scale_space(x, [1.0]),
                ops.gaussian_scale_space(torch.from_numpy(x.copy()), [1.0]),
                exact=False)  # float64 kernels: see test_gaussian_scale_space_matches_torch
    z = rng.standard_normal((8, 4)).T[::-1]
    assert_same(pva.vector_quantize(z, np.eye(8)[:3]), ops.vector_quantize(torch.from_numpy(z.copy()),
                                                                          torch.from_numpy(np.eye(8)[:3])))


class ArrayInterfaceOnly:
    """An object that is an array only through ``__array_interface__``."""

    def __init__(self, a: np.ndarray):
        self._a = a
        self.__array_interface__ = a.__array_interface__


class DLPackOnly:
    """An object that is an array only through ``__dlpack__``."""

    def __init__(self, a: np.ndarray):
        self._a = a

    def __dlpack__(self, **kwargs):
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


def test_array_interface_and_dlpack_objects():
    p1, p2 = _pts(2, 10, 3), _pts(2, 30, 3)
    expected = pva.knn_points(p1, p2, K=4)
    for wrap in (ArrayInterfaceOnly, DLPackOnly):
        got = pva.knn_points(wrap(p1), wrap(p2), K=4)
        assert isinstance(got.dists, np.ndarray)
        assert_same(got, tuple(torch.from_numpy(a) if a is not None else None for a in expected))
    # torch CPU tensors are DLPack objects too
    got = pva.knn_points(torch.from_numpy(p1), torch.from_numpy(p2), K=4)
    assert isinstance(got.idx, np.ndarray) and np.array_equal(got.idx, expected.idx)
    with pytest.raises(TypeError, match="'p1'"):
        pva.knn_points(object(), p2)


def test_thread_count():
    res = run_python("import pyvision_fast.array as a; print(a.get_num_threads())", OMP_NUM_THREADS="3")
    assert res.returncode == 0 and res.stdout.strip() == "3", res.stderr
    before = pva.get_num_threads()
    try:
        pva.set_num_threads(1)
        assert pva.get_num_threads() == 1
        out = pva.knn_points(_pts(2, 50, 3), _pts(2, 80, 3), K=5)
        pva.set_num_threads(2)
        assert_same(pva.knn_points(_pts(2, 50, 3), _pts(2, 80, 3), K=5), tuple(
            torch.from_numpy(a) if a is not None else None for a in out))
        for bad in (0, -1, 1.5, True):
            with pytest.raises(ValueError, match="n must be an int >= 1"):
                pva.set_num_threads(bad)
    finally:
        pva.set_num_threads(before)


# ----- README example

README_EXAMPLE = '''\
import numpy as np
import pyvision_fast.array as pva

pva.set_num_threads(1)  # one thread per data-loader worker


class PointCloudGroups:
    """Samples 512 centres per cloud and groups their 32 nearest points, with NumPy only."""

    def __init__(self, clouds, centres=512, group=32):
        self.clouds, self.centres, self.group = clouds, centres, group

    def __len__(self):
        return len(self.clouds)

    def __getitem__(self, i):
        points = self.clouds[i][None]                                   # (1, N, 3) float32
        centres, _ = pva.sample_farthest_points(points, K=self.centres)  # (1, 512, 3)
        knn = pva.knn_points(centres, points, K=self.group, return_nn=True)
        groups = knn.knn[0] - centres[0, :, None]                       # (512, 32, 3), centred
        return centres[0], groups


rng = np.random.default_rng(0)
dataset = PointCloudGroups([rng.random((2048, 3), dtype=np.float32) for _ in range(4)])
centres, groups = dataset[0]
'''


def test_readme_example_runs_without_torch():
    res = run_python(README_EXAMPLE + "import sys\nassert 'torch' not in sys.modules\n"
                     "print(centres.shape, groups.shape, groups.dtype)")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "(512, 3) (512, 32, 3) float32"


def test_readme_section_is_the_tested_example():
    readme = (ROOT / "README.md").read_text()
    if "pyvision_fast.array as pva" not in readme:
        pytest.skip("README has no pyvision_fast.array section yet")
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S)
              if "pyvision_fast.array as pva" in b]
    assert README_EXAMPLE in blocks


# ----- CuPy (GPU)

@pytest.mark.cuda
def test_cupy_arrays_run_the_cuda_kernels():
    cp = pytest.importorskip("cupy")
    rng = np.random.default_rng(10)
    p1, p2 = clouds(rng, 2, 40, 3, np.float32), clouds(rng, 2, 100, 3, np.float32)
    lengths = np.array([100, 0])
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        got = pva.knn_points(cp.asarray(p1), cp.asarray(p2), lengths2=cp.asarray(lengths), K=5)
        sampled, idx = pva.sample_farthest_points(cp.asarray(p2), K=16)
        ball = pva.ball_query(cp.asarray(p1), cp.asarray(p2), K=8, radius=0.8)
        feats = pva.three_interpolate(cp.asarray(p2.transpose(0, 2, 1).copy()),
                                      cp.asarray(np.zeros((2, 40, 3), np.int64)),
                                      cp.full((2, 40, 3), 1 / 3, np.float32))
        gathered = pva.gather_points(cp.asarray(p2.transpose(0, 2, 1).copy()), idx)
        gss = pva.gaussian_scale_space(cp.asarray(rng.random((1, 2, 16, 16), dtype=np.float32)), [1.0, 2.0])
        z_q, codes = pva.vector_quantize(cp.asarray(p1.reshape(-1, 3)), cp.asarray(p2[0, :10]))
    stream.synchronize()
    assert isinstance(got.dists, cp.ndarray) and isinstance(sampled, cp.ndarray)
    ref = pva.knn_points(p1, p2, lengths2=lengths, K=5)
    np.testing.assert_array_equal(cp.asnumpy(got.idx), ref.idx)
    np.testing.assert_allclose(cp.asnumpy(got.dists), ref.dists, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(cp.asnumpy(idx), pva.sample_farthest_points(p2, K=16)[1])
    np.testing.assert_array_equal(cp.asnumpy(ball.idx), pva.ball_query(p1, p2, K=8, radius=0.8).idx)
    np.testing.assert_allclose(cp.asnumpy(feats), np.repeat(p2[:, :1].transpose(0, 2, 1), 40, axis=2),
                               rtol=1e-6)
    np.testing.assert_array_equal(cp.asnumpy(gathered), cp.asnumpy(sampled).transpose(0, 2, 1))
    assert gss.shape == (1, 2, 2, 16, 16)
    np.testing.assert_array_equal(cp.asnumpy(codes), pva.vector_quantize(p1.reshape(-1, 3), p2[0, :10])[1])
    with pytest.raises(TypeError, match="'p2' is on cpu"):
        pva.knn_points(cp.asarray(p1), p2)
    with pytest.raises(ValueError, match="cloud 0"):
        bad = p2.copy()
        bad[0, 3, 1] = np.inf
        pva.sample_farthest_points(cp.asarray(bad), K=3)


# ----- empty inputs

@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_inputs_match_torch(dtype):
    rng = np.random.default_rng(13)
    empty_clouds = np.zeros((2, 0, 3), dtype)
    assert_same(*both("sample_farthest_points", empty_clouds, K=3))  # every idx -1, every point 0
    assert_same(*both("sample_farthest_points", np.zeros((0, 4, 3), dtype), K=2))
    p = clouds(rng, 2, 6, 3, dtype)
    assert_same(*both("ball_query", p, empty_clouds, K=4, radius=0.5))
    assert_same(*both("ball_query", empty_clouds, p, K=4, radius=0.5))
    assert_same(*both("knn_points", empty_clouds, p, K=2))
    features = rng.standard_normal((2, 3, 6)).astype(dtype)
    assert_same(*both("gather_points", features, np.zeros((2, 0), np.int64)))
    no_idx, no_weight = np.zeros((2, 0, 3), np.int64), np.zeros((2, 0, 3), dtype)
    assert_same(*both("three_interpolate", features, no_idx, no_weight))
    assert_same(*both("chamfer_distance", empty_clouds, p, point_reduction="sum", batch_reduction=None))
    assert_same(*both("gaussian_scale_space", np.zeros((0, 2, 8, 8), dtype), [1.0]))
    assert_same(*both("vector_quantize", np.zeros((0, 3), dtype), np.ones((2, 3), dtype)))
