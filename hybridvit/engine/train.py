"""The one training loop of every task: timm's optimizer, cosine schedule and EMA around a task's model.

The task object (`engine/tasks.py`: classification, detection, ...) supplies data, model, loss and
evaluation; this loop supplies the rest, the same for every task.

Exact resume: every source of randomness is either a private generator keyed on (seed, epoch)
(sampler, schedule of resolutions) or saved in the checkpoint (torch, numpy and python RNGs of
every rank), and the sampler skips the batches already done in the interrupted epoch. With
`workers > 0` the order and resolutions still resume exactly; the augmentation draws made in
worker processes do not.
"""
from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, Subset
from tqdm import tqdm

from ..checkpoint import one_line
from ..errors import CheckpointError, HybridViTError, TrainingDivergedError
from . import checkpointing as ckpt
from . import finetune
from .distributed import all_gather_objects, all_reduce_sum, barrier, init_distributed, resolve_device
from .evaluate import autocast
from .metrics import MetricsLogger, plot_curves, read_metrics
from .recipes import Recipe, get_recipe
from .tasks import task_class


@dataclass
class TrainConfig:
    """What `hybridvit train` accepts; None means "the recipe's value"."""

    model: str
    data: str | None = None  # None: the task's embedded default (scikit-learn digits, digit scenes)
    recipe: str | None = None  # None: the task's default recipe (or, on resume, the saved run's)
    task: str = "classification"  # a name in engine/tasks.py TASKS
    head: str | None = None  # detection head (None: ssdlite) or segmentation head (None: deeplabv3)
    backbone_checkpoint: str | None = None  # classification weights for a detector's backbone (any converter layout)
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
    overwrite: bool = False  # replace a run already in `output` (without it, training there is refused)
    max_steps: int | None = None  # stop after this many optimizer steps in total, keeping a checkpoint
    seed: int | None = None  # None: 0 (or, on resume, the saved run's)
    workers: int = 0
    device: str | None = None
    dist_timeout: float | None = None  # seconds a rank waits for the others in a collective (None: 600)
    progress: bool = True
    check_images: str = "full"
    limit: int | None = None  # use only this many train and val images (a fixed random subset), for quick checks
    init: str | None = None  # start from these weights (engine/finetune.py); unlike `resume`, a new run
    layer_decay: float | None = None
    backbone_lr_ratio: float | None = None
    freeze_epochs: int | None = None
    compile: bool = False  # torch.compile the model's forward (in place: state_dict keys stay the same)
    attn: str | None = None  # token mixer swapped into the model (`attn_layer`, layers/mixers.py); None: the paper's

    def __post_init__(self) -> None:
        finetune.check_init(self.init, self.resume)
        if self.attn and self.task != "classification":
            raise HybridViTError(f"--attn swaps classifiers' token mixers; it is not wired to --task {self.task}")


# The flags that define a run: recorded in run.json; on resume, a flag left out takes the saved value
# and a flag given with another value is refused (a resume continues the same run, bit-exactly).
RUN_FLAGS = ("model", "task", "head", "data", "recipe", "epochs", "batch_size", "lr", "img_size", "multi_scale",
             "scales", "batch_rule", "warmup_epochs", "ema_decay", "amp", "seed", "limit", "layer_decay",
             "backbone_lr_ratio", "freeze_epochs", "attn")


def run_flags(cfg: TrainConfig) -> dict[str, Any]:
    """The run-defining flags of `cfg` in run.json form (data as an absolute path, scales as a list)."""
    flags = {name: getattr(cfg, name) for name in RUN_FLAGS}
    flags["data"] = str(Path(cfg.data).resolve()) if cfg.data else None
    flags["scales"] = list(cfg.scales)
    return flags


def resume_config(cfg: TrainConfig, info: dict[str, Any], out: Path) -> TrainConfig:
    """`cfg` completed with the saved flags of the run in `out`; a conflicting flag is an error naming each."""
    if info["model"] != cfg.model:
        raise CheckpointError(f"cannot resume: {out} holds a {info['model']} run, not {cfg.model}")
    saved = info.get("flags")
    if isinstance(saved, dict):
        saved = {"attn": None, **saved}  # runs from before --attn used the paper's mixer
    if not isinstance(saved, dict) or set(RUN_FLAGS) - set(saved):
        raise CheckpointError(f"cannot resume: {out}/{ckpt.RUN_INFO} does not record the run's flags")
    given = run_flags(cfg)
    unset = (None, [])

    def shown(value: Any) -> str:
        return "unset" if value in unset else repr(value)

    conflicts = [f"--{k.replace('_', '-')} {shown(given[k])} (saved {shown(saved[k])})"
                 for k in RUN_FLAGS if given[k] not in unset and given[k] != saved[k]]
    if conflicts:
        raise CheckpointError(
            f"cannot resume {out} with other settings: {', '.join(conflicts)}; leave these flags out to keep the "
            "saved values, or train into another --output"
        )
    merged = {k: saved[k] if given[k] in unset else given[k] for k in RUN_FLAGS}
    merged.update(scales=tuple(merged["scales"]), data=cfg.data or saved["data"])
    return dataclasses.replace(cfg, **merged)


