"""Post-training INT8 quantization: NNCF on OpenVINO IR, or onnxruntime's static QDQ quantizer.

Both calibrate activation ranges on a few hundred training images (`calibration_images`), never on
the validation images the accuracy check then uses.
- NNCF (`quantize_openvino`): `ModelType.TRANSFORMER` keeps softmax, LayerNorm and the attention
  score matmuls in float and applies SmoothQuant to the linear layers; preset MIXED (symmetric
  weights, asymmetric activations). Following NNCF's post-training quantization guide
  (docs.openvino.ai, "Basic quantization flow") and its `ModelType.TRANSFORMER` notes.
  Bias correction is off (`disable_bias_correction`): on the README's digits model NNCF's default
  fast bias correction moved the stem convolution's bias by up to 0.17 (16% of its largest) and
  cost 1.39 points of top-1 (7 of 360 predictions changed) on every calibration subset tried;
  without it the loss was 0.28 points (1-3 changed), as with NNCF's slower full bias correction
  (docs/export.md, "INT8").
- onnxruntime (`quantize_onnxruntime`): QDQ, per-tensor int8 weights, uint8 activations, only
  Conv / MatMul / Gemm inputs quantized (onnxruntime.quantization.quantize_static), attention's
  activation x activation MatMuls kept float, on the graph after onnxruntime's `quant_pre_process`
  (constant folding: the dynamo graph computes conv biases, which the quantizer needs as
  initializers to fuse). On the digits model at batch 1 that graph ran in 0.5-0.76x OpenVINO f32's
  time, the unfolded one in 1.39x; on it per-channel weights lost 2.78 points of top-1, per-tensor
  0.56-1.11 and per-tensor with attention float 0.56-0.83 over three calibration subsets
  (docs/export.md, "INT8").
"""
from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import torch

from .backends import require
from .openvino import save_ir

CALIBRATION_SIZE = 300  # images; NNCF's default subset_size


def calibration_images(
    data: str | None, transform: Callable, count: int = CALIBRATION_SIZE, seed: int = 0
) -> list[torch.Tensor]:
    """`count` random training images (batches of one) from `data`: 'digits' (the embedded set), an
    ImageNet-layout tree (its train/ split) or a folder of class folders, with the eval `transform`."""
    from ..data.datasets import ImageFolder, build_datasets
    from ..errors import DataError

    if data in (None, "digits"):
        dataset = build_datasets(None).train
    else:
        root = Path(data)
        if not root.is_dir():
            raise DataError(f"calibration data not found: {root}")
        dataset = ImageFolder(root / "train" if (root / "train").is_dir() else root, check="header")
    if len(dataset) == 0:
        raise DataError(f"no calibration images in {data}")
    indices = random.Random(seed).sample(range(len(dataset)), min(count, len(dataset)))
    return [transform(dataset[i][0]).unsqueeze(0) for i in indices]


def random_calibration(res: int, count: int = 32, in_chans: int = 3, seed: int = 0) -> list[torch.Tensor]:
    """Standard-normal images: enough to time INT8 graphs (`bench`), not to judge their accuracy."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, in_chans, res, res, generator=g) for _ in range(count)]


def quantize_openvino(model_path: str | Path, calibration: Iterable[torch.Tensor], out: str | Path) -> Path:
    """INT8 IR at `out` from the float model at `model_path` (.onnx or .xml), calibrated by NNCF."""
    ov = require("openvino", "INT8 quantization with NNCF")
    nncf = require("nncf", "INT8 quantization with NNCF")
    samples = [x.numpy() for x in calibration]
    model = ov.Core().read_model(str(model_path))
    quantized = nncf.quantize(
        model, nncf.Dataset(samples), model_type=nncf.ModelType.TRANSFORMER,
        preset=nncf.QuantizationPreset.MIXED, subset_size=len(samples),
        advanced_parameters=nncf.AdvancedQuantizationParameters(disable_bias_correction=True),
    )
    out = Path(out)
    save_ir(quantized, out)
    return out


def quantize_onnxruntime(model_path: str | Path, calibration: Iterable[torch.Tensor], out: str | Path) -> Path:
    """INT8 QDQ ONNX graph at `out` from the float ONNX graph at `model_path`, calibrated by onnxruntime."""
    require("onnxruntime", "INT8 quantization with onnxruntime")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .onnx import INPUT_NAME

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.samples = iter([{INPUT_NAME: x.numpy()} for x in calibration])

        def get_next(self):
            return next(self.samples, None)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}.") as tmp:
        tmp_out, folded = Path(tmp) / out.name, Path(tmp) / "folded.onnx"
        # Its symbolic shape inference fails on the dynamo graph's Constant nodes; ONNX's own suffices.
        quant_pre_process(str(model_path), str(folded), skip_symbolic_shape=True)
        quantize_static(
            str(folded), str(tmp_out), Reader(), quant_format=QuantFormat.QDQ, per_channel=False,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv", "MatMul", "Gemm"],
            nodes_to_exclude=attention_matmuls(folded),
        )
        tmp_out.replace(out)
    return out


def attention_matmuls(path: Path) -> list[str]:
    """Names of the MatMuls in an ONNX graph whose inputs are both activations (attention's scores and
    weighted sum), not a weight: the quantizer leaves them float, as NNCF's TRANSFORMER type does."""
    import onnx

    graph = onnx.load(str(path)).graph
    weights = {t.name for t in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and not weights.intersection(n.input)]


def quantize_exported(float_path: Path, fmt: str, calibration: list[torch.Tensor], out: Path | None = None) -> Path:
    """INT8 copy of an exported float model: NNCF for OpenVINO IR, onnxruntime's quantizer for ONNX."""
    from .backends import BackendError

    out = out or float_path.with_name(f"{float_path.stem}_int8{float_path.suffix}")
    if fmt == "openvino":
        return quantize_openvino(float_path, calibration, out)
    if fmt == "onnx":
        return quantize_onnxruntime(float_path, calibration, out)
    raise BackendError(f"INT8 quantization needs --format openvino (NNCF) or onnx (onnxruntime), not {fmt}")
