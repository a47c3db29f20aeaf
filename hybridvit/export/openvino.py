"""OpenVINO IR export (`hybridvit export --format openvino`): the verified ONNX graph, converted.

The IR comes from the ONNX graph `export_onnx` writes (`openvino.convert_model(path)`), not from the
torch module: converting the module directly traces it with TorchScript, which bakes MobileViT's
shape branches into a graph that still claims dynamic H/W; measured on hv_mobilevit_xxs traced at
256, its outputs at 224 and 288 were off by 0.22 and 0.27 (max abs) while 256 matched to 3e-7.
From ONNX, the dynamic batch (and H/W where it verifies) carries over, and so do BOAT's TopK nodes,
whose cluster orders the check replays in eager. Weights stay float32 (`compress_to_fp16=False`).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from .backends import max_error, openvino_runtime, require
from .onnx import export_onnx


def save_ir(model, path: Path) -> None:
    """Write `model` (an ov.Model) as `path` (.xml) and its .bin, each replaced only once both are written."""
    ov = require("openvino", "OpenVINO export")
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.stem}.") as tmp:
        ov.save_model(model, str(Path(tmp) / path.name), compress_to_fp16=False)
        os.replace(Path(tmp) / path.with_suffix(".bin").name, path.with_suffix(".bin"))
        os.replace(Path(tmp) / path.name, path)


def convert_onnx(onnx_path: Path, path: Path) -> None:
    ov = require("openvino", "OpenVINO export")
    save_ir(ov.convert_model(str(onnx_path)), path)


def export_openvino(model: torch.nn.Module, x: torch.Tensor, path: Path, dynamic_hw: bool) -> None:
    """ONNX graph of `model` traced at `x` (batch dynamic; H/W if `dynamic_hw`), converted to IR at `path`."""
    require("openvino", "OpenVINO export")
    with tempfile.TemporaryDirectory(prefix="hybridvit_ov_") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_onnx(model, x, onnx_path, dynamic_hw)
        convert_onnx(onnx_path, path)


def openvino_max_error(model: torch.nn.Module, path: Path, inputs: list[torch.Tensor]) -> tuple[float, float]:
    """Max relative error of the IR on OpenVINO f32 against eager (with and without BOAT cuts replayed)."""
    return max_error(model, openvino_runtime(path, "f32"), inputs)
