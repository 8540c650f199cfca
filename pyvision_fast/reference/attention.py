"""Plain-PyTorch scaled dot-product attention, written out: the oracle for the attention kernels."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor


def attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor] = None, dropout_p: float = 0.0,
              is_causal: bool = False, scale: Optional[float] = None,
              dropout_mask: Optional[Tensor] = None) -> Tensor:
    """softmax(q k^T * scale + mask) v for (..., L, D) queries and (..., S, D) keys/values.

    Boolean masks mark the keys that may be attended (True), additive masks are added to the scores; causal
    masking is top-left aligned (query i sees keys j <= i). Rows with no allowed key give zeros, as in
    ``F.scaled_dot_product_attention``. Dropout uses ``dropout_mask`` (keep = True) when given, else
    ``torch.nn.functional.dropout``.
    """
    L, S, D = q.shape[-2], k.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    s = (q @ k.transpose(-2, -1)) * scale
    allowed = torch.ones(L, S, dtype=torch.bool, device=q.device)
    if is_causal:
        allowed = torch.tril(allowed)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        allowed = allowed & attn_mask
    elif attn_mask is not None:
        s = s + attn_mask
    s = s.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s, dim=-1)
    p = torch.where(torch.isnan(p), torch.zeros_like(p), p)  # rows without keys
    if dropout_p > 0:
        if dropout_mask is not None:
            p = p * dropout_mask / (1.0 - dropout_p)
        else:
            p = torch.nn.functional.dropout(p, dropout_p)
    return p @ v
