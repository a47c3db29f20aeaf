"""Core ML conversion (coremltools on Linux: conversion only, running needs macOS): the smallest model of
each family that converts, with the converted program's input and output shapes; BOAT does not (export/coreml.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

ct = pytest.importorskip("coremltools")  # importing it on Linux prints a harmless "Failed to load _MLModelAssetProxy"

from hybridvit.export import ExportError, export_model


@pytest.mark.parametrize("name", ["hv_mobilevit_xxs", "xformer_xxs", "mocovit_050", "ceit_tiny_patch16_224"])
def test_smallest_model_of_each_family_converts(name, tmp_path):
    """MoCoViT needs the `alias` no-op and CeiT the same-size bicubic no-op registered; CeiT at 64x64 also
    its position embedding resampled once (set_input_size), which leaves its outputs as they are."""
    result = export_model(name, "coreml", out=tmp_path / "m.mlpackage", res=64)
    assert result.path.is_dir() and result.input_shape == (1, 3, 64, 64)
    spec = ct.models.MLModel(str(result.path), skip_model_load=True).get_spec()
    assert [(i.name, list(i.type.multiArrayType.shape)) for i in spec.description.input] == [("image", [1, 3, 64, 64])]
    assert [(o.name, list(o.type.multiArrayType.shape)) for o in spec.description.output] == [("logits", [1, 1000])]


def test_bicubic_resize_to_another_size_is_refused_in_one_line(tmp_path):
    class Upsample(torch.nn.Module):
        def forward(self, x):
            return F.interpolate(x, scale_factor=2, mode="bicubic").flatten(1)

    with pytest.raises(ExportError, match=r"Core ML has no bicubic resize \(of a 8x8 map to another size\)"):
        export_model("upsample", "coreml", out=tmp_path / "u.mlpackage", res=8, model=Upsample())
