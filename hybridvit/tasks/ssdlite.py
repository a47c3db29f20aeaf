"""SSDLite: MobileViT's detector (MobileViT §4.2), on torchvision's SSD machinery.

Follows ml-cvnets `cvnets-v0.1` `config/detection/ssd_mobilevit_*_320.yaml` and
`cvnets/models/detection/ssd.py` + `cvnets/modules/ssd.py`:
- 320x320 input; feature maps at output strides 16 and 32 from the backbone (its final 1x1 conv and
  classifier dropped), then separable-conv extra layers down to strides 64/128/256 and a global level
  (average pool + 1x1 conv);
- per level a head: 1x1 projection (conv-BN-ReLU) to 512/256/256/128/128/64 channels where that changes
  the width, then one separable conv predicting boxes and class logits together;
- default boxes with aspect ratios [2, 3] x 5 + [2], scales linspace(0.1, 1.05, levels + 1), the extra
  box sqrt(s_k s_k+1), clipped to [0, 1] (torchvision's DefaultBoxGenerator with these scales passed
  explicitly: its own defaults differ);
- SSD matching at IoU 0.5, smooth-L1 + cross-entropy with 3:1 hard-negative mining, box variances
  0.1 / 0.2, NMS at IoU 0.5: torchvision's `SSD` implements exactly these.
The extra layers and heads use ReLU (the config's `model.activation`), the backbone keeps its own.
Initialisation is ml-cvnets' xavier_uniform everywhere; `class_prior` instead starts the predictors
the Focal Loss way (§3.3): weights N(0, 0.01), class scores at foreground probability `class_prior`.
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn
from timm.models import get_pretrained_cfg
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.ops import Conv2dNormActivation

from .backbone import create_feature_extractor

GLOBAL_LEVEL = -1  # the output stride ml-cvnets gives the globally pooled level


def separable_conv(in_channels: int, out_channels: int, stride: int = 1, predictor: bool = False) -> nn.Sequential:
    """ml-cvnets `SeparableConv`: 3x3 depthwise conv-BN, then 1x1 pointwise conv-BN-ReLU (a predictor: conv + bias)."""
    depthwise = Conv2dNormActivation(in_channels, in_channels, 3, stride, groups=in_channels, activation_layer=None)
    if predictor:
        pointwise = nn.Conv2d(in_channels, out_channels, 1)
    else:
        pointwise = Conv2dNormActivation(in_channels, out_channels, 1, activation_layer=nn.ReLU)
    return nn.Sequential(depthwise, pointwise)


def _xavier_init(module: nn.Module) -> None:
    # ml-cvnets initialises the SSD extra layers and heads with xavier_uniform (`reset_layers`).
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class SSDLiteBackbone(nn.Module):
    """Backbone maps at strides <= 32, then stride-2 separable-conv extra layers and the global level."""

    def __init__(self, model_name: str, output_strides: tuple[int, ...], extra_channels: tuple[int, ...], **kwargs):
        super().__init__()
        backbone_strides = [s for s in output_strides if s != GLOBAL_LEVEL and s <= 32]
        self.body = create_feature_extractor(model_name, strides=backbone_strides, **kwargs)
        in_channels = self.body.feature_info.channels()[-1]
        self.out_channels = list(self.body.feature_info.channels())
        extra = []
        for stride, channels in zip(output_strides[len(backbone_strides):], extra_channels[len(backbone_strides):]):
            if stride == GLOBAL_LEVEL:
                # ml-cvnets: AdaptiveAvgPool2d(1) + ConvLayer(1x1, no norm, no bias, with activation).
                layer = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, channels, 1, bias=False), nn.ReLU())
            else:
                layer = separable_conv(in_channels, channels, stride=2)
            extra.append(layer)
            self.out_channels.append(channels)
            in_channels = channels
        self.extra = nn.ModuleList(extra)
        _xavier_init(self.extra)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body(x)
        y = features[-1]
        for layer in self.extra:
            y = layer(y)
            features.append(y)
        return OrderedDict((str(i), f) for i, f in enumerate(features))


class SSDLiteHead(nn.Module):
    """ml-cvnets `SSDHead` per level: optional 1x1 projection, then one conv predicting boxes and logits.

    Returns torchvision SSD's head outputs: `bbox_regression` [N, anchors, 4], `cls_logits` [N, anchors, C].
    """

    def __init__(
        self,
        in_channels: list[int],
        proj_channels: list[int],
        num_anchors: list[int],
        num_classes: int,
        global_level: list[bool],
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        levels = []
        for chs, proj, anchors, is_global in zip(in_channels, proj_channels, num_anchors, global_level):
            outputs = anchors * (4 + num_classes)
            if is_global:  # a 1x1 map: a 1x1 conv with bias, no projection
                levels.append(nn.Conv2d(chs, outputs, 1))
                continue
            project = [] if proj == chs else [Conv2dNormActivation(chs, proj, 1, activation_layer=nn.ReLU)]
            levels.append(nn.Sequential(*project, separable_conv(proj, outputs, predictor=True)))
        self.levels = nn.ModuleList(levels)
        _xavier_init(self)

    def init_class_prior(self, prior: float) -> None:
        """Predictors N(0, 0.01) with zero box offsets and softmax foreground probability `prior` per anchor.

        Focal Loss §3.3's prior initialisation, for a softmax with a background class: background bias
        b = log((C - 1)(1 - prior) / prior), every other logit 0. Without it the xavier-initialised scores
        start far from the background-dominated answer and short runs spend most steps getting back to it.
        """
        for level in self.levels:
            predictor = level if isinstance(level, nn.Conv2d) else level[-1][-1]
            nn.init.normal_(predictor.weight, std=0.01)
            bias = predictor.bias.data.view(-1, 4 + self.num_classes)
            bias.zero_()
            bias[:, 4] = math.log((self.num_classes - 1) * (1 - prior) / prior)

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = []
        for feature, level in zip(features, self.levels):
            y = level(feature)  # [N, A * (4 + C), H, W], anchors location-major like DefaultBoxGenerator
            outputs.append(y.permute(0, 2, 3, 1).reshape(y.shape[0], -1, 4 + self.num_classes))
        boxes, logits = torch.cat(outputs, dim=1).split([4, self.num_classes], dim=-1)
        return {"bbox_regression": boxes, "cls_logits": logits}


def create_ssdlite(
    model_name: str,
    num_classes: int,
    image_size: int = 320,
    output_strides: tuple[int, ...] = (16, 32, 64, 128, 256, GLOBAL_LEVEL),
    proj_channels: tuple[int, ...] = (512, 256, 256, 128, 128, 64),
    aspect_ratios: tuple[tuple[int, ...], ...] = ((2, 3),) * 5 + ((2,),),
    min_scale: float = 0.1,
    max_scale: float = 1.05,
    pretrained_path: str | os.PathLike | None = None,
    class_prior: float | None = None,
    **detector_kwargs,
) -> SSD:
    """SSDLite with `model_name` as backbone; `num_classes` foreground classes, images resized to `image_size`.

    `class_prior` (e.g. 0.01) replaces the predictors' xavier initialisation by the Focal Loss prior one
    (`SSDLiteHead.init_class_prior`). `detector_kwargs` go to torchvision's `SSD` (score_thresh,
    nms_thresh, detections_per_img, ...).
    """
    backbone = SSDLiteBackbone(model_name, output_strides, proj_channels, pretrained_path=pretrained_path)
    scales = np.linspace(min_scale, max_scale, len(output_strides) + 1).tolist()
    anchors = DefaultBoxGenerator([list(a) for a in aspect_ratios], scales=scales, clip=True)
    head = SSDLiteHead(
        backbone.out_channels,
        list(proj_channels),
        anchors.num_anchors_per_location(),
        num_classes + 1,  # + background
        [s == GLOBAL_LEVEL for s in output_strides],
    )
    if class_prior is not None:
        head.init_class_prior(class_prior)
    preprocessing = get_pretrained_cfg(model_name)
    detector_kwargs = {"nms_thresh": 0.5, "iou_thresh": 0.5, "positive_fraction": 0.25} | detector_kwargs
    return SSD(
        backbone,
        anchors,
        (image_size, image_size),
        num_classes + 1,
        image_mean=list(preprocessing.mean),
        image_std=list(preprocessing.std),
        head=head,
        **detector_kwargs,
    )
