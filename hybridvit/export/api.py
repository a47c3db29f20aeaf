"""`export_model`: one entry point for ONNX, OpenVINO IR, TorchScript and Core ML, with an output check."""
from __future__ import annotations

import difflib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch

from ..checkpoint import load_weights, one_line, read_state_dict
from ..engine.checkpointing import RUN_INFO, read_run_info
from ..errors import HybridViTError, OutputError, UnknownModelError
from ..models import list_models, paper_entry
from .coreml import export_coreml
from .fuse_bn import fuse_bn
from .onnx import export_onnx, onnx_max_error
from .openvino import export_openvino, openvino_max_error
from .torchscript import export_torchscript, load_torchscript, torchscript_max_error

FORMATS: dict[str, str] = {"onnx": ".onnx", "openvino": ".xml", "torchscript": ".pt", "coreml": ".mlpackage"}
RES_STEP = 32  # other resolutions checked: res +- 32 keeps divisibility by 32 and flips the parity of res/32


class ExportError(HybridViTError):
    """A format we cannot write, or an exported graph whose outputs differ from the eager model."""


@dataclass
class ExportResult:
    path: Path
    format: str
    input_shape: tuple[int, int, int, int]  # the shape it was exported with
    dynamic_batch: bool
    dynamic_hw: bool
    max_error: float | None  # relative to max(1, |logits|), over the checked inputs; None: not checked
    checked_shapes: list[tuple[int, ...]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"unsupported export format '{fmt}'; choose one of {', '.join(FORMATS)}")


def load_model(name: str, checkpoint: str | os.PathLike | None = None, num_classes: int | None = None) -> torch.nn.Module:
    """A hybridvit model (weights converted on load), a segmenter `HEAD:BACKBONE` (weights: a segmentation
    run directory or its weights file), or any timm model, in eval mode.

    The class count is `num_classes`, else the checkpoint's (its run.json, or its classifier's rows).
    """
    from ..tasks import segmenter_from_spec

    if checkpoint is not None and ":" in name and Path(checkpoint, "run.json").is_file():
        from ..engine.segmentation import load_segmenter

        return load_segmenter(checkpoint).model
    segmenter = segmenter_from_spec(name)
    if segmenter is not None:
        if checkpoint is not None:
            from .. import load_checkpoint

            load_checkpoint(segmenter, checkpoint)
        return segmenter.eval()
    if name not in list_models() and not timm.is_model(name):
        close = difflib.get_close_matches(name, sorted(set(list_models() + timm.list_models())), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; run `hybridvit models` for the list"
        raise UnknownModelError(f"unknown model '{name}'{hint}")
    if num_classes is None and checkpoint is not None:
        num_classes = checkpoint_classes(name, checkpoint)
    kwargs = {"num_classes": num_classes} if num_classes is not None else {}
    if name in list_models():
        from .. import create_model

        return create_model(name, pretrained_path=checkpoint, **kwargs).eval()
    model = timm.create_model(name, pretrained=False, **kwargs)
    if checkpoint is not None:
        load_weights(model, checkpoint)
    return model.eval()


def checkpoint_classes(name: str, checkpoint: str | os.PathLike) -> int | None:
    """How many classes `checkpoint` was trained for: its run directory's run.json, else its classifier's rows."""
    path = Path(checkpoint)
    run_dir = path if path.is_dir() else path.parent
    if (run_dir / RUN_INFO).is_file():
        return read_run_info(run_dir).get("num_classes")
    with torch.device("meta"):
        head = timm.create_model(name, pretrained=False).pretrained_cfg.get("classifier")
    weight = read_state_dict(path).get(f"{head}.weight") if isinstance(head, str) else None
    return int(weight.shape[0]) if weight is not None and weight.ndim > 0 else None


def default_resolution(name: str, model: torch.nn.Module) -> int:
    if ":" in name:  # a segmenter: the papers' 512x512 crops
        return 512
    if name in list_models():
        return paper_entry(name).input_size
    return int(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224))[-1])


def export_model(
    name: str,
    fmt: str,
    out: str | os.PathLike | None = None,
    res: int | None = None,
    batch: int | None = None,
    dynamic: bool = False,
    fold_bn: bool = False,
    checkpoint: str | os.PathLike | None = None,
    atol: float = 1e-4,
    model: torch.nn.Module | None = None,
) -> ExportResult:
    """Export `name` (or the given `model`) as `fmt` and check it against eager outputs.

    `batch` defaults to 2 (1 for Core ML). The batch dimension is dynamic for ONNX, OpenVINO and TorchScript;
    `dynamic=True` also asks for dynamic H/W, kept only if the graph verifies at res +- 32 (otherwise
    H/W is fixed, with a note).
    """
    check_format(fmt)
    batch = batch or (1 if fmt == "coreml" else 2)
    model = (model if model is not None else load_model(name, checkpoint)).eval()
    res = res or default_resolution(name, model)
    path = Path(out) if out else Path(f"{name.replace(':', '_')}{FORMATS[fmt]}")
    if path.is_dir() and fmt != "coreml":
        raise OutputError(f"--out {path} is a directory; give the file to write, e.g. {path / (name + FORMATS[fmt])}")
    if path.exists() and not path.is_file() and not path.is_dir():  # /dev/full, a FIFO: never replaced by a rename
        raise OutputError(f"--out {path} is not a regular file; give a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create the folder of --out {path}: {err.strerror or one_line(err)}") from None
    fixed = sorted({getattr(m, "static_shape_reason", "") for m in model.modules()} - {""})
    if dynamic and fixed and fmt != "coreml":
        raise ExportError(f"--dynamic (dynamic H/W) is not possible for {name}: {fixed[0]}")
    in_chans = getattr(model, "in_chans", 3)
    x = torch.randn(batch, in_chans, res, res)
    with torch.inference_mode():  # eager first: an input the model rejects fails with its own one-line error
        if not torch.isfinite(model(x)).all():
            raise ExportError(f"{name} gives NaN or inf outputs on a random input (damaged weights?); not exported")
    # Written and checked under a temporary name, then renamed: a failed export leaves `path` as it was.
    final, path = path, path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        result = _export_checked(model, fmt, path, x, res, dynamic, fold_bn, atol)
        _replace(path, final)
    finally:
        _remove(path)
    result.path = final
    return result


