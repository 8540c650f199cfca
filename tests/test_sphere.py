"""Spherical convolution on ERP images: PAVER's geometry, the tangent-plane sampling, sphere_conv2d against the
reference backend and torchvision's deform_conv2d, SphereConv2d and SpherePatchEmbed."""
import math

import numpy as np
import pytest
import torch
import torchvision

from op_harness import DEVICES, BadInput, assert_close, check_compiled, check_onnx, float_dtypes, gradcheck, opcheck
from op_harness import on_implementation
from op_harness import ops_dispatched, run_bad_input
from pyvision_fast import ops, use_backend
from pyvision_fast.geometry import equirect
from pyvision_fast.nn import SphereConv2d, SpherePatchEmbed


def _paver_offsets_from_the_spec(height, R, patches=None):
    """PAVER's offsets point by point, as papers.md section 2.1 states them (numpy, one tap at a time)."""
    n, W = height // R, 2 * height
    P = math.atan(math.pi / (2 * n))
    rad = W / (2 * math.pi)
    xs, ys = np.linspace(-P, P, R), np.linspace(P, -P, R)

    def roty(a):
        return np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])

    def rotz(a):
        return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])

    out = {}
    for i, lat in enumerate(range(n // 2, -n // 2, -1)):
        for j, lon in enumerate(range(2 * n - 1, -1, -1)):
            if patches is not None and (i, j) not in patches:
                continue
            for r in range(R):
                for c in range(R):
                    v = np.array([1.0, xs[c], ys[r]]) @ roty(P * (2 * lat - 1)) @ rotz(P * (2 * lon + 1))
                    v = v / np.linalg.norm(v)
                    h = rad * math.atan2(math.hypot(v[0], v[1]), v[2])
                    w = rad * math.atan2(v[1], v[0])
                    h = h - height if h > height else h
                    h = h + height if h < 0 else h
                    w = w - W if w > W else w
                    w = w + W if w < 0 else w
                    out[(2 * (r * R + c), i, j)] = h - (R * i + r)
                    out[(2 * (r * R + c) + 1, i, j)] = w - (R * j + c)
    return out


def test_paver_offsets_equal_the_published_construction():
    small = equirect.paver_offsets(64, 8)
    assert small.shape == (2 * 64, 8, 16)
    for (ch, i, j), v in _paver_offsets_from_the_spec(64, 8).items():
        assert abs(float(small[ch, i, j]) - v) < 1e-9
    full = equirect.paver_offsets()  # PAVER's configuration: 224 x 448, 16 x 16 patches
    assert full.shape == (512, 14, 28) and full.dtype == torch.float64
    for (ch, i, j), v in _paver_offsets_from_the_spec(224, 16, {(0, 0), (6, 13), (13, 27), (7, 5)}).items():
        assert abs(float(full[ch, i, j]) - v) < 1e-9


def test_paver_layout_equals_torchvision_deform_conv_away_from_the_border():
    """Property (a): SpherePatchEmbed(layout='paver') is DeformConv2d with PAVER's repeated offsets."""
    torch.manual_seed(0)
    H, R = 64, 8
    embed = SpherePatchEmbed((H, 2 * H), R, 3, 24, layout="paver").double()
    x = torch.randn(2, 3, H, 2 * H, dtype=torch.float64)
    offsets = equirect.paver_offsets(H, R).repeat(2, 1, 1, 1)
    expected = torchvision.ops.deform_conv2d(x, offsets, embed.proj.weight, embed.proj.bias, stride=R)
    got = embed(x)  # (B, N, C)
    pos = equirect.paver_positions(H, R)
    inside = ((pos[..., 0] >= 0) & (pos[..., 0] <= H - 1) & (pos[..., 1] >= 0) & (pos[..., 1] <= 2 * H - 1))
    inside = inside.flatten(2).all(-1).flatten()  # (N,) patches with no sample across the border
    assert inside.float().mean() > 0.7
    assert_close(got[:, inside], expected.flatten(2).transpose(1, 2)[:, inside])


def test_patch_embedding_equals_plain_embedding_of_the_gathered_tangent_patches():
    """Property (b), PAVER's own unit test: a ViT patch embedding through SpherePatchEmbed (integer positions)
    equals the plain patch embedding of the mosaic of gathered tangent-plane pixels."""
    import timm

    torch.manual_seed(1)
    H, R = 64, 8
    plain = timm.layers.PatchEmbed(img_size=(H, 2 * H), patch_size=R, in_chans=3, embed_dim=32)
    sphere = SpherePatchEmbed.from_patch_embed(plain, (H, 2 * H), layout="paver", discrete=True)
    x = torch.rand(2, 3, H, 2 * H)
    pos = equirect.paver_positions(H, R).floor().long()  # (n, 2n, R, R, 2)
    h, w = pos[..., 0] % H, pos[..., 1] % (2 * H)
    mosaic = x[:, :, h, w]  # (B, 3, n, 2n, R, R)
    mosaic = mosaic.permute(0, 1, 2, 4, 3, 5).reshape(2, 3, H, 2 * H)
    expected = plain(mosaic)
    got = sphere(x)
    assert got.shape == expected.shape == (2, 2 * (H // R) ** 2, 32)
    assert (got - expected).abs().max() < 1e-4 * expected.abs().max()


def _unit(h, w, H, W):
    lat = math.pi / 2 - h * math.pi / H
    lon = w * 2 * math.pi / W
    return torch.stack([torch.cos(lat) * torch.cos(lon), torch.cos(lat) * torch.sin(lon), torch.sin(lat)], -1)


def test_natural_layout_is_a_regular_tangent_grid_close_to_the_pixel_grid_at_the_equator():
    """Property (c)."""
    H, W, R = 64, 128, 8
    pos = equirect.tangent_sampling(H, W, R, R)  # (8, 16, R, R, 2)
    n = H // R
    for i in (n // 2 - 1, n // 2):  # the two patch rows next to the equator
        for j in (0, 5, 15):
            regular_h = (torch.arange(R, dtype=torch.float64) + i * R)[:, None]
            regular_w = (torch.arange(R, dtype=torch.float64) + j * R)[None, :]
            assert (pos[i, j, ..., 0] - regular_h).abs().max() < 0.25  # a quarter pixel
            dw = torch.remainder(pos[i, j, ..., 1] - regular_w + W / 2, W) - W / 2
            assert dw.abs().max() < 0.25
    # every patch (poles included): the samples, projected on the patch's tangent plane, form a regular grid
    for i in range(n):
        for j in (0, 7):
            ch, cw = torch.tensor(i * R + (R - 1) / 2, dtype=torch.float64), torch.tensor(j * R + (R - 1) / 2,
                                                                                            dtype=torch.float64)
            c0 = _unit(ch, cw, H, W)
            lat0, lon0 = math.pi / 2 - float(ch) * math.pi / H, float(cw) * 2 * math.pi / W
            east = torch.tensor([-math.sin(lon0), math.cos(lon0), 0.0], dtype=torch.float64)
            north = torch.tensor([-math.sin(lat0) * math.cos(lon0), -math.sin(lat0) * math.sin(lon0),
                                  math.cos(lat0)], dtype=torch.float64)
            d = _unit(pos[i, j, ..., 0], pos[i, j, ..., 1], H, W)  # (R, R, 3)
            x = (d @ east) / (d @ c0)
            y = (d @ north) / (d @ c0)
            grid = torch.arange(R, dtype=torch.float64) - (R - 1) / 2
            assert_close(x, (grid * 2 * math.pi / W)[None, :].expand(R, R), atol=1e-9, rtol=0)
            assert_close(y, (-grid * math.pi / H)[:, None].expand(R, R), atol=1e-9, rtol=0)


def test_rolling_by_whole_patches_rolls_the_natural_layout_output():
    """Property (d)."""
    torch.manual_seed(2)
    H, R = 32, 8
    embed = SpherePatchEmbed((H, 2 * H), R, 3, 16, layout="natural", flatten=False).double()
    x = torch.randn(2, 3, H, 2 * H, dtype=torch.float64)
    for m in (1, 3):
        rolled = embed(torch.roll(x, shifts=m * R, dims=3))
        assert_close(rolled, torch.roll(embed(x), shifts=m, dims=3), atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("stride", [1, 2])
def test_sphere_conv_equals_deform_conv_with_the_table_offsets(stride):
    torch.manual_seed(3)
    H, W = 16, 32
    layer = SphereConv2d(4, 5, 3, stride=stride).double()
    x = torch.randn(2, 4, H, W, dtype=torch.float64)
    pos = equirect.tangent_sampling(H, W, 3, stride)  # (Ho, Wo, 3, 3, 2)
    Ho, Wo = pos.shape[:2]
    assert layer(x).shape == (2, 5, math.ceil(H / stride), math.ceil(W / stride))
    # torchvision's regular grid for padding 1: (ho * s - 1 + i, wo * s - 1 + j)
    ho = torch.arange(Ho, dtype=torch.float64)[:, None, None, None] * stride - 1
    wo = torch.arange(Wo, dtype=torch.float64)[None, :, None, None] * stride - 1
    i = torch.arange(3, dtype=torch.float64)
    offsets = torch.stack([pos[..., 0] - (ho + i[:, None]), pos[..., 1] - (wo + i[None, :])], -1)
    offsets = offsets.permute(2, 3, 4, 0, 1).reshape(1, 18, Ho, Wo).expand(2, -1, -1, -1)
    # the deform conv's output grid must match ours: same Ho, Wo with padding 1
    expected = torchvision.ops.deform_conv2d(x, offsets.contiguous(), layer.weight, layer.bias, stride, 1)
    assert expected.shape[2:] == (Ho, Wo)
    inside = ((pos[..., 0] >= 0) & (pos[..., 0] <= H - 1) & (pos[..., 1] >= 0) & (pos[..., 1] <= W - 1))
    inside = inside.flatten(2).all(-1)  # (Ho, Wo)
    assert inside.float().mean() > 0.5
    assert_close(layer(x)[:, :, inside], expected[:, :, inside])


@pytest.mark.parametrize("device", DEVICES)
def test_backends_agree_values_and_gradients(device):
    torch.manual_seed(4)
    for dtype in float_dtypes(device):
        table = equirect.sampling_table(10, 20, 3, 2, "natural", dtype, device)
        layouts = {"plain": torch.randn(3, 4, 10, 20), "channels_last": torch.randn(3, 4, 10, 20).contiguous(
            memory_format=torch.channels_last), "strided": torch.randn(3, 4, 20, 10).transpose(2, 3)}
        for x in layouts.values():
            x = x.to(device, dtype).requires_grad_()
            w = torch.randn(6, 4, 3, 3, device=device, dtype=dtype, requires_grad=True)
            b = torch.randn(6, device=device, dtype=dtype, requires_grad=True)
            out = ops.sphere_conv2d(x, w, b, table)
            go = torch.randn_like(out)
            got = torch.autograd.grad(out, [x, w, b], go)
            x64, w64, b64 = (t.detach().double().cpu().requires_grad_() for t in (x, w, b))
            with use_backend("reference"):
                ref_table = equirect.sampling_table(10, 20, 3, 2, "natural", torch.float64)
                expected = ops.sphere_conv2d(x64, w64, b64, ref_table)
                want = torch.autograd.grad(expected, [x64, w64, b64], go.double().cpu())
            assert_close(out.cpu(), expected, dtype)
            tol = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {}
            for a, e in zip(got, want):
                assert_close(a.cpu(), e, dtype, **tol)


def test_column_chunks_that_split_images(monkeypatch):
    """Chunks of output rows that start and end inside an image (a small column budget) give the one-chunk
    result, forward and backward."""
    from pyvision_fast.ops import sphere as sphere_ops

    torch.manual_seed(5)
    table = equirect.sampling_table(10, 20, 3, 2, "natural", torch.float64)
    x = torch.randn(3, 4, 10, 20, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    results = []
    for budget in (sphere_ops.COLUMN_BUDGET_BYTES, 7 * 9 * 4 * 8):  # the second: 7 rows of 50 per chunk
        monkeypatch.setattr(sphere_ops, "COLUMN_BUDGET_BYTES", budget)
        out = ops.sphere_conv2d(x, w, b, table)
        results.append((out, *torch.autograd.grad(out, [x, w, b], torch.ones_like(out))))
    for a, e in zip(*results):
        assert_close(a, e)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_opcheck_compile_and_cache(device):
    torch.manual_seed(5)
    table = equirect.sampling_table(6, 12, 3, 1, "natural", torch.float64, device)
    assert table is equirect.sampling_table(6, 12, (3, 3), (1, 1), "natural", torch.float64, device)
    assert table.index.shape == (72, 9, 4) and table.index.dtype == torch.int32
    assert table.index.device.type == device
    assert_close(table.weight.sum(-1), torch.ones(72, 9, dtype=torch.float64))
    x = torch.randn(2, 3, 6, 12, dtype=torch.float64).to(device).requires_grad_()
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64).to(device).requires_grad_()
    b = torch.randn(4, dtype=torch.float64).to(device).requires_grad_()
    gradcheck(lambda a, c, d: ops.sphere_conv2d(a, c, d, table), (x, w, b))
    t32 = equirect.sampling_table(6, 12, 3, 1, "natural", torch.float32, device)
    x32, w32, b32 = (t.detach().float().requires_grad_() for t in (x, w, b))
    opcheck(torch.ops.pvf.sphere_conv2d.default, (x32, w32, b32, t32.index, t32.weight, 6, 12))
    opcheck(torch.ops.pvf.sphere_conv2d.default, (x32, w32, None, t32.index, t32.weight, 6, 12))
    check_compiled(lambda a, c, d: ops.sphere_conv2d(a, c, d, t32), x32, w32, b32)


def test_bad_inputs():
    table = equirect.sampling_table(8, 16, 3, 1)
    x, w = torch.randn(2, 3, 8, 16), torch.randn(4, 3, 3, 3)
    broken = equirect.SamplingTable(table.index.clone(), table.weight, table.in_size, table.out_size,
                                    table.kernel_size)
    broken.index[5, 2, 1] = 8 * 16
    cases = [
        BadInput("image size", lambda: ops.sphere_conv2d(torch.randn(2, 3, 8, 15), w, None, table), ValueError,
                 "built for 8x16"),
        BadInput("weight shape", lambda: ops.sphere_conv2d(x, torch.randn(4, 2, 3, 3), None, table), ValueError,
                 "weight must be"),
        BadInput("table dtype", lambda: ops.sphere_conv2d(x.double(), w.double(), None, table), TypeError,
                 "table.weight"),
        BadInput("not a table", lambda: ops.sphere_conv2d(x, w, None, (table.index, table.weight)), TypeError,
                 "SamplingTable"),
        BadInput("index out of range", lambda: ops.sphere_conv2d(x, w, None, broken), ValueError, "outside the 8x16"),
        BadInput("int input", lambda: ops.sphere_conv2d(x.int(), w.int(), None, table), TypeError, "must match"),
        BadInput("layout", lambda: equirect.sampling_table(8, 16, 3, 1, "cubemap"), ValueError, "layout"),
        BadInput("paver needs 2:1", lambda: SpherePatchEmbed((64, 64), 8), ValueError, "2:1"),
        BadInput("patch multiple", lambda: SpherePatchEmbed((60, 120), 8), ValueError, "multiple"),
        BadInput("embed input size", lambda: SpherePatchEmbed((32, 64), 8, 3, 8)(torch.randn(1, 3, 32, 32)),
                 ValueError, "expected"),
        BadInput("from_patch_embed", lambda: SpherePatchEmbed.from_patch_embed(torch.nn.Linear(3, 4)), TypeError,
                 "nn.Conv2d"),
        BadInput("kernel", lambda: equirect.tangent_sampling(8, 16, 0), ValueError, "kernel_size"),
        BadInput("table out_size vs index", lambda: ops.sphere_conv2d(x, w, None, table._replace(out_size=(4, 16))),
                 ValueError, r"table.index must have shape \(Ho \* Wo, kh \* kw, 4\) = \(64, 9, 4\)"),
        BadInput("table kernel_size vs index", lambda: ops.sphere_conv2d(
            x, torch.randn(4, 3, 1, 3), None, table._replace(kernel_size=(1, 3))), ValueError, r"= \(128, 3, 4\)"),
        BadInput("table weight vs index", lambda: ops.sphere_conv2d(x, w, None, table._replace(
            weight=table.weight[:, :8])), ValueError, "table.weight must have table.index's shape"),
        BadInput("table index dtype", lambda: ops.sphere_conv2d(x, w, None, table._replace(
            index=table.index.long())), TypeError, "table.index must be int32"),
        BadInput("bias shape", lambda: ops.sphere_conv2d(x, w, torch.zeros(3), table), ValueError,
                 r"bias must have shape \(4,\)"),
        BadInput("input rank", lambda: ops.sphere_conv2d(x[0], w, None, table), ValueError, r"\(B, C, H, W\)"),
    ]
    for backend in ("cpu", "reference"):  # checked before any backend runs
        with use_backend(backend):
            for case in cases:
                run_bad_input(case)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_no_output_channels(backend):
    """C_out = 0: an empty output and gradients (zero for the input) on every backend (the weight's column
    layout was a reshape(-1, 0), which torch cannot resolve)."""
    table = equirect.sampling_table(4, 8, 3, 1)
    x = torch.randn(2, 3, 4, 8, requires_grad=True)
    w, b = torch.randn(0, 3, 3, 3, requires_grad=True), torch.zeros(0, requires_grad=True)
    with use_backend(backend):
        out = ops.sphere_conv2d(x, w, b, table)
        gx, gw, gb = torch.autograd.grad(out.sum(), [x, w, b])
    assert out.shape == (2, 0, 4, 8) and gw.shape == w.shape and gb.shape == (0,)
    assert torch.equal(gx, torch.zeros_like(x))


@pytest.mark.triton
def test_bad_inputs_reach_no_triton_kernel():
    """The custom op called directly (past the public function's checks) on the Triton backend raises before any
    launch when the sizes disagree."""
    table = equirect.sampling_table(8, 16, 3, 1)
    x, w = torch.randn(2, 16, 8, 16), torch.randn(4, 16, 3, 3)
    Ho, Wo = table.out_size
    direct = torch.ops.pvf.sphere_conv2d
    cases = [
        BadInput("weight channels", lambda: direct(x, torch.randn(4, 8, 3, 3), None, table.index, table.weight, Ho, Wo),
                 ValueError, "weight must be"),
        BadInput("weight taps", lambda: direct(x, torch.randn(4, 16, 2, 2), None, table.index, table.weight, Ho, Wo),
                 ValueError, "kh \\* kw"),
        BadInput("output size", lambda: direct(x, w, None, table.index, table.weight, Ho, Wo + 1), ValueError,
                 "output locations"),
        BadInput("index dtype", lambda: direct(x, w, None, table.index.long(), table.weight, Ho, Wo), ValueError,
                 "int32"),
        BadInput("table weight", lambda: direct(x, w, None, table.index, table.weight[:-1], Ho, Wo), ValueError,
                 "table_weight"),
        BadInput("bias", lambda: direct(x, w, torch.zeros(3), table.index, table.weight, Ho, Wo), ValueError,
                 "bias must be"),
    ]
    with use_backend("triton"):
        for case in cases:
            run_bad_input(case)


def test_state_dict_matches_timm_patch_embed():
    import timm

    plain = timm.layers.PatchEmbed(img_size=(32, 64), patch_size=8, in_chans=3, embed_dim=16)
    sphere = SpherePatchEmbed((32, 64), 8, 3, 16)
    assert set(sphere.state_dict()) == set(plain.state_dict()) == {"proj.weight", "proj.bias"}


@pytest.mark.parametrize("make,shape", [
    (lambda: SpherePatchEmbed((32, 64), 8, 3, 16, layout="paver"), (2, 3, 32, 64)),
    (lambda: SpherePatchEmbed((32, 64), 8, 3, 16, layout="natural", flatten=False), (2, 3, 32, 64)),
    (lambda: SphereConv2d(3, 5, 3, stride=2), (2, 3, 12, 24)),
])
def test_onnx_export(make, shape, tmp_path):
    torch.manual_seed(6)
    report = check_onnx(make().eval(), (torch.randn(*shape),), tmp_path, atol=1e-5)
    assert {"Gather", "MatMul"} <= set(report.op_types) and "Asin" not in report.op_types


# Tables: validated once, transposed once, never read per call.

def _no_host_reads(monkeypatch):
    """Make any validation read of a table fail the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a table was read on the host")

    monkeypatch.setattr(torch.Tensor, "nonzero", refuse)


def test_tables_are_validated_once_and_remembered(monkeypatch):
    table = equirect.sampling_table(8, 16, 3, 1)
    x, w = torch.randn(1, 3, 8, 16), torch.randn(4, 3, 3, 3)
    user = equirect.SamplingTable(table.index.clone(), table.weight, table.in_size, table.out_size,
                                  table.kernel_size)
    reads = []
    real = torch.Tensor.nonzero
    monkeypatch.setattr(torch.Tensor, "nonzero", lambda self, *a, **k: (reads.append(1), real(self, *a, **k))[1])
    ops.sphere_conv2d(x, w, None, table)  # built by equirect: valid by construction
    assert reads == []
    for _ in range(3):
        ops.sphere_conv2d(x, w, None, user)  # a user's table: read once
    assert reads == [1]
    user.index[3, 1, 2] = 8 * 16  # changed in place: read again, and rejected
    with pytest.raises(ValueError, match="outside the 8x16"):
        ops.sphere_conv2d(x, w, None, user)
    assert reads == [1, 1]


def test_patch_embed_table_stays_trusted_across_moves_and_casts_once(monkeypatch):
    _no_host_reads(monkeypatch)
    embed = SpherePatchEmbed((32, 64), 8, 3, 16)
    x = torch.randn(2, 3, 32, 64)
    embed(x)
    embed = embed.double()
    first = embed.table().weight
    assert first.dtype == torch.float64 and embed.table().weight is first
    embed = embed.float()
    assert embed.table().weight is embed.table().weight
    embed(x)


def test_transposed_table_lists_every_entry_of_each_pixel_and_tap():
    for (H, k, s) in [(6, 3, 1), (8, 3, 2)]:
        table = equirect.sampling_table(H, 2 * H, k, s, "natural", torch.float64)
        tt = equirect.transposed_table(table.index, H, 2 * H)
        assert tt is equirect.transposed_table(table.index, H, 2 * H)  # remembered
        P, K, _ = table.index.shape
        HW = H * 2 * H
        listed = {}
        for kk in range(K):
            for q in range(HW):
                n = int(tt.count[kk, q])
                entries = tt.entry[kk, :n, q].tolist()
                assert entries == sorted(entries) and not tt.entry[kk, n:, q].any()
                listed[(kk, q)] = entries
        expected = {}
        for e, q in enumerate(table.index.reshape(-1).tolist()):
            expected.setdefault(((e // 4) % K, q), []).append(e)
        assert {key: v for key, v in listed.items() if v} == expected
    embed = equirect.sampling_table(32, 64, 8, 8, "paver", torch.float64)  # strided: too sparse to transpose
    assert equirect.transposed_table(embed.index, 32, 64) is None


def _both_ops():
    torch.manual_seed(9)
    table = equirect.sampling_table(6, 12, 3, 2, "natural", torch.float64)
    ins = [torch.randn(2, 3, 6, 12, dtype=torch.float64, requires_grad=True),
           torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True),
           torch.randn(4, dtype=torch.float64, requires_grad=True)]
    return (ins, lambda: ops.sphere_conv2d(*ins, table),
            lambda: torch.ops.pvf.sphere_conv2d(*ins, table.index, table.weight, *table.out_size))


def test_eager_calls_skip_the_custom_op_and_agree_with_it():
    ins, eager, custom = _both_ops()
    results = []
    for call, backward_name in ((eager, "_SphereConv2d"), (custom, "pvf_sphere_conv2d")):
        out = call()
        assert backward_name in type(out.grad_fn).__name__
        results.append((out, *torch.autograd.grad(out, ins, torch.ones_like(out))))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert a.stride() == b.stride()


def test_eager_calls_have_no_double_backward_and_modes_see_the_custom_op():
    ins, eager, _ = _both_ops()
    out = eager()
    (gx,) = torch.autograd.grad(out, ins[0], torch.ones_like(out, requires_grad=True), create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        gx.sum().backward()
    seen = ops_dispatched(eager)
    assert "pvf.sphere_conv2d.default" in seen


# The Triton candidate (pyvision_fast.triton.sphere): the interpreter on CPU, native on GPUs.

TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TRITON_DTYPES = [torch.float64, torch.float32, torch.float16] + ([torch.bfloat16] if TRITON_DEVICE == "cuda" else [])
TRITON_TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def _against_reference(x, w, b, table_args, backend="triton", seed=0):
    """sphere_conv2d under ``backend`` against the reference backend in float64 on CPU (same values): output
    (and its channels-last layout) and the gradients of input, weight and bias."""
    dtype, device = x.dtype, x.device
    table = equirect.sampling_table(*table_args, dtype=dtype, device=device)
    ins = [t.detach().requires_grad_() for t in (x, w, b)]
    refs = [t.detach().double().cpu().requires_grad_() for t in (x, w, b)]
    with use_backend("reference"):
        expected = ops.sphere_conv2d(*refs, equirect.sampling_table(*table_args, dtype=torch.float64))
    go = torch.randn(expected.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    want = torch.autograd.grad(expected, refs, go)
    with use_backend(backend):
        out = ops.sphere_conv2d(*ins, table)
        got = torch.autograd.grad(out, ins, go.to(device, dtype))
    assert out.shape == expected.shape and out.dtype == dtype
    assert out.is_contiguous(memory_format=torch.channels_last)
    for i, (a, e) in enumerate(zip((out, *got), (expected, *want))):
        tol = TRITON_TOL[dtype] * (1 if i == 0 else 4)
        e = e.detach()
        scale = max(1.0, float(e.abs().max())) if e.numel() else 1.0
        torch.testing.assert_close(a.double().cpu(), e, rtol=tol, atol=tol * scale)


def _sphere_inputs(B, C, Cout, H, W, k, dtype, layout="plain", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, H, W, generator=g)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.randn(B, C, W, H, generator=g).transpose(2, 3)
    w = torch.randn(Cout, C, k, k, generator=g) / (C * k * k) ** 0.5
    return x.to(TRITON_DEVICE, dtype), w.to(TRITON_DEVICE, dtype), torch.randn(Cout, generator=g).to(TRITON_DEVICE,
                                                                                                      dtype)


_SPHERE_CASES = {
    # B, C, C_out, H, (k, stride), layout
    "3x3": (2, 16, 5, 6, (3, 1), "plain"),
    "3x3_channels_last_two_chunks": (1, 20, 24, 4, (3, 1), "channels_last"),
    "stride2_strided_input": (2, 16, 8, 8, (3, 2), "strided"),
}


@pytest.mark.triton
@pytest.mark.parametrize("dtype", TRITON_DTYPES, ids=str)
@pytest.mark.parametrize("case", list(_SPHERE_CASES), ids=str)
def test_triton_matches_reference(case, dtype):
    B, C, Cout, H, (k, stride), layout = _SPHERE_CASES[case]
    x, w, b = _sphere_inputs(B, C, Cout, H, 2 * H, k, dtype, layout)
    _against_reference(x, w, b, (H, 2 * H, k, stride, "natural"))


@pytest.mark.triton
def test_triton_routes_small_channel_counts_and_sparse_tables_to_the_column_kernels():
    """RGB patch embeddings (3 channels, strided table): the candidate takes the column kernels' path, forward and
    backward; so does a table too sparse to transpose."""
    x, w, b = _sphere_inputs(2, 3, 16, 16, 32, 8, torch.float32)
    _against_reference(x, w, b, (16, 32, 8, 8, "paver"))
    x, w, b = _sphere_inputs(1, 16, 8, 16, 32, 4, torch.float32)
    _against_reference(x, w, b, (16, 32, 4, 4, "natural"))


@pytest.mark.triton
def test_triton_empty_batch_and_gradcheck():
    x, w, b = _sphere_inputs(0, 16, 4, 4, 8, 3, torch.float32)
    _against_reference(x, w, b, (4, 8, 3, 1, "natural"))
    x, w, b = (t.double().requires_grad_() for t in _sphere_inputs(1, 16, 3, 4, 8, 3, torch.float64))
    table = equirect.sampling_table(4, 8, 3, 1, "natural", torch.float64, TRITON_DEVICE)
    with use_backend("triton"):
        gradcheck(lambda a, c, d: ops.sphere_conv2d(a, c, d, table), (x, w, b), fast_mode=True)


def test_triton_is_the_gpu_default(monkeypatch):
    """The Triton kernels became the GPU default after the H200 run of 2026-12-04; CPUs keep the C++ kernels."""
    from pyvision_fast import _backend
    from pyvision_fast.ops import sphere as sp

    assert _backend.select("sphere_conv2d", torch.device("cpu"), sp._FORWARD)[0] == "cpu"
    monkeypatch.setattr(_backend, "available", lambda name, device: True)
    assert _backend.select("sphere_conv2d", torch.device("cuda"), sp._FORWARD)[0] == "triton"
    assert _backend.select("sphere_conv2d_backward", torch.device("cuda"), sp._BACKWARD)[0] == "triton"


CANDIDATE = [pytest.param(None, id="current"), pytest.param("sphere_conv2d", id="candidate")]


@pytest.mark.cuda
@pytest.mark.parametrize("candidate", CANDIDATE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("case", list(_SPHERE_CASES) + ["patch_embed"], ids=str)
def test_gpu_paths_match_reference(case, dtype, candidate):
    if case == "patch_embed":
        x, w, b = _sphere_inputs(2, 3, 32, 32, 64, 8, dtype)
        args = (32, 64, 8, 8, "paver")
    else:
        B, C, Cout, H, (k, stride), layout = _SPHERE_CASES[case]
        x, w, b = _sphere_inputs(B, C, Cout, H, 2 * H, k, dtype, layout)
        args = (H, 2 * H, k, stride, "natural")
    with on_implementation(candidate):
        _against_reference(x, w, b, args, backend=None)


@pytest.mark.cuda
@pytest.mark.parametrize("candidate", CANDIDATE)
@pytest.mark.parametrize("tf32", [False, True])
def test_gpu_benchmark_shape_and_tf32(candidate, tf32):
    """SphereConv2d's benchmark layer (64 -> 64, 3x3) on a 2 x 112 x 224 batch: float32 with IEEE and tf32 dots,
    against float64 on the GPU."""
    torch.manual_seed(7)
    conv = SphereConv2d(64, 64, 3).cuda()
    x = torch.randn(2, 64, 112, 224, device="cuda", requires_grad=True)
    conv64 = SphereConv2d(64, 64, 3).cuda().double()
    conv64.load_state_dict(conv.state_dict())
    x64 = x.detach().double().requires_grad_()
    expected = conv64(x64)
    go = torch.randn_like(expected)
    want = torch.autograd.grad(expected, [x64, conv64.weight, conv64.bias], go)
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        with on_implementation(candidate):
            out = conv(x)
            got = torch.autograd.grad(out, [x, conv.weight, conv.bias], go.float())
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    tol = 5e-3 if tf32 else 1e-4
    for a, e in zip((out, *got), (expected, *want)):
        torch.testing.assert_close(a.double(), e, rtol=tol, atol=tol * float(e.detach().abs().max()))


@pytest.mark.cuda
@pytest.mark.parametrize("candidate", CANDIDATE)
def test_gpu_steady_state_never_synchronises(candidate):
    torch.manual_seed(8)
    conv = SphereConv2d(16, 24, 3).cuda()
    embed = SpherePatchEmbed((32, 64), 8, 3, 32).cuda()
    x = torch.randn(2, 16, 12, 24, device="cuda", requires_grad=True)
    rgb = torch.randn(2, 3, 32, 64, device="cuda", requires_grad=True)

    def step():
        out = conv(x)
        torch.autograd.grad(out, [x, conv.weight, conv.bias], torch.ones_like(out))
        tokens = embed(rgb)
        torch.autograd.grad(tokens, [rgb, embed.proj.weight], torch.ones_like(tokens))

    with on_implementation(candidate):
        step()  # first call: tables, transposed tables, compilation and autotuning may synchronise
        torch.cuda.set_sync_debug_mode("error")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode(0)


def test_backward_runs_the_forwards_implementation_on_any_thread(monkeypatch):
    """See test_deform_conv: a backward on another thread runs the forward's implementation."""
    import threading

    from pyvision_fast.ops import sphere as sphere_ops

    ran = []
    monkeypatch.setitem(sphere_ops._BACKWARD, "reference", lambda *a: (ran.append("reference"), sphere_ops._backward(
        sphere_ops._IMPLS["reference"], *a))[1])
    ins, eager, custom = _both_ops()
    for call in (eager, custom):
        with use_backend("reference"):
            out = call()
        worker = threading.Thread(target=lambda: torch.autograd.grad(out, ins, torch.ones_like(out)))
        worker.start()
        worker.join()
    assert ran == ["reference", "reference"]


def test_frame_that_is_not_2_to_1_needs_its_field_of_view():
    """An ERP frame covers 360x180 degrees, so it is 2:1: a 16x16 frame is an error naming the fix, unless the
    caller states the field of view it covers."""
    with pytest.raises(ValueError, match=r"SphereConv2d: a 16x16 frame is not an equirectangular 360x180"):
        SphereConv2d(3, 4, 3)(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="pass fov="):
        equirect.sampling_table(16, 16, 3, 1)
    with pytest.raises(ValueError, match="SpherePatchEmbed: a 32x32 frame"):
        SpherePatchEmbed((32, 32), 8, 3, 16, layout="natural")
    with pytest.raises(ValueError, match="fov must be"):
        equirect.sampling_table(16, 16, 3, 1, fov=(400, 90))
    # stating the full sphere explicitly is the default geometry
    assert torch.equal(equirect.tangent_sampling(8, 16, 3, 1, fov=(360, 180)), equirect.tangent_sampling(8, 16, 3, 1))


def test_partial_field_of_view_samples_its_own_angular_grid():
    """A 90x90 degree 16x16 frame centred on the equator: at the frame's centre the kernel lands on the pixel
    grid (square angular pixels of 90/16 degrees), columns clamp at the edges instead of wrapping, and a frame
    that is 2:1 in pixels but covers 180x90 degrees samples like the full panorama's central half."""
    pos = equirect.tangent_sampling(16, 16, 3, 1, fov=(90, 90))
    centre = pos[8, 8]  # output (8, 8) centred at pixel (8, 8): the equator, 45 degrees east of the left edge
    expected_h = torch.tensor([7.0, 8.0, 9.0], dtype=torch.float64)[:, None].expand(3, 3)
    step = math.radians(90 / 16)  # the angular pixel size, and the tap spacing on the tangent plane
    # gnomonic: a tap k steps east on the plane is atan(k step) east of the centre on the sphere
    expected_w = 8 + torch.atan(torch.tensor([-step, 0.0, step], dtype=torch.float64)) / step
    assert_close(centre[1, :, 0], expected_h[1], atol=1e-9, rtol=0)  # the centre row is on the equator
    assert_close(centre[1, :, 1], expected_w, atol=1e-9, rtol=0)
    table = equirect.sampling_table(16, 16, 3, 1, "natural", torch.float64, fov=(90, 90))
    left_edge = table.index[8 * 16 + 0].long() % 16  # output (8, 0): its left taps fall outside the frame
    assert int(left_edge.max()) <= 2  # clamped to the frame, never wrapped to the right edge
    full = equirect.tangent_sampling(32, 64, 3, 1)
    half = equirect.tangent_sampling(16, 32, 3, 1, fov=(180, 90))
    # rows 8..23 of the full 32x64 panorama cover latitudes +-45 degrees, columns 0..31 longitudes 0..180
    assert_close(half[4:12, 4:28, ..., 0] + 8, full[12:20, 4:28, ..., 0], atol=1e-9, rtol=0)
    assert_close(half[4:12, 4:28, ..., 1], full[12:20, 4:28, ..., 1], atol=1e-9, rtol=0)
    layer = SphereConv2d(3, 4, 3, fov=(90, 90))
    assert layer(torch.randn(2, 3, 16, 16)).shape == (2, 4, 16, 16) and "fov=(90, 90)" in repr(layer)
