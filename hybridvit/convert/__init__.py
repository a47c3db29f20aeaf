"""Checkpoint converters from reference layouts, one module per family."""
from __future__ import annotations

import torch

from .boat import (
    boat_cswin_from_reference,
    boat_swin_from_reference,
    is_reference_boat_cswin,
    is_reference_boat_swin,
)
from .ceit import ceit_resize_pos_embed, is_ceit_state_dict
from .ghostnet import ghostnet_from_timm
from .mobilevit import is_cvnets_mobilevit, mobilevit_from_cvnets, mobilevit_from_timm


def convert_state_dict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return `state_dict` in `model`'s layout, converting any reference layout recognised."""
    own = model.state_dict()
    if is_ceit_state_dict(state_dict):
        return ceit_resize_pos_embed(state_dict, model)
    if set(state_dict) == set(own):
        return state_dict
    if is_cvnets_mobilevit(state_dict):
        return mobilevit_from_cvnets(state_dict)
    if is_reference_boat_swin(state_dict):
        return boat_swin_from_reference(state_dict)
    if is_reference_boat_cswin(state_dict):
        return boat_cswin_from_reference(state_dict)
    return state_dict


__all__ = [
    "boat_cswin_from_reference",
    "boat_swin_from_reference",
    "ceit_resize_pos_embed",
    "convert_state_dict",
    "ghostnet_from_timm",
    "mobilevit_from_cvnets",
    "mobilevit_from_timm",
]
