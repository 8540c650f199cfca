"""Masked Autoencoder (He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022) on the library's
ViT blocks, with the state_dict keys of ``facebookresearch/mae`` (``models_mae.py``), so the official pre-training
checkpoints (``{"model": state_dict}``) load strictly and this model's checkpoints load into the official code.

Keys (``D`` = embed_dim, ``d`` = decoder_embed_dim, ``L`` = number of patches, ``p`` = patch size, ``c`` = channels)::

    encoder  cls_token (1, 1, D)                          parameter
             pos_embed (1, 1 + L, D)                      fixed 2-D sin-cos (requires_grad False)
             patch_embed.proj.{weight (D, c, p, p), bias}
             blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}.{weight, bias}   (timm's Block)
             norm.{weight, bias}
    decoder  decoder_embed.{weight (d, D), bias}
             mask_token (1, 1, d)
             decoder_pos_embed (1, 1 + L, d)              fixed 2-D sin-cos (requires_grad False)
             decoder_blocks.{i}.{...}                     (timm's Block)
             decoder_norm.{weight, bias}
             decoder_pred.{weight (p*p*c, d), bias}

The encoder's keys are timm's ViT keys: :func:`mae_to_vit_state_dict` turns a MAE state_dict into one for
``vit_*_patch16_224`` (see its docstring for ``global_pool="avg"``, MAE's fine-tuning setting).
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor, nn

from ..nn import PatchEmbed
from ._registry import register_model
from .vit import Block

__all__ = ["MaskedAutoencoderViT", "get_2d_sincos_pos_embed", "mae_to_vit_state_dict", "is_mae_state_dict",
           "mae_vit_tiny_patch16", "mae_vit_small_patch16", "mae_vit_base_patch16"]


def _sincos_1d(embed_dim: int, pos: Tensor) -> Tensor:
    """(M,) positions -> (M, embed_dim): [sin(pos * w_k), cos(pos * w_k)] with w_k = 10000^(-2k / embed_dim)."""
    if embed_dim % 2:
        raise ValueError(f"sin-cos position embedding: dimension {embed_dim} must be even")
    omega = 1.0 / 10000 ** (torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2))
    out = pos.reshape(-1, 1).to(torch.float64) * omega
    return torch.cat([out.sin(), out.cos()], dim=1)


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: Union[int, tuple[int, int]], cls_token: bool = False) -> Tensor:
    """The fixed 2-D sin-cos position embedding of MAE (``util/pos_embed.py`` there), computed in float64 and
    returned as float32 of shape ``(gh * gw, embed_dim)``, or ``(1 + gh * gw, embed_dim)`` with a zero row first
    when ``cls_token``. Tokens are in row-major patch order (as ``PatchEmbed`` emits them).

    The first ``embed_dim / 2`` channels encode the token's *column* index and the last half its *row* index
    (MAE builds its grid with ``meshgrid(w, h)`` and encodes ``grid[0]`` first); this order is kept so the
    values agree with the official checkpoints' ``pos_embed``."""
    gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else tuple(grid_size)
    if embed_dim % 4:
        raise ValueError(f"get_2d_sincos_pos_embed: embed_dim {embed_dim} must be a multiple of 4")
    rows = torch.arange(gh, dtype=torch.float64).repeat_interleave(gw)   # (gh*gw,) row index of each token
    cols = torch.arange(gw, dtype=torch.float64).repeat(gh)              # (gh*gw,) column index of each token
    emb = torch.cat([_sincos_1d(embed_dim // 2, cols), _sincos_1d(embed_dim // 2, rows)], dim=1)
    if cls_token:
        emb = torch.cat([emb.new_zeros(1, embed_dim), emb], dim=0)
    return emb.float()


class MaskedAutoencoderViT(nn.Module):
    """MAE with a ViT encoder and a light ViT decoder (``facebookresearch/mae``'s ``MaskedAutoencoderViT``).

    ``forward(imgs (N, in_chans, H, W) float, mask_ratio=None) -> (loss, pred, mask)``:

    * ``loss``: scalar, the per-patch mean squared error between ``pred`` and the patchified image (normalised per
      patch by its mean and variance, eps 1e-6, when ``norm_pix_loss``), averaged over the **masked** patches only.
    * ``pred``: (N, L, p*p*in_chans), the decoder's reconstruction of every patch (in ``patchify``'s layout).
    * ``mask``: (N, L) float32, 1 = masked (removed), 0 = kept (visible to the encoder).

    ``mask_ratio`` (default: the model's ``mask_ratio``, 0.75) removes ``L - int(L * (1 - mask_ratio))`` patches per
    sample, chosen by one ``argsort`` of uniform noise for the whole batch (no loop over samples). ``noise``
    ((N, L) float) fixes the choice: the patches with the smallest noise are kept.

    Initialisation as the official code: fixed sin-cos ``pos_embed``/``decoder_pos_embed``, xavier-uniform Linear
    weights (and the patch projection, viewed as a (D, c*p*p) matrix), zero biases, unit LayerNorms,
    ``cls_token``/``mask_token`` normal(std 0.02).
    """

    def __init__(self, img_size=224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 1024,
                 depth: int = 24, num_heads: int = 16, decoder_embed_dim: int = 512, decoder_depth: int = 8,
                 decoder_num_heads: int = 16, mlp_ratio: float = 4.0, norm_pix_loss: bool = False,
                 mask_ratio: float = 0.75, norm_eps: float = 1e-6):
        super().__init__()
        if depth < 1 or decoder_depth < 1:
            raise ValueError(f"MaskedAutoencoderViT: depth ({depth}) and decoder_depth ({decoder_depth}) must be >= 1")
        for dim, heads, what in ((embed_dim, num_heads, "embed_dim"), (decoder_embed_dim, decoder_num_heads,
                                                                       "decoder_embed_dim")):
            if dim % heads or dim % 4:
                raise ValueError(f"MaskedAutoencoderViT: {what} ({dim}) must be a multiple of 4 and of its number "
                                 f"of heads ({heads})")
        self._check_ratio(mask_ratio)
        self.mask_ratio, self.norm_pix_loss, self.in_chans = mask_ratio, norm_pix_loss, in_chans
        self.embed_dim, self.decoder_embed_dim = embed_dim, decoder_embed_dim

        # encoder
        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                      embed_dim=embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_eps=norm_eps)
                                     for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)

        # decoder
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList([
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_eps=norm_eps)
            for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=norm_eps)
        p = self.patch_embed.patch_size
        self.decoder_pred = nn.Linear(decoder_embed_dim, p[0] * p[1] * in_chans)
        self.initialize_weights()

    @property
    def num_patches(self) -> int:
        """L, the number of patches of an ``img_size`` image (the second size of ``mask``, ``pred`` and ``noise``)."""
        return self.patch_embed.num_patches

    @staticmethod
    def _check_ratio(mask_ratio: float) -> None:
        if not 0.0 <= float(mask_ratio) < 1.0:
            raise ValueError(f"MaskedAutoencoderViT: mask_ratio must be in [0, 1), got {mask_ratio}")

    def initialize_weights(self) -> None:
        grid = self.patch_embed.grid_size
        with torch.no_grad():
            self.pos_embed.copy_(get_2d_sincos_pos_embed(self.embed_dim, grid, cls_token=True).unsqueeze(0))
            self.decoder_pos_embed.copy_(
                get_2d_sincos_pos_embed(self.decoder_embed_dim, grid, cls_token=True).unsqueeze(0))
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.data.view(w.shape[0], -1))  # as a Linear (D, c*p*p), not as a Conv2d
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """timm's convention: names an optimizer factory keeps out of weight decay. (The official pre-training
        decays ``cls_token``/``mask_token``; the ``mae_pretrain`` recipe's ``wd_tokens`` chooses.)"""
        return {"pos_embed", "decoder_pos_embed", "cls_token", "mask_token"}

    # --- patches ----------------------------------------------------------------------------------------
    def patchify(self, imgs: Tensor) -> Tensor:
        """(N, c, H, W) -> (N, L, p*p*c), row-major patches, each flattened as (p_row, p_col, channel)."""
        p, q = self.patch_embed.patch_size
        N, c, H, W = imgs.shape
        if c != self.in_chans or H % p or W % q:
            raise ValueError(f"patchify: expected (N, {self.in_chans}, H, W) with H, W multiples of {(p, q)}, "
                             f"got {tuple(imgs.shape)}")
        h, w = H // p, W // q
        x = imgs.reshape(N, c, h, p, w, q).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(N, h * w, p * q * c)

    def unpatchify(self, x: Tensor) -> Tensor:
        """(N, L, p*p*c) -> (N, c, H, W) on this model's patch grid (the inverse of ``patchify``)."""
        p, q = self.patch_embed.patch_size
        h, w = self.patch_embed.grid_size
        c = self.in_chans
        if x.dim() != 3 or x.shape[1] != h * w or x.shape[2] != p * q * c:
            raise ValueError(f"unpatchify: expected (N, {h * w}, {p * q * c}), got {tuple(x.shape)}")
        x = x.reshape(x.shape[0], h, w, p, q, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(x.shape[0], c, h * p, w * q)

    # --- masking ----------------------------------------------------------------------------------------
    def random_masking(self, x: Tensor, mask_ratio: float, noise: Optional[Tensor] = None
                       ) -> tuple[Tensor, Tensor, Tensor]:
        """Per-sample random masking, batched: one ``argsort`` of (N, L) uniform noise shuffles every sample;
        the first ``len_keep = int(L * (1 - mask_ratio))`` shuffled tokens are kept.

        x: (N, L, D). Returns ``x_masked`` (N, len_keep, D) (kept tokens, in shuffled order), ``mask`` (N, L)
        float32 (1 = removed, in the original order) and ``ids_restore`` (N, L) int64, the inverse permutation:
        ``gather(cat([kept, removed]), 1, ids_restore)`` is the original order."""
        self._check_ratio(mask_ratio)
        N, L, D = x.shape
        len_keep = int(L * (1 - mask_ratio))
        if noise is None:
            noise = torch.rand(N, L, device=x.device)
        elif noise.shape != (N, L):
            raise ValueError(f"random_masking: noise must be (N, L) = {(N, L)}, got {tuple(noise.shape)}")
        ids_shuffle = torch.argsort(noise, dim=1)          # ascending: small noise is kept
        ids_restore = torch.argsort(ids_shuffle, dim=1)    # rank of each token in the shuffle
        ids_keep = ids_shuffle[:, :len_keep]
        x_masked = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))
        mask = (ids_restore >= len_keep).to(torch.float32)  # a token is removed iff its rank is >= len_keep
        return x_masked, mask, ids_restore

    # --- forward ----------------------------------------------------------------------------------------
    def forward_encoder(self, imgs: Tensor, mask_ratio: float, noise: Optional[Tensor] = None
                        ) -> tuple[Tensor, Tensor, Tensor]:
        """imgs (N, c, H, W) -> latent (N, 1 + len_keep, D) (class token first, then the kept tokens in shuffled
        order, after ``norm``), mask (N, L), ids_restore (N, L)."""
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """latent (N, 1 + len_keep, D), ids_restore (N, L) -> pred (N, L, p*p*c): mask tokens fill the removed
        positions, the sequence is unshuffled, decoded, and the class token dropped."""
        x = self.decoder_embed(latent)
        N, L, d = x.shape[0], ids_restore.shape[1], x.shape[2]
        mask_tokens = self.mask_token.to(x.dtype).expand(N, L + 1 - x.shape[1], -1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))
        x = torch.cat([x[:, :1, :], x_], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:, :]

    def forward_loss(self, imgs: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """imgs (N, c, H, W), pred (N, L, p*p*c), mask (N, L) (1 = removed) -> scalar loss: the mean over removed
        patches of the per-patch MSE against the (per-patch normalised, when ``norm_pix_loss``) pixels. With no
        removed patch (``mask_ratio=0``) the loss is 0 (the official code divides 0 by 0)."""
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)  # unbiased, as torch.var and the official code
            target = (target - mean) / (var + 1e-6) ** 0.5
        loss = ((pred - target) ** 2).mean(dim=-1)  # (N, L)
        return (loss * mask).sum() / mask.sum().clamp_min(1.0)

    def forward(self, imgs: Tensor, mask_ratio: Optional[float] = None, noise: Optional[Tensor] = None
                ) -> tuple[Tensor, Tensor, Tensor]:
        mask_ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask

    def export_module(self) -> nn.Module:
        """The encoder as deployed (what ``pvf export`` exports): every patch, no masking, sharing this model's
        parameters; forward(imgs (N, c, H, W)) -> tokens (N, 1 + L, D) after ``norm``."""
        return MAEEncoder(self)

    def encoder_state_dict(self) -> dict[str, Tensor]:
        """The encoder's tensors under timm's ViT keys (see :func:`mae_to_vit_state_dict`)."""
        return mae_to_vit_state_dict(self.state_dict())


