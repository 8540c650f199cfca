"""ArcFace's additive angular margin (Deng et al., CVPR 2019) and the plain softmax classifier, as the
classification heads of face-recognition training.

ArcFace: with normalised embeddings x and class centres W_j, cos(theta_j) = <x, W_j> / (|x| |W_j|); the target
column y becomes cos(theta_y + m) and all logits are multiplied by s (64 and 0.5 in the paper).
cos(theta + m) is not monotonic once theta + m > pi, so, as insightface does:

* default: where theta_y + m > pi (cos(theta_y) <= cos(pi - m)) the target logit is cos(theta_y) - m sin(m)
  instead (a linear continuation, still penalising the target);
* ``easy_margin=True``: the margin is applied only where cos(theta_y) > 0, elsewhere cos(theta_y) is kept.

Plain functions compute the logits; :class:`MarginHead` holds the class centres (the fully-connected layer of
insightface's ``PartialFC`` without sampling) and gives the cross-entropy loss.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MarginHead", "arcface_logits", "cosine_logits"]


def cosine_logits(embeddings: Tensor, weight: Tensor) -> Tensor:
    """cos(theta): embeddings (B, D), class centres (N, D) -> (B, N) in [-1, 1], float32 or the inputs' dtype
    if wider."""
    dtype = torch.promote_types(embeddings.dtype, torch.float32)
    cos = F.linear(F.normalize(embeddings.to(dtype), dim=1), F.normalize(weight.to(dtype), dim=1))
    return cos.clamp(-1.0, 1.0)


def arcface_logits(cos: Tensor, labels: Tensor, s: float = 64.0, m: float = 0.5, easy_margin: bool = False
                   ) -> Tensor:
    """ArcFace logits from cosines: cos (B, N) float, labels (B,) int64 in [0, N) -> s * cos with the target
    column replaced by cos(theta_y + m) (or its continuation beyond pi, see the module docstring); (B, N)."""
    if cos.dim() != 2 or labels.shape != cos.shape[:1]:
        raise ValueError(f"arcface_logits: cos must be (B, N) and labels (B,), got {tuple(cos.shape)} and "
                         f"{tuple(labels.shape)}")
    if not 0.0 <= m < math.pi / 2:
        raise ValueError(f"arcface_logits: margin m must be in [0, pi/2), got {m}")
    idx = labels.long().unsqueeze(1)
    target = cos.gather(1, idx)
    sin = (1.0 - target * target).clamp_min(0.0).sqrt()
    with_margin = target * math.cos(m) - sin * math.sin(m)  # cos(theta + m)
    if easy_margin:
        new = torch.where(target > 0, with_margin, target)
    else:
        new = torch.where(target > math.cos(math.pi - m), with_margin, target - math.sin(math.pi - m) * m)
    return cos.scatter(1, idx, new) * s


class MarginHead(nn.Module):
    """Classification head for embedding training.

    Args:
        embed_dim: D, the embedding size (512).
        num_classes: N identities.
        kind: ``"arcface"`` (cosine logits with the additive angular margin, scale s) or ``"softmax"`` (a
            plain ``nn.Linear`` with bias, the softmax-CE baseline).
        s, m, easy_margin: ArcFace's scale, margin and the handling of theta + m > pi (module docstring).

    Parameters: ``weight`` (N, D) (normal, std 0.01, as insightface), ``bias`` (N,) for ``softmax`` only.
    forward(embeddings (B, D), labels (B,) int64) -> logits (B, N) float32 (the margin needs the labels);
    ``loss(embeddings, labels)`` -> scalar cross-entropy of those logits.
    """

    def __init__(self, embed_dim: int, num_classes: int, kind: str = "arcface", s: float = 64.0,
                 m: float = 0.5, easy_margin: bool = False):
        super().__init__()
        if kind not in ("arcface", "softmax"):
            raise ValueError(f"MarginHead: kind must be 'arcface' or 'softmax', got {kind!r}")
        if num_classes < 1 or embed_dim < 1:
            raise ValueError(f"MarginHead: need num_classes >= 1 and embed_dim >= 1, got {num_classes}, "
                             f"{embed_dim}")
        self.kind, self.s, self.m, self.easy_margin = kind, float(s), float(m), bool(easy_margin)
        self.embed_dim, self.num_classes = embed_dim, num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, embed_dim).normal_(0.0, 0.01))
        self.bias = nn.Parameter(torch.zeros(num_classes)) if kind == "softmax" else None

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embed_dim:
            raise ValueError(f"MarginHead: embeddings must be (B, {self.embed_dim}), got "
                             f"{tuple(embeddings.shape)}")
        if self.kind == "softmax":
            return F.linear(embeddings.float(), self.weight.float(), self.bias.float())
        cos = cosine_logits(embeddings, self.weight)
        return arcface_logits(cos, labels, self.s, self.m, self.easy_margin)

    def loss(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(self(embeddings, labels), labels)

    def extra_repr(self) -> str:
        extra = f", s={self.s}, m={self.m}, easy_margin={self.easy_margin}" if self.kind == "arcface" else ""
        return f"{self.embed_dim}, {self.num_classes}, kind={self.kind!r}{extra}"
