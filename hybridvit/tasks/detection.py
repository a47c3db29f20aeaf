"""Object detection: the papers' detectors around any registered backbone, behind `create_detector`.

Which paper uses which head: MobileViT SSDLite (§4.2), XFormer YOLOv3, MoCoViT RetinaNet and
Mask R-CNN; BOAT evaluates with UperNet segmentation (see the segmentation heads). Every detector is
torchvision-style: `model(images, targets)` returns a loss dict in training, `model(images)` a list of
`{boxes, labels, scores}` in eval; images are float [3, H, W] in 0..1, normalised with the backbone's
pretrained-cfg mean/std and resized inside the detector; boxes are xyxy input pixels; labels 1..K.
"""
from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from ..errors import UnknownHeadError
from .maskrcnn import create_maskrcnn
from .retinanet import create_retinanet
from .ssdlite import create_ssdlite
from .yolov3 import create_yolov3

DETECTION_HEADS: dict[str, Callable[..., nn.Module]] = {
    "ssdlite": create_ssdlite,
    "retinanet": create_retinanet,
    "maskrcnn": create_maskrcnn,
    "yolov3": create_yolov3,
}


def set_score_threshold(detector: nn.Module, threshold: float) -> None:
    """Keep only detections scoring above `threshold` inside `detector` (Mask R-CNN filters in its RoI heads)."""
    for module in (detector, getattr(detector, "roi_heads", None)):
        if module is not None and hasattr(module, "score_thresh"):
            module.score_thresh = threshold


def create_detector(head: str, backbone: str, num_classes: int, **kwargs) -> nn.Module:
    """Detector `head` around the registered model `backbone`, for `num_classes` foreground classes (80 for COCO).

    `kwargs` go to the head's builder, e.g. `image_size`, `pretrained_path` (backbone classification
    weights), or the torchvision detector's post-processing thresholds.
    """
    return DETECTION_HEADS[UnknownHeadError.check("detection", head, DETECTION_HEADS)](backbone, num_classes, **kwargs)
