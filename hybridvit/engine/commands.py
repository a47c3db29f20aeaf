"""CLI verbs `train`, `eval` and `predict` (registered by hybridvit/cli.py)."""
from __future__ import annotations

import argparse

from ..argtypes import (
    device, non_negative_float, non_negative_int, positive_float, positive_int, positive_int_list, seed, unit_interval,
)
from ..errors import DataError
from .recipes import RECIPES


def cmd_train(args: argparse.Namespace) -> None:
    from .distributed import cleanup
    from .train import TrainConfig, Trainer

    cfg = TrainConfig(
        model=args.model, data=args.data, recipe=args.recipe, task=args.task, head=args.head,
        backbone_checkpoint=args.backbone_checkpoint, output=args.output, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, img_size=args.img_size, multi_scale=args.multi_scale,
        scales=args.scales or (), batch_rule=args.batch_rule, warmup_epochs=args.warmup_epochs, ema_decay=args.ema_decay,
        amp=args.amp, resume=args.resume, overwrite=args.overwrite, max_steps=args.max_steps, seed=args.seed,
        workers=args.workers, device=args.device, dist_timeout=args.dist_timeout, progress=not args.no_progress,
        check_images=args.check_images, limit=args.limit, init=args.init, layer_decay=args.layer_decay,
        backbone_lr_ratio=args.backbone_lr_ratio, freeze_epochs=args.freeze_epochs, compile=args.compile,
        attn=args.attn,
    )
    try:
        trainer = Trainer(cfg)
        summary = trainer.run()
    finally:
        cleanup()
    if not trainer.info.is_main:
        return
    val = summary["val"]
    if cfg.task == "classification":
        result = f"val top-1 {val['top1']:.2f}% top-5 {val['top5']:.2f}% on {val['count']} images" if val else "no epoch finished"
        best = f"best top-1 {max(summary['best'], 0):.2f}%"
        skipped = "unreadable image(s)"
    elif cfg.task == "segmentation":
        result = (f"val mIoU {val['miou']:.2f}% pixel acc {val['pixel_acc']:.2f}% on {val['count']} images"
                  if val else "no epoch finished")
        best = f"best mIoU {max(summary['best'], 0):.2f}%"
        skipped = "bad image/mask pair(s)"
    else:
        result = (f"val AP {val['AP']:.3f} AP50 {val['AP50']:.3f} AP75 {val['AP75']:.3f} on {val['count']} images"
                  if val else "no epoch finished")
        best = f"best {summary['primary']} {max(summary['best'], 0):.3f}"
        skipped = "invalid annotation(s) or missing image(s)"
    print(f"done: {summary['epochs']} epochs, {summary['steps']} steps in {summary['seconds']:.1f}s; {result}; {best}")
    if summary["skipped"]:
        print(f"skipped {len(summary['skipped'])} {skipped}, e.g. {summary['skipped'][0]}")
    print(f"outputs in {summary['output']}")


