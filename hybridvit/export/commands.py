"""`hybridvit export MODEL --format onnx|torchscript|coreml`."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..argtypes import positive_int


def cmd_export(args: argparse.Namespace) -> None:
    import torch

    from ..engine.checkpointing import read_run_info, run_weights
    from .api import FORMATS, check_format, export_model

    check_format(args.format)
    torch.set_num_threads(args.threads)
    run_dir = Path(args.model)
    info = read_run_info(run_dir) if run_dir.is_dir() else None  # a training output directory
    if info is not None and info.get("task") == "detection":
        args.model, args.head, args.checkpoint, args.task = info["model"], info["head"], str(run_dir), "detection"
    if args.task == "detection":
        return _export_detector(args)
    name, checkpoint, res, out = args.model, args.checkpoint, args.res, args.out
    if info is not None:  # its model, classes, input size and weights
        name, res = info["model"], res or info.get("img_size")
        checkpoint = checkpoint or run_weights(run_dir, args.weights)
        out = out or run_dir / f"{name}{FORMATS[args.format]}"
    result = export_model(
        name, args.format, out=out, res=res, batch=args.batch, dynamic=args.dynamic,
        fold_bn=args.fuse_bn, checkpoint=checkpoint,
    )
    dims = "dynamic batch" if result.dynamic_batch else "fixed batch"
    dims += ", dynamic H/W" if result.dynamic_hw else f", fixed {result.input_shape[2]}x{result.input_shape[3]}"
    print(f"wrote {result.path} ({result.format}, exported at {'x'.join(map(str, result.input_shape))}; {dims})")
    if result.max_error is not None:
        shapes = ", ".join("x".join(map(str, s)) for s in result.checked_shapes)
        print(f"checked against eager at {shapes}: max error {result.max_error:.2e}")
    for note in result.notes:
        print(f"note: {note}")


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
    p = subparsers.add_parser("export", help="export a model to ONNX, TorchScript or Core ML, checked against eager")
    p.add_argument("model", help="a hybridvit model name (or any timm name), or a training output directory")
    p.add_argument("--format", default="onnx", help="onnx (default), torchscript or coreml")
    p.add_argument("--out", help="output path (default: MODEL.onnx / .pt / .mlpackage)")
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
    p.set_defaults(func=cmd_export)
