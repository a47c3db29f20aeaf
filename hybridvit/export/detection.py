"""Detectors to ONNX: the whole torchvision-style detector (normalise, resize, head, box decoding, NMS).

torchvision's detectors export with the TorchScript-based exporter (`dynamo=False`, as torchvision's
own ONNX tests do); the graph takes one float image [3, H, W] in 0..1 of any size and returns
boxes (xyxy, input pixels), scores and labels. The check runs onnxruntime at the export size and at
another one and compares with eager: each ONNX detection with the nearest eager detection of its
label (score, and box relative to the image side), since detections of tied scores may come out
in another order.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import HybridViTError

OPSET = 17


def build_detector(model_name: str, head: str, checkpoint: str | os.PathLike | None) -> torch.nn.Module:
    """A trained detector from a `hybridvit train --task detection` run directory, else `head` on `model_name`
    (80 classes; `checkpoint`: the backbone's classification weights)."""
    from ..engine.inference import load_trained
    from ..tasks import create_detector

    if checkpoint is not None and Path(checkpoint, "run.json").is_file():
        trained = load_trained(str(checkpoint), model_name)
        if trained.task != "detection":
            raise HybridViTError(f"{checkpoint} holds a {trained.task} run, not a detector")
        return trained.model.eval()
    return create_detector(head, model_name, 80, pretrained_path=checkpoint).eval()


def export_detector_onnx(model: torch.nn.Module, out: str | os.PathLike, res: int) -> tuple[Path, float]:
    """Write `model` to ONNX at `res` x `res`; returns the path and the max error against eager at two sizes."""
    import onnxruntime as ort

    out = Path(out)
    example = [torch.rand(3, res, res)]
    with torch.no_grad():
        torch.onnx.export(model, (example,), str(out), dynamo=False, opset_version=OPSET, input_names=["image"],
                          output_names=["boxes", "scores", "labels"], dynamic_axes={"image": {1: "height", 2: "width"}})
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    error = 0.0
    for size in (res, res + 32):
        image = torch.rand(3, size, size + 16)
        with torch.no_grad():
            eager = model([image])[0]
        boxes, scores, labels = session.run(None, {"image": image.numpy()})
        if len(labels) != len(eager["labels"]):
            raise HybridViTError(f"the ONNX detector finds {len(labels)} objects at {size}x{size + 16}, eager {len(eager['labels'])}")
        for box, score, label in zip(boxes, scores, labels):
            same = eager["labels"] == int(label)
            if not same.any():
                raise HybridViTError(f"the ONNX detector finds label {label} at {size}x{size + 16}, eager does not")
            gaps = np.maximum(np.abs(eager["boxes"][same].numpy() - box).max(axis=1) / size,
                              np.abs(eager["scores"][same].numpy() - score))
            error = max(error, float(gaps.min()))
    return out, error
