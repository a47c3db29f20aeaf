"""Fine-tuning: `load_pretrained` for every converter layout, CeiT's 384 position embedding, `train --init`."""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import re

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import hybridvit
from hybridvit.checkpoint import load_pretrained
from hybridvit.cli import main
from hybridvit.engine.checkpointing import run_weights
from hybridvit.engine.recipes import get_recipe
from hybridvit.engine.train import TrainConfig, Trainer, build_optimizer
from hybridvit.errors import CheckpointError
from hybridvit.models.boat import BoatConfig, BoatTransformer
from helpers import cvnets_key  # spec §5's names, written independently of the converter

MODEL = "hv_mobilevit_xxs"

# Small BOAT variants with the reference block structure (FSLA in every stage), built in a second.
BOAT_SMALL = {
    "swin": (BoatConfig("swin", 8, (2, 2, 2, 1), (1, 2, 4, 8), 0.1, window_size=2, group_size=4, overlap=2), 32),
    "cswin": (BoatConfig("cswin", 8, (1, 1, 1, 1), (2, 2, 4, 8), 0.1, (1, 2, 2, 2), group_size=4, overlap=2), 64),
}


def _assert_loaded(model, source: dict[str, torch.Tensor], rename=lambda k: k, skip=()):
    """Every tensor of `source` (under our name `rename(key)`) is in `model`, except `skip` prefixes."""
    own = model.state_dict()
    checked = 0
    for key, value in source.items():
        ours = rename(key)
        if ours is None or ours.startswith(skip):
            continue
        assert torch.equal(own[ours], value), ours
        checked += 1
    assert checked > 0.9 * len(own)


def test_timm_mobilevit_with_new_head(tmp_path):
    src = timm.create_model("mobilevit_xxs").state_dict()
    torch.save(src, tmp_path / "timm.pth")
    model = hybridvit.create_model("hv_mobilevit_xxs", num_classes=5)
    fresh_head = model.head.fc.weight.clone()
    report = load_pretrained(model, tmp_path / "timm.pth")
    assert report.head_classes == (1000, 5)
    assert "new 5-class classifier head (the checkpoint's has 1000)" in report.summary()
    _assert_loaded(model, src, skip=("head.",))
    assert torch.equal(model.head.fc.weight, fresh_head)  # the model's own initialisation is kept


def test_cvnets_mobilevit(tmp_path):
    ours = hybridvit.create_model("hv_mobilevit_xxs").state_dict()
    cvnets = {cvnets_key(k, depths=(2, 4, 3)): v for k, v in ours.items()}
    torch.save({"state_dict": cvnets}, tmp_path / "cvnets.pt")
    model = hybridvit.create_model("hv_mobilevit_xxs", num_classes=10)
    assert load_pretrained(model, tmp_path / "cvnets.pt").head_classes == (1000, 10)
    # The converter flips the stem from BGR to RGB; everything else is the tensor we saved.
    assert torch.equal(model.stem.conv.weight, ours["stem.conv.weight"].flip(1))
    _assert_loaded(model, ours, skip=("head.", "stem.conv.weight"))


def test_timm_ghostnet(tmp_path):
    src = timm.create_model("ghostnet_100").state_dict()
    torch.save(src, tmp_path / "ghostnet.pth")
    model = hybridvit.create_model("hv_ghostnet_100")
    assert load_pretrained(model, tmp_path / "ghostnet.pth").head_classes is None  # 1000 classes both
    _assert_loaded(model, src)


def _boat_reference(isla: str, ours: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], callable]:
    """Our BOAT state dict in pytorch-boat's names (written from its model files), and the way back."""
    if isla == "swin":  # Microsoft Swin: patch merging at the end of stage i, plain `head`
        def to_ref(k):
            k = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) - 1}.downsample.", k)
            return k.replace("head.fc.", "head.")
    else:  # CSWin: stage1_conv_embed, stage{s}.{j}, merge{s}
        def to_ref(k):
            k = k.replace("stem.proj.", "stage1_conv_embed.0.").replace("stem.norm.", "stage1_conv_embed.2.")
            k = re.sub(r"^stages\.(\d)\.blocks\.", lambda m: f"stage{int(m.group(1)) + 1}.", k)
            k = re.sub(r"^stages\.(\d)\.downsample\.proj\.", r"merge\1.conv.", k)
            k = re.sub(r"^stages\.(\d)\.downsample\.norm\.", r"merge\1.norm.", k)
            return k.replace("head.fc.", "head.")
    ref = {to_ref(k): v for k, v in ours.items()}
    back = {to_ref(k): k for k in ours}
    return ref, back.get


