"""Datasets: ImageFolder trees (ImageNet layout) that skip corrupt files, and the embedded digits default."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image
from torch.utils.data import Dataset, default_collate

from ..errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DIGITS_SIZE = 32  # the 8x8 scikit-learn digits are upsampled to this many pixels a side
DIGITS_VAL_FRACTION = 0.2


# What decoding a bad file raises: truncated or foreign data, a decompression bomb, a mode we refuse.
UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
# Consecutive unreadable training images tolerated (each replaced by the next) before training stops.
MAX_CONSECUTIVE_FAILURES = 8


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode an image file fully (so truncated files fail here) and convert it to 8-bit RGB.

    16-bit greyscale (I;16*, and I holding 0..65535) is scaled by 255/65535 and float greyscale (F)
    holding 0..1 by 255; `convert("RGB")` would clip them (a 16-bit PNG turns almost white). Other
    ranges are refused with a ValueError naming the mode.
    """
    with Image.open(path) as img:
        img.load()
        if img.mode not in ("I", "F") and not img.mode.startswith("I;16"):
            return img.convert("RGB")
        pixels = np.asarray(img, dtype=np.float64)
    low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
    full_scale = 1.0 if img.mode == "F" else 65535.0
    if not (np.isfinite(pixels).all() and 0 <= low and high <= full_scale):
        raise ValueError(f"{img.mode} image with values {low:g}..{high:g}, outside 0..{full_scale:g}: not an image hybridvit can scale")
    grey = np.rint(pixels * (255.0 / full_scale)).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


class ImageFolder(Dataset):
    """`root/<class>/<image>` files as (PIL RGB image, class index); unreadable files are skipped with a warning.

    With `check="full"` every file is decoded once at construction (catches truncated files);
    `check="header"` only opens headers (fast on ImageNet); `check="none"` trusts the files.
    A file that fails later, at load time, is counted in `skipped`; with `substitute` (training) the next
    readable sample takes its place (at most MAX_CONSECUTIVE_FAILURES in a row), otherwise (evaluation)
    the item is None and `skip_unreadable` drops it from its batch.
    With `classes` given (validation, evaluation), class folders outside that list are an error.
    """

    def __init__(
        self, root: str | os.PathLike, classes: list[str] | None = None, check: str = "full", substitute: bool = True
    ) -> None:
        self.root = Path(root)
        self.substitute = substitute
        if not self.root.is_dir():
            raise DataError(f"data directory not found: {self.root}")
        found = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        unknown = sorted(set(found) - set(classes)) if classes is not None else []
        if unknown:
            raise DataError(
                f"{self.root} has class folder(s) the model does not know: {', '.join(unknown[:5])}"
                f"{' ...' if len(unknown) > 5 else ''} (its {len(classes)} classes: {', '.join(classes[:5])}"
                f"{' ...' if len(classes) > 5 else ''})"
            )
        if classes is not None and found and not set(found) & set(classes):
            raise DataError(f"{self.root} has no folder named after one of the model's classes ({', '.join(classes[:5])} ...)")
        self.classes = classes if classes is not None else found
        if not self.classes:
            raise DataError(f"data directory {self.root} has no class subfolders (expected {self.root}/<class>/<image>)")
        self.samples: list[tuple[str, int]] = []
        self.skipped: list[str] = []
        for label, name in enumerate(self.classes):
            folder = self.root / name
            if not folder.is_dir():
                continue
            for path in sorted(folder.rglob("*")):
                if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
                    continue
                if check != "none" and not _readable(path, full=check == "full"):
                    warnings.warn(f"skipping unreadable image {path}", stacklevel=2)
                    self.skipped.append(str(path))
                    continue
                self.samples.append((str(path), label))
        if not self.samples:
            detail = f" ({len(self.skipped)} files skipped as corrupt)" if self.skipped else ""
            raise DataError(f"no readable images in {self.root}{detail}")
        if classes is None:  # the classes are this folder's: each must have images, and there must be two
            empty = sorted(set(self.classes) - {self.classes[label] for _, label in self.samples})
            if empty:
                raise DataError(
                    f"class folder(s) {', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''} in {self.root} hold no "
                    "readable image: the classifier would have a class it never sees; remove or fill them"
                )
            if len(self.classes) < 2:
                raise DataError(f"{self.root} has a single class ({self.classes[0]}): a classifier needs at least 2")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int] | None:
        for attempt in range(MAX_CONSECUTIVE_FAILURES if self.substitute else 1):
            path, label = self.samples[(index + attempt) % len(self.samples)]
            try:
                return open_rgb(path), label
            except UNREADABLE as err:  # a file that broke after the scan (or was never scanned)
                warnings.warn(f"skipping unreadable image {path}: {err}", stacklevel=2)
                self.skipped.append(path)
        if not self.substitute:
            return None
        raise DataError(
            f"{MAX_CONSECUTIVE_FAILURES} images in a row could not be read in {self.root} (last: {path}); "
            "check the files, or scan them with --check-images full"
        )