def resolve_recipe(cfg: TrainConfig) -> Recipe:
    """The named recipe (default: the task's) with the command-line overrides applied."""
    recipe = get_recipe(cfg.recipe or task_class(cfg.task).default_recipe)
    overrides = {
        "epochs": cfg.epochs, "batch_size": cfg.batch_size, "img_size": cfg.img_size,
        "multi_scale": True if cfg.scales else cfg.multi_scale, "batch_rule": cfg.batch_rule,
        "layer_decay": cfg.layer_decay, "backbone_lr_ratio": cfg.backbone_lr_ratio, "freeze_epochs": cfg.freeze_epochs,
    }
    if cfg.warmup_epochs is not None:
        overrides.update(warmup_epochs=cfg.warmup_epochs, warmup_steps=0)
    if cfg.ema_decay == 0:
        overrides.update(ema_decay=None, eval_ema=False)
    elif cfg.ema_decay is not None:
        overrides.update(ema_decay=cfg.ema_decay, eval_ema=True)
    return dataclasses.replace(recipe, **{k: v for k, v in overrides.items() if v is not None})


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _subset(dataset: Dataset, size: int) -> Dataset:
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))
    return Subset(dataset, order[:size].tolist())


def build_optimizer(
    model: torch.nn.Module, recipe: Recipe, lr: float, param_groups: list[dict] | None = None
) -> torch.optim.Optimizer:
    """timm's optimizer; unless the recipe decays everything, 1-D params and `no_weight_decay()` get no decay.

    `param_groups` (a task's, e.g. a head learning-rate multiplier as `lr_scale`) replace that grouping.
    """
    kwargs = {"betas": recipe.betas} if "adam" in recipe.opt else {"momentum": recipe.momentum}
    if recipe.layer_decay is not None or recipe.backbone_lr_ratio != 1.0:
        return create_optimizer_v2(finetune.param_groups(model, recipe), opt=recipe.opt, lr=lr, **kwargs)
    return create_optimizer_v2(
        param_groups or model, opt=recipe.opt, lr=lr, weight_decay=recipe.weight_decay,
        filter_bias_and_bn=not recipe.decay_all, **kwargs
    )


