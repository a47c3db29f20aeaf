"""FSLA, feature-space local attention of BOAT (Yu et al., BMVC 2022, arXiv 2201.13027, §3.2, Eq. 2).

Tokens are grouped by balanced hierarchical clustering of their queries (per image and head), attention
runs inside each group of `group_size` queries over `group_size + overlap` keys, outputs go back to image
order, then the reference's depthwise-conv term on V (LePE-style) is added and projected
(mahaoyuHKU/pytorch-boat `ContentAttention`, spec shared/specs/boat.md §2).

Any number of tokens N (a deviation: the reference needs N = 49 * 2**L): L = `cluster_levels(N, 49)` splits
give groups of floor or ceil of N / 2**L real tokens (25 to 49), padded with zero tokens to one size; the
padding is never attended to (masked keys) and its outputs are dropped (docs/boat.md, "Input sizes").
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

from ..errors import InputShapeError
from .clustering import (
    balanced_hierarchical_clustering,
    cluster_levels,
    overlapping_key_index,
    padded_leaf_slots,
)


@register_notrace_module  # an FX leaf: clustering depth and group sizes follow the token count
class FSLA(nn.Module):
    """Feature-space local attention on [B, H, W, C] maps (groups of `group_size` where H*W = group_size * 2**L).

    `scale=None` means head_dim**-0.5 (BOAT-Swin); BOAT-CSWin's reference passes 1.0 (spec §3).
    `reference_batch_pairing`: with a single group of `group_size` tokens (e.g. BOAT-CSWin stage 4 at 224) the
    reference treats the batch as the group axis, so image 2j borrows `overlap` keys from image 2j+1 and vice
    versa (spec §2 step 6, §7 quirk 2); off by default so images stay independent, on to reproduce the
    released weights. Other single-group sizes crash in the reference; here they keep images independent.
    """

    # Read by `hybridvit.export` to refuse `--dynamic`: a traced graph fixes the clustering depth.
    static_shape_reason = (
        "BOAT's FSLA clusters N tokens in ceil(log2(N / 49)) levels, one sort each, and pads groups by a plan "
        "computed from N, so a traced graph holds one token count per stage; export each size with --res"
    )

    def __init__(
        self,
        dim: int,
        num_heads: int,
        group_size: int = 49,
        overlap: int = 20,
        iters: int = 2,
        temperature: float = 100.0,
        scale: Optional[float] = None,
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
        return self.forward_map(x)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """FSLA on a [B, H, W, C] map (a method of its own: subclasses call it, TorchScript has no super())."""
        B, H, W, C = x.shape
        N, m, h, d = H * W, self.group_size, self.num_heads, self.head_dim
        qkv = self.qkv(x)  # [B, H, W, 3C], channels (q|k|v, head, d)
        if N == m and self.reference_batch_pairing:
            if B % 2:
                raise InputShapeError(f"reference_batch_pairing needs an even batch, got {B}")
            out = self._grouped_attention(qkv.reshape(B // 2, 2 * N, 3, h, d), levels=0, groups=2)
        else:
            levels = cluster_levels(N, m)
            out = self._grouped_attention(qkv.reshape(B, N, 3, h, d), levels, 1 << levels)
        lepe = self.get_v(qkv[..., 2 * C :].permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.proj_drop(self.proj(out.reshape(B, H, W, C) + lepe))

    def _grouped_attention(self, qkv: torch.Tensor, levels: int, groups: int) -> torch.Tensor:
        """Cluster the queries of qkv [B, N, 3, h, d] into `groups` groups per (image, head), attend inside
        each group, return [B, N, h, d] in input order. Tokens move as rows of `rows` (index_select)."""
        B, N, _, h, d = qkv.shape
        dev = qkv.device
        perm, inv = balanced_hierarchical_clustering(qkv[:, :, 0].transpose(1, 2), levels, self.iters, self.temperature)
        M = perm.shape[-1]  # slots: N real tokens, then padding (zero tokens, masked as keys)
        m = M // groups
        key_mask: Optional[torch.Tensor] = None
        if M > N:
            qkv = F.pad(qkv, (0, 0, 0, 0, 0, 0, 0, M - N))
        rows = qkv.reshape(-1, d)
        batch, head = torch.arange(B, device=dev).view(B, 1, 1), torch.arange(h, device=dev).view(1, h, 1)
        q_rows = (batch * M + perm.view(B, h, M)) * 3 * h + head  # row of q for each clustered token
        overlap = self.overlap if groups > 1 else 0
        key_pos = overlapping_key_index(groups, m, overlap, dev)
        pads = padded_leaf_slots(N, levels, dev)  # None where nothing is padded
        if pads is not None:
            key_mask = ~pads[key_pos].view(1, groups, 1, m + overlap)
        k_rows = q_rows.gather(-1, key_pos.flatten().expand(B, h, -1)) + h
        out = F.scaled_dot_product_attention(
            rows.index_select(0, q_rows.flatten()).view(B * h, groups, m, d),
            rows.index_select(0, k_rows.flatten()).view(B * h, groups, m + overlap, d),
            rows.index_select(0, (k_rows + h).flatten()).view(B * h, groups, m + overlap, d),
            attn_mask=key_mask,
            dropout_p=self.attn_drop if self.training else 0.0,
            scale=self.scale,
        )  # rows ordered (image, head, clustered token)
        back = (batch * h + head) * M + inv.view(B, h, M)[..., :N]  # row of each real token's output, [B, h, N]
        return out.reshape(-1, d).index_select(0, back.transpose(1, 2).flatten()).view(B, N, h, d)
