"""Semantic segmentation: the papers' heads around any registered backbone, behind `create_segmenter`.

Which paper uses which head: MobileViT DeepLabv3 (§4.3, PASCAL VOC), XFormer the all-MLP decoder
(Cityscapes), BOAT UperNet (ADE20K, CSWin's recipe). A segmenter maps a normalised image batch
[B, 3, H, W] to logits [B, num_classes, H, W] (bilinear upsampling of the head's output, as
ml-cvnets and mmseg do); `model(x, with_aux=True)` also returns the auxiliary head's logits (UperNet)
or None, for the training loss.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import FeatureListNet

from ..errors import UnknownHeadError, UnsupportedBackboneError
from .allmlp import AllMLPHead
from .backbone import create_feature_extractor
from .deeplabv3 import DeepLabV3Head
from .upernet import FCNHead, UperNetHead


@dataclass(frozen=True)
class HeadSpec:
    """How a head taps the backbone, and its paper's defaults."""

    build: Callable[..., nn.Module]
    strides: tuple[int, ...] | None  # backbone levels by output stride; None: the last level only
    output_stride: int = 32  # dilate the backbone to this stride (timm's `output_stride`)
    aux_level: int | None = None  # index into the tapped levels for the auxiliary FCN head
    aux_weight: float = 0.0
    paper_classes: int = 21  # classes of the paper's dataset (for `hybridvit bench HEAD:BACKBONE`)
    source: str = ""


SEGMENTATION_HEADS: dict[str, HeadSpec] = {
    "deeplabv3": HeadSpec(
        DeepLabV3Head, None, output_stride=16, paper_classes=21, source="MobileViT §4.3, ml-cvnets v0.1 deeplabv3"
    ),
    "allmlp": HeadSpec(
        AllMLPHead, (4, 8, 16, 32), paper_classes=19, source="XFormer abstract, NVlabs/SegFormer segformer_head.py"
    ),
    "upernet": HeadSpec(
        UperNetHead, (4, 8, 16, 32), aux_level=2, aux_weight=0.4, paper_classes=150,
        source="BOAT / CSWin upernet configs, mmseg UPerHead",
    ),
}


class Segmenter(nn.Module):
    """Backbone features -> head (-> optional auxiliary head) -> logits upsampled to the input size."""

    def __init__(
        self,
        backbone: FeatureListNet,
        head: nn.Module,
        aux_head: nn.Module | None = None,
        aux_level: int = 0,
        aux_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        self.aux_level = aux_level
        self.aux_weight = aux_weight
        self.num_classes = head_num_classes(head)

    def forward(self, x: torch.Tensor, with_aux: bool = False):
        features = self.backbone(x)
        logits = F.interpolate(self.head(features), size=x.shape[-2:], mode="bilinear", align_corners=False)
        if not with_aux:
            return logits
        aux = None
        if self.aux_head is not None:
            aux = self.aux_head(features[self.aux_level])
            aux = F.interpolate(aux, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits, aux

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters outside the backbone: those the papers' head learning-rate multiplier applies to."""
        backbone = {id(p) for p in self.backbone.parameters()}
        return [p for p in self.parameters() if id(p) not in backbone]


def head_num_classes(head: nn.Module) -> int:
    last_conv = [m for m in head.modules() if isinstance(m, nn.Conv2d)][-1]
    return last_conv.out_channels


def create_segmenter(
    head: str,
    backbone: str,
    num_classes: int,
    output_stride: int | None = None,
    pretrained_path: str | os.PathLike | None = None,
    aux: bool = True,
    backbone_kwargs: dict | None = None,
    **head_kwargs,
) -> Segmenter:
    """Segmentation `head` ('deeplabv3', 'allmlp', 'upernet') around the registered model `backbone`.

    `output_stride` overrides the head's (DeepLabv3: 16); `pretrained_path` loads classification
    weights into the backbone first; `aux=False` drops UperNet's auxiliary head; `head_kwargs` go to
    the head (e.g. `aspp_rates`, `embed_dim`, `channels`), `backbone_kwargs` to the backbone's constructor
    (e.g. `drop_path_rate`).
    """
    spec = SEGMENTATION_HEADS[UnknownHeadError.check("segmentation", head, SEGMENTATION_HEADS)]
    output_stride = output_stride or spec.output_stride
    model_kwargs = dict(backbone_kwargs or {})
    if output_stride != 32:
        model_kwargs["output_stride"] = output_stride
    try:
        if spec.strides is None:
            features = create_feature_extractor(backbone, out_indices=(-1,), pretrained_path=pretrained_path, **model_kwargs)
        else:
            features = create_feature_extractor(
                backbone, strides=spec.strides, pretrained_path=pretrained_path, **model_kwargs
            )
    except TypeError as err:
        if "output_stride" not in str(err):
            raise
        raise UnsupportedBackboneError(
            f"backbone '{backbone}' cannot be dilated to output stride {output_stride}; pass output_stride=32"
        ) from None
    channels = features.feature_info.channels()
    aux_head = None
    if aux and spec.aux_level is not None:
        aux_head = FCNHead(channels[spec.aux_level], num_classes)
    return Segmenter(
        features, spec.build(channels, num_classes, **head_kwargs), aux_head, spec.aux_level or 0, spec.aux_weight
    )


def segmenter_from_spec(spec: str) -> Segmenter | None:
    """`"HEAD:BACKBONE"` (e.g. `deeplabv3:hv_mobilevit_s`) -> that segmenter with its paper's class count
    (VOC 21, Cityscapes 19, ADE20K 150); None for a name without a segmentation head prefix."""
    head, sep, backbone = spec.partition(":")
    if not sep or head not in SEGMENTATION_HEADS:
        return None
    return create_segmenter(head, backbone, SEGMENTATION_HEADS[head].paper_classes)