class Trainer:
    """Builds the task's model and data, optimizer and schedule from a TrainConfig, then `run()`s the epochs."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.out = Path(cfg.output)
        saved = ckpt.read_run_info(self.out) if cfg.resume else None
        if saved is not None:
            cfg = resume_config(cfg, saved, self.out)
        elif ckpt.holds_run(self.out) and not cfg.overwrite:
            raise CheckpointError(f"{self.out} already holds a training run: pass --resume to continue it or --overwrite to replace it")
        self.cfg = cfg = dataclasses.replace(cfg, seed=cfg.seed or 0)
        self.recipe = recipe = resolve_recipe(cfg)
        self.device = resolve_device(cfg.device)
        self.info = init_distributed(self.device, cfg.dist_timeout)
        if saved is not None and saved.get("world_size") != self.info.world_size:
            raise CheckpointError(
                f"cannot resume: {self.out} was trained by {saved.get('world_size')} process(es), this is "
                f"{self.info.world_size}; resume with the same torchrun --nproc_per_node"
            )
        _seed_everything(cfg.seed + self.info.rank)
        self.task = task = task_class(cfg.task)(cfg, recipe, self.device, self.info)

        self.data = task.build_data()
        if cfg.limit:
            self.data.train, self.data.val = (_subset(d, cfg.limit) for d in (self.data.train, self.data.val))
        if saved is not None and saved.get("classes") != self.data.classes:
            raise CheckpointError(
                f"cannot resume: the classes in the data changed since {self.out} was trained "
                f"({len(saved.get('classes') or [])} then, {len(self.data.classes)} now)"
            )
        model = task.build_model(len(self.data.classes)).to(self.device)
        if cfg.init and task.name != "classification":
            raise HybridViTError("--init fine-tunes classifiers; a detector's backbone takes --backbone-checkpoint (same loader)")
        if task.name == "classification":
            finetune.prepare_model(model, cfg.init, task.img_size, log=print if self.info.is_main else lambda _: None)
        self.train_loader, self.batch_sampler = task.train_loader(self.data.train)
        self.val_loader = task.val_loader(self.data.val)
        world_batch = recipe.batch_size * self.info.world_size
        lr_scale = world_batch / recipe.ref_batch if recipe.scale_lr else 1.0
        self.lr = cfg.lr if cfg.lr is not None else recipe.lr * lr_scale
        groups = task.param_groups(model, recipe.weight_decay) if hasattr(task, "param_groups") else None
        self.optimizer = build_optimizer(model, recipe, self.lr, groups)
        if recipe.freeze_epochs:
            finetune.BackboneFreeze(model, self.optimizer, recipe.freeze_epochs, epoch=lambda: self.epoch)
        self.steps_per_epoch = len(self.batch_sampler)
        warmup = recipe.warmup_steps or round(recipe.warmup_epochs * self.steps_per_epoch)
        self.total_steps = recipe.epochs * self.steps_per_epoch
        self.scheduler = CosineLRScheduler(
            self.optimizer, t_initial=self.total_steps, lr_min=recipe.min_lr * lr_scale,
            warmup_t=warmup, warmup_lr_init=recipe.warmup_lr * lr_scale, t_in_epochs=False,
        )
        self.amp = cfg.amp if cfg.amp is not None else recipe.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp and self.device.type == "cuda")
        self.criterion = task.criterion
        self.model = model
        self.ddp_model = (
            DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if self.info.enabled else model
        )
        # After the DDP wrap, which broadcasts rank 0's initial weights: every rank's EMA starts equal.
        self.ema = ModelEmaV3(model, decay=recipe.ema_decay) if recipe.ema_decay else None
        if cfg.compile:
            model.compile()  # after the EMA's deep copy (which stays eager); DDP calls the compiled forward
        self.epoch = self.step_in_epoch = self.global_step = 0
        self.best_score = -math.inf  # of the task's primary validation metric
        self.running: torch.Tensor | None = None  # the epoch's sums of the task's step stats

    # ------------------------------------------------------------------ checkpoints
    def run_info(self) -> dict[str, Any]:
        return {
            "model": self.cfg.model, "task": self.task.name, "classes": self.data.classes, **self.task.run_info(),
            "recipe": dataclasses.asdict(self.recipe), "data": self.data.source,
            "seed": self.cfg.seed, "world_size": self.info.world_size, "init": self.cfg.init,
            "flags": run_flags(self.cfg),
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
                "step_in_epoch": self.step_in_epoch, "best_score": self.best_score, "running": self.running,
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
        self.step_in_epoch, self.best_score = state["step_in_epoch"], state["best_score"]
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
        for batch in bar:
            with autocast(self.device, self.amp):
                loss, stats, postfix = self.task.training_step(self.ddp_model, batch, self.criterion)
            stats = all_reduce_sum(stats, self.info).cpu()
            if not torch.isfinite(stats[0]):
                kept = f"the last good checkpoint in {self.out} is kept" if ckpt.latest_dir(self.out) else "no checkpoint was written yet"
                raise TrainingDivergedError(
                    f"loss is {stats[0].item() / stats[-1].item()} at step {self.global_step + 1} "
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
            self.running = stats if self.running is None else self.running + stats
            bar.set_postfix(loss=f"{self.running[0] / self.running[-1]:.3f}", **postfix)
            if self.cfg.max_steps is not None and self.global_step >= self.cfg.max_steps:
                break
        bar.close()
        return self.step_in_epoch >= self.steps_per_epoch

    def run(self) -> dict[str, Any]:
        """Train until the recipe's last epoch (or `max_steps`); returns a summary."""
        if self.cfg.resume:
            self.load()
        elif self.info.is_main:
            ckpt.start_run(self.out, self.run_info(), replace=self.cfg.overwrite)
        self.scheduler.step_update(self.global_step)
        logger = (MetricsLogger(self.out, self.metric_fields(), epochs_done=self.epoch if self.cfg.resume else None)
                  if self.info.is_main else None)
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
            "val": val, "best": self.best_score, "primary": self.task.primary, "skipped": self.data.skipped,
            "output": str(self.out),
        }
        if self.info.is_main and read_metrics(self.out):
            summary["curves"] = str(plot_curves(self.out, self.task.curve_metrics))
        return summary

    def metric_fields(self) -> tuple[str, ...]:
        """The columns of metrics.csv."""
        return ("epoch", "step", "lr", *self.task.train_fields, *(f"val_{m}" for m in self.task.val_metrics), "epoch_seconds")

    def end_epoch(self, logger: MetricsLogger | None, seconds: float) -> dict[str, float]:
        eval_model = self.ema.module if self.ema is not None and self.recipe.eval_ema else self.model
        val = self.task.evaluate(eval_model, self.val_loader, self.amp)
        row = {
            "epoch": self.epoch + 1, "step": self.global_step, "lr": max(g["lr"] for g in self.optimizer.param_groups),
            **self.task.train_metrics(self.running), **{f"val_{m}": val[m] for m in self.task.val_metrics},
            "epoch_seconds": seconds,
        }
        self.epoch += 1
        self.step_in_epoch = 0
        self.running = None
        score = val[self.task.primary]
        is_best = score > self.best_score
        self.best_score = max(self.best_score, score)
        if self.info.is_main:
            if is_best:
                ckpt.save_tagged_weights(eval_model.state_dict(), self.out / ckpt.BEST_WEIGHTS, self.global_step)
            logger.log(row)
            tqdm.write(f"epoch {row['epoch']}/{self.recipe.epochs}: {self.task.epoch_message(row)} | "
                       f"lr {row['lr']:.2e} | {seconds:.1f}s")
        self.save()
        return val


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train `cfg.model` for `cfg.task`; see `hybridvit train --help`."""
    return Trainer(cfg).run()
