"""Every CUDA kernel of pyvision_fast once, forward and backward, on small shapes with ragged sizes and in
every dtype it takes: a short program to run under ``compute-sanitizer`` (memcheck, racecheck), which
reports any out-of-bounds or uninitialised access that the value tests cannot see.

    compute-sanitizer --tool memcheck --error-exitcode 1 python tools/cuda_smoke.py

It asserts nothing about values (the test suite does that): it exits 0 when every call returned, and
prints one line per op.
"""
from __future__ import annotations

import os
import sys

import torch

# Triton candidates run too (deform_conv, sphere): one configuration each, no autotuning under the sanitizer.
os.environ.setdefault("PVF_TRITON_AUTOTUNE", "0")

from pyvision_fast import ops, use_candidates  # noqa: E402
from pyvision_fast.geometry import equirect  # noqa: E402

DEVICE = "cuda"  # "--device cpu" runs the same calls on the CPU backends (a dry run of this script)
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _leaf(*shape, dtype, scale=1.0):
    return (torch.randn(*shape, device=DEVICE, dtype=torch.float32) * scale).to(dtype).requires_grad_()


def _backward(out, inputs):
    outs = [o for o in (out if isinstance(out, (tuple, list)) else (out,)) if o is not None and o.is_floating_point()]
    loss = sum(o.float().sum() for o in outs if o.requires_grad)
    if isinstance(loss, torch.Tensor):
        torch.autograd.grad(loss, [t for t in inputs if t.requires_grad], allow_unused=True)


def mvf(dtype):
    # The current kernels, then the Triton candidates (pyvision_fast.triton.mvf); CPU tensors ignore candidates.
    for candidates in (None, ["multi_view_fusion", "multi_view_fusion_batchnorm"]):
        with use_candidates(candidates):
            # (N, C, T, H, W) contiguous, the (N*T, C, H, W) frame layout, and rows that are not packed
            for layout in ("contiguous", "frames", "sliced"):
                x = torch.randn(2, 3, 6, 5, 9, device=DEVICE).to(dtype)
                if layout == "sliced":
                    x = x.reshape(2, 6, 3, 5, 9)[..., 1:8]
                else:
                    x = x[..., :7].contiguous()
                    x = x.transpose(1, 2) if layout == "frames" else x.reshape(2, 6, 3, 5, 7)
                x = x.requires_grad_()
                w = [_leaf(4, 3, dtype=dtype) for _ in range(3)]
                gamma, beta = _leaf(4, dtype=dtype), _leaf(4, dtype=dtype)
                _backward(ops.multi_view_fusion(x, *w, gamma.detach(), beta.detach(), True, 4), [x, *w])
                _backward(ops.multi_view_fusion_batchnorm(x, *w, gamma, beta, 1e-5, True, 4)[0],
                          [x, *w, gamma, beta])


def scale_space(dtype):
    import pyvision_fast

    for candidates in (None, "all"):  # the current kernels, then the candidates (tiled filter bank, Triton weight)
        with pyvision_fast.use_candidates(candidates):
            for shape in ((2, 3, 9, 11), (1, 2, 37, 70)):  # one tile; several, ragged
                x = _leaf(*shape, dtype=dtype)
                sigma = torch.tensor([0.6, 1.3, 2.1], device=DEVICE, dtype=dtype, requires_grad=True)
                for mode in ("reflect", "replicate", "zeros"):
                    _backward(ops.gaussian_scale_space(x, sigma, padding_mode=mode), [x, sigma])
            if dtype in (torch.float32, torch.float64):
                coeff, log_sigma = _leaf(7, 3, 6, dtype=dtype), _leaf(3, dtype=dtype, scale=0.3)
                _backward(ops.scale_space_weight(coeff, log_sigma, 5, 2), [coeff, log_sigma])
            y, gain = _leaf(2, 3, 37, dtype=dtype), _leaf(3, dtype=dtype)
            _backward(ops.scale_attention(y, gain), [y, gain])


