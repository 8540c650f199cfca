"""PAVER: Panoramic Vision Transformer for 360 degree video saliency (Yun, Lee, Kim, ECCV 2022),
re-implemented from the paper and the facts of its public code (``HS-YN/PAVER``) on the library's layers.

API (what the ``paver`` recipe and ``pvf extract paver`` rely on)::

    model = create_model("paver")        # ViT-B/16 encoder + FusePAVER decoder, 224 x 448 ERP input
    x = PAVER.preprocess(frames_uint8)    # (T, H, 2H, 3) or (B, T, H, 2H, 3) -> (..., 3, H, 2H) float
    feats = model.encode(x)               # (B, T, 3, H, 2H) -> (B, T, 1 + N, D), under no_grad
    out = model.decode(feats)             # {"score": (B, T, N), "heatmap": (B, T, H, 2H) in [0, 1]}
    loss, parts = model.loss(feats)       # self-supervised; parts: loss_cls / loss_spatial / loss_temporal
    heatmap = model(feats)                # == decode(feats)["heatmap"]
    model.export_module()                 # the decoder on features: (B, T, 1 + N, D) -> heatmap

* ``encoder`` (``PAVEREncoder``): the registry ViT (timm keys) whose patch projection is a
  ``SpherePatchEmbed(layout="paver")`` (PAVER's deformable patch embedding: the tangent-plane offsets of its
  code, bilinear with ``offsets="float"`` as its default ``InterpDeformViT``, integer positions with
  ``"discrete"`` as its ``DeformViT``), ``pos_embed`` resized bicubically from 14 x 14 to the 14 x 28 grid,
  frozen and in eval mode. Input: normalised ERP frames (B, 3, H, 2H) float; output all tokens after the final
  norm, class token first. ``encoder_checkpoint`` loads timm's ``vit_base_patch16_224`` state_dict (its
  classifier ``head.*`` dropped, ``pos_embed`` resized; every other key must match).
  Border samples: where a tangent-plane tap falls past the last pixel row or column, the official
  ``DeformConv2d`` reads zeros, SpherePatchEmbed clamps the row and wraps the longitude (with float offsets,
  61 of the 392 patch tokens differ at the embedding, all at the seam or the first and last patch rows).
* decoder: one ``FusedSTBlock`` (spatial attention over the N patches of a frame and temporal attention over
  the frames of each patch from one qkv, ``proj((x_s + x_t) / 2)``; 8 heads, mlp_ratio 4, no qkv bias,
  LayerNorm eps 1e-5 as the official ``nn.LayerNorm`` default) and ``cls_encoder`` (timm ``Mlp`` with hidden =
  D). Per patch, with f the block output: score = mean_c (cls_encoder(cls) - f)^2 + mean_c (mean_T f - f)^2 +
  mean_c (mean_N f - f)^2. Heatmap = sum_k score_k^2 basis_k (spherical Gaussians, ``sphere_gaussian_basis``),
  then per-frame min-max to [0, 1] (a constant map becomes 0 instead of the official 0/0).
* Windows: features of any length T are cut into windows of ``num_frame`` frames, all run as one batch; the
  last window is zero-padded and its padded frames are found, as in the official code, from the features (a
  frame whose features are all zero is padding). Padded frames are dropped from the outputs, excluded from the
  losses, and (where the official code lets them in) masked out of the temporal attention and the temporal
  mean, so a short window gives exactly what the official code gives for a window of only its valid frames.
* Losses (no labels), averaged over the valid frames of all windows, gradients only into the decoder:
  temporal = MSE(f_t, stopgrad(mean of the valid neighbours f_t-1, f_t+1)) (one neighbour at a window's ends;
  a frame without a valid neighbour is left out); spatial = MSE(f, stopgrad(target)) with ``spatial_target=
  "neighbour"`` the neighbour average over the spherical adjacency A (A_ij = max(cos angle(i, j) - cos(pi /
  n), 0) between patch centres, i != j, rows normalised) or ``"official"`` the official
  ``einsum('BTNC,NN->BTNC', f, A)``, which multiplies f by A's zero diagonal, so the target is 0 and the term
  is mean f^2; cls = MSE(c / S, c) with c = cls_encoder(cls) and S the number of valid frames of the window
  (what the official code computes: its masked copy is overwritten by the next line). Weights lambda cls /
  spatial / temporal = 0.1 / 0.5 / 20. The official trainer takes one optimiser step per 5-frame window;
  ``loss`` on a 25-frame clip is the mean of its windows' losses (call it on 5-frame slices to step per
  window).
* Official decoder checkpoints (``cls_encoder.*``, ``attn_layer.*``) load through ``PAVER.adapt_state_dict``,
  which moves them under ``decoder.`` and drops the official buffers (``sph_basis``, ``spatial_weight``,
  ``adjacency_matrix``; rebuilt here) and its two unused parameters
  ``temp_score_weight``/``spat_score_weight``.
* ``paver_decoder`` is the decoder alone (what ``pvf train paver`` trains on cached features: its checkpoints
  hold 8.3M parameters instead of the full model's 94M, of which the frozen encoder is 86M); such a checkpoint
  (or an official decoder checkpoint) loads into the full model with ``create_model("paver",
  decoder_checkpoint=PATH)``.
"""
from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import SpherePatchEmbed, attention_dispatch
from ._registry import register_model
from .vit import Mlp, VisionTransformer

