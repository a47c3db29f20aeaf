"""RetinaNet: MoCoViT's detector (the MoCoViT paper compares with GhostNet / MobileNetV3 under RetinaNet).

torchvision's RetinaNet (focal loss, anchors, post-processing) on an FPN over the backbone's stride
8/16/32 maps plus P6/P7, as in RetinaNet §4 (Lin et al., 2017).
"""
from __future__ import annotations

import os

import torch
from timm.models import get_pretrained_cfg
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator

from .backbone import FPNBackbone, create_feature_extractor

# torchvision's and mmdetection's COCO resize: shorter side 800, longer side at most 1333.
MAX_SIZE_RATIO = 1333 / 800


class ForegroundRetinaNet(RetinaNet):
    """torchvision's RetinaNet taking and returning labels 1..K.

    Its sigmoid head has one channel per foreground class, indexed from 0, so labels shift by one.
    """

    def forward(
        self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        if targets is not None:
            targets = [{**target, "labels": target["labels"] - 1} for target in targets]
        outputs = super().forward(images, targets)
        if self.training:
            return outputs
        return [{**detections, "labels": detections["labels"] + 1} for detections in outputs]


def create_retinanet(
    model_name: str,
    num_classes: int,
    image_size: int = 800,
    max_size: int | None = None,
    fpn_channels: int = 256,
    pretrained_path: str | os.PathLike | None = None,
    **detector_kwargs,
) -> ForegroundRetinaNet:
    """RetinaNet with `model_name` as backbone and `num_classes` foreground classes.

    Images keep their aspect ratio: the shorter side is resized to `image_size`, the longer one capped
    at `max_size` (default `image_size * 1333 / 800`, the COCO setting at 800).
    """
    backbone = FPNBackbone(create_feature_extractor(model_name, strides=(8, 16, 32), pretrained_path=pretrained_path),
                           fpn_channels)
    # Three backbone levels + P6, P7; anchors of 4x the level's stride at 3 scales (RetinaNet §4).
    strides = backbone.body.feature_info.reduction()
    strides += [strides[-1] * 2, strides[-1] * 4]
    anchors = AnchorGenerator(
        tuple(tuple(round(4 * s * 2 ** (k / 3)) for k in range(3)) for s in strides),
        ((0.5, 1.0, 2.0),) * len(strides),
    )
    preprocessing = get_pretrained_cfg(model_name)
    return ForegroundRetinaNet(
        backbone,
        num_classes,
        min_size=image_size,
        max_size=max_size or round(image_size * MAX_SIZE_RATIO),
        image_mean=list(preprocessing.mean),
        image_std=list(preprocessing.std),
        anchor_generator=anchors,
        **detector_kwargs,
    )
