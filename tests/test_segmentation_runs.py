"""Segmentation runs keep the engine's guarantees: exact resume, bf16 autocast on CPU, the confusion matrix summed over ranks."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Subset, TensorDataset

from hybridvit.cli import main
from hybridvit.engine.distributed import DistInfo
from hybridvit.engine.segmentation import SegmentationLoss, enet_class_weights, evaluate_segmenter
from hybridvit.engine.train import TrainConfig, Trainer

# Tiny runs on the default digit scenes: 8 scenes at 48 px, batch 4 (two steps an epoch).
TRAIN = ["train", "--task", "segmentation", "--head", "deeplabv3", "--model", "hv_mobilevit_xxs", "--img-size", "48",
         "--limit", "8", "--batch-size", "4", "--no-progress", "--check-images", "header", "--output"]


def _committed(out):
    return out / "checkpoints" / (out / "checkpoints" / "LATEST").read_text().strip()


def test_resume_is_exact(tmp_path):
    assert main([*TRAIN, str(tmp_path / "once"), "--max-steps", "3"]) == 0
    assert main([*TRAIN, str(tmp_path / "twice"), "--max-steps", "1"]) == 0
    halfway = load_file(_committed(tmp_path / "twice") / "last.safetensors")
    assert main([*TRAIN, str(tmp_path / "twice"), "--max-steps", "3", "--resume"]) == 0  # across an epoch end
    once = load_file(_committed(tmp_path / "once") / "last.safetensors")
    twice = load_file(_committed(tmp_path / "twice") / "last.safetensors")
    assert once.keys() == twice.keys() and all(torch.equal(once[k], twice[k]) for k in once)
    assert any(not torch.equal(once[k], v) for k, v in halfway.items())  # the resumed steps did train


def test_bf16_autocast_step_on_cpu(tmp_path):
    cfg = TrainConfig("hv_mobilevit_xxs", task="segmentation", head="deeplabv3", output=str(tmp_path), img_size=32,
                      limit=4, batch_size=4, max_steps=1, amp=True, progress=False, check_images="header")
    trainer = Trainer(cfg)
    dtypes = []
    trainer.model.head.classifier.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    before = trainer.model.head.classifier.weight.detach().clone()
    trainer.run()
    assert dtypes[0] == torch.bfloat16  # the training step ran under autocast
    assert not torch.equal(before, trainer.model.head.classifier.weight)  # and updated the float32 weights
    assert trainer.model.head.classifier.weight.dtype == torch.float32


def test_enet_class_weights_follow_ml_cvnets():
    masks = torch.tensor([[[0, 0], [0, 1]], [[1, 2], [255, 255]]])  # 3 x class 0, 2 x class 1, 1 x class 2, class 3 absent
    weights = enet_class_weights(masks, 4)
    shares = torch.tensor([3, 2, 1]) / 6
    assert torch.allclose(weights[:3], 1 / torch.log(1.1 + shares)) and weights[3] == 0
    logits = torch.randn(2, 4, 2, 2)
    weighted = SegmentationLoss(class_weights="enet")((logits, None), masks)
    expected = torch.nn.functional.cross_entropy(logits, masks, weights, ignore_index=255)
    assert torch.allclose(weighted, expected)


# ---------------------------------------------------------------- confusion matrix merged over rank shards
class _Fixed(torch.nn.Module):
    """A fixed 'segmenter': class scores from a 1x1 conv with set weights (the same on every rank)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, num_classes, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.linspace(-1, 1, num_classes * 3).view(num_classes, 3, 1, 1))
            self.conv.bias.zero_()

    def forward(self, x):
        return self.conv(x)


def test_confusion_matrix_is_summed_over_rank_shards(monkeypatch):
    """Two ranks' shards, as SegmentationTask.val_loader cuts them, merged by the all-reduce of evaluate_segmenter
    (emulated in one process: rank 1's packed vector added to rank 0's); the real collective runs in test_train's torchrun test."""
    import hybridvit.engine.segmentation as seg

    num_classes, cpu = 4, torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    masks = torch.randint(0, num_classes, (7, 6, 5), generator=generator)
    masks[masks == num_classes - 1] = 255  # ignored pixels; class 3 only ever predicted
    data = TensorDataset(torch.randn(7, 3, 6, 5, generator=generator), masks)
    model = _Fixed(num_classes)
    single = evaluate_segmenter(model, DataLoader(data, batch_size=3), num_classes, cpu)

    def shard(rank):
        return DataLoader(Subset(data, range(rank, len(data), 2)), batch_size=2)

    sent = []
    monkeypatch.setattr(seg, "all_reduce_sum", lambda values, info: sent.append(values.clone()) or values)
    alone = evaluate_segmenter(model, shard(1), num_classes, cpu, DistInfo(1, 2))
    monkeypatch.setattr(seg, "all_reduce_sum", lambda values, info: values + sent[0])
    merged = evaluate_segmenter(model, shard(0), num_classes, cpu, DistInfo(0, 2))
    assert merged["count"] == single["count"] == 7 and alone["count"] == 3
    assert (merged["miou"], merged["pixel_acc"]) == (single["miou"], single["pixel_acc"])  # integer counts
    assert merged["class_iou"] == pytest.approx(single["class_iou"], rel=0, abs=0, nan_ok=True)
    assert merged["loss"] == pytest.approx(single["loss"], rel=1e-6)  # float32 sums over other batches
    assert alone["miou"] != single["miou"]
