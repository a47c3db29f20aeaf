"""LCA, Layer-wise Class-token Attention (CeiT, Yuan et al. ICCV 2021, §3.4, Fig. 4).

The class tokens of all L encoder layers, stacked to [B, L, D], go through one pre-norm transformer
block in which only the last layer's class token queries all L tokens: O(L) instead of O(L^2).
The result equals the last row of full self-attention over the L tokens, which is how the official
code computes it; module names (`attn.qkv`, `attn.proj`, `feedforward.fc1/fc2`) follow that code.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp

from .attention import MultiHeadSelfAttention


class LCAAttention(MultiHeadSelfAttention):
    """Multi-head attention with one query (the last token) over all tokens: [B, L, D] -> [B, 1, D].

    The parameters are standard MHSA's: rows [0:D] of `qkv` give q (applied to the last token only),
    rows [D:3D] give k and v (applied to all tokens).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        bias = self.qkv.bias
        q = F.linear(x[:, -1:], self.qkv.weight[:D], None if bias is None else bias[:D])
        kv = F.linear(x, self.qkv.weight[D:], None if bias is None else bias[D:])
        q = q.reshape(B, 1, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = kv.reshape(B, L, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, 1, D)))


class LCA(nn.Module):
    """LCA block: y = t_L + Attn(LN1(T)), out = y + MLP(LN2(y)); [B, L, D] -> [B, D] (no drop path)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
        drop: float = 0.0,
        attn_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = LCAAttention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.norm2 = norm_layer(dim)
        self.feedforward = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)

    def forward(self, class_tokens: torch.Tensor) -> torch.Tensor:
        x = class_tokens[:, -1:] + self.attn(self.norm1(class_tokens))
        x = x + self.feedforward(self.norm2(x))
        return x[:, 0]