class MAEEncoder(nn.Module):
    """A MAE's encoder without random masking (patch embedding, fixed position embedding, class token, blocks,
    norm), sharing the MAE's modules and parameters: a graph of standard operators for export."""

    def __init__(self, mae: MaskedAutoencoderViT):
        super().__init__()
        self.patch_embed, self.blocks, self.norm = mae.patch_embed, mae.blocks, mae.norm
        self.cls_token, self.pos_embed = mae.cls_token, mae.pos_embed

    def forward(self, imgs: Tensor) -> Tensor:
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


# --- encoder weights into a ViT --------------------------------------------------------------------------------
_DECODER_PREFIXES = ("decoder_", "mask_token")


def is_mae_state_dict(state: dict[str, Tensor]) -> bool:
    """True for a MAE pre-training state_dict: a full one (``mask_token`` or ``decoder_*`` keys), or an encoder-only
    one as MAE releases them (``mae_pretrain_vit_*.pth``: ViT keys with ``norm`` but no ``head`` or ``fc_norm``)."""
    if any(k.startswith(_DECODER_PREFIXES) for k in state):
        return True
    return ("cls_token" in state and "blocks.0.norm1.weight" in state
            and not any(k.startswith(("head.", "fc_norm.")) for k in state))


def mae_to_vit_state_dict(mae_state: dict[str, Tensor], model: Optional[nn.Module] = None) -> dict[str, Tensor]:
    """A MAE state_dict (this module's or ``facebookresearch/mae``'s ``checkpoint["model"]``) as a state_dict of
    ``VisionTransformer`` (timm's keys): the decoder (``decoder_*``) and ``mask_token`` are dropped; ``cls_token``,
    ``pos_embed`` (fixed in MAE, learnable in the ViT: copied), ``patch_embed.*``, ``blocks.*`` and ``norm.*`` are
    kept under the same names.

    With ``model`` (the target ViT), the result fits it the way MAE's ``main_finetune.py`` loads a pre-trained
    encoder: when the model pools by average (``global_pool="avg"``, MAE's default for fine-tuning, which has
    ``fc_norm`` and no ``norm``) the encoder's ``norm.*`` is dropped and ``fc_norm.*`` is taken from ``model``
    (fresh, its initialisation); ``head.*`` (absent from pre-training checkpoints) is likewise taken from ``model``.
    MAE then re-initialises the head with trunc_normal(std=2e-5); that belongs to the fine-tuning recipe.
    ``VisionTransformer.adapt_state_dict`` calls this for MAE checkpoints, so ``create_model("vit_base_patch16_224",
    global_pool="avg", checkpoint_path=<MAE checkpoint>)`` loads strictly otherwise."""
    vit = {k: v for k, v in mae_state.items() if not k.startswith(_DECODER_PREFIXES)}
    if model is not None:
        own = model.state_dict()
        if "norm.weight" not in own:  # avg pooling: the ViT has fc_norm instead of norm
            vit = {k: v for k, v in vit.items() if not k.startswith("norm.")}
        for k, v in own.items():
            if k.startswith(("fc_norm.", "head.")) and k not in vit:
                vit[k] = v
    return vit


