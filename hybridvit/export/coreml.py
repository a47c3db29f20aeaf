"""Core ML conversion through coremltools (optional; not a dependency of hybridvit).

Uses the `torch.export` path: coremltools' `torch.jit.trace` path failed on MobileViT with
numpy 2.x (shared/GUIDE.md). Conversion only; running the model needs macOS. The ML program
computes in float16 by default. With coremltools 9.0 (Linux) MobileViT, XFormer, MoCoViT and CeiT
convert (tests/test_coreml.py; MoCoViT and CeiT through the two no-op converters registered below).
BOAT does not: at 64x64 coremltools' reshape converter rejects a zero-size tensor in its graph ("When
there is 0 in shape, the rank of x (1) must equal to the target shape len (4)"; not traced to its source).
"""
from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import torch

from .backends import require


def coreml_available() -> bool:
    return importlib.util.find_spec("coremltools") is not None


def _register_missing_converters() -> None:
    """Two ops coremltools 9.0 has no converter for, each converted only where it is a no-op:
    - `alias`, which torch.export leaves where a slice keeps every element (GhostNet's `cat(...)[:, :out_chs]`
      in MoCoViT); coremltools converts `alias_copy` as a no-op already.
    - `upsample_bicubic2d` to the size it already has: timm's `resample_abs_pos_embed` skips its same-size
      early-out while exporting, so CeiT's position embedding keeps one (an identity: bicubic weights 0, 1, 0, 0).
      Another size is refused with a clear error (Core ML has no bicubic resize)."""
    from coremltools.converters.mil.frontend.torch import ops
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY, register_torch_op

    if _TORCH_OPS_REGISTRY.get_func("alias") is None:
        register_torch_op(ops.noop, torch_alias=["alias"], override=True)
    if _TORCH_OPS_REGISTRY.get_func("upsample_bicubic2d") is None:
        register_torch_op(upsample_bicubic2d, torch_alias=["upsample_bicubic2d.vec"])


def upsample_bicubic2d(context, node) -> None:  # named as the torch op: coremltools registers by function name
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs

    from .api import ExportError

    x, size = _get_inputs(context, node)[:2]
    if size is None or size.val is None or tuple(x.shape[-2:]) != tuple(int(v) for v in size.val):
        raise ExportError(f"Core ML has no bicubic resize (of a {'x'.join(map(str, x.shape[-2:]))} map to another "
                          "size); export at a size that needs none")
    context.add(x, torch_name=node.name)


def _at_input_size(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """For a fixed-shape program: a copy whose position embedding is resampled once to `x`'s size
    (`set_input_size`, CeiT), if that leaves the outputs as they are; otherwise `model` itself."""
    if getattr(model, "pos_embed", None) is None or not hasattr(model, "set_input_size"):
        return model
    resized = copy.deepcopy(model)
    resized.set_input_size(tuple(x.shape[-2:]))
    with torch.inference_mode():
        same = torch.allclose(resized(x), model(x), rtol=0, atol=1e-6)
    return resized if same else model


def export_coreml(model: torch.nn.Module, x: torch.Tensor, path: Path) -> None:
    ct = require("coremltools", "Core ML export")
    _register_missing_converters()
    model = _at_input_size(model, x)

    program = torch.export.export(model, (x,)).run_decompositions({})
    mlmodel = ct.convert(
        program, inputs=[ct.TensorType(name="image", shape=tuple(x.shape))], outputs=[ct.TensorType(name="logits")],
        convert_to="mlprogram",
    )
    mlmodel.save(str(path))