_OFFSETS = ("float", "discrete")
_SPATIAL_TARGETS = ("neighbour", "official")


# ------------------------------------------------------------------------------------------------ encoder

class PAVEREncoder(VisionTransformer):
    """PAVER's frozen feature extractor: a ViT on (B, 3, H, 2H) ERP frames with the deformable (tangent-plane)
    patch embedding. forward(x (B, 3, H, 2H) float, already normalised) -> tokens (B, 1 + N, D) after the
    final norm, class token first, N = (H / R) (2H / R). Parameters never require grad; the module stays in
    eval mode."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, offsets: str = "float"):
        if offsets not in _OFFSETS:
            raise ValueError(f"PAVEREncoder: offsets must be one of {_OFFSETS}, got {offsets!r}")
        if img_size % patch_size or (img_size // patch_size) % 2:
            raise ValueError(f"PAVEREncoder: img_size {img_size} must be an even multiple of patch_size "
                             f"{patch_size}")
        embed = partial(SpherePatchEmbed, layout="paver", discrete=offsets == "discrete")
        super().__init__(img_size=(img_size, 2 * img_size), patch_size=patch_size, num_classes=0,
                         embed_dim=embed_dim, depth=depth, num_heads=num_heads, qkv_bias=True, norm_eps=1e-6,
                         embed_layer=embed)
        self.offsets = offsets
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "PAVEREncoder":
        return super().train(False)  # frozen: dropout/drop-path stay off whatever the parent's mode

    def adapt_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """timm ``vit_base_patch16_224`` keys -> this encoder's: the classifier ``head.*`` is dropped and
        ``pos_embed`` resized bicubically to the (H / R) x (2H / R) grid; the patch projection goes unchanged
        into the sphere embedding (same keys)."""
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        return super().adapt_state_dict(state)

    def load_timm_weights(self, path: Union[str, Path]) -> "PAVEREncoder":
        """Loads a timm ViT state_dict file (safetensors or torch checkpoint) strictly after
        ``adapt_state_dict``."""
        from .weights import read_state_dict

        state = self.adapt_state_dict(read_state_dict(path))
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path} does not fit the PAVER encoder: missing {sorted(missing)[:8]}, "
                             f"unexpected {sorted(unexpected)[:8]}")
        return self

    def forward(self, x: Tensor) -> Tensor:
        H, W = self.patch_embed.img_size
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[-1] != 2 * x.shape[-2]:
            raise ValueError(f"PAVEREncoder: expected ERP frames (B, 3, H, 2H) with a 1:2 aspect ratio, got "
                             f"shape {tuple(x.shape)}")
        if tuple(x.shape[-2:]) != (H, W):
            raise ValueError(f"PAVEREncoder: frames of {x.shape[-2]}x{x.shape[-1]}, the model takes {H}x{W} "
                             f"(shape {tuple(x.shape)})")
        return self.forward_features(x)


# ------------------------------------------------------------------------------------------------ decoder

class FusedSTAttention(nn.Module):
    """Spatio-temporal attention of FusePAVER with the official keys (``qkv``, ``proj``): one qkv projection,
    attention over the N patches within each frame and over the T frames for each patch, averaged, then
    ``proj``.

    forward(x (B, T, N, C), frame_mask (B, T) bool or None) -> (B, T, N, C). ``frame_mask`` (True = real
    frame) removes padded frames from the temporal keys. Both attentions run through
    ``nn.attention_dispatch``."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"FusedSTAttention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, frame_mask: Optional[Tensor] = None) -> Tensor:
        B, T, N, C = x.shape
        Hh, d = self.num_heads, self.head_dim
        qkv = self.qkv(x).reshape(B, T, N, 3, Hh, d)
        # spatial: sequences are the frames, (B T, heads, N, d)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).reshape(3, B * T, Hh, N, d).unbind(0)
        xs = attention_dispatch.attention(q, k, v, scale=self.scale)  # (B T, Hh, N, d)
        xs = xs.reshape(B, T, Hh, N, d).permute(0, 1, 3, 2, 4)
        # temporal: sequences are the patches, (B N, heads, T, d)
        q, k, v = qkv.permute(3, 0, 2, 4, 1, 5).reshape(3, B * N, Hh, T, d).unbind(0)
        mask = None
        if frame_mask is not None:
            mask = frame_mask[:, None, :].expand(B, N, T).reshape(B * N, 1, 1, T)
        xt = attention_dispatch.attention(q, k, v, attn_mask=mask, scale=self.scale)  # (B N, Hh, T, d)
        xt = xt.reshape(B, N, Hh, T, d).permute(0, 3, 1, 2, 4)
        return self.proj(((xs + xt) * 0.5).reshape(B, T, N, C))


