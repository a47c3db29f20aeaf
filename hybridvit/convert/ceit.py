"""CeiT checkpoints (official coeusguo/ceit layout = ours) into a model of any input size.

The state-dict keys are identical, so the only conversion is resampling `pos_embed` to the model's
token grid, e.g. a 224 checkpoint (14x14 grid, 197 rows) loaded into a 384 model (24x24, 577 rows).
The official `--finetune` path for this is broken (it reads `model.patch_embed`; spec ceit.md §9).
"""
from __future__ import annotations

import math

import torch
from timm.layers import resample_abs_pos_embed


def is_ceit_state_dict(state_dict: dict[str, torch.Tensor]) -> bool:
    return "pos_layer_embed" in state_dict or "i2t.backbone.conv.weight" in state_dict


def resample_pos_embed(posemb: torch.Tensor, new_grid: list[int], old_grid: list[int]) -> torch.Tensor:
    """`pos_embed` [1, 1 + h*w, D] resampled to `new_grid`, class row kept: the official resize.

    coeusguo/ceit main.py (`--finetune`, DeiT's code) uses plain bicubic `F.interpolate`
    (align_corners=False, no antialias). timm's `resample_abs_pos_embed` defaults to antialias=True,
    whose bicubic kernel differs (a = -0.5 against -0.75): 0.37 max-abs apart on a 14->24 upsample.
    """
    return resample_abs_pos_embed(posemb, new_grid, old_grid, num_prefix_tokens=1, antialias=False)


def ceit_resize_pos_embed(state_dict: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Return `state_dict` with `pos_embed` bicubically resampled to `model.pos_embed`'s grid (class row kept).

    The checkpoint's grid is taken as square (every official checkpoint is); the model's from `model.grid_size`.
    """
    out = dict(state_dict)
    posemb = out.get("pos_embed")
    target = getattr(model, "pos_embed", None)
    if posemb is None or target is None or posemb.shape == target.shape:
        return out
    side = math.isqrt(posemb.shape[1] - 1)
    out["pos_embed"] = resample_pos_embed(posemb, list(model.grid_size), [side, side])
    return out
