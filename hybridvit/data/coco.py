"""COCO-format detection data: `instances_*.json` + an image folder -> (image, target), and SSD augmentation.

A sample is a float image [3, H, W] in 0..1 and a torchvision detection target: `boxes` (xyxy,
absolute pixels, float32), `labels` (int64, contiguous 1..K in the order of the category ids;
`category_ids[label - 1]` maps back for a results json), `image_id`, and with `masks=True`
uint8 instance masks [N, H, W] decoded from polygons or RLE by pycocotools.
Invalid annotations (unknown category id, malformed or zero-area box, a box wholly outside its
image, an undecodable segmentation) and images whose file is missing are skipped and counted in
`skipped`; they never stop a run. Crowd annotations are not training targets (as in torchvision's
references) but stay in `ground_truth()` for COCO evaluation, which ignores detections on them.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

from ..errors import DataError
from .datasets import open_rgb

# SSD's augmentation fills zoomed-out borders with the ImageNet mean (torchvision references/detection).
_MEAN_FILL = (124, 116, 104)


class CocoDetection(Dataset):
    """Images of a COCO `instances_*.json` with their valid annotations; see the module docstring."""

    def __init__(
        self,
        ann_file: str | os.PathLike,
        image_dir: str | os.PathLike,
        transform: Callable | None = None,
        masks: bool = False,
        drop_empty: bool = False,
    ) -> None:
        self.ann_file, self.image_dir = Path(ann_file), Path(image_dir)
        self.transform, self.masks = transform, masks
        try:
            coco = json.loads(self.ann_file.read_text())
            categories = sorted(coco["categories"], key=lambda c: c["id"])
            images, annotations = coco["images"], coco.get("annotations", [])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataError(f"cannot read COCO annotations {self.ann_file}: {err}") from None
        if not categories:
            raise DataError(f"COCO annotations {self.ann_file} define no categories")
        self.category_ids = [c["id"] for c in categories]
        self.classes = [str(c.get("name", c["id"])) for c in categories]
        self.label_of = {cat_id: label for label, cat_id in enumerate(self.category_ids, start=1)}
        self.skipped: list[str] = []
        by_image: dict[Any, list[dict]] = defaultdict(list)
        for ann in annotations:
            by_image[ann.get("image_id")].append(ann)
        self.images: list[dict] = []
        self.annotations: dict[int, list[dict]] = {}  # image id -> valid annotations (crowd included)
        for image in images:
            path = self.image_dir / image["file_name"]
            if not path.is_file():
                self._skip(f"image {image['id']}: file {path} not found")
                continue
            if "width" not in image or "height" not in image:
                try:
                    with Image.open(path) as header:
                        image = {**image, "width": header.width, "height": header.height}
                except OSError as err:
                    self._skip(f"image {image['id']}: unreadable file {path} ({err})")
                    continue
            kept = [ann for ann in by_image.get(image["id"], []) if self._valid(ann, image)]
            if drop_empty and not any(not ann.get("iscrowd", 0) for ann in kept):
                continue
            self.images.append(image)
            self.annotations[image["id"]] = kept
        if not self.images:
            raise DataError(f"no usable images in {self.ann_file} (images in {self.image_dir}; {len(self.skipped)} skipped)")

    def _skip(self, reason: str) -> None:
        self.skipped.append(f"{self.ann_file.name}: {reason}")

    def _valid(self, ann: dict, image: dict) -> bool:
        where = f"annotation {ann.get('id')} of image {image['id']}"
        if ann.get("category_id") not in self.label_of:
            self._skip(f"{where}: unknown category id {ann.get('category_id')}")
            return False
        box = ann.get("bbox")
        if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)):
            self._skip(f"{where}: malformed bbox {box}")
            return False
        x, y, w, h = box
        if w <= 0 or h <= 0:
            self._skip(f"{where}: zero-area bbox {box}")
            return False
        if min(x + w, image["width"]) <= max(x, 0) or min(y + h, image["height"]) <= max(y, 0):
            self._skip(f"{where}: bbox {box} lies outside the {image['width']}x{image['height']} image")
            return False
        if self.masks and not ann.get("iscrowd", 0):
            try:
                _decode_mask(ann["segmentation"], image["height"], image["width"])
            except (KeyError, TypeError, ValueError, IndexError) as err:
                self._skip(f"{where}: undecodable segmentation ({err})")
                return False
        return True

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image = self.images[index]
        try:
            pil = open_rgb(self.image_dir / image["file_name"])
        except OSError as err:  # a file that broke after the scan: fall back to the next sample
            warnings.warn(f"skipping unreadable image {self.image_dir / image['file_name']}: {err}", stacklevel=2)
            return self[(index + 1) % len(self)]
        height, width = pil.height, pil.width
        anns = [ann for ann in self.annotations[image["id"]] if not ann.get("iscrowd", 0)]
        boxes = torch.tensor([ann["bbox"] for ann in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        target: dict[str, Any] = {
            "boxes": _clamped_boxes(boxes, height, width),
            "labels": torch.tensor([self.label_of[ann["category_id"]] for ann in anns], dtype=torch.int64),
            "image_id": image["id"],
        }
        if self.masks:
            masks = np.stack([_decode_mask(ann["segmentation"], height, width) for ann in anns]) if anns else np.zeros((0, height, width), np.uint8)
            target["masks"] = tv_tensors.Mask(torch.from_numpy(masks))
        img = tv_tensors.Image(TF.pil_to_tensor(pil))
        if self.transform is not None:
            img, target = self.transform(img, target)
        target["boxes"] = target["boxes"].as_subclass(torch.Tensor)
        if "masks" in target:
            target["masks"] = target["masks"].as_subclass(torch.Tensor)
        return TF.to_dtype(img, torch.float32, scale=True).as_subclass(torch.Tensor), target

    def ground_truth(self) -> dict[str, Any]:
        """A COCO dict of the kept images and valid annotations, the reference for `coco_evaluate`."""
        categories = [{"id": i, "name": n} for i, n in zip(self.category_ids, self.classes)]
        annotations = []
        for image in self.images:
            for ann in self.annotations[image["id"]]:
                annotations.append({**ann, "id": len(annotations) + 1, "area": ann.get("area", ann["bbox"][2] * ann["bbox"][3])})
        return {"images": self.images, "annotations": annotations, "categories": categories}


def _clamped_boxes(boxes: torch.Tensor, height: int, width: int) -> tv_tensors.BoundingBoxes:
    boxes = boxes.clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    return tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width))


def _decode_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """uint8 [H, W] from COCO polygons, uncompressed RLE or compressed RLE (pycocotools)."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):  # polygons: lists of x, y coordinates
        if not segmentation or any(len(p) < 6 or len(p) % 2 for p in segmentation):
            raise ValueError("a polygon needs at least 3 (x, y) points")
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    if list(rle["size"]) != [height, width]:
        raise ValueError(f"RLE size {rle['size']} differs from the image's {[height, width]}")
    return mask_utils.decode(rle).astype(np.uint8)


