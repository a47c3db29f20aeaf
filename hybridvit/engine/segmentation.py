"""Semantic segmentation in the one engine: the task object for `Trainer`, evaluation, loading and overlays.

`SegmentationTask` follows the task interface of `engine/tasks.py`; the loop, checkpoints, resume,
DDP, EMA and AMP are the Trainer's. Scores come from one confusion matrix over the whole validation
set, summed over ranks (`tasks/segmentation_metrics.py`). Evaluation resizes image and mask to the
run's square `img_size` (nearest for the mask), so it scores at that resolution.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..errors import CheckpointError, DataError
from ..tasks.segmentation_metrics import IGNORE_INDEX, confusion_matrix, predict_logits, segmentation_scores
from .distributed import DistInfo, all_reduce_sum
from .evaluate import autocast


class PairedTransformDataset(Dataset):
    """(image, mask) samples through a paired transform; accepts the batch sampler's (index, choice) pairs."""

    def __init__(self, dataset: Dataset, transform: Callable) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(index, tuple):  # MultiScaleBatchSampler's (sample, resolution choice); one crop size here
            index = index[0]
        return self.transform(*self.dataset[index])


def enet_class_weights(masks: torch.Tensor, num_classes: int, norm: float = 1.1) -> torch.Tensor:
    """ENet's class weights (ENet §5.2) from one batch's labels, as ml-cvnets computes them
    (`cvnets/loss_fn/utils/class_weighting.py`, `--loss.segmentation.cross-entropy.class-weights`):
    w_c = 1 / ln(norm + p_c) with p_c the share of class c among the labelled pixels, 0 for an absent class."""
    labelled = masks[masks != IGNORE_INDEX]
    counts = torch.bincount(labelled, minlength=num_classes)[:num_classes].float()
    weights = 1.0 / torch.log(norm + counts / counts.sum().clamp_min(1.0))
    return torch.where(counts > 0, weights, torch.zeros_like(weights))


