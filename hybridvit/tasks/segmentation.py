"""Semantic segmentation: DeepLabv3 (ASPP) on a hybridvit backbone, as in MobileViT App. D."""
from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.segmentation.deeplabv3 import ASPP

from .backbone import create_feature_extractor


class DeepLabV3(nn.Module):
    """Backbone's last feature map -> ASPP (rates 6/12/18, 256 channels) -> 1x1 classifier -> upsample.

    MobileViT App. D uses these rates and widths; torchvision's ASPP applies dropout 0.5 after its
    projection where ml-cvnets uses 0.1.
    """

    def __init__(
        self,
        model_name: str,
        num_classes: int,
        aspp_rates: tuple[int, int, int] = (6, 12, 18),
        aspp_channels: int = 256,
        pretrained_path: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        self.backbone = create_feature_extractor(model_name, out_indices=(-1,), pretrained_path=pretrained_path)
        self.head = nn.Sequential(
            ASPP(self.backbone.feature_info.channels()[-1], list(aspp_rates), aspp_channels),
            nn.Conv2d(aspp_channels, num_classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.backbone(x)[0])
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
