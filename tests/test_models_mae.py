"""MAE (models/mae.py): facebookresearch/mae's state_dict layout and parameter counts, the batched random masking,
the normalised-pixel loss on masked patches only, agreement with a reference written from the official
``models_mae.py`` on timm's blocks, and the encoder weights loading into ``vit_*``."""
import math

import pytest
import torch

from op_harness import ops_dispatched
from pyvision_fast.models import count_parameters, create_model, list_models, save_safetensors
from pyvision_fast.models.mae import (MaskedAutoencoderViT, get_2d_sincos_pos_embed, is_mae_state_dict,
                                      mae_to_vit_state_dict)

timm = pytest.importorskip("timm")

TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, decoder_embed_dim=32, decoder_depth=2,
            decoder_num_heads=4)
TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)


def tiny_mae(**kw) -> MaskedAutoencoderViT:
    torch.manual_seed(0)
    return MaskedAutoencoderViT(**{**TINY, "norm_pix_loss": True, **kw}).eval()


def official_keys(depth: int, decoder_depth: int) -> set[str]:
    """The keys of facebookresearch/mae's MaskedAutoencoderViT (models_mae.py: timm 0.3.2 PatchEmbed/Block,
    nn.ModuleList blocks, fixed pos embeds as Parameters), written from that file, not from our module."""
    block = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
             "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
    keys = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight",
            "norm.bias", "decoder_embed.weight", "decoder_embed.bias", "mask_token", "decoder_pos_embed",
            "decoder_norm.weight", "decoder_norm.bias", "decoder_pred.weight", "decoder_pred.bias"}
    keys |= {f"blocks.{i}.{k}" for i in range(depth) for k in block}
    keys |= {f"decoder_blocks.{i}.{k}" for i in range(decoder_depth) for k in block}
    return keys


def official_param_count(D, depth, d, decoder_depth, patch=16, chans=3, tokens=197) -> tuple[int, int]:
    """(encoder, decoder) parameter counts of the official architecture, pos embeds included (mlp_ratio 4):
    a block has 2 LayerNorms (4D), qkv (3D^2 + 3D), proj (D^2 + D), fc1 (4D^2 + 4D), fc2 (4D^2 + D)."""
    block = lambda n: 12 * n * n + 13 * n  # noqa: E731
    enc = chans * patch * patch * D + D + D + tokens * D + depth * block(D) + 2 * D
    dec = D * d + d + d + tokens * d + decoder_depth * block(d) + 2 * d + d * patch * patch * chans + patch * patch * chans
    return enc, dec


def test_registry_and_official_key_layout():
    assert {"mae_vit_tiny_patch16", "mae_vit_small_patch16", "mae_vit_base_patch16"} <= set(list_models("mae_*"))
    m = tiny_mae()
    sd = m.state_dict()
    assert set(sd) == official_keys(2, 2)
    assert sd["pos_embed"].shape == (1, 17, 64) and sd["decoder_pos_embed"].shape == (1, 17, 32)
    assert sd["decoder_pred.weight"].shape == (8 * 8 * 3, 32) and sd["mask_token"].shape == (1, 1, 32)
    assert not m.pos_embed.requires_grad and not m.decoder_pos_embed.requires_grad
    assert {n for n, p in m.named_parameters() if not p.requires_grad} == {"pos_embed", "decoder_pos_embed"}


def test_base_parameter_counts_and_keys():
    m = create_model("mae_vit_base_patch16")
    assert set(m.state_dict()) == official_keys(12, 8)
    enc, dec = official_param_count(768, 12, 512, 8)
    assert (enc, dec) == (85_798_656, 26_109_184)
    assert count_parameters(m) == enc + dec == 111_907_840  # the official mae_vit_base_patch16: 111.9M
    assert count_parameters(m, trainable_only=True) == enc + dec - 197 * (768 + 512)
    encoder = sum(p.numel() for k, p in m.named_parameters() if not k.startswith(("decoder_", "mask_token")))
    assert encoder == enc == count_parameters(timm.create_model("vit_base_patch16_224", num_classes=0))
    assert m.mask_ratio == 0.75 and m.norm_pix_loss


