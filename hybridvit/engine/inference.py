"""Load a trained model from a training output directory (or a weights file) for `eval` and `predict`."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from timm.data import create_transform, resolve_data_config

from ..data.datasets import open_rgb
from ..errors import CheckpointError, DataError
from . import checkpointing as ckpt


@dataclass
class TrainedModel:
    model: torch.nn.Module
    classes: list[str]
    transform: Any
    img_size: int


def load_trained(checkpoint: str, model_name: str | None = None, weights: str = "best", img_size: int | None = None) -> TrainedModel:
    """`checkpoint` is a training output directory (uses its run.json) or a weights file (needs `model_name`)."""
    from .. import create_model, load_checkpoint

    path = Path(checkpoint)
    if path.is_dir():
        info = ckpt.read_run_info(path)
        file = ckpt.run_weights(path, weights)
    elif path.is_file():
        info_path = path.parent / ckpt.RUN_INFO
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        file = path
    else:
        raise CheckpointError(f"checkpoint not found: {path}")
    name = model_name or info.get("model")
    if name is None:
        raise CheckpointError(f"{path} has no {ckpt.RUN_INFO} next to it: pass --model")
    if info and model_name and info["model"] != model_name:
        raise CheckpointError(f"checkpoint {path} was trained for model {info['model']}, not {model_name}")
    kwargs = {"num_classes": info["num_classes"]} if info else {}
    model = create_model(name, **kwargs)
    load_checkpoint(model, file)
    model.eval()
    size = img_size or info.get("img_size") or resolve_data_config({}, model=model)["input_size"][-1]
    data_cfg = resolve_data_config({}, model=model)
    transform = create_transform(
        size, is_training=False, interpolation=info.get("interpolation", data_cfg["interpolation"]),
        crop_pct=info.get("crop_pct", data_cfg["crop_pct"]), mean=tuple(info.get("mean", data_cfg["mean"])),
        std=tuple(info.get("std", data_cfg["std"])),
    )
    classes = info.get("classes") or [str(i) for i in range(model.num_classes)]
    return TrainedModel(model, classes, transform, size)


@torch.no_grad()
def predict_files(trained: TrainedModel, files: list[str], topk: int = 5) -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) for each image file."""
    images = []
    for file in files:
        try:
            images.append(trained.transform(open_rgb(file)))
        except (OSError, ValueError) as err:
            raise DataError(f"cannot read image {file}: {err}") from None
    probs = trained.model(torch.stack(images)).softmax(dim=1)
    values, indices = probs.topk(min(topk, probs.shape[1]), dim=1)
    return [
        [(trained.classes[i], p) for p, i in zip(vals.tolist(), idx.tolist())] for vals, idx in zip(values, indices)
    ]
