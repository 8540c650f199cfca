"""Attention layers on ``pyvision_fast.ops.attention``: a timm-compatible ViT block attention, an in-place
patch for timm models, and a drop-in ``torch.nn.MultiheadAttention``."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import attention_dispatch
from ._checks import check_input


class FusedAttention(nn.Module):
    """Multi-head self-attention with the parameters (and state_dict keys) of timm's ViT ``Attention``:
    ``qkv.weight``, ``qkv.bias``, ``proj.weight``, ``proj.bias``.

    forward(x (B, N, dim), attn_mask=None, is_causal=False) -> (B, N, dim); ``attn_mask`` as in
    ``ops.attention`` (bool True = attend, or additive), broadcastable to (B, num_heads, N, N).

    The attention itself runs ``ops.attention``'s Triton kernels or torch's SDPA, whichever the first call of
    each shape measured faster on this GPU (``pyvision_fast.nn.attention_dispatch``;
    ``PVF_ATTENTION_DISPATCH=triton|sdpa`` forces one).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, proj_bias: bool = True):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"FusedAttention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None, is_causal: bool = False) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.qkv.in_features:
            raise ValueError(f"FusedAttention: expected x of shape (B, N, {self.qkv.in_features}), got "
                             f"{tuple(x.shape)}")
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = attention_dispatch.attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                         dropout_p=self.attn_drop.p if self.training else 0.0, scale=self.scale)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, C)))


def _is_plain_timm_attention(module: nn.Module) -> bool:
    """A timm ViT attention without per-head norms, output norm, gating or a different head width."""
    needed = ("qkv", "proj", "num_heads", "head_dim")
    if not all(hasattr(module, a) for a in needed) or not isinstance(module.qkv, nn.Linear):
        return False
    for name in ("q_norm", "k_norm", "norm"):
        if not isinstance(getattr(module, name, nn.Identity()), nn.Identity):
            return False
    if getattr(module, "gate", None) is not None:
        return False
    dim = module.qkv.in_features
    return module.num_heads * module.head_dim == dim and module.proj.out_features == dim and module.proj.in_features == dim


def patch_timm(model: nn.Module) -> int:
    """Replace, in place, every plain attention block of a timm ViT (``timm.models.vision_transformer.Attention``
    without qk-norm, gating or a custom head width) by ``FusedAttention`` with the same weights; returns how many
    were swapped. Blocks with features FusedAttention does not have are left as they are."""
    targets = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child).__name__ == "Attention" and _is_plain_timm_attention(child):
                targets.append((parent, name, child))
    for parent, name, old in targets:
        dim = old.qkv.in_features
        new = FusedAttention(dim, old.num_heads, qkv_bias=old.qkv.bias is not None,
                             attn_drop=getattr(old.attn_drop, "p", 0.0), proj_drop=getattr(old.proj_drop, "p", 0.0),
                             proj_bias=old.proj.bias is not None)
        new.scale = getattr(old, "scale", new.scale)
        new.load_state_dict(old.state_dict(), strict=False)
        new.to(device=old.qkv.weight.device, dtype=old.qkv.weight.dtype)
        new.train(old.training)
        setattr(parent, name, new)
    return len(targets)


class MultiheadAttention(nn.MultiheadAttention):
    """Drop-in ``torch.nn.MultiheadAttention`` (same constructor, parameters and state_dict) whose
    ``need_weights=False`` path runs fused attention: ``ops.attention``'s Triton kernels or torch's SDPA, whichever
    measured faster for the shape (see ``FusedAttention``).

    The fused path covers equal query/key/value widths without ``add_bias_kv`` / ``add_zero_attn``, both
    ``batch_first`` layouts, ``key_padding_mask`` and ``attn_mask`` (bool True = masked out, or additive, as in
    torch). Everything else (``need_weights=True``, the ``is_causal`` hint, other configurations) is torch's own
    implementation, so behaviour is identical everywhere.
    """

    def _fused_ok(self, need_weights: bool, is_causal: bool) -> bool:
        return (not need_weights and not is_causal and self._qkv_same_embed_dim and self.bias_k is None
                and not self.add_zero_attn)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor] = None,
                need_weights: bool = True, attn_mask: Optional[Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False):
        self._check_inputs(query, key, value)
        if not self._fused_ok(need_weights, is_causal):
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        L, B, E = query.shape
        S = key.shape[0]
        H, D = self.num_heads, E // self.num_heads
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)

        def heads(x, w, b, n):  # (n, B, E) -> (B, H, n, D)
            return F.linear(x, w, b).view(n, B, H, D).permute(1, 2, 0, 3)

        q, k, v = heads(query, w_q, b_q, L), heads(key, w_k, b_k, S), heads(value, w_v, b_v, S)
        mask = self._merged_mask(key_padding_mask, attn_mask, B, L, S, q.dtype)
        out = attention_dispatch.attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        out = out.permute(2, 0, 1, 3).reshape(L, B, E)
        out = F.linear(out, self.out_proj.weight, self.out_proj.bias)
        if not batched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        return out, None

    def _check_inputs(self, query: Tensor, key: Tensor, value: Tensor) -> None:
        """query (L, embed_dim) unbatched or (L, B, embed_dim) / (B, L, embed_dim); key and value of the same rank
        with kdim and vdim features."""
        if isinstance(query, Tensor) and query.dim() == 2:
            lead_q, lead_kv = ("L",), ("S",)
        else:  # batched; check_input names any other rank
            lead_q, lead_kv = (("B", "L"), ("B", "S")) if self.batch_first else (("L", "B"), ("S", "B"))
        check_input("MultiheadAttention", "query", query, (*lead_q, self.embed_dim))
        check_input("MultiheadAttention", "key", key, (*lead_kv, self.kdim))
        check_input("MultiheadAttention", "value", value, (*lead_kv, self.vdim))

    def _merged_mask(self, key_padding_mask: Optional[Tensor], attn_mask: Optional[Tensor], B: int, L: int,
                     S: int, dtype: torch.dtype) -> Optional[Tensor]:
        """torch's masks (bool True = masked out, or additive) as one ops.attention mask (bool True = attend,
        or additive), broadcastable to (B, H, L, S)."""
        parts = []
        if key_padding_mask is not None:
            parts.append(key_padding_mask.view(B, 1, 1, S))
        if attn_mask is not None:
            parts.append(attn_mask.view(1, 1, L, S) if attn_mask.dim() == 2 else attn_mask.view(B, self.num_heads, L, S))
        if not parts:
            return None
        if all(p.dtype == torch.bool for p in parts):
            allowed = ~parts[0]
            for p in parts[1:]:
                allowed = allowed & ~p
            return allowed
        additive = torch.zeros((), dtype=dtype, device=parts[0].device)
        for p in parts:
            additive = additive + (torch.zeros_like(p, dtype=dtype).masked_fill(p, float("-inf"))
                                   if p.dtype == torch.bool else p.to(dtype))
        return additive