def cmd_eval(args: argparse.Namespace) -> None:
    from .segmentation import eval_command, is_segmentation_run

    if is_segmentation_run(args.checkpoint):
        _eager_only("compile" if args.compile else args.backend, args.exported, "segmenters")
        return eval_command(args)
    import time

    import torch
    from torch.utils.data import DataLoader

    from ..data.datasets import TransformedDataset, build_eval_dataset, skip_unreadable
    from .evaluate import evaluate
    from .inference import load_trained

    from .distributed import resolve_device

    device = resolve_device(args.device)
    trained = load_trained(args.checkpoint, args.model, args.weights, args.img_size)
    backend = "compile" if args.compile else args.backend
    if trained.task == "detection":
        _eager_only(backend, args.exported, "detectors")
        trained.model.to(device)
        return _eval_detector(trained, args, device)
    runs = [("", trained.model, device)]  # eager f32 first; another back end beside it, on the CPU
    if backend != "eager" or args.exported:
        runtime = _runtime(args, trained, backend)
        label = f"{runtime.backend} {runtime.precision}" + (f" ({args.exported})" if args.exported else "")
        runs = [("eager f32", trained.model, device), (label, runtime.as_module(), torch.device("cpu"))]
    trained.model.to(device)
    dataset = build_eval_dataset(args.data, trained.classes, args.check_images)
    loader = DataLoader(TransformedDataset(dataset, trained.transform), batch_size=args.batch_size,
                        num_workers=args.workers, collate_fn=skip_unreadable)
    scanned = len(getattr(dataset, "skipped", []))  # unreadable at the scan, not in len(dataset)
    results = []
    for label, model, run_device in runs:
        start = time.perf_counter()
        result = evaluate(model, loader, run_device)
        # Plus those unreadable at load time, counted from what was evaluated (right with workers too).
        skipped = scanned + len(dataset) - result["count"]
        if result["count"] == 0:
            raise DataError(f"none of the {len(dataset)} images could be read ({skipped} unreadable)")
        timing = f" ({time.perf_counter() - start:.1f} s)" if len(runs) > 1 else ""
        print(f"{result['count']} images at {trained.img_size}px{', ' + label if label else ''}: top-1 {result['top1']:.2f}% "
              f"top-5 {result['top5']:.2f}% loss {result['loss']:.4f}{timing}")
        results.append(result)
    if len(results) > 1:
        print(f"top-1 {runs[1][0]} vs eager f32: {results[1]['top1'] - results[0]['top1']:+.2f} points")
    if skipped:
        print(f"skipped {skipped} unreadable image(s)")


def _eval_detector(trained, args: argparse.Namespace, device) -> None:
    from torch.utils.data import DataLoader

    from ..data.coco import CocoDetection, collate_detection, find_coco_split
    from ..data.digit_scenes import digit_scenes
    from .tasks import evaluate_detector

    masks = trained.info["head"] == "maskrcnn"
    coco = CocoDetection(*find_coco_split(args.data or digit_scenes(), "val"), masks=masks)
    if coco.category_ids != trained.info["category_ids"]:
        raise DataError(f"the categories of {coco.ann_file} ({coco.category_ids}) are not the ones the detector "
                        f"was trained on ({trained.info['category_ids']})")
    loader = DataLoader(coco, batch_size=args.batch_size, num_workers=args.workers, collate_fn=collate_detection)
    metrics = evaluate_detector(trained.model, loader, coco, masks, device)
    text = " ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k != "count")
    print(f"{metrics['count']} images: {text}")
    if coco.skipped:
        print(f"skipped {len(coco.skipped)} invalid annotation(s) or missing image(s), e.g. {coco.skipped[0]}")


