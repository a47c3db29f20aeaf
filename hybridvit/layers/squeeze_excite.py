"""Squeeze-and-Excitation with a hard-sigmoid gate, as GhostNet (§3.2) and MoCoViT's MoFFN use it."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import make_divisible


class SqueezeExcite(nn.Module):
    """SE (Hu et al.): GAP -> 1x1 conv (reduce) -> ReLU -> 1x1 conv (expand) -> hard-sigmoid gate.

    The reduced width is rounded to a multiple of 4 and the gate is hard-sigmoid, as in GhostNet's
    reference code; module names equal timm's GhostNet SE so its weights load unchanged.
    """

    def __init__(self, channels: int, rd_ratio: float = 0.25, divisor: int = 4) -> None:
        super().__init__()
        rd_channels = make_divisible(channels * rd_ratio, divisor)
        self.conv_reduce = nn.Conv2d(channels, rd_channels, 1, bias=True)
        self.act1 = nn.ReLU(inplace=True)
        self.conv_expand = nn.Conv2d(rd_channels, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.conv_expand(self.act1(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * F.hardsigmoid(scale)
