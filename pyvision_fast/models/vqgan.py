"""VQGAN (Esser et al. 2021, taming-transformers' ``VQModel``) as used frozen by DAT (Mao et al. 2022), with
taming's module names, so the Lightning checkpoint ``vqgan_openimages_f8_16384.ckpt`` loads strictly once its
``loss.*`` (LPIPS + discriminator) entries are dropped.

Architecture (re-implemented from taming's ``Encoder``/``Decoder``/``VectorQuantizer2``, no time embedding):

* ``ResnetBlock``: GroupNorm(32, eps 1e-6) -> swish -> conv3x3 -> GroupNorm -> swish -> dropout -> conv3x3, plus
  the input (through a 1x1 ``nin_shortcut`` when the channel count changes).
* ``AttnBlock``: single-head self-attention over the H*W positions; q, k, v and ``proj_out`` are 1x1 convs,
  scores scaled by C^-1/2; residual. Computed with ``pyvision_fast.ops.attention`` (SDPA semantics).
* ``Downsample``: zero pad (left 0, right 1, top 0, bottom 1), conv3x3 stride 2. ``Upsample``: nearest x2, conv3x3.
* Encoder: conv_in -> per level ``num_res_blocks`` ResnetBlocks (each followed by an AttnBlock when the level's
  nominal resolution is in ``attn_resolutions``) and a Downsample except at the last level -> mid (block, attn,
  block) -> GroupNorm -> swish -> conv_out to ``z_channels``. The decoder mirrors it with ``num_res_blocks + 1``
  blocks per level; ``decoder.up[i]`` is the level whose channels are ``ch * ch_mult[i]``.
* Quantizer: nearest codebook row in squared L2 distance (``pyvision_fast.ops.vector_quantize``: fused distance +
  argmin, ties to the lowest index; it sums the squared differences where taming expands ||z||^2 + ||e||^2 - 2 z.e,
  so the two can differ only between nearly equidistant codes), codebook ``quantize.embedding.weight``
  (n_embed, embed_dim) initialised U(-1/n_embed, 1/n_embed).

Attention placement follows the *nominal* resolution (``resolution`` halved per level), not the input size, as in
taming; inputs of any size divisible by 2**(len(ch_mult)-1) run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import attention, vector_quantize
from ._registry import register_model

__all__ = ["VQModel", "VectorQuantizer", "read_taming_checkpoint", "convert_taming_checkpoint", "vqgan_f8_16384"]

_CKPT_NAME = "vqgan_openimages_f8_16384.ckpt"
_CKPT_ORIGIN = (f"{_CKPT_NAME} (taming-transformers' VQGAN OpenImages f=8, 16384 codes; the checkpoint DAT's "
                "alibaba/easyrobust downloads) or a .safetensors made from it with convert_taming_checkpoint")


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """taming's ``ResnetBlock`` without time embedding: (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1-conv projections: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        # (B, C, H, W) -> (B, 1 head, H*W, C): one head whose width is all C channels
        q, k, v = (proj(y).flatten(2).transpose(1, 2).unsqueeze(1) for proj in (self.q, self.k, self.v))
        out = attention(q, k, v)                                    # scale C^-1/2, as taming's int(c)**-0.5
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Halves H and W: zero pad right/bottom by one, then conv3x3 stride 2 (taming's asymmetric padding)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Doubles H and W: nearest-neighbour x2, then conv3x3."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _mid(channels: int, dropout: float) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels, dropout)
    mid.attn_1 = AttnBlock(channels)
    mid.block_2 = ResnetBlock(channels, channels, dropout)
    return mid


class Encoder(nn.Module):
    """(B, in_channels, H, W) -> (B, z_channels, H / 2**(L-1), W / 2**(L-1)) with L = len(ch_mult)."""

    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, attn_resolutions: Sequence[int],
                 in_channels: int, resolution: int, z_channels: int, double_z: bool = False, dropout: float = 0.0):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        res, block_in = resolution, ch
        self.down = nn.ModuleList()
        for i, mult in enumerate(ch_mult):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks):
                level.block.append(ResnetBlock(block_in, ch * mult, dropout))
                block_in = ch * mult
                if res in attn_resolutions:
                    level.attn.append(AttnBlock(block_in))
            if i != len(ch_mult) - 1:
                level.downsample = Downsample(block_in)
                res //= 2
            self.down.append(level)
        self.mid = _mid(block_in, dropout)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels if double_z else z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """(B, z_channels, h, w) -> (B, out_ch, h * 2**(L-1), w * 2**(L-1)); ``up[i]`` has ``ch * ch_mult[i]``
    channels and runs from the last level to the first."""

    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, attn_resolutions: Sequence[int],
                 out_ch: int, resolution: int, z_channels: int, dropout: float = 0.0):
        super().__init__()
        n = len(ch_mult)
        block_in = ch * ch_mult[-1]
        res = resolution // 2 ** (n - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = _mid(block_in, dropout)
        levels = []
        for i in reversed(range(n)):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                level.block.append(ResnetBlock(block_in, ch * ch_mult[i], dropout))
                block_in = ch * ch_mult[i]
                if res in attn_resolutions:
                    level.attn.append(AttnBlock(block_in))
            if i != 0:
                level.upsample = Upsample(block_in)
                res *= 2
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for level in reversed(self.up):
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest-codebook quantizer (taming's ``VectorQuantizer2`` at inference): ``embedding.weight`` (K, D)."""

    def __init__(self, n_embed: int, embed_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z (B, D, h, w) float -> (z_q (B, D, h, w), indices (B, h, w) int64). When ``z`` requires grad, z_q
        passes the gradient straight through to z (z + (z_q - z).detach(), as taming); otherwise every z_q
        vector is exactly a codebook row."""
        z_cl = z.permute(0, 2, 3, 1).contiguous()
        z_q, indices = vector_quantize(z_cl, self.embedding.weight.to(z.dtype), straight_through=z.requires_grad)
        return z_q.permute(0, 3, 1, 2).contiguous(), indices


class VQModel(nn.Module):
    """taming's ``VQModel`` (encoder, quant_conv, quantize, post_quant_conv, decoder) for images in [0, 1].

    ``forward(x)``: x (B, 3, H, W) float in [0, 1], H and W multiples of 2**(len(ch_mult)-1) (8 for f8) ->
    reconstruction (B, 3, H, W) in [0, 1]: ``2x-1`` -> encode -> quantize -> decode -> clamp[-1, 1] -> ``(.+1)/2``
    (easyrobust's ``reconstruct_with_vqgan``)."""

    head_keys: tuple[str, ...] = ()     # no classifier: every key of a checkpoint must fit

    def __init__(self, ch: int = 128, ch_mult: Sequence[int] = (1, 2, 2, 4), num_res_blocks: int = 2,
                 attn_resolutions: Sequence[int] = (32,), z_channels: int = 4, resolution: int = 256,
                 in_channels: int = 3, out_ch: int = 3, embed_dim: int = 4, n_embed: int = 16384,
                 double_z: bool = False, dropout: float = 0.0):
        super().__init__()
        if double_z:
            raise ValueError("VQModel: double_z=True is the KL autoencoder's setting; a VQGAN has double_z=False")
        if ch % 32 or any((ch * m) % 32 for m in ch_mult):
            raise ValueError(f"VQModel: GroupNorm(32) needs every width (ch * ch_mult) divisible by 32, got ch={ch}, "
                             f"ch_mult={list(ch_mult)}")
        self.config = dict(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks,
                           attn_resolutions=tuple(attn_resolutions), z_channels=z_channels, resolution=resolution,
                           in_channels=in_channels, out_ch=out_ch, embed_dim=embed_dim, n_embed=n_embed,
                           dropout=dropout)
        self.downsample_factor = 2 ** (len(ch_mult) - 1)
        self.default_input_size = (in_channels, resolution, resolution)
        self.encoder = Encoder(ch, ch_mult, num_res_blocks, attn_resolutions, in_channels, resolution, z_channels,
                               dropout=dropout)
        self.decoder = Decoder(ch, ch_mult, num_res_blocks, attn_resolutions, out_ch, resolution, z_channels,
                               dropout=dropout)
        self.quantize = VectorQuantizer(n_embed, embed_dim)
        self.quant_conv = nn.Conv2d(z_channels, embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)

    def _check(self, x: Tensor) -> None:
        c = self.config["in_channels"]
        f = self.downsample_factor
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != c or not x.is_floating_point():
            desc = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"VQModel: expected a float tensor (B, {c}, H, W), got {desc}")
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"VQModel: H and W must be multiples of {f}, got {tuple(x.shape[2:])}")

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, 3, H, W) in [0, 1] -> (z_q (B, embed_dim, H/f, W/f), indices (B, H/f, W/f) int64 in
        [0, n_embed)); each z_q vector is the codebook row its index names."""
        self._check(x)
        h = self.quant_conv(self.encoder(2.0 * x - 1.0))
        return self.quantize(h)

    def decode(self, z_q: Tensor) -> Tensor:
        """z_q (B, embed_dim, h, w) -> images (B, 3, h*f, w*f) in [0, 1] (decoder output clamped to [-1, 1])."""
        out = self.decoder(self.post_quant_conv(z_q))
        return (out.clamp(-1.0, 1.0) + 1.0) / 2.0

    def decode_code(self, indices: Tensor) -> Tensor:
        """indices (B, h, w) int64 -> images (B, 3, h*f, w*f) in [0, 1]."""
        z_q = self.quantize.embedding(indices).permute(0, 3, 1, 2).contiguous()
        return self.decode(z_q)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x)[0])

    def adapt_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """taming's Lightning ``state_dict`` -> this model's (used by ``load_weights``): drops the training
        loss (``loss.*``: LPIPS and the discriminator) and, when present, a segmentation model's ``colorize``."""
        return _drop_training_keys(state)


