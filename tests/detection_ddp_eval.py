"""Run by tests/test_detection_engine.py under `torchrun --nproc_per_node 2`: detection eval over two shards.

`python detection_ddp_eval.py DATA OUT`: evaluates `OracleDetector` on the val split of the COCO
tree DATA (written by `write_id_coco`) with the engine's sharded loader and `evaluate_detector`,
and writes each rank's merged metrics to OUT/rank<R>.json.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_id_coco(root: Path, num_images: int = 12, size: int = 32) -> Path:
    """A COCO tree whose image i is filled with grey level 10 * i (so a model can tell it apart), 1-2 boxes each."""
    (root / "annotations").mkdir(parents=True)
    (root / "images").mkdir()
    images, annotations = [], []
    for i in range(1, num_images + 1):
        Image.fromarray(np.full((size, size, 3), 10 * i, np.uint8)).save(root / "images" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": size, "height": size})
        for k in range(1 + i % 2):
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": 1 + (i + k) % 3,
                                "bbox": [2 + 12 * k, 3, 10, 12], "area": 120, "iscrowd": 0})
    coco = {"images": images, "annotations": annotations, "categories": [{"id": c, "name": str(c)} for c in (1, 2, 3)]}
    for split in ("train", "val"):
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    return root


class OracleDetector(torch.nn.Module):
    """Knows the ground truth by image id (read from the grey level) and gets some of it wrong, so AP is not 1."""

    def __init__(self, ground_truth: dict) -> None:
        super().__init__()
        self.by_image: dict[int, list[dict]] = {}
        for ann in ground_truth["annotations"]:
            self.by_image.setdefault(ann["image_id"], []).append(ann)

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        outputs = []
        for image in images:
            image_id = round(float(image[0, 0, 0]) * 255 / 10)
            anns = self.by_image.get(image_id, [])
            boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], dtype=torch.float32).reshape(-1, 4)
            boxes[:, 0::2] += 4.0 * (image_id % 3 == 0)  # every third image: boxes shifted (IoU ~0.43)
            labels = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)  # category ids 1..3 = labels
            scores = torch.linspace(0.9, 0.5, len(anns)) * (1 - image_id / 100)
            outputs.append({"boxes": boxes, "labels": labels, "scores": scores})
        return outputs


def evaluate_shards(data: Path) -> dict[str, float]:
    """The engine's evaluation of the oracle on `data`'s val split, sharded over this process group."""
    from hybridvit.data.coco import CocoDetection, collate_detection, find_coco_split
    from hybridvit.engine.distributed import init_distributed
    from hybridvit.engine.tasks import evaluate_detector, private_loader, shard

    info = init_distributed(torch.device("cpu"))
    val = CocoDetection(*find_coco_split(data, "val"))
    loader = private_loader(shard(val, info), 0, 0, batch_size=2, collate_fn=collate_detection)
    metrics = evaluate_detector(OracleDetector(val.ground_truth()), loader, val, False, torch.device("cpu"), info)
    return {**metrics, "rank": info.rank, "shard": len(loader.dataset)}


if __name__ == "__main__":
    result = evaluate_shards(Path(sys.argv[1]))
    (Path(sys.argv[2]) / f"rank{result['rank']}.json").write_text(json.dumps(result))
