"""Digit scenes: exact boxes and masks, one class mask consistent with them, deterministic, safe concurrent builds."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from hybridvit.data.digit_scenes import CACHE_ENV, IGNORE_INDEX, SceneConfig, default_cache_dir, digit_scenes
from hybridvit.errors import DataError

SMALL = SceneConfig(size=64, num_train=6, num_val=3, digit_size=(16, 28))


def test_boxes_and_masks_are_exact(tmp_path):
    root = digit_scenes(SMALL, tmp_path)
    for split, count in (("train", 6), ("val", 3)):
        coco = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
        assert len(coco["images"]) == count and [c["id"] for c in coco["categories"]] == list(range(1, 11))
        assert len(coco["annotations"]) >= count
        for image in coco["images"]:
            scene = np.asarray(Image.open(root / "images" / split / image["file_name"]))
            classes = np.asarray(Image.open(root / "masks" / split / image["file_name"]))
            assert scene.shape == (64, 64, 3) and classes.shape == (64, 64)
            covered = np.zeros((64, 64), bool)
            for ann in (a for a in coco["annotations"] if a["image_id"] == image["id"]):
                mask = mask_utils.decode(ann["segmentation"]).astype(bool)
                ys, xs = np.nonzero(mask)
                assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
                assert ann["area"] == mask.sum() and not (covered & mask).any()
                assert (classes[mask] == ann["category_id"]).all()
                covered |= mask
            assert set(np.unique(classes[~covered])) <= {0, IGNORE_INDEX}


def test_deterministic_and_concurrent_first_use(tmp_path):
    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(lambda _: digit_scenes(SMALL, tmp_path / "a"), range(2))
    assert first == second and [p.name for p in (tmp_path / "a").iterdir()] == [SMALL.name]  # no temporary left
    again = digit_scenes(SMALL, tmp_path / "b")
    for name in ("annotations/instances_train.json", "images/val/000002.png", "masks/train/000005.png"):
        assert (first / name).read_bytes() == (again / name).read_bytes()
    other = digit_scenes(SceneConfig(size=64, num_train=6, num_val=3, digit_size=(16, 28), seed=1), tmp_path / "b")
    assert other != again and (other / "images/train/000000.png").read_bytes() != (again / "images/train/000000.png").read_bytes()


def test_cache_location(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache"
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match=f"cannot write the digit scenes to .*file.*set \\${CACHE_ENV}"):
        digit_scenes(SMALL, tmp_path / "file")
