"""PAVER (360 degree video saliency): the deformable encoder against a plain ViT on the tangent-patch mosaic
(the official unit test), timm weights, FusedSTBlock against an einsum/softmax reference, the
spherical-Gaussian heatmap, the windows and their padding, the self-supervised losses, ONNX export and bad
inputs."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pyvision_fast.geometry import equirect
from pyvision_fast.models import count_parameters, create_model, save_safetensors
from pyvision_fast.models.paver import PAVER, FusedSTBlock, PAVERDecoder, sphere_gaussian_basis

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, decoder_heads=4, num_frame=3)


def tiny(seed=0, **kw) -> PAVER:
    torch.manual_seed(seed)
    return create_model("paver", **{**TINY, **kw})


def _features(model, B=2, T=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, 1 + model.num_patches, model.decoder.embed_dim, generator=g)


def _erp(H):
    """scikit-image's astronaut photograph resized to an H x 2H frame, normalised as PAVER does."""
    from skimage import data

    img = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float()
    img = F.interpolate(img, size=(H, 2 * H), mode="bilinear", align_corners=False).round().clamp(0, 255)
    return PAVER.preprocess(img.permute(0, 2, 3, 1).to(torch.uint8)[None])[0]  # (1, 3, H, 2H)


# ---------------------------------------------------------------------------------------------- encoder

