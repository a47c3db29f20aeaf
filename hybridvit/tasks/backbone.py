"""hybridvit classifiers as multi-scale backbones for dense tasks."""
from __future__ import annotations

import os
from collections import OrderedDict

import torch
import torch.nn as nn
from timm.models import FeatureListNet
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7


def create_feature_extractor(
    model_name: str,
    out_indices: tuple[int, ...] = (-3, -2, -1),
    pretrained_path: str | os.PathLike | None = None,
    **kwargs,
) -> FeatureListNet:
    """Feature maps of `model_name` at the `feature_info` positions `out_indices` (negative: from the end).

    Weights are loaded into the full classifier first, so classification checkpoints (ours or a
    reference layout) initialise the backbone.
    """
    from .. import create_model

    model = create_model(model_name, pretrained_path=pretrained_path, **kwargs)
    num_levels = len(model.feature_info)
    return FeatureListNet(model, out_indices=tuple(i % num_levels for i in out_indices), flatten_sequential=True)


class FPNBackbone(nn.Module):
    """Backbone features -> torchvision FPN (+ P6/P7), the input torchvision's detectors expect."""

    def __init__(self, features: FeatureListNet, out_channels: int = 128) -> None:
        super().__init__()
        self.body = features
        self.fpn = FeaturePyramidNetwork(
            features.feature_info.channels(), out_channels, extra_blocks=LastLevelP6P7(out_channels, out_channels)
        )
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))
