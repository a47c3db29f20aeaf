"""Core ML conversion through coremltools (optional; not a dependency of hybridvit).

Uses the `torch.export` path: coremltools' `torch.jit.trace` path failed on MobileViT with
numpy 2.x (shared/GUIDE.md). Conversion only; running the model needs macOS. The ML program
computes in float16 by default. With coremltools 9.0 (Linux) MobileViT and XFormer convert
(tests/test_coreml.py); MoCoViT stops at an `alias` node and CeiT at `_upsample_bicubic2d_aa`
(its position-embedding resize), ops coremltools 9.0 has no converter for.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from .backends import require


def coreml_available() -> bool:
    return importlib.util.find_spec("coremltools") is not None


def export_coreml(model: torch.nn.Module, x: torch.Tensor, path: Path) -> None:
    ct = require("coremltools", "Core ML export")

    program = torch.export.export(model, (x,)).run_decompositions({})
    mlmodel = ct.convert(
        program, inputs=[ct.TensorType(name="image", shape=tuple(x.shape))], outputs=[ct.TensorType(name="logits")],
        convert_to="mlprogram",
    )
    mlmodel.save(str(path))
