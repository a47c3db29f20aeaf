"""Tasks: what the one training loop (`engine/train.py`'s Trainer) needs to know about a kind of model.

The Trainer owns everything tasks share: optimizer and schedule, AMP, DDP, EMA, the NaN stop,
progress bar, metrics.csv and curves.png, atomic checkpoints and exact resume. A task supplies
the rest. Its interface, in the order the Trainer uses it:

- `Task(cfg, recipe, device, info)`; class attributes `name`, `default_recipe` (used when the
  config names no recipe);
- `build_data() -> DataSplits`: train/val datasets, class names, source, skipped samples;
- `build_model(num_classes) -> nn.Module` (on CPU; the Trainer moves it to the device);
- `train_loader(dataset) -> (DataLoader, batch_sampler)`: the sampler has `set_epoch(epoch,
  start_step)` and `__len__` (steps per epoch), and draws from private generators only, so a
  resume replays the same batches (`hybridvit.data.MultiScaleBatchSampler` does both);
- `val_loader(dataset) -> DataLoader` over this rank's disjoint shard;
- `criterion(outputs, targets) -> loss`, an attribute (tests may replace `Trainer.criterion`);
- `training_step(model, batch, criterion) -> (loss, stats, postfix)`, run inside autocast:
  `stats` is a float64 vector [loss sum, task sums ..., sample count] that the Trainer sums over
  ranks and over the epoch; `postfix` goes to the progress bar;
- `train_metrics(stats) -> {column: value}` for the epoch's running sums (the `train_fields`);
- `evaluate(model, loader, amp) -> {metric: value}` over every rank's shard, merged; the
  `val_metrics` are written as `val_<metric>` columns, and `primary` (higher is better) picks
  `best.safetensors`;
- `epoch_message(row) -> str`, the line printed after each epoch;
- `run_info() -> dict`: what `eval` and `predict` need to rebuild the model (into run.json);
- `curve_metrics`: the metrics plotted next to the losses in curves.png.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from timm.data import Mixup, create_transform, resolve_data_config
from timm.loss import SoftTargetCrossEntropy
from torch.utils.data import DataLoader, Dataset, Subset

from ..data.datasets import DataSplits, TransformedDataset, build_datasets, skip_unreadable
from ..data.sampler import MultiScaleBatchSampler, ScheduledTransformDataset, multi_scale_resolutions
from ..errors import DataError, HybridViTError
from .distributed import DistInfo, all_gather_objects, broadcast_object
from .evaluate import autocast, evaluate
from .recipes import Recipe
from .segmentation import SegmentationTask

# MobileViT's scales relative to its base crop: 160/256 .. 320/256 (spec mobilevit.md §4.2).
MULTI_SCALE_RANGE = (0.625, 1.25)


def training_resolutions(recipe: Recipe, base: int, scales: tuple[int, ...]) -> list[int]:
    if scales:
        return sorted(set(scales) | {base})
    if not recipe.multi_scale:
        return [base]
    divisor = 32 if base >= 128 else 8
    low, high = (round(base * r) for r in MULTI_SCALE_RANGE)
    return multi_scale_resolutions(base, low, high, 5, divisor)


def private_loader(dataset: Dataset, seed: int, workers: int, **kwargs: Any) -> DataLoader:
    # A private generator: creating an iterator must not draw from the global RNG (exact resume).
    return DataLoader(dataset, num_workers=workers, generator=torch.Generator().manual_seed(seed), **kwargs)


def batch_sampler(
    dataset_len: int, resolutions: list[int], base: int, recipe: Recipe, info: DistInfo, seed: int, even: bool = False
) -> MultiScaleBatchSampler:
    try:
        return MultiScaleBatchSampler(
            dataset_len, resolutions, base, recipe.batch_size, recipe.batch_rule,
            num_replicas=info.world_size, rank=info.rank, seed=seed, even_batches=even,
        )
    except ValueError:
        raise DataError(
            f"{dataset_len} training images split over {info.world_size} process(es) do not fill one "
            f"batch of {recipe.batch_size}; lower --batch-size"
        ) from None


def shard(dataset: Dataset, info: DistInfo) -> Subset:
    return Subset(dataset, range(info.rank, len(dataset), info.world_size))  # disjoint, no padding


class ClassificationTask:
    """Image classification: timm transforms, mixup/cutmix, label-smoothed cross-entropy, top-1/top-5."""

    name = "classification"
    default_recipe = "digits"
    train_fields = ("train_loss", "train_top1")
    val_metrics = ("loss", "top1", "top5")
    primary = "top1"
    curve_metrics = ("top1",)

    def __init__(self, cfg: Any, recipe: Recipe, device: torch.device, info: DistInfo) -> None:
        self.cfg, self.recipe, self.device, self.info = cfg, recipe, device, info

    def build_data(self) -> DataSplits:
        return build_datasets(self.cfg.data, self.cfg.check_images)

    def build_model(self, num_classes: int) -> torch.nn.Module:
        from .. import create_model

        recipe = self.recipe
        kwargs = {"drop_path_rate": recipe.drop_path} if recipe.drop_path else {}
        if self.cfg.attn:
            kwargs["attn_layer"] = self.cfg.attn
        model = create_model(self.cfg.model, num_classes=num_classes, **kwargs)
        data_cfg = resolve_data_config({}, model=model)
        self.num_classes = num_classes
        self.img_size = recipe.img_size or data_cfg["input_size"][-1]
        self.mean, self.std = data_cfg["mean"], data_cfg["std"]
        self.crop_pct = recipe.crop_pct or data_cfg["crop_pct"]
        self.resolutions = training_resolutions(recipe, self.img_size, self.cfg.scales)
        self.mixup = (
            Mixup(mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix, label_smoothing=recipe.label_smoothing,
                  num_classes=num_classes)
            if recipe.mixup or recipe.cutmix else None
        )
        self.criterion = (
            SoftTargetCrossEntropy() if self.mixup else torch.nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
        )
        return model

    def train_loader(self, dataset: Dataset) -> tuple[DataLoader, MultiScaleBatchSampler]:
        recipe, cfg = self.recipe, self.cfg
        transforms = [
            create_transform(
                r, is_training=True, scale=recipe.scale, hflip=recipe.hflip, color_jitter=recipe.color_jitter,
                auto_augment=recipe.auto_augment, re_prob=recipe.re_prob, interpolation=recipe.interpolation,
                mean=self.mean, std=self.std,
            )
            for r in self.resolutions
        ]
        sampler = batch_sampler(len(dataset), self.resolutions, self.img_size, recipe, self.info, cfg.seed,
                                even=bool(recipe.mixup or recipe.cutmix))
        loader = private_loader(ScheduledTransformDataset(dataset, transforms), cfg.seed + self.info.rank, cfg.workers,
                                batch_sampler=sampler)
        return loader, sampler

    def val_loader(self, dataset: Dataset) -> DataLoader:
        val_tf = create_transform(
            self.img_size, is_training=False, interpolation=self.eval_interpolation, crop_pct=self.crop_pct,
            mean=self.mean, std=self.std,
        )
        val = shard(TransformedDataset(dataset, val_tf), self.info)
        return private_loader(val, self.cfg.seed, self.cfg.workers, batch_size=2 * self.recipe.batch_size,
                              collate_fn=skip_unreadable)

    @property
    def eval_interpolation(self) -> str:
        return "bilinear" if self.recipe.interpolation == "random" else self.recipe.interpolation

    def training_step(
        self, model: torch.nn.Module, batch: Any, criterion: Callable
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        images, labels = (t.to(self.device) for t in batch)
        targets = labels
        if self.mixup is not None:
            images, targets = self.mixup(images, labels)
        logits = model(images)
        loss = criterion(logits, targets)
        stats = torch.stack([
            loss.detach().double() * len(labels),
            (logits.detach().argmax(1) == labels).sum().double(),
            torch.tensor(float(len(labels)), dtype=torch.float64, device=self.device),
        ])
        return loss, stats, {"res": images.shape[-1], "bs": len(labels)}

    def train_metrics(self, stats: torch.Tensor) -> dict[str, float]:
        loss_sum, hits, count = stats.tolist()
        return {"train_loss": loss_sum / count, "train_top1": 100 * hits / count}

    def evaluate(self, model: torch.nn.Module, loader: DataLoader, amp: bool) -> dict[str, float]:
        return evaluate(model, loader, self.device, self.info, amp)

    def epoch_message(self, row: dict[str, float]) -> str:
        return (f"train loss {row['train_loss']:.4f} top-1 {row['train_top1']:.1f}% | val loss {row['val_loss']:.4f} "
                f"top-1 {row['val_top1']:.2f}% top-5 {row['val_top5']:.2f}%")

    def run_info(self) -> dict[str, Any]:
        return {
            "num_classes": self.num_classes, "img_size": self.img_size, "mean": list(self.mean),
            "std": list(self.std), "crop_pct": self.crop_pct, "interpolation": self.eval_interpolation,
            "resolutions": self.resolutions, "attn_layer": self.cfg.attn,
        }


class DetectionTask:
    """Object detection: COCO-format data (default: the digit scenes), a `create_detector` head, COCO mAP.

    The detector computes its own losses (`model(images, targets)` -> loss dict; the criterion
    sums them) and resizes its inputs, so batches are lists of images at their own sizes.
    """

    name = "detection"
    default_recipe = "digit_scenes"
    train_fields = ("train_loss",)
    primary = "AP"
    curve_metrics = ("AP", "AP50")

    def __init__(self, cfg: Any, recipe: Recipe, device: torch.device, info: DistInfo) -> None:
        from ..tasks import DETECTION_HEADS
        from ..errors import UnknownHeadError

        self.cfg, self.recipe, self.device, self.info = cfg, recipe, device, info
        self.head = UnknownHeadError.check("detection", cfg.head or "ssdlite", DETECTION_HEADS)
        self.masks = self.head == "maskrcnn"
        from ..tasks.coco_eval import BOX_METRICS, MASK_METRICS

        self.val_metrics = BOX_METRICS + (MASK_METRICS if self.masks else ())

    def build_data(self) -> DataSplits:
        from ..data.coco import CocoDetection, detection_transform, find_coco_split
        from ..data.digit_scenes import digit_scenes

        root = digit_scenes() if self.cfg.data is None else self.cfg.data
        train_tf = detection_transform(train=True, hflip=self.recipe.hflip, iou_crop=self.recipe.iou_crop,
                                       affine=self.recipe.affine)
        train = CocoDetection(*find_coco_split(root, "train"), transform=train_tf, masks=self.masks, drop_empty=True)
        val = CocoDetection(*find_coco_split(root, "val"), masks=self.masks)
        if val.category_ids != train.category_ids:
            raise DataError(f"the val categories of {root} differ from the train ones: {val.category_ids} vs {train.category_ids}")
        self.val_coco, self.category_ids = val, train.category_ids
        source = "digit scenes" if self.cfg.data is None else str(root)
        return DataSplits(train, val, train.classes, source, train.skipped + val.skipped)

    def detector_kwargs(self) -> dict[str, Any]:
        size = self.cfg.img_size or self.recipe.img_size
        return ({"image_size": size} if size else {}) | self.recipe.detector_kwargs.get(self.head, {})

    def build_model(self, num_classes: int) -> torch.nn.Module:
        from ..tasks import create_detector

        self.num_classes = num_classes
        self.criterion = lambda losses, targets: sum(losses.values())
        return create_detector(self.head, self.cfg.model, num_classes, pretrained_path=self.cfg.backbone_checkpoint,
                               **self.detector_kwargs())

    def train_loader(self, dataset: Dataset) -> tuple[DataLoader, MultiScaleBatchSampler]:
        from ..data.coco import collate_detection

        # One "resolution": the detector resizes; the sampler still shards, shuffles and resumes.
        sampler = batch_sampler(len(dataset), [1], 1, self.recipe, self.info, self.cfg.seed)
        loader = private_loader(ScheduledTransformDataset(dataset, [torch.nn.Identity()]), self.cfg.seed + self.info.rank,
                                self.cfg.workers, batch_sampler=sampler, collate_fn=collate_detection)
        return loader, sampler

    def val_loader(self, dataset: Dataset) -> DataLoader:
        from ..data.coco import collate_detection

        return private_loader(shard(dataset, self.info), self.cfg.seed, self.cfg.workers,
                              batch_size=self.recipe.batch_size, collate_fn=collate_detection)

    def training_step(
        self, model: torch.nn.Module, batch: Any, criterion: Callable
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        images, targets = _detection_batch_to(batch, self.device)
        losses = model(images, targets)
        loss = criterion(losses, targets)
        count = torch.tensor(float(len(images)), dtype=torch.float64, device=self.device)
        return loss, torch.stack([loss.detach().double() * len(images), count]), {"bs": len(images)}

    def train_metrics(self, stats: torch.Tensor) -> dict[str, float]:
        loss_sum, count = stats.tolist()
        return {"train_loss": loss_sum / count}

    def evaluate(self, model: torch.nn.Module, loader: DataLoader, amp: bool) -> dict[str, float]:
        return evaluate_detector(model, loader, self.val_coco, self.masks, self.device, self.info, amp)

    def epoch_message(self, row: dict[str, float]) -> str:
        masks = f" | mask AP {row['val_mask_AP']:.3f}" if self.masks else ""
        return (f"train loss {row['train_loss']:.4f} | val AP {row['val_AP']:.3f} AP50 {row['val_AP50']:.3f} "
                f"AP75 {row['val_AP75']:.3f}{masks}")

    def run_info(self) -> dict[str, Any]:
        return {"head": self.head, "num_classes": self.num_classes, "category_ids": self.category_ids,
                "detector_kwargs": self.detector_kwargs()}


def _detection_batch_to(batch: Any, device: torch.device) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    images, targets = batch
    images = [image.to(device) for image in images]
    targets = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]
    return images, targets


@torch.no_grad()
def evaluate_detector(
    model: torch.nn.Module, loader: DataLoader, coco: Any, masks: bool, device: torch.device,
    info: DistInfo = DistInfo(), amp: bool = False,
) -> dict[str, float]:
    """COCO metrics (`tasks/coco_eval.py`) of `model` on `loader`, a shard of the CocoDetection `coco`.

    Every rank's detections are gathered and scored on rank 0, which broadcasts the metrics.
    """
    from ..tasks.coco_eval import coco_evaluate, to_coco_results

    model.eval()
    results, image_ids = [], []
    for batch in loader:
        images, targets = _detection_batch_to(batch, device)
        with autocast(device, amp):
            outputs = model(images)
        ids = [t["image_id"] for t in targets]
        results += to_coco_results(outputs, ids, coco.category_ids)
        image_ids += ids
    gathered = all_gather_objects((results, image_ids), info)
    metrics = None
    if info.is_main:
        all_results = [r for rank_results, _ in gathered for r in rank_results]
        all_ids = [i for _, rank_ids in gathered for i in rank_ids]
        metrics = coco_evaluate(coco.ground_truth(), all_results, ("bbox", "segm") if masks else ("bbox",), all_ids)
        metrics["count"] = len(all_ids)
    return broadcast_object(metrics, info)


TASKS: dict[str, type] = {
    "classification": ClassificationTask, "detection": DetectionTask, "segmentation": SegmentationTask,
}


def task_class(name: str) -> type:
    """The task class registered under `name`."""
    if name not in TASKS:
        raise HybridViTError(f"unknown task '{name}'; choose one of {', '.join(TASKS)}")
    return TASKS[name]
