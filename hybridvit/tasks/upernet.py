"""UperNet: BOAT's segmentation head (BOAT-CSWin inherits CSWin's ADE20K UperNet recipe).

Follows mmsegmentation's `UPerHead` (`mmseg/models/decode_heads/uper_head.py`, UperNet §3) as CSWin's
`segmentation/configs/upernet_cswin_*.py` configure it: a pyramid pooling module on the last stage
(average pools to 1/2/3/6 bins, 1x1 conv-BN-ReLU each, upsampled, concatenated with the stage,
3x3 conv-BN-ReLU), an FPN over the other stages (1x1 lateral, top-down bilinear sum, 3x3 conv-BN-ReLU),
every level upsampled to stride 4 and fused by a 3x3 conv-BN-ReLU, all with 512 channels; Dropout2d
0.1 and a 1x1 classifier. The auxiliary FCN head (`FCNHead`, one 3x3 conv-BN-ReLU with 256 channels,
Dropout2d 0.1, 1x1 classifier) reads stage 3 and its loss is weighted 0.4 in training.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import Conv2dNormActivation


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling module as UPerHead uses it: the input and its pooled branches, fused by a 3x3 conv."""

    def __init__(self, in_channels: int, channels: int, pool_scales: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), Conv2dNormActivation(in_channels, channels, 1)) for s in pool_scales
        )
        self.bottleneck = Conv2dNormActivation(in_channels + len(pool_scales) * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [_resize(branch(x), x.shape[-2:]) for branch in self.branches]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))


class UperNetHead(nn.Module):
    """PPM on the last stage + FPN over all stages, fused at the first stage's stride, then the classifier."""

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.ppm = PyramidPooling(in_channels[-1], channels, pool_scales)
        self.lateral_convs = nn.ModuleList(Conv2dNormActivation(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(Conv2dNormActivation(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = Conv2dNormActivation(len(in_channels) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features)] + [self.ppm(features[-1])]
        for i in range(len(laterals) - 1, 0, -1):  # top-down path
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)] + [laterals[-1]]
        size = outs[0].shape[-2:]
        fused = self.fpn_bottleneck(torch.cat([outs[0]] + [_resize(o, size) for o in outs[1:]], dim=1))
        return self.classifier(self.dropout(fused))


class FCNHead(nn.Module):
    """mmseg's auxiliary `FCNHead` (num_convs=1, no input concat): 3x3 conv-BN-ReLU, Dropout2d, 1x1 classifier."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.conv = Conv2dNormActivation(in_channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.conv(x)))
