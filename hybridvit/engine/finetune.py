"""Fine-tuning: start `hybridvit train` from weights (`--init`), at any resolution, with the usual LR knobs.

- `prepare_model`: the training size goes to models with size-dependent parameters (CeiT's `pos_embed`,
  through timm's `set_input_size`; MobileViT, XFormer, MoCoViT have none), then `--init` weights are
  loaded by `hybridvit.checkpoint.load_pretrained` (the loader the dense tasks' backbones share).
- `param_groups`: timm's `param_groups_layer_decay` (layer-wise LR decay, BEiT-style, grouped by the
  model's `group_matcher`) or its plain weight-decay groups, with every non-classifier group's
  `lr_scale` times `backbone_lr_ratio`; timm's schedulers apply `lr_scale` at every update.
- `BackboneFreeze`: for the first `freeze_epochs` epochs only the classifier trains. The backbone's
  gradients are dropped right before each optimizer step (so the optimizer neither moves nor decays
  them, and keeps no moments for them) and its BatchNorm layers run in eval mode (statistics fixed).
  Gradients are still computed and all-reduced, so DDP and resume need nothing special; gradient
  clipping still measures the backbone's gradients in those epochs.
"""
from __future__ import annotations

from typing import Callable

import torch
from timm.layers import to_2tuple
from timm.optim import param_groups_layer_decay, param_groups_weight_decay

from ..checkpoint import classifier_keys, load_pretrained
from ..errors import HybridViTError
from .recipes import Recipe


def match_input_size(model: torch.nn.Module, img_size: int) -> None:
    """Give the training/eval size to a model whose parameters depend on it (timm's `set_input_size`)."""
    current = getattr(model, "img_size", None)
    if callable(getattr(model, "set_input_size", None)) and current is not None and to_2tuple(current) != to_2tuple(img_size):
        model.set_input_size(img_size)


def check_init(init: str | None, resume: bool) -> None:
    if init and resume:
        raise HybridViTError("--init and --resume exclude each other: --resume restores the whole run, weights included")


def prepare_model(model: torch.nn.Module, init: str | None, img_size: int, log: Callable[[str], None]) -> None:
    """Size-dependent parameters to `img_size`, then the `--init` weights (reported in one line)."""
    match_input_size(model, img_size)
    if init:
        log(load_pretrained(model, init).summary())


def _head_names(model: torch.nn.Module) -> set[str]:
    keys, _ = classifier_keys(model)
    return {n for n, _ in model.named_parameters() if n in keys}


def param_groups(model: torch.nn.Module, recipe: Recipe) -> list[dict]:
    """Optimizer groups with weight decay as the recipe says and `lr_scale` for layer decay / backbone ratio."""
    no_decay = () if recipe.decay_all else tuple(getattr(model, "no_weight_decay", set)())
    common = dict(weight_decay=recipe.weight_decay, no_weight_decay_list=no_decay,
                  weight_decay_exclude_1d=not recipe.decay_all)
    if recipe.layer_decay is not None:
        groups = param_groups_layer_decay(model, layer_decay=recipe.layer_decay, **common)
    else:
        groups = param_groups_weight_decay(model, **common)
    if recipe.backbone_lr_ratio == 1.0:
        return groups
    head = {id(p) for n, p in model.named_parameters() if n in _head_names(model)}
    out = []
    for group in groups:
        for is_head in (True, False):
            params = [p for p in group["params"] if (id(p) in head) == is_head]
            if params:
                scale = group.get("lr_scale", 1.0) * (1.0 if is_head else recipe.backbone_lr_ratio)
                out.append({**group, "params": params, "lr_scale": scale})
    return out


class BackboneFreeze:
    """Train only the classifier while `epoch() < epochs` (see the module docstring for how)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, epochs: int, epoch: Callable[[], int]) -> None:
        head = _head_names(model)
        if not head:
            raise HybridViTError(f"--freeze-epochs needs a classifier to train, and {type(model).__name__} has none")
        self.epochs, self.epoch = epochs, epoch
        self.backbone = [p for n, p in model.named_parameters() if n not in head]
        classifier = model.get_classifier()
        self.norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                      and not any(m is c for c in classifier.modules())]
        optimizer.register_step_pre_hook(self._drop_backbone_grads)
        model.register_forward_pre_hook(self._fix_norms)

    @property
    def active(self) -> bool:
        return self.epoch() < self.epochs

    def _drop_backbone_grads(self, *_) -> None:
        if self.active:
            for p in self.backbone:
                p.grad = None

    def _fix_norms(self, model: torch.nn.Module, _inputs) -> None:
        if self.active and model.training:
            for norm in self.norms:
                norm.eval()
