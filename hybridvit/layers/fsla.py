"""FSLA, feature-space local attention of BOAT (Yu et al., BMVC 2022, arXiv 2201.13027, §3.2, Eq. 2).

Tokens are grouped by balanced hierarchical clustering of their queries (per image and head), attention
runs inside each group of `group_size` queries over `group_size + overlap` keys, outputs go back to image
order, then the reference's depthwise-conv term on V (LePE-style) is added and projected
(mahaoyuHKU/pytorch-boat `ContentAttention`, spec shared/specs/boat.md §2).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InputShapeError
from .clustering import balanced_hierarchical_clustering, cluster_levels, overlapping_key_index


class FSLA(nn.Module):
    """Feature-space local attention on [B, H, W, C] maps with H*W == group_size * 2**L tokens.

    `scale=None` means head_dim**-0.5 (BOAT-Swin); BOAT-CSWin's reference passes 1.0 (spec §3).
    `reference_batch_pairing`: with a single group (e.g. BOAT-CSWin stage 4 at 224) the reference treats the
    batch as the group axis, so image 2j borrows `overlap` keys from image 2j+1 and vice versa (spec §2
    step 6, §7 quirk 2); off by default so images stay independent, on to reproduce the released weights.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        group_size: int = 49,
        overlap: int = 20,
        iters: int = 2,
        temperature: float = 100.0,
        scale: float | None = None,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        reference_batch_pairing: bool = False,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if not 0 <= overlap < group_size:
            raise ValueError(f"overlap must be in [0, group_size={group_size}), got {overlap}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.group_size = group_size
        self.overlap = overlap
        self.iters = iters
        self.temperature = temperature
        self.scale = scale
        self.attn_drop = attn_drop
        self.reference_batch_pairing = reference_batch_pairing
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.get_v = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)  # depthwise term on V
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        N, m, h, d = H * W, self.group_size, self.num_heads, self.head_dim
        levels = cluster_levels(N, m)
        if levels is None:
            raise InputShapeError(
                f"FSLA needs group_size * 2**L tokens ({m}, {2 * m}, {4 * m}, ...), got {H}x{W} = {N}"
            )
        qkv = self.qkv(x).reshape(B, N, 3, h, d).permute(2, 0, 3, 1, 4)  # [3, B, h, N, d]
        v = qkv[2]
        if levels == 0 and self.reference_batch_pairing:
            if B % 2:
                raise InputShapeError(f"reference_batch_pairing needs an even batch, got {B}")
            pairs = qkv.view(3, B // 2, 2, h, N, d).transpose(2, 3).reshape(3, B // 2, h, 2 * N, d)
            out = self._grouped_attention(pairs, levels=0, groups=2)
            out = out.view(B // 2, h, 2, N, d).transpose(1, 2).reshape(B, h, N, d)
        else:
            out = self._grouped_attention(qkv, levels, 2**levels)
        out = out.transpose(1, 2).reshape(B, H, W, C)
        lepe = self.get_v(v.transpose(-1, -2).reshape(B, C, H, W)).permute(0, 2, 3, 1)
        return self.proj_drop(self.proj(out + lepe))

    def _grouped_attention(self, qkv: torch.Tensor, levels: int, groups: int) -> torch.Tensor:
        """Cluster q [B, h, N, d] into `groups` groups, attend inside each, return outputs in input order."""
        _, B, h, N, d = qkv.shape
        m = N // groups
        q = qkv[0]
        perm, inv = balanced_hierarchical_clustering(q.reshape(B * h, N, d), levels, self.iters, self.temperature)
        perm, inv = perm.view(B, h, N), inv.view(B, h, N)
        overlap = self.overlap if groups > 1 else 0
        key_pos = overlapping_key_index(groups, m, overlap, q.device).flatten()
        kv_idx = perm.gather(-1, key_pos.expand(B, h, -1))  # [B, h, groups * (m + overlap)]
        kv = qkv[1:].gather(3, kv_idx[None, ..., None].expand(2, B, h, -1, d))
        q = q.gather(2, perm.unsqueeze(-1).expand(B, h, N, d))
        out = F.scaled_dot_product_attention(
            q.reshape(B * h, groups, m, d),
            kv[0].reshape(B * h, groups, m + overlap, d),
            kv[1].reshape(B * h, groups, m + overlap, d),
            dropout_p=self.attn_drop if self.training else 0.0,
            scale=self.scale,
        )
        return out.reshape(B, h, N, d).gather(2, inv.unsqueeze(-1).expand(B, h, N, d))
