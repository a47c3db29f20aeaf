"""Semantic-segmentation scores from one confusion matrix accumulated over the whole set.

This is the number mmseg (`mmseg/evaluation/metrics/iou_metric.py`) and ml-cvnets report: per-class
IoU = TP / (TP + FP + FN) over all pixels of all images, pixels labelled `ignore_index` left out,
mIoU = the mean over classes that occur in the labels or the predictions (mmseg's nanmean); pixel
accuracy = correct / labelled pixels. Not a mean of per-image IoUs (torchmetrics' `MeanIoU`).
Optional test-time augmentation: softmax averaged over rescaled and flipped inputs (mmseg `aug_test`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """[num_classes, num_classes] int64 counts, rows = label, columns = prediction; ignored labels dropped."""
    valid = target != ignore_index
    index = target[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_scores(confusion: torch.Tensor) -> dict[str, float | list[float]]:
    """mIoU, pixel accuracy (both in %) and per-class IoU (%, NaN for a class absent from labels and predictions)."""
    confusion = confusion.double()
    true_positive = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    iou = true_positive / union  # 0/0 = NaN: the class never occurs
    labelled = confusion.sum()
    return {
        "miou": 100 * iou.nanmean().item() if labelled > 0 else 0.0,
        "pixel_acc": 100 * (true_positive.sum() / labelled).item() if labelled > 0 else 0.0,
        "class_iou": (100 * iou).tolist(),
    }


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module, images: torch.Tensor, scales: Sequence[float] = (1.0,), flip: bool = False
) -> torch.Tensor:
    """Class scores at the input size: logits for a single pass, else softmax averaged over scales (x flips)."""
    if tuple(scales) == (1.0,) and not flip:
        return model(images)
    size = images.shape[-2:]
    total = None
    for scale in scales:
        scaled = images if scale == 1.0 else F.interpolate(
            images, scale_factor=scale, mode="bilinear", align_corners=False
        )
        for flipped in (False, True) if flip else (False,):
            x = scaled.flip(-1) if flipped else scaled
            probs = model(x).float().softmax(1)
            probs = probs.flip(-1) if flipped else probs
            probs = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)
            total = probs if total is None else total + probs
    return total / (len(scales) * (2 if flip else 1))
