"""The training loop: timm's optimizer, cosine schedule, transforms, mixup and EMA around any registered model.

Exact resume: every source of randomness is either a private generator keyed on (seed, epoch)
(sampler, schedule of resolutions) or saved in the checkpoint (torch, numpy and python RNGs of
every rank), and the sampler skips the batches already done in the interrupted epoch. With
`workers > 0` the order and resolutions still resume exactly; the augmentation draws made in
worker processes do not.
"""
from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.data import Mixup, create_transform, resolve_data_config
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from ..checkpoint import one_line
from ..errors import CheckpointError, DataError, TrainingDivergedError
from ..data.datasets import TransformedDataset, build_datasets
from ..data.sampler import MultiScaleBatchSampler, ScheduledTransformDataset, multi_scale_resolutions
from . import checkpointing as ckpt
from .distributed import all_gather_objects, all_reduce_sum, barrier, init_distributed, resolve_device
from .evaluate import autocast, evaluate
from .metrics import MetricsLogger, plot_curves, read_metrics
from .recipes import Recipe, get_recipe

# MobileViT's scales relative to its base crop: 160/256 .. 320/256 (spec mobilevit.md §4.2).
MULTI_SCALE_RANGE = (0.625, 1.25)


@dataclass
class TrainConfig:
    """What `hybridvit train` accepts; None means "the recipe's value"."""

    model: str
    data: str | None = None  # None: the embedded scikit-learn digits
    recipe: str = "digits"
    output: str = "runs/train"
    epochs: int | None = None
    batch_size: int | None = None  # per process, at the base resolution
    lr: float | None = None
    img_size: int | None = None
    multi_scale: bool | None = None
    scales: tuple[int, ...] = ()  # explicit training resolutions (implies multi-scale)
    batch_rule: str | None = None
    warmup_epochs: float | None = None
    ema_decay: float | None = None  # 0 turns EMA off; > 0 turns it on (evaluated) with this decay per step
    amp: bool | None = None
    resume: bool = False
    max_steps: int | None = None  # stop after this many optimizer steps in total, keeping a checkpoint
    seed: int = 0
    workers: int = 0
    device: str | None = None
    progress: bool = True
    check_images: str = "full"
    limit: int | None = None  # use only this many train and val images (a fixed random subset), for quick checks


def resolve_recipe(cfg: TrainConfig) -> Recipe:
    """The named recipe with the command-line overrides applied."""
    recipe = get_recipe(cfg.recipe)
    overrides = {
        "epochs": cfg.epochs, "batch_size": cfg.batch_size, "img_size": cfg.img_size,
        "multi_scale": True if cfg.scales else cfg.multi_scale, "batch_rule": cfg.batch_rule,
    }
    if cfg.warmup_epochs is not None:
        overrides.update(warmup_epochs=cfg.warmup_epochs, warmup_steps=0)
    if cfg.ema_decay == 0:
        overrides.update(ema_decay=None, eval_ema=False)
    elif cfg.ema_decay is not None:
        overrides.update(ema_decay=cfg.ema_decay, eval_ema=True)
    return dataclasses.replace(recipe, **{k: v for k, v in overrides.items() if v is not None})


def training_resolutions(recipe: Recipe, base: int, scales: tuple[int, ...]) -> list[int]:
    if scales:
        return sorted(set(scales) | {base})
    if not recipe.multi_scale:
        return [base]
    divisor = 32 if base >= 128 else 8
    low, high = (round(base * r) for r in MULTI_SCALE_RANGE)
    return multi_scale_resolutions(base, low, high, 5, divisor)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _subset(dataset: Dataset, size: int) -> Dataset:
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))
    return Subset(dataset, order[:size].tolist())


def build_optimizer(model: torch.nn.Module, recipe: Recipe, lr: float) -> torch.optim.Optimizer:
    """timm's optimizer; unless the recipe decays everything, 1-D params and `no_weight_decay()` get no decay."""
    kwargs = {"betas": recipe.betas} if "adam" in recipe.opt else {"momentum": recipe.momentum}
    return create_optimizer_v2(
        model, opt=recipe.opt, lr=lr, weight_decay=recipe.weight_decay, filter_bias_and_bn=not recipe.decay_all, **kwargs
    )