def _drop_training_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v for k, v in state.items() if not (k.startswith("loss.") or k == "colorize")}


# --- checkpoints ----------------------------------------------------------------------------------------------------

def read_taming_checkpoint(path: Union[str, Path]) -> dict[str, Tensor]:
    """The VQModel tensors of a taming-transformers Lightning checkpoint (``{"state_dict": {...}, "epoch": ...,
    "callbacks": ...}``), ``loss.*`` removed. Read with ``torch.load(weights_only=True)``; the globals that loader
    refuses (``pytorch_lightning...ModelCheckpoint`` and the like, outside the weights) are replaced by inert
    stand-ins, so no code from the file runs. ``.safetensors`` files are read as they are."""
    from .weights import read_state_dict

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VQGAN checkpoint {str(path)!r} does not exist (the model needs {_CKPT_NAME})")
    state = read_state_dict(path)  # weights_only, Lightning's callbacks replaced by inert stand-ins
    return _drop_training_keys(state)


def convert_taming_checkpoint(src: Union[str, Path], dst: Union[str, Path]) -> Path:
    """Writes the VQModel weights of taming's ``.ckpt`` ``src`` to the safetensors file ``dst`` (loadable with
    ``create_model("vqgan_f8_16384", checkpoint_path=dst)``)."""
    from .weights import save_safetensors

    return save_safetensors(read_taming_checkpoint(src), dst)


