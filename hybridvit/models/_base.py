"""Pieces shared by model classes: timm's classifier API and MobileViT's five-stage layout."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn
from timm.layers import ClassifierHead


class ClassifierHeadMixin:
    """timm's classifier API for a model with `forward_features` and a timm `ClassifierHead` in `self.head`."""

    head: ClassifierHead
    num_classes: int

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


OUTPUT_STRIDES = (8, 16, 32)


def mobilevit_layout_stages(
    stem_chs: int,
    channels: Sequence[int],
    conv_block: Callable[..., nn.Module],
    global_blocks: Sequence[Callable[[int], nn.Module]],
    output_stride: int = 32,
) -> tuple[nn.Sequential, list[dict]]:
    """The five stages of MobileViT Table 4 (reused by XFormer, its Table 1) and their `feature_info`.

    Stage 1: one conv block; stage 2: three (the first with stride 2); stages 3-5: a stride-2 conv
    block then the stage's global block. `conv_block(in_chs, out_chs, stride, dilation=d)` builds MV2
    or MV3; `global_blocks[i](dilation=d)` builds the global block of stage 3 + i.

    `output_stride` 16 or 8 (timm's argument) dilates the last one or two stages instead of striding,
    by timm's byobnet rule, which is also ml-cvnets' (`dilate_l5` / `dilate_l4`): the stage's first
    conv block keeps the previous dilation (capped at 2), the blocks after it take the new one. One
    difference: ml-cvnets v0.1 leaves the MobileViT block's local 3x3 undilated; we dilate it, as timm.
    """
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
    if len(global_blocks) != len(channels) - 2:
        raise ValueError(f"{len(global_blocks)} global blocks for {len(channels) - 2} stages")
    # (in, out, stride of the first block, conv blocks after it) per stage
    stage_specs = [(stem_chs, channels[0], 1, 0), (channels[0], channels[1], 2, 2)]
    stage_specs += [(channels[i - 1], channels[i], 2, 0) for i in range(2, len(channels))]
    stages, feature_info = [], []
    net_stride, dilation = 2, 1  # after the stride-2 stem
    for index, (in_chs, out_chs, stride, extra_blocks) in enumerate(stage_specs):
        if net_stride >= output_stride and stride > 1:
            dilation, stride = dilation * stride, 1
        first_dilation = 1 if dilation in (1, 2) else 2
        net_stride *= stride
        blocks = [conv_block(in_chs, out_chs, stride, dilation=first_dilation)]
        blocks += [conv_block(out_chs, out_chs, 1, dilation=dilation) for _ in range(extra_blocks)]
        if index >= 2:
            blocks.append(global_blocks[index - 2](dilation=dilation))
        stages.append(nn.Sequential(*blocks))
        feature_info.append(dict(num_chs=out_chs, reduction=net_stride, module=f"stages.{index}"))
    return nn.Sequential(*stages), feature_info
