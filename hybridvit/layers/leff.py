"""LeFF, Locally-enhanced Feed-Forward (CeiT, Yuan et al. ICCV 2021, §3.3, Eqs. 5-11, Fig. 3).

Patch tokens are restored to their 2-D grid, expanded by a 1x1 conv, mixed with their neighbours
by a k x k depthwise conv, and reduced back by a 1x1 conv, each followed by BN (+ GELU).
"""
from __future__ import annotations

import torch
import torch.nn as nn


class LeFF(nn.Module):
    """LeFF on [B, 1 + N, D] tokens whose N patch tokens form a row-major `grid` (h, w).

    Defaults reproduce the official coeusguo/ceit code, which differs from the paper's equations in two
    places, exposed as switches (spec ceit.md §3):
    - `final_act`: the paper ends with GELU(BN(Linear2(.))); the official code has no GELU after `bn3`.
    - `cls_bypass`: the paper concatenates the untouched class token (Eq. 11); the official code returns
      its *input* class token, i.e. LN2(x)_cls, so the block residual adds it to the class token.
      With `cls_bypass=True` the class-token row of the output is zero: the residual leaves it unchanged.
    The 1x1 "linears" are Conv2d as in the official code, so checkpoint tensors keep their 4-D shapes.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        kernel_size: int = 3,
        with_bn: bool = True,
        final_act: bool = False,
        cls_bypass: bool = False,
        act_layer: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.cls_bypass = cls_bypass
        self.conv1 = nn.Conv2d(dim, hidden_dim, 1)
        self.conv2 = nn.Conv2d(hidden_dim, hidden_dim, kernel_size, padding=(kernel_size - 1) // 2, groups=hidden_dim)
        self.conv3 = nn.Conv2d(hidden_dim, dim, 1)
        norm = nn.BatchNorm2d if with_bn else (lambda _: nn.Identity())
        self.bn1, self.bn2, self.bn3 = norm(hidden_dim), norm(hidden_dim), norm(dim)
        self.act = act_layer()
        self.act_out = act_layer() if final_act else nn.Identity()

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        B, N, D = x.shape
        cls_token, tokens = x[:, :1], x[:, 1:]
        tokens = tokens.transpose(1, 2).reshape(B, D, grid[0], grid[1])
        tokens = self.act(self.bn1(self.conv1(tokens)))
        tokens = self.act(self.bn2(self.conv2(tokens)))
        tokens = self.act_out(self.bn3(self.conv3(tokens)))
        if self.cls_bypass:
            cls_token = torch.zeros_like(cls_token)
        return torch.cat((cls_token, tokens.flatten(2).transpose(1, 2)), dim=1)
