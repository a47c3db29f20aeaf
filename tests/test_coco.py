"""COCO detection data (bad annotations skipped and counted, masks from polygons and RLE, SSD augmentation)
and COCO metrics (pycocotools' numbers, a hand-computed answer)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from hybridvit.data.coco import CocoDetection, collate_detection, detection_transform, find_coco_split
from hybridvit.data.digit_scenes import SceneConfig, digit_scenes
from hybridvit.errors import DataError
from hybridvit.tasks.coco_eval import BOX_METRICS, coco_evaluate, to_coco_results


def _coco_tree(root):
    """Two 40x50 images (one more listed but missing) with one annotation of each kind, valid or not."""
    (root / "annotations").mkdir(parents=True)
    (root / "train2017").mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((40, 50, 3), 99, np.uint8)).save(root / "train2017" / name)
    square = np.zeros((40, 50), np.uint8)
    square[5:15, 20:30] = 1
    rle = mask_utils.encode(np.asfortranarray(square))
    anns = [
        {"id": 1, "image_id": 1, "category_id": 9, "bbox": [2, 3, 10, 20], "segmentation": [[2, 3, 12, 3, 12, 23, 2, 23]]},
        {"id": 2, "image_id": 1, "category_id": 4, "bbox": [20, 5, 10, 10],
         "segmentation": {"size": [40, 50], "counts": rle["counts"].decode()}},
        {"id": 3, "image_id": 2, "category_id": 4, "bbox": [40, 30, 20, 20], "segmentation": [[40, 30, 50, 30, 50, 40]]},
        {"id": 4, "image_id": 2, "category_id": 5, "bbox": [1, 1, 5, 5], "segmentation": []},  # unknown category
        {"id": 5, "image_id": 2, "category_id": 4, "bbox": [1, 1, 0, 5], "segmentation": []},  # zero area
        {"id": 6, "image_id": 2, "category_id": 4, "bbox": [60, 1, 5, 5], "segmentation": []},  # outside the image
        {"id": 7, "image_id": 2, "category_id": 9, "bbox": [0, 0, 4, 4], "segmentation": [[0, 0, 1]]},  # bad polygon
        {"id": 8, "image_id": 2, "category_id": 9, "bbox": [0, 0, 50, 40], "iscrowd": 1,
         "segmentation": mask_utils.frPyObjects([[0, 0, 50, 0, 50, 40]], 40, 50)[0] | {"counts": [0, 2000]}},
        {"id": 9, "image_id": 3, "category_id": 4, "bbox": [1, 1, 5, 5], "segmentation": []},
    ]
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 50, "height": 40}, {"id": 2, "file_name": "b.png"},
                       {"id": 3, "file_name": "gone.png", "width": 50, "height": 40}],
            "annotations": anns, "categories": [{"id": 9, "name": "nine"}, {"id": 4, "name": "four"}]}
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(coco))
    return root


def test_coco_dataset_targets_and_counted_skips(tmp_path):
    ann_file, image_dir = find_coco_split(_coco_tree(tmp_path), "train")
    assert image_dir == tmp_path / "train2017"
    data = CocoDetection(ann_file, image_dir, masks=True)
    assert data.category_ids == [4, 9] and data.classes == ["four", "nine"]  # labels 1, 2 in category-id order
    reasons = " | ".join(data.skipped)
    assert len(data.skipped) == 5, reasons
    for text in ("unknown category id 5", "zero-area bbox", "lies outside the 50x40 image", "undecodable segmentation",
                 "gone.png not found"):
        assert text in reasons
    image, target = data[0]
    assert image.shape == (3, 40, 50) and image.dtype == torch.float32 and image.max() == pytest.approx(99 / 255)
    assert torch.equal(target["boxes"], torch.tensor([[2.0, 3, 12, 23], [20, 5, 30, 15]]))
    assert torch.equal(target["labels"], torch.tensor([2, 1])) and target["image_id"] == 1
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (2, 40, 50)
    square = np.zeros((40, 50), np.uint8)
    square[5:15, 20:30] = 1
    assert np.array_equal(target["masks"][1].numpy(), square)  # compressed RLE decoded exactly
    assert target["masks"][0, 3:23, 2:12].float().mean() > 0.9 and target["masks"][0].sum() < 260  # the polygon
    _, target = data[1]  # clipped to the image; the crowd box is no target
    assert torch.equal(target["boxes"], torch.tensor([[40.0, 30, 50, 40]])) and target["masks"].shape == (1, 40, 50)
    gt = data.ground_truth()
    assert [a["iscrowd"] for a in gt["annotations"] if "iscrowd" in a] == [1] and len(gt["images"]) == 2


def test_coco_errors_are_one_line(tmp_path):
    with pytest.raises(DataError, match="no annotations/instances_val"):
        find_coco_split(_coco_tree(tmp_path), "val")
    (tmp_path / "annotations" / "instances_val.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read COCO annotations"):
        CocoDetection(tmp_path / "annotations" / "instances_val.json", tmp_path / "train2017")


@pytest.mark.parametrize("augmentation", [{}, {"iou_crop": False, "affine": (0.2, 0.7, 1.4)}])
def test_ssd_augmentation_moves_boxes_and_masks_together(tmp_path, augmentation):
    root = digit_scenes(SceneConfig(size=64, num_train=8, num_val=2, digit_size=(16, 28)), tmp_path)
    data = CocoDetection(*find_coco_split(root, "train"), transform=detection_transform(train=True, **augmentation), masks=True)
    torch.manual_seed(0)
    seen = 0
    for index in range(len(data)):
        image, target = data[index]
        assert image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
        assert target["masks"].shape == (len(target["boxes"]), *image.shape[1:]) and len(target["labels"]) == len(target["boxes"])
        for box, mask in zip(target["boxes"], target["masks"]):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            if len(xs) == 0:  # the crop kept the box's corner but none of the digit's pixels
                continue
            seen += 1
            x0, y0, x1, y1 = box.tolist()
            assert x0 - 1 <= xs.min() and xs.max() + 1 <= x1 + 1 and y0 - 1 <= ys.min() and ys.max() + 1 <= y1 + 1
    assert seen > 6
    images, targets = collate_detection([data[0], data[1]])
    assert len(images) == len(targets) == 2 and isinstance(targets[0]["boxes"], torch.Tensor)


def _hand_made():
    """Category 7: a false positive above two exact hits (AP 2/3 at every IoU); category 3: one hit at IoU 0.625."""
    gt = {
        "images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},  # small
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [50, 50, 40, 40], "area": 1600, "iscrowd": 0},  # medium
            {"id": 3, "image_id": 2, "category_id": 3, "bbox": [0, 0, 100, 100], "area": 10000, "iscrowd": 0},  # large
        ],
        "categories": [{"id": 3, "name": "c"}, {"id": 7, "name": "g"}],
    }
    predictions = [  # xyxy; labels 1, 2 are category ids 3, 7
        {"boxes": torch.tensor([[80.0, 0, 90, 10], [10, 10, 30, 30], [50, 50, 90, 90]]),
         "labels": torch.tensor([2, 2, 2]), "scores": torch.tensor([0.9, 0.8, 0.7])},
        {"boxes": torch.tensor([[0.0, 0, 100, 62.5]]), "labels": torch.tensor([1]), "scores": torch.tensor([0.5])},
    ]
    return gt, predictions


def test_coco_metrics_known_answer_and_pycocotools(tmp_path):
    gt, predictions = _hand_made()
    results = to_coco_results(predictions, [1, 2], [3, 7])
    ours = coco_evaluate(gt, results)
    expected = {"AP": (2 / 3 + 0.3) / 2, "AP50": (2 / 3 + 1) / 2, "AP75": 1 / 3, "APs": 0.5, "APm": 1.0, "APl": 0.3}
    assert ours == pytest.approx(expected, abs=1e-6)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(results))
    reference = COCO(str(tmp_path / "gt.json"))
    evaluator = COCOeval(reference, reference.loadRes(str(tmp_path / "dt.json")), "bbox")
    evaluator.evaluate(), evaluator.accumulate(), evaluator.summarize()
    assert [ours[k] for k in BOX_METRICS] == evaluator.stats[:6].tolist()
    assert coco_evaluate(gt, results, image_ids=[2])["AP"] == pytest.approx(0.3)
    assert coco_evaluate(gt, [])["AP"] == 0.0


def test_mask_metrics(tmp_path):
    root = digit_scenes(SceneConfig(size=64, num_train=2, num_val=3, digit_size=(16, 28)), tmp_path)
    data = CocoDetection(*find_coco_split(root, "val"), masks=True)
    predictions, ids = [], []
    for index in range(len(data)):
        _, target = data[index]
        n = len(target["labels"])
        masks = target["masks"][:, None].float()
        if index == 0:  # the first image's masks are predicted empty: its boxes hit, its masks miss
            masks = torch.zeros_like(masks)
        predictions.append({"boxes": target["boxes"], "labels": target["labels"], "scores": torch.ones(n), "masks": masks})
        ids.append(target["image_id"])
    metrics = coco_evaluate(data.ground_truth(), to_coco_results(predictions, ids, data.category_ids), ("bbox", "segm"))
    assert metrics["AP"] == 1.0 and 0 < metrics["mask_AP"] < 1.0
