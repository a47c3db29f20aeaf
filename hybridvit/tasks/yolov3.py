"""YOLOv3: XFormer's detector (XFormer reports 33.2 AP on COCO with 6.3M params and 3.8 GFLOPs).

No permissive YOLOv3 head is installable here, so this one follows mmdetection's lightweight design,
`configs/yolo/yolov3_mobilenetv2_8xb24-320-300e_coco.py` with `mmdet/models/necks/yolo_neck.py`
(`YOLOV3Neck`, `DetectionBlock`), `mmdet/models/dense_heads/yolo_head.py` (`YOLOV3Head`),
`GridAssigner` and `YOLOBBoxCoder`:
- three scales, strides 32/16/8, three anchors each (the 320 config's COCO anchors);
- neck: a detection block (1x1 / 3x3 / 1x1 / 3x3 / 1x1 conv-BN-LeakyReLU(0.1)) per scale, 96 channels
  each, deeper outputs upsampled x2 and concatenated with the next shallower map;
- head per scale: 3x3 conv-BN-LeakyReLU bridge (96), 1x1 conv to anchors x (4 box + 1 objectness + C);
- targets: an anchor is positive if it sits in the cell holding a ground-truth centre and its IoU
  exceeds 0.5 (and the best such anchor per ground truth always is), negative if its IoU with every
  ground truth is <= 0.5, ignored otherwise;
- loss: objectness BCE (positives and negatives), class BCE, centre BCE x2 and log-size MSE x2 on
  positives, summed as mmdetection does and divided by the batch size (ours: independent of batch);
- decoding: centre = anchor centre + (sigmoid - 0.5) * stride, size = anchor size * exp; score =
  objectness x class probability; objectness >= 0.005, top 1000, score >= 0.05, per-class NMS at 0.45,
  100 per image (the config's test_cfg), with torchvision's `batched_nms`.
Images keep their aspect ratio (longer side `image_size`) and are padded to a multiple of 32.
"""
from __future__ import annotations

import math
import os
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import get_pretrained_cfg
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import Conv2dNormActivation, batched_nms, box_iou

from .backbone import create_feature_extractor

STRIDES = (32, 16, 8)  # deepest first, the order of mmdetection's YOLOV3Neck / YOLOV3Head
# yolov3_mobilenetv2_8xb24-320-300e_coco.py: (w, h) in pixels at 320, per stride 32 / 16 / 8.
ANCHORS_320 = (
    ((220, 125), (128, 222), (264, 266)),
    ((35, 87), (102, 96), (60, 170)),
    ((10, 15), (24, 36), (72, 42)),
)


def conv_bn_leaky(in_channels: int, out_channels: int, kernel_size: int) -> Conv2dNormActivation:
    """mmdetection's YOLO `ConvModule`: conv (no bias), BN, LeakyReLU(0.1)."""
    return Conv2dNormActivation(
        in_channels, out_channels, kernel_size, activation_layer=partial(nn.LeakyReLU, negative_slope=0.1)
    )


def detection_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """mmdetection `DetectionBlock`: 1x1 n, 3x3 2n, 1x1 n, 3x3 2n, 1x1 n."""
    n = out_channels
    return nn.Sequential(
        conv_bn_leaky(in_channels, n, 1),
        conv_bn_leaky(n, 2 * n, 3),
        conv_bn_leaky(2 * n, n, 1),
        conv_bn_leaky(n, 2 * n, 3),
        conv_bn_leaky(2 * n, n, 1),
    )


class YOLOv3Neck(nn.Module):
    """mmdetection `YOLOV3Neck`: deepest map first; each shallower map gets the deeper output, 1x1-reduced and upsampled."""

    def __init__(self, in_channels: list[int], out_channels: list[int]) -> None:
        super().__init__()
        self.detect = nn.ModuleList([detection_block(in_channels[0], out_channels[0])])
        self.lateral = nn.ModuleList()
        for i in range(1, len(in_channels)):
            self.lateral.append(conv_bn_leaky(out_channels[i - 1], out_channels[i], 1))
            self.detect.append(detection_block(in_channels[i] + out_channels[i], out_channels[i]))

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """`features` deepest first; returns one map per scale, deepest first."""
        out = self.detect[0](features[0])
        outs = [out]
        for feature, lateral, detect in zip(features[1:], self.lateral, self.detect[1:]):
            up = F.interpolate(lateral(out), size=feature.shape[-2:], mode="nearest")
            out = detect(torch.cat([up, feature], dim=1))
            outs.append(out)
        return outs