def _readable(path: Path, full: bool) -> bool:
    try:
        with Image.open(path) as img:
            if full:
                img.load()
        return True
    except UNREADABLE:
        return False


def digits_split_indices(split: str) -> np.ndarray:
    """Indices of scikit-learn's digits in the fixed stratified `split` ("train" or "val") every digits dataset uses."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    target = load_digits().target
    train_idx, val_idx = train_test_split(
        np.arange(len(target)), test_size=DIGITS_VAL_FRACTION, random_state=0, stratify=target
    )
    return train_idx if split == "train" else val_idx


class DigitsDataset(Dataset):
    """scikit-learn's 1,797 handwritten digits (8x8, 16 grey levels), upsampled to RGB images; a fixed split.

    The split is stratified with a fixed seed, so every run and every machine sees the same
    train/val images without downloading anything.
    """

    classes = [str(d) for d in range(10)]

    def __init__(self, split: str, size: int = DIGITS_SIZE) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        pixels = (digits.images * (255.0 / 16.0)).astype(np.uint8)
        indices = digits_split_indices(split)
        self.images = [Image.fromarray(pixels[i]).resize((size, size), Image.BICUBIC).convert("RGB") for i in indices]
        self.targets = [int(digits.target[i]) for i in indices]
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return self.images[index], self.targets[index]


class TransformedDataset(Dataset):
    """(image, label) pairs with `transform` applied to the image."""

    def __init__(self, dataset: Dataset, transform: Callable) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, int] | None:
        item = self.dataset[index]
        if item is None:  # unreadable, not substituted (evaluation)
            return None
        image, label = item
        return self.transform(image), label


def skip_unreadable(batch: list) -> Any:
    """`collate_fn` for evaluation: drops the unreadable items (None); None when none is left."""
    kept = [item for item in batch if item is not None]
    return default_collate(kept) if kept else None


@dataclass
class DataSplits:
    """Train and validation datasets with their class names and the files skipped as corrupt."""

    train: Dataset
    val: Dataset
    classes: list[str]
    source: str
    skipped: list[str] = field(default_factory=list)


def build_datasets(data: str | os.PathLike | None, check: str = "full") -> DataSplits:
    """`data=None`: the embedded digits; otherwise an ImageNet-layout tree with train/ and val/ folders."""
    if data is None:
        return DataSplits(DigitsDataset("train"), DigitsDataset("val"), list(DigitsDataset.classes), "sklearn digits")
    root = Path(data)
    if not root.is_dir():
        raise DataError(f"data directory not found: {root}")
    missing = [s for s in ("train", "val") if not (root / s).is_dir()]
    if missing:
        raise DataError(f"data directory {root} has no {' or '.join(missing)}/ subfolder (expected ImageNet layout: train/<class>/..., val/<class>/...)")
    train = ImageFolder(root / "train", check=check)
    val = ImageFolder(root / "val", classes=train.classes, check=check, substitute=False)
    return DataSplits(train, val, train.classes, str(root), train.skipped + val.skipped)


def build_eval_dataset(data: str | os.PathLike | None, classes: list[str], check: str = "full") -> Dataset:
    """The validation split only (for `hybridvit eval`)."""
    if data is None:
        return DigitsDataset("val")
    root = Path(data)
    folder = root / "val" if (root / "val").is_dir() else root
    return ImageFolder(folder, classes=classes, check=check, substitute=False)
