"""Semantic-segmentation data: image + class-mask PNG folders, and paired transforms (transforms.v2).

Layouts, recognised from the directory `root` (`find_segmentation_split`):
- plain: `images/<split>/NAME.*` + `masks/<split>/NAME.png`, mask values = class indices, 255 ignored;
  the class names come from `classes.txt` (one per line) or, as in the digit scenes (the embedded
  default), from the categories of `annotations/instances_train.json` after a "background" class 0;
  otherwise from the largest value in the training masks.
- PASCAL VOC: `JPEGImages/` + `SegmentationClass/` (palette PNGs) + `ImageSets/Segmentation/<split>.txt`
  (`root` may be VOCdevkit, VOC2012 or their parent); 21 classes, the 255 border ignored.
- ADE20K (`ADEChallengeData2016`): `images/{training,validation}/` + `annotations/...`; value 0
  ("other") is ignored and 1..150 become 0..149 (mmseg's `reduce_zero_label`).
- Cityscapes: `leftImg8bit/<split>/<city>/*_leftImg8bit.png` + `gtFine/.../*_gtFine_labelIds.png`;
  label ids map to the 19 train ids of cityscapesScripts' `labels.py`, every other id to 255.
A sample whose mask is unreadable, whose size differs from its image's, or which holds a value that
is neither a class nor 255 is skipped and counted (`skipped`), never stopping a run.
"""
from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2 as T

from ..errors import DataError
from .datasets import IMAGE_EXTENSIONS, open_rgb

IGNORE_INDEX = 255
VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]
CITYSCAPES_CLASSES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
]
# cityscapesScripts labels.py: label id -> train id for the 19 evaluated classes (ids 0..33; others ignored).
CITYSCAPES_TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
    27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
_UNKNOWN = -1


def value_table(mapping: dict[int, int], ignored: range | list[int] = ()) -> np.ndarray:
    """A 256-entry lookup from stored mask values to class indices: 255 for `ignored`, -1 for unknown values."""
    table = np.full(256, _UNKNOWN, dtype=np.int16)
    table[list(ignored)] = IGNORE_INDEX
    table[IGNORE_INDEX] = IGNORE_INDEX
    for stored, cls in mapping.items():
        table[stored] = cls
    return table


@dataclass
class SegmentationSplit:
    """The (image, mask) files of one split with the value lookup and class names of its layout."""

    pairs: list[tuple[Path, Path]]
    classes: list[str]
    table: np.ndarray | None  # None: infer the classes from the masks
    layout: str
    missing: list[str] = field(default_factory=list)  # images without a mask


def _by_stem(folder: Path, extensions: tuple[str, ...]) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.rglob("*")) if p.suffix.lower() in extensions and p.is_file()}


def _pair(image_dir: Path, mask_dir: Path, image_suffix: str = "", mask_suffix: str = "") -> tuple[list, list]:
    masks = _by_stem(mask_dir, (".png",))
    pairs, missing = [], []
    for stem, image in _by_stem(image_dir, IMAGE_EXTENSIONS).items():
        key = stem[: len(stem) - len(image_suffix)] + mask_suffix if image_suffix and stem.endswith(image_suffix) else stem
        if key in masks:
            pairs.append((image, masks[key]))
        else:
            missing.append(str(image))
    return pairs, missing


def _voc_root(root: Path) -> Path | None:
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "SegmentationClass").is_dir() and (candidate / "JPEGImages").is_dir():
            return candidate
    return None


def _plain_classes(root: Path) -> tuple[list[str], np.ndarray | None]:
    names = root / "classes.txt"
    if names.is_file():
        classes = [line.strip() for line in names.read_text().splitlines() if line.strip()]
        return classes, value_table({i: i for i in range(len(classes))})
    coco = root / "annotations" / "instances_train.json"
    if coco.is_file():
        categories = sorted(json.loads(coco.read_text())["categories"], key=lambda c: c["id"])
        if [c["id"] for c in categories] == list(range(1, len(categories) + 1)):
            classes = ["background"] + [str(c["name"]) for c in categories]
            return classes, value_table({i: i for i in range(len(classes))})
    return [], None


