"""DeepLabv3: MobileViT's segmentation head (MobileViT §4.3, App. D).

Follows ml-cvnets `cvnets-v0.1` `config/segmentation/deeplabv3_mobilevit_*.yaml` with
`cvnets/models/segmentation/heads/deeplabv3.py` and `cvnets/modules/aspp_block.py`: ASPP on the
last backbone map (output stride 16: the backbone's last stage dilated instead of strided) with a
1x1 branch, three 3x3 branches at rates 6/12/18 and an image-pooling branch, each conv-BN-ReLU with
256 channels; a 1x1 conv-BN-ReLU projection of the five, dropout 0.1 (torchvision's ASPP hard-codes
0.5), then Dropout2d 0.1 and a 1x1 classifier with bias. The head uses ReLU (the config's
`model.segmentation.activation`); the backbone keeps its own activations.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import Conv2dNormActivation


class ASPPPooling(nn.Sequential):
    """Image-level branch: global average pool, 1x1 conv-BN-ReLU, bilinear upsampling to the input map."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), Conv2dNormActivation(in_channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(super().forward(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabv3 §3.3) with ml-cvnets' dropout after the projection."""

    def __init__(self, in_channels: int, out_channels: int, rates: Sequence[int], dropout: float) -> None:
        super().__init__()
        branches = [Conv2dNormActivation(in_channels, out_channels, 1)]
        branches += [Conv2dNormActivation(in_channels, out_channels, 3, dilation=r, padding=r) for r in rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = Conv2dNormActivation(len(branches) * out_channels, out_channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.project(torch.cat([conv(x) for conv in self.convs], dim=1)))


class DeepLabV3Head(nn.Module):
    """ASPP on the last feature map, then Dropout2d and a 1x1 classifier (logits at the map's stride)."""

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        aspp_rates: Sequence[int] = (6, 12, 18),
        aspp_channels: int = 256,
        aspp_dropout: float = 0.1,
        classifier_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels[-1], aspp_channels, aspp_rates, aspp_dropout)
        self.dropout = nn.Dropout2d(classifier_dropout)
        self.classifier = nn.Conv2d(aspp_channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.dropout(self.aspp(features[-1])))
