"""Deployment export: ONNX, TorchScript, Core ML, and BatchNorm folding."""
from .api import FORMATS, ExportError, ExportResult, export_model, load_model
from .fuse_bn import fuse_bn

__all__ = ["FORMATS", "ExportError", "ExportResult", "export_model", "fuse_bn", "load_model"]