class YOLOv3Head(nn.Module):
    """mmdetection `YOLOV3Head` layers: per scale a 3x3 bridge conv and a 1x1 prediction conv."""

    def __init__(self, in_channels: list[int], out_channels: list[int], num_anchors: int, num_classes: int) -> None:
        super().__init__()
        self.num_attrib = 5 + num_classes  # box (4), objectness (1), classes
        self.bridges = nn.ModuleList([conv_bn_leaky(i, o, 3) for i, o in zip(in_channels, out_channels)])
        self.predictors = nn.ModuleList([nn.Conv2d(o, num_anchors * self.num_attrib, 1) for o in out_channels])
        # mmdetection YOLOV3Head.init_weights: normal(0, 0.01), then priors for objectness
        # (8 objects per 608-pixel image's map) and classes (0.01), as in ultralytics/yolov3.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
        for predictor, stride in zip(self.predictors, STRIDES):
            bias = predictor.bias.data.view(num_anchors, self.num_attrib)
            bias[:, :4] = 0.0
            bias[:, 4] = _logit(8 / (608 / stride) ** 2)
            bias[:, 5:] = _logit(0.01)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per scale [N, H * W * anchors, 5 + C], anchors location-major."""
        outs = []
        for feature, bridge, predictor in zip(features, self.bridges, self.predictors):
            y = predictor(bridge(feature))
            outs.append(y.permute(0, 2, 3, 1).reshape(y.shape[0], -1, self.num_attrib))
        return outs


def _logit(p: float) -> float:
    return -math.log((1 - p) / p)


class YOLOv3(nn.Module):
    """YOLOv3 detector, torchvision-style: `model(images, targets)` -> losses, `model(images)` -> detections."""

    def __init__(
        self,
        model_name: str,
        num_classes: int,
        image_size: int = 320,
        neck_channels: tuple[int, int, int] = (96, 96, 96),
        anchors: tuple[tuple[tuple[float, float], ...], ...] | None = None,
        pos_iou_thresh: float = 0.5,
        neg_iou_thresh: float = 0.5,
        objectness_thresh: float = 0.005,
        topk_candidates: int = 1000,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.45,
        detections_per_img: int = 100,
        pretrained_path: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.backbone = create_feature_extractor(model_name, strides=STRIDES[::-1], pretrained_path=pretrained_path)
        in_channels = self.backbone.feature_info.channels()[::-1]
        self.neck = YOLOv3Neck(in_channels, list(neck_channels))
        if anchors is None:  # the 320 config's anchors, scaled to the input size
            anchors = tuple(tuple((w * image_size / 320, h * image_size / 320) for w, h in level) for level in ANCHORS_320)
        self.register_buffer("anchor_sizes", torch.tensor(anchors, dtype=torch.float32), persistent=False)
        self.head = YOLOv3Head(list(neck_channels), list(neck_channels), self.anchor_sizes.shape[1], num_classes)
        preprocessing = get_pretrained_cfg(model_name)
        self.transform = GeneralizedRCNNTransform(
            image_size, image_size, list(preprocessing.mean), list(preprocessing.std), size_divisible=max(STRIDES)
        )
        self.pos_iou_thresh, self.neg_iou_thresh = pos_iou_thresh, neg_iou_thresh
        self.objectness_thresh, self.topk_candidates = objectness_thresh, topk_candidates
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img

    def grid_anchors(self, feature_sizes: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Anchors (xyxy pixels), their stride and their cell index, all scales concatenated, location-major."""
        boxes, strides, cells = [], [], []
        offset = 0
        for (h, w), stride, sizes in zip(feature_sizes, STRIDES, self.anchor_sizes):
            ys, xs = torch.meshgrid(
                torch.arange(h, device=sizes.device), torch.arange(w, device=sizes.device), indexing="ij"
            )
            centers = (torch.stack([xs, ys], dim=-1).reshape(-1, 1, 2) + 0.5) * stride  # [HW, 1, 2]
            half = sizes.view(1, -1, 2) / 2
            boxes.append(torch.cat([centers - half, centers + half], dim=-1).reshape(-1, 4))
            strides.append(torch.full((h * w * len(sizes),), stride, device=sizes.device))
            cells.append((torch.arange(h * w, device=sizes.device) + offset).repeat_interleave(len(sizes)))
            offset += h * w
        return torch.cat(boxes), torch.cat(strides).float(), torch.cat(cells)

    def assign(
        self, anchors: torch.Tensor, strides: torch.Tensor, cells: torch.Tensor,
        feature_sizes: list[tuple[int, int]], gt_boxes: torch.Tensor,
    ) -> torch.Tensor:
        """mmdetection `GridAssigner`: per anchor -1 ignore, 0 negative, k + 1 the k-th ground truth."""
        assigned = torch.full((len(anchors),), -1, dtype=torch.long, device=anchors.device)
        if len(gt_boxes) == 0:
            return assigned.zero_()
        ious = box_iou(gt_boxes, anchors)  # [G, A]
        assigned[ious.max(dim=0).values <= self.neg_iou_thresh] = 0
        # Responsible anchors: those in the cell, at each scale, that holds the ground truth's centre.
        centers = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
        responsible = torch.zeros_like(ious, dtype=torch.bool)
        offset = 0
        for (h, w), stride in zip(feature_sizes, STRIDES):
            cx = (centers[:, 0] / stride).floor().long().clamp(0, w - 1)
            cy = (centers[:, 1] / stride).floor().long().clamp(0, h - 1)
            responsible |= cells[None, :] == (offset + cy * w + cx)[:, None]
            offset += h * w
        ious = ious.masked_fill(~responsible, -1.0)
        best_iou, best_gt = ious.max(dim=0)
        positive = best_iou > self.pos_iou_thresh
        assigned[positive] = best_gt[positive] + 1
        # Each ground truth keeps its best responsible anchor(s); a later ground truth wins ties.
        gt_best = ious.max(dim=1, keepdim=True).values
        is_best = (ious == gt_best) & (gt_best > 0)
        gt_index = torch.arange(1, len(gt_boxes) + 1, device=anchors.device)[:, None]
        best_owner = (is_best * gt_index).max(dim=0).values
        assigned[best_owner > 0] = best_owner[best_owner > 0]
        return assigned

    def compute_loss(
        self, predictions: torch.Tensor, targets: list[dict[str, torch.Tensor]], feature_sizes: list[tuple[int, int]]
    ) -> dict[str, torch.Tensor]:
        anchors, strides, cells = self.grid_anchors(feature_sizes)
        losses = dict.fromkeys(("classification", "objectness", "bbox_xy", "bbox_wh"), predictions.new_zeros(()))
        for prediction, target in zip(predictions, targets):
            assigned = self.assign(anchors, strides, cells, feature_sizes, target["boxes"])
            pos = assigned > 0
            considered = assigned >= 0
            losses["objectness"] = losses["objectness"] + F.binary_cross_entropy_with_logits(
                prediction[considered, 4], pos[considered].float(), reduction="sum"
            )
            if not pos.any():
                continue
            gt = target["boxes"][assigned[pos] - 1]
            anchor, stride = anchors[pos], strides[pos, None]
            # YOLOBBoxCoder.encode: centre offset in the cell in (0, 1), log size ratio.
            xy_target = (((gt[:, :2] + gt[:, 2:]) - (anchor[:, :2] + anchor[:, 2:])) / 2 / stride + 0.5).clamp(1e-6, 1 - 1e-6)
            wh_target = torch.log(((gt[:, 2:] - gt[:, :2]) / (anchor[:, 2:] - anchor[:, :2])).clamp(min=1e-6))
            cls_target = F.one_hot(target["labels"][assigned[pos] - 1] - 1, self.num_classes).float()
            p = prediction[pos]
            losses["classification"] = losses["classification"] + F.binary_cross_entropy_with_logits(
                p[:, 5:], cls_target, reduction="sum"
            )
            losses["bbox_xy"] = losses["bbox_xy"] + 2 * F.binary_cross_entropy_with_logits(p[:, :2], xy_target, reduction="sum")
            losses["bbox_wh"] = losses["bbox_wh"] + 2 * F.mse_loss(p[:, 2:4], wh_target, reduction="sum")
        return {name: value / len(targets) for name, value in losses.items()}

    def postprocess(
        self, predictions: torch.Tensor, feature_sizes: list[tuple[int, int]], image_sizes: list[tuple[int, int]]
    ) -> list[dict[str, torch.Tensor]]:
        anchors, strides, _ = self.grid_anchors(feature_sizes)
        detections = []
        for prediction, (height, width) in zip(predictions, image_sizes):
            objectness = prediction[:, 4].sigmoid()
            keep = objectness >= self.objectness_thresh
            if keep.sum() > self.topk_candidates:
                keep = keep & (objectness >= objectness[keep].topk(self.topk_candidates).values[-1])
            p, anchor, stride = prediction[keep], anchors[keep], strides[keep, None]
            # YOLOBBoxCoder.decode
            centers = (anchor[:, :2] + anchor[:, 2:]) / 2 + (p[:, :2].sigmoid() - 0.5) * stride
            half = (anchor[:, 2:] - anchor[:, :2]) / 2 * p[:, 2:4].exp()
            boxes = torch.cat([centers - half, centers + half], dim=-1)
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
            scores = p[:, 5:].sigmoid() * objectness[keep, None]  # [K, C]
            box_idx, label_idx = torch.nonzero(scores > self.score_thresh, as_tuple=True)
            boxes, scores, labels = boxes[box_idx], scores[box_idx, label_idx], label_idx + 1
            kept = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            detections.append({"boxes": boxes[kept], "scores": scores[kept], "labels": labels[kept]})
        return detections

    def forward(
        self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        if self.training and targets is None:
            raise ValueError("YOLOv3 needs targets in training mode")
        original_sizes = [tuple(image.shape[-2:]) for image in images]
        image_list, targets = self.transform(images, targets)
        features = self.backbone(image_list.tensors)[::-1]  # deepest first
        feature_sizes = [tuple(f.shape[-2:]) for f in features]
        predictions = torch.cat(self.head(self.neck(features)), dim=1)
        if self.training:
            return self.compute_loss(predictions, targets, feature_sizes)
        detections = self.postprocess(predictions, feature_sizes, image_list.image_sizes)
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)


def create_yolov3(model_name: str, num_classes: int, **kwargs) -> YOLOv3:
    """YOLOv3 with `model_name` as backbone and `num_classes` foreground classes; `kwargs` go to `YOLOv3`."""
    return YOLOv3(model_name, num_classes, **kwargs)