def find_segmentation_split(root: str | os.PathLike, split: str) -> SegmentationSplit:
    """Recognise the layout of `root` (see the module docstring) and list the `split` ("train" / "val")."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data directory not found: {root}")
    if (voc := _voc_root(root)) is not None:
        listing = voc / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not listing.is_file():
            raise DataError(f"PASCAL VOC layout in {voc} but no split list {listing}")
        pairs, missing = [], []
        for name in listing.read_text().split():
            image, mask = voc / "JPEGImages" / f"{name}.jpg", voc / "SegmentationClass" / f"{name}.png"
            (pairs.append((image, mask)) if mask.is_file() else missing.append(str(image)))
        return SegmentationSplit(pairs, list(VOC_CLASSES), value_table({i: i for i in range(21)}), "voc", missing)
    if (root / "images" / "training").is_dir() and (root / "annotations" / "training").is_dir():
        folder = {"train": "training", "val": "validation"}[split]
        pairs, missing = _pair(root / "images" / folder, root / "annotations" / folder)
        table = value_table({v: v - 1 for v in range(1, 151)}, ignored=[0])
        return SegmentationSplit(pairs, [f"ade_{i}" for i in range(150)], table, "ade20k", missing)
    if (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir():
        pairs, missing = _pair(
            root / "leftImg8bit" / split, root / "gtFine" / split, "_leftImg8bit", "_gtFine_labelIds"
        )
        table = value_table(CITYSCAPES_TRAIN_IDS, ignored=range(34))
        return SegmentationSplit(pairs, list(CITYSCAPES_CLASSES), table, "cityscapes", missing)
    if (root / "images" / split).is_dir() and (root / "masks" / split).is_dir():
        pairs, missing = _pair(root / "images" / split, root / "masks" / split)
        classes, table = _plain_classes(root)
        return SegmentationSplit(pairs, classes, table, "plain", missing)
    raise DataError(
        f"no segmentation layout recognised in {root}: expected images/{split}/ + masks/{split}/, "
        "PASCAL VOC (JPEGImages/, SegmentationClass/), ADE20K (images/training/, annotations/training/) "
        "or Cityscapes (leftImg8bit/, gtFine/)"
    )


def _read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as mask:
        if mask.mode not in ("L", "P", "I;16", "I"):
            mask = mask.convert("L")
        return np.asarray(mask)


class SegmentationFolder(Dataset):
    """(image, mask) samples of a `SegmentationSplit`: (PIL RGB image, `tv_tensors.Mask` int64 [H, W]) through `transform`.

    With `check="full"` every mask is decoded and every image opened at construction, and bad samples
    are skipped and counted by reason (`skip_reasons`); `"header"` compares sizes from the headers
    only; `"none"` trusts the files.
    """

    def __init__(self, split: SegmentationSplit, transform: Callable | None = None, check: str = "full") -> None:
        self.classes, self.transform, self.layout = split.classes, transform, split.layout
        self.skipped: list[str] = []
        self.skip_reasons: Counter[str] = Counter()
        for image in split.missing:
            self._skip(image, "no mask")
        table, largest = split.table, -1
        self.samples: list[tuple[Path, Path]] = []
        for image, mask in split.pairs:
            reason = None if check == "none" else self._check(image, mask, table, check == "full")
            if isinstance(reason, str):
                self._skip(str(mask), reason)
                continue
            largest = max(largest, reason or -1)
            self.samples.append((image, mask))
        if table is None:  # plain layout without class names: the classes seen in the masks
            self.classes = [str(i) for i in range(max(largest + 1, 1))]
            table = value_table({i: i for i in range(len(self.classes))})
        self.table = torch.from_numpy(table.astype(np.int64))
        if not self.samples:
            raise DataError(f"no usable image/mask pairs ({len(self.skipped)} skipped: {dict(self.skip_reasons)})")

    def _skip(self, path: str, reason: str) -> None:
        warnings.warn(f"skipping {path}: {reason}", stacklevel=3)
        self.skipped.append(f"{path}: {reason}")
        self.skip_reasons[reason] += 1

    @staticmethod
    def _check(image: Path, mask: Path, table: np.ndarray | None, full: bool) -> str | int | None:
        """A skip reason, or (full check) the largest class value of the mask."""
        try:
            with Image.open(image) as img:
                if full:
                    img.load()
                image_size = img.size
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            return "unreadable image"
        try:
            if full:
                values = _read_mask(mask)
                mask_size = values.shape[::-1]
            else:
                with Image.open(mask) as m:
                    mask_size = m.size
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            return "unreadable mask"
        if tuple(mask_size) != tuple(image_size):
            return "mask size differs from image size"
        if not full:
            return None
        if values.max() > 255:
            return "unknown class value"
        stored = np.flatnonzero(np.bincount(values.ravel(), minlength=256))
        if table is None:
            classes = stored[stored != IGNORE_INDEX]
            return int(classes.max()) if classes.size else None
        if (table[stored] == _UNKNOWN).any():
            return "unknown class value"
        return None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image_path, mask_path = self.samples[index]
        try:
            image = open_rgb(image_path)
            stored = torch.from_numpy(_read_mask(mask_path).astype(np.int64))
        except OSError as err:  # broke after the scan: fall back to the next sample
            warnings.warn(f"skipping unreadable sample {image_path}: {err}", stacklevel=2)
            return self[(index + 1) % len(self)]
        mask = tv_tensors.Mask(self.table[stored.clamp(0, 255)])
        mask[mask == _UNKNOWN] = IGNORE_INDEX
        if self.transform is not None:
            return self.transform(image, mask)
        return image, mask


def segmentation_transform(
    train: bool,
    crop_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    base_size: int | None = None,
    scale_range: tuple[float, float] = (0.5, 2.0),
    hflip: float = 0.5,
) -> Callable:
    """Paired image/mask transform: tensors normalised with `mean`/`std`, the mask int64 with 255 ignored.

    Train (the papers' crop/scale augmentation): the shorter side resized to `base_size` x U(scale_range),
    a random `crop_size` square crop padded where needed (image 0, mask 255), horizontal flip.
    Eval: image and mask resized to `crop_size` x `crop_size` (nearest for the mask).
    """
    base = base_size or crop_size
    to_float = [T.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True), T.Normalize(mean, std)]
    if not train:
        return T.Compose([T.ToImage(), T.Resize((crop_size, crop_size), antialias=True), *to_float,
                          T.ToPureTensor()])
    low, high = (max(1, round(base * s)) for s in scale_range)
    return T.Compose([
        T.ToImage(),
        T.RandomResize(low, high + 1, antialias=True),
        T.RandomCrop(crop_size, pad_if_needed=True, fill={tv_tensors.Mask: IGNORE_INDEX, "others": 0}),
        T.RandomHorizontalFlip(hflip),
        *to_float,
        T.ToPureTensor(),
    ])


@dataclass
class SegmentationData:
    """Train and validation sets with class names, where they came from and what was skipped."""

    train: SegmentationFolder
    val: SegmentationFolder
    classes: list[str]
    source: str
    skipped: list[str] = field(default_factory=list)


def build_segmentation_data(data: str | os.PathLike | None, check: str = "full") -> SegmentationData:
    """`data=None`: the embedded digit scenes; otherwise a directory in one of the layouts above."""
    from .digit_scenes import digit_scenes

    root = Path(data) if data is not None else digit_scenes()
    train = SegmentationFolder(find_segmentation_split(root, "train"), check=check)
    val_split = find_segmentation_split(root, "val")
    if val_split.table is None:  # classes inferred from the training masks
        val_split.classes, val_split.table = train.classes, train.table.numpy().astype(np.int16)
    val = SegmentationFolder(val_split, check=check)
    source = "digit scenes" if data is None else f"{root} ({train.layout})"
    return SegmentationData(train, val, train.classes, source, train.skipped + val.skipped)
