"""Back ends: one concept for running a model, used by `bench`, `eval`, `predict` and `export`.

A back end turns an eager model (or an exported file) into a `Runtime`: a callable from a float32
image batch (torch) to logits (torch), which says which precision actually ran.
- `eager`: the PyTorch module as it is.
- `compile`: `torch.compile` (inductor) of it.
- `onnxruntime`: the ONNX graph `hybridvit export` writes (verified), on onnxruntime's CPU provider.
- `openvino`: that graph on OpenVINO's CPU plugin with `INFERENCE_PRECISION_HINT=f32`. OpenVINO's
  default on CPUs with AMX / AVX-512 BF16 is bf16 (shared/GUIDE.md, Deployment), so the hint is
  always set explicitly and read back from the compiled model.
- `openvino-bf16`: the same with the bf16 hint, only where the CPU reports BF16.
- `openvino-int8`, `onnxruntime-int8`: post-training INT8 (`hybridvit.export.quantize`).
"""
from __future__ import annotations

import importlib
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from ..errors import HybridViTError
from ..layers.clustering import replay_cuts

BACKENDS: tuple[str, ...] = (
    "eager", "compile", "onnxruntime", "openvino", "openvino-bf16", "openvino-int8", "onnxruntime-int8",
)
# The installable extra that provides each optional module.
EXTRAS = {"openvino": "openvino", "nncf": "openvino", "onnxruntime": "onnx", "onnx": "onnx",
          "onnxscript": "onnx", "coremltools": "coreml"}


class BackendError(HybridViTError):
    """An unknown back end, one this machine cannot run, or one whose optional dependency is missing."""


def require(module: str, purpose: str) -> ModuleType:
    """Import an optional dependency, or raise a one-line error naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS.get(module, module)
        raise BackendError(f"{purpose} needs {module}, which is not installed: pip install 'hybridvit[{extra}]'") from None


def check_backend(name: str) -> None:
    if name not in BACKENDS:
        raise BackendError(f"unknown back end '{name}'; choose one of {', '.join(BACKENDS)}")


class Runtime:
    """A model on a back end: `runtime(x)` maps a float32 NCHW batch to float32 logits (torch tensors)."""

    def __init__(self, backend: str, precision: str, run: Callable[[torch.Tensor], tuple[np.ndarray | torch.Tensor, list]]):
        self.backend, self.precision, self._run = backend, precision, run

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _to_torch(self._run(x)[0])

    def run_with_cut_orders(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and the sort order of every FSLA clustering level the graph computed (BOAT; else [])."""
        logits, orders = self._run(x)
        return _to_torch(logits), [_to_torch(o) for o in orders]

    def as_module(self) -> torch.nn.Module:
        """An nn.Module wrapper, for code that takes a model (evaluate, predict)."""
        return _RuntimeModule(self)


def _to_torch(value):
    """Runtimes return numpy arrays; eager returns what the module does (detectors: lists of dicts)."""
    return torch.from_numpy(value) if isinstance(value, np.ndarray) else value


class _RuntimeModule(torch.nn.Module):
    def __init__(self, runtime: Runtime) -> None:
        super().__init__()
        self.runtime = runtime

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.runtime(x.float().cpu())


def eager_runtime(model: torch.nn.Module) -> Runtime:
    return Runtime("eager", "f32", lambda x: (model(x), []))


def compile_runtime(model: torch.nn.Module, compiler: str = "inductor") -> Runtime:
    """torch.compile (static shapes: one graph per input shape, as a deployed model sees)."""
    compiled = torch.compile(model, dynamic=False, backend=compiler)
    return Runtime("compile", "f32", lambda x: (compiled(x), []))


def onnxruntime_runtime(path: str | Path, backend: str = "onnxruntime") -> Runtime:
    """An onnxruntime CPU session on `path` with torch's thread count; FSLA cut orders as extra outputs."""
    require("onnxruntime", "the onnxruntime back end")
    from .onnx import INPUT_NAME, session_with_cut_orders

    session = session_with_cut_orders(Path(path))
    quantized = any(n.op_type == "QuantizeLinear" for n in _onnx_nodes(path))

    def run(x: torch.Tensor):
        logits, *orders = session.run(None, {INPUT_NAME: x.numpy()})
        return logits, orders

    return Runtime(backend, "int8 (QDQ) + f32" if quantized else "f32", run)


def _onnx_nodes(path: str | Path):
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.node


_WEIGHTED_LAYERS = ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul")


