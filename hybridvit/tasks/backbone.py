"""hybridvit classifiers as multi-scale backbones for dense tasks."""
from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn as nn
from timm.models import FeatureListNet
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelP6P7

from ..errors import UnsupportedBackboneError


def create_feature_extractor(
    model_name: str,
    out_indices: tuple[int, ...] = (-3, -2, -1),
    pretrained_path: str | os.PathLike | None = None,
    strides: Sequence[int] | None = None,
    **kwargs,
) -> FeatureListNet:
    """Feature maps of `model_name` at the `feature_info` positions `out_indices` (negative: from the end).

    `strides` instead picks, for each output stride, the deepest level at that stride.
    Weights are loaded into the full classifier first by `hybridvit.checkpoint.load_pretrained` (the
    loader `train --init` uses), so classification checkpoints of any class count (ours, a run
    directory or a reference layout) initialise the backbone; the classifier itself is dropped.
    """
    from .. import create_model
    from ..checkpoint import load_pretrained

    model = create_model(model_name, **kwargs)
    if pretrained_path is not None:
        load_pretrained(model, pretrained_path)
    if strides is not None:
        out_indices = out_indices_for_strides(model_name, model.feature_info, strides)
    num_levels = len(model.feature_info)
    return FeatureListNet(model, out_indices=tuple(i % num_levels for i in out_indices), flatten_sequential=True)


def out_indices_for_strides(model_name: str, feature_info: list[dict], strides: Sequence[int]) -> tuple[int, ...]:
    """Index of the deepest `feature_info` level at each output stride; a clear error if one is missing."""
    reductions = [info["reduction"] for info in feature_info]
    missing = [s for s in strides if s not in reductions]
    if missing:
        raise UnsupportedBackboneError(
            f"backbone '{model_name}' has no features at stride {missing} (it has strides "
            f"{sorted(set(reductions))}); this head needs strides {list(strides)}"
        )
    return tuple(len(reductions) - 1 - reductions[::-1].index(s) for s in strides)


class FPNBackbone(nn.Module):
    """Backbone features -> torchvision FPN (+ P6/P7 by default), the input torchvision's detectors expect.

    Output names are "0", "1", ... for the backbone levels, then the extra blocks' names ("p6", "p7"
    or "pool"): the names torchvision's `MultiScaleRoIAlign` defaults to.
    """

    def __init__(
        self, features: FeatureListNet, out_channels: int = 128, extra_blocks: ExtraFPNBlock | None = None
    ) -> None:
        super().__init__()
        self.body = features
        self.fpn = FeaturePyramidNetwork(
            features.feature_info.channels(),
            out_channels,
            extra_blocks=LastLevelP6P7(out_channels, out_channels) if extra_blocks is None else extra_blocks,
        )
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))