class FusedSTBlock(nn.Module):
    """Pre-norm transformer block with ``FusedSTAttention``: x + attn(norm1(x)), then x + mlp(norm2(x)).
    Keys as the official ``FusedSTBlock`` (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``,
    ``mlp.fc1/fc2``).

    forward(x (B, T, N, C) float, frame_mask (B, T) bool or None) -> (B, T, N, C)."""

    def __init__(self, dim: int, num_heads: int = 8, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 norm_eps: float = 1e-5):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = FusedSTAttention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, frame_mask: Optional[Tensor] = None) -> Tensor:
        x = x + self.attn(self.norm1(x), frame_mask)
        return x + self.mlp(self.norm2(x))


def sphere_gaussian_basis(height: int, patch_size: int, sigma: float = 16.0,
                          columns: Optional[list[int]] = None) -> Tensor:
    """PAVER's heatmap basis, dense: (N, H, 2H) float64, row k = patch k (row-major over the (H / R) x (2H /
    R) grid; with ``columns``, only those patch columns: (H / R, len(columns), H, 2H)) = cos(lat_k) * coef *
    exp(a cos psi), psi the great-circle angle between the pixel and the patch centre, a = W^2 / (4 pi^2
    sigma^2) (sigma in pixels of the W = 2H wide map), coef = a / sinh(a) (so each Gaussian integrates to 4 pi
    over the sphere: row k integrates to 4 pi cos(lat_k)), evaluated as 2a / (1 - e^-2a) * exp(a (cos psi -
    1)), which neither overflows for large a nor divides 0 by 0 for small a. Pixel row r lies at latitude pi/2
    - r pi / H, column c at longitude 2 pi c / W (the official ``linspace(..., endpoint=False)`` grid); patch
    (j, i) is centred at latitude pi/2 - (j + 1/2) pi / n and longitude (i + 1/2) pi / n, n = H / R."""
    n, W = height // patch_size, 2 * height
    lat, lon = _pixel_angles(height)
    plat = math.pi / 2 - (torch.arange(n, dtype=torch.float64) + 0.5) * math.pi / n
    plon = (torch.arange(2 * n, dtype=torch.float64) + 0.5) * math.pi / n
    if columns is not None:
        plon = plon[list(columns)]
    cos_psi = (torch.sin(plat)[:, None, None, None] * torch.sin(lat)[None, None, :, None]
               + torch.cos(plat)[:, None, None, None] * torch.cos(lat)[None, None, :, None]
               * torch.cos(lon[None, None, None, :] - plon[None, :, None, None]))  # (n, 2n, H, W)
    a = W * W / (4 * math.pi ** 2 * sigma ** 2)
    basis = _coef(a) * torch.exp(a * (cos_psi - 1)) * torch.cos(plat)[:, None, None, None]
    return basis if columns is not None else basis.reshape(2 * n * n, height, W)