def openvino_bf16_supported() -> bool:
    ov = require("openvino", "the openvino back end")
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def openvino_runtime(model_or_path, precision: str = "f32", backend: str = "openvino") -> Runtime:
    """Compile an OpenVINO model (an ov.Model, or a path to .xml IR or .onnx) for the CPU.

    `precision` ("f32" or "bf16") is set as INFERENCE_PRECISION_HINT; the reported precision is the
    hint the compiled model holds, plus "int8" when layers run in int8 (a quantized IR).
    """
    ov = require("openvino", "the openvino back end")
    core = ov.Core()
    if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        cpu = core.get_property("CPU", "FULL_DEVICE_NAME")
        raise BackendError(f"this CPU ({cpu}) has no bf16 support in OpenVINO; use the f32 'openvino' back end")
    model = core.read_model(str(model_or_path)) if isinstance(model_or_path, (str, Path)) else model_or_path
    topk = [op.output(1) for op in model.get_ordered_ops() if op.get_type_name() == "TopK"]
    if topk:
        model.add_outputs(topk)
    compiled = core.compile_model(model, "CPU", {
        "INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
    })
    ran = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    int8_layers = sum(  # convolutions and matmuls the plugin runs in int8 (u8 alone also marks boolean masks)
        info["layerType"].astype(str) in _WEIGHTED_LAYERS and info["runtimePrecision"].astype(str) in ("i8", "u8")
        for info in (op.get_rt_info() for op in compiled.get_runtime_model().get_ordered_ops())
    )
    request = compiled.create_infer_request()

    def run(x: torch.Tensor):
        outputs = request.infer({0: x.numpy()}, share_inputs=True)
        values = [outputs[out] for out in compiled.outputs]
        return values[0].copy(), values[1:]

    return Runtime(backend, f"int8 ({int8_layers} layers) + {ran}" if int8_layers else ran, run)


def prepare(
    backend: str,
    model: torch.nn.Module,
    res: int,
    workdir: str | Path | None = None,
    onnx_path: str | Path | None = None,
    calibration: Iterable[torch.Tensor] | None = None,
) -> Runtime:
    """`model` (eval mode) on `backend`, at res x res inputs (ONNX graphs: dynamic batch).

    ONNX-based back ends use `onnx_path` if given, else export a verified graph into `workdir`
    (a temporary folder by default). INT8 back ends calibrate on `calibration` (batches of images);
    `bench` passes random images, `eval` a few hundred training images.
    """
    check_backend(backend)
    if backend == "eager":
        return eager_runtime(model)
    if backend == "compile":
        return compile_runtime(model)
    if backend.startswith("openvino"):
        require("openvino", f"the {backend} back end")
    if backend.endswith("int8") and calibration is None:
        raise BackendError(f"the {backend} back end needs calibration images")
    workdir = Path(workdir or tempfile.mkdtemp(prefix="hybridvit_"))
    if onnx_path is None:
        from .api import export_model

        onnx_path = export_model("model", "onnx", out=workdir / "model.onnx", res=res, model=model).path
    if backend == "onnxruntime":
        return onnxruntime_runtime(onnx_path)
    if backend == "openvino":
        return openvino_runtime(onnx_path, "f32")
    if backend == "openvino-bf16":
        return openvino_runtime(onnx_path, "bf16", backend)
    from .quantize import quantize_onnxruntime, quantize_openvino

    if backend == "openvino-int8":
        return openvino_runtime(quantize_openvino(onnx_path, calibration, workdir / "model_int8.xml"), "f32", backend)
    return onnxruntime_runtime(quantize_onnxruntime(onnx_path, calibration, workdir / "model_int8.onnx"), backend)


def open_exported(path: str | Path, backend: str | None = None) -> Runtime:
    """A runtime for an exported file: OpenVINO IR (.xml) on OpenVINO, ONNX on onnxruntime (or on
    OpenVINO when `backend` starts with 'openvino'). bf16 is used only when `backend` says so."""
    path = Path(path)
    if not path.is_file():
        raise BackendError(f"exported model not found: {path}")
    if backend is not None:
        check_backend(backend)
    if path.suffix == ".xml" or (backend or "").startswith("openvino"):
        precision = "bf16" if backend == "openvino-bf16" else "f32"
        return openvino_runtime(path, precision, backend or "openvino")
    if path.suffix == ".onnx":
        return onnxruntime_runtime(path, backend or "onnxruntime")
    raise BackendError(f"cannot run {path}: expected an OpenVINO .xml or an .onnx file")


def max_error(model: torch.nn.Module, runtime: Runtime, inputs: Sequence[torch.Tensor]) -> tuple[float, float]:
    """Largest |runtime - eager| over `inputs`, relative to max(1, |eager|max): (with the runtime's FSLA
    cluster cuts replayed in eager, without). They differ only for BOAT; see `export.onnx.onnx_max_error`.
    inf when the runtime fails on an input or returns another shape."""
    worst = free_worst = 0.0
    with torch.inference_mode():
        for x in inputs:
            try:
                got, orders = runtime.run_with_cut_orders(x)
            except Exception:  # runtimes raise their own types for shapes a fixed graph rejects
                return float("inf"), float("inf")
            free = replayed = model(x).float()
            if orders:
                try:
                    with replay_cuts(iter(orders)):
                        replayed = model(x).float()
                except RuntimeError:  # the graph made a different number (or shape) of cuts
                    return float("inf"), float("inf")
            if got.shape != free.shape:
                return float("inf"), float("inf")
            scale = max(1.0, free.abs().max().item())
            worst = max(worst, (got.float() - replayed).abs().max().item() / scale)
            free_worst = max(free_worst, (got.float() - free).abs().max().item() / scale)
    return worst, free_worst
