"""Cross Feature Attention, XFA (Zhao et al., "Lightweight Vision Transformer with Cross Feature
Attention", arXiv 2207.07268, §3.1 "Efficient Attention"): softmax-free attention linear in tokens.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class XFA(nn.Module):
    """Cross Feature Attention (XFormer §3.1) on [B, N, C] tokens; cost O(N * qkv_dim), no N x N map.

    Per head h (head width d = qkv_dim / heads), with tokens x in R^{N x C}:

        Q, K, V = x W_q, x W_k, x W_v                     projections C -> qkv_dim
        Q^ = Q / ||Q||_2,  K^ = K / ||K||_2               L2 along the feature dimension, per token
        s_N = Q^ w_N + b_N             in R^{N x 1}       query-context score, one per token (1x1 conv d -> 1)
        c   = (1/N) s_N^T K^           in R^{1 x d}       score-weighted mean of the normalised keys
        s_D = c * w_D                  in R^{1 x d}       query-feature score, one per feature (diagonal kernel)
        Y_h = lambda_h * (1_N s_D) * V_h                  no softmax; lambda_h a learnable temperature
        out = [Y_1 .. Y_H] W_o                            projection qkv_dim -> C

    `context_mean=False` keeps the plain sum (as the spec's Reading A writes c). Init: w_N ~ N(0, 1),
    b_N = 1, w_D = 1, lambda = 1, so at init c is about the mean normalised key (like MobileViTv2's
    uniform context scores at init) and the branch is small, like MHSA's with the same projections.
    """

    # Reconstructed (spec §1.3 Reading A, paper equation not available): w_N/b_N/w_D shapes, the 1/N in c, 1 head.

    def __init__(
        self,
        dim: int,
        qkv_dim: int = 96,
        heads: int = 1,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        context_mean: bool = True,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if qkv_dim % heads:
            raise ValueError(f"qkv_dim {qkv_dim} is not divisible by heads {heads}")
        self.heads = heads
        self.head_dim = qkv_dim // heads
        self.context_mean = context_mean
        self.eps = eps
        self.qkv = nn.Linear(dim, 3 * qkv_dim, bias=qkv_bias)
        self.context_kernel = nn.Parameter(torch.randn(heads, self.head_dim))  # w_N, unit-variance entries
        self.context_bias = nn.Parameter(torch.ones(heads))  # b_N
        self.feature_kernel = nn.Parameter(torch.ones(heads, self.head_dim))  # w_D
        self.temperature = nn.Parameter(torch.ones(heads, 1))  # lambda; exclude from weight decay
        self.proj = nn.Linear(qkv_dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, hw: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """Tokens [B, N, C] -> [B, N, C]; the grid `hw` (mixer convention) is not needed."""
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, self.head_dim).unbind(2)  # each [B, N, h, d]
        q = F.normalize(q, dim=-1, eps=self.eps)
        k = F.normalize(k, dim=-1, eps=self.eps)
        context_score = torch.einsum("bnhd,hd->bnh", q, self.context_kernel) + self.context_bias  # s_N
        context = torch.einsum("bnh,bnhd->bhd", context_score, k)  # c: [B, h, d], O(N d)
        if self.context_mean:
            context = context / N
        feature_score = context * self.feature_kernel  # s_D: [B, h, d]
        y = (self.temperature * feature_score)[:, None] * v  # [B, N, h, d]
        return self.proj_drop(self.proj(y.reshape(B, N, self.heads * self.head_dim)))