def load_vqgan(path: Union[str, Path], **kwargs) -> VQModel:
    """``vqgan_f8_16384(**kwargs)`` with the weights of ``path`` (taming's Lightning ``.ckpt``, a plain
    state_dict or a ``.safetensors``), loaded strictly; frozen and in eval mode."""
    model = vqgan_f8_16384(**kwargs)
    state = read_taming_checkpoint(path)
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    bad = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
           for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or bad:
        raise ValueError(f"{path} does not fit vqgan_f8_16384: missing {missing[:6]}, unexpected {unexpected[:6]}, "
                         f"shape mismatch {bad[:4]}")
    model.load_state_dict(state, strict=True)
    return model


@register_model(pretrained_file=_CKPT_ORIGIN)
def vqgan_f8_16384(**kwargs) -> VQModel:
    """taming's VQGAN OpenImages f=8 with 16384 codes of dimension 4 (DAT's frozen "visual word" model):
    ch 128, ch_mult (1, 2, 2, 4), 2 res blocks, attention at 32x32, z 4. Frozen (no parameter requires grad) and in
    eval mode; keyword arguments override the config (``ch=32, resolution=32, attn_resolutions=(4,)`` for tests)."""
    model = VQModel(**kwargs)
    model.requires_grad_(False)
    return model.eval()
