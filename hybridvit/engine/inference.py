"""Load a trained model from a training output directory (or a weights file) for `eval` and `predict`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.data import create_transform, resolve_data_config

from ..checkpoint import one_line
from ..data.datasets import UNREADABLE, open_rgb
from ..errors import CheckpointError, DataError
from . import checkpointing as ckpt
from .finetune import match_input_size


@dataclass
class TrainedModel:
    model: torch.nn.Module
    classes: list[str]
    transform: Any  # classification: the eval transform; detection: None (the detector resizes)
    img_size: int | None
    info: dict[str, Any] = field(default_factory=dict)  # the run.json of the training run

    @property
    def task(self) -> str:
        return self.info.get("task", "classification")


def load_trained(checkpoint: str, model_name: str | None = None, weights: str = "best", img_size: int | None = None) -> TrainedModel:
    """`checkpoint` is a training output directory (uses its run.json) or a weights file (needs `model_name`)."""
    from .. import create_model, load_checkpoint

    path = Path(checkpoint)
    if path.is_dir():
        info = ckpt.read_run_info(path)
        file = ckpt.run_weights(path, weights)
    elif path.is_file():
        info = ckpt.read_run_info(path.parent) if (path.parent / ckpt.RUN_INFO).is_file() else {}
        file = path
    else:
        raise CheckpointError(f"checkpoint not found: {path}")
    name = model_name or info.get("model")
    if name is None:
        raise CheckpointError(f"{path} has no {ckpt.RUN_INFO} next to it: pass --model")
    if info and model_name and info["model"] != model_name:
        raise CheckpointError(f"checkpoint {path} was trained for model {info['model']}, not {model_name}")
    if info.get("task") == "detection":
        return _load_detector(name, info, file, img_size)
    kwargs = {"num_classes": info["num_classes"]} if isinstance(info.get("num_classes"), int) else {}
    if info.get("attn_layer"):  # trained with `train --attn`
        kwargs["attn_layer"] = info["attn_layer"]
    model = create_model(name, **kwargs)
    size = img_size or info.get("img_size") or resolve_data_config({}, model=model)["input_size"][-1]
    match_input_size(model, info.get("img_size") or size)  # the size the run trained at (CeiT's pos_embed)
    load_checkpoint(model, file)
    model.eval()
    data_cfg = resolve_data_config({}, model=model)
    transform = create_transform(
        size, is_training=False, interpolation=info.get("interpolation", data_cfg["interpolation"]),
        crop_pct=info.get("crop_pct", data_cfg["crop_pct"]), mean=tuple(info.get("mean", data_cfg["mean"])),
        std=tuple(info.get("std", data_cfg["std"])),
    )
    classes = info.get("classes") or [str(i) for i in range(model.num_classes)]
    if len(classes) != model.num_classes:
        raise CheckpointError(
            f"{ckpt.RUN_INFO} of {path} lists {len(classes)} classes but the model's head has {model.num_classes}"
        )
    return TrainedModel(model, classes, transform, size, info)


def _load_detector(name: str, info: dict[str, Any], file: Path, img_size: int | None) -> TrainedModel:
    from ..tasks import create_detector

    kwargs = dict(info.get("detector_kwargs", {}))
    if img_size:
        kwargs["image_size"] = img_size
    model = create_detector(info["head"], name, info["num_classes"], **kwargs)
    try:
        model.load_state_dict(ckpt.load_weights_file(file))
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {file} does not fit a {info['head']} detector on {name}: {one_line(err)}") from None
    return TrainedModel(model.eval(), info["classes"], None, kwargs.get("image_size"), info)


@torch.no_grad()
def detect_files(trained: TrainedModel, files: list[str]) -> list[dict[str, torch.Tensor]]:
    """The detector's {boxes, labels, scores} for each image file, boxes in the file's pixels."""
    from torchvision.transforms.v2 import functional as TF

    images = []
    for file in files:
        try:
            images.append(TF.to_dtype(TF.pil_to_tensor(open_rgb(file)), torch.float32, scale=True))
        except UNREADABLE as err:
            raise DataError(f"cannot read image {file}: {one_line(err)}") from None
    return trained.model(images)


@torch.no_grad()
def predict_files(trained: TrainedModel, files: list[str], topk: int = 5) -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) for each image file."""
    images = []
    for file in files:
        try:
            images.append(trained.transform(open_rgb(file)))
        except UNREADABLE as err:
            raise DataError(f"cannot read image {file}: {one_line(err)}") from None
    probs = trained.model(torch.stack(images)).softmax(dim=1)
    values, indices = probs.topk(min(topk, probs.shape[1]), dim=1)
    return [
        [(trained.classes[i], p) for p, i in zip(vals.tolist(), idx.tolist())] for vals, idx in zip(values, indices)
    ]
