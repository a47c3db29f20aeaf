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


def mobilevit_layout_stages(
    stem_chs: int,
    channels: Sequence[int],
    conv_block: Callable[[int, int, int], nn.Module],
    global_blocks: Sequence[nn.Module],
) -> tuple[nn.Sequential, list[dict]]:
    """The five stages of MobileViT Table 4 (reused by XFormer, its Table 1) and their `feature_info`.

    Stage 1: one conv block; stage 2: three (the first with stride 2); stages 3-5: a stride-2 conv
    block then the stage's global block. `conv_block(in_chs, out_chs, stride)` builds MV2 or MV3.
    """
    c1, c2, *rest = channels
    stages = [
        nn.Sequential(conv_block(stem_chs, c1, 1)),
        nn.Sequential(conv_block(c1, c2, 2), conv_block(c2, c2, 1), conv_block(c2, c2, 1)),
    ]
    prev = c2
    for chs, block in zip(rest, global_blocks, strict=True):
        stages.append(nn.Sequential(conv_block(prev, chs, 2), block))
        prev = chs
    feature_info = [dict(num_chs=c, reduction=2 ** (i + 1), module=f"stages.{i}") for i, c in enumerate(channels)]
    return nn.Sequential(*stages), feature_info