# --- registry ----------------------------------------------------------------------------------------------------
def _mae(defaults: dict, kwargs: dict) -> MaskedAutoencoderViT:
    return MaskedAutoencoderViT(**{**defaults, **kwargs})


_DECODER = dict(decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16)
_FILE = ("a full MAE pre-training checkpoint (encoder and decoder) with facebookresearch/mae's keys ({}; a .pth "
         "{{'model': state_dict}} or .safetensors; MAE's released mae_pretrain_vit_*.pth hold the encoder only and "
         "load into vit_*)")


@register_model(pretrained_file=_FILE.format("e.g. MAE-SFER's AffectNet ViT-T checkpoint"))
def mae_vit_tiny_patch16(**kwargs) -> MaskedAutoencoderViT:
    """MAE ViT-Ti/16 encoder (192-d, 12 blocks, 3 heads) with the ViT-B decoder (512-d, 8 blocks, 16 heads): MAE-SFER
    says its small models use ViT-B's pre-training settings but publishes no model code; the MAE paper keeps the
    decoder fixed across encoders."""
    return _mae(dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, **_DECODER, norm_pix_loss=True), kwargs)


@register_model(pretrained_file=_FILE.format("e.g. MAE-SFER's AffectNet ViT-S checkpoint"))
def mae_vit_small_patch16(**kwargs) -> MaskedAutoencoderViT:
    """MAE ViT-S/16 encoder (384-d, 12 blocks, 6 heads) with the ViT-B decoder (see ``mae_vit_tiny_patch16``)."""
    return _mae(dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, **_DECODER, norm_pix_loss=True), kwargs)


@register_model(pretrained_file=_FILE.format("e.g. MAE-SFER's AffectNet ViT-B checkpoint"))
def mae_vit_base_patch16(**kwargs) -> MaskedAutoencoderViT:
    """MAE ViT-B/16 (``mae_vit_base_patch16_dec512d8b``): 768-d, 12-block encoder; 512-d, 8-block, 16-head decoder;
    mask ratio 0.75; normalised-pixel loss (the MAE paper's setting; the official factory leaves it to a flag).
    MAE's ViT-L/16 and ViT-H/14 are the same with ``embed_dim=1024, depth=24, num_heads=16`` and
    ``patch_size=14, embed_dim=1280, depth=32, num_heads=16`` (not registered: ``pvf models`` builds every
    registered model, and those are 330M and 657M parameters)."""
    return _mae(dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, **_DECODER, norm_pix_loss=True), kwargs)
