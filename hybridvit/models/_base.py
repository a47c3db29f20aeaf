"""Pieces shared by model classes: timm's classifier API and MobileViT's five-stage layout."""

from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
from timm.layers import ClassifierHead, get_device_dtype
from timm.models import checkpoint_seq
from timm.models._features import feature_take_indices

from ..errors import UnsupportedOptionError
from ._builder import check_image_batch


def check_output_fmt(output_fmt: str, supported: Sequence[str] = ("NCHW",)) -> None:
    """Reject a `forward_intermediates` output format the model cannot produce."""
    if output_fmt not in supported:
        raise UnsupportedOptionError(f"output_fmt must be one of {list(supported)}, got '{output_fmt}'")


def new_classifier(model: nn.Module, in_features: int, num_classes: int) -> nn.Module:
    """A fresh linear classifier (Identity for 0 classes) on the model's device and dtype and in its train/eval
    mode, as timm's `reset_classifier` makes one."""
    if num_classes <= 0:
        return nn.Identity()
    return nn.Linear(in_features, num_classes, **get_device_dtype(model)).train(model.training)


class ClassifierHeadMixin:
    """timm's classifier API for a model with `forward_features` and a timm `ClassifierHead` in `self.head`.

    (No class-level annotations: under `from __future__ import annotations` they defeat `torch.jit.script`.)
    """

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool, **get_device_dtype(self))  # the head may have no tensors left

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


class IntermediatesMixin:
    """timm's `forward_intermediates`, `prune_intermediate_layers` and `set_grad_checkpointing`, written once.

    Both timm methods resolve timm's `indices` (None: every level; an int n: the last n; negative counts
    from the end) over `_num_taps()` feature levels with timm's `feature_take_indices`, then call the
    family's `_forward_intermediates(x, take_indices, stop_index, norm, output_fmt, intermediates_only)`
    (`stop_index`: the last level to run under `stop_early`, else None; the loop is `run_stages`) or
    `_prune(max_index, prune_norm, prune_head)`. `intermediate_fmts` lists the output formats a family gives.
    """

    intermediate_fmts = ("NCHW",)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Feature maps of the levels in `indices` and, unless `intermediates_only`, `forward_features(x)`."""
        check_output_fmt(output_fmt, self.intermediate_fmts)
        take_indices, max_index = feature_take_indices(self._num_taps(), indices)
        stop_index = max_index if stop_early else None
        return self._forward_intermediates(x, take_indices, stop_index, norm, output_fmt, intermediates_only)

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop what runs after the last level in `indices` (and the head if `prune_head`); `features_only` uses it."""
        take_indices, max_index = feature_take_indices(self._num_taps(), indices)
        self._prune(max_index, prune_norm, prune_head)
        return take_indices


def run_stages(
    stages: Sequence[nn.Module],
    x: torch.Tensor,
    taps: Sequence[int],
    stop_index: int | None,
    run: Callable[[nn.Module, torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The loop of `forward_intermediates`: `x = run(stage, x)` for each stage in turn, stopping after
    `stop_index` (timm's `stop_early`) unless it is None; returns the last `x` and the outputs of the stages
    whose index is in `taps`."""
    intermediates = []
    for i, stage in enumerate(stages):
        x = run(stage, x)
        if i in taps:
            intermediates.append(x)
        if i == stop_index:
            break
    return x, intermediates


class MobileViTLayoutMixin(IntermediatesMixin, ClassifierHeadMixin):
    """timm's model contract for the `stem` / `stages` (five) / `final_conv` / `head` layout of MobileViT and XFormer
    (the class sets `in_chans`, `feature_info` and `grad_checkpointing = False`).

    Follows timm's ByobNet (which timm's `mobilevit_*` are): `group_matcher` by stage and block,
    `set_grad_checkpointing` (every block of every stage recomputed in backward), `forward_intermediates`
    over the five stage outputs of `feature_info` and `prune_intermediate_layers` (`IntermediatesMixin`).
    """

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^stem",
            blocks=[(r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)", None), (r"^final_conv", (99999,))],
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = check_image_batch(x, self.in_chans)
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stages, x, flatten=True)
        else:
            x = self.stages(x)
        return self.final_conv(x)

    def _num_taps(self) -> int:
        return len(self.stages)

    def _run_stage(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return checkpoint_seq(stage, x) if self.grad_checkpointing else stage(x)

    def _forward_intermediates(
        self, x: torch.Tensor, take_indices: list[int], stop_index: int | None, norm: bool, output_fmt: str,
        intermediates_only: bool,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        # The five stage outputs (strides 2..32); `norm` has nothing to apply: no norm sits between the stages.
        x = self.stem(check_image_batch(x, self.in_chans))
        x, intermediates = run_stages(self.stages, x, take_indices, stop_index, self._run_stage)
        if intermediates_only:
            return intermediates
        if stop_index in (None, len(self.stages) - 1):
            x = self.final_conv(x)
        return x, intermediates

    def _prune(self, max_index: int, prune_norm: bool, prune_head: bool) -> None:
        """Keep the stages through `max_index`; with them cut (or the head pruned), `final_conv` and the head go."""
        if max_index + 1 < len(self.stages) or prune_head:
            self.stages = self.stages[: max_index + 1]
            self.final_conv = nn.Identity()
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head:
            self.reset_classifier(0, "")