def _predict_detector(trained, args: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    from torchvision.io import write_png
    from torchvision.transforms.v2 import functional as TF
    from torchvision.utils import draw_bounding_boxes

    from ..data.datasets import open_rgb
    from ..tasks.coco_eval import to_coco_results
    from ..tasks.detection import set_score_threshold
    from .inference import detect_files

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    set_score_threshold(trained.model, args.score_threshold)  # the detector's own floor (SSD: 0.01) would hide lower ones
    outputs = detect_files(trained, args.images)
    kept = [{k: v[o["scores"] >= args.score_threshold] for k, v in o.items()} for o in outputs]
    for file, det in zip(args.images, kept):
        names = [f"{trained.classes[label - 1]} {score:.2f}" for label, score in zip(det["labels"].tolist(), det["scores"].tolist())]
        drawn = draw_bounding_boxes(TF.pil_to_tensor(open_rgb(file)), det["boxes"], names, colors="red", width=2)
        png = out / f"{Path(file).stem}.png"
        write_png(drawn, str(png))
        print(f"{file}: {len(names)} detection(s) -> {png}")
        for name, box in zip(names, det["boxes"].round().int().tolist()):
            print(f"  {name}  {box}")
    results = to_coco_results(kept, range(1, len(kept) + 1), trained.info["category_ids"])
    (out / "results.json").write_text(json.dumps(results))
    print(f"COCO results (image_id = position of the file, from 1) in {out / 'results.json'}")


def _eager_only(backend: str, exported: str | None, what: str) -> None:
    if backend != "eager" or exported:
        from ..export.backends import BackendError

        raise BackendError(f"--backend / --exported / --compile run classifiers only; {what} run eager")


def _runtime(args: argparse.Namespace, trained, backend: str):
    """The trained classifier on `backend`, or the --exported file, on the CPU. INT8 back ends calibrate
    on training images of --data (default digits), never on the evaluated ones."""
    from ..export.backends import check_backend, open_exported, prepare

    check_backend(backend)
    if args.exported:
        return open_exported(args.exported, None if backend == "eager" else backend)
    calibration = None
    if backend.endswith("int8"):
        from ..export.quantize import calibration_images

        calibration = calibration_images(getattr(args, "data", None) or "digits", trained.transform)
    return prepare(backend, trained.model, trained.img_size, calibration=calibration)


def cmd_predict(args: argparse.Namespace) -> None:
    from .segmentation import is_segmentation_run, predict_command

    if is_segmentation_run(args.checkpoint):
        _eager_only(args.backend, args.exported, "segmenters")
        return predict_command(args)
    from .inference import load_trained, predict_files

    trained = load_trained(args.checkpoint, args.model, args.weights, args.img_size)
    if trained.task == "detection":
        _eager_only(args.backend, args.exported, "detectors")
        return _predict_detector(trained, args)
    if args.backend != "eager" or args.exported:
        trained.model = _runtime(args, trained, args.backend).as_module()
    for file, top in zip(args.images, predict_files(trained, args.images, args.topk)):
        print(file)
        for name, prob in top:
            print(f"  {100 * prob:6.2f}%  {name}")


def _task_options(p: argparse.ArgumentParser) -> None:
    from ..tasks import DETECTION_HEADS, SEGMENTATION_HEADS
    from .tasks import TASKS

    p.add_argument("--task", choices=tuple(TASKS), default="classification", help="what to train (default: classification)")
    p.add_argument("--head", choices=tuple(DETECTION_HEADS) + tuple(SEGMENTATION_HEADS),
                   help="detection head (default: ssdlite) or segmentation head (default: deeplabv3)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="classification: ImageFolder tree with train/ and val/ (default: embedded scikit-learn "
                                  "digits); detection: COCO tree with annotations/instances_{train,val}*.json "
                                  "(default: embedded digit scenes); segmentation: images/ + masks/, VOC, ADE20K or "
                                  "Cityscapes (default: embedded digit scenes)")
    p.add_argument("--img-size", type=positive_int, help="input resolution (default: the recipe's, else the model's)")
    p.add_argument("--workers", type=non_negative_int, default=0, help="data-loading worker processes")
    p.add_argument("--check-images", choices=("full", "header", "none"), default="full",
                   help="scan image files up front: decode fully (default), headers only, or not at all")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a model (default: on the embedded digits, a few CPU minutes)")
    p.add_argument("--model", required=True, help="model, or the detector's backbone")
    _common(p)
    _task_options(p)
    p.add_argument("--backbone-checkpoint",
                   help="detection: classification weights for the backbone (ours, a run directory, or any converter layout)")
    p.add_argument("--attn", metavar="MIXER",
                   help="token mixer in the model's attention slots: mhsa xfa mosa fsla (default: the paper's)")
    p.add_argument("--recipe", help=f"training recipe: {', '.join(RECIPES)} (default: digits; detection: digit_scenes)")
    p.add_argument("--output", default="runs/train", help="output directory (checkpoints, metrics.csv, curves.png)")
    p.add_argument("--epochs", type=positive_int)
    p.add_argument("--batch-size", type=positive_int, help="per process, at the base resolution")
    p.add_argument("--lr", type=positive_float, help="peak learning rate (default: the recipe's)")
    p.add_argument("--warmup-epochs", type=non_negative_float)
    p.add_argument("--multi-scale", action=argparse.BooleanOptionalAction, default=None,
                   help="MobileViT multi-scale variable-batch sampler (default: the recipe's)")
    p.add_argument("--scales", type=positive_int_list, help="explicit training resolutions, e.g. 24,32,40")
    p.add_argument("--batch-rule", choices=("v0.1", "head"), help="batch size per scale (spec mobilevit.md §4.3)")
    p.add_argument("--ema-decay", type=unit_interval, help="EMA of weights per step, evaluated (0: off; default: the recipe's)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="mixed precision (default: on CUDA)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --output exactly where it stopped (flags left out take the saved values)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --output")
    p.add_argument("--init", help="fine-tune: start from these weights (a run directory, or a weights file in any "
                   "layout hybridvit.convert reads); a new classifier if the class count differs")
    p.add_argument("--layer-decay", type=positive_float, help="layer-wise LR decay per layer from the head, e.g. 0.75")
    p.add_argument("--backbone-lr-ratio", type=non_negative_float,
                   help="LR of all but the classifier, relative to it, e.g. 0.1")
    p.add_argument("--freeze-epochs", type=non_negative_int, help="train only the classifier for this many epochs first")
    p.add_argument("--max-steps", type=positive_int, help="stop after this many optimizer steps in total (checkpoint kept)")
    p.add_argument("--seed", type=seed, help="random seed (default 0)")
    p.add_argument("--device", type=device, help="cpu, cuda, cuda:1 ... (default: the local GPU if any)")
    p.add_argument("--dist-timeout", type=positive_float, metavar="SECONDS",
                   help="under torchrun: how long a rank waits for the others before stopping with an error (default 600)")
    p.add_argument("--limit", type=positive_int, help="use only this many train and val images (quick checks)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--compile", action="store_true", help="torch.compile the model's forward (inductor; first steps compile)")
    p.set_defaults(func=cmd_train)

    for verb, func, text in (("eval", cmd_eval, "evaluate a trained model"), ("predict", cmd_predict, "top-k classes of image files")):
        p = subparsers.add_parser(verb, help=text)
        p.add_argument("--checkpoint", required=True, help="training output directory, or a weights file")
        p.add_argument("--model", help="model name (default: the one recorded in the output directory)")
        p.add_argument("--weights", choices=("best", "last", "ema"), default="best", help="which weights of an output directory")
        p.add_argument("--backend", default="eager", help="classifiers: eager (default), compile, onnxruntime, openvino, "
                       "openvino-bf16, openvino-int8, onnxruntime-int8 (eval reports eager f32 beside it)")
        p.add_argument("--exported", help="classifiers: an exported .onnx or OpenVINO .xml of this model, run instead")
        if verb == "eval":
            _common(p)
            p.add_argument("--batch-size", type=positive_int, default=64)
            p.add_argument("--device", type=device, help="cpu, cuda ... (default: a GPU if any)")
            p.add_argument("--tta-scales", type=lambda t: tuple(float(v) for v in t.split(",")),
                           help="segmentation: test-time scales, e.g. 0.5,0.75,1,1.25,1.5,1.75 (softmax averaged)")
            p.add_argument("--flip", action="store_true", help="segmentation: add horizontally flipped passes")
            p.add_argument("--compile", action="store_true", help="also evaluate torch.compile'd (= --backend compile)")
        else:
            p.add_argument("images", nargs="+", help="image files")
            p.add_argument("--img-size", type=positive_int)
            p.add_argument("--topk", type=positive_int, default=5)
            p.add_argument("--out", default="predictions", help="detection: folder for the PNGs with boxes and results.json; "
                           "segmentation: for the <image>_mask.png and <image>_overlay.png files")
            p.add_argument("--score-threshold", type=float, default=0.3, help="detection: lowest score drawn and written")
        p.set_defaults(func=func)