@pytest.mark.parametrize("isla", sorted(BOAT_SMALL))
def test_boat_reference(tmp_path, isla):
    cfg, size = BOAT_SMALL[isla]
    ours = BoatTransformer(cfg, img_size=size).state_dict()
    ref, back = _boat_reference(isla, ours)
    if isla == "swin":  # the reference also saves its recomputed buffers
        ref["layers.0.blocks.1.attn_mask"] = torch.zeros(4, 4, 4)
        ref["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(4, 4, dtype=torch.long)
    torch.save({"model": ref}, tmp_path / "boat.pth")
    model = BoatTransformer(cfg, img_size=size, num_classes=7)
    assert load_pretrained(model, tmp_path / "boat.pth").head_classes == (1000, 7)
    _assert_loaded(model, {k: v for k, v in ref.items() if back(k)}, rename=back, skip=("head.",))


def _official_resize(pos_embed: torch.Tensor, new_side: int) -> torch.Tensor:
    """The position-embedding interpolation of coeusguo/ceit main.py `--finetune` (DeiT's), re-typed here."""
    extra, tokens = pos_embed[:, :1], pos_embed[:, 1:]
    side, dim = int(tokens.shape[1] ** 0.5), tokens.shape[2]
    tokens = tokens.reshape(-1, side, side, dim).permute(0, 3, 1, 2)
    tokens = F.interpolate(tokens, size=(new_side, new_side), mode="bicubic", align_corners=False)
    return torch.cat((extra, tokens.permute(0, 2, 3, 1).flatten(1, 2)), dim=1)


def test_official_ceit_224_checkpoint_into_384(tmp_path):
    src = hybridvit.create_model("ceit_tiny_patch16_224")
    with torch.no_grad():
        src.pos_embed.normal_()  # a non-smooth embedding, where interpolation kernels differ most
    # The official main.py (DeiT's) saves these entries, `args` being an argparse.Namespace.
    torch.save({"model": src.state_dict(), "epoch": 299, "args": argparse.Namespace(lr=1e-3)}, tmp_path / "t224.pth")
    model = hybridvit.create_model("ceit_tiny_patch16_384", num_classes=5)
    assert load_pretrained(model, tmp_path / "t224.pth").head_classes == (1000, 5)
    expected = _official_resize(src.pos_embed.detach(), 24)
    assert model.pos_embed.shape == (1, 577, 192)
    torch.testing.assert_close(model.pos_embed.detach(), expected, rtol=0, atol=1e-6)
    # `set_input_size` (a 224 model moved to 384) gives the same embedding.
    resized = hybridvit.create_model("ceit_tiny_patch16_224")
    resized.load_state_dict(src.state_dict())
    resized.set_input_size(384)
    torch.testing.assert_close(resized.pos_embed.detach(), expected, rtol=0, atol=1e-6)
    _assert_loaded(model, src.state_dict(), skip=("head.", "pos_embed"))


def test_foreign_and_mismatched_checkpoints_are_one_line_errors(tmp_path):
    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "resnet.pth")
    model = hybridvit.create_model("hv_mobilevit_xxs", num_classes=5)
    with pytest.raises(CheckpointError, match=r"shares no weights with model hv_mobilevit_xxs; layouts hybridvit reads"):
        load_pretrained(model, tmp_path / "resnet.pth")
    hybridvit.save_weights(hybridvit.create_model("hv_mobilevit_xs"), tmp_path / "xs.safetensors")
    with pytest.raises(CheckpointError, match=r"does not fit model hv_mobilevit_xxs: .* shape mismatches") as err:
        load_pretrained(model, tmp_path / "xs.safetensors")
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="not a hybridvit training output directory"):
        load_pretrained(model, tmp_path)


def test_backbone_without_classifier(tmp_path):
    """A dense task's backbone (`num_classes=0`) drops the checkpoint's classifier and loads the rest strictly."""
    src = hybridvit.create_model("hv_mobilevit_xxs", num_classes=10)
    hybridvit.save_weights(src, tmp_path / "w.safetensors")
    model = hybridvit.create_model("hv_mobilevit_xxs", num_classes=0)
    report = load_pretrained(model, tmp_path / "w.safetensors")
    assert report.head_classes == (10, 0) and "10-class classifier left out" in report.summary()
    _assert_loaded(model, src.state_dict(), skip=("head.",))


