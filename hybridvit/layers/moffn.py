"""Mobile Feed-Forward Network, MoFFN (Ma et al., "MoCoViT", arXiv 2205.12635, §3.2, Fig. 2)."""
from __future__ import annotations

import torch
import torch.nn as nn

from .ghost import ActFactory, GhostModule, relu
from .squeeze_excite import SqueezeExcite


class MoFFN(nn.Module):
    """MoFFN: the MLP's up- and down-projection linears become Ghost modules, with SE after the up
    projection: Ghost (C -> E, BN + ReLU) -> SE -> Ghost (E -> C, BN only). The residual is the caller's.
    `se_ratio=0` leaves the SE out, as GhostNet's bottlenecks do in some blocks.

    The Ghost modules' depthwise cheap operation gives the FFN a 3x3 spatial receptive field.
    """

    def __init__(self, dim: int, hidden_dim: int, se_ratio: float = 0.25, act_layer: ActFactory = relu) -> None:
        super().__init__()
        self.ghost1 = GhostModule(dim, hidden_dim, act_layer)
        self.se = SqueezeExcite(hidden_dim, se_ratio) if se_ratio > 0 else nn.Identity()
        self.ghost2 = GhostModule(hidden_dim, dim, act_layer=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ghost2(self.se(self.ghost1(x)))