def deform_conv(dtype):
    x = _leaf(2, 4, 7, 9, dtype=dtype)
    offset = _leaf(2, 2 * 2 * 9, 7, 9, dtype=dtype, scale=3.0)
    weight, bias = _leaf(6, 2, 3, 3, dtype=dtype), _leaf(6, dtype=dtype)
    mask = torch.rand(2, 2 * 9, 7, 9, device=DEVICE).to(dtype).requires_grad_()
    # groups (2) and offset groups (3) that split each other's channels, no mask, stride and dilation
    x6, w6 = _leaf(2, 6, 5, 8, dtype=dtype), _leaf(4, 3, 2, 3, dtype=dtype)
    offset6 = _leaf(2, 2 * 3 * 6, 3, 6, dtype=dtype, scale=3.0)
    for candidate in (None, "deform_conv2d"):  # the CUDA kernels, then the Triton candidate (GPU only)
        with use_candidates(candidate):
            _backward(ops.deform_conv2d(x, offset, weight, bias, 1, 1, 1, mask), [x, offset, weight, bias, mask])
            _backward(ops.deform_conv2d(x6, offset6, w6, None, (2, 1), 1, (1, 2)), [x6, offset6, w6])


def sphere(dtype):
    table = equirect.sampling_table(10, 20, 3, 2, "natural", dtype, DEVICE)
    x = _leaf(2, 3, 10, 20, dtype=dtype)
    w, b = _leaf(5, 3, 3, 3, dtype=dtype), _leaf(5, dtype=dtype)
    _backward(ops.sphere_conv2d(x, w, b, table), [x, w, b])
    # 16 channels: the Triton candidate's implicit GEMMs (a stride-1 table: the transposed-table gather), then the
    # CUDA kernels on the same call
    table1 = equirect.sampling_table(6, 12, 3, 1, "natural", dtype, DEVICE)
    x16, w16 = _leaf(2, 16, 6, 12, dtype=dtype), _leaf(5, 16, 3, 3, dtype=dtype)
    for candidate in (None, "sphere_conv2d"):
        with use_candidates(candidate):
            _backward(ops.sphere_conv2d(x16, w16, b, table1), [x16, w16, b])


def pointcloud(dtype):
    """Every point-cloud op on the current kernels, then on the candidates (cuda:next), whose extra calls reach
    each of their launch plans: every kNN list size and K > 32, D != 3, FPS with 1 and 2 points per thread and
    the global path, gathers through shared memory and the global path."""
    for candidates in (None, "all"):
        with use_candidates(candidates):
            _pointcloud_calls(dtype, extra=candidates is not None)


def _pointcloud_calls(dtype, extra: bool):
    p1, p2 = _leaf(3, 37, 3, dtype=dtype), _leaf(3, 300, 3, dtype=dtype)
    l1, l2 = torch.tensor([37, 5, 0], device=DEVICE), torch.tensor([300, 2, 129], device=DEVICE)
    _backward(ops.knn_points(p1, p2, l1, l2, K=5, return_nn=True), [p1, p2])
    _backward(ops.ball_query(p1, p2, l1, l2, K=7, radius=0.8), [p1, p2])
    _backward(ops.sample_farthest_points(p2, l2, K=40), [p2])
    f = _leaf(3, 6, 300, dtype=dtype)
    idx = torch.randint(0, 300, (3, 37), device=DEVICE)
    _backward(ops.gather_points(f, idx), [f])
    _backward(ops.grouping_operation(f, torch.randint(0, 300, (3, 37, 4), device=DEVICE)), [f])
    d, i = ops.three_nn(p1, p2)
    weight = (1.0 / (d.detach().float() + 1e-8)).to(dtype)
    weight = (weight / weight.sum(-1, keepdim=True)).requires_grad_()
    _backward(ops.three_interpolate(f, i, weight), [f, weight])
    _backward(ops.chamfer_distance(p1, p2, l1, l2)[0], [p1, p2])
    if not extra:
        return
    for K in (1, 2, 3, 8, 16, 32, 40):
        _backward(ops.knn_points(p1, p2, l1, l2, K=K), [p1, p2])
    q1, q2 = _leaf(2, 37, 2, dtype=dtype), _leaf(2, 300, 2, dtype=dtype)
    _backward(ops.knn_points(q1, q2, K=4), [q1, q2])
    _backward(ops.ball_query(q1, q2, K=40, radius=0.9), [q1, q2])
    _backward(ops.sample_farthest_points(q2, K=9), [q2])
    big = _leaf(2, 1100, 3, dtype=dtype)
    _backward(ops.sample_farthest_points(big, torch.tensor([1100, 3], device=DEVICE), K=9), [big])
    _backward(ops.gather_points(f, torch.randint(0, 300, (3, 7), device=DEVICE)), [f])  # few indices: global path