def detection_transform(
    train: bool, hflip: float = 0.5, photometric: bool = True, iou_crop: bool = True,
    affine: tuple[float, float, float] | None = None,
) -> Callable:
    """SSD augmentation (SSD §2.2, torchvision references/detection `ssdlite` preset) with transforms.v2.

    Photometric distortion, zoom-out, IoU crop and flip move boxes and masks together; boxes that
    end up degenerate are dropped with their labels and masks. Resizing is the detector's job.
    `affine` = (translate, min scale, max scale) adds a random shift and zoom first (ours, for data whose
    objects are too small for zoom-out).
    """
    if not train:
        return T.Identity()
    steps: list[Callable] = []
    if affine is not None:
        shift, low, high = affine
        steps.append(T.RandomAffine(degrees=0, translate=(shift, shift), scale=(low, high)))
    if photometric:
        steps.append(T.RandomPhotometricDistort(p=0.5))
    if iou_crop:
        steps += [T.RandomZoomOut(fill={tv_tensors.Image: _MEAN_FILL, tv_tensors.Mask: 0}, p=0.5), T.RandomIoUCrop()]
    if hflip:
        steps.append(T.RandomHorizontalFlip(hflip))
    steps.append(T.SanitizeBoundingBoxes())
    return T.Compose(steps)


def collate_detection(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """A list of images and a list of targets, the input torchvision's detectors take."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def find_coco_split(root: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """(annotation json, image folder) of `split` in a COCO tree.

    Accepts `annotations/instances_<split>*.json` with images in `<tag>/`, `images/<tag>/`,
    `<split>/`, `images/<split>/` or `images/`, where `<tag>` is the json name after `instances_`
    (`train2017`, `val`).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data directory not found: {root}")
    found = sorted((root / "annotations").glob(f"instances_{split}*.json"))
    if not found:
        raise DataError(f"{root} has no annotations/instances_{split}*.json (expected a COCO layout)")
    ann_file = found[0]
    tag = ann_file.stem.removeprefix("instances_")
    candidates = dict.fromkeys((tag, f"images/{tag}", split, f"images/{split}", "images"))
    for name in candidates:
        if (root / name).is_dir():
            return ann_file, root / name
    raise DataError(f"{root} has no image folder for {ann_file.name} (looked for {', '.join(f'{n}/' for n in candidates)})")