class SegmentationLoss(nn.Module):
    """Cross-entropy over labelled pixels, plus `aux_weight` x the auxiliary head's (UperNet: 0.4).

    `class_weights="enet"` weights the classes of each batch by `enet_class_weights` (ml-cvnets' option).
    """

    def __init__(self, aux_weight: float = 0.0, label_smoothing: float = 0.0, class_weights: str | None = None) -> None:
        super().__init__()
        if class_weights not in (None, "enet"):
            raise ValueError(f"class_weights must be None or 'enet', not {class_weights!r}")
        self.aux_weight, self.label_smoothing, self.class_weights = aux_weight, label_smoothing, class_weights

    def _ce(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        weight = enet_class_weights(masks, logits.shape[1]).to(logits.dtype) if self.class_weights else None
        return F.cross_entropy(logits, masks, weight, ignore_index=IGNORE_INDEX, label_smoothing=self.label_smoothing)

    def forward(self, outputs: tuple[torch.Tensor, torch.Tensor | None], masks: torch.Tensor) -> torch.Tensor:
        logits, aux = outputs
        loss = self._ce(logits, masks)
        return loss if aux is None else loss + self.aux_weight * self._ce(aux, masks)


def head_lr_param_groups(model: nn.Module, weight_decay: float, decay_all: bool, head_lr_mult: float) -> list[dict]:
    """Optimizer groups: the head's parameters get `lr_scale = head_lr_mult` (timm's schedulers apply it).

    As `build_optimizer`: unless `decay_all`, 1-D parameters and biases get no weight decay.
    """
    head = {id(p) for p in model.head_parameters()}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            no_decay = not decay_all and (param.ndim <= 1 or name.endswith(".bias"))
            groups.setdefault((id(param) in head, no_decay), []).append(param)
    return [
        {"params": params, "weight_decay": 0.0 if no_decay else weight_decay, "lr_scale": head_lr_mult if is_head else 1.0}
        for (is_head, no_decay), params in sorted(groups.items())
    ]


@torch.no_grad()
def evaluate_segmenter(
    model: nn.Module,
    loader: DataLoader,
    num_classes: int,
    device: torch.device,
    info: DistInfo = DistInfo(),
    amp: bool = False,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> dict[str, Any]:
    """mIoU, pixel accuracy, per-class IoU (%) and loss over every rank's shard, from one summed confusion matrix.

    With test-time `scales` / `flip` the loss is that of the averaged probabilities (NLL).
    """
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, labelled pixels, images
    single = tuple(scales) == (1.0,) and not flip
    for images, masks in loader:
        images, masks = images.to(device), masks.to(device)
        with autocast(device, amp):
            scores = predict_logits(model, images, scales, flip)
        scores = scores.float()
        loss = (F.cross_entropy(scores, masks, ignore_index=IGNORE_INDEX, reduction="sum") if single else
                F.nll_loss(scores.clamp_min(1e-12).log(), masks, ignore_index=IGNORE_INDEX, reduction="sum"))
        confusion += confusion_matrix(scores.argmax(1), masks, num_classes)
        sums += torch.stack([loss.double(), (masks != IGNORE_INDEX).sum().double(),
                             torch.tensor(float(len(images)), dtype=torch.float64, device=device)])
    merged = all_reduce_sum(torch.cat([confusion.flatten().double(), sums]), info).cpu()
    confusion = merged[: num_classes * num_classes].round().long().reshape(num_classes, num_classes)
    loss_sum, pixels, count = merged[num_classes * num_classes:].tolist()
    return {"loss": loss_sum / max(pixels, 1.0), **segmentation_scores(confusion), "count": int(count)}


class SegmentationTask:
    """Semantic segmentation: mask folders (default: the digit scenes), a `create_segmenter` head, mIoU."""

    name = "segmentation"
    default_recipe = "digit_scenes_seg"
    train_fields = ("train_loss", "train_pixel_acc")
    val_metrics = ("loss", "miou", "pixel_acc")
    primary = "miou"
    curve_metrics = ("miou", "pixel_acc")

    def __init__(self, cfg: Any, recipe: Any, device: torch.device, info: DistInfo) -> None:
        from ..errors import UnknownHeadError
        from ..tasks import SEGMENTATION_HEADS

        self.cfg, self.recipe, self.device, self.info = cfg, recipe, device, info
        self.head = UnknownHeadError.check("segmentation", cfg.head or "deeplabv3", SEGMENTATION_HEADS)

    def build_data(self):
        from ..data.datasets import DataSplits
        from ..data.segmentation import build_segmentation_data

        data = build_segmentation_data(self.cfg.data, self.cfg.check_images)
        return DataSplits(data.train, data.val, data.classes, data.source, data.skipped)

    def build_model(self, num_classes: int) -> nn.Module:
        from timm.models import get_pretrained_cfg

        from ..tasks import create_segmenter

        self.num_classes = num_classes
        backbone_kwargs = {"drop_path_rate": self.recipe.drop_path} if self.recipe.drop_path else {}
        model = create_segmenter(self.head, self.cfg.model, num_classes, pretrained_path=self.cfg.backbone_checkpoint,
                                 backbone_kwargs=backbone_kwargs)
        preprocessing = get_pretrained_cfg(self.cfg.model)
        self.mean, self.std = tuple(preprocessing.mean), tuple(preprocessing.std)
        self.img_size = self.cfg.img_size or self.recipe.img_size or 512
        self.criterion = SegmentationLoss(model.aux_weight, self.recipe.label_smoothing, self.recipe.class_weights)
        return model

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict] | None:
        """The head learning-rate multiplier of the recipe (None: one group, as for any model)."""
        if self.recipe.head_lr_mult == 1.0:
            return None
        return head_lr_param_groups(model, weight_decay, self.recipe.decay_all, self.recipe.head_lr_mult)

    def _transform(self, train: bool) -> Callable:
        from ..data.segmentation import segmentation_transform

        recipe = self.recipe
        return segmentation_transform(train, self.img_size, self.mean, self.std, recipe.base_size or self.img_size,
                                      recipe.ratio_range, recipe.hflip)

    def train_loader(self, dataset: Dataset):
        from .tasks import batch_sampler, private_loader

        sampler = batch_sampler(len(dataset), [self.img_size], self.img_size, self.recipe, self.info, self.cfg.seed)
        loader = private_loader(PairedTransformDataset(dataset, self._transform(True)), self.cfg.seed + self.info.rank,
                                self.cfg.workers, batch_sampler=sampler)
        return loader, sampler

    def val_loader(self, dataset: Dataset) -> DataLoader:
        from .tasks import private_loader, shard

        val = shard(PairedTransformDataset(dataset, self._transform(False)), self.info)
        return private_loader(val, self.cfg.seed, self.cfg.workers, batch_size=self.recipe.batch_size)

    def training_step(self, model: nn.Module, batch: Any, criterion: Callable):
        images, masks = (t.to(self.device) for t in batch)
        outputs = model(images, with_aux=True)
        loss = criterion(outputs, masks)
        labelled = masks != IGNORE_INDEX
        stats = torch.stack([
            loss.detach().double() * len(images),
            (outputs[0].detach().argmax(1) == masks)[labelled].sum().double(),
            labelled.sum().double(),
            torch.tensor(float(len(images)), dtype=torch.float64, device=self.device),
        ])
        return loss, stats, {"bs": len(images)}

    def train_metrics(self, stats: torch.Tensor) -> dict[str, float]:
        loss_sum, hits, pixels, count = stats.tolist()
        return {"train_loss": loss_sum / count, "train_pixel_acc": 100 * hits / max(pixels, 1.0)}

    def evaluate(self, model: nn.Module, loader: DataLoader, amp: bool) -> dict[str, Any]:
        return evaluate_segmenter(model, loader, self.num_classes, self.device, self.info, amp)

    def epoch_message(self, row: dict[str, float]) -> str:
        return (f"train loss {row['train_loss']:.4f} pixel acc {row['train_pixel_acc']:.1f}% | val loss "
                f"{row['val_loss']:.4f} mIoU {row['val_miou']:.2f}% pixel acc {row['val_pixel_acc']:.2f}%")

    def run_info(self) -> dict[str, Any]:
        return {"head": self.head, "num_classes": self.num_classes, "img_size": self.img_size,
                "mean": list(self.mean), "std": list(self.std)}


# ---------------------------------------------------------------------------------------- eval / predict
@dataclass
class TrainedSegmenter:
    model: nn.Module
    classes: list[str]
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def load_segmenter(checkpoint: str | Path, weights: str = "best") -> TrainedSegmenter:
    """The segmenter of a training output directory (its run.json names backbone, head and classes), or of a
    weights file inside one; `weights` picks best / last / ema of a directory."""
    from .. import load_checkpoint
    from ..tasks import create_segmenter
    from . import checkpointing as ckpt

    path = Path(checkpoint)
    info_path = (path if path.is_dir() else path.parent) / ckpt.RUN_INFO
    if not info_path.is_file():
        raise CheckpointError(f"{path} has no {ckpt.RUN_INFO}: segmenters load from a training output directory")
    info = json.loads(info_path.read_text())
    if info.get("task") != "segmentation":
        raise CheckpointError(f"{path} holds a {info.get('task', 'classification')} run, not a segmentation one")
    model = create_segmenter(info["head"], info["model"], info["num_classes"])
    load_checkpoint(model, ckpt.run_weights(path, weights) if path.is_dir() else path)
    return TrainedSegmenter(model.eval(), info["classes"], info["img_size"], tuple(info["mean"]), tuple(info["std"]))


def palette(num_classes: int) -> np.ndarray:
    """PASCAL VOC's colour map (bit-interleaved class index), [num_classes, 3] uint8; class 0 is black."""
    colours = np.zeros((max(num_classes, 1), 3), dtype=np.uint8)
    for index in range(len(colours)):
        c, value = index, np.zeros(3, dtype=np.int64)
        for shift in range(7, -1, -1):
            value |= ((c >> np.arange(3)) & 1) << shift
            c >>= 3
        colours[index] = value
    return colours


def overlay(image: Image.Image, mask: np.ndarray, num_classes: int, alpha: float = 0.5) -> Image.Image:
    """`image` with every pixel of a class > 0 blended with that class's palette colour."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    colours = palette(num_classes)[mask].astype(np.float32)
    blend = np.where((mask > 0)[..., None], (1 - alpha) * rgb + alpha * colours, rgb)
    return Image.fromarray(blend.round().astype(np.uint8))


@torch.no_grad()
def predict_masks(trained: TrainedSegmenter, files: Sequence[str], out_dir: str | Path) -> list[tuple[Path, Path, dict]]:
    """Per image file: `<stem>_mask.png` (class indices, palette PNG) and `<stem>_overlay.png` in `out_dir`."""
    from torchvision.transforms import v2 as T

    from ..data.datasets import open_rgb

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    transform = T.Compose([T.ToImage(), T.Resize((trained.img_size, trained.img_size), antialias=True),
                           T.ToDtype(torch.float32, scale=True), T.Normalize(trained.mean, trained.std)])
    colours = palette(len(trained.classes))
    results = []
    for file in files:
        try:
            image = open_rgb(file)
        except (OSError, ValueError) as err:
            raise DataError(f"cannot read image {file}: {err}") from None
        logits = trained.model(transform(image)[None])
        logits = F.interpolate(logits, size=image.size[::-1], mode="bilinear", align_corners=False)
        mask = logits.argmax(1)[0].to(torch.uint8).numpy()
        stem = Path(file).stem
        mask_png = Image.fromarray(mask, "P")
        mask_png.putpalette(colours.flatten().tolist())
        mask_path, overlay_path = out / f"{stem}_mask.png", out / f"{stem}_overlay.png"
        mask_png.save(mask_path)
        overlay(image, mask, len(trained.classes)).save(overlay_path)
        counts = np.bincount(mask.ravel(), minlength=len(trained.classes))
        share = {trained.classes[i]: 100 * c / mask.size for i, c in enumerate(counts) if c and i > 0}
        results.append((mask_path, overlay_path, share))
    return results


# ---------------------------------------------------------------------------------------- CLI verbs
def is_segmentation_run(checkpoint: str | Path) -> bool:
    """Whether `checkpoint` (a run directory or a weights file in one) holds a segmentation run."""
    from . import checkpointing as ckpt

    path = Path(checkpoint)
    info_path = (path if path.is_dir() else path.parent) / ckpt.RUN_INFO
    try:
        return json.loads(info_path.read_text()).get("task") == "segmentation"
    except (OSError, ValueError):
        return False


def eval_command(args: Any) -> None:
    """`hybridvit eval --checkpoint RUN` for a segmentation run: mIoU, pixel accuracy, per-class IoU."""
    from ..data.segmentation import SegmentationFolder, build_segmentation_data, find_segmentation_split
    from ..data.segmentation import segmentation_transform
    from .distributed import resolve_device

    device = resolve_device(args.device)
    trained = load_segmenter(args.checkpoint, args.weights)
    trained.model.to(device)
    size = args.img_size or trained.img_size
    if args.data is None:
        dataset = build_segmentation_data(None, args.check_images).val
    else:
        dataset = SegmentationFolder(find_segmentation_split(args.data, "val"), check=args.check_images)
    if len(dataset.classes) != len(trained.classes):
        raise DataError(f"{args.data} has {len(dataset.classes)} classes, the segmenter {len(trained.classes)}")
    transform = segmentation_transform(False, size, trained.mean, trained.std)
    loader = DataLoader(PairedTransformDataset(dataset, transform), batch_size=args.batch_size, num_workers=args.workers)
    scales = tuple(args.tta_scales or (1.0,))
    result = evaluate_segmenter(trained.model, loader, len(trained.classes), device, scales=scales, flip=args.flip)
    tta = f", test-time scales {list(scales)}{' + flip' if args.flip else ''}" if scales != (1.0,) or args.flip else ""
    print(f"{result['count']} images at {size}px{tta}: mIoU {result['miou']:.2f}% "
          f"pixel acc {result['pixel_acc']:.2f}% loss {result['loss']:.4f}")
    for name, iou in zip(trained.classes, result["class_iou"]):
        print(f"  {name:>16}  IoU {'-' if np.isnan(iou) else f'{iou:.2f}%'}")
    if dataset.skipped:
        print(f"skipped {len(dataset.skipped)} sample(s): {dict(dataset.skip_reasons)}")


def predict_command(args: Any) -> None:
    """`hybridvit predict --checkpoint RUN IMAGES` for a segmentation run: mask and overlay PNGs."""
    trained = load_segmenter(args.checkpoint, args.weights)
    if args.img_size:
        trained.img_size = args.img_size
    for file, (mask, picture, share) in zip(args.images, predict_masks(trained, args.images, args.out)):
        found = ", ".join(f"{name} {pct:.1f}%" for name, pct in sorted(share.items(), key=lambda kv: -kv[1]))
        print(f"{file}: {picture} ({found or 'background only'}); mask {mask}")