def stylegan2(dtype):
    """upfirdn2d (1-D and 2-D filters, up, down, both) and bias_act (every activation, clamp) on the current
    kernels, then on the candidates (cuda:next); float32/float64 only."""
    if dtype not in (torch.float32, torch.float64):
        return
    f1 = torch.tensor([1.0, 3.0, 3.0, 1.0], device=DEVICE)
    f2 = torch.outer(f1, f1)
    for candidates in (None, ["upfirdn2d", "bias_act"]):
        with use_candidates(candidates):
            x = _leaf(2, 3, 9, 7, dtype=dtype)
            for f, up, down, pad in ((f1, 2, 1, (2, 1)), (f2, 1, 2, 1), (f1, 2, 2, (1, 2, 0, 3)), (f2, 1, 1, 0)):
                _backward(ops.upfirdn2d(x, f, up=up, down=down, padding=pad), [x])
            b = _leaf(3, dtype=dtype)
            for act in ("linear", "relu", "lrelu", "tanh", "sigmoid", "elu", "selu", "softplus", "swish"):
                _backward(ops.bias_act(x, b, act=act, clamp=0.5 if act == "lrelu" else None), [x, b])


def mesh_raster(dtype):
    """rasterize_triangles (back-face culling on and off, a face list with a degenerate triangle), then
    interpolate_attributes and texture_sample on its output, on the reference default and the CUDA candidate;
    float32/float64 only."""
    if dtype not in (torch.float32, torch.float64):
        return
    verts = torch.rand(2, 9, 4, device=DEVICE, dtype=torch.float32) * 2 - 1
    verts[..., 3] = verts[..., 3].abs() + 1.0
    verts = verts.to(dtype).requires_grad_()
    faces = torch.randint(0, 9, (12, 3), device=DEVICE, dtype=torch.int32)
    faces[0] = torch.tensor([1, 1, 2], device=DEVICE)
    for candidates in (None, ["rasterize_triangles"]):
        with use_candidates(candidates):
            for cull in (False, True):
                rast = ops.rasterize_triangles(verts, faces, (17, 23), cull_backfaces=cull)
                attr = _leaf(2, 9, 2, dtype=dtype)
                uv = ops.interpolate_attributes(attr, rast, faces)
                tex = _leaf(2, 3, 8, 8, dtype=dtype)
                _backward(ops.texture_sample(tex, uv.clamp(0, 1)), [verts, attr, tex])


def bad_indices():
    """Out-of-range indices: the current kernels refuse them before a kernel reads with them; the candidates
    skip them without a host-side check (memcheck verifies that nothing outside the tensors is touched)."""
    f = torch.randn(2, 3, 10, device=DEVICE)
    bad = (torch.full((2, 4), 10, device=DEVICE), torch.full((2, 4), -1, device=DEVICE))
    with use_candidates(None):  # the current kernels, also where PVF_CANDIDATES enables the candidates
        for idx in bad:
            try:
                ops.gather_points(f, idx)
            except ValueError:
                continue
            raise AssertionError("gather_points accepted an index out of range")
    if DEVICE == "cuda":
        g = f.clone().requires_grad_()
        w = torch.rand(2, 4, 3, device=DEVICE, requires_grad=True)
        with use_candidates():
            for idx in bad:
                out = ops.gather_points(g, idx)
                _backward(out, [g])
                assert bool((out == 0).all())
                _backward(ops.three_interpolate(g, idx[:, :, None].expand(2, 4, 3).contiguous(), w), [g, w])


def main(argv: list[str]) -> int:
    global DEVICE, DTYPES
    if argv[:2] == ["--device", "cpu"]:
        DEVICE, DTYPES = "cpu", [torch.float32, torch.float64]
    torch.manual_seed(0)
    for name, fn in [("mvf", mvf), ("scale_space", scale_space), ("deform_conv", deform_conv), ("sphere", sphere),
                     ("pointcloud", pointcloud), ("stylegan2", stylegan2), ("mesh_raster", mesh_raster)]:
        for dtype in DTYPES:
            fn(dtype)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        print(f"{name}: ok ({', '.join(str(d).replace('torch.', '') for d in DTYPES)})", flush=True)
    bad_indices()
    print("bad indices: refused (current kernels), skipped (candidates)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
