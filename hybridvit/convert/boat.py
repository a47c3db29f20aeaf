"""BOAT checkpoints of the reference repo (mahaoyuHKU/pytorch-boat, Dropbox weights) into hybridvit's layout.

BOAT-Swin: Microsoft Swin layout (patch merging at the end of stage i) -> timm layout (at the start of
stage i+1). BOAT-CSWin: `stage{s}.{j}` / `merge{s}` / `stage1_conv_embed` -> `stages.{s-1}.blocks.{j}` /
`stages.{s}.downsample` / `stem`. Block-internal names are the reference's in both.
"""
from __future__ import annotations

import re

import torch

from ._rename import RenameRule, rename_keys

_BUFFERS = ("relative_position_index", "attn_mask")  # recomputed by the model

_CSWIN_RULES: list[RenameRule] = [
    (r"^stage1_conv_embed\.0\.", "stem.proj."),
    (r"^stage1_conv_embed\.2\.", "stem.norm."),
    (r"^stage(\d)\.(\d+)\.", lambda m: f"stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}."),
    (r"^merge(\d)\.conv\.", r"stages.\1.downsample.proj."),
    (r"^merge(\d)\.norm\.", r"stages.\1.downsample.norm."),
    (r"^head\.", "head.fc."),
]


def is_reference_boat_swin(state_dict: dict[str, torch.Tensor]) -> bool:
    return "layers.0.downsample.reduction.weight" in state_dict and "layers.0.blocks.1.attnC.qkv.weight" in state_dict


def is_reference_boat_cswin(state_dict: dict[str, torch.Tensor]) -> bool:
    return "stage1_conv_embed.0.weight" in state_dict and "stage1.0.content_attn.qkv.weight" in state_dict


def boat_swin_from_reference(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a reference BOAT-Swin state dict (`ckpt['model']`) to ours."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith(_BUFFERS):
            continue
        key = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) + 1}.downsample.", key)
        out[re.sub(r"^head\.", "head.fc.", key)] = value
    return out


def boat_cswin_from_reference(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a reference BOAT-CSWin state dict (`state_dict_ema` or `state_dict`) to ours."""
    return rename_keys(state_dict, _CSWIN_RULES)
