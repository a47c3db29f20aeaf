"""hybridvit: lightweight hybrid CNN-ViT image models (MobileViT, XFormer, BOAT, CeiT, MoCoViT).

Importing the package registers every model with timm, so `timm.create_model("hv_mobilevit_s")`
and `features_only=True` work too.
"""
from __future__ import annotations

import os

import timm
import torch

from . import models
from .checkpoint import load_pretrained, load_weights, read_state_dict, save_weights
from .errors import CheckpointError, HybridViTError, InputShapeError, UnknownModelError
from .models import check_model_name, list_models, paper_entry

__version__ = "0.1.0"


def create_model(name: str, pretrained_path: str | os.PathLike | None = None, **kwargs) -> torch.nn.Module:
    """Create a registered hybridvit model; load weights from `pretrained_path` if given.

    Checkpoints in a reference layout (timm, ml-cvnets, official repos) are converted on load.
    """
    check_model_name(name)
    model = timm.create_model(name, **kwargs)
    if pretrained_path is not None:
        load_checkpoint(model, pretrained_path)
    return model


def load_checkpoint(model: torch.nn.Module, path: str | os.PathLike, strict: bool = True) -> None:
    """Load weights into `model`, converting known reference layouts on the way."""
    from .convert import convert_state_dict

    load_weights(model, path, converter=lambda sd: convert_state_dict(model, sd), strict=strict)


__all__ = [
    "CheckpointError",
    "HybridViTError",
    "InputShapeError",
    "UnknownModelError",
    "create_model",
    "list_models",
    "load_checkpoint",
    "load_pretrained",
    "paper_entry",
    "read_state_dict",
    "save_weights",
]
