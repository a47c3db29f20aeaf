"""Mobile Self-Attention, MoSA (Ma et al., "MoCoViT", arXiv 2205.12635, §3.1, Fig. 2)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ghost import GhostModule


class MoSA(nn.Module):
    """MoSA on tokens [B, N, C] lying on an H x W grid (`hw`, mixer convention), attending over the N = H*W
    positions; its Ghost modules and depthwise branch are convs on that grid (a view of the tokens).

    V = Ghost_v(X) (a Ghost module instead of a linear layer); Branch Sharing reuses V as query and
    key (Q = K = V, no f^q/f^k weights); Y = softmax(V V^T / sqrt(d)) V per head; a depthwise conv + BN
    on V ("enhancement" branch) is added; a second Ghost module is the output projection.
    """

    def __init__(self, dim: int, num_heads: int = 1, dw_size: int = 3, attn_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"MoSA: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_drop = attn_drop
        # Reconstructed from Fig. 2 (spec mocovit.md §1): linear Ghosts, softmax, d^-0.5 scale, h = 1, DW 3x3 + BN.
        self.ghost_v = GhostModule(dim, dim, act_layer=None)
        self.conv_dw = nn.Conv2d(dim, dim, dw_size, padding=dw_size // 2, groups=dim, bias=False)
        self.bn_dw = nn.BatchNorm2d(dim)
        self.ghost_o = GhostModule(dim, dim, act_layer=None)

    def forward(self, x: torch.Tensor, hw: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        if hw is None:
            raise ValueError("MoSA needs the tokens' H x W grid")
        B, N, C = x.shape
        H, W = hw
        v = self.ghost_v(x.transpose(1, 2).reshape(B, C, H, W))
        tokens = v.reshape(B, self.num_heads, self.head_dim, H * W).transpose(-1, -2)  # [B, h, N, d]
        y = F.scaled_dot_product_attention(tokens, tokens, tokens, dropout_p=self.attn_drop if self.training else 0.0)
        y = y.transpose(-1, -2).reshape(B, C, H, W)
        return self.ghost_o(y + self.bn_dw(self.conv_dw(v))).flatten(2).transpose(1, 2)
