"""Ghost module and Ghost bottleneck (Han et al., "GhostNet: More Features from Cheap Operations",
CVPR 2020, arXiv 1911.11907, §3.1 Eq. 2-3 and §3.2 Fig. 3).

Module names equal timm's `ghostnet` (`primary_conv`, `cheap_operation`, `ghost1`, `conv_dw`, `se`,
`ghost2`, `shortcut`), so timm GhostNet state dicts load without renaming.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn

from .squeeze_excite import SqueezeExcite

ActFactory = Callable[[int], nn.Module]
"""Builds the activation for a given channel count (the count matters for DyReLU)."""


def relu(channels: int) -> nn.Module:
    """ActFactory for a plain (in-place) ReLU."""
    return nn.ReLU(inplace=True)


def _act_or_identity(act_layer: ActFactory | None, channels: int) -> nn.Module:
    return nn.Identity() if act_layer is None else act_layer(channels)


class GhostModule(nn.Module):
    """Ghost module (GhostNet §3.1, Eq. 2-3): a 1x1 conv makes ceil(out/s) intrinsic maps, a cheap
    depthwise `dw_size` conv makes (s-1) ghost maps from each, both with BN (+ activation), and the
    concatenation is cut to `out_chs`. `act_layer=None` gives the linear variant (BN only).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        act_layer: ActFactory | None = relu,
        ratio: int = 2,
        dw_size: int = 3,
    ) -> None:
        super().__init__()
        self.out_chs = out_chs
        init_chs = math.ceil(out_chs / ratio)
        ghost_chs = init_chs * (ratio - 1)
        self.primary_conv = nn.Sequential(
            nn.Conv2d(in_chs, init_chs, 1, bias=False),
            nn.BatchNorm2d(init_chs),
            _act_or_identity(act_layer, init_chs),
        )
        self.cheap_operation = nn.Sequential(
            nn.Conv2d(init_chs, ghost_chs, dw_size, padding=dw_size // 2, groups=init_chs, bias=False),
            nn.BatchNorm2d(ghost_chs),
            _act_or_identity(act_layer, ghost_chs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        intrinsic = self.primary_conv(x)
        ghosts = self.cheap_operation(intrinsic)
        return torch.cat((intrinsic, ghosts), dim=1)[:, : self.out_chs]


class GhostBottleneck(nn.Module):
    """Ghost bottleneck (GhostNet §3.2, Fig. 3): Ghost module (activation) -> [depthwise conv + BN
    when strided] -> [SE] -> Ghost module (linear), plus a shortcut (identity, or depthwise + 1x1 conv
    with BN when the shape changes).
    """

    def __init__(
        self,
        in_chs: int,
        mid_chs: int,
        out_chs: int,
        dw_kernel_size: int = 3,
        stride: int = 1,
        se_ratio: float = 0.0,
        act_layer: ActFactory = relu,
    ) -> None:
        super().__init__()
        self.ghost1 = GhostModule(in_chs, mid_chs, act_layer)
        if stride > 1:
            self.conv_dw = nn.Conv2d(
                mid_chs, mid_chs, dw_kernel_size, stride, padding=dw_kernel_size // 2, groups=mid_chs, bias=False
            )
            self.bn_dw = nn.BatchNorm2d(mid_chs)
        else:
            self.conv_dw = self.bn_dw = None
        self.se = SqueezeExcite(mid_chs, se_ratio) if se_ratio > 0 else None
        self.ghost2 = GhostModule(mid_chs, out_chs, act_layer=None)
        if in_chs == out_chs and stride == 1:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(
                    in_chs, in_chs, dw_kernel_size, stride, padding=dw_kernel_size // 2, groups=in_chs, bias=False
                ),
                nn.BatchNorm2d(in_chs),
                nn.Conv2d(in_chs, out_chs, 1, bias=False),
                nn.BatchNorm2d(out_chs),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.ghost1(x)
        if self.conv_dw is not None:
            out = self.bn_dw(self.conv_dw(out))
        if self.se is not None:
            out = self.se(out)
        return self.ghost2(out) + self.shortcut(x)
