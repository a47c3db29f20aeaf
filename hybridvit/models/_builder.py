"""Model construction through timm's `build_model_with_cfg`, so `features_only=True` works."""
from __future__ import annotations

import contextlib
from typing import Any

import torch
from timm.layers import register_notrace_function
from timm.models import build_model_with_cfg

from ..errors import InputShapeError


def build(
    model_cls: type,
    variant: str,
    pretrained: bool = False,
    feature_cfg: dict[str, Any] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **kwargs: Any,
) -> torch.nn.Module:
    """Build `variant` of `model_cls`; stage modules named in `feature_info` become feature outputs
    (unless `feature_cfg` says otherwise). `device` / `dtype` are timm's factory arguments
    (`create_model(name, device="meta")`): tensors are created there and then cast.
    """
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = build_model_with_cfg(
            model_cls, variant, pretrained, feature_cfg=feature_cfg or dict(flatten_sequential=True), **kwargs
        )
    return model if dtype is None else model.to(dtype=dtype)


@register_notrace_function  # a leaf under FX (timm's tracer, timm's test_models): shape branches can't trace
def check_image_batch(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    """`x` if it is [B, in_chans, H, W], else an error that names the problem (scriptable).

    Returning `x` keeps the check in an FX graph: torchvision's feature extractor drops unused nodes.
    """
    if x.ndim != 4:
        raise InputShapeError(f"expected a 4-D image batch [B, {in_chans}, H, W], got shape {list(x.shape)}")
    if x.shape[1] != in_chans:
        raise InputShapeError(f"expected {in_chans} input channels, got {x.shape[1]} (input shape {list(x.shape)})")
    return x