def _pixel_angles(height: int) -> tuple[Tensor, Tensor]:
    lat = math.pi / 2 - torch.arange(height, dtype=torch.float64) * math.pi / height
    lon = torch.arange(2 * height, dtype=torch.float64) * math.pi / height
    return lat, lon


def _coef(a: float) -> float:
    """a / sinh(a) * e^a = 2a / (1 - e^-2a), finite for every a > 0."""
    return 2 * a / -math.expm1(-2 * a)


def spherical_adjacency(grid: int) -> Tensor:
    """(N, N) float64, N = 2 grid^2: max(cos angle(i, j) - cos(pi / grid), 0) between the centres of patches i
    and j (threshold: one patch), zero diagonal; unnormalised (the official code divides column j by its
    sum)."""
    polar = (torch.arange(grid, dtype=torch.float64) + 0.5) * math.pi / grid
    lon = (torch.arange(2 * grid, dtype=torch.float64) + 0.5) * math.pi / grid
    p, t = torch.meshgrid(polar, lon, indexing="ij")
    d = torch.stack([p.sin() * t.cos(), p.sin() * t.sin(), p.cos()], -1).reshape(-1, 3)
    a = d @ d.T - math.cos(math.pi / grid)
    a.fill_diagonal_(0)
    # neighbours exactly one patch away (same meridian) sit on the threshold: rounding must not decide them
    return torch.where(a > 1e-12, a, torch.zeros_like(a))


