"""PAVER cases (paper 2): one decoder training step on cached features and one encoder inference pass, the
library's model beside the official formulation re-expressed in plain PyTorch with the same weights.

* decoder train step: B=1 clip of T=25 frames of cached ViT-B/16 features (1 + 392 tokens of 768), windows of
  5, loss + backward + Adam (lr 2e-7, weight decay 1e-3, PAVER's). Ours: ``PAVER.loss`` (the five windows as
  one batch; FusedSTBlock through ``attention_dispatch``; its default neighbour-average spatial target, one
  extra 392 x 392 matrix product per frame without gradient). Official formulation: FusePAVER's block with
  explicit q k^T / softmax / matmul attention (spatial, then temporal from the permuted qkv) and its losses
  (the einsum spatial target, the in-place temporal average, the cls term), on the same five windows as one
  batch; and the official trainer's loop (one forward/backward/Adam step per window).
* encoder inference: 5 ERP frames 224 x 448 through the frozen deformable ViT-B/16. Ours: ``PAVEREncoder``
  (SpherePatchEmbed on its cached sampling table, FusedAttention). Official formulation: timm's ViT-B/16 with
  explicit attention (``fused_attn`` off, as the official ``Attention``) and the patch projection replaced by
  ``torchvision.ops.DeformConv2d`` fed the constant offset buffer repeated per batch (``offset.repeat(B, 1, 1,
  1)``), with the same weights.
"""
from __future__ import annotations

import importlib.util

import torch
from torch import nn

from pyvision_fast.geometry import equirect
from pyvision_fast.models import create_model

from .harness import Case, Impl

_LR, _WD = 2e-7, 1e-3


class _OfficialSTBlock(nn.Module):
    """FusePAVER's block as its code computes it (explicit attention matrices), sharing ``ours``' weights."""

    def __init__(self, ours: nn.Module):
        super().__init__()
        self.b = ours  # FusedSTBlock: norm1, attn.qkv, attn.proj, norm2, mlp

    def forward(self, x):
        b, a = self.b, self.b.attn
        B, T, N, C = x.shape
        h = b.norm1(x)
        qkv = a.qkv(h).reshape(B, T, N, 3, a.num_heads, a.head_dim).permute(3, 0, 1, 4, 2, 5)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, T, heads, N, d)
        xs = ((q @ k.transpose(-2, -1)) * a.scale).softmax(-1) @ v
        xs = xs.transpose(2, 3).reshape(B, T, N, C)
        q2, k2, v2 = qkv.permute(0, 1, 3, 4, 2, 5)  # (B, heads, N, T, d)
        xt = ((q2 @ k2.transpose(-2, -1)) * a.scale).softmax(-1) @ v2
        xt = xt.permute(0, 3, 2, 1, 4).reshape(B, T, N, C)
        x = x + a.proj((xs + xt) * 0.5)
        return x + b.mlp(b.norm2(x))


def _official_loss(block: nn.Module, cls_encoder: nn.Module, adjacency: torch.Tensor, window: torch.Tensor):
    """The official FusePAVER training loss of a batch of windows (M, F, 1 + N, D), every frame valid."""
    frames, cls = window[:, :, 1:], window[:, :, 0]
    mask = (window.flatten(2).norm(dim=-1) > 0).float()  # (M, F)
    f = block(frames)
    c = cls_encoder(cls)
    # the three scores (the official forward computes them during training too)
    _ = ((c.unsqueeze(-2) - f) ** 2).mean(-1) + ((f.mean(-3, keepdim=True) - f) ** 2).mean(-1) \
        + ((f.mean(-2, keepdim=True) - f) ** 2).mean(-1)
    loss_cls = ((c * (1 / mask.sum(1))[:, None, None] - c) ** 2).mean(-1).mean()
    target_s = torch.einsum("BTNC,NN->BTNC", f, adjacency).detach()
    loss_s = (((f - target_s) ** 2).mean(-1).mean(-1) * mask).mean()
    fd = f.detach()
    target_t = fd.clone()
    target_t[:, 1:] = fd[:, :-1]
    target_t[:, 0] = 0.0
    target_t[:, :-1] += fd[:, 1:]
    target_t[:, 1:-1] /= 2.0
    loss_t = (((f - target_t) ** 2).mean(-1).mean(-1) * mask).mean()
    return 0.1 * loss_cls + 0.5 * loss_s + 20.0 * loss_t


