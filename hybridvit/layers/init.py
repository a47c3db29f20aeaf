"""Weight initialisation shared by the families."""
from __future__ import annotations

import torch.nn as nn


def init_weights_cvnets(module: nn.Module, linear_std: float = 0.02) -> None:
    """ml-cvnets' scheme: conv kaiming-normal (fan_out), linear truncated normal, zero biases, unit norms."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=linear_std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
