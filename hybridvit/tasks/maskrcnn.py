"""Mask R-CNN: MoCoViT's instance-segmentation detector, torchvision's Mask R-CNN on an FPN over the backbone.

As in Mask R-CNN with FPN (He et al., 2017; FPN §4.1): FPN levels P2-P5 from the backbone's stride
4/8/16/32 maps plus a max-pooled P6 for the RPN, one anchor size (8x the level's stride) and three
aspect ratios per level, RoIAlign over P2-P5 (7x7 boxes, 14x14 masks).
"""
from __future__ import annotations

import os

from timm.models import get_pretrained_cfg
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from .backbone import FPNBackbone, create_feature_extractor
from .retinanet import MAX_SIZE_RATIO


def create_maskrcnn(
    model_name: str,
    num_classes: int,
    image_size: int = 800,
    max_size: int | None = None,
    fpn_channels: int = 256,
    box_representation_size: int = 1024,
    mask_head_channels: int = 256,
    pretrained_path: str | os.PathLike | None = None,
    **detector_kwargs,
) -> MaskRCNN:
    """Mask R-CNN with `model_name` as backbone and `num_classes` foreground classes.

    Targets carry `masks` (uint8 [N, H, W]) besides boxes and labels; outputs add `masks` [N, 1, H, W].
    Images are resized as in `create_retinanet`. `box_representation_size` is the width of the box
    head's two fc layers, `mask_head_channels` that of the mask head's four 3x3 convs and its
    deconv (defaults: the paper's 1024 and 256). `detector_kwargs` go to torchvision's `MaskRCNN`.
    """
    features = create_feature_extractor(model_name, strides=(4, 8, 16, 32), pretrained_path=pretrained_path)
    backbone = FPNBackbone(features, fpn_channels, extra_blocks=LastLevelMaxPool())
    # The anchor generator needs one size tuple per FPN output (P2-P6), RoIAlign the P2-P5 names.
    strides = features.feature_info.reduction()
    strides.append(strides[-1] * 2)
    anchors = AnchorGenerator(tuple((8 * s,) for s in strides), ((0.5, 1.0, 2.0),) * len(strides))
    level_names = [str(i) for i in range(len(strides) - 1)]
    preprocessing = get_pretrained_cfg(model_name)
    classes = num_classes + 1  # + background
    return MaskRCNN(
        backbone,
        None,  # the class count is in the predictors below
        min_size=image_size,
        max_size=max_size or round(image_size * MAX_SIZE_RATIO),
        image_mean=list(preprocessing.mean),
        image_std=list(preprocessing.std),
        rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(level_names, output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(fpn_channels * 7 * 7, box_representation_size),
        box_predictor=FastRCNNPredictor(box_representation_size, classes),
        mask_roi_pool=MultiScaleRoIAlign(level_names, output_size=14, sampling_ratio=2),
        mask_head=MaskRCNNHeads(fpn_channels, [mask_head_channels] * 4, 1),
        mask_predictor=MaskRCNNPredictor(mask_head_channels, mask_head_channels, classes),
        **detector_kwargs,
    )
