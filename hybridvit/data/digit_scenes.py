"""Digit scenes: the embedded detection and segmentation default, built from scikit-learn's digits.

Each scene pastes 1-4 handwritten digits (scikit-learn's 8x8 images, upsampled to 24-64 px) at
random places, without overlap, on a varied background (a two-colour gradient, sometimes stripes,
always noise), in a colour that contrasts with it. Everything is drawn from a generator keyed on
(seed, split, image index), so every machine builds the same files. The digits of the train and
val scenes come from the fixed train/val split of `DigitsDataset`, so val digits are unseen.

Written once to a cache directory in the formats users bring, so the same loaders read it:
```
<root>/annotations/instances_{train,val}.json   COCO detection json: exact boxes, RLE instance masks
<root>/images/{train,val}/000000.png             RGB scenes
<root>/masks/{train,val}/000000.png              class mask: 0 background, 1..10 digit d+1, 255 ignore
```
Digit d has COCO category id d + 1, named "d". A pixel belongs to a digit where the upsampled
digit's opacity is >= 0.5; the soft rim in between (opacity 0.1-0.5) is 255 in the class mask,
the usual ignore band of segmentation data (our choice: the sources have no pixel masks at all).
The location is `cache_dir`, else `$HYBRIDVIT_CACHE`, else `~/.cache/hybridvit`; a build writes a
temporary directory and renames it into place, so concurrent first uses are safe.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError

CACHE_ENV = "HYBRIDVIT_CACHE"
FORMAT_VERSION = 1
IGNORE_INDEX = 255
CATEGORIES = [{"id": d + 1, "name": str(d), "supercategory": "digit"} for d in range(10)]
SPLITS = ("train", "val")
_MASK_OPACITY = 0.5  # opacity from which a pixel belongs to the digit
_RIM_OPACITY = 0.1  # opacity from which a background pixel is ignored in the class mask


@dataclass(frozen=True)
class SceneConfig:
    """Size and number of the scenes; the defaults train a detector in CPU minutes."""

    size: int = 160
    num_train: int = 400
    num_val: int = 100
    digits_per_scene: tuple[int, int] = (1, 4)
    digit_size: tuple[int, int] = (24, 64)  # side of a pasted digit in pixels
    seed: int = 0

    @property
    def name(self) -> str:
        lo, hi = self.digit_size
        return (f"digit_scenes-v{FORMAT_VERSION}-{self.size}px-{self.num_train}+{self.num_val}"
                f"-d{self.digits_per_scene[0]}to{self.digits_per_scene[1]}-s{lo}to{hi}-seed{self.seed}")


def default_cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "hybridvit")
    return Path(root).expanduser()


def digit_scenes(config: SceneConfig = SceneConfig(), cache_dir: str | os.PathLike | None = None) -> Path:
    """The directory of the digit scenes for `config`, built on first use."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / config.name
    if target.is_dir():
        return target
    tmp = root / f".{config.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        _write_scenes(tmp, config)
        os.rename(tmp, target)  # atomic; fails if another process finished first
    except OSError as err:
        if not target.is_dir():
            raise DataError(f"cannot write the digit scenes to {root} ({err}); set ${CACHE_ENV} to a writable directory") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _write_scenes(out: Path, config: SceneConfig) -> None:
    from pycocotools import mask as mask_utils
    from sklearn.datasets import load_digits

    from .datasets import digits_split_indices

    digits = load_digits()
    for split_id, split in enumerate(SPLITS):
        pool = digits_split_indices(split)
        for sub in ("images", "masks"):
            (out / sub / split).mkdir(parents=True)
        images, annotations = [], []
        count = config.num_train if split == "train" else config.num_val
        for index in range(count):
            rng = np.random.default_rng([config.seed, split_id, index])
            picks = rng.choice(pool, size=rng.integers(config.digits_per_scene[0], config.digits_per_scene[1] + 1))
            scene, class_mask, instances = render_scene(
                rng, [digits.images[i] for i in picks], [int(digits.target[i]) for i in picks], config
            )
            file_name = f"{index:06d}.png"
            Image.fromarray(scene).save(out / "images" / split / file_name, compress_level=1)
            Image.fromarray(class_mask).save(out / "masks" / split / file_name, compress_level=1)
            image_id = index + 1
            images.append({"id": image_id, "file_name": file_name, "height": config.size, "width": config.size})
            for label, mask in instances:
                rle = mask_utils.encode(np.asfortranarray(mask))
                x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1, "iscrowd": 0,
                    "bbox": [x, y, w, h], "area": float(mask_utils.area(rle)),
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                })
        (out / "annotations").mkdir(exist_ok=True)
        coco = {"info": {"description": "hybridvit digit scenes", "config": asdict(config)},
                "images": images, "annotations": annotations, "categories": CATEGORIES}
        (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))


