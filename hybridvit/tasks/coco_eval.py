"""COCO detection metrics by pycocotools, the reference every paper reports (no home-made mAP).

`coco_evaluate` gives AP (IoU 0.50:0.95), AP50, AP75 and APs/APm/APl for boxes, and the same with
a `mask_` prefix for instance masks, as fractions in 0..1; -1 means the ground truth has no object
in that size range (pycocotools' convention). Predictions are torchvision detector outputs,
mapped back to COCO category ids with `to_coco_results`.
"""
from __future__ import annotations

import contextlib
import copy
import io
from typing import Any, Sequence

import numpy as np
import torch

BOX_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
MASK_METRICS = tuple(f"mask_{name}" for name in BOX_METRICS)
MASK_THRESHOLD = 0.5  # mask probability from which a pixel is in the instance (torchvision references)


def to_coco_results(
    predictions: Sequence[dict[str, torch.Tensor]], image_ids: Sequence[int], category_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """COCO results entries from detector outputs: xyxy boxes -> xywh, labels 1..K -> `category_ids[label - 1]`.

    Outputs with `masks` ([N, 1, H, W] probabilities, Mask R-CNN) also get an RLE `segmentation`.
    """
    from pycocotools import mask as mask_utils

    results = []
    for pred, image_id in zip(predictions, image_ids):
        boxes = pred["boxes"].detach().float().cpu()
        boxes[:, 2:] -= boxes[:, :2]
        labels, scores = pred["labels"].tolist(), pred["scores"].tolist()
        rles = []
        if "masks" in pred:
            binary = (pred["masks"].detach().cpu()[:, 0] >= MASK_THRESHOLD).numpy().astype(np.uint8)
            rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
        for i, (box, label, score) in enumerate(zip(boxes.tolist(), labels, scores)):
            entry = {"image_id": int(image_id), "category_id": category_ids[label - 1], "bbox": box, "score": score}
            if rles:
                entry["segmentation"] = {"size": rles[i]["size"], "counts": rles[i]["counts"].decode("ascii")}
            results.append(entry)
    return results


def coco_evaluate(
    ground_truth: dict[str, Any],
    results: Sequence[dict[str, Any]],
    iou_types: Sequence[str] = ("bbox",),
    image_ids: Sequence[int] | None = None,
) -> dict[str, float]:
    """COCO metrics of `results` against the COCO dict `ground_truth`, over `image_ids` (default: all its images).

    `iou_types`: "bbox" and/or "segm"; the segm metrics are named `mask_AP`, `mask_AP50`, ...
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and tables
        gt = COCO()
        gt.dataset = copy.deepcopy(ground_truth)
        gt.createIndex()
        ids = sorted(image_ids) if image_ids is not None else sorted(gt.getImgIds())
        metrics: dict[str, float] = {}
        for iou_type in iou_types:
            names = BOX_METRICS if iou_type == "bbox" else MASK_METRICS
            key = "bbox" if iou_type == "bbox" else "segmentation"
            entries = [{k: v for k, v in r.items() if k in ("image_id", "category_id", "score", key)} for r in results]
            if not entries:  # pycocotools cannot load an empty result list: nothing detected, AP 0
                metrics.update(dict.fromkeys(names, 0.0))
                continue
            evaluator = COCOeval(gt, gt.loadRes(copy.deepcopy(entries)), iou_type)
            evaluator.params.imgIds = ids
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            metrics.update(zip(names, (float(v) for v in evaluator.stats[: len(names)])))
    return metrics
