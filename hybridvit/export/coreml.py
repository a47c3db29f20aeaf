"""Core ML conversion through coremltools (optional; not a dependency of hybridvit).

Uses the `torch.export` path: coremltools' `torch.jit.trace` path failed on MobileViT with
numpy 2.x (shared/GUIDE.md). Conversion only; running the model needs macOS. Checked by hand with
coremltools 9.0 on Linux (hv_mobilevit_xxs, 256x256). The ML program computes in float16 by default.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from ..errors import HybridViTError


def coreml_available() -> bool:
    return importlib.util.find_spec("coremltools") is not None


def export_coreml(model: torch.nn.Module, x: torch.Tensor, path: Path) -> None:
    if not coreml_available():
        raise HybridViTError("Core ML export needs coremltools, which is not installed here (pip install coremltools)")
    import coremltools as ct

    program = torch.export.export(model, (x,)).run_decompositions({})
    mlmodel = ct.convert(
        program, inputs=[ct.TensorType(name="image", shape=tuple(x.shape))], convert_to="mlprogram"
    )
    mlmodel.save(str(path))
