"""Inverted-residual blocks from the MobileNet family."""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import ConvNormAct, SEModule, make_divisible


class MV2Block(nn.Module):
    """MobileNetV2 inverted residual (Sandler et al. 2018), as used by MobileViT (§3, Fig. 1b).

    1x1 expand + BN + act, 3x3 depthwise (stride s) + BN + act, optional squeeze-excitation,
    1x1 project + BN (linear output); residual only when stride is 1 and channels are unchanged.
    `dilation` dilates the depthwise conv (dilated backbones for segmentation). Module names follow timm.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        expansion: float = 4.0,
        act_layer: type[nn.Module] = nn.SiLU,
        se_ratio: float = 0.0,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        mid_chs = make_divisible(round(in_chs * expansion), 8)
        self.has_residual = stride == 1 and in_chs == out_chs
        self.conv1_1x1 = ConvNormAct(in_chs, mid_chs, 1, act_layer=act_layer)
        self.conv2_kxk = ConvNormAct(
            mid_chs, mid_chs, 3, stride=stride, dilation=dilation, groups=mid_chs, act_layer=act_layer
        )
        self.se = SEModule(mid_chs, rd_ratio=se_ratio, act_layer=act_layer) if se_ratio else nn.Identity()
        self.conv3_1x1 = ConvNormAct(mid_chs, out_chs, 1, apply_act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3_1x1(self.se(self.conv2_kxk(self.conv1_1x1(x))))
        return x + out if self.has_residual else out


class MV3Block(MV2Block):
    """MobileNetV3 inverted residual with squeeze-excitation (Howard et al. 2019), as XFormer uses it (§3.2).

    The MV2 block plus SE after the depthwise conv (reduce to 1/4 of the expanded width, rounded to 8).
    XFormer uses SiLU everywhere outside the MLPs, so SE uses SiLU + sigmoid here (MobileNetV3 itself
    used ReLU + hard-sigmoid); the paper's SE activations are unverified (shared/specs/xformer.md §2).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        expansion: float = 4.0,
        se_ratio: float = 0.25,
        act_layer: type[nn.Module] = nn.SiLU,
        dilation: int = 1,
    ) -> None:
        super().__init__(in_chs, out_chs, stride, expansion, act_layer, se_ratio, dilation)