def _decoder_case(device: str, quick: bool) -> Case:
    cfg = dict(img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=2) if quick else {}
    T, window = (10, 5) if quick else (25, 5)
    torch.manual_seed(0)
    ours = create_model("paver", **cfg).to(device).train()
    peer = create_model("paver", **cfg).to(device).train()
    peer.decoder.load_state_dict(ours.decoder.state_dict())
    n, D = ours.num_patches, ours.decoder.embed_dim
    feats = torch.randn(1, T, 1 + n, D, device=device)
    dec = peer.decoder
    official_block = _OfficialSTBlock(dec.attn_layer)
    # the official adjacency (column-normalised); its einsum reads only the (zero) diagonal
    from pyvision_fast.models.paver import spherical_adjacency

    adj = spherical_adjacency(dec.grid[0])
    adj = (adj / adj.sum(1)).float().to(device)

    opt_ours = torch.optim.Adam(ours.decoder.parameters(), lr=_LR, weight_decay=_WD)
    opt_peer = torch.optim.Adam(dec.parameters(), lr=_LR, weight_decay=_WD)

    def ours_step():
        opt_ours.zero_grad(set_to_none=True)
        ours.loss(feats)[0].backward()
        opt_ours.step()

    batched = feats.reshape(-1, window, 1 + n, D)

    def official_batched():
        opt_peer.zero_grad(set_to_none=True)
        _official_loss(official_block, dec.cls_encoder, adj, batched).backward()
        opt_peer.step()

    def official_loop():
        for i in range(0, T, window):
            opt_peer.zero_grad(set_to_none=True)
            _official_loss(official_block, dec.cls_encoder, adj, feats[:, i:i + window]).backward()
            opt_peer.step()

    tokens = T * n
    macs = tokens * (3 * D * D + D * D + 8 * D * D) + T * 2 * n * n * D + T * 2 * D * D
    impls = [Impl("pvf PAVER.loss (windows batched)", ours_step, "ours"),
             Impl("official formulation (windows batched)", official_batched, "peer"),
             Impl("official loop (a step per window)", official_loop, "peer")]
    params = {"B": 1, "T": T, "window": window, "N": n, "D": D}
    return Case("models", f"PAVER decoder train step T={T}", params, impls, flops=3 * 2 * macs, samples=T,
                measure_memory=True, goal=("official formulation (windows batched)", 1.3),
                note="samples = frames; loss + backward + Adam on cached features")


class _DeformProj(nn.Module):
    """The official patch projection: torchvision's DeformConv2d, the constant offsets repeated per batch."""

    def __init__(self, conv: nn.Conv2d, height: int, patch: int):
        super().__init__()
        import torchvision

        self.proj = torchvision.ops.DeformConv2d(conv.in_channels, conv.out_channels, patch, stride=patch)
        self.proj.load_state_dict(conv.state_dict())
        self.register_buffer("offset", equirect.paver_offsets(height, patch).float()[None])

    def forward(self, x):
        return self.proj(x, self.offset.repeat(x.shape[0], 1, 1, 1)).flatten(2).transpose(1, 2)


def _encoder_case(device: str, quick: bool) -> Case | None:
    if importlib.util.find_spec("timm") is None:
        print("models_paver: timm is not installed; the encoder case needs it as the peer")
        return None
    import timm

    H, R, D, depth, heads = (32, 8, 64, 2, 2) if quick else (224, 16, 768, 12, 12)
    frames = 2 if quick else 5
    torch.manual_seed(0)
    ours = create_model("paver", img_size=H, patch_size=R, embed_dim=D, depth=depth, num_heads=heads)
    enc = ours.encoder.to(device).eval()
    peer = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=(H, 2 * H), patch_size=R,
                             embed_dim=D, depth=depth, num_heads=heads, num_classes=0).to(device).eval()
    peer.load_state_dict(enc.state_dict())
    peer.patch_embed.proj = _DeformProj(peer.patch_embed.proj, H, R).to(device)
    peer.patch_embed.flatten = False  # the replacement flattens itself
    peer.patch_embed.norm = nn.Identity()
    for blk in peer.blocks:
        blk.attn.fused_attn = False  # the official ViT's explicit softmax attention
    x = torch.randn(frames, 3, H, 2 * H, device=device)

    def run(module):
        def call():
            with torch.no_grad():
                return module(x)
        return call

    def run_peer():
        with torch.no_grad():
            return peer.forward_features(x)

    with torch.no_grad():
        diff = (enc(x) - peer.forward_features(x)).abs().max().item()
    n = 2 * (H // R) ** 2 + 1
    macs = (n - 1) * 3 * R * R * D + depth * (12 * n * D * D + 2 * n * n * D)
    impls = [Impl("pvf PAVEREncoder (SpherePatchEmbed)", run(enc), "ours"),
             Impl("official: timm ViT + DeformConv2d offsets", run_peer, "peer")]
    return Case("models", f"PAVER encoder {H}x{2 * H} inference", {"frames": frames, "H": H, "W": 2 * H},
                impls, flops=2 * macs * frames, samples=frames, measure_memory=True,
                note=f"same weights; max |ours - official| = {diff:.2e}")


def cases(device: str, quick: bool) -> list[Case]:
    out = [_decoder_case(device, quick), _encoder_case(device, quick)]
    return [c for c in out if c is not None]