# ---------------------------------------------------------------------------------------- train --init
def _five_digit_classes(root):
    """Digits 0-4 of the embedded digits' own train/val split, as an ImageFolder tree of 32x32 PNGs."""
    from hybridvit.data.datasets import DigitsDataset

    for split in ("train", "val"):
        data = DigitsDataset(split)
        for i, (image, label) in enumerate(zip(data.images, data.targets)):
            if label < 5:
                folder = root / split / str(label)
                folder.mkdir(parents=True, exist_ok=True)
                image.save(folder / f"{i}.png")
    return root


def _first_val_top1(out):
    return float(next(csv.DictReader((out / "metrics.csv").open()))["val_top1"])


def test_fine_tune_from_digits_run_beats_scratch(tmp_path, capsys):
    """The digits main job (2 epochs), then one epoch on digits 0-4 at 24 px: from its weights vs from scratch."""
    pre = tmp_path / "digits"
    assert main(["train", "--model", MODEL, "--output", str(pre), "--epochs", "2", "--no-progress"]) == 0
    five = _five_digit_classes(tmp_path / "five")
    tune = ["train", "--model", MODEL, "--data", str(five), "--img-size", "24", "--epochs", "1", "--no-progress"]
    capsys.readouterr()
    assert main([*tune, "--output", str(tmp_path / "ft"), "--init", str(pre)]) == 0
    assert (f"initialised from {pre} ({MODEL} run): every weight loaded except the "
            "classifier, new 5-class classifier head (the checkpoint's has 10)") in capsys.readouterr().out
    assert main([*tune, "--output", str(tmp_path / "scratch")]) == 0
    tuned, scratch = _first_val_top1(tmp_path / "ft"), _first_val_top1(tmp_path / "scratch")
    # Measured on the 2-core build machine: 83.3% fine-tuned against 19.4% from scratch (chance: 20%).
    assert tuned >= scratch + 40, (tuned, scratch)
    assert json.loads((tmp_path / "ft/run.json").read_text())["init"] == str(pre)


def test_ceit_init_at_another_size_then_eval(tmp_path, capsys):
    """`--init` with a 224 official CeiT file: the trainer's model at 384 holds the official resize; a 32 px run evaluates."""
    src = hybridvit.create_model("ceit_tiny_patch16_224")
    with torch.no_grad():
        src.pos_embed.normal_()
    torch.save({"model": src.state_dict()}, tmp_path / "t224.pth")
    trainer = Trainer(TrainConfig("ceit_tiny_patch16_224", output=str(tmp_path / "at384"), init=str(tmp_path / "t224.pth"),
                                  img_size=384, limit=8, batch_size=4, progress=False))
    torch.testing.assert_close(trainer.model.pos_embed.detach(), _official_resize(src.pos_embed.detach(), 24),
                               rtol=0, atol=1e-6)
    out = tmp_path / "at32"
    assert main(["train", "--model", "ceit_tiny_patch16_224", "--init", str(tmp_path / "t224.pth"), "--img-size", "32",
                 "--output", str(out), "--limit", "16", "--batch-size", "8", "--max-steps", "1", "--no-progress"]) == 0
    assert load_file(run_weights(out, "last"))["pos_embed"].shape == (1, 5, 192)  # a 2x2 grid + class token
    from hybridvit.engine.inference import load_trained

    assert load_trained(str(out), weights="last").model.pos_embed.shape == (1, 5, 192)  # rebuilt at the run's size
    assert main(["eval", "--checkpoint", str(out), "--weights", "last", "--img-size", "32"]) == 0
    assert "360 images at 32px" in capsys.readouterr().out


def test_init_errors_are_one_line(tmp_path, capsys):
    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "resnet.pth")
    for extra, message in (
        (["--init", str(tmp_path / "resnet.pth")], "shares no weights with model hv_mobilevit_xxs"),
        (["--init", str(tmp_path / "missing.pt")], "checkpoint not found"),
        (["--init", str(tmp_path / "resnet.pth"), "--resume"], "--init and --resume exclude each other"),
    ):
        code = main(["train", "--model", MODEL, "--output", str(tmp_path / "run"), "--limit", "16", *extra])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and message in err, err


# ------------------------------------------------------------------------------------------- LR knobs
def _lr_scales(optimizer):
    return {id(p): g.get("lr_scale", 1.0) for g in optimizer.param_groups for p in g["params"]}


