"""Fold BatchNorm into the convolution that feeds it, for deployment (eval mode only).

y = gamma * (conv(x) - mean) / sqrt(var + eps) + beta is again a convolution, with weight
W * gamma / sqrt(var + eps) and a matching bias; `torch.nn.utils.fusion.fuse_conv_bn_eval` does
the arithmetic. Pairs are found by running the model once with hooks: a BatchNorm2d is folded
when its input is the very tensor a Conv2d just returned, and each module of the pair runs once.
timm's BatchNormAct2d (BN + dropout + activation) is replaced by its dropout and activation.
A BN whose conv output also feeds another module would change that module's input: `fuse_bn`
compares outputs before and after and raises if they differ.
"""
from __future__ import annotations

import copy
from collections import Counter

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..errors import HybridViTError


def _find_pairs(model: nn.Module, x: torch.Tensor) -> list[tuple[str, str]]:
    """(conv name, bn name) for every BatchNorm2d applied directly to a Conv2d's output."""
    conv_out: dict[int, str] = {}
    calls: Counter[str] = Counter()
    pairs: list[tuple[str, str]] = []
    keep_alive: list[torch.Tensor] = []  # so ids of recorded outputs are not reused
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            def on_conv(m, args, out, name=name):
                calls[name] += 1
                conv_out[id(out)] = name
                keep_alive.append(out)
            hooks.append(module.register_forward_hook(on_conv))
        elif isinstance(module, nn.BatchNorm2d):
            def on_bn(m, args, name=name):
                calls[name] += 1
                if id(args[0]) in conv_out:
                    pairs.append((conv_out[id(args[0])], name))
            hooks.append(module.register_forward_pre_hook(on_bn))
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return [(c, b) for c, b in pairs if calls[c] == 1 and calls[b] == 1]


def _replacement(bn: nn.BatchNorm2d) -> nn.Module:
    """What is left of a BN layer after folding: nothing, or timm's BatchNormAct2d drop + act."""
    parts = (getattr(bn, "drop", None), getattr(bn, "act", None))
    rest = [m for m in parts if m is not None and not isinstance(m, nn.Identity)]
    return nn.Sequential(*rest) if rest else nn.Identity()


def fuse_bn(model: nn.Module, example: torch.Tensor, atol: float = 1e-4) -> nn.Module:
    """Return an eval-mode copy of `model` with every Conv2d -> BatchNorm2d pair folded.

    `example` is a batch the model accepts; it is used to find the pairs and to check the result.
    """
    model = copy.deepcopy(model).eval()
    pairs = _find_pairs(model, example)
    with torch.inference_mode():
        before = model(example)
    modules = dict(model.named_modules())
    for conv_name, bn_name in pairs:
        conv, bn = modules[conv_name], modules[bn_name]
        if not bn.track_running_stats or bn.running_mean is None:
            continue
        _set_submodule(model, conv_name, fuse_conv_bn_eval(conv, bn))
        _set_submodule(model, bn_name, _replacement(bn))
    with torch.inference_mode():
        after = model(example)
        err = (after - before).abs().max().item()
    if not (torch.isfinite(before).all() and torch.isfinite(after).all()):
        raise HybridViTError("BatchNorm folding refused: the model's outputs are not finite (NaN or inf weights?)")
    if not err <= atol * max(1.0, before.abs().max().item()):
        raise HybridViTError(f"BatchNorm folding changed the outputs (max error {err:.2e}); not folded")
    return model


def count_batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)
