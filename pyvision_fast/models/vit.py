"""Vision Transformer (Dosovitskiy et al. 2021) on the library's layers, with timm's module names, so timm's
``vit_*`` state_dicts load strictly and give the same logits.

Attention is ``nn.FusedAttention`` (the library's fused kernels on GPU, SDPA elsewhere); patches come from
``nn.PatchEmbed`` or any layer passed as ``embed_layer`` (PAVER's ``SpherePatchEmbed``)."""
from __future__ import annotations

import math
from functools import partial
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import DropPath, FusedAttention, PatchEmbed
from ._registry import register_model


class Mlp(nn.Module):
    """timm's ``Mlp``: fc1 -> GELU -> dropout -> fc2 -> dropout."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block: x + drop_path(ls1(attn(norm1(x)))), then the same with the MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 init_values: Optional[float] = None, proj_drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0, norm_eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = FusedAttention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


def resize_pos_embed(pos_embed: Tensor, new_grid: tuple[int, int], num_prefix_tokens: int = 1,
                     old_grid: Optional[tuple[int, int]] = None) -> Tensor:
    """Bicubic resize of a (1, prefix + gh*gw, C) position embedding to ``new_grid`` (the prefix/cls tokens are
    kept as they are). ``old_grid`` defaults to the square grid the length implies."""
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    if old_grid is None:
        side = math.isqrt(grid.shape[1])
        if side * side != grid.shape[1]:
            raise ValueError(f"resize_pos_embed: {grid.shape[1]} grid tokens are not a square; pass old_grid")
        old_grid = (side, side)
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    C = grid.shape[-1]
    grid = grid.reshape(1, *old_grid, C).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", align_corners=False, antialias=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], C).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


class VisionTransformer(nn.Module):
    """ViT with timm's parameters and names (``cls_token``, ``pos_embed``, ``patch_embed.proj``,
    ``blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``, ``fc_norm``, ``head``).

    forward(x (B, in_chans, H, W) float) -> logits (B, num_classes), or pooled features (B, embed_dim) when
    ``num_classes=0``. ``forward_features`` returns all normalised tokens (B, prefix + N, embed_dim).

    ``global_pool``: ``"token"`` (class token, timm's default) or ``"avg"`` (mean of the patch tokens, then
    ``fc_norm``; MAE fine-tuning). ``embed_layer(img_size=, patch_size=, in_chans=, embed_dim=)`` builds the patch
    embedding; it must expose ``num_patches`` and ``grid_size``.
    """

    def __init__(self, img_size=224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
                 global_pool: str = "token", embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, init_values: Optional[float] = None,
                 class_token: bool = True, fc_norm: Optional[bool] = None, drop_rate: float = 0.0,
                 pos_drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 norm_eps: float = 1e-6, embed_layer: Optional[Callable[..., nn.Module]] = None):
        super().__init__()
        if global_pool not in ("token", "avg"):
            raise ValueError(f"VisionTransformer: global_pool must be 'token' or 'avg', got {global_pool!r}")
        if global_pool == "token" and not class_token:
            raise ValueError("VisionTransformer: global_pool='token' needs class_token=True")
        if depth < 1 or embed_dim % num_heads:
            raise ValueError(f"VisionTransformer: need depth >= 1 and embed_dim ({embed_dim}) divisible by "
                             f"num_heads ({num_heads})")
        self.num_classes, self.global_pool = num_classes, global_pool
        self.num_features = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1 if class_token else 0
        embed_layer = embed_layer or PatchEmbed
        self.patch_embed = embed_layer(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                       embed_dim=embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + self.num_prefix_tokens, embed_dim))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, init_values, proj_drop=drop_rate,
                  attn_drop=attn_drop_rate, drop_path=dpr[i], norm_eps=norm_eps) for i in range(depth)])
        use_fc_norm = global_pool == "avg" if fc_norm is None else fc_norm
        self.norm = nn.Identity() if use_fc_norm else nn.LayerNorm(embed_dim, eps=norm_eps)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=norm_eps) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """timm's 'jax'-free default: truncated normal (std 0.02) for pos_embed and Linear weights, zero biases,
        a tiny normal class token."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # timm conventions used by optimizers and layer decay (timm.optim.param_groups_layer_decay)
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^cls_token|pos_embed|patch_embed",
                    blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    @property
    def head_keys(self) -> tuple[str, ...]:
        return ("head.",)

    def adapt_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Resizes a checkpoint's ``pos_embed`` (bicubic, class token kept) to this model's patch grid. A MAE
        pre-training checkpoint becomes an encoder state_dict first (``models.mae.mae_to_vit_state_dict``: decoder
        dropped; with ``global_pool="avg"`` its ``norm`` dropped and ``fc_norm``/``head`` left at initialisation)."""
        from .mae import is_mae_state_dict, mae_to_vit_state_dict

        if is_mae_state_dict(state):
            state = mae_to_vit_state_dict(state, self)
        pe = state.get("pos_embed")
        if pe is not None and pe.shape != self.pos_embed.shape and pe.dim() == 3:
            state = dict(state)
            state["pos_embed"] = resize_pos_embed(pe, tuple(self.patch_embed.grid_size), self.num_prefix_tokens)
        return state

    def _pos_embed(self, x: Tensor) -> Tensor:
        if x.shape[1] != self.pos_embed.shape[1] - self.num_prefix_tokens:
            raise ValueError(f"VisionTransformer: {x.shape[1]} patch tokens, but pos_embed has "
                             f"{self.pos_embed.shape[1] - self.num_prefix_tokens}")
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.pos_drop(x + self.pos_embed)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.norm(self.blocks(self._pos_embed(self.patch_embed(x))))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x[:, self.num_prefix_tokens:].mean(dim=1) if self.global_pool == "avg" else x[:, 0]
        x = self.head_drop(self.fc_norm(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _vit(defaults: dict, kwargs: dict) -> VisionTransformer:
    return VisionTransformer(**{**defaults, **kwargs})


_TIMM_FILE = "timm's {} weights (e.g. the model.safetensors of the Hugging Face repo timm/{}.augreg2_in21k_ft_in1k)"


@register_model(pretrained_file=_TIMM_FILE.format("vit_tiny_patch16_224", "vit_tiny_patch16_224"))
def vit_tiny_patch16_224(**kwargs) -> VisionTransformer:
    """ViT-Ti/16 (5.7M parameters with a 1000-class head)."""
    return _vit(dict(patch_size=16, embed_dim=192, depth=12, num_heads=3), kwargs)


@register_model(pretrained_file=_TIMM_FILE.format("vit_small_patch16_224", "vit_small_patch16_224"))
def vit_small_patch16_224(**kwargs) -> VisionTransformer:
    """ViT-S/16 (22.1M parameters with a 1000-class head)."""
    return _vit(dict(patch_size=16, embed_dim=384, depth=12, num_heads=6), kwargs)


@register_model(pretrained_file=_TIMM_FILE.format("vit_base_patch16_224", "vit_base_patch16_224"))
def vit_base_patch16_224(**kwargs) -> VisionTransformer:
    """ViT-B/16 (86.6M parameters with a 1000-class head)."""
    return _vit(dict(patch_size=16, embed_dim=768, depth=12, num_heads=12), kwargs)
