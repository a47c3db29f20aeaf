"""Object detection: torchvision RetinaNet on a hybridvit backbone with an FPN.

The papers use SSDLite (MobileViT, MoCoViT) or Mask R-CNN / RetinaNet (BOAT, CeiT); RetinaNet is the
one head here, chosen because torchvision ships it complete (losses, anchors, post-processing).
"""
from __future__ import annotations

import os

from timm.models import get_pretrained_cfg
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator

from .backbone import FPNBackbone, create_feature_extractor


def create_retinanet(
    model_name: str,
    num_classes: int,
    image_size: int = 320,
    fpn_channels: int = 128,
    pretrained_path: str | os.PathLike | None = None,
    **detector_kwargs,
) -> RetinaNet:
    """RetinaNet with `model_name` as backbone; images are resized to `image_size` (the SSDLite size)."""
    backbone = FPNBackbone(create_feature_extractor(model_name, pretrained_path=pretrained_path), fpn_channels)
    # Three backbone levels + P6, P7; anchors of 4x the level's stride at 3 scales (RetinaNet §4).
    strides = backbone.body.feature_info.reduction()
    strides += [strides[-1] * 2, strides[-1] * 4]
    anchors = AnchorGenerator(
        tuple(tuple(round(4 * s * 2 ** (k / 3)) for k in range(3)) for s in strides),
        ((0.5, 1.0, 2.0),) * len(strides),
    )
    preprocessing = get_pretrained_cfg(model_name)
    return RetinaNet(
        backbone,
        num_classes,
        min_size=image_size,
        max_size=image_size,
        image_mean=list(preprocessing.mean),
        image_std=list(preprocessing.std),
        anchor_generator=anchors,
        **detector_kwargs,
    )
