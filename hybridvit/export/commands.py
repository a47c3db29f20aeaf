"""`hybridvit export MODEL --format onnx|openvino|torchscript|coreml [--quantize int8 --calibration DATA]`."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..argtypes import positive_int


def cmd_export(args: argparse.Namespace) -> None:
    import torch

    from ..engine.checkpointing import read_run_info, run_weights
    from .api import FORMATS, check_format, export_model, load_model

    check_format(args.format)
    if args.quantize:
        from .backends import BackendError, require

        if args.format not in ("openvino", "onnx"):
            raise BackendError(f"--quantize int8 needs --format openvino (NNCF) or onnx (onnxruntime), not {args.format}")
        require("nncf" if args.format == "openvino" else "onnxruntime", "INT8 quantization")
    torch.set_num_threads(args.threads)
    run_dir = Path(args.model)
    info = read_run_info(run_dir) if run_dir.is_dir() else None  # a training output directory
    if info is not None and info.get("task") == "detection":
        args.model, args.head, args.checkpoint, args.task = info["model"], info["head"], str(run_dir), "detection"
    segmenter = (info or {}).get("task") == "segmentation" or ":" in args.model  # a run dir, or HEAD:BACKBONE
    if args.quantize and (args.task == "detection" or segmenter):
        from .backends import BackendError

        raise BackendError("--quantize int8 quantizes classifiers; detectors export as float ONNX, "
                           "segmenters as float ONNX or OpenVINO IR")
    if args.task == "detection":
        return _export_detector(args)
    name, checkpoint, res, out = args.model, args.checkpoint, args.res, args.out
    if info is not None and segmenter:  # `load_model` reads the run's head, backbone, classes and weights
        name, checkpoint, res = f"{info['head']}:{info['model']}", str(run_dir), res or info.get("img_size")
        out = out or run_dir / f"{info['head']}_{info['model']}{FORMATS[args.format]}"
    elif info is not None:  # its model, classes, input size and weights
        name, res = info["model"], res or info.get("img_size")
        checkpoint = checkpoint or run_weights(run_dir, args.weights)
        out = out or run_dir / f"{name}{FORMATS[args.format]}"
    if info is not None and info.get("attn_layer"):  # a `train --attn` run: rebuilt with its token mixer
        from ..engine.inference import load_trained

        model = load_trained(str(run_dir), weights=args.weights).model
    else:
        model = load_model(name, checkpoint)
    result = export_model(
        name, args.format, out=out, res=res, batch=args.batch, dynamic=args.dynamic,
        fold_bn=args.fuse_bn, checkpoint=checkpoint, model=model,
    )
    dims = "dynamic batch" if result.dynamic_batch else "fixed batch"
    dims += ", dynamic H/W" if result.dynamic_hw else f", fixed {result.input_shape[2]}x{result.input_shape[3]}"
    print(f"wrote {result.path} ({result.format}, exported at {'x'.join(map(str, result.input_shape))}; {dims})")
    if result.max_error is not None:
        shapes = ", ".join("x".join(map(str, s)) for s in result.checked_shapes)
        print(f"checked against eager at {shapes}: max error {result.max_error:.2e}")
    for note in result.notes:
        print(f"note: {note}")
    if args.quantize:
        run = run_dir if info is not None else _run_dir_of(checkpoint)
        _quantize(args, model, _eval_transform(name, model, run, args.weights, result.input_shape[-1]), result.path)


def _run_dir_of(checkpoint) -> Path | None:
    """The training output directory `checkpoint` is (or holds the weights of), if any."""
    if checkpoint is None:
        return None
    from ..engine.checkpointing import RUN_INFO

    path = Path(checkpoint)
    for folder in (path, path.parent, path.parent.parent):  # a run dir, best.safetensors, checkpoints/step-N/...
        if (folder / RUN_INFO).is_file():
            return folder
    return None


def _eval_transform(name: str, model, run_dir: Path | None, weights: str, res: int):
    """The eval transform calibration images get: the training run's (run.json), else the model's timm data config."""
    if run_dir is not None:
        from ..engine.inference import load_trained

        return load_trained(str(run_dir), name, weights, img_size=res).transform
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config({}, model=model)
    return create_transform(res, interpolation=cfg["interpolation"], mean=cfg["mean"], std=cfg["std"], crop_pct=cfg["crop_pct"])


def _quantize(args: argparse.Namespace, model, transform, float_path: Path) -> None:
    """Write the INT8 copy of the exported float model beside it and report its error on calibration images."""
    import torch

    from .backends import max_error, open_exported
    from .quantize import calibration_images, quantize_exported

    images = calibration_images(args.calibration, transform, args.calibration_size)
    path = quantize_exported(float_path, args.format, images)
    runtime = open_exported(path)
    err, _ = max_error(model, runtime, [torch.cat(images[:16])])
    print(f"wrote {path} (INT8, calibrated on {len(images)} images from {args.calibration or 'digits'}; "
          f"runs as {runtime.precision}); max error against eager on {min(16, len(images))} of them {err:.2e}")
    print(f"check its accuracy: hybridvit eval --checkpoint RUN_DIR --exported {path}")


def _export_detector(args: argparse.Namespace) -> None:
    from ..errors import HybridViTError
    from .detection import build_detector, export_detector_onnx

    if args.format != "onnx":
        raise HybridViTError(f"detectors export to onnx only, not {args.format}")
    model = build_detector(args.model, args.head or "ssdlite", args.checkpoint)
    res = args.res or 320
    path, error = export_detector_onnx(model, args.out or f"{args.model}_{args.head or 'ssdlite'}.onnx", res)
    print(f"wrote {path} (onnx detector, one image [3, H, W] of any size, exported at {res}x{res})")
    print(f"checked against eager at {res}x{res + 16} and {res + 32}x{res + 48}: max error {error:.2e} "
          "(scores; boxes relative to the image side)")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export a model to ONNX, OpenVINO IR, TorchScript or Core ML, checked against eager")
    p.add_argument("model", help="a hybridvit model name (or any timm name), or a training output directory")
    p.add_argument("--format", default="onnx", help="onnx (default), openvino, torchscript or coreml")
    p.add_argument("--out", help="output path (default: MODEL.onnx / .xml (+ .bin) / .pt / .mlpackage)")
    p.add_argument("--res", type=positive_int, help="input resolution (default: the model's)")
    p.add_argument("--batch", type=positive_int, help="batch size to export with (default 2; 1 for coreml)")
    p.add_argument("--dynamic", action="store_true", help="also make H/W dynamic, if the graph verifies")
    p.add_argument("--fuse-bn", action="store_true", help="fold BatchNorm into the preceding convolutions")
    p.add_argument("--checkpoint", help="weights to load first (any layout hybridvit converts); the class count is the checkpoint's")
    p.add_argument("--weights", choices=("best", "last", "ema"), default="best",
                   help="which weights of a training output directory (default best)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads (default 1)")
    from ..tasks import DETECTION_HEADS

    p.add_argument("--task", choices=("classification", "detection"), default="classification",
                   help="detection: export the whole detector (onnx; --checkpoint a detection run directory)")
    p.add_argument("--head", choices=tuple(DETECTION_HEADS), help="detection head (default: ssdlite)")
    p.add_argument("--quantize", choices=("int8",),
                   help="also write a post-training INT8 copy, MODEL_int8 (openvino: NNCF; onnx: onnxruntime's quantizer, "
                        "the faster one on CPUs without VNNI: docs/export.md, INT8); classifiers only")
    p.add_argument("--calibration", help="INT8 calibration images: 'digits' (default), or a data folder (its train/ split)")
    p.add_argument("--calibration-size", type=positive_int, default=300, help="number of calibration images (default 300)")
    p.set_defaults(func=cmd_export)