def test_backbone_lr_ratio_and_layer_decay():
    model = hybridvit.create_model(MODEL, num_classes=5)
    head = {id(model.head.fc.weight), id(model.head.fc.bias)}
    recipe = dataclasses.replace(get_recipe("deit"), backbone_lr_ratio=0.1)
    optimizer = build_optimizer(model, recipe, 1e-3)
    scales = _lr_scales(optimizer)
    assert len(scales) == len(list(model.parameters()))
    assert all(scales[id(p)] == (1.0 if id(p) in head else 0.1) for p in model.parameters())
    # The weight-decay exclusions are those of the plain optimizer.
    plain = build_optimizer(model, get_recipe("deit"), 1e-3)
    decay = lambda opt: {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}  # noqa: E731
    assert decay(optimizer) == decay(plain)

    layered = build_optimizer(model, dataclasses.replace(get_recipe("deit"), layer_decay=0.5), 1e-3)
    scales = _lr_scales(layered)
    assert scales[id(model.head.fc.weight)] == 1.0 and scales[id(model.stem.conv.weight)] < 0.5 ** 3
    ordered = [scales[id(p)] for p in model.parameters()]
    assert ordered == sorted(ordered)  # deeper layers never get a smaller LR than earlier ones
    # CeiT: the model's group_matcher makes one layer per encoder block, each decay times the next's LR.
    ceit = hybridvit.create_model("ceit_tiny_patch16_224", num_classes=5)
    scales = _lr_scales(build_optimizer(ceit, dataclasses.replace(get_recipe("deit"), layer_decay=0.5), 1e-3))
    blocks = [scales[id(ceit.blocks[i].attn.qkv.weight)] for i in range(12)]
    assert all(a == pytest.approx(0.5 * b) for a, b in zip(blocks, blocks[1:])) and scales[id(ceit.head.weight)] == 1.0
    # timm's scheduler applies lr_scale: after a step update each group runs at lr * lr_scale.
    from timm.scheduler import CosineLRScheduler

    CosineLRScheduler(layered, t_initial=10, t_in_epochs=False).step_update(0)
    assert all(g["lr"] == pytest.approx(1e-3 * g["lr_scale"]) for g in layered.param_groups)


def test_frozen_backbone_epochs(tmp_path):
    """With --freeze-epochs 1, epoch 1 changes only the classifier (BatchNorm statistics included); epoch 2 all."""
    cfg = TrainConfig(MODEL, output=str(tmp_path), limit=32, batch_size=16, epochs=2, freeze_epochs=1, progress=False)
    trainer = Trainer(cfg)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train_steps()
    after = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"head.fc.weight", "head.fc.bias"}
    trainer.epoch = 1  # the second epoch trains everything
    trainer.step_in_epoch = 0
    trainer.train_steps()
    changed = {k for k, v in trainer.model.state_dict().items() if not torch.equal(after[k], v)}
    assert "stem.conv.weight" in changed and "stem.bn.running_mean" in changed


def test_dense_backbone_takes_a_classification_run_of_any_class_count(tmp_path):
    """`--backbone-checkpoint` goes through the same loader: a 10-class checkpoint initialises a backbone."""
    from hybridvit.tasks.backbone import create_feature_extractor

    src = hybridvit.create_model(MODEL, num_classes=10)
    hybridvit.save_weights(src, tmp_path / "w.safetensors")
    features = create_feature_extractor(MODEL, pretrained_path=tmp_path / "w.safetensors")
    assert torch.equal(features.stem.conv.weight, src.stem.conv.weight)


def test_knobs_from_the_command_line(tmp_path):
    hybridvit.save_weights(hybridvit.create_model(MODEL, num_classes=10), tmp_path / "w.safetensors")
    out = tmp_path / "run"
    assert main(["train", "--model", MODEL, "--output", str(out), "--init", str(tmp_path / "w.safetensors"),
                 "--layer-decay", "0.75", "--backbone-lr-ratio", "0.1", "--freeze-epochs", "1",
                 "--limit", "16", "--batch-size", "8", "--max-steps", "1", "--no-progress"]) == 0
    recipe = json.loads((out / "run.json").read_text())["recipe"]
    assert (recipe["layer_decay"], recipe["backbone_lr_ratio"], recipe["freeze_epochs"]) == (0.75, 0.1, 1)
