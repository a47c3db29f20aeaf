"""MobileViT block (MobileViT §3.1, Eq. 1, Fig. 1b): local conv, unfold, transformer, fold, fuse.

Shared by MobileViT (MHSA layers) and XFormer, whose XF block (§3.2) is this block with XFA layers.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from timm.layers import ConvNormAct, register_notrace_module

from .patches import fold_patches, unfold_patches


@register_notrace_module  # an FX leaf, as timm's MobileVitBlock: unfold/fold branch on the map size
class MobileViTBlock(nn.Module):
    """n x n conv + 1x1 projection to `transformer_dim` (local representation), unfold into patches,
    the given transformer layers + LayerNorm (global representation), fold, 1x1 projection back,
    concat with the input and an n x n fusion conv. Module names follow timm.

    `dilation` dilates the local n x n conv only, as timm's `MobileVitBlock` does in a dilated stage.
    Each transformer layer gets the patch grid (n_h, n_w) its N tokens lie on, for grid-based mixers.
    """

    def __init__(
        self,
        channels: int,
        transformer_dim: int,
        transformer_layers: Sequence[nn.Module],
        patch_size: int = 2,
        kernel_size: int = 3,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.conv_kxk = ConvNormAct(channels, channels, kernel_size, dilation=dilation, act_layer=nn.SiLU)
        self.conv_1x1 = nn.Conv2d(channels, transformer_dim, 1, bias=False)
        self.transformer = nn.Sequential(*transformer_layers)
        self.norm = nn.LayerNorm(transformer_dim)
        self.conv_proj = ConvNormAct(transformer_dim, channels, 1, act_layer=nn.SiLU)
        self.conv_fusion = ConvNormAct(2 * channels, channels, kernel_size, act_layer=nn.SiLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = self.conv_1x1(self.conv_kxk(x))
        tokens, grid = unfold_patches(local, self.patch_size, self.patch_size)
        for layer in self.transformer:
            tokens = layer(tokens, (grid.num_h, grid.num_w))
        tokens = self.norm(tokens)
        global_rep = self.conv_proj(fold_patches(tokens, grid))
        return self.conv_fusion(torch.cat((x, global_rep), dim=1))