@pytest.mark.parametrize("H,R,dim", [(32, 8, 32), (224, 16, 48)])
def test_discrete_encoder_equals_plain_vit_on_the_tangent_mosaic(H, R, dim):
    """The official test_deform_patch: DeformViT(erp) == ViT(mosaic of the gathered tangent-plane pixels),
    within 1e-4 max|out|; the default float offsets (bilinear) give other tokens."""
    torch.manual_seed(0)
    model = create_model("paver", img_size=H, patch_size=R, embed_dim=dim, depth=2, num_heads=2,
                         offsets="discrete")
    plain = create_model("vit_tiny_patch16_224", img_size=(H, 2 * H), patch_size=R, embed_dim=dim, depth=2,
                         num_heads=2, num_classes=0).eval()
    plain.load_state_dict(model.encoder.state_dict())
    x = _erp(H)
    pos = equirect.paver_positions(H, R).floor().long()  # (n, 2n, R, R, 2)
    h, w = pos[..., 0].clamp(max=H - 1), pos[..., 1] % (2 * H)
    mosaic = x[:, :, h, w].permute(0, 1, 2, 4, 3, 5).reshape(1, 3, H, 2 * H)
    with torch.no_grad():
        expected = plain.forward_features(mosaic)
        got = model.encoder(x)
    assert got.shape == (1, 1 + 2 * (H // R) ** 2, dim)
    assert (got - expected).abs().max() < 1e-4 * expected.abs().max()

    bilinear = create_model("paver", img_size=H, patch_size=R, embed_dim=dim, depth=2, num_heads=2)
    bilinear.encoder.load_state_dict(model.encoder.state_dict())
    with torch.no_grad():
        interp = bilinear.encoder(x)
    assert (interp - got).abs().max() > 1e-2 * got.abs().max()
    assert bilinear.encoder.patch_embed.discrete is False and model.encoder.patch_embed.discrete is True


def test_encoder_is_frozen_and_encode_batches_frames():
    model = tiny().train()
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert not model.encoder.training and model.decoder.training
    frames = torch.randint(0, 256, (2, 5, 32, 64, 3), dtype=torch.uint8)
    x = PAVER.preprocess(frames)
    assert x.shape == (2, 5, 3, 32, 64) and x.dtype == torch.float32
    assert torch.equal(x[1, 2, 0, 3, 4], (frames[1, 2, 3, 4, 0].float() / 255 - 0.5) / 0.5)
    assert x.min() >= -1 and x.max() <= 1
    model.encode_chunk = 3  # 10 frames in chunks of 3, 3, 3, 1
    feats = model.encode(x)
    assert feats.shape == (2, 5, 33, 32) and not feats.requires_grad
    with torch.no_grad():
        one = model.encoder(x[1, 4:5])
    torch.testing.assert_close(feats[1, 4:5], one, rtol=1e-5, atol=1e-5)


def test_timm_vit_b16_weights_load_into_the_encoder(tmp_path):
    """timm's vit_base_patch16_224 state_dict loads strictly apart from its head and the pos_embed, which is
    resized bicubically 14 x 14 -> 14 x 28; the parameter counts of the default PAVER."""
    import timm

    torch.manual_seed(0)
    ref = timm.create_model("vit_base_patch16_224", pretrained=False)
    sd = ref.state_dict()
    path = save_safetensors(sd, tmp_path / "vit_b16.safetensors")
    model = create_model("paver", encoder_checkpoint=path)
    enc = model.encoder.state_dict()
    for k, v in sd.items():
        if k.startswith("head.") or k == "pos_embed":
            continue
        assert torch.equal(enc[k], v), k
    grid = sd["pos_embed"][:, 1:].reshape(1, 14, 14, 768).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(14, 28), mode="bicubic", align_corners=False)
    torch.testing.assert_close(enc["pos_embed"][:, 1:], grid.permute(0, 2, 3, 1).reshape(1, 392, 768))
    assert torch.equal(enc["pos_embed"][:, 0], sd["pos_embed"][:, 0])
    # the patch projection went unchanged into the sphere embedding
    assert torch.equal(model.encoder.patch_embed.proj.weight, sd["patch_embed.proj.weight"])

    # ViT-B/16 without head = timm's count minus the 768 x 1000 head, plus 196 more position tokens
    vit_b_no_head = sum(p.numel() for p in ref.parameters()) - (768 * 1000 + 1000)
    assert vit_b_no_head == 85_798_656
    assert count_parameters(model.encoder) == vit_b_no_head + 196 * 768 == 85_949_184
    block = 2 * 768 + 768 * 3 * 768 + (768 * 768 + 768) + 2 * 768 + (768 * 3072 + 3072) + (3072 * 768 + 768)
    cls_mlp = 2 * (768 * 768 + 768)
    assert count_parameters(model.decoder) == block + cls_mlp == 8_266_752
    assert model.default_input_size == (5, 393, 768) and model.decoder.num_frame == 5
    assert model.decoder.attn_layer.attn.num_heads == 8 and model.decoder.attn_layer.attn.qkv.bias is None
    dec = model.decoder
    assert (dec.lambda_cls, dec.lambda_spatial, dec.lambda_temporal) == (0.1, 0.5, 20)

    bad = dict(sd)
    bad.pop("blocks.3.mlp.fc1.bias")
    with pytest.raises(ValueError, match="blocks.3.mlp.fc1.bias"):
        model.encoder.load_timm_weights(save_safetensors(bad, tmp_path / "bad.safetensors"))
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        create_model("paver", **TINY, encoder_checkpoint=tmp_path / "nowhere.safetensors")


def test_official_decoder_checkpoint_and_timm_encoder_keys_load(tmp_path):
    """An official FusePAVER state_dict (top-level cls_encoder/attn_layer, its buffers and two unused scalars)
    beside timm ViT keys loads through create_model(checkpoint_path=) and gives the same heatmaps."""
    src = tiny(seed=1)
    official = {k[len("decoder."):]: v for k, v in src.state_dict().items() if k.startswith("decoder.")}
    official.update(sph_basis=torch.zeros(32, 32, 64), spatial_weight=torch.zeros(32),
                    adjacency_matrix=torch.zeros(32, 32), temp_score_weight=torch.ones(1),
                    spat_score_weight=torch.ones(1))
    official.update({k[len("encoder."):]: v for k, v in src.state_dict().items() if k.startswith("encoder.")})
    official["head.weight"], official["head.bias"] = torch.zeros(1000, 32), torch.zeros(1000)
    path = save_safetensors(official, tmp_path / "official.safetensors")
    loaded = create_model("paver", **TINY, checkpoint_path=path)
    feats = _features(src, B=1, T=3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(feats), src(feats))
        x = torch.ones(1, 3, 32, 64)
        torch.testing.assert_close(loaded.encoder(x), src.encoder(x))


# ---------------------------------------------------------------------------------------------- FusedSTBlock

def _reference_block(block, x, frame_mask=None):
    """FusePAVER's block written with einsum and softmax, the official formulation."""
    a = block.attn
    B, T, N, C = x.shape
    Hh, d = a.num_heads, a.head_dim
    y = F.layer_norm(x, (C,), block.norm1.weight, block.norm1.bias, block.norm1.eps)
    q, k, v = (y @ a.qkv.weight.T).reshape(B, T, N, 3, Hh, d).unbind(3)  # (B, T, N, Hh, d)
    s = torch.einsum("btnhd,btmhd->bthnm", q, k) * d ** -0.5
    xs = torch.einsum("bthnm,btmhd->btnhd", s.softmax(-1), v)
    st = torch.einsum("bthnd,bshnd->bnhts", q.transpose(2, 3), k.transpose(2, 3)) * d ** -0.5
    if frame_mask is not None:
        st = st.masked_fill(~frame_mask[:, None, None, None, :], float("-inf"))
    xt = torch.einsum("bnhts,bshnd->btnhd", st.softmax(-1), v.transpose(2, 3))
    x = x + a.proj(((xs + xt) / 2).reshape(B, T, N, C))
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize("T", [3, 64])
def test_fused_st_block_equals_the_einsum_reference(T):
    torch.manual_seed(0)
    block = FusedSTBlock(32, num_heads=4).double()
    x = torch.randn(2, T, 10, 32, dtype=torch.float64)
    got = block(x)
    assert got.shape == x.shape and torch.isfinite(got).all()
    torch.testing.assert_close(got, _reference_block(block, x), rtol=1e-10, atol=1e-10)
    mask = torch.ones(2, T, dtype=torch.bool)
    mask[1, T // 2:] = False
    torch.testing.assert_close(block(x, mask), _reference_block(block, x, mask), rtol=1e-10, atol=1e-10)
    # the padded frames take no part: the valid frames equal the block on the valid frames alone
    torch.testing.assert_close(block(x, mask)[1, :T // 2], block(x[1:, :T // 2])[0], rtol=1e-10, atol=1e-10)


def test_fused_st_block_gradients_match_the_reference():
    torch.manual_seed(1)
    block = FusedSTBlock(16, num_heads=2).double()
    x = torch.randn(1, 4, 6, 16, dtype=torch.float64, requires_grad=True)
    g1 = torch.autograd.grad(block(x).square().sum(), [x, block.attn.qkv.weight])
    g2 = torch.autograd.grad(_reference_block(block, x).square().sum(), [x, block.attn.qkv.weight])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------------------------- heatmap

def _official_basis(H, R, sigma, rows):
    """The official create_heatmap_with_spherical_gaussian_smoothing for patch rows ``rows`` (numpy,
    haversine, latitudes from -pi/2 on the top row, as the official grid)."""
    n, W = H // R, 2 * H
    a = W * W / (4 * np.pi ** 2 * sigma ** 2)
    phi = np.linspace(-np.pi / 2, np.pi / 2, H, endpoint=False)
    theta = np.linspace(0, 2 * np.pi, W, endpoint=False)
    tg, pg = np.meshgrid(theta, phi)
    out = []
    for j in rows:
        for i in range(2 * n):
            lat = (2 * j + 1 - n) * np.pi / (2 * n)
            lon = (2 * i + 1) * np.pi / (2 * n)
            psi = 2 * np.arcsin(np.sqrt(np.sin((pg - lat) / 2) ** 2
                                        + np.cos(pg) * np.cos(lat) * np.sin((tg - lon) / 2) ** 2))
            out.append(np.cos(lat) * a / np.sinh(a) * np.exp(a * np.cos(psi)))
    return torch.from_numpy(np.stack(out))


def test_basis_equals_the_official_spherical_gaussians_and_integrates_to_4pi_cos_lat():
    H, R = 224, 16
    rows = [0, 6, 13]
    dense = sphere_gaussian_basis(H, R, 16.0).reshape(14, 28, H, 2 * H)[rows].reshape(-1, H, 2 * H)
    torch.testing.assert_close(dense, _official_basis(H, R, 16.0, rows), rtol=1e-9, atol=1e-9)
    # each Gaussian integrates to 4 pi over the sphere (pixel area (pi / H)(2 pi / W) cos lat):
    # row k -> 4 pi cos lat_k
    lat = math.pi / 2 - torch.arange(H, dtype=torch.float64) * math.pi / H
    area = torch.cos(lat)[:, None] * (math.pi / H) * (2 * math.pi / (2 * H))
    integral = (dense * area).sum((-2, -1)).reshape(3, 28)
    lat_k = torch.tensor([math.pi / 2 - (j + 0.5) * math.pi / 14 for j in rows], dtype=torch.float64)
    expected = (4 * math.pi * torch.cos(lat_k))[:, None].expand(3, 28)
    torch.testing.assert_close(integral, expected, rtol=5e-3, atol=0)
    # a huge concentration (tiny sigma) stays finite: a / sinh(a) is never formed
    sharp = sphere_gaussian_basis(32, 8, sigma=0.05, columns=[0])
    assert torch.isfinite(sharp).all() and sharp.max() > 0


def test_decoder_heatmap_is_the_min_maxed_basis_sum_of_squared_scores():
    model = tiny(img_size=32, patch_size=8)
    dense = sphere_gaussian_basis(32, 8, 16.0).float()  # (32, 32, 64)
    score = torch.randn(2, 3, 32)
    hm = model.decoder.heatmap(score)
    ref = torch.einsum("btk,khw->bthw", score ** 2, dense)
    lo = ref.amin((-2, -1), keepdim=True)
    ref = (ref - lo) / (ref.amax((-2, -1), keepdim=True) - lo)
    torch.testing.assert_close(hm, ref, rtol=1e-5, atol=1e-5)
    assert hm.amin((-2, -1)).eq(0).all() and hm.amax((-2, -1)).eq(1).all()
    flat = model.decoder.heatmap(torch.ones(1, 32))  # a constant score: every map the same is fine, no NaN
    assert torch.isfinite(flat).all()
    assert model.decoder.heatmap(torch.zeros(1, 32)).eq(0).all()


@pytest.mark.parametrize("patch", [(0, 0), (3, 17), (7, 27), (13, 5)])
def test_a_single_salient_patch_peaks_at_its_own_centre(patch):
    model = PAVER(img_size=224, patch_size=16, embed_dim=32, depth=1, num_heads=2)
    j, i = patch
    score = torch.zeros(392)
    score[j * 28 + i] = 1.0
    hm = model.decoder.heatmap(score)
    assert hm.shape == (224, 448)
    r, c = divmod(int(hm.argmax()), 448)
    assert (r, c) == (16 * j + 8, 16 * i + 8)
    assert hm.max() == 1 and hm.min() == 0


# ---------------------------------------------------------------------------------------------- windows

def test_decode_windows_padding_and_output_shapes():
    model = tiny().eval()
    feats = _features(model, B=2, T=7)
    with torch.no_grad():
        out = model.decode(feats)
        assert out["score"].shape == (2, 7, 32) and out["heatmap"].shape == (2, 7, 32, 64)
        torch.testing.assert_close(model(feats), out["heatmap"])
        # windows are independent: frames 3..5 are the second window
        torch.testing.assert_close(model.decode(feats[:, 3:6])["score"], out["score"][:, 3:6])
        # the last window (frame 6 + two padded frames) equals a one-frame window: padding has no influence
        one = tiny(num_frame=1)
        one.load_state_dict(model.state_dict())
        torch.testing.assert_close(one.decode(feats[:, 6:])["score"], out["score"][:, 6:], rtol=1e-5,
                                   atol=1e-6)
        # a two-frame clip padded to 3 equals a model whose windows are two frames long
        two = tiny(num_frame=2)
        two.load_state_dict(model.state_dict())
        torch.testing.assert_close(two.decode(feats[:, :2])["score"], model.decode(feats[:, :2])["score"],
                                   rtol=1e-5, atol=1e-6)
    x, mask = model.decoder.windows(feats)
    assert x.shape == (6, 3, 33, 32) and mask.tolist() == [[True] * 3] * 2 + [[True, False, False]] + \
        [[True] * 3] * 2 + [[True, False, False]]


def test_scores_are_the_three_relations():
    model = tiny().eval()
    feats = _features(model, B=1, T=3)
    with torch.no_grad():
        f = model.decoder.attn_layer(feats[:, :, 1:])
        c = model.decoder.cls_encoder(feats[:, :, 0])
        score = model.decode(feats)["score"]
    expected = ((c[:, :, None] - f) ** 2).mean(-1) + ((f.mean(1, keepdim=True) - f) ** 2).mean(-1) \
        + ((f.mean(2, keepdim=True) - f) ** 2).mean(-1)
    torch.testing.assert_close(score, expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- losses

def test_temporal_target_is_the_mean_of_the_valid_neighbours():
    f = torch.randn(1, 4, 5, 6, requires_grad=True)
    full = torch.ones(1, 4, dtype=torch.bool)
    target, use = PAVERDecoder.temporal_targets(f, full)
    assert not target.requires_grad and use.all()
    torch.testing.assert_close(target[0, 0], f[0, 1].detach())
    torch.testing.assert_close(target[0, 1], (f[0, 0] + f[0, 2]).detach() / 2)
    torch.testing.assert_close(target[0, 3], f[0, 2].detach())
    padded = torch.tensor([[True, True, True, False]])
    target, use = PAVERDecoder.temporal_targets(f, padded)
    torch.testing.assert_close(target[0, 2], f[0, 1].detach())  # the padded frame is no neighbour
    assert use.tolist() == [[True, True, True, False]]
    _, use = PAVERDecoder.temporal_targets(f, torch.tensor([[True, False, False, False]]))
    assert use.tolist() == [[False] * 4]  # a lone frame has no temporal target


def _adjacency_by_hand(n):
    """Patch centres on the sphere (polar (j + 1/2) pi / n, longitude (i + 1/2) pi / n), cosine minus the
    cosine of one patch, positive part, no self-loop."""
    cen = []
    for j in range(n):
        for i in range(2 * n):
            p, t = (j + 0.5) * math.pi / n, (i + 0.5) * math.pi / n
            cen.append([math.sin(p) * math.cos(t), math.sin(p) * math.sin(t), math.cos(p)])
    cen = torch.tensor(cen, dtype=torch.float64)
    a = (cen @ cen.T - math.cos(math.pi / n)).clamp(min=0)
    a.fill_diagonal_(0)
    return torch.where(a > 1e-12, a, torch.zeros_like(a))


def test_spatial_target_neighbour_average_and_the_official_flag():
    model = tiny()
    f = torch.randn(2, 3, 32, 32)
    a = _adjacency_by_hand(4)
    assert (a.sum(1) > 0).all()
    expected = (a / a.sum(1, keepdim=True)).float() @ f
    torch.testing.assert_close(model.decoder.spatial_targets(f), expected, rtol=1e-5, atol=1e-6)
    official = tiny(spatial_target="official")
    assert official.decoder.spatial_targets(f).eq(0).all()  # the einsum reads A's zero diagonal

    feats = _features(model, B=1, T=3)
    official.load_state_dict(model.state_dict())
    with torch.no_grad():
        f = official.decoder.attn_layer(feats[:, :, 1:])
        c = official.decoder.cls_encoder(feats[:, :, 0])
    _, parts = official.loss(feats)
    assert parts["loss_spatial"] == pytest.approx(float(f.square().mean()), rel=1e-5)
    _, parts_n = model.loss(feats)
    expected_s = (f - model.decoder.spatial_targets(f)).square().mean()
    assert parts_n["loss_spatial"] == pytest.approx(float(expected_s), rel=1e-5)
    # cls: MSE(c / S, c) with S = 3 valid frames, i.e. (1/3 - 1)^2 mean c^2
    assert parts["loss_cls"] == pytest.approx(float((2 / 3) ** 2 * c.square().mean()), rel=1e-5)
    t_target = torch.stack([f[:, 1], (f[:, 0] + f[:, 2]) / 2, f[:, 1]], 1)
    assert parts["loss_temporal"] == pytest.approx(float((f - t_target).square().mean()), rel=1e-5)
    total, _ = official.loss(feats)
    weighted = 0.1 * parts["loss_cls"] + 0.5 * parts["loss_spatial"] + 20 * parts["loss_temporal"]
    assert total.item() == pytest.approx(weighted, rel=1e-5)


def test_gradients_reach_only_the_decoder_and_adam_lowers_the_loss():
    model = tiny().train()
    frames = torch.randn(1, 7, 3, 32, 64)
    feats = model.encode(frames)
    loss, parts = model.loss(feats)
    assert set(parts) == {"loss_cls", "loss_spatial", "loss_temporal"}
    loss.backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.decoder.parameters())
    opt = torch.optim.Adam(model.decoder.parameters(), lr=1e-2)
    first = loss.item()
    for _ in range(15):
        opt.zero_grad()
        loss, _ = model.loss(feats)
        loss.backward()
        opt.step()
    last, last_parts = model.loss(feats)
    assert last.item() < 0.5 * first
    assert last_parts["loss_temporal"] < parts["loss_temporal"]
    assert last_parts["loss_spatial"] < parts["loss_spatial"]


def test_padded_frames_are_left_out_of_the_losses():
    model = tiny()
    feats = _features(model, B=1, T=4)  # windows [0, 1, 2] and [3, pad, pad]
    loss, parts = model.loss(feats)
    l1, p1 = model.loss(feats[:, :3])
    l2, p2 = model.loss(feats[:, 3:])
    assert p2["loss_temporal"] == 0.0  # a lone frame has no temporal target
    # spatial and cls are means over the 4 valid frames: 3 from the first window, 1 from the second
    assert parts["loss_spatial"] == pytest.approx((3 * p1["loss_spatial"] + p2["loss_spatial"]) / 4, rel=1e-5)
    assert parts["loss_cls"] == pytest.approx((3 * p1["loss_cls"] + p2["loss_cls"]) / 4, rel=1e-5)
    assert parts["loss_temporal"] == pytest.approx(p1["loss_temporal"], rel=1e-5)


# ---------------------------------------------------------------------------------------------- export

def test_export_standard_ops_onnxruntime_agrees_dynamic_batch(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from pyvision_fast.export import export_model, run_onnxruntime

    model = tiny()
    weights = save_safetensors(model.state_dict(), tmp_path / "paver.safetensors")
    report = export_model("paver", tmp_path / "paver.onnx", checkpoint=weights, model_args=TINY)
    assert report.tensorrt_compatible, report.tensorrt_unsupported
    assert report.max_abs_diff < 1e-4
    assert not any(t.startswith("pvf") for t in report.op_types)
    x = _features(model, B=3, T=3, seed=5)
    (onnx_out,) = run_onnxruntime(report.path, [x])
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    assert onnx_out.shape == (3, 3, 32, 64)
    np.testing.assert_allclose(onnx_out, expected, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------- bad input

def test_bad_inputs_raise_clear_errors():
    model = tiny()
    with pytest.raises(ValueError, match=r"1:2 aspect ratio, got shape \(1, 3, 32, 32\)"):
        model.encoder(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"the model takes 32x64 \(shape \(1, 3, 64, 128\)\)"):
        model.encoder(torch.zeros(1, 3, 64, 128))
    with pytest.raises(ValueError, match=r"\(B, T, 33, 32\).*got \(2, 3, 10, 32\)"):
        model.decode(torch.zeros(2, 3, 10, 32))
    with pytest.raises(ValueError, match=r"got \(3, 33, 32\)"):
        model.loss(torch.zeros(3, 33, 32))
    with pytest.raises(ValueError, match="uint8"):
        PAVER.preprocess(torch.zeros(2, 32, 64, 3))
    with pytest.raises(ValueError, match="expected frames"):
        model.encode(torch.zeros(2, 3, 32, 64))
    with pytest.raises(ValueError, match="offsets"):
        create_model("paver", **TINY, offsets="bilinear")
    with pytest.raises(ValueError, match="spatial_target"):
        create_model("paver", **TINY, spatial_target="diagonal")
    with pytest.raises(ValueError, match="even multiple"):
        create_model("paver", **{**TINY, "img_size": 24})


def test_loss_equals_the_official_formulation_on_full_windows():
    """On windows without padding, PAVER.loss(spatial_target="official") equals the official FusePAVER loss as
    the benchmark re-expresses it (explicit attention matrices, einsum spatial target, in-place temporal
    average, cls term), and the official per-window loop averages to the same value."""
    from benchmarks.models_paver import _official_loss, _OfficialSTBlock

    model = tiny(spatial_target="official").double()
    dec = model.decoder
    feats = _features(model, B=2, T=6).double()  # two windows of 3 per clip
    adj = torch.zeros(32, 32, dtype=torch.float64)  # the official einsum reads only the diagonal, which is 0
    block = _OfficialSTBlock(dec.attn_layer)
    official = _official_loss(block, dec.cls_encoder, adj, feats.reshape(4, 3, 33, 32))
    ours, _ = model.loss(feats)
    torch.testing.assert_close(ours, official, rtol=1e-10, atol=1e-12)
    per_window = [_official_loss(block, dec.cls_encoder, adj, feats[:, i:i + 3]) for i in (0, 3)]
    torch.testing.assert_close(ours, sum(per_window) / 2, rtol=1e-10, atol=1e-12)
