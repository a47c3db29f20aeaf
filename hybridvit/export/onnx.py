"""ONNX export with the dynamo exporter (`torch.onnx.export(..., dynamo=True)`), checked with onnxruntime.

The batch dimension is always dynamic. Height and width are dynamic only when asked for and when
the graph verifies at another resolution: torch.export bakes Python shape branches (e.g. MobileViT
resizes a feature map only when its side is odd) into the graph, which then fails or is silently
wrong at sizes that take the other branch. Every claim is checked with onnxruntime at a batch size
(and resolution) other than the exported one.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import HybridViTError

INPUT_NAME, OUTPUT_NAME = "image", "logits"


def export_onnx(
    model: torch.nn.Module, x: torch.Tensor, path: Path, dynamic_hw: bool, optimize: bool = False
) -> None:
    """Write `model` traced at `x` to `path`; batch always dynamic, H/W dynamic if `dynamic_hw`.

    `optimize` runs onnxscript's graph rewriter before saving. It is off by default: it spent over
    12 minutes on BOAT-CSWin-B, and onnxruntime applies its own graph optimisations on load.
    """
    batch = torch.export.Dim("batch", min=1, max=4096)
    dims = {0: batch, 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO} if dynamic_hw else {0: batch}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (x,), dynamo=True, dynamic_shapes={"x": dims}, input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME], verbose=False, report=False, verify=False, optimize=optimize,
        )
    if program is None:
        raise HybridViTError("ONNX export produced no program")
    program.save(str(path))


def onnx_max_error(model: torch.nn.Module, path: Path, inputs: list[torch.Tensor]) -> float:
    """Largest |onnxruntime - eager| over `inputs`, relative to max(1, |eager|max); inf if ORT fails."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 4  # a failing probe at another size is reported by us, not logged by ORT
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    worst = 0.0
    for x in inputs:
        with torch.inference_mode():
            expected = model(x).float().cpu().numpy()
        try:
            got = session.run(None, {INPUT_NAME: x.cpu().numpy()})[0]
        except Exception:  # onnxruntime raises its own types for shape mismatches in baked reshapes
            return float("inf")
        if got.shape != expected.shape:
            return float("inf")
        worst = max(worst, float(np.abs(got - expected).max()) / max(1.0, float(np.abs(expected).max())))
    return worst