def _loader(dataset: Dataset, seed: int, workers: int, **kwargs: Any) -> DataLoader:
    # A private generator: creating an iterator must not draw from the global RNG (exact resume).
    return DataLoader(dataset, num_workers=workers, generator=torch.Generator().manual_seed(seed), **kwargs)


class Trainer:
    """Builds model, data, optimizer and schedule from a TrainConfig, then `run()`s the epochs."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.recipe = recipe = resolve_recipe(cfg)
        self.device = resolve_device(cfg.device)
        self.info = init_distributed(self.device)
        self.out = Path(cfg.output)
        if cfg.resume:
            trained = ckpt.read_run_info(self.out)["model"]
            if trained != cfg.model:
                raise CheckpointError(f"cannot resume: {self.out} holds a {trained} run, not {cfg.model}")
        _seed_everything(cfg.seed + self.info.rank)

        self.data = build_datasets(cfg.data, cfg.check_images)
        if cfg.limit:
            self.data.train, self.data.val = (_subset(d, cfg.limit) for d in (self.data.train, self.data.val))
        num_classes = len(self.data.classes)
        kwargs = {"drop_path_rate": recipe.drop_path} if recipe.drop_path else {}
        from .. import create_model

        model = create_model(cfg.model, num_classes=num_classes, **kwargs).to(self.device)
        data_cfg = resolve_data_config({}, model=model)
        self.img_size = recipe.img_size or data_cfg["input_size"][-1]
        self.mean, self.std = data_cfg["mean"], data_cfg["std"]
        self.crop_pct = recipe.crop_pct or data_cfg["crop_pct"]
        self.resolutions = training_resolutions(recipe, self.img_size, cfg.scales)

        self._build_loaders()
        world_batch = recipe.batch_size * self.info.world_size
        lr_scale = world_batch / recipe.ref_batch if recipe.scale_lr else 1.0
        self.lr = cfg.lr if cfg.lr is not None else recipe.lr * lr_scale
        self.optimizer = build_optimizer(model, recipe, self.lr)
        self.steps_per_epoch = len(self.batch_sampler)
        warmup = recipe.warmup_steps or round(recipe.warmup_epochs * self.steps_per_epoch)
        self.total_steps = recipe.epochs * self.steps_per_epoch
        self.scheduler = CosineLRScheduler(
            self.optimizer, t_initial=self.total_steps, lr_min=recipe.min_lr * lr_scale,
            warmup_t=warmup, warmup_lr_init=recipe.warmup_lr * lr_scale, t_in_epochs=False,
        )
        self.amp = cfg.amp if cfg.amp is not None else recipe.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp and self.device.type == "cuda")
        self.mixup = (
            Mixup(mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix, label_smoothing=recipe.label_smoothing,
                  num_classes=num_classes)
            if recipe.mixup or recipe.cutmix else None
        )
        self.criterion = (
            SoftTargetCrossEntropy() if self.mixup else torch.nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
        )
        self.model = model
        self.ddp_model = (
            DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if self.info.enabled else model
        )
        # After the DDP wrap, which broadcasts rank 0's initial weights: every rank's EMA starts equal.
        self.ema = ModelEmaV3(model, decay=recipe.ema_decay) if recipe.ema_decay else None
        self.epoch = self.step_in_epoch = self.global_step = 0
        self.best_top1 = -1.0
        self.running = torch.zeros(3, dtype=torch.float64)  # loss sum, top-1 hits, samples in this epoch

    def _build_loaders(self) -> None:
        recipe, info = self.recipe, self.info
        train_tfms = [
            create_transform(
                r, is_training=True, scale=recipe.scale, hflip=recipe.hflip, color_jitter=recipe.color_jitter,
                auto_augment=recipe.auto_augment, re_prob=recipe.re_prob, interpolation=recipe.interpolation,
                mean=self.mean, std=self.std,
            )
            for r in self.resolutions
        ]
        try:
            self.batch_sampler = MultiScaleBatchSampler(
                len(self.data.train), self.resolutions, self.img_size, recipe.batch_size, recipe.batch_rule,
                num_replicas=info.world_size, rank=info.rank, seed=self.cfg.seed,
                even_batches=bool(recipe.mixup or recipe.cutmix),
            )
        except ValueError:
            raise DataError(
                f"{len(self.data.train)} training images split over {info.world_size} process(es) do not fill one "
                f"batch of {recipe.batch_size}; lower --batch-size"
            ) from None
        self.train_loader = _loader(
            ScheduledTransformDataset(self.data.train, train_tfms), self.cfg.seed + info.rank, self.cfg.workers,
            batch_sampler=self.batch_sampler,
        )
        eval_interp = "bilinear" if recipe.interpolation == "random" else recipe.interpolation
        val_tf = create_transform(
            self.img_size, is_training=False, interpolation=eval_interp, crop_pct=self.crop_pct,
            mean=self.mean, std=self.std,
        )
        val = TransformedDataset(self.data.val, val_tf)
        shard = Subset(val, range(info.rank, len(val), info.world_size))  # disjoint, no padding
        self.val_loader = _loader(shard, self.cfg.seed, self.cfg.workers, batch_size=2 * recipe.batch_size)

    # ------------------------------------------------------------------ checkpoints
    def run_info(self) -> dict[str, Any]:
        return {
            "model": self.cfg.model, "num_classes": len(self.data.classes), "classes": self.data.classes,
            "img_size": self.img_size, "mean": list(self.mean), "std": list(self.std), "crop_pct": self.crop_pct,
            "interpolation": "bilinear" if self.recipe.interpolation == "random" else self.recipe.interpolation,
            "recipe": dataclasses.asdict(self.recipe), "data": self.data.source, "resolutions": self.resolutions,
            "seed": self.cfg.seed, "world_size": self.info.world_size,
        }

    def save(self) -> None:
        """Commit weights, EMA weights and state as one checkpoint set; every rank's RNG goes in (collective call)."""
        rng = all_gather_objects(ckpt.capture_rng(), self.info)
        if self.info.is_main:
            writers = {ckpt.WEIGHTS: ckpt.tagged_weights_writer(self.model.state_dict(), self.global_step)}
            if self.ema is not None:
                writers[ckpt.EMA_WEIGHTS] = ckpt.tagged_weights_writer(self.ema.module.state_dict(), self.global_step)
            writers[ckpt.STATE] = ckpt.state_writer({
                "model": self.cfg.model, "global_step": self.global_step, "epoch": self.epoch,
                "step_in_epoch": self.step_in_epoch, "best_top1": self.best_top1, "running": self.running,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": rng, "world_size": self.info.world_size,
            })
            ckpt.commit_checkpoint(self.out, self.global_step, writers)
        barrier(self.info)

    def load(self) -> None:
        """Restore the committed checkpoint set (the one `checkpoints/LATEST` names)."""
        state, folder = ckpt.load_state(self.out)
        self._load_weights(self.model, folder / ckpt.WEIGHTS)
        if self.ema is not None:
            self._load_weights(self.ema.module, folder / ckpt.EMA_WEIGHTS)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
        except (KeyError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"checkpoint {folder} does not fit this run's optimizer: {one_line(err)}") from None
        self.global_step, self.epoch = state["global_step"], state["epoch"]
        self.step_in_epoch, self.best_top1 = state["step_in_epoch"], state["best_top1"]
        self.running = state["running"]
        rng = state["rng"]
        ckpt.restore_rng(rng[self.info.rank % len(rng)])
        if self.info.is_main:  # what a crash during the last save left behind
            ckpt.remove_stale(self.out, keep=folder)

    @staticmethod
    def _load_weights(module: torch.nn.Module, path: Path) -> None:
        try:
            module.load_state_dict(ckpt.load_weights_file(path))
        except RuntimeError as err:
            raise CheckpointError(f"checkpoint {path} does not fit this model: {one_line(err)}") from None

    # ------------------------------------------------------------------ loop
    def train_steps(self) -> bool:
        """Run the rest of the current epoch; False if stopped early by `max_steps`."""
        self.ddp_model.train()
        self.batch_sampler.set_epoch(self.epoch, start_step=self.step_in_epoch)
        bar = tqdm(
            self.train_loader, total=self.steps_per_epoch, initial=self.step_in_epoch,
            desc=f"epoch {self.epoch + 1}/{self.recipe.epochs}", disable=not (self.cfg.progress and self.info.is_main),
            leave=False, dynamic_ncols=True,
        )
        for images, targets in bar:
            images, targets = images.to(self.device), targets.to(self.device)
            labels = targets
            if self.mixup is not None:
                images, targets = self.mixup(images, targets)
            with autocast(self.device, self.amp):
                logits = self.ddp_model(images)
                loss = self.criterion(logits, targets)
            stats = torch.stack([
                loss.detach().double() * len(labels),
                (logits.detach().argmax(1) == labels).sum().double(),
                torch.tensor(float(len(labels)), dtype=torch.float64, device=self.device),
            ])
            stats = all_reduce_sum(stats, self.info).cpu()
            if not torch.isfinite(stats[0]):
                kept = f"the last good checkpoint in {self.out} is kept" if ckpt.latest_dir(self.out) else "no checkpoint was written yet"
                raise TrainingDivergedError(
                    f"loss is {stats[0].item() / stats[2].item()} at step {self.global_step + 1} "
                    f"(epoch {self.epoch + 1}); training stopped, {kept}"
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.recipe.clip_grad:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.global_step += 1
            self.step_in_epoch += 1
            self.scheduler.step_update(self.global_step)
            if self.ema is not None:
                self.ema.update(self.model, step=self.global_step)
            self.running += stats
            bar.set_postfix(loss=f"{self.running[0] / self.running[2]:.3f}", res=images.shape[-1], bs=len(labels))
            if self.cfg.max_steps is not None and self.global_step >= self.cfg.max_steps:
                break
        bar.close()
        return self.step_in_epoch >= self.steps_per_epoch

    def run(self) -> dict[str, Any]:
        """Train until the recipe's last epoch (or `max_steps`); returns a summary."""
        self.out.mkdir(parents=True, exist_ok=True)
        if self.cfg.resume:
            self.load()
        elif self.info.is_main:
            ckpt.write_json(self.out / ckpt.RUN_INFO, self.run_info())
        self.scheduler.step_update(self.global_step)
        logger = MetricsLogger(self.out, epochs_done=self.epoch if self.cfg.resume else None) if self.info.is_main else None
        start = time.perf_counter()
        val: dict[str, float] = {}
        try:
            while self.epoch < self.recipe.epochs:
                if self.cfg.max_steps is not None and self.global_step >= self.cfg.max_steps:
                    break
                epoch_start = time.perf_counter()
                if not self.train_steps():
                    self.save()
                    break
                val = self.end_epoch(logger, time.perf_counter() - epoch_start)
        finally:
            if logger is not None:
                logger.close()
        summary = {
            "epochs": self.epoch, "steps": self.global_step, "seconds": time.perf_counter() - start,
            "val": val, "best_top1": self.best_top1, "skipped": self.data.skipped, "output": str(self.out),
        }
        if self.info.is_main and read_metrics(self.out):
            summary["curves"] = str(plot_curves(self.out))
        return summary

    def end_epoch(self, logger: MetricsLogger | None, seconds: float) -> dict[str, float]:
        eval_model = self.ema.module if self.ema is not None and self.recipe.eval_ema else self.model
        val = evaluate(eval_model, self.val_loader, self.device, self.info, self.amp)
        loss_sum, hits, count = self.running.tolist()
        row = {
            "epoch": self.epoch + 1, "step": self.global_step, "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum / count, "train_top1": 100 * hits / count, "val_loss": val["loss"],
            "val_top1": val["top1"], "val_top5": val["top5"], "epoch_seconds": seconds,
        }
        self.epoch += 1
        self.step_in_epoch = 0
        self.running = torch.zeros(3, dtype=torch.float64)
        is_best = val["top1"] > self.best_top1
        self.best_top1 = max(self.best_top1, val["top1"])
        if self.info.is_main:
            if is_best:
                ckpt.save_tagged_weights(eval_model.state_dict(), self.out / ckpt.BEST_WEIGHTS, self.global_step)
            logger.log(row)
            tqdm.write(
                f"epoch {row['epoch']}/{self.recipe.epochs}: train loss {row['train_loss']:.4f} top-1 "
                f"{row['train_top1']:.1f}% | val loss {val['loss']:.4f} top-1 {val['top1']:.2f}% "
                f"top-5 {val['top5']:.2f}% | lr {row['lr']:.2e} | {seconds:.1f}s"
            )
        self.save()
        return val


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train `cfg.model`; see `hybridvit train --help`."""
    return Trainer(cfg).run()
