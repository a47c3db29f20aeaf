"""Mobile Self-Attention, MoSA (Ma et al., "MoCoViT", arXiv 2205.12635, §3.1, Fig. 2)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ghost import GhostModule


class MoSA(nn.Module):
    """MoSA on [B, C, H, W] maps, attending over the N = H*W positions.

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        v = self.ghost_v(x)
        tokens = v.reshape(B, self.num_heads, self.head_dim, H * W).transpose(-1, -2)  # [B, h, N, d]
        y = F.scaled_dot_product_attention(tokens, tokens, tokens, dropout_p=self.attn_drop if self.training else 0.0)
        y = y.transpose(-1, -2).reshape(B, C, H, W)
        return self.ghost_o(y + self.bn_dw(self.conv_dw(v)))
