"""Datasets: ImageFolder trees (ImageNet layout) that skip corrupt files, and the embedded digits default."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DIGITS_SIZE = 32  # the 8x8 scikit-learn digits are upsampled to this many pixels a side
DIGITS_VAL_FRACTION = 0.2


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode an image file fully (so truncated files fail here) and convert it to RGB."""
    with Image.open(path) as img:
        img.load()
        return img.convert("RGB")


class ImageFolder(Dataset):
    """`root/<class>/<image>` files as (PIL RGB image, class index); unreadable files are skipped with a warning.

    With `check="full"` every file is decoded once at construction (catches truncated files);
    `check="header"` only opens headers (fast on ImageNet); `check="none"` trusts the files.
    """

    def __init__(self, root: str | os.PathLike, classes: list[str] | None = None, check: str = "full") -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"data directory not found: {self.root}")
        found = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
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

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        path, label = self.samples[index]
        try:
            return open_rgb(path), label
        except OSError as err:  # a file that broke after the scan: fall back to the next sample
            warnings.warn(f"skipping unreadable image {path}: {err}", stacklevel=2)
            return self[(index + 1) % len(self)]


def _readable(path: Path, full: bool) -> bool:
    try:
        with Image.open(path) as img:
            if full:
                img.load()
        return True
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
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

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label = self.dataset[index]
        return self.transform(image), label


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
    val = ImageFolder(root / "val", classes=train.classes, check=check)
    return DataSplits(train, val, train.classes, str(root), train.skipped + val.skipped)


def build_eval_dataset(data: str | os.PathLike | None, classes: list[str], check: str = "full") -> Dataset:
    """The validation split only (for `hybridvit eval`)."""
    if data is None:
        return DigitsDataset("val")
    root = Path(data)
    folder = root / "val" if (root / "val").is_dir() else root
    return ImageFolder(folder, classes=classes, check=check)
