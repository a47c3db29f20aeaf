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
from ..layers.clustering import replay_cuts

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


def session_with_cut_orders(path: Path):
    """An onnxruntime session on `path` whose outputs are the logits followed by the sort order of every
    FSLA clustering level (the indices of each TopK node, in graph order, which is call order)."""
    import onnx
    import onnxruntime as ort

    graph_proto = onnx.load(str(path))
    for node in graph_proto.graph.node:
        if node.op_type == "TopK":
            graph_proto.graph.output.append(onnx.helper.make_tensor_value_info(node.output[1], onnx.TensorProto.INT64, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 4  # a failing probe at another size is reported by us, not logged by ORT
    return ort.InferenceSession(graph_proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def onnx_max_error(model: torch.nn.Module, path: Path, inputs: list[torch.Tensor]) -> tuple[float, float]:
    """Largest |onnxruntime - eager| over `inputs`, relative to max(1, |eager|max); inf if ORT fails or
    either output is not finite.

    Returns (error with onnxruntime's FSLA cuts replayed in eager, error without). They differ only for
    BOAT: its clustering cuts each group at the median, a discontinuity, so float32 rounding in the
    queries can move a near-tie token to the other side. Eager float32 and float64 disagree the same
    way, so only the first number says whether the graph computes what eager does.
    """
    session = session_with_cut_orders(path)
    worst = free_worst = 0.0
    for x in inputs:
        try:
            got, *orders = session.run(None, {INPUT_NAME: x.cpu().numpy()})
        except Exception:  # onnxruntime raises its own types for shape mismatches in baked reshapes
            return float("inf"), float("inf")
        with torch.inference_mode():
            free = replayed = model(x).float().cpu().numpy()
            if orders:
                try:
                    with replay_cuts(torch.from_numpy(order) for order in orders):
                        replayed = model(x).float().cpu().numpy()
                except RuntimeError:  # the graph made a different number (or shape) of cuts
                    return float("inf"), float("inf")
        if got.shape != free.shape or not (np.isfinite(got).all() and np.isfinite(free).all()):
            return float("inf"), float("inf")  # a NaN would compare as no error at all
        scale = max(1.0, float(np.abs(free).max()))
        worst = max(worst, float(np.abs(got - replayed).max()) / scale)
        free_worst = max(free_worst, float(np.abs(got - free).max()) / scale)
    return worst, free_worst
