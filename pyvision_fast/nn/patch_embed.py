"""ViT patch embedding and stochastic depth, with timm's parameter names."""
from __future__ import annotations

from torch import Tensor, nn
from torch.nn.modules.utils import _pair


class PatchEmbed(nn.Module):
    """Image to patch tokens with timm's ``PatchEmbed`` keys (``proj.weight``, ``proj.bias``).

    forward(x (B, in_chans, H, W)) -> (B, (H / p) (W / p), embed_dim), row-major patch order. H and W must be the
    configured ``img_size`` unless ``strict_img_size=False`` (then any multiple of the patch size)."""

    def __init__(self, img_size=224, patch_size=16, in_chans: int = 3, embed_dim: int = 768, bias: bool = True,
                 strict_img_size: bool = True):
        super().__init__()
        self.img_size, self.patch_size = _pair(img_size), _pair(patch_size)
        if any(s % p for s, p in zip(self.img_size, self.patch_size)):
            raise ValueError(f"PatchEmbed: img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.in_chans, self.strict_img_size = in_chans, strict_img_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"PatchEmbed: expected (B, {self.in_chans}, H, W), got {tuple(x.shape)}")
        H, W = x.shape[-2:]
        if self.strict_img_size and (H, W) != self.img_size:
            raise ValueError(f"PatchEmbed: input size {(H, W)} differs from the model's img_size {self.img_size}")
        if H % self.patch_size[0] or W % self.patch_size[1]:
            raise ValueError(f"PatchEmbed: input size {(H, W)} is not a multiple of patch_size {self.patch_size}")
        return self.proj(x).flatten(2).transpose(1, 2)


class DropPath(nn.Module):
    """Stochastic depth per sample (the residual branch is dropped for a whole sample with probability
    ``drop_prob`` and the kept ones scaled by 1 / (1 - drop_prob)); identity in eval mode."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"DropPath: drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"
