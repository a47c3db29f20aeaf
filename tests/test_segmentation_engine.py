"""Segmentation in the one engine: each head trains on the digit scenes, eval/predict CLI, head lr multiplier."""
import json
from dataclasses import replace
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image
from timm.scheduler import CosineLRScheduler

from hybridvit.cli import main
from hybridvit.data.digit_scenes import digit_scenes
from hybridvit.engine.recipes import get_recipe
from hybridvit.engine.segmentation import overlay, palette
from hybridvit.engine.train import TrainConfig, Trainer, build_optimizer
from hybridvit.engine.segmentation import head_lr_param_groups
from hybridvit.tasks import SEGMENTATION_HEADS, create_segmenter

# Each head fits a few scenes from the digits-trained backbone (conftest `digits_backbone`): 8 train scenes at
# 96 px in one batch, 16 steps, scored on those scenes. UperNet runs with 128 instead of 512 channels (its 3x3
# convs at stride 4 cost ~16x less; the architecture and the auxiliary loss are the same). Measured mIoU (one
# thread, AMD EPYC, load ~7): DeepLabv3 27.2%, all-MLP 43.8%, UperNet 41.2%. The floors (about two thirds) sit
# far above the background prior (8.5% mIoU: background IoU 93% over 11 classes), where every head stopped
# before the digits backbone and the class-weighted loss.
FIT_FLOORS = {"deeplabv3": 18.0, "allmlp": 30.0, "upernet": 28.0}


@pytest.mark.parametrize("head", list(FIT_FLOORS))
def test_each_head_fits_digit_scenes_from_the_digits_backbone(tmp_path, digits_backbone, head, monkeypatch):
    if head == "upernet":
        spec = SEGMENTATION_HEADS["upernet"]
        monkeypatch.setitem(SEGMENTATION_HEADS, "upernet", replace(spec, build=partial(spec.build, channels=128)))
    cfg = TrainConfig("hv_mobilevit_xxs", task="segmentation", head=head, output=str(tmp_path), img_size=96,
                      epochs=16, limit=8, batch_size=8, backbone_checkpoint=str(digits_backbone), progress=False,
                      check_images="header")
    trainer = Trainer(cfg)
    trainer.val_loader = trainer.task.val_loader(trainer.data.train)  # score the scenes it fits
    summary = trainer.run()
    assert summary["val"]["miou"] >= FIT_FLOORS[head]
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",")[3:8] == ["train_loss", "train_pixel_acc", "val_loss", "val_miou", "val_pixel_acc"]
    first, last = (float(r.split(",")[5]) for r in (rows[1], rows[-1]))
    assert last < first  # validation loss falls
    assert json.loads((tmp_path / "run.json").read_text())["head"] == head


def test_eval_and_predict_cli_on_a_trained_segmenter(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--task", "segmentation", "--head", "allmlp", "--model", "hv_mobilevit_xxs", "--output", str(run),
            "--img-size", "64", "--limit", "16", "--epochs", "1", "--no-progress", "--check-images", "header"]
    assert main(argv) == 0
    assert "val mIoU" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(run), "--tta-scales", "0.75,1", "--flip", "--check-images", "header"]) == 0
    printed = capsys.readouterr().out
    assert "100 images at 64px, test-time scales [0.75, 1.0] + flip: mIoU" in printed and "background  IoU" in printed
    image = digit_scenes() / "images" / "val" / "000000.png"
    assert main(["predict", "--checkpoint", str(run), str(image), "--out", str(tmp_path / "out")]) == 0
    picture = Image.open(tmp_path / "out" / "000000_overlay.png")
    mask = Image.open(tmp_path / "out" / "000000_mask.png")
    assert picture.size == mask.size == Image.open(image).size and mask.mode == "P"
    assert main(["train", "--task", "segmentation", "--head", "ssdlite", "--model", "hv_mobilevit_xxs",
                 "--output", str(tmp_path / "bad")]) == 2
    assert "unknown segmentation head 'ssdlite'" in capsys.readouterr().err


def test_head_learning_rate_multiplier_scales_the_head_groups():
    model = create_segmenter("deeplabv3", "hv_mobilevit_xxs", 4)
    recipe = get_recipe("deeplabv3")
    groups = head_lr_param_groups(model, recipe.weight_decay, recipe.decay_all, recipe.head_lr_mult)
    optimizer = build_optimizer(model, recipe, 1e-3, groups)
    CosineLRScheduler(optimizer, t_initial=100, t_in_epochs=False).step_update(0)
    head = {id(p) for p in model.head_parameters()}
    for group in optimizer.param_groups:
        in_head = {id(p) in head for p in group["params"]}
        assert len(in_head) == 1
        assert group["lr"] == pytest.approx(1e-2 if in_head.pop() else 1e-3)
        assert group["weight_decay"] == 0.01  # MobileViT's recipe decays every parameter
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_overlay_colours_only_the_classes():
    image = Image.new("RGB", (3, 1), (100, 100, 100))
    mask = np.array([[0, 1, 2]])
    out = np.asarray(overlay(image, mask, 3, alpha=0.5))
    assert out[0, 0].tolist() == [100, 100, 100]
    assert out[0, 1].tolist() == ((np.array([100] * 3) + palette(3)[1]) / 2).round().astype(int).tolist()
    assert palette(3).tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0]]  # PASCAL VOC's colour map