def render_scene(
    rng: np.random.Generator, digit_images: list[np.ndarray], labels: list[int], config: SceneConfig
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, np.ndarray]]]:
    """One scene: RGB uint8 [S,S,3], class mask uint8 [S,S], and (digit, uint8 instance mask) per pasted digit."""
    size = config.size
    scene = _background(rng, size)
    class_mask = np.zeros((size, size), np.uint8)
    placed: list[tuple[int, int, int]] = []  # (x, y, side) of the squares already used
    instances = []
    for image, label in zip(digit_images, labels):
        side = int(rng.integers(config.digit_size[0], config.digit_size[1] + 1))
        for _ in range(20):  # rejection sampling of a free square
            x, y = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            if all(x + side <= px or px + ps <= x or y + side <= py or py + ps <= y for px, py, ps in placed):
                break
        else:
            continue
        placed.append((x, y, side))
        opacity = np.asarray(
            Image.fromarray((image / 16.0).astype(np.float32), mode="F").resize((side, side), Image.BILINEAR)
        ).clip(0.0, 1.0)[..., None]
        patch = scene[y : y + side, x : x + side].astype(np.float32)
        colour = _contrasting_colour(rng, patch.reshape(-1, 3).mean(0))
        scene[y : y + side, x : x + side] = (patch * (1 - opacity) + colour * opacity).round().astype(np.uint8)
        inside = opacity[..., 0] >= _MASK_OPACITY
        region = class_mask[y : y + side, x : x + side]
        region[(opacity[..., 0] >= _RIM_OPACITY) & ~inside] = IGNORE_INDEX
        region[inside] = label + 1
        mask = np.zeros((size, size), np.uint8)
        mask[y : y + side, x : x + side] = inside
        instances.append((label, mask))
    return scene, class_mask, instances


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A two-colour linear gradient in a random direction, sometimes with stripes, plus noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * xx + np.sin(angle) * yy)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    start, end = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
    image = start + (end - start) * t[..., None]
    if rng.random() < 0.5:
        freq, phase, stripe_angle = rng.uniform(2, 12), rng.uniform(0, 2 * np.pi), rng.uniform(0, np.pi)
        wave = np.sin(2 * np.pi * freq * (np.cos(stripe_angle) * xx + np.sin(stripe_angle) * yy) + phase)
        image += rng.uniform(10, 40) * wave[..., None] * rng.uniform(-1, 1, size=3).astype(np.float32)
    image += rng.normal(0, rng.uniform(2, 10), size=image.shape).astype(np.float32)
    return image.clip(0, 255).round().astype(np.uint8)


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """A random colour whose luma differs from `background`'s by at least 90 (of 255)."""
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    bg = float(background @ luma)
    for _ in range(50):
        colour = rng.uniform(0, 255, size=3).astype(np.float32)
        if abs(float(colour @ luma) - bg) >= 90:
            return colour
    return np.full(3, 0.0 if bg > 127 else 255.0, np.float32)