@pytest.mark.parametrize("name,D", [("mae_vit_tiny_patch16", 192), ("mae_vit_small_patch16", 384)])
def test_small_variants_counts(name, D):
    m = create_model(name)
    assert count_parameters(m) == sum(official_param_count(D, 12, 512, 8))
    assert set(m.state_dict()) == official_keys(12, 8)


def test_sincos_pos_embed_values():
    """Hand-written from util/pos_embed.py: first half encodes the column (grid[0] of meshgrid(w, h)), second
    half the row; each half is [sin(pos*w_k), cos(pos*w_k)], w_k = 1 / 10000^(k / (D/4)), k < D/4."""
    D, g = 16, 3
    pe = get_2d_sincos_pos_embed(D, g, cls_token=True)
    assert pe.shape == (1 + g * g, D) and pe.dtype == torch.float32 and torch.all(pe[0] == 0)
    for t in range(g * g):
        r, c = divmod(t, g)
        row = []
        for pos in (c, r):
            w = [1 / 10000 ** (k / (D / 4)) for k in range(D // 4)]
            row += [math.sin(pos * x) for x in w] + [math.cos(pos * x) for x in w]
        torch.testing.assert_close(pe[1 + t], torch.tensor(row, dtype=torch.float32), rtol=0, atol=1e-6)
    m = tiny_mae()
    torch.testing.assert_close(m.pos_embed[0], get_2d_sincos_pos_embed(64, 4, cls_token=True))
    torch.testing.assert_close(m.decoder_pos_embed[0], get_2d_sincos_pos_embed(32, 4, cls_token=True))


def test_random_masking_counts_restore_and_per_sample():
    m = tiny_mae()
    N, L, D = 64, 196, 5
    x = torch.randn(N, L, D)
    x_masked, mask, ids_restore = m.random_masking(x, 0.75)
    n_masked = round(0.75 * L)
    assert x_masked.shape == (N, L - n_masked, D) and mask.shape == (N, L) and mask.dtype == torch.float32
    assert torch.all(mask.sum(1) == n_masked)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    # the kept tokens are the unmasked ones; restoring the shuffled sequence gives the original
    shuffled = torch.cat([x_masked, torch.zeros(N, n_masked, D)], dim=1)
    restored = torch.gather(shuffled, 1, ids_restore.unsqueeze(-1).expand(-1, -1, D))
    keep = mask == 0
    torch.testing.assert_close(restored[keep], x[keep], rtol=0, atol=0)
    assert torch.all(restored[~keep] == 0)
    ids_shuffle = torch.argsort(ids_restore, dim=1)
    assert torch.equal(torch.gather(ids_shuffle, 1, ids_restore), torch.arange(L).expand(N, L))
    # one batch, per-sample masks: identical inputs get different masks
    same = torch.randn(1, L, D).expand(N, -1, -1)
    _, mask2, _ = m.random_masking(same, 0.75)
    assert len({tuple(r.tolist()) for r in mask2}) == N


def test_random_masking_is_batched():
    """The same operators run (one argsort for the shuffle, one for its inverse) whatever the batch size: no
    Python loop over samples."""
    m = tiny_mae()
    ops = {n: ops_dispatched(lambda n=n: m.random_masking(torch.randn(n, 16, 4), 0.75)) for n in (1, 2, 16)}
    assert ops[1] == ops[2] == ops[16]
    assert sum("argsort" in o or "sort" in o for o in ops[16]) == 2


def test_noise_fixes_the_mask():
    m = tiny_mae()
    noise = torch.rand(3, 16)
    x = torch.randn(3, 3, 32, 32)
    _, _, mask = m(x, noise=noise)
    kept = torch.argsort(noise, dim=1)[:, :4]
    expected = torch.ones(3, 16).scatter_(1, kept, 0.0)
    assert torch.equal(mask, expected)
    with pytest.raises(ValueError, match="mask_ratio"):
        m(x, mask_ratio=1.0)
    with pytest.raises(ValueError, match="noise"):
        m(x, noise=torch.rand(3, 15))


def test_patchify_layout_and_inverse():
    m = tiny_mae()
    imgs = torch.randn(2, 3, 32, 32)
    x = m.patchify(imgs)
    # official: reshape (N, 3, h, p, w, p), einsum 'nchpwq->nhwpqc', reshape (N, h*w, p*p*3)
    ref = torch.einsum("nchpwq->nhwpqc", imgs.reshape(2, 3, 4, 8, 4, 8)).reshape(2, 16, 192)
    assert torch.equal(x, ref)
    assert torch.equal(m.unpatchify(x), imgs)


def _hand_norm_pix_loss(imgs, pred, mask, p):
    """Per patch: the pixels as (row, col, channel), normalised by their mean and unbiased variance (eps 1e-6),
    MSE against pred; the mean of that over masked patches. Plain loops, independent of patchify."""
    total, count = 0.0, 0
    N, C, H, W = imgs.shape
    for n in range(N):
        for t in range((H // p) * (W // p)):
            i, j = divmod(t, W // p)
            pix = imgs[n, :, i * p:(i + 1) * p, j * p:(j + 1) * p].permute(1, 2, 0).reshape(-1).double()
            mean = pix.sum() / pix.numel()
            var = ((pix - mean) ** 2).sum() / (pix.numel() - 1)
            target = (pix - mean) / math.sqrt(var + 1e-6)
            err = ((pred[n, t].double() - target) ** 2).mean()
            if mask[n, t]:
                total, count = total + err.item(), count + 1
    return total / count


def test_norm_pix_loss_matches_hand_computation():
    m = MaskedAutoencoderViT(img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2, decoder_embed_dim=16,
                             decoder_depth=1, decoder_num_heads=2, norm_pix_loss=True)
    g = torch.Generator().manual_seed(1)
    imgs = torch.rand(2, 3, 16, 16, generator=g)
    pred = torch.randn(2, 16, 48, generator=g)
    mask = (torch.rand(2, 16, generator=g) > 0.5).float()
    loss = m.forward_loss(imgs, pred, mask)
    assert loss.item() == pytest.approx(_hand_norm_pix_loss(imgs, pred, mask, 4), rel=1e-5)
    m.norm_pix_loss = False
    plain = (((pred - m.patchify(imgs)) ** 2).mean(-1) * mask).sum() / mask.sum()
    torch.testing.assert_close(m.forward_loss(imgs, pred, mask), plain)


def test_loss_only_on_masked_patches():
    m = tiny_mae()
    g = torch.Generator().manual_seed(2)
    imgs = torch.rand(2, 3, 32, 32, generator=g)
    pred = torch.randn(2, 16, 192, generator=g)
    mask = torch.zeros(2, 16)
    mask[0, [1, 5, 6]] = 1
    mask[1, [0, 15]] = 1
    base = m.forward_loss(imgs, pred, mask)
    # targets of a visible patch (sample 0, patch 0 = rows 0-7, cols 0-7) changed: same loss
    changed = imgs.clone()
    changed[0, :, 0:8, 0:8] = torch.rand(3, 8, 8, generator=g)
    assert torch.equal(m.forward_loss(changed, pred, mask), base)
    # the same change on a masked patch (sample 0, patch 1 = cols 8-15) must change it (the test can fail)
    changed = imgs.clone()
    changed[0, :, 0:8, 8:16] = torch.rand(3, 8, 8, generator=g)
    assert not torch.allclose(m.forward_loss(changed, pred, mask), base)
    # through the full forward: the loss's gradient reaches the predictions of masked patches only
    _, pred_full, mask_full = m(imgs)
    loss = m.forward_loss(imgs, pred_full, mask_full)
    (grad,) = torch.autograd.grad(loss, pred_full)
    per_patch = grad.abs().sum(-1)
    assert torch.all(per_patch[mask_full == 0] == 0) and torch.all(per_patch[mask_full == 1] > 0)


class _RefMAE(torch.nn.Module):
    """facebookresearch/mae's MaskedAutoencoderViT forward, re-written on timm's PatchEmbed/Block, to check that
    our state_dict loads into that layout strictly and gives the same (loss, pred, mask) for the same noise."""

    def __init__(self, img_size, patch_size, embed_dim, depth, num_heads, decoder_embed_dim, decoder_depth,
                 decoder_num_heads):
        super().__init__()
        from timm.models.vision_transformer import Block, PatchEmbed

        nn = torch.nn
        from functools import partial

        norm = partial(nn.LayerNorm, eps=1e-6)
        self.patch_embed = PatchEmbed(img_size, patch_size, 3, embed_dim)
        L = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, L + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, 4.0, qkv_bias=True, norm_layer=norm)
                                     for _ in range(depth)])
        self.norm = norm(embed_dim)
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, L + 1, decoder_embed_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList([Block(decoder_embed_dim, decoder_num_heads, 4.0, qkv_bias=True,
                                                   norm_layer=norm) for _ in range(decoder_depth)])
        self.decoder_norm = norm(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size ** 2 * 3)
        self.p = patch_size

    def forward(self, imgs, noise, mask_ratio=0.75):
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        N, L, D = x.shape
        len_keep = int(L * (1 - mask_ratio))
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        x = torch.gather(x, 1, ids_shuffle[:, :len_keep].unsqueeze(-1).repeat(1, 1, D))
        mask = torch.ones(N, L)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        x = torch.cat([(self.cls_token + self.pos_embed[:, :1, :]).expand(N, -1, -1), x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.decoder_embed(self.norm(x))
        tokens = self.mask_token.repeat(N, L + 1 - x.shape[1], 1)
        x_ = torch.cat([x[:, 1:, :], tokens], dim=1)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        x = torch.cat([x[:, :1, :], x_], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        pred = self.decoder_pred(self.decoder_norm(x))[:, 1:, :]
        h = imgs.shape[2] // self.p
        target = torch.einsum("nchpwq->nhwpqc", imgs.reshape(N, 3, h, self.p, h, self.p)).reshape(N, L, -1)
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
        loss = (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()
        return loss, pred, mask


def test_matches_official_forward_on_timm_blocks():
    m = tiny_mae()
    ref = _RefMAE(**TINY).eval()
    result = ref.load_state_dict(m.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    imgs, noise = torch.randn(3, 3, 32, 32), torch.rand(3, 16)
    with torch.no_grad():
        for got, want in zip(m(imgs, noise=noise), ref(imgs, noise)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_initialisation_as_official():
    torch.manual_seed(0)
    m = create_model("mae_vit_base_patch16")
    w = m.patch_embed.proj.weight.view(768, -1)
    bound = math.sqrt(6 / (768 + 768))  # xavier_uniform on the (768, 3*16*16) view
    assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
    qkv = m.blocks[0].attn.qkv.weight
    assert qkv.abs().max() <= math.sqrt(6 / (768 + 3 * 768))
    assert torch.all(m.blocks[0].attn.qkv.bias == 0) and torch.all(m.decoder_norm.weight == 1)
    assert 0.015 < m.mask_token.std() < 0.025 and 0.015 < m.cls_token.std() < 0.025


def _encoder_tokens(m: MaskedAutoencoderViT, x: torch.Tensor) -> torch.Tensor:
    """The MAE encoder's output with mask_ratio 0, put back in patch order: (N, 1 + L, D)."""
    latent, mask, ids_restore = m.forward_encoder(x, 0.0)
    assert torch.all(mask == 0)
    patches = torch.gather(latent[:, 1:], 1, ids_restore.unsqueeze(-1).expand(-1, -1, latent.shape[-1]))
    return torch.cat([latent[:, :1], patches], dim=1)


def test_encoder_weights_into_vit_same_features(tmp_path):
    m = tiny_mae()
    for p in m.parameters():  # non-trivial weights everywhere, norms included
        p.data.add_(torch.randn_like(p) * 0.05)
    enc = mae_to_vit_state_dict(m.state_dict())
    assert not any(k.startswith(("decoder", "mask_token")) for k in enc) and "norm.weight" in enc
    vit = create_model("vit_base_patch16_224", **TINY_VIT, num_classes=0).eval()
    vit.load_state_dict(enc, strict=True)  # token pooling, headless: exactly the encoder's keys
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(vit.forward_features(x), _encoder_tokens(m, x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m.encoder_state_dict()["pos_embed"], m.pos_embed.detach())

    # the official checkpoint format {"model": state} through create_model, avg pooling (MAE fine-tuning)
    torch.save({"model": m.state_dict()}, tmp_path / "mae.pth")
    save_safetensors(m.state_dict(), tmp_path / "mae.safetensors")
    for path in (tmp_path / "mae.pth", tmp_path / "mae.safetensors"):
        torch.manual_seed(5)
        avg = create_model("vit_base_patch16_224", **TINY_VIT, global_pool="avg", num_classes=7, checkpoint_path=path)
        torch.manual_seed(5)
        fresh = create_model("vit_base_patch16_224", **TINY_VIT, global_pool="avg", num_classes=7)
        sd = avg.state_dict()
        for k, v in enc.items():
            if not k.startswith("norm."):
                assert torch.equal(sd[k], v), k
        for k in ("fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"):  # fresh, as main_finetune.py
            assert torch.equal(sd[k], fresh.state_dict()[k]), k
        assert avg.pos_embed.requires_grad  # learnable in the ViT
        with torch.no_grad():  # the avg model's blocks see what the MAE encoder's blocks see (norm replaced)
            tokens = avg.blocks(avg._pos_embed(avg.patch_embed(x)))
            torch.testing.assert_close(m.norm(tokens), _encoder_tokens(m, x), rtol=1e-5, atol=1e-5)
    # token pooling keeps the encoder's norm; the head stays at its initialisation
    tok = create_model("vit_base_patch16_224", **TINY_VIT, num_classes=7, checkpoint_path=tmp_path / "mae.pth")
    assert torch.equal(tok.norm.weight, enc["norm.weight"])


def test_encoder_only_checkpoint_and_detection(tmp_path):
    m = tiny_mae()
    enc = mae_to_vit_state_dict(m.state_dict())
    assert is_mae_state_dict(m.state_dict()) and is_mae_state_dict(enc)  # MAE's released encoder-only files
    timm_sd = timm.create_model("vit_base_patch16_224", **TINY_VIT, num_classes=5).state_dict()
    assert not is_mae_state_dict(timm_sd)
    torch.save({"model": enc}, tmp_path / "enc.pth")
    avg = create_model("vit_base_patch16_224", **TINY_VIT, global_pool="avg", num_classes=3,
                       checkpoint_path=tmp_path / "enc.pth")
    assert torch.equal(avg.blocks[1].mlp.fc2.weight, enc["blocks.1.mlp.fc2.weight"])
    # a checkpoint of another architecture is still refused
    bad = dict(enc, **{"blocks.0.attn.qkv.weight": torch.zeros(3, 3)})
    torch.save({"model": bad}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="shape mismatch"):
        create_model("vit_base_patch16_224", **TINY_VIT, checkpoint_path=tmp_path / "bad.pth")


def test_base_checkpoint_loads_into_vit_base(tmp_path):
    mae = create_model("mae_vit_base_patch16")
    torch.save({"model": mae.state_dict()}, tmp_path / "checkpoint-299.pth")
    vit = create_model("vit_base_patch16_224", global_pool="avg", checkpoint_path=tmp_path / "checkpoint-299.pth")
    assert torch.equal(vit.blocks[11].attn.qkv.weight, mae.blocks[11].attn.qkv.weight)
    assert torch.equal(vit.pos_embed, mae.pos_embed)
    assert count_parameters(vit) == 86_567_656