class PAVERDecoder(nn.Module):
    """FusePAVER's decoder on cached encoder features; the inference module ``PAVER.export_module()`` returns.

    forward(features (B, T, 1 + N, D) float) -> heatmap (B, T, H, 2H) float in [0, 1]; ``decode`` also returns
    the per-patch scores, ``loss`` the self-supervised losses (see the module docstring).
    ``default_input_size`` = (num_frame, 1 + N, D)."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, embed_dim: int = 768, num_heads: int = 8,
                 num_frame: int = 5, sigma: float = 16.0, spatial_target: str = "neighbour",
                 lambdas: tuple[float, float, float] = (0.1, 0.5, 20.0)):
        super().__init__()
        if spatial_target not in _SPATIAL_TARGETS:
            raise ValueError(f"PAVER: spatial_target must be one of {_SPATIAL_TARGETS}, got "
                             f"{spatial_target!r}")
        if num_frame < 1:
            raise ValueError(f"PAVER: num_frame must be >= 1, got {num_frame}")
        self.img_size, self.patch_size, self.embed_dim = img_size, patch_size, embed_dim
        self.grid = (img_size // patch_size, 2 * img_size // patch_size)
        self.num_patches = self.grid[0] * self.grid[1]
        self.num_frame, self.spatial_target = num_frame, spatial_target
        self.lambda_cls, self.lambda_spatial, self.lambda_temporal = lambdas
        self.default_input_size = (num_frame, 1 + self.num_patches, embed_dim)
        self.cls_encoder = Mlp(embed_dim, embed_dim)
        self.attn_layer = FusedSTBlock(embed_dim, num_heads)
        self.apply(self._init)
        n, m, R = self.grid[0], self.grid[1], patch_size
        # The basis is circulant in longitude: patch (j, i)'s Gaussian is patch (j, 0)'s shifted by i R
        # columns. Keep patch column 0's (n, H, W), 1/2n of the dense (N, H, W), and gather the scores
        # circularly instead (157 MB -> 5.6 MB at 224 x 448).
        dense0 = sphere_gaussian_basis(img_size, patch_size, sigma, columns=[0])[:, 0]
        dense0 = dense0.reshape(n, img_size, m, R)
        basis = dense0.permute(0, 2, 1, 3).reshape(n * m, img_size * R)  # [(j, d), (r, c)] = B_j0(r, d R + c)
        self.register_buffer("basis", basis.float(), persistent=False)
        q, d = torch.arange(m)[:, None, None], torch.arange(m)[None, None, :]
        j = torch.arange(n)[None, :, None]
        self.register_buffer("basis_gather", (j * m + (q - d) % m).reshape(m, n * m), persistent=False)
        adj = spherical_adjacency(n)
        self.register_buffer("adjacency", (adj / adj.sum(1, keepdim=True)).float(), persistent=False)
        self.register_buffer("adjacency_diagonal", adj.diagonal().float(), persistent=False)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):  # timm's init, as the official modules (timm-derived) use
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # ---- shapes and windows
    def check_features(self, features: Tensor) -> None:
        want = (1 + self.num_patches, self.embed_dim)
        if not isinstance(features, Tensor) or features.dim() != 4 or tuple(features.shape[2:]) != want \
                or features.shape[1] < 1 or not features.is_floating_point():
            got = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(f"PAVER: features must be float (B, T, 1 + N, D) = (B, T, {want[0]}, {want[1]}) "
                             f"with T >= 1, got {got}")

    def windows(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, 1 + N, D) -> windows (B * ceil(T / F), F, 1 + N, D) (zero-padded), frame mask (same, F)
        bool."""
        B, T, L, D = features.shape
        pad = -T % self.num_frame
        if pad:
            features = torch.cat([features, features.new_zeros(B, pad, L, D)], dim=1)
        x = features.reshape(-1, self.num_frame, L, D)
        return x, x.flatten(2).abs().amax(-1) > 0

    # ---- the three relations and the heatmap
    def _features(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        # a window of nothing but padding (all-zero input) attends all its frames rather than none
        key_mask = mask | ~mask.any(1, keepdim=True)
        return self.attn_layer(x[:, :, 1:], key_mask), self.cls_encoder(x[:, :, 0])

    @staticmethod
    def _scores(f: Tensor, c: Tensor, mask: Tensor) -> Tensor:
        w = mask.to(f.dtype)[:, :, None, None]
        t_mean = (f * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp(min=1)
        cls = (c.unsqueeze(-2) - f).pow(2).mean(-1)
        time = (t_mean - f).pow(2).mean(-1)
        space = (f.mean(-2, keepdim=True) - f).pow(2).mean(-1)
        return cls + time + space

    def heatmap(self, score: Tensor) -> Tensor:
        """score (..., N) -> heatmap (..., H, 2H): sum_k score_k^2 basis_k, min-max normalised per map."""
        lead = score.shape[:-1]
        n, m = self.grid
        H, R = self.img_size, self.patch_size
        s = score.reshape(-1, n * m).pow(2)
        out = s[:, self.basis_gather] @ self.basis.to(s.dtype)  # (M, 2n, H R): [q, (r, c)] = column block q
        out = out.reshape(-1, m, H, R).permute(0, 2, 1, 3).reshape(-1, H * m * R)
        lo = out.amin(-1, keepdim=True)
        span = out.amax(-1, keepdim=True) - lo
        out = (out - lo) / torch.where(span > 0, span, torch.ones_like(span))
        return out.reshape(*lead, H, m * R)

    def decode(self, features: Tensor) -> dict[str, Tensor]:
        """features (B, T, 1 + N, D) -> {"score": (B, T, N), "heatmap": (B, T, H, 2H)}."""
        self.check_features(features)
        B, T = features.shape[:2]
        x, mask = self.windows(features)
        f, c = self._features(x, mask)
        score = self._scores(f, c, mask).reshape(B, -1, self.num_patches)[:, :T]
        return {"score": score, "heatmap": self.heatmap(score)}

    def forward(self, features: Tensor) -> Tensor:
        return self.decode(features)["heatmap"]

    # ---- losses
    def spatial_targets(self, f: Tensor) -> Tensor:
        """(..., N, C) -> the spatial-consistency target (no grad)."""
        f = f.detach()
        if self.spatial_target == "official":
            # einsum('BTNC,NN->BTNC', f, A) reads A's diagonal, which is zero
            return f * self.adjacency_diagonal.to(f.dtype)[:, None]
        return torch.matmul(self.adjacency.to(f.dtype), f)

    @staticmethod
    def temporal_targets(f: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """f (M, F, N, C), mask (M, F) -> (mean of the valid neighbours t - 1, t + 1 (no grad), (M, F) bool:
        frames that are valid and have a valid neighbour)."""
        f = f.detach()
        w = mask.to(f.dtype)
        wf = f * w[:, :, None, None]  # padded frames are no neighbours
        total = torch.zeros_like(f)
        total[:, 1:] = wf[:, :-1]
        total[:, :-1] += wf[:, 1:]
        count = torch.zeros_like(w)
        count[:, 1:] = w[:, :-1]
        count[:, :-1] += w[:, 1:]
        return total.div_(count.clamp(min=1)[:, :, None, None]), mask & (count > 0)

    def loss(self, features: Tensor) -> tuple[Tensor, dict[str, float]]:
        """features (B, T, 1 + N, D) -> (weighted scalar loss, {"loss_cls", "loss_spatial",
        "loss_temporal"})."""
        self.check_features(features)
        x, mask = self.windows(features.detach())
        f, c = self._features(x, mask)
        valid = mask.to(f.dtype)
        frames = valid.sum().clamp(min=1)
        per_frame_s = F.mse_loss(f, self.spatial_targets(f), reduction="none").mean((-2, -1))
        loss_s = (per_frame_s * valid).sum() / frames
        target_t, has_nb = self.temporal_targets(f, mask)
        w_t = has_nb.to(f.dtype)
        per_frame_t = F.mse_loss(f, target_t, reduction="none").mean((-2, -1))
        loss_t = (per_frame_t * w_t).sum() / w_t.sum().clamp(min=1)
        per_window = valid.sum(1, keepdim=True).clamp(min=1)  # S: valid frames of each window
        loss_c = ((c / per_window[..., None] - c).pow(2).mean(-1) * valid).sum() / frames
        total = self.lambda_cls * loss_c + self.lambda_spatial * loss_s + self.lambda_temporal * loss_t
        return total, {"loss_cls": float(loss_c.detach()), "loss_spatial": float(loss_s.detach()),
                       "loss_temporal": float(loss_t.detach())}

    def extra_repr(self) -> str:
        return (f"grid={self.grid}, num_frame={self.num_frame}, spatial_target={self.spatial_target!r}, "
                f"lambdas=({self.lambda_cls}, {self.lambda_spatial}, {self.lambda_temporal})")


# ------------------------------------------------------------------------------------------------ the model

class PAVER(nn.Module):
    """Frozen deformable ViT encoder + FusePAVER decoder (see the module docstring for shapes and choices)."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, decoder_heads: int = 8, num_frame: int = 5, sigma: float = 16.0,
                 offsets: str = "float", spatial_target: str = "neighbour",
                 lambdas: tuple[float, float, float] = (0.1, 0.5, 20.0),
                 encoder_checkpoint: Union[str, Path, None] = None, encode_chunk: int = 16,
                 decoder_checkpoint: Union[str, Path, None] = None):
        super().__init__()
        self.encoder = PAVEREncoder(img_size, patch_size, embed_dim, depth, num_heads, offsets)
        if encoder_checkpoint is not None:
            self.encoder.load_timm_weights(encoder_checkpoint)
        self.decoder = PAVERDecoder(img_size, patch_size, embed_dim, decoder_heads, num_frame, sigma,
                                    spatial_target, lambdas)
        if decoder_checkpoint is not None:
            self.load_decoder(decoder_checkpoint)
        self.img_size, self.num_frame, self.encode_chunk = img_size, num_frame, encode_chunk
        self.num_patches = self.decoder.num_patches
        self.default_input_size = self.decoder.default_input_size

    @staticmethod
    def preprocess(frames: Tensor) -> Tensor:
        """uint8 RGB frames (T, H, W, 3) or (B, T, H, W, 3) -> float32 (..., 3, H, W) = ((x / 255) - 0.5) /
        0.5, the normalisation of the augreg ViT weights PAVER uses."""
        if not isinstance(frames, Tensor) or frames.dtype != torch.uint8 or frames.dim() not in (4, 5) \
                or frames.shape[-1] != 3:
            got = (f"{frames.dtype} {tuple(frames.shape)}" if isinstance(frames, Tensor)
                   else type(frames).__name__)
            raise ValueError(f"PAVER.preprocess: expected uint8 frames (T, H, W, 3) or (B, T, H, W, 3), got "
                             f"{got}")
        return (frames.movedim(-1, -3).float() / 255 - 0.5) / 0.5

    @torch.no_grad()
    def encode(self, frames: Tensor) -> Tensor:
        """Normalised frames (B, T, 3, H, 2H) -> features (B, T, 1 + N, D), ``encode_chunk`` frames at a
        time."""
        if frames.dim() != 5:
            raise ValueError(f"PAVER.encode: expected frames (B, T, 3, H, 2H), got shape "
                             f"{tuple(frames.shape)}")
        B, T = frames.shape[:2]
        flat = frames.reshape(B * T, *frames.shape[2:])
        out = [self.encoder(chunk) for chunk in flat.split(self.encode_chunk)]
        return torch.cat(out).reshape(B, T, *out[0].shape[1:])

    def decode(self, features: Tensor) -> dict[str, Tensor]:
        return self.decoder.decode(features)

    def loss(self, features: Tensor) -> tuple[Tensor, dict[str, float]]:
        return self.decoder.loss(features)

    def forward(self, features: Tensor) -> Tensor:
        return self.decoder(features)

    def export_module(self) -> PAVERDecoder:
        return self.decoder

    def load_decoder(self, path: Union[str, Path]) -> None:
        """Loads decoder weights (strictly): a ``paver_decoder`` checkpoint of ``pvf train paver``, a full
        PAVER checkpoint (its ``decoder.*``) or an official decoder checkpoint (``cls_encoder.*``,
        ``attn_layer.*``); the encoder is left as it is."""
        from .weights import read_state_dict

        state = read_state_dict(path)
        if any(k.startswith("decoder.") for k in state):
            dec = {k[len("decoder."):]: v for k, v in state.items() if k.startswith("decoder.")}
        else:
            dec = {k[len("decoder."):]: v for k, v in self.adapt_state_dict(state).items()
                   if k.startswith("decoder.")}
        if not dec:
            raise ValueError(f"{path}: no PAVER decoder weights (cls_encoder.*, attn_layer.*) in it")
        try:
            self.decoder.load_state_dict(dec)
        except RuntimeError as exc:
            raise ValueError(f"{path} does not fit the PAVER decoder: {exc}") from exc

    def adapt_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Accepts this model's own state_dict, or an official PAVER decoder checkpoint (top-level
        ``cls_encoder.*``/``attn_layer.*``, moved under ``decoder.``; official buffers and unused parameters
        dropped), optionally beside timm ViT keys for the encoder (moved under ``encoder.``, adapted)."""
        if any(k.startswith(("encoder.", "decoder.")) for k in state):
            return state
        dropped = ("sph_basis", "spatial_weight", "adjacency_matrix", "temp_score_weight",
                   "spat_score_weight")
        dec = {f"decoder.{k}": v for k, v in state.items() if k.startswith(("cls_encoder.", "attn_layer."))}
        rest = {k: v for k, v in state.items() if not k.startswith(("cls_encoder.", "attn_layer.")) and
                k not in dropped}
        enc = {f"encoder.{k}": v for k, v in self.encoder.adapt_state_dict(rest).items()} if rest else {}
        return {**enc, **dec}


@register_model
def paver(img_size: int = 224, patch_size: int = 16, embed_dim: int = 768, depth: int = 12,
          num_heads: int = 12, decoder_heads: int = 8, num_frame: int = 5, sigma: float = 16.0,
          offsets: str = "float", spatial_target: str = "neighbour",
          encoder_checkpoint: Union[str, Path, None] = None,
          decoder_checkpoint: Union[str, Path, None] = None) -> PAVER:
    """PAVER (FusePAVER decoder on a frozen deformable ViT-B/16): 224 x 448 ERP frames, 14 x 28 patches,
    windows of 5 frames. Encoder 85.9M parameters (ViT-B/16 without head, pos_embed for 393 tokens), decoder
    8.27M. ``img_size`` is the ERP height (width 2H); the other arguments shrink it for tests.
    ``decoder_checkpoint`` loads trained decoder weights (``PAVER.load_decoder``)."""
    return PAVER(img_size, patch_size, embed_dim, depth, num_heads, decoder_heads, num_frame, sigma, offsets,
                 spatial_target, encoder_checkpoint=encoder_checkpoint,
                 decoder_checkpoint=decoder_checkpoint)


@register_model
def paver_decoder(img_size: int = 224, patch_size: int = 16, embed_dim: int = 768, decoder_heads: int = 8,
                  num_frame: int = 5, sigma: float = 16.0, spatial_target: str = "neighbour") -> PAVERDecoder:
    """PAVER's decoder alone, on cached features (B, T, 1 + N, D) from ``pvf extract paver``: what ``pvf train
    paver`` trains (8.27M parameters); ``create_model("paver", decoder_checkpoint=...)`` puts its weights
    behind the encoder. Arguments as ``paver``'s."""
    return PAVERDecoder(img_size, patch_size, embed_dim, decoder_heads, num_frame, sigma, spatial_target)