def _with_weights(path: Path) -> list[Path]:
    """`path`, and for OpenVINO IR (.xml) the .bin of weights beside it (read by the same stem)."""
    return [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]


def _replace(tmp: Path, path: Path) -> None:
    try:
        if path.is_dir():  # a Core ML package is a folder
            shutil.rmtree(path)
        for tmp_file, file in reversed(list(zip(_with_weights(tmp), _with_weights(path)))):  # the .xml last
            os.replace(tmp_file, file)
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror or one_line(err)}") from None


def _remove(path: Path) -> None:
    for file in _with_weights(path):
        if file.is_dir():
            shutil.rmtree(file, ignore_errors=True)
        elif file.exists():
            file.unlink()


def _export_checked(
    model: torch.nn.Module, fmt: str, path: Path, x: torch.Tensor, res: int, dynamic: bool, fold_bn: bool, atol: float
) -> ExportResult:
    """Write `model` as `fmt` to `path` and check it against eager (see `export_model`)."""
    batch, in_chans = x.shape[0], x.shape[1]
    notes: list[str] = []
    if fold_bn:
        model = fuse_bn(model, x)
        notes.append("BatchNorm folded into convolutions")
    other_batch = [torch.randn(batch + 1, in_chans, res, res)]
    other_res = [torch.randn(batch + 1, in_chans, r, r) for r in (res - RES_STEP, res + RES_STEP) if r >= RES_STEP]

    if fmt == "coreml":
        export_coreml(model, x, path)
        notes.append(f"fixed input shape {tuple(x.shape)}; not run (needs macOS)")
        return ExportResult(path, fmt, tuple(x.shape), False, False, None, [], notes)

    def check(inputs: list[torch.Tensor]) -> tuple[float, float]:
        """Max error, and max error without replaying BOAT's cluster cuts (see `onnx_max_error`)."""
        if fmt == "onnx":
            return onnx_max_error(model, path, inputs)
        if fmt == "openvino":
            return openvino_max_error(model, path, inputs)
        err = torchscript_max_error(model, load_torchscript(path), inputs)
        return err, err

    def write(dynamic_hw: bool) -> None:
        try:
            if fmt == "onnx":
                export_onnx(model, x, path, dynamic_hw)
            elif fmt == "openvino":
                export_openvino(model, x, path, dynamic_hw)
            else:
                export_torchscript(model, x, path)
        except OSError as err:
            raise OutputError(f"cannot write the export into {path.parent}: {err.strerror or one_line(err)}") from None

    dynamic_hw = False
    if dynamic:
        try:
            write(dynamic_hw=True)
            err, _ = check(other_batch + other_res)
        except Exception as exc:  # torch.export may reject symbolic H/W in many ways
            err, reason = float("inf"), f"{type(exc).__name__}: {str(exc).splitlines()[0][:100] if str(exc) else ''}"
        else:
            sizes = ", ".join(f"{t.shape[-2]}x{t.shape[-1]}" for t in other_res)
            reason = f"max error {err:.2g} at {sizes}" if err < float("inf") else f"the graph fails at {sizes}"
        dynamic_hw = err <= atol
        if not dynamic_hw:
            notes.append(f"dynamic H/W did not verify ({reason}); exported fixed {res}x{res}")
    if not dynamic_hw:
        write(dynamic_hw=False)
    checked = [x] + other_batch + (other_res if dynamic_hw else [])
    err, unreplayed = check(checked)
    if not err <= atol:  # NaN included
        raise ExportError(f"exported {fmt} graph differs from the eager model (max error {err:.3g} > {atol:g})")
    if unreplayed > atol:
        notes.append(
            f"checked with onnxruntime's FSLA cluster orders replayed in eager; without them max error "
            f"{unreplayed:.2g}: float32 rounding moved near-tie tokens across a median cut, as it does "
            "between eager float32 and float64"
        )
    if fmt == "torchscript" and not dynamic_hw:
        notes.append(f"traced at {res}x{res}: other resolutions are not guaranteed to be correct")
    return ExportResult(path, fmt, tuple(x.shape), True, dynamic_hw, err, [tuple(t.shape) for t in checked], notes)
