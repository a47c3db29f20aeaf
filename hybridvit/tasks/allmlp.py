"""All-MLP decoder: XFormer's "simple all-MLP decoder" for Cityscapes (XFormer abstract), SegFormer's head.

Follows NVlabs/SegFormer `mmseg/models/decode_heads/segformer_head.py`: each of the four stages
(strides 4/8/16/32) is projected to `embed_dim` channels by a linear layer (here a 1x1 conv: the same
parameters and function on a map), upsampled bilinearly to the stride-4 map, concatenated deepest
first, fused by a 1x1 conv-BN-ReLU, then dropout 0.1 (mmseg's Dropout2d) and a 1x1 classifier.
XFormer gives no decoder width: `embed_dim=256` is SegFormer-B0's, the model XFormer compares with.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import Conv2dNormActivation


class AllMLPHead(nn.Module):
    """Per-stage linear projection, upsample to stride 4, concat, 1x1 fuse, dropout, 1x1 classifier."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, embed_dim: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.linear_c = nn.ModuleList(nn.Conv2d(c, embed_dim, 1) for c in in_channels)
        self.linear_fuse = Conv2dNormActivation(len(in_channels) * embed_dim, embed_dim, 1)
        self.dropout = nn.Dropout2d(dropout)
        self.linear_pred = nn.Conv2d(embed_dim, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        projected = [
            F.interpolate(proj(f), size=size, mode="bilinear", align_corners=False)
            for proj, f in zip(self.linear_c, features, strict=True)
        ]
        return self.linear_pred(self.dropout(self.linear_fuse(torch.cat(projected[::-1], dim=1))))
